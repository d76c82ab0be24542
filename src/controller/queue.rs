//! The namespaces waiting to be reconciled: each at most once, never two reconciliations of
//! one namespace at a time, and a later look for the few that ask for one.
//!
//! This is kube-runtime's `Controller` scheduling cut down to what regcred needs, in a few
//! bytes a namespace. Why not the `Controller` itself (issue 15: at most 1.5 KiB of memory
//! per namespace for everything): it needs a reflector `Store` of the kind it reconciles
//! and hands whole objects to the reconciler, and its scheduler holds an `ObjectRef` per
//! pending namespace and one more per requeue. Measured at 20,000 namespaces (RssAnon
//! delta, release build): a metadata-only `Store<PartialObjectMeta<Namespace>>` costs
//! 1.6 KiB a namespace, two `ObjectRef`s 0.4 KiB — the budget spent before a secret or
//! ServiceAccount is cached — against 89 bytes for a map from a shared `Arc<str>` name.
//! Here a namespace is its name, shared with the cache, and nothing is kept of one that
//! waits for nothing. kube-runtime still does the watching (`watcher`: paging, backoff,
//! relists); only the scheduling is ours, with the `Controller`'s guarantees (above).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Where a namespace is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In `ready`, to be handed out.
    Ready,
    /// Handed out; `again` when triggered meanwhile (it goes back once done).
    Running { again: bool },
    /// To be handed out at this time.
    Later(Instant),
}

#[derive(Debug, Default)]
struct Inner {
    ready: VecDeque<Arc<str>>,
    states: HashMap<Arc<str>, State>,
    later: BTreeSet<(Instant, Arc<str>)>,
    closed: bool,
}

impl Inner {
    fn make_ready(&mut self, name: Arc<str>, urgent: bool) {
        match self.states.get(&name).copied() {
            Some(State::Ready | State::Running { again: true }) => {}
            Some(State::Running { again: false }) => {
                self.states.insert(name, State::Running { again: true });
            }
            Some(State::Later(at)) => {
                self.later.remove(&(at, name.clone()));
                self.push(name, urgent);
            }
            None => self.push(name, urgent),
        }
    }

    fn push(&mut self, name: Arc<str>, urgent: bool) {
        self.states.insert(name.clone(), State::Ready);
        if urgent {
            self.ready.push_front(name);
        } else {
            self.ready.push_back(name);
        }
    }

    /// Moves what is due from `later` to `ready`.
    fn promote(&mut self, now: Instant) {
        while let Some((at, _)) = self.later.first() {
            if *at > now {
                break;
            }
            let (_, name) = self.later.pop_first().expect("present");
            self.push(name, false);
        }
    }

    fn shrink(&mut self) {
        if self.states.capacity() > 64 && self.states.capacity() > 4 * self.states.len() {
            self.states.shrink_to_fit();
        }
        if self.ready.capacity() > 64 && self.ready.capacity() > 4 * self.ready.len() {
            self.ready.shrink_to_fit();
        }
    }
}

/// What a finished reconciliation asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Then {
    /// Nothing until something changes.
    Wait,
    /// Another look after this long.
    After(Duration),
}

/// The queue of namespaces to reconcile.
#[derive(Debug, Default)]
pub(super) struct Queue {
    inner: Mutex<Inner>,
    wake: Notify,
}

