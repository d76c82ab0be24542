//! The Helm chart and the plain manifests: they lint and render in both modes, grant exactly
//! the spec's least privilege, and `deploy/` is the chart's default render. What the
//! installed chart lets regcred do on the real stack is in `tests/chart_install.rs`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use common::helm::*;
use common::*;
use k8s_openapi::api::rbac::v1::PolicyRule;
use serde_json::{Value, json};

fn kinds(objects: &[Value]) -> BTreeSet<String> {
    objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap().to_owned())
        .collect()
}

#[track_caller]
fn one<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<_> = objects.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected one {kind}, got {}", found.len());
    found[0]
}

fn rules(role: &Value) -> Vec<PolicyRule> {
    serde_json::from_value(role["rules"].clone()).expect("rules")
}

fn container(pod_spec: &Value) -> &Value {
    let containers = pod_spec["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1, "one container");
    &containers[0]
}

fn env_names(container: &Value) -> BTreeSet<String> {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect()
}

fn env_var<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("env {name} missing"))
}

fn secrets_values(secrets: &Value) -> Value {
    json!({ "config": { "secrets": secrets } })
}

/// What every pod the chart makes must look like, whatever the mode.
#[track_caller]
fn assert_hardened(pod: &Value, service_account: &str) {
    assert_eq!(pod["serviceAccountName"], service_account);
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = container(pod);
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert!(sc["capabilities"].get("add").is_none());
    // The one API token: short-lived, projected, mounted where the in-cluster config looks.
    let mounts = c["volumeMounts"].as_array().unwrap();
    let api = mounts
        .iter()
        .find(|m| m["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount")
        .expect("API token mount");
    assert_eq!(api["readOnly"], true);
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == api["name"])
        .unwrap();
    let sources = volume["projected"]["sources"].as_array().unwrap();
    assert_eq!(sources[0]["serviceAccountToken"]["expirationSeconds"], 3600);
    assert!(
        mounts
            .iter()
            .any(|m| m["mountPath"] == "/etc/regcred" && m["readOnly"] == true)
    );
}

// ---------------------------------------------------------------------------- lint and render

#[test]
fn helm_lint_passes_for_both_modes_and_catches_bad_values() {
    let chart = chart_dir();
    let chart = chart.to_str().unwrap();
    for values in [
        json!({}),
        json!({"mode": "cronjob"}),
        json!({"mode": "cronjob", "aws": {"existingSecret": {"name": "aws"}}}),
        json!({"aws": {"irsaRoleArn": "arn:aws:iam::123456789012:role/regcred"},
               "podDisruptionBudget": {"enabled": true}, "serviceMonitor": {"enabled": true},
               "prometheusRule": {"enabled": true}}),
    ] {
        let file = values_file(&values);
        let out = helm(&[
            "lint",
            "--strict",
            chart,
            "-f",
            file.path().to_str().unwrap(),
        ]);
        let text = ok(&format!("helm lint with {values}"), &out);
        assert!(
            text.contains("1 chart(s) linted, 0 chart(s) failed"),
            "{text}"
        );
    }
    // values.schema.json: values regcred could never run with fail lint (and install).
    for (values, complaint) in [
        (
            json!({"mode": "daemonset"}),
            "at '/mode': value must be one of 'controller', 'cronjob'",
        ),
        (
            secrets_values(
                &json!([{"registries": ["public.ecr.aws"], "serviceAccount": ["default"]}]),
            ),
            "additional properties 'serviceAccount' not allowed",
        ),
        (
            secrets_values(&json!([{"name": "regcred", "registries": []}])),
            "at '/config/secrets/0/registries'",
        ),
    ] {
        let file = values_file(&values);
        let out = helm(&["lint", chart, "-f", file.path().to_str().unwrap()]);
        assert!(!out.status.success(), "lint accepted {values}");
        assert!(
            stdout(&out).contains(complaint),
            "{values}: {}",
            stdout(&out)
        );
    }
}

/// The README's example configuration is valid chart values, and the chart hands it to
/// regcred unchanged.
#[test]
fn the_readmes_example_config_passes_the_schema_and_regcred() {
    let readme = std::fs::read_to_string(stack().root.join("README.md")).unwrap();
    let example = readme
        .split("```yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a YAML example in the README");
    let config: Value = serde_saphyr::from_str(example).unwrap();
    assert!(config["secrets"].is_array(), "{example}");
    let objects = render(&json!({ "config": config }));
    let text = one(&objects, "ConfigMap")["data"]["config.yaml"]
        .as_str()
        .unwrap();
    let rendered: Value = serde_saphyr::from_str(text).unwrap();
    assert_eq!(rendered, config);
    regcred::config::Config::from_yaml(Path::new("config.yaml"), text).expect("regcred accepts it");
}

