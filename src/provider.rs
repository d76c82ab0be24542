//! `regcred credential-provider`: the kubelet image credential provider
//! (`credentialprovider.kubelet.k8s.io/v1`), a drop-in for `ecr-credential-provider`.
//!
//! Kubelet writes a `CredentialProviderRequest` on stdin and decodes the answer on stdout
//! strictly, so stdout carries exactly one `CredentialProviderResponse` with the v1 fields
//! and nothing else; everything else goes to stderr. A request regcred cannot serve ends
//! with a message on stderr, a non-zero exit and nothing at all on stdout.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Args;
use jiff::{SignedDuration, Timestamp};
use secrecy::ExposeSecret as _;
use serde::Serialize;
use serde_json::Value;
use tokio::io::AsyncReadExt as _;

use crate::ecr::{Token, Tokens};
use crate::registry::{Registry, TokenSource};
use crate::token_cache::{self, Key, TokenCache};
use crate::{Error, Exit};

/// The one API version regcred speaks (GA since Kubernetes 1.26).
pub const API_VERSION: &str = "credentialprovider.kubelet.k8s.io/v1";
const REQUEST_KIND: &str = "CredentialProviderRequest";
const RESPONSE_KIND: &str = "CredentialProviderResponse";
/// A cached token is served when renewal fails only while at least this much is left.
const STALE_MARGIN: SignedDuration = SignedDuration::from_mins(1);
/// Kubelet's requests are a few hundred bytes; anything near this is not one.
const MAX_REQUEST: u64 = 1 << 20;

#[derive(Args, Clone, Debug)]
pub struct ProviderArgs {
    /// Keep tokens in this directory between calls (files 0600), reused until half their
    /// lifetime has passed, so kubelet does not ask ECR on every pull.
    #[arg(long, env = "REGCRED_PROVIDER_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

/// Why a request cannot be answered.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("read the request from stdin: {0}")]
    Stdin(#[source] std::io::Error),
    #[error("no request on stdin (expected a {REQUEST_KIND} as JSON)")]
    Empty,
    #[error("request on stdin is larger than {MAX_REQUEST} bytes")]
    TooLarge,
    #[error("request on stdin is not valid JSON: {0}")]
    Json(String),
    #[error("request on stdin is not a JSON object")]
    NotObject,
    #[error(
        "request apiVersion is {found}; regcred speaks {API_VERSION} (set apiVersion: {API_VERSION} in kubelet's CredentialProviderConfig)"
    )]
    ApiVersion { found: String },
    #[error("request kind is {found}; expected {REQUEST_KIND}")]
    Kind { found: String },
    #[error("request has no image")]
    NoImage,
    #[error("image {image:?}: {reason}")]
    BadImage { image: String, reason: &'static str },
    #[error(
        "image {image:?}: registry {host:?} is not ECR or ECR Public (expected \
         ACCOUNT.dkr.ecr.REGION.amazonaws.com, one of its FIPS, dual-stack, China, GovCloud, \
         ISO or EUSC forms, or public.ecr.aws); narrow matchImages in kubelet's \
         CredentialProviderConfig so regcred is not asked for it"
    )]
    NotEcr { image: String, host: String },
    #[error("image {image:?}: {source}")]
    BadHost {
        image: String,
        source: crate::registry::Error,
    },
}

impl From<RequestError> for Error {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::Stdin(_) => Self::Other(crate::chain(&e)),
            other => Self::Usage(crate::chain(&other)),
        }
    }
}

/// A request regcred can serve: which registry, under which host key.
#[derive(Clone, Debug)]
pub struct Request {
    pub image: String,
    /// The registry host as written in the image (the key of `auth`).
    pub host: String,
    pub registry: Registry,
}

