//! The fault suite (`make test-faults` runs this file alone; `make test` runs it with the
//! rest): `regcred run` on the real stack, as a ServiceAccount holding only the chart's
//! RBAC, while something breaks. Each test says what it breaks, then asserts nothing was
//! lost: every selected namespace keeps a parseable pull secret with an unexpired token for
//! every registry, and no foreign secret is touched.
//!
//! Faults that need to break the cluster itself (etcd stopped, a flood of namespaces) run
//! in a private cluster (`PrivateCluster`: its own etcd and kube-apiserver), so the shared
//! stack is neither disturbed nor filled.
#![allow(clippy::print_stderr)] // Tests report what they saw (timings, samples).

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;

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

/// AWS down for several refresh periods, then long enough for the token to expire, then
/// back. Tokens live 30 s and are renewed 24 s before expiry (every 6 s). While AWS is down
/// for three refresh periods the secrets keep their token, unexpired, and readiness holds;
/// when the token expires readiness drops, and still nothing is written (an expired secret
/// beats no secret or an empty one); retries back off; once AWS is back every secret is
/// renewed promptly.
#[tokio::test]
async fn aws_down_for_several_refresh_periods_then_back() {
    let w = World::new(
        None,
        true,
        false,
        "",
        "refresh:\n  before: 24s\n  retryMin: 1s\n  retryMax: 3s\n",
    )
    .await;
    let names = w.namespaces(&["a", "b", "c"]).await;
    let mut aws = FakeAws::start(Some("30s"));
    let (run, _key) = w.start(
        |cmd, _| {
            cmd.env("AWS_ENDPOINT_URL", aws.endpoint())
                .env("AWS_ENDPOINT_URL_ECR_PUBLIC", aws.public_endpoint());
        },
        &[],
    );
    run.wait_ready(Duration::from_mins(1)).await;
    w.wait_served(&names, Duration::from_secs(30)).await;
    let before = w.all_secrets().await;

    aws.stop();
    let stopped = Instant::now();
    let failures = || {
        run.metric("regcred_token_refreshes_total{registry=\"public.ecr.aws\",result=\"failure\"}")
    };
    // Three refresh periods (6 s each) with AWS down: the token in place is still good.
    while stopped.elapsed() < Duration::from_secs(18) {
        let now = w.all_secrets().await;
        for ns in &names {
            assert_eq!(
                now[ns].metadata.resource_version, before[ns].metadata.resource_version,
                "{ns}: written while AWS was down"
            );
            assert_eq!(managed_secret_problem(now.get(ns), &w.hosts), None, "{ns}");
        }
        assert!(run.is_ready(), "not ready with an unexpired token at hand");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        failures() >= 3.0,
        "renewals failed over several refresh periods: {}",
        failures()
    );

    // Down until the token expires (30 s after it was fetched): readiness drops.
    wait_for(
        "readiness to drop with the token expired",
        Duration::from_secs(40),
        || async { (!run.is_ready()).then_some(()) },
    )
    .await;
    let window = stopped.elapsed();
    // Backoff bounds the retries: at most one per retryMin (1 s), after the first 6 s.
    let bound = window.as_secs_f64() - 6.0 + 2.0;
    assert!(failures() <= bound, "{} failures in {window:?}", failures());
    let during = w.all_secrets().await;
    for ns in &names {
        assert_eq!(
            during[ns].metadata.resource_version, before[ns].metadata.resource_version,
            "{ns}: the last good secret stays, even expired"
        );
        assert_eq!(during[ns].data, before[ns].data);
    }

    aws.resume();
    let back = Instant::now();
    w.wait_served(&names, Duration::from_secs(30)).await;
    let took = back.elapsed();
    eprintln!("AWS back -> every secret renewed in {took:?}");
    // Within retryMax (3 s) of the endpoint's return, plus the writes, on a loaded machine.
    assert!(took < Duration::from_secs(10), "{took:?}");
    wait_for("ready again", Duration::from_secs(10), || async {
        run.is_ready().then_some(())
    })
    .await;
    w.assert_nothing_lost(&names).await;
}

