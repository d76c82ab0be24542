//! `regcred check` against the real stack, run as ServiceAccounts holding exactly the RBAC
//! a test gives them: the chart's rules pass; take one permission away and exactly that row
//! fails, with a hint.

mod common;

use std::process::Output;

use common::helm::{install_policy, install_policy_for};
use common::*;
use k8s_openapi::api::rbac::v1::PolicyRule;
use serde_json::{Value, json};

const PRIVATE: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com";
const PATCH_SA: [&str; 2] = ["--service-account", "default"];

/// Runs `regcred check` as `who` for the private registry and ECR Public, with the lease in
/// `who`'s namespace; `before` sees the access key id its AWS calls are made with.
fn check(who: &Identity, extra: &[&str], before: impl FnOnce(&str)) -> Output {
    let (mut cmd, key) = regcred(who);
    before(&key);
    cmd.args([
        "check",
        "--registry",
        PRIVATE,
        "--registry",
        "public.ecr.aws",
    ])
    .args(["--lease-namespace", &who.namespace])
    .args(extra);
    cmd.output().expect("run regcred check")
}

fn json_report(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", stdout(out), stderr(out)))
}

fn failed_names(report: &Value) -> Vec<String> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn with_the_charts_rbac_every_check_passes() {
    let admin = stack().admin().await;
    let who = chart_identity(&admin, &["regcred"], true).await;
    install_policy(&who, &["regcred"]).await;
    let out = check(
        &who,
        &[&PATCH_SA[..], &["--output", "json"]].concat(),
        |_| {},
    );
    let report = json_report(&out);
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    assert_eq!(report["ok"], true);
    let names: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    // config, identity, two tokens, kubernetes, the admission policy, 25 - 6 permissions.
    assert_eq!(names.len(), 25, "{names:?}");
    for expected in [
        "config",
        "aws identity",
        "token ecr us-east-1",
        "token ecr-public us-east-1",
        "kubernetes",
        "can delete secrets/regcred",
        "can patch serviceaccounts",
        "can create events.events.k8s.io",
        "secret admission policy",
    ] {
        assert!(names.contains(&expected), "{expected} missing: {names:?}");
    }
    let lease = format!(
        "can update leases.coordination.k8s.io/regcred in {}",
        who.namespace
    );
    assert!(names.contains(&lease.as_str()), "{names:?}");
    let kubernetes = &report["checks"][4];
    assert_eq!(
        kubernetes["detail"],
        format!(
            "authenticated as system:serviceaccount:{}:{}",
            who.namespace, who.name
        )
    );

    // The same as a table.
    let out = check(&who, &PATCH_SA, |_| {});
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let table = stdout(&out);
    assert!(!table.contains('✗'), "{table}");
    assert_eq!(table.matches('✓').count(), 25, "{table}");
    assert!(table.ends_with("all 25 checks passed\n"), "{table}");
}

/// The chart's rules with one verb taken out of the rules that match `resource`.
fn without(rules: Vec<PolicyRule>, resource: &str, verb: &str) -> Vec<PolicyRule> {
    rules
        .into_iter()
        .map(|mut r| {
            if r.resources
                .as_ref()
                .is_some_and(|rs| rs.iter().any(|x| x == resource))
            {
                r.verbs.retain(|v| v != verb);
            }
            r
        })
        .collect()
}

