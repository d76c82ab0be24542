//! Tokens from AWS: `GetAuthorizationToken` for private ECR and ECR Public, optionally
//! after an STS `AssumeRole`, with credentials from the SDK's default chain.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_types::SdkConfig;
use aws_types::region::Region;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use jiff::{SignedDuration, Timestamp};
use tokio::sync::Mutex;

use crate::dockerconfig::Credential;
use crate::registry::{Endpoint, Role, TokenSource};

/// How long a token that arrives already expired, or without an expiry, is taken to be
/// valid: short enough to be renewed soon, long enough never to cause a tight loop.
pub const ASSUMED_LIFETIME: SignedDuration = SignedDuration::from_mins(15);

/// The shortest time between two renewals of one token, however short-lived it is.
pub const MIN_RENEW_INTERVAL: SignedDuration = SignedDuration::from_secs(1);

/// Why a token could not be had.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("GetAuthorizationToken ({source_name}): {message}")]
    GetToken {
        source_name: String,
        message: String,
    },
    #[error("GetAuthorizationToken ({source_name}) returned no authorization data")]
    NoData { source_name: String },
    #[error(
        "GetAuthorizationToken ({source_name}) returned a token that is not base64 of user:password"
    )]
    BadToken { source_name: String },
    #[error("sts:GetCallerIdentity: {0}")]
    Identity(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A registry token and when it stops working. `Debug` never shows the password.
#[derive(Clone, Debug)]
pub struct Token {
    pub credential: Credential,
    /// When ECR says the token expires, or [`ASSUMED_LIFETIME`] after it arrived when ECR
    /// gave no usable expiry.
    pub expires_at: Timestamp,
    pub fetched_at: Timestamp,
}

impl Token {
    /// Builds a token from ECR's answer: base64 `user:password` and an optional expiry.
    pub fn from_authorization(
        source: &TokenSource,
        encoded: &str,
        expires_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<Self> {
        let bad = || Error::BadToken {
            source_name: source.to_string(),
        };
        let decoded = BASE64.decode(encoded.trim()).map_err(|_| bad())?;
        let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
        let (username, password) = decoded.split_once(':').ok_or_else(bad)?;
        if username.is_empty() || password.is_empty() {
            return Err(bad());
        }
        crate::telemetry::never_log(password);
        crate::telemetry::never_log(encoded.trim());
        let expires_at = match expires_at {
            Some(t) if t > now => t,
            other => {
                tracing::warn!(
                    source = %source,
                    expires_at = ?other,
                    "token arrived {}; taking it as valid for {}",
                    if other.is_some() { "already expired" } else { "without an expiry" },
                    ASSUMED_LIFETIME
                );
                now + ASSUMED_LIFETIME
            }
        };
        Ok(Self {
            credential: Credential {
                username: username.to_owned(),
                password: password.to_owned().into(),
            },
            expires_at,
            fetched_at: now,
        })
    }

    /// When to renew: `before` ahead of expiry, or at half-life when the token lives no
    /// longer than `before` — never sooner than [`MIN_RENEW_INTERVAL`] after it arrived.
    #[must_use]
    pub fn renew_at(&self, before: SignedDuration) -> Timestamp {
        let lifetime = self.expires_at.duration_since(self.fetched_at);
        let at = if lifetime > before {
            self.expires_at - before
        } else {
            self.fetched_at + lifetime / 2
        };
        at.max(self.fetched_at + MIN_RENEW_INTERVAL)
    }

    #[must_use]
    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.expires_at <= now
    }
}

/// The endpoint flavour of a private registry's ECR client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct EndpointChoice {
    fips: bool,
    dual_stack: bool,
}

impl EndpointChoice {
    /// FIPS or dual-stack when the host's form asks for it, or when the SDK's configuration
    /// does (AWS_USE_FIPS_ENDPOINT, AWS_USE_DUALSTACK_ENDPOINT, a profile's use_fips_endpoint):
    /// a plain host never turns them off. An endpoint given by the operator (AWS_ENDPOINT_URL,
    /// AWS_ENDPOINT_URL_ECR or a profile's endpoint_url) decides where calls go; the SDK
    /// refuses to combine it with either flag, so both yield to it.
    fn for_private(host_fips: bool, host_dual_stack: bool, base: &SdkConfig, custom: bool) -> Self {
        Self {
            fips: (host_fips || base.use_fips() == Some(true)) && !custom,
            dual_stack: (host_dual_stack || base.use_dual_stack() == Some(true)) && !custom,
        }
    }
}

/// Fetches tokens, one call per [`TokenSource`].
#[derive(Debug)]
pub struct Tokens {
    base: SdkConfig,
    clients: Mutex<HashMap<TokenSource, Client>>,
}

