//! A controller's world for the leadership tests.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};

use crate::common::*;

/// A controller's world: a secret name and namespace prefix of its own, an identity with the
/// chart's RBAC for it (its Lease lives in the identity's namespace), and a config file.
pub struct World {
    pub admin: kube::Client,
    pub secret: String,
    pub prefix: String,
    pub who: Identity,
    pub config: PathBuf,
    _config_dir: tempfile::TempDir,
}

impl World {
    /// `entry`: lines inside the secret entry (four spaces).
    pub async fn new(cluster: Option<&PrivateCluster>, entry: &str) -> Self {
        let admin = match cluster {
            Some(c) => c.admin().await,
            None => stack().admin().await,
        };
        let secret = unique("pull");
        let prefix = unique("lead");
        let service_accounts = entry.contains("serviceAccounts");
        let who = chart_identity(&admin, &[&secret], service_accounts).await;
        if let Some(c) = cluster {
            c.point_at_me(&who);
        }
        let yaml = format!(
            "secrets:\n  - name: {secret}\n    registries:\n{}    namespaces:\n      include: [\"{prefix}-*\"]\n{entry}",
            registry_alias_yaml()
        );
        let (dir, config) = config_file(&yaml);
        Self {
            admin,
            secret,
            prefix,
            who,
            config,
            _config_dir: dir,
        }
    }

    pub fn ns(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.prefix)
    }

    pub async fn namespaces(&self, suffixes: &[&str]) -> Vec<String> {
        let names: Vec<String> = suffixes.iter().map(|s| self.ns(s)).collect();
        create_namespaces_at_once(&self.admin, &names, &[], 8).await;
        names
    }

    /// `regcred run` as `who` (default: this world's identity) with its Lease in the world's
    /// namespace; its AWS access key is set up by `aws` first.
    pub fn start(
        &self,
        who: Option<&Identity>,
        aws: &serde_json::Value,
        args: &[&str],
    ) -> (Running, String) {
        let (cmd, key) = regcred(who.unwrap_or(&self.who));
        stack().set_aws_key(&key, aws);
        let config = self.config.to_str().unwrap();
        let mut all = vec!["--config", config, "--lease-namespace", &self.who.namespace];
        all.extend_from_slice(args);
        (Running::start(cmd, &all), key)
    }

    /// Every namespace's secret, read in one list.
    pub async fn all_secrets(&self) -> BTreeMap<String, Secret> {
        Api::<Secret>::all(self.admin.clone())
            .list(&ListParams::default().fields(&format!("metadata.name={}", self.secret)))
            .await
            .expect("list secrets")
            .items
            .into_iter()
            .filter_map(|s| Some((s.metadata.namespace.clone()?, s)))
            .collect()
    }

    pub async fn wait_served(&self, namespaces: &[String], timeout: Duration) {
        let hosts = [stack().var("REGCRED_TEST_REGISTRY")];
        wait_for("every namespace served", timeout, || async {
            let all = self.all_secrets().await;
            namespaces
                .iter()
                .all(|ns| managed_secret_problem(all.get(ns), &hosts).is_none())
                .then_some(())
        })
        .await;
    }

    /// Another ServiceAccount with the chart's RBAC for this world's secret, in the same
    /// namespace (so it competes for the same Lease) — a second replica the audit log tells
    /// apart from the first.
    pub async fn second_identity(&self, cluster: Option<&PrivateCluster>, sas: bool) -> Identity {
        let who = identity(
            &self.admin,
            &self.who.namespace,
            chart_cluster_rules(&[&self.secret], sas),
            chart_namespace_rules("regcred"),
        )
        .await;
        if let Some(c) = cluster {
            c.point_at_me(&who);
        }
        who
    }
}

/// Whether `/metrics` has any sample of this metric name.
pub fn exports(run: &Running, name: &str) -> bool {
    let Some((200, text)) = run.get("/metrics") else {
        panic!("no /metrics");
    };
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .any(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")))
}

pub fn leads(run: &Running) -> bool {
    is(run.metric("regcred_leader"), 1.0)
}
