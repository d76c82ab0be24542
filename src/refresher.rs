//! Keeps a token for every source and publishes the current set: renews before expiry,
//! backs off with jitter on failure, never loops on a token that arrives expired.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use jiff::Timestamp;
use rand::Rng as _;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::admin::Health;
use crate::config::{Config, Refresh};
use crate::ecr::{Token, Tokens};
use crate::lease::Leadership;
use crate::metrics::{Metrics, RefreshResult};
use crate::reconcile::TokenView;
use crate::registry::TokenSource;

/// The delay before retry number `failures` (1-based): doubling from `retry_min`, with up to
/// a fifth more at random so replicas and sources spread out, never beyond `retry_max`.
#[must_use]
pub fn backoff(refresh: &Refresh, failures: u32, jitter: f64) -> Duration {
    let min = refresh.retry_min.unsigned_abs();
    let max = refresh.retry_max.unsigned_abs();
    let base = min
        .saturating_mul(2_u32.saturating_pow(failures.saturating_sub(1).min(30)))
        .min(max);
    base.mul_f64(1.0 + jitter.clamp(0.0, 1.0) / 5.0).min(max)
}

#[derive(Debug, Default)]
struct SourceState {
    token: Option<Token>,
    error: Option<String>,
    failures: u32,
    /// When to fetch next (`None`: at once).
    next: Option<Instant>,
    /// A fetch is under way.
    fetching: bool,
}

/// Converts a wall-clock time to the monotonic clock (past times become "now").
fn instant_at(t: Timestamp) -> Instant {
    let ahead = t.duration_since(Timestamp::now());
    Instant::now()
        + ahead.unsigned_abs().min(Duration::from_hours(24 * 365)) * u32::from(ahead.is_positive())
}

