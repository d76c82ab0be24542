//! Talking to the API server: the client, and reads of whole collections page by page.

use std::collections::BTreeMap;
use std::fmt::Debug;

use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::Resource;
use kube::api::{Api, ListParams};
use serde::de::DeserializeOwned;

use crate::config::Config;
use crate::secrets::{API_TIMEOUT, Stored};

/// Page size for lists: large enough for few round trips, small enough to stay cheap.
const PAGE: u32 = 500;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connect to Kubernetes (KUBECONFIG or in-cluster config)")]
    Connect(#[source] kube::Error),
    #[error("list {what}")]
    List { what: String, source: kube::Error },
    #[error("list {what}: no answer within {API_TIMEOUT:?}")]
    Timeout { what: String },
}

/// Whether this identity may `verb` the core `resource` in every namespace, as the API
/// server's authorizer answers (SelfSubjectAccessReview); no answer counts as no.
pub async fn may(client: &kube::Client, verb: &str, resource: &str) -> bool {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    };
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                group: Some(String::new()),
                resource: Some(resource.to_owned()),
                verb: Some(verb.to_owned()),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    let api = Api::<SelfSubjectAccessReview>::all(client.clone());
    match tokio::time::timeout(
        API_TIMEOUT,
        api.create(&kube::api::PostParams::default(), &review),
    )
    .await
    {
        Ok(Ok(r)) => r.status.is_some_and(|s| s.allowed),
        _ => false,
    }
}

/// Whether regcred may read and patch ServiceAccounts everywhere although no entry lists
/// any: then it still removes the references it recorded making (patching was turned off).
pub async fn may_tend_service_accounts(client: &kube::Client) -> bool {
    let (list, watch, patch) = tokio::join!(
        may(client, "list", "serviceaccounts"),
        may(client, "watch", "serviceaccounts"),
        may(client, "patch", "serviceaccounts"),
    );
    list && watch && patch
}

/// A client from `KUBECONFIG`, `~/.kube/config` or the in-cluster service account.
pub async fn client() -> Result<kube::Client, Error> {
    kube::Client::try_default().await.map_err(Error::Connect)
}

/// Every object of a list, following `continue` tokens.
pub async fn list_all<K>(api: &Api<K>, params: &ListParams, what: &str) -> Result<Vec<K>, Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let mut items = Vec::new();
    let mut params = params.clone().limit(PAGE);
    loop {
        let page = tokio::time::timeout(API_TIMEOUT, api.list(&params))
            .await
            .map_err(|_| Error::Timeout {
                what: what.to_owned(),
            })?
            .map_err(|source| Error::List {
                what: what.to_owned(),
                source,
            })?;
        items.extend(page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(items),
        }
    }
}

/// What the cluster holds that regcred looks at, read once.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub namespaces: Vec<Namespace>,
    /// By namespace, then by secret name.
    pub secrets: BTreeMap<String, BTreeMap<String, Stored>>,
    /// By namespace; `None` when not read (regcred neither patches nor may tend them).
    pub service_accounts: Option<BTreeMap<String, Vec<ServiceAccount>>>,
}

impl Snapshot {
    /// Reads namespaces, regcred's secrets (by name, so RBAC can be name-scoped: the
    /// configured names and the former ones) and, when `service_accounts`, ServiceAccounts.
    pub async fn read(
        client: &kube::Client,
        config: &Config,
        service_accounts: bool,
    ) -> Result<Self, Error> {
        let namespaces = list_all(
            &Api::<Namespace>::all(client.clone()),
            &ListParams::default(),
            "namespaces",
        )
        .await?;
        let mut secrets: BTreeMap<String, BTreeMap<String, Stored>> = BTreeMap::new();
        for name in config.managed_names() {
            let params = ListParams::default().fields(&format!("metadata.name={name}"));
            let found = list_all(
                &Api::<Secret>::all(client.clone()),
                &params,
                &format!("secrets named {name}"),
            )
            .await?;
            for s in found {
                let ns = s.metadata.namespace.clone().unwrap_or_default();
                secrets
                    .entry(ns)
                    .or_default()
                    .insert(name.clone(), Stored::of(s));
            }
        }
        let service_accounts = if service_accounts {
            let mut by_namespace: BTreeMap<String, Vec<ServiceAccount>> = BTreeMap::new();
            let all = list_all(
                &Api::<ServiceAccount>::all(client.clone()),
                &ListParams::default(),
                "serviceaccounts",
            )
            .await?;
            for sa in all {
                by_namespace
                    .entry(sa.metadata.namespace.clone().unwrap_or_default())
                    .or_default()
                    .push(sa);
            }
            Some(by_namespace)
        } else {
            None
        };
        Ok(Self {
            namespaces,
            secrets,
            service_accounts,
        })
    }
}
