//! `regcred sync` in every format: written with one token call per source, nothing
//! rewritten when current, only what the admission policy admits, foreign secrets left alone
//! unless adopted, removed on deselection, and never a password in the logs.

use std::collections::BTreeMap;

use base64::Engine as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use serde_json::json;

use super::common::*;
use super::{ARGOCD_LABEL, World, config, data, show, slot_problem};

fn assert_exit(o: &std::process::Output, code: i32) {
    assert_eq!(o.status.code(), Some(code), "{}", show(o));
}

fn summary(o: &std::process::Output) -> String {
    stdout(o).lines().next().unwrap_or_default().to_owned()
}

fn rv(s: &Secret) -> String {
    s.metadata
        .resource_version
        .clone()
        .expect("resourceVersion")
}

/// Creating `s` in `ns` as `client` (a dry run): refused by the admission policy.
async fn assert_refused_by_policy(client: &kube::Client, ns: &str, s: &Secret, what: &str) {
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    match Api::<Secret>::namespaced(client.clone(), ns)
        .create(&dry_run, s)
        .await
    {
        Ok(_) => panic!("{what}: admitted"),
        Err(kube::Error::Api(e)) => assert!(
            e.code == 403 && e.message.contains("ValidatingAdmissionPolicy"),
            "{what}: refused, but not by the policy: {e:?}"
        ),
        Err(e) => panic!("{what}: {e}"),
    }
}

fn secret(name: &str, type_: &str, managed: bool, data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: managed.then(|| [(MANAGED_BY.to_owned(), "regcred".to_owned())].into()),
            ..ObjectMeta::default()
        },
        type_: Some(type_.to_owned()),
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Secret::default()
    }
}

#[tokio::test]
#[allow(clippy::too_many_lines)] // One lifecycle, told in order.
async fn every_format_is_written_from_one_token_per_source_kept_when_current_and_removed_when_deselected()
 {
    let w = World::new("fmt-sync").await;
    // c is not selected: the policy is asked there.
    let (ns_a, ns_b, elsewhere) = (w.ns("a"), w.ns("b"), unique("fmt-policy"));
    for ns in [&ns_a, &ns_b, &elsewhere] {
        create_namespace(&w.admin, ns, &[]).await;
    }
    let (_d, all) = config(&w.entries(&[&format!("{}-*", w.prefix)]));
    let (out, key) = w.sync(&all, None);
    assert_exit(&out, 0);
    assert!(
        summary(&out).starts_with(
            "synced 2 namespaces (2 written, 0 unchanged, 0 skipped, 0 failed) for 2 registries"
        ),
        "{}",
        show(&out)
    );
    // Eight secrets, three of them on the door in each namespace: one ECR call, one ECR
    // Public call.
    assert_eq!(
        stack().token_calls(&key),
        2,
        "{:?}",
        stack().aws_calls(&key)
    );
    let mut versions = BTreeMap::new();
    let mut door_passwords = std::collections::BTreeSet::new();
    for ns in [&ns_a, &ns_b] {
        for slot in w.slots() {
            let s = w.secret(ns, &slot.name).await;
            assert_eq!(slot_problem(s.as_ref(), &slot, true), None, "{ns}/{slot:?}");
            let s = s.unwrap();
            if slot.host == super::door() {
                door_passwords.insert(data(&s, "password").unwrap());
            }
            versions.insert((ns.clone(), slot.name.clone()), rv(&s));
        }
    }
    assert_eq!(
        door_passwords.len(),
        1,
        "one token for every secret of the door"
    );

    // What the policy admits is exactly what regcred writes: each name with its own type.
    let client = w.who.client().await;
    let repo = w.slot("argocd-repository", &super::door());
    for (s, what) in [
        (
            secret(&w.plain, "Opaque", true, &[("url", "x")]),
            "an Opaque secret of the basic-auth name",
        ),
        (
            secret(
                &repo.name,
                "kubernetes.io/basic-auth",
                true,
                &[("username", "x")],
            ),
            "a basic-auth secret of an Argo CD name",
        ),
        (
            secret(&w.repo, "Opaque", true, &[("url", "x")]),
            "an Opaque secret of the entry's own name (it writes per host)",
        ),
        (
            token_secret(&repo.name),
            "a token secret of an Argo CD name",
        ),
    ] {
        assert_refused_by_policy(&client, &elsewhere, &s, what).await;
    }

    // Nothing due: no token call, no write.
    let (out, key) = w.sync(&all, None);
    assert_exit(&out, 0);
    assert!(
        summary(&out).starts_with("synced 2 namespaces (0 written, 2 unchanged"),
        "{}",
        show(&out)
    );
    assert_eq!(stack().token_calls(&key), 0);
    for ((ns, name), version) in &versions {
        assert_eq!(
            &rv(&w.secret(ns, name).await.unwrap()),
            version,
            "{ns}/{name}"
        );
    }

    // b is no longer selected: its four secrets go, a's stay as they are.
    let (_d, only_a) = config(&w.entries(&[&ns_a]));
    let (out, _) = w.sync(&only_a, None);
    assert_exit(&out, 0);
    assert!(
        summary(&out).starts_with("synced 1 namespaces (0 written, 1 unchanged")
            && summary(&out).contains("removed 4 from namespaces no longer selected"),
        "{}",
        show(&out)
    );
    for slot in w.slots() {
        assert!(
            w.secret(&ns_b, &slot.name).await.is_none(),
            "{ns_b}/{}",
            slot.name
        );
        let kept = w.secret(&ns_a, &slot.name).await.unwrap();
        assert_eq!(rv(&kept), versions[&(ns_a.clone(), slot.name.clone())]);
    }

    // A host leaves the repository entry: its secret's name goes to formerNames, and the
    // secret goes.
    let public = w.slot("argocd-repository", "public.ecr.aws");
    let mut entries = w.entries(&[&ns_a]);
    entries[0]["registries"] = json!([entries[0]["registries"][0].clone()]);
    entries[0]["formerNames"] = json!([public.name]);
    let (_d, fewer) = config(&entries);
    let (out, _) = w.sync(&fewer, None);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("removed 1 of former names"),
        "{}",
        show(&out)
    );
    assert!(w.secret(&ns_a, &public.name).await.is_none());

    // cleanup knows every format: the three left go.
    let cleaned = std::process::Command::new(env!("CARGO_BIN_EXE_regcred"))
        .env_clear()
        .env("KUBECONFIG", stack().var("KUBECONFIG"))
        .args(["cleanup", "--namespace", &ns_a])
        .output()
        .unwrap();
    assert_exit(&cleaned, 0);
    assert_eq!(
        stdout(&cleaned),
        "removed 3 secrets and 0 ServiceAccount references in 1 namespace\n"
    );
    for slot in w.slots() {
        assert!(w.secret(&ns_a, &slot.name).await.is_none(), "{}", slot.name);
    }
}

