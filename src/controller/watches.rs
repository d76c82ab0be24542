//! The controller's watches: each reflected into a store, errors retried, and the health of
//! every watch reported — a watch that cannot work (typically a permission the RBAC lacks)
//! shows on `/readyz`, in `regcred_watch_healthy`, in a `WatchFailed` Event and in the log,
//! each naming what is missing, while everything else goes on being served.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt as _};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::Api;
use kube::runtime::{WatchStreamExt as _, watcher};
use rand::Rng as _;
use tokio::sync::watch;

use crate::admin::Health;
use crate::events::Events;
use crate::metrics::Metrics;

/// How soon a broken watch is retried: from 250 ms doubling to 4 s, with jitter. Shorter
/// than kube-runtime's default (up to 30 s) so drift made while the API server was away is
/// repaired within seconds of its return; one replica retrying every few seconds costs the
/// API server nothing.
#[derive(Debug, Default)]
pub(super) struct WatchBackoff {
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
pub(super) fn changes<T: Clone + Send + Sync + 'static>(
    rx: watch::Receiver<T>,
) -> impl Stream<Item = T> + Send {
    futures::stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok()?;
        let value = rx.borrow_and_update().clone();
        Some((value, rx))
    })
}

/// An object a watch saw change, after its cache took the change in: the namespace it
/// belongs to.
pub(super) enum Change<K> {
    Applied(K),
    Deleted(K),
}

impl<K> Change<K> {
    pub(super) fn into_inner(self) -> K {
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

/// A watch that had listed once and fails for longer than this is reported like one that
/// never could: its cache is going stale. Shorter failures (an API server restarting, its
/// authorizer warming up) are only logged.
const STALE_AFTER: Duration = Duration::from_mins(1);

/// What a watch is of, for reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Watched {
    Namespaces,
    /// Regcred's secrets of one name, in every namespace.
    Secrets(String),
    /// ServiceAccounts of one name (or of every name), in every namespace.
    ServiceAccounts(Option<String>),
}

impl Watched {
    /// The metric label.
    fn resource(&self) -> &'static str {
        match self {
            Self::Namespaces => "namespaces",
            Self::Secrets(_) => "secrets",
            Self::ServiceAccounts(_) => "serviceaccounts",
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Secrets(name) => format!("secrets named {name}"),
            Self::ServiceAccounts(Some(name)) => format!("serviceaccounts named {name}"),
            other => other.resource().to_owned(),
        }
    }

    /// The permission the watch needs, as the RBAC rule that grants it.
    fn permission(&self) -> String {
        match self {
            Self::Namespaces => "regcred needs get, list and watch on namespaces (a ClusterRole rule: apiGroups [\"\"], resources [namespaces], verbs [get, list, watch])".to_owned(),
            Self::Secrets(name) => format!(
                "regcred needs get, list and watch on secrets named {name} in every namespace (a ClusterRole rule: apiGroups [\"\"], resources [secrets], verbs [get, list, watch, patch, update, delete], resourceNames [{name}])"
            ),
            Self::ServiceAccounts(_) => "regcred needs get, list, watch and patch on serviceaccounts in every namespace, because secrets[].serviceAccounts is set (a ClusterRole rule: apiGroups [\"\"], resources [serviceaccounts], verbs [get, list, watch, patch])".to_owned(),
        }
    }
}

#[derive(Debug)]
struct Failing {
    since: Instant,
    error: String,
    forbidden: bool,
    /// An Event was published for this failure.
    reported: bool,
}

#[derive(Debug)]
struct State {
    watched: Watched,
    listed: bool,
    failing: Option<Failing>,
}

impl State {
    /// Whether the failure is worth reporting beyond the log: the watch never listed (what
    /// depends on it cannot be served at all), or its cache has gone stale.
    fn reportable(&self) -> bool {
        self.failing
            .as_ref()
            .is_some_and(|f| !self.listed || f.since.elapsed() > STALE_AFTER)
    }

    fn problem(&self) -> Option<String> {
        let f = self.failing.as_ref()?;
        let what = if f.forbidden {
            format!("forbidden ({})", self.watched.permission())
        } else {
            f.error.clone()
        };
        Some(format!("cannot watch {}: {what}", self.watched.describe()))
    }
}

