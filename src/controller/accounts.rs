//! The ServiceAccounts the controller tends, with as little watched and kept as that
//! allows (issue 15).
//!
//! Only the configured names are watched, one watch per name with a field selector, as
//! regcred's secrets are (a cluster has many more ServiceAccounts than it lists); every
//! ServiceAccount only when an entry says `"*"`. Two things need others, and both are rare:
//!
//! - references regcred recorded on a ServiceAccount no entry lists any more (the list
//!   shrank, or patching was turned off while regcred may still patch): at the start of
//!   every term one metadata-only list of every ServiceAccount finds those *strays*, and
//!   they are read and mended with their namespace's next reconciliation;
//! - a managed secret about to be deleted: every reference to it goes, whoever made it, so
//!   that namespace's ServiceAccounts are listed once, then.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, ListParams};

use super::cache::{Accounts, account_applied, account_deleted, account_patched};
use super::watches::{Keep, WatchId, Watched as What, Watches, reflected, until_usable};
use crate::config::{Config, ServiceAccounts};
use crate::secrets::API_TIMEOUT;
use crate::serviceaccounts::recorded;

/// What the ServiceAccount watches cover.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Scope {
    /// Every ServiceAccount.
    All,
    /// ServiceAccounts of these names (none: patching is off, only strays are mended).
    Named(BTreeSet<String>),
}

impl Scope {
    /// The ServiceAccounts the configuration lists, in every entry.
    pub(super) fn of(config: &Config) -> Self {
        let mut names = BTreeSet::new();
        for spec in &config.secrets {
            match &spec.service_accounts {
                ServiceAccounts::All => return Self::All,
                ServiceAccounts::Named(n) => names.extend(n.iter().cloned()),
                ServiceAccounts::None => {}
            }
        }
        Self::Named(names)
    }

    fn watches(&self, name: &str) -> bool {
        match self {
            Self::All => true,
            Self::Named(names) => names.contains(name),
        }
    }
}

/// One ServiceAccount watch and its cache.
#[derive(Debug)]
struct Watch {
    /// The name it watches (`None`: every one).
    name: Option<String>,
    cache: Arc<Accounts>,
    id: WatchId,
}

/// The ServiceAccounts the controller tends.
#[derive(Debug)]
pub(super) struct Tended {
    scope: Scope,
    watches: Vec<Watch>,
    /// ServiceAccounts outside the scope that hold regcred's record, by namespace: found at
    /// the start of the term, mended with their namespace.
    strays: Mutex<HashMap<String, BTreeSet<String>>>,
}

struct KeepAccounts(Arc<Accounts>);

impl Keep<ServiceAccount> for KeepAccounts {
    fn begin(&mut self) {
        self.0.begin_list();
    }

    fn apply(&mut self, sa: ServiceAccount) -> Option<String> {
        account_applied(&self.0, &sa);
        sa.metadata.namespace
    }

    fn delete(&mut self, sa: ServiceAccount) -> Option<String> {
        account_deleted(&self.0, &sa);
        sa.metadata.namespace
    }

    fn end(&mut self) {
        self.0.end_list();
    }
}

/// The watches of `scope`: their triggers (the namespace of each change) and what they
/// fill.
pub(super) fn watch(
    client: &kube::Client,
    scope: Scope,
    relisted: &futures::channel::mpsc::UnboundedSender<()>,
    watches: &Arc<Watches>,
) -> (Vec<futures::stream::BoxStream<'static, String>>, Tended) {
    use futures::StreamExt as _;
    let selectors: Vec<Option<String>> = match &scope {
        Scope::All => vec![None],
        Scope::Named(names) => names.iter().cloned().map(Some).collect(),
    };
    let mut streams = Vec::new();
    let mut tended = Vec::new();
    for name in selectors {
        let cache = Arc::new(Accounts::default());
        let id = watches.register(What::ServiceAccounts(name.clone()));
        let selected = match &name {
            Some(n) => {
                kube::runtime::watcher::Config::default().fields(&format!("metadata.name={n}"))
            }
            None => kube::runtime::watcher::Config::default(),
        };
        let changes = reflected(
            super::watches::watch(Api::<ServiceAccount>::all(client.clone()), selected),
            KeepAccounts(cache.clone()),
            (relisted.clone(), false),
            watches.clone(),
            id,
        );
        streams.push(changes.map(super::watches::Change::into_inner).boxed());
        tended.push(Watch { name, cache, id });
    }
    (
        streams,
        Tended {
            scope,
            watches: tended,
            strays: Mutex::default(),
        },
    )
}

