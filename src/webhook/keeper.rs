//! Keeps the webhook's certificates: one Secret of a fixed name in regcred's namespace that
//! every replica serves from, and the `caBundle` of the MutatingWebhookConfiguration.
//!
//! Every replica runs this, not only the leader: a new version's replicas must be able to
//! make the certificate while an old version still holds the Lease, and the webhook must
//! not wait for an election. Replicas agree through the Secret: the first one creates it
//! (the others get "already exists" and read it), and every change is a replace guarded by
//! the `resourceVersion` read, so a replica that lost the race reads the winner's. What to
//! change, and when, is [`rotation::plan`]. The bundle published is always read fresh from
//! the Secret, so a replica with an old view never puts an old bundle back.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt as _, watcher};
use secrecy::{ExposeSecret as _, SecretString};
use tokio::sync::watch;

use super::pki::Pair;
use super::rotation::{self, Material, Parsed, Policy, Publication};
use super::server::CertSlot;
use crate::admin::Health;
use crate::secrets::{API_TIMEOUT, MANAGED_BY_LABEL, MANAGED_BY_VALUE};

/// The Secret's keys: `tls.crt`/`tls.key` serve, `ca.crt` is the bundle to trust.
pub const TLS_CRT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";
pub const CA_BUNDLE: &str = "ca.crt";
const SIGNER_CRT: &str = "ca-signer.crt";
const SIGNER_KEY: &str = "ca-signer.key";
const NEXT_CRT: &str = "ca-next.crt";
const NEXT_KEY: &str = "ca-next.key";
pub const SECRET_TYPE: &str = "kubernetes.io/tls";
const COMPONENT: &str = "webhook";

/// Where the certificates live and what they are for.
#[derive(Clone)]
pub struct Keeper {
    pub client: kube::Client,
    pub namespace: String,
    pub secret: String,
    pub configuration: String,
    pub policy: Policy,
    pub slot: Arc<CertSlot>,
    pub health: Arc<Health>,
}

impl std::fmt::Debug for Keeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keeper")
            .field("secret", &format!("{}/{}", self.namespace, self.secret))
            .field("configuration", &self.configuration)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// What the Secret holds, if it is complete.
#[must_use]
pub fn material_of(secret: &Secret) -> Option<Material> {
    let data = secret.data.as_ref()?;
    let text = |key: &str| {
        data.get(key)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
    };
    let pair = |crt: &str, key: &str| {
        Some(Pair {
            cert: text(crt)?,
            key: SecretString::from(text(key)?),
        })
    };
    Some(Material {
        signer: pair(SIGNER_CRT, SIGNER_KEY)?,
        next: pair(NEXT_CRT, NEXT_KEY),
        serving: pair(TLS_CRT, TLS_KEY)?,
        bundle: super::pki::split(&text(CA_BUNDLE)?),
    })
}

fn secret_of(m: &Material, namespace: &str, name: &str) -> Secret {
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    let mut data = BTreeMap::from([
        (TLS_CRT.to_owned(), bytes(&m.serving.cert)),
        (TLS_KEY.to_owned(), bytes(m.serving.key.expose_secret())),
        (CA_BUNDLE.to_owned(), bytes(&m.bundle_pem())),
        (SIGNER_CRT.to_owned(), bytes(&m.signer.cert)),
        (SIGNER_KEY.to_owned(), bytes(m.signer.key.expose_secret())),
    ]);
    if let Some(next) = &m.next {
        data.insert(NEXT_CRT.to_owned(), bytes(&next.cert));
        data.insert(NEXT_KEY.to_owned(), bytes(next.key.expose_secret()));
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY_LABEL.to_owned(), MANAGED_BY_VALUE.to_owned()),
                (
                    "app.kubernetes.io/component".to_owned(),
                    COMPONENT.to_owned(),
                ),
            ])),
            ..ObjectMeta::default()
        },
        type_: Some(SECRET_TYPE.to_owned()),
        data: Some(data),
        ..Secret::default()
    }
}

/// The CA bundle every webhook of the configuration holds (`None` when they differ or
/// there are none).
#[must_use]
pub fn published_bundle(config: &MutatingWebhookConfiguration) -> Option<Vec<u8>> {
    let webhooks = config.webhooks.as_ref().filter(|w| !w.is_empty())?;
    let first = webhooks[0]
        .client_config
        .ca_bundle
        .as_ref()
        .map(|b| b.0.clone())
        .unwrap_or_default();
    webhooks
        .iter()
        .all(|w| {
            w.client_config
                .ca_bundle
                .as_ref()
                .map(|b| b.0.as_slice())
                .unwrap_or_default()
                == first
        })
        .then_some(first)
}

/// Why a write did not happen.
enum WriteError {
    /// Someone wrote first; the watch brings their version.
    Lost,
    Failed(String),
}

impl Keeper {
    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn configurations(&self) -> Api<MutatingWebhookConfiguration> {
        Api::all(self.client.clone())
    }

