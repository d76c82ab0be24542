//! The promise, the way a user sees it: on a real node (kubelet + containerd) of the test
//! stack's cluster, pods pull from the private registry and reach Running, across many
//! token expiries, with regcred's controller, its CronJob and its kubelet plugin — while
//! the usual cron script fails the same test. Plus the cluster itself: the control plane
//! does what a real one does, and the registry refuses an expired token at pull time.

#![allow(clippy::print_stderr)] // The measurements are reported on the terminal.

mod common;

use std::time::Duration;

use common::pods::{Pull, app_pod, node, pull_once};
use common::rotation::{Settings, baseline, controller, credential_provider, cronjob};
use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use serde_json::json;

const MINUTE: Duration = Duration::from_mins(1);

/// A pull secret as `kubectl create secret docker-registry` makes it.
fn pull_secret(name: &str, registry: &str, password: &str) -> Secret {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("AWS:{password}"));
    let doc = json!({"auths": {registry: {"username": "AWS", "password": password, "auth": auth}}});
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/dockerconfigjson".into()),
        string_data: Some([(".dockerconfigjson".to_owned(), doc.to_string())].into()),
        ..Secret::default()
    }
}

#[tokio::test]
async fn the_node_pulls_with_a_valid_token_and_not_with_an_expired_one() {
    let s = stack();
    let admin = s.admin().await;
    let ready = Api::<Node>::all(admin.clone())
        .get(node())
        .await
        .expect("the node");
    let conditions = ready.status.and_then(|s| s.conditions).unwrap_or_default();
    assert!(
        conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True"),
        "{conditions:?}"
    );

    let ns = unique("node-pull");
    create_namespace(&admin, &ns, &[]).await;
    let registry = s.var("REGCRED_TEST_REGISTRY");
    let secrets = Api::<Secret>::namespaced(admin.clone(), &ns);
    let fresh = s.registry_token(s.var("REGCRED_TEST_ACCOUNT"), "10m");
    let expired = s.registry_token(s.var("REGCRED_TEST_ACCOUNT"), "-1s");
    for (name, password) in [("fresh", &fresh), ("expired", &expired)] {
        secrets
            .create(
                &PostParams::default(),
                &pull_secret(name, registry, password),
            )
            .await
            .unwrap();
    }
    let image = s.var("REGCRED_TEST_IMAGE");
    let pull = |name: &str, secrets: &[&str]| app_pod(name, image, None, secrets);
    assert_eq!(
        pull_once(&admin, &ns, &pull("with-fresh", &["fresh"]), MINUTE).await,
        Pull::Running
    );
    match pull_once(&admin, &ns, &pull("with-expired", &["expired"]), MINUTE).await {
        Pull::Failed(why) => assert!(
            why.contains("403") || why.contains("authorization token has expired"),
            "{why}"
        ),
        other => panic!("an expired token pulled: {other:?}"),
    }
    match pull_once(&admin, &ns, &pull("without", &[]), MINUTE).await {
        Pull::Failed(why) => assert!(why.contains("401") || why.contains("nauthorized"), "{why}"),
        other => panic!("no credential pulled: {other:?}"),
    }
}

#[tokio::test]
async fn the_controller_manager_serves_namespaces_from_birth_to_deletion() {
    let admin = stack().admin().await;
    let ns = unique("control-plane");
    create_namespace(&admin, &ns, &[]).await;
    // The ServiceAccount and root CA publishers.
    wait_for("the default ServiceAccount", MINUTE, || async {
        Api::<ServiceAccount>::namespaced(admin.clone(), &ns)
            .get_opt("default")
            .await
            .ok()?
    })
    .await;
    wait_for("kube-root-ca.crt", MINUTE, || async {
        Api::<ConfigMap>::namespaced(admin.clone(), &ns)
            .get_opt("kube-root-ca.crt")
            .await
            .ok()?
    })
    .await;

    // The token controller fills a ServiceAccount token Secret.
    let token_secret = Secret {
        metadata: ObjectMeta {
            name: Some("sa-token".into()),
            annotations: Some(
                [(
                    "kubernetes.io/service-account.name".into(),
                    "default".into(),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/service-account-token".into()),
        ..Secret::default()
    };
    let secrets = Api::<Secret>::namespaced(admin.clone(), &ns);
    secrets
        .create(&PostParams::default(), &token_secret)
        .await
        .unwrap();
    wait_for("the token controller to fill the token", MINUTE, || async {
        secrets
            .get("sa-token")
            .await
            .ok()?
            .data?
            .get("token")
            .map(|_| ())
    })
    .await;

    // Namespace deletion completes.
    let namespaces = Api::<Namespace>::all(admin.clone());
    namespaces
        .delete(&ns, &DeleteParams::default())
        .await
        .unwrap();
    wait_for(
        "the namespace to be gone",
        Duration::from_mins(2),
        || async { namespaces.get_opt(&ns).await.ok()?.is_none().then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn deployments_and_jobs_run_on_the_node_and_the_garbage_collector_cleans_up() {
    let admin = stack().admin().await;
    let ns = unique("workloads");
    create_namespace(&admin, &ns, &[]).await;
    // Deployment -> ReplicaSet -> a pod the scheduler puts on the node, which runs it.
    let image = stack().var("REGCRED_TEST_IMAGE");
    let secrets = Api::<Secret>::namespaced(admin.clone(), &ns);
    let password = stack().registry_token(stack().var("REGCRED_TEST_ACCOUNT"), "10m");
    secrets
        .create(
            &PostParams::default(),
            &pull_secret("pull", stack().var("REGCRED_TEST_REGISTRY"), &password),
        )
        .await
        .unwrap();
    let mut pod_spec =
        serde_json::to_value(app_pod("unused", image, None, &["pull"]).spec).unwrap();
    pod_spec["restartPolicy"] = "Always".into();
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "app"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "regcred-test"}},
                 "template": {"metadata": {"labels": {"app": "regcred-test"}}, "spec": pod_spec}}
    }))
    .unwrap();
    let deployments = Api::<Deployment>::namespaced(admin.clone(), &ns);
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    wait_for(
        "the Deployment's pod to run",
        Duration::from_mins(2),
        || async {
            let d = deployments.get("app").await.ok()?;
            (d.status?.ready_replicas? == 1).then_some(())
        },
    )
    .await;

    // A Job runs to completion.
    let job: Job = serde_json::from_value(json!({
        "metadata": {"name": "once"},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never", "hostNetwork": true, "terminationGracePeriodSeconds": 0,
            "imagePullSecrets": [{"name": "pull"}],
            "containers": [{"name": "once", "image": image, "command": ["/bin/busybox", "true"]}]}}}
    }))
    .unwrap();
    let jobs = Api::<Job>::namespaced(admin.clone(), &ns);
    jobs.create(&PostParams::default(), &job).await.unwrap();
    wait_for("the Job to succeed", Duration::from_mins(2), || async {
        (jobs.get("once").await.ok()?.status?.succeeded? == 1).then_some(())
    })
    .await;

    // The garbage collector removes what the Deployment owned.
    deployments
        .delete("app", &DeleteParams::background())
        .await
        .unwrap();
    let replica_sets =
        Api::<k8s_openapi::api::apps::v1::ReplicaSet>::namespaced(admin.clone(), &ns);
    wait_for("the ReplicaSet to be collected", MINUTE, || async {
        replica_sets
            .list(&kube::api::ListParams::default())
            .await
            .ok()?
            .items
            .is_empty()
            .then_some(())
    })
    .await;

    let _ = Api::<Namespace>::all(admin.clone())
        .delete(&ns, &DeleteParams::default())
        .await;
}

