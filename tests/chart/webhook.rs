//! The webhook's objects: rendered only when enabled, fail-open, out of the system
//! namespaces; cert-manager as the alternative; name-scoped RBAC.

use std::path::Path;

use serde_json::{Value, json};

use super::*;

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
