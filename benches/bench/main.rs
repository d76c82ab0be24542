//! `make bench`: regcred against the usual delete-and-create cron script
//! (`bench/baseline-cron.sh`), side by side on the real stack, in a cluster of its own (a
//! private etcd and kube-apiserver with an audit log, so request counts are exact and the
//! shared stack stays small). Prints a table and writes it to `target/bench/results.md`.
//!
//! Settings (environment): `NAMESPACES` (rows 1 to 4, default 1000), `SIZES` (the sizes
//! `run` is measured at, default `1000,5000,20000`; each at least `NAMESPACES`),
//! `BASELINE_SAMPLE` (namespaces the baseline is timed over, default 200; its figures are
//! extrapolated and labelled so), `BENCH_IDLE_SECS` (default 120), `BENCH_STEADY_SECS`
//! (default 30), `BENCH_PACE` (the `--max-writes-per-second` of the paced rotation, default
//! 200), `WRITES` (requests of each kind in the cost table, default 1000; 0 skips it),
//! `BENCH_PROVIDER_CALLS` (default 50), `CHURN` (namespaces created and deleted under one
//! `regcred run`, twice, in a cluster of its own, default 10000; 0 skips it),
//! `BENCH_ONLY=churn` or `BENCH_ONLY=writes` (that measurement alone: `make bench-churn`),
//! `BENCH_PODS` (1: the pod-level table on the stack's node, default; 0: skip it),
//! `BENCH_POD_TTL` (seconds, default 90), `BENCH_POD_LIFETIMES` (default 5),
//! `BENCH_RACE_TRIES` (default 20).
#![allow(clippy::print_stdout, clippy::print_stderr)] // A benchmark reports on the terminal.
#![allow(clippy::cast_precision_loss)] // Counts far below 2^52.

mod churn;
#[path = "../../tests/common/mod.rs"]
mod common;
mod extras;
mod report;
mod rotation;
mod scale;
mod serve;
mod tools;
mod writes;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{
    Identity, PrivateCluster, Running, chart_identity, config_file, metric_sum, regcred,
    registry_alias_yaml, stack, stderr, stdout,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};
use serde_json::json;

use report::Results;

const SECRET: &str = "regcred";
/// A second name, served from nothing at the largest size.
const SECRET_B: &str = "regcred-b";
const LABEL: (&str, &str) = ("regcred.io/bench", "true");

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .map_or(default, |v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v}: not a number"))
        })
}

fn say(t0: Instant, what: &str) {
    eprintln!("[{:>6.1}s] {what}", t0.elapsed().as_secs_f64());
}

/// Everything the measurements share.
struct Bench {
    t0: Instant,
    n: usize,
    cluster: PrivateCluster,
    audit_log: PathBuf,
    admin: kube::Client,
    who: Identity,
    /// Serves `SECRET` in `bench-*` and references it from `default` ServiceAccounts.
    config: PathBuf,
    /// The same for `SECRET_B`.
    config_b: PathBuf,
    host: String,
    names: Vec<String>,
    _config_dirs: [tempfile::TempDir; 2],
}

impl Bench {
    fn say(&self, what: &str) {
        say(self.t0, what);
    }

    fn username(who: &Identity) -> String {
        format!("system:serviceaccount:{}:{}", who.namespace, who.name)
    }

    /// The API server's own CPU seconds so far.
    fn apiserver_cpu(&self) -> f64 {
        metric_sum(
            &self.cluster.apiserver_metrics(),
            "process_cpu_seconds_total",
            |_| true,
        )
    }

    fn sync(&self, ttl: Option<&str>) -> (std::process::Output, Duration, String) {
        let (mut cmd, key) = regcred(&self.who);
        if let Some(ttl) = ttl {
            stack().set_aws_key(&key, &json!({ "ttl": ttl }));
        }
        cmd.arg("sync").arg("--config").arg(&self.config);
        let start = Instant::now();
        let out = cmd.output().expect("run regcred sync");
        let took = start.elapsed();
        assert!(
            out.status.success(),
            "regcred sync failed:\n{}{}",
            stdout(&out),
            stderr(&out)
        );
        (out, took, key)
    }

