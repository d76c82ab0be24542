//! Rows 3 and 4: `regcred run` serving N namespaces — a new namespace gets its secret, a
//! deleted secret comes back — timed by a watch that notes when each secret appears.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};

use crate::common::{create_namespace, wait_for};
use crate::tools::{Percentiles, SecretWatch, percentiles};
use crate::{Bench, LABEL, SECRET};

/// New namespaces created at a steady rate, and how fast.
const NEW_NAMESPACES: usize = 200;
const NEW_NAMESPACE_INTERVAL: Duration = Duration::from_millis(100);
pub const DRIFT_DELETIONS: usize = 100;

/// Namespaces as the bench serves them: its label, and a `default` ServiceAccount (there is
/// no controller-manager in the bench's cluster to make one), 32 at a time.
pub async fn create_served(admin: &kube::Client, names: &[String]) {
    use futures::StreamExt as _;
    futures::stream::iter(names)
        .for_each_concurrent(32, |name| async move {
            create_namespace(admin, name, &[LABEL]).await;
            let sa = ServiceAccount {
                metadata: ObjectMeta {
                    name: Some("default".into()),
                    ..ObjectMeta::default()
                },
                ..ServiceAccount::default()
            };
            Api::<ServiceAccount>::namespaced(admin.clone(), name)
                .create(&PostParams::default(), &sa)
                .await
                .unwrap_or_else(|e| panic!("create {name}/default: {e}"));
        })
        .await;
}

/// New-namespace and drift-repair latencies.
pub struct Served {
    pub new_namespace: Percentiles,
    pub drift: Percentiles,
}

/// 3 and 4 at N, with one `regcred run`.
pub async fn measure(b: &Bench) -> Served {
    let (mut run, _key) = b.start_run(&b.config, &[], None);
    let first_pass = run.wait_ready(Duration::from_mins(15)).await;
    b.say(&format!(
        "regcred run ready (first full reconciliation) in {first_pass:.1?}"
    ));
    assert_eq!(b.served(SECRET).await, b.n, "every namespace served");
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
    let new_namespace = percentiles(latencies);

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
    run.signal("TERM");
    run.wait_exit(Duration::from_secs(10)).expect("run stopped");
    Served {
        new_namespace,
        drift: percentiles(latencies),
    }
}
