//! Pods pulling from the private registry on the stack's node while tokens expire, one
//! way of keeping credentials per scenario: regcred's controller and CronJob installed by
//! the chart from regcred's image, the kubelet asking regcred as its credential provider,
//! and the usual delete-and-create cron script. `tests/cluster.rs` asserts on the
//! outcomes; `make bench` puts them side by side. Scenarios block on helm and scripts with
//! `block_in_place`: run them as tasks of a multi-thread runtime.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use serde_json::{Value, json};

use super::helm::{helm, install};
use super::pods::{Tally, app_pod, pull_failure_events, stream_pods};
use super::{create_namespace, free_port, stack, stderr, unique, wait_for};

/// The pull secret the cron script writes. regcred's scenarios each write their own name:
/// an install deletes the secrets of its name it no longer selects, so two installs that
/// share a name and split the namespaces undo each other's work.
pub const SECRET: &str = "regcred";

/// How long tokens live and how long pods are streamed.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// The lifetime of every token the fake AWS issues to the scenario.
    pub ttl: Duration,
    /// Pods are created for this many token lifetimes.
    pub lifetimes: u32,
    /// One new pod this often.
    pub every: Duration,
}

impl Settings {
    pub fn during(&self) -> Duration {
        self.ttl * self.lifetimes
    }

    fn ttl_json(&self) -> Value {
        json!({ "ttl": self.ttl.as_secs() })
    }
}

/// What one scenario saw.
#[derive(Debug)]
pub struct Outcome {
    pub mode: &'static str,
    pub tally: Tally,
    /// The kubelet's pull-failure Events in the scenario's namespaces.
    pub events: i32,
    /// Token calls the fake AWS counted for the scenario's credentials.
    pub token_calls: u64,
    pub namespaces: Vec<String>,
}

impl Outcome {
    /// One line for logs and reports.
    pub fn line(&self) -> String {
        let t = &self.tally;
        format!(
            "{}: {} pulls, {} running, {} failed, {} undecided, {} pull-failure events, {} token calls{}",
            self.mode,
            t.attempted,
            t.running,
            t.failed,
            t.undecided,
            self.events,
            self.token_calls,
            t.examples
                .first()
                .map(|e| format!("; e.g. {e}"))
                .unwrap_or_default()
        )
    }
}

/// A fresh AWS access key for a scenario, its tokens living `settings.ttl`.
pub fn aws_key(prefix: &str, settings: &Settings) -> String {
    let key = unique(prefix).replace('-', "").to_uppercase();
    stack().set_aws_key(&key, &settings.ttl_json());
    key
}

pub async fn namespaces(admin: &kube::Client, prefix: &str, n: usize) -> Vec<String> {
    let mut names = Vec::new();
    for i in 1..=n {
        let ns = format!("{prefix}-{i}");
        create_namespace(admin, &ns, &[]).await;
        names.push(ns);
    }
    names
}

/// Waits until `namespace`'s `service_account` lists `secret` (regcred patched it).
pub async fn wait_patched(
    admin: &kube::Client,
    namespace: &str,
    service_account: &str,
    secret: &str,
    timeout: Duration,
) {
    let sas = Api::<ServiceAccount>::namespaced(admin.clone(), namespace);
    wait_for(
        &format!("{namespace}/{service_account} to list {secret}"),
        timeout,
        || async {
            let sa = sas.get_opt(service_account).await.ok()??;
            sa.image_pull_secrets?
                .iter()
                .any(|r| r.name == secret)
                .then_some(())
        },
    )
    .await;
}

/// The stack's registry door for its account, as a regcred registry entry.
fn alias() -> Value {
    let s = stack();
    json!({"host": s.var("REGCRED_TEST_REGISTRY"), "accountId": s.var("REGCRED_TEST_ACCOUNT"), "region": "us-east-1"})
}

fn private_image() -> String {
    stack().var("REGCRED_TEST_IMAGE").to_owned()
}

