//! Whose secret is it: foreign secrets, broken ones, deselected namespaces, ServiceAccounts
//! and namespaces on their way out.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::common::*;
use crate::world::*;

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
    let before = create_foreign_pull_secret(&admin, &ns, &name, &doc).await;
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
    let foreign_secret = create_foreign_pull_secret(&admin, &foreign, &name, &foreign_doc).await;
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
