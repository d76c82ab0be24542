//! What regcred knows of a stored secret: everything its decisions need, in little room.
//!
//! The controller keeps one [`Stored`] per namespace and secret name for as long as the
//! secret exists (20,000 namespaces are 20,000 of them), so it holds no token and no
//! payload: the label, the type, the expiry, a digest of the registries annotation and of
//! each data value, whether the served entries are sound, the resourceVersion and uid. The
//! whole secret is kept only where a decision needs more: someone else's secret (adoption
//! keeps its other entries), one holding entries for registries regcred does not serve
//! (kept on every write, given back on release) and a secret of another format than the pull
//! secret (Argo CD's, basic-auth: per host, in a namespace or two) — rare, and small in number.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use serde_json::Value;
use sha2::Digest as _;

use super::{
    DATA_KEY, EXPIRES_AT_ANNOTATION, REGISTRIES_ANNOTATION, SECRET_TYPE, annotation,
    entry_is_complete, format_time, payload,
};
use crate::dockerconfig;

/// A digest of a value regcred compares but does not keep (SHA-256, first 128 bits).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Digest([u8; 16]);

impl Digest {
    #[must_use]
    pub fn of(bytes: &[u8]) -> Self {
        let full = sha2::Sha256::digest(bytes);
        let mut d = [0; 16];
        d.copy_from_slice(&full[..16]);
        Self(d)
    }
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Of a secret's value: nothing of it is shown.
        f.write_str("Digest")
    }
}

/// A resourceVersion: etcd's are numbers (kept as one), anything else as text.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Version {
    Number(u64),
    Text(Box<str>),
}

impl Version {
    fn of(s: &str) -> Self {
        match s.parse::<u64>() {
            Ok(n) if n.to_string() == s => Self::Number(n),
            _ => Self::Text(s.into()),
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Number(n) => write!(f, "{n}"),
            Self::Text(s) => f.write_str(s),
        }
    }
}

/// Strings every secret repeats (types, data keys), borrowed instead of copied.
fn common(s: &str) -> Cow<'static, str> {
    const COMMON: &[&str] = &[
        SECRET_TYPE,
        DATA_KEY,
        "Opaque",
        "kubernetes.io/basic-auth",
        "kubernetes.io/dockercfg",
        ".dockercfg",
        "username",
        "password",
    ];
    COMMON
        .iter()
        .find(|c| **c == s)
        .map_or_else(|| Cow::Owned(s.to_owned()), |c| Cow::Borrowed(*c))
}

/// A stored secret as regcred's decisions see it.
#[derive(Clone)]
pub struct Stored {
    managed: bool,
    type_: Option<Cow<'static, str>>,
    /// The expiry it announces, and whether the annotation is exactly in regcred's form.
    expires_at: Option<(Timestamp, bool)>,
    registries: Option<Digest>,
    /// Every registry of its registries annotation has a complete, self-consistent entry
    /// (judged once, when it was read).
    sound: bool,
    data: Box<[(Cow<'static, str>, Digest)]>,
    resource_version: Option<Version>,
    uid: Option<Box<str>>,
    /// The whole secret, where a decision needs more than the above (see the module).
    content: Option<Arc<Secret>>,
}

impl std::fmt::Debug for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A kept secret holds someone's (or another format's) passwords: never shown.
        f.debug_struct("Stored")
            .field("managed", &self.managed)
            .field("type_", &self.type_)
            .field("expires_at", &self.expires_at)
            .field("sound", &self.sound)
            .field("resource_version", &self.resource_version)
            .field("kept_whole", &self.content.is_some())
            .finish_non_exhaustive()
    }
}

/// Whether a secret holds `auths` entries for hosts its registries annotation does not
/// list (those regcred keeps and gives back), is not regcred's at all, or is not a pull
/// secret (the other formats' few secrets are judged whole, see [`crate::formats`]).
fn needs_content(secret: &Secret) -> bool {
    if !super::is_managed(secret) || secret.type_.as_deref() != Some(SECRET_TYPE) {
        return true;
    }
    let Some(Ok(auths)) = payload(secret).map(dockerconfig::parse) else {
        return false;
    };
    let listed: BTreeSet<&str> = annotation(secret, REGISTRIES_ANNOTATION)
        .map(|a| a.split(',').map(str::trim).collect())
        .unwrap_or_default();
    auths.keys().any(|host| !listed.contains(host.as_str()))
}

/// Whether every host the registries annotation lists has a complete, self-consistent
/// entry in a pull secret.
fn entries_sound(secret: &Secret) -> bool {
    if secret.type_.as_deref() != Some(SECRET_TYPE) {
        return false;
    }
    let Some(listed) = annotation(secret, REGISTRIES_ANNOTATION) else {
        return false;
    };
    let Some(Ok(auths)) = payload(secret).map(dockerconfig::parse) else {
        return false;
    };
    listed
        .split(',')
        .all(|host| auths.get(host).is_some_and(entry_is_complete))
}

