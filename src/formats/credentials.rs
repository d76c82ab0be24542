//! One registry's username and password as plain keys: Argo CD's repository and
//! credential-template (repo-creds) secrets, and `kubernetes.io/basic-auth`.
//!
//! regcred owns only the keys, labels and annotations it writes; server-side apply leaves
//! what others add (Argo CD's `project`, a Tekton annotation) in place, and the comparisons
//! here ignore it, so such an addition never causes a write.

use std::collections::{BTreeMap, BTreeSet};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;

use super::Format;
use crate::dockerconfig::Credential;
use crate::ecr::Token;
use crate::secrets::{self, EXPIRES_AT_ANNOTATION, REGISTRIES_ANNOTATION, Served};

pub const OPAQUE_TYPE: &str = "Opaque";
pub const BASIC_AUTH_TYPE: &str = "kubernetes.io/basic-auth";
/// The label by which Argo CD finds its repository and credential-template secrets.
pub const ARGOCD_SECRET_TYPE_LABEL: &str = "argocd.argoproj.io/secret-type";

/// The value of [`ARGOCD_SECRET_TYPE_LABEL`] for an Argo CD shape.
fn argocd_label(format: Format) -> Option<&'static str> {
    match format {
        Format::ArgocdRepository => Some("repository"),
        Format::ArgocdRepoCreds => Some("repo-creds"),
        Format::Dockerconfigjson | Format::BasicAuth => None,
    }
}

/// The keys regcred writes in a secret of this shape.
fn data(
    format: Format,
    name: &str,
    host: &str,
    credential: &Credential,
) -> BTreeMap<String, ByteString> {
    use secrecy::ExposeSecret as _;
    let mut data = BTreeMap::new();
    let mut put = |key: &str, value: &str| {
        data.insert(key.to_owned(), ByteString(value.as_bytes().to_vec()));
    };
    match format {
        // Argo CD finds a repository by exact URL (the Application's repoURL): the host.
        Format::ArgocdRepository => {
            put("type", "helm");
            put("url", host);
            put("name", name);
            put("enableOCI", "true");
        }
        // A credential template applies to every repository URL it is a prefix of. The
        // trailing slash keeps it to URLs under the registry: without it, it would also
        // lend the token to a host that merely begins with the registry's name
        // (`….amazonaws.com.example.org`).
        Format::ArgocdRepoCreds => {
            put("type", "helm");
            put("url", &format!("{host}/"));
            put("enableOCI", "true");
        }
        Format::BasicAuth | Format::Dockerconfigjson => {}
    }
    put("username", &credential.username);
    put("password", credential.password.expose_secret());
    data
}

/// The secret of this shape for its one served registry.
pub(super) fn desired(
    format: Format,
    name: &str,
    namespace: &str,
    served: &[Served<'_>],
) -> Secret {
    debug_assert_eq!(served.len(), 1, "one registry per secret of this shape");
    let mut metadata = secrets::metadata(name, namespace, served);
    if let (Some(value), Some(labels)) = (argocd_label(format), metadata.labels.as_mut()) {
        labels.insert(ARGOCD_SECRET_TYPE_LABEL.to_owned(), value.to_owned());
    }
    let data = served
        .first()
        .map(|s| data(format, name, s.host, &s.token.credential))
        .unwrap_or_default();
    Secret {
        metadata,
        type_: Some(format.secret_type().to_owned()),
        data: Some(data),
        ..Secret::default()
    }
}

fn label<'a>(secret: &'a Secret, key: &str) -> Option<&'a str> {
    secret
        .metadata
        .labels
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// Whether `stored` holds everything regcred writes in `desired`: type, labels,
/// annotations and keys. What regcred does not write is not looked at.
pub(super) fn is_current(stored: &Secret, desired: &Secret) -> bool {
    let labels_match = desired
        .metadata
        .labels
        .iter()
        .flatten()
        .all(|(k, v)| label(stored, k) == Some(v.as_str()));
    let annotations_match = [EXPIRES_AT_ANNOTATION, REGISTRIES_ANNOTATION]
        .iter()
        .all(|k| secrets::annotation(stored, k) == secrets::annotation(desired, k));
    let data_match = desired.data.iter().flatten().all(|(k, v)| {
        stored
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .is_some_and(|s| s == v)
    });
    secrets::is_managed(stored)
        && stored.type_ == desired.type_
        && labels_match
        && annotations_match
        && data_match
}

