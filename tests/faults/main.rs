//! The fault suite (`make test-faults` runs this suite alone; `make test` runs it with the
//! rest): `regcred run` on the real stack, as a ServiceAccount holding only the chart's
//! RBAC, while something breaks. Each test says what it breaks, then asserts nothing was
//! lost: every selected namespace keeps a parseable pull secret with an unexpired token for
//! every registry, and no foreign secret is touched.
//!
//! Faults that need to break the cluster itself (etcd stopped, a flood of namespaces) run
//! in a private cluster (`PrivateCluster`: its own etcd and kube-apiserver), so the shared
//! stack is neither disturbed nor filled.
#![allow(clippy::print_stderr)] // Tests report what they saw (timings, samples).

#[path = "../common/mod.rs"]
mod common;
mod objects;
mod outages;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};

const PUBLIC: &str = "public.ecr.aws";

/// A controller's world: a secret name and namespace prefix of its own, an identity with
/// the chart's RBAC for it, and a config file; on the shared stack or a private cluster.
struct World {
    admin: kube::Client,
    secret: String,
    prefix: String,
    hosts: Vec<String>,
    who: Identity,
    config: PathBuf,
    _config_dir: tempfile::TempDir,
}

impl World {
    /// `with_public` adds ECR Public (a second token source); `entry` are lines inside the
    /// secret entry (four spaces), `top` top-level lines.
    async fn new(
        cluster: Option<&PrivateCluster>,
        with_public: bool,
        service_accounts: bool,
        entry: &str,
        top: &str,
    ) -> Self {
        let admin = match cluster {
            Some(c) => c.admin().await,
            None => stack().admin().await,
        };
        let secret = unique("pull");
        let prefix = unique("fault");
        let who = chart_identity(&admin, &[&secret], service_accounts).await;
        if let Some(c) = cluster {
            c.point_at_me(&who);
        }
        let mut hosts = vec![stack().var("REGCRED_TEST_REGISTRY").to_owned()];
        let mut registries = registry_alias_yaml();
        if with_public {
            hosts.push(PUBLIC.to_owned());
            registries.push_str("      - public.ecr.aws\n");
        }
        let yaml = format!(
            "secrets:\n  - name: {secret}\n    registries:\n{registries}    namespaces:\n      include: [\"{prefix}-*\"]\n{entry}{top}"
        );
        let (dir, config) = config_file(&yaml);
        Self {
            admin,
            secret,
            prefix,
            hosts,
            who,
            config,
            _config_dir: dir,
        }
    }

    fn ns(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.prefix)
    }

    async fn namespaces(&self, suffixes: &[&str]) -> Vec<String> {
        let names: Vec<String> = suffixes.iter().map(|s| self.ns(s)).collect();
        create_namespaces_at_once(&self.admin, &names, &[], 8).await;
        names
    }

    /// `regcred run` as this world's identity; `cmd` may be adjusted first.
    fn start(&self, adjust: impl FnOnce(&mut Command, &str), args: &[&str]) -> (Running, String) {
        let (mut cmd, key) = regcred(&self.who);
        adjust(&mut cmd, &key);
        let config = self.config.to_str().unwrap();
        let mut all = vec!["--config", config, "--lease-namespace", &self.who.namespace];
        all.extend_from_slice(args);
        (Running::start(cmd, &all), key)
    }

    async fn secret_in(&self, ns: &str) -> Option<Secret> {
        get_secret(&self.admin, ns, &self.secret).await
    }

    /// Every namespace's secret, read in one list.
    async fn all_secrets(&self) -> BTreeMap<String, Secret> {
        Api::<Secret>::all(self.admin.clone())
            .list(&ListParams::default().fields(&format!("metadata.name={}", self.secret)))
            .await
            .expect("list secrets")
            .items
            .into_iter()
            .filter_map(|s| Some((s.metadata.namespace.clone()?, s)))
            .collect()
    }

    /// Waits until every one of `namespaces` holds a token expiring after `after`.
    async fn wait_expiring_after(
        &self,
        what: &str,
        namespaces: &[String],
        after: jiff::Timestamp,
        timeout: Duration,
    ) {
        wait_for(what, timeout, || async {
            let all = self.all_secrets().await;
            namespaces
                .iter()
                .all(|ns| all.get(ns).is_some_and(|s| expires_at(s) > after))
                .then_some(())
        })
        .await;
    }

    async fn wait_served(&self, namespaces: &[String], timeout: Duration) {
        wait_for("every namespace served", timeout, || async {
            let all = self.all_secrets().await;
            namespaces
                .iter()
                .all(|ns| managed_secret_problem(all.get(ns), &self.hosts).is_none())
                .then_some(())
        })
        .await;
    }

    /// Nothing lost: each of these namespaces holds a sound, unexpired secret of regcred's.
    async fn assert_nothing_lost(&self, namespaces: &[String]) {
        let all = self.all_secrets().await;
        for ns in namespaces {
            if let Some(why) = managed_secret_problem(all.get(ns), &self.hosts) {
                panic!("{ns}: secret {} {why}", self.secret);
            }
        }
    }

    /// Samples every namespace's secret (one list) every 10 ms until stopped.
    fn watchman(&self, namespaces: &[String]) -> Watchman {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let api = Api::<Secret>::all(self.admin.clone());
        let params = ListParams::default().fields(&format!("metadata.name={}", self.secret));
        let (namespaces, hosts) = (namespaces.to_vec(), self.hosts.clone());
        let task = tokio::spawn(async move {
            let mut seen = Sampled::default();
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !flag.load(Ordering::Relaxed) {
                tick.tick().await;
                let Ok(list) = api.list(&params).await else {
                    seen.unanswered += 1;
                    continue;
                };
                seen.samples += 1;
                let by_ns: BTreeMap<String, Secret> = list
                    .items
                    .into_iter()
                    .filter_map(|s| Some((s.metadata.namespace.clone()?, s)))
                    .collect();
                for ns in &namespaces {
                    if let Some(why) = managed_secret_problem(by_ns.get(ns), &hosts) {
                        seen.problems
                            .push(format!("sample {}: {ns}: {why}", seen.samples));
                    }
                    if let Some(s) = by_ns.get(ns) {
                        seen.expiries.insert(expires_at(s));
                    }
                }
            }
            seen
        });
        Watchman { stop, task }
    }
}

#[derive(Debug, Default)]
struct Sampled {
    samples: u64,
    unanswered: u64,
    problems: Vec<String>,
    expiries: std::collections::BTreeSet<jiff::Timestamp>,
}

struct Watchman {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Sampled>,
}

impl Sampled {
    /// Asserts the reader sampled often and never found a secret missing, broken or expired.
    fn assert_clean(&self) {
        eprintln!(
            "{} samples ({} unanswered), {} distinct tokens, problems: {:?}",
            self.samples,
            self.unanswered,
            self.expiries.len(),
            self.problems.iter().take(5).collect::<Vec<_>>()
        );
        assert!(self.samples > 100, "the reader sampled: {}", self.samples);
        assert!(
            self.problems.is_empty(),
            "{} bad samples, first: {:?}",
            self.problems.len(),
            self.problems.first()
        );
    }
}

impl Watchman {
    async fn finish(self) -> Sampled {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("watchman")
    }
}