    /// Runs until `stop`.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let (secrets, secret_writer) = reflector::store::<Secret>();
        let (configs, config_writer) = reflector::store::<MutatingWebhookConfiguration>();
        let by_name =
            |name: &str| watcher::Config::default().fields(&format!("metadata.name={name}"));
        let secret_events = watcher(self.secrets(), by_name(&self.secret))
            .default_backoff()
            .reflect(secret_writer)
            .map(|e| (true, e.map(|e| matches!(e, watcher::Event::InitDone))));
        let config_events = watcher(self.configurations(), by_name(&self.configuration))
            .default_backoff()
            .reflect(config_writer)
            .map(|e| (false, e.map(|e| matches!(e, watcher::Event::InitDone))));
        let mut events = std::pin::pin!(futures::stream::select(secret_events, config_events));
        let (mut secret_listed, mut config_listed) = (false, false);
        let mut state = State::default();
        let mut wake = Instant::now() + Duration::from_hours(1);
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some((is_secret, Ok(true))) => {
                        if is_secret { secret_listed = true } else { config_listed = true }
                    }
                    Some((is_secret, Err(e))) => {
                        let what = if is_secret { "the webhook Secret" } else { "the webhook configuration" };
                        tracing::warn!(error = %e, "watch of {what} failed; retrying");
                        continue;
                    }
                    Some(_) => {}
                    None => return,
                },
                () = tokio::time::sleep_until(wake.into()) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if !(secret_listed && config_listed) {
                continue;
            }
            let secret = secrets.get(&ObjectRef::new(&self.secret).within(&self.namespace));
            let config = configs.get(&ObjectRef::new(&self.configuration));
            let after = self
                .tick(&mut state, secret.as_deref(), config.as_deref())
                .await;
            wake = Instant::now() + after;
        }
    }

    /// Serves what is stored, makes the changes due, publishes the bundle; how long until
    /// it should look again.
    async fn tick(
        &self,
        state: &mut State,
        secret: Option<&Secret>,
        config: Option<&MutatingWebhookConfiguration>,
    ) -> Duration {
        if let Some(s) = secret.filter(|s| !crate::secrets::is_managed(s)) {
            if !state.warned_foreign {
                tracing::warn!(
                    secret = %format!("{}/{}", self.namespace, self.secret),
                    kind = ?s.type_,
                    "the webhook Secret exists but is not regcred's (no app.kubernetes.io/managed-by=regcred label); \
                     it is left alone and the webhook has no certificate: delete it, or give --webhook-secret another name"
                );
                state.warned_foreign = true;
            }
            return Duration::from_secs(30);
        }
        let now = Timestamp::now();
        let material = secret.and_then(material_of);
        let parsed = material.as_ref().and_then(|m| match m.parse() {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(error = %e, "the webhook Secret holds an unusable certificate; making new ones");
                None
            }
        });
        if let (Some(m), Some(p)) = (&material, &parsed) {
            self.serve(&m.serving, p);
        }
        let publication = state.publication(config, parsed.as_ref());
        let plan = rotation::plan(parsed.as_ref(), &self.policy, publication, now);
        let mut bundle = material.as_ref().map(Material::bundle_pem);
        if !plan.steps.is_empty() {
            match self.write(secret, material, &plan.steps, now).await {
                Ok(written) => {
                    tracing::info!(steps = ?plan.steps, "webhook certificates changed");
                    if let Ok(p) = written.parse() {
                        self.serve(&written.serving, &p);
                    }
                    bundle = Some(written.bundle_pem());
                }
                Err(WriteError::Lost) => return Duration::from_millis(200),
                Err(WriteError::Failed(why)) => {
                    tracing::warn!(error = %why, "cannot write the webhook Secret; retrying");
                    return Duration::from_secs(5);
                }
            }
        }
        if let (Some(config), Some(bundle)) = (config, bundle)
            && published_bundle(config).as_deref() != Some(bundle.as_bytes())
            && let Err(why) = self.publish(config).await
        {
            tracing::warn!(error = %why, configuration = self.configuration, "cannot publish the webhook CA bundle; retrying");
            return Duration::from_secs(2);
        }
        let until = plan.wake.duration_since(Timestamp::now());
        until
            .clamp(
                SignedDuration::from_millis(200),
                SignedDuration::from_mins(10),
            )
            .unsigned_abs()
    }

    /// Serves this certificate from the next handshake on.
    fn serve(&self, serving: &Pair, parsed: &Parsed) {
        match self.slot.set(serving) {
            Ok(true) => tracing::info!(
                expires = %parsed.serving.not_after,
                hosts = ?parsed.serving.hosts,
                issuer = parsed.serving.issuer,
                "serving a new webhook certificate"
            ),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "cannot serve the stored webhook certificate"),
        }
        if self.slot.is_loaded() {
            self.health
                .webhook_pending
                .store(false, std::sync::atomic::Ordering::Relaxed);
        }
    }

    async fn write(
        &self,
        stored: Option<&Secret>,
        material: Option<Material>,
        steps: &[rotation::Step],
        now: Timestamp,
    ) -> Result<Material, WriteError> {
        let next = rotation::execute(material, steps, &self.policy, now)
            .map_err(|e| WriteError::Failed(crate::chain(&e)))?;
        let mut desired = secret_of(&next, &self.namespace, &self.secret);
        let api = self.secrets();
        let call = async {
            match stored {
                None => api.create(&PostParams::default(), &desired).await,
                Some(s) => {
                    desired
                        .metadata
                        .resource_version
                        .clone_from(&s.metadata.resource_version);
                    api.replace(&self.secret, &PostParams::default(), &desired)
                        .await
                }
            }
        };
        match tokio::time::timeout(API_TIMEOUT, call).await {
            Ok(Ok(_)) => Ok(next),
            Ok(Err(kube::Error::Api(s))) if s.code == 409 => Err(WriteError::Lost),
            Ok(Err(e)) => Err(WriteError::Failed(format!(
                "{} secret {}/{}: {}",
                if stored.is_some() {
                    "replace"
                } else {
                    "create"
                },
                self.namespace,
                self.secret,
                crate::chain(&e)
            ))),
            Err(_) => Err(WriteError::Failed(format!(
                "no answer within {API_TIMEOUT:?}"
            ))),
        }
    }

    /// Puts the Secret's bundle, read afresh, into every webhook of the configuration,
    /// only if the configuration is still the version read.
    async fn publish(&self, config: &MutatingWebhookConfiguration) -> Result<(), String> {
        let fresh = tokio::time::timeout(API_TIMEOUT, self.secrets().get_opt(&self.secret))
            .await
            .map_err(|_| {
                format!(
                    "get secret {}: no answer within {API_TIMEOUT:?}",
                    self.secret
                )
            })?
            .map_err(|e| {
                format!(
                    "get secret {}/{}: {}",
                    self.namespace,
                    self.secret,
                    crate::chain(&e)
                )
            })?;
        let Some(material) = fresh.as_ref().and_then(material_of) else {
            return Ok(());
        };
        let encoded = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            material.bundle_pem(),
        );
        // A strategic merge by webhook name sets only each caBundle; the resourceVersion
        // makes it apply only to the configuration as read.
        let webhooks: Vec<serde_json::Value> = config
            .webhooks
            .iter()
            .flatten()
            .map(|w| serde_json::json!({"name": w.name, "clientConfig": {"caBundle": encoded}}))
            .collect();
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": config.metadata.resource_version},
            "webhooks": webhooks,
        });
        let params = PatchParams {
            field_manager: Some(crate::secrets::FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        let api = self.configurations();
        let patch = Patch::Strategic(&patch);
        let call = api.patch(&self.configuration, &params, &patch);
        match tokio::time::timeout(API_TIMEOUT, call).await {
            Ok(Ok(_)) => {
                tracing::info!(
                    configuration = self.configuration,
                    "published the webhook CA bundle"
                );
                Ok(())
            }
            Ok(Err(kube::Error::Api(s))) if s.code == 409 => {
                // Changed meanwhile: its watch brings the change, and another look.
                tracing::debug!(
                    configuration = self.configuration,
                    "webhook configuration changed meanwhile"
                );
                Ok(())
            }
            Ok(Err(e)) => Err(format!(
                "patch mutatingwebhookconfiguration {}: {}",
                self.configuration,
                crate::chain(&e)
            )),
            Err(_) => Err(format!("no answer within {API_TIMEOUT:?}")),
        }
    }
}

