//! The `.dockerconfigjson` document: rendering ours, reading one already stored.
//!
//! Pure: bytes in, bytes out. Identical input renders identical bytes (hosts sorted, fields
//! in a fixed order), so "is the stored secret current?" is a byte comparison.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use secrecy::{ExposeSecret as _, SecretString};
use serde::Serialize;
use serde_json::Value;

/// A registry login: ECR's username (always `AWS` today) and its token.
#[derive(Clone)]
pub struct Credential {
    pub username: String,
    pub password: SecretString,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .field("password", &"[redacted]")
            .finish()
    }
}

impl Credential {
    /// The `auth` value: base64 of `username:password`.
    #[must_use]
    pub fn auth(&self) -> SecretString {
        let plain = format!("{}:{}", self.username, self.password.expose_secret());
        BASE64.encode(plain).into()
    }
}

/// One entry of `auths`.
#[derive(Clone, Debug)]
pub enum Entry {
    /// A registry regcred serves.
    Ours(Credential),
    /// An entry regcred keeps as it found it (a host it does not serve, in an adopted secret).
    Kept(Value),
}

/// Why stored bytes are not a usable `.dockerconfigjson`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("has no \"auths\" object")]
    NoAuths,
}

#[derive(Serialize)]
struct Rendered<'a> {
    username: &'a str,
    password: &'a str,
    auth: &'a str,
}

/// Renders `{"auths": {HOST: ...}}` with hosts in sorted order.
#[must_use]
pub fn render(auths: &BTreeMap<String, Entry>) -> Vec<u8> {
    let mut out = b"{\"auths\":{".to_vec();
    for (i, (host, entry)) in auths.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, host).expect("a string serializes");
        out.push(b':');
        match entry {
            Entry::Ours(c) => {
                let auth = c.auth();
                let rendered = Rendered {
                    username: &c.username,
                    password: c.password.expose_secret(),
                    auth: auth.expose_secret(),
                };
                serde_json::to_writer(&mut out, &rendered).expect("strings serialize");
            }
            Entry::Kept(v) => serde_json::to_writer(&mut out, v).expect("JSON values serialize"),
        }
    }
    out.extend_from_slice(b"}}");
    out
}

/// Reads the `auths` of a stored document, keeping each entry as it is.
pub fn parse(bytes: &[u8]) -> Result<BTreeMap<String, Value>, Error> {
    let doc: Value = serde_json::from_slice(bytes)?;
    match doc.get("auths") {
        Some(Value::Object(auths)) => Ok(auths.clone().into_iter().collect()),
        _ => Err(Error::NoAuths),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours(password: &str) -> Entry {
        Entry::Ours(Credential {
            username: "AWS".into(),
            password: password.to_owned().into(),
        })
    }

    #[test]
    fn renders_the_spec_shape_in_host_order() {
        let mut auths = BTreeMap::new();
        auths.insert("b.example".to_owned(), ours("pw-b"));
        auths.insert("a.example".to_owned(), ours("pw-a"));
        let bytes = render(&auths);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.find("a.example").unwrap() < text.find("b.example").unwrap());
        let doc: Value = serde_json::from_slice(&bytes).unwrap();
        let a = &doc["auths"]["a.example"];
        assert_eq!(a["username"], "AWS");
        assert_eq!(a["password"], "pw-a");
        assert_eq!(a["auth"], BASE64.encode("AWS:pw-a"));
        assert_eq!(render(&auths), bytes, "same input, same bytes");
    }

    #[test]
    fn kept_entries_survive_a_round_trip() {
        let stored = br#"{"auths":{"ghcr.io":{"auth":"Zm9vOmJhcg==","email":"x@example.com"}},"credsStore":"x"}"#;
        let kept = parse(stored).unwrap();
        let mut auths: BTreeMap<String, Entry> =
            kept.into_iter().map(|(h, v)| (h, Entry::Kept(v))).collect();
        auths.insert(
            "123456789012.dkr.ecr.us-east-1.amazonaws.com".into(),
            ours("pw"),
        );
        let doc: Value = serde_json::from_slice(&render(&auths)).unwrap();
        assert_eq!(doc["auths"]["ghcr.io"]["email"], "x@example.com");
        assert_eq!(
            doc["auths"]["123456789012.dkr.ecr.us-east-1.amazonaws.com"]["password"],
            "pw"
        );
    }

    #[test]
    fn garbage_is_refused() {
        assert!(matches!(parse(b"{not json"), Err(Error::Json(_))));
        assert!(matches!(parse(b"{\"auths\": []}"), Err(Error::NoAuths)));
        assert!(matches!(parse(b"{}"), Err(Error::NoAuths)));
    }

    #[test]
    fn debug_never_shows_the_password() {
        let c = Credential {
            username: "AWS".into(),
            password: "hunter2-secret".to_owned().into(),
        };
        let shown = format!("{c:?} {:?}", Entry::Ours(c.clone()));
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
