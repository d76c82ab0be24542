//! The clients the formats are for, reading exactly what regcred wrote: `helm pull` of a
//! chart pushed to the stack's registry as an OCI artifact, with the username and password
//! of an Argo CD repository secret and of a basic-auth secret (and refused once that
//! password expired); and Argo CD's own code (`testenv/argocd`) resolving the repository
//! and credential-template secrets for an Application's repoURL and pulling the chart.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{Value, json};

use super::common::helm::tools;
use super::common::*;
use super::{World, config, data, door, show, slot_problem};

/// The chart every test pulls, in the door's account.
const CHART: &str = "regcred-test/hello";
const VERSION: &str = "0.1.0";

/// helm with a home of its own: no login or repository of another run is ever used.
struct Helm {
    home: tempfile::TempDir,
}

impl Helm {
    fn new() -> Self {
        Self {
            home: tempfile::tempdir().unwrap(),
        }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&tools().helm);
        cmd.envs(helm_env(self));
        cmd
    }

    fn path(&self) -> &Path {
        self.home.path()
    }

    /// `helm pull oci://DOOR/CHART` with this username and password, into a fresh folder.
    fn pull(&self, username: &str, password: &str) -> (Output, PathBuf) {
        let dest = self.path().join(unique("pulled"));
        std::fs::create_dir_all(&dest).unwrap();
        let out = self
            .command()
            .args([
                "pull",
                &format!("oci://{}/{CHART}", door()),
                "--version",
                VERSION,
            ])
            .args(["--username", username, "--password", password, "--ca-file"])
            .arg(stack().var("REGCRED_TEST_CA"))
            .arg("--destination")
            .arg(&dest)
            .output()
            .expect("run helm pull");
        (out, dest)
    }
}

