//! `regcred render` against the stack's AWS, with no way to reach a cluster: the
//! `.dockerconfigjson` it prints lets skopeo pull from the stack's registry, the Secret
//! manifest is one the API server accepts, and bad input or an AWS failure prints nothing.

mod common;

use std::process::{Command, Output};

use base64::Engine as _;
use common::*;
use serde_json::{Value, json};

const PRIVATE: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com";

fn render(config: &std::path::Path, args: &[&str]) -> (Output, String) {
    let (mut cmd, key) = regcred_without_cluster();
    let out = cmd
        .arg("render")
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("run regcred render");
    (out, key)
}

fn two_registries() -> (tempfile::TempDir, std::path::PathBuf) {
    config_file(&format!(
        "secrets:\n  - name: regcred\n    registries:\n{}      - public.ecr.aws\n      - {PRIVATE}\n",
        registry_alias_yaml()
    ))
}

/// Checks one `auths` entry the way the spec defines it; returns its password.
fn password_of(doc: &Value, host: &str) -> String {
    let entry = &doc["auths"][host];
    assert_eq!(entry["username"], "AWS", "{host}: {doc}");
    let password = entry["password"].as_str().expect("a password").to_owned();
    assert!(!password.is_empty(), "{host}");
    let auth = base64::engine::general_purpose::STANDARD
        .decode(entry["auth"].as_str().expect("auth"))
        .expect("auth is base64");
    assert_eq!(auth, format!("AWS:{password}").as_bytes(), "{host}");
    password
}

