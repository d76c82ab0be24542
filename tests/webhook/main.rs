//! The admission webhook (issue 13) on the real API server: `regcred run` as the chart's
//! ServiceAccount serves it, makes and publishes its certificate, and the API server calls
//! it for real pods. A pod whose image is on a configured registry gets exactly one
//! reference; others are untouched; pods are created while regcred is down or hung; and no
//! admission is lost across replica restarts and certificate rotations.
//!
//! The webhook is registered by URL (the stack has no Service routing; see
//! `common/webhook.rs`), and only for namespaces carrying this test's label.
#![allow(clippy::print_stderr)] // Tests report what they measure.

mod availability;
#[path = "../common/mod.rs"]
mod common;
mod pods;

use std::path::PathBuf;
use std::sync::Arc;

use common::webhook::*;
use common::*;
use k8s_openapi::api::core::v1::Secret;
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
