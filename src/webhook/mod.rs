//! The mutating admission webhook `regcred run` serves when `webhook.enabled` is set: a pod
//! created before its ServiceAccount got the pull secret gets it anyway.
//!
//! The ServiceAccount admission plugin copies `imagePullSecrets` only when a pod is created,
//! so a pod created in the same `kubectl apply` as its ServiceAccount (or namespace) never
//! gets them from regcred's ServiceAccount patching. Admission closes that race: every
//! replica answers `pods` CREATE with a JSON Patch that adds `{name: <secret>}` once when an
//! image is on one of that secret's registries ([`admission`]). It never blocks a pod: the
//! configuration says `failurePolicy: Ignore`, and every answer is "allowed".
//!
//! Certificates: regcred's own CA and serving certificate in one Secret ([`keeper`],
//! [`rotation`], [`pki`]), or files another tool keeps ([`files`]). [`server`] serves them.

pub mod admission;
pub mod check;
pub mod files;
pub mod keeper;
pub mod pki;
pub mod review;
pub mod rotation;
pub mod server;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::controller::Namespaces;
use clap::Args;
use hyper::StatusCode;
use jiff::SignedDuration;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::Health;
use crate::config::Config;
use crate::metrics::{Metrics, WebhookResult};

/// How long a namespace lookup may take inside an admission request (the configuration's
/// `timeoutSeconds` is 5).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the webhook's registration and certificate live (`run` and `check`).
#[derive(Args, Clone, Debug)]
pub struct WebhookArgs {
    /// Name of the MutatingWebhookConfiguration whose caBundle regcred keeps current (the
    /// chart's).
    #[arg(long, env = "REGCRED_WEBHOOK_CONFIGURATION", default_value = "regcred", value_name = "NAME", value_parser = parse_name)]
    pub webhook_configuration: String,
    /// Name of the Secret, in regcred's own namespace (--lease-namespace), that holds the
    /// webhook's CA and serving certificate; every replica serves from it.
    #[arg(long, env = "REGCRED_WEBHOOK_SECRET", default_value = "regcred-webhook-tls", value_name = "NAME", value_parser = parse_name)]
    pub webhook_secret: String,
    /// Serve DIR/tls.crt and DIR/tls.key (kept by cert-manager, say) instead of regcred's
    /// own certificate; regcred then writes neither a Secret nor the caBundle.
    #[arg(long, env = "REGCRED_WEBHOOK_CERT_DIR", value_name = "DIR")]
    pub webhook_cert_dir: Option<PathBuf>,
}

/// How `run` serves the webhook.
#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    /// Address the webhook listens on; its port is webhook.port of the configuration.
    #[arg(
        long,
        env = "REGCRED_WEBHOOK_ADDRESS",
        default_value = "0.0.0.0",
        value_name = "IP"
    )]
    pub webhook_address: IpAddr,
    /// The Service in front of the webhook: the certificate is for NAME.NAMESPACE.svc, the
    /// name the API server calls. Empty for none.
    #[arg(
        long,
        env = "REGCRED_WEBHOOK_SERVICE",
        default_value = "regcred-webhook",
        value_name = "NAME"
    )]
    pub webhook_service: String,
    /// Another DNS name or IP address for the certificate (repeatable), e.g. 127.0.0.1 for
    /// a webhook registered by URL on the API server's host.
    #[arg(long = "webhook-host", env = "REGCRED_WEBHOOK_HOSTS", value_delimiter = ',', value_name = "HOST", value_parser = parse_host)]
    pub webhook_hosts: Vec<String>,
    /// How long a serving certificate lives (its CA five times as long); each is renewed
    /// when a third of its life is left.
    #[arg(long, env = "REGCRED_WEBHOOK_CERT_LIFETIME", default_value = "8760h", value_name = "DURATION", value_parser = parse_lifetime)]
    pub webhook_cert_lifetime: SignedDuration,
    /// How long the webhook keeps answering after SIGTERM, while this replica leaves the
    /// Service's endpoints, before it stops.
    #[arg(long, env = "REGCRED_WEBHOOK_SHUTDOWN_DELAY", default_value = "5s", value_name = "DURATION", value_parser = parse_delay)]
    pub webhook_shutdown_delay: Duration,
}

