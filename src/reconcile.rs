//! One namespace, brought in line: the plan for each managed secret name (pure), and its
//! execution through the thin writers. `sync` runs this over every namespace once; the
//! controller runs it whenever a namespace, secret or ServiceAccount changes.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::Api;

use crate::config::{Config, SecretConfig, ServiceAccounts};
use crate::ecr::Token;
use crate::events::Events;
use crate::metrics::{Metrics, WriteResult};
use crate::namespaces::Verdict;
use crate::registry::TokenSource;
use crate::secrets::{self, Served, Writer};
use crate::serviceaccounts;

/// Which configuration entry, if any, serves a secret name in a namespace.
#[derive(Debug)]
pub enum Assignment<'a> {
    Serve(&'a SecretConfig),
    /// No entry selects the namespace: regcred's secret of that name goes.
    Remove,
    /// The namespace is being deleted.
    Skip,
    /// Two entries with the same secret name select the namespace.
    Conflict(Vec<usize>),
}

#[must_use]
pub fn assign<'a>(config: &'a Config, ns: &Namespace, name: &str) -> Assignment<'a> {
    let mut serving = Vec::new();
    let mut terminating = false;
    let no_labels = BTreeMap::new();
    let labels = ns.metadata.labels.as_ref().unwrap_or(&no_labels);
    let ns_name = ns.metadata.name.as_deref().unwrap_or_default();
    for (i, spec) in config
        .secrets
        .iter()
        .enumerate()
        .filter(|(_, s)| s.name.as_str() == name)
    {
        match spec.namespaces.verdict(ns) {
            Verdict::Selected => serving.push(i),
            // Only a namespace the entry would select is skipped for terminating; any other
            // terminating namespace is simply not selected (not counted, not served).
            Verdict::Terminating => terminating |= spec.namespaces.matches(ns_name, labels),
            Verdict::NotSelected => {}
        }
    }
    match serving.as_slice() {
        _ if terminating => Assignment::Skip,
        [] => Assignment::Remove,
        [i] => Assignment::Serve(&config.secrets[*i]),
        _ => Assignment::Conflict(serving),
    }
}

/// Tokens at hand, and why the missing ones are missing.
#[derive(Clone, Debug, Default)]
pub struct TokenView {
    pub tokens: BTreeMap<TokenSource, Token>,
    pub errors: BTreeMap<TokenSource, String>,
}

/// How strictly a stored secret must match to be left alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// Sound and not due for renewal is enough (`sync`: no token call when nothing is due).
    SoundAndFresh,
    /// It must hold exactly the current tokens (the controller, which repairs any edit).
    Exact,
}

/// What one secret slot needs.
#[derive(Debug)]
pub enum Step {
    Unchanged,
    /// Tokens from these sources are needed to decide or to write.
    NeedsTokens(BTreeSet<TokenSource>),
    Apply {
        secret: Box<Secret>,
        over: Option<String>,
    },
    /// A managed secret of the wrong type: its type cannot change in place.
    Replace {
        secret: Box<Secret>,
        resource_version: Option<String>,
    },
    Foreign,
    CannotAdopt(String),
}

