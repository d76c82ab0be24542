//! The configuration's unit tests: what loads, what is refused and with which field named.

use super::*;
use crate::registry::Target;

fn load(yaml: &str) -> Result<Config> {
    Config::from_yaml(Path::new("regcred.yaml"), yaml)
}

fn field_error(yaml: &str) -> (String, String) {
    match load(yaml) {
        Err(Error::Field { field, message, .. }) => (field, message),
        other => panic!("expected a field error, got {other:?}"),
    }
}

#[test]
fn the_spec_example_loads() {
    let c = load(
        r#"
secrets:
  - name: regcred
    registries:
      - 123456789012.dkr.ecr.us-east-1.amazonaws.com
      - host: 210987654321.dkr.ecr.eu-west-1.amazonaws.com
        roleArn: arn:aws:iam::210987654321:role/ecr-pull
        externalId: team-a
      - public.ecr.aws
      - host: registry.internal.example:5000
        accountId: "123456789012"
        region: us-east-1
    namespaces:
      include: ["*"]
      exclude: ["kube-system", "kube-public", "kube-node-lease"]
      selector: "team=payments"
    serviceAccounts: ["default"]
    adopt: false
refresh:
  before: 6h
  retryMin: 5s
  retryMax: 5m
"#,
    )
    .unwrap();
    let s = &c.secrets[0];
    assert_eq!(s.name.as_str(), "regcred");
    assert_eq!(s.registries.len(), 4);
    assert_eq!(
        s.registries[1]
            .role
            .as_ref()
            .unwrap()
            .external_id
            .as_deref(),
        Some("team-a")
    );
    assert!(
        matches!(&s.registries[3].registry.target, Target::Private { account, .. } if account == "123456789012")
    );
    assert_eq!(
        s.service_accounts,
        ServiceAccounts::Named(["default".to_owned()].into())
    );
    assert_eq!(c.refresh, Refresh::default());
    // Two hosts in us-east-1 without a role share one source; eu-west-1 with a role and
    // ECR Public are two more.
    assert_eq!(c.token_sources().len(), 3);
}

#[test]
fn defaults_fill_the_rest() {
    let c = load("secrets:\n  - registries: [public.ecr.aws]\n").unwrap();
    let s = &c.secrets[0];
    assert_eq!(s.name.as_str(), "regcred");
    assert_eq!(s.namespaces, Selection::default());
    assert!(s.service_accounts.is_none());
    assert!(!s.adopt);
    assert_eq!(c.webhook, Webhook::default());
    assert!(!c.webhook.enabled, "the webhook is opt-in");
    let on =
        load("secrets:\n  - registries: [public.ecr.aws]\nwebhook: {enabled: true}\n").unwrap();
    assert_eq!(
        on.webhook,
        Webhook {
            enabled: true,
            port: 9443
        }
    );
    let all =
        load("secrets:\n  - registries: [public.ecr.aws]\n    serviceAccounts: ['*']\n").unwrap();
    assert_eq!(all.secrets[0].service_accounts, ServiceAccounts::All);
}

