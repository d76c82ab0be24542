//! No admission lost: across replica restarts, certificate rotations, and certificates
//! reloaded from files.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;

use super::*;

/// Creates pods one after another (paced) in `namespace` until `stop`; the pods as admitted.
fn create_pods_until(
    client: kube::Client,
    namespace: String,
    image: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Pod>> {
    tokio::spawn(async move {
        let mut admitted = Vec::new();
        let mut pace = tokio::time::interval(Duration::from_millis(40));
        while !stop.load(Ordering::Relaxed) {
            pace.tick().await;
            let p = pod(&unique("load"), &[&image], &[], &[]);
            admitted.push(create_pod(&client, &namespace, &p).await);
        }
        admitted
    })
}

/// Pods admitted without `secret`, by name.
fn missed(pods: &[Pod], secret: &str) -> Vec<String> {
    pods.iter()
        .filter(|p| pull_secrets(p) != [secret])
        .map(|p| p.metadata.name.clone().unwrap_or_default())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replica_restarts_lose_no_admission() {
    let s = setup().await;
    let ports = [free_port(), free_port()];
    let mut replicas: Vec<Running> = ports.iter().map(|p| s.start(*p, &[])).collect();
    for r in &replicas {
        r.wait_ready(Duration::from_mins(1)).await;
    }
    let proxy = Proxy::start(&[
        Backend {
            webhook: ports[0],
            admin: replicas[0].admin,
        },
        Backend {
            webhook: ports[1],
            admin: replicas[1].admin,
        },
    ]);
    s.register(&proxy.url("/mutate"), 5).await;
    let a = s.namespace(&s.ns("a"), &[]).await;
    wait_injecting(&s.admin, &a, &s.image, &s.secret, Duration::from_secs(30)).await;
    let tls = s.webhook_secret().await.unwrap().data.unwrap()["tls.crt"].clone();

    let stop = Arc::new(AtomicBool::new(false));
    let creators: Vec<_> = (0..2)
        .map(|_| create_pods_until(s.admin.clone(), a.clone(), s.image.clone(), stop.clone()))
        .collect();
    let t0 = Instant::now();
    for round in 0..2 {
        for i in 0..2 {
            let old_admin = replicas[i].admin;
            replicas[i].signal("TERM");
            let (_, stopped_in) = replicas[i]
                .wait_exit(Duration::from_secs(30))
                .expect("replica stops");
            let fresh = s.start(ports[i], &[]);
            proxy.replace(
                old_admin,
                Backend {
                    webhook: ports[i],
                    admin: fresh.admin,
                },
            );
            let ready_in = fresh.wait_ready(Duration::from_mins(1)).await;
            eprintln!(
                "round {round}: replica {i} stopped in {stopped_in:?}, back and ready in {ready_in:?}"
            );
            replicas[i] = fresh;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut pods = Vec::new();
    for c in creators {
        pods.extend(c.await.unwrap());
    }
    let lost = missed(&pods, &s.secret);
    eprintln!(
        "{} pods created in {:?} across 4 replica restarts: {} without the pull secret; proxy forwarded {} connections, refused {}",
        pods.len(),
        t0.elapsed(),
        lost.len(),
        proxy.forwarded.load(Ordering::Relaxed),
        proxy.refused.load(Ordering::Relaxed),
    );
    assert!(
        pods.len() > 100,
        "too few pods to mean anything: {}",
        pods.len()
    );
    assert!(lost.is_empty(), "admissions lost: {lost:?}");
    // Restarted replicas took the stored certificate; none made a new one.
    let after = s.webhook_secret().await.unwrap().data.unwrap()["tls.crt"].clone();
    assert_eq!(after, tls, "a restart replaced the certificate");
    unregister(&s.admin, &s.configuration).await;
}

/// What the Secret and the configuration showed during a run: each serving certificate,
/// signing CA and published bundle, when each CA was first published, and when each
/// serving certificate was first stored (by its issuer).
#[derive(Debug, Default)]
struct Rotations {
    servings: Vec<Vec<u8>>,
    cas: Vec<Vec<u8>>,
    bundles: Vec<Vec<u8>>,
    published_at: std::collections::HashMap<String, Instant>,
    stored_at: Vec<(String, Instant)>,
}

/// Looks at the Secret and the configuration every 100 ms for `how_long`.
async fn watch_rotations(s: &Setup, how_long: Duration) -> Rotations {
    use regcred::webhook::pki;
    let mut seen = Rotations::default();
    let t0 = Instant::now();
    while t0.elapsed() < how_long {
        let data = s.webhook_secret().await.unwrap().data.unwrap();
        let published = ca_bundle(&s.admin, &s.configuration).await;
        let now = Instant::now();
        for f in pki::bundle(&String::from_utf8_lossy(&published), "published").unwrap_or_default()
        {
            seen.published_at.entry(f.subject).or_insert(now);
        }
        let serving = &data["tls.crt"].0;
        if !seen.servings.contains(serving) {
            seen.servings.push(serving.clone());
            let issuer = pki::facts(&String::from_utf8_lossy(serving), "served")
                .unwrap()
                .issuer;
            seen.stored_at.push((issuer, now));
        }
        if !seen.cas.contains(&data["ca-signer.crt"].0) {
            seen.cas.push(data["ca-signer.crt"].0.clone());
        }
        if !seen.bundles.contains(&published) {
            seen.bundles.push(published);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    seen
}

impl Rotations {
    /// The order that keeps even a connection opened at the worst moment trusted: a new CA
    /// signs only after it has been published for a while (the grace is 1 s with a 10 s
    /// lifetime; looking every 100 ms blurs each time by up to that).
    fn assert_new_cas_sign_only_once_published(&self) {
        let first_ca = &self.stored_at[0].0;
        let later: Vec<_> = self
            .stored_at
            .iter()
            .filter(|(i, _)| i != first_ca)
            .collect();
        assert!(!later.is_empty(), "no certificate from a second CA");
        for (issuer, at) in later {
            let published = self
                .published_at
                .get(issuer)
                .unwrap_or_else(|| panic!("{issuer} never published"));
            let lead = at.saturating_duration_since(*published);
            eprintln!(
                "a certificate of the new CA was stored {lead:?} after that CA was published"
            );
            assert!(
                lead >= Duration::from_millis(700),
                "a certificate of {issuer} was stored {lead:?} after its CA was published"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn certificate_rotations_lose_no_admission_and_replicas_agree() {
    let s = setup().await;
    let ports = [free_port(), free_port()];
    // Serving certificates live 10 s (renewed every ~7 s), the CA 50 s (renewed at ~33 s,
    // the old one gone at ~50 s).
    let lifetime = ["--webhook-cert-lifetime", "10s"];
    let replicas: Vec<Running> = ports.iter().map(|p| s.start(*p, &lifetime)).collect();
    for r in &replicas {
        r.wait_ready(Duration::from_mins(1)).await;
    }
    let proxy = Proxy::start(&[
        Backend {
            webhook: ports[0],
            admin: replicas[0].admin,
        },
        Backend {
            webhook: ports[1],
            admin: replicas[1].admin,
        },
    ]);
    s.register(&proxy.url("/mutate"), 5).await;
    let a = s.namespace(&s.ns("a"), &[]).await;
    wait_injecting(&s.admin, &a, &s.image, &s.secret, Duration::from_secs(30)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let creators: Vec<_> = (0..2)
        .map(|_| create_pods_until(s.admin.clone(), a.clone(), s.image.clone(), stop.clone()))
        .collect();
    let seen = watch_rotations(&s, Duration::from_mins(1)).await;
    stop.store(true, Ordering::Relaxed);
    let mut pods = Vec::new();
    for c in creators {
        pods.extend(c.await.unwrap());
    }
    let lost = missed(&pods, &s.secret);
    eprintln!(
        "{} pods created in a minute across {} serving certificates, {} CAs and {} published bundles: {} without the pull secret",
        pods.len(),
        seen.servings.len(),
        seen.cas.len(),
        seen.bundles.len(),
        lost.len()
    );
    assert!(
        seen.servings.len() >= 6,
        "{} serving certificates",
        seen.servings.len()
    );
    assert!(seen.cas.len() >= 2, "{} CAs", seen.cas.len());
    // One CA, two while the next comes in, one after the old expires.
    assert!(seen.bundles.len() >= 3, "{} bundles", seen.bundles.len());
    assert!(
        pods.len() > 200,
        "too few pods to mean anything: {}",
        pods.len()
    );
    assert!(lost.is_empty(), "admissions lost: {lost:?}");
    seen.assert_new_cas_sign_only_once_published();

    // Both replicas serve the Secret's certificate.
    wait_for(
        "both replicas to serve the stored certificate",
        Duration::from_secs(10),
        || async {
            let data = s.webhook_secret().await?.data?;
            let want = pem_der(&data["tls.crt"].0);
            let bundle = &data["ca.crt"].0;
            for port in ports {
                if served_certificate(port, bundle).await? != want {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    for r in &replicas {
        let log = r.log_text();
        assert!(!log.contains("PRIVATE KEY"), "a private key in the log");
    }
    unregister(&s.admin, &s.configuration).await;
}

#[tokio::test]
async fn a_certificate_from_files_is_served_and_reloaded_without_regcred_writing_any() {
    use regcred::webhook::pki;
    let s = setup().await;
    // Only the chart's usual RBAC: with files, regcred needs nothing for the webhook.
    let who = chart_identity(&s.admin, &[&s.secret, &format!("{}-web", s.secret)], false).await;
    let now = jiff::Timestamp::now();
    let hosts = ["127.0.0.1".to_owned()].into();
    let ca = pki::new_ca(now, jiff::SignedDuration::from_hours(1)).unwrap();
    let write = |pair: &pki::Pair, dir: &std::path::Path| {
        // As kubelet updates a mounted Secret: whole files, swapped in.
        for (name, text) in [
            ("tls.crt", pair.cert.clone()),
            (
                "tls.key",
                secrecy::ExposeSecret::expose_secret(&pair.key).to_owned(),
            ),
        ] {
            let tmp = dir.join(format!(".{name}"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, dir.join(name)).unwrap();
        }
    };
    let certs = tempfile::tempdir().unwrap();
    let first = pki::issue(&ca, &hosts, now, jiff::SignedDuration::from_mins(30)).unwrap();
    write(&first, certs.path());

    let port = free_port();
    let (cmd, _) = regcred(&who);
    let config = s.config(port);
    let run = Running::start(
        cmd,
        &[
            "--config",
            config.to_str().unwrap(),
            "--lease-namespace",
            &who.namespace,
            "--webhook-configuration",
            &s.configuration,
            "--webhook-address",
            "127.0.0.1",
            "--webhook-cert-dir",
            certs.path().to_str().unwrap(),
        ],
    );
    register(
        &s.admin,
        &s.configuration,
        &format!("https://127.0.0.1:{port}/mutate"),
        s.label(),
        Some(&ca.cert),
        5,
    )
    .await;
    run.wait_ready(Duration::from_mins(1)).await;
    let a = s.namespace(&s.ns("a"), &[]).await;
    wait_injecting(&s.admin, &a, &s.image, &s.secret, Duration::from_secs(30)).await;
    assert_eq!(
        served_certificate(port, ca.cert.as_bytes()).await,
        Some(pem_der(first.cert.as_bytes()))
    );

    let second = pki::issue(&ca, &hosts, now, jiff::SignedDuration::from_mins(30)).unwrap();
    write(&second, certs.path());
    wait_for(
        "the new certificate to be served",
        Duration::from_secs(15),
        || async {
            (served_certificate(port, ca.cert.as_bytes()).await? == pem_der(second.cert.as_bytes()))
                .then_some(())
        },
    )
    .await;
    let p = create_pod(&s.admin, &a, &pod("after-reload", &[&s.image], &[], &[])).await;
    assert_eq!(pull_secrets(&p), vec![s.secret.clone()]);

    // regcred wrote neither a Secret nor the caBundle.
    assert!(
        get_secret(&s.admin, &who.namespace, "regcred-webhook-tls")
            .await
            .is_none()
    );
    assert_eq!(
        ca_bundle(&s.admin, &s.configuration).await,
        ca.cert.as_bytes()
    );
    let log = run.log_text();
    assert!(!log.to_lowercase().contains("forbidden"), "{log}");
    unregister(&s.admin, &s.configuration).await;
}
