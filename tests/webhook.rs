//! The admission webhook (issue 13) on the real API server: `regcred run` as the chart's
//! ServiceAccount serves it, makes and publishes its certificate, and the API server calls
//! it for real pods. A pod whose image is on a configured registry gets exactly one
//! reference; others are untouched; pods are created while regcred is down or hung; and no
//! admission is lost across replica restarts and certificate rotations.
//!
//! The webhook is registered by URL (the stack has no Service routing; see
//! `common/webhook.rs`), and only for namespaces carrying this test's label.
#![allow(clippy::print_stderr)] // Tests report what they measure.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::webhook::*;
use common::*;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::Api;

const LABEL: &str = "regcred-webhook-test";

/// A webhook world: a unique secret, namespace prefix, configuration and label, and an
/// identity with the chart's RBAC for them.
struct Setup {
    admin: kube::Client,
    who: Identity,
    id: String,
    secret: String,
    prefix: String,
    configuration: String,
    tls_secret: String,
    image: String,
    dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let admin = stack().admin().await;
    let id = unique("wh");
    let secret = unique("pull");
    let configuration = unique("regcred-webhook");
    // The names a release `<fullname>` gives the certificate's Secret and the policy.
    let fullname = unique("regcred");
    let tls_secret = format!("{fullname}-webhook-tls");
    let secrets = [secret.clone(), format!("{secret}-web")];
    let names: Vec<&str> = secrets.iter().map(String::as_str).collect();
    let who = chart_identity_with_webhook(&admin, &names, &configuration, &tls_secret).await;
    // The chart's admission policy holds regcred to what it writes, its certificate included.
    common::helm::install_policy_with_webhook(&who, &names, &fullname).await;
    Setup {
        admin,
        who,
        prefix: id.clone(),
        id,
        secret,
        configuration,
        tls_secret,
        image: stack().var("REGCRED_TEST_IMAGE").to_owned(),
        dir: tempfile::tempdir().unwrap(),
    }
}

impl Setup {
    fn label(&self) -> (&str, &str) {
        (LABEL, &self.id)
    }

    /// A config file serving `<prefix>-*` from the stack's registry (secret `secret`) and,
    /// in those labelled tier=web, ECR Public (secret `<secret>-web`); webhook on `port`.
    fn config(&self, port: u16) -> PathBuf {
        let yaml = format!(
            "secrets:\n  - name: {s}\n    registries:\n{alias}    namespaces:\n      include: [\"{p}-*\"]\n\
             \x20 - name: {s}-web\n    registries: [public.ecr.aws]\n    namespaces:\n      include: [\"{p}-*\"]\n      selector: tier=web\n\
             webhook:\n  enabled: true\n  port: {port}\n",
            s = self.secret,
            p = self.prefix,
            alias = registry_alias_yaml(),
        );
        let path = self.dir.path().join(format!("regcred-{port}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        path
    }

    /// `regcred run` with the webhook on `port`, its certificate also for 127.0.0.1.
    fn start(&self, port: u16, args: &[&str]) -> Running {
        let (cmd, _key) = regcred(&self.who);
        let config = self.config(port);
        let mut all = vec![
            "--config",
            config.to_str().unwrap(),
            "--lease-namespace",
            &self.who.namespace,
            "--webhook-configuration",
            &self.configuration,
            "--webhook-secret",
            &self.tls_secret,
            "--webhook-address",
            "127.0.0.1",
            "--webhook-host",
            "127.0.0.1",
            "--webhook-shutdown-delay",
            "2s",
        ];
        all.extend_from_slice(args);
        Running::start(cmd, &all)
    }

    /// A namespace the webhook is registered for, with a `default` ServiceAccount (no
    /// controller-manager makes one) that has no pull secret.
    async fn namespace(&self, name: &str, labels: &[(&str, &str)]) -> String {
        let mut all = vec![self.label()];
        all.extend_from_slice(labels);
        create_namespace(&self.admin, name, &all).await;
        // Made here at once, or by a controller-manager where the stack runs one.
        let sa =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "default"}})).unwrap();
        match Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(
            self.admin.clone(),
            name,
        )
        .create(&kube::api::PostParams::default(), &sa)
        .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => panic!("create serviceaccount {name}/default: {e}"),
        }
        name.to_owned()
    }

    fn ns(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.prefix)
    }

    async fn register(&self, url: &str, timeout_seconds: i32) {
        register(
            &self.admin,
            &self.configuration,
            url,
            self.label(),
            None,
            timeout_seconds,
        )
        .await;
    }

    /// POSTs `body` to the webhook on `port` with curl, trusting the published bundle;
    /// the answer's body, a newline, and its status code.
    async fn post(&self, port: u16, body: &str) -> String {
        let bundle = self.bundle_file().await;
        let out = std::process::Command::new("curl")
            .args(["-s", "--max-time", "5", "-w", "\n%{http_code}", "--cacert"])
            .arg(&bundle)
            .args(["-H", "Content-Type: application/json", "--data", body])
            .arg(format!("https://127.0.0.1:{port}/mutate"))
            .output()
            .unwrap();
        stdout(&out)
    }

    async fn webhook_secret(&self) -> Option<Secret> {
        get_secret(&self.admin, &self.who.namespace, &self.tls_secret).await
    }

    /// The CA bundle regcred published, written to a file (for curl).
    async fn bundle_file(&self) -> PathBuf {
        let path = self.dir.path().join("ca-bundle.pem");
        std::fs::write(&path, ca_bundle(&self.admin, &self.configuration).await).unwrap();
        path
    }
}

fn webhook_metric(run: &Running, result: &str) -> f64 {
    let (_, text) = run.get("/metrics").expect("metrics");
    metric_sum(&text, "regcred_webhook_requests_total", |l| {
        l.contains(&format!("result=\"{result}\""))
    })
}

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

/// The certificate a TLS server on 127.0.0.1:`port` presents, checked against `bundle`.
async fn served_certificate(port: u16, bundle: &[u8]) -> Option<Vec<u8>> {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for der in rustls::pki_types::CertificateDer::pem_slice_iter(bundle).flatten() {
        roots.add(der).ok()?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").ok()?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .ok()?;
    Some(tls.get_ref().1.peer_certificates()?.first()?.to_vec())
}

fn pem_der(pem: &[u8]) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::CertificateDer::from_pem_slice(pem)
        .unwrap()
        .to_vec()
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
