//! Issue 15: `regcred run` as the cluster grows to each of `SIZES` namespaces (default 1,000,
//! 5,000 and 20,000), each with its secret and a `default` ServiceAccount regcred references.
//! At each size a fresh `run` (a restart: every secret current) is measured after its first
//! full reconciliation and a steady period; at the largest it idles, then serves a second
//! secret name from nothing (every secret created, every ServiceAccount patched), then
//! rotates every secret when its token is renewed — unpaced and with
//! `--max-writes-per-second`. The API server's own CPU (`process_cpu_seconds_total`) and
//! regcred's requests (audit log) are read around each.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{Running, metric_sum, stdout};
use crate::report::{Baseline, mib, secs};
use crate::serve::create_served;
use crate::tools::{ProcStats, Requests, audit_requests, proc_stats};
use crate::{Bench, SECRET_B};

/// regcred at one size, after a restart.
#[derive(Debug)]
pub struct Size {
    /// Namespaces in the cluster (regcred_namespaces_tracked).
    pub namespaces: f64,
    /// The first full reconciliation (every secret current).
    pub ready: Duration,
    pub stats: ProcStats,
}

#[derive(Debug)]
pub struct Idle {
    pub window: Duration,
    pub apiserver_secret_writes: f64,
    pub apiserver_all_writes: f64,
    pub regcred_writes: f64,
    pub regcred_cpu: Duration,
    pub apiserver_cpu: f64,
    pub audit: Requests,
}

/// One pass of work over every namespace.
#[derive(Debug)]
pub struct Pass {
    pub what: String,
    pub wall: Duration,
    pub apiserver_cpu: f64,
    pub requests: Requests,
    pub writes: f64,
    pub stats: ProcStats,
}

#[derive(Debug)]
pub struct Scale {
    pub sizes: Vec<Size>,
    pub idle: Idle,
    /// Namespaces served at the largest size.
    pub selected: f64,
    pub from_nothing: Pass,
    pub rotations: Vec<Pass>,
}

fn writes(run: &Running, result: &str) -> f64 {
    run.metric(&format!(
        "regcred_secret_writes_total{{result=\"{result}\"}}"
    ))
}

/// Every size, then the largest's idle, pass from nothing and rotations.
pub async fn measure(
    b: &Bench,
    sizes: &[usize],
    idle: Duration,
    steady: Duration,
    pace: u32,
) -> Scale {
    let mut have = b.n;
    let mut measured = Vec::new();
    let mut idled = None;
    let largest = *sizes.last().expect("a size");
    for &size in sizes {
        if size > have {
            let started = Instant::now();
            let more: Vec<String> = (have..size).map(|i| format!("bench-{i:05}")).collect();
            create_served(&b.admin, &more).await;
            b.say(&format!(
                "{} more namespaces (each with a default ServiceAccount) in {:.1?}",
                more.len(),
                started.elapsed()
            ));
            have = size;
        }
        let (out, took, _) = b.sync(None);
        b.say(&format!(
            "sync at {size} in {took:.1?}: {}",
            stdout(&out).trim()
        ));
        let (mut run, _key) = b.start_run(&b.config, &[], None);
        let ready = run.wait_ready(Duration::from_mins(30)).await;
        b.say(&format!(
            "run at {size}: first full reconciliation in {ready:.1?}; steady for {steady:?}"
        ));
        tokio::time::sleep(steady).await;
        measured.push(Size {
            namespaces: run.metric("regcred_namespaces_tracked"),
            ready,
            stats: proc_stats(run.child.id()),
        });
        if size == largest {
            idled = Some(measure_idle(b, &run, idle).await);
        }
        run.signal("TERM");
        run.wait_exit(Duration::from_secs(30)).expect("run stopped");
    }
    let (from_nothing, selected) = from_nothing(b).await;
    let idle = idled.expect("idle measured");
    let mut rotations = Vec::new();
    for (i, paced) in [None, Some(pace)].into_iter().enumerate() {
        rotations.push(rotation(b, paced, selected, ROTATIONS[i]).await);
    }
    Scale {
        sizes: measured,
        idle,
        selected,
        from_nothing,
        rotations,
    }
}