/// Reads and checks a request.
pub fn parse_request(bytes: &[u8]) -> Result<Request, RequestError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(RequestError::Empty);
    }
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| RequestError::Json(e.to_string()))?;
    let Value::Object(fields) = value else {
        return Err(RequestError::NotObject);
    };
    let text = |name: &str| fields.get(name).and_then(Value::as_str);
    let shown = |name: &str| match fields.get(name) {
        None => "missing".to_owned(),
        Some(Value::String(s)) => format!("{s:?}"),
        Some(_) => "not a string".to_owned(),
    };
    if text("apiVersion") != Some(API_VERSION) {
        return Err(RequestError::ApiVersion {
            found: shown("apiVersion"),
        });
    }
    if text("kind") != Some(REQUEST_KIND) {
        return Err(RequestError::Kind {
            found: shown("kind"),
        });
    }
    let image = match text("image") {
        Some(i) if !i.is_empty() => i.to_owned(),
        _ => return Err(RequestError::NoImage),
    };
    let host = image_host(&image)
        .map_err(|reason| RequestError::BadImage {
            image: image.clone(),
            reason,
        })?
        .to_owned();
    let registry = Registry::parse(&host).map_err(|source| match source {
        crate::registry::Error::NotEcr { .. } => RequestError::NotEcr {
            image: image.clone(),
            host: host.clone(),
        },
        source => RequestError::BadHost {
            image: image.clone(),
            source,
        },
    })?;
    Ok(Request {
        image,
        host,
        registry,
    })
}

/// The registry host of an image reference `host[:port]/path[:tag][@digest]`, as written.
///
/// As in Docker's reference grammar, the first component is a registry host only when a
/// path follows it and it contains a `.` or a `:` or is `localhost`; `nginx` or
/// `library/nginx` name Docker Hub and have none.
pub fn image_host(image: &str) -> Result<&str, &'static str> {
    if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains whitespace or control characters");
    }
    let name = match image.split_once('@') {
        Some((name, digest)) => {
            let ok = digest.split_once(':').is_some_and(|(alg, hex)| {
                !alg.is_empty() && !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit())
            });
            if !ok {
                return Err("has a malformed digest (expected @algorithm:hex)");
            }
            name
        }
        None => image,
    };
    let no_host = "names no registry host (a Docker Hub image); regcred serves ECR registries";
    let Some((host, path)) = name.split_once('/') else {
        return Err(no_host);
    };
    if !(host.contains('.') || host.contains(':') || host == "localhost") {
        return Err(no_host);
    }
    // A tag, if any, follows the last path component.
    let path = match path.rfind(':') {
        Some(i) if !path[i..].contains('/') => {
            if i + 1 == path.len() {
                return Err("has an empty tag");
            }
            &path[..i]
        }
        _ => path,
    };
    if path.is_empty() || path.split('/').any(str::is_empty) {
        return Err("has an empty repository path");
    }
    Ok(host)
}

/// The response's JSON: exactly the v1 fields.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Response<'a> {
    api_version: &'static str,
    kind: &'static str,
    cache_key_type: &'static str,
    cache_duration: String,
    auth: BTreeMap<&'a str, AuthConfig<'a>>,
}

#[derive(Serialize)]
struct AuthConfig<'a> {
    username: &'a str,
    password: &'a str,
}

/// The response for a request, served with this token: credentials keyed by the image's
/// registry host, cached by kubelet per registry for half the token's remaining lifetime.
#[must_use]
pub fn render_response(request: &Request, token: &Token, now: Timestamp) -> String {
    let remaining = token.expires_at.duration_since(now);
    let response = Response {
        api_version: API_VERSION,
        kind: RESPONSE_KIND,
        cache_key_type: "Registry",
        cache_duration: go_duration(remaining / 2),
        auth: [(
            request.host.as_str(),
            AuthConfig {
                username: &token.credential.username,
                password: token.credential.password.expose_secret(),
            },
        )]
        .into(),
    };
    let mut json = serde_json::to_string(&response).unwrap_or_default();
    json.push('\n');
    json
}

