//! `regcred sync`: one full pass over every namespace, then a summary.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use clap::Args;
use futures::StreamExt as _;
use jiff::Timestamp;

use crate::config::{Config, ConfigArgs};
use crate::ecr::Tokens;
use crate::events::Events;
use crate::k8s::Snapshot;
use crate::lease::Permit;
use crate::reconcile::{self, Assignment, Context, Freshness, Outcome, Report, Step, TokenView};
use crate::secrets::{self, Writer};
use crate::{Error, Exit};

#[derive(Args, Clone, Debug)]
pub struct SyncArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Write nothing; print what would be done.
    #[arg(long, env = "REGCRED_DRY_RUN")]
    pub dry_run: bool,
    /// Namespaces worked on at once.
    #[arg(long, env = "REGCRED_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
}

/// Runs one pass and prints its summary on stdout.
pub async fn run(args: &SyncArgs) -> Result<Exit, Error> {
    let config = args.config.load()?;
    let client = crate::k8s::client().await?;
    let tokens = Tokens::from_env().await;
    let summary = pass(
        &client,
        &tokens,
        &config,
        args.dry_run,
        usize::from(args.concurrency),
    )
    .await?;
    let mut out = std::io::stdout().lock();
    crate::write_stdout(&mut out, &summary.render())?;
    Ok(if summary.failed() {
        Exit::Failed
    } else {
        Exit::Ok
    })
}

/// The tokens a pass needs: one fetch per source that some secret is due for, no more.
async fn fetch_due_tokens(config: &Config, snapshot: &Snapshot, tokens: &Tokens) -> TokenView {
    let now = Timestamp::now();
    let empty = TokenView::default();
    let no_secrets = BTreeMap::new();
    let mut due = BTreeSet::new();
    for ns in &snapshot.namespaces {
        let name = ns.metadata.name.as_deref().unwrap_or_default();
        let stored = snapshot.secrets.get(name).unwrap_or(&no_secrets);
        for secret_name in config.secret_names() {
            if let Assignment::Serve(spec) = reconcile::assign(config, ns, &secret_name) {
                let step = reconcile::plan(
                    spec,
                    name,
                    stored.get(&secret_name),
                    &empty,
                    now,
                    config.refresh.before,
                    Freshness::SoundAndFresh,
                );
                if let Step::NeedsTokens(sources) = step {
                    due.extend(sources);
                }
            }
        }
    }
    let mut view = TokenView::default();
    for (source, result) in tokens.fetch_all(&due).await {
        match result {
            Ok(token) => {
                view.tokens.insert(source, token);
            }
            Err(e) => {
                tracing::error!(source = %source, error = %e, "could not get a token");
                view.errors.insert(source, e.to_string());
            }
        }
    }
    view
}

