//! `regcred check`: preflight of configuration, AWS identity, tokens and Kubernetes
//! permissions, as a table with hints.
//!
//! Every check runs even when an earlier one failed, so one run shows everything to fix.
//! Kubernetes permissions are asked with SelfSubjectAccessReview: the answer is the API
//! server's own, for exactly the identity regcred runs as.

use std::fmt::Write as _;

use clap::{Args, ValueEnum};
use futures::StreamExt as _;
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use serde::Serialize;

use crate::config::{Config, ConfigArgs};
use crate::ecr::Tokens;
use crate::formats::Format;
use crate::registry::{Endpoint, TokenSource};
use crate::secrets::{API_TIMEOUT, format_time};
use crate::{Error, Exit};

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

/// A Kubernetes permission a mode needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permission {
    pub group: &'static str,
    pub resource: &'static str,
    pub verb: &'static str,
    /// Restricted to one object (RBAC `resourceNames`).
    pub name: Option<String>,
    /// `None`: in every namespace (a ClusterRole).
    pub namespace: Option<String>,
}

impl Permission {
    fn new(group: &'static str, resource: &'static str, verb: &'static str) -> Self {
        Self {
            group,
            resource,
            verb,
            name: None,
            namespace: None,
        }
    }

    /// `patch secrets/regcred`, `create leases.coordination.k8s.io in regcred-system`.
    #[must_use]
    pub fn describe(&self) -> String {
        let mut s = format!("{} {}", self.verb, self.resource);
        if !self.group.is_empty() {
            write!(s, ".{}", self.group).ok();
        }
        if let Some(name) = &self.name {
            write!(s, "/{name}").ok();
        }
        if let Some(ns) = &self.namespace {
            write!(s, " in {ns}").ok();
        }
        s
    }

    /// The RBAC rule that grants it.
    #[must_use]
    pub fn hint(&self) -> String {
        let mut rule = format!(
            "apiGroups: [\"{}\"], resources: [{}], verbs: [{}]",
            self.group, self.resource, self.verb
        );
        if let Some(name) = &self.name {
            write!(rule, ", resourceNames: [{name}]").ok();
        }
        match &self.namespace {
            Some(ns) => {
                format!("grant it with a Role in namespace {ns} bound to this identity: {rule}")
            }
            None => format!(
                "grant it with a ClusterRole bound to this identity: {rule} (the Helm chart's RBAC has it)"
            ),
        }
    }
}

