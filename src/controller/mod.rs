//! `regcred run`: the controller that keeps every selected namespace's pull secret valid.
//!
//! kube-runtime schedules: a `Controller` over Namespaces, triggered also by regcred's own
//! Secrets (watched by name) and, when it patches them, ServiceAccounts; a full
//! reconciliation whenever the tokens change or this replica becomes leader. Each
//! reconciliation is [`crate::reconcile::namespace`], the same code `sync` runs.

mod accounts;
mod cache;
mod ledger;
mod namespace;
mod queue;
mod term;
mod triggers;
mod watches;

pub use cache::Namespaces;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, ObjectReference, Secret};
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher;
use tokio::sync::watch;

use crate::admin::{self, Health};
use crate::config::{Config, ConfigArgs};
use crate::ecr::Tokens;
use crate::events::Events;
use crate::lease::{self, Election, Leadership, Pace};
use crate::metrics::Metrics;
use crate::reconcile::TokenView;
use crate::refresher::Refresher;
use crate::secrets::Writer;
use crate::{Error, Exit};

use cache::Secrets;
use ledger::Ledger;
use namespace::{Ctx, reconcile_namespace};
use queue::Queue;
use term::readiness;
use triggers::{KeepNamespaces, KeepSecrets, selector_label_keys, trigger};
use watches::{Watched, Watches, changes, reflected};

#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Address of the admin server (/livez, /readyz, /metrics).
    #[arg(
        long,
        env = "REGCRED_ADMIN_ADDR",
        default_value = "0.0.0.0:8080",
        value_name = "ADDR"
    )]
    pub admin_addr: SocketAddr,
    #[command(flatten)]
    pub lease: lease::LeaseArgs,
    /// How long the Lease stays held without renewal: a failed leader is replaced within
    /// about this time.
    #[arg(long, env = "REGCRED_LEASE_DURATION", default_value = "15s", value_name = "DURATION", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// This replica's identity in the Lease (the pod name in a pod; default host name and
    /// process id).
    #[arg(long, env = "POD_NAME", value_name = "NAME")]
    pub identity: Option<String>,
    /// Namespaces reconciled at once.
    #[arg(long, env = "REGCRED_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
    /// At most this many writes (secrets and ServiceAccounts) a second, evenly spaced: for
    /// a small API server, a rotation of every namespace spread out (20,000 namespaces at
    /// 100/s take 200 s). Off by default: writes go as fast as `--concurrency` allows.
    #[arg(long, env = "REGCRED_MAX_WRITES_PER_SECOND", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_writes_per_second: Option<u32>,
    #[command(flatten)]
    pub webhook: crate::webhook::WebhookArgs,
    #[command(flatten)]
    pub webhook_serve: crate::webhook::ServeArgs,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d: jiff::SignedDuration = s
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 15s)"))?;
    if d.as_secs() < 1 {
        return Err(format!("{s:?}: at least 1s"));
    }
    Ok(d.unsigned_abs())
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "regcred".into());
    format!("{host}-{}", std::process::id())
}

