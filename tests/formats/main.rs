//! The formats (issue 14): the same ECR token written as Argo CD repository and
//! credential-template secrets and as `kubernetes.io/basic-auth`, on the real stack, as the
//! chart's ServiceAccount under the chart's admission policy. Every guarantee of a pull
//! secret (`sync.rs`): written with one token call per source, nothing rewritten when
//! current, foreign secrets left alone, removed on deselection (`sync.rs` here); kept
//! current, repaired and rotated without a gap by the controller (`run.rs`); and read by the
//! clients they are for — helm, and Argo CD's own code (`clients.rs`).
#![allow(clippy::print_stderr)] // Tests report what they measure.

mod clients;
#[path = "../common/mod.rs"]
mod common;
mod run;
mod sync;

use std::path::PathBuf;
use std::process::Output;

use common::helm::install_policy_for;
use common::*;
use k8s_openapi::api::core::v1::Secret;
use serde_json::{Value, json};

const ARGOCD_LABEL: &str = "argocd.argoproj.io/secret-type";
const REGISTRIES: &str = "regcred.io/registries";

/// The stack's registry door for its first account, as `localhost:PORT`: Argo CD finds a
/// credential template by URL prefix after parsing the URL, and a scheme-less
/// `127.0.0.1:PORT/...` does not parse (the door's certificate names `localhost` too).
fn door() -> String {
    let registry = stack().var("REGCRED_TEST_REGISTRY");
    let (_, port) = registry.rsplit_once(':').expect("host:port");
    format!("localhost:{port}")
}

fn door_entry() -> Value {
    json!({"host": door(), "accountId": stack().var("REGCRED_TEST_ACCOUNT"), "region": "us-east-1"})
}

/// One secret regcred writes: its name, format and registry host.
#[derive(Clone, Debug)]
struct Slot {
    name: String,
    format: &'static str,
    host: String,
}

/// The secrets of the three entries: the names regcred derives per host for the Argo CD
/// formats (`<entry>-<host>`, `:` as `-`), the entry's own for basic-auth.
fn slots_of(repo: &str, creds: &str, plain: &str) -> Vec<Slot> {
    let door = door();
    let slot = |name: String, format, host: &str| Slot {
        name,
        format,
        host: host.to_owned(),
    };
    vec![
        slot(
            format!("{repo}-{}", door.replace(':', "-")),
            "argocd-repository",
            &door,
        ),
        slot(
            format!("{repo}-public.ecr.aws"),
            "argocd-repository",
            "public.ecr.aws",
        ),
        slot(
            format!("{creds}-{}", door.replace(':', "-")),
            "argocd-repo-creds",
            &door,
        ),
        slot(plain.to_owned(), "basic-auth", &door),
    ]
}

/// A test's world: three entries, one per new format, selecting `include`; the chart's
/// identity for the names they stand for, with the chart's admission policy in force.
struct World {
    admin: kube::Client,
    prefix: String,
    /// Entry names: argocd-repository (the door and ECR Public), argocd-repo-creds (the
    /// door), basic-auth (the door).
    repo: String,
    creds: String,
    plain: String,
    who: Identity,
}

impl World {
    async fn new(tag: &str) -> Self {
        let admin = stack().admin().await;
        let (prefix, repo, creds, plain) = (
            unique(tag),
            unique("repo"),
            unique("creds"),
            unique("plain"),
        );
        let names: Vec<String> = slots_of(&repo, &creds, &plain)
            .into_iter()
            .map(|s| s.name)
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let who = chart_identity(&admin, &names, false).await;
        let w = Self {
            admin,
            prefix,
            repo,
            creds,
            plain,
            who,
        };
        install_policy_for(&w.who, &w.entries(&["*"]), &w.plain).await;
        w
    }

