//! One namespace, brought in line: the plan for each managed secret name (pure), and its
//! execution through the thin writers. `sync` runs this over every namespace once; the
//! controller runs it whenever a namespace, secret or ServiceAccount changes.

mod plan;

pub use plan::{Assignment, Freshness, Step, TokenView, assign, plan};

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::Api;

use crate::config::{Config, SecretConfig, ServiceAccounts};
use crate::events::Events;
use crate::metrics::{Metrics, WriteResult};
use crate::secrets::{self, Writer};
use crate::serviceaccounts;

/// The outcome for one secret slot of a namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Updated,
    Unchanged,
    /// regcred's secret was removed from a namespace no longer selected.
    Removed,
    /// Nothing to do: not selected, and regcred holds nothing there.
    Absent,
    Skipped,
    Foreign,
    /// Needs a token that is not at hand yet (the controller waits for its refresher).
    Pending,
    Failed(String),
}

impl Outcome {
    #[must_use]
    pub fn is_write(&self) -> bool {
        matches!(self, Self::Created | Self::Updated | Self::Removed)
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
            .any(|o| !matches!(o, Outcome::Removed | Outcome::Absent))
    }
}

/// Everything execution needs, shared by every namespace of a pass.
#[derive(Clone)]
pub struct Context<'a> {
    pub client: &'a kube::Client,
    pub writer: &'a Writer,
    pub config: &'a Config,
    pub tokens: &'a TokenView,
    pub freshness: Freshness,
    pub dry_run: bool,
    pub metrics: Option<&'a Metrics>,
    pub events: Option<&'a Events>,
}

impl std::fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("freshness", &self.freshness)
            .field("dry_run", &self.dry_run)
            .finish_non_exhaustive()
    }
}

/// How many times a slot is re-read and re-planned after a write conflict.
const CONFLICT_ATTEMPTS: usize = 3;

/// Brings one namespace in line: every secret name of the configuration, then the
/// ServiceAccounts that should (or should no longer) reference it.
pub async fn namespace(
    ctx: &Context<'_>,
    ns: &Namespace,
    stored: &BTreeMap<String, Secret>,
    service_accounts: &[ServiceAccount],
) -> Report {
    let name = ns.metadata.name.clone().unwrap_or_default();
    let mut report = Report {
        namespace: name.clone(),
        secrets: BTreeMap::new(),
        service_accounts_patched: 0,
        expiries: Vec::new(),
        planned: Vec::new(),
    };
    for secret_name in ctx.config.secret_names() {
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
            Assignment::Remove => {
                remove(
                    ctx,
                    &name,
                    &secret_name,
                    stored.get(&secret_name),
                    service_accounts,
                    &mut report,
                )
                .await
            }
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
                    if let Err(e) = change_service_accounts(
                        ctx,
                        &spec.service_accounts,
                        &secret_name,
                        service_accounts,
                        &mut report,
                        serviceaccounts::with_secret,
                        "add",
                    )
                    .await
                    {
                        Outcome::Failed(e)
                    } else {
                        outcome
                    }
                } else {
                    outcome
                }
            }
        };
        record(ctx, ns, &secret_name, stored.get(&secret_name), &outcome).await;
        report.secrets.insert(secret_name, outcome);
    }
    report
}

