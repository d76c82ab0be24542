//! The race users report against every secret-copying tool: one `kubectl apply` of a new
//! Namespace, a ServiceAccount and a Deployment using it. The ServiceAccount admission
//! plugin copies `imagePullSecrets` into a pod only when the pod is created, so a pod made
//! before regcred patched its ServiceAccount never gets the secret.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::json;

use super::helm::{kubectl, ok};
use super::pods::{Pull, pull_state};
use super::rotation::{Release, Settings, aws_key, node_values};

const SECRET: &str = "pull-race";
use super::{stack, unique, wait_for};

/// How the tries ended.
#[derive(Debug, Default)]
pub struct Race {
    pub tries: usize,
    /// Pods created without the pull secret.
    pub without_secret: usize,
    /// Pods whose pull failed.
    pub pull_failed: usize,
}

/// The Namespace, ServiceAccount and Deployment of one try, as one manifest.
fn manifest(namespace: &str, image: &str) -> String {
    let objects = [
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": "app", "namespace": namespace}}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "app", "namespace": namespace},
               "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "app"}},
                 "template": {"metadata": {"labels": {"app": "app"}},
                   "spec": {"serviceAccountName": "app", "hostNetwork": true,
                     "terminationGracePeriodSeconds": 0,
                     "containers": [{"name": "app", "image": image,
                       "command": ["/bin/busybox", "sleep", "3600"]}]}}}}),
    ];
    let mut text = String::new();
    for o in objects {
        text.push_str("---\n");
        text.push_str(&o.to_string());
        text.push('\n');
    }
    text
}

/// `tries` times: one apply, then the Deployment's pod: was it created with the secret, and
/// did it pull? With regcred's controller (installed here) serving `<prefix>-*` and its
/// `default` and `app` ServiceAccounts; `extra` values go to the chart (e.g. the webhook).
pub async fn race(tries: usize, extra: &serde_json::Value) -> Race {
    let admin = stack().admin().await;
    let prefix = unique("race");
    let settings = Settings {
        ttl: Duration::from_hours(1),
        lifetimes: 1,
        every: Duration::from_secs(1),
    };
    let key = aws_key("AKIARACE", &settings);
    let mut values = node_values(
        "controller",
        SECRET,
        &format!("{prefix}-*"),
        &["default", "app"],
    );
    json_merge(&mut values, extra);
    let release = Release::install(&admin, "regcred-race", &key, &values).await;
    release.wait_available(&admin, Duration::from_mins(3)).await;
    if values["webhook"]["enabled"] == true {
        wait_ca_bundle(&admin, &release.name).await;
    }
    let image = stack().var("REGCRED_TEST_IMAGE").to_owned();
    let mut result = Race::default();
    let dir = tempfile::tempdir().unwrap();
    for i in 0..tries {
        let ns = format!("{prefix}-{i}");
        let file = dir.path().join(format!("{ns}.yaml"));
        std::fs::write(&file, manifest(&ns, &image)).unwrap();
        ok(
            "kubectl apply",
            &kubectl(&["apply", "-f", file.to_str().unwrap()]),
        );
        let pods = Api::<Pod>::namespaced(admin.clone(), &ns);
        let pod = wait_for("the Deployment's pod", Duration::from_mins(2), || async {
            pods.list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .next()
        })
        .await;
        let with_secret = pod
            .spec
            .as_ref()
            .and_then(|s| s.image_pull_secrets.as_ref())
            .is_some_and(|r| r.iter().any(|r| r.name == SECRET));
        let name = pod.metadata.name.clone().unwrap();
        let pulled = wait_for(
            "the pod's pull to be decided",
            Duration::from_mins(1),
            || async {
                match pull_state(&pods.get(&name).await.ok()?) {
                    Pull::Undecided => None,
                    done => Some(done),
                }
            },
        )
        .await;
        result.tries += 1;
        result.without_secret += usize::from(!with_secret);
        result.pull_failed += usize::from(pulled != Pull::Running);
        let _ = Api::<Namespace>::all(admin.clone())
            .delete(&ns, &DeleteParams::default())
            .await;
    }
    drop(release);
    result
}

/// Chart values that turn the webhook on, the API server calling it on this host.
pub fn webhook_on_the_node() -> serde_json::Value {
    let port = super::free_port();
    json!({"webhook": {"enabled": true, "port": port, "url": format!("https://127.0.0.1:{port}/mutate")}})
}

/// Waits until regcred published its CA in the webhook configuration `name`.
async fn wait_ca_bundle(admin: &kube::Client, name: &str) {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    let api = Api::<MutatingWebhookConfiguration>::all(admin.clone());
    wait_for("the webhook's caBundle", Duration::from_mins(1), || async {
        let config = api.get_opt(name).await.ok()??;
        let bundle = config.webhooks?.first()?.client_config.ca_bundle.clone()?;
        (!bundle.0.is_empty()).then_some(())
    })
    .await;
}

/// Merges `extra` into `into`, objects key by key.
fn json_merge(into: &mut serde_json::Value, extra: &serde_json::Value) {
    match (into, extra) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                json_merge(a.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        }
        (slot, v) => *slot = v.clone(),
    }
}
