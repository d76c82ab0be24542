//! What `sync` prints: never a secret (even at trace level), a dry run that says what it
//! would do, JSON log lines.

use std::process::{Command, Output};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::Api;
use serde_json::{Value, json};

use crate::common::*;
use crate::world::*;

// ---------------------------------------------------------------------------------------
// Secrets never reach the logs, even at trace level.

/// Every form of the values in these pull secrets that must never be printed: each
/// password, each `auth`, and the whole document as stored (base64).
fn forbidden(secrets: &[Secret], extra: &[String]) -> Vec<String> {
    let mut v = extra.to_vec();
    for s in secrets {
        v.push(BASE64.encode(raw_data(s)));
        for entry in dockerconfig(s)["auths"]
            .as_object()
            .expect("auths")
            .values()
        {
            for field in ["password", "auth"] {
                v.push(entry[field].as_str().expect(field).to_owned());
            }
        }
    }
    v
}

fn assert_no_secrets(out: &Output, forbidden: &[String], what: &str) {
    for (stream, text) in [("stdout", stdout(out)), ("stderr", stderr(out))] {
        for f in forbidden {
            if let Some(at) = text.find(f.as_str()) {
                let line = text[..at].rsplit('\n').next().unwrap_or_default();
                panic!(
                    "{what}: {stream} shows a secret ({} chars) in a line starting {:?}",
                    f.len(),
                    line.chars().take(300).collect::<String>()
                );
            }
        }
    }
}

async fn trace_run(how: &str) {
    let admin = stack().admin().await;
    let name = unique("pull-trace");
    let ns = unique("trace");
    create_namespace(&admin, &ns, &[]).await;
    create_service_account(&admin, &ns, "default", &[]).await;
    let who = chart_identity(&admin, &[&name], true).await;
    let token = std::fs::read_to_string(&who.kubeconfig)
        .unwrap()
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: ").map(str::to_owned))
        .expect("token in kubeconfig");
    let (_d, file) = config_file(&config(
        &name,
        &format!("{}{}", registry_alias_yaml(), registry_line(PUBLIC_HOST)),
        &format!("{}    serviceAccounts: [default]\n", include(&[&ns])),
    ));
    let traced = |cmd: &mut Command| match how {
        "--log-level" => {
            cmd.args(["--log-level", "trace"]);
        }
        "RUST_LOG" => {
            cmd.env("RUST_LOG", "trace").args(["--log-format", "json"]);
        }
        _ => unreachable!(),
    };
    // First pass creates the secret; its tokens live a minute, so the second pass reads the
    // stored secret, fetches new tokens (with another lifetime, so the secret differs) and
    // writes it again: every path a secret takes.
    let mut outputs = Vec::new();
    let mut written = Vec::new();
    for (pass, ttl) in [60, 600].into_iter().enumerate() {
        let (mut cmd, key) = sync(&who, &file, &[]);
        traced(&mut cmd);
        stack().set_aws_key(&key, &json!({ "ttl": ttl }));
        let out = run(cmd);
        assert_exit(&out, 0);
        assert_counts(
            &out,
            "synced 1 namespaces (1 written, 0 unchanged, 0 skipped, 0 failed)",
        );
        assert_eq!(stack().token_calls(&key), 2, "pass {pass}");
        let err = stderr(&out);
        assert!(
            err.contains("TRACE") && err.contains("GetAuthorizationToken"),
            "{how}: trace logging is on"
        );
        outputs.push(out);
        // Each pass wrote new tokens: every one of them must stay out of every log.
        written.push(secret(&admin, &ns, &name).await);
    }
    let forbidden = forbidden(&written, &[token]);
    for (pass, out) in outputs.iter().enumerate() {
        assert_no_secrets(out, &forbidden, &format!("{how}=trace, pass {pass}"));
    }
}

#[tokio::test]
async fn trace_logging_with_the_flag_never_prints_a_secret() {
    trace_run("--log-level").await;
}

#[tokio::test]
async fn trace_logging_with_rust_log_never_prints_a_secret() {
    trace_run("RUST_LOG").await;
}

// ---------------------------------------------------------------------------------------
// --dry-run writes nothing and says what it would do.

