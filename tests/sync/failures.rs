//! What goes wrong outside: AWS failing (nothing changes, exit 1) and configuration or flags
//! that are wrong (exit 2, the field named, no request to anyone).

use std::io::Write as _;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use k8s_openapi::api::core::v1::Secret;
use serde_json::json;

use crate::common::*;
use crate::world::*;

// ---------------------------------------------------------------------------------------
// AWS down or failing: no secret changes, exit 1.

fn with_aws(mut cmd: Command, private: &str, public: &str) -> Command {
    cmd.env("AWS_ENDPOINT_URL", private)
        .env("AWS_ENDPOINT_URL_ECR_PUBLIC", public);
    cmd
}

/// After a pass that could not get its tokens: exit 1, the failure reported, and the
/// secret exactly as it was.
async fn assert_unchanged(admin: &kube::Client, out: &Output, why: &str, good: &Secret) {
    let ns = good.metadata.namespace.as_deref().unwrap();
    let name = good.metadata.name.as_deref().unwrap();
    assert_exit(out, 1);
    assert_counts(
        out,
        "synced 1 namespaces (0 written, 0 unchanged, 0 skipped, 1 failed)",
    );
    let line = format!("failed: {ns}: secret {ns}/{name} left as it is: ");
    assert!(
        stdout(out).lines().any(|l| l.starts_with(&line)),
        "{why}: {}",
        show(out)
    );
    let now = secret(admin, ns, name).await;
    assert_eq!(rv(&now), rv(good), "{why}: not written");
    assert_eq!(raw_data(&now), raw_data(good), "{why}: same bytes");
}

#[tokio::test]
async fn when_aws_fails_no_secret_changes_and_sync_exits_1() {
    let admin = stack().admin().await;
    let name = unique("pull-down");
    let ns = unique("down");
    create_namespace(&admin, &ns, &[]).await;
    let who = chart_identity(&admin, &[&name], false).await;
    let (_d, file) = config_file(&config(
        &name,
        &format!("{}{}", registry_alias_yaml(), registry_line(PUBLIC_HOST)),
        &format!("{}refresh:\n  before: 6h\n", include(&[&ns])),
    ));
    let s = stack();
    let (shared, shared_public) = (
        s.var("AWS_ENDPOINT_URL").to_owned(),
        s.var("AWS_ENDPOINT_URL_ECR_PUBLIC").to_owned(),
    );

    // A first pass with tokens that live a minute: the secret is due at once.
    let (cmd, key) = sync(&who, &file, &[]);
    s.set_aws_key(&key, &json!({"ttl": 60}));
    let out = run(cmd);
    assert_exit(&out, 0);
    let good = secret(&admin, &ns, &name).await;
    let expires = expires_at(&good);
    assert!(
        expires.duration_since(jiff::Timestamp::now()) < jiff::SignedDuration::from_mins(2),
        "the short lifetime was used: {expires}"
    );

    let mut aws = FakeAws::start(None);
    let private_up = aws.endpoint();
    let public_up = aws.public_endpoint();
    aws.stop();
    let closed = format!("http://127.0.0.1:{}", free_port());
    // Both endpoints down (a stopped fake AWS, a closed port).
    let (cmd, _) = sync(&who, &file, &[]);
    let out = run(with_aws(cmd, &private_up, &closed));
    assert_unchanged(&admin, &out, "both endpoints down", &good).await;
    assert!(
        stdout(&out).contains("GetAuthorizationToken"),
        "{}",
        show(&out)
    );

    // Only ECR Public down: the private token arrives, but no partial secret is written.
    let (cmd, key) = sync(&who, &file, &[]);
    let out = run(with_aws(cmd, &shared, &public_up));
    assert_unchanged(&admin, &out, "ECR Public down", &good).await;
    assert_eq!(
        s.aws_calls(&key).get("ecr:GetAuthorizationToken"),
        Some(&1),
        "the private token was fetched and still nothing was written"
    );

    // Only private ECR down.
    let (cmd, key) = sync(&who, &file, &[]);
    let out = run(with_aws(cmd, &closed, &shared_public));
    assert_unchanged(&admin, &out, "ECR down", &good).await;
    assert_eq!(
        s.aws_calls(&key).get("ecr-public:GetAuthorizationToken"),
        Some(&1)
    );

    // AWS answers, with an error.
    for failure in [
        json!({"fail": true}),
        json!({"fail": "ThrottlingException"}),
    ] {
        let (cmd, key) = sync(&who, &file, &[]);
        s.set_aws_key(&key, &failure);
        let out = run(cmd);
        assert_unchanged(&admin, &out, &failure.to_string(), &good).await;
        assert!(s.token_calls(&key) >= 2, "AWS was asked and refused");
    }

    // Back up: the next pass renews it.
    aws.resume();
    let (cmd, key) = sync(&who, &file, &[]);
    let out = run(with_aws(cmd, &aws.endpoint(), &aws.public_endpoint()));
    assert_exit(&out, 0);
    assert_counts(
        &out,
        "synced 1 namespaces (1 written, 0 unchanged, 0 skipped, 0 failed)",
    );
    let calls = aws.calls(&key);
    assert_eq!(
        calls.get("ecr:GetAuthorizationToken"),
        Some(&1),
        "{calls:?}"
    );
    assert_eq!(
        calls.get("ecr-public:GetAuthorizationToken"),
        Some(&1),
        "{calls:?}"
    );
    let renewed = secret(&admin, &ns, &name).await;
    assert_ne!(rv(&renewed), rv(&good));
    assert_regcred_secret_from(
        &renewed,
        &[
            (&alias_host(), Token::Private),
            (PUBLIC_HOST, Token::Public),
        ],
        &json!({}),
        |p| aws.token_info(p),
    );
}

