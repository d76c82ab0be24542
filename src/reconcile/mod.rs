//! One namespace, brought in line: the plan for each managed secret name (pure), and its
//! execution through the thin writers. `sync` runs this over every namespace once; the
//! controller runs it whenever a namespace, secret or ServiceAccount changes.

mod context;
mod plan;

pub use context::{Context, Written};
pub use plan::{Assignment, Freshness, Step, TokenView, assign, plan};

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::Api;

use crate::config::{SecretConfig, ServiceAccounts};
use crate::metrics::WriteResult;
use crate::secrets::{self, Stored};
use crate::serviceaccounts::{self, Want};

/// The outcome for one secret slot of a namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Updated,
    Unchanged,
    /// regcred's secret was removed (its namespace no longer selected, or its name no
    /// longer configured).
    Removed,
    /// regcred's secret was given back to its owner with the entries it held for other
    /// registries, instead of removed.
    GivenBack,
    /// Nothing to do: not selected, and regcred holds nothing there.
    Absent,
    Skipped,
    Foreign,
    /// Left for later: a token that is not at hand yet (the controller waits for its
    /// refresher), a store not filled yet, or a leadership that ended.
    Pending,
    Failed(String),
}

impl Outcome {
    #[must_use]
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Self::Created | Self::Updated | Self::Removed | Self::GivenBack
        )
    }

    #[must_use]
    pub fn is_failure(&self) -> bool {
        matches!(self, Self::Failed(_) | Self::Foreign)
    }
}

/// What happened in one namespace.
#[derive(Clone, Debug)]
pub struct Report {
    pub namespace: String,
    /// By secret name.
    pub secrets: BTreeMap<String, Outcome>,
    pub service_accounts_patched: usize,
    /// Expiry of each served secret after the pass.
    pub expiries: Vec<Timestamp>,
    /// What a dry run would have done.
    pub planned: Vec<String>,
}

impl Report {
    /// Whether the namespace counts as selected (some secret is served or attempted there).
    #[must_use]
    pub fn is_selected(&self) -> bool {
        self.secrets
            .values()
            .any(|o| !matches!(o, Outcome::Removed | Outcome::GivenBack | Outcome::Absent))
    }
}

/// How many times a slot is re-read and re-planned after a write conflict.
const CONFLICT_ATTEMPTS: usize = 3;

/// What the ServiceAccounts of the namespace should do about one secret name.
#[derive(Clone, Copy, Debug)]
enum Link<'a> {
    /// The secret is in place: the rule's ServiceAccounts reference it, the others lose the
    /// reference regcred made.
    Serve(&'a ServiceAccounts),
    /// The secret is not regcred's (any more), or not there: references regcred made go.
    DropOurs,
    /// The secret goes: every reference to it goes.
    DropAll,
}

/// A managed secret about to go.
#[derive(Debug)]
enum Leaving {
    Delete { resource_version: Option<String> },
    GiveBack(Box<Secret>),
}

