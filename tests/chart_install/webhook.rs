//! `helm install` with the webhook: registered, its CA bundle kept by regcred, its RBAC
//! name-scoped.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

use super::*;

#[tokio::test]
async fn helm_install_with_the_webhook_registers_it_and_regcred_keeps_its_ca_bundle() {
    use common::webhook::{ca_bundle, create_pod, pod, pull_secrets, wait_injecting};
    let admin = stack().admin().await;
    let release = unique("regcred");
    let secret = unique("pull");
    let prefix = unique("chart");
    let port = free_port();
    let values = |timeout: u32| {
        json!({
            "config": {"secrets": [{
                "name": secret,
                "registries": [stack_registry()],
                "namespaces": {"include": [format!("{prefix}-*")]},
            }]},
            "webhook": {"enabled": true, "port": port, "timeoutSeconds": timeout,
                        "namespaceSelector": {"matchLabels": {"regcred-webhook-test": prefix}}},
        })
    };
    install(&release, &release, &values(5));
    let (_dir, config) = installed_config(&admin, &release, &release).await;
    let who = identity_of(&admin, &release, &release).await;
    // The API server accepted the chart's configuration, without a caBundle.
    assert!(ca_bundle(&admin, &release).await.is_empty());

    let run = run_like_the_deployment(&admin, &release, &who, &config).await;
    run.wait_ready(Duration::from_mins(1)).await;
    let bundle = wait_for(
        "regcred to publish its CA",
        Duration::from_secs(30),
        || async { Some(ca_bundle(&admin, &release).await).filter(|b| !b.is_empty()) },
    )
    .await;
    let tls = get_secret(&admin, &release, &format!("{release}-webhook-tls"))
        .await
        .expect("the webhook Secret");
    assert_eq!(tls.data.unwrap()["ca.crt"].0, bundle);

    // The chart's rules and selectors at work: pointed at this host, the API server calls
    // it and the pod gets the secret.
    point_webhook(
        &admin,
        &release,
        json!({"service": null,
        "url": format!("https://127.0.0.1:{port}/mutate")}),
    )
    .await;
    let ns = format!("{prefix}-a");
    create_namespace(&admin, &ns, &[("regcred-webhook-test", &prefix)]).await;
    let _ = Api::<ServiceAccount>::namespaced(admin.clone(), &ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap(),
        )
        .await;
    let image = stack().var("REGCRED_TEST_IMAGE");
    wait_injecting(&admin, &ns, image, &secret, Duration::from_secs(30)).await;
    let admitted = create_pod(&admin, &ns, &pod("app", &[image], &[], &[])).await;
    assert_eq!(pull_secrets(&admitted), vec![secret.clone()]);
    let log = run.log_text();
    assert!(!log.to_lowercase().contains("forbidden"), "{log}");

    // helm upgrade leaves the caBundle alone (its manifests never set it): with regcred
    // stopped, nobody could put it back. (The clientConfig goes back to the chart's first.)
    drop(run);
    point_webhook(&admin, &release, json!({"url": null, "service": {
        "name": format!("{release}-webhook"), "namespace": release, "path": "/mutate", "port": 443}}))
    .await;
    let file = values_file(&values(4));
    let out = helm(&[
        "upgrade",
        &release,
        chart_dir().to_str().unwrap(),
        "--namespace",
        &release,
        "-f",
        file.path().to_str().unwrap(),
    ]);
    ok("helm upgrade", &out);
    assert_eq!(ca_bundle(&admin, &release).await, bundle);

    // Name-scoped: its own configuration and Secret, nothing else.
    assert_webhook_rbac_is_name_scoped(&admin, &release, &secret, who).await;
    ok(
        "helm uninstall",
        &helm(&["uninstall", &release, "--namespace", &release]),
    );
}

/// `regcred run` as the chart's Deployment runs it — its arguments and its webhook
/// environment — acting as the chart's ServiceAccount; for the test also on 127.0.0.1 (the
/// stack has no Service routing).
async fn run_like_the_deployment(
    admin: &kube::Client,
    release: &str,
    who: &Identity,
    config: &Path,
) -> Running {
    let deployment = Api::<Deployment>::namespaced(admin.clone(), release)
        .get(release)
        .await
        .unwrap();
    let c = deployment.spec.unwrap().template.spec.unwrap().containers[0].clone();
    let (mut cmd, _key) = regcred(who);
    for var in c.env.unwrap_or_default() {
        if var.name.starts_with("REGCRED_WEBHOOK_") {
            cmd.env(&var.name, var.value.unwrap_or_default());
        }
    }
    cmd.env("POD_NAMESPACE", release);
    let args: Vec<String> = c
        .args
        .unwrap()
        .into_iter()
        .skip(1) // "run": Running adds it.
        .filter(|a| !a.starts_with("0.0.0.0:") && a != "--admin-addr")
        .map(|a| {
            if a == "/etc/regcred/config.yaml" {
                config.to_str().unwrap().to_owned()
            } else {
                a
            }
        })
        .collect();
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.extend([
        "--webhook-address",
        "127.0.0.1",
        "--webhook-host",
        "127.0.0.1",
    ]);
    Running::start(cmd, &args)
}

/// The chart's ServiceAccount may touch its own webhook configuration and Secret, and
/// nothing else of the kind.
async fn assert_webhook_rbac_is_name_scoped(
    admin: &kube::Client,
    release: &str,
    secret: &str,
    who: Identity,
) {
    let it = Installed {
        admin: admin.clone(),
        release: release.to_owned(),
        secret: secret.to_owned(),
        prefix: String::new(),
        who,
        config: PathBuf::new(),
        _config_dir: tempfile::tempdir().unwrap(),
    };
    let webhook_secret = format!("{release}-webhook-tls");
    for ask in [
        format!("get mutatingwebhookconfigurations.admissionregistration.k8s.io /{release}"),
        format!("patch mutatingwebhookconfigurations.admissionregistration.k8s.io /{release}"),
        format!("update secrets {release}/{webhook_secret}"),
        format!("get secrets {release}/{webhook_secret}"),
    ] {
        assert!(it.may_ask(&ask).await, "{ask} should be allowed");
    }
    for ask in [
        "patch mutatingwebhookconfigurations.admissionregistration.k8s.io /other".to_owned(),
        "list mutatingwebhookconfigurations.admissionregistration.k8s.io /".to_owned(),
        "create mutatingwebhookconfigurations.admissionregistration.k8s.io /".to_owned(),
        "delete mutatingwebhookconfigurations.admissionregistration.k8s.io /".to_owned() + release,
        "patch validatingwebhookconfigurations.admissionregistration.k8s.io /".to_owned() + release,
        format!("get secrets {release}/other"),
        format!("update secrets default/{webhook_secret}"),
        format!("get secrets default/{webhook_secret}"),
        format!("delete secrets {release}/{webhook_secret}"),
    ] {
        assert!(!it.may_ask(&ask).await, "{ask} should be refused");
    }
}

/// Sets the clientConfig (all but its caBundle) of the chart's webhook, as admin.
async fn point_webhook(admin: &kube::Client, name: &str, client_config: Value) {
    let patch =
        json!({"webhooks": [{"name": "pull-secrets.regcred.io", "clientConfig": client_config}]});
    Api::<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration>::all(
        admin.clone(),
    )
    .patch(
        name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Strategic(&patch),
    )
    .await
    .unwrap();
}