/// Chart values that run regcred's image on the stack's node, as a user of a cluster
/// without kube-proxy would set them, with AWS keys from `aws-keys` and the fake AWS.
pub fn node_values(mode: &str, secret: &str, include: &str, service_accounts: &[&str]) -> Value {
    let s = stack();
    let image = super::image::on_the_node();
    let (repository, tag) = image.rsplit_once(':').unwrap();
    let api = s
        .var("REGCRED_TEST_APISERVER")
        .trim_start_matches("https://")
        .to_owned();
    let (host, port) = api.rsplit_once(':').unwrap();
    json!({
        "mode": mode,
        "replicaCount": 1,
        "image": {"repository": repository, "tag": tag, "pullPolicy": "IfNotPresent"},
        "hostNetwork": true,
        "apiServer": {"host": host, "port": port.parse::<u16>().unwrap()},
        "admin": {"port": free_port()},
        "aws": {"region": "us-east-1", "existingSecret": {"name": "aws-keys"}},
        "extraEnv": [
            {"name": "AWS_ENDPOINT_URL", "value": s.var("AWS_ENDPOINT_URL")},
            {"name": "AWS_ENDPOINT_URL_ECR_PUBLIC", "value": s.var("AWS_ENDPOINT_URL_ECR_PUBLIC")},
            {"name": "AWS_EC2_METADATA_DISABLED", "value": "true"},
        ],
        "config": {"secrets": [{
            "name": secret,
            "registries": [alias()],
            "namespaces": {"include": [include]},
            "serviceAccounts": service_accounts,
        }]},
    })
}

/// A release of the chart on the node; uninstalled (and its namespace deleted) on drop.
#[derive(Debug)]
pub struct Release {
    pub name: String,
    pub key: String,
}

impl Release {
    /// Creates the release namespace with the AWS key's Secret, then `helm install`s.
    pub async fn install(admin: &kube::Client, prefix: &str, key: &str, values: &Value) -> Self {
        let name = unique(prefix);
        create_namespace(admin, &name, &[]).await;
        let keys = Secret {
            metadata: ObjectMeta {
                name: Some("aws-keys".into()),
                ..ObjectMeta::default()
            },
            string_data: Some(
                [
                    ("AWS_ACCESS_KEY_ID".to_owned(), key.to_owned()),
                    ("AWS_SECRET_ACCESS_KEY".to_owned(), "testing".to_owned()),
                ]
                .into(),
            ),
            ..Secret::default()
        };
        Api::<Secret>::namespaced(admin.clone(), &name)
            .create(&PostParams::default(), &keys)
            .await
            .expect("create aws-keys");
        tokio::task::block_in_place(|| install(&name, &name, values));
        Self {
            name,
            key: key.to_owned(),
        }
    }

    /// Waits until the controller's Deployment has a Ready replica.
    pub async fn wait_available(&self, admin: &kube::Client, timeout: Duration) {
        let deployments = Api::<Deployment>::namespaced(admin.clone(), &self.name);
        wait_for("regcred's Deployment to be available", timeout, || async {
            let d = deployments.get_opt(&self.name).await.ok()??;
            (d.status?.ready_replicas? >= 1).then_some(())
        })
        .await;
    }

    /// Waits until regcred's pod holds the Lease (it leads), and returns the pod's name.
    pub async fn wait_leading(&self, admin: &kube::Client, timeout: Duration) -> String {
        use k8s_openapi::api::coordination::v1::Lease;
        use k8s_openapi::api::core::v1::Pod;
        let leases = Api::<Lease>::namespaced(admin.clone(), &self.name);
        let pods = Api::<Pod>::namespaced(admin.clone(), &self.name);
        wait_for("regcred's pod to hold the Lease", timeout, || async {
            let holder = leases
                .get_opt("regcred")
                .await
                .ok()??
                .spec?
                .holder_identity?;
            let pod = pods.get_opt(&holder).await.ok()??;
            (pod.spec?.node_name? == super::pods::node()).then_some(holder)
        })
        .await
    }

