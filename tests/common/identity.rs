//! Identities: ServiceAccounts with exactly the RBAC a test gives (the chart's rules by
//! default), and `regcred` commands run as them.

use std::path::PathBuf;
use std::process::Command;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use kube::api::{Api, ObjectMeta, PostParams};

use super::{client_from, create_namespace, create_service_account, stack, unique};

fn rule(
    groups: &[&str],
    resources: &[&str],
    verbs: &[&str],
    names: Option<&[String]>,
) -> PolicyRule {
    let strings = |v: &[&str]| Some(v.iter().map(|s| (*s).to_owned()).collect());
    PolicyRule {
        api_groups: strings(groups),
        resources: strings(resources),
        verbs: verbs.iter().map(|s| (*s).to_owned()).collect(),
        resource_names: names.map(<[String]>::to_vec),
        ..PolicyRule::default()
    }
}

/// The cluster-wide rules of the spec's least-privilege section (what the chart grants).
pub fn chart_cluster_rules(secret_names: &[&str], patch_service_accounts: bool) -> Vec<PolicyRule> {
    let names: Vec<String> = secret_names.iter().map(|s| (*s).to_owned()).collect();
    let mut rules = vec![
        rule(&[""], &["namespaces"], &["get", "list", "watch"], None),
        rule(&[""], &["secrets"], &["create"], None),
        rule(
            &[""],
            &["secrets"],
            &["get", "list", "watch", "patch", "update", "delete"],
            Some(&names),
        ),
        rule(
            &["", "events.k8s.io"],
            &["events"],
            &["create", "patch"],
            None,
        ),
    ];
    if patch_service_accounts {
        rules.push(rule(
            &[""],
            &["serviceaccounts"],
            &["get", "list", "watch", "patch"],
            None,
        ));
    }
    rules
}

/// The rules in regcred's own namespace: its Lease.
pub fn chart_namespace_rules(lease: &str) -> Vec<PolicyRule> {
    vec![
        rule(&["coordination.k8s.io"], &["leases"], &["create"], None),
        rule(
            &["coordination.k8s.io"],
            &["leases"],
            &["get", "update"],
            Some(&[lease.to_owned()]),
        ),
    ]
}

/// A ServiceAccount to act as, with a kubeconfig holding its token.
#[derive(Debug)]
pub struct Identity {
    pub namespace: String,
    pub name: String,
    pub kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

impl Identity {
    pub async fn client(&self) -> kube::Client {
        client_from(&self.kubeconfig).await
    }
}

/// Creates a ServiceAccount in `namespace` bound to exactly these rules (cluster-wide and
/// in its own namespace), mints a token for it and writes a kubeconfig.
pub async fn identity(
    admin: &kube::Client,
    namespace: &str,
    cluster_rules: Vec<PolicyRule>,
    namespace_rules: Vec<PolicyRule>,
) -> Identity {
    let name = unique("regcred-sa");
    create_service_account(admin, namespace, &name, &[]).await;
    let subject = Subject {
        kind: "ServiceAccount".into(),
        name: name.clone(),
        namespace: Some(namespace.to_owned()),
        ..Subject::default()
    };
    let meta = |n: &str| ObjectMeta {
        name: Some(n.to_owned()),
        ..ObjectMeta::default()
    };
    let pp = PostParams::default();
    if !cluster_rules.is_empty() {
        let role = ClusterRole {
            metadata: meta(&name),
            rules: Some(cluster_rules),
            ..ClusterRole::default()
        };
        Api::<ClusterRole>::all(admin.clone())
            .create(&pp, &role)
            .await
            .expect("create clusterrole");
        let binding = ClusterRoleBinding {
            metadata: meta(&name),
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "ClusterRole".into(),
                name: name.clone(),
            },
            subjects: Some(vec![subject.clone()]),
        };
        Api::<ClusterRoleBinding>::all(admin.clone())
            .create(&pp, &binding)
            .await
            .expect("create clusterrolebinding");
    }
    if !namespace_rules.is_empty() {
        let role = Role {
            metadata: meta(&name),
            rules: Some(namespace_rules),
        };
        Api::<Role>::namespaced(admin.clone(), namespace)
            .create(&pp, &role)
            .await
            .expect("create role");
        let binding = RoleBinding {
            metadata: meta(&name),
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "Role".into(),
                name: name.clone(),
            },
            subjects: Some(vec![subject]),
        };
        Api::<RoleBinding>::namespaced(admin.clone(), namespace)
            .create(&pp, &binding)
            .await
            .expect("create rolebinding");
    }
    identity_of(admin, namespace, &name).await
}

/// A ServiceAccount token from the TokenRequest API.
pub async fn service_account_token(admin: &kube::Client, namespace: &str, name: &str) -> String {
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    Api::<ServiceAccount>::namespaced(admin.clone(), namespace)
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .expect("token request")
        .status
        .expect("token status")
        .token
        .expect("token")
}

/// An identity with the chart's RBAC for these secret names, in a fresh namespace of its own.
pub async fn chart_identity(
    admin: &kube::Client,
    secret_names: &[&str],
    patch_service_accounts: bool,
) -> Identity {
    let home = unique("regcred-home");
    create_namespace(admin, &home, &[]).await;
    identity(
        admin,
        &home,
        chart_cluster_rules(secret_names, patch_service_accounts),
        chart_namespace_rules("regcred"),
    )
    .await
}

/// The regcred binary, with the stack's AWS environment, acting as `who`, and counting its
/// AWS calls under its own access key id (returned).
pub fn regcred(who: &Identity) -> (Command, String) {
    let (mut cmd, key) = regcred_without_cluster();
    cmd.env("KUBECONFIG", &who.kubeconfig);
    (cmd, key)
}

/// The regcred binary with the stack's AWS environment and no way to reach a cluster: its
/// kubeconfig does not exist.
pub fn regcred_without_cluster() -> (Command, String) {
    let s = stack();
    let key = unique("AKIATEST").replace('-', "").to_uppercase();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_regcred"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::var("HOME").unwrap_or_default())
        .env("KUBECONFIG", "/nonexistent/regcred-test-kubeconfig")
        .env("AWS_ENDPOINT_URL", s.var("AWS_ENDPOINT_URL"))
        .env(
            "AWS_ENDPOINT_URL_ECR_PUBLIC",
            s.var("AWS_ENDPOINT_URL_ECR_PUBLIC"),
        )
        .env("AWS_ACCESS_KEY_ID", &key)
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", s.var("AWS_REGION"))
        .env("AWS_EC2_METADATA_DISABLED", "true");
    (cmd, key)
}

/// Acts as an existing ServiceAccount (one a chart created, say), with whatever RBAC it
/// was given: a fresh token from the TokenRequest API in a kubeconfig.
pub async fn identity_of(admin: &kube::Client, namespace: &str, name: &str) -> Identity {
    let token = service_account_token(admin, namespace, name).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let s = stack();
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    certificate-authority: {}\n\
             users:\n- name: sa\n  user:\n    token: {token}\ncontexts:\n- name: sa\n  context:\n    cluster: test\n    user: sa\n    namespace: {namespace}\n\
             current-context: sa\n",
            s.var("REGCRED_TEST_APISERVER"),
            s.var("REGCRED_TEST_CA"),
        ),
    )
    .unwrap();
    Identity {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        kubeconfig,
        _dir: dir,
    }
}
