//! The integration-test harness: the real local stack (started if it is not up), one
//! namespace per test, and ServiceAccount identities with exactly the RBAC a test gives.
//! Here: the stack, unique names, waiting, small helpers; namespaces, identities, secrets,
//! processes (fake AWS, `regcred`) and private clusters each in a file of their own, all
//! re-exported so a test needs only `use common::*`.
#![allow(dead_code, clippy::missing_panics_doc)]

pub mod audit;
pub mod helm;
pub mod image;
pub mod pods;
pub mod race;
pub mod rotation;

use std::collections::{BTreeMap, HashMap};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kube::config::{KubeConfigOptions, Kubeconfig};

pub mod webhook;

mod identity;
mod namespaces;
mod private;
mod processes;
mod secrets;

#[allow(unused_imports)] // Not every test crate uses every part.
pub use {identity::*, namespaces::*, private::*, processes::*, secrets::*};

pub const FIELD_MANAGER: &str = "regcred";

/// The running stack: its environment (from `.testenv/env`) and paths.
#[derive(Debug)]
pub struct Stack {
    pub env: BTreeMap<String, String>,
    pub root: PathBuf,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The stack, brought up once per test binary (`scripts/testenv.sh up` is idempotent and
/// locked, so test binaries running at once do not race).
pub fn stack() -> &'static Stack {
    static STACK: OnceLock<Stack> = OnceLock::new();
    STACK.get_or_init(|| {
        let root = root();
        let script = root.join("scripts/testenv.sh");
        let healthy = Command::new(&script)
            .arg("status")
            .output()
            .is_ok_and(|o| o.status.success());
        if !healthy {
            let status = Command::new(&script)
                .arg("up")
                .status()
                .expect("run scripts/testenv.sh up");
            assert!(status.success(), "scripts/testenv.sh up failed");
        }
        let text = std::fs::read_to_string(root.join(".testenv/env")).expect("read .testenv/env");
        let env = text
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Stack { env, root }
    })
}

impl Stack {
    pub fn var(&self, key: &str) -> &str {
        self.env
            .get(key)
            .unwrap_or_else(|| panic!("{key} missing from .testenv/env"))
    }

    /// A client acting as cluster admin.
    pub async fn admin(&self) -> kube::Client {
        client_from(Path::new(self.var("KUBECONFIG"))).await
    }

    /// How many calls of each operation the fake AWS saw from this access key.
    pub fn aws_calls(&self, key: &str) -> HashMap<String, u64> {
        let body = http(
            "GET",
            &format!("{}/calls?key={key}", self.var("REGCRED_TEST_CONTROL")),
            None,
        );
        serde_json::from_str(&body).expect("calls JSON")
    }

    /// Token calls (private and public) made with this access key.
    pub fn token_calls(&self, key: &str) -> u64 {
        let calls = self.aws_calls(key);
        calls.get("ecr:GetAuthorizationToken").copied().unwrap_or(0)
            + calls
                .get("ecr-public:GetAuthorizationToken")
                .copied()
                .unwrap_or(0)
    }

    /// A registry password for `account`, as a token call would give, valid for `ttl`
    /// (`"60s"`; zero or negative: already expired).
    pub fn registry_token(&self, account: &str, ttl: &str) -> String {
        let body = http(
            "POST",
            &format!("{}/registry-tokens", self.var("REGCRED_TEST_CONTROL")),
            Some(&serde_json::json!({"account": account, "ttl": ttl}).to_string()),
        );
        let v: serde_json::Value = serde_json::from_str(&body).expect("token JSON");
        v["password"].as_str().expect("password").to_owned()
    }

    /// What the fake AWS knows of a registry password it issued, or `None` if it never did.
    pub fn token_info(&self, password: &str) -> Option<TokenInfo> {
        token_info_at(self.var("REGCRED_TEST_CONTROL"), password)
    }

    /// Per-access-key behaviour of the fake AWS (`{"ttl": 30, "fail": true, ...}`).
    pub fn set_aws_key(&self, key: &str, settings: &serde_json::Value) {
        http(
            "PUT",
            &format!("{}/keys/{key}", self.var("REGCRED_TEST_CONTROL")),
            Some(&settings.to_string()),
        );
    }
}

pub async fn client_from(kubeconfig: &Path) -> kube::Client {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let kc = Kubeconfig::read_from(kubeconfig).expect("read kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    kube::Client::try_from(config).expect("client")
}

/// What the fake AWS whose control API is at `control` knows of a registry password.
fn token_info_at(control: &str, password: &str) -> Option<TokenInfo> {
    let url = format!("{control}/registry-tokens/lookup");
    let body = serde_json::json!({"password": password}).to_string();
    let (code, text) = http_status("POST", &url, Some(&body));
    match code {
        200 => Some(serde_json::from_str(&text).expect("token info JSON")),
        404 => None,
        _ => panic!("POST {url}: {code} {text}"),
    }
}

/// A registry password the fake AWS issued: for which account (`"public"` for ECR Public),
/// until when, signed by which access key, and whether it is still valid.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    pub account: String,
    pub expires_at: f64,
    pub key: String,
    pub valid: bool,
}

/// A minimal HTTP/1.0 exchange with the fake AWS control API on loopback; panics unless
/// the answer is 2xx.
pub fn http(method: &str, url: &str, body: Option<&str>) -> String {
    let (code, text) = http_status(method, url, body);
    assert!((200..300).contains(&code), "{method} {url}: {code} {text}");
    text
}

/// The same exchange: status code and body, whatever the status.
pub fn http_status(method: &str, url: &str, body: Option<&str>) -> (u16, String) {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let mut stream = std::net::TcpStream::connect(host).expect("connect to the control API");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let body = body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{method} {url}: no status in {head:?}"));
    (code, body.to_owned())
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}-{:x}{:x}-{}",
        std::process::id() % 0xfff,
        nanos % 0xffff,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Writes a config file into a temp dir that lives as long as the returned handle.
pub fn config_file(yaml: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("regcred.yaml");
    std::fs::write(&path, yaml).unwrap();
    (dir, path)
}

/// The stack's registry as a registry entry: an alias with account and region.
pub fn registry_alias_yaml() -> String {
    let s = stack();
    format!(
        "      - host: \"{}\"\n        accountId: \"{}\"\n        region: us-east-1\n",
        s.var("REGCRED_TEST_REGISTRY"),
        s.var("REGCRED_TEST_ACCOUNT")
    )
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Polls `check` until it returns `Some`, or panics after `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Metric values are small counts: equal when within a half.
pub fn is(value: f64, want: f64) -> bool {
    (value - want).abs() < 0.5
}

/// A free TCP port on loopback (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The sum of a Prometheus counter over the series whose labels pass `keep` (the text
/// between the braces, e.g. `code="201",...,verb="POST"`).
pub fn metric_sum(text: &str, name: &str, keep: impl Fn(&str) -> bool) -> f64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(name))
        .filter_map(|rest| {
            let (labels, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            keep(labels).then(|| value.trim().parse::<f64>().ok())?
        })
        .sum()
}