/// Runs the controller until SIGTERM or SIGINT.
pub async fn run(args: &RunArgs) -> Result<Exit, Error> {
    let config = Arc::new(args.config.load()?);
    let listener = admin::bind(args.admin_addr)
        .await
        .map_err(|e| Error::Usage(format!("--admin-addr {}: {e}", args.admin_addr)))?;
    let webhook_listener = crate::webhook::bind(&config, &args.webhook_serve).await?;
    let client = crate::k8s::client().await?;
    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let (lease_namespace, lease_name) = (
        args.lease.lease_namespace.clone(),
        args.lease.lease_name.clone(),
    );
    tracing::info!(
        identity,
        lease = %format!("{lease_namespace}/{lease_name}"),
        admin = %args.admin_addr,
        secrets = ?config.secret_names(),
        "starting the controller"
    );

    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let (stop_tx, stop) = watch::channel(false);
    let (tokens_tx, tokens) = watch::channel(Arc::new(TokenView::default()));

    tokio::spawn(signals(health.clone(), stop_tx));
    let admin = tokio::spawn(admin::serve(
        listener,
        health.clone(),
        metrics.clone(),
        stop.clone(),
    ));
    let (election, election_task) = lease::start(
        client.clone(),
        lease_namespace.clone(),
        lease_name.clone(),
        identity.clone(),
        lease::Timing::new(args.lease_duration),
        stop.clone(),
    );
    let refresher = Refresher::new(
        Tokens::from_env().await,
        &config,
        metrics.clone(),
        health.clone(),
    );
    let refresher = tokio::spawn(refresher.run(tokens_tx, election.subscribe(), stop.clone()));
    tokio::spawn(leader_gauge(election.subscribe(), metrics.clone()));
    let service_accounts =
        config.patches_service_accounts() || crate::k8s::may_tend_service_accounts(&client).await;
    // One cache of namespaces for the controller and the webhook (every replica fills it),
    // with the labels some selector reads and no other.
    let namespaces = Arc::new(Namespaces::new(selector_label_keys(&config)));
    let webhook = webhook_listener.map(|listener| {
        crate::webhook::spawn(crate::webhook::Parts {
            client: client.clone(),
            config: config.clone(),
            namespaces: namespaces.clone(),
            metrics: metrics.clone(),
            health: health.clone(),
            namespace: lease_namespace.clone(),
            args: args.webhook.clone(),
            serve: args.webhook_serve.clone(),
            listener,
            stop: stop.clone(),
        })
    });

    controller(ControllerParts {
        lease: lease_reference(&lease_namespace, &lease_name),
        client: client.clone(),
        config,
        metrics,
        health,
        tokens,
        election,
        service_accounts,
        stop: stop.clone(),
        concurrency: args.concurrency,
        pace: args
            .max_writes_per_second
            .map(|n| Arc::new(Pace::per_second(n))),
        namespaces,
    })
    .await;

    // Nothing writes any more (this replica stopped leading on the signal, and the last
    // reconciliations are over): only now may another replica take the Lease at once.
    let held = election_task.await.unwrap_or(false);
    if held {
        lease::release(
            client,
            &lease_namespace,
            &lease_name,
            &identity,
            Duration::from_secs(3),
        )
        .await;
    }
    let webhook = webhook.map(|w| async move {
        // It answers for its shutdown delay after the signal, then drains.
        let _ = w.await;
    });
    finish(refresher, admin, webhook).await;
    tracing::info!("stopped");
    Ok(Exit::Ok)
}

/// The Lease, as what Events about the controller itself are about.
fn lease_reference(namespace: &str, name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("coordination.k8s.io/v1".into()),
        kind: Some("Lease".into()),
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        ..ObjectReference::default()
    }
}

/// Waits for what stops on the same signal as the controller: the refresher and the admin
/// server briefly (so SIGTERM exits promptly), the webhook for its own shutdown delay.
async fn finish<R, A>(
    refresher: tokio::task::JoinHandle<R>,
    admin: tokio::task::JoinHandle<A>,
    webhook: Option<impl std::future::Future<Output = ()>>,
) {
    let rest = async {
        let _ = refresher.await;
        let _ = admin.await;
    };
    if tokio::time::timeout(Duration::from_secs(2), rest)
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not stop in time; exiting anyway");
    }
    if let Some(webhook) = webhook {
        webhook.await;
    }
}

/// The first SIGTERM or SIGINT stops everything gracefully (readiness goes false at once);
/// a second one aborts.
async fn signals(health: Arc<Health>, stop: watch::Sender<bool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot listen for signals");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down");
    health.stopping.store(true, Ordering::Relaxed);
    let _ = stop.send(true);
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::warn!("second signal: aborting");
    std::process::exit(Exit::Failed as i32);
}

async fn leader_gauge(mut leading: watch::Receiver<Leadership>, metrics: Arc<Metrics>) {
    loop {
        metrics.leader(leading.borrow_and_update().is_leading());
        if leading.changed().await.is_err() {
            return;
        }
    }
}

struct ControllerParts {
    client: kube::Client,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    tokens: watch::Receiver<Arc<TokenView>>,
    election: Election,
    /// Whether to tend ServiceAccounts: to patch them, or to remove references regcred
    /// made earlier while it may.
    service_accounts: bool,
    /// What Events about the controller itself are about.
    lease: ObjectReference,
    stop: watch::Receiver<bool>,
    concurrency: u16,
    pace: Option<Arc<Pace>>,
    /// The namespace cache the webhook reads too.
    namespaces: Arc<Namespaces>,
}

