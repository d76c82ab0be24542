//! Odd load and odd objects: a flood of namespaces, malformed secrets already in the
//! cluster, ServiceAccounts edited while regcred patches them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;

use super::*;

/// 500 namespaces created at once (100 requests in flight) under a running controller: all
/// get their secret within a bounded time, from the one token it already held, each written
/// once.
#[tokio::test]
async fn a_flood_of_500_namespaces_gets_secrets_from_one_token_call() {
    let cluster = PrivateCluster::start(&[]);
    let w = World::new(Some(&cluster), false, false, "", "").await;
    let (run, key) = w.start(|_, _| {}, &[]);
    run.wait_ready(Duration::from_mins(1)).await;
    let names: Vec<String> = (0..500).map(|i| w.ns(&format!("{i:03}"))).collect();
    let t0 = Instant::now();
    create_namespaces_at_once(&w.admin, &names, &[], 100).await;
    let created = t0.elapsed();
    w.wait_served(&names, Duration::from_mins(3)).await;
    let took = t0.elapsed();
    eprintln!("500 namespaces created in {created:?}; all served {took:?} after the first");
    assert!(took < Duration::from_secs(90), "{took:?}");
    assert_eq!(
        stack().token_calls(&key),
        1,
        "one token call for all of them"
    );
    assert!(
        is(
            run.metric("regcred_secret_writes_total{result=\"created\"}"),
            500.0
        ),
        "each written once: {}",
        run.metric("regcred_secret_writes_total{result=\"created\"}")
    );
    assert!(is(run.metric("regcred_namespaces_selected"), 500.0));
    w.assert_nothing_lost(&names).await;
    assert!(run.is_ready());
}

/// A secret's data: key and bytes.
type Data<'a> = Vec<(&'a str, &'a [u8])>;

fn secret_object(name: &str, managed: bool, type_: &str, data: &[(&str, &[u8])]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: managed.then(|| [(MANAGED_BY.to_owned(), "regcred".to_owned())].into()),
            ..ObjectMeta::default()
        },
        type_: Some(type_.to_owned()),
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.to_vec())))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// A namespace of the world holding a secret of the world's name in this shape.
async fn plant(
    w: &World,
    suffix: &str,
    managed: bool,
    type_: &str,
    data: &Data<'_>,
) -> (String, Secret) {
    let ns = w.namespaces(&[suffix]).await.remove(0);
    let created = Api::<Secret>::namespaced(w.admin.clone(), &ns)
        .create(
            &PostParams::default(),
            &secret_object(&w.secret, managed, type_, data),
        )
        .await
        .unwrap_or_else(|e| panic!("{suffix}: {e}"));
    (ns, created)
}

