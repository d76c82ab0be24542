//! The admission webhook in tests: the chart's RBAC for it, registering it with the API
//! server by URL, pods, and a stand-in for a Service in front of several replicas.
//!
//! The stack has no Service routing (no kube-proxy, and EndpointSlices may not point at
//! loopback), so a test registers the webhook by URL, as on a node whose API server calls
//! `https://127.0.0.1:<port>`, and — where it needs several replicas behind one address —
//! puts a [`Proxy`] there that does what kube-proxy and the EndpointSlice controller do:
//! new connections go to a replica that answers `/readyz`, existing ones stay where they
//! are.

use std::io::{Read as _, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::rbac::v1::PolicyRule;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

use super::{
    Identity, chart_cluster_rules, chart_namespace_rules, create_namespace, identity, unique,
    wait_for,
};

/// What the chart adds to its ClusterRole with the webhook on (regcred's own certificate):
/// its configuration's caBundle, by name.
pub fn chart_webhook_cluster_rules(configuration: &str) -> Vec<PolicyRule> {
    vec![PolicyRule {
        api_groups: Some(vec!["admissionregistration.k8s.io".into()]),
        resources: Some(vec!["mutatingwebhookconfigurations".into()]),
        verbs: ["get", "list", "watch", "patch"].map(str::to_owned).into(),
        resource_names: Some(vec![configuration.to_owned()]),
        ..PolicyRule::default()
    }]
}

/// What the chart adds to its Role in regcred's namespace: the certificate's Secret, by
/// name (it is created through the ClusterRole's `secrets: create`).
pub fn chart_webhook_namespace_rules(secret: &str) -> Vec<PolicyRule> {
    vec![PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec!["secrets".into()]),
        verbs: ["get", "list", "watch", "update"].map(str::to_owned).into(),
        resource_names: Some(vec![secret.to_owned()]),
        ..PolicyRule::default()
    }]
}

/// The chart's identity with the webhook on: the usual rules (Lease `regcred`) plus the
/// webhook's, in a fresh namespace of its own.
pub async fn chart_identity_with_webhook(
    admin: &kube::Client,
    secret_names: &[&str],
    configuration: &str,
    webhook_secret: &str,
) -> Identity {
    let home = unique("regcred-home");
    create_namespace(admin, &home, &[]).await;
    let mut cluster = chart_cluster_rules(secret_names, false);
    cluster.extend(chart_webhook_cluster_rules(configuration));
    let mut namespaced = chart_namespace_rules("regcred");
    namespaced.extend(chart_webhook_namespace_rules(webhook_secret));
    identity(admin, &home, cluster, namespaced).await
}

/// Registers a MutatingWebhookConfiguration like the chart's (pods CREATE, Ignore, opt-out
/// label, no caBundle) that calls `url` and only for namespaces labelled `label`, so it
/// never touches another test's pods.
pub async fn register(
    admin: &kube::Client,
    name: &str,
    url: &str,
    label: (&str, &str),
    ca_bundle: Option<&str>,
    timeout_seconds: i32,
) -> MutatingWebhookConfiguration {
    let mut client_config = json!({"url": url});
    if let Some(pem) = ca_bundle {
        client_config["caBundle"] = json!(base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            pem
        ));
    }
    let config: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [{
            "name": "pull-secrets.regcred.io",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Ignore",
            "timeoutSeconds": timeout_seconds,
            "reinvocationPolicy": "IfNeeded",
            "clientConfig": client_config,
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                       "resources": ["pods"], "scope": "Namespaced"}],
            "namespaceSelector": {"matchLabels": {label.0: label.1}},
            "objectSelector": {"matchExpressions": [
                {"key": "regcred.io/inject", "operator": "NotIn", "values": ["false"]}]},
        }],
    }))
    .unwrap();
    Api::<MutatingWebhookConfiguration>::all(admin.clone())
        .create(&PostParams::default(), &config)
        .await
        .unwrap_or_else(|e| panic!("create mutatingwebhookconfiguration {name}: {e}"))
}

pub async fn unregister(admin: &kube::Client, name: &str) {
    let _ = Api::<MutatingWebhookConfiguration>::all(admin.clone())
        .delete(name, &DeleteParams::default())
        .await;
}

/// The caBundle of the configuration's first webhook (empty when unset).
pub async fn ca_bundle(admin: &kube::Client, name: &str) -> Vec<u8> {
    Api::<MutatingWebhookConfiguration>::all(admin.clone())
        .get(name)
        .await
        .unwrap()
        .webhooks
        .unwrap_or_default()
        .first()
        .and_then(|w| w.client_config.ca_bundle.clone())
        .map(|b| b.0)
        .unwrap_or_default()
}

/// A pod with these container and init container images. It is for admission only: its
/// node selector matches no node, so the stack's kubelet never runs it.
pub fn pod(name: &str, images: &[&str], init_images: &[&str], labels: &[(&str, &str)]) -> Pod {
    let containers = |images: &[&str], prefix: &str| -> Vec<serde_json::Value> {
        images
            .iter()
            .enumerate()
            .map(|(i, image)| json!({"name": format!("{prefix}{i}"), "image": image}))
            .collect()
    };
    let labels: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "containers": containers(images, "c"),
            "initContainers": containers(init_images, "i"),
            "nodeSelector": {"regcred.test/run-here": "never"},
        },
    }))
    .unwrap()
}