/// The API server killed under `run` and started again, with drift made meanwhile through
/// another API server (a secret deleted, a namespace created): the controller does not
/// restart, and repairs both once its API server is back.
#[tokio::test]
async fn an_apiserver_restart_is_survived_and_drift_made_meanwhile_repaired() {
    let w = World::new(None, true, false, "", "").await;
    let ns = w.namespaces(&["restart"]).await.remove(0);
    let mut apiserver = PrivateApiserver::start();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kubeconfig_for_server(&w.who.kubeconfig, &apiserver.url(), dir.path());
    let (mut run, _key) = w.start(
        |cmd, _| {
            cmd.env("KUBECONFIG", &kubeconfig)
                .env("RUST_LOG", "info,kube_runtime=debug,regcred=debug");
        },
        &[],
    );
    run.wait_ready(Duration::from_mins(1)).await;
    w.wait_served(std::slice::from_ref(&ns), Duration::from_secs(10))
        .await;

    apiserver.kill();
    Api::<Secret>::namespaced(w.admin.clone(), &ns)
        .delete(&w.secret, &DeleteParams::default())
        .await
        .unwrap();
    let late = w.namespaces(&["late"]).await.remove(0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        w.secret_in(&ns).await.is_none(),
        "nothing can repair it while the API server is down"
    );
    apiserver.resume();
    // A restarted API server answers 403 for a few seconds while its RBAC caches fill; the
    // watches retry (every 4 s at most) until it authorizes them again.
    let t0 = Instant::now();
    w.wait_served(&[ns.clone(), late.clone()], Duration::from_mins(1))
        .await;
    eprintln!(
        "repaired {:?} after the API server was ready again",
        t0.elapsed()
    );
    assert!(
        run.wait_exit(Duration::ZERO).is_none(),
        "the controller did not restart"
    );
    w.assert_nothing_lost(&[ns, late]).await;
}

