//! The installed Helm chart on the real stack: regcred, started with the chart's
//! ServiceAccount token and the chart's own rendered config, does its whole job, and that
//! ServiceAccount is refused everything else.

mod common;

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::helm::*;
use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{ClusterRole, Role};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use serde_json::{Value, json};

/// The config file the chart gave regcred: its ConfigMap's `config.yaml`, in a file.
async fn installed_config(
    admin: &kube::Client,
    namespace: &str,
    name: &str,
) -> (tempfile::TempDir, PathBuf) {
    let cm = Api::<ConfigMap>::namespaced(admin.clone(), namespace)
        .get(name)
        .await
        .expect("the chart's ConfigMap");
    config_file(&cm.data.expect("data")["config.yaml"])
}

/// A chart installation whose config serves `<prefix>-*` namespaces from the stack's
/// registry, with secret `secret`, acting as the chart's ServiceAccount.
struct Installed {
    admin: kube::Client,
    release: String,
    secret: String,
    prefix: String,
    who: Identity,
    config: PathBuf,
    _config_dir: tempfile::TempDir,
}

async fn install_for_test(mode: &str, service_accounts: &[&str]) -> Installed {
    let admin = stack().admin().await;
    let release = unique("regcred");
    let secret = unique("pull");
    let prefix = unique("chart");
    install(
        &release,
        &release,
        &json!({
            "mode": mode,
            // These tests check what the chart grants, acting as its ServiceAccount; its
            // pods need not run (the cluster suite runs them on the node).
            "nodeSelector": {"regcred.test/run-here": "never"},
            "config": {"secrets": [{
                "name": secret,
                "registries": [stack_registry(), "public.ecr.aws"],
                "namespaces": {"include": [format!("{prefix}-*")]},
                "serviceAccounts": service_accounts,
            }]},
        }),
    );
    // The chart's objects exist; the ServiceAccount is the chart's, not one we made.
    let sa = Api::<ServiceAccount>::namespaced(admin.clone(), &release)
        .get(&release)
        .await
        .expect("the chart's ServiceAccount");
    assert_eq!(
        sa.metadata.labels.unwrap()["app.kubernetes.io/instance"],
        release
    );
    let (dir, config) = installed_config(&admin, &release, &release).await;
    let who = identity_of(&admin, &release, &release).await;
    Installed {
        admin,
        release,
        secret,
        prefix,
        who,
        config,
        _config_dir: dir,
    }
}

impl Installed {
    /// `helm install` made the workload and its RBAC.
    async fn assert_installed(&self) {
        let admin = &self.admin;
        let deployment = Api::<Deployment>::namespaced(admin.clone(), &self.release)
            .get_opt(&self.release)
            .await
            .unwrap();
        let cluster_role = Api::<ClusterRole>::all(admin.clone())
            .get_opt(&self.release)
            .await
            .unwrap();
        let role = Api::<Role>::namespaced(admin.clone(), &self.release)
            .get_opt(&self.release)
            .await
            .unwrap();
        assert!(deployment.is_some() && cluster_role.is_some() && role.is_some());
    }

