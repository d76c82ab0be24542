//! The one thin writer of regcred's secrets: server-side apply, delete and give back, each
//! bounded by its permit.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};

use super::FIELD_MANAGER;
use crate::lease::{NotLeading, Permit};

/// Why a write failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("create secret {namespace}/{name}")]
    Create {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("apply secret {namespace}/{name}")]
    Apply {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("delete secret {namespace}/{name}")]
    Delete {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("give back secret {namespace}/{name}")]
    GiveBack {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("{operation} secret {namespace}/{name}: no answer within {after:?}")]
    Timeout {
        operation: &'static str,
        namespace: String,
        name: String,
        after: Duration,
    },
    #[error("{operation} secret {namespace}/{name}: {source}")]
    NotLeading {
        operation: &'static str,
        namespace: String,
        name: String,
        source: NotLeading,
    },
}

impl Error {
    /// Someone changed the secret since it was read: read again and decide again.
    #[must_use]
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Create { source: kube::Error::Api(s), .. } | Self::Apply { source: kube::Error::Api(s), .. } | Self::Delete { source: kube::Error::Api(s), .. } | Self::GiveBack { source: kube::Error::Api(s), .. } if s.code == 409)
    }

    /// The write was not made: this replica no longer leads (the next leader makes it).
    #[must_use]
    pub fn is_not_leading(&self) -> bool {
        matches!(self, Self::NotLeading { .. })
    }
}

/// Writes secrets. Every call is bounded by its [`Permit`]: [`API_TIMEOUT`](super::API_TIMEOUT), or less when the
/// controller's leadership ends sooner, and none is made after that.
#[derive(Clone)]
pub struct Writer {
    client: kube::Client,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Writer")
    }
}

/// One call bounded by the permit, its errors given their context.
async fn bounded<T>(
    operation: &'static str,
    namespace: &str,
    name: &str,
    permit: &Permit,
    call: impl std::future::Future<Output = Result<T, kube::Error>>,
    wrap: impl FnOnce(String, String, kube::Error) -> Error,
) -> Result<T, Error> {
    permit.write_turn().await;
    let within = permit.next_call().map_err(|source| Error::NotLeading {
        operation,
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        source,
    })?;
    match tokio::time::timeout(within, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(wrap(namespace.to_owned(), name.to_owned(), source)),
        Err(_) => Err(Error::Timeout {
            operation,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            after: within,
        }),
    }
}

impl Writer {
    #[must_use]
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }

    /// Puts `desired` in place. Over a stored secret (`over` is its resourceVersion) by
    /// server-side apply: regcred forces its fields, but only if nobody changed the secret
    /// since it was read. Where none was stored, by a plain create, which costs the API
    /// server about a third less than an apply that creates (`make bench`, "what each kind
    /// of request costs"); a secret someone else created meanwhile is a conflict
    /// (`AlreadyExists`), never silently taken over. Returns the secret as stored.
    pub async fn apply(
        &self,
        desired: &Secret,
        over: Option<&str>,
        permit: &Permit,
    ) -> Result<Secret, Error> {
        let namespace = desired.metadata.namespace.clone().unwrap_or_default();
        let name = desired.metadata.name.clone().unwrap_or_default();
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &namespace);
        if over.is_none() {
            let params = PostParams {
                field_manager: Some(FIELD_MANAGER.to_owned()),
                ..PostParams::default()
            };
            return bounded(
                "create",
                &namespace,
                &name,
                permit,
                api.create(&params, desired),
                |namespace, name, source| Error::Create {
                    namespace,
                    name,
                    source,
                },
            )
            .await;
        }
        let mut body = desired.clone();
        body.metadata.resource_version = over.map(str::to_owned);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let patch = Patch::Apply(&body);
        bounded(
            "apply",
            &namespace,
            &name,
            permit,
            api.patch(&name, &params, &patch),
            |namespace, name, source| Error::Apply {
                namespace,
                name,
                source,
            },
        )
        .await
    }

    /// Deletes a secret, only if it is still the version that was read.
    pub async fn delete(
        &self,
        namespace: &str,
        name: &str,
        resource_version: Option<&str>,
        permit: &Permit,
    ) -> Result<(), Error> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                resource_version: resource_version.map(str::to_owned),
                uid: None,
            }),
            ..DeleteParams::default()
        };
        let deleted = bounded(
            "delete",
            namespace,
            name,
            permit,
            api.delete(name, &params),
            |namespace, name, source| Error::Delete {
                namespace,
                name,
                source,
            },
        )
        .await;
        match deleted {
            Ok(_) => Ok(()),
            Err(Error::Delete {
                source: kube::Error::Api(s),
                ..
            }) if s.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Writes back what [`given_back`](super::given_back) left of a secret, only if it is still the version
    /// that was read (its resourceVersion travels with it). Returns the secret as stored.
    pub async fn give_back(&self, secret: &Secret, permit: &Permit) -> Result<Secret, Error> {
        let namespace = secret.metadata.namespace.clone().unwrap_or_default();
        let name = secret.metadata.name.clone().unwrap_or_default();
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &namespace);
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        };
        bounded(
            "give back",
            &namespace,
            &name,
            permit,
            api.replace(&name, &params, secret),
            |namespace, name, source| Error::GiveBack {
                namespace,
                name,
                source,
            },
        )
        .await
    }
}