#[test]
fn controller_mode_renders_a_leader_elected_hardened_deployment() {
    let objects = render(&json!({}));
    assert_eq!(
        kinds(&objects),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "Deployment",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding"
        ]
        .map(String::from)
        .into(),
    );
    let sa = one(&objects, "ServiceAccount");
    assert_eq!(sa["metadata"]["name"], "regcred");
    assert_eq!(sa["automountServiceAccountToken"], false);
    assert!(sa["metadata"].get("annotations").is_none());

    let deployment = one(&objects, "Deployment");
    assert_eq!(deployment["metadata"]["namespace"], "regcred");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_hardened(pod, "regcred");
    let c = container(pod);
    assert_eq!(c["image"], "regcred:0.1.0");
    assert_eq!(
        c["args"],
        json!([
            "run",
            "--config",
            "/etc/regcred/config.yaml",
            "--admin-addr",
            "0.0.0.0:8080",
            "--lease-name",
            "regcred"
        ])
    );
    assert_eq!(
        env_var(c, "POD_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(
        env_var(c, "POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    // `kubectl exec ... -- regcred check` finds the same config and Lease.
    assert_eq!(
        env_var(c, "REGCRED_CONFIG")["value"],
        "/etc/regcred/config.yaml"
    );
    assert_eq!(env_var(c, "REGCRED_LEASE_NAME")["value"], "regcred");
    assert_eq!(c["ports"][0]["containerPort"], 8080);
    assert_eq!(c["ports"][0]["name"], "admin");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/livez");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "admin");
    // No AWS credentials of any kind unless asked for.
    assert!(env_names(c).iter().all(|n| !n.starts_with("AWS_")));
    // The config file mounted is the ConfigMap, and regcred accepts it.
    let text = one(&objects, "ConfigMap")["data"]["config.yaml"]
        .as_str()
        .unwrap();
    let config = regcred::config::Config::from_yaml(Path::new("config.yaml"), text)
        .expect("the chart's default config is valid for regcred");
    assert_eq!(config.secret_names(), ["regcred".to_owned()].into());
    // A config change rolls the pods.
    let changed = render(&json!({"config": {"refresh": {"before": "5h"}}}));
    let checksum = |o: &[Value]| {
        one(o, "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            .clone()
    };
    assert_ne!(checksum(&objects), checksum(&changed));

    let service = one(&objects, "Service");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "admin");
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["selector"]["matchLabels"]
    );
}

#[test]
fn cronjob_mode_renders_a_cronjob_and_an_install_job_without_the_lease_role() {
    let objects = render(&json!({"mode": "cronjob"}));
    assert_eq!(
        kinds(&objects),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "CronJob",
            "Job",
            "ServiceAccount",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding"
        ]
        .map(String::from)
        .into(),
    );
    let sync = json!(["sync", "--config", "/etc/regcred/config.yaml"]);
    let cronjob = one(&objects, "CronJob");
    assert_eq!(cronjob["spec"]["concurrencyPolicy"], "Forbid");
    let pod = &cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    assert_hardened(pod, "regcred");
    assert_eq!(container(pod)["args"], sync);
    assert_eq!(pod["restartPolicy"], "Never");
    // No Lease, so no pod name or namespace to elect with.
    assert!(!env_names(container(pod)).contains("POD_NAME"));

    let job = one(&objects, "Job");
    assert_eq!(job["metadata"]["name"], "regcred-sync-1");
    let pod = &job["spec"]["template"]["spec"];
    assert_hardened(pod, "regcred");
    assert_eq!(container(pod)["args"], sync);

    let without = render(&json!({"mode": "cronjob", "cronjob": {"syncOnInstall": false}}));
    assert!(!kinds(&without).contains("Job"));
}