/// Packages a small chart and pushes it through the registry door, as ECR would take it:
/// with a token of the door's account.
fn push_chart() {
    let helm = Helm::new();
    let src = helm.path().join("hello");
    std::fs::create_dir_all(src.join("templates")).unwrap();
    std::fs::write(
        src.join("Chart.yaml"),
        format!("apiVersion: v2\nname: hello\nversion: {VERSION}\n"),
    )
    .unwrap();
    std::fs::write(
        src.join("templates/configmap.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: hello\n",
    )
    .unwrap();
    let out = helm
        .command()
        .arg("package")
        .arg(&src)
        .arg("--destination")
        .arg(helm.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "helm package: {}", show(&out));
    let s = stack();
    let password = s.registry_token(s.var("REGCRED_TEST_ACCOUNT"), "10m");
    let repository = CHART.rsplit_once('/').unwrap().0;
    let out = helm
        .command()
        .arg("push")
        .arg(helm.path().join(format!("hello-{VERSION}.tgz")))
        .arg(format!("oci://{}/{repository}", door()))
        .args(["--username", "AWS", "--password", &password, "--ca-file"])
        .arg(s.var("REGCRED_TEST_CA"))
        .output()
        .unwrap();
    assert!(out.status.success(), "helm push: {}", show(&out));
}

#[tokio::test]
async fn helm_pulls_with_exactly_the_written_credentials_and_not_once_they_expired() {
    push_chart();
    let w = World::new("fmt-helm").await;
    let ns = w.ns("h");
    create_namespace(&w.admin, &ns, &[]).await;
    let mut entries = w.entries(&[&ns]);
    entries.as_array_mut().unwrap().remove(1); // no repo-creds: a repository and basic-auth
    let (_d, file) = config(&entries);
    // Tokens of 20 s: long enough to pull, short enough to see expire.
    let (out, _) = w.sync(&file, Some("20s"));
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let helm = Helm::new();
    let mut written = Vec::new();
    for slot in [
        w.slot("argocd-repository", &door()),
        w.slot("basic-auth", &door()),
    ] {
        let s = w.secret(&ns, &slot.name).await;
        assert_eq!(slot_problem(s.as_ref(), &slot, true), None);
        let s = s.unwrap();
        let (username, password) = (data(&s, "username").unwrap(), data(&s, "password").unwrap());
        let (out, dest) = helm.pull(&username, &password);
        assert!(out.status.success(), "{}: {}", slot.name, show(&out));
        assert!(
            dest.join(format!("hello-{VERSION}.tgz")).is_file(),
            "{}",
            slot.name
        );
        written.push((slot.name, username, password));
    }
    for (name, username, password) in written {
        wait_for("the password to expire", Duration::from_mins(1), || async {
            (!stack().token_info(&password)?.valid).then_some(())
        })
        .await;
        let (out, _) = helm.pull(&username, &password);
        assert!(
            !out.status.success(),
            "{name}: pulled with an expired password"
        );
        assert!(
            stderr(&out).contains("403") && stderr(&out).contains("expired"),
            "{name}: {}",
            show(&out)
        );
    }
}

/// The Argo CD driver (`testenv/argocd`), built by `scripts/testenv.sh install`.
fn argocd() -> PathBuf {
    let _ = tools(); // A stack started before the driver joined it gets it from `up`.
    let env = std::fs::read_to_string(stack().root.join(".testenv/env")).unwrap();
    let path = env
        .lines()
        .find_map(|l| l.strip_prefix("export REGCRED_TEST_ARGOCD="))
        .map(PathBuf::from);
    match path {
        Some(p) if p.is_file() => p,
        _ => {
            let status = Command::new(stack().root.join("scripts/testenv.sh"))
                .arg("up")
                .status()
                .unwrap();
            assert!(status.success(), "scripts/testenv.sh up");
            let env = std::fs::read_to_string(stack().root.join(".testenv/env")).unwrap();
            env.lines()
                .find_map(|l| l.strip_prefix("export REGCRED_TEST_ARGOCD="))
                .map(PathBuf::from)
                .expect("REGCRED_TEST_ARGOCD in .testenv/env")
        }
    }
}

/// Runs the driver as Argo CD in namespace `ns`, with helm on its PATH and the stack's CA as
/// the door's, as `argocd-tls-certs-cm` would give it.
fn argocd_driver(helm: &Helm, ns: &str, args: &[&str]) -> Output {
    let bin = helm.path().join("bin");
    let tls = helm.path().join("tls");
    for dir in [&bin, &tls] {
        std::fs::create_dir_all(dir).unwrap();
    }
    let _ = std::os::unix::fs::symlink(&tools().helm, bin.join("helm"));
    std::fs::copy(stack().var("REGCRED_TEST_CA"), tls.join("localhost")).unwrap();
    let mut cmd = Command::new(argocd());
    cmd.envs(helm_env(helm))
        .env("KUBECONFIG", stack().var("KUBECONFIG"))
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("TMPDIR", helm.path())
        .arg(args[0])
        .args(["-namespace", ns, "-tls-dir"])
        .arg(&tls)
        .args(&args[1..]);
    cmd.output().expect("run argocd-driver")
}

fn helm_env(helm: &Helm) -> Vec<(String, PathBuf)> {
    ["cache", "config", "data"]
        .iter()
        .zip(["HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"])
        .map(|(dir, var)| (var.to_owned(), helm.path().join(dir)))
        .collect()
}

fn driver_json(out: &Output) -> Value {
    assert!(out.status.success(), "argocd-driver: {}", show(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", show(out)))
}

#[tokio::test]
async fn argo_cd_resolves_and_pulls_with_the_repository_and_the_template_regcred_wrote() {
    push_chart();
    let w = World::new("fmt-argo").await;
    let ns = w.ns("argocd");
    create_namespace(&w.admin, &ns, &[]).await;
    let mut entries = w.entries(&[&ns]);
    entries.as_array_mut().unwrap().remove(2); // Argo CD's two formats
    let (_d, file) = config(&entries);
    let (out, _) = w.sync(&file, None);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let door = door();
    let (repo, creds) = (
        w.slot("argocd-repository", &door),
        w.slot("argocd-repo-creds", &door),
    );
    let repo_secret = w.secret(&ns, &repo.name).await.unwrap();
    let creds_secret = w.secret(&ns, &creds.name).await.unwrap();
    let helm = Helm::new();
    let under = format!("{door}/{}", CHART.rsplit_once('/').unwrap().0);
    let lookalike = format!("{door}.example.org/charts");
    let resolved = driver_json(&argocd_driver(
        &helm,
        &ns,
        &["resolve", &door, &under, &lookalike],
    ));
    // repoURL = the host: the repository secret, by exact URL.
    assert_eq!(
        resolved[0],
        json!({
            "url": door, "found": true, "inheritedCreds": false, "name": repo.name,
            "type": "helm", "enableOCI": true, "username": "AWS",
            "password": data(&repo_secret, "password").unwrap(),
        })
    );
    // Any repoURL under the host: the credential template, by prefix.
    assert_eq!(
        resolved[1],
        json!({
            "url": under, "found": true, "inheritedCreds": true, "name": "",
            "type": "helm", "enableOCI": true, "username": "AWS",
            "password": data(&creds_secret, "password").unwrap(),
        })
    );
    // A host that merely begins with the registry's name gets nothing.
    assert_eq!(resolved[2]["found"], false, "{resolved:#}");
    assert_eq!(resolved[2]["password"], "");

    // And Argo CD's Helm client pulls the chart both ways, as the repo-server would for an
    // Application (`repoURL: HOST, chart: PATH/hello` and `repoURL: HOST/PATH, chart: hello`).
    let name = CHART.rsplit_once('/').unwrap().1;
    for (url, chart) in [(door.as_str(), CHART), (under.as_str(), name)] {
        let pulled = driver_json(&argocd_driver(&helm, &ns, &["pull", url, chart, VERSION]));
        assert_eq!(
            pulled["files"],
            json!(["Chart.yaml", "templates/configmap.yaml"]),
            "{url} {chart}"
        );
    }
}
