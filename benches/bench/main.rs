//! `make bench`: regcred against the usual delete-and-create cron script
//! (`bench/baseline-cron.sh`), side by side on the real stack, in a cluster of its own (a
//! private etcd and kube-apiserver with an audit log, so request counts are exact and the
//! shared stack stays small). Prints a table and writes it to `target/bench/results.md`.
//!
//! Settings (environment): `NAMESPACES` (default 1000), `BASELINE_SAMPLE` (namespaces the
//! baseline is timed over, default 200; when below `NAMESPACES` its figures are
//! extrapolated and labelled so), `BENCH_IDLE_SECS` (default 120), `BENCH_STEADY_SECS`
//! (default 30), `BENCH_PROVIDER_CALLS` (default 50), `CHURN` (namespaces created and deleted
//! under one `regcred run` to show its bookkeeping follows them, default 10000; 0 skips it),
//! `BENCH_ONLY=churn` (that measurement alone, in a cluster of its own: `make bench-churn`),
//! `BENCH_PODS` (1: the pod-level table on the stack's node, default; 0: skip it),
//! `BENCH_POD_TTL` (seconds, default 90), `BENCH_POD_LIFETIMES` (default 5),
//! `BENCH_RACE_TRIES` (default 20).
#![allow(clippy::print_stdout, clippy::print_stderr)] // A benchmark reports on the terminal.
#![allow(clippy::cast_precision_loss)] // Counts far below 2^52.

mod churn;
#[path = "../../tests/common/mod.rs"]
mod common;
mod report;
mod tools;
mod writes;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    Identity, PrivateCluster, Running, chart_identity, config_file, create_namespace,
    create_namespaces_at_once, identity, metric_sum, regcred, registry_alias_yaml, stack, stderr,
    stdout, unique, wait_for,
};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::json;

use report::{Baseline, Memory, Pods, Provider, Results, Rotation};
use tools::{Poller, ProcStats, SecretWatch, audit_requests, percentiles, proc_stats};

const SECRET: &str = "regcred";
const LABEL: (&str, &str) = ("regcred.io/bench", "true");
/// New namespaces created at a steady rate, and how fast.
const NEW_NAMESPACES: usize = 200;
const NEW_NAMESPACE_INTERVAL: Duration = Duration::from_millis(100);
const DRIFT_DELETIONS: usize = 100;

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
    config: PathBuf,
    host: String,
    names: Vec<String>,
    _config_dir: tempfile::TempDir,
}

impl Bench {
    fn say(&self, what: &str) {
        say(self.t0, what);
    }

