//! One namespace's reconciliation in the controller, with what every reconciliation shares.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use rand::Rng as _;
use tokio::sync::watch;

use crate::admin::Health;
use crate::config::Config;
use crate::events::Events;
use crate::lease::{Election, Pace, Permit};
use crate::metrics::Metrics;
use crate::reconcile::{self, Assignment, Context, Outcome, TokenView, Written};
use crate::refresher;
use crate::secrets::{Stored, Writer};

use super::accounts::Tended;
use super::cache::{Namespaces, Secrets, secret_deleted, secret_written};
use super::ledger::Ledger;
use super::queue::Then;
use super::watches::{WatchId, Watches, until_usable};

/// A cache and the watch that fills it.
#[derive(Debug)]
pub(super) struct Watched<C> {
    pub(super) cache: Arc<C>,
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
    pub(super) namespaces: Watched<Namespaces>,
    /// Regcred's secrets, by name: the configured names and the former ones.
    pub(super) secrets: BTreeMap<String, Watched<Secrets>>,
    /// `None` when ServiceAccounts are left alone.
    pub(super) service_accounts: Option<Tended>,
    /// Per-namespace bookkeeping of this term. The first reconciliation of each namespace
    /// leaves a sound, fresh secret alone even if it holds an older token (a previous
    /// leader's, or sync's), so a restart or failover is not a write to every namespace,
    /// and later ones do too while the secrets are the ones it found; once one changed
    /// they want exactly the current token, which repairs any edit.
    pub(super) ledger: Arc<Mutex<Ledger>>,
    /// Client-side pacing of writes (`--max-writes-per-second`).
    pub(super) pace: Option<Arc<Pace>>,
}

/// Why a reconciliation failed (retried with backoff).
#[derive(Debug)]
pub(super) struct Failed(String);

