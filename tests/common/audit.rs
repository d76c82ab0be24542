//! The API server's audit log, read back: who asked what, when.

use std::path::{Path, PathBuf};

use super::{Identity, PrivateCluster};

/// One request from the API server's audit log.
#[derive(Debug)]
pub struct Audited {
    pub user: String,
    pub verb: String,
    pub resource: String,
    pub namespace: String,
    pub name: String,
    /// The path and query asked for (field selectors, watch, limit...).
    pub uri: String,
    pub received: jiff::Timestamp,
    pub completed: jiff::Timestamp,
}

pub fn audit_log(path: &Path) -> Vec<Audited> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["stage"] == "ResponseComplete")
        .filter_map(|e| {
            let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
            Some(Audited {
                user: s(&e["user"]["username"]),
                verb: s(&e["verb"]),
                resource: s(&e["objectRef"]["resource"]),
                namespace: s(&e["objectRef"]["namespace"]),
                name: s(&e["objectRef"]["name"]),
                uri: s(&e["requestURI"]),
                received: e["requestReceivedTimestamp"].as_str()?.parse().ok()?,
                completed: e["stageTimestamp"].as_str()?.parse().ok()?,
            })
        })
        .collect()
}

pub fn username(who: &Identity) -> String {
    format!("system:serviceaccount:{}:{}", who.namespace, who.name)
}

pub const WRITES: [&str; 4] = ["create", "patch", "update", "delete"];

/// Writes to `resource` by `who` that the API server answered with success or failure.
pub fn writes_by<'a>(log: &'a [Audited], who: &Identity, resource: &str) -> Vec<&'a Audited> {
    let user = username(who);
    log.iter()
        .filter(|a| a.user == user && a.resource == resource && WRITES.contains(&a.verb.as_str()))
        .collect()
}

/// Every request `who` made of `resource`.
pub fn requests_by<'a>(log: &'a [Audited], who: &Identity, resource: &str) -> Vec<&'a Audited> {
    let user = username(who);
    log.iter()
        .filter(|a| a.user == user && a.resource == resource)
        .collect()
}

/// A private cluster whose API server keeps an audit log of every request.
pub fn audited_cluster(dir: &Path) -> (PrivateCluster, PathBuf) {
    let log = dir.join("audit.log");
    let policy = dir.join("audit-policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [\"RequestReceived\"]\nrules:\n- level: Metadata\n",
    )
    .unwrap();
    let cluster = PrivateCluster::start(&[
        format!("--audit-log-path={}", log.display()),
        format!("--audit-policy-file={}", policy.display()),
    ]);
    (cluster, log)
}