    fn username(who: &Identity) -> String {
        format!("system:serviceaccount:{}:{}", who.namespace, who.name)
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

    fn start_run(&self) -> (Running, String) {
        let (cmd, key) = regcred(&self.who);
        let config = self.config.to_str().unwrap();
        let run = Running::start(
            cmd,
            &["--config", config, "--lease-namespace", &self.who.namespace],
        );
        (run, key)
    }

    /// Namespaces whose secret holds a token for the host.
    async fn served(&self) -> usize {
        let list = Api::<Secret>::all(self.admin.clone())
            .list(&ListParams::default().fields(&format!("metadata.name={SECRET}")))
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

#[tokio::main]
#[allow(clippy::too_many_lines)] // The measurements in order.
async fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this file too, without it.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("the benchmark runs with `make bench` (or `cargo bench --bench bench`)");
        return;
    }
    let t0 = Instant::now();
    let churn_n = usize::try_from(setting("CHURN", 10_000)).unwrap();
    match std::env::var("BENCH_ONLY").as_deref() {
        Ok("churn") => return churn_alone(t0, churn_n).await,
        Ok("writes") => {
            let w = writes::measure(usize::try_from(setting("WRITES", 1000)).unwrap(), |what| {
                say(t0, what);
            })
            .await;
            println!("{}", w.render());
            return;
        }
        _ => {}
    }
    let n = usize::try_from(setting("NAMESPACES", 1000)).unwrap();
    let sample = usize::try_from(setting("BASELINE_SAMPLE", 200))
        .unwrap()
        .clamp(1, n);
    let idle = Duration::from_secs(setting("BENCH_IDLE_SECS", 120));
    let steady = Duration::from_secs(setting("BENCH_STEADY_SECS", 30));
    let provider_calls = usize::try_from(setting("BENCH_PROVIDER_CALLS", 50)).unwrap();
    assert!(
        n >= DRIFT_DELETIONS,
        "NAMESPACES must be at least {DRIFT_DELETIONS}"
    );

    let s = stack();
    let machine = tools::machine(&s.root);
    say(
        t0,
        &format!("N = {n}; starting a private etcd and kube-apiserver"),
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
    ]);
    let admin = cluster.admin().await;
    let who = chart_identity(&admin, &[SECRET], false).await;
    cluster.point_at_me(&who);
    let host = s.var("REGCRED_TEST_REGISTRY").to_owned();
    let (config_dir, config) = config_file(&format!(
        "secrets:\n  - name: {SECRET}\n    registries:\n{}    namespaces:\n      include: [\"bench-*\"]\n",
        registry_alias_yaml()
    ));
    let names: Vec<String> = (0..n).map(|i| format!("bench-{i:05}")).collect();
    let started = Instant::now();
    create_namespaces_at_once(&admin, &names, &[LABEL], 32).await;
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
        host,
        names,
        _config_dir: config_dir,
    };

    let (rotation, regcred_gap) = measure_rotation(&bench).await;
    let (baseline, baseline_gap) = measure_baseline(&bench, sample).await;
    let mut results = Results {
        machine,
        n,
        rotation,
        baseline,
        regcred_gap,
        baseline_gap,
        ..Results::default()
    };
    measure_run(&bench, idle, steady, &mut results).await;
    results.memory_5n = Some(measure_5n(&bench, steady).await);
    results.provider = Some(measure_provider(provider_calls));
    if setting("BENCH_PODS", 1) == 1 {
        results.pods = Some(measure_pods(t0).await);
    }

    let mut table = results.render();
    if churn_n > 0 {
        table.push_str(&measure_churn(&bench, churn_n, steady).await.render());
    }
    println!("\n{table}");
    let out = s.root.join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("results.md"), &table).unwrap();
    say(
        t0,
        &format!("written to {}", out.join("results.md").display()),
    );
    // The private cluster goes with everything in it (namespaces, secrets, identities).
    drop(bench);
    drop(scratch);
    say(t0, "done");
}

/// The churn with a fresh `regcred run` in the bench's cluster.
async fn measure_churn(b: &Bench, n: usize, steady: Duration) -> churn::Churn {
    let (mut run, _key) = b.start_run();
    run.wait_ready(Duration::from_mins(15)).await;
    let churn = churn::measure(
        &b.admin,
        &run,
        SECRET,
        "bench-churn-",
        n,
        2,
        steady,
        |what| {
            b.say(what);
        },
    )
    .await;
    run.signal("TERM");
    run.wait_exit(Duration::from_secs(10)).expect("run stopped");
    churn
}

/// `BENCH_ONLY=churn`: the churn alone, in a private cluster of its own.
async fn churn_alone(t0: Instant, n: usize) {
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
    let table = churn.render();
    println!("{table}");
    let out = stack().root.join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("churn.md"), &table).unwrap();
    say(
        t0,
        &format!("written to {}", out.join("churn.md").display()),
    );
}

/// 1 and 2 for regcred: every secret is due (written by a first sync with 1 h tokens, under
/// `refresh.before` 6 h); a second sync rotates all of them while one is polled.
async fn measure_rotation(b: &Bench) -> (Rotation, tools::PollStats) {
    let (out, took, _) = b.sync(Some("1h"));
    b.say(&format!(
        "first sync in {took:.1?}: {}",
        stdout(&out).trim()
    ));
    let poller = Poller::start(b.admin.clone(), &b.names[0], SECRET, &b.host);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let earlier = audit_requests(&b.audit_log, &Bench::username(&b.who));
    let (out, took, key) = tokio::task::block_in_place(|| b.sync(None));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let gap = poller.stop().await;
    let summary = stdout(&out).trim().to_owned();
    b.say(&format!(
        "rotation by regcred sync in {took:.2?}: {summary}"
    ));
    assert!(
        summary.starts_with(&format!("synced {} namespaces ({} written", b.n, b.n)),
        "every secret was due: {summary}"
    );
    // The audit log is written as requests complete; give the last lines a moment.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rotation = Rotation {
        wall: took,
        token_calls: stack().token_calls(&key),
        requests: audit_requests(&b.audit_log, &Bench::username(&b.who)).since(&earlier),
    };
    (rotation, gap)
}