#[test]
fn bad_values_name_their_field() {
    let cases = [
        (
            "secrets:\n  - registries: [public.ecr.aws]\n    adopts: true\n",
            "secrets[0].adopts",
            "unknown field `adopts`",
        ),
        ("secret: []\n", "secret", "unknown field `secret`"),
        (
            "secrets:\n  - registries: [docker.io]\n",
            "secrets[0].registries[0]",
            "not an ECR registry host",
        ),
        (
            "secrets:\n  - registries: [{host: x.example:5000, accountId: '1', region: us-east-1}]\n",
            "secrets[0].registries[0]",
            "12 digits",
        ),
        (
            "secrets:\n  - registries: [{host: x.example, region: us-east-1}]\n",
            "secrets[0].registries[0]",
            "accountId and region go together",
        ),
        (
            "secrets:\n  - registries: [{host: public.ecr.aws, roleArn: nope}]\n",
            "secrets[0].registries[0].roleArn",
            "not an IAM role ARN",
        ),
        (
            "secrets:\n  - registries: [{host: public.ecr.aws, rolearn: x}]\n",
            "secrets[0].registries[0].rolearn",
            "unknown field `rolearn`",
        ),
        (
            "secrets:\n  - registries: [public.ecr.aws]\n    namespaces: {include: ['Bad']}\n",
            "secrets[0].namespaces.include[0]",
            "glob",
        ),
        (
            "secrets:\n  - registries: [public.ecr.aws]\n    namespaces: {selector: 'a in b'}\n",
            "secrets[0].namespaces.selector",
            "label selector",
        ),
        (
            "secrets:\n  - name: Reg_Cred\n    registries: [public.ecr.aws]\n",
            "secrets[0].name",
            "not a valid Secret name",
        ),
        (
            "secrets:\n  - registries: [public.ecr.aws]\nrefresh: {before: soon}\n",
            "refresh.before",
            "not a duration",
        ),
        (
            "secrets:\n  - registries: [public.ecr.aws]\nrefresh: {retryMin: -5s}\n",
            "refresh.retryMin",
            "positive",
        ),
        (
            "secrets:\n  - registries: [public.ecr.aws]\nrefresh: {before: 12h}\n",
            "refresh.before",
            "not shorter than",
        ),
        (
            "secrets:\n  - registries: [public.ecr.aws]\nrefresh: {retryMin: 100ms}\n",
            "refresh.retryMin",
            "at least 1s",
        ),
        (
            "secrets:\n  - registries: [public.ecr.aws]\nrefresh: {retryMin: 10m, retryMax: 1m}\n",
            "refresh.retryMin",
            "longer than retryMax",
        ),
        (
            "secrets:\n  - registries: []\n",
            "secrets[0].registries",
            "at least one",
        ),
        (
            "secrets:\n  - registries: [public.ecr.aws, PUBLIC.ECR.AWS]\n",
            "secrets[0].registries[1]",
            "listed twice",
        ),
        ("secrets: []\n", "secrets", "at least one"),
        (
            "secrets:\n  - name: a\n    registries: [public.ecr.aws]\n  - name: b\n    registries: [public.ecr.aws]\n    formerNames: [c, a]\n",
            "secrets[1].formerNames[1]",
            "a is the name of a secret now",
        ),
        (
            "secrets:\n  - registries: [public.ecr.aws]\n    formerNames: [Old_Name]\n",
            "secrets[0].formerNames[0]",
            "not a valid Secret name",
        ),
    ];
    for (yaml, field, message) in cases {
        let (got_field, got_message) = field_error(yaml);
        assert_eq!(got_field, field, "{yaml}");
        assert!(got_message.contains(message), "{yaml}: {got_message}");
    }
    assert!(matches!(load("secrets: [\n"), Err(Error::Yaml { .. })));
}

#[test]
fn bad_formats_name_their_field() {
    let cases = [
        (
            "secrets:\n  - registries: [public.ecr.aws]\n    format: argocd\n",
            "secrets[0].format",
            "\"argocd\" is not a format (one of dockerconfigjson, argocd-repository",
        ),
        (
            "secrets:\n  - registries: [public.ecr.aws, 123456789012.dkr.ecr.us-east-1.amazonaws.com]\n    format: basic-auth\n",
            "secrets[0].registries",
            "format basic-auth holds one registry's username and password, and this entry lists 2",
        ),
        (
            "secrets:\n  - registries: [public.ecr.aws]\n    format: argocd-repository\n    serviceAccounts: [default]\n",
            "secrets[0].serviceAccounts",
            "a secret of format argocd-repository cannot go into imagePullSecrets",
        ),
        (
            "secrets:\n  - name: ecr\n    registries: [public.ecr.aws]\n    format: argocd-repo-creds\n  - registries: [public.ecr.aws]\n    formerNames: [ecr-public.ecr.aws]\n",
            "secrets[1].formerNames[0]",
            "ecr-public.ecr.aws is the name of a secret now",
        ),
    ];
    for (yaml, field, message) in cases {
        let (got_field, got_message) = field_error(yaml);
        assert_eq!(got_field, field, "{yaml}");
        assert!(got_message.contains(message), "{yaml}: {got_message}");
    }
}