#[tokio::test]
#[allow(clippy::too_many_lines)] // One story, told in order.
async fn foreign_secrets_of_every_format_are_left_alone_unless_adopted() {
    let w = World::new("fmt-foreign").await;
    let (f, g) = (w.ns("f"), w.ns("g"));
    for ns in [&f, &g] {
        create_namespace(&w.admin, ns, &[]).await;
    }
    let door = super::door();
    let (repo, creds) = (
        w.slot("argocd-repository", &door),
        w.slot("argocd-repo-creds", &door),
    );
    let mut theirs = secret(
        &repo.name,
        "Opaque",
        false,
        &[
            ("type", "helm"),
            ("url", "charts.example.org"),
            ("project", "team-a"),
        ],
    );
    theirs.metadata.labels = Some([(ARGOCD_LABEL.to_owned(), "repository".to_owned())].into());
    let foreign = [
        theirs,
        secret(
            &creds.name,
            "Opaque",
            false,
            &[("url", "charts.example.org/")],
        ),
        secret(
            &w.plain,
            "kubernetes.io/basic-auth",
            false,
            &[("username", "someone"), ("password", "theirs")],
        ),
    ];
    let api = Api::<Secret>::namespaced(w.admin.clone(), &f);
    let mut versions = BTreeMap::new();
    for s in &foreign {
        let created = api.create(&PostParams::default(), s).await.unwrap();
        versions.insert(created.metadata.name.clone().unwrap(), rv(&created));
    }
    let include = [f.as_str()];
    let (_d, file) = config(&w.entries(&include));
    let (out, _) = w.sync(&file, None);
    assert_exit(&out, 1);
    for name in versions.keys() {
        let line = format!(
            "failed: {f}: secret {name} exists and is not managed by regcred; left as it is (set adopt: true to take it over)"
        );
        assert!(
            stdout(&out).lines().any(|l| l == line),
            "{line}\n{}",
            show(&out)
        );
        assert_eq!(
            &rv(&w.secret(&f, name).await.unwrap()),
            &versions[name],
            "{name}"
        );
    }
    wait_for_event(
        &w.admin,
        &f,
        "ForeignSecret",
        std::time::Duration::from_secs(10),
    )
    .await;
    let public = w.slot("argocd-repository", "public.ecr.aws");
    assert_eq!(
        slot_problem(w.secret(&f, &public.name).await.as_ref(), &public, true),
        None
    );

    // adopt: true takes each over: regcred's keys, the owner's others kept (Argo CD's
    // project scoping stays).
    let mut adopting = w.entries(&include);
    for entry in adopting.as_array_mut().unwrap() {
        entry["adopt"] = json!(true);
    }
    let (_d, adopt) = config(&adopting);
    let (out, _) = w.sync(&adopt, None);
    assert_exit(&out, 0);
    for slot in w.slots() {
        let s = w.secret(&f, &slot.name).await;
        assert_eq!(slot_problem(s.as_ref(), &slot, false), None, "{slot:?}");
    }
    let adopted = w.secret(&f, &repo.name).await.unwrap();
    assert_eq!(data(&adopted, "project").as_deref(), Some("team-a"));
    assert_eq!(data(&adopted, "url"), Some(door.clone()));

    // A secret of another type cannot become one of this format.
    let opaque = api_create(
        &w.admin,
        &g,
        &secret(&w.plain, "Opaque", false, &[("a", "b")]),
    )
    .await;
    let mut in_g = adopting.clone();
    for entry in in_g.as_array_mut().unwrap() {
        entry["namespaces"] = json!({"include": [g]});
    }
    let (_d, config_g) = config(&in_g);
    let (out, _) = w.sync(&config_g, None);
    assert_exit(&out, 1);
    assert!(
        stdout(&out).contains(&format!(
            "failed: {g}: cannot adopt secret {g}/{}: it has type \"Opaque\"",
            w.plain
        )),
        "{}",
        show(&out)
    );
    assert_eq!(rv(&w.secret(&g, &w.plain).await.unwrap()), rv(&opaque));
    // f is no longer selected: what regcred adopted there is regcred's, and goes (it held
    // nothing but the one registry's credential).
    for slot in w.slots() {
        assert!(
            w.secret(&f, &slot.name).await.is_none(),
            "{f}/{}",
            slot.name
        );
    }
}

