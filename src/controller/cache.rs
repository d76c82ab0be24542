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
mod tests {
    use super::*;

    fn ns(name: &str, labels: &[(&str, &str)]) -> PartialObjectMeta<Namespace> {
        PartialObjectMeta::<Namespace> {
            metadata: ObjectMeta {
                name: Some(name.into()),
                uid: Some(format!("uid-{name}")),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            ..PartialObjectMeta::default()
        }
    }

    #[test]
    fn namespaces_keep_only_the_labels_a_selector_reads() {
        let cache = Namespaces::new(["team".to_owned()].into());
        cache.applied(&ns(
            "a",
            &[("team", "x"), ("kubernetes.io/metadata.name", "a")],
        ));
        let a = cache.get("a").unwrap();
        assert_eq!(a.metadata.uid.as_deref(), Some("uid-a"));
        assert_eq!(
            a.metadata.labels.unwrap(),
            [("team".to_owned(), "x".to_owned())].into()
        );
        assert!(a.metadata.deletion_timestamp.is_none());
        let mut dying = ns("a", &[]);
        dying.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
        cache.applied(&dying);
        assert!(crate::namespaces::is_terminating(&cache.get("a").unwrap()));
        cache.deleted("a");
        assert!(cache.get("a").is_none() && cache.labels("a").is_none());
    }

    #[test]
    fn a_relist_drops_what_it_did_not_see() {
        let cache = Namespaces::new(BTreeSet::new());
        for name in ["a", "b", "c"] {
            cache.applied(&ns(name, &[]));
        }
        cache.entries().begin_list();
        cache.applied(&ns("b", &[]));
        cache.applied(&ns("d", &[]));
        assert_eq!(
            cache.entries().len(),
            4,
            "the old entries stay until the list ends"
        );
        assert_eq!(cache.entries().end_list(), 2);
        let mut keys: Vec<String> = cache
            .entries()
            .keys()
            .iter()
            .map(ToString::to_string)
            .collect();
        keys.sort();
        assert_eq!(keys, ["b", "d"]);
    }

    fn sa(ns: &str, name: &str, refs: &[&str], record: Option<&str>) -> ServiceAccount {
        ServiceAccount {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                resource_version: Some("7".into()),
                annotations: record.map(|r| [(RECORD_ANNOTATION.to_owned(), r.to_owned())].into()),
                ..ObjectMeta::default()
            },
            image_pull_secrets: (!refs.is_empty()).then(|| {
                refs.iter()
                    .map(|n| LocalObjectReference {
                        name: (*n).to_owned(),
                    })
                    .collect()
            }),
            ..ServiceAccount::default()
        }
    }

    #[test]
    fn accounts_keep_what_the_patch_reads() {
        let cache = Accounts::default();
        let full = sa("a", "default", &["other", "regcred"], Some("regcred"));
        account_applied(&cache, &full);
        account_applied(&cache, &sa("a", "ci", &[], None));
        let kept = cache
            .get("a", |all| {
                all.iter()
                    .map(|a| a.service_account("a"))
                    .collect::<Vec<_>>()
            })
            .unwrap();
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0].metadata.name, full.metadata.name);
        assert_eq!(
            kept[0].metadata.resource_version,
            full.metadata.resource_version
        );
        assert_eq!(kept[0].image_pull_secrets, full.image_pull_secrets);
        assert_eq!(
            crate::serviceaccounts::recorded(&kept[0]),
            crate::serviceaccounts::recorded(&full)
        );
        assert_eq!(kept[1].image_pull_secrets, None);
        account_deleted(&cache, &sa("a", "ci", &[], None));
        assert_eq!(cache.get("a", Vec::len), Some(1));
        account_deleted(&cache, &full);
        assert!(!cache.contains("a"), "an empty namespace is forgotten");
        // A relist that sees only one of two: the other goes.
        account_applied(&cache, &sa("b", "x", &[], None));
        account_applied(&cache, &sa("b", "y", &[], None));
        cache.begin_list();
        account_applied(&cache, &sa("b", "y", &[], None));
        cache.end_list();
        assert_eq!(
            cache.get("b", |all| all
                .iter()
                .map(|a| a.name.to_string())
                .collect::<Vec<_>>()),
            Some(vec!["y".to_owned()])
        );
    }

    fn secret(ns: &str, rv: &str) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some("regcred".into()),
                namespace: Some(ns.into()),
                resource_version: Some(rv.into()),
                ..ObjectMeta::default()
            },
            ..Secret::default()
        }
    }

    #[test]
    fn regcreds_own_writes_are_taken_in_only_over_what_they_replaced() {
        let cache = Secrets::default();
        let rv = |c: &Secrets| c.get("a", Stored::resource_version).flatten();
        secret_written(&cache, &secret("a", "5"), None);
        assert_eq!(rv(&cache).as_deref(), Some("5"), "a create over nothing");
        secret_written(&cache, &secret("a", "7"), Some("5"));
        assert_eq!(rv(&cache).as_deref(), Some("7"));
        // The watch brought a newer version first: regcred's older answer does not undo it.
        secret_applied(&cache, secret("a", "9"));
        secret_written(&cache, &secret("a", "8"), Some("7"));
        assert_eq!(rv(&cache).as_deref(), Some("9"));
        secret_written(&cache, &secret("a", "10"), None);
        assert_eq!(
            rv(&cache).as_deref(),
            Some("9"),
            "a create over something is not taken in"
        );
        secret_deleted(&cache, "a", Some("7"));
        assert!(
            cache.contains("a"),
            "deleted at another version: the watch decides"
        );
        secret_deleted(&cache, "a", Some("9"));
        assert!(!cache.contains("a"));

        let accounts = Accounts::default();
        account_applied(&accounts, &sa("a", "default", &[], None));
        let mut patched = sa("a", "default", &["regcred"], Some("regcred"));
        patched.metadata.resource_version = Some("8".into());
        account_patched(&accounts, &patched, Some("6"));
        let refs = |c: &Accounts| {
            c.get("a", |all| all[0].service_account("a").image_pull_secrets)
                .flatten()
                .unwrap_or_default()
        };
        assert!(refs(&accounts).is_empty(), "patched over another version");
        account_patched(&accounts, &patched, Some("7"));
        assert_eq!(refs(&accounts).len(), 1);
    }
}