#[test]
fn aws_auth_irsa_web_identity_and_static_keys() {
    let arn = "arn:aws:iam::123456789012:role/regcred";
    let irsa = render(&json!({"aws": {"irsaRoleArn": arn}}));
    assert_eq!(
        one(&irsa, "ServiceAccount")["metadata"]["annotations"]["eks.amazonaws.com/role-arn"],
        arn
    );

    let oidc = render(&json!({"aws": {"webIdentity": {"roleArn": arn}}}));
    let pod = &one(&oidc, "Deployment")["spec"]["template"]["spec"];
    let c = container(pod);
    assert_eq!(env_var(c, "AWS_ROLE_ARN")["value"], arn);
    let token_file = env_var(c, "AWS_WEB_IDENTITY_TOKEN_FILE")["value"]
        .as_str()
        .unwrap();
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| token_file.starts_with(m["mountPath"].as_str().unwrap()))
        .expect("the web identity token is mounted");
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert_eq!(
        volume["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "sts.amazonaws.com"
    );

    let keys = render(&json!({"mode": "cronjob",
        "aws": {"existingSecret": {"name": "aws-keys", "sessionTokenKey": "token"}}}));
    for kind in ["CronJob", "Job"] {
        let o = one(&keys, kind);
        let pod = if kind == "CronJob" {
            &o["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        } else {
            &o["spec"]["template"]["spec"]
        };
        let c = container(pod);
        for (var, key) in [
            ("AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"),
            ("AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY"),
            ("AWS_SESSION_TOKEN", "token"),
        ] {
            let r = &env_var(c, var)["valueFrom"]["secretKeyRef"];
            assert_eq!(r["name"], "aws-keys", "{kind} {var}");
            assert_eq!(r["key"], key, "{kind} {var}");
        }
    }

    let both = render_fails(&json!({"aws": {"irsaRoleArn": arn,
        "existingSecret": {"name": "aws-keys"}}}));
    assert!(both.contains("at most one of"), "{both}");
    let none = render_fails(&secrets_values(&json!([{"name": "regcred"}])));
    assert!(none.contains("missing property 'registries'"), "{none}");
}

#[test]
fn optional_objects_render_only_when_enabled() {
    let objects = render(&json!({
        "podDisruptionBudget": {"enabled": true},
        "serviceMonitor": {"enabled": true},
        "prometheusRule": {"enabled": true},
    }));
    let pdb = one(&objects, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    let monitor = one(&objects, "ServiceMonitor");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "admin");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    let rule = one(&objects, "PrometheusRule").to_string();
    for metric in [
        "regcred_token_expiry_timestamp_seconds",
        "regcred_secret_writes_total{result=\\\"failed\\\"}",
        "regcred_secret_writes_total{result=\\\"foreign\\\"}",
        "regcred_leader",
    ] {
        assert!(rule.contains(metric), "{metric} not alerted on: {rule}");
    }
    let defaults = kinds(&render(&json!({})));
    for kind in ["PodDisruptionBudget", "ServiceMonitor", "PrometheusRule"] {
        assert!(!defaults.contains(kind), "{kind} rendered by default");
    }
}

// ---------------------------------------------------------------------------- RBAC

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

// ---------------------------------------------------------------------------- deploy/

#[test]
fn deploy_is_in_step_with_the_chart() {
    let out = Command::new(stack().root.join("scripts/render-deploy.sh"))
        .arg("--check")
        .env("REGCRED_TEST_HELM", &tools().helm)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

/// An object's identity: kind, namespace, name.
fn key(o: &Value) -> (String, String, String) {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (
        s(&o["kind"]),
        s(&o["metadata"]["namespace"]),
        s(&o["metadata"]["name"]),
    )
}

#[test]
fn kubectl_apply_k_deploy_applies_the_charts_default_render() {
    // What kustomize makes of deploy/ is the chart's default render, plus the Namespace.
    let built = objects(&ok(
        "kubectl kustomize deploy/",
        &kubectl(&["kustomize", "deploy/"]),
    ));
    let mut expected = render(&json!({}));
    expected.push(json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "regcred", "labels": {"app.kubernetes.io/part-of": "regcred"}},
    }));
    let by_key = |objects: Vec<Value>| -> BTreeMap<_, _> {
        objects.into_iter().map(|o| (key(&o), o)).collect()
    };
    let (built, expected) = (by_key(built), by_key(expected));
    assert_eq!(
        built.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (k, o) in &expected {
        assert_eq!(&built[k], o, "{k:?} differs from the chart's render");
    }
    assert!(
        !built
            .keys()
            .any(|(kind, _, _)| kind == "CredentialProviderConfig")
    );

    // And it applies, twice (the second time changes nothing).
    let first = ok(
        "kubectl apply -k deploy/",
        &kubectl(&["apply", "-k", "deploy/"]),
    );
    assert!(first.contains("deployment.apps/regcred"), "{first}");
    let second = ok(
        "kubectl apply -k deploy/",
        &kubectl(&["apply", "-k", "deploy/"]),
    );
    for line in second.lines() {
        assert!(line.ends_with("unchanged"), "{second}");
    }
    let live = ok(
        "kubectl get -k deploy/",
        &kubectl(&["get", "-k", "deploy/", "-o", "json"]),
    );
    let live: Value = serde_json::from_str(&live).unwrap();
    let live = by_key(live["items"].as_array().unwrap().clone());
    assert_eq!(
        live.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    let rules = |o: &Value| o["rules"].clone();
    let cluster_role = (
        "ClusterRole".to_owned(),
        String::new(),
        "regcred".to_owned(),
    );
    assert_eq!(rules(&live[&cluster_role]), rules(&expected[&cluster_role]));
    let deployment = (
        "Deployment".to_owned(),
        "regcred".to_owned(),
        "regcred".to_owned(),
    );
    let pod = |o: &Value| o["spec"]["template"]["spec"]["containers"][0]["args"].clone();
    assert_eq!(pod(&live[&deployment]), pod(&expected[&deployment]));
    // Its pods would pull an image nobody built: remove it again.
    ok(
        "kubectl delete -k deploy/",
        &kubectl(&["delete", "-k", "deploy/", "--wait=false"]),
    );
}

// ---------------------------------------------------------------------------- webhook

fn webhook_values(extra: &Value) -> Value {
    let mut values = json!({"webhook": {"enabled": true}});
    if let (Some(v), Some(extra)) = (values.as_object_mut(), extra.as_object()) {
        for (k, x) in extra {
            if k == "webhook" {
                for (wk, wv) in x.as_object().unwrap() {
                    v["webhook"][wk] = wv.clone();
                }
            } else {
                v.insert(k.clone(), x.clone());
            }
        }
    }
    values
}

fn named<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn the_webhook_renders_only_when_enabled_fail_open_and_out_of_the_system_namespaces() {
    let off = render(&json!({}));
    assert!(!kinds(&off).contains("MutatingWebhookConfiguration"));
    assert!(
        !off.iter()
            .any(|o| o["metadata"]["name"] == "regcred-webhook")
    );
    assert!(
        !one(&off, "ConfigMap")["data"]["config.yaml"]
            .as_str()
            .unwrap()
            .contains("webhook")
    );

    let objects = render(&webhook_values(&json!({
        "webhook": {"namespaceSelector": {"matchLabels": {"team": "payments"}}},
    })));
    let config = one(&objects, "MutatingWebhookConfiguration");
    assert_eq!(config["metadata"]["name"], "regcred");
    let hook = &config["webhooks"][0];
    assert_eq!(hook["failurePolicy"], "Ignore");
    assert_eq!(hook["sideEffects"], "None");
    assert_eq!(hook["timeoutSeconds"], 5);
    assert_eq!(hook["reinvocationPolicy"], "IfNeeded");
    assert_eq!(hook["admissionReviewVersions"], json!(["v1"]));
    assert_eq!(
        hook["rules"],
        json!([{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                "resources": ["pods"], "scope": "Namespaced"}])
    );
    assert_eq!(
        hook["clientConfig"],
        json!({"service": {"name": "regcred-webhook", "namespace": "regcred",
                           "path": "/mutate", "port": 443}}),
        "no caBundle: regcred fills it and helm must not take it back"
    );
    assert_eq!(
        hook["namespaceSelector"],
        json!({"matchLabels": {"team": "payments"}, "matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["regcred", "kube-system"]},
            {"key": "regcred.io/inject", "operator": "NotIn", "values": ["false"]}]})
    );
    assert_eq!(
        hook["objectSelector"],
        json!({"matchExpressions": [{"key": "regcred.io/inject", "operator": "NotIn", "values": ["false"]}]})
    );
    let service = named(&objects, "Service", "regcred-webhook");
    assert_eq!(
        service["spec"]["ports"],
        json!([{"name": "webhook", "port": 443, "targetPort": "webhook", "protocol": "TCP"}])
    );
    let deployment = one(&objects, "Deployment");
    let c = container(&deployment["spec"]["template"]["spec"]);
    assert!(
        c["ports"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "webhook", "containerPort": 9443, "protocol": "TCP"}))
    );
    for (var, value) in [
        ("REGCRED_WEBHOOK_CONFIGURATION", "regcred"),
        ("REGCRED_WEBHOOK_SERVICE", "regcred-webhook"),
        ("REGCRED_WEBHOOK_SECRET", "regcred-webhook-tls"),
        ("REGCRED_WEBHOOK_CERT_LIFETIME", "8760h"),
        ("REGCRED_WEBHOOK_SHUTDOWN_DELAY", "5s"),
    ] {
        assert_eq!(env_var(c, var)["value"], value, "{var}");
    }
    // The chart writes webhook.enabled and webhook.port into regcred's file, which regcred
    // accepts.
    let text = one(&objects, "ConfigMap")["data"]["config.yaml"]
        .as_str()
        .unwrap();
    let file: Value = serde_saphyr::from_str(text).unwrap();
    assert_eq!(file["webhook"], json!({"enabled": true, "port": 9443}));
    let parsed = regcred::config::Config::from_yaml(Path::new("config.yaml"), text).unwrap();
    assert!(parsed.webhook.enabled);
    // Hardened as ever, and the drain fits in the grace period.
    assert_hardened(&deployment["spec"]["template"]["spec"], "regcred");
    assert!(
        deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"].as_u64()
            > Some(5 + 4)
    );

    // A CronJob cannot answer the API server.
    let err = render_fails(&webhook_values(&json!({"mode": "cronjob"})));
    assert!(
        err.contains("webhook.enabled needs mode: controller"),
        "{err}"
    );
    // The file's webhook section is the chart's to write.
    let err = render_fails(
        &json!({"config": {"secrets": [{"registries": ["public.ecr.aws"]}],
                                              "webhook": {"enabled": true}}}),
    );
    assert!(err.contains("webhook"), "{err}");
}