/// A secret the token controller would fill in with the `default` ServiceAccount's token.
fn token_secret(name: &str) -> Secret {
    let mut s = secret(name, "kubernetes.io/service-account-token", false, &[]);
    s.metadata.annotations = Some(
        [(
            "kubernetes.io/service-account.name".to_owned(),
            "default".to_owned(),
        )]
        .into(),
    );
    s
}

async fn api_create(admin: &kube::Client, ns: &str, s: &Secret) -> Secret {
    Api::<Secret>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), s)
        .await
        .unwrap()
}

/// Every form of a password that must never be printed: as is, and base64 as a Secret's
/// `data` carries it.
fn forms(password: &str) -> [String; 2] {
    [
        password.to_owned(),
        base64::engine::general_purpose::STANDARD.encode(password),
    ]
}

#[tokio::test]
async fn trace_logging_never_prints_a_password_of_any_format() {
    let w = World::new("fmt-trace").await;
    let ns = w.ns("t");
    create_namespace(&w.admin, &ns, &[]).await;
    let (_d, file) = config(&w.entries(&[&ns]));
    // A minute's tokens, then ten minutes': the second pass reads, fetches and rewrites.
    let mut outputs = Vec::new();
    let mut forbidden = Vec::new();
    for ttl in ["60s", "600s"] {
        let (mut cmd, key) = regcred(&w.who);
        stack().set_aws_key(&key, &json!({ "ttl": ttl }));
        let out = cmd
            .args(["--log-level", "trace", "sync", "--config"])
            .arg(&file)
            .output()
            .unwrap();
        assert_exit(&out, 0);
        assert!(stderr(&out).contains("TRACE"), "trace logging is on");
        for slot in w.slots() {
            let s = w.secret(&ns, &slot.name).await.unwrap();
            forbidden.extend(forms(&data(&s, "password").unwrap()));
        }
        outputs.push(out);
    }
    assert_eq!(forbidden.len(), 16);
    for out in &outputs {
        for text in [stdout(out), stderr(out)] {
            for f in &forbidden {
                assert!(
                    !text.contains(f.as_str()),
                    "a password ({} chars) in the output",
                    f.len()
                );
            }
        }
    }
}