/// Every permission the configuration needs in this mode — what the chart grants.
#[must_use]
pub fn required_permissions(
    config: &Config,
    mode: Mode,
    lease_namespace: &str,
    lease_name: &str,
) -> Vec<Permission> {
    let mut needed: Vec<Permission> = ["get", "list", "watch"]
        .into_iter()
        .map(|verb| Permission::new("", "namespaces", verb))
        .collect();
    needed.push(Permission::new("", "secrets", "create"));
    for name in config.managed_names() {
        for verb in ["get", "list", "watch", "patch", "update", "delete"] {
            needed.push(Permission {
                name: Some(name.clone()),
                ..Permission::new("", "secrets", verb)
            });
        }
    }
    if config.patches_service_accounts() {
        for verb in ["get", "list", "watch", "patch"] {
            needed.push(Permission::new("", "serviceaccounts", verb));
        }
    }
    for verb in ["create", "patch"] {
        needed.push(Permission::new("events.k8s.io", "events", verb));
    }
    if mode == Mode::Controller {
        let lease = |verb, name: Option<&str>| Permission {
            name: name.map(str::to_owned),
            namespace: Some(lease_namespace.to_owned()),
            ..Permission::new("coordination.k8s.io", "leases", verb)
        };
        needed.push(lease("create", None));
        needed.push(lease("get", Some(lease_name)));
        needed.push(lease("update", Some(lease_name)));
    }
    needed
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

fn token_hint(source: &TokenSource) -> String {
    let base = match source.endpoint {
        Endpoint::Public => {
            "the AWS identity needs ecr-public:GetAuthorizationToken and sts:GetServiceBearerToken \
             (ECR Public is served from us-east-1)"
        }
        Endpoint::Private { .. } => {
            "the AWS identity needs ecr:GetAuthorizationToken, and the ECR API of that region must \
             be reachable (VPC endpoint or NAT)"
        }
    };
    match &source.role {
        Some(role) => format!(
            "{base}; it must also be allowed sts:AssumeRole on {} and be trusted by that role",
            role.arn
        ),
        None => base.to_owned(),
    }
}

async fn aws_checks(config: &Config) -> Vec<Check> {
    let tokens = Tokens::from_env().await;
    let sources = config.token_sources();
    let (identity, fetched) = tokio::join!(tokens.identity(), tokens.fetch_all(&sources));
    let mut checks = vec![match identity {
        Ok(arn) => Check::pass("aws identity", arn),
        Err(e) => Check::fail(
            "aws identity",
            crate::chain(&e),
            "no usable AWS credentials: give the pod an IRSA role annotation or an EKS Pod \
             Identity association, or set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE",
        ),
    }];
    for (source, result) in fetched {
        let hosts: Vec<String> = config
            .secrets
            .iter()
            .flat_map(|s| &s.registries)
            .filter(|r| r.token_source() == source)
            .map(|r| r.registry.host().to_owned())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let name = format!("token {source}");
        checks.push(match result {
            Ok(token) => Check::pass(
                name,
                format!(
                    "expires {} (for {})",
                    format_time(token.expires_at),
                    hosts.join(", ")
                ),
            ),
            Err(e) => Check::fail(name, crate::chain(&e), token_hint(&source)),
        });
    }
    checks
}

/// What `secrets: create` cannot be scoped against by RBAC: the policy refuses this
/// identity a `kubernetes.io/service-account-token` secret of regcred's own name (the
/// control plane would fill in a ServiceAccount's token, which that name lets it read). Asked
/// with a dry run, so nothing is ever created.
async fn admission_policy(client: &kube::Client, name: &str, namespace: &str) -> Check {
    const ROW: &str = "secret admission policy";
    let probe = Secret {
        metadata: kube::core::ObjectMeta {
            name: Some(name.to_owned()),
            annotations: Some(
                [(
                    "kubernetes.io/service-account.name".to_owned(),
                    "default".to_owned(),
                )]
                .into(),
            ),
            ..kube::core::ObjectMeta::default()
        },
        type_: Some("kubernetes.io/service-account-token".into()),
        ..Secret::default()
    };
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let api = Api::<Secret>::namespaced(client.clone(), namespace);
    let hint = "install the chart's ValidatingAdmissionPolicy and its binding \
                (charts/regcred/templates/admissionpolicy.yaml, also in deploy/; needs \
                Kubernetes 1.30 or later): RBAC cannot scope `create secrets` by name, so without \
                it this identity can mint a ServiceAccount token (docs/install.md, \"Residual \
                risk\"). Run as yourself rather than as regcred's ServiceAccount, this row only \
                says that the policy does not bind you";
    match tokio::time::timeout(API_TIMEOUT, api.create(&dry_run, &probe)).await {
        Ok(Err(kube::Error::Api(s)))
            if s.code == 403 && s.message.contains("ValidatingAdmissionPolicy") =>
        {
            Check::pass(
                ROW,
                format!("a kubernetes.io/service-account-token secret named {name} is refused"),
            )
        }
        Ok(Err(kube::Error::Api(s))) if s.code == 403 => {
            Check::pass(ROW, "this identity may not create secrets at all (RBAC)")
        }
        Ok(Ok(_)) => Check::fail(
            ROW,
            format!(
                "this identity may create a kubernetes.io/service-account-token secret named {name} \
                 (asked with a dry run in {namespace})"
            ),
            hint,
        ),
        Ok(Err(e)) => Check::fail(
            ROW,
            format!(
                "could not ask (a dry run in {namespace}): {}",
                crate::chain(&e)
            ),
            "the dry run goes to the Lease's namespace (--lease-namespace, POD_NAMESPACE): it must exist",
        ),
        Err(_) => Check::fail(
            ROW,
            format!("no answer within {API_TIMEOUT:?}"),
            "check the connection to the API server",
        ),
    }
}

async fn kubernetes_checks(
    needed: Vec<Permission>,
    secret_name: &str,
    namespace: &str,
) -> Vec<Check> {
    let connect_hint =
        "set KUBECONFIG (or ~/.kube/config), or run in a pod with a ServiceAccount token";
    let client = match crate::k8s::client().await {
        Ok(c) => c,
        Err(e) => return vec![Check::fail("kubernetes", crate::chain(&e), connect_hint)],
    };
    let review = SelfSubjectReview {
        metadata: kube::core::ObjectMeta::default(),
        status: None,
    };
    let who = tokio::time::timeout(
        API_TIMEOUT,
        Api::<SelfSubjectReview>::all(client.clone()).create(&PostParams::default(), &review),
    )
    .await;
    let mut checks = vec![match who {
        Ok(Ok(r)) => Check::pass(
            "kubernetes",
            format!(
                "authenticated as {}",
                r.status
                    .and_then(|s| s.user_info)
                    .and_then(|u| u.username)
                    .unwrap_or_else(|| "(unknown)".into())
            ),
        ),
        Ok(Err(kube::Error::Api(s))) if s.code != 401 => Check::pass(
            "kubernetes",
            format!("connected (SelfSubjectReview unavailable: {})", s.message),
        ),
        Ok(Err(e)) => {
            return vec![Check::fail(
                "kubernetes",
                crate::chain(&e),
                "the API server is unreachable or refused these credentials; check the server \
                 address, the CA, and the token or certificate",
            )];
        }
        Err(_) => {
            return vec![Check::fail(
                "kubernetes",
                format!("no answer within {API_TIMEOUT:?}"),
                connect_hint,
            )];
        }
    }];
    let asked: Vec<Check> = futures::stream::iter(needed)
        .map(|p| {
            let client = client.clone();
            async move { access(&client, &p).await }
        })
        .buffered(8)
        .collect()
        .await;
    checks.extend(asked);
    checks.push(admission_policy(&client, secret_name, namespace).await);
    checks
}

/// Asks the API server whether this identity may do what the permission says.
async fn access(client: &kube::Client, p: &Permission) -> Check {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                group: Some(p.group.to_owned()),
                resource: Some(p.resource.to_owned()),
                verb: Some(p.verb.to_owned()),
                name: p.name.clone(),
                namespace: p.namespace.clone(),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    let name = format!("can {}", p.describe());
    let api = Api::<SelfSubjectAccessReview>::all(client.clone());
    match tokio::time::timeout(API_TIMEOUT, api.create(&PostParams::default(), &review)).await {
        Ok(Ok(r)) => {
            let status = r.status.unwrap_or_default();
            if status.allowed {
                Check::pass(name, "allowed")
            } else {
                let why = status
                    .evaluation_error
                    .or(status.reason)
                    .filter(|s| !s.is_empty())
                    .map_or_else(|| "denied".to_owned(), |r| format!("denied: {r}"));
                Check::fail(name, why, p.hint())
            }
        }
        Ok(Err(e)) => Check::fail(
            name,
            format!("could not ask: {}", crate::chain(&e)),
            "SelfSubjectAccessReview is open to every authenticated user; check the connection",
        ),
        Err(_) => Check::fail(
            name,
            format!("no answer within {API_TIMEOUT:?}"),
            "check the connection to the API server",
        ),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(yaml: &str) -> Config {
        Config::from_yaml(Path::new("regcred.yaml"), yaml).unwrap()
    }

    fn described(needed: &[Permission]) -> Vec<String> {
        needed.iter().map(Permission::describe).collect()
    }

    #[test]
    fn the_controller_needs_the_charts_rules_and_its_lease() {
        let c = config(
            "secrets:\n  - name: regcred\n    registries: [public.ecr.aws]\n    serviceAccounts: [default]\n  - name: other\n    registries: [public.ecr.aws]\n",
        );
        let needed = described(&required_permissions(
            &c,
            Mode::Controller,
            "regcred-system",
            "regcred",
        ));
        for p in [
            "get namespaces",
            "watch namespaces",
            "create secrets",
            "delete secrets/regcred",
            "list secrets/other",
            "patch serviceaccounts",
            "create events.events.k8s.io",
            "patch events.events.k8s.io",
            "create leases.coordination.k8s.io in regcred-system",
            "get leases.coordination.k8s.io/regcred in regcred-system",
            "update leases.coordination.k8s.io/regcred in regcred-system",
        ] {
            assert!(
                needed.contains(&p.to_owned()),
                "{p} missing from {needed:?}"
            );
        }
        assert_eq!(needed.len(), 3 + 1 + 12 + 4 + 2 + 3);
        assert!(
            !needed.contains(&"get secrets".to_owned()),
            "secrets are read by name only"
        );
    }

    #[test]
    fn a_cronjob_needs_no_lease_and_no_serviceaccounts_unless_patching() {
        let c = config("secrets:\n  - registries: [public.ecr.aws]\n");
        let needed = described(&required_permissions(&c, Mode::Cronjob, "x", "regcred"));
        assert!(needed.iter().all(|p| !p.contains("leases")), "{needed:?}");
        assert!(
            needed.iter().all(|p| !p.contains("serviceaccounts")),
            "{needed:?}"
        );
        assert!(needed.contains(&"update secrets/regcred".to_owned()));
    }

    #[test]
    fn per_host_secrets_are_checked_by_their_names_and_shown_with_their_format() {
        let c = config(
            "secrets:\n  - name: argo\n    format: argocd-repo-creds\n    registries: [public.ecr.aws]\n  - name: plain\n    format: basic-auth\n    registries: [public.ecr.aws]\n  - registries: [public.ecr.aws]\n",
        );
        let needed = described(&required_permissions(&c, Mode::Cronjob, "x", "regcred"));
        for p in [
            "patch secrets/argo-public.ecr.aws",
            "delete secrets/plain",
            "update secrets/regcred",
        ] {
            assert!(
                needed.contains(&p.to_owned()),
                "{p} missing from {needed:?}"
            );
        }
        assert!(!needed.contains(&"patch secrets/argo".to_owned()));
        assert!(
            config_detail(&c).starts_with(
                "secrets argo-public.ecr.aws (argocd-repo-creds), plain (basic-auth), regcred; 1 registry; 1 token source;"
            ),
            "{}",
            config_detail(&c)
        );
    }

    #[test]
    fn hints_name_the_rule_and_where_it_goes() {
        let p = Permission {
            name: Some("regcred".into()),
            ..Permission::new("", "secrets", "delete")
        };
        assert_eq!(
            p.hint(),
            "grant it with a ClusterRole bound to this identity: apiGroups: [\"\"], resources: [secrets], \
             verbs: [delete], resourceNames: [regcred] (the Helm chart's RBAC has it)"
        );
        let lease = Permission {
            namespace: Some("ops".into()),
            ..Permission::new("coordination.k8s.io", "leases", "create")
        };
        assert!(
            lease
                .hint()
                .starts_with("grant it with a Role in namespace ops")
        );
    }

    #[test]
    fn the_table_marks_each_row_and_hints_under_failures() {
        let checks = [
            Check::pass("config", "secret regcred"),
            Check::fail("can delete secrets/regcred", "denied", "grant it"),
        ];
        let table = render_table(&checks);
        assert_eq!(
            table,
            "✓ config                      secret regcred\n\
             ✗ can delete secrets/regcred  denied\n    hint: grant it\n\
             1 of 2 checks failed\n"
        );
        let json: serde_json::Value = serde_json::from_str(&render_json(&checks)).unwrap();
        assert_eq!(json["ok"], false);
        assert_eq!(json["checks"][0].get("hint"), None);
        assert_eq!(json["checks"][1]["hint"], "grant it");
    }
}