    /// Waits until a Job of the release succeeded (the chart's install-time sync).
    pub async fn wait_job_succeeded(&self, admin: &kube::Client, timeout: Duration) {
        let jobs = Api::<Job>::namespaced(admin.clone(), &self.name);
        wait_for("the chart's sync Job to succeed", timeout, || async {
            let list = jobs.list(&kube::api::ListParams::default()).await.ok()?;
            list.items
                .iter()
                .any(|j| j.status.as_ref().and_then(|s| s.succeeded).unwrap_or(0) >= 1)
                .then_some(())
        })
        .await;
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = helm(&[
            "uninstall",
            &self.name,
            "--namespace",
            &self.name,
            "--wait=false",
        ]);
        let _ = super::helm::kubectl(&["delete", "namespace", &self.name, "--wait=false"]);
    }
}

async fn delete_namespaces(admin: &kube::Client, names: &[String]) {
    let api = Api::<Namespace>::all(admin.clone());
    for n in names {
        let _ = api.delete(n, &DeleteParams::default()).await;
    }
}

/// Streams pods `<tag>-<i>` of `image` naming `secrets` (none: the `default`
/// ServiceAccount's, or the kubelet's plugin) through `names` for the scenario's time.
async fn stream(
    admin: &kube::Client,
    names: Arc<Mutex<Vec<String>>>,
    settings: &Settings,
    tag: &'static str,
    image: &str,
    secrets: &[&str],
) -> Tally {
    stream_pods(
        admin,
        names,
        settings.every,
        settings.during(),
        Duration::from_mins(1),
        |i| app_pod(&format!("{tag}-{i}"), image, None, secrets),
    )
    .await
}

/// The outcome of a scenario: its tally, the kubelet's pull-failure Events in its
/// namespaces, and its token calls.
async fn outcome(
    admin: &kube::Client,
    mode: &'static str,
    tally: Tally,
    namespaces: Vec<String>,
    token_calls: u64,
) -> Outcome {
    Outcome {
        mode,
        events: pull_failure_events(admin, &namespaces).await,
        token_calls,
        tally,
        namespaces,
    }
}

/// a. `regcred run`, installed by the chart, patching every namespace's `default`
/// ServiceAccount; a namespace created a third of the way through gets pods too.
pub async fn controller(settings: Settings) -> (Outcome, Vec<String>) {
    let admin = stack().admin().await;
    let prefix = unique("rot-ctl");
    let key = aws_key("AKIAROTCTL", &settings);
    let mut names = namespaces(&admin, &prefix, 2).await;
    let secret = "pull-ctl";
    let values = node_values("controller", secret, &format!("{prefix}-*"), &["default"]);
    let release = Release::install(&admin, "regcred-ctl", &key, &values).await;
    release.wait_available(&admin, Duration::from_mins(3)).await;
    release.wait_leading(&admin, Duration::from_mins(1)).await;
    for ns in &names {
        wait_patched(&admin, ns, "default", secret, Duration::from_mins(1)).await;
    }
    let shared = Arc::new(Mutex::new(names.clone()));
    let later = format!("{prefix}-late");
    let adder = {
        let (admin, shared, later) = (admin.clone(), shared.clone(), later.clone());
        let wait = settings.during() / 3;
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            create_namespace(&admin, &later, &[]).await;
            // No manual step: the controller-manager makes `default`, regcred patches it.
            wait_patched(&admin, &later, "default", secret, Duration::from_secs(30)).await;
            shared.lock().unwrap().push(later);
        })
    };
    let tally = stream(&admin, shared, &settings, "ctl", &private_image(), &[]).await;
    adder.await.unwrap();
    names.push(later);
    let mode = "regcred controller (chart, `run`)";
    let measured = outcome(
        &admin,
        mode,
        tally,
        names.clone(),
        stack().token_calls(&key),
    )
    .await;
    drop(release);
    delete_namespaces(&admin, &names).await;
    (measured, names)
}