/// Brings one namespace in line: every secret regcred looks after (configured and former
/// names), then the ServiceAccounts that should (or should no longer) reference them, then
/// the removal of secrets no entry serves there.
///
/// `service_accounts` is `None` when they are not known (not watched, or their watch
/// fails): references are then left as they are. Secret names in `unknown` (their store is
/// not filled) are left alone.
pub async fn namespace(
    ctx: &Context<'_>,
    ns: &Namespace,
    stored: &BTreeMap<String, Stored>,
    service_accounts: Option<&[ServiceAccount]>,
    unknown: &BTreeSet<String>,
) -> Report {
    let name = ns.metadata.name.clone().unwrap_or_default();
    let mut report = Report {
        namespace: name.clone(),
        secrets: BTreeMap::new(),
        service_accounts_patched: 0,
        expiries: Vec::new(),
        planned: Vec::new(),
    };
    let mut links = BTreeMap::new();
    let mut leaving = BTreeMap::new();
    for secret_name in ctx.config.managed_names() {
        if unknown.contains(&secret_name) {
            report.secrets.insert(secret_name, Outcome::Pending);
            continue;
        }
        let outcome = match assign(ctx.config, ns, &secret_name) {
            Assignment::Skip => Outcome::Skipped,
            Assignment::Conflict(entries) => Outcome::Failed(format!(
                "secret {secret_name} is claimed by secrets[{}] of the configuration; leaving it alone",
                entries
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("] and secrets[")
            )),
            Assignment::Remove => match stored.get(&secret_name).filter(|s| s.is_managed()) {
                None => {
                    links.insert(secret_name.clone(), Link::DropOurs);
                    Outcome::Absent
                }
                Some(s) => {
                    let (link, going) = match s.given_back() {
                        Some(back) => (Link::DropOurs, Leaving::GiveBack(Box::new(back))),
                        None => (
                            Link::DropAll,
                            Leaving::Delete {
                                resource_version: s.resource_version(),
                            },
                        ),
                    };
                    links.insert(secret_name.clone(), link);
                    leaving.insert(secret_name.clone(), going);
                    // Decided once the references are done.
                    Outcome::Pending
                }
            },
            Assignment::Serve(spec) => {
                let outcome = serve(
                    ctx,
                    &name,
                    spec,
                    stored.get(&secret_name).cloned(),
                    &mut report,
                )
                .await;
                if matches!(
                    outcome,
                    Outcome::Created | Outcome::Updated | Outcome::Unchanged
                ) {
                    links.insert(secret_name.clone(), Link::Serve(&spec.service_accounts));
                }
                outcome
            }
        };
        report.secrets.insert(secret_name, outcome);
    }

    // References: added where a served secret wants them, removed where nothing claims
    // them; a failure leaves the secret it concerns as it is (a reference never points at
    // a secret regcred removed), and the next pass tries both again.
    let mut unlinked: BTreeMap<String, Outcome> = BTreeMap::new();
    if let Some(sas) = service_accounts {
        for (secret, outcome) in relink(ctx, sas, &links, &mut report).await {
            unlinked.insert(secret, outcome);
        }
    }
    for (secret_name, going) in leaving {
        let outcome = match unlinked.remove(&secret_name) {
            Some(problem) => problem,
            None => remove(ctx, &name, &secret_name, going, &mut report).await,
        };
        report.secrets.insert(secret_name, outcome);
    }
    for (secret_name, problem) in unlinked {
        // A served secret whose references failed counts as failed (or left for later).
        report.secrets.insert(secret_name, problem);
    }
    for (secret_name, outcome) in &report.secrets {
        record(ctx, ns, secret_name, stored.get(secret_name), outcome).await;
    }
    report
}

async fn serve(
    ctx: &Context<'_>,
    namespace: &str,
    spec: &SecretConfig,
    mut stored: Option<Stored>,
    report: &mut Report,
) -> Outcome {
    for _ in 0..CONFLICT_ATTEMPTS {
        let step = plan(
            spec,
            namespace,
            stored.as_ref(),
            ctx.tokens,
            Timestamp::now(),
            ctx.config.refresh.before,
            ctx.freshness,
        );
        match execute(ctx, namespace, spec, step, stored.as_ref(), report).await {
            Ok(outcome) => return outcome,
            Err(e) if e.is_not_leading() => return Outcome::Pending,
            Err(e) if e.is_conflict() => {
                tracing::debug!(namespace, secret = %spec.name, "secret changed meanwhile; reading it again");
                let Ok(within) = ctx.permit.next_call() else {
                    return Outcome::Pending;
                };
                let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
                stored = match tokio::time::timeout(within, api.get_opt(spec.name.as_str())).await {
                    Ok(Ok(fresh)) => fresh.map(Stored::of),
                    Ok(Err(e)) => {
                        return Outcome::Failed(format!(
                            "read secret {namespace}/{}: {e}",
                            spec.name
                        ));
                    }
                    Err(_) => {
                        return Outcome::Failed(format!(
                            "read secret {namespace}/{}: timed out",
                            spec.name
                        ));
                    }
                };
            }
            Err(e) => return Outcome::Failed(crate::chain(&e)),
        }
    }
    Outcome::Failed(format!(
        "secret {namespace}/{} kept changing under regcred ({CONFLICT_ATTEMPTS} conflicts)",
        spec.name
    ))
}