// ---------------------------------------------------------------------------------------
// Pods across token expiry, for every way of keeping credentials.

/// Token lifetime and run length: five lifetimes of 90 s (the CronJob runs every minute, so
/// a lifetime must outlast a minute and a job's start).
fn settings() -> Settings {
    Settings {
        ttl: Duration::from_secs(90),
        lifetimes: 5,
        every: Duration::from_secs(6),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pods_keep_pulling_across_token_expiry_with_regcred_and_not_with_the_cron_script() {
    node();
    let s = settings();
    tokio::task::spawn_blocking(common::image::on_the_node)
        .await
        .unwrap();
    // All four at once, on the one node: each has its own namespaces and its own AWS key
    // (the kubelet plugin has the node's), so their tokens expire on their own clocks.
    let controller = tokio::spawn(controller(s));
    let cronjob = tokio::spawn(cronjob(s));
    let provider = tokio::spawn(credential_provider(s));
    let script = tokio::spawn(baseline(s, s.ttl * 3 / 2));
    let (controller, late) = controller.await.unwrap();
    let (cronjob, provider, script) = (
        cronjob.await.unwrap(),
        provider.await.unwrap(),
        script.await.unwrap(),
    );
    let report: Vec<String> = [&controller, &cronjob, &provider, &script]
        .iter()
        .map(|o| o.line())
        .collect();
    eprintln!("{}", report.join("\n"));
    let want = usize::try_from(s.during().as_secs() / s.every.as_secs()).unwrap() * 2 / 3;
    for o in [&controller, &cronjob, &provider] {
        assert!(
            o.tally.attempted >= want,
            "{}: too few pods to judge",
            o.line()
        );
        assert_eq!(o.tally.running, o.tally.attempted, "{}", o.line());
        assert_eq!(o.events, 0, "{}", o.line());
        assert!(
            o.token_calls >= u64::from(s.lifetimes) - 1,
            "{}: tokens were renewed across the lifetimes",
            o.line()
        );
    }
    // The namespace created during the run got working pods with no manual step.
    assert!(late.iter().any(|n| n.ends_with("-late")), "{late:?}");
    // The cron script, run less often than a token lives, leaves pods failing.
    assert!(script.tally.failed > 0, "{}", script.line());
    assert!(script.events > 0, "{}", script.line());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn race_of_one_apply_namespace_serviceaccount_deployment_is_measured() {
    node();
    tokio::task::spawn_blocking(common::image::on_the_node)
        .await
        .unwrap();
    let tries = 10;
    let race = common::race::race(tries, &json!({})).await;
    eprintln!(
        "race (Namespace + ServiceAccount + Deployment in one apply, regcred controller): \
         {} of {} pods created without the pull secret, {} pulls failed",
        race.without_secret, race.tries, race.pull_failed
    );
    assert_eq!(race.tries, tries);
    // A measurement, not a pass/fail: every pod created with the secret pulled, and only
    // those without it may have failed.
    assert!(race.pull_failed <= race.without_secret, "{race:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_webhook_no_pod_of_the_one_apply_race_misses_its_secret() {
    node();
    tokio::task::spawn_blocking(common::image::on_the_node)
        .await
        .unwrap();
    let tries = 10;
    let race = common::race::race(tries, &common::race::webhook_on_the_node()).await;
    eprintln!(
        "race with the webhook (chart, regcred on the node): {} of {} pods created without \
         the pull secret, {} pulls failed",
        race.without_secret, race.tries, race.pull_failed
    );
    assert_eq!(race.tries, tries);
    assert_eq!(race.without_secret, 0, "{race:?}");
    assert_eq!(race.pull_failed, 0, "{race:?}");
}