    /// `regcred run` with this config and extra arguments, its AWS key behaving as `aws`
    /// says (`{"ttl": ...}`).
    fn start_run(
        &self,
        config: &std::path::Path,
        args: &[&str],
        aws: Option<serde_json::Value>,
    ) -> (Running, String) {
        let (cmd, key) = regcred(&self.who);
        if let Some(settings) = aws {
            stack().set_aws_key(&key, &settings);
        }
        let config = config.to_str().unwrap();
        let mut all = vec!["--config", config, "--lease-namespace", &self.who.namespace];
        all.extend_from_slice(args);
        (Running::start(cmd, &all), key)
    }

    /// Namespaces whose secret `name` holds a token for the host.
    async fn served(&self, name: &str) -> usize {
        let list = Api::<Secret>::all(self.admin.clone())
            .list(&ListParams::default().fields(&format!("metadata.name={name}")))
            .await
            .expect("list secrets");
        list.items
            .iter()
            .filter(|s| {
                s.data
                    .as_ref()
                    .and_then(|d| d.get(".dockerconfigjson"))
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b.0).ok())
                    .is_some_and(|d| d["auths"][&self.host]["password"].is_string())
            })
            .count()
    }
}

fn sizes(n: usize) -> Vec<usize> {
    let text = std::env::var("SIZES").unwrap_or_default();
    let text = if text.is_empty() {
        "1000,5000,20000"
    } else {
        &text
    };
    let mut sizes: Vec<usize> = text
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .unwrap_or_else(|_| panic!("SIZES={text}: not numbers"))
        })
        .collect();
    sizes.sort_unstable();
    assert!(sizes[0] >= n, "SIZES must be at least NAMESPACES");
    sizes
}

/// A config serving `name` in `bench-*`, referenced from `default` ServiceAccounts.
fn served_config(name: &str) -> (tempfile::TempDir, PathBuf) {
    config_file(&format!(
        "secrets:\n  - name: {name}\n    registries:\n{}    namespaces:\n      include: [\"bench-*\"]\n    serviceAccounts: [default]\n",
        registry_alias_yaml()
    ))
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this file too, without it.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("the benchmark runs with `make bench` (or `cargo bench --bench bench`)");
        return;
    }
    let t0 = Instant::now();
    let churn_n = usize::try_from(setting("CHURN", 10_000)).unwrap();
    let writes_n = usize::try_from(setting("WRITES", 1000)).unwrap();
    match std::env::var("BENCH_ONLY").as_deref() {
        Ok("churn") => return churn_alone(t0, churn_n).await,
        Ok("writes") => {
            let w = writes::measure(writes_n, |what| say(t0, what)).await;
            println!("{}", w.render());
            return;
        }
        _ => {}
    }
    let n = usize::try_from(setting("NAMESPACES", 1000)).unwrap();
    let sizes = sizes(n);
    let sample = usize::try_from(setting("BASELINE_SAMPLE", 200))
        .unwrap()
        .clamp(1, n);
    let idle = Duration::from_secs(setting("BENCH_IDLE_SECS", 120));
    let steady = Duration::from_secs(setting("BENCH_STEADY_SECS", 30));
    let pace = u32::try_from(setting("BENCH_PACE", 200)).unwrap();
    let provider_calls = usize::try_from(setting("BENCH_PROVIDER_CALLS", 50)).unwrap();
    assert!(
        n >= serve::DRIFT_DELETIONS,
        "NAMESPACES must be at least {}",
        serve::DRIFT_DELETIONS
    );

    let s = stack();
    let machine = tools::machine(&s.root);
    let (bench, scratch) = setup(t0, n, &sizes).await;
    let (rotation, regcred_gap) = rotation::regcred(&bench).await;
    let (baseline, baseline_gap) = rotation::baseline(&bench, sample).await;
    let served = serve::measure(&bench).await;
    let scale = scale::measure(&bench, &sizes, idle, steady, pace).await;
    // The private cluster goes with everything in it (namespaces, secrets, identities).
    drop(bench);
    drop(scratch);
    let mut results = Results {
        machine,
        n,
        rotation,
        baseline,
        regcred_gap,
        baseline_gap,
        new_namespace: Some(served.new_namespace),
        drift: Some(served.drift),
        ..Results::default()
    };
    results.provider = Some(extras::measure_provider(provider_calls));
    if setting("BENCH_PODS", 1) == 1 {
        results.pods = Some(extras::measure_pods(t0).await);
    }
    let mut table = results.render();
    table.push_str(&scale.render(&results.baseline));
    if writes_n > 0 {
        table.push_str(
            &writes::measure(writes_n, |what| say(t0, what))
                .await
                .render(),
        );
    }
    if churn_n > 0 {
        table.push_str(&churn_in_own_cluster(t0, churn_n).await.render());
    }
    println!("\n{table}");
    let out = s.root.join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("results.md"), &table).unwrap();
    say(
        t0,
        &format!("written to {}", out.join("results.md").display()),
    );
    say(t0, "done");
}