/// The health of every watch, shared by the watches (which report) and the
/// reconciliations (which ask whether a store can be used).
pub(super) struct Watches {
    states: Mutex<Vec<State>>,
    /// Bumped whenever a watch lists or fails, for [`until_usable`].
    changed: watch::Sender<()>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    events: Events,
    /// What the Events are about: regcred's Lease, in regcred's own namespace.
    regarding: ObjectReference,
}

impl std::fmt::Debug for Watches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watches").finish_non_exhaustive()
    }
}

/// One watch's place in [`Watches`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct WatchId(usize);

impl Watches {
    pub(super) fn new(
        metrics: Arc<Metrics>,
        health: Arc<Health>,
        events: Events,
        regarding: ObjectReference,
    ) -> Self {
        Self {
            states: Mutex::default(),
            changed: watch::Sender::new(()),
            metrics,
            health,
            events,
            regarding,
        }
    }

    fn states(&self) -> std::sync::MutexGuard<'_, Vec<State>> {
        self.states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn register(&self, watched: Watched) -> WatchId {
        self.metrics.watch_healthy(watched.resource(), true);
        let mut states = self.states();
        states.push(State {
            watched,
            listed: false,
            failing: None,
        });
        WatchId(states.len() - 1)
    }

    /// Whether a reconciliation can use the store of this watch: it has its first list, or
    /// it fails and will not have one soon (`None`: neither yet, wait).
    pub(super) fn usable(&self, id: WatchId) -> Option<bool> {
        let states = self.states();
        let state = &states[id.0];
        if state.listed {
            Some(true)
        } else if state.failing.is_some() {
            Some(false)
        } else {
            None
        }
    }

    /// Notes a working watch (`listed`: a full list was taken in). Returns whether
    /// reconciliations may have gone without this watch's cache as it is now: it had listed
    /// before (a relist), or it failed before its first list (what depends on it was left
    /// out meanwhile).
    fn succeeded(&self, id: WatchId, listed: bool) -> bool {
        let mut states = self.states();
        let state = &mut states[id.0];
        let relist_needed = state.listed || state.failing.is_some();
        if listed && !state.listed {
            self.changed.send_replace(());
        }
        state.listed |= listed;
        if let Some(f) = state.failing.take() {
            tracing::info!(
                watch = %state.watched.describe(),
                failed_for = ?f.since.elapsed(),
                "watch works again"
            );
            self.update(&states);
        }
        relist_needed
    }

    fn failed(&self, id: WatchId, error: &watcher::Error) {
        let forbidden = matches!(
            error,
            watcher::Error::InitialListFailed(kube::Error::Api(s))
                | watcher::Error::WatchStartFailed(kube::Error::Api(s))
                | watcher::Error::WatchFailed(kube::Error::Api(s))
                if s.code == 403
        ) || matches!(error, watcher::Error::WatchError(s) if s.code == 403);
        let text = crate::chain(error);
        let mut states = self.states();
        let state = &mut states[id.0];
        let first = state.failing.is_none();
        if first {
            self.changed.send_replace(());
        }
        let changed = state.failing.as_ref().is_some_and(|f| f.error != text);
        let failing = state.failing.get_or_insert_with(|| Failing {
            since: Instant::now(),
            error: text.clone(),
            forbidden,
            reported: false,
        });
        failing.error.clone_from(&text);
        failing.forbidden = forbidden;
        let problem = state.problem().unwrap_or_default();
        if first || changed {
            tracing::warn!(watch = %state.watched.describe(), error = %text, "{problem}; retrying");
        } else {
            tracing::debug!(watch = %state.watched.describe(), error = %text, "watch failed again; retrying");
        }
        let report = state.reportable() && !state.failing.as_ref().is_some_and(|f| f.reported);
        if report {
            if let Some(f) = state.failing.as_mut() {
                f.reported = true;
            }
            let (events, regarding) = (self.events.clone(), self.regarding.clone());
            tokio::spawn(async move {
                events.watch_failed(&regarding, &problem).await;
            });
        }
        self.update(&states);
    }

    /// The metric per resource and what `/readyz` says, from every watch's state.
    fn update(&self, states: &[State]) {
        for resource in ["namespaces", "secrets", "serviceaccounts"] {
            let mut of = states
                .iter()
                .filter(|s| s.watched.resource() == resource)
                .peekable();
            if of.peek().is_some() {
                let healthy = of.all(|s| s.failing.is_none());
                self.metrics.watch_healthy(resource, healthy);
            }
        }
        let problems: Vec<String> = states
            .iter()
            .filter(|s| s.reportable())
            .filter_map(State::problem)
            .collect();
        self.health
            .set_problem((!problems.is_empty()).then(|| problems.join("; ")));
    }
}