impl Queue {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One namespace changed: it goes first (a new namespace or a repair does not wait
    /// behind a full pass).
    pub(super) fn trigger(&self, name: Arc<str>) {
        self.inner().make_ready(name, true);
        self.wake.notify_one();
    }

    /// Every one of these, after what is already waiting.
    pub(super) fn trigger_all(&self, names: impl IntoIterator<Item = Arc<str>>) {
        let mut inner = self.inner();
        for name in names {
            inner.make_ready(name, false);
        }
        drop(inner);
        self.wake.notify_waiters();
        self.wake.notify_one();
    }

    /// The next namespace to reconcile, once one is due; `None` once closed.
    pub(super) async fn next(&self) -> Option<Arc<str>> {
        loop {
            let notified = self.wake.notified();
            let wake_at = {
                let mut inner = self.inner();
                if inner.closed {
                    return None;
                }
                inner.promote(Instant::now());
                if let Some(name) = inner.ready.pop_front() {
                    inner
                        .states
                        .insert(name.clone(), State::Running { again: false });
                    let more = !inner.ready.is_empty();
                    drop(inner);
                    if more {
                        // Another worker may take the next one.
                        self.wake.notify_one();
                    }
                    return Some(name);
                }
                inner.later.first().map(|(at, _)| *at)
            };
            match wake_at {
                Some(at) => {
                    tokio::select! {
                        () = notified => {}
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// A reconciliation of `name` finished: it goes again at once if it was triggered
    /// meanwhile, else as `then` asks (an earlier look already asked for stays).
    pub(super) fn done(&self, name: &Arc<str>, then: Then) {
        let mut inner = self.inner();
        match inner.states.remove(name) {
            Some(State::Running { again: true }) => inner.push(name.clone(), true),
            Some(State::Running { again: false }) => match then {
                Then::Wait => inner.shrink(),
                Then::After(delay) => {
                    let at = Instant::now() + delay;
                    inner.states.insert(name.clone(), State::Later(at));
                    inner.later.insert((at, name.clone()));
                }
            },
            // Not handed out by this queue: nothing to do.
            other => {
                if let Some(state) = other {
                    inner.states.insert(name.clone(), state);
                }
            }
        }
        drop(inner);
        self.wake.notify_one();
    }

    /// Forgets a namespace that no longer exists (unless it is being reconciled: then it
    /// goes when that ends).
    pub(super) fn forget(&self, name: &str) {
        let mut inner = self.inner();
        match inner.states.get(name).copied() {
            Some(State::Later(at)) => {
                if let Some((key, _)) = inner.states.remove_entry(name) {
                    inner.later.remove(&(at, key));
                }
            }
            Some(State::Ready) => {
                inner.states.remove(name);
                inner.ready.retain(|n| &**n != name);
            }
            Some(State::Running { .. }) | None => {}
        }
        inner.shrink();
    }

    /// Hands out nothing more: every `next` returns `None`.
    pub(super) fn close(&self) {
        self.inner().closed = true;
        self.wake.notify_waiters();
    }

    /// Namespaces waiting (now or later) or being reconciled.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.inner().states.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[tokio::test]
    async fn each_namespace_once_and_never_twice_at_a_time() {
        let q = Queue::default();
        q.trigger_all([n("a"), n("b"), n("a")]);
        q.trigger(n("c"));
        let first = q.next().await.unwrap();
        assert_eq!(&*first, "c", "a single trigger goes first");
        let a = q.next().await.unwrap();
        assert_eq!(&*a, "a");
        // Triggered while running: not handed out again until it is done.
        q.trigger(n("a"));
        assert_eq!(&*q.next().await.unwrap(), "b");
        q.done(&first, Then::Wait);
        q.done(&n("b"), Then::Wait);
        assert_eq!(q.len(), 1);
        q.done(&a, Then::Wait);
        assert_eq!(&*q.next().await.unwrap(), "a", "goes again once done");
        q.done(&a, Then::Wait);
        assert_eq!(
            q.len(),
            0,
            "nothing kept of a namespace that waits for nothing"
        );
    }

    #[tokio::test]
    async fn a_later_look_comes_when_due_or_at_a_trigger() {
        let q = Arc::new(Queue::default());
        q.trigger(n("a"));
        let a = q.next().await.unwrap();
        q.done(&a, Then::After(Duration::from_millis(50)));
        let start = Instant::now();
        assert_eq!(&*q.next().await.unwrap(), "a");
        assert!(start.elapsed() >= Duration::from_millis(50));
        q.done(&a, Then::After(Duration::from_mins(10)));
        // A trigger brings it forward.
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { q.next().await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        q.trigger(n("a"));
        let woke = tokio::time::timeout(Duration::from_mins(1), waiter)
            .await
            .expect("handed out at the trigger, not after 10 min");
        assert_eq!(&*woke.unwrap().unwrap(), "a");
        q.done(&a, Then::After(Duration::from_mins(10)));
        q.forget("a");
        assert_eq!(q.len(), 0, "a deleted namespace is forgotten");
        q.close();
        assert!(q.next().await.is_none());
    }
}
