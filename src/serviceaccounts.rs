//! ServiceAccounts' `imagePullSecrets`: regcred's secrets added once, other entries untouched,
//! and the references regcred made removed again when nothing claims them any more.
//!
//! regcred records the references it adds in an annotation ([`RECORD_ANNOTATION`]), so it
//! can tell them from ones a person added: when a ServiceAccount is no longer listed, or a
//! secret is given back to its owner, only recorded references go. A reference to a secret
//! regcred deletes goes whoever made it (it would point at nothing).
//!
//! The list is atomic for server-side apply and strategic merge alike (either replaces the
//! whole list), so the change is a read-modify-write: a merge patch that carries the
//! `resourceVersion` it was computed from, retried on conflict.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{LocalObjectReference, ServiceAccount};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::lease::{NotLeading, Permit};
use crate::secrets::FIELD_MANAGER;

/// The secrets whose references on a ServiceAccount regcred added (comma-separated).
pub const RECORD_ANNOTATION: &str = "regcred.io/image-pull-secrets";

/// How often a conflicting patch is recomputed and tried again.
const CONFLICT_RETRIES: usize = 5;

/// What one of regcred's secret names wants of a ServiceAccount.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// A reference (added, and recorded, if missing).
    Reference,
    /// No reference regcred made (one someone else made stays).
    NoneOfOurs,
    /// No reference at all: the secret goes.
    None,
}

/// The references regcred recorded adding.
#[must_use]
pub fn recorded(sa: &ServiceAccount) -> BTreeSet<String> {
    sa.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(RECORD_ANNOTATION))
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// What a ServiceAccount should hold: its `imagePullSecrets` and regcred's record.
#[derive(Clone, Debug, PartialEq)]
pub struct Relinked {
    pub references: Vec<LocalObjectReference>,
    pub record: BTreeSet<String>,
    /// Secrets added and removed, for reports.
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

/// The references and record a ServiceAccount should have, given what each of regcred's
/// secret names wants of it; `None` when it has them already. Other entries keep their
/// place; new ones go at the end.
#[must_use]
pub fn relinked(sa: &ServiceAccount, wants: &BTreeMap<String, Want>) -> Option<Relinked> {
    let mut references = sa.image_pull_secrets.clone().unwrap_or_default();
    let before_record = recorded(sa);
    let mut record = before_record.clone();
    let (mut added, mut removed) = (Vec::new(), Vec::new());
    for (secret, want) in wants {
        let present = references.iter().any(|r| r.name == *secret);
        let drop = match want {
            Want::Reference => {
                if !present {
                    references.push(LocalObjectReference {
                        name: secret.clone(),
                    });
                    record.insert(secret.clone());
                    added.push(secret.clone());
                }
                false
            }
            Want::NoneOfOurs => record.contains(secret),
            Want::None => true,
        };
        if drop {
            if present {
                references.retain(|r| r.name != *secret);
                removed.push(secret.clone());
            }
            record.remove(secret);
        }
    }
    // A recorded reference someone removed is no longer regcred's to remove.
    record.retain(|s| references.iter().any(|r| r.name == *s));
    (!added.is_empty() || !removed.is_empty() || record != before_record).then_some(Relinked {
        references,
        record,
        added,
        removed,
    })
}

/// A patch made: the change, and the ServiceAccount as the patch left it.
#[derive(Clone, Debug, PartialEq)]
pub struct Patched {
    pub change: Relinked,
    pub now: Box<ServiceAccount>,
    /// The resourceVersion it was patched over.
    pub over: Option<String>,
}

/// What a patch did.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Patched(Patched),
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
    #[error("patch serviceaccount {namespace}/{name}: no answer in time")]
    Timeout { namespace: String, name: String },
    #[error("patch serviceaccount {namespace}/{name}: {source}")]
    NotLeading {
        namespace: String,
        name: String,
        source: NotLeading,
    },
}

impl Error {
    /// The patch was not made: this replica no longer leads (the next leader makes it).
    #[must_use]
    pub fn is_not_leading(&self) -> bool {
        matches!(self, Self::NotLeading { .. })
    }
}