#[tokio::test]
async fn a_missing_permission_shows_exactly_that_failure() {
    let admin = stack().admin().await;
    // Without `delete` on the named secret (cluster-wide).
    let home = unique("check-home");
    create_namespace(&admin, &home, &[]).await;
    let who = identity(
        &admin,
        &home,
        without(chart_cluster_rules(&["regcred"], true), "secrets", "delete"),
        chart_namespace_rules("regcred"),
    )
    .await;
    install_policy(&who, &["regcred"]).await;
    let out = check(&who, &PATCH_SA, |_| {});
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let table = stdout(&out);
    let failed: Vec<&str> = table.lines().filter(|l| l.starts_with('✗')).collect();
    assert_eq!(failed.len(), 1, "{table}");
    assert!(
        failed[0].starts_with("✗ can delete secrets/regcred "),
        "{table}"
    );
    let hint = table
        .lines()
        .skip_while(|l| !l.starts_with('✗'))
        .nth(1)
        .unwrap();
    assert!(
        hint.contains("hint: grant it with a ClusterRole")
            && hint.contains("verbs: [delete], resourceNames: [regcred]"),
        "{hint}"
    );
    assert!(table.ends_with("1 of 25 checks failed\n"), "{table}");

    // Without `update` on its Lease (in its own namespace).
    let home = unique("check-home");
    create_namespace(&admin, &home, &[]).await;
    let who = identity(
        &admin,
        &home,
        chart_cluster_rules(&["regcred"], true),
        without(chart_namespace_rules("regcred"), "leases", "update"),
    )
    .await;
    install_policy(&who, &["regcred"]).await;
    let out = check(
        &who,
        &[&PATCH_SA[..], &["--output", "json"]].concat(),
        |_| {},
    );
    assert_eq!(out.status.code(), Some(1));
    let report = json_report(&out);
    assert_eq!(report["ok"], false);
    assert_eq!(
        failed_names(&report),
        [format!(
            "can update leases.coordination.k8s.io/regcred in {home}"
        )]
    );
}

#[tokio::test]
async fn a_cronjob_needs_no_lease_and_no_serviceaccounts_without_patching() {
    let admin = stack().admin().await;
    let home = unique("check-home");
    create_namespace(&admin, &home, &[]).await;
    let who = identity(
        &admin,
        &home,
        chart_cluster_rules(&["regcred"], false),
        vec![],
    )
    .await;
    install_policy(&who, &["regcred"]).await;
    let cronjob = check(&who, &["--mode", "cronjob", "--output", "json"], |_| {});
    let report = json_report(&cronjob);
    assert_eq!(cronjob.status.code(), Some(0), "{report:#}");
    let names = report["checks"].as_array().unwrap();
    assert!(
        names
            .iter()
            .all(|c| !c["name"].as_str().unwrap().contains("leases")
                && !c["name"].as_str().unwrap().contains("serviceaccounts")),
        "{report:#}"
    );
    let controller = check(&who, &["--output", "json"], |_| {});
    let failed = failed_names(&json_report(&controller));
    assert_eq!(failed.len(), 3, "{failed:?}");
    assert!(failed.iter().all(|n| n.contains("leases")), "{failed:?}");
    assert_eq!(controller.status.code(), Some(1));
}

#[tokio::test]
async fn aws_failures_show_with_hints() {
    let admin = stack().admin().await;
    let who = chart_identity(&admin, &["regcred"], true).await;
    install_policy(&who, &["regcred"]).await;
    let out = check(
        &who,
        &[&PATCH_SA[..], &["--output", "json"]].concat(),
        |key| {
            stack().set_aws_key(key, &json!({"fail": "AccessDeniedException"}));
        },
    );
    assert_eq!(out.status.code(), Some(1));
    let report = json_report(&out);
    assert_eq!(
        failed_names(&report),
        ["token ecr us-east-1", "token ecr-public us-east-1"]
    );
    let checks = report["checks"].as_array().unwrap();
    let private = checks
        .iter()
        .find(|c| c["name"] == "token ecr us-east-1")
        .unwrap();
    assert!(
        private["detail"].as_str().unwrap().contains("AccessDenied"),
        "{private}"
    );
    assert!(
        private["hint"]
            .as_str()
            .unwrap()
            .contains("ecr:GetAuthorizationToken"),
        "{private}"
    );
    let public = checks
        .iter()
        .find(|c| c["name"] == "token ecr-public us-east-1")
        .unwrap();
    assert!(
        public["hint"]
            .as_str()
            .unwrap()
            .contains("sts:GetServiceBearerToken"),
        "{public}"
    );
}