// ---------------------------------------------------------------------------------------
// Invalid configuration: exit 2, the field named, and no request to anyone.

/// A TCP listener that accepts and counts connections (closing each at once).
struct Trap {
    port: u16,
    seen: Arc<AtomicUsize>,
}

impl Trap {
    fn new() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                counter.fetch_add(1, Ordering::SeqCst);
                drop(conn);
            }
        });
        Self { port, seen }
    }

    fn url(&self, scheme: &str) -> String {
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    fn seen(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }
}

struct Trapped {
    kube: Trap,
    aws: Trap,
    aws_public: Trap,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

impl Trapped {
    fn new() -> Self {
        let (kube, aws, aws_public) = (Trap::new(), Trap::new(), Trap::new());
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        let mut f = std::fs::File::create(&kubeconfig).unwrap();
        write!(
            f,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: trap\n  cluster:\n    server: {}\n    insecure-skip-tls-verify: true\n\
             users:\n- name: trap\n  user:\n    token: not-a-token\ncontexts:\n- name: trap\n  context:\n    cluster: trap\n    user: trap\n\
             current-context: trap\n",
            kube.url("https")
        )
        .unwrap();
        Self {
            kube,
            aws,
            aws_public,
            kubeconfig,
            _dir: dir,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_regcred"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KUBECONFIG", &self.kubeconfig)
            .env("AWS_ENDPOINT_URL", self.aws.url("http"))
            .env("AWS_ENDPOINT_URL_ECR_PUBLIC", self.aws_public.url("http"))
            .env("AWS_ACCESS_KEY_ID", "AKIATRAP")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .args(args);
        cmd
    }