#[derive(Clone, Debug)]
enum Client {
    Private(aws_sdk_ecr::Client),
    Public(aws_sdk_ecrpublic::Client),
}

impl Tokens {
    /// Loads AWS configuration from the environment: the default credential chain,
    /// `AWS_ENDPOINT_URL` and its service-specific forms, profiles, web identity, IMDS.
    pub async fn from_env() -> Self {
        let base = aws_config::defaults(BehaviorVersion::latest())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(Duration::from_secs(20))
                    .operation_timeout(Duration::from_secs(45))
                    .build(),
            )
            .retry_config(RetryConfig::standard().with_max_attempts(3))
            .load()
            .await;
        Self {
            base,
            clients: Mutex::default(),
        }
    }

    /// The AWS principal regcred runs as (`sts:GetCallerIdentity`).
    pub async fn identity(&self) -> Result<String> {
        let mut sts = aws_sdk_sts::config::Builder::from(&self.base);
        if self.base.region().is_none() {
            sts = sts.region(Region::new("us-east-1"));
        }
        let out = aws_sdk_sts::Client::from_conf(sts.build())
            .get_caller_identity()
            .send()
            .await
            .map_err(|e| Error::Identity(DisplayErrorContext(e).to_string()))?;
        Ok(out.arn().unwrap_or("unknown").to_owned())
    }

    /// One token for the source.
    pub async fn fetch(&self, source: &TokenSource) -> Result<Token> {
        let client = self.client(source).await;
        let source_name = source.to_string();
        let fail = |message: String| Error::GetToken {
            source_name: source_name.clone(),
            message,
        };
        let (encoded, expires) = match client {
            Client::Private(c) => {
                let out = c
                    .get_authorization_token()
                    .send()
                    .await
                    .map_err(|e| fail(DisplayErrorContext(e).to_string()))?;
                let data = out.authorization_data().first().cloned();
                let data = data.ok_or_else(|| Error::NoData {
                    source_name: source_name.clone(),
                })?;
                (
                    data.authorization_token().map(str::to_owned),
                    data.expires_at().copied(),
                )
            }
            Client::Public(c) => {
                let out = c
                    .get_authorization_token()
                    .send()
                    .await
                    .map_err(|e| fail(DisplayErrorContext(e).to_string()))?;
                let data = out.authorization_data().cloned();
                let data = data.ok_or_else(|| Error::NoData {
                    source_name: source_name.clone(),
                })?;
                (
                    data.authorization_token().map(str::to_owned),
                    data.expires_at().copied(),
                )
            }
        };
        let encoded = encoded.ok_or_else(|| Error::NoData {
            source_name: source_name.clone(),
        })?;
        let expires = expires.and_then(|t| Timestamp::from_millisecond(t.to_millis().ok()?).ok());
        let token = Token::from_authorization(source, &encoded, expires, Timestamp::now())?;
        tracing::debug!(source = %source, expires_at = %token.expires_at, "fetched a token");
        Ok(token)
    }

    /// One call per distinct source, all at once.
    pub async fn fetch_all(
        &self,
        sources: &BTreeSet<TokenSource>,
    ) -> BTreeMap<TokenSource, Result<Token>> {
        let fetches = sources
            .iter()
            .map(|s| async move { (s.clone(), self.fetch(s).await) });
        futures::future::join_all(fetches)
            .await
            .into_iter()
            .collect()
    }

    async fn client(&self, source: &TokenSource) -> Client {
        let mut clients = self.clients.lock().await;
        if let Some(c) = clients.get(source) {
            return c.clone();
        }
        let region = Region::new(source.region().to_owned());
        let credentials = match &source.role {
            Some(role) => Some(self.assume_role(role, region.clone()).await),
            None => None,
        };
        let client = match &source.endpoint {
            Endpoint::Private {
                fips, dual_stack, ..
            } => {
                let custom = self.base.endpoint_url().is_some()
                    || std::env::var_os("AWS_ENDPOINT_URL_ECR").is_some();
                let choice = EndpointChoice::for_private(*fips, *dual_stack, &self.base, custom);
                let mut conf = aws_sdk_ecr::config::Builder::from(&self.base)
                    .region(region)
                    .use_fips(choice.fips)
                    .use_dual_stack(choice.dual_stack);
                if let Some(creds) = credentials {
                    conf = conf.credentials_provider(creds);
                }
                Client::Private(aws_sdk_ecr::Client::from_conf(conf.build()))
            }
            Endpoint::Public => {
                let mut conf = aws_sdk_ecrpublic::config::Builder::from(&self.base).region(region);
                if let Some(creds) = credentials {
                    conf = conf.credentials_provider(creds);
                }
                Client::Public(aws_sdk_ecrpublic::Client::from_conf(conf.build()))
            }
        };
        clients.insert(source.clone(), client.clone());
        client
    }

    async fn assume_role(&self, role: &Role, region: Region) -> SharedCredentialsProvider {
        let mut builder = aws_config::sts::AssumeRoleProvider::builder(&role.arn)
            .session_name("regcred")
            .region(region)
            .configure(&self.base);
        if let Some(id) = &role.external_id {
            builder = builder.external_id(id);
        }
        SharedCredentialsProvider::new(builder.build().await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;
    use secrecy::ExposeSecret as _;

    fn source() -> TokenSource {
        TokenSource::of(&Registry::parse("public.ecr.aws").unwrap(), None)
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn decodes_user_and_password() {
        let now = at("2026-11-29T00:00:00Z");
        let t = Token::from_authorization(
            &source(),
            &BASE64.encode("AWS:pa:ss"),
            Some(at("2026-11-29T12:00:00Z")),
            now,
        )
        .unwrap();
        assert_eq!(t.credential.username, "AWS");
        assert_eq!(t.credential.password.expose_secret(), "pa:ss");
        assert_eq!(t.expires_at, at("2026-11-29T12:00:00Z"));
        for bad in [
            "not base64!",
            &BASE64.encode("no-colon"),
            &BASE64.encode("AWS:"),
        ] {
            assert!(
                Token::from_authorization(&source(), bad, None, now).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn expired_or_missing_expiry_is_taken_as_short_lived() {
        let now = at("2026-11-29T00:00:00Z");
        let token = BASE64.encode("AWS:pw");
        for expiry in [None, Some(at("2015-01-01T00:00:00Z")), Some(now)] {
            let t = Token::from_authorization(&source(), &token, expiry, now).unwrap();
            assert_eq!(t.expires_at, now + ASSUMED_LIFETIME);
            let renew = t.renew_at(SignedDuration::from_hours(6));
            assert!(
                renew > now,
                "a short-lived token is renewed later, not at once"
            );
        }
    }

    /// The endpoint an ECR client built from `base` for a host of this flavour calls.
    fn private_endpoint(host_fips: bool, host_dual_stack: bool, base: &SdkConfig) -> String {
        use aws_sdk_ecr::config::endpoint::{DefaultResolver, Params, ResolveEndpoint as _};
        let choice = EndpointChoice::for_private(host_fips, host_dual_stack, base, false);
        let params = Params::builder()
            .region("us-east-1")
            .use_fips(choice.fips)
            .use_dual_stack(choice.dual_stack)
            .build()
            .unwrap();
        let resolver = DefaultResolver::new();
        let endpoint = futures::executor::block_on(resolver.resolve_endpoint(&params)).unwrap();
        endpoint.url().to_owned()
    }

    #[test]
    fn fips_and_dual_stack_come_from_the_host_or_the_environment() {
        let plain = SdkConfig::builder().build();
        assert_eq!(
            private_endpoint(false, false, &plain),
            "https://api.ecr.us-east-1.amazonaws.com"
        );
        assert_eq!(
            private_endpoint(true, false, &plain),
            "https://api.ecr-fips.us-east-1.amazonaws.com"
        );
        // AWS_USE_FIPS_ENDPOINT / AWS_USE_DUALSTACK_ENDPOINT (or a profile) reach the SDK's
        // configuration; a plain host honours them.
        let fips = SdkConfig::builder().use_fips(true).build();
        assert_eq!(
            private_endpoint(false, false, &fips),
            "https://api.ecr-fips.us-east-1.amazonaws.com"
        );
        let dual = SdkConfig::builder().use_dual_stack(true).build();
        assert_eq!(
            private_endpoint(false, false, &dual),
            "https://ecr.us-east-1.api.aws"
        );
        // An endpoint of the operator's wins over both.
        assert_eq!(
            EndpointChoice::for_private(true, true, &fips, true),
            EndpointChoice {
                fips: false,
                dual_stack: false
            }
        );
    }

    #[test]
    fn renewal_honours_before_and_half_life() {
        let now = at("2026-11-29T00:00:00Z");
        let token = |life: SignedDuration| Token {
            credential: Credential {
                username: "AWS".into(),
                password: "pw".to_owned().into(),
            },
            expires_at: now + life,
            fetched_at: now,
        };
        let h = SignedDuration::from_hours;
        assert_eq!(token(h(12)).renew_at(h(6)), now + h(6));
        assert_eq!(token(h(12)).renew_at(h(1)), now + h(11));
        // Shorter than `before`: half-life instead of "at once, forever".
        let short = SignedDuration::from_secs(20);
        assert_eq!(
            token(short).renew_at(h(6)),
            now + SignedDuration::from_secs(10)
        );
        // Never sooner than the floor.
        let tiny = SignedDuration::from_millis(400);
        assert_eq!(token(tiny).renew_at(h(6)), now + MIN_RENEW_INTERVAL);
    }
}
