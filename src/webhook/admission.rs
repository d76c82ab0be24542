//! The admission decision, pure: which pull secrets a new pod should reference, as a JSON
//! Patch ([`super::review`] is the wire format around it).
//!
//! The API server sends the pod as it will be stored (after the ServiceAccount admission plugin copied the ServiceAccount's
//! `imagePullSecrets`). A secret entry applies when its namespace selection matches and an
//! image of a container, init container or ephemeral container is on one of its
//! registries (the host matching of `credential-provider`). Each applicable secret not yet
//! referenced is appended once; other references are left alone, so answering the same
//! pod again changes nothing.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::{Value, json};

use super::review::Request;
use crate::config::Config;

/// The label that opts a pod (or, through the webhook's namespaceSelector, a namespace)
/// out: `regcred.io/inject: "false"`.
pub const OPT_OUT_LABEL: &str = "regcred.io/inject";
/// Namespaces never touched, whatever the configuration selects.
pub const NEVER: &[&str] = &["kube-system"];

/// The parts of a pod regcred reads; everything else is ignored.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Pod {
    #[serde(default)]
    pub metadata: PodMeta,
    #[serde(default)]
    pub spec: PodSpec,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct PodMeta {
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default)]
    pub containers: Option<Vec<Container>>,
    #[serde(default)]
    pub init_containers: Option<Vec<Container>>,
    #[serde(default)]
    pub ephemeral_containers: Option<Vec<Container>>,
    #[serde(default)]
    pub image_pull_secrets: Option<Vec<Reference>>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Container {
    #[serde(default)]
    pub image: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Reference {
    #[serde(default)]
    pub name: Option<String>,
}

impl Pod {
    /// Every image of the pod: containers, init containers and ephemeral containers.
    #[must_use]
    pub fn images(&self) -> Vec<&str> {
        [
            &self.spec.containers,
            &self.spec.init_containers,
            &self.spec.ephemeral_containers,
        ]
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|c| c.image.as_deref())
        .collect()
    }

    fn opted_out(&self) -> bool {
        self.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(OPT_OUT_LABEL))
            .is_some_and(|v| v == "false")
    }

    fn references(&self) -> BTreeSet<&str> {
        self.spec
            .image_pull_secrets
            .iter()
            .flatten()
            .filter_map(|r| r.name.as_deref())
            .collect()
    }
}

/// Whether an image is pulled from this registry host: the image's registry host, as
/// `credential-provider` reads it, equal to the configured host (case aside).
#[must_use]
pub fn on_registry(image: &str, host: &str) -> bool {
    crate::provider::image_host(image).is_ok_and(|h| h.eq_ignore_ascii_case(host))
}

/// A namespace's labels are needed to decide (some applicable entry has a label selector)
/// but are not known.
#[derive(Debug, PartialEq, Eq)]
pub struct NeedLabels;

/// The secrets the pod should reference: those of every entry that selects the namespace
/// and serves one of its images. `labels` are the namespace's, when known.
pub fn wanted_secrets(
    config: &Config,
    namespace: &str,
    labels: Option<&BTreeMap<String, String>>,
    images: &[&str],
) -> Result<BTreeSet<String>, NeedLabels> {
    let mut wanted = BTreeSet::new();
    // Only a pull secret: pods cannot pull with any other shape.
    for entry in config.secrets.iter().filter(|e| e.format.is_pull_secret()) {
        let serves = images.iter().any(|image| {
            entry
                .registries
                .iter()
                .any(|r| on_registry(image, r.registry.host()))
        });
        if !serves || wanted.contains(entry.name.as_str()) {
            continue;
        }
        let selection = &entry.namespaces;
        let by_name = selection.include.iter().any(|g| g.matches(namespace))
            && !selection.exclude.iter().any(|g| g.matches(namespace));
        if !by_name {
            continue;
        }
        let selected = match (&selection.selector, labels) {
            (None, _) => true,
            (Some(selector), Some(labels)) => selector.matches(labels),
            (Some(_), None) => return Err(NeedLabels),
        };
        if selected {
            wanted.insert(entry.name.to_string());
        }
    }
    Ok(wanted)
}

/// Whether a namespace's labels could change the answer for this pod (so they are worth
/// looking up): some entry serving one of its images selects by label.
#[must_use]
pub fn needs_labels(config: &Config, namespace: &str, images: &[&str]) -> bool {
    wanted_secrets(config, namespace, None, images).is_err()
}

