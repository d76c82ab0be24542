//! What a pull secret must be: regcred's label and expiry, a parseable `.dockerconfigjson`
//! with valid tokens; skopeo pulling with it.

use std::path::Path;
use std::process::{Command, Output};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use serde_json::Value;

use super::stack;

pub async fn get_secret(client: &kube::Client, namespace: &str, name: &str) -> Option<Secret> {
    Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .expect("get secret")
}

/// The `.dockerconfigjson` of a secret, parsed.
pub fn dockerconfig(secret: &Secret) -> serde_json::Value {
    let bytes = &secret.data.as_ref().expect("data")[".dockerconfigjson"].0;
    serde_json::from_slice(bytes).expect("dockerconfigjson")
}

pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const EXPIRES_AT: &str = "regcred.io/expires-at";
pub const DOCKERCONFIG_TYPE: &str = "kubernetes.io/dockerconfigjson";

/// The expiry regcred wrote on a secret (panics when it has none).
pub fn expires_at(secret: &Secret) -> jiff::Timestamp {
    secret.metadata.annotations.as_ref().expect("annotations")[EXPIRES_AT]
        .parse()
        .expect("an RFC 3339 expiry")
}

/// Why a pod could not pull from `hosts` with this secret, or `None` if it could: it has
/// the pull-secret type and a `.dockerconfigjson` that parses, with a password and `auth`
/// for every host. Any pull secret, regcred's or a `kubectl create secret docker-registry`.
pub fn pull_problem(secret: &Secret, hosts: &[impl AsRef<str>]) -> Option<String> {
    if secret.type_.as_deref() != Some(DOCKERCONFIG_TYPE) {
        return Some(format!("type {:?}", secret.type_));
    }
    let Some(bytes) = secret
        .data
        .as_ref()
        .and_then(|d| d.get(".dockerconfigjson"))
    else {
        return Some("no .dockerconfigjson".into());
    };
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&bytes.0) else {
        return Some("unparseable .dockerconfigjson".into());
    };
    hosts.iter().map(AsRef::as_ref).find_map(|host| {
        let entry = &doc["auths"][host];
        (!(entry["password"].is_string() && entry["auth"].is_string()))
            .then(|| format!("no complete entry for {host}: {entry}"))
    })
}

/// What every served namespace must hold: `None` when the secret exists, is regcred's,
/// passes [`pull_problem`] for `hosts`, and has not expired.
pub fn managed_secret_problem(
    secret: Option<&Secret>,
    hosts: &[impl AsRef<str>],
) -> Option<String> {
    let Some(secret) = secret else {
        return Some("missing".into());
    };
    let labels = secret.metadata.labels.clone().unwrap_or_default();
    if labels.get(MANAGED_BY).map(String::as_str) != Some("regcred") {
        return Some("not labelled as regcred's".into());
    }
    if let Some(why) = pull_problem(secret, hosts) {
        return Some(why);
    }
    let annotations = secret.metadata.annotations.clone().unwrap_or_default();
    let Some(Ok(expiry)) = annotations
        .get(EXPIRES_AT)
        .map(|t| t.parse::<jiff::Timestamp>())
    else {
        return Some("no expiry annotation".into());
    };
    (expiry <= jiff::Timestamp::now()).then(|| format!("expired at {expiry}"))
}

/// Pulls the stack's test image with skopeo using this authfile; returns skopeo's output.
pub fn skopeo_pull(authfile: &Path) -> Output {
    skopeo_pull_from(authfile, stack().var("REGCRED_TEST_IMAGE"))
}

/// Pulls `image` (`host/path:tag`) with skopeo using this authfile; returns skopeo's output.
pub fn skopeo_pull_from(authfile: &Path, image: &str) -> Output {
    let s = stack();
    let dest = tempfile::tempdir().unwrap();
    Command::new("skopeo")
        .args([
            "--policy",
            s.var("REGCRED_TEST_POLICY"),
            "copy",
            "--authfile",
        ])
        .arg(authfile)
        .args(["--src-cert-dir", s.var("REGCRED_TEST_CERT_DIR")])
        .arg(format!("docker://{image}"))
        .arg(format!("dir:{}", dest.path().display()))
        .output()
        .expect("run skopeo")
}

/// The label someone else's secrets carry in tests.
pub const THEIRS: (&str, &str) = ("team", "theirs");

/// A pull secret (`doc` as its `.dockerconfigjson`) created by someone else: no label of
/// regcred's, their own [`THEIRS`] label.
pub async fn create_foreign_pull_secret(
    admin: &kube::Client,
    ns: &str,
    name: &str,
    doc: &Value,
) -> Secret {
    let s = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some([(THEIRS.0.to_owned(), THEIRS.1.to_owned())].into()),
            ..ObjectMeta::default()
        },
        type_: Some(DOCKERCONFIG_TYPE.into()),
        data: Some(
            [(
                ".dockerconfigjson".to_owned(),
                ByteString(doc.to_string().into_bytes()),
            )]
            .into(),
        ),
        ..Secret::default()
    };
    Api::<Secret>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &s)
        .await
        .expect("create foreign secret")
}