impl Tended {
    fn strays(&self) -> std::sync::MutexGuard<'_, HashMap<String, BTreeSet<String>>> {
        self.strays
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The ServiceAccounts of `namespace` a reconciliation looks at: `None` when they
    /// cannot be known (a watch without its first list); every one of them when `deleting`
    /// (a managed secret goes, and every reference to it with it). With them, the strays
    /// among them, for [`Tended::mended`].
    pub(super) async fn in_namespace(
        &self,
        client: &kube::Client,
        watches: &Watches,
        stop: &tokio::sync::watch::Receiver<bool>,
        namespace: &str,
        deleting: bool,
    ) -> Result<(Option<Vec<ServiceAccount>>, Vec<String>), String> {
        for w in &self.watches {
            if !until_usable(watches, w.id, stop).await {
                return Ok((None, Vec::new()));
            }
        }
        let strays: Vec<String> = self
            .strays()
            .get(namespace)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        let api = Api::<ServiceAccount>::namespaced(client.clone(), namespace);
        if deleting && self.scope != Scope::All {
            let listed = tokio::time::timeout(API_TIMEOUT, api.list(&ListParams::default()))
                .await
                .map_err(|_| format!("list serviceaccounts in {namespace}: timed out"))?
                .map_err(|e| format!("list serviceaccounts in {namespace}: {e}"))?;
            return Ok((Some(listed.items), strays));
        }
        let mut found: Vec<ServiceAccount> = self
            .watches
            .iter()
            .filter_map(|w| {
                w.cache.get(namespace, |all| {
                    all.iter()
                        .map(|a| a.service_account(namespace))
                        .collect::<Vec<_>>()
                })
            })
            .flatten()
            .collect();
        for name in &strays {
            match tokio::time::timeout(API_TIMEOUT, api.get_opt(name)).await {
                Ok(Ok(Some(sa))) => found.push(sa),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => return Err(format!("read serviceaccount {namespace}/{name}: {e}")),
                Err(_) => return Err(format!("read serviceaccount {namespace}/{name}: timed out")),
            }
        }
        Ok((Some(found), strays))
    }

    /// Takes in a ServiceAccount as regcred's own patch left it (see
    /// [`super::cache::account_patched`]).
    pub(super) fn patched(&self, sa: &ServiceAccount, over: Option<&str>) {
        let name = sa.metadata.name.as_deref();
        for w in &self.watches {
            if w.name.is_none() || w.name.as_deref() == name {
                account_patched(&w.cache, sa, over);
            }
        }
    }

    /// These strays of `namespace` were mended (or are gone). Others found meanwhile (a
    /// term's list that ended during the reconciliation) stay for the next one.
    pub(super) fn mended(&self, namespace: &str, names: &[String]) {
        let mut strays = self.strays();
        if let Some(left) = strays.get_mut(namespace) {
            for name in names {
                left.remove(name);
            }
            if left.is_empty() {
                strays.remove(namespace);
                if strays.is_empty() {
                    strays.shrink_to_fit();
                }
            }
        }
    }

    /// Finds the strays of a new term: ServiceAccounts outside the scope whose record
    /// names one of `secrets`. One metadata-only list of every ServiceAccount, page by
    /// page; returns their namespaces.
    pub(super) async fn sweep(
        &self,
        client: &kube::Client,
        secrets: &BTreeSet<String>,
    ) -> Result<BTreeSet<String>, kube::Error> {
        let mut found: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        if self.scope != Scope::All {
            let api = Api::<ServiceAccount>::all(client.clone());
            let mut params = ListParams::default().limit(500);
            loop {
                let page = api.list_metadata(&params).await?;
                for sa in page.items {
                    let meta = sa.metadata;
                    let (Some(ns), Some(name)) = (meta.namespace, meta.name) else {
                        continue;
                    };
                    if self.scope.watches(&name) {
                        continue;
                    }
                    let probe = ServiceAccount {
                        metadata: kube::api::ObjectMeta {
                            annotations: meta.annotations,
                            ..kube::api::ObjectMeta::default()
                        },
                        ..ServiceAccount::default()
                    };
                    if recorded(&probe).iter().any(|s| secrets.contains(s)) {
                        found.entry(ns).or_default().insert(name);
                    }
                }
                match page.metadata.continue_.filter(|c| !c.is_empty()) {
                    Some(token) => params = params.continue_token(&token),
                    None => break,
                }
            }
        }
        let namespaces = found.keys().cloned().collect();
        *self.strays() = found.into_iter().collect();
        Ok(namespaces)
    }

    /// Forgets the strays of a term that ended.
    pub(super) fn clear(&self) {
        *self.strays() = HashMap::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scope_is_what_the_entries_list() {
        let load =
            |yaml: &str| Config::from_yaml(std::path::Path::new("t.yaml"), yaml).expect("valid");
        let named = load(
            "secrets:\n  - name: a\n    registries: [public.ecr.aws]\n    serviceAccounts: [default, builder]\n  - name: b\n    registries: [public.ecr.aws]\n    serviceAccounts: [ci]\n",
        );
        let scope = Scope::of(&named);
        assert_eq!(
            scope,
            Scope::Named(["builder", "ci", "default"].map(String::from).into())
        );
        assert!(scope.watches("ci") && !scope.watches("other"));
        let all = load(
            "secrets:\n  - name: a\n    registries: [public.ecr.aws]\n    serviceAccounts: [default]\n  - name: b\n    registries: [public.ecr.aws]\n    serviceAccounts: ['*']\n",
        );
        assert_eq!(Scope::of(&all), Scope::All);
        let off = load("secrets:\n  - registries: [public.ecr.aws]\n");
        assert_eq!(Scope::of(&off), Scope::Named(BTreeSet::new()));
    }
}
