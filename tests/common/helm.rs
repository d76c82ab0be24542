//! Helm and kubectl for the tests (built by `scripts/testenv.sh install` from testenv/helm):
//! render the chart, install it, and apply parts of it.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::{Value, json};

use super::{stack, stderr, stdout};

/// helm and kubectl, built by `scripts/testenv.sh install` from testenv/helm.
#[derive(Debug)]
pub struct Tools {
    pub helm: PathBuf,
    pub kubectl: PathBuf,
    /// HELM_*_HOME, so helm never reads or writes the user's own settings.
    home: tempfile::TempDir,
}

pub fn tools() -> &'static Tools {
    static TOOLS: OnceLock<Tools> = OnceLock::new();
    TOOLS.get_or_init(|| {
        let s = stack();
        let env_file = s.root.join(".testenv/env");
        let read = || {
            std::fs::read_to_string(&env_file)
                .expect("read .testenv/env")
                .lines()
                .filter_map(|l| l.strip_prefix("export "))
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect::<BTreeMap<_, _>>()
        };
        let mut env = read();
        if !env.contains_key("REGCRED_TEST_HELM") {
            // A stack started before helm joined it: `up` installs what is missing and
            // rewrites the env file; it does not restart running services.
            let status = Command::new(s.root.join("scripts/testenv.sh"))
                .arg("up")
                .status()
                .expect("run scripts/testenv.sh up");
            assert!(status.success(), "scripts/testenv.sh up failed");
            env = read();
        }
        Tools {
            helm: env["REGCRED_TEST_HELM"].clone().into(),
            kubectl: env["REGCRED_TEST_KUBECTL"].clone().into(),
            home: tempfile::tempdir().unwrap(),
        }
    })
}

pub fn chart_dir() -> PathBuf {
    stack().root.join("charts/regcred")
}

/// Runs helm as the stack's admin.
pub fn helm(args: &[&str]) -> Output {
    let t = tools();
    let mut cmd = Command::new(&t.helm);
    cmd.args(args)
        .env("KUBECONFIG", stack().var("KUBECONFIG"))
        .env("REGCRED_TEST_HELM", &t.helm);
    for (var, dir) in [
        ("HELM_CACHE_HOME", "cache"),
        ("HELM_CONFIG_HOME", "config"),
        ("HELM_DATA_HOME", "data"),
    ] {
        cmd.env(var, t.home.path().join(dir));
    }
    cmd.output().expect("run helm")
}

pub fn kubectl(args: &[&str]) -> Output {
    Command::new(&tools().kubectl)
        .args(args)
        .env("KUBECONFIG", stack().var("KUBECONFIG"))
        .current_dir(&stack().root)
        .output()
        .expect("run kubectl")
}

#[track_caller]
pub fn ok(what: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        stdout(out),
        stderr(out)
    );
    stdout(out)
}

/// Values as a file helm reads (JSON is YAML).
pub fn values_file(values: &Value) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    f.write_all(values.to_string().as_bytes()).unwrap();
    f
}

