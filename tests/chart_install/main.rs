//! The installed Helm chart on the real stack: regcred, started with the chart's
//! ServiceAccount token and the chart's own rendered config, does its whole job, and that
//! ServiceAccount is refused everything else.

mod access;
#[path = "../common/mod.rs"]
mod common;
mod run;
mod webhook;

use std::path::PathBuf;
use std::process::Command;

use common::helm::*;
use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, Role};
use kube::api::{Api, ObjectMeta, PostParams};
use serde_json::json;

/// The config file the chart gave regcred: its ConfigMap's `config.yaml`, in a file.
async fn installed_config(
    admin: &kube::Client,
    namespace: &str,
    name: &str,
) -> (tempfile::TempDir, PathBuf) {
    let cm = Api::<ConfigMap>::namespaced(admin.clone(), namespace)
        .get(name)
        .await
        .expect("the chart's ConfigMap");
    config_file(&cm.data.expect("data")["config.yaml"])
}

/// A chart installation whose config serves `<prefix>-*` namespaces from the stack's
/// registry, with secret `secret`, acting as the chart's ServiceAccount.
struct Installed {
    admin: kube::Client,
    release: String,
    secret: String,
    prefix: String,
    who: Identity,
    config: PathBuf,
    _config_dir: tempfile::TempDir,
}

async fn install_for_test(mode: &str, service_accounts: &[&str]) -> Installed {
    let admin = stack().admin().await;
    let release = unique("regcred");
    let secret = unique("pull");
    let prefix = unique("chart");
    install(
        &release,
        &release,
        &json!({
            "mode": mode,
            // These tests check what the chart grants, acting as its ServiceAccount; its
            // pods need not run (the cluster suite runs them on the node).
            "nodeSelector": {"regcred.test/run-here": "never"},
            "config": {"secrets": [{
                "name": secret,
                "registries": [stack_registry(), "public.ecr.aws"],
                "namespaces": {"include": [format!("{prefix}-*")]},
                "serviceAccounts": service_accounts,
            }]},
        }),
    );
    // The chart's objects exist; the ServiceAccount is the chart's, not one we made.
    let sa = Api::<ServiceAccount>::namespaced(admin.clone(), &release)
        .get(&release)
        .await
        .expect("the chart's ServiceAccount");
    assert_eq!(
        sa.metadata.labels.unwrap()["app.kubernetes.io/instance"],
        release
    );
    let (dir, config) = installed_config(&admin, &release, &release).await;
    let who = identity_of(&admin, &release, &release).await;
    Installed {
        admin,
        release,
        secret,
        prefix,
        who,
        config,
        _config_dir: dir,
    }
}

impl Installed {
    /// `helm install` made the workload and its RBAC.
    async fn assert_installed(&self) {
        let admin = &self.admin;
        let deployment = Api::<Deployment>::namespaced(admin.clone(), &self.release)
            .get_opt(&self.release)
            .await
            .unwrap();
        let cluster_role = Api::<ClusterRole>::all(admin.clone())
            .get_opt(&self.release)
            .await
            .unwrap();
        let role = Api::<Role>::namespaced(admin.clone(), &self.release)
            .get_opt(&self.release)
            .await
            .unwrap();
        assert!(deployment.is_some() && cluster_role.is_some() && role.is_some());
    }

    /// `ns` has regcred's secret, its `default` ServiceAccount references it after
    /// `others`, and the secret pulls the stack's image.
    async fn assert_served(&self, ns: &str, others: &[&str]) {
        let secret = get_secret(&self.admin, ns, &self.secret)
            .await
            .expect("secret written");
        assert_eq!(
            secret.metadata.labels.as_ref().unwrap()["app.kubernetes.io/managed-by"],
            "regcred"
        );
        let sa = Api::<ServiceAccount>::namespaced(self.admin.clone(), ns)
            .get("default")
            .await
            .unwrap();
        let refs: Vec<_> = sa
            .image_pull_secrets
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect();
        let mut want: Vec<String> = others.iter().map(|s| (*s).to_owned()).collect();
        want.push(self.secret.clone());
        assert_eq!(refs, want);
        let authfile = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            authfile.path(),
            &secret.data.unwrap()[".dockerconfigjson"].0,
        )
        .unwrap();
        let pulled = skopeo_pull(authfile.path());
        assert!(pulled.status.success(), "{}", stderr(&pulled));
    }

    fn ns(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.prefix)
    }

    fn regcred(&self, args: &[&str]) -> Command {
        let (mut cmd, _key) = regcred(&self.who);
        cmd.args(args).arg("--config").arg(&self.config);
        cmd
    }

    /// [`Installed::may`] for `VERB RESOURCE NS/NAME`.
    async fn may_ask(&self, ask: &str) -> bool {
        let mut words = ask.split(' ');
        let (verb, resource, place) = (
            words.next().unwrap(),
            words.next().unwrap(),
            words.next().unwrap(),
        );
        let (ns, name) = place.split_once('/').unwrap();
        let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        self.may(verb, resource, some(ns).as_deref(), some(name).as_deref())
            .await
    }

    /// Whether the chart's ServiceAccount may do this (a SubjectAccessReview, as admin).
    async fn may(
        &self,
        verb: &str,
        resource: &str,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> bool {
        // "leases.coordination.k8s.io": resource, then group.
        let (resource, group) = resource.split_once('.').unwrap_or((resource, ""));
        let (resource, subresource) = resource
            .split_once('/')
            .map_or((resource, None), |(r, s)| (r, Some(s.to_owned())));
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(format!(
                    "system:serviceaccount:{}:{}",
                    self.release, self.release
                )),
                groups: Some(vec![
                    "system:serviceaccounts".into(),
                    format!("system:serviceaccounts:{}", self.release),
                    "system:authenticated".into(),
                ]),
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(verb.into()),
                    group: Some(group.into()),
                    resource: Some(resource.into()),
                    subresource,
                    namespace: namespace.map(str::to_owned),
                    name: name.map(str::to_owned),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        Api::<SubjectAccessReview>::all(self.admin.clone())
            .create(&PostParams::default(), &review)
            .await
            .expect("SubjectAccessReview")
            .status
            .expect("status")
            .allowed
    }
}

async fn create_foreign_secret(admin: &kube::Client, ns: &str, name: &str) {
    Api::<Secret>::namespaced(admin.clone(), ns)
        .create(
            &PostParams::default(),
            &Secret {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    ..ObjectMeta::default()
                },
                string_data: Some([("note".to_owned(), "not regcred's".to_owned())].into()),
                ..Secret::default()
            },
        )
        .await
        .unwrap();
}