impl Ctx {
    pub(super) fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Reconciles one namespace (if it still exists) and says when to look at it again.
pub(super) async fn reconcile_namespace(name: &str, ctx: &Ctx) -> Then {
    match reconcile_inner(name, ctx).await {
        Ok(then) => then,
        Err(e) => error_policy(name, &e, ctx),
    }
}

async fn reconcile_inner(name: &str, ctx: &Ctx) -> Result<Then, Failed> {
    let Some(fence) = ctx.election.fence() else {
        return Ok(Then::Wait);
    };
    let Some(ns) = ctx.namespaces.cache.get(name) else {
        // Deleted meanwhile: nothing to do, nothing to remember.
        return Ok(Then::Wait);
    };
    let Gathered {
        stored,
        unknown,
        service_accounts,
        strays,
    } = gather(name, &ns, ctx).await?;
    if *ctx.stop.borrow() {
        return Ok(Then::Wait);
    }
    // Only tokens fetched in this very term: a replica that led before holds none of then.
    let view = ctx.tokens.borrow().clone();
    let view = if view.term == Some(fence.term()) {
        view
    } else {
        Arc::new(TokenView::default())
    };
    let found = fingerprint(&stored);
    let freshness = ctx.ledger().freshness(name, found);
    let mut permit = Permit::fenced(fence.clone());
    if let Some(pace) = &ctx.pace {
        permit = permit.paced(pace.clone());
    }
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
            written: Some(&|w| ctx.take_in(w)),
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
    if failures.is_empty()
        && !pending
        && service_accounts.is_some()
        && let Some(tended) = &ctx.service_accounts
    {
        tended.mended(name, &strays);
    }
    // A pass made before every token was at hand left fresh secrets alone for want of a
    // token; only one made with them counts as the first, so the pass their arrival
    // triggers still leaves fresh secrets alone instead of rewriting every namespace.
    let reconciled = !pending && ctx.has_every_token(&view);
    ctx.note(
        fence.term(),
        name,
        report.is_selected(),
        (reconciled, found),
        failures.is_empty(),
    );
    if pending {
        // The token (or the next leader) comes with a full reconciliation of its own.
        return Ok(Then::Wait);
    }
    if failures.is_empty() {
        Ok(recheck_after(
            &report.expiries,
            earliest_token(&view),
            ctx.config.refresh.before,
            jiff::Timestamp::now(),
        )
        .map_or(Then::Wait, Then::After))
    } else {
        Err(Failed(failures.join("; ")))
    }
}

/// What the caches hold of a namespace.
struct Gathered {
    /// regcred's secrets, by name.
    stored: BTreeMap<String, Stored>,
    /// Secret names whose cache cannot be used (left alone).
    unknown: BTreeSet<String>,
    /// `None`: not known, references left alone.
    service_accounts: Option<Vec<ServiceAccount>>,
    /// The strays among them.
    strays: Vec<String>,
}

async fn gather(name: &str, ns: &Namespace, ctx: &Ctx) -> Result<Gathered, Failed> {
    // Caches whose watch fails before its first list are not waited for: what depends on
    // them is left out (and reported by the watch), the rest is served.
    let mut unknown = BTreeSet::new();
    let mut stored: BTreeMap<String, Stored> = BTreeMap::new();
    for (secret, watched) in &ctx.secrets {
        if !until_usable(&ctx.watches, watched.watch, &ctx.stop).await {
            unknown.insert(secret.clone());
            continue;
        }
        if let Some(found) = watched.cache.get(name, Stored::clone) {
            stored.insert(secret.clone(), found);
        }
    }
    let (service_accounts, strays) = match &ctx.service_accounts {
        Some(tended) => {
            // A managed secret about to go takes every reference to it along, whoever
            // made it: then every ServiceAccount of the namespace is read.
            let deleting = ctx.config.managed_names().iter().any(|secret| {
                matches!(
                    reconcile::assign(&ctx.config, ns, secret),
                    Assignment::Remove
                ) && stored.get(secret).is_some_and(Stored::is_managed)
            });
            tended
                .in_namespace(&ctx.client, &ctx.watches, &ctx.stop, name, deleting)
                .await
                .map_err(Failed)?
        }
        None => (None, Vec::new()),
    };
    Ok(Gathered {
        stored,
        unknown,
        service_accounts,
        strays,
    })
}

/// The secrets of a namespace as found (names and resourceVersions), in one number: any
/// write to any of them changes it.
fn fingerprint(stored: &BTreeMap<String, Stored>) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::hash::DefaultHasher::new();
    for (name, s) in stored {
        name.hash(&mut h);
        s.resource_version().hash(&mut h);
    }
    h.finish()
}

/// The earliest expiry among the tokens at hand: its renewal brings a full reconciliation
/// (the tokens change), before which nothing holding a token at least as young is due.
fn earliest_token(view: &TokenView) -> Option<jiff::Timestamp> {
    view.tokens.values().map(|t| t.expires_at).min()
}

fn error_policy(name: &str, error: &Failed, ctx: &Ctx) -> Then {
    let failures = {
        let mut ledger = ctx.ledger();
        // Checked under the ledger's lock: a namespace deleted meanwhile (its cache entry
        // goes before the ledger forgets it) is not brought back into the ledger.
        if ctx.namespaces.cache.contains(name) {
            ledger.failed(name)
        } else {
            1
        }
    };
    let delay = refresher::backoff(&ctx.config.refresh, failures, rand::rng().random::<f64>());
    tracing::debug!(namespace = name, error = %error.0, retry_in = ?delay, "will retry");
    Then::After(delay)
}

