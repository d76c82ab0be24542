//! The Helm chart and the plain manifests: they lint and render in both modes, grant exactly
//! the spec's least privilege, and `deploy/` is the chart's default render. What the
//! installed chart lets regcred do on the real stack is in `tests/chart_install/`.

#[path = "../common/mod.rs"]
mod common;
mod deploy;
mod rbac;
mod render;
mod webhook;

use std::collections::BTreeSet;

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
