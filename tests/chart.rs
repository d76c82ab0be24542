//! The Helm chart and the plain manifests, on the real stack: they lint and render in both
//! modes, install, and grant exactly the spec's least privilege — regcred, started with the
//! chart's ServiceAccount token and the chart's own rendered config, does its whole job, and
//! that ServiceAccount is refused everything else.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::helm::{chart_dir, helm, install, kubectl, ok, values_file};
use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, Role};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------- tools

/// Every object of a multi-document YAML stream.
fn objects(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(yaml)
        .expect("rendered YAML")
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

/// `helm template` of the chart in namespace `regcred`, release `regcred`.
fn render(values: &Value) -> Vec<Value> {
    let file = values_file(values);
    let out = helm(&[
        "template",
        "regcred",
        chart_dir().to_str().unwrap(),
        "--namespace",
        "regcred",
        "-f",
        file.path().to_str().unwrap(),
    ]);
    objects(&ok("helm template", &out))
}

fn render_fails(values: &Value) -> String {
    let file = values_file(values);
    let out = helm(&[
        "template",
        "regcred",
        chart_dir().to_str().unwrap(),
        "-f",
        file.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "rendered, but should not have");
    stderr(&out)
}

fn kinds(objects: &[Value]) -> BTreeSet<String> {
    objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap().to_owned())
        .collect()
}

#[track_caller]
fn one<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<_> = objects.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected one {kind}, got {}", found.len());
    found[0]
}

fn rules(role: &Value) -> Vec<PolicyRule> {
    serde_json::from_value(role["rules"].clone()).expect("rules")
}

fn container(pod_spec: &Value) -> &Value {
    let containers = pod_spec["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1, "one container");
    &containers[0]
}

fn env_names(container: &Value) -> BTreeSet<String> {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect()
}

fn env_var<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("env {name} missing"))
}

/// The stack's registry, as a registry entry of the config.
fn stack_registry() -> Value {
    let s = stack();
    json!({
        "host": s.var("REGCRED_TEST_REGISTRY"),
        "accountId": s.var("REGCRED_TEST_ACCOUNT"),
        "region": "us-east-1",
    })
}

fn secrets_values(secrets: &Value) -> Value {
    json!({ "config": { "secrets": secrets } })
}

/// What every pod the chart makes must look like, whatever the mode.
#[track_caller]
fn assert_hardened(pod: &Value, service_account: &str) {
    assert_eq!(pod["serviceAccountName"], service_account);
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = container(pod);
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert!(sc["capabilities"].get("add").is_none());
    // The one API token: short-lived, projected, mounted where the in-cluster config looks.
    let mounts = c["volumeMounts"].as_array().unwrap();
    let api = mounts
        .iter()
        .find(|m| m["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount")
        .expect("API token mount");
    assert_eq!(api["readOnly"], true);
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == api["name"])
        .unwrap();
    let sources = volume["projected"]["sources"].as_array().unwrap();
    assert_eq!(sources[0]["serviceAccountToken"]["expirationSeconds"], 3600);
    assert!(
        mounts
            .iter()
            .any(|m| m["mountPath"] == "/etc/regcred" && m["readOnly"] == true)
    );
}

// ---------------------------------------------------------------------------- lint and render

#[test]
fn helm_lint_passes_for_both_modes_and_catches_bad_values() {
    let chart = chart_dir();
    let chart = chart.to_str().unwrap();
    for values in [
        json!({}),
        json!({"mode": "cronjob"}),
        json!({"mode": "cronjob", "aws": {"existingSecret": {"name": "aws"}}}),
        json!({"aws": {"irsaRoleArn": "arn:aws:iam::123456789012:role/regcred"},
               "podDisruptionBudget": {"enabled": true}, "serviceMonitor": {"enabled": true},
               "prometheusRule": {"enabled": true}}),
    ] {
        let file = values_file(&values);
        let out = helm(&[
            "lint",
            "--strict",
            chart,
            "-f",
            file.path().to_str().unwrap(),
        ]);
        let text = ok(&format!("helm lint with {values}"), &out);
        assert!(
            text.contains("1 chart(s) linted, 0 chart(s) failed"),
            "{text}"
        );
    }
    // values.schema.json: values regcred could never run with fail lint (and install).
    for (values, complaint) in [
        (
            json!({"mode": "daemonset"}),
            "at '/mode': value must be one of 'controller', 'cronjob'",
        ),
        (
            secrets_values(
                &json!([{"registries": ["public.ecr.aws"], "serviceAccount": ["default"]}]),
            ),
            "additional properties 'serviceAccount' not allowed",
        ),
        (
            secrets_values(&json!([{"name": "regcred", "registries": []}])),
            "at '/config/secrets/0/registries'",
        ),
    ] {
        let file = values_file(&values);
        let out = helm(&["lint", chart, "-f", file.path().to_str().unwrap()]);
        assert!(!out.status.success(), "lint accepted {values}");
        assert!(
            stdout(&out).contains(complaint),
            "{values}: {}",
            stdout(&out)
        );
    }
}

