//! One namespace's reconciliation in the controller, with what every reconciliation shares.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use rand::Rng as _;
use tokio::sync::watch;

use crate::admin::Health;
use crate::config::Config;
use crate::events::Events;
use crate::lease::{Election, Permit};
use crate::metrics::Metrics;
use crate::reconcile::{self, Context, Freshness, Outcome, TokenView};
use crate::refresher;
use crate::secrets::Writer;

use super::ledger::Ledger;
use super::watches::{WatchId, Watches, until_usable};

/// A store and the watch that fills it.
pub(super) struct Watched<K: kube::Resource<DynamicType = ()> + 'static> {
    pub(super) store: Store<K>,
    pub(super) watch: WatchId,
}

/// What every reconciliation shares.
pub(super) struct Ctx {
    pub(super) client: kube::Client,
    pub(super) writer: Writer,
    pub(super) events: Events,
    pub(super) config: Arc<Config>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) health: Arc<Health>,
    pub(super) tokens: watch::Receiver<Arc<TokenView>>,
    pub(super) election: Election,
    pub(super) stop: watch::Receiver<bool>,
    pub(super) watches: Arc<Watches>,
    pub(super) namespaces: Store<Namespace>,
    /// Regcred's secrets, by name: the configured names and the former ones.
    pub(super) secrets: BTreeMap<String, Watched<Secret>>,
    pub(super) service_accounts: Option<Watched<ServiceAccount>>,
    /// The names of the ServiceAccounts in the store, by namespace.
    pub(super) service_account_names: Arc<ByNamespace>,
    /// Per-namespace bookkeeping of this term. The first reconciliation of each namespace
    /// leaves a sound, fresh secret alone even if it holds an older token (a previous
    /// leader's, or sync's), so a restart or failover is not a write to every namespace;
    /// later ones want exactly the current token, which repairs any edit.
    pub(super) ledger: Arc<Mutex<Ledger>>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct Failed(String);

/// Object names by namespace: what a store cannot answer without a scan of everything.
#[derive(Debug, Default)]
pub(super) struct ByNamespace(Mutex<HashMap<String, BTreeSet<String>>>);

impl ByNamespace {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, BTreeSet<String>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn key<K: kube::Resource>(obj: &K) -> Option<(String, String)> {
        Some((obj.meta().namespace.clone()?, obj.meta().name.clone()?))
    }

    pub(super) fn applied<K: kube::Resource>(&self, obj: &K) {
        if let Some((ns, name)) = Self::key(obj) {
            self.map().entry(ns).or_default().insert(name);
        }
    }

    pub(super) fn deleted<K: kube::Resource>(&self, obj: &K) {
        if let Some((ns, name)) = Self::key(obj) {
            let mut map = self.map();
            if let Some(names) = map.get_mut(&ns) {
                names.remove(&name);
                if names.is_empty() {
                    map.remove(&ns);
                }
            }
        }
    }

    /// Starts over from what a store holds (after a relist, which sends no deletions).
    pub(super) fn rebuild<K>(&self, store: &Store<K>)
    where
        K: kube::Resource<DynamicType = ()> + Clone + 'static,
    {
        let mut map: HashMap<String, BTreeSet<String>> = HashMap::new();
        for obj in store.state() {
            if let Some((ns, name)) = Self::key(obj.as_ref()) {
                map.entry(ns).or_default().insert(name);
            }
        }
        *self.map() = map;
    }

    fn names_in(&self, namespace: &str) -> Vec<String> {
        self.map()
            .get(namespace)
            .map(|n| n.iter().cloned().collect())
            .unwrap_or_default()
    }
}

