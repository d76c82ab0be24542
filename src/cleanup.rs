//! `regcred cleanup`: removes every secret regcred manages and its ServiceAccount references.
//!
//! Managed means carrying regcred's label; a secret without it is never touched, whatever its
//! name. In each namespace the ServiceAccount entries go first (only the entry naming the
//! managed secret, others untouched), then the secret, deleted with a `resourceVersion`
//! precondition so a secret changed meanwhile is read and judged again rather than removed
//! blindly. A secret regcred adopted that still holds other registries' entries is given back
//! to its owner instead (those entries alone, without regcred's label and annotations), and
//! only the references regcred recorded making to it go.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use clap::Args;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, ListParams};

use crate::lease::Permit;
use crate::namespaces::Glob;
use crate::secrets::{self, API_TIMEOUT, MANAGED_BY_LABEL, MANAGED_BY_VALUE, Writer};
use crate::serviceaccounts::{self, Want};
use crate::{Error, Exit};

/// How often a delete that met a changed secret reads it again.
const DELETE_TRIES: usize = 3;

#[derive(Args, Clone, Debug)]
pub struct CleanupArgs {
    /// Only in these namespaces (globs, repeatable; default every namespace).
    #[arg(
        long = "namespace",
        env = "REGCRED_CLEANUP_NAMESPACES",
        value_name = "GLOB",
        value_delimiter = ','
    )]
    pub namespaces: Vec<Glob>,
    /// Remove nothing; print what would be removed.
    #[arg(long, env = "REGCRED_DRY_RUN")]
    pub dry_run: bool,
    /// Namespaces worked on at once.
    #[arg(long, env = "REGCRED_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
}

/// What cleanup did (or, in a dry run, would do) in one namespace.
#[derive(Debug, Default)]
pub struct Report {
    pub namespace: String,
    /// Secrets deleted (or to delete).
    pub secrets: Vec<String>,
    /// Adopted secrets given back to their owners with their other registries' entries (or
    /// to give back).
    pub given_back: Vec<String>,
    /// `serviceaccount/secret` entries removed (or to remove).
    pub references: Vec<String>,
    /// Secrets that changed hands meanwhile and were left.
    pub left: Vec<String>,
    pub failures: Vec<String>,
}

/// Every ServiceAccount whose `imagePullSecrets` names `secret`.
#[must_use]
pub fn referencing<'a>(sas: &'a [ServiceAccount], secret: &str) -> Vec<&'a ServiceAccount> {
    let wants: BTreeMap<String, Want> = [(secret.to_owned(), Want::None)].into();
    sas.iter()
        .filter(|sa| serviceaccounts::relinked(sa, &wants).is_some())
        .collect()
}

/// Runs the cleanup and prints its summary on stdout.
pub async fn run(args: &CleanupArgs) -> Result<Exit, Error> {
    let client = crate::k8s::client().await?;
    let params = ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"));
    let found = crate::k8s::list_all(
        &Api::<Secret>::all(client.clone()),
        &params,
        "secrets managed by regcred",
    )
    .await?;
    let mut by_namespace: BTreeMap<String, Vec<Secret>> = BTreeMap::new();
    for s in found.into_iter().filter(secrets::is_managed) {
        let ns = s.metadata.namespace.clone().unwrap_or_default();
        if args.namespaces.is_empty() || args.namespaces.iter().any(|g| g.matches(&ns)) {
            by_namespace.entry(ns).or_default().push(s);
        }
    }
    let reports: Vec<Report> = futures::stream::iter(by_namespace)
        .map(|(ns, managed)| {
            let client = client.clone();
            async move { namespace(&client, ns, managed, args.dry_run).await }
        })
        .buffer_unordered(usize::from(args.concurrency))
        .collect()
        .await;
    let mut reports = reports;
    reports.sort_by(|a, b| a.namespace.cmp(&b.namespace));
    crate::write_stdout(
        &mut std::io::stdout().lock(),
        &render(&reports, args.dry_run),
    )?;
    Ok(if reports.iter().any(|r| !r.failures.is_empty()) {
        Exit::Failed
    } else {
        Exit::Ok
    })
}

