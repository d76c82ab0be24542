//! A leader whose API calls hang, and one told to stop: with a TCP proxy in front of the API
//! server that stalls or slows, and the API server's audit log to tell who wrote when.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, ListParams};
use serde_json::json;

use crate::common::audit::{audit_log, audited_cluster, writes_by};
use crate::common::*;
use crate::world::{World, leads};

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
