//! The kubelet's own plugin code (built from k8s.io/kubernetes) drives regcred.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use serde_json::{Value, json};

use super::*;

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
