//! The integration-test harness: the real local stack (started if it is not up), one
//! namespace per test, and ServiceAccount identities with exactly the RBAC a test gives.
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

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

pub mod webhook;

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

pub async fn create_namespace(
    client: &kube::Client,
    name: &str,
    labels: &[(&str, &str)],
) -> Namespace {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("create namespace {name}: {e}"))
}

pub async fn create_service_account(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    pull_secrets: &[&str],
) -> ServiceAccount {
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        image_pull_secrets: (!pull_secrets.is_empty()).then(|| {
            pull_secrets
                .iter()
                .map(|n| k8s_openapi::api::core::v1::LocalObjectReference {
                    name: (*n).to_owned(),
                })
                .collect()
        }),
        ..ServiceAccount::default()
    };
    // The controller-manager makes every namespace's "default" ServiceAccount, maybe first:
    // then it gets exactly these pull secrets.
    let api = Api::<ServiceAccount>::namespaced(client.clone(), namespace);
    match api.create(&PostParams::default(), &sa).await {
        Ok(created) => return created,
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("create serviceaccount {namespace}/{name}: {e}"),
    }
    loop {
        let mut current = api
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("get serviceaccount {namespace}/{name}: {e}"));
        current
            .image_pull_secrets
            .clone_from(&sa.image_pull_secrets);
        match api.replace(name, &PostParams::default(), &current).await {
            Ok(replaced) => return replaced,
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => panic!("update serviceaccount {namespace}/{name}: {e}"),
        }
    }
}

/// Deletes `namespace` and holds it Terminating (a ConfigMap in it keeps a finalizer, as
/// a stuck controller's object would) until the returned guard is dropped. The
/// controller-manager deletes everything else in it meanwhile.
pub async fn hold_terminating(client: &kube::Client, namespace: &str) -> TerminatingHold {
    use k8s_openapi::api::core::v1::ConfigMap;
    let held = ConfigMap {
        metadata: ObjectMeta {
            name: Some("held".into()),
            finalizers: Some(vec![HOLD_FINALIZER.into()]),
            ..ObjectMeta::default()
        },
        ..ConfigMap::default()
    };
    Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &held)
        .await
        .unwrap_or_else(|e| panic!("create the held ConfigMap in {namespace}: {e}"));
    let namespaces = Api::<Namespace>::all(client.clone());
    namespaces
        .delete(namespace, &kube::api::DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("delete namespace {namespace}: {e}"));
    wait_for(
        "the namespace to be Terminating",
        Duration::from_mins(1),
        || async {
            let ns = namespaces.get_opt(namespace).await.ok()??;
            (phase(&ns) == "Terminating").then_some(())
        },
    )
    .await;
    TerminatingHold {
        kubeconfig: PathBuf::from(stack().var("KUBECONFIG")),
        namespace: namespace.to_owned(),
    }
}

const HOLD_FINALIZER: &str = "regcred.test/hold";

fn phase(ns: &Namespace) -> String {
    ns.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default()
}

/// A namespace held Terminating by [`hold_terminating`]; dropping it lets the deletion finish.
#[derive(Debug)]
pub struct TerminatingHold {
    kubeconfig: PathBuf,
    namespace: String,
}

impl Drop for TerminatingHold {
    fn drop(&mut self) {
        let patch = r#"{"metadata":{"finalizers":null}}"#;
        let _ = Command::new(stack().var("REGCRED_TEST_KUBECTL"))
            .env("KUBECONFIG", &self.kubeconfig)
            .args([
                "-n",
                &self.namespace,
                "patch",
                "configmap",
                "held",
                "--type=merge",
                "-p",
            ])
            .arg(patch)
            .output();
    }
}

fn rule(
    groups: &[&str],
    resources: &[&str],
    verbs: &[&str],
    names: Option<&[String]>,
) -> PolicyRule {
    let strings = |v: &[&str]| Some(v.iter().map(|s| (*s).to_owned()).collect());
    PolicyRule {
        api_groups: strings(groups),
        resources: strings(resources),
        verbs: verbs.iter().map(|s| (*s).to_owned()).collect(),
        resource_names: names.map(<[String]>::to_vec),
        ..PolicyRule::default()
    }
}

