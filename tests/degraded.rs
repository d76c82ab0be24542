//! Keep working when one thing is wrong (issue 12): a watch regcred may not make, a token
//! source that never answers. What can be served is served; what cannot is reported.
#![allow(clippy::print_stderr)] // Tests report what they saw.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use serde_json::json;

/// `/metrics`' sample of exactly this series (name and labels), if it is there.
fn sample(run: &Running, series: &str) -> Option<f64> {
    let (200, text) = run.get("/metrics")? else {
        return None;
    };
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(s, _)| *s == series)
        .and_then(|(_, v)| v.parse().ok())
}

/// A kustomize user adds `serviceAccounts` to the config without the ServiceAccount RBAC:
/// the ServiceAccount watch is forbidden. regcred still writes every secret, reports what it
/// lacks — `/readyz`, a `WatchFailed` Event in its namespace, `regcred_watch_healthy`, and
/// the log, each naming the missing permission — and stops promptly on SIGTERM.
#[tokio::test]
async fn a_forbidden_watch_is_reported_and_everything_else_is_served() {
    let admin = stack().admin().await;
    let secret = unique("pull");
    let prefix = unique("forbid");
    // The chart's rules without the ServiceAccount rule.
    let who = chart_identity(&admin, &[&secret], false).await;
    let (_dir, config) = config_file(&format!(
        "secrets:\n  - name: {secret}\n    registries:\n{}    namespaces:\n      include: [\"{prefix}-*\"]\n    serviceAccounts: [default]\n",
        registry_alias_yaml()
    ));
    let names: Vec<String> = ["a", "b"].iter().map(|s| format!("{prefix}-{s}")).collect();
    for ns in &names {
        create_namespace(&admin, ns, &[]).await;
        create_service_account(&admin, ns, "default", &[]).await;
    }
    let mut run = run_as(&who, &config, &[]);
    let hosts = [stack().var("REGCRED_TEST_REGISTRY")];
    wait_for("every secret written", Duration::from_secs(30), || async {
        let mut ok = true;
        for ns in &names {
            ok &= managed_secret_problem(get_secret(&admin, ns, &secret).await.as_ref(), &hosts)
                .is_none();
        }
        ok.then_some(())
    })
    .await;

    let (code, body) = run.get("/readyz").expect("/readyz answers");
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("serviceaccounts") && body.contains("forbidden"),
        "/readyz names the missing permission: {body}"
    );
    assert_eq!(
        sample(&run, "regcred_watch_healthy{resource=\"serviceaccounts\"}"),
        Some(0.0),
        "the metric says which watch fails"
    );
    assert_eq!(
        sample(&run, "regcred_watch_healthy{resource=\"namespaces\"}"),
        Some(1.0)
    );
    wait_for_event(
        &admin,
        &who.namespace,
        "WatchFailed",
        Duration::from_secs(20),
    )
    .await;
    let log = run.log_text();
    assert!(
        log.lines().any(|l| l.contains("serviceaccounts")
            && l.contains("forbidden")
            && l.contains("list")),
        "the log names the missing permission:\n{log}"
    );

    run.signal("TERM");
    let (status, took) = run
        .wait_exit(Duration::from_secs(5))
        .expect("exited within 5 s of SIGTERM");
    eprintln!("exit after SIGTERM: {took:?}");
    assert!(status.success(), "{status:?}");
}

/// A TCP listener that accepts connections and never answers: an AWS endpoint that hangs.
fn blackhole() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    port
}

/// ECR Public never answers (its endpoint accepts connections and hangs), the private
/// registry does, with tokens that live 8 s: the private registry's secret is written at
/// once and renewed on time, every 4 s, while the public token call hangs; it never expires.
#[tokio::test]
async fn one_hanging_token_source_holds_back_no_other() {
    let admin = stack().admin().await;
    let (private, public) = (unique("pull-private"), unique("pull-public"));
    let prefix = unique("hang");
    let who = chart_identity(&admin, &[&private, &public], false).await;
    let include = format!("    namespaces:\n      include: [\"{prefix}-*\"]\n");
    let (_dir, config) = config_file(&format!(
        "secrets:\n  - name: {private}\n    registries:\n{}{include}  - name: {public}\n    registries: [public.ecr.aws]\n{include}refresh:\n  retryMin: 1s\n  retryMax: 3s\n",
        registry_alias_yaml()
    ));
    let ns = format!("{prefix}-a");
    create_namespace(&admin, &ns, &[]).await;
    let (mut cmd, key) = regcred(&who);
    stack().set_aws_key(&key, &json!({"ttl": 8}));
    cmd.env(
        "AWS_ENDPOINT_URL_ECR_PUBLIC",
        format!("http://127.0.0.1:{}", blackhole()),
    );
    let started = Instant::now();
    let run = Running::start(
        cmd,
        &[
            "--config",
            config.to_str().unwrap(),
            "--lease-namespace",
            &who.namespace,
        ],
    );
    let hosts = [stack().var("REGCRED_TEST_REGISTRY")];
    let secrets = Api::<Secret>::namespaced(admin.clone(), &ns);
    wait_for(
        "the private registry's secret",
        Duration::from_secs(10),
        || async {
            let s = secrets.get_opt(&private).await.unwrap();
            managed_secret_problem(s.as_ref(), &hosts)
                .is_none()
                .then_some(())
        },
    )
    .await;
    eprintln!("private secret written {:?} after start", started.elapsed());

    // Renewed on time while the public call still hangs: three more tokens in 16 s, and
    // never an expired one in place.
    let mut expiries = BTreeSet::new();
    let t0 = Instant::now();
    while expiries.len() < 4 {
        assert!(
            t0.elapsed() < Duration::from_secs(16),
            "only {} tokens in {:?}",
            expiries.len(),
            t0.elapsed()
        );
        let s = secrets.get_opt(&private).await.unwrap();
        if let Some(why) = managed_secret_problem(s.as_ref(), &hosts) {
            panic!("the private secret: {why}");
        }
        expiries.insert(expires_at(&s.unwrap()));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        secrets.get_opt(&public).await.unwrap().is_none(),
        "no token for the public registry yet"
    );
    assert!(!run.is_ready(), "not ready without the public token");
}
