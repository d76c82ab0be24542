//! helm and kubectl as a user runs them (built by `scripts/testenv.sh install` from
//! testenv/helm), acting as the stack's admin, with helm's own settings in a temp dir.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

use super::{stack, stderr, stdout};

/// HELM_*_HOME, so helm never reads or writes the user's own settings.
fn helm_home() -> &'static tempfile::TempDir {
    static HOME: OnceLock<tempfile::TempDir> = OnceLock::new();
    HOME.get_or_init(|| tempfile::tempdir().unwrap())
}

pub fn chart_dir() -> PathBuf {
    stack().root.join("charts/regcred")
}

/// Runs helm as the stack's admin.
pub fn helm(args: &[&str]) -> Output {
    let s = stack();
    let mut cmd = Command::new(s.var("REGCRED_TEST_HELM"));
    cmd.args(args).env("KUBECONFIG", s.var("KUBECONFIG"));
    for (var, dir) in [
        ("HELM_CACHE_HOME", "cache"),
        ("HELM_CONFIG_HOME", "config"),
        ("HELM_DATA_HOME", "data"),
    ] {
        cmd.env(var, helm_home().path().join(dir));
    }
    cmd.output().expect("run helm")
}

/// Runs kubectl as the stack's admin, from the repository's root.
pub fn kubectl(args: &[&str]) -> Output {
    let s = stack();
    Command::new(s.var("REGCRED_TEST_KUBECTL"))
        .args(args)
        .env("KUBECONFIG", s.var("KUBECONFIG"))
        .current_dir(&s.root)
        .output()
        .expect("run kubectl")
}

/// The command's stdout; panics with both streams unless it succeeded.
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
pub fn values_file(values: &serde_json::Value) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    f.write_all(values.to_string().as_bytes()).unwrap();
    f
}

/// Installs the chart as release `release` in namespace `namespace` (created if missing).
pub fn install(release: &str, namespace: &str, values: &serde_json::Value) {
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