/// The cluster-wide rules of the spec's least-privilege section (what the chart grants).
pub fn chart_cluster_rules(secret_names: &[&str], patch_service_accounts: bool) -> Vec<PolicyRule> {
    let names: Vec<String> = secret_names.iter().map(|s| (*s).to_owned()).collect();
    let mut rules = vec![
        rule(&[""], &["namespaces"], &["get", "list", "watch"], None),
        rule(&[""], &["secrets"], &["create"], None),
        rule(
            &[""],
            &["secrets"],
            &["get", "list", "watch", "patch", "update", "delete"],
            Some(&names),
        ),
        rule(
            &["", "events.k8s.io"],
            &["events"],
            &["create", "patch"],
            None,
        ),
    ];
    if patch_service_accounts {
        rules.push(rule(
            &[""],
            &["serviceaccounts"],
            &["get", "list", "watch", "patch"],
            None,
        ));
    }
    rules
}

/// The rules in regcred's own namespace: its Lease.
pub fn chart_namespace_rules(lease: &str) -> Vec<PolicyRule> {
    vec![
        rule(&["coordination.k8s.io"], &["leases"], &["create"], None),
        rule(
            &["coordination.k8s.io"],
            &["leases"],
            &["get", "update"],
            Some(&[lease.to_owned()]),
        ),
    ]
}

/// A ServiceAccount to act as, with a kubeconfig holding its token.
#[derive(Debug)]
pub struct Identity {
    pub namespace: String,
    pub name: String,
    pub kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

impl Identity {
    pub async fn client(&self) -> kube::Client {
        client_from(&self.kubeconfig).await
    }
}

/// Creates a ServiceAccount in `namespace` bound to exactly these rules (cluster-wide and
/// in its own namespace), mints a token for it and writes a kubeconfig.
pub async fn identity(
    admin: &kube::Client,
    namespace: &str,
    cluster_rules: Vec<PolicyRule>,
    namespace_rules: Vec<PolicyRule>,
) -> Identity {
    let name = unique("regcred-sa");
    create_service_account(admin, namespace, &name, &[]).await;
    let subject = Subject {
        kind: "ServiceAccount".into(),
        name: name.clone(),
        namespace: Some(namespace.to_owned()),
        ..Subject::default()
    };
    let meta = |n: &str| ObjectMeta {
        name: Some(n.to_owned()),
        ..ObjectMeta::default()
    };
    let pp = PostParams::default();
    if !cluster_rules.is_empty() {
        let role = ClusterRole {
            metadata: meta(&name),
            rules: Some(cluster_rules),
            ..ClusterRole::default()
        };
        Api::<ClusterRole>::all(admin.clone())
            .create(&pp, &role)
            .await
            .expect("create clusterrole");
        let binding = ClusterRoleBinding {
            metadata: meta(&name),
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "ClusterRole".into(),
                name: name.clone(),
            },
            subjects: Some(vec![subject.clone()]),
        };
        Api::<ClusterRoleBinding>::all(admin.clone())
            .create(&pp, &binding)
            .await
            .expect("create clusterrolebinding");
    }
    if !namespace_rules.is_empty() {
        let role = Role {
            metadata: meta(&name),
            rules: Some(namespace_rules),
        };
        Api::<Role>::namespaced(admin.clone(), namespace)
            .create(&pp, &role)
            .await
            .expect("create role");
        let binding = RoleBinding {
            metadata: meta(&name),
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "Role".into(),
                name: name.clone(),
            },
            subjects: Some(vec![subject]),
        };
        Api::<RoleBinding>::namespaced(admin.clone(), namespace)
            .create(&pp, &binding)
            .await
            .expect("create rolebinding");
    }
    identity_of(admin, namespace, &name).await
}

/// A ServiceAccount token from the TokenRequest API.
pub async fn service_account_token(admin: &kube::Client, namespace: &str, name: &str) -> String {
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    Api::<ServiceAccount>::namespaced(admin.clone(), namespace)
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .expect("token request")
        .status
        .expect("token status")
        .token
        .expect("token")
}

