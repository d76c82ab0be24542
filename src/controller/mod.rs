//! `regcred run`: the controller that keeps every selected namespace's pull secret valid.
//!
//! kube-runtime schedules: a `Controller` over Namespaces, triggered also by regcred's own
//! Secrets (watched by name) and, when it patches them, ServiceAccounts; a full
//! reconciliation whenever the tokens change or this replica becomes leader. Each
//! reconciliation is [`reconcile::namespace`], the same code `sync` runs.

mod namespace;
mod watches;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::Api;
use kube::runtime::reflector;
use kube::runtime::{Controller, watcher};
use tokio::sync::watch;

use crate::admin::{self, Health};
use crate::config::{Config, ConfigArgs};
use crate::ecr::Tokens;
use crate::events::Events;
use crate::lease;
use crate::metrics::Metrics;
use crate::reconcile::TokenView;
use crate::refresher::Refresher;
use crate::secrets::Writer;
use crate::{Error, Exit};

use namespace::{Ctx, error_policy, reconcile_namespace};
use watches::{Change, changes, namespace_of, reflected, until_ready};

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
    let client = crate::k8s::client().await?;
    let identity = args.identity.clone().unwrap_or_else(default_identity);
    tracing::info!(
        identity,
        lease = %format!("{}/{}", args.lease.lease_namespace, args.lease.lease_name),
        admin = %args.admin_addr,
        secrets = ?config.secret_names(),
        "starting the controller"
    );

    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let (stop_tx, stop) = watch::channel(false);
    let (leading_tx, leading) = watch::channel(false);
    let (tokens_tx, tokens) = watch::channel(Arc::new(TokenView::default()));

    tokio::spawn(signals(health.clone(), stop_tx));
    let admin = tokio::spawn(admin::serve(
        listener,
        health.clone(),
        metrics.clone(),
        stop.clone(),
    ));
    let election = tokio::spawn({
        let (client, leading_tx, stop) = (client.clone(), leading_tx, stop.clone());
        let (namespace, name) = (
            args.lease.lease_namespace.clone(),
            args.lease.lease_name.clone(),
        );
        let timing = lease::Timing::new(args.lease_duration);
        async move {
            lease::run(
                client, &namespace, &name, &identity, timing, leading_tx, stop,
            )
            .await;
        }
    });
    let refresher = Refresher::new(
        Tokens::from_env().await,
        &config,
        metrics.clone(),
        health.clone(),
    );
    let refresher = tokio::spawn(refresher.run(tokens_tx, leading.clone(), stop.clone()));
    tokio::spawn(leader_gauge(leading.clone(), metrics.clone()));

    let controller = controller(ControllerParts {
        client,
        config,
        metrics,
        health,
        tokens,
        leading,
        stop: stop.clone(),
        concurrency: args.concurrency,
    });
    controller.await;

    // Everything else stops on the same signal; bound the wait so SIGTERM exits promptly.
    let rest = async {
        let _ = election.await;
        let _ = refresher.await;
        let _ = admin.await;
    };
    if tokio::time::timeout(Duration::from_secs(4), rest)
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not stop in time; exiting anyway");
    }
    tracing::info!("stopped");
    Ok(Exit::Ok)
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

async fn leader_gauge(mut leading: watch::Receiver<bool>, metrics: Arc<Metrics>) {
    loop {
        metrics.leader(*leading.borrow_and_update());
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
    leading: watch::Receiver<bool>,
    stop: watch::Receiver<bool>,
    concurrency: u16,
}

async fn controller(parts: ControllerParts) {
    let ControllerParts {
        client,
        config,
        metrics,
        health,
        tokens,
        leading,
        stop,
        concurrency,
    } = parts;
    // Every watch feeds its store first and triggers only from what the store holds: a
    // (re)list is not trusted object by object (kube-runtime's buffered relist swaps the store
    // only at its end, so a trigger for an object new in the list would find nothing and be
    // dropped, and an object deleted while the watch was down sends no event at all); instead
    // the end of every list reconciles every namespace.
    let (relisted, relists) = futures::channel::mpsc::unbounded::<()>();
    let (namespaces, writer) = reflector::store();
    let namespace_triggers = reflected(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
        writer,
        relisted.clone(),
    )
    .filter(|event| std::future::ready(matches!(event, Change::Applied(_))))
    .map(|event| Ok(event.into_object()));
    let mut controller = Controller::for_stream(namespace_triggers, namespaces.clone())
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency));

    let mut secrets = BTreeMap::new();
    for name in config.secret_names() {
        let (reader, writer) = reflector::store();
        let watch = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let changes = reflected(
            Api::<Secret>::all(client.clone()),
            watch,
            writer,
            relisted.clone(),
        );
        controller = controller.watches_stream(changes.map(|c| Ok(c.into_object())), namespace_of);
        secrets.insert(name, reader);
    }
    let service_accounts = if config.patches_service_accounts() {
        let (reader, writer) = reflector::store();
        let api = Api::<ServiceAccount>::all(client.clone());
        let changes = reflected(api, watcher::Config::default(), writer, relisted.clone());
        controller = controller.watches_stream(changes.map(|c| Ok(c.into_object())), namespace_of);
        Some(reader)
    } else {
        None
    };
    drop(relisted);

    let became_leader = changes(leading.clone())
        .filter(|l| std::future::ready(*l))
        .map(|_| ());
    let tokens_changed = changes(tokens.clone()).map(|_| ());
    let ctx = Arc::new(Ctx {
        writer: Writer::new(client.clone()),
        events: Events::new(client.clone()),
        client,
        config,
        metrics,
        health,
        tokens,
        leading: leading.clone(),
        namespaces: namespaces.clone(),
        secrets,
        service_accounts,
        reconciled: Mutex::default(),
        failures: Mutex::default(),
        selected: Mutex::default(),
    });
    tokio::spawn(readiness(ctx.clone(), leading));
    tokio::spawn(selected_gauge(ctx.clone(), stop.clone()));

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

/// Readiness for what this replica is, once the election has answered: a standby is ready
/// once its caches are filled; a leader once it has reconciled every namespace since it
/// took over.
async fn readiness(ctx: Arc<Ctx>, mut leading: watch::Receiver<bool>) {
    // Every replica looks like a standby until the election first answers; one that is
    // about to lead must not report ready before it has reconciled anything.
    if leading.changed().await.is_err() {
        return;
    }
    until_ready(&ctx.namespaces).await;
    // A replica that already leads has reconciled only as leader so far: keep what it did
    // (clearing it here could forget a whole small first pass that finished meanwhile, and
    // readiness would never come). Only later changes of leadership start over.
    if !*leading.borrow_and_update() {
        ctx.health.reconciled.store(true, Ordering::Relaxed);
    }
    while leading.changed().await.is_ok() {
        let lead = *leading.borrow_and_update();
        ctx.reconciled.lock().expect("not poisoned").clear();
        ctx.health.reconciled.store(!lead, Ordering::Relaxed);
    }
}

/// Drops deleted namespaces from `regcred_namespaces_selected` (reconciliations add and
/// remove the others as they go).
async fn selected_gauge(ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let present: HashSet<String> = ctx
            .namespaces
            .state()
            .iter()
            .filter_map(|ns| ns.metadata.name.clone())
            .collect();
        let mut selected = ctx.selected.lock().expect("not poisoned");
        selected.retain(|name| present.contains(name));
        ctx.metrics.namespaces_selected(selected.len());
    }
}