async fn serve(
    ctx: &Context<'_>,
    namespace: &str,
    spec: &SecretConfig,
    mut stored: Option<Secret>,
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
            Err(e) if e.is_conflict() => {
                tracing::debug!(namespace, secret = %spec.name, "secret changed meanwhile; reading it again");
                let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
                stored = match tokio::time::timeout(
                    secrets::API_TIMEOUT,
                    api.get_opt(spec.name.as_str()),
                )
                .await
                {
                    Ok(Ok(fresh)) => fresh,
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
    stored: Option<&Secret>,
    report: &mut Report,
) -> Result<Outcome, secrets::Error> {
    let name = spec.name.as_str();
    let (secret, outcome) = match step {
        Step::Unchanged => {
            report.expiries.extend(stored.and_then(secrets::expires_at));
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
                ctx.writer.apply(&secret, over.as_deref()).await?;
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
                    .delete(namespace, name, resource_version.as_deref())
                    .await?;
                ctx.writer.apply(&secret, None).await?;
            }
            (secret, Outcome::Updated)
        }
    };
    report.expiries.extend(secrets::expires_at(&secret));
    Ok(outcome)
}

/// Removes regcred's secret from a namespace no longer selected: first its
/// ServiceAccount references (so a failure there leaves the secret, and the next pass
/// tries both again), then the secret, only if it is still the version that was read.
async fn remove(
    ctx: &Context<'_>,
    namespace: &str,
    secret_name: &str,
    stored: Option<&Secret>,
    service_accounts: &[ServiceAccount],
    report: &mut Report,
) -> Outcome {
    let Some(stored) = stored.filter(|s| secrets::is_managed(s)) else {
        return Outcome::Absent;
    };
    let rule = service_account_rule(ctx.config, secret_name);
    let unlinked = change_service_accounts(
        ctx,
        &rule,
        secret_name,
        service_accounts,
        report,
        serviceaccounts::without_secret,
        "remove",
    )
    .await;
    if let Err(e) = unlinked {
        return Outcome::Failed(e);
    }
    if ctx.dry_run {
        report.planned.push(format!(
            "would delete secret {namespace}/{secret_name} (namespace no longer selected)"
        ));
        return Outcome::Removed;
    }
    match ctx
        .writer
        .delete(
            namespace,
            secret_name,
            stored.metadata.resource_version.as_deref(),
        )
        .await
    {
        Ok(()) => Outcome::Removed,
        Err(e) => Outcome::Failed(crate::chain(&e)),
    }
}

/// The ServiceAccounts any entry of that secret name patches.
fn service_account_rule(config: &Config, secret_name: &str) -> ServiceAccounts {
    let mut names = BTreeSet::new();
    for spec in config
        .secrets
        .iter()
        .filter(|s| s.name.as_str() == secret_name)
    {
        match &spec.service_accounts {
            ServiceAccounts::All => return ServiceAccounts::All,
            ServiceAccounts::Named(n) => names.extend(n.iter().cloned()),
            ServiceAccounts::None => {}
        }
    }
    if names.is_empty() {
        ServiceAccounts::None
    } else {
        ServiceAccounts::Named(names)
    }
}

async fn change_service_accounts(
    ctx: &Context<'_>,
    rule: &ServiceAccounts,
    secret_name: &str,
    service_accounts: &[ServiceAccount],
    report: &mut Report,
    change: fn(
        &ServiceAccount,
        &str,
    ) -> Option<Vec<k8s_openapi::api::core::v1::LocalObjectReference>>,
    verb: &str,
) -> Result<(), String> {
    let targets = service_accounts.iter().filter(|sa| {
        rule.includes(sa.metadata.name.as_deref().unwrap_or_default())
            && change(sa, secret_name).is_some()
    });
    let mut errors = Vec::new();
    for sa in targets {
        let sa_name = sa.metadata.name.as_deref().unwrap_or_default();
        if ctx.dry_run {
            report.planned.push(format!(
                "would {verb} {secret_name} in serviceaccount {}/{sa_name} imagePullSecrets",
                report.namespace
            ));
            report.service_accounts_patched += 1;
            continue;
        }
        match serviceaccounts::update(ctx.client, sa, secret_name, change).await {
            Ok(serviceaccounts::Outcome::Patched) => report.service_accounts_patched += 1,
            Ok(_) => {}
            Err(e) => errors.push(crate::chain(&e)),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// Metrics and Events for one slot's outcome; failures and foreign secrets are logged.
async fn record(
    ctx: &Context<'_>,
    ns: &Namespace,
    secret_name: &str,
    stored: Option<&Secret>,
    outcome: &Outcome,
) {
    let namespace = ns.metadata.name.as_deref().unwrap_or_default();
    let result = match outcome {
        Outcome::Created => Some(WriteResult::Created),
        Outcome::Updated => Some(WriteResult::Updated),
        Outcome::Unchanged => Some(WriteResult::Unchanged),
        Outcome::Foreign => Some(WriteResult::Foreign),
        Outcome::Failed(_) => Some(WriteResult::Failed),
        Outcome::Removed | Outcome::Absent | Outcome::Skipped | Outcome::Pending => None,
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
                events.foreign_secret(ns, stored, secret_name).await;
            }
        }
        Outcome::Failed(why) => {
            tracing::warn!(namespace, secret = secret_name, error = %why, "could not bring the secret in line");
            if let Some(events) = ctx.events.filter(|_| !ctx.dry_run) {
                events.failed(ns, stored, secret_name, why).await;
            }
        }
        Outcome::Created | Outcome::Updated | Outcome::Removed => {
            tracing::info!(namespace, secret = secret_name, outcome = ?outcome, "secret written");
        }
        _ => {}
    }
}