fn parse_name(s: &str) -> Result<String, String> {
    s.parse::<crate::config::SecretName>()
        .map(|n| n.to_string())
        .map_err(|_| {
            format!("{s:?} is not a valid object name (lower-case letters, digits, '-' and '.')")
        })
}

fn parse_host(s: &str) -> Result<String, String> {
    if s.parse::<IpAddr>().is_ok() {
        return Ok(s.to_owned());
    }
    s.parse::<crate::config::SecretName>()
        .map(|n| n.to_string())
        .map_err(|_| format!("{s:?} is neither an IP address nor a DNS name"))
}

fn parse_duration(s: &str) -> Result<SignedDuration, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 5s, 90m, 8760h)"))
}

fn parse_lifetime(s: &str) -> Result<SignedDuration, String> {
    let d = parse_duration(s)?;
    if d < SignedDuration::from_secs(10) {
        return Err(format!("{s:?}: at least 10s"));
    }
    if d > SignedDuration::from_hours(20 * 24 * 365) {
        return Err(format!("{s:?}: at most 20 years"));
    }
    Ok(d)
}

fn parse_delay(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_negative() || d > SignedDuration::from_mins(5) {
        return Err(format!("{s:?}: between 0s and 5m"));
    }
    Ok(d.unsigned_abs())
}

/// The DNS names and addresses the serving certificate is for.
#[must_use]
pub fn hosts(serve: &ServeArgs, namespace: &str) -> std::collections::BTreeSet<String> {
    let service = (!serve.webhook_service.is_empty())
        .then(|| format!("{}.{namespace}.svc", serve.webhook_service));
    service
        .into_iter()
        .chain(serve.webhook_hosts.iter().cloned())
        .collect()
}

/// Answers admission requests.
pub struct Admit {
    config: Arc<Config>,
    namespaces: Arc<Namespaces>,
    client: kube::Client,
    metrics: Arc<Metrics>,
    own_namespace: String,
}

impl std::fmt::Debug for Admit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admit")
            .field("own_namespace", &self.own_namespace)
            .finish_non_exhaustive()
    }
}

impl Admit {
    /// The answer to one request body: status and body.
    pub async fn review(&self, body: &[u8]) -> (StatusCode, String) {
        let request = match review::parse_review(body) {
            Ok(r) => r,
            Err(e) => {
                self.malformed(&e.to_string());
                return (StatusCode::BAD_REQUEST, format!("{e}\n"));
            }
        };
        let (result, patch, added) = self.judge(&request).await;
        self.metrics.webhook_request(result);
        tracing::debug!(
            uid = request.uid,
            namespace = request.namespace.as_deref().unwrap_or_default(),
            ?result,
            ?added,
            "admission"
        );
        (StatusCode::OK, review::response(&request.uid, &patch))
    }

    /// Counts and reports a request that is not an AdmissionReview.
    pub fn malformed(&self, why: &str) {
        self.metrics.webhook_request(WebhookResult::Error);
        tracing::warn!(
            error = why,
            "malformed admission request; the pod is admitted unchanged"
        );
    }

    async fn judge(
        &self,
        request: &review::Request,
    ) -> (WebhookResult, Vec<serde_json::Value>, Vec<String>) {
        let unchanged = (WebhookResult::Unchanged, Vec::new(), Vec::new());
        let Some(pod) = request
            .object
            .as_ref()
            .filter(|_| admission::is_candidate(request, &self.own_namespace))
        else {
            return unchanged;
        };
        let namespace = request.namespace.as_deref().unwrap_or_default();
        let images = pod.images();
        // The cache keeps the labels some selector reads: all the answer depends on.
        let known = self.namespaces.labels(namespace);
        let wanted =
            match admission::wanted_secrets(&self.config, namespace, known.as_ref(), &images) {
                Ok(w) => w,
                Err(admission::NeedLabels) => match self.labels(namespace).await {
                    Ok(labels) => {
                        admission::wanted_secrets(&self.config, namespace, Some(&labels), &images)
                            .unwrap_or_default()
                    }
                    Err(why) => {
                        tracing::warn!(
                            namespace,
                            error = why,
                            "cannot read the namespace's labels; the pod is admitted unchanged"
                        );
                        return (WebhookResult::Error, Vec::new(), Vec::new());
                    }
                },
            };
        let patch = admission::patch(pod, &wanted);
        if patch.is_empty() {
            return unchanged;
        }
        (WebhookResult::Injected, patch, wanted.into_iter().collect())
    }

