//! The measurements beside the controller's: `regcred credential-provider` as kubelet runs
//! it, and pods on the stack's node across token expiry.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{self, stack, stderr, unique};
use crate::report::{Pods, Provider};
use crate::tools::percentiles;
use crate::{say, setting};

/// 7: `regcred credential-provider` as kubelet runs it, with a warm `--cache-dir` and without.
pub fn measure_provider(calls: usize) -> Provider {
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
pub async fn measure_pods(t0: Instant) -> Pods {
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
