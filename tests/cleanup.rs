//! `regcred cleanup` against the real stack: only secrets carrying regcred's label go, and
//! only their entries in ServiceAccounts' `imagePullSecrets`. Each test scopes the cleanup
//! to its own namespaces (`--namespace GLOB`) so tests running at once keep their secrets.

mod common;

use std::process::{Command, Output};

use common::*;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, ObjectMeta, PostParams};

/// The regcred binary as a cluster admin (cleanup lists secrets in every namespace).
fn cleanup_as_admin(args: &[&str]) -> Output {
    let s = stack();
    Command::new(env!("CARGO_BIN_EXE_regcred"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("KUBECONFIG", s.var("KUBECONFIG"))
        .arg("cleanup")
        .args(args)
        .output()
        .expect("run regcred cleanup")
}

async fn create_secret(client: &kube::Client, ns: &str, name: &str, managed: bool) {
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: managed.then(|| {
                [(
                    "app.kubernetes.io/managed-by".to_owned(),
                    "regcred".to_owned(),
                )]
                .into()
            }),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/dockerconfigjson".into()),
        data: Some(
            [(
                ".dockerconfigjson".to_owned(),
                ByteString(br#"{"auths":{}}"#.to_vec()),
            )]
            .into(),
        ),
        ..Secret::default()
    };
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap_or_else(|e| panic!("create secret {ns}/{name}: {e}"));
}

async fn pull_secrets(client: &kube::Client, ns: &str, sa: &str) -> Vec<String> {
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .get(sa)
        .await
        .unwrap()
        .image_pull_secrets
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.name)
        .collect()
}

async fn exists(client: &kube::Client, ns: &str, name: &str) -> bool {
    get_secret(client, ns, name).await.is_some()
}

#[tokio::test]
async fn only_managed_secrets_and_their_entries_go() {
    let admin = stack().admin().await;
    let base = unique("cleanup");
    let (a, b, c) = (
        format!("{base}-a"),
        format!("{base}-b"),
        format!("{base}-c"),
    );
    // Outside the glob: a managed secret that must survive a scoped cleanup.
    let outside = unique("cleanup-outside");
    for ns in [&a, &b, &c, &outside] {
        create_namespace(&admin, ns, &[]).await;
    }
    // a: a managed and a foreign secret; SAs referencing both, and others.
    create_secret(&admin, &a, "regcred", true).await;
    create_secret(&admin, &a, "foreign", false).await;
    create_service_account(&admin, &a, "default", &["other", "regcred", "foreign"]).await;
    create_service_account(&admin, &a, "builder", &["foreign"]).await;
    // b: a managed secret of another name.
    create_secret(&admin, &b, "team-pull", true).await;
    create_service_account(&admin, &b, "default", &["team-pull"]).await;
    // c: a foreign secret named like regcred's, referenced: not regcred's, so untouched.
    create_secret(&admin, &c, "regcred", false).await;
    create_service_account(&admin, &c, "default", &["regcred"]).await;
    create_secret(&admin, &outside, "regcred", true).await;
    create_service_account(&admin, &outside, "default", &["regcred"]).await;

    let out = cleanup_as_admin(&["--namespace", &format!("{base}-*")]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(
        stdout(&out),
        "removed 2 secrets and 2 ServiceAccount references in 2 namespaces\n"
    );

    assert!(
        !exists(&admin, &a, "regcred").await,
        "managed secret removed"
    );
    assert!(exists(&admin, &a, "foreign").await, "foreign secret kept");
    assert_eq!(
        pull_secrets(&admin, &a, "default").await,
        ["other", "foreign"]
    );
    assert_eq!(pull_secrets(&admin, &a, "builder").await, ["foreign"]);
    assert!(!exists(&admin, &b, "team-pull").await);
    assert!(pull_secrets(&admin, &b, "default").await.is_empty());
    assert!(
        exists(&admin, &c, "regcred").await,
        "a foreign regcred is kept"
    );
    assert_eq!(pull_secrets(&admin, &c, "default").await, ["regcred"]);
    assert!(exists(&admin, &outside, "regcred").await, "out of scope");
    assert_eq!(pull_secrets(&admin, &outside, "default").await, ["regcred"]);

    // Nothing left to do: a second run removes nothing and succeeds.
    let again = cleanup_as_admin(&["--namespace", &format!("{base}-*")]);
    assert_eq!(again.status.code(), Some(0));
    assert_eq!(
        stdout(&again),
        "removed 0 secrets and 0 ServiceAccount references in 0 namespaces\n"
    );
}

#[tokio::test]
async fn a_dry_run_changes_nothing() {
    let admin = stack().admin().await;
    let ns = unique("cleanup-dry");
    create_namespace(&admin, &ns, &[]).await;
    create_secret(&admin, &ns, "regcred", true).await;
    create_secret(&admin, &ns, "foreign", false).await;
    create_service_account(&admin, &ns, "default", &["regcred", "foreign"]).await;

    let out = cleanup_as_admin(&["--namespace", &ns, "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!(
            "would remove regcred from serviceaccount {ns}/default imagePullSecrets\n\
             would delete secret {ns}/regcred\n\
             dry run: would have removed 1 secret and 1 ServiceAccount reference in 1 namespace\n"
        )
    );
    assert!(exists(&admin, &ns, "regcred").await);
    assert_eq!(
        pull_secrets(&admin, &ns, "default").await,
        ["regcred", "foreign"]
    );
}

#[tokio::test]
async fn the_charts_serviceaccount_may_not_clean_up() {
    // Its RBAC reads secrets by name only; cleanup needs to list them all, so it fails
    // before touching anything and says so.
    let admin = stack().admin().await;
    let ns = unique("cleanup-sa");
    create_namespace(&admin, &ns, &[]).await;
    create_secret(&admin, &ns, "regcred", true).await;
    let who = chart_identity(&admin, &["regcred"], true).await;
    let (mut cmd, _key) = regcred(&who);
    let out = cmd.args(["cleanup", "--namespace", &ns]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("list secrets managed by regcred"),
        "{}",
        stderr(&out)
    );
    assert!(exists(&admin, &ns, "regcred").await);

    let help = Command::new(env!("CARGO_BIN_EXE_regcred"))
        .args(["cleanup", "--help"])
        .output()
        .unwrap();
    assert!(
        stdout(&help).contains("Run it as a cluster admin"),
        "{}",
        stdout(&help)
    );
}