/// When to look at a namespace again so none of its secrets passes its renewal point
/// unnoticed: `before` ahead of the earliest expiry, or half-way there for a token that
/// lives less than `before`; at least a second from now. Not at all when every secret holds
/// a token expiring no earlier than the earliest token at hand (`tokens`): that one's
/// renewal, before theirs falls due, reconciles every namespace anyway — so a namespace
/// costs nothing between passes.
fn recheck_after(
    expiries: &[jiff::Timestamp],
    tokens: Option<jiff::Timestamp>,
    before: jiff::SignedDuration,
    now: jiff::Timestamp,
) -> Option<Duration> {
    let earliest = expiries.iter().min()?;
    if tokens.is_some_and(|t| *earliest >= t) {
        return None;
    }
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

impl Ctx {
    /// Takes regcred's own write into the caches at once (see [`Written`]).
    fn take_in(&self, written: Written<'_>) {
        match written {
            Written::Secret { secret, over } => {
                let name = secret.metadata.name.as_deref().unwrap_or_default();
                if let Some(w) = self.secrets.get(name) {
                    secret_written(&w.cache, secret, over);
                }
            }
            Written::SecretGone {
                namespace,
                name,
                resource_version,
            } => {
                if let Some(w) = self.secrets.get(name) {
                    secret_deleted(&w.cache, namespace, resource_version);
                }
            }
            Written::ServiceAccount { account, over } => {
                if let Some(tended) = &self.service_accounts {
                    tended.patched(account, over);
                }
            }
        }
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
    fn note(
        &self,
        term: u64,
        namespace: &str,
        selected: bool,
        reconciled: (bool, u64),
        succeeded: bool,
    ) {
        let mut ledger = self.ledger();
        // Checked under the ledger's lock: a namespace deleted meanwhile (its cache entry
        // goes before the ledger forgets it) is not brought back into the ledger.
        let namespaces = self.namespaces.cache.entries();
        if !namespaces.contains(namespace)
            || !ledger.note(term, namespace, selected, reconciled, succeeded)
        {
            return;
        }
        self.metrics.namespaces_selected(ledger.selected());
        self.metrics.namespaces_tracked(ledger.tracked());
        // Not before the namespaces' first list is whole: a secret watch's list may have
        // reconciled every namespace of a cache still filling, which would say ready while
        // namespaces that existed at the start were yet to come.
        if self.health.reconciled.load(Ordering::Relaxed)
            || self.watches.usable(self.namespaces.watch) != Some(true)
        {
            return;
        }
        // Counted first (the ledger holds only namespaces that exist), looked at one by one
        // only when the count says every one may be done.
        let all = namespaces.len();
        if ledger.reconciled() >= all && namespaces.keys().iter().all(|ns| ledger.is_reconciled(ns))
        {
            tracing::info!(namespaces = all, "first full reconciliation done");
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
        assert_eq!(recheck_after(&[], None, h(6), now), None);
        assert_eq!(
            recheck_after(&[now + h(12), now + h(8)], None, h(6), now),
            Some(Duration::from_hours(2))
        );
        // Shorter than `before`: half-way to expiry.
        assert_eq!(
            recheck_after(&[now + SignedDuration::from_secs(20)], None, h(6), now),
            Some(Duration::from_secs(10))
        );
        // Already past: soon, but never at once.
        assert_eq!(
            recheck_after(&[now - h(1)], None, h(6), now),
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn a_namespace_holding_the_current_token_waits_for_its_renewal() {
        let now: Timestamp = "2026-11-29T00:00:00Z".parse().unwrap();
        let h = SignedDuration::from_hours;
        // It holds the token at hand (or a younger one): the token's renewal reconciles
        // every namespace before this one is due, so it keeps no timer.
        assert_eq!(
            recheck_after(&[now + h(12)], Some(now + h(12)), h(6), now),
            None
        );
        assert_eq!(
            recheck_after(&[now + h(13)], Some(now + h(12)), h(6), now),
            None
        );
        // An older token (a previous leader's, left alone as sound): looked at when due.
        assert_eq!(
            recheck_after(&[now + h(8)], Some(now + h(12)), h(6), now),
            Some(Duration::from_hours(2))
        );
    }
}
