//! Outages: AWS down, the API server restarted, the leader killed mid-rotation, etcd
//! stopped. Nothing selected may be left without a valid secret.

use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams};
use serde_json::json;

use super::*;

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
