//! The pull Secret: what it should hold (pure data), how a stored one compares, and the one
//! thin writer that puts it in place by server-side apply.

mod stored;
mod writer;

pub use stored::{Digest, Stored};
pub use writer::{Error, Writer};

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::core::ObjectMeta;
use secrecy::ExposeSecret as _;
use serde_json::Value;

use crate::dockerconfig::{self, Entry};
use crate::ecr::Token;

/// The field manager of every write regcred makes.
pub const FIELD_MANAGER: &str = "regcred";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "regcred";
pub const EXPIRES_AT_ANNOTATION: &str = "regcred.io/expires-at";
pub const REGISTRIES_ANNOTATION: &str = "regcred.io/registries";
pub const SECRET_TYPE: &str = "kubernetes.io/dockerconfigjson";
pub const DATA_KEY: &str = ".dockerconfigjson";

/// Every API call's upper bound.
pub const API_TIMEOUT: Duration = Duration::from_secs(30);

/// A registry regcred serves in a secret, with the token to use for it.
#[derive(Clone, Copy, Debug)]
pub struct Served<'a> {
    pub host: &'a str,
    pub token: &'a Token,
}

/// Whether regcred manages a secret: it carries regcred's label.
#[must_use]
pub fn is_managed(secret: &Secret) -> bool {
    secret
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .is_some_and(|v| v == MANAGED_BY_VALUE)
}

/// The value of one of the secret's annotations.
#[must_use]
pub fn annotation<'a>(secret: &'a Secret, key: &str) -> Option<&'a str> {
    secret
        .metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

fn payload(secret: &Secret) -> Option<&[u8]> {
    secret.data.as_ref()?.get(DATA_KEY).map(|b| b.0.as_slice())
}

/// Whether a stored secret has the type a pull secret needs (the type cannot be changed in
/// place: a secret of another type must be deleted before one of the right type exists).
#[must_use]
pub fn has_pull_secret_type(secret: &Secret) -> bool {
    secret.type_.as_deref() == Some(SECRET_TYPE)
}

/// Entries of a stored secret that regcred keeps when it writes: hosts it does not serve
/// and never served there (those an adopted secret held for other registries).
#[must_use]
pub fn kept_entries(stored: &Secret, served: &BTreeSet<&str>) -> BTreeMap<String, Value> {
    let Some(Ok(auths)) = payload(stored).map(dockerconfig::parse) else {
        return BTreeMap::new();
    };
    let previously_ours: BTreeSet<&str> = if is_managed(stored) {
        annotation(stored, REGISTRIES_ANNOTATION)
            .map(|a| a.split(',').map(str::trim).collect())
            .unwrap_or_default()
    } else {
        BTreeSet::new()
    };
    auths
        .into_iter()
        .filter(|(host, _)| {
            !served.contains(host.as_str()) && !previously_ours.contains(host.as_str())
        })
        .collect()
}

/// What is left of a managed secret when regcred lets go of it (its namespace is no longer
/// selected, its name no longer configured, or `cleanup`): the entries it holds for other
/// registries — an adopted secret's, which adoption promised to keep — as someone else's
/// secret again, without regcred's label and annotations. `None` when nothing would be left:
/// then the secret goes.
#[must_use]
pub fn given_back(stored: &Secret) -> Option<Secret> {
    let kept = kept_entries(stored, &BTreeSet::new());
    if kept.is_empty() || !is_managed(stored) || !has_pull_secret_type(stored) {
        return None;
    }
    let auths: BTreeMap<String, Entry> =
        kept.into_iter().map(|(h, v)| (h, Entry::Kept(v))).collect();
    let mut back = stored.clone();
    if let Some(labels) = back.metadata.labels.as_mut() {
        labels.remove(MANAGED_BY_LABEL);
    }
    if let Some(annotations) = back.metadata.annotations.as_mut() {
        annotations.retain(|k, _| !k.starts_with("regcred.io/"));
    }
    back.data.get_or_insert_with(BTreeMap::new).insert(
        DATA_KEY.to_owned(),
        ByteString(dockerconfig::render(&auths)),
    );
    Some(back)
}

/// The metadata of every secret regcred writes, whatever its shape: its label, the earliest
/// expiry among the served registries and their hosts.
#[must_use]
pub fn metadata(name: &str, namespace: &str, served: &[Served<'_>]) -> ObjectMeta {
    let expires_at = served.iter().map(|s| s.token.expires_at).min();
    let hosts: BTreeSet<&str> = served.iter().map(|s| s.host).collect();
    let mut annotations = BTreeMap::new();
    if let Some(t) = expires_at {
        annotations.insert(EXPIRES_AT_ANNOTATION.to_owned(), format_time(t));
    }
    annotations.insert(
        REGISTRIES_ANNOTATION.to_owned(),
        hosts.into_iter().collect::<Vec<_>>().join(","),
    );
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        labels: Some([(MANAGED_BY_LABEL.to_owned(), MANAGED_BY_VALUE.to_owned())].into()),
        annotations: Some(annotations),
        ..ObjectMeta::default()
    }
}