/// Creates the pod; the pod as the API server stored it.
pub async fn create_pod(client: &kube::Client, namespace: &str, pod: &Pod) -> Pod {
    Api::<Pod>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), pod)
        .await
        .unwrap_or_else(|e| panic!("create pod in {namespace}: {e}"))
}

/// The pod as the API server would store it, stored nowhere (admission runs in full).
pub async fn dry_run_pod(client: &kube::Client, namespace: &str, pod: &Pod) -> Pod {
    let params = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    Api::<Pod>::namespaced(client.clone(), namespace)
        .create(&params, pod)
        .await
        .unwrap_or_else(|e| panic!("dry-run pod in {namespace}: {e}"))
}

/// The names in a pod's imagePullSecrets, in order.
pub fn pull_secrets(pod: &Pod) -> Vec<String> {
    pod.spec
        .as_ref()
        .and_then(|s| s.image_pull_secrets.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.name)
        .collect()
}

/// Waits until the API server calls the webhook with the current caBundle: a dry-run pod
/// with `image` in `namespace` comes back with `secret`.
pub async fn wait_injecting(
    client: &kube::Client,
    namespace: &str,
    image: &str,
    secret: &str,
    timeout: Duration,
) {
    let probe = pod(&unique("probe"), &[image], &[], &[]);
    wait_for("the API server to call the webhook", timeout, || async {
        let admitted = dry_run_pod(client, namespace, &probe).await;
        pull_secrets(&admitted)
            .contains(&secret.to_owned())
            .then_some(())
    })
    .await;
}

/// One replica behind the [`Proxy`]: its webhook port and its admin port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend {
    pub webhook: u16,
    pub admin: u16,
}

fn is_ready(admin: u16) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", admin)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if write!(s, "GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n").is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = s.read_to_string(&mut response);
    response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200")
}

/// A stand-in for a Service: a TCP proxy on loopback that sends each new connection to a
/// ready replica (round robin), as kube-proxy does with a Service's ready endpoints, and
/// refuses it when none is ready. Readiness is polled every 50 ms.
#[derive(Debug)]
pub struct Proxy {
    pub port: u16,
    backends: Arc<Mutex<Vec<(Backend, bool)>>>,
    /// Connections forwarded, and refused for want of a ready replica.
    pub forwarded: Arc<AtomicU64>,
    pub refused: Arc<AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    pub fn start(backends: &[Backend]) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let backends = Arc::new(Mutex::new(
            backends.iter().map(|b| (*b, false)).collect::<Vec<_>>(),
        ));
        let (forwarded, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::spawn({
            let (backends, forwarded, refused) =
                (backends.clone(), forwarded.clone(), refused.clone());
            move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(serve(listener, backends, forwarded, refused, stop_rx));
            }
        });
        Self {
            port,
            backends,
            forwarded,
            refused,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    /// Puts `new` where the replica with admin port `old_admin` was (a restarted replica).
    pub fn replace(&self, old_admin: u16, new: Backend) {
        let mut all = self.backends.lock().unwrap();
        let slot = all
            .iter_mut()
            .find(|(b, _)| b.admin == old_admin)
            .expect("known backend");
        *slot = (new, false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    backends: Arc<Mutex<Vec<(Backend, bool)>>>,
    forwarded: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let checker = tokio::spawn({
        let backends = backends.clone();
        async move {
            loop {
                let current: Vec<Backend> =
                    backends.lock().unwrap().iter().map(|(b, _)| *b).collect();
                let ready = tokio::task::spawn_blocking(move || {
                    current
                        .into_iter()
                        .map(|b| (b, is_ready(b.admin)))
                        .collect::<Vec<_>>()
                })
                .await
                .unwrap();
                {
                    let mut all = backends.lock().unwrap();
                    for (b, r) in ready {
                        if let Some(slot) = all.iter_mut().find(|(x, _)| *x == b) {
                            slot.1 = r;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let mut next = 0usize;
    loop {
        let (inbound, _) = tokio::select! {
            accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
            _ = &mut stop => break,
        };
        let target = {
            let all = backends.lock().unwrap();
            let ready: Vec<Backend> = all.iter().filter(|(_, r)| *r).map(|(b, _)| *b).collect();
            (!ready.is_empty()).then(|| {
                next = next.wrapping_add(1);
                ready[next % ready.len()]
            })
        };
        let Some(target) = target else {
            refused.fetch_add(1, Ordering::Relaxed);
            drop(inbound);
            continue;
        };
        forwarded.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let Ok(mut outbound) =
                tokio::net::TcpStream::connect(("127.0.0.1", target.webhook)).await
            else {
                return;
            };
            let mut inbound = inbound;
            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
        });
    }
    checker.abort();
}
