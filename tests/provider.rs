//! `regcred credential-provider`, as kubelet sees it: requests kubelet really writes
//! (tests/fixtures/provider), the kubelet's own plugin manager as the client
//! (testenv/cmd/credprovider-driver), tokens from the fake AWS counted per access key, and the
//! on-disk cache.

mod common;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use base64::Engine as _;
use common::*;
use jiff::{SignedDuration, Timestamp};
use regcred::dockerconfig::Credential;
use regcred::ecr::Token;
use regcred::registry::{Registry, TokenSource};
use regcred::token_cache::{Key, TokenCache};
use serde_json::{Value, json};

const API_VERSION: &str = "credentialprovider.kubelet.k8s.io/v1";
const PRIVATE_IMAGE: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com/regcred/hello:1.0";
const PUBLIC_IMAGE: &str = "public.ecr.aws/nginx/nginx:stable";
const PRIVATE_HOST: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com";

/// Asserts `password` is a token the fake AWS issued for `account` ("public" for ECR
/// Public) to a caller signing with `key`, and still valid; returns it.
fn issued<'a>(password: &'a Value, account: &str, key: &str) -> &'a str {
    let text = password
        .as_str()
        .unwrap_or_else(|| panic!("no password: {password}"));
    let info = stack()
        .token_info(text)
        .unwrap_or_else(|| panic!("a password the fake AWS never issued"));
    assert_eq!(info.account, account, "the token's account");
    assert_eq!(info.key, key, "the token's caller");
    assert!(info.valid, "an expired token");
    text
}

fn account() -> &'static str {
    stack().var("REGCRED_TEST_ACCOUNT")
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(root().join("tests/fixtures/provider").join(name))
        .unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// A request as kubelet writes it (the captured fixture), for another image.
fn request_for(image: &str) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&fixture("private.json")).unwrap();
    v["image"] = image.into();
    serde_json::to_vec(&v).unwrap()
}

/// The AWS environment of one provider process: the stack's endpoints and a fresh access
/// key id, so its calls are counted apart from everyone else's.
fn aws_env() -> (Vec<(String, String)>, String) {
    let s = stack();
    let key = unique("AKIAPROV").replace('-', "").to_uppercase();
    let env = [
        ("AWS_ACCESS_KEY_ID", key.as_str()),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ENDPOINT_URL", s.var("AWS_ENDPOINT_URL")),
        (
            "AWS_ENDPOINT_URL_ECR_PUBLIC",
            s.var("AWS_ENDPOINT_URL_ECR_PUBLIC"),
        ),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .to_vec();
    (env, key)
}

/// The regcred binary as kubelet starts it: an environment of its own, nothing else.
fn provider(env: &[(String, String)], cache_dir: Option<&Path>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_regcred"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .arg("credential-provider");
    if let Some(dir) = cache_dir {
        cmd.arg("--cache-dir").arg(dir);
    }
    cmd
}

fn call(mut cmd: Command, stdin: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start regcred");
    // regcred stops reading an oversized request early: a broken pipe is its answer.
    if let Err(e) = child.stdin.take().unwrap().write_all(stdin) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    child.wait_with_output().unwrap()
}

/// A successful response, checked against the v1 schema kubelet decodes strictly.
fn response(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "regcred failed: {}\n{}",
        out.status,
        stderr(out)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
    let keys: BTreeSet<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "apiVersion",
            "auth",
            "cacheDuration",
            "cacheKeyType",
            "kind"
        ]
        .into(),
        "exactly the v1 fields"
    );
    assert_eq!(v["apiVersion"], API_VERSION);
    assert_eq!(v["kind"], "CredentialProviderResponse");
    assert_eq!(v["cacheKeyType"], "Registry");
    for entry in v["auth"].as_object().unwrap().values() {
        let fields: BTreeSet<&str> = entry
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(fields, ["password", "username"].into());
    }
    v
}

/// Go's duration syntax as regcred prints it (`5h59m30s`), in seconds.
fn go_seconds(d: &Value) -> i64 {
    let mut total = 0;
    let mut n = String::new();
    for c in d.as_str().expect("cacheDuration is a string").chars() {
        if c.is_ascii_digit() {
            n.push(c);
        } else {
            let unit = match c {
                'h' => 3600,
                'm' => 60,
                's' => 1,
                _ => panic!("unexpected unit in {d}"),
            };
            total += n.parse::<i64>().unwrap() * unit;
            n.clear();
        }
    }
    assert!(n.is_empty(), "{d} ends without a unit");
    total
}