async fn namespace(
    client: &kube::Client,
    ns: String,
    managed: Vec<Secret>,
    dry_run: bool,
) -> Report {
    let mut report = Report {
        namespace: ns.clone(),
        ..Report::default()
    };
    let sas = match crate::k8s::list_all(
        &Api::<ServiceAccount>::namespaced(client.clone(), &ns),
        &ListParams::default(),
        &format!("serviceaccounts in {ns}"),
    )
    .await
    {
        Ok(sas) => sas,
        Err(e) => {
            // Without the list, a reference could be left pointing at nothing: keep the
            // secrets too.
            report.failures.push(crate::chain(&e));
            return report;
        }
    };
    let writer = Writer::new(client.clone());
    let permit = Permit::always();
    for secret in managed {
        let name = secret.metadata.name.clone().unwrap_or_default();
        // An adopted secret that holds other registries' entries goes back to its owner
        // (only the references regcred made go); any other goes, with every reference to it.
        let back = secrets::given_back(&secret);
        let want = if back.is_some() {
            Want::NoneOfOurs
        } else {
            Want::None
        };
        let wants: BTreeMap<String, Want> = [(name.clone(), want)].into();
        let mut references_ok = true;
        for sa in sas
            .iter()
            .filter(|sa| serviceaccounts::relinked(sa, &wants).is_some())
        {
            let sa_name = sa.metadata.name.clone().unwrap_or_default();
            if dry_run {
                report.references.push(format!("{sa_name}/{name}"));
                continue;
            }
            match serviceaccounts::update(client, sa, &wants, &permit).await {
                Ok(serviceaccounts::Outcome::Patched(_)) => {
                    report.references.push(format!("{sa_name}/{name}"));
                }
                Ok(_) => {}
                Err(e) => {
                    references_ok = false;
                    report.failures.push(crate::chain(&e));
                }
            }
        }
        if !references_ok {
            report.failures.push(format!(
                "secret {name} kept: its ServiceAccount references could not all be removed"
            ));
            continue;
        }
        if let Some(back) = back {
            if dry_run {
                report.given_back.push(name);
                continue;
            }
            match writer.give_back(&back, &permit).await {
                Ok(_) => report.given_back.push(name),
                Err(e) if e.is_conflict() => report.failures.push(format!(
                    "secret {name} changed while it was given back; run cleanup again"
                )),
                Err(e) => report.failures.push(crate::chain(&e)),
            }
            continue;
        }
        if dry_run {
            report.secrets.push(name);
            continue;
        }
        match delete(client, &writer, &ns, secret).await {
            Ok(Deleted::Yes) => report.secrets.push(name),
            Ok(Deleted::Gone) => {}
            Ok(Deleted::NoLongerManaged) => report.left.push(name),
            Err(e) => report.failures.push(e),
        }
    }
    report
}

enum Deleted {
    Yes,
    /// Someone else deleted it first.
    Gone,
    /// It lost regcred's label meanwhile: not ours to delete any more.
    NoLongerManaged,
}

