//! `deploy/` is the chart's default render, and `kubectl apply -k deploy` applies it.

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::{Value, json};

use super::*;

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
