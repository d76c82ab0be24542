//! Namespaces and ServiceAccounts for a test, namespaces held Terminating, Events.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, ObjectMeta, PostParams};

use super::{stack, wait_for};

pub async fn create_namespace(
    client: &kube::Client,
    name: &str,
    labels: &[(&str, &str)],
) -> Namespace {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("create namespace {name}: {e}"))
}

pub async fn create_service_account(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    pull_secrets: &[&str],
) -> ServiceAccount {
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        image_pull_secrets: (!pull_secrets.is_empty()).then(|| {
            pull_secrets
                .iter()
                .map(|n| k8s_openapi::api::core::v1::LocalObjectReference {
                    name: (*n).to_owned(),
                })
                .collect()
        }),
        ..ServiceAccount::default()
    };
    // The controller-manager makes every namespace's "default" ServiceAccount, maybe first:
    // then it gets exactly these pull secrets.
    let api = Api::<ServiceAccount>::namespaced(client.clone(), namespace);
    match api.create(&PostParams::default(), &sa).await {
        Ok(created) => return created,
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("create serviceaccount {namespace}/{name}: {e}"),
    }
    loop {
        let mut current = api
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("get serviceaccount {namespace}/{name}: {e}"));
        current
            .image_pull_secrets
            .clone_from(&sa.image_pull_secrets);
        match api.replace(name, &PostParams::default(), &current).await {
            Ok(replaced) => return replaced,
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => panic!("update serviceaccount {namespace}/{name}: {e}"),
        }
    }
}

/// Deletes `namespace` and holds it Terminating (a ConfigMap in it keeps a finalizer, as
/// a stuck controller's object would) until the returned guard is dropped. The
/// controller-manager deletes everything else in it meanwhile.
pub async fn hold_terminating(client: &kube::Client, namespace: &str) -> TerminatingHold {
    use k8s_openapi::api::core::v1::ConfigMap;
    let held = ConfigMap {
        metadata: ObjectMeta {
            name: Some("held".into()),
            finalizers: Some(vec![HOLD_FINALIZER.into()]),
            ..ObjectMeta::default()
        },
        ..ConfigMap::default()
    };
    Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &held)
        .await
        .unwrap_or_else(|e| panic!("create the held ConfigMap in {namespace}: {e}"));
    let namespaces = Api::<Namespace>::all(client.clone());
    namespaces
        .delete(namespace, &kube::api::DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("delete namespace {namespace}: {e}"));
    wait_for(
        "the namespace to be Terminating",
        Duration::from_mins(1),
        || async {
            let ns = namespaces.get_opt(namespace).await.ok()??;
            (phase(&ns) == "Terminating").then_some(())
        },
    )
    .await;
    TerminatingHold {
        kubeconfig: PathBuf::from(stack().var("KUBECONFIG")),
        namespace: namespace.to_owned(),
    }
}

const HOLD_FINALIZER: &str = "regcred.test/hold";

fn phase(ns: &Namespace) -> String {
    ns.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default()
}

/// A namespace held Terminating by [`hold_terminating`]; dropping it lets the deletion finish.
#[derive(Debug)]
pub struct TerminatingHold {
    kubeconfig: PathBuf,
    namespace: String,
}

impl Drop for TerminatingHold {
    fn drop(&mut self) {
        let patch = r#"{"metadata":{"finalizers":null}}"#;
        let _ = Command::new(stack().var("REGCRED_TEST_KUBECTL"))
            .env("KUBECONFIG", &self.kubeconfig)
            .args([
                "-n",
                &self.namespace,
                "patch",
                "configmap",
                "held",
                "--type=merge",
                "-p",
            ])
            .arg(patch)
            .output();
    }
}

/// Waits until an Event with this reason is recorded in `namespace`.
pub async fn wait_for_event(
    admin: &kube::Client,
    namespace: &str,
    reason: &str,
    timeout: Duration,
) {
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(admin.clone(), namespace);
    wait_for(&format!("a {reason} event"), timeout, || async {
        let list = events.list(&kube::api::ListParams::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| e.reason.as_deref() == Some(reason))
            .then_some(())
    })
    .await;
}

/// Creates these namespaces with these labels, `concurrency` requests at a time.
pub async fn create_namespaces_at_once(
    client: &kube::Client,
    names: &[String],
    labels: &[(&str, &str)],
    concurrency: usize,
) {
    use futures::StreamExt as _;
    futures::stream::iter(names)
        .for_each_concurrent(concurrency, |name| async move {
            create_namespace(client, name, labels).await;
        })
        .await;
}

/// The names in a ServiceAccount's `imagePullSecrets`, in order.
pub async fn pull_secret_names(admin: &kube::Client, ns: &str, sa: &str) -> Vec<String> {
    Api::<ServiceAccount>::namespaced(admin.clone(), ns)
        .get(sa)
        .await
        .expect("get serviceaccount")
        .image_pull_secrets
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.name)
        .collect()
}