#[test]
fn bad_webhook_values_name_their_field() {
    let cases = [
        (
            "{enabled: true, port: 0}",
            "webhook.port",
            "0 is not a port (1 to 65535)",
        ),
        ("{port: 70000}", "webhook.port", "70000 is not a port"),
        ("{port: '9443'}", "webhook.port", "\"9443\" is not a port"),
        ("{enable: true}", "webhook.enable", "unknown field `enable`"),
        ("{enabled: sure}", "webhook.enabled", "expected a boolean"),
    ];
    for (webhook, field, message) in cases {
        let yaml = format!("secrets:\n  - registries: [public.ecr.aws]\nwebhook: {webhook}\n");
        let (got_field, got_message) = field_error(&yaml);
        assert_eq!(got_field, field, "{yaml}");
        assert!(got_message.contains(message), "{yaml}: {got_message}");
    }
}

#[test]
fn per_host_formats_stand_for_a_secret_per_host() {
    let c = load(
            "secrets:\n  - name: pull\n    registries: [public.ecr.aws]\n  - name: argo\n    format: argocd-repository\n    registries: [public.ecr.aws, 123456789012.dkr.ecr.us-east-1.amazonaws.com]\n    namespaces: {include: [argocd]}\n",
        )
        .unwrap();
    let names: Vec<(&str, Format, usize)> = c
        .secrets
        .iter()
        .map(|s| (s.name.as_str(), s.format, s.entry))
        .collect();
    assert_eq!(
        names,
        [
            ("pull", Format::Dockerconfigjson, 0),
            ("argo-public.ecr.aws", Format::ArgocdRepository, 1),
            (
                "argo-123456789012.dkr.ecr.us-east-1.amazonaws.com",
                Format::ArgocdRepository,
                1
            ),
        ]
    );
    assert_eq!(
        c.managed_names().len(),
        3,
        "each is watched and granted by name"
    );
    assert_eq!(
        c.token_sources().len(),
        2,
        "still one token call per source"
    );
    let argo = c.entry(1).unwrap();
    assert_eq!(argo.name.as_str(), "argo");
    assert_eq!(argo.registries.len(), 2);
    assert!(c.entry(2).is_none());
    let flags = ConfigArgs {
        registries: vec![Registry::parse("public.ecr.aws").unwrap()],
        secret_format: Some(Format::ArgocdRepoCreds),
        ..ConfigArgs::default()
    }
    .load()
    .unwrap();
    assert_eq!(flags.secrets[0].name.as_str(), "regcred-public.ecr.aws");
    let two = ConfigArgs {
        registries: vec![
            Registry::parse("public.ecr.aws").unwrap(),
            Registry::parse("123456789012.dkr.ecr.us-east-1.amazonaws.com").unwrap(),
        ],
        secret_format: Some(Format::BasicAuth),
        ..ConfigArgs::default()
    };
    assert!(matches!(
        two.load(),
        Err(Error::Flag { flag: "registry", message }) if message.contains("format basic-auth holds one registry's")
    ));
}

#[test]
fn former_names_are_looked_after_too() {
    let c = load(
            "secrets:\n  - name: ecr\n    registries: [public.ecr.aws]\n    formerNames: [regcred, old]\n",
        )
        .unwrap();
    assert_eq!(
        c.managed_names().into_iter().collect::<Vec<_>>(),
        ["ecr", "old", "regcred"]
    );
    assert_eq!(c.secret_names().len(), 1);
}

#[test]
fn flags_describe_one_secret() {
    let args = ConfigArgs {
        registries: vec![Registry::parse("public.ecr.aws").unwrap()],
        namespaces: vec!["team-*".parse().unwrap()],
        service_accounts: vec!["default".parse().unwrap()],
        adopt: true,
        ..ConfigArgs::default()
    };
    let c = args.load().unwrap();
    assert_eq!(c.secrets.len(), 1);
    assert_eq!(c.secrets[0].namespaces.include[0].to_string(), "team-*");
    assert_eq!(
        c.secrets[0].namespaces.exclude,
        Selection::default().exclude
    );
    assert!(c.secrets[0].adopt);
    assert!(matches!(ConfigArgs::default().load(), Err(Error::Nothing)));
    let both = ConfigArgs {
        config: Some("x.yaml".into()),
        ..args
    };
    assert!(matches!(
        both.load(),
        Err(Error::Flag { flag: "config", .. })
    ));
}