/// The bench's private cluster (with an audit log), regcred's identity and configs, and
/// the first `n` namespaces.
async fn setup(t0: Instant, n: usize, sizes: &[usize]) -> (Bench, tempfile::TempDir) {
    let s = stack();
    say(
        t0,
        &format!("N = {n}, sizes {sizes:?}; starting a private etcd and kube-apiserver"),
    );
    let scratch = tempfile::tempdir().unwrap();
    let audit_log = scratch.path().join("audit.log");
    let policy = scratch.path().join("audit-policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [\"RequestReceived\"]\nrules:\n- level: Metadata\n",
    )
    .unwrap();
    let cluster = PrivateCluster::start(&[
        format!("--audit-log-path={}", audit_log.display()),
        format!("--audit-policy-file={}", policy.display()),
        // Never rotated (the default rotates at 100 MB, which 20,000 namespaces pass, and
        // the request counts read the one file).
        "--audit-log-maxsize=100000".to_owned(),
    ]);
    let admin = cluster.admin().await;
    let who = chart_identity(&admin, &[SECRET, SECRET_B], true).await;
    cluster.point_at_me(&who);
    let host = s.var("REGCRED_TEST_REGISTRY").to_owned();
    let (dir_a, config) = served_config(SECRET);
    let (dir_b, config_b) = served_config(SECRET_B);
    let names: Vec<String> = (0..n).map(|i| format!("bench-{i:05}")).collect();
    let started = Instant::now();
    serve::create_served(&admin, &names).await;
    say(
        t0,
        &format!("created {n} namespaces in {:.1?}", started.elapsed()),
    );
    let bench = Bench {
        t0,
        n,
        cluster,
        audit_log,
        admin,
        who,
        config,
        config_b,
        host,
        names,
        _config_dirs: [dir_a, dir_b],
    };

    (bench, scratch)
}

/// The churn in a private cluster of its own, under one `regcred run`.
async fn churn_in_own_cluster(t0: Instant, n: usize) -> churn::Churn {
    let steady = Duration::from_secs(setting("BENCH_STEADY_SECS", 30));
    say(
        t0,
        &format!("churn of {n} namespaces; starting a private etcd and kube-apiserver"),
    );
    let cluster = PrivateCluster::start(&[]);
    let admin = cluster.admin().await;
    let who = chart_identity(&admin, &[SECRET], false).await;
    cluster.point_at_me(&who);
    let (_config_dir, config) = config_file(&format!(
        "secrets:\n  - name: {SECRET}\n    registries:\n{}    namespaces:\n      include: [\"churn-*\"]\n",
        registry_alias_yaml()
    ));
    let (cmd, _key) = regcred(&who);
    let mut run = Running::start(
        cmd,
        &[
            "--config",
            config.to_str().unwrap(),
            "--lease-namespace",
            &who.namespace,
        ],
    );
    run.wait_ready(Duration::from_mins(5)).await;
    let churn = churn::measure(&admin, &run, SECRET, "churn-", n, 2, steady, |what| {
        say(t0, what);
    })
    .await;
    run.signal("TERM");
    run.wait_exit(Duration::from_secs(10)).expect("run stopped");
    churn
}

/// `BENCH_ONLY=churn`: the churn alone.
async fn churn_alone(t0: Instant, n: usize) {
    let table = churn_in_own_cluster(t0, n).await.render();
    println!("{table}");
    let out = stack().root.join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("churn.md"), &table).unwrap();
    say(
        t0,
        &format!("written to {}", out.join("churn.md").display()),
    );
}
