//! The controller's caches: what its watches saw, kept in as little room as its decisions
//! allow (issue 15: 20,000 namespaces in a few MiB). Each cache maps a namespace's name to
//! what one watch knows of it: the namespace itself (name, uid, the labels a selector
//! reads, whether it is being deleted), regcred's secret of one name ([`Stored`]: no token,
//! no payload), or the ServiceAccounts it tends (their `imagePullSecrets` names and
//! regcred's record).
//!
//! A (re)list is taken in place, without a second copy: every entry carries the epoch of
//! the list that last saw it, and at the end of a list the entries it did not see (objects
//! deleted while the watch was down) go.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::{LocalObjectReference, Namespace, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ObjectMeta;
use kube::core::PartialObjectMeta;

use crate::secrets::Stored;
use crate::serviceaccounts::RECORD_ANNOTATION;

/// What one watch knows, by namespace name.
#[derive(Debug)]
pub(crate) struct Cache<V> {
    inner: RwLock<Inner<V>>,
}

#[derive(Debug)]
struct Inner<V> {
    map: HashMap<Arc<str>, (V, bool)>,
    /// The epoch of the current (or last) list.
    epoch: bool,
}

impl<V> Default for Cache<V> {
    fn default() -> Self {
        Self {
            inner: RwLock::new(Inner {
                map: HashMap::new(),
                epoch: false,
            }),
        }
    }
}

impl<V> Cache<V> {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner<V>> {
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner<V>> {
        self.inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What `f` makes of the entry of `key`, if there is one.
    pub(crate) fn get<R>(&self, key: &str, f: impl FnOnce(&V) -> R) -> Option<R> {
        self.read().map.get(key).map(|(v, _)| f(v))
    }

    pub(crate) fn contains(&self, key: &str) -> bool {
        self.read().map.contains_key(key)
    }

    pub(crate) fn len(&self) -> usize {
        self.read().map.len()
    }

    /// Every key (cheap: the names are shared, not copied).
    pub(crate) fn keys(&self) -> Vec<Arc<str>> {
        self.read().map.keys().cloned().collect()
    }

    /// A (re)list begins: entries it does not see again go at its end.
    pub(crate) fn begin_list(&self) {
        let mut inner = self.write();
        inner.epoch = !inner.epoch;
    }

    /// The (re)list ended: removes what it did not see; returns how many went.
    pub(crate) fn end_list(&self) -> usize {
        let mut inner = self.write();
        let (before, epoch) = (inner.map.len(), inner.epoch);
        inner.map.retain(|_, (_, seen)| *seen == epoch);
        let gone = before - inner.map.len();
        shrink(&mut inner.map);
        gone
    }

    /// Sets the entry of `key`: `f` gets the entry as this epoch has it (`None` when there
    /// is none, or only a stale one from before the current list) and returns the new one.
    pub(crate) fn upsert(&self, key: &str, f: impl FnOnce(Option<V>) -> V) {
        let mut inner = self.write();
        let epoch = inner.epoch;
        if let Some((k, (old, seen))) = inner.map.remove_entry(key) {
            let value = f((seen == epoch).then_some(old));
            inner.map.insert(k, (value, epoch));
        } else {
            let value = f(None);
            inner.map.insert(Arc::from(key), (value, epoch));
        }
    }

    /// Sets the entry of `key` as `f` decides from what is there now (`None`: nothing);
    /// `f` returns the new entry, or `None` to leave it as it is.
    pub(crate) fn update_with(&self, key: &str, f: impl FnOnce(Option<&V>) -> Option<V>) {
        let mut inner = self.write();
        let epoch = inner.epoch;
        let (shared, new) = match inner.map.get_key_value(key) {
            Some((k, (v, _))) => (k.clone(), f(Some(v))),
            None => (Arc::from(key), f(None)),
        };
        if let Some(value) = new {
            inner.map.insert(shared, (value, epoch));
        }
    }

    /// Changes or removes the entry of `key`: `f` returns whether it stays.
    pub(crate) fn remove_with(&self, key: &str, f: impl FnOnce(&mut V) -> bool) {
        let mut inner = self.write();
        let keep = inner.map.get_mut(key).is_some_and(|(v, _)| f(v));
        if !keep && inner.map.remove(key).is_some() {
            shrink(&mut inner.map);
        }
    }
}

/// Gives back the room of a map that lost most of its entries (a map only ever grows).
fn shrink<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 64 && map.capacity() > 4 * map.len() {
        map.shrink_to_fit();
    }
}

/// A namespace, as far as regcred's decisions go.
#[derive(Debug)]
pub(crate) struct NamespaceEntry {
    uid: Option<Box<str>>,
    /// Only the labels some selector reads, sorted by key.
    labels: Box<[(Box<str>, Box<str>)]>,
    /// Being deleted since then.
    deleting: Option<jiff::Timestamp>,
}

/// The controller's cache of namespaces (every replica fills it; the admission webhook
/// reads it): each with the labels some selector reads (`keys`) and no other.
#[derive(Debug, Default)]
pub struct Namespaces {
    entries: Cache<NamespaceEntry>,
    keys: BTreeSet<String>,
}

impl Namespaces {
    pub(crate) fn new(label_keys: BTreeSet<String>) -> Self {
        Self {
            entries: Cache::default(),
            keys: label_keys,
        }
    }

