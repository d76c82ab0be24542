//! `regcred run` in every format: the spec's metrics, no write when current (and none for
//! what others add), edits and deletions repaired at once, and rotation without a gap or an
//! expired password.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;

use super::common::*;
use super::{World, config, data, door, slot_problem};

fn start(w: &World, config: &std::path::Path, ttl: Option<&str>) -> Running {
    let (cmd, key) = regcred(&w.who);
    if let Some(ttl) = ttl {
        stack().set_aws_key(&key, &json!({ "ttl": ttl }));
    }
    Running::start(
        cmd,
        &[
            "--config",
            config.to_str().unwrap(),
            "--lease-namespace",
            &w.who.namespace,
        ],
    )
}

fn rv(s: &Secret) -> String {
    s.metadata
        .resource_version
        .clone()
        .expect("resourceVersion")
}

/// A generous bound for "within a second" on a loaded 2-core machine.
const PROMPT: Duration = Duration::from_secs(3);

#[tokio::test]
#[allow(clippy::too_many_lines)] // One controller's life, told in order.
async fn the_controller_keeps_every_format_current_and_leaves_what_others_add() {
    let w = World::new("fmt-run").await;
    let ns = w.ns("x");
    create_namespace(&w.admin, &ns, &[]).await;
    let (_d, file) = config(&w.entries(&[&ns]));
    let run = start(&w, &file, None);
    run.wait_ready(Duration::from_mins(1)).await;
    for slot in w.slots() {
        let s = w.secret(&ns, &slot.name).await;
        assert_eq!(slot_problem(s.as_ref(), &slot, true), None, "{slot:?}");
    }
    let metric = |result: &str| {
        run.metric(&format!(
            "regcred_secret_writes_total{{result=\"{result}\"}}"
        ))
    };
    // At least the four: a reconciliation that runs before every secret watch has seen
    // the others' creation applies them again, unchanged (the API server stores nothing).
    assert!(metric("created") >= 3.5, "{}", metric("created"));
    let expiry = run.metric(&format!(
        "regcred_token_expiry_timestamp_seconds{{registry=\"{}\"}}",
        door()
    ));
    #[allow(clippy::cast_precision_loss)] // Epoch seconds.
    let now = jiff::Timestamp::now().as_second() as f64;
    assert!(expiry > now, "the door's token expiry: {expiry}");

    // Someone adds a key of their own (Argo CD's project) and an annotation: theirs, no
    // write, and they stay.
    let door = door();
    let repo = w.slot("argocd-repository", &door);
    let api = Api::<Secret>::namespaced(w.admin.clone(), &ns);
    let unchanged = metric("unchanged");
    let edited = api
        .patch(
            &repo.name,
            &PatchParams::default(),
            &Patch::Merge(&json!({
                "metadata": {"annotations": {"team": "a"}},
                "stringData": {"project": "team-a"},
            })),
        )
        .await
        .unwrap();
    wait_for("the change looked at", PROMPT, || async {
        (metric("unchanged") >= unchanged + 4.0).then_some(())
    })
    .await;
    let after = w.secret(&ns, &repo.name).await.unwrap();
    assert_eq!(
        rv(&after),
        rv(&edited),
        "regcred rewrote a secret that was current"
    );
    assert_eq!(data(&after, "project").as_deref(), Some("team-a"));

    // An edit of what regcred writes is repaired at once; so is a deletion.
    let creds = w.slot("argocd-repo-creds", &door);
    api.patch(
        &creds.name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"stringData": {"url": "charts.example.org/"}})),
    )
    .await
    .unwrap();
    let t0 = Instant::now();
    wait_for("the template's url repaired", PROMPT, || async {
        let s = w.secret(&ns, &creds.name).await;
        slot_problem(s.as_ref(), &creds, true)
            .is_none()
            .then_some(())
    })
    .await;
    eprintln!("edited url repaired in {:?}", t0.elapsed());
    let plain = w.slot("basic-auth", &door);
    let created = metric("created");
    api.delete(&plain.name, &DeleteParams::default())
        .await
        .unwrap();
    let t0 = Instant::now();
    wait_for("the basic-auth secret back", PROMPT, || async {
        let s = w.secret(&ns, &plain.name).await;
        slot_problem(s.as_ref(), &plain, true)
            .is_none()
            .then_some(())
    })
    .await;
    eprintln!("deleted secret back in {:?}", t0.elapsed());
    assert!(metric("updated") >= 0.5, "{}", metric("updated"));
    assert!(metric("created") >= created + 0.5, "{}", metric("created"));
    assert!(metric("failed") < 0.5 && metric("foreign") < 0.5);
}

/// Reads every secret every 10 ms across at least four rotations of each: it must always
/// exist, be regcred's, and hold a password the registry still accepts, whose expiry it
/// announces. A key someone else added lives through every rotation.
#[tokio::test]
async fn every_format_rotates_without_a_gap_or_an_expired_password() {
    let w = World::new("fmt-rotate").await;
    let ns = w.ns("r");
    create_namespace(&w.admin, &ns, &[]).await;
    let (_d, file) = config(&w.entries(&[&ns]));
    // Tokens live 6 s: regcred renews every 3 s (half their life).
    let run = start(&w, &file, Some("6s"));
    run.wait_ready(Duration::from_mins(1)).await;
    let repo = w.slot("argocd-repository", &door());
    Api::<Secret>::namespaced(w.admin.clone(), &ns)
        .patch(
            &repo.name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"stringData": {"project": "team-a"}})),
        )
        .await
        .unwrap();
    let slots = w.slots();
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let (mut samples, t0) = (0_u32, Instant::now());
    while slots
        .iter()
        .any(|s| seen.get(&s.name).map_or(0, BTreeSet::len) < 5)
    {
        assert!(
            t0.elapsed() < Duration::from_mins(2),
            "too few rotations: {:?}",
            seen.values().map(BTreeSet::len).collect::<Vec<_>>()
        );
        for slot in &slots {
            let s = w.secret(&ns, &slot.name).await;
            if let Some(why) = slot_problem(s.as_ref(), slot, false) {
                panic!("sample {samples}, {}: {why}", slot.name);
            }
            let password = data(&s.unwrap(), "password").unwrap();
            seen.entry(slot.name.clone()).or_default().insert(password);
        }
        samples += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let repo_now = w.secret(&ns, &repo.name).await.unwrap();
    assert_eq!(data(&repo_now, "project").as_deref(), Some("team-a"));
    eprintln!(
        "{samples} samples of {} secrets over {:?}, at least 4 rotations each, never missing or expired",
        slots.len(),
        t0.elapsed()
    );
}
