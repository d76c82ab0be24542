//! What the webhook does to pods: one reference where an image is on a configured registry,
//! none elsewhere; pods still created when regcred is hung or stopped; standbys serve too;
//! bad settings refused.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;

use super::*;

#[tokio::test]
async fn a_pod_on_a_configured_registry_gets_exactly_one_reference_and_others_none() {
    let s = setup().await;
    let port = free_port();
    let run = s.start(port, &[]);
    s.register(&format!("https://127.0.0.1:{port}/mutate"), 5)
        .await;
    run.wait_ready(Duration::from_mins(1)).await;
    let a = s.namespace(&s.ns("a"), &[("tier", "web")]).await;
    wait_injecting(&s.admin, &a, &s.image, &s.secret, Duration::from_secs(30)).await;
    let before = |r| webhook_metric(&run, r);
    let (injected, unchanged, errors) = (before("injected"), before("unchanged"), before("error"));

    let web = format!("{}-web", s.secret);
    let public = "public.ecr.aws/regcred/tool:1";
    let others = ["docker.io/library/busybox:1", "quay.io/team/app:2", "nginx"];
    let admitted = |p: Pod| pull_secrets(&p);
    // On the registry: one reference, from nothing.
    let got = create_pod(&s.admin, &a, &pod("on-registry", &[&s.image], &[], &[])).await;
    assert_eq!(admitted(got), vec![s.secret.clone()]);
    // Only other registries: untouched.
    let got = create_pod(&s.admin, &a, &pod("elsewhere", &others, &[], &[])).await;
    assert!(admitted(got).is_empty());
    // An init container counts; so does a second entry selected by the namespace's label.
    let got = create_pod(&s.admin, &a, &pod("init", &["nginx"], &[&s.image], &[])).await;
    assert_eq!(admitted(got), vec![s.secret.clone()]);
    let got = create_pod(&s.admin, &a, &pod("public", &[public], &[], &[])).await;
    assert_eq!(admitted(got), vec![web.clone()]);
    // The ServiceAccount already carries it: still exactly one, other entries kept.
    create_service_account(&s.admin, &a, "patched", &["keep-me", &s.secret]).await;
    create_service_account(&s.admin, &a, "other", &["keep-me"]).await;
    let with_sa = |name: &str, sa: &str| {
        let mut p = pod(name, &[&s.image], &[], &[]);
        p.spec.as_mut().unwrap().service_account_name = Some(sa.to_owned());
        p
    };
    let got = create_pod(&s.admin, &a, &with_sa("sa-patched", "patched")).await;
    assert_eq!(admitted(got), vec!["keep-me".to_owned(), s.secret.clone()]);
    let got = create_pod(&s.admin, &a, &with_sa("sa-other", "other")).await;
    assert_eq!(admitted(got), vec!["keep-me".to_owned(), s.secret.clone()]);
    // Opted out.
    let got = create_pod(
        &s.admin,
        &a,
        &pod(
            "opted-out",
            &[&s.image],
            &[],
            &[("regcred.io/inject", "false")],
        ),
    )
    .await;
    assert!(admitted(got).is_empty());
    // A namespace the configuration does not select.
    let outside = s.namespace(&unique("outside"), &[]).await;
    let got = create_pod(
        &s.admin,
        &outside,
        &pod("unselected", &[&s.image], &[], &[]),
    )
    .await;
    assert!(admitted(got).is_empty());
    // The race of the issue at the API: a namespace, its ServiceAccount and a pod created
    // together. Its labels are not in regcred's cache yet; the webhook reads them.
    let together = s.ns("c");
    s.namespace(&together, &[("tier", "web")]).await;
    let got = create_pod(
        &s.admin,
        &together,
        &pod("together", &[&s.image, public], &[], &[]),
    )
    .await;
    assert_eq!(admitted(got), vec![s.secret.clone(), web.clone()]);

    assert!(
        is(webhook_metric(&run, "injected") - injected, 5.0),
        "{}",
        run.log_text()
    );
    assert!(is(webhook_metric(&run, "unchanged") - unchanged, 3.0));
    assert!(is(webhook_metric(&run, "error") - errors, 0.0));

    // A malformed review: a 400 that says what is wrong, counted as an error.
    let answer = s
        .post(
            port,
            r#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview"}"#,
        )
        .await;
    assert!(answer.ends_with("\n400"), "{answer}");
    assert!(
        answer.contains("regcred answers admission.k8s.io/v1"),
        "{answer}"
    );
    assert!(is(webhook_metric(&run, "error") - errors, 1.0));

    // The certificate: one Secret, regcred's, of TLS type; its key never logged.
    let tls = s.webhook_secret().await.expect("the webhook Secret");
    assert_eq!(tls.type_.as_deref(), Some("kubernetes.io/tls"));
    assert_eq!(tls.metadata.labels.unwrap()[MANAGED_BY], "regcred");
    let log = run.log_text();
    let key = String::from_utf8(tls.data.unwrap()["tls.key"].0.clone()).unwrap();
    let body = key.lines().nth(1).unwrap();
    assert!(
        !log.contains(body) && !log.contains("PRIVATE KEY"),
        "a private key in the log"
    );
    assert!(!log.to_lowercase().contains("forbidden"), "{log}");
    unregister(&s.admin, &s.configuration).await;
}

