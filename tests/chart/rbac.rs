//! The chart's RBAC and admission policy: exactly the harness's least privilege, names and
//! types derived for every format, alerts keyed on the leader.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::json;

use super::*;

/// The chart's RBAC is the harness's `chart_cluster_rules`/`chart_namespace_rules` — the
/// rules every other integration test runs regcred under — so the two cannot drift.
#[test]
fn the_charts_rbac_is_the_harness_least_privilege() {
    let cases = [
        (json!({}), vec!["regcred"], false, "regcred"),
        (
            json!({
                "config": {"secrets": [
                    {"name": "regcred", "registries": ["public.ecr.aws"], "serviceAccounts": ["default"]},
                    {"name": "ecr-eu", "registries": ["210987654321.dkr.ecr.eu-west-1.amazonaws.com"]},
                    {"registries": ["public.ecr.aws"], "namespaces": {"include": ["x-*"]}},
                ]},
                "leaderElection": {"leaseName": "regcred-lease"},
            }),
            vec!["ecr-eu", "regcred"],
            true,
            "regcred-lease",
        ),
        (
            secrets_values(
                &json!([{"name": "a", "registries": ["public.ecr.aws"], "serviceAccounts": []}]),
            ),
            vec!["a"],
            false,
            "regcred",
        ),
        // Former names stay in the RBAC (regcred removes their secrets); ServiceAccount
        // access kept by rbac.serviceAccounts without any entry patching.
        (
            json!({
                "config": {"secrets": [
                    {"name": "b", "registries": ["public.ecr.aws"], "formerNames": ["a", "old"]},
                ]},
                "rbac": {"serviceAccounts": true},
            }),
            vec!["a", "b", "old"],
            true,
            "regcred",
        ),
    ];
    for (values, names, patch_sas, lease) in cases {
        let objects = render(&values);
        assert_eq!(
            rules(one(&objects, "ClusterRole")),
            chart_cluster_rules(&names, patch_sas),
            "{values}"
        );
        assert_eq!(
            rules(one(&objects, "Role")),
            chart_namespace_rules(lease),
            "{values}"
        );
        let mut cron = values.clone();
        cron["mode"] = json!("cronjob");
        let cron = render(&cron);
        assert_eq!(
            rules(one(&cron, "ClusterRole")),
            chart_cluster_rules(&names, patch_sas)
        );
        assert!(
            !kinds(&cron).contains("Role"),
            "a Lease Role in cronjob mode"
        );
    }
}

/// The admission policy: by default, for the chart's ServiceAccount, with every secret name
/// the RBAC names (former ones too) and regcred's type and label; gone when disabled.
#[test]
fn the_admission_policy_holds_the_charts_service_account_to_regcreds_secrets() {
    let objects = render(&json!({
        "config": {"secrets": [
            {"name": "b", "registries": ["public.ecr.aws"], "formerNames": ["a"]},
            {"name": "c", "registries": ["public.ecr.aws"]},
        ]},
    }));
    let policy = one(&objects, "ValidatingAdmissionPolicy");
    let binding = one(&objects, "ValidatingAdmissionPolicyBinding");
    assert_eq!(binding["spec"]["policyName"], policy["metadata"]["name"]);
    assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]));
    assert_eq!(policy["spec"]["failurePolicy"], "Fail");
    assert_eq!(
        policy["spec"]["matchConditions"][0]["expression"],
        r#"request.userInfo.username == "system:serviceaccount:regcred:regcred""#
    );
    let variables = &policy["spec"]["variables"];
    assert_eq!(variables[0]["expression"], r#"["a","b","c"]"#);
    assert_eq!(
        variables[1]["expression"],
        r#"{"a":["kubernetes.io/dockerconfigjson"],"b":["kubernetes.io/dockerconfigjson"],"c":["kubernetes.io/dockerconfigjson"]}"#
    );
    assert_eq!(
        policy["spec"]["matchConstraints"]["resourceRules"][0]["operations"],
        json!(["CREATE", "UPDATE"])
    );
    let off = render(&json!({"admissionPolicy": {"enabled": false}}));
    assert!(!kinds(&off).contains("ValidatingAdmissionPolicy"));
    assert!(!kinds(&off).contains("ValidatingAdmissionPolicyBinding"));
}

