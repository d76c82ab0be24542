//! The controller's watches: each reflected into a store, errors retried and logged, and
//! waiting for a store's first list.

use std::time::Duration;

use futures::{Stream, StreamExt as _};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use rand::Rng as _;
use tokio::sync::watch;

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

/// An object a watch saw change, after its store took the change in.
pub(super) enum Change<K> {
    Applied(K),
    Deleted(K),
}

impl<K> Change<K> {
    pub(super) fn into_object(self) -> K {
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
pub(super) fn reflected<K>(
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
pub(super) fn namespace_of<K: kube::Resource>(obj: K) -> Option<ObjectRef<Namespace>> {
    obj.meta().namespace.as_deref().map(ObjectRef::new)
}

/// Waits until a store holds its first full list (or its writer is gone).
///
/// Not `Store::wait_until_ready` alone: in kube-runtime 5 it wakes only the last of several
/// concurrent waiters (its `DelayedInit` polls one oneshot receiver, which keeps one waker),
/// so with reconciliations waiting at once all but one hung for ever: their namespaces were
/// never served, readiness never came, and SIGTERM never finished. Looking again every 50 ms
/// cannot miss the moment.
pub(super) async fn until_ready<K>(store: &Store<K>)
where
    K: reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    while tokio::time::timeout(Duration::from_millis(50), store.wait_until_ready())
        .await
        .is_err()
    {}
}