    /// The cache itself: lists, names, counts.
    pub(crate) fn entries(&self) -> &Cache<NamespaceEntry> {
        &self.entries
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.entries.contains(name)
    }

    /// Takes in a namespace as its metadata-only watch saw it.
    pub(crate) fn applied(&self, ns: &PartialObjectMeta<Namespace>) {
        let Some(name) = ns.metadata.name.as_deref() else {
            return;
        };
        let labels = ns
            .metadata
            .labels
            .iter()
            .flatten()
            .filter(|(k, _)| self.keys.contains(k.as_str()))
            .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
            .collect();
        let entry = NamespaceEntry {
            uid: ns.metadata.uid.as_deref().map(Into::into),
            labels,
            deleting: ns.metadata.deletion_timestamp.as_ref().map(|t| t.0),
        };
        self.entries.upsert(name, |_| entry);
    }

    pub(crate) fn deleted(&self, name: &str) {
        self.entries.remove_with(name, |_| false);
    }

    /// The namespace as regcred's decisions read it: name, uid, the labels a selector reads
    /// and, when it is being deleted, since when.
    pub(crate) fn get(&self, name: &str) -> Option<Namespace> {
        self.entries.get(name, |e| Namespace {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                uid: e.uid.as_deref().map(str::to_owned),
                labels: Some(labels(e)),
                deletion_timestamp: e.deleting.map(Time),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        })
    }