/// Returns as soon as a watch sees a secret written with a token expiring after `expiry`:
/// a rotation has started.
async fn first_write_after(w: &World, expiry_before: jiff::Timestamp) {
    use futures::StreamExt as _;
    use kube::runtime::watcher;

    let api = Api::<Secret>::all(w.admin.clone());
    let config = watcher::Config::default().fields(&format!("metadata.name={}", w.secret));
    let mut events = Box::pin(watcher(api, config));
    let started = async move {
        while let Some(event) = events.next().await {
            if let Ok(watcher::Event::Apply(s)) = event
                && expires_at(&s) > expiry_before
            {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), started)
        .await
        .expect("a rotation within 30 s");
}

/// Two replicas, tokens that live 20 s (a rotation every 10 s), 150 namespaces (in a
/// private cluster); the leader is SIGKILLed as soon as the first secret of a rotation is
/// written, while it is rewriting the others. The standby takes over within the Lease
/// duration and finishes the rotation; a reader listing every secret every 10 ms never
/// finds one missing, broken or expired.
#[tokio::test]
async fn a_leader_killed_mid_rotation_leaves_no_gap_and_the_standby_takes_over() {
    let cluster = PrivateCluster::start(&[]);
    let w = World::new(Some(&cluster), false, false, "", "").await;
    let names: Vec<String> = (0..150).map(|i| w.ns(&format!("{i:03}"))).collect();
    create_namespaces_at_once(&w.admin, &names, &[], 32).await;
    let short_tokens = |_: &mut Command, key: &str| {
        stack().set_aws_key(key, &json!({"ttl": 20}));
    };
    let lease = ["--lease-duration", "3s"];
    let (a, _) = w.start(
        short_tokens,
        &[&lease[..], &["--identity", "replica-a"]].concat(),
    );
    let (b, _) = w.start(
        short_tokens,
        &[&lease[..], &["--identity", "replica-b"]].concat(),
    );
    wait_for("exactly one leader", Duration::from_secs(30), || async {
        is(a.metric("regcred_leader") + b.metric("regcred_leader"), 1.0).then_some(())
    })
    .await;
    let (mut leader, standby) = if is(a.metric("regcred_leader"), 1.0) {
        (a, b)
    } else {
        (b, a)
    };
    leader.wait_ready(Duration::from_mins(1)).await;
    w.wait_served(&names, Duration::from_secs(30)).await;
    let first = w.all_secrets().await;
    let first_expiry = names.iter().map(|ns| expires_at(&first[ns])).max().unwrap();

    let watchman = w.watchman(&names);
    first_write_after(&w, first_expiry).await;
    leader.signal("KILL");
    let killed = Instant::now();
    leader.wait_exit(Duration::from_secs(5)).expect("killed");
    let at_kill = w.all_secrets().await;
    let rotated = names
        .iter()
        .filter(|ns| expires_at(&at_kill[*ns]) > first_expiry)
        .count();
    eprintln!(
        "leader killed mid-rotation: {rotated} of {} namespaces had the new token",
        names.len()
    );
    assert!(rotated < names.len(), "the kill came after the rotation");

    wait_for("the standby to lead", Duration::from_secs(15), || async {
        is(standby.metric("regcred_leader"), 1.0).then_some(())
    })
    .await;
    eprintln!("standby leads {:?} after the kill", killed.elapsed());
    // The standby's own tokens everywhere, then one more rotation of its own.
    let series = format!(
        "regcred_token_refreshes_total{{registry=\"{}\",result=\"success\"}}",
        w.hosts[0]
    );
    wait_for(
        "the standby to rotate twice",
        Duration::from_mins(1),
        || async { (standby.metric(&series) >= 2.0).then_some(()) },
    )
    .await;
    let last = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(15);
    w.wait_expiring_after(
        "every secret to hold the standby's second token",
        &names,
        last,
        Duration::from_secs(30),
    )
    .await;
    watchman.finish().await.assert_clean();
    w.assert_nothing_lost(&names).await;
}

/// etcd stopped for 15 s under a running API server and `run`, across a token renewal
/// (tokens live 60 s, renewed 50 s before expiry): the controller keeps running, and once
/// etcd is back it writes the renewed token everywhere and serves a new namespace and a
/// deleted secret.
#[tokio::test]
async fn etcd_stopped_briefly_then_everything_converges() {
    let mut cluster = PrivateCluster::start(&[]);
    let w = World::new(
        Some(&cluster),
        false,
        false,
        "",
        "refresh:\n  before: 50s\n  retryMin: 1s\n  retryMax: 3s\n",
    )
    .await;
    let names = w.namespaces(&["a", "b", "c", "d", "e"]).await;
    let (mut run, _key) = w.start(|_, key| stack().set_aws_key(key, &json!({"ttl": 60})), &[]);
    run.wait_ready(Duration::from_mins(1)).await;
    w.wait_served(&names, Duration::from_secs(30)).await;
    let first = w.all_secrets().await;
    let first_expiry = names.iter().map(|ns| expires_at(&first[ns])).max().unwrap();

    cluster.stop_etcd();
    let stopped = Instant::now();
    while stopped.elapsed() < Duration::from_secs(15) {
        assert!(
            run.wait_exit(Duration::ZERO).is_none(),
            "regcred exited with etcd down"
        );
        assert!(
            matches!(run.get("/livez"), Some((200, _))),
            "/livez answers while etcd is down"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    cluster.resume_etcd();
    let back = Instant::now();
    // The renewal (due 10 s after the first token) could not be written meanwhile.
    w.wait_served(&names, Duration::from_mins(1)).await;
    w.wait_expiring_after(
        "the renewed token everywhere",
        &names,
        first_expiry,
        Duration::from_mins(1),
    )
    .await;
    eprintln!("converged {:?} after etcd came back", back.elapsed());
    let late = w.namespaces(&["late"]).await.remove(0);
    Api::<Secret>::namespaced(w.admin.clone(), &names[0])
        .delete(&w.secret, &DeleteParams::default())
        .await
        .unwrap();
    let mut all = names.clone();
    all.push(late);
    w.wait_served(&all, Duration::from_secs(30)).await;
    assert!(
        run.wait_exit(Duration::ZERO).is_none(),
        "still the same process"
    );
    run.wait_ready(Duration::from_secs(30)).await;
    w.assert_nothing_lost(&all).await;
}

/// 500 namespaces created at once (100 requests in flight) under a running controller: all
/// get their secret within a bounded time, from the one token it already held, each written
/// once.
#[tokio::test]
async fn a_flood_of_500_namespaces_gets_secrets_from_one_token_call() {
    let cluster = PrivateCluster::start(&[]);
    let w = World::new(Some(&cluster), false, false, "", "").await;
    let (run, key) = w.start(|_, _| {}, &[]);
    run.wait_ready(Duration::from_mins(1)).await;
    let names: Vec<String> = (0..500).map(|i| w.ns(&format!("{i:03}"))).collect();
    let t0 = Instant::now();
    create_namespaces_at_once(&w.admin, &names, &[], 100).await;
    let created = t0.elapsed();
    w.wait_served(&names, Duration::from_mins(3)).await;
    let took = t0.elapsed();
    eprintln!("500 namespaces created in {created:?}; all served {took:?} after the first");
    assert!(took < Duration::from_secs(90), "{took:?}");
    assert_eq!(
        stack().token_calls(&key),
        1,
        "one token call for all of them"
    );
    assert!(
        is(
            run.metric("regcred_secret_writes_total{result=\"created\"}"),
            500.0
        ),
        "each written once: {}",
        run.metric("regcred_secret_writes_total{result=\"created\"}")
    );
    assert!(is(run.metric("regcred_namespaces_selected"), 500.0));
    w.assert_nothing_lost(&names).await;
    assert!(run.is_ready());
}

/// A secret's data: key and bytes.
type Data<'a> = Vec<(&'a str, &'a [u8])>;

fn secret_object(name: &str, managed: bool, type_: &str, data: &[(&str, &[u8])]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: managed.then(|| [(MANAGED_BY.to_owned(), "regcred".to_owned())].into()),
            ..ObjectMeta::default()
        },
        type_: Some(type_.to_owned()),
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.to_vec())))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// A namespace of the world holding a secret of the world's name in this shape.
async fn plant(
    w: &World,
    suffix: &str,
    managed: bool,
    type_: &str,
    data: &Data<'_>,
) -> (String, Secret) {
    let ns = w.namespaces(&[suffix]).await.remove(0);
    let created = Api::<Secret>::namespaced(w.admin.clone(), &ns)
        .create(
            &PostParams::default(),
            &secret_object(&w.secret, managed, type_, data),
        )
        .await
        .unwrap_or_else(|e| panic!("{suffix}: {e}"));
    (ns, created)
}