/// What this replica remembers between looks.
#[derive(Debug, Default)]
struct State {
    /// When each CA (by subject) was first seen in every webhook's `caBundle`.
    first_seen: HashMap<String, Instant>,
    warned_foreign: bool,
}

impl State {
    fn publication(
        &mut self,
        config: Option<&MutatingWebhookConfiguration>,
        parsed: Option<&Parsed>,
    ) -> Publication {
        let Some(bundle) = config.and_then(published_bundle) else {
            let exists = config.is_some_and(|c| c.webhooks.as_ref().is_some_and(|w| !w.is_empty()));
            return Publication {
                configuration_exists: exists,
                next_published_for: None,
            };
        };
        let subjects: Vec<String> = String::from_utf8(bundle)
            .ok()
            .and_then(|pem| super::pki::bundle(&pem, "published CA bundle").ok())
            .unwrap_or_default()
            .into_iter()
            .map(|f| f.subject)
            .collect();
        let now = Instant::now();
        self.first_seen.retain(|s, _| subjects.contains(s));
        for s in &subjects {
            self.first_seen.entry(s.clone()).or_insert(now);
        }
        let next_published_for = parsed
            .and_then(|p| p.next.as_ref())
            .and_then(|n| self.first_seen.get(&n.subject))
            .and_then(|since| SignedDuration::try_from(now - *since).ok());
        Publication {
            configuration_exists: true,
            next_published_for,
        }
    }
}
