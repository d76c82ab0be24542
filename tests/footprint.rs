//! What `regcred run` asks of the API server (issue 15), read back from the audit log of a
//! private cluster: ServiceAccounts watched by their configured names only, while references
//! outside those names are still mended; a missing secret created by a plain create; writes
//! paced when asked. Memory and API-server CPU are measured by `make bench`, not here.

mod common;

use std::time::Duration;

use common::audit::{audit_log, audited_cluster, requests_by, writes_by};
use common::*;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;

const RECORD: &str = "regcred.io/image-pull-secrets";
const SELECTED: (&str, &str) = ("regcred-test/serve", "on");

/// A ServiceAccount holding these references, and regcred's record of `recorded` (as an
/// earlier configuration that listed it would have left it).
async fn account(
    admin: &kube::Client,
    ns: &str,
    name: &str,
    refs: &[&str],
    recorded: Option<&str>,
) {
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            annotations: recorded.map(|r| [(RECORD.to_owned(), r.to_owned())].into()),
            ..ObjectMeta::default()
        },
        image_pull_secrets: Some(
            refs.iter()
                .map(|n| k8s_openapi::api::core::v1::LocalObjectReference {
                    name: (*n).to_owned(),
                })
                .collect(),
        ),
        ..ServiceAccount::default()
    };
    Api::<ServiceAccount>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &sa)
        .await
        .expect("create serviceaccount");
}

/// `serviceAccounts: [builder]`: regcred watches and lists ServiceAccounts only by that name
/// (the field selector is in every watch and list but the one metadata-only list of a term's
/// start, and the one of a namespace whose secret it deletes). Still: `old`, which an earlier
/// configuration listed, loses regcred's reference (the term's first list found its record);
/// `ci`'s own reference stays while the secret does; and when a namespace is deselected its
/// secret goes with every reference to it, `ci`'s too. Each secret was made by a plain
/// create, not an apply.
#[tokio::test]
async fn service_accounts_are_watched_by_name_and_the_others_still_mended() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, log) = audited_cluster(dir.path());
    let admin = cluster.admin().await;
    let secret = unique("pull");
    let prefix = unique("footprint");
    let who = chart_identity(&admin, &[&secret], true).await;
    cluster.point_at_me(&who);
    let (kept, dropped) = (format!("{prefix}-kept"), format!("{prefix}-dropped"));
    for ns in [&kept, &dropped] {
        create_namespace(&admin, ns, &[SELECTED]).await;
        account(&admin, ns, "builder", &["other"], None).await;
        account(&admin, ns, "ci", &[&secret], None).await;
    }
    account(&admin, &kept, "old", &["other", &secret], Some(&secret)).await;
    let (_config_dir, config) = config_file(&format!(
        "secrets:\n  - name: {secret}\n    registries:\n{}    namespaces:\n      include: [\"{prefix}-*\"]\n      selector: \"{}={}\"\n    serviceAccounts: [builder]\n",
        registry_alias_yaml(),
        SELECTED.0,
        SELECTED.1
    ));
    let run = run_as(&who, &config, &[]);
    run.wait_ready(Duration::from_mins(1)).await;
    wait_for("references in line", Duration::from_secs(20), || async {
        let done = pull_secret_names(&admin, &kept, "builder").await == ["other", secret.as_str()]
            && pull_secret_names(&admin, &kept, "old").await == ["other"]
            && pull_secret_names(&admin, &dropped, "builder").await == ["other", secret.as_str()];
        done.then_some(())
    })
    .await;
    assert_eq!(
        pull_secret_names(&admin, &kept, "ci").await,
        [secret.as_str()],
        "a reference someone else made stays while the secret does"
    );

    // Deselected: the secret goes, and every reference to it.
    Api::<Namespace>::all(admin.clone())
        .patch(
            &dropped,
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": {SELECTED.0: "off"}}})),
        )
        .await
        .unwrap();
    wait_for(
        "the deselected namespace emptied",
        Duration::from_secs(20),
        || async {
            let gone = get_secret(&admin, &dropped, &secret).await.is_none()
                && pull_secret_names(&admin, &dropped, "ci").await.is_empty()
                && pull_secret_names(&admin, &dropped, "builder").await == ["other"];
            gone.then_some(())
        },
    )
    .await;
    assert!(get_secret(&admin, &kept, &secret).await.is_some());
    drop(run);

    let audit = audit_log(&log);
    let by_name = format!("fieldSelector=metadata.name%3D{}", "builder");
    let unselected: Vec<&str> = requests_by(&audit, &who, "serviceaccounts")
        .into_iter()
        .filter(|a| matches!(a.verb.as_str(), "list" | "watch"))
        .filter(|a| !a.uri.contains(&by_name))
        .map(|a| a.uri.as_str())
        .collect();
    let namespaced = format!("/namespaces/{dropped}/serviceaccounts");
    assert!(
        unselected
            .iter()
            .all(|uri| uri.starts_with("/api/v1/serviceaccounts?") || uri.contains(&namespaced)),
        "only the term's list and the deselected namespace's list go without the name: {unselected:#?}"
    );
    assert!(
        !unselected.iter().any(|uri| uri.contains("watch=")),
        "every watch is by name: {unselected:#?}"
    );
    let creates: Vec<&str> = writes_by(&audit, &who, "secrets")
        .into_iter()
        .filter(|a| a.namespace == kept || a.namespace == dropped)
        .map(|a| a.verb.as_str())
        .collect();
    assert_eq!(
        creates,
        ["create", "create", "delete"],
        "a missing secret is created by a plain create"
    );
}

/// `--max-writes-per-second 4`: eight namespaces created at once get their secrets one
/// after another, a quarter of a second apart (the audit log's arrival times span at least
/// 1.5 s instead of a few milliseconds).
#[tokio::test]
async fn writes_are_paced_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, log) = audited_cluster(dir.path());
    let admin = cluster.admin().await;
    let secret = unique("pull");
    let prefix = unique("paced");
    let who = chart_identity(&admin, &[&secret], false).await;
    cluster.point_at_me(&who);
    let (_config_dir, config) = config_file(&format!(
        "secrets:\n  - name: {secret}\n    registries:\n{}    namespaces:\n      include: [\"{prefix}-*\"]\n",
        registry_alias_yaml()
    ));
    let run = run_as(&who, &config, &["--max-writes-per-second", "4"]);
    run.wait_ready(Duration::from_mins(1)).await;
    let names: Vec<String> = (0..8).map(|i| format!("{prefix}-{i}")).collect();
    create_namespaces_at_once(&admin, &names, &[], 8).await;
    wait_for("every secret written", Duration::from_secs(30), || async {
        let n = Api::<Secret>::all(admin.clone())
            .list(&ListParams::default().fields(&format!("metadata.name={secret}")))
            .await
            .unwrap()
            .items
            .len();
        (n == names.len()).then_some(())
    })
    .await;
    drop(run);
    let audit = audit_log(&log);
    let arrivals: Vec<jiff::Timestamp> = writes_by(&audit, &who, "secrets")
        .into_iter()
        .map(|a| a.received)
        .collect();
    assert_eq!(arrivals.len(), names.len(), "one create each");
    let span = arrivals
        .iter()
        .max()
        .unwrap()
        .duration_since(*arrivals.iter().min().unwrap());
    assert!(
        span >= jiff::SignedDuration::from_millis(1500),
        "8 writes at 4/s span at least 1.75 s (less a first one sent late): {span:?}"
    );
}