impl Stored {
    /// What a decision needs of `secret`, kept in little room.
    #[must_use]
    pub fn of(secret: Secret) -> Self {
        let expires_at = annotation(&secret, EXPIRES_AT_ANNOTATION).and_then(|raw| {
            let t: Timestamp = raw.parse().ok()?;
            Some((t, format_time(t) == raw))
        });
        let data = secret
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (common(k), Digest::of(&v.0)))
            .collect();
        Self {
            managed: super::is_managed(&secret),
            type_: secret.type_.as_deref().map(common),
            expires_at,
            registries: annotation(&secret, REGISTRIES_ANNOTATION)
                .map(|r| Digest::of(r.as_bytes())),
            sound: entries_sound(&secret),
            data,
            resource_version: secret.metadata.resource_version.as_deref().map(Version::of),
            uid: secret.metadata.uid.as_deref().map(Into::into),
            content: needs_content(&secret).then(|| Arc::new(secret)),
        }
    }

    /// It carries regcred's label.
    #[must_use]
    pub fn is_managed(&self) -> bool {
        self.managed
    }

    #[must_use]
    pub fn type_(&self) -> Option<&str> {
        self.type_.as_deref()
    }

    /// It has the type a pull secret needs.
    #[must_use]
    pub fn has_pull_secret_type(&self) -> bool {
        self.type_() == Some(SECRET_TYPE)
    }

    #[must_use]
    pub fn resource_version(&self) -> Option<String> {
        self.resource_version.as_ref().map(ToString::to_string)
    }

    /// The expiry it announces.
    #[must_use]
    pub fn expires_at(&self) -> Option<Timestamp> {
        self.expires_at.map(|(t, _)| t)
    }

    /// The whole secret, when it was kept (see the module).
    #[must_use]
    pub fn content(&self) -> Option<&Secret> {
        self.content.as_deref()
    }

    /// [`super::is_sound_and_fresh`], from what was kept.
    #[must_use]
    pub fn is_sound_and_fresh(
        &self,
        served: &BTreeSet<&str>,
        now: Timestamp,
        before: SignedDuration,
    ) -> bool {
        let listed = served.iter().copied().collect::<Vec<_>>().join(",");
        self.managed
            && self.has_pull_secret_type()
            && self.registries == Some(Digest::of(listed.as_bytes()))
            && self
                .expires_at()
                .is_some_and(|t| t.duration_since(now) > before)
            && self.sound
    }

    /// [`super::kept_entries`]: only a kept secret has any.
    #[must_use]
    pub fn kept_entries(&self, served: &BTreeSet<&str>) -> BTreeMap<String, Value> {
        self.content()
            .map(|s| super::kept_entries(s, served))
            .unwrap_or_default()
    }

    /// [`super::given_back`]: only a kept secret has anything to give back.
    #[must_use]
    pub fn given_back(&self) -> Option<Secret> {
        self.content().and_then(super::given_back)
    }

    /// [`super::is_current`]: the same label, type and annotations, and each of `desired`'s
    /// data values (other keys, someone else's, do not count).
    #[must_use]
    pub fn is_current(&self, desired: &Secret) -> bool {
        let expiry_ok = match (annotation(desired, EXPIRES_AT_ANNOTATION), self.expires_at) {
            (None, None) => true,
            (Some(want), Some((t, exact))) => exact && format_time(t) == want,
            _ => false,
        };
        let registries_ok = annotation(desired, REGISTRIES_ANNOTATION)
            .map(|r| Digest::of(r.as_bytes()))
            == self.registries;
        let data_ok = desired.data.iter().flatten().all(|(k, v)| {
            self.data
                .iter()
                .any(|(key, d)| key == k && *d == Digest::of(&v.0))
        });
        self.managed
            && self.type_() == desired.type_.as_deref()
            && expiry_ok
            && registries_ok
            && data_ok
    }

    /// What Events about it refer to.
    #[must_use]
    pub fn reference(&self, namespace: &str, name: &str) -> ObjectReference {
        ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Secret".into()),
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            uid: self.uid.as_deref().map(str::to_owned),
            resource_version: self.resource_version(),
            ..ObjectReference::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{MANAGED_BY_LABEL, MANAGED_BY_VALUE, Served, desired};
    use super::*;
    use crate::dockerconfig::Credential;
    use crate::ecr::Token;
    use k8s_openapi::ByteString;

    const A: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com";

    fn token(password: &str) -> Token {
        Token {
            credential: Credential {
                username: "AWS".into(),
                password: password.to_owned().into(),
            },
            expires_at: "2026-11-29T12:00:00Z".parse().unwrap(),
            fetched_at: "2026-11-29T00:00:00Z".parse().unwrap(),
        }
    }

    fn ours(password: &str) -> Secret {
        let mut s = desired(
            "regcred",
            "apps",
            &[Served {
                host: A,
                token: &token(password),
            }],
            BTreeMap::new(),
        );
        s.metadata.resource_version = Some("1234".into());
        s.metadata.uid = Some("6f1c0d43-5b0e-4c52-8d3e-0123456789ab".into());
        s
    }

    /// Every decision comes out as from the whole secret.
    #[test]
    fn decides_as_the_whole_secret_would() {
        let now: Timestamp = "2026-11-29T00:00:00Z".parse().unwrap();
        let six = SignedDuration::from_hours(6);
        let hosts: BTreeSet<&str> = [A].into();
        let secret = ours("pw");
        let stored = Stored::of(secret.clone());
        assert!(stored.content().is_none(), "regcred's own keeps no token");
        assert!(stored.is_managed() && stored.has_pull_secret_type());
        assert_eq!(stored.resource_version().as_deref(), Some("1234"));
        assert_eq!(stored.expires_at(), super::super::expires_at(&secret));
        for (when, wanted) in [
            (now, true),
            ("2026-11-29T06:30:00Z".parse().unwrap(), false),
        ] {
            assert_eq!(
                stored.is_sound_and_fresh(&hosts, when, six),
                super::super::is_sound_and_fresh(&secret, &hosts, when, six),
            );
            assert_eq!(stored.is_sound_and_fresh(&hosts, when, six), wanted);
        }
        assert!(!stored.is_sound_and_fresh(&[A, "public.ecr.aws"].into(), now, six));
        assert!(stored.is_current(&ours("pw")));
        assert!(!stored.is_current(&ours("pw2")), "another token");
        let mut later = ours("pw");
        later
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(EXPIRES_AT_ANNOTATION.into(), "2026-11-29T13:00:00Z".into());
        assert!(!stored.is_current(&later), "another expiry");
        assert!(stored.kept_entries(&hosts).is_empty());
        assert!(stored.given_back().is_none());
        let shown = format!("{stored:?}");
        assert!(!shown.contains("pw"), "{shown}");
    }

    #[test]
    fn an_edited_payload_is_neither_sound_nor_current() {
        let now: Timestamp = "2026-11-29T00:00:00Z".parse().unwrap();
        let mut edited = ours("pw");
        let doc = String::from_utf8(payload(&edited).unwrap().to_vec())
            .unwrap()
            .replace("\"pw\"", "\"px\"");
        edited.data = Some([(DATA_KEY.to_owned(), ByteString(doc.into_bytes()))].into());
        let stored = Stored::of(edited);
        assert!(!stored.is_sound_and_fresh(&[A].into(), now, SignedDuration::from_hours(6)));
        assert!(!stored.is_current(&ours("pw")));
        // Someone's extra key is theirs: regcred's own value still counts as current.
        let mut extra = ours("pw");
        extra
            .data
            .as_mut()
            .unwrap()
            .insert("note".into(), ByteString(b"theirs".to_vec()));
        assert!(Stored::of(extra).is_current(&ours("pw")));
    }

    #[test]
    fn secrets_with_more_than_regcreds_own_are_kept_whole() {
        let json = format!(
            r#"{{"auths":{{"ghcr.io":{{"auth":"eDp5"}},"{A}":{{"username":"AWS","password":"p","auth":"QVdTOnA="}}}}}}"#
        );
        let mut adopted = ours("p");
        adopted.data = Some([(DATA_KEY.to_owned(), ByteString(json.into_bytes()))].into());
        let stored = Stored::of(adopted.clone());
        assert!(stored.content().is_some());
        assert_eq!(
            stored.kept_entries(&[A].into()).keys().collect::<Vec<_>>(),
            ["ghcr.io"]
        );
        assert!(stored.given_back().is_some());
        let mut theirs = ours("p");
        theirs.metadata.labels = None;
        let stored = Stored::of(theirs);
        assert!(!stored.is_managed());
        assert!(
            stored.content().is_some(),
            "someone else's secret is kept whole"
        );
        assert!(!stored.is_current(&ours("p")));
        let shown = format!("{stored:?}");
        assert!(
            shown.contains("kept_whole: true") && !shown.contains("data"),
            "a kept secret's content is never shown: {shown}"
        );
        assert!(adopted.metadata.labels.as_ref().unwrap()[MANAGED_BY_LABEL] == MANAGED_BY_VALUE);
    }

    #[test]
    fn events_refer_to_the_secret_itself() {
        let r = Stored::of(ours("pw")).reference("apps", "regcred");
        assert_eq!(r.kind.as_deref(), Some("Secret"));
        assert_eq!(
            r.uid.as_deref(),
            Some("6f1c0d43-5b0e-4c52-8d3e-0123456789ab")
        );
        assert_eq!(
            (r.namespace.as_deref(), r.name.as_deref()),
            (Some("apps"), Some("regcred"))
        );
    }
}