#[test]
fn with_cert_manager_the_chart_asks_it_for_the_certificate_and_grants_nothing_for_one() {
    let objects = render(&webhook_values(
        &json!({"webhook": {"certManager": {"enabled": true}}}),
    ));
    let config = one(&objects, "MutatingWebhookConfiguration");
    assert_eq!(
        config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        "regcred/regcred-webhook"
    );
    let cert = one(&objects, "Certificate");
    assert_eq!(cert["spec"]["secretName"], "regcred-webhook-cert");
    assert_eq!(
        cert["spec"]["dnsNames"],
        json!(["regcred-webhook.regcred.svc"])
    );
    assert_eq!(cert["spec"]["issuerRef"]["name"], "regcred-webhook");
    assert!(one(&objects, "Issuer")["spec"]["selfSigned"].is_object());
    let deployment = one(&objects, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let c = container(pod);
    assert_eq!(
        env_var(c, "REGCRED_WEBHOOK_CERT_DIR")["value"],
        "/var/run/secrets/regcred/webhook-tls"
    );
    assert!(!env_names(c).contains("REGCRED_WEBHOOK_SECRET"));
    assert!(pod["volumes"].as_array().unwrap().contains(
        &json!({"name": "webhook-tls", "secret": {"secretName": "regcred-webhook-cert"}})
    ));
    // regcred writes neither a Secret nor the caBundle: the usual rules, nothing more.
    assert_eq!(
        rules(one(&objects, "ClusterRole")),
        chart_cluster_rules(&["regcred"], false)
    );
    assert_eq!(
        rules(one(&objects, "Role")),
        chart_namespace_rules("regcred")
    );
    // An issuer of one's own.
    let objects = render(&webhook_values(&json!({"webhook": {"certManager": {
        "enabled": true, "issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}}}})));
    assert!(!kinds(&objects).contains("Issuer"));
    assert_eq!(
        one(&objects, "Certificate")["spec"]["issuerRef"],
        json!({"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"})
    );
    let file = values_file(&webhook_values(
        &json!({"webhook": {"certManager": {"enabled": true}}}),
    ));
    let out = helm(&[
        "lint",
        "--strict",
        chart_dir().to_str().unwrap(),
        "-f",
        file.path().to_str().unwrap(),
    ]);
    ok("helm lint with the webhook and cert-manager", &out);
}

/// With the webhook on, the chart's RBAC is the harness's plus the webhook's two
/// name-scoped rules — what every webhook test runs regcred under.
#[test]
fn the_charts_webhook_rbac_is_the_harness_least_privilege() {
    let objects = render(&webhook_values(&json!({})));
    let mut cluster = chart_cluster_rules(&["regcred"], false);
    cluster.extend(common::webhook::chart_webhook_cluster_rules("regcred"));
    assert_eq!(rules(one(&objects, "ClusterRole")), cluster);
    let mut namespaced = chart_namespace_rules("regcred");
    namespaced.extend(common::webhook::chart_webhook_namespace_rules(
        "regcred-webhook-tls",
    ));
    assert_eq!(rules(one(&objects, "Role")), namespaced);
}