/// Every host form of `src/registry.rs`'s own table (`every_ecr_host_form_resolves`), read
/// from its source so a form added there is covered here too.
fn registry_table_hosts() -> Vec<String> {
    let src = std::fs::read_to_string(root().join("src/registry.rs")).unwrap();
    let start = src
        .find("fn every_ecr_host_form_resolves")
        .expect("the host table test in src/registry.rs");
    let body = &src[start..];
    let body = &body[..body.find("#[test]").unwrap_or(body.len())];
    let hosts: Vec<String> = body
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| Registry::parse(s).is_ok())
        .map(str::to_owned)
        .collect();
    assert!(hosts.len() >= 15, "the table was not read right: {hosts:?}");
    hosts
}

// ------------------------------------------------------------------ fixtures, every form

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

// ------------------------------------------------------------------ the on-disk cache

fn cache_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_cached_second_call_makes_no_token_call() {
    let (env, key) = aws_env();
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join("tokens");
    let first = response(&call(
        provider(&env, Some(&cache_dir)),
        &fixture("private.json"),
    ));
    assert_eq!(stack().token_calls(&key), 1);
    let second = response(&call(
        provider(&env, Some(&cache_dir)),
        &fixture("private.json"),
    ));
    assert_eq!(
        stack().token_calls(&key),
        1,
        "the second call used the cache"
    );
    let password = issued(&first["auth"][PRIVATE_HOST]["password"], account(), &key);
    assert_eq!(
        second["auth"][PRIVATE_HOST]["password"], password,
        "the cached token"
    );
    assert!(go_seconds(&second["cacheDuration"]) <= go_seconds(&first["cacheDuration"]));
    // Another region is another token; another identity does not see this one.
    response(&call(
        provider(&env, Some(&cache_dir)),
        &request_for("123456789012.dkr.ecr.eu-west-1.amazonaws.com/app"),
    ));
    assert_eq!(stack().token_calls(&key), 2);
    let (other_env, other_key) = aws_env();
    response(&call(
        provider(&other_env, Some(&cache_dir)),
        &fixture("private.json"),
    ));
    assert_eq!(stack().token_calls(&other_key), 1);
    assert_eq!(mode(&cache_dir), 0o700);
    let files = cache_files(&cache_dir);
    assert_eq!(files.len(), 3, "{files:?}");
    for f in &files {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
}

#[tokio::test]
async fn a_token_is_reused_until_half_its_lifetime_then_renewed() {
    let (env, key) = aws_env();
    stack().set_aws_key(&key, &json!({"ttl": 6}));
    let dir = tempfile::tempdir().unwrap();
    let first = response(&call(
        provider(&env, Some(dir.path())),
        &fixture("private.json"),
    ));
    let secs = go_seconds(&first["cacheDuration"]);
    assert!((2..=3).contains(&secs), "half of a 6 s token: {secs}");
    response(&call(
        provider(&env, Some(dir.path())),
        &fixture("private.json"),
    ));
    assert_eq!(stack().token_calls(&key), 1, "within the half-life: cached");
    wait_for(
        "a renewal after the half-life",
        Duration::from_secs(15),
        || {
            let out = call(provider(&env, Some(dir.path())), &fixture("private.json"));
            response(&out);
            async { (stack().token_calls(&key) == 2).then_some(()) }
        },
    )
    .await;
}

#[test]
fn concurrent_calls_share_one_fetch() {
    let (env, key) = aws_env();
    // A slow ECR makes the calls overlap.
    stack().set_aws_key(&key, &json!({"delay": 1}));
    let dir = tempfile::tempdir().unwrap();
    let request = fixture("private.json");
    let children: Vec<_> = (0..6)
        .map(|_| {
            let mut child = provider(&env, Some(dir.path()))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(&request).unwrap();
            child
        })
        .collect();
    let passwords: BTreeSet<String> = children
        .into_iter()
        .map(|child| {
            let v = response(&child.wait_with_output().unwrap());
            issued(&v["auth"][PRIVATE_HOST]["password"], account(), &key).to_owned()
        })
        .collect();
    assert_eq!(
        passwords.len(),
        1,
        "all six answered with the one token fetched"
    );
    assert_eq!(
        stack().token_calls(&key),
        1,
        "one fetched, the others waited"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| Path::new(n).extension().is_some_and(|e| e == "tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_corrupt_cache_file_is_ignored_and_replaced() {
    let (env, key) = aws_env();
    let dir = tempfile::tempdir().unwrap();
    response(&call(
        provider(&env, Some(dir.path())),
        &fixture("private.json"),
    ));
    let [file] = cache_files(dir.path()).try_into().unwrap();
    std::fs::write(&file, b"{\"version\": 1, \"password\": tr").unwrap();
    let out = call(provider(&env, Some(dir.path())), &fixture("private.json"));
    let v = response(&out);
    issued(&v["auth"][PRIVATE_HOST]["password"], account(), &key);
    assert!(stderr(&out).contains("corrupt"), "{}", stderr(&out));
    assert_eq!(stack().token_calls(&key), 2);
    let stored: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(stored["username"], "AWS", "replaced by a sound file");
    assert_eq!(mode(&file), 0o600);
}

#[test]
fn a_failed_renewal_serves_the_cached_token_until_it_expires() {
    let (env, key) = aws_env();
    stack().set_aws_key(&key, &json!({"fail": "ThrottlingException"}));
    let dir = tempfile::tempdir().unwrap();
    let cache = TokenCache::open(dir.path()).unwrap();
    let source = TokenSource::of(
        &Registry::parse("123456789012.dkr.ecr.us-east-1.amazonaws.com").unwrap(),
        None,
    );
    let cache_key = Key::new(&source, env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let now = Timestamp::now();
    let stale = |left: SignedDuration| Token {
        credential: Credential {
            username: "AWS".into(),
            password: "stale-but-valid".to_owned().into(),
        },
        expires_at: now + left,
        fetched_at: now + left - SignedDuration::from_hours(12),
    };
    // Past its half-life (so renewal is due) but two hours left: served.
    cache
        .store(&cache_key, &source, &stale(SignedDuration::from_hours(2)))
        .unwrap();
    let out = call(provider(&env, Some(dir.path())), &fixture("private.json"));
    let v = response(&out);
    assert_eq!(
        v["auth"]["123456789012.dkr.ecr.us-east-1.amazonaws.com"]["password"],
        "stale-but-valid"
    );
    let secs = go_seconds(&v["cacheDuration"]);
    assert!(
        (3500..=3600).contains(&secs),
        "half of the 2 h left: {secs}"
    );
    assert!(stderr(&out).contains("could not renew"), "{}", stderr(&out));
    assert!(stack().token_calls(&key) >= 1, "renewal was tried first");
    // Expired: nothing to fall back on.
    cache
        .store(&cache_key, &source, &stale(SignedDuration::from_secs(-60)))
        .unwrap();
    let out = call(provider(&env, Some(dir.path())), &fixture("private.json"));
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(stderr(&out).contains("Throttling"), "{}", stderr(&out));
}

// ------------------------------------------------------------------ kubelet's own code

/// The driver built from the kubelet's plugin package (scripts/testenv.sh builds it with
/// kube-apiserver; `up` is idempotent, so a stack started before it existed gets it now).
fn driver() -> PathBuf {
    let s = stack();
    let path = Path::new(s.var("REGCRED_TEST_BIN")).join("credprovider-driver");
    if !path.exists() {
        let status = Command::new(s.root.join("scripts/testenv.sh"))
            .arg("up")
            .status()
            .unwrap();
        assert!(status.success(), "scripts/testenv.sh up");
    }
    assert!(path.exists(), "{} missing after up", path.display());
    path
}

/// A kubelet `CredentialProviderConfig` for the built regcred, with the AWS settings in its
/// `env:` list (the driver itself runs with an empty environment).
fn kubelet_config(dir: &Path, env: &[(String, String)], cache_dir: &Path) -> PathBuf {
    let mut env_list = String::new();
    for (k, v) in env {
        let _ = writeln!(env_list, "      - name: {k}\n        value: \"{v}\"");
    }
    let path = dir.join("credential-provider-config.yaml");
    let config = format!(
        r#"apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
  - name: regcred
    apiVersion: {API_VERSION}
    matchImages: ["*.dkr.ecr.*.amazonaws.com", "public.ecr.aws"]
    defaultCacheDuration: 1m
    args: [credential-provider, --cache-dir, "{}"]
    env:
{env_list}"#,
        cache_dir.display()
    );
    std::fs::write(&path, config).unwrap();
    path
}

fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_regcred"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Runs the driver: kubelet's plugin manager looks each image up.
fn kubelet_lookup(config: &Path, images: &[&str]) -> Vec<Value> {
    let out = Command::new(driver())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .arg("lookup")
        .arg("-config")
        .arg(config)
        .arg("-bin-dir")
        .arg(bin_dir())
        .args(images)
        .output()
        .unwrap();
    assert!(out.status.success(), "driver: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(&out)))
}

#[test]
fn kubelets_plugin_manager_gets_private_and_public_credentials() {
    let (env, key) = aws_env();
    let dir = tempfile::tempdir().unwrap();
    let config = kubelet_config(dir.path(), &env, &dir.path().join("tokens"));
    let results = kubelet_lookup(
        &config,
        &[
            PRIVATE_IMAGE,
            PUBLIC_IMAGE,
            "docker.io/library/nginx:latest",
            "123456789012.dkr.ecr.us-east-1.amazonaws.com/another/repo",
        ],
    );
    let auths = |i: usize| results[i]["auths"].clone();
    assert_eq!(results[0]["found"], true, "{results:?}");
    let password = issued(&auths(0)[0]["password"], account(), &key).to_owned();
    assert_eq!(auths(0), json!([{"username": "AWS", "password": password}]));
    assert_eq!(results[1]["found"], true, "{results:?}");
    let public = issued(&auths(1)[0]["password"], "public", &key).to_owned();
    assert_eq!(auths(1), json!([{"username": "AWS", "password": public}]));
    assert_eq!(results[2]["found"], false, "not matched, regcred not asked");
    assert_eq!(auths(3), auths(0), "same registry: kubelet's cache");
    // ECR Public's token came from its own endpoint (AWS_ENDPOINT_URL_ECR_PUBLIC).
    assert_eq!(
        stack().aws_calls(&key),
        [
            ("ecr:GetAuthorizationToken".to_owned(), 1),
            ("ecr-public:GetAuthorizationToken".to_owned(), 1)
        ]
        .into()
    );

    // What kubelet got opens the registry: pull the stack's image with it.
    let s = stack();
    let login = format!(
        "{}:{}",
        auths(0)[0]["username"].as_str().unwrap(),
        auths(0)[0]["password"].as_str().unwrap()
    );
    let auth_json = json!({"auths": {s.var("REGCRED_TEST_REGISTRY"): {
        "auth": base64::engine::general_purpose::STANDARD.encode(login)}}});
    let authfile = dir.path().join("auth.json");
    std::fs::write(&authfile, auth_json.to_string()).unwrap();
    let pulled = skopeo_pull(&authfile);
    assert!(pulled.status.success(), "skopeo: {}", stderr(&pulled));

    // A second kubelet process on the node (a restart) finds the tokens on disk.
    let again = kubelet_lookup(&config, &[PRIVATE_IMAGE, PUBLIC_IMAGE]);
    assert_eq!(again[0]["auths"], auths(0));
    assert_eq!(again[1]["auths"], auths(1));
    assert_eq!(s.token_calls(&key), 2, "no token call after the restart");
}

#[test]
fn the_example_config_covers_every_host_form() {
    // Judged by kubelet's own code: the file is registered (validated) as kubelet does at
    // start, and each host is matched with kubelet's glob matcher.
    let config = root().join("deploy/kubelet/credential-provider-config.yaml");
    // Kubelet matches case-sensitively; image hosts are written lower-case.
    let mut hosts: Vec<String> = registry_table_hosts()
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    let with_port: Vec<String> = hosts
        .iter()
        .filter(|h| !h.contains(':') && h.contains(".dkr"))
        .map(|h| format!("{h}:443"))
        .collect();
    hosts.extend(with_port);
    let refused = [
        "docker.io",
        "ghcr.io",
        "123456789012.dkr.ecr.us-east-1.amazonaws.com.evil.example",
        "registry.example:443",
    ];
    let out = Command::new(driver())
        .arg("match")
        .arg("-config")
        .arg(&config)
        .arg("-bin-dir")
        .arg(bin_dir())
        .args(&hosts)
        .args(refused)
        .output()
        .unwrap();
    assert!(out.status.success(), "driver: {}", stderr(&out));
    let results: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(results.len(), hosts.len() + refused.len());
    let unmatched: Vec<&Value> = results[..hosts.len()]
        .iter()
        .filter(|r| r["matchedBy"].as_array().unwrap().is_empty())
        .collect();
    assert!(unmatched.is_empty(), "not covered: {unmatched:?}");
    for r in &results[hosts.len()..] {
        assert_eq!(r["matchedBy"], json!([]), "{r}");
    }
}