/// Nothing changes for `window`: what regcred writes, asks and spends meanwhile.
async fn measure_idle(b: &Bench, run: &Running, window: Duration) -> Idle {
    let secret_writes = |text: &str| {
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
    let own = |run: &Running| writes(run, "created") + writes(run, "updated");
    let before = b.cluster.apiserver_metrics();
    let (own_before, cpu_before) = (own(run), proc_stats(run.child.id()).cpu);
    let audit_before = audit_requests(&b.audit_log, &Bench::username(&b.who));
    b.say(&format!("idle for {window:?}: nothing changes"));
    tokio::time::sleep(window).await;
    let after = b.cluster.apiserver_metrics();
    let cpu = |text: &str| metric_sum(text, "process_cpu_seconds_total", |_| true);
    tokio::time::sleep(Duration::from_secs(1)).await;
    Idle {
        window,
        apiserver_secret_writes: secret_writes(&after) - secret_writes(&before),
        apiserver_all_writes: all_writes(&after) - all_writes(&before),
        regcred_writes: own(run) - own_before,
        regcred_cpu: proc_stats(run.child.id()).cpu.saturating_sub(cpu_before),
        apiserver_cpu: cpu(&after) - cpu(&before),
        audit: audit_requests(&b.audit_log, &Bench::username(&b.who)).since(&audit_before),
    }
}

/// A second secret name, served from nothing: its first full reconciliation creates every
/// secret and adds it to every `default` ServiceAccount.
async fn from_nothing(b: &Bench) -> (Pass, f64) {
    let earlier = audit_requests(&b.audit_log, &Bench::username(&b.who));
    let cpu = b.apiserver_cpu();
    let (mut run, _key) = b.start_run(&b.config_b, &[], Some(json!({"ttl": FROM_NOTHING_TTL})));
    let wall = run.wait_ready(Duration::from_hours(1)).await;
    let apiserver_cpu = b.apiserver_cpu() - cpu;
    let selected = run.metric("regcred_namespaces_selected");
    let written = writes(&run, "created");
    b.say(&format!(
        "from nothing: {written} secrets created in {wall:.1?} ({apiserver_cpu:.1} s API-server CPU)"
    ));
    assert!(
        (b.served(SECRET_B).await as f64 - selected).abs() < 0.5,
        "every namespace served"
    );
    let stats = proc_stats(run.child.id());
    run.signal("TERM");
    run.wait_exit(Duration::from_secs(30)).expect("run stopped");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pass = Pass {
        what: format!(
            "first full reconciliation from nothing (a new secret name: {selected:.0} secrets created, {selected:.0} ServiceAccounts patched)"
        ),
        wall,
        apiserver_cpu,
        requests: audit_requests(&b.audit_log, &Bench::username(&b.who)).since(&earlier),
        writes: written,
        stats,
    };
    (pass, selected)
}

/// The tokens the pass from nothing writes live this long (seconds: 10 h).
const FROM_NOTHING_TTL: u64 = 10 * 3600;
/// Each rotation's `refresh.before` and the lifetime of the tokens it writes (seconds):
/// every secret the step before wrote has less than `before` left, so it is due; the run's
/// own token has more, so it is renewed only once, at the start. (Waiting for a renewal
/// instead would measure nothing: a secret still fresh is not rewritten when the token
/// changes, only when it is itself due.)
const ROTATIONS: [(u64, u64); 2] = [
    (10 * 3600 + 1800, 11 * 3600),
    (11 * 3600 + 1200, 11 * 3600 + 3000),
];

/// Every secret of `SECRET_B` rotated by a `run` that starts when all of them are due (see
/// [`ROTATIONS`]): its first full reconciliation rewrites each, at full speed or paced.
async fn rotation(b: &Bench, pace: Option<u32>, selected: f64, (before, ttl): (u64, u64)) -> Pass {
    let rate = pace.map(|p| p.to_string());
    let args: Vec<&str> = rate
        .as_deref()
        .map(|r| vec!["--max-writes-per-second", r])
        .unwrap_or_default();
    let (_dir, config) = crate::common::config_file(&format!(
        "secrets:\n  - name: {SECRET_B}\n    registries:\n{}    namespaces:\n      include: [\"bench-*\"]\n    serviceAccounts: [default]\nrefresh:\n  before: {before}s\n",
        crate::common::registry_alias_yaml()
    ));
    let (earlier, cpu) = (
        audit_requests(&b.audit_log, &Bench::username(&b.who)),
        b.apiserver_cpu(),
    );
    let (mut run, _key) = b.start_run(&config, &args, Some(json!({"ttl": ttl})));
    let wall = run.wait_ready(Duration::from_hours(1)).await;
    let apiserver_cpu = b.apiserver_cpu() - cpu;
    let stats = proc_stats(run.child.id());
    let written = writes(&run, "updated");
    b.say(&format!(
        "rotation by run{}: {written} secrets in {wall:.1?} ({apiserver_cpu:.1} s API-server CPU)",
        pace.map(|p| format!(" at {p} writes/s"))
            .unwrap_or_default()
    ));
    assert!(
        (written - selected).abs() < 0.5,
        "every secret was due and rewritten: {written} of {selected}"
    );
    run.signal("TERM");
    run.wait_exit(Duration::from_secs(30)).expect("run stopped");
    tokio::time::sleep(Duration::from_secs(1)).await;
    Pass {
        what: match pace {
            None => {
                "rotation of every secret by `run` (a restart with every secret due)".to_owned()
            }
            Some(p) => format!("the same with `--max-writes-per-second {p}`"),
        },
        wall,
        apiserver_cpu,
        requests: audit_requests(&b.audit_log, &Bench::username(&b.who)).since(&earlier),
        writes: written,
        stats,
    }
}

impl Scale {
    /// The section of the results: memory by size, idle, the passes, and the baseline's
    /// cost for the same work.
    #[allow(clippy::too_many_lines)] // One table, row by row.
    pub fn render(&self, baseline: &Baseline) -> String {
        let mut out = String::new();
        let (first, last) = (&self.sizes[0], self.sizes.last().expect("a size"));
        let _ = writeln!(
            out,
            "\n### `run` at {} namespaces and more (issue 15)\n\n\
             Each namespace holds its secret and a `default` ServiceAccount regcred references (`serviceAccounts: [default]`). \
             At each size a fresh `run` restarts over current secrets (its first full reconciliation writes nothing); memory and \
             CPU are read after a steady period. API-server CPU is its `process_cpu_seconds_total` delta; requests are regcred's, \
             from the audit log.\n",
            self.sizes
                .iter()
                .map(|s| format!("{:.0}", s.namespaces))
                .collect::<Vec<_>>()
                .join(" / ")
        );
        let _ = writeln!(
            out,
            "| measurement | regcred | baseline cron script | target |"
        );
        let _ = writeln!(out, "|---|---|---|---|");
        for s in &self.sizes {
            let target = if std::ptr::eq(s, last) {
                format!(
                    "peak ≤ 48 MiB: {}",
                    crate::report::met(s.stats.peak_rss_kib <= 48 * 1024)
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "| `run` at {:.0} namespaces: first full reconciliation · peak RSS (VmHWM) · RSS = anonymous + file-backed (its code) · CPU user+sys | {} · **{}** · {} = {} + {} · {:.2} s | | {target} |",
                s.namespaces,
                secs(s.ready),
                mib(s.stats.peak_rss_kib),
                mib(s.stats.rss_kib),
                mib(s.stats.anon_kib),
                mib(s.stats.file_kib),
                s.stats.cpu.as_secs_f64(),
            );
        }
        #[allow(clippy::cast_precision_loss)]
        let per_ns =
            |from: u64, to: u64| (to as f64 - from as f64) / (last.namespaces - first.namespaces);
        let anon = per_ns(first.stats.anon_kib, last.stats.anon_kib);
        let _ = writeln!(
            out,
            "| growth from {:.0} to {:.0} namespaces, per namespace | anonymous **{anon:.2} KiB** · peak RSS {:.2} KiB | | anonymous ≤ 1.5 KiB: {} |",
            first.namespaces,
            last.namespaces,
            per_ns(first.stats.peak_rss_kib, last.stats.peak_rss_kib),
            crate::report::met(anon <= 1.5),
        );
        let i = &self.idle;
        let _ = writeln!(
            out,
            "| idle at {:.0} namespaces for {:?}, nothing changing | **{:.0}** secret writes at the API server (all writes, every user: {:.0}); {:.0} by `regcred_secret_writes_total`; regcred's CPU **{:.2} s** ({:.2}% of a core); its requests: {}; API-server CPU {:.1} s (everything it serves, leases and its own loops included) | none (it does not run) | 0 writes, CPU ≈ 0: {} |",
            last.namespaces,
            i.window,
            i.apiserver_secret_writes,
            i.apiserver_all_writes,
            i.regcred_writes,
            i.regcred_cpu.as_secs_f64(),
            i.regcred_cpu.as_secs_f64() / i.window.as_secs_f64() * 100.0,
            i.audit.describe(),
            i.apiserver_cpu,
            crate::report::met(
                i.apiserver_secret_writes < 0.5
                    && i.regcred_writes < 0.5
                    && i.regcred_cpu.as_secs_f64() / i.window.as_secs_f64() < 0.01
            ),
        );
        #[allow(clippy::cast_precision_loss)]
        let factor = self.selected / baseline.measured_over as f64;
        let base = format!(
            "{} wall · {} · **{:.1} s** API-server CPU *(extrapolated ×{factor:.0} from {} namespaces: {}, {:.2} s CPU)*",
            secs(Duration::from_secs_f64(
                baseline.wall.as_secs_f64() * factor
            )),
            baseline.requests.scaled(factor).describe(),
            baseline.apiserver_cpu * factor,
            baseline.measured_over,
            secs(baseline.wall),
            baseline.apiserver_cpu,
        );
        for (k, p) in std::iter::once(&self.from_nothing)
            .chain(&self.rotations)
            .enumerate()
        {
            let _ = writeln!(
                out,
                "| {} at {:.0} namespaces: wall · requests · API-server CPU · regcred's peak RSS | {} · {} · **{:.1} s** ({:.2} ms per secret) · {} | {} | |",
                p.what,
                self.selected,
                secs(p.wall),
                p.requests.describe(),
                p.apiserver_cpu,
                p.apiserver_cpu / p.writes.max(1.0) * 1000.0,
                mib(p.stats.peak_rss_kib),
                if k < 2 { base.as_str() } else { "" },
            );
        }
        out
    }
}
