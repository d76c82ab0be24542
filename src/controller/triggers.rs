//! What the watches feed: their caches (through [`Keep`]) and the queue of namespaces to
//! reconcile.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::core::PartialObjectMeta;
use tokio::sync::watch;

use crate::config::Config;
use crate::lease::Leadership;
use crate::metrics::Metrics;

use super::cache::{Namespaces, Secrets, secret_applied};
use super::ledger::Ledger;
use super::namespace::Ctx;
use super::queue::Queue;
use super::watches::Keep;

/// The label keys some entry's selector reads: the only labels the namespace cache keeps.
pub(super) fn selector_label_keys(config: &Config) -> BTreeSet<String> {
    config
        .secrets
        .iter()
        .filter_map(|s| s.namespaces.selector.as_ref())
        .flat_map(crate::namespaces::LabelSelector::keys)
        .map(str::to_owned)
        .collect()
}

/// Takes the namespaces into their cache; one deleted is forgotten by the ledger and the
/// queue (and, at the end of a relist, which sends no deletions, every one that is gone).
pub(super) struct KeepNamespaces {
    pub(super) cache: Arc<Namespaces>,
    pub(super) ledger: Arc<Mutex<Ledger>>,
    pub(super) queue: Arc<Queue>,
    pub(super) metrics: Arc<Metrics>,
}

impl KeepNamespaces {
    fn gauges(&self, ledger: &Ledger) {
        self.metrics.namespaces_tracked(ledger.tracked());
        self.metrics.namespaces_selected(ledger.selected());
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Keep<PartialObjectMeta<Namespace>> for KeepNamespaces {
    fn begin(&mut self) {
        self.cache.entries().begin_list();
    }

    fn apply(&mut self, ns: PartialObjectMeta<Namespace>) -> Option<String> {
        self.cache.applied(&ns);
        ns.metadata.name
    }

    fn delete(&mut self, ns: PartialObjectMeta<Namespace>) -> Option<String> {
        let name = ns.metadata.name?;
        self.cache.deleted(&name);
        self.queue.forget(&name);
        let mut ledger = self.ledger();
        ledger.forget(&name);
        self.gauges(&ledger);
        // Nothing to reconcile: a deleted namespace takes its secrets with it.
        None
    }

    fn end(&mut self) {
        self.cache.entries().end_list();
        let mut ledger = self.ledger();
        ledger.retain(|ns| self.cache.contains(ns));
        self.gauges(&ledger);
    }
}

/// Takes regcred's secrets of one name into their cache.
pub(super) struct KeepSecrets(pub(super) Arc<Secrets>);

impl Keep<Secret> for KeepSecrets {
    fn begin(&mut self) {
        self.0.begin_list();
    }

    fn apply(&mut self, secret: Secret) -> Option<String> {
        let ns = secret.metadata.namespace.clone();
        secret_applied(&self.0, secret);
        ns
    }

    fn delete(&mut self, secret: Secret) -> Option<String> {
        let ns = secret.metadata.namespace?;
        self.0.remove_with(&ns, |_| false);
        Some(ns)
    }

    fn end(&mut self) {
        self.0.end_list();
    }
}

/// Feeds the queue: each change's namespace, every namespace at the end of a (re)list, when
/// the tokens change and when this replica becomes leader.
pub(super) async fn trigger(
    ctx: Arc<Ctx>,
    queue: Arc<Queue>,
    mut changed: impl futures::Stream<Item = String> + Unpin,
    mut relists: futures::channel::mpsc::UnboundedReceiver<()>,
    (mut tokens, mut leadership): (
        impl futures::Stream<Item = ()> + Unpin,
        watch::Receiver<Leadership>,
    ),
) {
    let namespaces = &ctx.namespaces.cache;
    let all = || namespaces.entries().keys();
    loop {
        tokio::select! {
            Some(ns) = changed.next() => {
                if namespaces.contains(&ns) {
                    queue.trigger(Arc::from(ns));
                }
            }
            Some(()) = relists.next() => queue.trigger_all(all()),
            Some(()) = tokens.next() => queue.trigger_all(all()),
            Ok(()) = leadership.changed() => {
                if leadership.borrow_and_update().is_leading() {
                    queue.trigger_all(all());
                }
            }
            else => return,
        }
    }
}
