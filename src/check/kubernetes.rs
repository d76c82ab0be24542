//! The Kubernetes rows: what the configuration needs (the chart's rules), asked of the API
//! server with SelfSubjectAccessReview, and whether the admission policy holds this identity.

use std::fmt::Write as _;

use futures::StreamExt as _;
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};

use super::{Check, Mode};
use crate::config::Config;
use crate::secrets::API_TIMEOUT;

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
    pub(super) fn new(group: &'static str, resource: &'static str, verb: &'static str) -> Self {
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

pub(super) async fn kubernetes_checks(
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
