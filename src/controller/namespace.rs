//! One namespace's reconciliation in the controller, with what every reconciliation shares.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use rand::Rng as _;
use tokio::sync::watch;

use crate::admin::Health;
use crate::config::{Config, ServiceAccounts};
use crate::events::Events;
use crate::metrics::Metrics;
use crate::reconcile::{self, Context, Freshness, Outcome, TokenView};
use crate::refresher;
use crate::secrets::Writer;

use super::watches::until_ready;

/// What every reconciliation shares.
pub(super) struct Ctx {
    pub(super) client: kube::Client,
    pub(super) writer: Writer,
    pub(super) events: Events,
    pub(super) config: Arc<Config>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) health: Arc<Health>,
    pub(super) tokens: watch::Receiver<Arc<TokenView>>,
    pub(super) leading: watch::Receiver<bool>,
    pub(super) namespaces: Store<Namespace>,
    pub(super) secrets: BTreeMap<String, Store<Secret>>,
    pub(super) service_accounts: Option<Store<ServiceAccount>>,
    /// Namespaces reconciled, with every token at hand, since this replica became leader.
    /// The first reconciliation of each leaves a sound, fresh secret alone even if it holds
    /// an older token (a previous leader's, or sync's), so a restart or failover is not a
    /// write to every namespace; later ones want exactly the current token, which repairs
    /// any edit.
    pub(super) reconciled: Mutex<HashSet<String>>,
    /// Consecutive failures per namespace, for backoff.
    pub(super) failures: Mutex<HashMap<String, u32>>,
    /// Namespaces served, as of their last reconciliation.
    pub(super) selected: Mutex<HashSet<String>>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct Failed(String);

pub(super) async fn reconcile_namespace(
    ns: Arc<Namespace>,
    ctx: Arc<Ctx>,
) -> Result<Action, Failed> {
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
pub(super) fn error_policy(ns: Arc<Namespace>, error: &Failed, ctx: Arc<Ctx>) -> Action {
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
