//! The local stack itself is real and behaves as the other tests assume: RBAC is enforced,
//! the fake AWS issues tokens with a configurable lifetime (and ECR Public ones), each with
//! a password of its own, and the registry admits a password only while its token is valid
//! and only for the account it was issued for, refusing an expired one as ECR does.

mod common;

use std::process::Command;

use base64::Engine as _;
use common::*;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::rbac::v1::PolicyRule;
use kube::api::{Api, ListParams};

#[tokio::test]
async fn rbac_is_enforced_for_service_accounts() {
    let admin = stack().admin().await;
    let ns = unique("rbac");
    create_namespace(&admin, &ns, &[]).await;
    let nobody = identity(&admin, &ns, vec![], vec![]).await;
    let client = nobody.client().await;
    let err = Api::<Secret>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .expect_err("a ServiceAccount without roles must not list secrets");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 403),
        "{err}"
    );

    let reader = identity(
        &admin,
        &ns,
        vec![],
        vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["secrets".into()]),
            verbs: vec!["list".into()],
            ..PolicyRule::default()
        }],
    )
    .await;
    let listed = Api::<Secret>::namespaced(reader.client().await, &ns)
        .list(&ListParams::default())
        .await;
    assert!(listed.is_ok(), "allowed once given a Role: {listed:?}");
    // ...and only there: the Role is namespaced.
    let elsewhere = Api::<Secret>::namespaced(reader.client().await, "default")
        .list(&ListParams::default())
        .await;
    assert!(matches!(elsewhere, Err(kube::Error::Api(s)) if s.code == 403));
}

fn aws(endpoint: &str, public_endpoint: &str, args: &[&str]) -> serde_json::Value {
    let key = unique("AKIASTACK");
    aws_as(
        endpoint,
        public_endpoint,
        &[("AWS_ACCESS_KEY_ID", &key)],
        args,
    )
}

/// The AWS CLI against these endpoints, with these credentials in its environment.
fn aws_as(
    endpoint: &str,
    public_endpoint: &str,
    credentials: &[(&str, &str)],
    args: &[&str],
) -> serde_json::Value {
    let s = stack();
    let out = Command::new(std::path::Path::new(s.var("REGCRED_TEST_VENV")).join("bin/aws"))
        .args(args)
        .args(["--output", "json"])
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ENDPOINT_URL_ECR_PUBLIC", public_endpoint)
        .envs(credentials.iter().copied())
        .output()
        .expect("run aws");
    assert!(out.status.success(), "aws {args:?}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("aws JSON")
}

/// The password inside an ECR `authorizationToken` (base64 of `AWS:<password>`).
fn password_of(token: &serde_json::Value) -> String {
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token.as_str().expect("authorizationToken"))
        .unwrap();
    String::from_utf8(decoded)
        .unwrap()
        .strip_prefix("AWS:")
        .expect("AWS:password")
        .to_owned()
}

fn seconds_left(expires_at: &serde_json::Value) -> f64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    expires_at
        .as_f64()
        .or_else(|| {
            expires_at
                .as_str()
                .and_then(|s| s.parse::<jiff::Timestamp>().ok())
                .map(|t| f64::from(i32::try_from(t.as_second()).expect("a 2026 timestamp")))
        })
        .expect("expiresAt")
        - now
}

#[test]
fn tokens_live_as_long_as_the_configured_ttl() {
    let s = stack();
    let shared = aws(
        s.var("AWS_ENDPOINT_URL"),
        s.var("AWS_ENDPOINT_URL_ECR_PUBLIC"),
        &["ecr", "get-authorization-token"],
    );
    let left = seconds_left(&shared["authorizationData"][0]["expiresAt"]);
    assert!(
        (43_000.0..=43_200.0).contains(&left),
        "default 12 h, got {left} s"
    );

    let private = FakeAws::start(Some("90s"));
    let short = aws(
        &private.endpoint(),
        &private.public_endpoint(),
        &["ecr", "get-authorization-token"],
    );
    let left = seconds_left(&short["authorizationData"][0]["expiresAt"]);
    assert!(
        (60.0..=90.0).contains(&left),
        "REGCRED_TEST_TOKEN_TTL=90s, got {left} s"
    );
}

#[test]
fn the_ecr_public_endpoint_answers() {
    let s = stack();
    let public = aws(
        s.var("AWS_ENDPOINT_URL"),
        s.var("AWS_ENDPOINT_URL_ECR_PUBLIC"),
        &[
            "ecr-public",
            "get-authorization-token",
            "--region",
            "us-east-1",
        ],
    );
    let password = password_of(&public["authorizationData"]["authorizationToken"]);
    assert_eq!(s.token_info(&password).expect("issued").account, "public");
    assert!(seconds_left(&public["authorizationData"]["expiresAt"]) > 3600.0);
    let again = aws(
        s.var("AWS_ENDPOINT_URL"),
        s.var("AWS_ENDPOINT_URL_ECR_PUBLIC"),
        &[
            "ecr-public",
            "get-authorization-token",
            "--region",
            "us-east-1",
        ],
    );
    assert_ne!(
        password_of(&again["authorizationData"]["authorizationToken"]),
        password,
        "every answer carries a password of its own"
    );
}