    /// `ns` has regcred's secret, its `default` ServiceAccount references it after
    /// `others`, and the secret pulls the stack's image.
    async fn assert_served(&self, ns: &str, others: &[&str]) {
        let secret = get_secret(&self.admin, ns, &self.secret)
            .await
            .expect("secret written");
        assert_eq!(
            secret.metadata.labels.as_ref().unwrap()["app.kubernetes.io/managed-by"],
            "regcred"
        );
        let sa = Api::<ServiceAccount>::namespaced(self.admin.clone(), ns)
            .get("default")
            .await
            .unwrap();
        let refs: Vec<_> = sa
            .image_pull_secrets
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect();
        let mut want: Vec<String> = others.iter().map(|s| (*s).to_owned()).collect();
        want.push(self.secret.clone());
        assert_eq!(refs, want);
        let authfile = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            authfile.path(),
            &secret.data.unwrap()[".dockerconfigjson"].0,
        )
        .unwrap();
        let pulled = skopeo_pull(authfile.path());
        assert!(pulled.status.success(), "{}", stderr(&pulled));
    }

    fn ns(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.prefix)
    }

    fn regcred(&self, args: &[&str]) -> Command {
        let (mut cmd, _key) = regcred(&self.who);
        cmd.args(args).arg("--config").arg(&self.config);
        cmd
    }

    /// [`Installed::may`] for `VERB RESOURCE NS/NAME`.
    async fn may_ask(&self, ask: &str) -> bool {
        let mut words = ask.split(' ');
        let (verb, resource, place) = (
            words.next().unwrap(),
            words.next().unwrap(),
            words.next().unwrap(),
        );
        let (ns, name) = place.split_once('/').unwrap();
        let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        self.may(verb, resource, some(ns).as_deref(), some(name).as_deref())
            .await
    }

    /// Whether the chart's ServiceAccount may do this (a SubjectAccessReview, as admin).
    async fn may(
        &self,
        verb: &str,
        resource: &str,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> bool {
        // "leases.coordination.k8s.io": resource, then group.
        let (resource, group) = resource.split_once('.').unwrap_or((resource, ""));
        let (resource, subresource) = resource
            .split_once('/')
            .map_or((resource, None), |(r, s)| (r, Some(s.to_owned())));
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(format!(
                    "system:serviceaccount:{}:{}",
                    self.release, self.release
                )),
                groups: Some(vec![
                    "system:serviceaccounts".into(),
                    format!("system:serviceaccounts:{}", self.release),
                    "system:authenticated".into(),
                ]),
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(verb.into()),
                    group: Some(group.into()),
                    resource: Some(resource.into()),
                    subresource,
                    namespace: namespace.map(str::to_owned),
                    name: name.map(str::to_owned),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        Api::<SubjectAccessReview>::all(self.admin.clone())
            .create(&PostParams::default(), &review)
            .await
            .expect("SubjectAccessReview")
            .status
            .expect("status")
            .allowed
    }
}

async fn create_foreign_secret(admin: &kube::Client, ns: &str, name: &str) {
    Api::<Secret>::namespaced(admin.clone(), ns)
        .create(
            &PostParams::default(),
            &Secret {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    ..ObjectMeta::default()
                },
                string_data: Some([("note".to_owned(), "not regcred's".to_owned())].into()),
                ..Secret::default()
            },
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn helm_install_then_regcred_syncs_as_the_charts_service_account() {
    let it = install_for_test("controller", &["default"]).await;
    let admin = &it.admin;
    it.assert_installed().await;

    let (a, b, c) = (it.ns("a"), it.ns("b"), it.ns("c"));
    for ns in [&a, &b, &c] {
        create_namespace(admin, ns, &[]).await;
        create_service_account(admin, ns, "default", &["keep-me"]).await;
    }
    // In c, a secret of regcred's name that regcred did not make: left alone, reported
    // with an Event (which needs the chart's events RBAC).
    create_foreign_secret(admin, &c, &it.secret).await;

    let out = it.regcred(&["sync"]).output().unwrap();
    let summary = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the foreign secret fails the pass: {summary}\n{}",
        stderr(&out)
    );
    assert!(
        summary.starts_with("synced 3 namespaces (2 written, 0 unchanged, 0 skipped, 1 failed)"),
        "{summary}\n{}",
        stderr(&out)
    );
    // (Not "403": unique names are hex and may contain it.)
    assert!(
        !stderr(&out).to_lowercase().contains("forbidden"),
        "{}",
        stderr(&out)
    );

    for ns in [&a, &b] {
        it.assert_served(ns, &["keep-me"]).await;
    }

    let foreign = get_secret(admin, &c, &it.secret).await.unwrap();
    assert!(
        foreign.metadata.labels.is_none(),
        "the foreign secret was left alone"
    );
    let events = Api::<Event>::namespaced(admin.clone(), &c)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(
        events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("ForeignSecret")),
        "no ForeignSecret Event in {c}: {:?}",
        events.items
    );

    // Again: reads by name only, and nothing to write.
    Api::<Secret>::namespaced(admin.clone(), &c)
        .delete(&it.secret, &DeleteParams::default())
        .await
        .unwrap();
    let out = it.regcred(&["sync"]).output().unwrap();
    let summary = stdout(&out);
    assert!(out.status.success(), "{summary}\n{}", stderr(&out));
    assert!(
        summary.starts_with("synced 3 namespaces (1 written, 2 unchanged, 0 skipped, 0 failed)"),
        "{summary}"
    );
}

