//! Rows 1 and 2: a rotation of N namespaces by `regcred sync` against the usual cron script
//! (`bench/baseline-cron.sh`) — wall time, token calls, requests by verb (audit log) and the
//! API server's own CPU, each measured with nothing else running; then the rotation gap,
//! measured apart with a secret read every 10 ms (the reads cost the API server too).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams};

use crate::common::{create_namespace, identity, stack, stderr, stdout, unique};
use crate::report::{Baseline, Rotation};
use crate::tools::{PollStats, Poller, audit_requests};
use crate::{Bench, SECRET};

/// Namespaces the baseline's gap is measured over (the polled one comes first).
const GAP_SAMPLE: usize = 5;

/// 1 and 2 for regcred: every secret is due (written by a sync with 1 h tokens, under
/// `refresh.before` 6 h); a sync rotates all of them; then the same again while one is
/// polled.
pub async fn regcred(b: &Bench) -> (Rotation, PollStats) {
    let (out, took, _) = b.sync(Some("1h"));
    b.say(&format!(
        "first sync in {took:.1?}: {}",
        stdout(&out).trim()
    ));
    let earlier = audit_requests(&b.audit_log, &Bench::username(&b.who));
    let cpu = b.apiserver_cpu();
    let (out, took, key) = tokio::task::block_in_place(|| b.sync(None));
    let apiserver_cpu = b.apiserver_cpu() - cpu;
    let summary = stdout(&out).trim().to_owned();
    b.say(&format!(
        "rotation by regcred sync in {took:.2?}: {summary}"
    ));
    assert!(
        summary.starts_with(&format!("synced {} namespaces ({} written", b.n, b.n)),
        "every secret was due: {summary}"
    );
    // The audit log is written as requests complete; give the last lines a moment.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rotation = Rotation {
        wall: took,
        token_calls: stack().token_calls(&key),
        requests: audit_requests(&b.audit_log, &Bench::username(&b.who)).since(&earlier),
        apiserver_cpu,
    };
    // Due again, then rotated while one secret is read every 10 ms.
    b.sync(Some("1h"));
    let poller = Poller::start(b.admin.clone(), &b.names[0], SECRET, &b.host);
    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::block_in_place(|| b.sync(None));
    tokio::time::sleep(Duration::from_millis(200)).await;
    (rotation, poller.stop().await)
}

/// The script, as `cron` with the usual grant, over these namespaces.
fn script(b: &Bench, cron: &crate::common::Identity, key: &str, namespaces: &[String]) -> Command {
    let s = stack();
    let mut cmd = Command::new(s.root.join("bench/baseline-cron.sh"));
    cmd.args([SECRET, b.host.as_str()])
        .args(namespaces)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::var("HOME").unwrap_or_default())
        .env("KUBECTL", s.var("REGCRED_TEST_KUBECTL"))
        .env("AWS", Path::new(s.var("REGCRED_TEST_VENV")).join("bin/aws"))
        .env("KUBECONFIG", &cron.kubeconfig)
        .env("AWS_ACCESS_KEY_ID", key)
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_DEFAULT_REGION", s.var("AWS_REGION"))
        .env("AWS_ENDPOINT_URL", s.var("AWS_ENDPOINT_URL"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(Stdio::piped());
    cmd
}

/// 1 and 2 for the baseline: its cost over `sample` namespaces (extrapolated to N and to
/// the larger sizes), then its gap over a few with one of them polled.
pub async fn baseline(b: &Bench, sample: usize) -> (Baseline, PollStats) {
    let home = unique("baseline-home");
    create_namespace(&b.admin, &home, &[]).await;
    // What such a CronJob is usually granted: secrets everywhere.
    let cron = identity(
        &b.admin,
        &home,
        vec![k8s_openapi::api::rbac::v1::PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["secrets".into()]),
            verbs: ["get", "list", "create", "delete"]
                .map(String::from)
                .to_vec(),
            ..Default::default()
        }],
        vec![],
    )
    .await;
    b.cluster.point_at_me(&cron);
    let key = unique("AKIABASE").replace('-', "").to_uppercase();
    b.say(&format!(
        "baseline over {sample} namespaces (serial; about 1 s each)"
    ));
    let mut cmd = script(b, &cron, &key, &b.names[..sample]);
    let cpu = b.apiserver_cpu();
    let start = Instant::now();
    let out = tokio::task::block_in_place(|| cmd.output()).expect("run the baseline");
    let took = start.elapsed();
    let apiserver_cpu = b.apiserver_cpu() - cpu;
    assert!(out.status.success(), "baseline failed: {}", stderr(&out));
    b.say(&format!("baseline: {} in {took:.1?}", stdout(&out).trim()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline = Baseline {
        measured_over: sample,
        wall: took,
        token_calls: stack().token_calls(&key),
        requests: audit_requests(&b.audit_log, &Bench::username(&cron)),
        apiserver_cpu,
    };
    let poller = Poller::start(b.admin.clone(), &b.names[0], SECRET, &b.host);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut cmd = script(b, &cron, &key, &b.names[..GAP_SAMPLE.min(sample)]);
    let out = tokio::task::block_in_place(|| cmd.output()).expect("run the baseline");
    assert!(out.status.success(), "baseline failed: {}", stderr(&out));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let gap = poller.stop().await;
    // The baseline left secrets regcred does not manage: remove them so `run` serves all.
    let admin = &b.admin;
    futures::stream::iter(&b.names[..sample])
        .for_each_concurrent(32, |ns| async move {
            Api::<Secret>::namespaced(admin.clone(), ns)
                .delete(SECRET, &DeleteParams::default())
                .await
                .expect("delete the baseline's secret");
        })
        .await;
    (baseline, gap)
}