/// Deletes the secret as it was read; when it changed meanwhile, reads it again and deletes
/// that version if it is still regcred's.
async fn delete(
    client: &kube::Client,
    writer: &Writer,
    ns: &str,
    mut secret: Secret,
) -> Result<Deleted, String> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    for _ in 0..DELETE_TRIES {
        match writer
            .delete(
                ns,
                &name,
                secret.metadata.resource_version.as_deref(),
                &Permit::always(),
            )
            .await
        {
            Ok(()) => return Ok(Deleted::Yes),
            Err(e) if e.is_conflict() => {
                tracing::debug!(
                    namespace = ns,
                    name,
                    "secret changed since it was read; reading it again"
                );
                match tokio::time::timeout(API_TIMEOUT, api.get_opt(&name)).await {
                    Ok(Ok(Some(fresh))) if secrets::is_managed(&fresh) => secret = fresh,
                    Ok(Ok(Some(_))) => return Ok(Deleted::NoLongerManaged),
                    Ok(Ok(None)) => return Ok(Deleted::Gone),
                    Ok(Err(e)) => {
                        return Err(format!("get secret {ns}/{name}: {}", crate::chain(&e)));
                    }
                    Err(_) => {
                        return Err(format!(
                            "get secret {ns}/{name}: no answer within {API_TIMEOUT:?}"
                        ));
                    }
                }
            }
            Err(e) => return Err(crate::chain(&e)),
        }
    }
    Err(format!(
        "delete secret {ns}/{name}: it kept changing ({DELETE_TRIES} tries); is the controller still running?"
    ))
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The summary line (after one line per planned action in a dry run), then one line per
/// secret left and per failure.
#[must_use]
pub fn render(reports: &[Report], dry_run: bool) -> String {
    let mut out = String::new();
    let secrets: usize = reports.iter().map(|r| r.secrets.len()).sum();
    let references: usize = reports.iter().map(|r| r.references.len()).sum();
    let given_back: usize = reports.iter().map(|r| r.given_back.len()).sum();
    let touched = reports
        .iter()
        .filter(|r| !r.secrets.is_empty() || !r.references.is_empty() || !r.given_back.is_empty())
        .count();
    let failed: usize = reports.iter().map(|r| r.failures.len()).sum();
    if dry_run {
        for r in reports {
            for reference in &r.references {
                let (sa, secret) = reference.split_once('/').unwrap_or((reference, ""));
                writeln!(
                    out,
                    "would remove {secret} from serviceaccount {}/{sa} imagePullSecrets",
                    r.namespace
                )
                .ok();
            }
            for secret in &r.secrets {
                writeln!(out, "would delete secret {}/{secret}", r.namespace).ok();
            }
            for secret in &r.given_back {
                writeln!(
                    out,
                    "would give back secret {}/{secret} to its owner (keeping its other registries' entries)",
                    r.namespace
                )
                .ok();
            }
        }
        out.push_str("dry run: would have ");
    }
    write!(
        out,
        "removed {} and {} in {}",
        plural(secrets, "secret", "secrets"),
        plural(
            references,
            "ServiceAccount reference",
            "ServiceAccount references"
        ),
        plural(touched, "namespace", "namespaces"),
    )
    .ok();
    if given_back > 0 {
        write!(
            out,
            "; gave back {} to their owners (their other registries' entries kept)",
            plural(given_back, "adopted secret", "adopted secrets")
        )
        .ok();
    }
    if failed > 0 {
        write!(out, "; {failed} failed").ok();
    }
    out.push('\n');
    for r in reports {
        for name in &r.left {
            writeln!(
                out,
                "left: {}/{name}: no longer managed by regcred",
                r.namespace
            )
            .ok();
        }
        for f in &r.failures {
            writeln!(out, "failed: {}: {f}", r.namespace).ok();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::LocalObjectReference;

    fn sa(name: &str, pulls: &[&str]) -> ServiceAccount {
        let mut sa = ServiceAccount::default();
        sa.metadata.name = Some(name.into());
        sa.image_pull_secrets = Some(
            pulls
                .iter()
                .map(|p| LocalObjectReference {
                    name: (*p).to_owned(),
                })
                .collect(),
        );
        sa
    }

    #[test]
    fn only_serviceaccounts_naming_the_secret_are_touched() {
        let sas = [
            sa("default", &["other", "regcred"]),
            sa("builder", &["other"]),
            sa("bare", &[]),
        ];
        let names: Vec<_> = referencing(&sas, "regcred")
            .iter()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["default"]);
    }

    #[test]
    fn the_summary_counts_and_lists_what_did_not_go() {
        let reports = [
            Report {
                namespace: "a".into(),
                secrets: vec!["regcred".into()],
                references: vec!["default/regcred".into(), "ci/regcred".into()],
                ..Report::default()
            },
            Report {
                namespace: "b".into(),
                left: vec!["regcred".into()],
                failures: vec!["delete secret b/x: forbidden".into()],
                ..Report::default()
            },
        ];
        assert_eq!(
            render(&reports, false),
            "removed 1 secret and 2 ServiceAccount references in 1 namespace; 1 failed\n\
             left: b/regcred: no longer managed by regcred\n\
             failed: b: delete secret b/x: forbidden\n"
        );
        let dry = render(&reports[..1], true);
        assert_eq!(
            dry,
            "would remove regcred from serviceaccount a/default imagePullSecrets\n\
             would remove regcred from serviceaccount a/ci imagePullSecrets\n\
             would delete secret a/regcred\n\
             dry run: would have removed 1 secret and 2 ServiceAccount references in 1 namespace\n"
        );
        assert_eq!(
            render(&[], false),
            "removed 0 secrets and 0 ServiceAccount references in 0 namespaces\n"
        );
    }
}
