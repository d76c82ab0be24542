//! The local stack itself is real and behaves as the other tests assume: RBAC is enforced,
//! the fake AWS issues tokens with a configurable lifetime (and ECR Public ones), and the
//! registry accepts exactly moto's token.

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
    let s = stack();
    let out = Command::new(std::path::Path::new(s.var("REGCRED_TEST_VENV")).join("bin/aws"))
        .args(args)
        .args(["--output", "json"])
        .env("AWS_ACCESS_KEY_ID", unique("AKIASTACK"))
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ENDPOINT_URL_ECR_PUBLIC", public_endpoint)
        .output()
        .expect("run aws");
    assert!(out.status.success(), "aws {args:?}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("aws JSON")
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
    let token = public["authorizationData"]["authorizationToken"]
        .as_str()
        .expect("token");
    assert!(!token.is_empty());
    assert!(seconds_left(&public["authorizationData"]["expiresAt"]) > 3600.0);
}

fn authfile(password: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let s = stack();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("AWS:{password}"));
    let doc = serde_json::json!({"auths": {s.var("REGCRED_TEST_REGISTRY"): {"auth": auth}}});
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("auth.json");
    std::fs::write(&path, doc.to_string()).unwrap();
    (dir, path)
}

#[test]
fn the_registry_takes_motos_token_and_nothing_else() {
    let s = stack();
    let token = aws(
        s.var("AWS_ENDPOINT_URL"),
        s.var("AWS_ENDPOINT_URL_ECR_PUBLIC"),
        &["ecr", "get-authorization-token"],
    );
    let encoded = token["authorizationData"][0]["authorizationToken"]
        .as_str()
        .unwrap();
    let decoded = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap(),
    )
    .unwrap();
    let password = decoded.strip_prefix("AWS:").expect("AWS:password");

    let (_d, good) = authfile(password);
    let pulled = skopeo_pull(&good);
    assert!(
        pulled.status.success(),
        "skopeo with moto's token: {}",
        stderr(&pulled)
    );

    let (_d2, bad) = authfile("not-the-password");
    let refused = skopeo_pull(&bad);
    assert!(
        !refused.status.success(),
        "a wrong password must be refused"
    );
    let why = stderr(&refused).to_lowercase();
    assert!(
        why.contains("unauthorized") || why.contains("authentication"),
        "{why}"
    );
}
