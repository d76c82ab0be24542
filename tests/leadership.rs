//! Leadership and failover (issue 12): only a replica that surely holds the Lease writes, it
//! writes only tokens it fetched in its own term, and a standby exports nothing stale.
//!
//! Another holder of the Lease is played by the test itself ([`Intruder`]), so a replica can be
//! made to lose and regain leadership at will; API calls that hang are played by a TCP proxy
//! that stalls ([`Proxy`]); who wrote what, and when, comes from the API server's audit log
//! (a private cluster's), where each replica is a ServiceAccount of its own.
#![allow(clippy::print_stderr)] // Tests report what they saw.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt as _;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

/// A controller's world: a secret name and namespace prefix of its own, an identity with the
/// chart's RBAC for it (its Lease lives in the identity's namespace), and a config file.
struct World {
    admin: kube::Client,
    secret: String,
    prefix: String,
    who: Identity,
    config: PathBuf,
    _config_dir: tempfile::TempDir,
}

impl World {
    /// `entry`: lines inside the secret entry (four spaces).
    async fn new(cluster: Option<&PrivateCluster>, entry: &str) -> Self {
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

    fn ns(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.prefix)
    }

    async fn namespaces(&self, suffixes: &[&str]) -> Vec<String> {
        let names: Vec<String> = suffixes.iter().map(|s| self.ns(s)).collect();
        create_namespaces_at_once(&self.admin, &names, &[], 8).await;
        names
    }