/// Same-name secrets in bad shapes, present before `run` starts: regcred's own (labelled)
/// of the wrong type with garbage, with `null`, a non-object `auths`, a non-object entry,
/// `{}`, entries missing keys, a registry missing, no `.dockerconfigjson` at all: all are
/// repaired. Someone else's (unlabelled) in the same bad shapes are left byte for byte and
/// reported (a ForeignSecret Event in each namespace, the `foreign` metric).
#[tokio::test]
async fn malformed_secrets_are_repaired_if_regcreds_and_reported_if_not() {
    let w = World::new(None, true, false, "", "").await;
    let alias = w.hosts[0].clone();
    let auths = |entries: serde_json::Value| json!({ "auths": entries }).to_string();
    let entries = |pairs: Vec<(&str, serde_json::Value)>| {
        serde_json::Value::Object(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    };
    let partial = auths(entries(vec![
        (&alias, json!({"username": "AWS"})),
        (PUBLIC, json!({"username": "AWS", "password": "x"})),
    ]));
    let one_host = auths(entries(vec![(
        PUBLIC,
        json!({"username": "AWS", "password": "p", "auth": "QVdTOnA="}),
    )]));
    let not_object = auths(entries(vec![(&alias, json!("notobj"))]));
    let garbage: &[u8] = b"\x00\xffnot json{{";
    let cases: Vec<(&str, &str, Data)> = vec![
        (
            "opaque-garbage",
            "Opaque",
            vec![(".dockerconfigjson", garbage)],
        ),
        ("opaque-nokey", "Opaque", vec![("other", &b"x"[..])]),
        (
            "null",
            DOCKERCONFIG_TYPE,
            vec![(".dockerconfigjson", &b"null"[..])],
        ),
        (
            "auths-string",
            DOCKERCONFIG_TYPE,
            vec![(".dockerconfigjson", &br#"{"auths":"x"}"#[..])],
        ),
        (
            "entry-string",
            DOCKERCONFIG_TYPE,
            vec![(".dockerconfigjson", not_object.as_bytes())],
        ),
        (
            "empty",
            DOCKERCONFIG_TYPE,
            vec![(".dockerconfigjson", &b"{}"[..])],
        ),
        (
            "missing-keys",
            DOCKERCONFIG_TYPE,
            vec![(".dockerconfigjson", partial.as_bytes())],
        ),
        (
            "missing-host",
            DOCKERCONFIG_TYPE,
            vec![(".dockerconfigjson", one_host.as_bytes())],
        ),
    ];
    let mut managed = Vec::new();
    let mut foreign = BTreeMap::new();
    for (case, type_, data) in &cases {
        managed.push(plant(&w, &format!("m-{case}"), true, type_, data).await.0);
        let (ns, created) = plant(&w, &format!("f-{case}"), false, type_, data).await;
        foreign.insert(ns, created);
    }

    let (run, _key) = w.start(|_, _| {}, &[]);
    run.wait_ready(Duration::from_mins(1)).await;
    w.wait_served(&managed, Duration::from_secs(30)).await;
    w.assert_nothing_lost(&managed).await;
    for (ns, created) in &foreign {
        wait_for_event(&w.admin, ns, "ForeignSecret", Duration::from_secs(30)).await;
        let now = w.secret_in(ns).await.expect("still there");
        assert_eq!(
            now.metadata.resource_version, created.metadata.resource_version,
            "{ns}: untouched"
        );
        assert_eq!(now.data, created.data, "{ns}");
    }
    assert!(
        run.metric("regcred_secret_writes_total{result=\"foreign\"}") >= 8.0,
        "foreign secrets counted"
    );
}

/// Edits the other writers make to each ServiceAccount.
const EDITS: usize = 40;

/// Two writers hammering ServiceAccount "builder": one read-modify-writes `imagePullSecrets`
/// (PUT with resourceVersion, again on conflict) to append `other-0..EDITS`, one
/// merge-patches annotations `edit-0..EDITS`.
fn hammer(sas: Api<ServiceAccount>) -> [tokio::task::JoinHandle<()>; 2] {
    let entries = tokio::spawn({
        let sas = sas.clone();
        async move {
            for i in 0..EDITS {
                loop {
                    let mut sa = sas.get("builder").await.unwrap();
                    sa.image_pull_secrets.get_or_insert_with(Vec::new).push(
                        k8s_openapi::api::core::v1::LocalObjectReference {
                            name: format!("other-{i}"),
                        },
                    );
                    match sas.replace("builder", &PostParams::default(), &sa).await {
                        Ok(_) => break,
                        Err(kube::Error::Api(e)) if e.code == 409 => {}
                        Err(e) => panic!("replace: {e}"),
                    }
                }
            }
        }
    });
    let annotations = tokio::spawn(async move {
        for i in 0..EDITS {
            let patch = json!({"metadata": {"annotations": {format!("edit-{i}"): "x"}}});
            sas.patch("builder", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap();
        }
    });
    [entries, annotations]
}

/// One ServiceAccount per namespace hammered by two other writers while regcred adds its
/// entry: one read-modify-writes `imagePullSecrets` (guarded by resourceVersion, retrying on
/// conflict) to add its own entries, one merge-patches annotations. The namespaces become
/// selected (by label) only once the hammering runs, so regcred's guarded patch meets
/// conflicts. In the end each list holds regcred's entry exactly once and every other
/// writer's entry and annotation is there.
#[tokio::test]
async fn a_service_account_edited_concurrently_keeps_every_edit_and_one_reference() {
    let label = unique("sa-hammer");
    let w = World::new(
        None,
        false,
        true,
        &format!("      selector: \"fault-sa={label}\"\n    serviceAccounts: [\"builder\"]\n"),
        "refresh:\n  retryMin: 1s\n  retryMax: 2s\n",
    )
    .await;
    let names = w.namespaces(&["a", "b", "c", "d"]).await;
    for ns in &names {
        create_service_account(&w.admin, ns, "builder", &["first"]).await;
    }
    let (run, _key) = w.start(
        |cmd, _| {
            cmd.env("RUST_LOG", "info,regcred=debug");
        },
        &[],
    );
    run.wait_ready(Duration::from_mins(1)).await;

    let mut hammers = Vec::new();
    for ns in &names {
        hammers.extend(hammer(Api::namespaced(w.admin.clone(), ns)));
    }
    // Selected now, while the hammering runs.
    for ns in &names {
        Api::<k8s_openapi::api::core::v1::Namespace>::all(w.admin.clone())
            .patch(
                ns,
                &PatchParams::default(),
                &Patch::Merge(&json!({"metadata": {"labels": {"fault-sa": label}}})),
            )
            .await
            .unwrap();
    }
    for h in hammers {
        h.await.unwrap();
    }
    let names_of = |sa: &ServiceAccount| -> Vec<String> {
        sa.image_pull_secrets
            .iter()
            .flatten()
            .map(|r| r.name.clone())
            .collect()
    };
    for ns in &names {
        let sas = Api::<ServiceAccount>::namespaced(w.admin.clone(), ns);
        let sa = wait_for("regcred's entry", Duration::from_secs(30), || async {
            let sa = sas.get("builder").await.ok()?;
            names_of(&sa).contains(&w.secret).then_some(sa)
        })
        .await;
        let list = names_of(&sa);
        assert_eq!(
            list.iter().filter(|n| **n == w.secret).count(),
            1,
            "{ns}: regcred's entry once: {list:?}"
        );
        let mut wanted: Vec<String> = (0..EDITS).map(|i| format!("other-{i}")).collect();
        wanted.insert(0, "first".into());
        let others: Vec<String> = list.into_iter().filter(|n| *n != w.secret).collect();
        assert_eq!(others, wanted, "{ns}: every other entry kept, in order");
        let annotations = sa.metadata.annotations.unwrap_or_default();
        for i in 0..EDITS {
            assert!(
                annotations.contains_key(&format!("edit-{i}")),
                "{ns}: edit-{i}"
            );
        }
    }
    w.assert_nothing_lost(&names).await;
    let conflicts = run
        .log_text()
        .matches("serviceaccount changed meanwhile")
        .count();
    eprintln!("regcred met {conflicts} conflicts and retried");
    assert!(
        conflicts > 0,
        "the hammering never made regcred's patch conflict"
    );
}