/// Every object of a multi-document YAML stream.
pub fn objects(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(yaml)
        .expect("rendered YAML")
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

/// `helm template` of the chart in namespace `regcred`, release `regcred`.
pub fn render(values: &Value) -> Vec<Value> {
    let file = values_file(values);
    let out = helm(&[
        "template",
        "regcred",
        chart_dir().to_str().unwrap(),
        "--namespace",
        "regcred",
        "-f",
        file.path().to_str().unwrap(),
    ]);
    objects(&ok("helm template", &out))
}

pub fn render_fails(values: &Value) -> String {
    let file = values_file(values);
    let out = helm(&[
        "template",
        "regcred",
        chart_dir().to_str().unwrap(),
        "-f",
        file.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "rendered, but should not have");
    stderr(&out)
}

/// The stack's registry, as a registry entry of the config.
pub fn stack_registry() -> Value {
    let s = stack();
    json!({
        "host": s.var("REGCRED_TEST_REGISTRY"),
        "accountId": s.var("REGCRED_TEST_ACCOUNT"),
        "region": "us-east-1",
    })
}

/// Installs the chart as release `release` in namespace `namespace`.
pub fn install(release: &str, namespace: &str, values: &Value) {
    let file = values_file(values);
    let out = helm(&[
        "install",
        release,
        chart_dir().to_str().unwrap(),
        "--namespace",
        namespace,
        "--create-namespace",
        "-f",
        file.path().to_str().unwrap(),
    ]);
    let text = ok("helm install", &out);
    assert!(text.contains("STATUS: deployed"), "{text}");
}

/// Applies the chart's ValidatingAdmissionPolicy and its binding for `who`, as if the chart
/// had made that ServiceAccount, with these secret names (a release of its own names them).
/// Returns once the API server enforces it.
pub async fn install_policy(who: &super::Identity, secret_names: &[&str]) {
    let release = super::unique("policy");
    install_policy_with(
        who,
        &pull_secrets(secret_names),
        secret_names[0],
        &release,
        false,
    )
    .await;
}

/// The same for a release named `fullname` (its objects' names), with the admission
/// webhook's own certificate on: the policy then also admits the Secret
/// `<fullname>-webhook-tls` in `who`'s namespace.
pub async fn install_policy_with_webhook(
    who: &super::Identity,
    secret_names: &[&str],
    fullname: &str,
) {
    install_policy_with(
        who,
        &pull_secrets(secret_names),
        secret_names[0],
        fullname,
        true,
    )
    .await;
}

/// The same for a configuration's `secrets` (any formats): `probe` is one of the secret
/// names they stand for, whose token-secret twin must be refused.
pub async fn install_policy_for(who: &super::Identity, secrets: &Value, probe: &str) {
    install_policy_with(who, secrets, probe, &super::unique("policy"), false).await;
}

/// Pull-secret entries of these names, as a configuration's `secrets`.
fn pull_secrets(names: &[&str]) -> Value {
    names
        .iter()
        .map(|n| json!({"name": n, "registries": ["public.ecr.aws"]}))
        .collect()
}

async fn install_policy_with(
    who: &super::Identity,
    secrets: &Value,
    probe: &str,
    fullname: &str,
    webhook: bool,
) {
    let values = json!({
        "fullnameOverride": fullname,
        "serviceAccount": {"create": false, "name": who.name},
        "config": {"secrets": secrets},
        "webhook": {"enabled": webhook},
    });
    let file = values_file(&values);
    let release = fullname;
    let out = helm(&[
        "template",
        release,
        chart_dir().to_str().unwrap(),
        "--namespace",
        &who.namespace,
        "--show-only",
        "templates/admissionpolicy.yaml",
        "-f",
        file.path().to_str().unwrap(),
    ]);
    let rendered = ok("helm template (the admission policy)", &out);
    let manifest = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    std::fs::write(manifest.path(), rendered).unwrap();
    let out = kubectl(&["apply", "-f", manifest.path().to_str().unwrap()]);
    ok("kubectl apply (the admission policy)", &out);
    // In force once a token secret of the first name is refused (a dry run: nothing stays).
    let client = who.client().await;
    let api = kube::Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client, &who.namespace);
    let mut token = k8s_openapi::api::core::v1::Secret {
        type_: Some("kubernetes.io/service-account-token".into()),
        ..Default::default()
    };
    token.metadata.name = Some(probe.to_owned());
    token.metadata.annotations = Some(
        [(
            "kubernetes.io/service-account.name".to_owned(),
            "default".to_owned(),
        )]
        .into(),
    );
    let dry_run = kube::api::PostParams {
        dry_run: true,
        ..Default::default()
    };
    super::wait_for(
        "the admission policy in force",
        std::time::Duration::from_secs(30),
        || async {
            match api.create(&dry_run, &token).await {
                Err(kube::Error::Api(e)) if e.message.contains("ValidatingAdmissionPolicy") => {
                    Some(())
                }
                _ => None,
            }
        },
    )
    .await;
}
