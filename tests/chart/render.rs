//! helm lint and template: both modes, AWS auth, optional objects.

use std::path::Path;

use serde_json::{Value, json};

use super::*;

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
        (
            json!({"maxWritesPerSecond": 0}),
            "at '/maxWritesPerSecond': minimum: got 0, want 1",
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
    // Writes are unpaced unless asked for; then the controller gets the limit.
    assert!(!env_names(c).contains("REGCRED_MAX_WRITES_PER_SECOND"));
    let paced = render(&json!({"maxWritesPerSecond": 200}));
    let paced_container = container(&one(&paced, "Deployment")["spec"]["template"]["spec"]);
    assert_eq!(
        env_var(paced_container, "REGCRED_MAX_WRITES_PER_SECOND")["value"],
        "200"
    );
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
