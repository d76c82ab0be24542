//! The results table (Markdown), with the machine and date it was measured on.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use crate::common::race::Race;
use crate::common::rotation::Outcome;
use crate::tools::{Percentiles, PollStats, Requests};

#[derive(Debug, Default)]
pub struct Rotation {
    pub wall: Duration,
    pub token_calls: u64,
    pub requests: Requests,
    /// The API server's own CPU seconds for it.
    pub apiserver_cpu: f64,
}

/// The baseline as measured over `measured_over` namespaces.
#[derive(Debug, Default)]
pub struct Baseline {
    pub measured_over: usize,
    pub wall: Duration,
    pub token_calls: u64,
    pub requests: Requests,
    /// The API server's own CPU seconds for the sample.
    pub apiserver_cpu: f64,
}

#[derive(Debug)]
pub struct Provider {
    pub calls: usize,
    pub warm: Percentiles,
    pub warm_token_calls: u64,
    pub uncached: Percentiles,
    pub uncached_token_calls: u64,
}

/// Pods pulling on the stack's node across token expiry, one row per way of keeping
/// credentials, and the one-apply race.
#[derive(Debug)]
pub struct Pods {
    pub ttl: Duration,
    pub lifetimes: u32,
    pub every: Duration,
    pub outcomes: Vec<Outcome>,
    pub race: Race,
    pub race_webhook: Race,
}

#[derive(Debug, Default)]
pub struct Results {
    pub machine: BTreeMap<&'static str, String>,
    pub n: usize,
    pub rotation: Rotation,
    pub baseline: Baseline,
    pub regcred_gap: PollStats,
    pub baseline_gap: PollStats,
    pub new_namespace: Option<Percentiles>,
    pub drift: Option<Percentiles>,
    pub provider: Option<Provider>,
    pub pods: Option<Pods>,
}