async fn controller(parts: ControllerParts) {
    let ControllerParts {
        client,
        config,
        metrics,
        health,
        tokens,
        election,
        service_accounts,
        lease,
        stop,
        concurrency,
        pace,
        namespaces,
    } = parts;
    let events = Events::new(client.clone());
    let watches = Arc::new(Watches::new(
        metrics.clone(),
        health.clone(),
        events.clone(),
        lease,
    ));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let queue = Arc::new(Queue::default());
    // Every watch feeds its cache first and triggers only from what the cache holds: a
    // (re)list is not trusted object by object (an object deleted while the watch was down
    // sends no event at all); instead the end of every list reconciles every namespace.
    let (relisted, relists) = futures::channel::mpsc::unbounded::<()>();
    let namespace_watch = watches.register(Watched::Namespaces);
    // Metadata only: a namespace's spec and status say nothing regcred reads (a namespace
    // being deleted has its deletionTimestamp set before its phase says so).
    let namespace_changes = reflected(
        watches::watch(
            Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
            watcher::Config::default(),
        ),
        KeepNamespaces {
            cache: namespaces.clone(),
            ledger: ledger.clone(),
            queue: queue.clone(),
            metrics: metrics.clone(),
        },
        (relisted.clone(), true),
        watches.clone(),
        namespace_watch,
    )
    .map(watches::Change::into_inner)
    .boxed();
    let (mut triggers, secrets) = secret_watches(&client, &config, &relisted, &watches);
    triggers.push(namespace_changes);
    let service_accounts = service_accounts.then(|| {
        let (changes, tended) =
            accounts::watch(&client, accounts::Scope::of(&config), &relisted, &watches);
        triggers.extend(changes);
        tended
    });
    drop(relisted);

    let leadership = election.subscribe();
    let ctx = Arc::new(Ctx {
        writer: Writer::new(client.clone()),
        events,
        client,
        config,
        metrics,
        health,
        tokens: tokens.clone(),
        election,
        stop: stop.clone(),
        watches,
        namespaces: namespace::Watched {
            cache: namespaces,
            watch: namespace_watch,
        },
        secrets,
        service_accounts,
        ledger,
        pace,
    });
    tokio::spawn(readiness(ctx.clone(), queue.clone(), leadership.clone()));
    let triggering = tokio::spawn(trigger(
        ctx.clone(),
        queue.clone(),
        futures::stream::select_all(triggers),
        relists,
        (changes(tokens).map(|_| ()).boxed(), leadership),
    ));
    work(ctx, &queue, concurrency, stop).await;
    triggering.abort();
}

/// One watch of regcred's secrets per name (configured and former), by field selector so
/// RBAC can be name-scoped: their triggers, and their caches by name.
fn secret_watches(
    client: &kube::Client,
    config: &Config,
    relisted: &futures::channel::mpsc::UnboundedSender<()>,
    watches: &Arc<Watches>,
) -> (
    Vec<futures::stream::BoxStream<'static, String>>,
    BTreeMap<String, namespace::Watched<Secrets>>,
) {
    let mut triggers = Vec::new();
    let mut secrets = BTreeMap::new();
    for name in config.managed_names() {
        let cache = Arc::new(Secrets::default());
        let watch = watches.register(Watched::Secrets(name.clone()));
        let selected = watcher::Config::default().fields(&format!("metadata.name={name}"));
        triggers.push(
            reflected(
                watches::watch(Api::<Secret>::all(client.clone()), selected),
                KeepSecrets(cache.clone()),
                (relisted.clone(), false),
                watches.clone(),
                watch,
            )
            .map(watches::Change::into_inner)
            .boxed(),
        );
        secrets.insert(name, namespace::Watched { cache, watch });
    }
    (triggers, secrets)
}

/// `concurrency` workers reconcile what the queue hands out until `stop`; then the
/// reconciliations under way finish (each stops writing as its leadership ends) and
/// nothing new starts.
async fn work(
    ctx: Arc<Ctx>,
    queue: &Arc<Queue>,
    concurrency: u16,
    mut stop: watch::Receiver<bool>,
) {
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (ctx, queue) = (ctx.clone(), queue.clone());
            tokio::spawn(async move {
                while let Some(name) = queue.next().await {
                    let then = reconcile_namespace(&name, &ctx).await;
                    queue.done(&name, then);
                }
            })
        })
        .collect();
    let _ = stop.wait_for(|s| *s).await;
    queue.close();
    for w in workers {
        let _ = w.await;
    }
}