#[tokio::test]
async fn dry_run_writes_nothing_and_says_what_it_would_do() {
    let admin = stack().admin().await;
    let name = unique("pull-dry");
    let prefix = unique("dry");
    let label = unique("regcred-dry");
    let (fresh, due, gone) = (
        format!("{prefix}-new"),
        format!("{prefix}-due"),
        format!("{prefix}-gone"),
    );
    create_namespaces(
        &admin,
        &[due.clone(), gone.clone()],
        &[(label.as_str(), "on")],
    )
    .await;
    let who = chart_identity(&admin, &[&name], true).await;
    let (_d, file) = config_file(&config(
        &name,
        &registry_alias_yaml(),
        &format!(
            "    namespaces:\n      include: [\"{prefix}-*\"]\n      selector: \"{label}=on\"\n    serviceAccounts: [default]\n"
        ),
    ));
    let (cmd, key) = sync(&who, &file, &[]);
    stack().set_aws_key(&key, &json!({"ttl": 60}));
    assert_exit(&run(cmd), 0);
    // Now: one namespace new (with a ServiceAccount), one due for renewal, one deselected.
    create_namespace(&admin, &fresh, &[(label.as_str(), "on")]).await;
    create_service_account(&admin, &fresh, "default", &["other"]).await;
    set_namespace_label(&admin, &gone, &label, "off").await;
    let due_before = secret(&admin, &due, &name).await;
    let gone_before = secret(&admin, &gone, &name).await;
    let sa_before = Api::<ServiceAccount>::namespaced(admin.clone(), &fresh)
        .get("default")
        .await
        .unwrap();

    let (cmd, _) = sync(&who, &file, &["--dry-run"]);
    let out = run(cmd);
    assert_exit(&out, 0);
    let text = stdout(&out);
    for line in [
        format!("would create secret {fresh}/{name}"),
        format!("would update secret {due}/{name}"),
        format!("would delete secret {gone}/{name} (namespace no longer selected)"),
        format!("would add {name} in serviceaccount {fresh}/default imagePullSecrets"),
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line:?} missing\n{}",
            show(&out)
        );
    }
    let last = text.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(
            "dry run: would have synced 2 namespaces (2 written, 0 unchanged, 0 skipped, 0 failed) for 1 registries; removed 1 from namespaces no longer selected"
        ),
        "{}",
        show(&out)
    );

    assert!(get_secret(&admin, &fresh, &name).await.is_none());
    assert_eq!(rv(&secret(&admin, &due, &name).await), rv(&due_before));
    assert_eq!(rv(&secret(&admin, &gone, &name).await), rv(&gone_before));
    let sa_after = Api::<ServiceAccount>::namespaced(admin.clone(), &fresh)
        .get("default")
        .await
        .unwrap();
    assert_eq!(
        sa_after.metadata.resource_version,
        sa_before.metadata.resource_version
    );
}

// ---------------------------------------------------------------------------------------
// --log-format json: JSON lines on stderr.

#[tokio::test]
async fn json_log_format_writes_json_lines_on_stderr() {
    let admin = stack().admin().await;
    let name = unique("pull-json");
    let ns = unique("json");
    create_namespace(&admin, &ns, &[]).await;
    let who = chart_identity(&admin, &[&name], false).await;
    let (_d, file) = config_file(&config(&name, &registry_alias_yaml(), &include(&[&ns])));
    let (cmd, _) = sync(&who, &file, &["--log-format", "json"]);
    let out = run(cmd);
    assert_exit(&out, 0);
    assert_counts(
        &out,
        "synced 1 namespaces (1 written, 0 unchanged, 0 skipped, 0 failed)",
    );
    let err = stderr(&out);
    let lines: Vec<Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect();
    assert!(!lines.is_empty(), "some log lines");
    for l in &lines {
        assert!(l["timestamp"].is_string() && l["level"].is_string(), "{l}");
        assert!(l["target"].is_string(), "{l}");
    }
    assert!(
        lines.iter().any(|l| l["level"] == "INFO"
            && l["namespace"] == ns.as_str()
            && l["secret"] == name.as_str()),
        "a line about the written secret, with its fields: {err}"
    );
}
