//! `regcred sync` against the real stack, acting as a ServiceAccount that holds exactly the
//! chart's least-privilege RBAC: issue 3's "Done when" list, one test (or a few) per bullet.
//!
//! Every test works in namespaces of its own (a unique prefix selected by a glob, or a unique
//! label selected by a selector) and a secret name of its own, so tests running at once, and
//! other test binaries on the same stack, never see each other's objects.

#[path = "../common/mod.rs"]
mod common;
mod failures;
mod logs;
mod ownership;
mod world;

use std::collections::BTreeMap;
use std::time::Instant;

use k8s_openapi::api::core::v1::Secret;
use serde_json::json;

use common::*;
use world::*;

// ---------------------------------------------------------------------------------------
// 200 namespaces, one token call; the second pass writes nothing.

#[tokio::test]
async fn two_hundred_namespaces_get_a_correct_secret_from_one_token_call() {
    let admin = stack().admin().await;
    let name = unique("pull200");
    let prefix = unique("s200");
    let names: Vec<String> = (0..200).map(|i| format!("{prefix}-{i}")).collect();
    create_namespaces(&admin, &names, &[]).await;
    // A namespace just outside the glob stays untouched.
    let outside = format!("{prefix}x");
    create_namespace(&admin, &outside, &[]).await;
    let who = chart_identity(&admin, &[&name], false).await;
    let alias = alias_host();
    let (_d, file) = config_file(&config(
        &name,
        &format!("{}{}", registry_alias_yaml(), registry_line(ECR_HOST)),
        &include(&[&format!("{prefix}-*")]),
    ));

    let (cmd, key) = sync(&who, &file, &[]);
    let started = Instant::now();
    let first = run(cmd);
    let took = started.elapsed();
    assert_exit(&first, 0);
    assert_counts(
        &first,
        "synced 200 namespaces (200 written, 0 unchanged, 0 skipped, 0 failed) for 2 registries",
    );
    assert_eq!(
        stack().token_calls(&key),
        1,
        "two hosts of one (partition, region, credentials): one GetAuthorizationToken for 200 namespaces"
    );

    let stored = secrets_named(&admin, &name, &prefix).await;
    assert_eq!(
        stored.keys().collect::<Vec<_>>(),
        {
            let mut n: Vec<&String> = names.iter().collect();
            n.sort();
            n
        },
        "exactly the 200 selected namespaces hold the secret"
    );
    for s in stored.values() {
        assert_regcred_secret(
            s,
            &[(&alias, Token::Private), (ECR_HOST, Token::Private)],
            &json!({}),
        );
    }
    let first_bytes = raw_data(&stored[&names[0]]);
    assert!(
        stored.values().all(|s| raw_data(s) == first_bytes),
        "identical input, identical bytes"
    );

    let (cmd, key2) = sync(&who, &file, &[]);
    let started = Instant::now();
    let second = run(cmd);
    let took_again = started.elapsed();
    assert_exit(&second, 0);
    assert_counts(
        &second,
        "synced 200 namespaces (0 written, 200 unchanged, 0 skipped, 0 failed) for 2 registries",
    );
    assert_eq!(
        stack().token_calls(&key2),
        0,
        "nothing is due: no token call"
    );
    assert_eq!(stack().token_calls(&key), 1);
    let again = secrets_named(&admin, &name, &prefix).await;
    let versions = |m: &BTreeMap<String, Secret>| -> BTreeMap<String, String> {
        m.iter().map(|(k, s)| (k.clone(), rv(s))).collect()
    };
    assert_eq!(
        versions(&stored),
        versions(&again),
        "the second pass wrote nothing"
    );
    #[allow(clippy::print_stderr)] // The measurement the report quotes.
    {
        eprintln!(
            "sync of 200 namespaces: first pass {took:.2?} (200 written), second pass {took_again:.2?} (200 unchanged)"
        );
    }
}

// ---------------------------------------------------------------------------------------
// skopeo pulls with the very .dockerconfigjson regcred wrote.

#[tokio::test]
async fn skopeo_pulls_the_test_image_with_the_secret_regcred_wrote() {
    let admin = stack().admin().await;
    let name = unique("pull-skopeo");
    let ns = unique("skopeo");
    create_namespace(&admin, &ns, &[]).await;
    let who = chart_identity(&admin, &[&name], false).await;
    let (_d, file) = config_file(&config(
        &name,
        &format!("{}{}", registry_alias_yaml(), registry_line(PUBLIC_HOST)),
        &include(&[&ns]),
    ));
    let (cmd, key) = sync(&who, &file, &[]);
    let out = run(cmd);
    assert_exit(&out, 0);
    assert_counts(
        &out,
        "synced 1 namespaces (1 written, 0 unchanged, 0 skipped, 0 failed) for 2 registries",
    );
    assert_eq!(
        stack().token_calls(&key),
        2,
        "one private, one ECR Public token"
    );

    let s = secret(&admin, &ns, &name).await;
    assert_regcred_secret(
        &s,
        &[
            (&alias_host(), Token::Private),
            (PUBLIC_HOST, Token::Public),
        ],
        &json!({}),
    );
    let dir = tempfile::tempdir().unwrap();
    let authfile = dir.path().join("auth.json");
    std::fs::write(&authfile, raw_data(&s)).unwrap();
    let pulled = skopeo_pull(&authfile);
    assert!(
        pulled.status.success(),
        "skopeo with regcred's secret: {}",
        stderr(&pulled)
    );
}