pub fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 100.0 {
        format!("{s:.0} s")
    } else if s >= 1.0 {
        format!("{s:.2} s")
    } else {
        format!("{:.0} ms", s * 1000.0)
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

pub fn mib(kib: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let m = kib as f64 / 1024.0;
    format!("{m:.1} MiB")
}

fn lat(p: &Percentiles) -> String {
    format!("p50 {} · p99 {} · max {}", ms(p.p50), ms(p.p99), ms(p.max))
}

pub fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

impl Results {
    /// The baseline scaled to N namespaces, and whether that is an extrapolation.
    fn baseline_at_n(&self) -> (f64, f64, Requests, bool) {
        #[allow(clippy::cast_precision_loss)]
        let factor = self.n as f64 / self.baseline.measured_over as f64;
        let b = &self.baseline;
        #[allow(clippy::cast_precision_loss)]
        (
            b.wall.as_secs_f64() * factor,
            b.token_calls as f64 * factor,
            b.requests.scaled(factor),
            self.baseline.measured_over < self.n,
        )
    }

    #[allow(clippy::too_many_lines)] // One table, row by row.
    pub fn render(&self) -> String {
        let m = &self.machine;
        let n = self.n;
        let mut out = String::new();
        let _ = writeln!(out, "## regcred benchmark: N = {n} namespaces\n");
        let _ = writeln!(
            out,
            "Measured {} on {} CPUs ({}), {} RAM, {}; commit {}; load average before the run {}.",
            m["date"], m["cpus"], m["cpu"], m["memory"], m["kernel"], m["commit"], m["load"]
        );
        let _ = writeln!(
            out,
            "Real stack: a private etcd and kube-apiserver v1.36.3 (RBAC, audit log), moto behind `testenv/fake_aws.py`; \
             regcred release build acting as a ServiceAccount with the chart's RBAC; every namespace has a `default` \
             ServiceAccount regcred references; baseline = `bench/baseline-cron.sh` (AWS CLI v1 + kubectl, serial). \
             Reproduce: `make bench`. The rotation's gap is measured in a second rotation, with one secret read every 10 ms.\n"
        );
        let (b_wall, b_calls, b_requests, extrapolated) = self.baseline_at_n();
        let mark = if extrapolated {
            format!(
                " *(extrapolated ×{:.0} from {} namespaces measured: {}, {} token calls, {} requests)*",
                self.n as f64 / self.baseline.measured_over as f64,
                self.baseline.measured_over,
                secs(self.baseline.wall),
                self.baseline.token_calls,
                self.baseline.requests.total()
            )
        } else {
            String::new()
        };
        let ratio = b_wall / self.rotation.wall.as_secs_f64();
        let _ = writeln!(
            out,
            "| # | measurement | regcred | baseline cron script | target |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|");
        let _ = writeln!(
            out,
            "| 1 | rotation of {n} namespaces: wall time | **{}** | {}{mark} | ≥ 100× faster: **{ratio:.0}×** ({}) |",
            secs(self.rotation.wall),
            secs(Duration::from_secs_f64(b_wall)),
            met(ratio >= 100.0),
        );
        let _ = writeln!(
            out,
            "| 1 | token calls (counted by the fake AWS, per access key) | **{}** | {b_calls:.0}{} | 1: {} |",
            self.rotation.token_calls,
            if extrapolated {
                " *(extrapolated)*"
            } else {
                ""
            },
            met(self.rotation.token_calls == 1),
        );
        let _ = writeln!(
            out,
            "| 1 | API requests (audit log, by user) | {} | {}{} | |",
            self.rotation.requests.describe(),
            b_requests.describe(),
            if extrapolated {
                " *(extrapolated)*"
            } else {
                ""
            },
        );
        let _ = writeln!(
            out,
            "| 1 | API-server CPU for the rotation (its `process_cpu_seconds_total` delta) | **{:.2} s** | {:.2} s{} | |",
            self.rotation.apiserver_cpu,
            self.baseline.apiserver_cpu * self.n as f64 / self.baseline.measured_over as f64,
            if extrapolated {
                format!(
                    " *(extrapolated; {:.2} s measured)*",
                    self.baseline.apiserver_cpu
                )
            } else {
                String::new()
            },
        );
        let gap = |g: &PollStats| {
            format!(
                "{} missing, {} unusable of {} samples",
                g.missing, g.unusable, g.samples
            )
        };
        let _ = writeln!(
            out,
            "| 2 | rotation gap: one secret read every 10 ms during the rotation | **{}** | {} (measured) | 0 missing: {} |",
            gap(&self.regcred_gap),
            gap(&self.baseline_gap),
            met(self.regcred_gap.missing + self.regcred_gap.unusable == 0),
        );
        if let Some(p) = &self.new_namespace {
            let _ = writeln!(
                out,
                "| 3 | new namespace → secret (`run`; {} namespaces, 10/s) | {} | at the next run (hours) | p99 < 0.5 s: {} |",
                p.count,
                lat(p),
                met(p.p99 < Duration::from_millis(500)),
            );
        }
        if let Some(p) = &self.drift {
            let _ = writeln!(
                out,
                "| 4 | drift repair: deleted secret → back (`run`; {} deletions) | {} | at the next run (hours) | |",
                p.count,
                lat(p),
            );
        }
        if let Some(p) = &self.provider {
            let _ = writeln!(
                out,
                "| 7 | credential-provider, time per call (process start to exit; {} calls) | warm `--cache-dir`: **{}** median (p99 {}), {} token calls · no cache: {} median (p99 {}), {} token calls | | ≤ 20 ms cached: {} |",
                p.calls,
                ms(p.warm.p50),
                ms(p.warm.p99),
                p.warm_token_calls,
                ms(p.uncached.p50),
                ms(p.uncached.p99),
                p.uncached_token_calls,
                met(p.warm.p50 <= Duration::from_millis(20)),
            );
        }
        if let Some(p) = &self.pods {
            out.push_str(&p.render());
        }
        out
    }
}

impl Pods {
    fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n### Pods on a real node across token expiry\n\n\
             The stack's kubelet (v1.36.3, containerd 1.6) pulls `imagePullPolicy: Always` pods from the private \
             registry, which refuses a token once it expires (as ECR does). Tokens live {}; pods are created \
             every {} for {} lifetimes ({}), all four ways at once, each in its own namespaces with its own AWS \
             key. A pull failed = the pod reached `ErrImagePull`/`ImagePullBackOff`; events = the kubelet's \
             `Failed`/`BackOff` pull Events in those namespaces.\n",
            secs(self.ttl),
            secs(self.every),
            self.lifetimes,
            secs(self.ttl * self.lifetimes),
        );
        let _ = writeln!(
            out,
            "| how credentials are kept | pulls attempted | pulls failed | pull-failure events | token calls |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|");
        for o in &self.outcomes {
            let t = &o.tally;
            let _ = writeln!(
                out,
                "| {} | {} | **{}**{} | {} | {} |",
                o.mode,
                t.attempted,
                t.failed,
                if t.undecided > 0 {
                    format!(" (+{} undecided)", t.undecided)
                } else {
                    String::new()
                },
                o.events,
                o.token_calls
            );
        }
        let (r, w) = (&self.race, &self.race_webhook);
        let _ = writeln!(
            out,
            "\nOne `kubectl apply` of a new Namespace, a ServiceAccount listed in `serviceAccounts` and a Deployment \
             using it, {} times each, regcred's controller running: with ServiceAccount patching alone **{} of {}** \
             pods were created without the pull secret ({} pulls failed); with the admission webhook on, **{} of {}** \
             ({} pulls failed).",
            r.tries,
            r.without_secret,
            r.tries,
            r.pull_failed,
            w.without_secret,
            w.tries,
            w.pull_failed
        );
        out
    }
}