#[tokio::test]
async fn pods_are_created_while_regcred_is_hung_or_stopped_and_check_says_why() {
    let s = setup().await;
    let port = free_port();
    let mut run = s.start(port, &[]);
    s.register(&format!("https://127.0.0.1:{port}/mutate"), 2)
        .await;
    run.wait_ready(Duration::from_mins(1)).await;
    let a = s.namespace(&s.ns("a"), &[]).await;
    wait_injecting(&s.admin, &a, &s.image, &s.secret, Duration::from_secs(30)).await;

    let config = s.config(port);
    let check = || {
        let (mut cmd, _) = regcred(&s.who);
        cmd.args([
            "check",
            "--config",
            config.to_str().unwrap(),
            "--lease-namespace",
            &s.who.namespace,
        ])
        .args([
            "--webhook-configuration",
            &s.configuration,
            "--webhook-secret",
            &s.tls_secret,
        ])
        .output()
        .unwrap()
    };
    let out = check();
    let table = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{table}\n{}", stderr(&out));
    for row in [
        "✓ webhook registered",
        "✓ webhook CA current",
        "✓ webhook reachable",
        &format!(
            "✓ can patch mutatingwebhookconfigurations.admissionregistration.k8s.io/{}",
            s.configuration
        ),
        &format!(
            "✓ can update secrets/{} in {}",
            s.tls_secret, s.who.namespace
        ),
    ] {
        assert!(table.contains(row), "{row} missing:\n{table}");
    }

    // Hung: the API server gives up after timeoutSeconds and creates the pod unchanged.
    run.signal("STOP");
    let t0 = Instant::now();
    let p = create_pod(&s.admin, &a, &pod("while-hung", &[&s.image], &[], &[])).await;
    let took = t0.elapsed();
    run.signal("CONT");
    eprintln!("pod created after {took:?} with regcred hung (timeoutSeconds 2)");
    assert!(pull_secrets(&p).is_empty());
    assert!(took < Duration::from_secs(6), "{took:?}");
    wait_injecting(&s.admin, &a, &s.image, &s.secret, Duration::from_secs(30)).await;

    // Stopped: created at once, unchanged.
    run.signal("TERM");
    run.wait_exit(Duration::from_secs(20))
        .expect("regcred stops");
    let t0 = Instant::now();
    let p = create_pod(&s.admin, &a, &pod("while-down", &[&s.image], &[], &[])).await;
    eprintln!("pod created after {:?} with regcred stopped", t0.elapsed());
    assert!(pull_secrets(&p).is_empty());
    assert!(t0.elapsed() < Duration::from_secs(3));

    let out = check();
    let table = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{table}");
    assert!(table.contains("✓ webhook registered"), "{table}");
    assert!(table.contains("✗ webhook reachable"), "{table}");
    assert!(table.contains("no replica answers"), "{table}");

    unregister(&s.admin, &s.configuration).await;
    let out = check();
    let table = stdout(&out);
    let row = table
        .lines()
        .find(|l| l.starts_with("✗ webhook registered"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        row.ends_with(&format!(
            "mutatingwebhookconfiguration {} not found",
            s.configuration
        )),
        "{table}"
    );
}

#[tokio::test]
async fn bad_webhook_settings_exit_2_naming_them() {
    let run = |yaml: &str, args: &[&str]| {
        let (dir, config) = config_file(yaml);
        let (mut cmd, _) = regcred_without_cluster();
        let out = cmd
            .arg("run")
            .args([
                "--config",
                config.to_str().unwrap(),
                "--admin-addr",
                &format!("127.0.0.1:{}", free_port()),
            ])
            .args(args)
            .output()
            .unwrap();
        drop(dir);
        (out.status.code(), stderr(&out))
    };
    let base = "secrets:\n  - registries: [public.ecr.aws]\n";
    let (code, err) = run(&format!("{base}webhook: {{enabled: true, port: 0}}\n"), &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("webhook.port: 0 is not a port (1 to 65535)"),
        "{err}"
    );
    let (code, err) = run(
        &format!("{base}webhook: {{enabled: true, prot: 9443}}\n"),
        &[],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("webhook.prot: unknown field `prot`"), "{err}");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let (code, err) = run(
        &format!("{base}webhook: {{enabled: true, port: {port}}}\n"),
        &["--webhook-address", "127.0.0.1"],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&format!("webhook.port: cannot listen on 127.0.0.1:{port}")),
        "{err}"
    );
    for (flag, value, says) in [
        (
            "--webhook-host",
            "not a host!",
            "neither an IP address nor a DNS name",
        ),
        ("--webhook-cert-lifetime", "1s", "at least 10s"),
        ("--webhook-shutdown-delay", "soon", "is not a duration"),
        ("--webhook-secret", "Bad_Name", "not a valid object name"),
    ] {
        let (code, err) = run(base, &[flag, value]);
        assert_eq!(code, Some(2), "{flag} {value}: {err}");
        assert!(
            err.contains(flag) && err.contains(says),
            "{flag} {value}: {err}"
        );
    }
}