/// Carries out one planned step (or, in a dry run, says what it would do).
async fn execute(
    ctx: &Context<'_>,
    namespace: &str,
    spec: &SecretConfig,
    step: Step,
    stored: Option<&Stored>,
    report: &mut Report,
) -> Result<Outcome, secrets::Error> {
    let name = spec.name.as_str();
    let (secret, outcome) = match step {
        Step::Unchanged => {
            report.expiries.extend(stored.and_then(Stored::expires_at));
            return Ok(Outcome::Unchanged);
        }
        Step::Foreign => return Ok(Outcome::Foreign),
        Step::CannotAdopt(why) => {
            return Ok(Outcome::Failed(format!(
                "cannot adopt secret {namespace}/{name}: {why}"
            )));
        }
        Step::NeedsTokens(sources) => {
            let errors: Vec<&str> = sources
                .iter()
                .filter_map(|s| ctx.tokens.errors.get(s).map(String::as_str))
                .collect();
            return Ok(if errors.is_empty() {
                Outcome::Pending
            } else {
                Outcome::Failed(format!(
                    "secret {namespace}/{name} left as it is: {}",
                    errors.join("; ")
                ))
            });
        }
        Step::Apply { secret, over } => {
            let outcome = if stored.is_none() {
                Outcome::Created
            } else {
                Outcome::Updated
            };
            if ctx.dry_run {
                let verb = if stored.is_none() { "create" } else { "update" };
                report
                    .planned
                    .push(format!("would {verb} secret {namespace}/{name}"));
            } else {
                let now = ctx
                    .writer
                    .apply(&secret, over.as_deref(), ctx.permit)
                    .await?;
                ctx.note(Written::Secret {
                    secret: &now,
                    over: over.as_deref(),
                });
            }
            (secret, outcome)
        }
        Step::Replace {
            secret,
            resource_version,
        } => {
            if ctx.dry_run {
                report.planned.push(format!(
                    "would replace secret {namespace}/{name} (wrong type)"
                ));
            } else {
                ctx.writer
                    .delete(namespace, name, resource_version.as_deref(), ctx.permit)
                    .await?;
                ctx.note(Written::SecretGone {
                    namespace,
                    name,
                    resource_version: resource_version.as_deref(),
                });
                let now = ctx.writer.apply(&secret, None, ctx.permit).await?;
                ctx.note(Written::Secret {
                    secret: &now,
                    over: None,
                });
            }
            (secret, Outcome::Updated)
        }
    };
    report.expiries.extend(secrets::expires_at(&secret));
    Ok(outcome)
}

/// Removes regcred's secret where no entry serves it, once its references are gone: the
/// secret is deleted, or given back to its owner when it holds other registries' entries;
/// either only if it is still the version that was read.
async fn remove(
    ctx: &Context<'_>,
    namespace: &str,
    secret_name: &str,
    going: Leaving,
    report: &mut Report,
) -> Outcome {
    let why = if ctx
        .config
        .former_names
        .iter()
        .any(|n| n.as_str() == secret_name)
    {
        "a former name of regcred's secret"
    } else {
        "namespace no longer selected"
    };
    let done = match going {
        Leaving::Delete { resource_version } => {
            if ctx.dry_run {
                report.planned.push(format!(
                    "would delete secret {namespace}/{secret_name} ({why})"
                ));
                return Outcome::Removed;
            }
            ctx.writer
                .delete(
                    namespace,
                    secret_name,
                    resource_version.as_deref(),
                    ctx.permit,
                )
                .await
                .map(|()| {
                    ctx.note(Written::SecretGone {
                        namespace,
                        name: secret_name,
                        resource_version: resource_version.as_deref(),
                    });
                    Outcome::Removed
                })
        }
        Leaving::GiveBack(back) => {
            if ctx.dry_run {
                report.planned.push(format!(
                    "would give back secret {namespace}/{secret_name} to its owner, keeping only its other registries' entries ({why})"
                ));
                return Outcome::GivenBack;
            }
            ctx.writer.give_back(&back, ctx.permit).await.map(|now| {
                ctx.note(Written::Secret {
                    secret: &now,
                    over: back.metadata.resource_version.as_deref(),
                });
                Outcome::GivenBack
            })
        }
    };
    match done {
        Ok(outcome) => outcome,
        Err(e) if e.is_not_leading() => Outcome::Pending,
        Err(e) => Outcome::Failed(crate::chain(&e)),
    }
}