    /// The labels a selector reads, for the admission webhook.
    #[must_use]
    pub fn labels(&self, name: &str) -> Option<BTreeMap<String, String>> {
        self.entries.get(name, labels)
    }
}

fn labels(e: &NamespaceEntry) -> BTreeMap<String, String> {
    e.labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// regcred's secrets of one name, by namespace.
pub(crate) type Secrets = Cache<Stored>;

/// Takes in a secret its watch saw.
pub(crate) fn secret_applied(cache: &Secrets, secret: Secret) {
    if let Some(ns) = secret.metadata.namespace.clone() {
        cache.upsert(&ns, |_| Stored::of(secret));
    }
}

/// Takes in a secret as regcred's own write left it (`over`: the version it was written
/// over, `None` for a create), if the cache still holds that version (or, for a create,
/// nothing): anything else is newer, or the watch's to bring.
pub(crate) fn secret_written(cache: &Secrets, secret: &Secret, over: Option<&str>) {
    let Some(ns) = secret.metadata.namespace.as_deref() else {
        return;
    };
    cache.update_with(ns, |current| {
        let held = current.and_then(Stored::resource_version);
        (held.as_deref() == over).then(|| Stored::of(secret.clone()))
    });
}

/// Forgets a secret regcred deleted at `resource_version`, if the cache still holds it.
pub(crate) fn secret_deleted(cache: &Secrets, namespace: &str, resource_version: Option<&str>) {
    cache.remove_with(namespace, |held| {
        held.resource_version().as_deref() != resource_version
    });
}

/// A ServiceAccount, as far as its references go: the names in its `imagePullSecrets` and
/// regcred's record of those it added.
#[derive(Debug, Clone)]
pub(crate) struct Account {
    name: Box<str>,
    resource_version: Option<Box<str>>,
    /// `imagePullSecrets` names, in order, joined by commas (a name has none).
    references: Box<str>,
    record: Option<Box<str>>,
}

impl Account {
    fn of(sa: &ServiceAccount) -> Option<Self> {
        let names: Vec<&str> = sa
            .image_pull_secrets
            .iter()
            .flatten()
            .map(|r| r.name.as_str())
            .collect();
        Some(Self {
            name: sa.metadata.name.as_deref()?.into(),
            resource_version: sa.metadata.resource_version.as_deref().map(Into::into),
            references: names.join(",").into(),
            record: sa
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(RECORD_ANNOTATION))
                .map(|r| r.as_str().into()),
        })
    }

    /// The ServiceAccount as regcred's patch reads it: name, namespace, resourceVersion,
    /// references and record (the patch sets exactly those, guarded by the version).
    pub(crate) fn service_account(&self, namespace: &str) -> ServiceAccount {
        ServiceAccount {
            metadata: ObjectMeta {
                name: Some(self.name.to_string()),
                namespace: Some(namespace.to_owned()),
                resource_version: self.resource_version.as_deref().map(str::to_owned),
                annotations: self
                    .record
                    .as_deref()
                    .map(|r| [(RECORD_ANNOTATION.to_owned(), r.to_owned())].into()),
                ..ObjectMeta::default()
            },
            image_pull_secrets: (!self.references.is_empty()).then(|| {
                self.references
                    .split(',')
                    .map(|n| LocalObjectReference { name: n.to_owned() })
                    .collect()
            }),
            ..ServiceAccount::default()
        }
    }
}

/// ServiceAccounts by namespace: of one name (a watch per configured name), or of every
/// name (`serviceAccounts: ["*"]`).
pub(crate) type Accounts = Cache<Vec<Account>>;

/// Takes in a ServiceAccount its watch saw.
pub(crate) fn account_applied(cache: &Accounts, sa: &ServiceAccount) {
    let (Some(ns), Some(account)) = (sa.metadata.namespace.as_deref(), Account::of(sa)) else {
        return;
    };
    cache.upsert(ns, |current| {
        let mut all = current.unwrap_or_default();
        if let Some(a) = all.iter_mut().find(|a| a.name == account.name) {
            *a = account;
        } else {
            all.push(account);
            all.shrink_to_fit();
        }
        all
    });
}

/// Takes in a ServiceAccount as regcred's own patch left it, if the cache still holds the
/// version the patch was made over (anything else is newer, or the watch's to bring).
pub(crate) fn account_patched(cache: &Accounts, sa: &ServiceAccount, over: Option<&str>) {
    let (Some(ns), Some(account)) = (sa.metadata.namespace.as_deref(), Account::of(sa)) else {
        return;
    };
    cache.update_with(ns, |current| {
        let mut all = current?.clone();
        let slot = all.iter_mut().find(|a| a.name == account.name)?;
        (slot.resource_version.as_deref() == over).then(|| *slot = account)?;
        Some(all)
    });
}

/// Forgets a ServiceAccount its watch saw go.
pub(crate) fn account_deleted(cache: &Accounts, sa: &ServiceAccount) {
    let (Some(ns), Some(name)) = (
        sa.metadata.namespace.as_deref(),
        sa.metadata.name.as_deref(),
    ) else {
        return;
    };
    cache.remove_with(ns, |all| {
        all.retain(|a| &*a.name != name);
        !all.is_empty()
    });
}

#[cfg(test)]
mod tests;