    fn connections(&self) -> usize {
        self.kube.seen() + self.aws.seen() + self.aws_public.seen()
    }
}

/// Config files that must be refused, and the field the refusal must name.
fn bad_config_files() -> Vec<(String, &'static str)> {
    let entry = |rest: &str| format!("secrets:\n  - registries: [{ECR_HOST}]\n{rest}");
    vec![
        (entry("    adpot: true\n"), "secrets[0].adpot"),
        (format!("{}refrsh: {{}}\n", entry("")), "refrsh"),
        (
            "secrets:\n  - registries: [docker.io]\n".to_owned(),
            "secrets[0].registries[0]",
        ),
        (
            "secrets:\n  - registries: [{host: \"reg.example:5000\", accountId: \"12345\", region: us-east-1}]\n"
                .to_owned(),
            "secrets[0].registries[0]",
        ),
        (
            entry("    namespaces: {include: [\"[a-\"]}\n"),
            "secrets[0].namespaces.include[0]",
        ),
        (
            entry("    namespaces: {exclude: [\"Kube System\"]}\n"),
            "secrets[0].namespaces.exclude[0]",
        ),
        (
            entry("    namespaces: {selector: \"env in prod\"}\n"),
            "secrets[0].namespaces.selector",
        ),
        (
            format!("{}refresh: {{before: soon}}\n", entry("")),
            "refresh.before",
        ),
        (
            format!("{}refresh: {{retryMin: 0s}}\n", entry("")),
            "refresh.retryMin",
        ),
        (entry("    name: Bad_Name\n"), "secrets[0].name"),
        (
            entry("    serviceAccounts: [\"not valid\"]\n"),
            "secrets[0].serviceAccounts[0]",
        ),
        ("secrets: {a: 1}\n".to_owned(), "secrets"),
        (entry("    format: argocd\n"), "secrets[0].format"),
        (
            format!(
                "secrets:\n  - format: basic-auth\n    registries: [{ECR_HOST}, public.ecr.aws]\n"
            ),
            "secrets[0].registries: format basic-auth holds one registry's",
        ),
        (
            entry("    format: argocd-repository\n    serviceAccounts: [default]\n"),
            "secrets[0].serviceAccounts: only a dockerconfigjson secret",
        ),
        (
            entry(&format!("    format: argocd-repo-creds\n    name: {}\n", "n".repeat(230))),
            "secrets[0].registries[0]",
        ),
    ]
}

/// `sync` flags that must be refused, and the flag the refusal must name.
fn bad_flags() -> Vec<(Vec<&'static str>, &'static str)> {
    let good = ECR_HOST;
    vec![
        (vec!["--registry", "docker.io"], "--registry"),
        (
            vec!["--registry", good, "--namespace", "[a-"],
            "--namespace",
        ),
        (
            vec!["--registry", good, "--exclude-namespace", "A B"],
            "--exclude-namespace",
        ),
        (
            vec!["--registry", good, "--namespace-selector", "a b c"],
            "--namespace-selector",
        ),
        (
            vec!["--registry", good, "--secret-name", "Not_A_Name"],
            "--secret-name",
        ),
        (
            vec!["--registry", good, "--service-account", "a b"],
            "--service-account",
        ),
        (
            vec!["--registry", good, "--concurrency", "0"],
            "--concurrency",
        ),
        (
            vec!["--registry", good, "--log-level", "x[=="],
            "--log-level",
        ),
        (vec!["--registry", good, "--bogus"], "--bogus"),
        (
            vec!["--registry", good, "--secret-format", "helm"],
            "--secret-format",
        ),
        (
            vec![
                "--registry",
                good,
                "--registry",
                "public.ecr.aws",
                "--secret-format",
                "basic-auth",
            ],
            "--registry: format basic-auth holds one registry's",
        ),
        (vec!["--registry", good, "--registry", good], "--registry"),
        (vec!["--secret-name", "regcred"], "--registry"),
        (vec![], "--registry"),
        (
            vec!["--config", "/dev/null", "--registry", good],
            "--config",
        ),
    ]
}

#[test]
fn invalid_configuration_exits_2_naming_the_field_before_any_request() {
    let trapped = Trapped::new();
    let dir = tempfile::tempdir().unwrap();
    let mut cases: Vec<(Vec<String>, String)> = Vec::new();
    for (i, (yaml, field)) in bad_config_files().into_iter().enumerate() {
        let path = dir.path().join(format!("bad-{i}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        let args = vec!["sync".into(), "--config".into(), path.display().to_string()];
        cases.push((args, field.to_owned()));
    }
    for (flags, field) in bad_flags() {
        let mut args = vec!["sync".to_owned()];
        args.extend(flags.iter().map(|s| (*s).to_owned()));
        cases.push((args, field.to_owned()));
    }
    let missing = dir.path().join("absent.yaml").display().to_string();
    cases.push((
        vec!["sync".into(), "--config".into(), missing],
        "absent.yaml".into(),
    ));

    for (args, field) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = trapped.command(&args).output().expect("run regcred");
        assert_eq!(
            out.status.code(),
            Some(2),
            "regcred {args:?}\n{}",
            show(&out)
        );
        assert!(
            stderr(&out).contains(field.as_str()),
            "regcred {args:?}: stderr should name {field:?}\n{}",
            show(&out)
        );
        assert!(
            stdout(&out).is_empty(),
            "regcred {args:?}: nothing on stdout\n{}",
            show(&out)
        );
        assert_eq!(trapped.connections(), 0, "regcred {args:?} made a request");
    }

    // The trap works: a valid configuration does reach for the API server.
    let out = trapped
        .command(&["sync", "--registry", ECR_HOST])
        .output()
        .expect("run regcred");
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(trapped.kube.seen() > 0, "the trap saw no connection");
}
