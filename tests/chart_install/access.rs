//! `helm install` then `regcred sync` as the chart's ServiceAccount: what it may do, what it
//! is refused, and ServiceAccount access only with `serviceAccounts` configured.

use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams};

use super::*;

#[tokio::test]
async fn helm_install_then_regcred_syncs_as_the_charts_service_account() {
    let it = install_for_test("controller", &["default"]).await;
    let admin = &it.admin;
    it.assert_installed().await;

    let (a, b, c) = (it.ns("a"), it.ns("b"), it.ns("c"));
    for ns in [&a, &b, &c] {
        create_namespace(admin, ns, &[]).await;
        create_service_account(admin, ns, "default", &["keep-me"]).await;
    }
    // In c, a secret of regcred's name that regcred did not make: left alone, reported
    // with an Event (which needs the chart's events RBAC).
    create_foreign_secret(admin, &c, &it.secret).await;

    let out = it.regcred(&["sync"]).output().unwrap();
    let summary = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the foreign secret fails the pass: {summary}\n{}",
        stderr(&out)
    );
    assert!(
        summary.starts_with("synced 3 namespaces (2 written, 0 unchanged, 0 skipped, 1 failed)"),
        "{summary}\n{}",
        stderr(&out)
    );
    // (Not "403": unique names are hex and may contain it.)
    assert!(
        !stderr(&out).to_lowercase().contains("forbidden"),
        "{}",
        stderr(&out)
    );

    for ns in [&a, &b] {
        it.assert_served(ns, &["keep-me"]).await;
    }

    let foreign = get_secret(admin, &c, &it.secret).await.unwrap();
    assert!(
        foreign.metadata.labels.is_none(),
        "the foreign secret was left alone"
    );
    let events = Api::<Event>::namespaced(admin.clone(), &c)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(
        events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("ForeignSecret")),
        "no ForeignSecret Event in {c}: {:?}",
        events.items
    );

    // Again: reads by name only, and nothing to write.
    Api::<Secret>::namespaced(admin.clone(), &c)
        .delete(&it.secret, &DeleteParams::default())
        .await
        .unwrap();
    let out = it.regcred(&["sync"]).output().unwrap();
    let summary = stdout(&out);
    assert!(out.status.success(), "{summary}\n{}", stderr(&out));
    assert!(
        summary.starts_with("synced 3 namespaces (1 written, 2 unchanged, 0 skipped, 0 failed)"),
        "{summary}"
    );
}

/// What the chart's ServiceAccount must be allowed, as `VERB RESOURCE[.GROUP][/SUB] NS/NAME`
/// (an empty NS is cluster-wide, an empty NAME any name).
fn needed(own: &str, secret: &str) -> Vec<String> {
    [
        "get namespaces /default",
        "list namespaces /",
        "watch namespaces /",
        "create secrets team-a/",
        &format!("get secrets team-a/{secret}"),
        &format!("list secrets /{secret}"),
        &format!("watch secrets /{secret}"),
        &format!("patch secrets default/{secret}"),
        &format!("update secrets default/{secret}"),
        &format!("delete secrets default/{secret}"),
        "create events default/",
        "create events.events.k8s.io default/",
        "patch events.events.k8s.io default/",
        &format!("create leases.coordination.k8s.io {own}/"),
        &format!("get leases.coordination.k8s.io {own}/regcred"),
        &format!("update leases.coordination.k8s.io {own}/regcred"),
    ]
    .map(str::to_owned)
    .into()
}

