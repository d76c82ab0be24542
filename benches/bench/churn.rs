//! Issue 12, item 10: the controller's per-namespace bookkeeping follows the namespaces that
//! exist. One `regcred run` serves `CHURN` namespaces (default 10,000) created at once; then
//! every one is deleted for good. Its memory and `regcred_namespaces_tracked` are read before,
//! with them, and after.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, ListParams, PostParams};

use crate::common::{Running, create_namespaces_at_once, wait_for};
use crate::tools::{ProcStats, proc_stats};

/// One moment of the churn: `regcred_namespaces_tracked` and the process's memory.
#[derive(Debug)]
pub struct Moment {
    pub what: String,
    pub tracked: f64,
    pub stats: ProcStats,
}

/// What the churn did to regcred.
#[derive(Debug)]
pub struct Churn {
    pub namespaces: usize,
    pub moments: Vec<Moment>,
    /// Per cycle: created in, all served after, deleted in, all forgotten after.
    pub timings: Vec<[Duration; 4]>,
}

/// Deletes a namespace for good: the namespace first (terminating, it takes no new object,
/// so regcred cannot put its secret back meanwhile), then its secrets, then its finalizer (no
/// namespace controller runs in the test clusters).
async fn delete_for_good(admin: &kube::Client, ns: &str) {
    let api = Api::<Namespace>::all(admin.clone());
    api.delete(ns, &DeleteParams::default())
        .await
        .expect("delete namespace");
    Api::<Secret>::namespaced(admin.clone(), ns)
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .expect("delete secrets");
    let mut finalizing = api.get(ns).await.expect("terminating namespace");
    finalizing.spec.get_or_insert_default().finalizers = Some(vec![]);
    api.replace_subresource("finalize", ns, &PostParams::default(), &finalizing)
        .await
        .expect("finalize namespace");
}

async fn count_secrets(admin: &kube::Client, name: &str, prefix: &str) -> usize {
    Api::<Secret>::all(admin.clone())
        .list(&ListParams::default().fields(&format!("metadata.name={name}")))
        .await
        .expect("list secrets")
        .items
        .iter()
        .filter(|s| {
            s.metadata
                .namespace
                .as_deref()
                .is_some_and(|ns| ns.starts_with(prefix))
        })
        .count()
}

/// Runs the churn against `run` (ready, serving `<prefix>*`), whose secret is `secret`:
/// `cycles` times, `n` namespaces created at once, served, then deleted for good.
#[allow(clippy::too_many_arguments)] // The churn's settings, passed once.
pub async fn measure(
    admin: &kube::Client,
    run: &Running,
    secret: &str,
    prefix: &str,
    n: usize,
    cycles: usize,
    steady: Duration,
    say: impl Fn(&str),
) -> Churn {
    let tracked = || run.metric("regcred_namespaces_tracked");
    let pid = run.child.id();
    let moment = |what: String| Moment {
        what,
        tracked: tracked(),
        stats: proc_stats(pid),
    };
    let base = tracked();
    tokio::time::sleep(steady).await;
    let mut moments = vec![moment("ready, before".into())];
    let mut timings = Vec::new();
    for cycle in 1..=cycles {
        let names: Vec<String> = (0..n).map(|i| format!("{prefix}{cycle}-{i:05}")).collect();
        let t0 = Instant::now();
        create_namespaces_at_once(admin, &names, &[], 32).await;
        let created_in = t0.elapsed();
        say(&format!(
            "cycle {cycle}: created {n} namespaces in {created_in:.1?}"
        ));
        let this_cycle = format!("{prefix}{cycle}-");
        wait_for(
            "every churn namespace served",
            Duration::from_mins(30),
            || async { (count_secrets(admin, secret, &this_cycle).await == n).then_some(()) },
        )
        .await;
        let served_in = t0.elapsed();
        #[allow(clippy::cast_precision_loss)] // Counts far below 2^52.
        let full = base + n as f64;
        wait_for(
            "every churn namespace tracked",
            Duration::from_mins(5),
            || async { ((tracked() - full).abs() < 0.5).then_some(()) },
        )
        .await;
        moments.push(moment(format!("cycle {cycle}: all {n} served")));
        say(&format!(
            "cycle {cycle}: all served {served_in:.1?} after the first was created; deleting them"
        ));
        let t1 = Instant::now();
        futures::stream::iter(&names)
            .for_each_concurrent(32, |ns| delete_for_good(admin, ns))
            .await;
        let deleted_in = t1.elapsed();
        wait_for(
            "the deleted namespaces forgotten",
            Duration::from_mins(5),
            || async { ((tracked() - base).abs() < 0.5).then_some(()) },
        )
        .await;
        let forgotten_in = t1.elapsed();
        say(&format!(
            "cycle {cycle}: deleted in {deleted_in:.1?}, forgotten {forgotten_in:.1?} after the first deletion; steady for {steady:?}"
        ));
        tokio::time::sleep(steady).await;
        moments.push(moment(format!(
            "cycle {cycle}: all deleted, after {steady:?}"
        )));
        timings.push([created_in, served_in, deleted_in, forgotten_in]);
    }
    Churn {
        namespaces: n,
        moments,
        timings,
    }
}

fn mib(kib: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let m = kib as f64 / 1024.0;
    format!("{m:.1} MiB")
}

impl Churn {
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n### Namespace churn: {} namespaces created, served and deleted, {} times\n",
            self.namespaces,
            self.timings.len()
        );
        let _ = writeln!(
            out,
            "| moment | `regcred_namespaces_tracked` | RSS | anonymous RSS | peak RSS so far |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|");
        for m in &self.moments {
            let _ = writeln!(
                out,
                "| {} | {:.0} | {} | {} | {} |",
                m.what,
                m.tracked,
                mib(m.stats.rss_kib),
                mib(m.stats.anon_kib),
                mib(m.stats.peak_rss_kib)
            );
        }
        for (i, [created, served, deleted, forgotten]) in self.timings.iter().enumerate() {
            let _ = writeln!(
                out,
                "\nCycle {}: created in {created:.1?}, all served {served:.1?} after the first; \
                 deleted in {deleted:.1?}, all forgotten {forgotten:.1?} after the first deletion.",
                i + 1
            );
        }
        out
    }
}
