//! `regcred credential-provider`, as kubelet sees it: requests kubelet really writes
//! (tests/fixtures/provider), the kubelet's own plugin manager as the client
//! (testenv/cmd/credprovider-driver), tokens from the fake AWS counted per access key, and the
//! on-disk cache.

mod cache;
#[path = "../common/mod.rs"]
mod common;
mod kubelet;
mod requests;

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;
use regcred::registry::Registry;
use serde_json::Value;

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