/// Same-name secrets in bad shapes, present before `run` starts: regcred's own (labelled)
/// of the wrong type with garbage, with `null`, a non-object `auths`, a non-object entry,
/// `{}`, entries missing keys, a registry missing, no `.dockerconfigjson` at all: all are
/// repaired. Someone else's (unlabelled) in the same bad shapes are left byte for byte and
/// reported (a ForeignSecret Event in each namespace, the `foreign` metric).
#[tokio::test]
async fn malformed_secrets_are_repaired_if_regcreds_and_reported_if_not() {
    let w = World::new(None, true, false, "", "").await;
    let alias = w.hosts[0].clone();
    let auths = |entries: serde_json::Value| json!({ "auths": entries }).to_string();
    let entries = |pairs: Vec<(&str, serde_json::Value)>| {
        serde_json::Value::Object(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    };
    let partial = auths(entries(vec![
        (&alias, json!({"username": "AWS"})),
        (PUBLIC, json!({"username": "AWS", "password": "x"})),
    ]));
    let one_host = auths(entries(vec![(
        PUBLIC,
        json!({"username": "AWS", "password": "p", "auth": "QVdTOnA="}),
    )]));
    let not_object = auths(entries(vec![(&alias, json!("notobj"))]));
    let garbage: &[u8] = b"\x00\xffnot json{{";
    let cases: Vec<(&str, &str, Data)> = vec![
        (
            "opaque-garbage",
            "Opaque",
            vec![(".dockerconfigjson", garbage)],
        ),
        ("opaque-nokey", "Opaque", vec![("other", &b"x"[..])]),
        (
            "null",
            DOCKERCONFIG_TYPE,
            vec![(".dockerconfigjson", &b"null"[..])],
        ),
        (
            "auths-string",
            DOCKERCONFIG_TYPE,
            vec![(".dockerconfigjson", &br#"{"auths":"x"}"#[..])],
        ),
        (
            "entry-string",
            DOCKERCONFIG_TYPE,
            vec![(".dockerconfigjson", not_object.as_bytes())],
        ),
        (
            "empty",
            DOCKERCONFIG_TYPE,
            vec![(".dockerconfigjson", &b"{}"[..])],
        ),
        (
            "missing-keys",
            DOCKERCONFIG_TYPE,
            vec![(".dockerconfigjson", partial.as_bytes())],
        ),
        (
            "missing-host",
            DOCKERCONFIG_TYPE,
            vec![(".dockerconfigjson", one_host.as_bytes())],
        ),
    ];
    let mut managed = Vec::new();
    let mut foreign = BTreeMap::new();
    for (case, type_, data) in &cases {
        managed.push(plant(&w, &format!("m-{case}"), true, type_, data).await.0);
        let (ns, created) = plant(&w, &format!("f-{case}"), false, type_, data).await;
        foreign.insert(ns, created);
    }

    let (run, _key) = w.start(|_, _| {}, &[]);
    run.wait_ready(Duration::from_mins(1)).await;
    w.wait_served(&managed, Duration::from_secs(30)).await;
    w.assert_nothing_lost(&managed).await;
    for (ns, created) in &foreign {
        wait_for_event(&w.admin, ns, "ForeignSecret", Duration::from_secs(30)).await;
        let now = w.secret_in(ns).await.expect("still there");
        assert_eq!(
            now.metadata.resource_version, created.metadata.resource_version,
            "{ns}: untouched"
        );
        assert_eq!(now.data, created.data, "{ns}");
    }
    assert!(
        run.metric("regcred_secret_writes_total{result=\"foreign\"}") >= 8.0,
        "foreign secrets counted"
    );
}

/// Edits the other writers make to each ServiceAccount.
const EDITS: usize = 40;

/// Two writers hammering ServiceAccount "builder": one read-modify-writes `imagePullSecrets`
/// (PUT with resourceVersion, again on conflict) to append `other-0..EDITS`, one
/// merge-patches annotations `edit-0..EDITS`.
fn hammer(sas: Api<ServiceAccount>) -> [tokio::task::JoinHandle<()>; 2] {
    let entries = tokio::spawn({
        let sas = sas.clone();
        async move {
            for i in 0..EDITS {
                loop {
                    let mut sa = sas.get("builder").await.unwrap();
                    sa.image_pull_secrets.get_or_insert_with(Vec::new).push(
                        k8s_openapi::api::core::v1::LocalObjectReference {
                            name: format!("other-{i}"),
                        },
                    );
                    match sas.replace("builder", &PostParams::default(), &sa).await {
                        Ok(_) => break,
                        Err(kube::Error::Api(e)) if e.code == 409 => {}
                        Err(e) => panic!("replace: {e}"),
                    }
                }
            }
        }
    });
    let annotations = tokio::spawn(async move {
        for i in 0..EDITS {
            let patch = json!({"metadata": {"annotations": {format!("edit-{i}"): "x"}}});
            sas.patch("builder", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap();
        }
    });
    [entries, annotations]
}

/// One ServiceAccount per namespace hammered by two other writers while regcred adds its
/// entry: one read-modify-writes `imagePullSecrets` (guarded by resourceVersion, retrying on
/// conflict) to add its own entries, one merge-patches annotations. The namespaces become
/// selected (by label) only once the hammering runs, so regcred's guarded patch meets
/// conflicts. In the end each list holds regcred's entry exactly once and every other
/// writer's entry and annotation is there.
#[tokio::test]
async fn a_service_account_edited_concurrently_keeps_every_edit_and_one_reference() {
    let label = unique("sa-hammer");
    let w = World::new(
        None,
        false,
        true,
        &format!("      selector: \"fault-sa={label}\"\n    serviceAccounts: [\"builder\"]\n"),
        "refresh:\n  retryMin: 1s\n  retryMax: 2s\n",
    )
    .await;
    let names = w.namespaces(&["a", "b", "c", "d"]).await;
    for ns in &names {
        create_service_account(&w.admin, ns, "builder", &["first"]).await;
    }
    let (run, _key) = w.start(
        |cmd, _| {
            cmd.env("RUST_LOG", "info,regcred=debug");
        },
        &[],
    );
    run.wait_ready(Duration::from_mins(1)).await;

    let mut hammers = Vec::new();
    for ns in &names {
        hammers.extend(hammer(Api::namespaced(w.admin.clone(), ns)));
    }
    // Selected now, while the hammering runs.
    for ns in &names {
        Api::<k8s_openapi::api::core::v1::Namespace>::all(w.admin.clone())
            .patch(
                ns,
                &PatchParams::default(),
                &Patch::Merge(&json!({"metadata": {"labels": {"fault-sa": label}}})),
            )
            .await
            .unwrap();
    }
    for h in hammers {
        h.await.unwrap();
    }
    let names_of = |sa: &ServiceAccount| -> Vec<String> {
        sa.image_pull_secrets
            .iter()
            .flatten()
            .map(|r| r.name.clone())
            .collect()
    };
    for ns in &names {
        let sas = Api::<ServiceAccount>::namespaced(w.admin.clone(), ns);
        let sa = wait_for("regcred's entry", Duration::from_secs(30), || async {
            let sa = sas.get("builder").await.ok()?;
            names_of(&sa).contains(&w.secret).then_some(sa)
        })
        .await;
        let list = names_of(&sa);
        assert_eq!(
            list.iter().filter(|n| **n == w.secret).count(),
            1,
            "{ns}: regcred's entry once: {list:?}"
        );
        let mut wanted: Vec<String> = (0..EDITS).map(|i| format!("other-{i}")).collect();
        wanted.insert(0, "first".into());
        let others: Vec<String> = list.into_iter().filter(|n| *n != w.secret).collect();
        assert_eq!(others, wanted, "{ns}: every other entry kept, in order");
        let annotations = sa.metadata.annotations.unwrap_or_default();
        for i in 0..EDITS {
            assert!(
                annotations.contains_key(&format!("edit-{i}")),
                "{ns}: edit-{i}"
            );
        }
    }
    w.assert_nothing_lost(&names).await;
    let conflicts = run
        .log_text()
        .matches("serviceaccount changed meanwhile")
        .count();
    eprintln!("regcred met {conflicts} conflicts and retried");
    assert!(
        conflicts > 0,
        "the hammering never made regcred's patch conflict"
    );
}
