//! The caches' unit tests: lists taken in place, selection labels, regcred's own writes.

use super::*;

fn ns(name: &str, labels: &[(&str, &str)]) -> PartialObjectMeta<Namespace> {
    PartialObjectMeta::<Namespace> {
        metadata: ObjectMeta {
            name: Some(name.into()),
            uid: Some(format!("uid-{name}")),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        ..PartialObjectMeta::default()
    }
}

#[test]
fn namespaces_keep_only_the_labels_a_selector_reads() {
    let cache = Namespaces::new(["team".to_owned()].into());
    cache.applied(&ns(
        "a",
        &[("team", "x"), ("kubernetes.io/metadata.name", "a")],
    ));
    let a = cache.get("a").unwrap();
    assert_eq!(a.metadata.uid.as_deref(), Some("uid-a"));
    assert_eq!(
        a.metadata.labels.unwrap(),
        [("team".to_owned(), "x".to_owned())].into()
    );
    assert!(a.metadata.deletion_timestamp.is_none());
    let mut dying = ns("a", &[]);
    dying.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
    cache.applied(&dying);
    assert!(crate::namespaces::is_terminating(&cache.get("a").unwrap()));
    cache.deleted("a");
    assert!(cache.get("a").is_none() && cache.labels("a").is_none());
}

#[test]
fn a_relist_drops_what_it_did_not_see() {
    let cache = Namespaces::new(BTreeSet::new());
    for name in ["a", "b", "c"] {
        cache.applied(&ns(name, &[]));
    }
    cache.entries().begin_list();
    cache.applied(&ns("b", &[]));
    cache.applied(&ns("d", &[]));
    assert_eq!(
        cache.entries().len(),
        4,
        "the old entries stay until the list ends"
    );
    assert_eq!(cache.entries().end_list(), 2);
    let mut keys: Vec<String> = cache
        .entries()
        .keys()
        .iter()
        .map(ToString::to_string)
        .collect();
    keys.sort();
    assert_eq!(keys, ["b", "d"]);
}

fn sa(ns: &str, name: &str, refs: &[&str], record: Option<&str>) -> ServiceAccount {
    ServiceAccount {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            resource_version: Some("7".into()),
            annotations: record.map(|r| [(RECORD_ANNOTATION.to_owned(), r.to_owned())].into()),
            ..ObjectMeta::default()
        },
        image_pull_secrets: (!refs.is_empty()).then(|| {
            refs.iter()
                .map(|n| LocalObjectReference {
                    name: (*n).to_owned(),
                })
                .collect()
        }),
        ..ServiceAccount::default()
    }
}

#[test]
fn accounts_keep_what_the_patch_reads() {
    let cache = Accounts::default();
    let full = sa("a", "default", &["other", "regcred"], Some("regcred"));
    account_applied(&cache, &full);
    account_applied(&cache, &sa("a", "ci", &[], None));
    let kept = cache
        .get("a", |all| {
            all.iter()
                .map(|a| a.service_account("a"))
                .collect::<Vec<_>>()
        })
        .unwrap();
    assert_eq!(kept.len(), 2);
    assert_eq!(kept[0].metadata.name, full.metadata.name);
    assert_eq!(
        kept[0].metadata.resource_version,
        full.metadata.resource_version
    );
    assert_eq!(kept[0].image_pull_secrets, full.image_pull_secrets);
    assert_eq!(
        crate::serviceaccounts::recorded(&kept[0]),
        crate::serviceaccounts::recorded(&full)
    );
    assert_eq!(kept[1].image_pull_secrets, None);
    account_deleted(&cache, &sa("a", "ci", &[], None));
    assert_eq!(cache.get("a", Vec::len), Some(1));
    account_deleted(&cache, &full);
    assert!(!cache.contains("a"), "an empty namespace is forgotten");
    // A relist that sees only one of two: the other goes.
    account_applied(&cache, &sa("b", "x", &[], None));
    account_applied(&cache, &sa("b", "y", &[], None));
    cache.begin_list();
    account_applied(&cache, &sa("b", "y", &[], None));
    cache.end_list();
    assert_eq!(
        cache.get("b", |all| all
            .iter()
            .map(|a| a.name.to_string())
            .collect::<Vec<_>>()),
        Some(vec!["y".to_owned()])
    );
}

fn secret(ns: &str, rv: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some("regcred".into()),
            namespace: Some(ns.into()),
            resource_version: Some(rv.into()),
            ..ObjectMeta::default()
        },
        ..Secret::default()
    }
}

#[test]
fn regcreds_own_writes_are_taken_in_only_over_what_they_replaced() {
    let cache = Secrets::default();
    let rv = |c: &Secrets| c.get("a", Stored::resource_version).flatten();
    secret_written(&cache, &secret("a", "5"), None);
    assert_eq!(rv(&cache).as_deref(), Some("5"), "a create over nothing");
    secret_written(&cache, &secret("a", "7"), Some("5"));
    assert_eq!(rv(&cache).as_deref(), Some("7"));
    // The watch brought a newer version first: regcred's older answer does not undo it.
    secret_applied(&cache, secret("a", "9"));
    secret_written(&cache, &secret("a", "8"), Some("7"));
    assert_eq!(rv(&cache).as_deref(), Some("9"));
    secret_written(&cache, &secret("a", "10"), None);
    assert_eq!(
        rv(&cache).as_deref(),
        Some("9"),
        "a create over something is not taken in"
    );
    secret_deleted(&cache, "a", Some("7"));
    assert!(
        cache.contains("a"),
        "deleted at another version: the watch decides"
    );
    secret_deleted(&cache, "a", Some("9"));
    assert!(!cache.contains("a"));

    let accounts = Accounts::default();
    account_applied(&accounts, &sa("a", "default", &[], None));
    let mut patched = sa("a", "default", &["regcred"], Some("regcred"));
    patched.metadata.resource_version = Some("8".into());
    account_patched(&accounts, &patched, Some("6"));
    let refs = |c: &Accounts| {
        c.get("a", |all| all[0].service_account("a").image_pull_secrets)
            .flatten()
            .unwrap_or_default()
    };
    assert!(refs(&accounts).is_empty(), "patched over another version");
    account_patched(&accounts, &patched, Some("7"));
    assert_eq!(refs(&accounts).len(), 1);
}