#[tokio::test]
async fn a_bad_config_exits_2_and_says_why() {
    let admin = stack().admin().await;
    let who = chart_identity(&admin, &["regcred"], false).await;
    let (_dir, path) = config_file("secrets:\n  - registries: [docker.io]\n");
    let (mut cmd, key) = regcred(&who);
    let out = cmd.args(["check", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let table = stdout(&out);
    assert!(table.starts_with("✗ config "), "{table}");
    assert!(table.contains("secrets[0].registries[0]"), "{table}");
    assert!(table.contains("hint: "), "{table}");
    assert!(
        stack().aws_calls(&key).is_empty(),
        "nothing else was checked"
    );
}

/// Without the chart's admission policy, the chart's RBAC would let regcred's identity create
/// a service-account-token secret of its own name: check says so, with the fix.
#[tokio::test]
async fn without_the_admission_policy_that_row_fails_with_a_hint() {
    let admin = stack().admin().await;
    let who = chart_identity(&admin, &["regcred"], true).await;
    let out = check(
        &who,
        &[&PATCH_SA[..], &["--output", "json"]].concat(),
        |_| {},
    );
    assert_eq!(out.status.code(), Some(1));
    let report = json_report(&out);
    assert_eq!(failed_names(&report), ["secret admission policy"]);
    let row = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "secret admission policy")
        .unwrap();
    assert!(
        row["detail"]
            .as_str()
            .unwrap()
            .contains("kubernetes.io/service-account-token"),
        "{row}"
    );
    let hint = row["hint"].as_str().unwrap();
    assert!(
        hint.contains("ValidatingAdmissionPolicy") && hint.contains("1.30"),
        "{hint}"
    );
    assert!(
        get_secret(&admin, &who.namespace, "regcred")
            .await
            .is_none(),
        "the probe was a dry run"
    );
}

/// `check` knows the formats: it asks for each secret an entry stands for (per registry
/// host for the Argo CD formats) and shows each with its format; with the chart's rules for
/// those names everything passes, and without one of them exactly that row fails.
#[tokio::test]
async fn the_secrets_of_every_format_are_checked_by_their_own_names() {
    let admin = stack().admin().await;
    let (argo, plain) = (unique("argo"), unique("plain"));
    let derived = format!("{argo}-{PRIVATE}");
    let (_dir, config) = config_file(&format!(
        "secrets:\n  - name: {argo}\n    format: argocd-repository\n    registries: [{PRIVATE}]\n  - name: {plain}\n    format: basic-auth\n    registries: [public.ecr.aws]\n"
    ));
    let run = |who: &Identity| {
        let (mut cmd, _) = regcred(who);
        let out = cmd
            .args(["check", "--mode", "cronjob", "--output", "json", "--config"])
            .arg(&config)
            .args(["--lease-namespace", &who.namespace])
            .output()
            .unwrap();
        (out.status.code(), json_report(&out))
    };
    let who = chart_identity(&admin, &[&derived, &plain], false).await;
    let secrets = json!([
        {"name": argo, "format": "argocd-repository", "registries": [PRIVATE]},
        {"name": plain, "format": "basic-auth", "registries": ["public.ecr.aws"]},
    ]);
    install_policy_for(&who, &secrets, &plain).await;
    let (code, report) = run(&who);
    assert_eq!(code, Some(0), "{report:#}");
    let names: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for expected in [
        format!("can patch secrets/{derived}"),
        format!("can delete secrets/{plain}"),
    ] {
        assert!(names.contains(&expected.as_str()), "{expected}: {names:?}");
    }
    assert!(!names.contains(&format!("can patch secrets/{argo}").as_str()));
    let config_row = report["checks"][0]["detail"].as_str().unwrap();
    assert!(
        config_row.starts_with(&format!(
            "secrets {derived} (argocd-repository), {plain} (basic-auth);"
        )),
        "{config_row}"
    );

    // The entry's own name is not enough: the derived name is what regcred writes.
    let who = chart_identity(&admin, &[&argo, &plain], false).await;
    install_policy_for(&who, &secrets, &plain).await;
    let (code, report) = run(&who);
    assert_eq!(code, Some(1));
    let failed = failed_names(&report);
    assert_eq!(failed.len(), 6, "{failed:?}");
    assert!(
        failed
            .iter()
            .all(|f| f.ends_with(&format!("secrets/{derived}"))),
        "{failed:?}"
    );
}