/// The README's example configuration is valid chart values, and the chart hands it to
/// regcred unchanged.
#[test]
fn the_readmes_example_config_passes_the_schema_and_regcred() {
    let readme = std::fs::read_to_string(stack().root.join("README.md")).unwrap();
    let example = readme
        .split("```yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a YAML example in the README");
    let config: Value = serde_saphyr::from_str(example).unwrap();
    assert!(config["secrets"].is_array(), "{example}");
    let objects = render(&json!({ "config": config }));
    let text = one(&objects, "ConfigMap")["data"]["config.yaml"]
        .as_str()
        .unwrap();
    let rendered: Value = serde_saphyr::from_str(text).unwrap();
    assert_eq!(rendered, config);
    regcred::config::Config::from_yaml(Path::new("config.yaml"), text).expect("regcred accepts it");
}

#[test]
fn controller_mode_renders_a_leader_elected_hardened_deployment() {
    let objects = render(&json!({}));
    assert_eq!(
        kinds(&objects),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "Deployment",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ]
        .map(String::from)
        .into(),
    );
    let sa = one(&objects, "ServiceAccount");
    assert_eq!(sa["metadata"]["name"], "regcred");
    assert_eq!(sa["automountServiceAccountToken"], false);
    assert!(sa["metadata"].get("annotations").is_none());

    let deployment = one(&objects, "Deployment");
    assert_eq!(deployment["metadata"]["namespace"], "regcred");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_hardened(pod, "regcred");
    let c = container(pod);
    assert_eq!(c["image"], "regcred:0.1.0");
    assert_eq!(
        c["args"],
        json!([
            "run",
            "--config",
            "/etc/regcred/config.yaml",
            "--admin-addr",
            "0.0.0.0:8080",
            "--lease-name",
            "regcred"
        ])
    );
    assert_eq!(
        env_var(c, "POD_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(
        env_var(c, "POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    // `kubectl exec ... -- regcred check` finds the same config and Lease.
    assert_eq!(
        env_var(c, "REGCRED_CONFIG")["value"],
        "/etc/regcred/config.yaml"
    );
    assert_eq!(env_var(c, "REGCRED_LEASE_NAME")["value"], "regcred");
    assert_eq!(c["ports"][0]["containerPort"], 8080);
    assert_eq!(c["ports"][0]["name"], "admin");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/livez");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "admin");
    // No AWS credentials of any kind unless asked for.
    assert!(env_names(c).iter().all(|n| !n.starts_with("AWS_")));
    // The config file mounted is the ConfigMap, and regcred accepts it.
    let text = one(&objects, "ConfigMap")["data"]["config.yaml"]
        .as_str()
        .unwrap();
    let config = regcred::config::Config::from_yaml(Path::new("config.yaml"), text)
        .expect("the chart's default config is valid for regcred");
    assert_eq!(config.secret_names(), ["regcred".to_owned()].into());
    // A config change rolls the pods.
    let changed = render(&json!({"config": {"refresh": {"before": "5h"}}}));
    let checksum = |o: &[Value]| {
        one(o, "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            .clone()
    };
    assert_ne!(checksum(&objects), checksum(&changed));

    let service = one(&objects, "Service");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "admin");
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["selector"]["matchLabels"]
    );
}

#[test]
fn cronjob_mode_renders_a_cronjob_and_an_install_job_without_the_lease_role() {
    let objects = render(&json!({"mode": "cronjob"}));
    assert_eq!(
        kinds(&objects),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "CronJob",
            "Job",
            "ServiceAccount"
        ]
        .map(String::from)
        .into(),
    );
    let sync = json!(["sync", "--config", "/etc/regcred/config.yaml"]);
    let cronjob = one(&objects, "CronJob");
    assert_eq!(cronjob["spec"]["concurrencyPolicy"], "Forbid");
    let pod = &cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    assert_hardened(pod, "regcred");
    assert_eq!(container(pod)["args"], sync);
    assert_eq!(pod["restartPolicy"], "Never");
    // No Lease, so no pod name or namespace to elect with.
    assert!(!env_names(container(pod)).contains("POD_NAME"));

    let job = one(&objects, "Job");
    assert_eq!(job["metadata"]["name"], "regcred-sync-1");
    let pod = &job["spec"]["template"]["spec"];
    assert_hardened(pod, "regcred");
    assert_eq!(container(pod)["args"], sync);

    let without = render(&json!({"mode": "cronjob", "cronjob": {"syncOnInstall": false}}));
    assert!(!kinds(&without).contains("Job"));
}

