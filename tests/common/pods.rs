//! Pods on the stack's node, seen the way a user sees them: created, then Running or stuck
//! in `ErrImagePull`/`ImagePullBackOff`, with the kubelet's pull-failure Events counted.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Event, LocalObjectReference, Pod, PodSpec};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};

use super::stack;

/// The node's name; panics when the stack runs without one (REGCRED_TEST_NODE=off), since
/// these tests must not pass without a node.
pub fn node() -> &'static str {
    stack()
        .env
        .get("REGCRED_TEST_NODE")
        .map(String::as_str)
        .expect(
            "the stack has no node (REGCRED_TEST_NODE=off?): start it with scripts/testenv.sh up",
        )
}

/// How a pod's image pull ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pull {
    /// The container runs: the image was pulled.
    Running,
    /// The kubelet gave up on the pull (`ErrImagePull`, `ImagePullBackOff`), with its message.
    Failed(String),
    /// Neither within the wait.
    Undecided,
}

/// A pod of the stack's test image on the node: host network, pulled every time
/// (`imagePullPolicy: Always`), stopped at once when deleted.
pub fn app_pod(
    name: &str,
    image: &str,
    service_account: Option<&str>,
    pull_secrets: &[&str],
) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some([("app".to_owned(), "regcred-test".to_owned())].into()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            host_network: Some(true),
            termination_grace_period_seconds: Some(0),
            restart_policy: Some("Never".into()),
            service_account_name: service_account.map(str::to_owned),
            image_pull_secrets: (!pull_secrets.is_empty()).then(|| {
                pull_secrets
                    .iter()
                    .map(|n| LocalObjectReference {
                        name: (*n).to_owned(),
                    })
                    .collect()
            }),
            containers: vec![Container {
                name: "app".into(),
                image: Some(image.to_owned()),
                image_pull_policy: Some("Always".into()),
                command: Some(vec!["/bin/busybox".into(), "sleep".into(), "3600".into()]),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

/// What the pod's first container says about its image: Running, a pull failure, or nothing
/// decided yet.
pub fn pull_state(pod: &Pod) -> Pull {
    let Some(status) = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
    else {
        return Pull::Undecided;
    };
    let state = status.state.clone().unwrap_or_default();
    if state.running.is_some() {
        return Pull::Running;
    }
    if let Some(waiting) = state.waiting {
        let reason = waiting.reason.unwrap_or_default();
        if matches!(reason.as_str(), "ErrImagePull" | "ImagePullBackOff") {
            return Pull::Failed(format!("{reason}: {}", waiting.message.unwrap_or_default()));
        }
    }
    if status.image_id.is_empty() {
        Pull::Undecided
    } else {
        // Pulled, and already past running (it only sleeps, so this is rare).
        Pull::Running
    }
}

/// Creates `pod` in `namespace`, waits until its pull is decided (or `timeout`), deletes it;
/// the outcome.
pub async fn pull_once(
    client: &kube::Client,
    namespace: &str,
    pod: &Pod,
    timeout: Duration,
) -> Pull {
    let pods = Api::<Pod>::namespaced(client.clone(), namespace);
    let name = pod.metadata.name.clone().expect("a named pod");
    if let Err(e) = pods.create(&PostParams::default(), pod).await {
        return Pull::Failed(format!("create: {e}"));
    }
    let deadline = Instant::now() + timeout;
    let mut outcome = Pull::Undecided;
    while Instant::now() < deadline {
        if let Ok(p) = pods.get(&name).await {
            outcome = pull_state(&p);
            if outcome != Pull::Undecided {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let _ = pods
        .delete(&name, &DeleteParams::default().grace_period(0))
        .await;
    outcome
}

/// Pull outcomes of a stream of pods.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub attempted: usize,
    pub running: usize,
    pub failed: usize,
    pub undecided: usize,
    /// A few failure messages, for the report.
    pub examples: Vec<String>,
}

impl Tally {
    fn add(&mut self, outcome: &Pull) {
        self.attempted += 1;
        match outcome {
            Pull::Running => self.running += 1,
            Pull::Failed(why) => {
                self.failed += 1;
                if self.examples.len() < 3 {
                    self.examples.push(why.chars().take(300).collect());
                }
            }
            Pull::Undecided => self.undecided += 1,
        }
    }
}

/// Creates a pod from `make(i)` in `namespaces[i % len]` every `every`, for `during`;
/// waits for every pull to be decided (up to `timeout` each) and tallies the outcomes.
pub async fn stream_pods<F>(
    client: &kube::Client,
    namespaces: Arc<Mutex<Vec<String>>>,
    every: Duration,
    during: Duration,
    timeout: Duration,
    make: F,
) -> Tally
where
    F: Fn(usize) -> Pod,
{
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut tasks = Vec::new();
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < during {
        let ns = {
            let list = namespaces.lock().unwrap();
            list[i % list.len()].clone()
        };
        let pod = make(i);
        let (client, tally) = (client.clone(), tally.clone());
        tasks.push(tokio::spawn(async move {
            let outcome = pull_once(&client, &ns, &pod, timeout).await;
            tally.lock().unwrap().add(&outcome);
        }));
        i += 1;
        tokio::time::sleep(every).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    Arc::try_unwrap(tally).unwrap().into_inner().unwrap()
}

/// The kubelet's pull-failure Events in these namespaces (`Failed` and `BackOff` about an
/// image pull), counting repeats the way `kubectl get events` shows them.
pub async fn pull_failure_events(client: &kube::Client, namespaces: &[String]) -> i32 {
    let mut total = 0;
    for ns in namespaces {
        let events = Api::<Event>::namespaced(client.clone(), ns)
            .list(&ListParams::default())
            .await
            .expect("list events");
        for e in events.items {
            let reason = e.reason.unwrap_or_default();
            let message = e.message.unwrap_or_default().to_lowercase();
            if matches!(reason.as_str(), "Failed" | "BackOff") && message.contains("pull") {
                total += e.count.unwrap_or(1);
            }
        }
    }
    total
}

/// Pods in `namespace` by name, with the pull secrets each was created with.
pub async fn pull_secrets_of_pods(
    client: &kube::Client,
    namespace: &str,
) -> BTreeMap<String, Vec<String>> {
    Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .expect("list pods")
        .items
        .into_iter()
        .map(|p| {
            let secrets = p
                .spec
                .and_then(|s| s.image_pull_secrets)
                .unwrap_or_default()
                .into_iter()
                .map(|r| r.name)
                .collect();
            (p.metadata.name.unwrap_or_default(), secrets)
        })
        .collect()
}