    /// `regcred run` as `who` (default: this world's identity) with its Lease in the world's
    /// namespace; its AWS access key is set up by `aws` first.
    fn start(
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

    async fn wait_served(&self, namespaces: &[String], timeout: Duration) {
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
    async fn second_identity(&self, cluster: Option<&PrivateCluster>, sas: bool) -> Identity {
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
fn exports(run: &Running, name: &str) -> bool {
    let Some((200, text)) = run.get("/metrics") else {
        panic!("no /metrics");
    };
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .any(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")))
}

fn leads(run: &Running) -> bool {
    is(run.metric("regcred_leader"), 1.0)
}

// ---------------------------------------------------------------------------- the intruder

/// Another holder of the Lease, played by the test: it takes the Lease from whoever holds it
/// and renews it every 300 ms (so the replica sees a live holder) until released.
struct Intruder {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

const INTRUDER: &str = "intruder";

async fn hold(api: &Api<Lease>, holder: Option<&str>) -> bool {
    let Ok(mut lease) = api.get("regcred").await else {
        return false;
    };
    let now = MicroTime(jiff::Timestamp::now());
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let taking = spec.holder_identity.as_deref() != holder;
    spec.holder_identity = holder.map(str::to_owned);
    spec.renew_time = holder.map(|_| now.clone());
    if taking {
        spec.acquire_time = holder.map(|_| now.clone());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.lease_duration_seconds = Some(3);
    api.replace("regcred", &PostParams::default(), &lease)
        .await
        .is_ok()
}

impl Intruder {
    async fn take(admin: &kube::Client, namespace: &str) -> Self {
        let api = Api::<Lease>::namespaced(admin.clone(), namespace);
        // Taken once for sure (a conflict with the replica's renewal is tried again).
        wait_for(
            "the intruder to take the Lease",
            Duration::from_secs(10),
            || {
                let api = api.clone();
                async move { hold(&api, Some(INTRUDER)).await.then_some(()) }
            },
        )
        .await;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            while !flag.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(300)).await;
                hold(&api, Some(INTRUDER)).await;
            }
            while !hold(&api, None).await {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Self { stop, task }
    }

    /// Stops renewing and empties the holder: the replica may take the Lease at once.
    async fn release(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
    }
}

// ---------------------------------------------------------------------------- item 5

/// A replica that led and lost the Lease exports neither `regcred_token_expiry_timestamp_seconds`
/// nor `regcred_namespaces_selected` (their values, frozen at the hand-over, would fire the
/// expiry alerts on a healthy cluster some hours later), and exports them again once it leads.
#[tokio::test]
async fn a_replica_that_loses_the_lease_exports_no_stale_gauges() {
    let w = World::new(None, "").await;
    let names = w.namespaces(&["a"]).await;
    let (a, _) = w.start(None, &json!({}), &["--lease-duration", "3s"]);
    a.wait_ready(Duration::from_mins(1)).await;
    w.wait_served(&names, Duration::from_secs(10)).await;
    for name in [
        "regcred_token_expiry_timestamp_seconds",
        "regcred_namespaces_selected",
    ] {
        assert!(exports(&a, name), "the leader exports {name}");
    }

    let intruder = Intruder::take(&w.admin, &w.who.namespace).await;
    wait_for(
        "the replica to stand by",
        Duration::from_secs(10),
        || async { (!leads(&a)).then_some(()) },
    )
    .await;
    wait_for(
        "the standby to drop the leader's gauges",
        Duration::from_secs(5),
        || async {
            (!exports(&a, "regcred_token_expiry_timestamp_seconds")
                && !exports(&a, "regcred_namespaces_selected"))
            .then_some(())
        },
    )
    .await;
    // And they stay away while it stands by.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        assert!(!exports(&a, "regcred_token_expiry_timestamp_seconds"));
        assert!(!exports(&a, "regcred_namespaces_selected"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    intruder.release().await;
    wait_for(
        "the replica to lead again and export its gauges",
        Duration::from_secs(20),
        || async {
            (leads(&a)
                && exports(&a, "regcred_token_expiry_timestamp_seconds")
                && exports(&a, "regcred_namespaces_selected"))
            .then_some(())
        },
    )
    .await;
}

// ---------------------------------------------------------------------------- item 3

/// What a watch on the world's secrets saw: every version written, with the moment it was
/// seen and the expiry it announced.
struct Written {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<(String, jiff::Timestamp, jiff::Timestamp)>>,
}

impl Written {
    async fn start(w: &World) -> Self {
        use kube::runtime::watcher;
        let api = Api::<Secret>::all(w.admin.clone());
        let config = watcher::Config::default().fields(&format!("metadata.name={}", w.secret));
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let ready = Arc::new(AtomicBool::new(false));
        let listed = ready.clone();
        let task = tokio::spawn(async move {
            let mut events = Box::pin(watcher(api, config));
            let mut seen = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let Ok(Some(event)) =
                    tokio::time::timeout(Duration::from_millis(100), events.next()).await
                else {
                    continue;
                };
                match event {
                    Ok(watcher::Event::InitDone) => listed.store(true, Ordering::Relaxed),
                    Ok(watcher::Event::Apply(s)) => seen.push((
                        s.metadata.namespace.clone().unwrap_or_default(),
                        jiff::Timestamp::now(),
                        expires_at(&s),
                    )),
                    _ => {}
                }
            }
            seen
        });
        wait_for("the watch to list", Duration::from_secs(10), || async {
            ready.load(Ordering::Relaxed).then_some(())
        })
        .await;
        Self { stop, task }
    }

    async fn finish(self) -> Vec<(String, jiff::Timestamp, jiff::Timestamp)> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// A replica leads (tokens that live 30 s), loses the Lease, and stands by while the other
/// holder renews every secret (a `regcred sync` with 12 h tokens) and a namespace appears; by
/// the time it leads again its old token has expired. Then it writes nothing until it has a
/// token of its own term: never the expired one (the new namespace gets a fresh token), and
/// the other holder's fresh secrets are left as they are instead of being rewritten once
/// the new token arrives.
#[tokio::test]
async fn a_replica_that_regains_the_lease_writes_only_fresh_tokens_and_only_what_needs_it() {
    let w = World::new(None, "").await;
    let names = w.namespaces(&["a", "b", "c", "d"]).await;
    let (a, key) = w.start(None, &json!({"ttl": 30}), &["--lease-duration", "3s"]);
    a.wait_ready(Duration::from_mins(1)).await;
    w.wait_served(&names, Duration::from_secs(10)).await;

    let intruder = Intruder::take(&w.admin, &w.who.namespace).await;
    wait_for(
        "the replica to stand by",
        Duration::from_secs(10),
        || async { (!leads(&a)).then_some(()) },
    )
    .await;
    // The last token it wrote as leader.
    let own_expiry = w
        .all_secrets()
        .await
        .values()
        .map(expires_at)
        .max()
        .unwrap();
    // The other holder's work: every secret renewed with 12 h tokens.
    let (mut sync, _) = regcred(&w.who);
    let out = sync
        .arg("sync")
        .arg("--config")
        .arg(&w.config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let renewed = w.all_secrets().await;
    for ns in &names {
        assert!(
            expires_at(&renewed[ns])
                > jiff::Timestamp::now() + jiff::SignedDuration::from_hours(11),
            "{ns}: renewed by the other holder"
        );
    }
    let late = w.namespaces(&["late"]).await.remove(0);
    // Its own token expires while it stands by; its next token call is slow, so whatever it
    // does before that token arrives shows.
    let expired_at = own_expiry + jiff::SignedDuration::from_secs(1);
    wait_for(
        "the old token to expire",
        Duration::from_mins(1),
        || async { (jiff::Timestamp::now() > expired_at).then_some(()) },
    )
    .await;
    stack().set_aws_key(&key, &json!({"ttl": 30, "delay": 3}));
    let calls_before = stack().token_calls(&key);

    let written = Written::start(&w).await;
    intruder.release().await;
    wait_for(
        "the replica to lead again",
        Duration::from_secs(10),
        || async { leads(&a).then_some(()) },
    )
    .await;
    w.wait_served(std::slice::from_ref(&late), Duration::from_secs(20))
        .await;
    // Time for a rewrite of the others to show, if it were to come.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = written.finish().await;
    assert!(
        stack().token_calls(&key) > calls_before,
        "it fetched a token of its own"
    );
    for (ns, at, expiry) in &seen {
        assert!(
            expiry > at,
            "{ns}: written at {at} with a token expired at {expiry}"
        );
    }
    let now = w.all_secrets().await;
    for ns in &names {
        assert_eq!(
            now[ns].metadata.resource_version,
            renewed[ns].metadata.resource_version,
            "{ns}: a fresh secret was rewritten by the returning leader ({} writes seen: {:?})",
            seen.len(),
            seen.iter().map(|(ns, _, _)| ns).collect::<Vec<_>>()
        );
    }
}

// ---------------------------------------------------------------------------- item 4

/// A TCP proxy in front of the API server that can stall: while stalled nothing passes in
/// either direction and new connections wait; a connection its client gives up on while
/// stalled is dropped with whatever it held, as a hung network loses an abandoned
/// connection. It can also delay every request byte by a fixed time.
struct Proxy {
    port: u16,
    stalled: Arc<tokio::sync::watch::Sender<bool>>,
    delay_ms: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let stalled = Arc::new(tokio::sync::watch::channel(false).0);
        let delay_ms = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let (stalled, delay_ms) = (stalled.clone(), delay_ms.clone());
            async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        return;
                    };
                    tokio::spawn(connection(
                        client,
                        upstream,
                        stalled.subscribe(),
                        delay_ms.clone(),
                    ));
                }
            }
        });
        Self {
            port,
            stalled,
            delay_ms,
            task,
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn stall(&self, on: bool) {
        self.stalled.send_replace(on);
    }

    fn delay(&self, by: Duration) {
        self.delay_ms
            .store(u64::try_from(by.as_millis()).unwrap(), Ordering::Relaxed);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn connection(
    client: tokio::net::TcpStream,
    upstream: u16,
    mut stalled: tokio::sync::watch::Receiver<bool>,
    delay_ms: Arc<AtomicU64>,
) {
    // A new connection waits out a stall; its client may give up meanwhile.
    {
        let mut probe = [0_u8; 1];
        let gave_up = async {
            // Peeking shows the client's bytes (kept for later) or its close.
            loop {
                match client.peek(&mut probe).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        };
        tokio::select! {
            _ = stalled.wait_for(|s| !*s) => {}
            () = gave_up => return,
        }
    }
    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(client_read, server_write, stalled.clone(), Some(delay_ms));
    let down = pump(server_read, client_write, stalled, None);
    // Either side closing ends the connection (dropping both halves closes both sockets).
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}

/// Copies `from` to `to`, holding what it reads while stalled; ends when `from` closes
/// (during a stall, without delivering what it held).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut stalled: tokio::sync::watch::Receiver<bool>,
    delay_ms: Option<Arc<AtomicU64>>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut held: Vec<u8> = Vec::new();
    let mut buf = vec![0_u8; 64 * 1024];
    loop {
        if !*stalled.borrow() && !held.is_empty() {
            if to.write_all(&held).await.is_err() {
                return;
            }
            held.clear();
        }
        tokio::select! {
            read = from.read(&mut buf) => {
                let n = match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if let Some(d) = &delay_ms {
                    let ms = d.load(Ordering::Relaxed);
                    if ms > 0 {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                }
                held.extend_from_slice(&buf[..n]);
            }
            changed = stalled.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// One request from the API server's audit log.
#[derive(Debug)]
struct Audited {
    user: String,
    verb: String,
    resource: String,
    name: String,
    received: jiff::Timestamp,
    completed: jiff::Timestamp,
}

fn audit_log(path: &Path) -> Vec<Audited> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["stage"] == "ResponseComplete")
        .filter_map(|e| {
            let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
            Some(Audited {
                user: s(&e["user"]["username"]),
                verb: s(&e["verb"]),
                resource: s(&e["objectRef"]["resource"]),
                name: s(&e["objectRef"]["name"]),
                received: e["requestReceivedTimestamp"].as_str()?.parse().ok()?,
                completed: e["stageTimestamp"].as_str()?.parse().ok()?,
            })
        })
        .collect()
}

fn username(who: &Identity) -> String {
    format!("system:serviceaccount:{}:{}", who.namespace, who.name)
}

const WRITES: [&str; 4] = ["create", "patch", "update", "delete"];

/// Writes to `resource` by `who` that the API server answered with success or failure.
fn writes_by<'a>(log: &'a [Audited], who: &Identity, resource: &str) -> Vec<&'a Audited> {
    let user = username(who);
    log.iter()
        .filter(|a| a.user == user && a.resource == resource && WRITES.contains(&a.verb.as_str()))
        .collect()
}

/// A private cluster whose API server keeps an audit log of every request.
fn audited_cluster(dir: &Path) -> (PrivateCluster, PathBuf) {
    let log = dir.join("audit.log");
    let policy = dir.join("audit-policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [\"RequestReceived\"]\nrules:\n- level: Metadata\n",
    )
    .unwrap();
    let cluster = PrivateCluster::start(&[
        format!("--audit-log-path={}", log.display()),
        format!("--audit-policy-file={}", policy.display()),
    ]);
    (cluster, log)
}

/// The leader's API calls hang (its proxy stalls) while a standby with a working connection
/// takes the Lease over and writes; then the stall ends. Tokens live 6 s, so the old leader
/// always has a rotation to write. In the audit log, no write of the old leader reaches the
/// API server after the new leader's first write: it stopped writing at its renew deadline,
/// and the writes it had in flight were given up by then.
// The proxy runs in this process: blocking waits must not stop it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_calls_hang_stops_writing_before_the_standby_takes_over() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, log) = audited_cluster(dir.path());
    let w = World::new(Some(&cluster), "").await;
    let suffixes: Vec<String> = (0..20).map(|i| format!("{i:02}")).collect();
    let names = w
        .namespaces(&suffixes.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    let proxy = Proxy::start(cluster.port).await;
    let kubeconfig = kubeconfig_for_server(&w.who.kubeconfig, &proxy.url(), dir.path());
    let (cmd, key) = regcred(&w.who);
    stack().set_aws_key(&key, &json!({"ttl": 6}));
    let mut cmd = cmd;
    cmd.env("KUBECONFIG", &kubeconfig);
    let config = w.config.to_str().unwrap();
    let lease = [
        "--config",
        config,
        "--lease-namespace",
        &w.who.namespace,
        "--lease-duration",
        "3s",
    ];
    let old = Running::start(cmd, &lease);
    old.wait_ready(Duration::from_mins(1)).await;
    assert!(leads(&old));
    w.wait_served(&names, Duration::from_secs(20)).await;

    let second = w.second_identity(Some(&cluster), false).await;
    let (new, _) = w.start(
        Some(&second),
        &json!({"ttl": 6}),
        &["--lease-duration", "3s"],
    );
    wait_for(
        "the second replica's caches",
        Duration::from_mins(1),
        || async { new.is_ready().then_some(()) },
    )
    .await;
    assert!(!leads(&new), "the first replica still leads");

    proxy.stall(true);
    let stalled = Instant::now();
    wait_for(
        "the standby to take over",
        Duration::from_secs(20),
        || async { leads(&new).then_some(()) },
    )
    .await;
    eprintln!("standby leads {:?} into the stall", stalled.elapsed());
    wait_for(
        "the new leader's first write",
        Duration::from_secs(20),
        || async { (!writes_by(&audit_log(&log), &second, "secrets").is_empty()).then_some(()) },
    )
    .await;
    // The old leader's rotations come due meanwhile (its tokens come from AWS, not through
    // the proxy); then its calls pass again.
    tokio::time::sleep(Duration::from_secs(6)).await;
    proxy.stall(false);
    wait_for(
        "the old leader to see the new one",
        Duration::from_secs(20),
        || async { (!leads(&old)).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;

    let audit = audit_log(&log);
    let first_new = writes_by(&audit, &second, "secrets")
        .iter()
        .map(|a| a.received)
        .min()
        .unwrap();
    let late: Vec<String> = writes_by(&audit, &w.who, "secrets")
        .into_iter()
        .filter(|a| a.completed >= first_new)
        .map(|a| format!("{} {} at {}", a.verb, a.name, a.received))
        .collect();
    assert!(
        late.is_empty(),
        "the old leader wrote after the new leader's first write at {first_new}: {late:?}"
    );
    w.wait_served(&names, Duration::from_secs(20)).await;
}

/// On SIGTERM the leader stops writing before it releases the Lease: with ServiceAccounts
/// to patch one after another (each call slowed to 300 ms by its proxy), no write of its
/// reaches the API server after its release, and the standby, which takes over at the
/// release, finishes the work.
// The proxy runs in this process: blocking waits must not stop it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)] // One scenario, told in order.
async fn sigterm_stops_the_writes_before_the_lease_is_released() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, log) = audited_cluster(dir.path());
    let w = World::new(Some(&cluster), "    serviceAccounts: [\"*\"]\n").await;
    let names = w.namespaces(&["a", "b", "c", "d"]).await;
    let proxy = Proxy::start(cluster.port).await;
    let kubeconfig = kubeconfig_for_server(&w.who.kubeconfig, &proxy.url(), dir.path());
    let (mut cmd, _key) = regcred(&w.who);
    cmd.env("KUBECONFIG", &kubeconfig);
    let config = w.config.to_str().unwrap();
    let mut old = Running::start(
        cmd,
        &[
            "--config",
            config,
            "--lease-namespace",
            &w.who.namespace,
            "--lease-duration",
            "3s",
        ],
    );
    old.wait_ready(Duration::from_mins(1)).await;
    assert!(leads(&old));
    w.wait_served(&names, Duration::from_secs(20)).await;
    let second = w.second_identity(Some(&cluster), true).await;
    let (new, _) = w.start(Some(&second), &json!({}), &["--lease-duration", "3s"]);
    wait_for(
        "the second replica's caches",
        Duration::from_mins(1),
        || async { new.is_ready().then_some(()) },
    )
    .await;

    proxy.delay(Duration::from_millis(300));
    let sas: Vec<String> = (0..8).map(|i| format!("sa-{i}")).collect();
    for ns in &names {
        for sa in &sas {
            create_service_account(&w.admin, ns, sa, &[]).await;
        }
    }
    let patched = || async {
        let mut n = 0;
        for ns in &names {
            let list = Api::<ServiceAccount>::namespaced(w.admin.clone(), ns)
                .list(&ListParams::default())
                .await
                .unwrap();
            n += list
                .items
                .iter()
                .filter(|sa| {
                    sa.image_pull_secrets
                        .iter()
                        .flatten()
                        .any(|r| r.name == w.secret)
                })
                .count();
        }
        n
    };
    wait_for(
        "the leader to start patching",
        Duration::from_secs(30),
        || async { (patched().await > 0).then_some(()) },
    )
    .await;
    old.signal("TERM");
    old.wait_exit(Duration::from_secs(10)).expect("stopped");
    wait_for(
        "the standby to take over",
        Duration::from_secs(10),
        || async { leads(&new).then_some(()) },
    )
    .await;
    let total = names.len() * sas.len();
    wait_for(
        "every ServiceAccount patched",
        Duration::from_secs(30),
        || async { (patched().await == total).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let audit = audit_log(&log);
    let release = writes_by(&audit, &w.who, "leases")
        .iter()
        .map(|a| a.received)
        .max()
        .expect("the old leader's Lease writes");
    let after: Vec<String> = ["secrets", "serviceaccounts"]
        .iter()
        .flat_map(|r| writes_by(&audit, &w.who, r))
        .filter(|a| a.completed >= release)
        .map(|a| format!("{} {} {} at {}", a.verb, a.resource, a.name, a.received))
        .collect();
    let before = ["secrets", "serviceaccounts"]
        .iter()
        .flat_map(|r| writes_by(&audit, &w.who, r))
        .filter(|a| a.resource == "serviceaccounts")
        .count();
    eprintln!("the old leader patched {before} ServiceAccounts before its release");
    assert!(
        after.is_empty(),
        "the old leader wrote after releasing the Lease at {release}: {after:?}"
    );
}