/// Whether the request is one the webhook judges at all: a pod being created, in a
/// namespace other than kube-system and regcred's own, not opted out.
#[must_use]
pub fn is_candidate(request: &Request, own_namespace: &str) -> bool {
    let Some(pod) = &request.object else {
        return false;
    };
    let namespace = request.namespace.as_deref().unwrap_or_default();
    request.operation == "CREATE"
        && request.kind.group.is_empty()
        && request.kind.kind == "Pod"
        && !namespace.is_empty()
        && namespace != own_namespace
        && !NEVER.contains(&namespace)
        && !pod.opted_out()
}

/// The JSON Patch that adds each wanted secret the pod does not reference yet, after the
/// references it has. Empty when there is nothing to add.
#[must_use]
pub fn patch(pod: &Pod, wanted: &BTreeSet<String>) -> Vec<Value> {
    let have = pod.references();
    let missing: Vec<&str> = wanted
        .iter()
        .map(String::as_str)
        .filter(|name| !have.contains(name))
        .collect();
    if missing.is_empty() {
        return Vec::new();
    }
    if pod.spec.image_pull_secrets.is_none() {
        let list: Vec<Value> = missing.iter().map(|name| json!({"name": name})).collect();
        return vec![json!({"op": "add", "path": "/spec/imagePullSecrets", "value": list})];
    }
    missing
        .iter()
        .map(|name| json!({"op": "add", "path": "/spec/imagePullSecrets/-", "value": {"name": name}}))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::review::{API_VERSION, parse_review};
    use super::*;
    use std::path::Path;

    fn config(yaml: &str) -> Config {
        Config::from_yaml(Path::new("regcred.yaml"), yaml).unwrap()
    }

    const ECR: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com";

    fn two_entries() -> Config {
        config(&format!(
            "secrets:
  - name: ecr
    registries: [{ECR}, {{host: 'registry.internal.example:5000', accountId: '123456789012', region: us-east-1}}]
  - name: public
    registries: [public.ecr.aws]
    namespaces: {{include: ['team-*'], selector: 'tier=web'}}
"
        ))
    }

    fn pod(value: Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    fn review(object: &Value) -> Vec<u8> {
        json!({
            "apiVersion": API_VERSION, "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "team-a", "operation": "CREATE", "object": object,
            }
        })
        .to_string()
        .into_bytes()
    }

    /// The patch applied to a pod's JSON, as the API server applies it.
    fn apply(pod: &Value, patch: &[Value]) -> Value {
        let mut pod = pod.clone();
        for op in patch {
            assert_eq!(op["op"], "add");
            let target = op["path"].as_str().unwrap();
            if target == "/spec/imagePullSecrets" {
                pod["spec"]["imagePullSecrets"] = op["value"].clone();
            } else {
                assert_eq!(target, "/spec/imagePullSecrets/-");
                pod["spec"]["imagePullSecrets"]
                    .as_array_mut()
                    .unwrap()
                    .push(op["value"].clone());
            }
        }
        pod
    }

    #[test]
    fn hosts_match_as_the_credential_provider_reads_them() {
        assert!(on_registry(&format!("{ECR}/app:1"), ECR));
        assert!(on_registry(
            &format!("{}/app@sha256:abcd", ECR.to_uppercase()),
            ECR
        ));
        assert!(on_registry(
            "registry.internal.example:5000/team/app",
            "registry.internal.example:5000"
        ));
        for other in [
            "nginx",
            "library/nginx:1",
            "docker.io/library/nginx",
            "registry.internal.example/team/app",
            "210987654321.dkr.ecr.us-east-1.amazonaws.com/app",
            &format!("{ECR}.evil.example/app"),
            &format!("evil.example/{ECR}/app"),
        ] {
            assert!(!on_registry(other, ECR), "{other}");
            assert!(
                !on_registry(other, "registry.internal.example:5000"),
                "{other}"
            );
        }
    }

    #[test]
    fn every_kind_of_container_counts_and_entries_select_their_namespaces() {
        let c = two_entries();
        let p = pod(json!({"spec": {
            "containers": [{"name": "a", "image": "nginx"}],
            "initContainers": [{"name": "i", "image": format!("{ECR}/init:1")}],
        }}));
        assert_eq!(
            wanted_secrets(&c, "default", None, &p.images()).unwrap(),
            BTreeSet::from(["ecr".to_owned()])
        );
        let p = pod(json!({"spec": {
            "containers": [{"name": "a", "image": "nginx"}],
            "ephemeralContainers": [{"name": "e", "image": "public.ecr.aws/debug/shell"}],
        }}));
        let web = BTreeMap::from([("tier".to_owned(), "web".to_owned())]);
        assert_eq!(
            wanted_secrets(&c, "team-a", Some(&web), &p.images()).unwrap(),
            BTreeSet::from(["public".to_owned()])
        );
        // Selected by name but not by label; not selected by name at all.
        assert!(
            wanted_secrets(&c, "team-a", Some(&BTreeMap::new()), &p.images())
                .unwrap()
                .is_empty()
        );
        assert!(
            wanted_secrets(&c, "default", None, &p.images())
                .unwrap()
                .is_empty()
        );
        // Labels decide, and are not known.
        assert_eq!(
            wanted_secrets(&c, "team-a", None, &p.images()),
            Err(NeedLabels)
        );
        assert!(needs_labels(&c, "team-a", &p.images()));
        assert!(!needs_labels(&c, "team-a", &[&format!("{ECR}/x")]));
        // The default selection excludes the system namespaces.
        assert!(
            wanted_secrets(&c, "kube-public", None, &[&format!("{ECR}/x")])
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn only_pull_secrets_are_injected() {
        let c = config(&format!(
            "secrets:\n  - name: argo\n    format: argocd-repository\n    registries: [{ECR}]\n  - name: plain\n    format: basic-auth\n    registries: [{ECR}]\n  - name: pull\n    registries: [{ECR}]\n"
        ));
        assert_eq!(
            wanted_secrets(&c, "default", None, &[&format!("{ECR}/app:1")]).unwrap(),
            BTreeSet::from(["pull".to_owned()])
        );
    }

    #[test]
    fn the_patch_adds_each_reference_once_and_leaves_others_alone() {
        let wanted = BTreeSet::from(["ecr".to_owned(), "public".to_owned()]);
        // No list: one op makes it.
        let bare = json!({"spec": {"containers": [{"name": "a", "image": "x/y"}]}});
        let ops = patch(&pod(bare.clone()), &wanted);
        assert_eq!(
            ops,
            vec![json!({"op": "add", "path": "/spec/imagePullSecrets",
                        "value": [{"name": "ecr"}, {"name": "public"}]})]
        );
        let once = apply(&bare, &ops);
        // Reinvoked on its own output: nothing more.
        assert!(patch(&pod(once.clone()), &wanted).is_empty());

        // A list from the ServiceAccount: appended after it, existing entries kept.
        let listed =
            json!({"spec": {"imagePullSecrets": [{"name": "keep-me"}, {"name": "public"}]}});
        let ops = patch(&pod(listed.clone()), &wanted);
        assert_eq!(
            ops,
            vec![
                json!({"op": "add", "path": "/spec/imagePullSecrets/-", "value": {"name": "ecr"}})
            ]
        );
        assert_eq!(
            apply(&listed, &ops)["spec"]["imagePullSecrets"],
            json!([{"name": "keep-me"}, {"name": "public"}, {"name": "ecr"}])
        );
        // An empty list is a list.
        let empty = json!({"spec": {"imagePullSecrets": []}});
        assert_eq!(
            apply(&empty, &patch(&pod(empty.clone()), &wanted))["spec"]["imagePullSecrets"],
            json!([{"name": "ecr"}, {"name": "public"}])
        );
        assert!(patch(&pod(bare), &BTreeSet::new()).is_empty());
    }

    #[test]
    fn candidates_are_pods_being_created_outside_the_protected_namespaces() {
        let pod_json = json!({"metadata": {"labels": {"app": "x"}}, "spec": {}});
        let request = parse_review(&review(&pod_json)).unwrap();
        assert!(is_candidate(&request, "regcred"));
        let mut own = request.clone();
        own.namespace = Some("regcred".into());
        assert!(!is_candidate(&own, "regcred"));
        let mut system = request.clone();
        system.namespace = Some("kube-system".into());
        assert!(!is_candidate(&system, "regcred"));
        let mut update = request.clone();
        update.operation = "UPDATE".into();
        assert!(!is_candidate(&update, "regcred"));
        let mut other = request.clone();
        other.kind.kind = "Deployment".into();
        other.kind.group = "apps".into();
        assert!(!is_candidate(&other, "regcred"));
        let opted_out = json!({"metadata": {"labels": {OPT_OUT_LABEL: "false"}}, "spec": {}});
        assert!(!is_candidate(
            &parse_review(&review(&opted_out)).unwrap(),
            "regcred"
        ));
    }
}