#[test]
fn aws_auth_irsa_web_identity_and_static_keys() {
    let arn = "arn:aws:iam::123456789012:role/regcred";
    let irsa = render(&json!({"aws": {"irsaRoleArn": arn}}));
    assert_eq!(
        one(&irsa, "ServiceAccount")["metadata"]["annotations"]["eks.amazonaws.com/role-arn"],
        arn
    );

    let oidc = render(&json!({"aws": {"webIdentity": {"roleArn": arn}}}));
    let pod = &one(&oidc, "Deployment")["spec"]["template"]["spec"];
    let c = container(pod);
    assert_eq!(env_var(c, "AWS_ROLE_ARN")["value"], arn);
    let token_file = env_var(c, "AWS_WEB_IDENTITY_TOKEN_FILE")["value"]
        .as_str()
        .unwrap();
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| token_file.starts_with(m["mountPath"].as_str().unwrap()))
        .expect("the web identity token is mounted");
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert_eq!(
        volume["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "sts.amazonaws.com"
    );

    let keys = render(&json!({"mode": "cronjob",
        "aws": {"existingSecret": {"name": "aws-keys", "sessionTokenKey": "token"}}}));
    for kind in ["CronJob", "Job"] {
        let o = one(&keys, kind);
        let pod = if kind == "CronJob" {
            &o["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        } else {
            &o["spec"]["template"]["spec"]
        };
        let c = container(pod);
        for (var, key) in [
            ("AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"),
            ("AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY"),
            ("AWS_SESSION_TOKEN", "token"),
        ] {
            let r = &env_var(c, var)["valueFrom"]["secretKeyRef"];
            assert_eq!(r["name"], "aws-keys", "{kind} {var}");
            assert_eq!(r["key"], key, "{kind} {var}");
        }
    }

    let both = render_fails(&json!({"aws": {"irsaRoleArn": arn,
        "existingSecret": {"name": "aws-keys"}}}));
    assert!(both.contains("at most one of"), "{both}");
    let none = render_fails(&secrets_values(&json!([{"name": "regcred"}])));
    assert!(none.contains("missing property 'registries'"), "{none}");
}

#[test]
fn optional_objects_render_only_when_enabled() {
    let objects = render(&json!({
        "podDisruptionBudget": {"enabled": true},
        "serviceMonitor": {"enabled": true},
        "prometheusRule": {"enabled": true},
    }));
    let pdb = one(&objects, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    let monitor = one(&objects, "ServiceMonitor");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "admin");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    let rule = one(&objects, "PrometheusRule").to_string();
    for metric in [
        "regcred_token_expiry_timestamp_seconds",
        "regcred_secret_writes_total{result=\\\"failed\\\"}",
        "regcred_secret_writes_total{result=\\\"foreign\\\"}",
        "regcred_leader",
    ] {
        assert!(rule.contains(metric), "{metric} not alerted on: {rule}");
    }
    let defaults = kinds(&render(&json!({})));
    for kind in ["PodDisruptionBudget", "ServiceMonitor", "PrometheusRule"] {
        assert!(!defaults.contains(kind), "{kind} rendered by default");
    }
}

// ---------------------------------------------------------------------------- RBAC

/// The chart's RBAC is the harness's `chart_cluster_rules`/`chart_namespace_rules` — the
/// rules every other integration test runs regcred under — so the two cannot drift.
#[test]
fn the_charts_rbac_is_the_harness_least_privilege() {
    let cases = [
        (json!({}), vec!["regcred"], false, "regcred"),
        (
            json!({
                "config": {"secrets": [
                    {"name": "regcred", "registries": ["public.ecr.aws"], "serviceAccounts": ["default"]},
                    {"name": "ecr-eu", "registries": ["210987654321.dkr.ecr.eu-west-1.amazonaws.com"]},
                    {"registries": ["public.ecr.aws"], "namespaces": {"include": ["x-*"]}},
                ]},
                "leaderElection": {"leaseName": "regcred-lease"},
            }),
            vec!["ecr-eu", "regcred"],
            true,
            "regcred-lease",
        ),
        (
            secrets_values(
                &json!([{"name": "a", "registries": ["public.ecr.aws"], "serviceAccounts": []}]),
            ),
            vec!["a"],
            false,
            "regcred",
        ),
    ];
    for (values, names, patch_sas, lease) in cases {
        let objects = render(&values);
        assert_eq!(
            rules(one(&objects, "ClusterRole")),
            chart_cluster_rules(&names, patch_sas),
            "{values}"
        );
        assert_eq!(
            rules(one(&objects, "Role")),
            chart_namespace_rules(lease),
            "{values}"
        );
        let mut cron = values.clone();
        cron["mode"] = json!("cronjob");
        let cron = render(&cron);
        assert_eq!(
            rules(one(&cron, "ClusterRole")),
            chart_cluster_rules(&names, patch_sas)
        );
        assert!(
            !kinds(&cron).contains("Role"),
            "a Lease Role in cronjob mode"
        );
    }
}

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

// ---------------------------------------------------------------------------- deploy/

#[test]
fn deploy_is_in_step_with_the_chart() {
    let out = Command::new(stack().root.join("scripts/render-deploy.sh"))
        .arg("--check")
        .env("REGCRED_TEST_HELM", stack().var("REGCRED_TEST_HELM"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

/// An object's identity: kind, namespace, name.
fn key(o: &Value) -> (String, String, String) {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (
        s(&o["kind"]),
        s(&o["metadata"]["namespace"]),
        s(&o["metadata"]["name"]),
    )
}

#[test]
fn kubectl_apply_k_deploy_applies_the_charts_default_render() {
    // What kustomize makes of deploy/ is the chart's default render, plus the Namespace.
    let built = objects(&ok(
        "kubectl kustomize deploy/",
        &kubectl(&["kustomize", "deploy/"]),
    ));
    let mut expected = render(&json!({}));
    expected.push(json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "regcred", "labels": {"app.kubernetes.io/part-of": "regcred"}},
    }));
    let by_key = |objects: Vec<Value>| -> BTreeMap<_, _> {
        objects.into_iter().map(|o| (key(&o), o)).collect()
    };
    let (built, expected) = (by_key(built), by_key(expected));
    assert_eq!(
        built.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (k, o) in &expected {
        assert_eq!(&built[k], o, "{k:?} differs from the chart's render");
    }
    assert!(
        !built
            .keys()
            .any(|(kind, _, _)| kind == "CredentialProviderConfig")
    );

    // And it applies, twice (the second time changes nothing).
    let first = ok(
        "kubectl apply -k deploy/",
        &kubectl(&["apply", "-k", "deploy/"]),
    );
    assert!(first.contains("deployment.apps/regcred"), "{first}");
    let second = ok(
        "kubectl apply -k deploy/",
        &kubectl(&["apply", "-k", "deploy/"]),
    );
    for line in second.lines() {
        assert!(line.ends_with("unchanged"), "{second}");
    }
    let live = ok(
        "kubectl get -k deploy/",
        &kubectl(&["get", "-k", "deploy/", "-o", "json"]),
    );
    let live: Value = serde_json::from_str(&live).unwrap();
    let live = by_key(live["items"].as_array().unwrap().clone());
    assert_eq!(
        live.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    let rules = |o: &Value| o["rules"].clone();
    let cluster_role = (
        "ClusterRole".to_owned(),
        String::new(),
        "regcred".to_owned(),
    );
    assert_eq!(rules(&live[&cluster_role]), rules(&expected[&cluster_role]));
    let deployment = (
        "Deployment".to_owned(),
        "regcred".to_owned(),
        "regcred".to_owned(),
    );
    let pod = |o: &Value| o["spec"]["template"]["spec"]["containers"][0]["args"].clone();
    assert_eq!(pod(&live[&deployment]), pod(&expected[&deployment]));
    // Its pods would pull an image nobody built: remove it again.
    ok(
        "kubectl delete -k deploy/",
        &kubectl(&["delete", "-k", "deploy/", "--wait=false"]),
    );
}

// ---------------------------------------------------------------------------- webhook

fn webhook_values(extra: &Value) -> Value {
    let mut values = json!({"webhook": {"enabled": true}});
    if let (Some(v), Some(extra)) = (values.as_object_mut(), extra.as_object()) {
        for (k, x) in extra {
            if k == "webhook" {
                for (wk, wv) in x.as_object().unwrap() {
                    v["webhook"][wk] = wv.clone();
                }
            } else {
                v.insert(k.clone(), x.clone());
            }
        }
    }
    values
}

fn named<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn the_webhook_renders_only_when_enabled_fail_open_and_out_of_the_system_namespaces() {
    let off = render(&json!({}));
    assert!(!kinds(&off).contains("MutatingWebhookConfiguration"));
    assert!(
        !off.iter()
            .any(|o| o["metadata"]["name"] == "regcred-webhook")
    );
    assert!(
        !one(&off, "ConfigMap")["data"]["config.yaml"]
            .as_str()
            .unwrap()
            .contains("webhook")
    );

    let objects = render(&webhook_values(&json!({
        "webhook": {"namespaceSelector": {"matchLabels": {"team": "payments"}}},
    })));
    let config = one(&objects, "MutatingWebhookConfiguration");
    assert_eq!(config["metadata"]["name"], "regcred");
    let hook = &config["webhooks"][0];
    assert_eq!(hook["failurePolicy"], "Ignore");
    assert_eq!(hook["sideEffects"], "None");
    assert_eq!(hook["timeoutSeconds"], 5);
    assert_eq!(hook["reinvocationPolicy"], "IfNeeded");
    assert_eq!(hook["admissionReviewVersions"], json!(["v1"]));
    assert_eq!(
        hook["rules"],
        json!([{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                "resources": ["pods"], "scope": "Namespaced"}])
    );
    assert_eq!(
        hook["clientConfig"],
        json!({"service": {"name": "regcred-webhook", "namespace": "regcred",
                           "path": "/mutate", "port": 443}}),
        "no caBundle: regcred fills it and helm must not take it back"
    );
    assert_eq!(
        hook["namespaceSelector"],
        json!({"matchLabels": {"team": "payments"}, "matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["regcred", "kube-system"]},
            {"key": "regcred.io/inject", "operator": "NotIn", "values": ["false"]}]})
    );
    assert_eq!(
        hook["objectSelector"],
        json!({"matchExpressions": [{"key": "regcred.io/inject", "operator": "NotIn", "values": ["false"]}]})
    );
    let service = named(&objects, "Service", "regcred-webhook");
    assert_eq!(
        service["spec"]["ports"],
        json!([{"name": "webhook", "port": 443, "targetPort": "webhook", "protocol": "TCP"}])
    );
    let deployment = one(&objects, "Deployment");
    let c = container(&deployment["spec"]["template"]["spec"]);
    assert!(
        c["ports"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "webhook", "containerPort": 9443, "protocol": "TCP"}))
    );
    for (var, value) in [
        ("REGCRED_WEBHOOK_CONFIGURATION", "regcred"),
        ("REGCRED_WEBHOOK_SERVICE", "regcred-webhook"),
        ("REGCRED_WEBHOOK_SECRET", "regcred-webhook-tls"),
        ("REGCRED_WEBHOOK_CERT_LIFETIME", "8760h"),
        ("REGCRED_WEBHOOK_SHUTDOWN_DELAY", "5s"),
    ] {
        assert_eq!(env_var(c, var)["value"], value, "{var}");
    }
    // The chart writes webhook.enabled and webhook.port into regcred's file, which regcred
    // accepts.
    let text = one(&objects, "ConfigMap")["data"]["config.yaml"]
        .as_str()
        .unwrap();
    let file: Value = serde_saphyr::from_str(text).unwrap();
    assert_eq!(file["webhook"], json!({"enabled": true, "port": 9443}));
    let parsed = regcred::config::Config::from_yaml(Path::new("config.yaml"), text).unwrap();
    assert!(parsed.webhook.enabled);
    // Hardened as ever, and the drain fits in the grace period.
    assert_hardened(&deployment["spec"]["template"]["spec"], "regcred");
    assert!(
        deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"].as_u64()
            > Some(5 + 4)
    );

    // A CronJob cannot answer the API server.
    let err = render_fails(&webhook_values(&json!({"mode": "cronjob"})));
    assert!(
        err.contains("webhook.enabled needs mode: controller"),
        "{err}"
    );
    // The file's webhook section is the chart's to write.
    let err = render_fails(
        &json!({"config": {"secrets": [{"registries": ["public.ecr.aws"]}],
                                              "webhook": {"enabled": true}}}),
    );
    assert!(err.contains("webhook"), "{err}");
}

