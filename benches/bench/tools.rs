//! What the benchmark measures with: a 10 ms poller, a watch that timestamps secrets as they
//! come and go, process statistics from `/proc`, request counts from the API server's audit
//! log, percentiles, and the machine it ran on.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::watcher;

/// What a poller saw.
#[derive(Clone, Copy, Debug, Default)]
pub struct PollStats {
    pub samples: u64,
    /// The secret did not exist.
    pub missing: u64,
    /// It existed but a pod could not have pulled with it ([`crate::common::pull_problem`]).
    pub unusable: u64,
}

/// Reads one namespace's secret every 10 ms until stopped, as a pod being scheduled would.
pub struct Poller {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<PollStats>,
}

impl Poller {
    pub fn start(client: kube::Client, namespace: &str, secret: &str, host: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let api: Api<Secret> = Api::namespaced(client, namespace);
        let (secret, host, flag) = (secret.to_owned(), host.to_owned(), stop.clone());
        let task = tokio::spawn(async move {
            let mut stats = PollStats::default();
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !flag.load(Ordering::Relaxed) {
                tick.tick().await;
                stats.samples += 1;
                match api.get_opt(&secret).await {
                    Ok(Some(s)) if crate::common::pull_problem(&s, &[&host]).is_none() => {}
                    Ok(Some(_)) => stats.unusable += 1,
                    Ok(None) => stats.missing += 1,
                    Err(e) => panic!("poller: {e}"),
                }
            }
            stats
        });
        Self { stop, task }
    }

    pub async fn stop(self) -> PollStats {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("poller")
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Seen {
    present: bool,
    deletions: u32,
    /// When the watch last saw it appear (absent before).
    appeared: Option<Instant>,
}

/// A watch on every secret of one name that notes when each namespace's appears and goes.
pub struct SecretWatch {
    seen: Arc<Mutex<HashMap<String, Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SecretWatch {
    /// Starts watching and returns once the initial list is in.
    pub async fn start(client: kube::Client, secret: &str) -> Self {
        let seen: Arc<Mutex<HashMap<String, Seen>>> = Arc::default();
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let config = watcher::Config::default().fields(&format!("metadata.name={secret}"));
        let stream = watcher(Api::<Secret>::all(client), config);
        let task = tokio::spawn({
            let seen = seen.clone();
            let mut ready_tx = Some(ready_tx);
            async move {
                let mut stream = std::pin::pin!(stream);
                while let Some(event) = stream.next().await {
                    let now = Instant::now();
                    let Ok(event) = event else { continue };
                    let mut seen = seen.lock().unwrap();
                    match event {
                        watcher::Event::Apply(s) | watcher::Event::InitApply(s) => {
                            let e = seen
                                .entry(s.metadata.namespace.unwrap_or_default())
                                .or_default();
                            if !e.present {
                                e.present = true;
                                e.appeared = Some(now);
                            }
                        }
                        watcher::Event::Delete(s) => {
                            let e = seen
                                .entry(s.metadata.namespace.unwrap_or_default())
                                .or_default();
                            e.present = false;
                            e.deletions += 1;
                        }
                        watcher::Event::InitDone => {
                            if let Some(tx) = ready_tx.take() {
                                let _ = tx.send(());
                            }
                        }
                        watcher::Event::Init => {}
                    }
                }
            }
        });
        ready.await.expect("secret watch started");
        Self { seen, task }
    }

    /// When the secret of `namespace` appeared, if it is there now.
    pub fn appeared(&self, namespace: &str) -> Option<Instant> {
        let seen = self.seen.lock().unwrap();
        seen.get(namespace)
            .filter(|s| s.present)
            .and_then(|s| s.appeared)
    }

    pub fn deletions(&self, namespace: &str) -> u32 {
        self.seen
            .lock()
            .unwrap()
            .get(namespace)
            .map_or(0, |s| s.deletions)
    }

    /// When it appeared again after more than `deletions` deletions, if it has.
    pub fn back_after(&self, namespace: &str, deletions: u32) -> Option<Instant> {
        let seen = self.seen.lock().unwrap();
        let s = seen.get(namespace)?;
        (s.deletions > deletions && s.present)
            .then_some(s.appeared)
            .flatten()
    }
}

impl Drop for SecretWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Peak and current resident memory and CPU time of a process, from `/proc`.
#[derive(Clone, Copy, Debug)]
pub struct ProcStats {
    pub peak_rss_kib: u64,
    pub rss_kib: u64,
    /// Of `rss_kib`: memory the process allocated, and pages mapped from files (its own
    /// binary's code, mostly: shared, clean, reclaimable page cache).
    pub anon_kib: u64,
    pub file_kib: u64,
    pub cpu: Duration,
}

pub fn proc_stats(pid: u32) -> ProcStats {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{key} missing from /proc/{pid}/status"))
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc stat");
    // Fields after the command name (which may hold spaces) start at field 3 (state).
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    #[allow(clippy::cast_precision_loss)]
    let cpu = Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64);
    ProcStats {
        peak_rss_kib: kib("VmHWM:"),
        rss_kib: kib("VmRSS:"),
        anon_kib: kib("RssAnon:"),
        file_kib: kib("RssFile:"),
        cpu,
    }
}

fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

/// Requests one user made, as the API server's audit log recorded them (one
/// `ResponseComplete` event per request), by verb and resource.
#[derive(Clone, Debug, Default)]
pub struct Requests {
    pub by_kind: BTreeMap<String, u64>,
}

impl Requests {
    pub fn total(&self) -> u64 {
        self.by_kind.values().sum()
    }

    /// `1005 (5 list, 1000 patch secrets)`.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .by_kind
            .iter()
            .map(|(kind, n)| format!("{n} {kind}"))
            .collect();
        format!("{} ({})", self.total(), parts.join(", "))
    }

    /// What was made since `earlier`.
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            by_kind: self
                .by_kind
                .iter()
                .map(|(k, n)| (k.clone(), n - earlier.by_kind.get(k).copied().unwrap_or(0)))
                .filter(|(_, n)| *n > 0)
                .collect(),
        }
    }

    /// Scaled by `factor` (an extrapolation).
    pub fn scaled(&self, factor: f64) -> Self {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        Self {
            by_kind: self
                .by_kind
                .iter()
                .map(|(k, n)| (k.clone(), (*n as f64 * factor).round() as u64))
                .collect(),
        }
    }
}

