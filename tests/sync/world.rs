//! What every `sync` test shares: the commands, the stack's hosts and tokens, and the
//! assertions on a secret regcred wrote.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::{Value, json};

use crate::common::*;

pub(crate) const REGISTRIES: &str = "regcred.io/registries";
pub(crate) const PUBLIC_HOST: &str = "public.ecr.aws";
/// A real ECR host of the stack's account and region: the same token source as the alias.
pub(crate) const ECR_HOST: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com";
pub(crate) const TIMEOUT: Duration = Duration::from_mins(2);

/// Which token a secret's entry must hold: a password the fake AWS issued for the stack's
/// account (private ECR) or for ECR Public, and still valid.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Token {
    Private,
    Public,
}

impl Token {
    fn account(self) -> String {
        match self {
            Self::Private => stack().var("REGCRED_TEST_ACCOUNT").to_owned(),
            Self::Public => "public".to_owned(),
        }
    }
}

pub(crate) fn auth_of(password: &str) -> String {
    BASE64.encode(format!("AWS:{password}"))
}

pub(crate) fn alias_host() -> String {
    stack().var("REGCRED_TEST_REGISTRY").to_owned()
}

/// A config with one secret entry: `registries` and `rest` are YAML lines already indented
/// for the entry (six and four spaces).
pub(crate) fn config(name: &str, registries: &str, rest: &str) -> String {
    format!("secrets:\n  - name: {name}\n    registries:\n{registries}{rest}")
}

pub(crate) fn registry_line(host: &str) -> String {
    format!("      - {host}\n")
}

pub(crate) fn include(globs: &[&str]) -> String {
    let quoted: Vec<String> = globs.iter().map(|g| format!("\"{g}\"")).collect();
    format!("    namespaces:\n      include: [{}]\n", quoted.join(", "))
}

/// `regcred sync --config FILE ARGS...` as `who`; returns the command and its access key.
pub(crate) fn sync(who: &Identity, config: &Path, args: &[&str]) -> (Command, String) {
    let (mut cmd, key) = regcred(who);
    cmd.arg("sync").arg("--config").arg(config).args(args);
    (cmd, key)
}

pub(crate) fn run(mut cmd: Command) -> Output {
    cmd.output().expect("run regcred")
}

pub(crate) fn show(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    )
}

pub(crate) fn assert_exit(o: &Output, code: i32) {
    assert_eq!(o.status.code(), Some(code), "{}", show(o));
}

pub(crate) fn summary(o: &Output) -> String {
    stdout(o).lines().next().unwrap_or_default().to_owned()
}

/// The summary line's counts, up to "for N registries".
pub(crate) fn assert_counts(o: &Output, expected: &str) {
    let line = summary(o);
    assert!(
        line.starts_with(expected),
        "summary {line:?} should start with {expected:?}\n{}",
        show(o)
    );
}

pub(crate) async fn create_namespaces(
    admin: &kube::Client,
    names: &[String],
    labels: &[(&str, &str)],
) {
    futures::stream::iter(names)
        .map(|n| create_namespace(admin, n, labels))
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
}

/// Every secret of this name in namespaces starting with `prefix`, by namespace.
pub(crate) async fn secrets_named(
    admin: &kube::Client,
    name: &str,
    prefix: &str,
) -> BTreeMap<String, Secret> {
    Api::<Secret>::all(admin.clone())
        .list(&ListParams::default().fields(&format!("metadata.name={name}")))
        .await
        .expect("list secrets")
        .items
        .into_iter()
        .filter_map(|s| {
            let ns = s.metadata.namespace.clone()?;
            ns.starts_with(prefix).then_some((ns, s))
        })
        .collect()
}

pub(crate) async fn secret(admin: &kube::Client, ns: &str, name: &str) -> Secret {
    get_secret(admin, ns, name)
        .await
        .unwrap_or_else(|| panic!("secret {ns}/{name} should exist"))
}

pub(crate) fn rv(s: &Secret) -> String {
    s.metadata
        .resource_version
        .clone()
        .expect("resourceVersion")
}