impl Ctx {
    pub(super) fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

pub(super) async fn reconcile_namespace(
    ns: Arc<Namespace>,
    ctx: Arc<Ctx>,
) -> Result<Action, Failed> {
    let Some(fence) = ctx.election.fence() else {
        return Ok(Action::await_change());
    };
    let name = ns.metadata.name.clone().unwrap_or_default();
    // Stores whose watch fails before its first list are not waited for: what depends on
    // them is left out (and reported by the watch), the rest is served.
    let mut unknown = BTreeSet::new();
    let mut stored = BTreeMap::new();
    for (secret, watched) in &ctx.secrets {
        if !until_usable(&watched.store, &ctx.watches, watched.watch, &ctx.stop).await {
            unknown.insert(secret.clone());
            continue;
        }
        if let Some(found) = watched.store.get(&ObjectRef::new(secret).within(&name)) {
            stored.insert(secret.clone(), Secret::clone(&found));
        }
    }
    let service_accounts = match &ctx.service_accounts {
        Some(w) if until_usable(&w.store, &ctx.watches, w.watch, &ctx.stop).await => {
            Some(ctx.service_accounts_in(&w.store, &name))
        }
        _ => None,
    };
    if *ctx.stop.borrow() {
        return Ok(Action::await_change());
    }
    // Only tokens fetched in this very term: a replica that led before holds none of then.
    let view = ctx.tokens.borrow().clone();
    let view = if view.term == Some(fence.term()) {
        view
    } else {
        Arc::new(TokenView::default())
    };
    let freshness = if ctx.ledger().is_reconciled(&name) {
        Freshness::Exact
    } else {
        Freshness::SoundAndFresh
    };
    let permit = Permit::fenced(fence.clone());
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
            permit: &permit,
        },
        &ns,
        &stored,
        service_accounts.as_deref(),
        &unknown,
    )
    .await;
    ctx.metrics
        .reconcile_duration(started.elapsed().as_secs_f64());
    tracing::debug!(namespace = name, outcomes = ?report.secrets, ?freshness, "reconciled");
    let pending = report.secrets.values().any(|o| *o == Outcome::Pending);
    let failures: Vec<String> = report
        .secrets
        .values()
        .filter_map(|o| match o {
            Outcome::Failed(why) => Some(why.clone()),
            _ => None,
        })
        .collect();
    // A pass made before every token was at hand left fresh secrets alone for want of a
    // token; only one made with them counts as the first, so the pass their arrival
    // triggers still leaves fresh secrets alone instead of rewriting every namespace.
    let reconciled = !pending && ctx.has_every_token(&view);
    ctx.note(
        fence.term(),
        &name,
        report.is_selected(),
        reconciled,
        failures.is_empty(),
    );
    if pending {
        // The token (or the next leader) comes with a full reconciliation of its own.
        return Ok(Action::await_change());
    }
    if failures.is_empty() {
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
pub(super) fn error_policy(ns: Arc<Namespace>, error: &Failed, ctx: Arc<Ctx>) -> Action {
    let name = ns.metadata.name.clone().unwrap_or_default();
    let failures = {
        let mut ledger = ctx.ledger();
        // Checked under the ledger's lock: a namespace deleted meanwhile (its store entry
        // goes before the ledger forgets it) is not brought back into the ledger.
        if ctx.namespaces.get(&ObjectRef::new(&name)).is_some() {
            ledger.failed(&name)
        } else {
            1
        }
    };
    let delay = refresher::backoff(&ctx.config.refresh, failures, rand::rng().random::<f64>());
    tracing::debug!(namespace = name, error = %error, retry_in = ?delay, "will retry");
    Action::requeue(delay)
}

impl Ctx {
    /// Every ServiceAccount of the namespace (the listed ones get the reference, any other
    /// may carry one regcred recorded and must lose).
    fn service_accounts_in(
        &self,
        store: &Store<ServiceAccount>,
        namespace: &str,
    ) -> Vec<ServiceAccount> {
        self.service_account_names
            .names_in(namespace)
            .into_iter()
            .filter_map(|n| store.get(&ObjectRef::new(&n).within(namespace)))
            .map(|sa| ServiceAccount::clone(&sa))
            .collect()
    }

    /// Whether `view` holds a token for every configured source.
    fn has_every_token(&self, view: &TokenView) -> bool {
        self.config
            .token_sources()
            .iter()
            .all(|source| view.tokens.contains_key(source))
    }

    /// Notes a reconciliation's result in the ledger (if its term still runs) and the
    /// gauges; readiness follows once every namespace has been reconciled in this term.
    fn note(&self, term: u64, namespace: &str, selected: bool, reconciled: bool, succeeded: bool) {
        let mut ledger = self.ledger();
        // Checked under the ledger's lock: a namespace deleted meanwhile (its store entry
        // goes before the ledger forgets it) is not brought back into the ledger.
        let exists = self.namespaces.get(&ObjectRef::new(namespace)).is_some();
        if !exists || !ledger.note(term, namespace, selected, reconciled, succeeded) {
            return;
        }
        self.metrics.namespaces_selected(ledger.selected());
        self.metrics.namespaces_tracked(ledger.tracked());
        if self.health.reconciled.load(Ordering::Relaxed) {
            return;
        }
        let all = self.namespaces.state();
        if all
            .iter()
            .all(|ns| ledger.is_reconciled(ns.metadata.name.as_deref().unwrap_or_default()))
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
