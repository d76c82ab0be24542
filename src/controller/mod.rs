//! `regcred run`: the controller that keeps every selected namespace's pull secret valid.
//!
//! kube-runtime schedules: a `Controller` over Namespaces, triggered also by regcred's own
//! Secrets (watched by name) and, when it patches them, ServiceAccounts; a full
//! reconciliation whenever the tokens change or this replica becomes leader. Each
//! reconciliation is [`crate::reconcile::namespace`], the same code `sync` runs.

mod ledger;
mod namespace;
mod watches;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, ObjectReference, Secret, ServiceAccount};
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Controller, watcher};
use tokio::sync::watch;

use crate::admin::{self, Health};
use crate::config::{Config, ConfigArgs};
use crate::ecr::Tokens;
use crate::events::Events;
use crate::lease::{self, Election, Leadership};
use crate::metrics::Metrics;
use crate::reconcile::TokenView;
use crate::refresher::Refresher;
use crate::secrets::Writer;
use crate::{Error, Exit};

use ledger::Ledger;
use namespace::{ByNamespace, Ctx, error_policy, reconcile_namespace};
use watches::{Change, Watched, Watches, changes, namespace_of, reflected, until_usable};

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
    // One cache of namespaces for the controller and the webhook (every replica fills it).
    let (namespaces, namespace_writer) = reflector::store();
    let webhook = webhook_listener.map(|listener| {
        crate::webhook::spawn(crate::webhook::Parts {
            client: client.clone(),
            config: config.clone(),
            namespaces,
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
        namespace_writer,
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
    /// Whether to watch ServiceAccounts: to patch them, or to remove references regcred
    /// made earlier while it may.
    service_accounts: bool,
    /// What Events about the controller itself are about.
    lease: ObjectReference,
    stop: watch::Receiver<bool>,
    concurrency: u16,
    /// Fills the namespace cache the webhook reads too.
    namespace_writer: reflector::store::Writer<Namespace>,
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
        namespace_writer: writer,
    } = parts;
    let events = Events::new(client.clone());
    let watches = Arc::new(Watches::new(
        metrics.clone(),
        health.clone(),
        events.clone(),
        lease,
    ));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    // Every watch feeds its store first and triggers only from what the store holds: a
    // (re)list is not trusted object by object (kube-runtime's buffered relist swaps the store
    // only at its end, so a trigger for an object new in the list would find nothing and be
    // dropped, and an object deleted while the watch was down sends no event at all); instead
    // the end of every list reconciles every namespace.
    let (relisted, relists) = futures::channel::mpsc::unbounded::<()>();
    let namespaces = writer.as_reader();
    let namespace_watch = watches.register(Watched::Namespaces);
    let namespace_triggers = namespace_triggers(
        Api::<Namespace>::all(client.clone()),
        writer,
        namespaces.clone(),
        relisted.clone(),
        (watches.clone(), namespace_watch),
        ledger.clone(),
        metrics.clone(),
    );
    let controller = Controller::for_stream(namespace_triggers, namespaces.clone())
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency));

    let (mut controller, secrets) =
        secret_watches(controller, &client, &config, &relisted, &watches);
    let service_account_names = Arc::new(ByNamespace::default());
    let service_accounts = if service_accounts {
        let (sa_changes, sa_store) = service_account_watch(
            Api::<ServiceAccount>::all(client.clone()),
            relisted.clone(),
            &watches,
            service_account_names.clone(),
        );
        controller =
            controller.watches_stream(sa_changes.map(|c| Ok(c.into_object())), namespace_of);
        Some(sa_store)
    } else {
        None
    };
    drop(relisted);

    let leadership = election.subscribe();
    let became_leader = changes(leadership.clone())
        .filter(|l| std::future::ready(l.is_leading()))
        .map(|_| ());
    let tokens_changed = changes(tokens.clone()).map(|_| ());
    let ctx = Arc::new(Ctx {
        writer: Writer::new(client.clone()),
        events,
        client,
        config,
        metrics,
        health,
        tokens,
        election,
        stop: stop.clone(),
        watches,
        namespaces: namespaces.clone(),
        secrets,
        service_accounts,
        service_account_names,
        ledger,
    });
    tokio::spawn(readiness(ctx.clone(), leadership, namespace_watch));

    let mut stop_ctl = stop;
    controller
        .reconcile_all_on(tokens_changed)
        .reconcile_all_on(became_leader)
        .reconcile_all_on(relists)
        .graceful_shutdown_on(async move {
            let _ = stop_ctl.wait_for(|s| *s).await;
        })
        .run(reconcile_namespace, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile");
            }
        })
        .await;
}

