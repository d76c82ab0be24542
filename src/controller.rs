//! `regcred run`: the controller that keeps every selected namespace's pull secret valid.
//!
//! kube-runtime schedules: a `Controller` over Namespaces, triggered also by regcred's own
//! Secrets (watched by name) and, when it patches them, ServiceAccounts; a full
//! reconciliation whenever the tokens change or this replica becomes leader. Each
//! reconciliation is [`reconcile::namespace`], the same code `sync` runs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use futures::{Stream, StreamExt as _};
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt as _, watcher};
use rand::Rng as _;
use tokio::sync::watch;

use crate::admin::{self, Health};
use crate::config::{Config, ConfigArgs, ServiceAccounts};
use crate::ecr::Tokens;
use crate::events::Events;
use crate::lease;
use crate::metrics::Metrics;
use crate::reconcile::{self, Context, Freshness, Outcome, TokenView};
use crate::refresher::{self, Refresher};
use crate::secrets::Writer;
use crate::{Error, Exit};

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
    // One cache of namespaces for the controller and the webhook (every replica fills it).
    let (namespaces, namespace_writer) = reflector::store();
    let webhook = webhook_listener.map(|listener| {
        crate::webhook::spawn(crate::webhook::Parts {
            client: client.clone(),
            config: config.clone(),
            namespaces,
            metrics: metrics.clone(),
            health: health.clone(),
            namespace: args.lease.lease_namespace.clone(),
            args: args.webhook.clone(),
            serve: args.webhook_serve.clone(),
            listener,
            stop: stop.clone(),
        })
    });

    let controller = controller(ControllerParts {
        client,
        config,
        metrics,
        health,
        tokens,
        leading,
        stop: stop.clone(),
        concurrency: args.concurrency,
        namespace_writer,
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
    if let Some(webhook) = webhook {
        // It answers for its shutdown delay after the signal, then drains.
        let _ = webhook.await;
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

/// How soon a broken watch is retried: from 250 ms doubling to 4 s, with jitter. Shorter
/// than kube-runtime's default (up to 30 s) so drift made while the API server was away is
/// repaired within seconds of its return; one replica retrying every few seconds costs the
/// API server nothing.
#[derive(Debug, Default)]
struct WatchBackoff {
    attempt: u32,
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let base = Duration::from_millis(250).saturating_mul(1 << self.attempt.min(4));
        self.attempt = self.attempt.saturating_add(1);
        Some(
            base.mul_f64(1.0 + rand::rng().random::<f64>() / 2.0)
                .min(Duration::from_secs(4)),
        )
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A stream of a watch channel's values after each change.
fn changes<T: Clone + Send + Sync + 'static>(
    rx: watch::Receiver<T>,
) -> impl Stream<Item = T> + Send {
    futures::stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok()?;
        let value = rx.borrow_and_update().clone();
        Some((value, rx))
    })
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
    namespace_writer: reflector::store::Writer<Namespace>,
}

/// What every reconciliation shares.
struct Ctx {
    client: kube::Client,
    writer: Writer,
    events: Events,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    tokens: watch::Receiver<Arc<TokenView>>,
    leading: watch::Receiver<bool>,
    namespaces: Store<Namespace>,
    secrets: BTreeMap<String, Store<Secret>>,
    service_accounts: Option<Store<ServiceAccount>>,
    /// Namespaces reconciled, with every token at hand, since this replica became leader.
    /// The first reconciliation of each leaves a sound, fresh secret alone even if it holds
    /// an older token (a previous leader's, or sync's), so a restart or failover is not a
    /// write to every namespace; later ones want exactly the current token, which repairs
    /// any edit.
    reconciled: Mutex<HashSet<String>>,
    /// Consecutive failures per namespace, for backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Namespaces served, as of their last reconciliation.
    selected: Mutex<HashSet<String>>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Failed(String);

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
        namespace_writer: writer,
    } = parts;
    // Every watch feeds its store first and triggers only from what the store holds: a
    // (re)list is not trusted object by object (kube-runtime's buffered relist swaps the store
    // only at its end, so a trigger for an object new in the list would find nothing and be
    // dropped, and an object deleted while the watch was down sends no event at all); instead
    // the end of every list reconciles every namespace.
    let (relisted, relists) = futures::channel::mpsc::unbounded::<()>();
    let namespaces = writer.as_reader();
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

/// An object a watch saw change, after its store took the change in.
enum Change<K> {
    Applied(K),
    Deleted(K),
}

impl<K> Change<K> {
    fn into_object(self) -> K {
        match self {
            Self::Applied(k) | Self::Deleted(k) => k,
        }
    }
}

/// Objects per page of a watch's (re)list. Each page is held whole, as JSON and decoded,
/// while it is taken in; kube-runtime's default of 500 made that transient most of the
/// peak memory at 1,000 namespaces (glibc keeps what it freed). 100 costs a few more list
/// requests, once per (re)list.
const LIST_PAGE: u32 = 100;

/// A watch reflected into `writer`'s store: single changes as they come, and a signal on
/// `relisted` whenever a full list has been taken in. Errors are retried with
/// [`WatchBackoff`] and logged, never passed on (one broken watch must not pause the
/// others' triggers). Stored objects drop their `managedFields`, which nothing here reads
/// and which were about a third of a stored Secret or Namespace.
fn reflected<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: reflector::store::Writer<K>,
    relisted: futures::channel::mpsc::UnboundedSender<()>,
) -> impl Stream<Item = Change<K>> + Send + 'static
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    watcher(api, config.page_size(LIST_PAGE))
        .backoff(WatchBackoff::default())
        .modify(|obj| obj.meta_mut().managed_fields = None)
        .reflect(writer)
        .filter_map(move |event| {
            let change = match event {
                Ok(watcher::Event::Apply(k)) => Some(Change::Applied(k)),
                Ok(watcher::Event::Delete(k)) => Some(Change::Deleted(k)),
                Ok(watcher::Event::InitDone) => {
                    let _ = relisted.unbounded_send(());
                    None
                }
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => None,
                Err(e) => {
                    tracing::warn!(error = %e, "watch failed; retrying");
                    None
                }
            };
            std::future::ready(change)
        })
}