pub(crate) fn raw_data(s: &Secret) -> Vec<u8> {
    s.data.as_ref().expect("data")[".dockerconfigjson"]
        .0
        .clone()
}

/// Asserts a secret is regcred's, well formed, and serves exactly `hosts` with valid tokens
/// of these kinds from the stack's fake AWS (plus the `kept` entries of other hosts,
/// unchanged).
pub(crate) fn assert_regcred_secret(s: &Secret, hosts: &[(&str, Token)], kept: &Value) {
    assert_regcred_secret_from(s, hosts, kept, |p| stack().token_info(p));
}

/// The same, with tokens from the fake AWS `lookup` asks.
pub(crate) fn assert_regcred_secret_from(
    s: &Secret,
    hosts: &[(&str, Token)],
    kept: &Value,
    lookup: impl Fn(&str) -> Option<TokenInfo>,
) {
    let where_ = format!(
        "{}/{}",
        s.metadata.namespace.as_deref().unwrap_or_default(),
        s.metadata.name.as_deref().unwrap_or_default()
    );
    assert_eq!(
        s.type_.as_deref(),
        Some(DOCKERCONFIG_TYPE),
        "{where_}: type"
    );
    let labels = s.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get(MANAGED_BY).map(String::as_str),
        Some("regcred"),
        "{where_}: label"
    );
    let annotations = s.metadata.annotations.clone().unwrap_or_default();
    let mut sorted: Vec<&str> = hosts.iter().map(|(h, _)| *h).collect();
    sorted.sort_unstable();
    assert_eq!(
        annotations.get(REGISTRIES).map(String::as_str),
        Some(sorted.join(",").as_str()),
        "{where_}: {REGISTRIES}"
    );
    let expires: jiff::Timestamp = annotations
        .get(EXPIRES_AT)
        .unwrap_or_else(|| panic!("{where_}: {EXPIRES_AT} missing"))
        .parse()
        .unwrap_or_else(|e| panic!("{where_}: {EXPIRES_AT} is not RFC 3339: {e}"));
    assert!(
        expires > jiff::Timestamp::now(),
        "{where_}: expires in the past"
    );
    let doc = dockerconfig(s);
    let auths = doc["auths"].as_object().expect("auths object");
    let kept = kept.as_object().cloned().unwrap_or_default();
    assert_eq!(
        auths.len(),
        hosts.len() + kept.len(),
        "{where_}: hosts {:?}",
        auths.keys().collect::<Vec<_>>()
    );
    for (host, token) in hosts {
        let entry = &auths
            .get(*host)
            .unwrap_or_else(|| panic!("{where_}: no entry for {host}"));
        assert_eq!(entry["username"], "AWS", "{where_}: {host} username");
        let password = entry["password"].as_str().expect("a password");
        let info = lookup(password)
            .unwrap_or_else(|| panic!("{where_}: {host}: a password the fake AWS never issued"));
        assert_eq!(
            info.account,
            token.account(),
            "{where_}: {host} token's account"
        );
        assert!(info.valid, "{where_}: {host} token expired");
        assert_eq!(
            entry["auth"],
            auth_of(password).as_str(),
            "{where_}: {host} auth"
        );
    }
    for (host, entry) in &kept {
        assert_eq!(auths.get(host), Some(entry), "{where_}: kept entry {host}");
    }
    // Hosts in sorted order in the bytes themselves.
    let text = String::from_utf8(raw_data(s)).unwrap();
    let mut positions: Vec<(usize, &str)> = auths
        .keys()
        .map(|h| (text.find(&format!("\"{h}\"")).unwrap(), h.as_str()))
        .collect();
    positions.sort_unstable();
    let order: Vec<&str> = positions.iter().map(|(_, h)| *h).collect();
    let mut want = order.clone();
    want.sort_unstable();
    assert_eq!(order, want, "{where_}: hosts in sorted order");
}

pub(crate) async fn set_namespace_label(admin: &kube::Client, ns: &str, key: &str, value: &str) {
    let patch = json!({"metadata": {"labels": {key: value}}});
    Api::<Namespace>::all(admin.clone())
        .patch(ns, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("label namespace");
}