/// 1 and 2 for the baseline, over `sample` namespaces (all of them when `sample` is N).
async fn measure_baseline(b: &Bench, sample: usize) -> (Baseline, tools::PollStats) {
    let s = stack();
    let home = unique("baseline-home");
    create_namespace(&b.admin, &home, &[]).await;
    // What such a CronJob is usually granted: secrets everywhere.
    let cron = identity(
        &b.admin,
        &home,
        vec![k8s_openapi::api::rbac::v1::PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["secrets".into()]),
            verbs: ["get", "list", "create", "delete"]
                .map(String::from)
                .to_vec(),
            ..Default::default()
        }],
        vec![],
    )
    .await;
    b.cluster.point_at_me(&cron);
    let key = unique("AKIABASE").replace('-', "").to_uppercase();
    let mut cmd = Command::new(s.root.join("bench/baseline-cron.sh"));
    cmd.args([SECRET, b.host.as_str()])
        .args(if sample < b.n {
            &b.names[..sample]
        } else {
            &[][..]
        })
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::var("HOME").unwrap_or_default())
        .env("KUBECTL", s.var("REGCRED_TEST_KUBECTL"))
        .env("AWS", Path::new(s.var("REGCRED_TEST_VENV")).join("bin/aws"))
        .env("KUBECONFIG", &cron.kubeconfig)
        .env("AWS_ACCESS_KEY_ID", &key)
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_DEFAULT_REGION", s.var("AWS_REGION"))
        .env("AWS_ENDPOINT_URL", s.var("AWS_ENDPOINT_URL"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(Stdio::piped());
    b.say(&format!(
        "baseline over {sample} namespaces (serial; about 1 s each)"
    ));
    let poller = Poller::start(b.admin.clone(), &b.names[0], SECRET, &b.host);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let start = Instant::now();
    let out = tokio::task::block_in_place(|| cmd.output()).expect("run the baseline");
    let took = start.elapsed();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let gap = poller.stop().await;
    assert!(out.status.success(), "baseline failed: {}", stderr(&out));
    b.say(&format!("baseline: {} in {took:.1?}", stdout(&out).trim()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline = Baseline {
        measured_over: sample,
        wall: took,
        token_calls: s.token_calls(&key),
        requests: audit_requests(&b.audit_log, &Bench::username(&cron)),
    };
    // The baseline left secrets regcred does not manage: remove them so `run` serves all N.
    let admin = &b.admin;
    futures::stream::iter(&b.names[..sample])
        .for_each_concurrent(32, |ns| async move {
            Api::<Secret>::namespaced(admin.clone(), ns)
                .delete(SECRET, &DeleteParams::default())
                .await
                .expect("delete the baseline's secret");
        })
        .await;
    (baseline, gap)
}

/// 3 to 6 at N, with one `regcred run`: ready, idle writes (memory and CPU read after the
/// steady period), new namespaces at a steady rate, drift repair.
async fn measure_run(b: &Bench, idle: Duration, steady: Duration, results: &mut Results) {
    let (mut run, _key) = b.start_run();
    let first_pass = run.wait_ready(Duration::from_mins(15)).await;
    b.say(&format!(
        "regcred run ready (first full reconciliation) in {first_pass:.1?}"
    ));
    assert_eq!(b.served().await, b.n, "every namespace served");

    let writes = |text: &str| {
        metric_sum(text, "apiserver_request_total", |labels| {
            labels.contains("resource=\"secrets\"")
                && ["PATCH", "PUT", "POST", "DELETE", "APPLY"]
                    .iter()
                    .any(|v| labels.contains(&format!("verb=\"{v}\"")))
        })
    };
    let all_writes = |text: &str| {
        metric_sum(text, "apiserver_request_total", |labels| {
            ["PATCH", "PUT", "POST", "DELETE", "APPLY"]
                .iter()
                .any(|v| labels.contains(&format!("verb=\"{v}\"")))
        })
    };
    let own = |run: &Running| {
        run.metric("regcred_secret_writes_total{result=\"created\"}")
            + run.metric("regcred_secret_writes_total{result=\"updated\"}")
    };
    let before = b.cluster.apiserver_metrics();
    let own_before = own(&run);
    let audit_before = audit_requests(&b.audit_log, &Bench::username(&b.who));
    b.say(&format!("idle for {idle:?}: nothing changes"));
    let idle_start = Instant::now();
    tokio::time::sleep(steady.min(idle)).await;
    let at_n = proc_stats(run.child.id());
    tokio::time::sleep(idle.saturating_sub(idle_start.elapsed())).await;
    let after = b.cluster.apiserver_metrics();
    tokio::time::sleep(Duration::from_secs(1)).await;
    results.idle = Some(report::Idle {
        window: idle,
        apiserver_secret_writes: writes(&after) - writes(&before),
        apiserver_all_writes: all_writes(&after) - all_writes(&before),
        regcred_writes: own(&run) - own_before,
        audit: audit_requests(&b.audit_log, &Bench::username(&b.who)).since(&audit_before),
    });
    results.memory_n = Some(Memory {
        namespaces: b.n,
        first_pass,
        stats: at_n,
    });

    let watch = SecretWatch::start(b.admin.clone(), SECRET).await;
    b.say(&format!(
        "creating {NEW_NAMESPACES} namespaces, one every {NEW_NAMESPACE_INTERVAL:?}"
    ));
    let start = tokio::time::Instant::now();
    let mut created = Vec::new();
    for i in 0..NEW_NAMESPACES {
        tokio::time::sleep_until(start + NEW_NAMESPACE_INTERVAL * u32::try_from(i).unwrap()).await;
        let (admin, name) = (b.admin.clone(), format!("bench-new-{i:04}"));
        created.push(tokio::spawn(async move {
            let at = Instant::now();
            create_namespace(&admin, &name, &[LABEL]).await;
            (name, at)
        }));
    }
    let mut latencies = Vec::new();
    for task in created {
        let (name, at) = task.await.unwrap();
        let appeared = wait_for("a new namespace's secret", Duration::from_mins(2), || {
            std::future::ready(watch.appeared(&name))
        })
        .await;
        latencies.push(appeared.saturating_duration_since(at));
    }
    results.new_namespace = Some(percentiles(latencies));

    b.say(&format!(
        "deleting {DRIFT_DELETIONS} secrets, one after another"
    ));
    let mut latencies = Vec::new();
    let step = b.n / DRIFT_DELETIONS;
    for ns in b.names.iter().step_by(step).take(DRIFT_DELETIONS) {
        let deletions = watch.deletions(ns);
        let at = Instant::now();
        Api::<Secret>::namespaced(b.admin.clone(), ns)
            .delete(SECRET, &DeleteParams::default())
            .await
            .expect("delete a secret");
        let back = wait_for("a deleted secret back", Duration::from_mins(1), || {
            std::future::ready(watch.back_after(ns, deletions))
        })
        .await;
        latencies.push(back.saturating_duration_since(at));
    }
    results.drift = Some(percentiles(latencies));
    run.signal("TERM");
    run.wait_exit(Duration::from_secs(10)).expect("run stopped");
}

/// 6 at 5×N: a fresh `regcred run` over five times as many namespaces.
async fn measure_5n(b: &Bench, steady: Duration) -> Memory {
    let more: Vec<String> = (b.n..5 * b.n).map(|i| format!("bench-{i:05}")).collect();
    let started = Instant::now();
    create_namespaces_at_once(&b.admin, &more, &[LABEL], 32).await;
    b.say(&format!(
        "created {} more namespaces in {:.1?}",
        more.len(),
        started.elapsed()
    ));
    let (mut run, _key) = b.start_run();
    let first_pass = run.wait_ready(Duration::from_mins(15)).await;
    b.say(&format!(
        "regcred run over {} namespaces ready in {first_pass:.1?}; steady for {steady:?}",
        5 * b.n
    ));
    tokio::time::sleep(steady).await;
    let stats: ProcStats = proc_stats(run.child.id());
    assert_eq!(
        b.served().await,
        5 * b.n + NEW_NAMESPACES,
        "every namespace served"
    );
    run.signal("TERM");
    run.wait_exit(Duration::from_secs(10)).expect("run stopped");
    Memory {
        namespaces: 5 * b.n,
        first_pass,
        stats,
    }
}

/// 7: `regcred credential-provider` as kubelet runs it, with a warm `--cache-dir` and without.
fn measure_provider(calls: usize) -> Provider {
    let s = stack();
    let fixture = s.root.join("tests/fixtures/provider/private.json");
    let mut request: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture).expect("provider fixture")).unwrap();
    request["image"] = "123456789012.dkr.ecr.us-east-1.amazonaws.com/regcred/hello:1.0".into();
    let request = serde_json::to_vec(&request).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let time_calls = |cache_dir: Option<&Path>| {
        let key = unique("AKIAPROV").replace('-', "").to_uppercase();
        let call = || {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_regcred"));
            cmd.env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .env("AWS_ACCESS_KEY_ID", &key)
                .env("AWS_SECRET_ACCESS_KEY", "testing")
                .env("AWS_REGION", "us-east-1")
                .env("AWS_ENDPOINT_URL", s.var("AWS_ENDPOINT_URL"))
                .env("AWS_EC2_METADATA_DISABLED", "true")
                .arg("credential-provider");
            if let Some(dir) = cache_dir {
                cmd.arg("--cache-dir").arg(dir);
            }
            let start = Instant::now();
            let mut child = cmd
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start credential-provider");
            std::io::Write::write_all(&mut child.stdin.take().unwrap(), &request).unwrap();
            let out = child.wait_with_output().unwrap();
            let took = start.elapsed();
            assert!(
                out.status.success(),
                "credential-provider: {}",
                stderr(&out)
            );
            took
        };
        if cache_dir.is_some() {
            call(); // Warms the cache.
        }
        let times: Vec<Duration> = (0..calls).map(|_| call()).collect();
        (times, s.token_calls(&key))
    };
    let (warm, warm_calls) = time_calls(Some(cache.path()));
    let (cold, cold_calls) = time_calls(None);
    Provider {
        calls,
        warm: percentiles(warm),
        warm_token_calls: warm_calls,
        uncached: percentiles(cold),
        uncached_token_calls: cold_calls,
    }
}

/// Pods on the stack's node across token expiry: regcred's controller, CronJob and kubelet
/// plugin against the usual cron script, at once (the scenarios `tests/cluster.rs` asserts
/// on); then the one-apply race.
async fn measure_pods(t0: Instant) -> Pods {
    use common::rotation::{Settings, baseline, controller, credential_provider, cronjob};
    common::pods::node();
    let settings = Settings {
        ttl: Duration::from_secs(setting("BENCH_POD_TTL", 90)),
        lifetimes: u32::try_from(setting("BENCH_POD_LIFETIMES", 5)).unwrap(),
        every: Duration::from_secs(6),
    };
    say(t0, "building regcred's image for the node");
    tokio::task::spawn_blocking(common::image::on_the_node)
        .await
        .unwrap();
    say(
        t0,
        &format!(
            "pods on the node for {:?}: controller, CronJob, kubelet plugin, cron script",
            settings.during()
        ),
    );
    let ctl = tokio::spawn(controller(settings));
    let cron = tokio::spawn(cronjob(settings));
    let plugin = tokio::spawn(credential_provider(settings));
    let script = tokio::spawn(baseline(settings, settings.ttl * 3 / 2));
    let mut outcomes = vec![ctl.await.unwrap().0];
    for task in [cron, plugin, script] {
        outcomes.push(task.await.unwrap());
    }
    for o in &outcomes {
        say(t0, &o.line());
    }
    let tries = usize::try_from(setting("BENCH_RACE_TRIES", 20)).unwrap();
    say(t0, &format!("the one-apply race, {tries} times"));
    let race = common::race::race(tries, &json!({})).await;
    say(
        t0,
        &format!("the one-apply race with the webhook, {tries} times"),
    );
    let race_webhook = common::race::race(tries, &common::race::webhook_on_the_node()).await;
    Pods {
        ttl: settings.ttl,
        lifetimes: settings.lifetimes,
        every: settings.every,
        outcomes,
        race,
        race_webhook,
    }
}
