//! `regcred check`: preflight of configuration, AWS identity, tokens and Kubernetes
//! permissions, as a table with hints.
//!
//! Every check runs even when an earlier one failed, so one run shows everything to fix.
//! Kubernetes permissions are asked with SelfSubjectAccessReview: the answer is the API
//! server's own, for exactly the identity regcred runs as.
//! The AWS rows are in `aws.rs`, the Kubernetes rows in `kubernetes.rs`.

use std::fmt::Write as _;

use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::config::{Config, ConfigArgs};
use crate::formats::Format;
use crate::{Error, Exit};

mod aws;
mod kubernetes;
#[cfg(test)]
mod tests;

use aws::aws_checks;
use kubernetes::kubernetes_checks;
pub use kubernetes::{Permission, required_permissions};

/// How the configuration will be run, which decides the permissions it needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// `regcred run` as a Deployment: leader election needs its Lease.
    #[default]
    Controller,
    /// `regcred sync` as a CronJob: no Lease.
    Cronjob,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// A ✓/✗ table with hints.
    #[default]
    Table,
    /// One JSON document.
    Json,
}

#[derive(Args, Clone, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// How regcred will run: controller (`regcred run`) or cronjob (`regcred sync`).
    #[arg(long, env = "REGCRED_MODE", value_enum, default_value_t = Mode::Controller)]
    pub mode: Mode,
    #[command(flatten)]
    pub lease: crate::lease::LeaseArgs,
    #[command(flatten)]
    pub webhook: crate::webhook::WebhookArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// One row of the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Check {
    fn pass(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ok: true,
            detail: detail.into(),
            hint: None,
        }
    }

    fn fail(name: impl Into<String>, detail: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ok: false,
            detail: detail.into(),
            hint: Some(hint.into()),
        }
    }
}

fn config_detail(config: &Config) -> String {
    // Each secret by name, with its format unless it is the default pull secret.
    let mut formats: std::collections::BTreeMap<&str, std::collections::BTreeSet<Format>> =
        std::collections::BTreeMap::new();
    for s in &config.secrets {
        formats.entry(s.name.as_str()).or_default().insert(s.format);
    }
    let names: Vec<String> = formats
        .into_iter()
        .map(|(name, of)| {
            if of.iter().all(|f| *f == Format::Dockerconfigjson) {
                name.to_owned()
            } else {
                let of: Vec<&str> = of.iter().map(|f| f.as_str()).collect();
                format!("{name} ({})", of.join(", "))
            }
        })
        .collect();
    format!(
        "secret{} {}; {} registr{}; {} token source{}; ServiceAccount patching {}",
        if names.len() == 1 { "" } else { "s" },
        names.join(", "),
        config.hosts().len(),
        if config.hosts().len() == 1 {
            "y"
        } else {
            "ies"
        },
        config.token_sources().len(),
        if config.token_sources().len() == 1 {
            ""
        } else {
            "s"
        },
        if config.patches_service_accounts() {
            "on"
        } else {
            "off"
        },
    ) + &if config.webhook.enabled {
        format!("; webhook on port {}", config.webhook.port)
    } else {
        "; webhook off".to_owned()
    }
}

/// The report as a table: one row per check, a hint under each ✗, then a verdict.
#[must_use]
pub fn render_table(checks: &[Check]) -> String {
    let width = checks
        .iter()
        .map(|c| c.name.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for c in checks {
        let mark = if c.ok { '✓' } else { '✗' };
        let pad = width - c.name.chars().count();
        writeln!(out, "{mark} {}{:pad$}  {}", c.name, "", c.detail).ok();
        if let Some(hint) = &c.hint {
            writeln!(out, "    hint: {hint}").ok();
        }
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
    if failed == 0 {
        writeln!(out, "all {} checks passed", checks.len()).ok();
    } else {
        writeln!(out, "{failed} of {} checks failed", checks.len()).ok();
    }
    out
}

#[derive(Serialize)]
struct Report<'a> {
    ok: bool,
    checks: &'a [Check],
}

/// The report as one JSON document: `{"ok": bool, "checks": [{name, ok, detail, hint?}]}`.
#[must_use]
pub fn render_json(checks: &[Check]) -> String {
    let report = Report {
        ok: checks.iter().all(|c| c.ok),
        checks,
    };
    let mut s = serde_json::to_string_pretty(&report).unwrap_or_default();
    s.push('\n');
    s
}

fn print(args: &CheckArgs, checks: &[Check]) -> Result<(), Error> {
    let text = match args.output {
        Output::Table => render_table(checks),
        Output::Json => render_json(checks),
    };
    crate::write_stdout(&mut std::io::stdout().lock(), &text)?;
    Ok(())
}

/// Runs every check and prints the report. Exit 0 when all pass, 1 when any fails, 2 when
/// the configuration itself is bad (then nothing else is checked).
pub async fn run(args: &CheckArgs) -> Result<Exit, Error> {
    let config = match args.config.load() {
        Ok(c) => c,
        Err(e) => {
            let check = Check::fail(
                "config",
                crate::chain(&e),
                "fix the named field (see the configuration in the README); `regcred check` \
                 checks nothing else until the configuration loads",
            );
            print(args, &[check])?;
            return Ok(Exit::Usage);
        }
    };
    let mut needed = required_permissions(
        &config,
        args.mode,
        &args.lease.lease_namespace,
        &args.lease.lease_name,
    );
    let own = &args.lease.lease_namespace;
    needed.extend(crate::webhook::check::permissions(
        &config,
        &args.webhook,
        own,
    ));
    let secret_name = config.secret_names().into_iter().next().unwrap_or_default();
    let (aws, kube, webhook) = tokio::join!(
        aws_checks(&config),
        kubernetes_checks(needed, &secret_name, own),
        Box::pin(crate::webhook::check::checks(&config, &args.webhook, own))
    );
    let mut checks = vec![Check::pass("config", config_detail(&config))];
    checks.extend(aws);
    checks.extend(kube);
    checks.extend(webhook);
    print(args, &checks)?;
    Ok(if checks.iter().all(|c| c.ok) {
        Exit::Ok
    } else {
        Exit::Failed
    })
}
