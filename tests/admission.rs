//! The chart's ValidatingAdmissionPolicy (issue 12): `secrets: create` cannot be scoped by
//! name, and `get` reaches a secret of regcred's name in every namespace, so without more the
//! chart's ServiceAccount could create a `kubernetes.io/service-account-token` secret of its
//! own name where regcred never writes, and read the token the control plane puts in it. The
//! policy lets that ServiceAccount create and update only pull secrets carrying regcred's
//! label, with a configured name. On the real API server, as the installed chart's identity.

mod common;

use std::time::Duration;

use common::helm::*;
use common::*;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use serde_json::{Value, json};

fn secret(name: &str, type_: &str, managed: bool, annotations: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: managed.then(|| [(MANAGED_BY.to_owned(), "regcred".to_owned())].into()),
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        type_: Some(type_.to_owned()),
        // Someone else's registry too, so an adopted one has something to give back.
        data: (type_ == DOCKERCONFIG_TYPE).then(|| {
            [(
                ".dockerconfigjson".to_owned(),
                ByteString(br#"{"auths":{"ghcr.io":{"auth":"cm9ib3Q6eA=="}}}"#.to_vec()),
            )]
            .into()
        }),
        ..Secret::default()
    }
}

/// Creating `s` in `ns` as `client`: refused by the admission policy (not by RBAC, not for
/// being malformed).
async fn assert_refused_by_policy(client: &kube::Client, ns: &str, s: &Secret, what: &str) {
    let api = Api::<Secret>::namespaced(client.clone(), ns);
    match api.create(&PostParams::default(), s).await {
        Ok(_) => panic!("{what}: created"),
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 403, "{what}: {e:?}");
            assert!(
                e.message.contains("ValidatingAdmissionPolicy"),
                "{what}: refused, but not by the policy: {}",
                e.message
            );
        }
        Err(e) => panic!("{what}: {e}"),
    }
}

fn sync(who: &Identity, yaml: &str, ttl: Option<&str>) -> std::process::Output {
    let (_dir, file) = config_file(yaml);
    let (mut cmd, key) = regcred(who);
    if let Some(ttl) = ttl {
        stack().set_aws_key(&key, &json!({ "ttl": ttl }));
    }
    cmd.arg("sync").arg("--config").arg(&file);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "regcred sync failed:\n{}{}",
        stdout(&out),
        stderr(&out)
    );
    out
}

#[tokio::test]
#[allow(clippy::too_many_lines)] // One scenario, told in order.
async fn the_charts_identity_cannot_mint_a_service_account_token_and_still_does_its_work() {
    let admin = stack().admin().await;
    let release = unique("regcred");
    let name = unique("pull");
    let prefix = unique("vap");
    let entry = |include: &str| -> Value {
        json!({
            "name": name,
            "registries": [stack_registry()],
            "namespaces": {"include": [include]},
            "adopt": true,
        })
    };
    install(
        &release,
        &release,
        &json!({"config": {"secrets": [entry(&format!("{prefix}-*"))]}}),
    );
    let who = identity_of(&admin, &release, &release).await;
    let client = who.client().await;

    // The attack: in a namespace regcred excludes, a secret of its own name (RBAC allows
    // create, and get by that name) of the type the token controller fills in.
    let token = secret(
        &name,
        "kubernetes.io/service-account-token",
        false,
        &[("kubernetes.io/service-account.name", "namespace-controller")],
    );
    // The policy takes effect once the API server has seen it: asked with dry runs, which
    // never create anything, until it refuses.
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let kube_system = Api::<Secret>::namespaced(client.clone(), "kube-system");
    wait_for("the policy in force", Duration::from_secs(30), || async {
        match kube_system.create(&dry_run, &token).await {
            Err(kube::Error::Api(e)) if e.message.contains("ValidatingAdmissionPolicy") => Some(()),
            _ => None,
        }
    })
    .await;
    assert_refused_by_policy(
        &client,
        "kube-system",
        &token,
        "a token secret in kube-system",
    )
    .await;

    let (a, b, c) = (
        format!("{prefix}-a"),
        format!("{prefix}-b"),
        format!("{prefix}-c"),
    );
    for ns in [&a, &b, &c] {
        create_namespace(&admin, ns, &[]).await;
    }
    // Other shapes of the same trick, in a namespace regcred serves.
    assert_refused_by_policy(&client, &a, &token, "a token secret").await;
    assert_refused_by_policy(
        &client,
        &a,
        &secret(&name, "Opaque", true, &[]),
        "an Opaque secret",
    )
    .await;
    assert_refused_by_policy(
        &client,
        &a,
        &secret(&name, DOCKERCONFIG_TYPE, false, &[]),
        "a pull secret without regcred's label",
    )
    .await;
    assert_refused_by_policy(
        &client,
        &a,
        &secret(&unique("other"), DOCKERCONFIG_TYPE, true, &[]),
        "a pull secret of another name",
    )
    .await;

    // regcred's own work, as that identity, under the policy: create (a), adopt someone
    // else's pull secret (b), replace its own secret of the wrong type (c), renew everything,
    // give the adopted one back on deselection.
    Api::<Secret>::namespaced(admin.clone(), &b)
        .create(
            &PostParams::default(),
            &secret(&name, DOCKERCONFIG_TYPE, false, &[]),
        )
        .await
        .unwrap();
    Api::<Secret>::namespaced(admin.clone(), &c)
        .create(&PostParams::default(), &secret(&name, "Opaque", true, &[]))
        .await
        .unwrap();
    let all = |include: &str| json!({"secrets": [entry(include)]}).to_string();
    let out = sync(&who, &all(&format!("{prefix}-*")), Some("1h"));
    assert!(
        stdout(&out).starts_with("synced 3 namespaces (3 written"),
        "{}",
        stdout(&out)
    );
    let hosts = [stack().var("REGCRED_TEST_REGISTRY")];
    for ns in [&a, &b, &c] {
        let s = get_secret(&admin, ns, &name).await;
        assert_eq!(managed_secret_problem(s.as_ref(), &hosts), None, "{ns}");
    }
    // Tokens of an hour are due (under refresh.before): the next pass renews all three.
    let out = sync(&who, &all(&format!("{prefix}-*")), None);
    assert!(
        stdout(&out).starts_with("synced 3 namespaces (3 written"),
        "{}",
        stdout(&out)
    );
    // Only a and c selected: b's adopted secret is given back (regcred's label dropped).
    let out = sync(&who, &all(&format!("{prefix}-[ac]")), None);
    assert!(stdout(&out).contains("removed 1"), "{}", stdout(&out));
    let given_back = get_secret(&admin, &b, &name).await.expect("still there");
    assert!(
        !given_back
            .metadata
            .labels
            .unwrap_or_default()
            .contains_key(MANAGED_BY)
    );

    // `regcred check` sees the policy in force.
    let (mut cmd, _) = regcred(&who);
    let (_dir, file) = config_file(&all(&format!("{prefix}-*")));
    let out = cmd
        .args(["check", "--output", "json", "--lease-namespace", &release])
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    let row = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "secret admission policy")
        .unwrap_or_else(|| panic!("no policy row in {report:#}"));
    assert_eq!(row["ok"], true, "{row:#}");
}
