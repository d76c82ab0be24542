//! `regcred sync` against the real stack, acting as a ServiceAccount that holds exactly the
//! chart's least-privilege RBAC: issue 3's "Done when" list, one test (or a few) per bullet.
//!
//! Every test works in namespaces of its own (a unique prefix selected by a glob, or a unique
//! label selected by a selector) and a secret name of its own, so tests running at once, and
//! other test binaries on the same stack, never see each other's objects.

mod common;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::*;
use futures::StreamExt as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const REGISTRIES: &str = "regcred.io/registries";
const PUBLIC_HOST: &str = "public.ecr.aws";
/// A real ECR host of the stack's account and region: the same token source as the alias.
const ECR_HOST: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com";
const TIMEOUT: Duration = Duration::from_mins(2);

/// Which token a secret's entry must hold: a password the fake AWS issued for the stack's
/// account (private ECR) or for ECR Public, and still valid.
#[derive(Clone, Copy, Debug)]
enum Token {
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

fn auth_of(password: &str) -> String {
    BASE64.encode(format!("AWS:{password}"))
}

fn alias_host() -> String {
    stack().var("REGCRED_TEST_REGISTRY").to_owned()
}

/// A config with one secret entry: `registries` and `rest` are YAML lines already indented
/// for the entry (six and four spaces).
fn config(name: &str, registries: &str, rest: &str) -> String {
    format!("secrets:\n  - name: {name}\n    registries:\n{registries}{rest}")
}

fn registry_line(host: &str) -> String {
    format!("      - {host}\n")
}

fn include(globs: &[&str]) -> String {
    let quoted: Vec<String> = globs.iter().map(|g| format!("\"{g}\"")).collect();
    format!("    namespaces:\n      include: [{}]\n", quoted.join(", "))
}

/// `regcred sync --config FILE ARGS...` as `who`; returns the command and its access key.
fn sync(who: &Identity, config: &Path, args: &[&str]) -> (Command, String) {
    let (mut cmd, key) = regcred(who);
    cmd.arg("sync").arg("--config").arg(config).args(args);
    (cmd, key)
}

fn run(mut cmd: Command) -> Output {
    cmd.output().expect("run regcred")
}

fn show(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    )
}

fn assert_exit(o: &Output, code: i32) {
    assert_eq!(o.status.code(), Some(code), "{}", show(o));
}

fn summary(o: &Output) -> String {
    stdout(o).lines().next().unwrap_or_default().to_owned()
}

/// The summary line's counts, up to "for N registries".
fn assert_counts(o: &Output, expected: &str) {
    let line = summary(o);
    assert!(
        line.starts_with(expected),
        "summary {line:?} should start with {expected:?}\n{}",
        show(o)
    );
}

async fn create_namespaces(admin: &kube::Client, names: &[String], labels: &[(&str, &str)]) {
    futures::stream::iter(names)
        .map(|n| create_namespace(admin, n, labels))
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
}

/// Every secret of this name in namespaces starting with `prefix`, by namespace.
async fn secrets_named(admin: &kube::Client, name: &str, prefix: &str) -> BTreeMap<String, Secret> {
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

async fn secret(admin: &kube::Client, ns: &str, name: &str) -> Secret {
    get_secret(admin, ns, name)
        .await
        .unwrap_or_else(|| panic!("secret {ns}/{name} should exist"))
}

fn rv(s: &Secret) -> String {
    s.metadata
        .resource_version
        .clone()
        .expect("resourceVersion")
}

fn raw_data(s: &Secret) -> Vec<u8> {
    s.data.as_ref().expect("data")[".dockerconfigjson"]
        .0
        .clone()
}

/// Asserts a secret is regcred's, well formed, and serves exactly `hosts` with valid tokens
/// of these kinds from the stack's fake AWS (plus the `kept` entries of other hosts,
/// unchanged).
fn assert_regcred_secret(s: &Secret, hosts: &[(&str, Token)], kept: &Value) {
    assert_regcred_secret_from(s, hosts, kept, |p| stack().token_info(p));
}

/// The same, with tokens from the fake AWS `lookup` asks.
fn assert_regcred_secret_from(
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

/// A secret of type dockerconfigjson created by someone else (no regcred label).
async fn create_foreign_secret(admin: &kube::Client, ns: &str, name: &str, doc: &Value) -> Secret {
    let s = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some([("team".to_owned(), "theirs".to_owned())].into()),
            ..ObjectMeta::default()
        },
        type_: Some(DOCKERCONFIG_TYPE.into()),
        data: Some(
            [(
                ".dockerconfigjson".to_owned(),
                ByteString(doc.to_string().into_bytes()),
            )]
            .into(),
        ),
        ..Secret::default()
    };
    Api::<Secret>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &s)
        .await
        .expect("create foreign secret")
}

