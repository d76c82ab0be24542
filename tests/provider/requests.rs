//! Every host form and the kubelet's captured requests are served; malformed requests and
//! failed token calls fail with a message and empty stdout.

use jiff::{SignedDuration, Timestamp};
use regcred::dockerconfig::Credential;
use regcred::ecr::Token;
use regcred::registry::{Registry, TokenSource};
use regcred::token_cache::{Key, TokenCache};
use serde_json::json;

use super::*;

#[test]
fn every_host_form_is_served_under_its_own_host() {
    // Tokens for every form's source are put in the cache first, each with its own password,
    // so the binary answers without AWS (FIPS and dual-stack endpoints do not exist on the
    // stack) and each answer shows which source's token it used.
    let (env, key) = aws_env();
    let dir = tempfile::tempdir().unwrap();
    let cache = TokenCache::open(dir.path()).unwrap();
    let now = Timestamp::now();
    let mut hosts = registry_table_hosts();
    hosts.extend(["Public.ECR.aws".to_owned()]);
    for host in &hosts {
        let registry = Registry::parse(host).unwrap();
        let source = TokenSource::of(&registry, None);
        let key = Key::new(&source, env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let token = Token {
            credential: Credential {
                username: "AWS".into(),
                password: format!("pw for {source}").into(),
            },
            expires_at: now + SignedDuration::from_hours(12),
            fetched_at: now,
        };
        cache.store(&key, &source, &token).unwrap();
    }
    let digest = "sha256:0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
    for host in &hosts {
        let source = TokenSource::of(&Registry::parse(host).unwrap(), None);
        for image in [
            format!("{host}/app"),
            format!("{host}/team/app:1.2.3"),
            format!("{host}/team/sub/app@{digest}"),
            format!("{host}/app:v1@{digest}"),
        ] {
            let out = call(provider(&env, Some(dir.path())), &request_for(&image));
            let v = response(&out);
            assert_eq!(
                v["auth"],
                json!({host.as_str(): {"username": "AWS", "password": format!("pw for {source}")}}),
                "{image}"
            );
            let secs = go_seconds(&v["cacheDuration"]);
            assert!((21_000..=21_600).contains(&secs), "{image}: {secs}");
        }
    }
    assert_eq!(stack().token_calls(&key), 0, "all from the cache");
}

#[test]
fn the_captured_kubelet_requests_are_served() {
    // Kubelet's own bytes, including a service-account request whose token must not matter
    // and must not be logged.
    let (env, key) = aws_env();
    let cases = [
        ("private.json", PRIVATE_HOST, account()),
        ("public.json", "public.ecr.aws", "public"),
        (
            "port-tag-digest.json",
            "123456789012.dkr.ecr.us-east-1.amazonaws.com:443",
            account(),
        ),
        (
            "service-account.json",
            "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
            account(),
        ),
    ];
    for (file, host, account) in cases {
        let mut cmd = provider(&env, None);
        cmd.args(["--log-level", "trace"]);
        let out = call(cmd, &fixture(file));
        let v = response(&out);
        let password = issued(&v["auth"][host]["password"], account, &key);
        assert_eq!(
            v["auth"],
            json!({host: {"username": "AWS", "password": password}}),
            "{file}"
        );
        let log = stderr(&out);
        assert!(!log.contains(password), "{file}: password in the log");
        assert!(
            !log.contains("fixture-sa-token"),
            "{file}: SA token in the log"
        );
    }
    assert_eq!(
        stack().aws_calls(&key),
        [
            ("ecr:GetAuthorizationToken".to_owned(), 3),
            ("ecr-public:GetAuthorizationToken".to_owned(), 1)
        ]
        .into()
    );
}

#[test]
fn malformed_requests_fail_with_a_message_and_empty_stdout() {
    let (env, key) = aws_env();
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("malformed-empty.json", "no request on stdin"),
        ("malformed-truncated.json", "not valid JSON"),
        ("malformed-not-object.json", "not a JSON object"),
        (
            "v1beta1.json",
            "regcred speaks credentialprovider.kubelet.k8s.io/v1",
        ),
        ("missing-apiversion.json", "apiVersion is missing"),
        ("wrong-kind.json", "kind is \"CredentialProviderResponse\""),
        ("missing-image.json", "has no image"),
        ("empty-image.json", "has no image"),
        ("image-not-string.json", "has no image"),
        ("non-ecr.json", "registry \"docker.io\" is not ECR"),
        ("dockerhub-short.json", "names no registry host"),
        ("lookalike-host.json", "is not ECR or ECR Public"),
        ("bad-port.json", "not a valid host[:port]"),
    ];
    for (file, message) in cases {
        let out = call(provider(&env, Some(dir.path())), &fixture(file));
        assert!(!out.status.success(), "{file} must fail");
        assert!(out.stdout.is_empty(), "{file}: stdout must stay empty");
        let log = stderr(&out);
        assert!(log.contains(message), "{file}: {log}");
    }
    let huge = vec![b' '; 2 << 20];
    let out = call(provider(&env, None), &huge);
    assert!(!out.status.success() && out.stdout.is_empty());
    assert!(stderr(&out).contains("larger than"), "{}", stderr(&out));
    assert_eq!(stack().token_calls(&key), 0, "nothing was asked of AWS");
}

#[test]
fn a_failed_token_call_fails_with_empty_stdout() {
    let (env, key) = aws_env();
    stack().set_aws_key(&key, &json!({"fail": "AccessDeniedException"}));
    let out = call(provider(&env, None), &fixture("private.json"));
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(stderr(&out).contains("AccessDenied"), "{}", stderr(&out));
}