/// One pass: read, fetch what is due, bring every namespace in line.
pub async fn pass(
    client: &kube::Client,
    tokens: &Tokens,
    config: &Config,
    dry_run: bool,
    concurrency: usize,
) -> Result<Summary, Error> {
    let service_accounts =
        config.patches_service_accounts() || crate::k8s::may_tend_service_accounts(client).await;
    let snapshot = Snapshot::read(client, config, service_accounts).await?;
    let view = fetch_due_tokens(config, &snapshot, tokens).await;
    let permit = Permit::always();
    let writer = Writer::new(client.clone());
    let events = Events::new(client.clone());
    let ctx = Context {
        client,
        writer: &writer,
        config,
        tokens: &view,
        freshness: Freshness::SoundAndFresh,
        dry_run,
        metrics: None,
        events: Some(&events),
        permit: &permit,
        written: None,
    };
    let nothing_unknown = BTreeSet::new();
    let no_secrets = BTreeMap::new();
    let reports: Vec<Report> = futures::stream::iter(&snapshot.namespaces)
        .map(|ns| {
            let name = ns.metadata.name.as_deref().unwrap_or_default();
            let stored = snapshot.secrets.get(name).unwrap_or(&no_secrets);
            let sas = snapshot
                .service_accounts
                .as_ref()
                .map(|all| all.get(name).map_or(&[][..], Vec::as_slice));
            reconcile::namespace(&ctx, ns, stored, sas, &nothing_unknown)
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    Ok(Summary {
        reports,
        registries: config.hosts().len(),
        dry_run,
        former_names: config
            .former_names
            .iter()
            .map(ToString::to_string)
            .collect(),
    })
}

/// What a pass did, namespace by namespace.
#[derive(Debug)]
pub struct Summary {
    pub reports: Vec<Report>,
    pub registries: usize,
    pub dry_run: bool,
    /// Former secret names (their removals are counted apart).
    pub former_names: BTreeSet<String>,
}

/// How one namespace counts in the summary line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tally {
    Written,
    Unchanged,
    Skipped,
    Failed,
}

fn tally(report: &Report) -> Tally {
    let outcomes = || report.secrets.values();
    if outcomes().any(|o| o.is_failure() || *o == Outcome::Pending) {
        Tally::Failed
    } else if report.service_accounts_patched > 0
        || outcomes().any(|o| matches!(o, Outcome::Created | Outcome::Updated))
    {
        Tally::Written
    } else if outcomes().any(|o| *o == Outcome::Skipped) {
        Tally::Skipped
    } else {
        Tally::Unchanged
    }
}

impl Summary {
    #[must_use]
    pub fn failed(&self) -> bool {
        self.reports
            .iter()
            .flat_map(|r| r.secrets.values())
            .any(|o| o.is_failure() || *o == Outcome::Pending)
    }

    /// The summary line, the removals, then one line per failure (or per planned write).
    #[must_use]
    pub fn render(&self) -> String {
        let selected: Vec<&Report> = self.reports.iter().filter(|r| r.is_selected()).collect();
        let count = |t| selected.iter().filter(|r| tally(r) == t).count();
        // Removals, where no longer selected and of former names, and how many of all were
        // given back to their owners rather than deleted.
        let (mut removed, mut retired, mut given_back) = (0, 0, 0);
        for (secret, outcome) in self.reports.iter().flat_map(|r| &r.secrets) {
            if matches!(outcome, Outcome::Removed | Outcome::GivenBack) {
                if self.former_names.contains(secret) {
                    retired += 1;
                } else {
                    removed += 1;
                }
                given_back += usize::from(*outcome == Outcome::GivenBack);
            }
        }
        let next_expiry = self.reports.iter().flat_map(|r| r.expiries.iter()).min();
        let mut out = String::new();
        let mut sorted: Vec<&Report> = self.reports.iter().collect();
        sorted.sort_by(|a, b| a.namespace.cmp(&b.namespace));
        if self.dry_run {
            for line in sorted.iter().flat_map(|r| &r.planned) {
                let _ = writeln!(out, "{line}");
            }
            out.push_str("dry run: would have ");
        }
        let _ = write!(
            out,
            "synced {} namespaces ({} written, {} unchanged, {} skipped, {} failed) for {} registries",
            selected.len(),
            count(Tally::Written),
            count(Tally::Unchanged),
            count(Tally::Skipped),
            count(Tally::Failed),
            self.registries,
        );
        if removed > 0 {
            let _ = write!(
                out,
                "; removed {removed} from namespaces no longer selected"
            );
        }
        if retired > 0 {
            let _ = write!(out, "; removed {retired} of former names");
        }
        if given_back > 0 {
            let _ = write!(
                out,
                " ({given_back} given back to their owners with their other registries' entries)"
            );
        }
        match next_expiry {
            Some(t) => {
                let _ = writeln!(out, "; next expiry {}", secrets::format_time(*t));
            }
            None => out.push('\n'),
        }
        for r in sorted {
            for (secret, outcome) in &r.secrets {
                let why = match outcome {
                    Outcome::Failed(why) => why.clone(),
                    Outcome::Foreign => format!(
                        "secret {secret} exists and is not managed by regcred; left as it is (set adopt: true to take it over)"
                    ),
                    Outcome::Pending => format!("secret {secret}: no token was fetched"),
                    _ => continue,
                };
                let _ = writeln!(out, "failed: {}: {why}", r.namespace);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(ns: &str, outcomes: &[(&str, Outcome)], expiry: Option<&str>) -> Report {
        Report {
            namespace: ns.into(),
            secrets: outcomes
                .iter()
                .map(|(n, o)| ((*n).to_owned(), o.clone()))
                .collect(),
            service_accounts_patched: 0,
            expiries: expiry.map(|e| e.parse().unwrap()).into_iter().collect(),
            planned: vec![],
        }
    }

    #[test]
    fn the_summary_counts_namespaces_and_lists_failures() {
        let s = Summary {
            reports: vec![
                report(
                    "a",
                    &[("regcred", Outcome::Created)],
                    Some("2026-11-29T12:00:00Z"),
                ),
                report(
                    "b",
                    &[("regcred", Outcome::Unchanged)],
                    Some("2026-11-29T05:12:00Z"),
                ),
                report("c", &[("regcred", Outcome::Skipped)], None),
                report("d", &[("regcred", Outcome::Foreign)], None),
                report("e", &[("regcred", Outcome::Removed)], None),
                report("kube-system", &[("regcred", Outcome::Absent)], None),
            ],
            registries: 2,
            dry_run: false,
            former_names: BTreeSet::new(),
        };
        let text = s.render();
        let mut lines = text.lines();
        assert_eq!(
            lines.next().unwrap(),
            "synced 4 namespaces (1 written, 1 unchanged, 1 skipped, 1 failed) for 2 registries; \
             removed 1 from namespaces no longer selected; next expiry 2026-11-29T05:12:00Z"
        );
        assert!(
            lines
                .next()
                .unwrap()
                .starts_with("failed: d: secret regcred exists and is not managed")
        );
        assert!(lines.next().is_none());
        assert!(s.failed());
    }
}