#[test]
fn the_dockerconfigjson_pulls_from_the_registry_with_one_token_call_per_source() {
    let (_dir, config) = two_registries();
    let (out, key) = render(&config, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let mut hosts: Vec<&str> = doc["auths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let registry = stack().var("REGCRED_TEST_REGISTRY");
    let mut want = vec![registry, "public.ecr.aws", PRIVATE];
    want.sort_unstable();
    hosts.sort_unstable();
    assert_eq!(hosts, want);
    // The alias and the private host share account and region, so one token serves both.
    assert_eq!(password_of(&doc, registry), password_of(&doc, PRIVATE));
    password_of(&doc, "public.ecr.aws");
    // One GetAuthorizationToken for ECR, one for ECR Public.
    assert_eq!(
        stack().token_calls(&key),
        2,
        "{:?}",
        stack().aws_calls(&key)
    );
    // Hosts in sorted order, as the spec wants for stable bytes.
    let text = stdout(&out);
    let positions: Vec<usize> = want
        .iter()
        .map(|h| text.find(&format!("\"{h}\"")).expect("host in output"))
        .collect();
    assert!(positions.is_sorted(), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let authfile = dir.path().join("auth.json");
    std::fs::write(&authfile, &out.stdout).unwrap();
    let pulled = skopeo_pull(&authfile);
    assert!(pulled.status.success(), "skopeo: {}", stderr(&pulled));
    assert!(
        !stderr(&out).contains(&password_of(&doc, PRIVATE)),
        "the token must not be logged"
    );
}

#[test]
fn the_secret_manifest_is_accepted_by_the_api_server() {
    let (_dir, config) = two_registries();
    let (out, _) = render(
        &config,
        &["--format", "secret", "--target-namespace", "apps"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let manifest: Value = serde_saphyr::from_slice(&out.stdout).expect("YAML on stdout");
    assert_eq!(manifest["apiVersion"], "v1");
    assert_eq!(manifest["kind"], "Secret");
    assert_eq!(manifest["type"], "kubernetes.io/dockerconfigjson");
    assert_eq!(manifest["metadata"]["name"], "regcred");
    assert_eq!(manifest["metadata"]["namespace"], "apps");
    assert_eq!(
        manifest["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "regcred"
    );
    let annotations = &manifest["metadata"]["annotations"];
    let expires = annotations["regcred.io/expires-at"].as_str().unwrap();
    let expires: jiff::Timestamp = expires.parse().expect("RFC 3339");
    assert!(expires > jiff::Timestamp::now(), "{expires}");
    let registries = annotations["regcred.io/registries"].as_str().unwrap();
    assert_eq!(registries.split(',').count(), 3, "{registries}");
    let data = base64::engine::general_purpose::STANDARD
        .decode(manifest["data"][".dockerconfigjson"].as_str().unwrap())
        .unwrap();
    let doc: Value = serde_json::from_slice(&data).unwrap();
    password_of(&doc, PRIVATE);

    // The API server validates it (a dry run: nothing is stored).
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret.yaml");
    std::fs::write(&file, &out.stdout).unwrap();
    let namespace = unique("render");
    let manifest_in_ns = std::fs::read_to_string(&file)
        .unwrap()
        .replace("namespace: apps", &format!("namespace: {namespace}"));
    std::fs::write(&file, manifest_in_ns).unwrap();
    let kubectl = |args: &[&str]| {
        Command::new(stack().var("REGCRED_TEST_KUBECTL"))
            .args(args)
            .env("KUBECONFIG", stack().var("KUBECONFIG"))
            .output()
            .expect("run kubectl")
    };
    let created = kubectl(&["create", "namespace", &namespace]);
    assert!(created.status.success(), "{}", stderr(&created));
    let applied = kubectl(&["apply", "--dry-run=server", "-f", file.to_str().unwrap()]);
    assert!(applied.status.success(), "{}", stderr(&applied));
    assert!(stdout(&applied).contains("secret/regcred created (server dry run)"));
}

#[test]
fn choosing_among_several_secrets_and_bad_input_exit_2_with_nothing_printed() {
    let (_dir, config) = config_file(&format!(
        "secrets:\n  - name: one\n    registries: [{PRIVATE}]\n  - name: two\n    registries: [public.ecr.aws]\n"
    ));
    for (args, message) in [
        (&[][..], "choose one with --secret NAME"),
        (
            &["--secret", "three"][..],
            "no configured secret is named three",
        ),
        (&["--format", "yaml"][..], "invalid value 'yaml'"),
    ] {
        let (out, key) = render(&config, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(out.stdout.is_empty(), "{args:?}: {}", stdout(&out));
        assert!(stderr(&out).contains(message), "{args:?}: {}", stderr(&out));
        assert_eq!(stack().token_calls(&key), 0, "{args:?}: no AWS call");
    }
    let (out, _) = render(&config, &["--secret", "two"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        doc["auths"].as_object().unwrap().keys().collect::<Vec<_>>(),
        ["public.ecr.aws"]
    );
}

#[test]
fn an_aws_failure_exits_1_with_nothing_printed() {
    let (_dir, config) = two_registries();
    let (mut cmd, key) = regcred_without_cluster();
    stack().set_aws_key(&key, &json!({"fail": true}));
    let out = cmd
        .arg("render")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(out.stdout.is_empty(), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("GetAuthorizationToken"),
        "{}",
        stderr(&out)
    );
}

/// Every format as manifests: one Secret per registry for the Argo CD formats, in the
/// entry's own format with `--format secret` or in any other with its name; all accepted by
/// the API server; one token call per source; basic-auth of two registries refused (exit 2,
/// nothing printed, no AWS call).
#[test]
fn every_format_renders_manifests_the_api_server_accepts() {
    let (_dir, config) = config_file(&format!(
        "secrets:\n  - name: argo\n    format: argocd-repository\n    registries:\n{}      - public.ecr.aws\n",
        registry_alias_yaml()
    ));
    let registry = stack().var("REGCRED_TEST_REGISTRY");
    let alias_name = format!("argo-{}", registry.replace(':', "-"));
    let namespace = unique("render-formats");
    let created = kubectl_admin(&["create", "namespace", &namespace]);
    assert!(created.status.success(), "{}", stderr(&created));
    for (format, secret, names, type_, argocd) in [
        (
            "secret",
            None,
            vec![alias_name.as_str(), "argo-public.ecr.aws"],
            "Opaque",
            Some("repository"),
        ),
        (
            "argocd-repo-creds",
            None,
            vec![alias_name.as_str(), "argo-public.ecr.aws"],
            "Opaque",
            Some("repo-creds"),
        ),
        (
            "basic-auth",
            Some("argo-public.ecr.aws"),
            vec!["argo"],
            "kubernetes.io/basic-auth",
            None,
        ),
    ] {
        let mut args = vec!["--format", format, "--target-namespace", &namespace];
        if let Some(s) = secret {
            args.extend(["--secret", s]);
        }
        let (out, key) = render(&config, &args);
        assert_eq!(out.status.code(), Some(0), "{format}: {}", stderr(&out));
        let manifests: Vec<Value> = serde_saphyr::from_multiple(&stdout(&out)).expect("YAML");
        let got: Vec<&str> = manifests
            .iter()
            .map(|m| m["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(got, names, "{format}");
        let sources = if names.len() == 2 { 2 } else { 1 };
        assert_eq!(stack().token_calls(&key), sources, "{format}");
        for m in &manifests {
            assert_eq!(m["kind"], "Secret");
            assert_eq!(m["type"], type_, "{format}");
            assert_eq!(
                m["metadata"]["labels"]
                    .get("argocd.argoproj.io/secret-type")
                    .and_then(Value::as_str),
                argocd,
                "{format}"
            );
            let password = base64::engine::general_purpose::STANDARD
                .decode(m["data"]["password"].as_str().expect("a password"))
                .unwrap();
            let info = stack()
                .token_info(std::str::from_utf8(&password).unwrap())
                .expect("a password the fake AWS issued");
            assert!(info.valid, "{format}");
            assert!(!stderr(&out).contains(std::str::from_utf8(&password).unwrap()));
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secrets.yaml");
        std::fs::write(&file, &out.stdout).unwrap();
        let applied = kubectl_admin(&["apply", "--dry-run=server", "-f", file.to_str().unwrap()]);
        assert!(applied.status.success(), "{format}: {}", stderr(&applied));
        assert_eq!(
            stdout(&applied).matches("created (server dry run)").count(),
            names.len(),
            "{format}: {}",
            stdout(&applied)
        );
    }
    let (out, key) = render(&config, &["--format", "basic-auth"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    assert!(
        stderr(&out).contains("--format basic-auth: secret argo: format basic-auth holds one registry's username and password, and this entry lists 2"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stack().token_calls(&key), 0);
}

fn kubectl_admin(args: &[&str]) -> Output {
    Command::new(stack().var("REGCRED_TEST_KUBECTL"))
        .args(args)
        .env("KUBECONFIG", stack().var("KUBECONFIG"))
        .output()
        .expect("run kubectl")
}