/// Brings one ServiceAccount's references in line with `wants`, starting from the
/// ServiceAccount as it was read and re-reading it after each conflict. Each call is
/// bounded by the permit.
pub async fn update(
    client: &kube::Client,
    sa: &ServiceAccount,
    wants: &BTreeMap<String, Want>,
    permit: &Permit,
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
    let within = || {
        permit.next_call().map_err(|source| Error::NotLeading {
            namespace: namespace.clone(),
            name: name.clone(),
            source,
        })
    };
    let mut current = sa.clone();
    for _ in 0..CONFLICT_RETRIES {
        let Some(change) = relinked(&current, wants) else {
            return Ok(Outcome::AlreadyDone);
        };
        let record = (!change.record.is_empty())
            .then(|| change.record.iter().cloned().collect::<Vec<_>>().join(","));
        let patch = json!({
            "metadata": {
                "resourceVersion": current.metadata.resource_version,
                "annotations": { RECORD_ANNOTATION: record },
            },
            "imagePullSecrets": change.references,
        });
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        let patch = Patch::Merge(&patch);
        permit.write_turn().await;
        match tokio::time::timeout(within()?, api.patch(&name, &params, &patch))
            .await
            .map_err(|_| timeout())?
        {
            Ok(now) => {
                return Ok(Outcome::Patched(Patched {
                    change,
                    now: Box::new(now),
                    over: current.metadata.resource_version,
                }));
            }
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(Outcome::Missing),
            Err(kube::Error::Api(e)) if e.code == 409 => {
                tracing::debug!(%namespace, %name, "serviceaccount changed meanwhile; reading it again");
                match tokio::time::timeout(within()?, api.get_opt(&name))
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

    fn sa(names: &[&str], record: Option<&str>) -> ServiceAccount {
        let mut sa = ServiceAccount {
            image_pull_secrets: Some(
                names
                    .iter()
                    .map(|n| LocalObjectReference {
                        name: (*n).to_owned(),
                    })
                    .collect(),
            ),
            ..ServiceAccount::default()
        };
        sa.metadata.annotations =
            record.map(|r| [(RECORD_ANNOTATION.to_owned(), r.to_owned())].into());
        sa
    }

    fn wants(pairs: &[(&str, Want)]) -> BTreeMap<String, Want> {
        pairs.iter().map(|(s, w)| ((*s).to_owned(), *w)).collect()
    }

    fn names(r: &Relinked) -> Vec<&str> {
        r.references.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn adds_once_records_it_and_keeps_others() {
        let r = relinked(
            &sa(&["other"], None),
            &wants(&[("regcred", Want::Reference)]),
        )
        .unwrap();
        assert_eq!(names(&r), ["other", "regcred"]);
        assert_eq!(r.record, ["regcred".to_owned()].into());
        assert_eq!(r.added, ["regcred"]);
        assert_eq!(
            relinked(
                &sa(&["regcred", "other"], Some("regcred")),
                &wants(&[("regcred", Want::Reference)])
            ),
            None
        );
        // Already there, put there by someone else: left as it is, not claimed.
        assert_eq!(
            relinked(
                &sa(&["regcred"], None),
                &wants(&[("regcred", Want::Reference)])
            ),
            None
        );
    }

    #[test]
    fn removes_only_what_it_recorded_unless_the_secret_goes() {
        let wanted = wants(&[("regcred", Want::NoneOfOurs)]);
        let r = relinked(&sa(&["a", "regcred", "b"], Some("regcred")), &wanted).unwrap();
        assert_eq!(names(&r), ["a", "b"]);
        assert!(r.record.is_empty());
        assert_eq!(r.removed, ["regcred"]);
        assert_eq!(
            relinked(&sa(&["regcred"], None), &wanted),
            None,
            "someone else's reference"
        );
        let gone = relinked(
            &sa(&["a", "regcred"], None),
            &wants(&[("regcred", Want::None)]),
        )
        .unwrap();
        assert_eq!(names(&gone), ["a"]);
        assert_eq!(
            relinked(&sa(&["a"], None), &wants(&[("regcred", Want::None)])),
            None
        );
    }

    #[test]
    fn a_record_follows_the_references() {
        // Recorded, but the reference was removed by hand: the record goes too.
        let r = relinked(
            &sa(&["a"], Some("regcred")),
            &wants(&[("other", Want::NoneOfOurs)]),
        )
        .unwrap();
        assert!(r.record.is_empty() && r.added.is_empty() && r.removed.is_empty());
        assert_eq!(names(&r), ["a"]);
    }
}
