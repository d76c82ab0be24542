//! Leadership and failover (issue 12): only a replica that surely holds the Lease writes, it
//! writes only tokens it fetched in its own term, and a standby exports nothing stale.
//!
//! Another holder of the Lease is played by the test itself ([`Intruder`]), so a replica can be
//! made to lose and regain leadership at will; API calls that hang are played by a TCP proxy
//! that stalls (`fencing.rs`); who wrote what, and when, comes from the API server's audit log
//! (a private cluster's), where each replica is a ServiceAccount of its own.
#![allow(clippy::print_stderr)] // Tests report what they saw.

#[path = "../common/mod.rs"]
mod common;
mod fencing;
mod world;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt as _;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};
use serde_json::json;

use world::{World, exports, leads};

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