/// Plans one served secret slot from what is stored and the tokens at hand.
#[must_use]
pub fn plan(
    spec: &SecretConfig,
    namespace: &str,
    stored: Option<&Secret>,
    tokens: &TokenView,
    now: Timestamp,
    before: jiff::SignedDuration,
    freshness: Freshness,
) -> Step {
    let hosts: BTreeSet<&str> = spec.registries.iter().map(|r| r.registry.host()).collect();
    let resource_version = stored.and_then(|s| s.metadata.resource_version.clone());
    if let Some(s) = stored {
        let managed = secrets::is_managed(s);
        if !managed && !spec.adopt {
            return Step::Foreign;
        }
        if !managed && !secrets::has_pull_secret_type(s) {
            return Step::CannotAdopt(format!(
                "it has type {:?}, which cannot be changed in place; delete it and regcred will create its own",
                s.type_.as_deref().unwrap_or_default()
            ));
        }
        if freshness == Freshness::SoundAndFresh
            && secrets::is_sound_and_fresh(s, &hosts, now, before)
        {
            return Step::Unchanged;
        }
    }
    let mut served = Vec::with_capacity(spec.registries.len());
    let mut missing = BTreeSet::new();
    for r in &spec.registries {
        let source = r.token_source();
        match tokens.tokens.get(&source) {
            Some(token) => served.push(Served {
                host: r.registry.host(),
                token,
            }),
            None => {
                missing.insert(source);
            }
        }
    }
    if !missing.is_empty() {
        return Step::NeedsTokens(missing);
    }
    let kept = stored
        .map(|s| secrets::kept_entries(s, &hosts))
        .unwrap_or_default();
    let desired = Box::new(secrets::desired(
        spec.name.as_str(),
        namespace,
        &served,
        kept,
    ));
    match stored {
        Some(s) if secrets::is_managed(s) && !secrets::has_pull_secret_type(s) => Step::Replace {
            secret: desired,
            resource_version,
        },
        Some(s) if secrets::is_current(s, &desired) => Step::Unchanged,
        _ => Step::Apply {
            secret: desired,
            over: resource_version,
        },
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dockerconfig::Credential;
    use crate::registry::Registry;
    use jiff::SignedDuration;
    use kube::api::ObjectMeta;

    const HOST: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com";

    fn config(extra: &str) -> Config {
        let yaml = format!("secrets:\n  - registries: [{HOST}]\n{extra}");
        Config::from_yaml(std::path::Path::new("t.yaml"), &yaml).unwrap()
    }

    fn ns(name: &str) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        }
    }

    fn view(password: &str, expires: Timestamp) -> TokenView {
        let source = crate::registry::TokenSource::of(&Registry::parse(HOST).unwrap(), None);
        let token = Token {
            credential: Credential {
                username: "AWS".into(),
                password: password.to_owned().into(),
            },
            expires_at: expires,
            fetched_at: Timestamp::now(),
        };
        TokenView {
            tokens: [(source, token)].into(),
            errors: BTreeMap::new(),
        }
    }

    fn written(step: Step) -> Secret {
        match step {
            Step::Apply { secret, .. } => *secret,
            other => panic!("expected a write, got {other:?}"),
        }
    }

    #[test]
    fn assignment_follows_selection_and_flags_conflicts() {
        let c = config(
            "    namespaces: {include: ['team-*']}\n  - registries: [public.ecr.aws]\n    namespaces: {include: ['team-b']}\n",
        );
        assert!(matches!(
            assign(&c, &ns("team-a"), "regcred"),
            Assignment::Serve(_)
        ));
        assert!(matches!(
            assign(&c, &ns("other"), "regcred"),
            Assignment::Remove
        ));
        assert!(
            matches!(assign(&c, &ns("team-b"), "regcred"), Assignment::Conflict(v) if v == [0, 1])
        );
        // Terminating: skipped where it would be selected, not selected elsewhere.
        let mut dying = ns("team-a");
        dying.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now()),
        );
        assert!(matches!(assign(&c, &dying, "regcred"), Assignment::Skip));
        dying.metadata.name = Some("other".into());
        assert!(matches!(assign(&c, &dying, "regcred"), Assignment::Remove));
    }

    #[test]
    fn sync_asks_for_a_token_only_when_a_secret_is_due() {
        let c = config("");
        let spec = &c.secrets[0];
        let now = Timestamp::now();
        let six = SignedDuration::from_hours(6);
        let none = TokenView::default();
        assert!(
            matches!(plan(spec, "a", None, &none, now, six, Freshness::SoundAndFresh), Step::NeedsTokens(s) if s.len() == 1)
        );
        let fresh = written(plan(
            spec,
            "a",
            None,
            &view("pw", now + SignedDuration::from_hours(12)),
            now,
            six,
            Freshness::SoundAndFresh,
        ));
        assert!(matches!(
            plan(
                spec,
                "a",
                Some(&fresh),
                &none,
                now,
                six,
                Freshness::SoundAndFresh
            ),
            Step::Unchanged
        ));
        let later = now + SignedDuration::from_hours(7);
        assert!(matches!(
            plan(
                spec,
                "a",
                Some(&fresh),
                &none,
                later,
                six,
                Freshness::SoundAndFresh
            ),
            Step::NeedsTokens(_)
        ));
        // The controller wants exactly its current token.
        let newer = view("pw2", now + SignedDuration::from_hours(12));
        assert!(matches!(
            plan(spec, "a", Some(&fresh), &newer, now, six, Freshness::Exact),
            Step::Apply { .. }
        ));
        let same = view("pw", now + SignedDuration::from_hours(12));
        assert!(matches!(
            plan(spec, "a", Some(&fresh), &same, now, six, Freshness::Exact),
            Step::Unchanged
        ));
    }

    #[test]
    fn foreign_secrets_are_left_alone_unless_adopted() {
        let now = Timestamp::now();
        let six = SignedDuration::from_hours(6);
        let tokens = view("pw", now + SignedDuration::from_hours(12));
        let foreign = Secret {
            metadata: ObjectMeta {
                resource_version: Some("7".into()),
                ..ObjectMeta::default()
            },
            type_: Some(secrets::SECRET_TYPE.into()),
            ..Secret::default()
        };
        let c = config("");
        assert!(matches!(
            plan(
                &c.secrets[0],
                "a",
                Some(&foreign),
                &tokens,
                now,
                six,
                Freshness::Exact
            ),
            Step::Foreign
        ));
        let adopt = config("    adopt: true\n");
        match plan(
            &adopt.secrets[0],
            "a",
            Some(&foreign),
            &tokens,
            now,
            six,
            Freshness::SoundAndFresh,
        ) {
            Step::Apply { over, secret } => {
                assert_eq!(
                    over.as_deref(),
                    Some("7"),
                    "adoption writes over the version it read"
                );
                assert!(secrets::is_managed(&secret));
            }
            other => panic!("{other:?}"),
        }
        let opaque = Secret {
            type_: Some("Opaque".into()),
            ..foreign
        };
        assert!(matches!(
            plan(
                &adopt.secrets[0],
                "a",
                Some(&opaque),
                &tokens,
                now,
                six,
                Freshness::Exact
            ),
            Step::CannotAdopt(_)
        ));
    }

    #[test]
    fn a_managed_secret_of_the_wrong_type_is_replaced() {
        let now = Timestamp::now();
        let tokens = view("pw", now + SignedDuration::from_hours(12));
        let c = config("");
        let mut broken = written(plan(
            &c.secrets[0],
            "a",
            None,
            &tokens,
            now,
            SignedDuration::from_hours(6),
            Freshness::Exact,
        ));
        broken.type_ = Some("Opaque".into());
        assert!(matches!(
            plan(
                &c.secrets[0],
                "a",
                Some(&broken),
                &tokens,
                now,
                SignedDuration::from_hours(6),
                Freshness::SoundAndFresh
            ),
            Step::Replace { .. }
        ));
    }
}