/// b. `regcred sync` as the chart's CronJob, every minute.
pub async fn cronjob(settings: Settings) -> Outcome {
    let admin = stack().admin().await;
    let prefix = unique("rot-cron");
    let key = aws_key("AKIAROTCRON", &settings);
    let names = namespaces(&admin, &prefix, 2).await;
    let secret = "pull-cron";
    let mut values = node_values("cronjob", secret, &format!("{prefix}-*"), &["default"]);
    values["cronjob"] = json!({"schedule": "* * * * *", "successfulJobsHistoryLimit": 1});
    let release = Release::install(&admin, "regcred-cron", &key, &values).await;
    release
        .wait_job_succeeded(&admin, Duration::from_mins(3))
        .await;
    for ns in &names {
        wait_patched(&admin, ns, "default", secret, Duration::from_mins(1)).await;
    }
    let shared = Arc::new(Mutex::new(names.clone()));
    let tally = stream(&admin, shared, &settings, "cron", &private_image(), &[]).await;
    let mode = "regcred CronJob (chart, `sync` every minute)";
    let measured = outcome(
        &admin,
        mode,
        tally,
        names.clone(),
        stack().token_calls(&key),
    )
    .await;
    drop(release);
    delete_namespaces(&admin, &names).await;
    measured
}

/// c. The kubelet asks `regcred credential-provider` (the shipped example config) for an
/// image named by an ECR host; pods carry no pull secret at all.
pub async fn credential_provider(settings: Settings) -> Outcome {
    let admin = stack().admin().await;
    let s = stack();
    // `up` gives the node's key short-lived tokens, so no long-lived one sits in the
    // kubelet's cache; the scenario's lifetime from now on.
    let key = s.var("REGCRED_TEST_NODE_AWS_KEY").to_owned();
    s.set_aws_key(&key, &settings.ttl_json());
    let before = s.token_calls(&key);
    let names = namespaces(&admin, &unique("rot-kubelet"), 1).await;
    let image = format!(
        "{}/{}",
        s.var("REGCRED_TEST_ECR_HOST"),
        s.var("REGCRED_TEST_IMAGE_PATH")
    );
    let shared = Arc::new(Mutex::new(names.clone()));
    let tally = stream(&admin, shared, &settings, "kubelet", &image, &[]).await;
    let mode = "regcred credential-provider (kubelet plugin)";
    let calls = s.token_calls(&key) - before;
    let measured = outcome(&admin, mode, tally, names.clone(), calls).await;
    delete_namespaces(&admin, &names).await;
    measured
}

/// Runs `bench/baseline-cron.sh` once for these namespaces, as the usual cron job does.
fn run_baseline(key: &str, names: &[String]) {
    let s = stack();
    let out = Command::new(s.root.join("bench/baseline-cron.sh"))
        .args([SECRET, s.var("REGCRED_TEST_REGISTRY")])
        .args(names)
        .env("KUBECTL", s.var("REGCRED_TEST_KUBECTL"))
        .env("KUBECONFIG", s.var("KUBECONFIG"))
        .env("AWS", Path::new(s.var("REGCRED_TEST_VENV")).join("bin/aws"))
        .env("AWS_ACCESS_KEY_ID", key)
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", s.var("AWS_ENDPOINT_URL"))
        .output()
        .expect("run bench/baseline-cron.sh");
    assert!(out.status.success(), "baseline-cron.sh: {}", stderr(&out));
}

/// d. The usual cron script, run every `interval` (longer than a token's life): pods name
/// the secret in `imagePullSecrets`, as such setups do.
pub async fn baseline(settings: Settings, interval: Duration) -> Outcome {
    let admin = stack().admin().await;
    let key = aws_key("AKIAROTBASE", &settings);
    let names = namespaces(&admin, &unique("rot-cron-script"), 2).await;
    tokio::task::block_in_place(|| run_baseline(&key, &names));
    let stop = Instant::now() + settings.during();
    let runner = {
        let (key, names) = (key.clone(), names.clone());
        tokio::task::spawn_blocking(move || {
            while Instant::now() + interval < stop {
                std::thread::sleep(interval);
                run_baseline(&key, &names);
            }
        })
    };
    let image = private_image();
    let shared = Arc::new(Mutex::new(names.clone()));
    let tally = stream(&admin, shared, &settings, "script", &image, &[SECRET]).await;
    runner.await.unwrap();
    let mode = "usual cron script (delete + create)";
    let measured = outcome(
        &admin,
        mode,
        tally,
        names.clone(),
        stack().token_calls(&key),
    )
    .await;
    delete_namespaces(&admin, &names).await;
    measured
}