#[allow(clippy::needless_pass_by_value)] // The mapper signature kube-runtime asks for.
fn namespace_of<K: kube::Resource>(obj: K) -> Option<ObjectRef<Namespace>> {
    obj.meta().namespace.as_deref().map(ObjectRef::new)
}

/// Waits until a store holds its first full list (or its writer is gone).
///
/// Not `Store::wait_until_ready` alone: in kube-runtime 5 it wakes only the last of several
/// concurrent waiters (its `DelayedInit` polls one oneshot receiver, which keeps one waker),
/// so with reconciliations waiting at once all but one hung for ever: their namespaces were
/// never served, readiness never came, and SIGTERM never finished. Looking again every 50 ms
/// cannot miss the moment.
async fn until_ready<K>(store: &Store<K>)
where
    K: reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    while tokio::time::timeout(Duration::from_millis(50), store.wait_until_ready())
        .await
        .is_err()
    {}
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

async fn reconcile_namespace(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action, Failed> {
    if !*ctx.leading.borrow() {
        return Ok(Action::await_change());
    }
    for store in ctx.secrets.values() {
        until_ready(store).await;
    }
    if let Some(store) = &ctx.service_accounts {
        until_ready(store).await;
    }
    let name = ns.metadata.name.clone().unwrap_or_default();
    let stored: BTreeMap<String, Secret> = ctx
        .secrets
        .iter()
        .filter_map(|(secret, store)| {
            let found = store.get(&ObjectRef::new(secret).within(&name))?;
            Some((secret.clone(), Secret::clone(&found)))
        })
        .collect();
    let service_accounts = ctx.service_accounts_in(&name);
    let view = ctx.tokens.borrow().clone();
    let freshness = if ctx.reconciled.lock().expect("not poisoned").contains(&name) {
        Freshness::Exact
    } else {
        Freshness::SoundAndFresh
    };
    let started = Instant::now();
    let report = reconcile::namespace(
        &Context {
            client: &ctx.client,
            writer: &ctx.writer,
            config: &ctx.config,
            tokens: &view,
            freshness,
            dry_run: false,
            metrics: Some(&ctx.metrics),
            events: Some(&ctx.events),
        },
        &ns,
        &stored,
        &service_accounts,
    )
    .await;
    ctx.metrics
        .reconcile_duration(started.elapsed().as_secs_f64());
    ctx.note_selection(&name, report.is_selected());
    tracing::debug!(namespace = name, outcomes = ?report.secrets, ?freshness, "reconciled");
    if report.secrets.values().any(|o| *o == Outcome::Pending) {
        // The token arrives with a full reconciliation of its own.
        return Ok(Action::await_change());
    }
    // A pass made before every token was at hand left fresh secrets alone for want of a
    // token; only one made with them counts as the first, so the pass their arrival
    // triggers still leaves fresh secrets alone instead of rewriting every namespace.
    if ctx.has_every_token(&view) {
        ctx.mark_reconciled(&name);
    }
    let failures: Vec<String> = report
        .secrets
        .values()
        .filter_map(|o| match o {
            Outcome::Failed(why) => Some(why.clone()),
            _ => None,
        })
        .collect();
    if failures.is_empty() {
        ctx.failures.lock().expect("not poisoned").remove(&name);
        // A secret left with an older token is looked at again when that token is due.
        Ok(recheck_after(
            &report.expiries,
            ctx.config.refresh.before,
            jiff::Timestamp::now(),
        )
        .map_or_else(Action::await_change, Action::requeue))
    } else {
        Err(Failed(failures.join("; ")))
    }
}

/// When to look at a namespace again so none of its secrets passes its renewal point
/// unnoticed: `before` ahead of the earliest expiry, or half-way there for a token that
/// lives less than `before`; at least a second from now.
fn recheck_after(
    expiries: &[jiff::Timestamp],
    before: jiff::SignedDuration,
    now: jiff::Timestamp,
) -> Option<Duration> {
    let earliest = expiries.iter().min()?;
    let left = earliest.duration_since(now);
    let wait = if left > before {
        left - before
    } else {
        left / 2
    };
    let wait = if wait.is_positive() {
        wait.unsigned_abs()
    } else {
        Duration::ZERO
    };
    Some(wait.max(Duration::from_secs(1)))
}

#[allow(clippy::needless_pass_by_value)] // The error-policy signature kube-runtime asks for.
fn error_policy(ns: Arc<Namespace>, error: &Failed, ctx: Arc<Ctx>) -> Action {
    let name = ns.metadata.name.clone().unwrap_or_default();
    let failures = {
        let mut all = ctx.failures.lock().expect("not poisoned");
        let n = all.entry(name.clone()).or_default();
        *n += 1;
        *n
    };
    let delay = refresher::backoff(&ctx.config.refresh, failures, rand::rng().random::<f64>());
    tracing::debug!(namespace = name, error = %error, retry_in = ?delay, "will retry");
    Action::requeue(delay)
}

impl Ctx {
    fn service_accounts_in(&self, namespace: &str) -> Vec<ServiceAccount> {
        let Some(store) = &self.service_accounts else {
            return Vec::new();
        };
        let named: Option<HashSet<&str>> =
            self.config
                .secrets
                .iter()
                .try_fold(HashSet::new(), |mut names, s| {
                    match &s.service_accounts {
                        ServiceAccounts::All => return None,
                        ServiceAccounts::Named(n) => names.extend(n.iter().map(String::as_str)),
                        ServiceAccounts::None => {}
                    }
                    Some(names)
                });
        match named {
            // Only the listed ones: look them up instead of scanning every ServiceAccount.
            Some(listed) => listed
                .into_iter()
                .filter_map(|n| store.get(&ObjectRef::new(n).within(namespace)))
                .map(|sa| ServiceAccount::clone(&sa))
                .collect(),
            None => store
                .state()
                .into_iter()
                .filter(|sa| sa.metadata.namespace.as_deref() == Some(namespace))
                .map(|sa| ServiceAccount::clone(&sa))
                .collect(),
        }
    }

    fn note_selection(&self, namespace: &str, selected: bool) {
        let mut all = self.selected.lock().expect("not poisoned");
        let changed = if selected {
            all.insert(namespace.to_owned())
        } else {
            all.remove(namespace)
        };
        if changed {
            self.metrics.namespaces_selected(all.len());
        }
    }

    /// Whether `view` holds a token for every configured source.
    fn has_every_token(&self, view: &TokenView) -> bool {
        self.config
            .token_sources()
            .iter()
            .all(|source| view.tokens.contains_key(source))
    }

    /// Notes a namespace as reconciled; readiness follows once every namespace has been.
    fn mark_reconciled(&self, namespace: &str) {
        let mut done = self.reconciled.lock().expect("not poisoned");
        done.insert(namespace.to_owned());
        if self.health.reconciled.load(Ordering::Relaxed) {
            return;
        }
        let all = self.namespaces.state();
        if done.len() >= all.len()
            && all
                .iter()
                .all(|ns| done.contains(ns.metadata.name.as_deref().unwrap_or_default()))
        {
            tracing::info!(namespaces = all.len(), "first full reconciliation done");
            self.health.reconciled.store(true, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::{SignedDuration, Timestamp};

    #[test]
    fn namespaces_are_looked_at_again_before_their_tokens_are_due() {
        let now: Timestamp = "2026-11-29T00:00:00Z".parse().unwrap();
        let h = SignedDuration::from_hours;
        assert_eq!(recheck_after(&[], h(6), now), None);
        assert_eq!(
            recheck_after(&[now + h(12), now + h(8)], h(6), now),
            Some(Duration::from_hours(2))
        );
        // Shorter than `before`: half-way to expiry.
        assert_eq!(
            recheck_after(&[now + SignedDuration::from_secs(20)], h(6), now),
            Some(Duration::from_secs(10))
        );
        // Already past: soon, but never at once.
        assert_eq!(
            recheck_after(&[now - h(1)], h(6), now),
            Some(Duration::from_secs(1))
        );
    }
}