/// How one watch's objects go into its cache. Each method returns the namespace the object
/// belongs to (a namespace is its own), for the trigger.
pub(super) trait Keep<K>: Send + 'static {
    /// A (re)list begins.
    fn begin(&mut self);
    /// An object listed, created or changed.
    fn apply(&mut self, obj: K) -> Option<String>;
    /// An object gone.
    fn delete(&mut self, obj: K) -> Option<String>;
    /// The (re)list ended: what it did not list is gone.
    fn end(&mut self);
}

/// A watch's events taken into its cache through `keep`: single changes come out as they
/// happen (the namespace concerned), and whenever a full list has been taken in, `relisted`
/// gets a signal (the controller then reconciles every namespace: a list sends no deletions,
/// and a trigger for an object new in it would come before the list is whole).
///
/// Not after the first list of a watch that never failed, unless `first_list` says so (the
/// namespaces'): reconciliations wait for that list and read it whole, and a second pass
/// right after the first would want exactly the current token everywhere, rewriting every
/// sound secret a previous leader left. Errors are retried by the stream's backoff and
/// reported to `watches`, never passed on (one broken watch must not pause the others'
/// triggers).
pub(super) fn reflected<K>(
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    mut keep: impl Keep<K>,
    (relisted, first_list): (futures::channel::mpsc::UnboundedSender<()>, bool),
    watches: Arc<Watches>,
    id: WatchId,
) -> impl Stream<Item = Change<String>> + Send + 'static
where
    K: Send + 'static,
{
    events.filter_map(move |event| {
        let change = match event {
            Ok(watcher::Event::Apply(k)) => {
                watches.succeeded(id, false);
                keep.apply(k).map(Change::Applied)
            }
            Ok(watcher::Event::Delete(k)) => {
                watches.succeeded(id, false);
                keep.delete(k).map(Change::Deleted)
            }
            Ok(watcher::Event::Init) => {
                keep.begin();
                None
            }
            Ok(watcher::Event::InitApply(k)) => {
                keep.apply(k);
                None
            }
            Ok(watcher::Event::InitDone) => {
                keep.end();
                if watches.succeeded(id, true) || first_list {
                    let _ = relisted.unbounded_send(());
                }
                None
            }
            Err(e) => {
                watches.failed(id, &e);
                None
            }
        };
        std::future::ready(change)
    })
}

/// A watch of `api`'s objects as `config` selects them, paged and retried as every watch
/// here is.
pub(super) fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    watcher(api, config.page_size(LIST_PAGE)).backoff(WatchBackoff::default())
}

/// Waits until a watch has its first full list (true), or fails before it has one, or
/// `stop` fires (false).
pub(super) async fn until_usable(
    watches: &Watches,
    id: WatchId,
    stop: &watch::Receiver<bool>,
) -> bool {
    let mut changed = watches.changed.subscribe();
    loop {
        if *stop.borrow() {
            return false;
        }
        if let Some(usable) = watches.usable(id) {
            return usable;
        }
        let mut stop = stop.clone();
        tokio::select! {
            _ = changed.changed() => {}
            _ = stop.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forbidden_watch_names_the_rule_it_needs() {
        let state = State {
            watched: Watched::ServiceAccounts(Some("default".into())),
            listed: false,
            failing: Some(Failing {
                since: Instant::now(),
                error: "403".into(),
                forbidden: true,
                reported: false,
            }),
        };
        assert!(state.reportable(), "it never listed");
        let problem = state.problem().unwrap();
        assert!(
            problem.starts_with("cannot watch serviceaccounts named default: forbidden (regcred needs get, list, watch and patch on serviceaccounts"),
            "{problem}"
        );
        let listed = State {
            listed: true,
            ..state
        };
        assert!(
            !listed.reportable(),
            "a cache that just went stale is only logged"
        );
        let secrets = Watched::Secrets("regcred".into());
        assert_eq!(secrets.describe(), "secrets named regcred");
        assert!(secrets.permission().contains("resourceNames [regcred]"));
    }
}