/// An identity with the chart's RBAC for these secret names, in a fresh namespace of its own.
pub async fn chart_identity(
    admin: &kube::Client,
    secret_names: &[&str],
    patch_service_accounts: bool,
) -> Identity {
    let home = unique("regcred-home");
    create_namespace(admin, &home, &[]).await;
    identity(
        admin,
        &home,
        chart_cluster_rules(secret_names, patch_service_accounts),
        chart_namespace_rules("regcred"),
    )
    .await
}

/// The regcred binary, with the stack's AWS environment, acting as `who`, and counting its
/// AWS calls under its own access key id (returned).
pub fn regcred(who: &Identity) -> (Command, String) {
    let (mut cmd, key) = regcred_without_cluster();
    cmd.env("KUBECONFIG", &who.kubeconfig);
    (cmd, key)
}

/// The regcred binary with the stack's AWS environment and no way to reach a cluster: its
/// kubeconfig does not exist.
pub fn regcred_without_cluster() -> (Command, String) {
    let s = stack();
    let key = unique("AKIATEST").replace('-', "").to_uppercase();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_regcred"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::var("HOME").unwrap_or_default())
        .env("KUBECONFIG", "/nonexistent/regcred-test-kubeconfig")
        .env("AWS_ENDPOINT_URL", s.var("AWS_ENDPOINT_URL"))
        .env(
            "AWS_ENDPOINT_URL_ECR_PUBLIC",
            s.var("AWS_ENDPOINT_URL_ECR_PUBLIC"),
        )
        .env("AWS_ACCESS_KEY_ID", &key)
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", s.var("AWS_REGION"))
        .env("AWS_EC2_METADATA_DISABLED", "true");
    (cmd, key)
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

pub async fn get_secret(client: &kube::Client, namespace: &str, name: &str) -> Option<Secret> {
    Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .expect("get secret")
}

/// The `.dockerconfigjson` of a secret, parsed.
pub fn dockerconfig(secret: &Secret) -> serde_json::Value {
    let bytes = &secret.data.as_ref().expect("data")[".dockerconfigjson"].0;
    serde_json::from_slice(bytes).expect("dockerconfigjson")
}

pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const EXPIRES_AT: &str = "regcred.io/expires-at";
pub const DOCKERCONFIG_TYPE: &str = "kubernetes.io/dockerconfigjson";

/// The expiry regcred wrote on a secret (panics when it has none).
pub fn expires_at(secret: &Secret) -> jiff::Timestamp {
    secret.metadata.annotations.as_ref().expect("annotations")[EXPIRES_AT]
        .parse()
        .expect("an RFC 3339 expiry")
}

/// Why a pod could not pull from `hosts` with this secret, or `None` if it could: it has
/// the pull-secret type and a `.dockerconfigjson` that parses, with a password and `auth`
/// for every host. Any pull secret, regcred's or a `kubectl create secret docker-registry`.
pub fn pull_problem(secret: &Secret, hosts: &[impl AsRef<str>]) -> Option<String> {
    if secret.type_.as_deref() != Some(DOCKERCONFIG_TYPE) {
        return Some(format!("type {:?}", secret.type_));
    }
    let Some(bytes) = secret
        .data
        .as_ref()
        .and_then(|d| d.get(".dockerconfigjson"))
    else {
        return Some("no .dockerconfigjson".into());
    };
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&bytes.0) else {
        return Some("unparseable .dockerconfigjson".into());
    };
    hosts.iter().map(AsRef::as_ref).find_map(|host| {
        let entry = &doc["auths"][host];
        (!(entry["password"].is_string() && entry["auth"].is_string()))
            .then(|| format!("no complete entry for {host}: {entry}"))
    })
}

/// What every served namespace must hold: `None` when the secret exists, is regcred's,
/// passes [`pull_problem`] for `hosts`, and has not expired.
pub fn managed_secret_problem(
    secret: Option<&Secret>,
    hosts: &[impl AsRef<str>],
) -> Option<String> {
    let Some(secret) = secret else {
        return Some("missing".into());
    };
    let labels = secret.metadata.labels.clone().unwrap_or_default();
    if labels.get(MANAGED_BY).map(String::as_str) != Some("regcred") {
        return Some("not labelled as regcred's".into());
    }
    if let Some(why) = pull_problem(secret, hosts) {
        return Some(why);
    }
    let annotations = secret.metadata.annotations.clone().unwrap_or_default();
    let Some(Ok(expiry)) = annotations
        .get(EXPIRES_AT)
        .map(|t| t.parse::<jiff::Timestamp>())
    else {
        return Some("no expiry annotation".into());
    };
    (expiry <= jiff::Timestamp::now()).then(|| format!("expired at {expiry}"))
}