/// What the chart's ServiceAccount must be allowed, as `VERB RESOURCE[.GROUP][/SUB] NS/NAME`
/// (an empty NS is cluster-wide, an empty NAME any name).
fn needed(own: &str, secret: &str) -> Vec<String> {
    [
        "get namespaces /default",
        "list namespaces /",
        "watch namespaces /",
        "create secrets team-a/",
        &format!("get secrets team-a/{secret}"),
        &format!("list secrets /{secret}"),
        &format!("watch secrets /{secret}"),
        &format!("patch secrets default/{secret}"),
        &format!("update secrets default/{secret}"),
        &format!("delete secrets default/{secret}"),
        "create events default/",
        "create events.events.k8s.io default/",
        "patch events.events.k8s.io default/",
        &format!("create leases.coordination.k8s.io {own}/"),
        &format!("get leases.coordination.k8s.io {own}/regcred"),
        &format!("update leases.coordination.k8s.io {own}/regcred"),
    ]
    .map(str::to_owned)
    .into()
}

/// What it must be refused: everything else, sampled where it matters most.
fn refused(own: &str) -> Vec<String> {
    [
        // Any other Secret, and secrets without the name.
        "get secrets default/other",
        &format!("get secrets {own}/{own}-token"),
        "list secrets default/",
        "list secrets /",
        "watch secrets /",
        "list secrets /other",
        "watch secrets default/other",
        "patch secrets default/other",
        "update secrets default/other",
        "delete secrets default/other",
        "deletecollection secrets default/",
        // Namespaces: read only.
        "create namespaces /",
        "patch namespaces /default",
        "delete namespaces /default",
        // ServiceAccounts and their tokens: not without serviceAccounts in the config.
        "get serviceaccounts default/default",
        "list serviceaccounts /",
        "patch serviceaccounts default/default",
        &format!("create serviceaccounts/token {own}/{own}"),
        // Events: write only.
        "list events default/",
        "delete events.events.k8s.io default/",
        // Leases: its own, in its own namespace.
        &format!("get leases.coordination.k8s.io {own}/kube-controller-manager"),
        &format!("update leases.coordination.k8s.io {own}/other"),
        &format!("delete leases.coordination.k8s.io {own}/regcred"),
        &format!("list leases.coordination.k8s.io {own}/"),
        "get leases.coordination.k8s.io kube-system/regcred",
        "create leases.coordination.k8s.io default/",
        // Anything else.
        &format!("get configmaps {own}/{own}"),
        "list pods /",
        &format!("create pods {own}/"),
        &format!("get deployments.apps {own}/{own}"),
        "list nodes /",
        "create clusterroles.rbac.authorization.k8s.io /",
        "bind clusterroles.rbac.authorization.k8s.io /cluster-admin",
        &format!("escalate roles.rbac.authorization.k8s.io {own}/{own}"),
        "impersonate users /admin",
        "create tokenreviews.authentication.k8s.io /",
    ]
    .map(str::to_owned)
    .into()
}

#[tokio::test]
async fn the_charts_service_account_is_refused_everything_else() {
    let it = install_for_test("controller", &[]).await;
    let own = it.release.as_str();
    for ask in needed(own, &it.secret) {
        assert!(it.may_ask(&ask).await, "{ask} should be allowed");
    }
    for ask in refused(own) {
        assert!(!it.may_ask(&ask).await, "{ask} should be refused");
    }

    // The same, through the API with the ServiceAccount's token.
    let client = it.who.client().await;
    let forbidden =
        |r: Result<_, kube::Error>| matches!(r, Err(kube::Error::Api(s)) if s.code == 403);
    assert!(forbidden(
        Api::<Secret>::all(client.clone())
            .list(&ListParams::default())
            .await
            .map(|_| ())
    ));
    assert!(forbidden(
        Api::<Secret>::namespaced(client.clone(), "default")
            .list(&ListParams::default())
            .await
            .map(|_| ())
    ));
    assert!(forbidden(
        Api::<Secret>::all(client.clone())
            .list(&ListParams::default().fields("metadata.name=other"))
            .await
            .map(|_| ())
    ));
    assert!(forbidden(
        Api::<ServiceAccount>::all(client.clone())
            .list(&ListParams::default())
            .await
            .map(|_| ())
    ));
    assert!(forbidden(
        Api::<ConfigMap>::namespaced(client.clone(), own)
            .get(&it.release)
            .await
            .map(|_| ())
    ));
    let by_name = Api::<Secret>::all(client.clone())
        .list(&ListParams::default().fields(&format!("metadata.name={}", it.secret)))
        .await;
    assert!(by_name.is_ok(), "list by name is allowed: {by_name:?}");
}