    /// A namespace's labels from the API server (one created a moment ago is not in the
    /// watch's cache yet).
    async fn labels(&self, namespace: &str) -> Result<BTreeMap<String, String>, String> {
        let api = Api::<Namespace>::all(self.client.clone());
        match tokio::time::timeout(LOOKUP_TIMEOUT, api.get_opt(namespace)).await {
            Ok(Ok(Some(ns))) => Ok(ns.metadata.labels.unwrap_or_default()),
            Ok(Ok(None)) => Err(format!("namespace {namespace} not found")),
            Ok(Err(e)) => Err(format!("get namespace {namespace}: {}", crate::chain(&e))),
            Err(_) => Err(format!(
                "get namespace {namespace}: no answer within {LOOKUP_TIMEOUT:?}"
            )),
        }
    }
}

/// Binds the webhook's port when the webhook is on, so a taken port fails `run` at once.
pub async fn bind(config: &Config, serve: &ServeArgs) -> Result<Option<TcpListener>, crate::Error> {
    if !config.webhook.enabled {
        return Ok(None);
    }
    let addr = SocketAddr::new(serve.webhook_address, config.webhook.port);
    server::bind(addr)
        .await
        .map(Some)
        .map_err(|e| crate::Error::Usage(format!("webhook.port: cannot listen on {addr}: {e}")))
}

/// What the webhook needs from `run`.
#[allow(missing_debug_implementations)] // Handed over once, never shown.
pub struct Parts {
    pub client: kube::Client,
    pub config: Arc<Config>,
    /// The controller's cache of namespaces (every replica fills it).
    pub namespaces: Arc<Namespaces>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// regcred's own namespace: never mutated, and where the Secret lives.
    pub namespace: String,
    pub args: WebhookArgs,
    pub serve: ServeArgs,
    pub listener: TcpListener,
    pub stop: watch::Receiver<bool>,
}

/// Starts the certificate keeper (or file watcher) and the server; the task ends after the
/// server has drained.
pub fn spawn(parts: Parts) -> tokio::task::JoinHandle<()> {
    let Parts {
        client,
        config,
        namespaces,
        metrics,
        health,
        namespace,
        args,
        serve,
        listener,
        stop,
    } = parts;
    health.webhook_pending.store(true, Ordering::Relaxed);
    let slot = Arc::new(server::CertSlot::default());
    if let Some(dir) = &args.webhook_cert_dir {
        tokio::spawn(files::watch(
            dir.clone(),
            slot.clone(),
            health.clone(),
            stop.clone(),
        ));
    } else {
        let keeper = keeper::Keeper {
            client: client.clone(),
            namespace: namespace.clone(),
            secret: args.webhook_secret.clone(),
            configuration: args.webhook_configuration.clone(),
            policy: rotation::Policy {
                hosts: hosts(&serve, &namespace),
                lifetime: serve.webhook_cert_lifetime,
            },
            slot: slot.clone(),
            health: health.clone(),
        };
        tokio::spawn(keeper.run(stop.clone()));
    }
    tracing::info!(
        port = config.webhook.port,
        configuration = args.webhook_configuration,
        certificate = %args.webhook_cert_dir.as_ref().map_or_else(
            || format!("secret {namespace}/{}", args.webhook_secret),
            |d| d.display().to_string(),
        ),
        "serving the admission webhook"
    );
    let admit = Arc::new(Admit {
        config,
        namespaces,
        client,
        metrics,
        own_namespace: namespace,
    });
    tokio::spawn(server::serve(
        listener,
        slot,
        admit,
        stop,
        serve.webhook_shutdown_delay,
    ))
}
