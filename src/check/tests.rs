use super::*;
use std::path::Path;

fn config(yaml: &str) -> Config {
    Config::from_yaml(Path::new("regcred.yaml"), yaml).unwrap()
}

fn described(needed: &[Permission]) -> Vec<String> {
    needed.iter().map(Permission::describe).collect()
}

#[test]
fn the_controller_needs_the_charts_rules_and_its_lease() {
    let c = config(
        "secrets:\n  - name: regcred\n    registries: [public.ecr.aws]\n    serviceAccounts: [default]\n  - name: other\n    registries: [public.ecr.aws]\n",
    );
    let needed = described(&required_permissions(
        &c,
        Mode::Controller,
        "regcred-system",
        "regcred",
    ));
    for p in [
        "get namespaces",
        "watch namespaces",
        "create secrets",
        "delete secrets/regcred",
        "list secrets/other",
        "patch serviceaccounts",
        "create events.events.k8s.io",
        "patch events.events.k8s.io",
        "create leases.coordination.k8s.io in regcred-system",
        "get leases.coordination.k8s.io/regcred in regcred-system",
        "update leases.coordination.k8s.io/regcred in regcred-system",
    ] {
        assert!(
            needed.contains(&p.to_owned()),
            "{p} missing from {needed:?}"
        );
    }
    assert_eq!(needed.len(), 3 + 1 + 12 + 4 + 2 + 3);
    assert!(
        !needed.contains(&"get secrets".to_owned()),
        "secrets are read by name only"
    );
}

#[test]
fn a_cronjob_needs_no_lease_and_no_serviceaccounts_unless_patching() {
    let c = config("secrets:\n  - registries: [public.ecr.aws]\n");
    let needed = described(&required_permissions(&c, Mode::Cronjob, "x", "regcred"));
    assert!(needed.iter().all(|p| !p.contains("leases")), "{needed:?}");
    assert!(
        needed.iter().all(|p| !p.contains("serviceaccounts")),
        "{needed:?}"
    );
    assert!(needed.contains(&"update secrets/regcred".to_owned()));
}

#[test]
fn per_host_secrets_are_checked_by_their_names_and_shown_with_their_format() {
    let c = config(
        "secrets:\n  - name: argo\n    format: argocd-repo-creds\n    registries: [public.ecr.aws]\n  - name: plain\n    format: basic-auth\n    registries: [public.ecr.aws]\n  - registries: [public.ecr.aws]\n",
    );
    let needed = described(&required_permissions(&c, Mode::Cronjob, "x", "regcred"));
    for p in [
        "patch secrets/argo-public.ecr.aws",
        "delete secrets/plain",
        "update secrets/regcred",
    ] {
        assert!(
            needed.contains(&p.to_owned()),
            "{p} missing from {needed:?}"
        );
    }
    assert!(!needed.contains(&"patch secrets/argo".to_owned()));
    assert!(
        config_detail(&c).starts_with(
            "secrets argo-public.ecr.aws (argocd-repo-creds), plain (basic-auth), regcred; 1 registry; 1 token source;"
        ),
        "{}",
        config_detail(&c)
    );
}

#[test]
fn hints_name_the_rule_and_where_it_goes() {
    let p = Permission {
        name: Some("regcred".into()),
        ..Permission::new("", "secrets", "delete")
    };
    assert_eq!(
        p.hint(),
        "grant it with a ClusterRole bound to this identity: apiGroups: [\"\"], resources: [secrets], \
         verbs: [delete], resourceNames: [regcred] (the Helm chart's RBAC has it)"
    );
    let lease = Permission {
        namespace: Some("ops".into()),
        ..Permission::new("coordination.k8s.io", "leases", "create")
    };
    assert!(
        lease
            .hint()
            .starts_with("grant it with a Role in namespace ops")
    );
}

#[test]
fn the_table_marks_each_row_and_hints_under_failures() {
    let checks = [
        Check::pass("config", "secret regcred"),
        Check::fail("can delete secrets/regcred", "denied", "grant it"),
    ];
    let table = render_table(&checks);
    assert_eq!(
        table,
        "✓ config                      secret regcred\n\
         ✗ can delete secrets/regcred  denied\n    hint: grant it\n\
         1 of 2 checks failed\n"
    );
    let json: serde_json::Value = serde_json::from_str(&render_json(&checks)).unwrap();
    assert_eq!(json["ok"], false);
    assert_eq!(json["checks"][0].get("hint"), None);
    assert_eq!(json["checks"][1]["hint"], "grant it");
}