#[tokio::test]
async fn service_account_access_comes_only_with_service_accounts_in_the_config() {
    let it = install_for_test("cronjob", &["*"]).await;
    for verb in ["get", "list", "watch", "patch"] {
        assert!(
            it.may(verb, "serviceaccounts", Some("default"), None).await,
            "{verb}"
        );
    }
    for verb in ["create", "update", "delete"] {
        assert!(
            !it.may(verb, "serviceaccounts", Some("default"), Some("default"))
                .await,
            "{verb}"
        );
    }
    assert!(
        !it.may(
            "create",
            "serviceaccounts/token",
            Some("default"),
            Some("default")
        )
        .await
    );
    // cronjob mode: no Lease.
    assert!(
        !it.may(
            "create",
            "leases.coordination.k8s.io",
            Some(&it.release),
            None
        )
        .await
    );
    assert!(
        !it.may(
            "get",
            "leases.coordination.k8s.io",
            Some(&it.release),
            Some("regcred")
        )
        .await
    );
}

// ---------------------------------------------------------------------------- run

/// A `regcred run` process; killed on drop.
struct Controller {
    child: std::process::Child,
    admin_port: u16,
    log: tempfile::NamedTempFile,
}

impl Controller {
    fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.admin_port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let code = response.split_whitespace().nth(1)?.parse().ok()?;
        Some((
            code,
            response
                .split_once("\r\n\r\n")
                .map_or("", |(_, b)| b)
                .to_owned(),
        ))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn regcred_run_does_its_job_as_the_charts_service_account() {
    let it = install_for_test("controller", &["default"]).await;
    let admin = &it.admin;
    let a = it.ns("a");
    create_namespace(admin, &a, &[]).await;
    create_service_account(admin, &a, "default", &[]).await;

    // The Deployment's own command line, with the chart's Lease name; the namespace and
    // identity come as the downward API would give them.
    let deployment = Api::<Deployment>::namespaced(admin.clone(), &it.release)
        .get(&it.release)
        .await
        .unwrap();
    let args = deployment.spec.unwrap().template.spec.unwrap().containers[0]
        .args
        .clone()
        .unwrap();
    let admin_port = free_port();
    let args: Vec<String> = args
        .into_iter()
        .map(|a| match a.as_str() {
            "/etc/regcred/config.yaml" => it.config.to_str().unwrap().to_owned(),
            "0.0.0.0:8080" => format!("127.0.0.1:{admin_port}"),
            _ => a,
        })
        .collect();
    let log = tempfile::NamedTempFile::new().unwrap();
    let (mut cmd, _key) = regcred(&it.who);
    let child = cmd
        .args(&args)
        .env("POD_NAMESPACE", &it.release)
        .env("POD_NAME", format!("{}-0", it.release))
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .expect("start regcred run");
    let run = Controller {
        child,
        admin_port,
        log,
    };

    wait_for(
        "the controller to be ready",
        Duration::from_mins(1),
        || async { matches!(run.get("/readyz"), Some((200, _))).then_some(()) },
    )
    .await;
    assert!(
        get_secret(admin, &a, &it.secret).await.is_some(),
        "{}",
        run.log()
    );

    // It holds the chart's Lease, in its own namespace.
    let lease = wait_for("the Lease", Duration::from_secs(30), || async {
        Api::<Lease>::namespaced(admin.clone(), &it.release)
            .get_opt("regcred")
            .await
            .unwrap()
    })
    .await;
    assert_eq!(
        lease.spec.unwrap().holder_identity.as_deref(),
        Some(format!("{}-0", it.release).as_str())
    );

    // A new namespace, through its watch; then drift, through the secrets watch.
    let b = it.ns("b");
    create_namespace(admin, &b, &[]).await;
    create_service_account(admin, &b, "default", &[]).await;
    wait_for(
        "the secret in a new namespace",
        Duration::from_secs(30),
        || async { get_secret(admin, &b, &it.secret).await },
    )
    .await;
    wait_for(
        "the ServiceAccount reference",
        Duration::from_secs(30),
        || async {
            let sa = Api::<ServiceAccount>::namespaced(admin.clone(), &b)
                .get("default")
                .await
                .unwrap();
            sa.image_pull_secrets
                .filter(|r| r.iter().any(|r| r.name == it.secret))
        },
    )
    .await;
    Api::<Secret>::namespaced(admin.clone(), &a)
        .delete(&it.secret, &DeleteParams::default())
        .await
        .unwrap();
    wait_for(
        "the deleted secret to come back",
        Duration::from_secs(30),
        || async { get_secret(admin, &a, &it.secret).await },
    )
    .await;

    let (_, metrics) = run.get("/metrics").expect("metrics");
    let leader = metrics
        .lines()
        .find_map(|l| l.strip_prefix("regcred_leader "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert_eq!(leader, Some(1.0), "{metrics}");
    let log = run.log();
    assert!(!log.to_lowercase().contains("forbidden"), "{log}");
}

// ---------------------------------------------------------------------------- webhook

#[tokio::test]
async fn helm_install_with_the_webhook_registers_it_and_regcred_keeps_its_ca_bundle() {
    use common::webhook::{ca_bundle, create_pod, pod, pull_secrets, wait_injecting};
    let admin = stack().admin().await;
    let release = unique("regcred");
    let secret = unique("pull");
    let prefix = unique("chart");
    let port = free_port();
    let values = |timeout: u32| {
        json!({
            "config": {"secrets": [{
                "name": secret,
                "registries": [stack_registry()],
                "namespaces": {"include": [format!("{prefix}-*")]},
            }]},
            "webhook": {"enabled": true, "port": port, "timeoutSeconds": timeout,
                        "namespaceSelector": {"matchLabels": {"regcred-webhook-test": prefix}}},
        })
    };
    install(&release, &release, &values(5));
    let (_dir, config) = installed_config(&admin, &release, &release).await;
    let who = identity_of(&admin, &release, &release).await;
    // The API server accepted the chart's configuration, without a caBundle.
    assert!(ca_bundle(&admin, &release).await.is_empty());

    let run = run_like_the_deployment(&admin, &release, &who, &config).await;
    run.wait_ready(Duration::from_mins(1)).await;
    let bundle = wait_for(
        "regcred to publish its CA",
        Duration::from_secs(30),
        || async { Some(ca_bundle(&admin, &release).await).filter(|b| !b.is_empty()) },
    )
    .await;
    let tls = get_secret(&admin, &release, &format!("{release}-webhook-tls"))
        .await
        .expect("the webhook Secret");
    assert_eq!(tls.data.unwrap()["ca.crt"].0, bundle);

    // The chart's rules and selectors at work: pointed at this host, the API server calls
    // it and the pod gets the secret.
    point_webhook(
        &admin,
        &release,
        json!({"service": null,
        "url": format!("https://127.0.0.1:{port}/mutate")}),
    )
    .await;
    let ns = format!("{prefix}-a");
    create_namespace(&admin, &ns, &[("regcred-webhook-test", &prefix)]).await;
    let _ = Api::<ServiceAccount>::namespaced(admin.clone(), &ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap(),
        )
        .await;
    let image = stack().var("REGCRED_TEST_IMAGE");
    wait_injecting(&admin, &ns, image, &secret, Duration::from_secs(30)).await;
    let admitted = create_pod(&admin, &ns, &pod("app", &[image], &[], &[])).await;
    assert_eq!(pull_secrets(&admitted), vec![secret.clone()]);
    let log = run.log_text();
    assert!(!log.to_lowercase().contains("forbidden"), "{log}");

    // helm upgrade leaves the caBundle alone (its manifests never set it): with regcred
    // stopped, nobody could put it back. (The clientConfig goes back to the chart's first.)
    drop(run);
    point_webhook(&admin, &release, json!({"url": null, "service": {
        "name": format!("{release}-webhook"), "namespace": release, "path": "/mutate", "port": 443}}))
    .await;
    let file = values_file(&values(4));
    let out = helm(&[
        "upgrade",
        &release,
        chart_dir().to_str().unwrap(),
        "--namespace",
        &release,
        "-f",
        file.path().to_str().unwrap(),
    ]);
    ok("helm upgrade", &out);
    assert_eq!(ca_bundle(&admin, &release).await, bundle);

    // Name-scoped: its own configuration and Secret, nothing else.
    assert_webhook_rbac_is_name_scoped(&admin, &release, &secret, who).await;
    ok(
        "helm uninstall",
        &helm(&["uninstall", &release, "--namespace", &release]),
    );
}

/// `regcred run` as the chart's Deployment runs it — its arguments and its webhook
/// environment — acting as the chart's ServiceAccount; for the test also on 127.0.0.1 (the
/// stack has no Service routing).
async fn run_like_the_deployment(
    admin: &kube::Client,
    release: &str,
    who: &Identity,
    config: &Path,
) -> Running {
    let deployment = Api::<Deployment>::namespaced(admin.clone(), release)
        .get(release)
        .await
        .unwrap();
    let c = deployment.spec.unwrap().template.spec.unwrap().containers[0].clone();
    let (mut cmd, _key) = regcred(who);
    for var in c.env.unwrap_or_default() {
        if var.name.starts_with("REGCRED_WEBHOOK_") {
            cmd.env(&var.name, var.value.unwrap_or_default());
        }
    }
    cmd.env("POD_NAMESPACE", release);
    let args: Vec<String> = c
        .args
        .unwrap()
        .into_iter()
        .skip(1) // "run": Running adds it.
        .filter(|a| !a.starts_with("0.0.0.0:") && a != "--admin-addr")
        .map(|a| {
            if a == "/etc/regcred/config.yaml" {
                config.to_str().unwrap().to_owned()
            } else {
                a
            }
        })
        .collect();
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.extend([
        "--webhook-address",
        "127.0.0.1",
        "--webhook-host",
        "127.0.0.1",
    ]);
    Running::start(cmd, &args)
}

/// The chart's ServiceAccount may touch its own webhook configuration and Secret, and
/// nothing else of the kind.
async fn assert_webhook_rbac_is_name_scoped(
    admin: &kube::Client,
    release: &str,
    secret: &str,
    who: Identity,
) {
    let it = Installed {
        admin: admin.clone(),
        release: release.to_owned(),
        secret: secret.to_owned(),
        prefix: String::new(),
        who,
        config: PathBuf::new(),
        _config_dir: tempfile::tempdir().unwrap(),
    };
    let webhook_secret = format!("{release}-webhook-tls");
    for ask in [
        format!("get mutatingwebhookconfigurations.admissionregistration.k8s.io /{release}"),
        format!("patch mutatingwebhookconfigurations.admissionregistration.k8s.io /{release}"),
        format!("update secrets {release}/{webhook_secret}"),
        format!("get secrets {release}/{webhook_secret}"),
    ] {
        assert!(it.may_ask(&ask).await, "{ask} should be allowed");
    }
    for ask in [
        "patch mutatingwebhookconfigurations.admissionregistration.k8s.io /other".to_owned(),
        "list mutatingwebhookconfigurations.admissionregistration.k8s.io /".to_owned(),
        "create mutatingwebhookconfigurations.admissionregistration.k8s.io /".to_owned(),
        "delete mutatingwebhookconfigurations.admissionregistration.k8s.io /".to_owned() + release,
        "patch validatingwebhookconfigurations.admissionregistration.k8s.io /".to_owned() + release,
        format!("get secrets {release}/other"),
        format!("update secrets default/{webhook_secret}"),
        format!("get secrets default/{webhook_secret}"),
        format!("delete secrets {release}/{webhook_secret}"),
    ] {
        assert!(!it.may_ask(&ask).await, "{ask} should be refused");
    }
}

/// Sets the clientConfig (all but its caBundle) of the chart's webhook, as admin.
async fn point_webhook(admin: &kube::Client, name: &str, client_config: Value) {
    let patch =
        json!({"webhooks": [{"name": "pull-secrets.regcred.io", "clientConfig": client_config}]});
    Api::<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration>::all(
        admin.clone(),
    )
    .patch(
        name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Strategic(&patch),
    )
    .await
    .unwrap();
}