/// What it must be refused: everything else, sampled where it matters most.
fn refused(own: &str) -> Vec<String> {
    [
        // Any other Secret, and secrets without the name.
        "get secrets default/other",
        &format!("get secrets {own}/{own}-token"),
        "list secrets default/",
        "list secrets /",
        "watch secrets /",
        "list secrets /other",
        "watch secrets default/other",
        "patch secrets default/other",
        "update secrets default/other",
        "delete secrets default/other",
        "deletecollection secrets default/",
        // Namespaces: read only.
        "create namespaces /",
        "patch namespaces /default",
        "delete namespaces /default",
        // ServiceAccounts and their tokens: not without serviceAccounts in the config.
        "get serviceaccounts default/default",
        "list serviceaccounts /",
        "patch serviceaccounts default/default",
        &format!("create serviceaccounts/token {own}/{own}"),
        // Events: write only.
        "list events default/",
        "delete events.events.k8s.io default/",
        // Leases: its own, in its own namespace.
        &format!("get leases.coordination.k8s.io {own}/kube-controller-manager"),
        &format!("update leases.coordination.k8s.io {own}/other"),
        &format!("delete leases.coordination.k8s.io {own}/regcred"),
        &format!("list leases.coordination.k8s.io {own}/"),
        "get leases.coordination.k8s.io kube-system/regcred",
        "create leases.coordination.k8s.io default/",
        // Anything else.
        &format!("get configmaps {own}/{own}"),
        "list pods /",
        &format!("create pods {own}/"),
        &format!("get deployments.apps {own}/{own}"),
        "list nodes /",
        "create clusterroles.rbac.authorization.k8s.io /",
        "bind clusterroles.rbac.authorization.k8s.io /cluster-admin",
        &format!("escalate roles.rbac.authorization.k8s.io {own}/{own}"),
        "impersonate users /admin",
        "create tokenreviews.authentication.k8s.io /",
    ]
    .map(str::to_owned)
    .into()
}

#[tokio::test]
async fn the_charts_service_account_is_refused_everything_else() {
    let it = install_for_test("controller", &[]).await;
    let own = it.release.as_str();
    for ask in needed(own, &it.secret) {
        assert!(it.may_ask(&ask).await, "{ask} should be allowed");
    }
    for ask in refused(own) {
        assert!(!it.may_ask(&ask).await, "{ask} should be refused");
    }

    // The same, through the API with the ServiceAccount's token.
    let client = it.who.client().await;
    let forbidden =
        |r: Result<_, kube::Error>| matches!(r, Err(kube::Error::Api(s)) if s.code == 403);
    assert!(forbidden(
        Api::<Secret>::all(client.clone())
            .list(&ListParams::default())
            .await
            .map(|_| ())
    ));
    assert!(forbidden(
        Api::<Secret>::namespaced(client.clone(), "default")
            .list(&ListParams::default())
            .await
            .map(|_| ())
    ));
    assert!(forbidden(
        Api::<Secret>::all(client.clone())
            .list(&ListParams::default().fields("metadata.name=other"))
            .await
            .map(|_| ())
    ));
    assert!(forbidden(
        Api::<ServiceAccount>::all(client.clone())
            .list(&ListParams::default())
            .await
            .map(|_| ())
    ));
    assert!(forbidden(
        Api::<ConfigMap>::namespaced(client.clone(), own)
            .get(&it.release)
            .await
            .map(|_| ())
    ));
    let by_name = Api::<Secret>::all(client.clone())
        .list(&ListParams::default().fields(&format!("metadata.name={}", it.secret)))
        .await;
    assert!(by_name.is_ok(), "list by name is allowed: {by_name:?}");
}

#[tokio::test]
async fn service_account_access_comes_only_with_service_accounts_in_the_config() {
    let it = install_for_test("cronjob", &["*"]).await;
    for verb in ["get", "list", "watch", "patch"] {
        assert!(
            it.may(verb, "serviceaccounts", Some("default"), None).await,
            "{verb}"
        );
    }
    for verb in ["create", "update", "delete"] {
        assert!(
            !it.may(verb, "serviceaccounts", Some("default"), Some("default"))
                .await,
            "{verb}"
        );
    }
    assert!(
        !it.may(
            "create",
            "serviceaccounts/token",
            Some("default"),
            Some("default")
        )
        .await
    );
    // cronjob mode: no Lease.
    assert!(
        !it.may(
            "create",
            "leases.coordination.k8s.io",
            Some(&it.release),
            None
        )
        .await
    );
    assert!(
        !it.may(
            "get",
            "leases.coordination.k8s.io",
            Some(&it.release),
            Some("regcred")
        )
        .await
    );
}