async fn set_namespace_label(admin: &kube::Client, ns: &str, key: &str, value: &str) {
    let patch = json!({"metadata": {"labels": {key: value}}});
    Api::<Namespace>::all(admin.clone())
        .patch(ns, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("label namespace");
}

async fn pull_secret_names(admin: &kube::Client, ns: &str, sa: &str) -> Vec<String> {
    Api::<ServiceAccount>::namespaced(admin.clone(), ns)
        .get(sa)
        .await
        .expect("get serviceaccount")
        .image_pull_secrets
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.name)
        .collect()
}

// ---------------------------------------------------------------------------------------
// 200 namespaces, one token call; the second pass writes nothing.

#[tokio::test]
async fn two_hundred_namespaces_get_a_correct_secret_from_one_token_call() {
    let admin = stack().admin().await;
    let name = unique("pull200");
    let prefix = unique("s200");
    let names: Vec<String> = (0..200).map(|i| format!("{prefix}-{i}")).collect();
    create_namespaces(&admin, &names, &[]).await;
    // A namespace just outside the glob stays untouched.
    let outside = format!("{prefix}x");
    create_namespace(&admin, &outside, &[]).await;
    let who = chart_identity(&admin, &[&name], false).await;
    let alias = alias_host();
    let (_d, file) = config_file(&config(
        &name,
        &format!("{}{}", registry_alias_yaml(), registry_line(ECR_HOST)),
        &include(&[&format!("{prefix}-*")]),
    ));

    let (cmd, key) = sync(&who, &file, &[]);
    let started = Instant::now();
    let first = run(cmd);
    let took = started.elapsed();
    assert_exit(&first, 0);
    assert_counts(
        &first,
        "synced 200 namespaces (200 written, 0 unchanged, 0 skipped, 0 failed) for 2 registries",
    );
    assert_eq!(
        stack().token_calls(&key),
        1,
        "two hosts of one (partition, region, credentials): one GetAuthorizationToken for 200 namespaces"
    );

    let stored = secrets_named(&admin, &name, &prefix).await;
    assert_eq!(
        stored.keys().collect::<Vec<_>>(),
        {
            let mut n: Vec<&String> = names.iter().collect();
            n.sort();
            n
        },
        "exactly the 200 selected namespaces hold the secret"
    );
    for s in stored.values() {
        assert_regcred_secret(
            s,
            &[(&alias, Token::Private), (ECR_HOST, Token::Private)],
            &json!({}),
        );
    }
    let first_bytes = raw_data(&stored[&names[0]]);
    assert!(
        stored.values().all(|s| raw_data(s) == first_bytes),
        "identical input, identical bytes"
    );

    let (cmd, key2) = sync(&who, &file, &[]);
    let started = Instant::now();
    let second = run(cmd);
    let took_again = started.elapsed();
    assert_exit(&second, 0);
    assert_counts(
        &second,
        "synced 200 namespaces (0 written, 200 unchanged, 0 skipped, 0 failed) for 2 registries",
    );
    assert_eq!(
        stack().token_calls(&key2),
        0,
        "nothing is due: no token call"
    );
    assert_eq!(stack().token_calls(&key), 1);
    let again = secrets_named(&admin, &name, &prefix).await;
    let versions = |m: &BTreeMap<String, Secret>| -> BTreeMap<String, String> {
        m.iter().map(|(k, s)| (k.clone(), rv(s))).collect()
    };
    assert_eq!(
        versions(&stored),
        versions(&again),
        "the second pass wrote nothing"
    );
    #[allow(clippy::print_stderr)] // The measurement the report quotes.
    {
        eprintln!(
            "sync of 200 namespaces: first pass {took:.2?} (200 written), second pass {took_again:.2?} (200 unchanged)"
        );
    }
}