    fn ns(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.prefix)
    }

    /// Every secret the entries stand for, in every selected namespace.
    fn slots(&self) -> Vec<Slot> {
        slots_of(&self.repo, &self.creds, &self.plain)
    }

    fn slot(&self, format: &str, host: &str) -> Slot {
        self.slots()
            .into_iter()
            .find(|s| s.format == format && s.host == host)
            .expect("a slot of that format and host")
    }

    /// The configuration's `secrets`, selecting namespaces by these globs.
    fn entries(&self, include: &[&str]) -> Value {
        let namespaces = json!({"include": include});
        json!([
            {"name": self.repo, "format": "argocd-repository", "registries": [door_entry(), "public.ecr.aws"], "namespaces": namespaces},
            {"name": self.creds, "format": "argocd-repo-creds", "registries": [door_entry()], "namespaces": namespaces},
            {"name": self.plain, "format": "basic-auth", "registries": [door_entry()], "namespaces": namespaces},
        ])
    }

    /// `regcred sync` of this configuration as the chart's identity; its tokens live `ttl`
    /// when given. Returns the output and the AWS access key its calls counted under.
    fn sync(&self, config: &std::path::Path, ttl: Option<&str>) -> (Output, String) {
        let (mut cmd, key) = regcred(&self.who);
        if let Some(ttl) = ttl {
            stack().set_aws_key(&key, &json!({ "ttl": ttl }));
        }
        let out = cmd
            .arg("sync")
            .arg("--config")
            .arg(config)
            .output()
            .expect("run regcred sync");
        (out, key)
    }

    async fn secret(&self, ns: &str, name: &str) -> Option<Secret> {
        get_secret(&self.admin, ns, name).await
    }
}

/// A configuration file of these entries (JSON is YAML).
fn config(entries: &Value) -> (tempfile::TempDir, PathBuf) {
    config_file(&json!({ "secrets": entries }).to_string())
}

fn show(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    )
}

fn data(s: &Secret, key: &str) -> Option<String> {
    let bytes = s.data.as_ref()?.get(key)?;
    Some(String::from_utf8(bytes.0.clone()).expect("UTF-8 data"))
}

fn label(s: &Secret, key: &str) -> Option<String> {
    s.metadata.labels.as_ref()?.get(key).cloned()
}

fn annotation(s: &Secret, key: &str) -> Option<String> {
    s.metadata.annotations.as_ref()?.get(key).cloned()
}

/// Why `secret` is not what regcred writes for `slot` with a token still valid, or `None`:
/// regcred's label (and Argo CD's), the format's type, its keys (exactly these when
/// `exact`; others' keys allowed otherwise), the spec's annotations, and a password the
/// fake AWS issued for the registry's account that has not expired, whose expiry the
/// annotation announces.
fn slot_problem(secret: Option<&Secret>, slot: &Slot, exact: bool) -> Option<String> {
    let Some(s) = secret else {
        return Some("missing".into());
    };
    if label(s, MANAGED_BY).as_deref() != Some("regcred") {
        return Some("not labelled as regcred's".into());
    }
    let (type_, argocd, keys): (&str, Option<&str>, &[(&str, String)]) = match slot.format {
        "argocd-repository" => (
            "Opaque",
            Some("repository"),
            &[
                ("type", "helm".into()),
                ("url", slot.host.clone()),
                ("name", slot.name.clone()),
                ("enableOCI", "true".into()),
            ],
        ),
        "argocd-repo-creds" => (
            "Opaque",
            Some("repo-creds"),
            &[
                ("type", "helm".into()),
                ("url", format!("{}/", slot.host)),
                ("enableOCI", "true".into()),
            ],
        ),
        _ => ("kubernetes.io/basic-auth", None, &[]),
    };
    if s.type_.as_deref() != Some(type_) {
        return Some(format!("type {:?}", s.type_));
    }
    if label(s, ARGOCD_LABEL).as_deref() != argocd {
        return Some(format!("Argo CD label {:?}", label(s, ARGOCD_LABEL)));
    }
    for (key, want) in keys.iter().chain(&[("username", "AWS".to_owned())]) {
        if data(s, key).as_deref() != Some(want.as_str()) {
            return Some(format!("{key} is {:?}, not {want:?}", data(s, key)));
        }
    }
    let count = s.data.as_ref().map_or(0, std::collections::BTreeMap::len);
    if exact && count != keys.len() + 2 {
        return Some(format!("{count} keys, not {}", keys.len() + 2));
    }
    if annotation(s, REGISTRIES).as_deref() != Some(slot.host.as_str()) {
        return Some(format!("registries {:?}", annotation(s, REGISTRIES)));
    }
    let Some(password) = data(s, "password") else {
        return Some("no password".into());
    };
    let Some(info) = stack().token_info(&password) else {
        return Some("a password the fake AWS never issued".into());
    };
    let account = if slot.host == "public.ecr.aws" {
        "public"
    } else {
        stack().var("REGCRED_TEST_ACCOUNT")
    };
    if info.account != account || !info.valid {
        return Some(format!(
            "password for {} (valid: {})",
            info.account, info.valid
        ));
    }
    let announced = expires_at(s).as_second();
    #[allow(clippy::cast_possible_truncation)] // Epoch seconds.
    let issued = info.expires_at as i64;
    (announced != issued).then(|| format!("announces {announced}, the token expires {issued}"))
}
