//! Nothing lost, nothing left behind (issue 12): a secret regcred adopted is given back, not
//! deleted, when regcred lets go of it; secrets and ServiceAccount references that no current
//! entry claims are removed; the controller forgets deleted namespaces.
#![allow(clippy::print_stderr)] // Tests report what they saw.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::*;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

fn show(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    )
}

#[track_caller]
fn assert_ok(o: &Output) {
    assert_eq!(o.status.code(), Some(0), "{}", show(o));
}

/// `regcred sync` as `who` with this config.
fn sync(who: &Identity, yaml: &str) -> Output {
    let (_dir, file) = config_file(yaml);
    let (mut cmd, _key) = regcred(who);
    cmd.arg("sync").arg("--config").arg(&file);
    cmd.output().expect("run regcred sync")
}

/// One secret entry serving the stack's registry in `ns` (a glob), with extra entry lines.
fn entry(name: &str, ns: &str, extra: &str) -> String {
    format!(
        "  - name: {name}\n    registries:\n{}    namespaces:\n      include: [\"{ns}\"]\n{extra}",
        registry_alias_yaml()
    )
}

/// Someone else's pull secret for ghcr.io (plus a stale entry for the stack's registry),
/// with a label of its owner's.
async fn create_theirs(admin: &kube::Client, ns: &str, name: &str) -> Value {
    let ghcr = json!({"auth": BASE64.encode("robot:ghcr-secret"), "email": "ci@example.com"});
    let doc = json!({"auths": {
        "ghcr.io": ghcr,
        stack().var("REGCRED_TEST_REGISTRY"): {"username": "AWS", "password": "stale", "auth": BASE64.encode("AWS:stale")},
    }});
    create_foreign_pull_secret(admin, ns, name, &doc).await;
    ghcr
}

/// What a given-back secret must be: theirs again (no label or annotation of regcred's, their
/// own label kept), holding exactly the other registries' entries it held.
fn assert_given_back(secret: Option<Secret>, ghcr: &Value) {
    let s = secret.expect("the secret is still there");
    let labels = s.metadata.labels.clone().unwrap_or_default();
    assert!(!labels.contains_key(MANAGED_BY), "regcred's label dropped");
    assert_eq!(labels.get(THEIRS.0).map(String::as_str), Some(THEIRS.1));
    let annotations = s.metadata.annotations.clone().unwrap_or_default();
    assert!(
        annotations.keys().all(|k| !k.starts_with("regcred.io/")),
        "regcred's annotations dropped: {annotations:?}"
    );
    assert_eq!(s.type_.as_deref(), Some(DOCKERCONFIG_TYPE));
    assert_eq!(dockerconfig(&s), json!({"auths": {"ghcr.io": ghcr}}));
}

async fn set_label(admin: &kube::Client, ns: &str, key: &str, value: &str) {
    Api::<Namespace>::all(admin.clone())
        .patch(
            ns,
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": {key: value}}})),
        )
        .await
        .expect("label namespace");
}

// ---------------------------------------------------------------------------- item 8

/// A secret regcred adopted (it held a ghcr.io entry) and whose namespace is then deselected is
/// given back: the ghcr.io entry stays, regcred's entries, label and annotations go, and the
/// ServiceAccount reference regcred added goes; the one that was there before stays.
#[tokio::test]
async fn a_deselected_adopted_secret_is_given_back_not_deleted() {
    let admin = stack().admin().await;
    let name = unique("pull-adopted");
    let ns = unique("giveback");
    let key = unique("sel");
    create_namespace(&admin, &ns, &[(&key, "on")]).await;
    create_service_account(&admin, &ns, "default", &["keep-me"]).await;
    let ghcr = create_theirs(&admin, &ns, &name).await;
    let who = chart_identity(&admin, &[&name], true).await;
    let yaml = format!(
        "secrets:\n  - name: {name}\n    registries:\n{}    namespaces:\n      selector: \"{key}=on\"\n    adopt: true\n    serviceAccounts: [default]\n",
        registry_alias_yaml()
    );
    assert_ok(&sync(&who, &yaml));
    let adopted = get_secret(&admin, &ns, &name).await.unwrap();
    assert_eq!(
        adopted
            .metadata
            .labels
            .unwrap()
            .get(MANAGED_BY)
            .map(String::as_str),
        Some("regcred")
    );
    assert_eq!(
        pull_secret_names(&admin, &ns, "default").await,
        ["keep-me", &name]
    );

    set_label(&admin, &ns, &key, "off").await;
    let out = sync(&who, &yaml);
    assert_ok(&out);
    assert!(stdout(&out).contains("removed 1"), "{}", show(&out));
    assert_given_back(get_secret(&admin, &ns, &name).await, &ghcr);
    assert_eq!(pull_secret_names(&admin, &ns, "default").await, ["keep-me"]);
    // Theirs now: regcred leaves it alone (it is not selected, and not its own).
    assert_ok(&sync(&who, &yaml));
    assert_given_back(get_secret(&admin, &ns, &name).await, &ghcr);
}