/// The secret regcred wants in a namespace: served registries with their tokens, plus the
/// entries it keeps from the stored one.
#[must_use]
pub fn desired(
    name: &str,
    namespace: &str,
    served: &[Served<'_>],
    kept: BTreeMap<String, Value>,
) -> Secret {
    let mut auths: BTreeMap<String, Entry> =
        kept.into_iter().map(|(h, v)| (h, Entry::Kept(v))).collect();
    for s in served {
        auths.insert(s.host.to_owned(), Entry::Ours(s.token.credential.clone()));
    }
    Secret {
        metadata: metadata(name, namespace, served),
        type_: Some(SECRET_TYPE.to_owned()),
        data: Some(
            [(
                DATA_KEY.to_owned(),
                ByteString(dockerconfig::render(&auths)),
            )]
            .into(),
        ),
        ..Secret::default()
    }
}

/// RFC 3339 in UTC at second precision, as the annotation carries it. Fractions are cut,
/// never rounded up: the annotation never promises more time than the token has.
#[must_use]
pub fn format_time(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The expiry a stored secret announces.
#[must_use]
pub fn expires_at(secret: &Secret) -> Option<Timestamp> {
    annotation(secret, EXPIRES_AT_ANNOTATION)?.parse().ok()
}

/// Whether the stored secret already holds exactly what regcred would write.
#[must_use]
pub fn is_current(stored: &Secret, desired: &Secret) -> bool {
    let ann = |s: &Secret, k| annotation(s, k).map(str::to_owned);
    is_managed(stored)
        && stored.type_ == desired.type_
        && payload(stored) == payload(desired)
        && ann(stored, EXPIRES_AT_ANNOTATION) == ann(desired, EXPIRES_AT_ANNOTATION)
        && ann(stored, REGISTRIES_ANNOTATION) == ann(desired, REGISTRIES_ANNOTATION)
}

/// Whether a managed secret is sound and not yet due for renewal, judged without a token:
/// right type, the served hosts and no others of regcred's, every served entry complete and
/// self-consistent, and more than `before` left before it expires.
#[must_use]
pub fn is_sound_and_fresh(
    stored: &Secret,
    served: &BTreeSet<&str>,
    now: Timestamp,
    before: SignedDuration,
) -> bool {
    if !is_managed(stored) || !has_pull_secret_type(stored) {
        return false;
    }
    let listed = served.iter().copied().collect::<Vec<_>>().join(",");
    if annotation(stored, REGISTRIES_ANNOTATION) != Some(listed.as_str()) {
        return false;
    }
    if expires_at(stored).is_none_or(|t| t.duration_since(now) <= before) {
        return false;
    }
    let Some(Ok(auths)) = payload(stored).map(dockerconfig::parse) else {
        return false;
    };
    served
        .iter()
        .all(|host| auths.get(*host).is_some_and(entry_is_complete))
}

fn entry_is_complete(entry: &Value) -> bool {
    let field = |k| {
        entry
            .get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    match (field("username"), field("password"), field("auth")) {
        (Some(user), Some(password), Some(auth)) => {
            let credential = dockerconfig::Credential {
                username: user.to_owned(),
                password: password.to_owned().into(),
            };
            credential.auth().expose_secret() == auth
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dockerconfig::Credential;

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

    const A: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com";
    const B: &str = "public.ecr.aws";

    fn served<'a>(ta: &'a Token, tb: &'a Token) -> Vec<Served<'a>> {
        vec![Served { host: B, token: tb }, Served { host: A, token: ta }]
    }

    #[test]
    fn desired_carries_label_annotations_and_earliest_expiry() {
        let (ta, tb) = (
            token("pa", "2026-11-29T12:00:00Z"),
            token("pb", "2026-11-29T11:00:00Z"),
        );
        let s = desired("regcred", "apps", &served(&ta, &tb), BTreeMap::new());
        assert!(is_managed(&s));
        assert_eq!(s.type_.as_deref(), Some(SECRET_TYPE));
        assert_eq!(
            annotation(&s, EXPIRES_AT_ANNOTATION),
            Some("2026-11-29T11:00:00Z")
        );
        assert_eq!(
            annotation(&s, REGISTRIES_ANNOTATION),
            Some(format!("{A},{B}").as_str())
        );
        let doc: Value = serde_json::from_slice(payload(&s).unwrap()).unwrap();
        assert_eq!(doc["auths"][A]["password"], "pa");
        assert_eq!(doc["auths"][B]["password"], "pb");
        let again = desired("regcred", "apps", &served(&ta, &tb), BTreeMap::new());
        assert!(is_current(&s, &again), "same input, same secret");
        let newer = token("pa2", "2026-11-29T12:00:00Z");
        assert!(!is_current(
            &s,
            &desired("regcred", "apps", &served(&newer, &tb), BTreeMap::new())
        ));
    }

    fn stored(managed: bool, registries: Option<&str>, json: &str) -> Secret {
        let mut s = Secret {
            type_: Some(SECRET_TYPE.into()),
            data: Some([(DATA_KEY.to_owned(), ByteString(json.as_bytes().to_vec()))].into()),
            ..Secret::default()
        };
        if managed {
            s.metadata.labels =
                Some([(MANAGED_BY_LABEL.to_owned(), MANAGED_BY_VALUE.to_owned())].into());
        }
        if let Some(r) = registries {
            s.metadata.annotations =
                Some([(REGISTRIES_ANNOTATION.to_owned(), r.to_owned())].into());
        }
        s
    }

    #[test]
    fn adoption_keeps_other_hosts_and_drops_what_regcred_no_longer_serves() {
        let json = format!(
            r#"{{"auths":{{"ghcr.io":{{"auth":"eDp5"}},"{A}":{{"auth":"old"}},"old.example":{{"auth":"b2xk"}}}}}}"#
        );
        let ours: BTreeSet<&str> = [A].into();
        let foreign = stored(false, None, &json);
        assert_eq!(
            kept_entries(&foreign, &ours).keys().collect::<Vec<_>>(),
            ["ghcr.io", "old.example"]
        );
        // Once managed, a host regcred served before (listed in its annotation) is dropped.
        let managed = stored(true, Some(&format!("{A},old.example")), &json);
        assert_eq!(
            kept_entries(&managed, &ours).keys().collect::<Vec<_>>(),
            ["ghcr.io"]
        );
        assert!(kept_entries(&stored(true, None, "{garbage"), &ours).is_empty());
    }

    #[test]
    fn letting_go_gives_back_what_others_held_and_nothing_of_regcreds() {
        let json = format!(
            r#"{{"auths":{{"ghcr.io":{{"auth":"eDp5"}},"{A}":{{"password":"p","auth":"QVdTOnA="}}}}}}"#
        );
        let mut adopted = stored(true, Some(A), &json);
        adopted
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("team".into(), "theirs".into());
        adopted.metadata.annotations.as_mut().unwrap().extend([
            (
                EXPIRES_AT_ANNOTATION.to_owned(),
                "2026-11-29T12:00:00Z".to_owned(),
            ),
            ("note".to_owned(), "theirs".to_owned()),
        ]);
        let back = given_back(&adopted).expect("something to give back");
        assert!(!is_managed(&back));
        assert_eq!(
            back.metadata
                .labels
                .as_ref()
                .unwrap()
                .get("team")
                .map(String::as_str),
            Some("theirs")
        );
        assert_eq!(
            back.metadata
                .annotations
                .as_ref()
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            ["note"]
        );
        let doc: Value = serde_json::from_slice(payload(&back).unwrap()).unwrap();
        assert_eq!(
            doc,
            serde_json::json!({"auths": {"ghcr.io": {"auth": "eDp5"}}})
        );
        // Only regcred's own entries: nothing to give back, the secret goes.
        let ours = stored(
            true,
            Some(A),
            &format!(r#"{{"auths":{{"{A}":{{"auth":"x"}}}}}}"#),
        );
        assert!(given_back(&ours).is_none());
        assert!(
            given_back(&stored(false, None, &json)).is_none(),
            "not regcred's to give"
        );
    }

    #[test]
    fn soundness_needs_structure_consistency_and_time_left() {
        let now: Timestamp = "2026-11-29T00:00:00Z".parse().unwrap();
        let six_hours = SignedDuration::from_hours(6);
        let t = token("pa", "2026-11-29T12:00:00Z");
        let good = desired(
            "regcred",
            "apps",
            &[Served { host: A, token: &t }],
            BTreeMap::new(),
        );
        let hosts: BTreeSet<&str> = [A].into();
        assert!(is_sound_and_fresh(&good, &hosts, now, six_hours));
        let later: Timestamp = "2026-11-29T06:30:00Z".parse().unwrap();
        assert!(
            !is_sound_and_fresh(&good, &hosts, later, six_hours),
            "due for renewal"
        );
        assert!(
            !is_sound_and_fresh(&good, &[A, B].into(), now, six_hours),
            "a host is missing"
        );
        let mut tampered = good.clone();
        let doc = String::from_utf8(payload(&good).unwrap().to_vec())
            .unwrap()
            .replace("\"pa\"", "\"px\"");
        tampered.data = Some([(DATA_KEY.to_owned(), ByteString(doc.into_bytes()))].into());
        assert!(
            !is_sound_and_fresh(&tampered, &hosts, now, six_hours),
            "auth no longer matches"
        );
        let mut opaque = good.clone();
        opaque.type_ = Some("Opaque".into());
        assert!(!is_sound_and_fresh(&opaque, &hosts, now, six_hours));
        let mut unlabelled = good;
        unlabelled.metadata.labels = None;
        assert!(!is_sound_and_fresh(&unlabelled, &hosts, now, six_hours));
    }
}