/// An authfile for `registry` holding `AWS:password`.
fn authfile(registry: &str, password: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("AWS:{password}"));
    let doc = serde_json::json!({"auths": {registry: {"auth": auth}}});
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("auth.json");
    std::fs::write(&path, doc.to_string()).unwrap();
    (dir, path)
}

/// skopeo pulling the test image through `registry` with `password`: its output.
fn pull(registry: &str, password: &str) -> std::process::Output {
    let (_dir, file) = authfile(registry, password);
    skopeo_pull_from(
        &file,
        &format!("{registry}/{}", stack().var("REGCRED_TEST_IMAGE_PATH")),
    )
}

fn refused_with(out: &std::process::Output, words: &str) {
    assert!(!out.status.success(), "the registry let it in");
    let why = stderr(out);
    assert!(
        why.contains(words),
        "refused, but not with {words:?}: {why}"
    );
}

#[test]
fn the_registry_admits_a_fresh_token_and_refuses_expired_and_unknown_ones() {
    let s = stack();
    let registry = s.var("REGCRED_TEST_REGISTRY");
    let get = || {
        let token = aws(
            s.var("AWS_ENDPOINT_URL"),
            s.var("AWS_ENDPOINT_URL_ECR_PUBLIC"),
            &["ecr", "get-authorization-token"],
        );
        password_of(&token["authorizationData"][0]["authorizationToken"])
    };
    let (first, second) = (get(), get());
    assert_ne!(first, second, "every answer carries a password of its own");
    for password in [&first, &second] {
        let pulled = pull(registry, password);
        assert!(
            pulled.status.success(),
            "skopeo with a fresh token: {}",
            stderr(&pulled)
        );
    }

    // A token that lives two seconds: admitted, then refused as ECR refuses it.
    let short = s.registry_token(s.var("REGCRED_TEST_ACCOUNT"), "2s");
    assert!(pull(registry, &short).status.success(), "still valid");
    wait_until_invalid(&short);
    refused_with(
        &pull(registry, &short),
        "Your authorization token has expired. Reauthenticate and try again.",
    );
    let code = registry_status(registry, &short);
    assert_eq!(code, 403, "an expired token: 403 Forbidden");

    refused_with(&pull(registry, "not-a-token-it-issued"), "unauthorized");
    assert_eq!(registry_status(registry, "not-a-token-it-issued"), 401);
}

#[test]
fn a_token_opens_only_its_own_accounts_registry() {
    let s = stack();
    let (a, b) = (
        s.var("REGCRED_TEST_REGISTRY"),
        s.var("REGCRED_TEST_REGISTRY_B"),
    );
    let account_b = s.var("REGCRED_TEST_ACCOUNT_B");
    // Into account B through STS, as a roleArn in regcred's config does.
    let key = unique("AKIASTACK");
    let (endpoint, public) = (
        s.var("AWS_ENDPOINT_URL"),
        s.var("AWS_ENDPOINT_URL_ECR_PUBLIC"),
    );
    let role = format!("arn:aws:iam::{account_b}:role/regcred-pull");
    let assumed = aws_as(
        endpoint,
        public,
        &[("AWS_ACCESS_KEY_ID", &key)],
        &[
            "sts",
            "assume-role",
            "--role-arn",
            &role,
            "--role-session-name",
            "stack-test",
        ],
    );
    let c = &assumed["Credentials"];
    let token = aws_as(
        endpoint,
        public,
        &[
            ("AWS_ACCESS_KEY_ID", c["AccessKeyId"].as_str().unwrap()),
            (
                "AWS_SECRET_ACCESS_KEY",
                c["SecretAccessKey"].as_str().unwrap(),
            ),
            ("AWS_SESSION_TOKEN", c["SessionToken"].as_str().unwrap()),
        ],
        &["ecr", "get-authorization-token"],
    );
    let password_b = password_of(&token["authorizationData"][0]["authorizationToken"]);
    assert_eq!(
        s.token_info(&password_b).expect("issued").account,
        account_b
    );
    let pulled = pull(b, &password_b);
    assert!(
        pulled.status.success(),
        "account B's registry: {}",
        stderr(&pulled)
    );
    refused_with(&pull(a, &password_b), "unauthorized");

    let password_a = s.registry_token(s.var("REGCRED_TEST_ACCOUNT"), "60s");
    assert!(pull(a, &password_a).status.success());
    refused_with(&pull(b, &password_a), "unauthorized");
}

fn wait_until_invalid(password: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while stack().token_info(password).expect("issued").valid {
        assert!(
            std::time::Instant::now() < deadline,
            "the token never expired"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The HTTP status of the registry's API root for `AWS:password`, as curl sees it.
fn registry_status(registry: &str, password: &str) -> u16 {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ])
        .args(["--cacert", stack().var("REGCRED_TEST_CA"), "-u"])
        .arg(format!("AWS:{password}"))
        .arg(format!("https://{registry}/v2/"))
        .output()
        .expect("run curl");
    stdout(&out).trim().parse().expect("an HTTP status")
}