#[test]
fn with_cert_manager_the_chart_asks_it_for_the_certificate_and_grants_nothing_for_one() {
    let objects = render(&webhook_values(
        &json!({"webhook": {"certManager": {"enabled": true}}}),
    ));
    let config = one(&objects, "MutatingWebhookConfiguration");
    assert_eq!(
        config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        "regcred/regcred-webhook"
    );
    let cert = one(&objects, "Certificate");
    assert_eq!(cert["spec"]["secretName"], "regcred-webhook-cert");
    assert_eq!(
        cert["spec"]["dnsNames"],
        json!(["regcred-webhook.regcred.svc"])
    );
    assert_eq!(cert["spec"]["issuerRef"]["name"], "regcred-webhook");
    assert!(one(&objects, "Issuer")["spec"]["selfSigned"].is_object());
    let deployment = one(&objects, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let c = container(pod);
    assert_eq!(
        env_var(c, "REGCRED_WEBHOOK_CERT_DIR")["value"],
        "/var/run/secrets/regcred/webhook-tls"
    );
    assert!(!env_names(c).contains("REGCRED_WEBHOOK_SECRET"));
    assert!(pod["volumes"].as_array().unwrap().contains(
        &json!({"name": "webhook-tls", "secret": {"secretName": "regcred-webhook-cert"}})
    ));
    // regcred writes neither a Secret nor the caBundle: the usual rules, nothing more.
    assert_eq!(
        rules(one(&objects, "ClusterRole")),
        chart_cluster_rules(&["regcred"], false)
    );
    assert_eq!(
        rules(one(&objects, "Role")),
        chart_namespace_rules("regcred")
    );
    // An issuer of one's own.
    let objects = render(&webhook_values(&json!({"webhook": {"certManager": {
        "enabled": true, "issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}}}})));
    assert!(!kinds(&objects).contains("Issuer"));
    assert_eq!(
        one(&objects, "Certificate")["spec"]["issuerRef"],
        json!({"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"})
    );
    let file = values_file(&webhook_values(
        &json!({"webhook": {"certManager": {"enabled": true}}}),
    ));
    let out = helm(&[
        "lint",
        "--strict",
        chart_dir().to_str().unwrap(),
        "-f",
        file.path().to_str().unwrap(),
    ]);
    ok("helm lint with the webhook and cert-manager", &out);
}

/// With the webhook on, the chart's RBAC is the harness's plus the webhook's two
/// name-scoped rules — what every webhook test runs regcred under.
#[test]
fn the_charts_webhook_rbac_is_the_harness_least_privilege() {
    let objects = render(&webhook_values(&json!({})));
    let mut cluster = chart_cluster_rules(&["regcred"], false);
    cluster.extend(common::webhook::chart_webhook_cluster_rules("regcred"));
    assert_eq!(rules(one(&objects, "ClusterRole")), cluster);
    let mut namespaced = chart_namespace_rules("regcred");
    namespaced.extend(common::webhook::chart_webhook_namespace_rules(
        "regcred-webhook-tls",
    ));
    assert_eq!(rules(one(&objects, "Role")), namespaced);
}

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