fn text<'a>(secret: &'a Secret, key: &str) -> Option<&'a str> {
    let bytes = secret.data.as_ref()?.get(key)?;
    std::str::from_utf8(&bytes.0).ok().filter(|s| !s.is_empty())
}

/// Sound: regcred's, of this shape's type, for exactly the served host, with a username and
/// password, and every other key and label as regcred would write them for that password.
/// Fresh: more than `before` left before the announced expiry.
pub(super) fn is_sound_and_fresh(
    format: Format,
    stored: &Secret,
    served: &BTreeSet<&str>,
    now: Timestamp,
    before: SignedDuration,
) -> bool {
    let hosts: Vec<&str> = served.iter().copied().collect();
    let ([host], Some(expires_at)) = (hosts.as_slice(), secrets::expires_at(stored)) else {
        return false;
    };
    if expires_at.duration_since(now) <= before {
        return false;
    }
    let (Some(username), Some(password)) = (text(stored, "username"), text(stored, "password"))
    else {
        return false;
    };
    // The secret regcred would write with the password it holds: equal in every other
    // respect means sound (the password's own validity cannot be judged without a token).
    let token = Token {
        credential: Credential {
            username: username.to_owned(),
            password: password.to_owned().into(),
        },
        expires_at,
        fetched_at: now,
    };
    let name = stored.metadata.name.as_deref().unwrap_or_default();
    let namespace = stored.metadata.namespace.as_deref().unwrap_or_default();
    let want = desired(
        format,
        name,
        namespace,
        &[Served {
            host,
            token: &token,
        }],
    );
    is_current(stored, &want)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::{MANAGED_BY_LABEL, is_managed};

    const HOST: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com";

    fn token(password: &str, expires: &str) -> Token {
        Token {
            credential: Credential {
                username: "AWS".into(),
                password: password.to_owned().into(),
            },
            expires_at: expires.parse().unwrap(),
            fetched_at: "2026-11-29T00:00:00Z".parse().unwrap(),
        }
    }

    fn make(format: Format, password: &str) -> Secret {
        let t = token(password, "2026-11-29T12:00:00Z");
        desired(
            format,
            "ecr-host",
            "argocd",
            &[Served {
                host: HOST,
                token: &t,
            }],
        )
    }

    fn strings(s: &Secret) -> BTreeMap<String, String> {
        s.data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), String::from_utf8(v.0.clone()).unwrap()))
            .collect()
    }

    fn labels(s: &Secret) -> BTreeMap<String, String> {
        s.metadata.labels.clone().unwrap_or_default()
    }

    #[test]
    fn an_argocd_repository_secret_is_argo_cds_documented_shape() {
        let s = make(Format::ArgocdRepository, "pw");
        assert_eq!(s.type_.as_deref(), Some("Opaque"));
        assert_eq!(
            labels(&s),
            BTreeMap::from([
                (ARGOCD_SECRET_TYPE_LABEL.to_owned(), "repository".to_owned()),
                (MANAGED_BY_LABEL.to_owned(), "regcred".to_owned()),
            ])
        );
        assert_eq!(
            strings(&s),
            BTreeMap::from(
                [
                    ("enableOCI", "true"),
                    ("name", "ecr-host"),
                    ("password", "pw"),
                    ("type", "helm"),
                    ("url", HOST),
                    ("username", "AWS"),
                ]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
            )
        );
        assert_eq!(
            secrets::annotation(&s, EXPIRES_AT_ANNOTATION),
            Some("2026-11-29T12:00:00Z")
        );
        assert_eq!(secrets::annotation(&s, REGISTRIES_ANNOTATION), Some(HOST));
        assert!(is_managed(&s));
    }

    #[test]
    fn a_credential_template_covers_every_url_under_the_host() {
        let s = make(Format::ArgocdRepoCreds, "pw");
        assert_eq!(labels(&s)[ARGOCD_SECRET_TYPE_LABEL], "repo-creds");
        let data = strings(&s);
        assert_eq!(data["url"], format!("{HOST}/"));
        assert_eq!(data["type"], "helm");
        assert_eq!(data["enableOCI"], "true");
        assert!(
            !data.contains_key("name"),
            "a template has no name: {data:?}"
        );
    }

    #[test]
    fn basic_auth_holds_username_and_password_only() {
        let s = make(Format::BasicAuth, "pw");
        assert_eq!(s.type_.as_deref(), Some("kubernetes.io/basic-auth"));
        assert!(!labels(&s).contains_key(ARGOCD_SECRET_TYPE_LABEL));
        assert_eq!(
            strings(&s).into_iter().collect::<Vec<_>>(),
            [
                ("password".to_owned(), "pw".to_owned()),
                ("username".to_owned(), "AWS".to_owned())
            ]
        );
    }

    #[test]
    fn current_means_everything_regcred_writes_and_ignores_what_others_add() {
        for format in [
            Format::ArgocdRepository,
            Format::ArgocdRepoCreds,
            Format::BasicAuth,
        ] {
            let stored = make(format, "pw");
            assert!(is_current(&stored, &make(format, "pw")), "{format}");
            assert!(
                !is_current(&stored, &make(format, "pw2")),
                "{format}: new token"
            );
            // Others' keys, labels and annotations are theirs.
            let mut theirs = stored.clone();
            theirs
                .data
                .as_mut()
                .unwrap()
                .insert("project".into(), ByteString(b"team-a".to_vec()));
            theirs
                .metadata
                .labels
                .as_mut()
                .unwrap()
                .insert("team".into(), "a".into());
            theirs
                .metadata
                .annotations
                .as_mut()
                .unwrap()
                .insert("tekton.dev/docker-0".into(), format!("https://{HOST}"));
            assert!(is_current(&theirs, &make(format, "pw")), "{format}");
            // An edit to what regcred writes is not.
            let mut edited = stored.clone();
            edited
                .data
                .as_mut()
                .unwrap()
                .insert("username".into(), ByteString(b"someone".to_vec()));
            assert!(!is_current(&edited, &make(format, "pw")), "{format}");
            let mut unlabelled = stored.clone();
            unlabelled.metadata.labels = None;
            assert!(!is_current(&unlabelled, &make(format, "pw")), "{format}");
        }
        // The two Argo CD shapes differ in their label, so a switch is a write.
        assert!(!is_current(
            &make(Format::ArgocdRepository, "pw"),
            &make(Format::ArgocdRepoCreds, "pw")
        ));
    }

    #[test]
    fn soundness_needs_the_shape_the_host_a_password_and_time_left() {
        let now: Timestamp = "2026-11-29T00:00:00Z".parse().unwrap();
        let six = SignedDuration::from_hours(6);
        let host: BTreeSet<&str> = [HOST].into();
        for format in [
            Format::ArgocdRepository,
            Format::ArgocdRepoCreds,
            Format::BasicAuth,
        ] {
            let good = make(format, "pw");
            assert!(
                is_sound_and_fresh(format, &good, &host, now, six),
                "{format}"
            );
            let later: Timestamp = "2026-11-29T06:30:00Z".parse().unwrap();
            assert!(
                !is_sound_and_fresh(format, &good, &host, later, six),
                "{format}: due"
            );
            assert!(
                !is_sound_and_fresh(format, &good, &["other.example"].into(), now, six),
                "{format}: another host"
            );
            let mut no_password = good.clone();
            no_password
                .data
                .as_mut()
                .unwrap()
                .insert("password".into(), ByteString(Vec::new()));
            assert!(
                !is_sound_and_fresh(format, &no_password, &host, now, six),
                "{format}"
            );
        }
        let mut wrong_url = make(Format::ArgocdRepository, "pw");
        wrong_url
            .data
            .as_mut()
            .unwrap()
            .insert("url".into(), ByteString(b"elsewhere.example".to_vec()));
        assert!(!is_sound_and_fresh(
            Format::ArgocdRepository,
            &wrong_url,
            &host,
            now,
            six
        ));
        assert!(
            !is_sound_and_fresh(
                Format::BasicAuth,
                &make(Format::ArgocdRepository, "pw"),
                &host,
                now,
                six
            ),
            "another shape"
        );
    }
}