/// The refresher of one controller replica.
#[derive(Debug)]
pub struct Refresher {
    tokens: Tokens,
    /// Each source with the registry hosts it serves (metric labels).
    sources: BTreeMap<TokenSource, BTreeSet<String>>,
    refresh: Refresh,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// What woke the refresher.
enum Wake {
    Fetched(TokenSource, crate::ecr::Result<Token>),
    Other,
}

impl Refresher {
    #[must_use]
    pub fn new(
        tokens: Tokens,
        config: &Config,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Self {
        let mut sources: BTreeMap<TokenSource, BTreeSet<String>> = BTreeMap::new();
        for spec in &config.secrets {
            for r in &spec.registries {
                sources
                    .entry(r.token_source())
                    .or_default()
                    .insert(r.registry.host().to_owned());
            }
        }
        Self {
            tokens,
            sources,
            refresh: config.refresh,
            metrics,
            health,
        }
    }

    fn fresh_state(&self) -> BTreeMap<TokenSource, SourceState> {
        self.sources
            .keys()
            .map(|s| (s.clone(), SourceState::default()))
            .collect()
    }

    /// Runs until shutdown; holds and fetches tokens only while this replica leads, and only
    /// for the term it leads in: a new term starts from nothing, so a replica that regains
    /// the Lease never serves a token it held before. Each source is fetched on its own and
    /// its token published as soon as it arrives: one that hangs holds back no other.
    pub async fn run(
        self,
        publish: watch::Sender<Arc<TokenView>>,
        mut leading: watch::Receiver<Leadership>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let fetch = |source: TokenSource| {
            let tokens = &self.tokens;
            async move {
                let result = tokens.fetch(&source).await;
                (source, result)
            }
        };
        let mut term: Option<u64> = None;
        let mut state = self.fresh_state();
        let mut inflight = FuturesUnordered::new();
        loop {
            if *shutdown.borrow() {
                return;
            }
            let current = leading.borrow_and_update().term();
            if current != term {
                // Nothing of the last term is kept, not even a fetch under way.
                term = current;
                state = self.fresh_state();
                inflight = FuturesUnordered::new();
                self.metrics.forget_token_expiries();
                publish.send_replace(Arc::new(TokenView {
                    term,
                    ..TokenView::default()
                }));
            }
            if term.is_none() {
                // A standby holds no tokens it would have to keep fresh.
                self.health.tokens_fresh.store(true, Ordering::Relaxed);
                tokio::select! {
                    _ = leading.changed() => continue,
                    _ = shutdown.wait_for(|stop| *stop) => return,
                }
            }
            let now = Instant::now();
            for (source, s) in &mut state {
                if !s.fetching && s.next.is_none_or(|n| n <= now) {
                    s.fetching = true;
                    inflight.push(fetch(source.clone()));
                }
            }
            let view = Self::view(&state, term);
            let fresh = self.sources.keys().all(|s| view.tokens.contains_key(s));
            self.health.tokens_fresh.store(fresh, Ordering::Relaxed);
            publish.send_if_modified(|current| {
                if same_view(current, &view) {
                    false
                } else {
                    *current = Arc::new(view);
                    true
                }
            });
            // Wake for the next renewal, or when a held token expires, to withdraw it (an
            // expiry already past is not waited for); a fetch under way wakes it by ending.
            let now = Instant::now();
            let renewals = state
                .values()
                .filter(|s| !s.fetching)
                .filter_map(|s| s.next);
            let expiries = state
                .values()
                .filter_map(|s| s.token.as_ref().map(|t| instant_at(t.expires_at)))
                .filter(|at| *at > now);
            let wake = renewals
                .chain(expiries)
                .min()
                .unwrap_or_else(|| now + Duration::from_hours(1));
            let event = tokio::select! {
                Some((source, result)) = inflight.next(), if !inflight.is_empty() => {
                    Wake::Fetched(source, result)
                }
                () = tokio::time::sleep_until(wake) => Wake::Other,
                _ = leading.changed() => Wake::Other,
                _ = shutdown.wait_for(|stop| *stop) => return,
            };
            if let Wake::Fetched(source, result) = event
                && let Some(s) = state.get_mut(&source)
            {
                s.fetching = false;
                self.record(s, &source, result);
            }
        }
    }

    fn record(&self, s: &mut SourceState, source: &TokenSource, result: crate::ecr::Result<Token>) {
        let hosts = &self.sources[source];
        match result {
            Ok(token) => {
                let renew = token.renew_at(self.refresh.before);
                tracing::info!(source = %source, expires_at = %token.expires_at, renew_at = %renew, "token refreshed");
                for host in hosts {
                    self.metrics.token_refreshed(host, RefreshResult::Success);
                    self.metrics.token_expiry(host, token.expires_at);
                }
                s.next = Some(instant_at(renew));
                s.token = Some(token);
                s.error = None;
                s.failures = 0;
            }
            Err(e) => {
                s.failures += 1;
                let delay = backoff(&self.refresh, s.failures, rand::rng().random::<f64>());
                tracing::warn!(source = %source, error = %crate::chain(&e), retry_in = ?delay, failures = s.failures, "token refresh failed");
                for host in hosts {
                    self.metrics.token_refreshed(host, RefreshResult::Failure);
                }
                s.next = Some(Instant::now() + delay);
                s.error = Some(crate::chain(&e));
            }
        }
    }

    /// Unexpired tokens of this term, and errors for sources that have none.
    fn view(state: &BTreeMap<TokenSource, SourceState>, term: Option<u64>) -> TokenView {
        let now = Timestamp::now();
        let mut view = TokenView {
            term,
            ..TokenView::default()
        };
        for (source, s) in state {
            match &s.token {
                Some(token) if !token.is_expired(now) => {
                    view.tokens.insert(source.clone(), token.clone());
                }
                _ => {
                    if let Some(why) = &s.error {
                        view.errors.insert(source.clone(), why.clone());
                    }
                }
            }
        }
        view
    }
}

/// Whether two views would produce the same secrets (same term, tokens and failures).
fn same_view(a: &TokenView, b: &TokenView) -> bool {
    a.term == b.term
        && a.errors == b.errors
        && a.tokens.len() == b.tokens.len()
        && a.tokens.iter().zip(&b.tokens).all(|((sa, ta), (sb, tb))| {
            use secrecy::ExposeSecret as _;
            sa == sb
                && ta.expires_at == tb.expires_at
                && ta.credential.username == tb.credential.username
                && ta.credential.password.expose_secret() == tb.credential.password.expose_secret()
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::SignedDuration;

    #[test]
    fn backoff_doubles_from_min_to_max_with_bounded_jitter() {
        let r = Refresh {
            before: SignedDuration::from_hours(6),
            retry_min: SignedDuration::from_secs(5),
            retry_max: SignedDuration::from_mins(5),
        };
        assert_eq!(backoff(&r, 1, 0.0), Duration::from_secs(5));
        assert_eq!(backoff(&r, 2, 0.0), Duration::from_secs(10));
        assert_eq!(backoff(&r, 3, 1.0), Duration::from_secs(24));
        assert_eq!(
            backoff(&r, 7, 0.0),
            Duration::from_mins(5),
            "capped at retryMax"
        );
        assert_eq!(
            backoff(&r, 100, 1.0),
            Duration::from_mins(5),
            "jitter never passes retryMax"
        );
        for n in 1..40 {
            let d = backoff(&r, n, 0.5);
            assert!(
                d >= Duration::from_secs(5) && d <= Duration::from_mins(5),
                "{n}: {d:?}"
            );
        }
    }

    #[test]
    fn instants_follow_wall_clock_offsets() {
        let soon = instant_at(Timestamp::now() + SignedDuration::from_secs(60));
        let d = soon - Instant::now();
        assert!(
            d > Duration::from_secs(58) && d <= Duration::from_mins(1),
            "{d:?}"
        );
        assert!(instant_at("2015-01-01T00:00:00Z".parse().unwrap()) <= Instant::now());
    }
}