// ---------------------------------------------------------------------------------------
// skopeo pulls with the very .dockerconfigjson regcred wrote.

#[tokio::test]
async fn skopeo_pulls_the_test_image_with_the_secret_regcred_wrote() {
    let admin = stack().admin().await;
    let name = unique("pull-skopeo");
    let ns = unique("skopeo");
    create_namespace(&admin, &ns, &[]).await;
    let who = chart_identity(&admin, &[&name], false).await;
    let (_d, file) = config_file(&config(
        &name,
        &format!("{}{}", registry_alias_yaml(), registry_line(PUBLIC_HOST)),
        &include(&[&ns]),
    ));
    let (cmd, key) = sync(&who, &file, &[]);
    let out = run(cmd);
    assert_exit(&out, 0);
    assert_counts(
        &out,
        "synced 1 namespaces (1 written, 0 unchanged, 0 skipped, 0 failed) for 2 registries",
    );
    assert_eq!(
        stack().token_calls(&key),
        2,
        "one private, one ECR Public token"
    );

    let s = secret(&admin, &ns, &name).await;
    assert_regcred_secret(
        &s,
        &[
            (&alias_host(), Token::Private),
            (PUBLIC_HOST, Token::Public),
        ],
        &json!({}),
    );
    let dir = tempfile::tempdir().unwrap();
    let authfile = dir.path().join("auth.json");
    std::fs::write(&authfile, raw_data(&s)).unwrap();
    let pulled = skopeo_pull(&authfile);
    assert!(
        pulled.status.success(),
        "skopeo with regcred's secret: {}",
        stderr(&pulled)
    );
}

// ---------------------------------------------------------------------------------------
// Someone else's secret: left alone and reported; with adopt, merged.

#[tokio::test]
async fn a_foreign_secret_is_left_alone_and_reported_and_adopt_merges_it() {
    let admin = stack().admin().await;
    let name = unique("pull-foreign");
    let ns = unique("foreign");
    create_namespace(&admin, &ns, &[]).await;
    let alias = alias_host();
    let other = json!({"auth": BASE64.encode("robot:ghcr-secret"), "email": "ci@example.com"});
    let doc = json!({"auths": {
        "ghcr.io": other,
        // A stale entry for a host regcred serves: adoption replaces it.
        alias.as_str(): {"username": "AWS", "password": "stale", "auth": auth_of("stale")},
    }});
    let before = create_foreign_secret(&admin, &ns, &name, &doc).await;
    let who = chart_identity(&admin, &[&name], false).await;
    let registries = format!("{}{}", registry_alias_yaml(), registry_line(PUBLIC_HOST));
    let (_d, file) = config_file(&config(&name, &registries, &include(&[&ns])));

    let (cmd, _) = sync(&who, &file, &[]);
    let out = run(cmd);
    assert_exit(&out, 1);
    assert_counts(
        &out,
        "synced 1 namespaces (0 written, 0 unchanged, 0 skipped, 1 failed)",
    );
    let failure =
        format!("failed: {ns}: secret {name} exists and is not managed by regcred; left as it is");
    assert!(
        stdout(&out).lines().any(|l| l.starts_with(&failure)),
        "{}",
        show(&out)
    );
    let after = secret(&admin, &ns, &name).await;
    assert_eq!(rv(&after), rv(&before), "not written");
    assert_eq!(raw_data(&after), raw_data(&before), "bytes untouched");
    assert_eq!(after.metadata.labels, before.metadata.labels);
    assert_eq!(after.metadata.annotations, before.metadata.annotations);

    let events = Api::<Event>::namespaced(admin.clone(), &ns);
    let event = wait_for("a ForeignSecret Event", TIMEOUT, || {
        let events = events.clone();
        let name = name.clone();
        async move {
            events
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .find(|e| {
                    e.reason.as_deref() == Some("ForeignSecret")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(&name)
                })
        }
    })
    .await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(
        event.regarding.as_ref().and_then(|r| r.kind.as_deref()),
        Some("Secret")
    );

    // adopt: true takes it over, keeping the entries it holds for other hosts.
    let adopting = config(
        &name,
        &registries,
        &format!("{}    adopt: true\n", include(&[&ns])),
    );
    let (_d2, file) = config_file(&adopting);
    let (cmd, _) = sync(&who, &file, &[]);
    let out = run(cmd);
    assert_exit(&out, 0);
    assert_counts(
        &out,
        "synced 1 namespaces (1 written, 0 unchanged, 0 skipped, 0 failed)",
    );
    let adopted = secret(&admin, &ns, &name).await;
    assert_ne!(rv(&adopted), rv(&before));
    assert_regcred_secret(
        &adopted,
        &[(&alias, Token::Private), (PUBLIC_HOST, Token::Public)],
        &json!({"ghcr.io": other}),
    );
    assert_eq!(
        adopted
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("team"))
            .map(String::as_str),
        Some("theirs"),
        "the owner's own labels stay"
    );
    // Once adopted it is regcred's: the next pass has nothing to do.
    let (cmd, key) = sync(&who, &file, &[]);
    let out = run(cmd);
    assert_exit(&out, 0);
    assert_counts(
        &out,
        "synced 1 namespaces (0 written, 1 unchanged, 0 skipped, 0 failed)",
    );
    assert_eq!(stack().token_calls(&key), 0);
}

