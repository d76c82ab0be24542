//! ServiceAccounts' `imagePullSecrets`: adding regcred's secret once, removing only it.
//!
//! The list is atomic for server-side apply and strategic merge alike (either replaces the
//! whole list), so the change is a read-modify-write: a merge patch that carries the
//! `resourceVersion` it was computed from, retried on conflict.

use k8s_openapi::api::core::v1::{LocalObjectReference, ServiceAccount};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::secrets::{API_TIMEOUT, FIELD_MANAGER};

/// How often a conflicting patch is recomputed and tried again.
const CONFLICT_RETRIES: usize = 5;

/// The list with `secret` added at the end, or `None` when it is already there.
#[must_use]
pub fn with_secret(sa: &ServiceAccount, secret: &str) -> Option<Vec<LocalObjectReference>> {
    let list = sa.image_pull_secrets.clone().unwrap_or_default();
    if list.iter().any(|r| r.name == secret) {
        return None;
    }
    let mut list = list;
    list.push(LocalObjectReference {
        name: secret.to_owned(),
    });
    Some(list)
}

/// The list without `secret`, or `None` when it is not there.
#[must_use]
pub fn without_secret(sa: &ServiceAccount, secret: &str) -> Option<Vec<LocalObjectReference>> {
    let list = sa.image_pull_secrets.as_ref()?;
    if !list.iter().any(|r| r.name == secret) {
        return None;
    }
    Some(list.iter().filter(|r| r.name != secret).cloned().collect())
}

/// What a patch did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Patched,
    AlreadyDone,
    /// The ServiceAccount does not exist (any more).
    Missing,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("patch serviceaccount {namespace}/{name}")]
    Patch {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error(
        "patch serviceaccount {namespace}/{name}: still conflicting after {CONFLICT_RETRIES} tries"
    )]
    Conflicts { namespace: String, name: String },
    #[error("patch serviceaccount {namespace}/{name}: no answer within {API_TIMEOUT:?}")]
    Timeout { namespace: String, name: String },
}

/// Adds or removes one entry, starting from the ServiceAccount as it was read and
/// re-reading it after each conflict.
pub async fn update(
    client: &kube::Client,
    sa: &ServiceAccount,
    secret: &str,
    change: fn(&ServiceAccount, &str) -> Option<Vec<LocalObjectReference>>,
) -> Result<Outcome, Error> {
    let namespace = sa.metadata.namespace.clone().unwrap_or_default();
    let name = sa.metadata.name.clone().unwrap_or_default();
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
    let fail = |source| Error::Patch {
        namespace: namespace.clone(),
        name: name.clone(),
        source,
    };
    let timeout = || Error::Timeout {
        namespace: namespace.clone(),
        name: name.clone(),
    };
    let mut current = sa.clone();
    for _ in 0..CONFLICT_RETRIES {
        let Some(list) = change(&current, secret) else {
            return Ok(Outcome::AlreadyDone);
        };
        let patch = json!({
            "metadata": { "resourceVersion": current.metadata.resource_version },
            "imagePullSecrets": list,
        });
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        let patch = Patch::Merge(&patch);
        match tokio::time::timeout(API_TIMEOUT, api.patch(&name, &params, &patch))
            .await
            .map_err(|_| timeout())?
        {
            Ok(_) => return Ok(Outcome::Patched),
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(Outcome::Missing),
            Err(kube::Error::Api(e)) if e.code == 409 => {
                tracing::debug!(%namespace, %name, "serviceaccount changed meanwhile; reading it again");
                match tokio::time::timeout(API_TIMEOUT, api.get_opt(&name))
                    .await
                    .map_err(|_| timeout())?
                {
                    Ok(Some(fresh)) => current = fresh,
                    Ok(None) => return Ok(Outcome::Missing),
                    Err(e) => return Err(fail(e)),
                }
            }
            Err(e) => return Err(fail(e)),
        }
    }
    Err(Error::Conflicts { namespace, name })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(names: &[&str]) -> ServiceAccount {
        ServiceAccount {
            image_pull_secrets: Some(
                names
                    .iter()
                    .map(|n| LocalObjectReference {
                        name: (*n).to_owned(),
                    })
                    .collect(),
            ),
            ..ServiceAccount::default()
        }
    }

    fn names(list: Option<Vec<LocalObjectReference>>) -> Option<Vec<String>> {
        list.map(|l| l.into_iter().map(|r| r.name).collect())
    }

    #[test]
    fn adds_once_and_keeps_others() {
        assert_eq!(
            names(with_secret(&sa(&["other"]), "regcred")),
            Some(vec!["other".into(), "regcred".into()])
        );
        assert_eq!(
            names(with_secret(&sa(&["regcred", "other"]), "regcred")),
            None
        );
        assert_eq!(
            names(with_secret(&ServiceAccount::default(), "regcred")),
            Some(vec!["regcred".into()])
        );
    }

    #[test]
    fn removes_only_its_own() {
        assert_eq!(
            names(without_secret(&sa(&["a", "regcred", "b"]), "regcred")),
            Some(vec!["a".into(), "b".into()])
        );
        assert_eq!(names(without_secret(&sa(&["a"]), "regcred")), None);
        assert_eq!(
            names(without_secret(&ServiceAccount::default(), "regcred")),
            None
        );
    }
}