/// Pulls the stack's test image with skopeo using this authfile; returns skopeo's output.
pub fn skopeo_pull(authfile: &Path) -> Output {
    skopeo_pull_from(authfile, stack().var("REGCRED_TEST_IMAGE"))
}

/// Pulls `image` (`host/path:tag`) with skopeo using this authfile; returns skopeo's output.
pub fn skopeo_pull_from(authfile: &Path, image: &str) -> Output {
    let s = stack();
    let dest = tempfile::tempdir().unwrap();
    Command::new("skopeo")
        .args([
            "--policy",
            s.var("REGCRED_TEST_POLICY"),
            "copy",
            "--authfile",
        ])
        .arg(authfile)
        .args(["--src-cert-dir", s.var("REGCRED_TEST_CERT_DIR")])
        .arg(format!("docker://{image}"))
        .arg(format!("dir:{}", dest.path().display()))
        .output()
        .expect("run skopeo")
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

/// A private fake AWS (moto wrapped by `testenv/fake_aws.py`) that a test may stop and
/// start again, unlike the shared one.
#[derive(Debug)]
pub struct FakeAws {
    pub port: u16,
    pub public_port: u16,
    ttl: Option<String>,
    child: Option<std::process::Child>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl FakeAws {
    /// Starts one; `ttl` sets `REGCRED_TEST_TOKEN_TTL` (default 12h).
    pub fn start(ttl: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut aws = Self {
            port: free_port(),
            public_port: free_port(),
            ttl: ttl.map(str::to_owned),
            child: None,
            log: dir.path().join("fake_aws.log"),
            _dir: dir,
        };
        aws.resume();
        aws
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn public_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.public_port)
    }

    /// Starts it again on the same ports after [`FakeAws::stop`], and waits until it answers.
    pub fn resume(&mut self) {
        let s = stack();
        let python = Path::new(s.var("REGCRED_TEST_VENV")).join("bin/python");
        let mut cmd = Command::new(python);
        cmd.arg(s.root.join("testenv/fake_aws.py"))
            .args([
                "--port",
                &self.port.to_string(),
                "--public-port",
                &self.public_port.to_string(),
            ])
            .arg("--log")
            .arg(&self.log);
        if let Some(ttl) = &self.ttl {
            cmd.env("REGCRED_TEST_TOKEN_TTL", ttl);
        }
        self.child = Some(cmd.spawn().expect("start fake_aws.py"));
        let start = Instant::now();
        let health = format!("127.0.0.1:{}", self.port);
        while std::net::TcpStream::connect(&health).is_err()
            || std::net::TcpStream::connect(("127.0.0.1", self.public_port)).is_err()
        {
            assert!(
                start.elapsed() < Duration::from_mins(1),
                "fake_aws.py did not start; see {}",
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills it: its endpoints refuse connections until [`FakeAws::resume`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn calls(&self, key: &str) -> HashMap<String, u64> {
        serde_json::from_str(&http(
            "GET",
            &format!("{}/_regcred/calls?key={key}", self.endpoint()),
            None,
        ))
        .unwrap()
    }

    /// What this instance knows of a registry password it issued (see [`Stack::token_info`]).
    pub fn token_info(&self, password: &str) -> Option<TokenInfo> {
        token_info_at(&format!("{}/_regcred", self.endpoint()), password)
    }
}

impl Drop for FakeAws {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A `regcred run` process, its admin port, and its stderr log.
#[derive(Debug)]
pub struct Running {
    pub child: std::process::Child,
    pub admin: u16,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Running {
    /// Starts `cmd` (a `regcred(...)` command) as `regcred run` with these extra arguments
    /// and a free admin port.
    pub fn start(mut cmd: Command, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("regcred.log");
        let admin = free_port();
        let child = cmd
            .arg("run")
            .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start regcred run");
        Self {
            child,
            admin,
            log,
            _dir: dir,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET on the admin port: status code and body (`None` when it does not answer).
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.admin)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let code = response.split_whitespace().nth(1)?.parse().ok()?;
        let body = response
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_owned();
        Some((code, body))
    }

    /// A sample of `/metrics` (the sum over all label sets of that name), 0 when absent.
    pub fn metric(&self, name: &str) -> f64 {
        let Some((200, text)) = self.get("/metrics") else {
            return f64::NAN;
        };
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .filter(|(series, _)| *series == name || series.starts_with(&format!("{name}{{")))
            .filter_map(|(_, v)| v.parse::<f64>().ok())
            .sum()
    }

    pub fn is_ready(&self) -> bool {
        matches!(self.get("/readyz"), Some((200, _)))
    }

    /// Waits until `/readyz` answers 200; how long that took.
    pub async fn wait_ready(&self, timeout: Duration) -> Duration {
        let t0 = Instant::now();
        wait_for("regcred run to be ready", timeout, || async {
            self.is_ready().then_some(())
        })
        .await;
        let took = t0.elapsed();
        #[allow(clippy::print_stderr)] // What a test reports.
        {
            eprintln!("ready after {took:?}");
        }
        took
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit; its status and how long it took.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<(std::process::ExitStatus, Duration)> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some((status, start.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log_text();
            // Keep the whole log where CI (and a person) can read it.
            let keep = root().join("target/test-logs");
            let _ = std::fs::create_dir_all(&keep);
            let _ = std::fs::write(keep.join(format!("regcred-run-{}.log", self.admin)), &log);
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            #[allow(clippy::print_stderr)] // What a failing test leaves to read.
            {
                eprintln!(
                    "--- regcred run (admin port {}) log tail ---\n{}",
                    self.admin,
                    tail.join("\n")
                );
            }
        }
    }
}

/// A second kube-apiserver on the stack's etcd (same data, like an HA control plane), that
/// a test may kill and start again without disturbing other tests.
#[derive(Debug)]
pub struct PrivateApiserver {
    pub port: u16,
    child: Option<std::process::Child>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl PrivateApiserver {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut server = Self {
            port: free_port(),
            child: None,
            log: dir.path().join("apiserver.log"),
            _dir: dir,
        };
        server.resume();
        server
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// (Re)starts it and waits until `/readyz` answers.
    pub fn resume(&mut self) {
        let s = stack();
        let child = Command::new(s.root.join("testenv/start-apiserver.sh"))
            .arg(self.port.to_string())
            .arg("/registry")
            .arg(s.var("REGCRED_TEST_STATE"))
            .env("REGCRED_TEST_BIN", s.var("REGCRED_TEST_BIN"))
            .env("REGCRED_TEST_ETCD", s.var("REGCRED_TEST_ETCD"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&self.log).unwrap())
            .spawn()
            .expect("start kube-apiserver");
        self.child = Some(child);
        wait_apiserver_ready(&self.url(), &self.log, Duration::from_mins(3));
    }

    /// Freezes it (SIGSTOP): connections are accepted by the kernel but never answered,
    /// like a hung control plane, until [`PrivateApiserver::thaw`].
    pub fn freeze(&self) {
        self.send("STOP");
    }

    pub fn thaw(&self) {
        self.send("CONT");
    }

    fn send(&self, signal: &str) {
        let child = self.child.as_ref().expect("the API server is running");
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal}");
    }

    /// Kills it (SIGKILL): clients see connections refused until [`PrivateApiserver::resume`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateApiserver {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let keep = root().join("target/test-logs");
            let _ = std::fs::create_dir_all(&keep);
            let _ = std::fs::copy(
                &self.log,
                keep.join(format!("kube-apiserver-{}.log", self.port)),
            );
        }
    }
}

/// A copy of a kubeconfig that talks to another server.
pub fn kubeconfig_for_server(kubeconfig: &Path, server: &str, dir: &Path) -> PathBuf {
    let path = dir.join(format!("kubeconfig-{}", unique("srv")));
    write_kubeconfig_for_server(kubeconfig, server, &path);
    path
}

/// Writes to `to` the kubeconfig at `from` with every `server:` set to `server`.
fn write_kubeconfig_for_server(from: &Path, server: &str, to: &Path) {
    let text = std::fs::read_to_string(from)
        .unwrap_or_else(|e| panic!("read kubeconfig {}: {e}", from.display()));
    let rewritten: String = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("server:") {
                let indent = &l[..l.len() - l.trim_start().len()];
                format!("{indent}server: {server}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(to, rewritten).unwrap();
}

/// Waits until an Event with this reason is recorded in `namespace`.
pub async fn wait_for_event(
    admin: &kube::Client,
    namespace: &str,
    reason: &str,
    timeout: Duration,
) {
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(admin.clone(), namespace);
    wait_for(&format!("a {reason} event"), timeout, || async {
        let list = events.list(&kube::api::ListParams::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| e.reason.as_deref() == Some(reason))
            .then_some(())
    })
    .await;
}

/// Acts as an existing ServiceAccount (one a chart created, say), with whatever RBAC it
/// was given: a fresh token from the TokenRequest API in a kubeconfig.
pub async fn identity_of(admin: &kube::Client, namespace: &str, name: &str) -> Identity {
    let token = service_account_token(admin, namespace, name).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let s = stack();
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    certificate-authority: {}\n\
             users:\n- name: sa\n  user:\n    token: {token}\ncontexts:\n- name: sa\n  context:\n    cluster: test\n    user: sa\n    namespace: {namespace}\n\
             current-context: sa\n",
            s.var("REGCRED_TEST_APISERVER"),
            s.var("REGCRED_TEST_CA"),
        ),
    )
    .unwrap();
    Identity {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        kubeconfig,
        _dir: dir,
    }
}

/// `curl` for a GET of `url` with the stack's CA and admin certificate, giving up after
/// `max_secs`.
fn admin_curl(url: &str, max_secs: u32) -> Command {
    let pki = Path::new(stack().var("REGCRED_TEST_STATE")).join("pki");
    let mut curl = Command::new("curl");
    curl.args(["-sf", "--max-time", &max_secs.to_string(), "--cacert"])
        .arg(pki.join("ca.crt"))
        .arg("--cert")
        .arg(pki.join("admin.crt"))
        .arg("--key")
        .arg(pki.join("admin.key"))
        .arg(url);
    curl
}

/// A log file a restarted process appends to.
fn append_log(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// Waits until a kube-apiserver on `url` answers `/readyz` to the admin certificate.
fn wait_apiserver_ready(url: &str, log: &Path, timeout: Duration) {
    let start = Instant::now();
    loop {
        let ok = admin_curl(&format!("{url}/readyz"), 2)
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "kube-apiserver on {url} not ready after {timeout:?}; see {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A cluster of its own: a private etcd (data in a temp dir) and a kube-apiserver on it,
/// trusting the stack's CA and admin certificate. A fresh, empty cluster: it can be filled
/// with thousands of namespaces without making the shared stack's lists longer, its etcd
/// and API server can be stopped and started again, and everything it held goes when it
/// is dropped.
#[derive(Debug)]
pub struct PrivateCluster {
    pub etcd_port: u16,
    etcd_peer_port: u16,
    pub port: u16,
    apiserver_flags: Vec<String>,
    etcd: Option<std::process::Child>,
    apiserver: Option<std::process::Child>,
    admin_kubeconfig: PathBuf,
    dir: tempfile::TempDir,
}

impl PrivateCluster {
    /// Starts etcd, then the API server with these extra flags, and waits until it is ready.
    pub fn start(apiserver_flags: &[String]) -> Self {
        let s = stack();
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let admin_kubeconfig = dir.path().join("admin.kubeconfig");
        write_kubeconfig_for_server(
            Path::new(s.var("KUBECONFIG")),
            &format!("https://127.0.0.1:{port}"),
            &admin_kubeconfig,
        );
        let mut cluster = Self {
            etcd_port: free_port(),
            etcd_peer_port: free_port(),
            port,
            apiserver_flags: apiserver_flags.to_vec(),
            etcd: None,
            apiserver: None,
            admin_kubeconfig,
            dir,
        };
        cluster.resume_etcd();
        cluster.resume_apiserver();
        cluster
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// A folder that lives as long as the cluster (logs are written there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// An admin (system:masters) kubeconfig for this cluster.
    pub fn admin_kubeconfig(&self) -> &Path {
        &self.admin_kubeconfig
    }

    pub async fn admin(&self) -> kube::Client {
        client_from(&self.admin_kubeconfig).await
    }

    /// Points an identity (made on this cluster, e.g. by [`chart_identity`]) at this
    /// cluster's API server: its kubeconfig is rewritten in place.
    pub fn point_at_me(&self, who: &Identity) {
        let text = std::fs::read_to_string(&who.kubeconfig).unwrap();
        let rewritten = text.replace(stack().var("REGCRED_TEST_APISERVER"), &self.url());
        std::fs::write(&who.kubeconfig, rewritten).unwrap();
    }

    pub fn apiserver_pid(&self) -> Option<u32> {
        self.apiserver.as_ref().map(std::process::Child::id)
    }

    /// (Re)starts etcd on the same ports and data, and waits until it answers `/health`.
    pub fn resume_etcd(&mut self) {
        let s = stack();
        let log = self.dir.path().join("etcd.log");
        let child = Command::new(s.root.join("testenv/start-etcd.sh"))
            .arg(self.etcd_port.to_string())
            .arg(self.etcd_peer_port.to_string())
            .arg(self.dir.path().join("etcd"))
            .env("REGCRED_TEST_BIN", s.var("REGCRED_TEST_BIN"))
            .stdout(std::process::Stdio::null())
            .stderr(append_log(&log))
            .spawn()
            .expect("start etcd");
        self.etcd = Some(child);
        let start = Instant::now();
        loop {
            let healthy = Command::new("curl")
                .args(["-sf", "--max-time", "2"])
                .arg(format!("http://127.0.0.1:{}/health", self.etcd_port))
                .output()
                .is_ok_and(|o| o.status.success() && stdout(&o).contains("true"));
            if healthy {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_mins(1),
                "private etcd not healthy; see {}",
                log.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills etcd (SIGKILL); its data stays for [`PrivateCluster::resume_etcd`].
    pub fn stop_etcd(&mut self) {
        if let Some(mut child) = self.etcd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// (Re)starts the API server and waits until `/readyz` answers.
    pub fn resume_apiserver(&mut self) {
        let s = stack();
        let log = self.dir.path().join("apiserver.log");
        let child = Command::new(s.root.join("testenv/start-apiserver.sh"))
            .arg(self.port.to_string())
            .arg("/registry")
            .arg(s.var("REGCRED_TEST_STATE"))
            .args(&self.apiserver_flags)
            .env("REGCRED_TEST_BIN", s.var("REGCRED_TEST_BIN"))
            .env(
                "REGCRED_TEST_ETCD",
                format!("http://127.0.0.1:{}", self.etcd_port),
            )
            .stdout(std::process::Stdio::null())
            .stderr(append_log(&log))
            .spawn()
            .expect("start kube-apiserver");
        self.apiserver = Some(child);
        wait_apiserver_ready(&self.url(), &log, Duration::from_mins(3));
    }

    /// Kills the API server (SIGKILL).
    pub fn kill_apiserver(&mut self) {
        if let Some(mut child) = self.apiserver.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The API server's `/metrics` text, read with the admin certificate.
    pub fn apiserver_metrics(&self) -> String {
        let out = admin_curl(&format!("{}/metrics", self.url()), 30)
            .output()
            .expect("run curl");
        assert!(out.status.success(), "GET /metrics: {}", stderr(&out));
        stdout(&out)
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        self.kill_apiserver();
        self.stop_etcd();
    }
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

/// Creates these namespaces with these labels, `concurrency` requests at a time.
pub async fn create_namespaces_at_once(
    client: &kube::Client,
    names: &[String],
    labels: &[(&str, &str)],
    concurrency: usize,
) {
    use futures::StreamExt as _;
    futures::stream::iter(names)
        .for_each_concurrent(concurrency, |name| async move {
            create_namespace(client, name, labels).await;
        })
        .await;
}