// ---------------------------------------------------------------------------------------
// A managed secret holding garbage is repaired.

#[tokio::test]
async fn a_managed_secret_with_broken_content_is_repaired() {
    let admin = stack().admin().await;
    let name = unique("pull-broken");
    let prefix = unique("broken");
    let (edited, opaque) = (format!("{prefix}-edited"), format!("{prefix}-opaque"));
    create_namespaces(&admin, &[edited.clone(), opaque.clone()], &[]).await;
    let who = chart_identity(&admin, &[&name], false).await;
    let (_d, file) = config_file(&config(
        &name,
        &registry_alias_yaml(),
        &include(&[&format!("{prefix}-*")]),
    ));
    let (cmd, _) = sync(&who, &file, &[]);
    assert_exit(&run(cmd), 0);

    // The API server insists a dockerconfigjson secret holds a JSON object, so the garbage
    // in a secret of that type is JSON of the wrong shape...
    let patch = json!({"data": {".dockerconfigjson": BASE64.encode(r#"{"auths": "garbage"}"#)}});
    Api::<Secret>::namespaced(admin.clone(), &edited)
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("corrupt the secret");
    // ...and a managed secret of another type holds bytes that are not JSON at all.
    Api::<Secret>::namespaced(admin.clone(), &opaque)
        .delete(&name, &DeleteParams::default())
        .await
        .expect("delete");
    let broken = Secret {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some([(MANAGED_BY.to_owned(), "regcred".to_owned())].into()),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(
            [(
                ".dockerconfigjson".to_owned(),
                ByteString(b"{\"auths\": {garbage".to_vec()),
            )]
            .into(),
        ),
        ..Secret::default()
    };
    Api::<Secret>::namespaced(admin.clone(), &opaque)
        .create(&PostParams::default(), &broken)
        .await
        .expect("create broken secret");
    let corrupted = secret(&admin, &edited, &name).await;
    assert_eq!(dockerconfig(&corrupted)["auths"], "garbage");

    let (cmd, key) = sync(&who, &file, &[]);
    let out = run(cmd);
    assert_exit(&out, 0);
    assert_counts(
        &out,
        "synced 2 namespaces (2 written, 0 unchanged, 0 skipped, 0 failed)",
    );
    assert_eq!(stack().token_calls(&key), 1);
    for ns in [&edited, &opaque] {
        let repaired = secret(&admin, ns, &name).await;
        assert_regcred_secret(&repaired, &[(&alias_host(), Token::Private)], &json!({}));
    }
}

// ---------------------------------------------------------------------------------------
// Excluded and deselected namespaces end up without regcred's secret; nothing else goes.

#[tokio::test]
async fn excluded_and_deselected_namespaces_lose_only_regcreds_secret() {
    let admin = stack().admin().await;
    let name = unique("pull-desel");
    let prefix = unique("desel");
    let label = unique("regcred-test");
    let ns = |s: &str| format!("{prefix}-{s}");
    let (kept, relabelled, excluded, foreign, never) = (
        ns("kept"),
        ns("relabel"),
        ns("excl"),
        ns("foreign"),
        ns("never"),
    );
    create_namespaces(
        &admin,
        &[
            kept.clone(),
            relabelled.clone(),
            excluded.clone(),
            foreign.clone(),
        ],
        &[(label.as_str(), "on")],
    )
    .await;
    // Never selected: its label does not match.
    create_namespace(&admin, &never, &[(label.as_str(), "off")]).await;
    // A ServiceAccount that references regcred's secret among others.
    create_service_account(&admin, &relabelled, "default", &["mine"]).await;
    let foreign_doc = json!({"auths": {"ghcr.io": {"auth": BASE64.encode("u:p")}}});
    let foreign_secret = create_foreign_secret(&admin, &foreign, &name, &foreign_doc).await;
    let who = chart_identity(&admin, &[&name], true).await;
    let entry = |exclude: &str| {
        config(
            &name,
            &registry_alias_yaml(),
            &format!(
                "    namespaces:\n      include: [\"{prefix}-*\"]\n      exclude: [{exclude}]\n      selector: \"{label}=on\"\n    serviceAccounts: [default]\n"
            ),
        )
    };
    let (_d, file) = config_file(&entry(""));
    let (cmd, _) = sync(&who, &file, &[]);
    let out = run(cmd);
    // The foreign secret is reported while its namespace is selected.
    assert_exit(&out, 1);
    assert_counts(
        &out,
        "synced 4 namespaces (3 written, 0 unchanged, 0 skipped, 1 failed)",
    );
    for n in [&kept, &relabelled, &excluded] {
        secret(&admin, n, &name).await;
    }
    assert!(get_secret(&admin, &never, &name).await.is_none());
    assert_eq!(
        pull_secret_names(&admin, &relabelled, "default").await,
        ["mine", name.as_str()]
    );

    // Deselect two ways: the config now excludes one, a label change drops two more.
    set_namespace_label(&admin, &relabelled, &label, "off").await;
    set_namespace_label(&admin, &foreign, &label, "off").await;
    let (_d2, file) = config_file(&entry(&format!("\"{excluded}\"")));
    let kept_before = secret(&admin, &kept, &name).await;
    let (cmd, _) = sync(&who, &file, &[]);
    let out = run(cmd);
    assert_exit(&out, 0);
    assert_counts(
        &out,
        "synced 1 namespaces (0 written, 1 unchanged, 0 skipped, 0 failed) for 1 registries; removed 2 from namespaces no longer selected",
    );
    assert!(
        get_secret(&admin, &relabelled, &name).await.is_none(),
        "deselected by label: secret removed"
    );
    assert!(
        get_secret(&admin, &excluded, &name).await.is_none(),
        "excluded by config: secret removed"
    );
    assert_eq!(
        pull_secret_names(&admin, &relabelled, "default").await,
        ["mine"],
        "its ServiceAccount reference goes, the others stay"
    );
    let foreign_after = secret(&admin, &foreign, &name).await;
    assert_eq!(
        rv(&foreign_after),
        rv(&foreign_secret),
        "a secret regcred does not manage is never deleted"
    );
    assert_eq!(rv(&secret(&admin, &kept, &name).await), rv(&kept_before));
}

// ---------------------------------------------------------------------------------------
// ServiceAccounts keep their other pull secrets and get regcred's once.

#[tokio::test]
async fn service_accounts_keep_other_pull_secrets_and_get_regcreds_once() {
    let admin = stack().admin().await;
    let name = unique("pull-sa");
    let ns = unique("sa");
    create_namespace(&admin, &ns, &[]).await;
    create_service_account(&admin, &ns, "default", &["other-a", "other-b"]).await;
    create_service_account(&admin, &ns, "builder", &[]).await;
    create_service_account(&admin, &ns, "unlisted", &["other-a"]).await;
    let who = chart_identity(&admin, &[&name], true).await;
    let (_d, file) = config_file(&config(
        &name,
        &registry_alias_yaml(),
        &format!(
            "{}    serviceAccounts: [default, builder]\n",
            include(&[&ns])
        ),
    ));
    let unlisted_before = Api::<ServiceAccount>::namespaced(admin.clone(), &ns)
        .get("unlisted")
        .await
        .unwrap();
    for pass in 0..2 {
        let (cmd, _) = sync(&who, &file, &[]);
        let out = run(cmd);
        assert_exit(&out, 0);
        assert_counts(
            &out,
            if pass == 0 {
                "synced 1 namespaces (1 written, 0 unchanged, 0 skipped, 0 failed)"
            } else {
                "synced 1 namespaces (0 written, 1 unchanged, 0 skipped, 0 failed)"
            },
        );
        assert_eq!(
            pull_secret_names(&admin, &ns, "default").await,
            ["other-a", "other-b", name.as_str()],
            "pass {pass}: the others kept, regcred's once"
        );
        assert_eq!(
            pull_secret_names(&admin, &ns, "builder").await,
            [name.as_str()]
        );
        let unlisted = Api::<ServiceAccount>::namespaced(admin.clone(), &ns)
            .get("unlisted")
            .await
            .unwrap();
        assert_eq!(
            unlisted.metadata.resource_version, unlisted_before.metadata.resource_version,
            "a ServiceAccount not in the list is not touched"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Terminating namespaces are skipped without error.

#[tokio::test]
async fn terminating_namespaces_are_skipped_without_error() {
    let admin = stack().admin().await;
    let name = unique("pull-term");
    let prefix = unique("term");
    let (live, dying, dying_with) = (
        format!("{prefix}-live"),
        format!("{prefix}-dying"),
        format!("{prefix}-dying-with"),
    );
    // Terminating too, but outside the selection: neither counted nor touched.
    let elsewhere = format!("{prefix}x-dying");
    create_namespaces(
        &admin,
        &[
            live.clone(),
            dying.clone(),
            dying_with.clone(),
            elsewhere.clone(),
        ],
        &[],
    )
    .await;
    let who = chart_identity(&admin, &[&name], false).await;
    let (_d, file) = config_file(&config(
        &name,
        &registry_alias_yaml(),
        &include(&[&format!("{prefix}-*")]),
    ));
    // One of them already holds regcred's secret.
    let only = config(
        &name,
        &registry_alias_yaml(),
        &include(&[dying_with.as_str()]),
    );
    let (_d1, only_file) = config_file(&only);
    let (cmd, _) = sync(&who, &only_file, &[]);
    assert_exit(&run(cmd), 0);
    // Another controller holds that secret with a finalizer, so it outlives the deletion
    // of the namespace's content (the controller-manager deletes everything else).
    let secrets = Api::<Secret>::namespaced(admin.clone(), &dying_with);
    let finalizers = |f: Value| Patch::Merge(json!({"metadata": {"finalizers": f}}));
    secrets
        .patch(
            &name,
            &PatchParams::default(),
            &finalizers(json!(["regcred.test/keep"])),
        )
        .await
        .expect("add a finalizer");

    let _holds = [
        hold_terminating(&admin, &dying).await,
        hold_terminating(&admin, &dying_with).await,
        hold_terminating(&admin, &elsewhere).await,
    ];
    let held = wait_for(
        "the held secret to be marked for deletion",
        TIMEOUT,
        || async {
            let s = secrets.get_opt(&name).await.ok()??;
            s.metadata.deletion_timestamp.is_some().then_some(s)
        },
    )
    .await;

    let (cmd, _) = sync(&who, &file, &[]);
    let out = run(cmd);
    assert_exit(&out, 0);
    assert_counts(
        &out,
        "synced 3 namespaces (1 written, 0 unchanged, 2 skipped, 0 failed)",
    );
    assert!(!stdout(&out).contains("failed:"), "{}", show(&out));
    secret(&admin, &live, &name).await;
    assert!(get_secret(&admin, &dying, &name).await.is_none());
    assert_eq!(
        rv(&secret(&admin, &dying_with, &name).await),
        rv(&held),
        "left as it is"
    );
    secrets
        .patch(&name, &PatchParams::default(), &finalizers(Value::Null))
        .await
        .expect("remove the finalizer");
}

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

// ---------------------------------------------------------------------------------------
// Secrets never reach the logs, even at trace level.

/// Every form of the values in these pull secrets that must never be printed: each
/// password, each `auth`, and the whole document as stored (base64).
fn forbidden(secrets: &[Secret], extra: &[String]) -> Vec<String> {
    let mut v = extra.to_vec();
    for s in secrets {
        v.push(BASE64.encode(raw_data(s)));
        for entry in dockerconfig(s)["auths"]
            .as_object()
            .expect("auths")
            .values()
        {
            for field in ["password", "auth"] {
                v.push(entry[field].as_str().expect(field).to_owned());
            }
        }
    }
    v
}

fn assert_no_secrets(out: &Output, forbidden: &[String], what: &str) {
    for (stream, text) in [("stdout", stdout(out)), ("stderr", stderr(out))] {
        for f in forbidden {
            if let Some(at) = text.find(f.as_str()) {
                let line = text[..at].rsplit('\n').next().unwrap_or_default();
                panic!(
                    "{what}: {stream} shows a secret ({} chars) in a line starting {:?}",
                    f.len(),
                    line.chars().take(300).collect::<String>()
                );
            }
        }
    }
}

async fn trace_run(how: &str) {
    let admin = stack().admin().await;
    let name = unique("pull-trace");
    let ns = unique("trace");
    create_namespace(&admin, &ns, &[]).await;
    create_service_account(&admin, &ns, "default", &[]).await;
    let who = chart_identity(&admin, &[&name], true).await;
    let token = std::fs::read_to_string(&who.kubeconfig)
        .unwrap()
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: ").map(str::to_owned))
        .expect("token in kubeconfig");
    let (_d, file) = config_file(&config(
        &name,
        &format!("{}{}", registry_alias_yaml(), registry_line(PUBLIC_HOST)),
        &format!("{}    serviceAccounts: [default]\n", include(&[&ns])),
    ));
    let traced = |cmd: &mut Command| match how {
        "--log-level" => {
            cmd.args(["--log-level", "trace"]);
        }
        "RUST_LOG" => {
            cmd.env("RUST_LOG", "trace").args(["--log-format", "json"]);
        }
        _ => unreachable!(),
    };
    // First pass creates the secret; its tokens live a minute, so the second pass reads the
    // stored secret, fetches new tokens (with another lifetime, so the secret differs) and
    // writes it again: every path a secret takes.
    let mut outputs = Vec::new();
    let mut written = Vec::new();
    for (pass, ttl) in [60, 600].into_iter().enumerate() {
        let (mut cmd, key) = sync(&who, &file, &[]);
        traced(&mut cmd);
        stack().set_aws_key(&key, &json!({ "ttl": ttl }));
        let out = run(cmd);
        assert_exit(&out, 0);
        assert_counts(
            &out,
            "synced 1 namespaces (1 written, 0 unchanged, 0 skipped, 0 failed)",
        );
        assert_eq!(stack().token_calls(&key), 2, "pass {pass}");
        let err = stderr(&out);
        assert!(
            err.contains("TRACE") && err.contains("GetAuthorizationToken"),
            "{how}: trace logging is on"
        );
        outputs.push(out);
        // Each pass wrote new tokens: every one of them must stay out of every log.
        written.push(secret(&admin, &ns, &name).await);
    }
    let forbidden = forbidden(&written, &[token]);
    for (pass, out) in outputs.iter().enumerate() {
        assert_no_secrets(out, &forbidden, &format!("{how}=trace, pass {pass}"));
    }
}

#[tokio::test]
async fn trace_logging_with_the_flag_never_prints_a_secret() {
    trace_run("--log-level").await;
}

#[tokio::test]
async fn trace_logging_with_rust_log_never_prints_a_secret() {
    trace_run("RUST_LOG").await;
}

// ---------------------------------------------------------------------------------------
// --dry-run writes nothing and says what it would do.

#[tokio::test]
async fn dry_run_writes_nothing_and_says_what_it_would_do() {
    let admin = stack().admin().await;
    let name = unique("pull-dry");
    let prefix = unique("dry");
    let label = unique("regcred-dry");
    let (fresh, due, gone) = (
        format!("{prefix}-new"),
        format!("{prefix}-due"),
        format!("{prefix}-gone"),
    );
    create_namespaces(
        &admin,
        &[due.clone(), gone.clone()],
        &[(label.as_str(), "on")],
    )
    .await;
    let who = chart_identity(&admin, &[&name], true).await;
    let (_d, file) = config_file(&config(
        &name,
        &registry_alias_yaml(),
        &format!(
            "    namespaces:\n      include: [\"{prefix}-*\"]\n      selector: \"{label}=on\"\n    serviceAccounts: [default]\n"
        ),
    ));
    let (cmd, key) = sync(&who, &file, &[]);
    stack().set_aws_key(&key, &json!({"ttl": 60}));
    assert_exit(&run(cmd), 0);
    // Now: one namespace new (with a ServiceAccount), one due for renewal, one deselected.
    create_namespace(&admin, &fresh, &[(label.as_str(), "on")]).await;
    create_service_account(&admin, &fresh, "default", &["other"]).await;
    set_namespace_label(&admin, &gone, &label, "off").await;
    let due_before = secret(&admin, &due, &name).await;
    let gone_before = secret(&admin, &gone, &name).await;
    let sa_before = Api::<ServiceAccount>::namespaced(admin.clone(), &fresh)
        .get("default")
        .await
        .unwrap();

    let (cmd, _) = sync(&who, &file, &["--dry-run"]);
    let out = run(cmd);
    assert_exit(&out, 0);
    let text = stdout(&out);
    for line in [
        format!("would create secret {fresh}/{name}"),
        format!("would update secret {due}/{name}"),
        format!("would delete secret {gone}/{name} (namespace no longer selected)"),
        format!("would add {name} in serviceaccount {fresh}/default imagePullSecrets"),
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line:?} missing\n{}",
            show(&out)
        );
    }
    let last = text.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(
            "dry run: would have synced 2 namespaces (2 written, 0 unchanged, 0 skipped, 0 failed) for 1 registries; removed 1 from namespaces no longer selected"
        ),
        "{}",
        show(&out)
    );

    assert!(get_secret(&admin, &fresh, &name).await.is_none());
    assert_eq!(rv(&secret(&admin, &due, &name).await), rv(&due_before));
    assert_eq!(rv(&secret(&admin, &gone, &name).await), rv(&gone_before));
    let sa_after = Api::<ServiceAccount>::namespaced(admin.clone(), &fresh)
        .get("default")
        .await
        .unwrap();
    assert_eq!(
        sa_after.metadata.resource_version,
        sa_before.metadata.resource_version
    );
}

// ---------------------------------------------------------------------------------------
// --log-format json: JSON lines on stderr.

#[tokio::test]
async fn json_log_format_writes_json_lines_on_stderr() {
    let admin = stack().admin().await;
    let name = unique("pull-json");
    let ns = unique("json");
    create_namespace(&admin, &ns, &[]).await;
    let who = chart_identity(&admin, &[&name], false).await;
    let (_d, file) = config_file(&config(&name, &registry_alias_yaml(), &include(&[&ns])));
    let (cmd, _) = sync(&who, &file, &["--log-format", "json"]);
    let out = run(cmd);
    assert_exit(&out, 0);
    assert_counts(
        &out,
        "synced 1 namespaces (1 written, 0 unchanged, 0 skipped, 0 failed)",
    );
    let err = stderr(&out);
    let lines: Vec<Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect();
    assert!(!lines.is_empty(), "some log lines");
    for l in &lines {
        assert!(l["timestamp"].is_string() && l["level"].is_string(), "{l}");
        assert!(l["target"].is_string(), "{l}");
    }
    assert!(
        lines.iter().any(|l| l["level"] == "INFO"
            && l["namespace"] == ns.as_str()
            && l["secret"] == name.as_str()),
        "a line about the written secret, with its fields: {err}"
    );
}