/// Patches every ServiceAccount of the namespace whose references `links` would change;
/// returns, for the secret names a failed patch concerned, what became of them.
async fn relink(
    ctx: &Context<'_>,
    service_accounts: &[ServiceAccount],
    links: &BTreeMap<String, Link<'_>>,
    report: &mut Report,
) -> BTreeMap<String, Outcome> {
    let mut problems: BTreeMap<String, Outcome> = BTreeMap::new();
    for sa in service_accounts {
        let sa_name = sa.metadata.name.as_deref().unwrap_or_default();
        let wants: BTreeMap<String, Want> = links
            .iter()
            .map(|(secret, link)| {
                let want = match link {
                    Link::Serve(rule) if rule.includes(sa_name) => Want::Reference,
                    Link::Serve(_) | Link::DropOurs => Want::NoneOfOurs,
                    Link::DropAll => Want::None,
                };
                (secret.clone(), want)
            })
            .collect();
        let Some(change) = serviceaccounts::relinked(sa, &wants) else {
            continue;
        };
        if ctx.dry_run {
            for (verb, secrets) in [("add", &change.added), ("remove", &change.removed)] {
                for secret in secrets {
                    report.planned.push(format!(
                        "would {verb} {secret} in serviceaccount {}/{sa_name} imagePullSecrets",
                        report.namespace
                    ));
                }
            }
            report.service_accounts_patched += 1;
            continue;
        }
        match serviceaccounts::update(ctx.client, sa, &wants, ctx.permit).await {
            Ok(serviceaccounts::Outcome::Patched(patched)) => {
                ctx.note(Written::ServiceAccount {
                    account: &patched.now,
                    over: patched.over.as_deref(),
                });
                let done = patched.change;
                report.service_accounts_patched += 1;
                tracing::info!(
                    namespace = report.namespace,
                    serviceaccount = sa_name,
                    added = ?done.added,
                    removed = ?done.removed,
                    "serviceaccount references updated"
                );
            }
            Ok(_) => {}
            Err(e) => {
                let outcome = if e.is_not_leading() {
                    Outcome::Pending
                } else {
                    Outcome::Failed(crate::chain(&e))
                };
                for secret in change.added.iter().chain(&change.removed) {
                    problems.insert(secret.clone(), outcome.clone());
                }
            }
        }
    }
    problems
}

/// Metrics and Events for one slot's outcome; failures and foreign secrets are logged.
async fn record(
    ctx: &Context<'_>,
    ns: &Namespace,
    secret_name: &str,
    stored: Option<&Stored>,
    outcome: &Outcome,
) {
    let namespace = ns.metadata.name.as_deref().unwrap_or_default();
    let result = match outcome {
        Outcome::Created => Some(WriteResult::Created),
        Outcome::Updated => Some(WriteResult::Updated),
        Outcome::Unchanged => Some(WriteResult::Unchanged),
        Outcome::Foreign => Some(WriteResult::Foreign),
        Outcome::Failed(_) => Some(WriteResult::Failed),
        Outcome::Removed
        | Outcome::GivenBack
        | Outcome::Absent
        | Outcome::Skipped
        | Outcome::Pending => None,
    };
    if let (Some(metrics), Some(result)) = (ctx.metrics, result) {
        metrics.secret_write(result);
    }
    match outcome {
        Outcome::Foreign => {
            tracing::warn!(
                namespace,
                secret = secret_name,
                "secret exists and is not managed by regcred; leaving it alone (set adopt: true to take it over)"
            );
            if let Some(events) = ctx.events.filter(|_| !ctx.dry_run) {
                let regarding = stored.map(|s| s.reference(namespace, secret_name));
                events.foreign_secret(ns, regarding, secret_name).await;
            }
        }
        Outcome::Failed(why) => {
            tracing::warn!(namespace, secret = secret_name, error = %why, "could not bring the secret in line");
            if let Some(events) = ctx.events.filter(|_| !ctx.dry_run) {
                let regarding = stored.map(|s| s.reference(namespace, secret_name));
                events.failed(ns, regarding, secret_name, why).await;
            }
        }
        Outcome::Created | Outcome::Updated | Outcome::Removed | Outcome::GivenBack => {
            tracing::info!(namespace, secret = secret_name, outcome = ?outcome, "secret written");
        }
        _ => {}
    }
}