/// Every replica serves: a standby (not the leader) answers as well as the leader.
#[tokio::test]
async fn a_standby_serves_the_webhook_too() {
    let s = setup().await;
    let ports = [free_port(), free_port()];
    let replicas: Vec<Running> = ports.iter().map(|p| s.start(*p, &[])).collect();
    for r in &replicas {
        r.wait_ready(Duration::from_mins(1)).await;
    }
    let leaders: Vec<f64> = replicas
        .iter()
        .map(|r| r.metric("regcred_leader"))
        .collect();
    assert!(is(leaders.iter().sum(), 1.0), "one leader: {leaders:?}");
    let a = s.namespace(&s.ns("a"), &[]).await;
    let standby = leaders.iter().position(|l| is(*l, 0.0)).unwrap();
    s.register(&format!("https://127.0.0.1:{}/mutate", ports[standby]), 5)
        .await;
    wait_injecting(&s.admin, &a, &s.image, &s.secret, Duration::from_secs(30)).await;
    let p = create_pod(&s.admin, &a, &pod("via-standby", &[&s.image], &[], &[])).await;
    assert_eq!(pull_secrets(&p), vec![s.secret.clone()]);
    assert!(webhook_metric(&replicas[standby], "injected") >= 1.0);
    // Both serve the one stored certificate.
    let data = s.webhook_secret().await.unwrap().data.unwrap();
    for port in ports {
        assert_eq!(
            served_certificate(port, &data["ca.crt"].0).await,
            Some(pem_der(&data["tls.crt"].0))
        );
    }
    unregister(&s.admin, &s.configuration).await;
}