/// A duration as Go's `time.Duration.String()` prints whole seconds (`5h59m30s`, `1m0s`,
/// `45s`, `0s`), which kubelet's `metav1.Duration` parses. Negative durations print `0s`.
#[must_use]
pub fn go_duration(d: SignedDuration) -> String {
    let secs = d.as_secs().max(0);
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// A token for the source: from the cache while it is reusable, else from ECR (and then
/// into the cache). With several calls at once, one fetches and the others read its token.
/// When ECR fails, a cached token that has not expired yet is still served.
async fn token_for(source: &TokenSource, cache: Option<&TokenCache>) -> Result<Token, Error> {
    let Some(cache) = cache else {
        return Ok(Tokens::from_env().await.fetch(source).await?);
    };
    let key = Key::from_process_env(source);
    let cached = |cache: &TokenCache| {
        cache
            .load(&key, source)
            .filter(|t| token_cache::is_reusable(t, Timestamp::now()))
    };
    if let Some(token) = cached(cache) {
        tracing::debug!(source = %source, expires_at = %token.expires_at, "token from the cache");
        return Ok(token);
    }
    let _lock = cache.lock(&key).await;
    if let Some(token) = cached(cache) {
        tracing::debug!(source = %source, "token from the cache, stored by a concurrent call");
        return Ok(token);
    }
    match Tokens::from_env().await.fetch(source).await {
        Ok(token) => {
            if let Err(e) = cache.store(&key, source, &token) {
                tracing::warn!(error = %e, "could not cache the token; answering without caching it");
            }
            Ok(token)
        }
        // ECR down or throttling: a cached token past its half-life still opens the
        // registry until it expires, which beats failing the pull. Kubelet keeps it for half
        // of what is left, then asks again.
        Err(e) => match cache
            .load(&key, source)
            .filter(|t| t.expires_at > Timestamp::now() + STALE_MARGIN)
        {
            Some(token) => {
                tracing::warn!(source = %source, expires_at = %token.expires_at, error = %crate::chain(&e),
                    "could not renew the token; answering with the cached one until it expires");
                Ok(token)
            }
            None => Err(e.into()),
        },
    }
}

/// Answers one request from stdin on stdout.
pub async fn run(args: &ProviderArgs) -> Result<Exit, Error> {
    let mut bytes = Vec::new();
    tokio::io::stdin()
        .take(MAX_REQUEST + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(RequestError::Stdin)?;
    if bytes.len() as u64 > MAX_REQUEST {
        return Err(RequestError::TooLarge.into());
    }
    let request = parse_request(&bytes)?;
    let source = TokenSource::of(&request.registry, None);
    let cache = match &args.cache_dir {
        Some(dir) => match TokenCache::open(dir) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot use the cache directory; going without it");
                None
            }
        },
        None => None,
    };
    let token = token_for(&source, cache.as_ref()).await?;
    let response = render_response(&request, &token, Timestamp::now());
    crate::write_stdout(&mut std::io::stdout().lock(), &response)?;
    tracing::debug!(image = %request.image, source = %source, "answered");
    Ok(Exit::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dockerconfig::Credential;

    #[test]
    fn image_hosts_follow_the_reference_grammar() {
        let ok = [
            (
                "123456789012.dkr.ecr.us-east-1.amazonaws.com/app",
                "123456789012.dkr.ecr.us-east-1.amazonaws.com",
            ),
            (
                "123456789012.dkr.ecr.us-east-1.amazonaws.com/team/app:1.2",
                "123456789012.dkr.ecr.us-east-1.amazonaws.com",
            ),
            (
                "123456789012.dkr.ecr.us-east-1.amazonaws.com:443/app:v1@sha256:0123abcd",
                "123456789012.dkr.ecr.us-east-1.amazonaws.com:443",
            ),
            ("public.ecr.aws/nginx/nginx@sha256:ab12", "public.ecr.aws"),
            ("localhost/x", "localhost"),
            ("127.0.0.1:5000/a/b/c", "127.0.0.1:5000"),
        ];
        for (image, host) in ok {
            assert_eq!(image_host(image), Ok(host), "{image}");
        }
        for image in [
            "nginx",
            "nginx:latest",
            "library/nginx",
            "team/app:1.0",
            "public.ecr.aws",
            "public.ecr.aws/",
            "public.ecr.aws//x",
            "public.ecr.aws/:tag",
            "public.ecr.aws/x@sha256",
            "public.ecr.aws/x@:ab",
            "public.ecr.aws/x@sha256:zz",
            "public.ecr.aws/x y",
            "public.ecr.aws/x\n",
        ] {
            assert!(image_host(image).is_err(), "{image:?} must be refused");
        }
    }

    #[test]
    fn go_durations_print_as_go_does() {
        let s = SignedDuration::from_secs;
        assert_eq!(go_duration(s(21_570)), "5h59m30s");
        assert_eq!(go_duration(s(3600)), "1h0m0s");
        assert_eq!(go_duration(s(60)), "1m0s");
        assert_eq!(go_duration(s(45)), "45s");
        assert_eq!(go_duration(SignedDuration::from_millis(999)), "0s");
        assert_eq!(go_duration(s(-5)), "0s");
    }

    #[test]
    fn requests_are_checked_field_by_field() {
        let req = |s: &str| parse_request(s.as_bytes());
        let good = req(&format!(
            r#"{{"kind":"CredentialProviderRequest","apiVersion":"{API_VERSION}","image":"123456789012.dkr.ecr.eu-west-1.amazonaws.com/app:1","serviceAccountToken":"x"}}"#
        ))
        .unwrap();
        assert_eq!(good.host, "123456789012.dkr.ecr.eu-west-1.amazonaws.com");
        assert!(matches!(req(""), Err(RequestError::Empty)));
        assert!(matches!(req("{"), Err(RequestError::Json(_))));
        assert!(matches!(req("[]"), Err(RequestError::NotObject)));
        assert!(matches!(
            req(
                r#"{"kind":"CredentialProviderRequest","apiVersion":"credentialprovider.kubelet.k8s.io/v1beta1","image":"public.ecr.aws/a"}"#
            ),
            Err(RequestError::ApiVersion { .. })
        ));
        assert!(matches!(
            req(&format!(
                r#"{{"kind":"Pod","apiVersion":"{API_VERSION}","image":"public.ecr.aws/a"}}"#
            )),
            Err(RequestError::Kind { .. })
        ));
        assert!(matches!(
            req(&format!(
                r#"{{"kind":"CredentialProviderRequest","apiVersion":"{API_VERSION}"}}"#
            )),
            Err(RequestError::NoImage)
        ));
        assert!(matches!(
            req(&format!(
                r#"{{"kind":"CredentialProviderRequest","apiVersion":"{API_VERSION}","image":"ghcr.io/a/b"}}"#
            )),
            Err(RequestError::NotEcr { .. })
        ));
    }

    #[test]
    fn the_response_has_exactly_the_v1_fields() {
        let request = Request {
            image: "Public.ECR.aws/a/b".into(),
            host: "Public.ECR.aws".into(),
            registry: Registry::parse("public.ecr.aws").unwrap(),
        };
        let now: Timestamp = "2026-11-29T00:00:00Z".parse().unwrap();
        let token = Token {
            credential: Credential {
                username: "AWS".into(),
                password: "pw".to_owned().into(),
            },
            expires_at: now + SignedDuration::from_hours(12),
            fetched_at: now,
        };
        let out = render_response(&request, &token, now + SignedDuration::from_secs(60));
        assert!(
            out.ends_with('\n') && !out.trim_end().contains('\n'),
            "one line"
        );
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "apiVersion": API_VERSION,
                "kind": "CredentialProviderResponse",
                "cacheKeyType": "Registry",
                "cacheDuration": "5h59m30s",
                "auth": {"Public.ECR.aws": {"username": "AWS", "password": "pw"}},
            })
        );
    }
}