/// `regcred cleanup` gives an adopted secret back the same way, and deletes the others.
#[tokio::test]
async fn cleanup_gives_an_adopted_secret_back() {
    let admin = stack().admin().await;
    let name = unique("pull-cleanup");
    let prefix = unique("cleanback");
    let (theirs, ours) = (format!("{prefix}-theirs"), format!("{prefix}-ours"));
    for ns in [&theirs, &ours] {
        create_namespace(&admin, ns, &[]).await;
    }
    let ghcr = create_theirs(&admin, &theirs, &name).await;
    let who = chart_identity(&admin, &[&name], false).await;
    let yaml = format!(
        "secrets:\n{}",
        entry(&name, &format!("{prefix}-*"), "    adopt: true\n")
    );
    assert_ok(&sync(&who, &yaml));
    assert!(get_secret(&admin, &ours, &name).await.is_some());

    let s = stack();
    let out = Command::new(env!("CARGO_BIN_EXE_regcred"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("KUBECONFIG", s.var("KUBECONFIG"))
        .args(["cleanup", "--namespace", &format!("{prefix}-*")])
        .output()
        .unwrap();
    assert_ok(&out);
    assert!(
        stdout(&out).contains("gave back 1"),
        "the summary says so: {}",
        show(&out)
    );
    assert_given_back(get_secret(&admin, &theirs, &name).await, &ghcr);
    assert!(get_secret(&admin, &ours, &name).await.is_none());
}

// ---------------------------------------------------------------------------- item 9

/// A secret renamed in the config (the old name listed under `formerNames`, which the RBAC
/// keeps): the old secrets go, with their ServiceAccount references, and the new ones come;
/// someone else's secret of the old name stays.
#[tokio::test]
async fn a_renamed_secret_leaves_nothing_behind() {
    let admin = stack().admin().await;
    let (old, new) = (unique("pull-old"), unique("pull-new"));
    let prefix = unique("rename");
    let (a, foreign) = (format!("{prefix}-a"), format!("{prefix}-foreign"));
    for ns in [&a, &foreign] {
        create_namespace(&admin, ns, &[]).await;
    }
    create_service_account(&admin, &a, "default", &["keep-me"]).await;
    create_theirs(&admin, &foreign, &old).await;
    let who = chart_identity(&admin, &[&old, &new], true).await;
    let sas = "    serviceAccounts: [default]\n";
    let before = format!("secrets:\n{}", entry(&old, &format!("{prefix}-*"), sas));
    sync(&who, &before);
    assert!(get_secret(&admin, &a, &old).await.is_some());
    assert_eq!(
        pull_secret_names(&admin, &a, "default").await,
        ["keep-me", &old]
    );

    let after = format!(
        "secrets:\n{}",
        entry(
            &new,
            &format!("{prefix}-*"),
            &format!("{sas}    formerNames: [{old}]\n")
        )
    );
    assert_ok(&sync(&who, &after));
    assert!(
        get_secret(&admin, &a, &old).await.is_none(),
        "old secret removed"
    );
    assert!(get_secret(&admin, &a, &new).await.is_some());
    assert_eq!(
        pull_secret_names(&admin, &a, "default").await,
        ["keep-me", &new]
    );
    let theirs = get_secret(&admin, &foreign, &old)
        .await
        .expect("theirs stays");
    assert!(
        !theirs
            .metadata
            .labels
            .unwrap_or_default()
            .contains_key(MANAGED_BY)
    );
}

/// `serviceAccounts` shrinks from [default, builder] to [default]: builder loses the reference
/// regcred added (its own entry stays), and a reference someone added by hand to a
/// ServiceAccount regcred never listed stays too.
#[tokio::test]
async fn shrinking_service_accounts_removes_only_the_references_regcred_added() {
    let admin = stack().admin().await;
    let name = unique("pull-shrink");
    let ns = unique("shrink");
    create_namespace(&admin, &ns, &[]).await;
    create_service_account(&admin, &ns, "default", &[]).await;
    create_service_account(&admin, &ns, "builder", &["other"]).await;
    create_service_account(&admin, &ns, "ci", &[&name]).await;
    let who = chart_identity(&admin, &[&name], true).await;
    let wide = format!(
        "secrets:\n{}",
        entry(&name, &ns, "    serviceAccounts: [default, builder]\n")
    );
    assert_ok(&sync(&who, &wide));
    assert_eq!(
        pull_secret_names(&admin, &ns, "builder").await,
        ["other", &name]
    );

    let narrow = format!(
        "secrets:\n{}",
        entry(&name, &ns, "    serviceAccounts: [default]\n")
    );
    assert_ok(&sync(&who, &narrow));
    assert_eq!(
        pull_secret_names(&admin, &ns, "default").await,
        [name.as_str()]
    );
    assert_eq!(pull_secret_names(&admin, &ns, "builder").await, ["other"]);
    assert_eq!(
        pull_secret_names(&admin, &ns, "ci").await,
        [name.as_str()],
        "not regcred's"
    );
}

/// ServiceAccount patching turned off while regcred may still read and patch
/// ServiceAccounts: `regcred run` removes the references it added (and only those). With
/// that permission gone as well, it asks for nothing and reports nothing.
#[tokio::test]
async fn turning_service_account_patching_off_removes_regcreds_references() {
    let admin = stack().admin().await;
    let name = unique("pull-off");
    let ns = unique("sa-off");
    create_namespace(&admin, &ns, &[]).await;
    create_service_account(&admin, &ns, "default", &["keep-me"]).await;
    create_service_account(&admin, &ns, "ci", &[&name]).await;
    let who = chart_identity(&admin, &[&name], true).await;
    let on = format!(
        "secrets:\n{}",
        entry(&name, &ns, "    serviceAccounts: [default]\n")
    );
    assert_ok(&sync(&who, &on));
    assert_eq!(
        pull_secret_names(&admin, &ns, "default").await,
        ["keep-me", &name]
    );

    let off = format!("secrets:\n{}", entry(&name, &ns, ""));
    let (_dir, file) = config_file(&off);
    let run = run_as(&who, &file, &[]);
    run.wait_ready(Duration::from_mins(1)).await;
    wait_for(
        "regcred's reference removed",
        Duration::from_secs(10),
        || async { (pull_secret_names(&admin, &ns, "default").await == ["keep-me"]).then_some(()) },
    )
    .await;
    assert_eq!(
        pull_secret_names(&admin, &ns, "ci").await,
        [name.as_str()],
        "not regcred's"
    );
    drop(run);

    // Without the permission: nothing to do, nothing to report.
    let bare = chart_identity(&admin, &[&name], false).await;
    let out = sync(&bare, &off);
    assert_ok(&out);
    assert!(
        !stderr(&out).to_lowercase().contains("forbidden"),
        "{}",
        show(&out)
    );
}

// ---------------------------------------------------------------------------- item 10

/// Deletes a namespace for good: the namespace first (terminating, it takes no new object,
/// so regcred cannot put its secret back meanwhile), then its secrets, then its finalizer (no
/// namespace controller runs in the test clusters).
async fn delete_for_good(admin: &kube::Client, ns: &str) {
    let api = Api::<Namespace>::all(admin.clone());
    api.delete(ns, &DeleteParams::default())
        .await
        .expect("delete namespace");
    Api::<Secret>::namespaced(admin.clone(), ns)
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .expect("delete secrets");
    let mut finalizing = api.get(ns).await.expect("terminating namespace");
    finalizing.spec.get_or_insert_default().finalizers = Some(vec![]);
    api.replace_subresource("finalize", ns, &PostParams::default(), &finalizing)
        .await
        .expect("finalize namespace");
}

fn count(n: usize) -> f64 {
    f64::from(u32::try_from(n).unwrap())
}

/// The controller's per-namespace bookkeeping follows the namespaces that exist: 100 served
/// namespaces deleted for good leave `regcred_namespaces_tracked` where it was before them.
#[tokio::test]
async fn the_controller_forgets_deleted_namespaces() {
    let cluster = PrivateCluster::start(&[]);
    let admin = cluster.admin().await;
    let name = unique("pull");
    let prefix = unique("gone");
    let who = chart_identity(&admin, &[&name], false).await;
    cluster.point_at_me(&who);
    let (_dir, config) = config_file(&format!(
        "secrets:\n{}",
        entry(&name, &format!("{prefix}-*"), "")
    ));
    let run = run_as(&who, &config, &[]);
    run.wait_ready(Duration::from_mins(1)).await;
    let tracked = || run.metric("regcred_namespaces_tracked");
    let existing = Api::<Namespace>::all(admin.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .len();
    wait_for(
        "every namespace tracked",
        Duration::from_secs(10),
        || async { is(tracked(), count(existing)).then_some(()) },
    )
    .await;

    let names: Vec<String> = (0..100).map(|i| format!("{prefix}-{i:03}")).collect();
    create_namespaces_at_once(&admin, &names, &[], 16).await;
    wait_for("100 more tracked", Duration::from_secs(30), || async {
        is(tracked(), count(existing + 100)).then_some(())
    })
    .await;
    wait_for("every secret written", Duration::from_secs(30), || async {
        let n = Api::<Secret>::all(admin.clone())
            .list(&ListParams::default().fields(&format!("metadata.name={name}")))
            .await
            .unwrap()
            .items
            .len();
        (n == names.len()).then_some(())
    })
    .await;
    futures::future::join_all(names.iter().map(|ns| delete_for_good(&admin, ns))).await;
    wait_for(
        "the deleted namespaces forgotten",
        Duration::from_secs(20),
        || async { is(tracked(), count(existing)).then_some(()) },
    )
    .await;
    assert!(
        is(run.metric("regcred_namespaces_selected"), 0.0),
        "none selected: {}",
        run.metric("regcred_namespaces_selected")
    );
}