pub fn audit_requests(log: &Path, username: &str) -> Requests {
    let text = std::fs::read_to_string(log).expect("read the audit log");
    let mut requests = Requests::default();
    for line in text.lines() {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if event["stage"] == "ResponseComplete" && event["user"]["username"] == username {
            let verb = event["verb"].as_str().unwrap_or("?");
            let what = event["objectRef"]["resource"]
                .as_str()
                .unwrap_or("(discovery)");
            *requests
                .by_kind
                .entry(format!("{verb} {what}"))
                .or_default() += 1;
        }
    }
    requests
}

/// Latency percentiles by the nearest-rank method.
#[derive(Clone, Copy, Debug)]
pub struct Percentiles {
    pub count: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

pub fn percentiles(mut values: Vec<Duration>) -> Percentiles {
    assert!(!values.is_empty(), "no samples");
    values.sort();
    let rank = |p: usize| values[(values.len() * p).div_ceil(100).max(1) - 1];
    Percentiles {
        count: values.len(),
        p50: rank(50),
        p99: rank(99),
        max: *values.last().unwrap(),
    }
}

/// The machine and the code measured: CPUs, memory, CPU model, kernel, date, commit.
pub fn machine(root: &Path) -> BTreeMap<&'static str, String> {
    let run = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .current_dir(root)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map_or_else(
            || "unknown CPU".into(),
            |l| l.trim_start_matches([' ', '\t', ':']).to_owned(),
        );
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let dirty = !run("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty();
    let mut commit = run("git", &["rev-parse", "--short=12", "HEAD"]);
    if dirty {
        commit.push_str(" + uncommitted changes");
    }
    #[allow(clippy::cast_precision_loss)]
    let memory = format!("{:.1} GiB", mem_kib as f64 / 1024.0 / 1024.0);
    BTreeMap::from([
        ("cpus", run("nproc", &[])),
        ("cpu", model),
        ("memory", memory),
        ("kernel", run("uname", &["-sr"])),
        (
            "date",
            jiff::Timestamp::now()
                .strftime("%Y-%m-%d %H:%M UTC")
                .to_string(),
        ),
        ("commit", commit),
        ("load", run("cat", &["/proc/loadavg"])),
    ])
}