/// Entries of every format, with hosts as people write them (upper case, a port, spaces):
/// the chart names in its RBAC and its admission policy exactly the secrets regcred derives
/// from the same configuration, each with the one type regcred writes under that name.
#[test]
fn the_chart_derives_regcreds_own_names_and_types_for_every_format() {
    let secrets = json!([
        {"name": "pull", "registries": ["public.ecr.aws"], "formerNames": ["old-pull"]},
        {"name": "argo", "format": "argocd-repository", "registries": [
            "123456789012.DKR.ecr.us-east-1.amazonaws.com",
            {"host": " Charts.Internal.Example:5000", "accountId": "123456789012", "region": "us-east-1"},
        ]},
        {"name": "argo", "format": "argocd-repo-creds", "namespaces": {"include": ["ci"]},
         "registries": ["210987654321.dkr.ecr.eu-west-1.amazonaws.com"]},
        {"name": "tekton", "format": "basic-auth", "registries": ["public.ecr.aws"]},
        {"format": "argocd-repo-creds", "registries": ["public.ecr.aws"]},
    ]);
    let objects = render(&secrets_values(&secrets));
    let text = one(&objects, "ConfigMap")["data"]["config.yaml"]
        .as_str()
        .unwrap();
    let config = regcred::config::Config::from_yaml(Path::new("config.yaml"), text)
        .expect("regcred accepts it");
    let mut want: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in &config.secrets {
        want.entry(s.name.to_string())
            .or_default()
            .insert(s.format.secret_type().to_owned());
    }
    for name in &config.former_names {
        want.entry(name.to_string())
            .or_default()
            .insert("kubernetes.io/dockerconfigjson".to_owned());
    }
    assert_eq!(
        want.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "argo-123456789012.dkr.ecr.us-east-1.amazonaws.com",
            "argo-210987654321.dkr.ecr.eu-west-1.amazonaws.com",
            "argo-charts.internal.example-5000",
            "old-pull",
            "pull",
            "regcred-public.ecr.aws",
            "tekton",
        ]
    );
    let names: Vec<&str> = want.keys().map(String::as_str).collect();
    assert_eq!(
        rules(one(&objects, "ClusterRole")),
        chart_cluster_rules(&names, false)
    );
    let policy = one(&objects, "ValidatingAdmissionPolicy");
    let types: BTreeMap<String, BTreeSet<String>> = serde_json::from_str(
        policy["spec"]["variables"][1]["expression"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(types, want);
    assert_eq!(
        types["tekton"],
        BTreeSet::from(["kubernetes.io/basic-auth".to_owned()])
    );

    // What regcred would refuse, the chart refuses first.
    for (entry, complaint) in [
        (
            json!({"format": "basic-auth", "registries": ["public.ecr.aws", "123456789012.dkr.ecr.us-east-1.amazonaws.com"]}),
            "config.secrets[0].registries: format basic-auth holds one registry's",
        ),
        (
            json!({"format": "argocd-repository", "registries": ["public.ecr.aws"], "serviceAccounts": ["default"]}),
            "config.secrets[0].serviceAccounts: only a dockerconfigjson secret can be an image pull secret",
        ),
        (
            json!({"format": "argocd", "registries": ["public.ecr.aws"]}),
            "at '/config/secrets/0/format'",
        ),
    ] {
        let err = render_fails(&secrets_values(&json!([entry])));
        assert!(err.contains(complaint), "{entry}: {err}");
    }
}

/// The token and selection alerts count only the leader's series.
#[test]
fn the_alerts_key_on_the_leader() {
    let objects = render(&json!({"prometheusRule": {"enabled": true}}));
    let rules = one(&objects, "PrometheusRule")["spec"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .clone();
    let mut keyed = 0;
    for rule in &rules {
        let expr = rule["expr"].as_str().unwrap();
        if expr.contains("regcred_token_expiry_timestamp_seconds")
            || expr.contains("regcred_namespaces_selected")
        {
            assert!(
                expr.contains("and on (instance) (regcred_leader == 1)"),
                "{}: {expr}",
                rule["alert"]
            );
            keyed += 1;
        }
    }
    assert_eq!(keyed, 2, "the expiry alerts");
    assert!(rules.iter().any(|r| r["alert"] == "RegcredWatchFailing"));
}
