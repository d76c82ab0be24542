//! What each kind of write costs the API server: the same secret created by server-side
//! apply and by a plain create, updated by a forced apply, a JSON merge patch and a replace
//! (each guarded by the resourceVersion read), and a ServiceAccount's `imagePullSecrets`
//! patched. Each is made `count` times, 16 at a time, and measured by the API server's own
//! `process_cpu_seconds_total` and the wall time. This is what chose regcred's requests.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::common::{PrivateCluster, create_namespaces_at_once, metric_sum};

const CONCURRENCY: usize = 16;

/// One kind of request: how much API-server CPU and wall time `count` of them took.
#[derive(Debug)]
pub struct Cost {
    pub what: &'static str,
    pub count: usize,
    pub cpu: f64,
    pub wall: Duration,
}

/// Every kind measured.
#[derive(Debug)]
pub struct Writes {
    pub costs: Vec<Cost>,
}

fn cpu(cluster: &PrivateCluster) -> f64 {
    metric_sum(
        &cluster.apiserver_metrics(),
        "process_cpu_seconds_total",
        |_| true,
    )
}

/// A secret shaped like regcred's (label, annotations, a `.dockerconfigjson` with one
/// registry and a 128-character password), `round` making its content differ.
fn secret(namespace: &str, round: u32) -> Secret {
    let password = format!("{round:0>128}");
    let auth = base64_of(&format!("AWS:{password}"));
    let doc = json!({"auths": {"127.0.0.1:25002": {"username": "AWS", "password": password, "auth": auth}}});
    Secret {
        metadata: ObjectMeta {
            name: Some("regcred".into()),
            namespace: Some(namespace.to_owned()),
            labels: Some([("app.kubernetes.io/managed-by".into(), "regcred".into())].into()),
            annotations: Some(
                [
                    (
                        "regcred.io/expires-at".to_owned(),
                        format!("2026-11-29T{:02}:00:00Z", round % 24),
                    ),
                    ("regcred.io/registries".to_owned(), "127.0.0.1:25002".into()),
                ]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/dockerconfigjson".into()),
        data: Some(
            [(
                ".dockerconfigjson".to_owned(),
                ByteString(doc.to_string().into_bytes()),
            )]
            .into(),
        ),
        ..Secret::default()
    }
}

fn base64_of(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

async fn each<F, Fut>(names: &[String], f: F)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    futures::stream::iter(names.iter().cloned())
        .for_each_concurrent(CONCURRENCY, f)
        .await;
}

async fn resource_version(api: &Api<Secret>) -> String {
    api.get("regcred")
        .await
        .expect("read the secret")
        .metadata
        .resource_version
        .unwrap()
}

/// Runs `fut`, and what it cost the API server.
async fn timed(
    cluster: &PrivateCluster,
    what: &'static str,
    count: usize,
    fut: impl std::future::Future<Output = ()>,
) -> Cost {
    let (before, start) = (cpu(cluster), Instant::now());
    fut.await;
    Cost {
        what,
        count,
        cpu: cpu(cluster) - before,
        wall: start.elapsed(),
    }
}

/// Measures every kind over `count` namespaces of a private cluster of its own.
#[allow(clippy::too_many_lines)] // One measurement after another.
pub async fn measure(count: usize, say: impl Fn(&str)) -> Writes {
    let cluster = PrivateCluster::start(&[]);
    let admin = cluster.admin().await;
    let prefix = |p: &str| -> Vec<String> { (0..count).map(|i| format!("{p}-{i:05}")).collect() };
    let (applied, created) = (prefix("w-apply"), prefix("w-create"));
    let all: Vec<String> = applied.iter().chain(&created).cloned().collect();
    create_namespaces_at_once(&admin, &all, &[], 32).await;
    say(&format!("write costs: {} namespaces made", all.len()));
    let secrets = |ns: &str| Api::<Secret>::namespaced(admin.clone(), ns);
    let apply = PatchParams::apply("regcred");
    let forced = PatchParams::apply("regcred").force();
    let plain = PatchParams {
        field_manager: Some("regcred".into()),
        ..PatchParams::default()
    };
    let post = PostParams {
        field_manager: Some("regcred".into()),
        ..PostParams::default()
    };
    let mut costs = Vec::new();
    let mut note = |c: Cost| {
        say(&format!(
            "{}: {:.2} s API-server CPU, {:.1?}",
            c.what, c.cpu, c.wall
        ));
        costs.push(c);
    };
    note(
        timed(
            &cluster,
            "create a secret by server-side apply",
            count,
            each(&applied, |ns| {
                let (api, apply) = (secrets(&ns), &apply);
                async move {
                    api.patch("regcred", apply, &Patch::Apply(&secret(&ns, 0)))
                        .await
                        .expect("apply");
                }
            }),
        )
        .await,
    );
    note(
        timed(
            &cluster,
            "create a secret (POST)",
            count,
            each(&created, |ns| {
                let (api, post) = (secrets(&ns), &post);
                async move {
                    api.create(post, &secret(&ns, 0)).await.expect("create");
                }
            }),
        )
        .await,
    );
    // Updates, each guarded by the resourceVersion read just before (the same read for
    // every kind; regcred takes it from its cache instead).
    note(
        timed(
            &cluster,
            "GET + update a secret by forced server-side apply",
            count,
            each(&applied, |ns| {
                let (api, forced) = (secrets(&ns), &forced);
                async move {
                    let mut s = secret(&ns, 1);
                    s.metadata.resource_version = Some(resource_version(&api).await);
                    api.patch("regcred", forced, &Patch::Apply(&s))
                        .await
                        .expect("apply");
                }
            }),
        )
        .await,
    );
    note(
        timed(
            &cluster,
            "GET + update a secret by JSON merge patch",
            count,
            each(&created, |ns| {
                let (api, plain) = (secrets(&ns), &plain);
                async move {
                    let s = secret(&ns, 1);
                    let patch = json!({
                        "metadata": {
                            "resourceVersion": resource_version(&api).await,
                            "annotations": s.metadata.annotations,
                        },
                        "data": s.data,
                    });
                    api.patch("regcred", plain, &Patch::Merge(&patch))
                        .await
                        .expect("merge patch");
                }
            }),
        )
        .await,
    );
    note(
        timed(
            &cluster,
            "GET + update a secret by replace (PUT)",
            count,
            each(&created, |ns| {
                let (api, post) = (secrets(&ns), &post);
                async move {
                    let mut s = secret(&ns, 2);
                    s.metadata.resource_version = Some(resource_version(&api).await);
                    api.replace("regcred", post, &s).await.expect("replace");
                }
            }),
        )
        .await,
    );
    note(
        timed(
            &cluster,
            "GET a secret",
            count,
            each(&created, |ns| {
                let api = secrets(&ns);
                async move {
                    resource_version(&api).await;
                }
            }),
        )
        .await,
    );
    each(&created, |ns| {
        let api = Api::<ServiceAccount>::namespaced(admin.clone(), &ns);
        async move {
            let sa = ServiceAccount {
                metadata: ObjectMeta {
                    name: Some("default".into()),
                    ..ObjectMeta::default()
                },
                ..ServiceAccount::default()
            };
            api.create(&PostParams::default(), &sa)
                .await
                .expect("create serviceaccount");
        }
    })
    .await;
    note(timed(&cluster, "GET + patch a ServiceAccount's imagePullSecrets (merge patch with resourceVersion)", count, each(&created, |ns| {
        let (api, plain) = (Api::<ServiceAccount>::namespaced(admin.clone(), &ns), &plain);
        async move {
            let rv = api.get("default").await.expect("get").metadata.resource_version;
            let patch = json!({
                "metadata": {"resourceVersion": rv, "annotations": {"regcred.io/image-pull-secrets": "regcred"}},
                "imagePullSecrets": [{"name": "regcred"}],
            });
            api.patch("default", plain, &Patch::Merge(&patch)).await.expect("patch serviceaccount");
        }
    })).await);
    drop(cluster);
    Writes { costs }
}

impl Writes {
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n### What each kind of request costs the API server\n\n\
             The same regcred-shaped secret, {CONCURRENCY} requests at a time, in a private cluster of its own; \
             API-server CPU is its `process_cpu_seconds_total` delta.\n"
        );
        let _ = writeln!(
            out,
            "| request | count | API-server CPU | per 1,000 | wall |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|");
        for c in &self.costs {
            #[allow(clippy::cast_precision_loss)]
            let per_1000 = c.cpu / c.count as f64 * 1000.0;
            let _ = writeln!(
                out,
                "| {} | {} | {:.2} s | {per_1000:.2} s | {:.1?} |",
                c.what, c.count, c.cpu, c.wall
            );
        }
        out
    }
}