/// One watch of regcred's secrets per name (configured and former), by field selector so RBAC
/// can be name-scoped, each triggering its namespace.
fn secret_watches(
    mut controller: Controller<Namespace>,
    client: &kube::Client,
    config: &Config,
    relisted: &futures::channel::mpsc::UnboundedSender<()>,
    watches: &Arc<Watches>,
) -> (
    Controller<Namespace>,
    BTreeMap<String, namespace::Watched<Secret>>,
) {
    let mut secrets = BTreeMap::new();
    for name in config.managed_names() {
        let (store, writer) = reflector::store();
        let watch = watches.register(Watched::Secrets(name.clone()));
        let selected = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let changes = reflected(
            Api::<Secret>::all(client.clone()),
            selected,
            writer,
            relisted.clone(),
            watches.clone(),
            watch,
            || {},
        );
        controller = controller.watches_stream(changes.map(|c| Ok(c.into_object())), namespace_of);
        secrets.insert(name, namespace::Watched { store, watch });
    }
    (controller, secrets)
}

/// The ServiceAccount watch: its changes, and its store with the index of names by
/// namespace that the watch keeps current.
fn service_account_watch(
    api: Api<ServiceAccount>,
    relisted: futures::channel::mpsc::UnboundedSender<()>,
    watches: &Arc<Watches>,
    names: Arc<ByNamespace>,
) -> (
    impl futures::Stream<Item = Change<ServiceAccount>> + Send + 'static,
    namespace::Watched<ServiceAccount>,
) {
    let (store, writer) = reflector::store();
    let watch = watches.register(Watched::ServiceAccounts);
    let changes = reflected(
        api,
        watcher::Config::default(),
        writer,
        relisted,
        watches.clone(),
        watch,
        {
            let (names, store) = (names.clone(), store.clone());
            move || names.rebuild(&store)
        },
    )
    .inspect(move |change| match change {
        Change::Applied(sa) => names.applied(sa),
        Change::Deleted(sa) => names.deleted(sa),
    });
    (changes, namespace::Watched { store, watch })
}

/// The namespace watch, as the controller's triggers: a namespace that appears or changes;
/// one deleted is forgotten by the ledger (and, after a relist, which sends no deletions,
/// every one that is gone).
fn namespace_triggers(
    api: Api<Namespace>,
    writer: reflector::store::Writer<Namespace>,
    namespaces: reflector::Store<Namespace>,
    relisted: futures::channel::mpsc::UnboundedSender<()>,
    (watches, id): (Arc<Watches>, watches::WatchId),
    ledger: Arc<Mutex<Ledger>>,
    metrics: Arc<Metrics>,
) -> impl futures::Stream<Item = Result<Namespace, watcher::Error>> + Send + 'static {
    let lock = |ledger: &Mutex<Ledger>| {
        ledger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .tracked_and_selected()
    };
    let (on_list, on_change) = ((ledger.clone(), metrics.clone()), (ledger, metrics));
    reflected(
        api,
        watcher::Config::default(),
        writer,
        relisted,
        watches,
        id,
        move || {
            let (ledger, metrics) = &on_list;
            ledger
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .retain(|ns| namespaces.get(&ObjectRef::new(ns)).is_some());
            let (tracked, selected) = lock(ledger);
            metrics.namespaces_tracked(tracked);
            metrics.namespaces_selected(selected);
        },
    )
    .filter_map(move |event| {
        let trigger = match event {
            Change::Applied(ns) => Some(Ok(ns)),
            Change::Deleted(ns) => {
                let (ledger, metrics) = &on_change;
                ledger
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .forget(ns.metadata.name.as_deref().unwrap_or_default());
                let (tracked, selected) = lock(ledger);
                metrics.namespaces_tracked(tracked);
                metrics.namespaces_selected(selected);
                None
            }
        };
        std::future::ready(trigger)
    })
}

/// Readiness for what this replica is, once the election has answered: a standby is ready
/// once its caches are filled; a leader once it has reconciled every namespace in this
/// term. The ledger follows leadership here too: a new term starts from nothing, a standby
/// keeps nothing and exports no selection.
async fn readiness(
    ctx: Arc<Ctx>,
    mut leading: watch::Receiver<Leadership>,
    namespace_watch: watches::WatchId,
) {
    // Every replica looks like a standby until the election first answers; one that is
    // about to lead must not report ready before it has reconciled anything.
    if leading.changed().await.is_err() {
        return;
    }
    until_usable(&ctx.namespaces, &ctx.watches, namespace_watch, &ctx.stop).await;
    loop {
        let now = *leading.borrow_and_update();
        {
            let mut ledger = ctx.ledger();
            // A replica that already leads may have reconciled (and noted) a whole small
            // first pass meanwhile: the same term is not started over.
            if ledger.follow(now) || !now.is_leading() {
                ctx.health
                    .reconciled
                    .store(!now.is_leading(), Ordering::Relaxed);
            }
            ctx.metrics.namespaces_selected(ledger.selected());
            ctx.metrics.namespaces_tracked(ledger.tracked());
        }
        if leading.changed().await.is_err() {
            return;
        }
    }
}
