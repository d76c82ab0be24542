//! Configuration: the YAML file of the spec, or the single-secret flags, validated into
//! typed values before anything talks to Kubernetes or AWS.
//!
//! Every bad value fails here with the field named (`secrets[0].registries[1]: ...`).

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use jiff::SignedDuration;

use crate::formats::Format;
use crate::namespaces::Selection;
use crate::registry::{Registry, Role, TokenSource};

mod args;
mod file;
#[cfg(test)]
mod tests;

pub use args::ConfigArgs;
use file::File;

/// Why the configuration was refused. Every variant means exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: not valid YAML: {message}")]
    Yaml { path: PathBuf, message: String },
    #[error("config file {path}: {field}: {message}")]
    Field {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("--{flag}: {message}")]
    Flag { flag: &'static str, message: String },
    #[error(
        "no registries configured: give --config FILE (or REGCRED_CONFIG) or at least one --registry HOST"
    )]
    Nothing,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The whole configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub secrets: Vec<SecretConfig>,
    pub refresh: Refresh,
    /// Names regcred's secrets had before a rename: regcred removes its secrets of these
    /// names (and the references to them) everywhere.
    pub former_names: BTreeSet<SecretName>,
    pub webhook: Webhook,
}

/// The admission webhook `run` serves (opt-in): it adds the pull secret to pods created
/// before their ServiceAccount was patched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Webhook {
    pub enabled: bool,
    /// The HTTPS port it listens on, on every address.
    pub port: u16,
}

impl Default for Webhook {
    fn default() -> Self {
        Self {
            enabled: false,
            port: 9443,
        }
    }
}

/// One managed Secret name and what goes in it, where. An entry of a per-host format
/// (`argocd-repository`, `argocd-repo-creds`) stands for one of these per registry host
/// ([`crate::formats::expand`]).
#[derive(Clone, Debug)]
pub struct SecretConfig {
    pub name: SecretName,
    pub registries: Vec<RegistryConfig>,
    pub namespaces: Selection,
    pub service_accounts: ServiceAccounts,
    pub adopt: bool,
    /// The shape the token is written in.
    pub format: Format,
    /// The configuration entry it comes from (`secrets[entry]`; 0 from flags), and that
    /// entry's `name`.
    pub entry: usize,
    pub entry_name: SecretName,
}

/// A registry and the role (if any) to assume for its token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryConfig {
    pub registry: Registry,
    pub role: Option<Role>,
}

impl RegistryConfig {
    #[must_use]
    pub fn token_source(&self) -> TokenSource {
        TokenSource::of(&self.registry, self.role.clone())
    }
}

/// Which ServiceAccounts get the secret in `imagePullSecrets`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ServiceAccounts {
    #[default]
    None,
    All,
    Named(BTreeSet<String>),
}

impl ServiceAccounts {
    #[must_use]
    pub fn includes(&self, name: &str) -> bool {
        match self {
            Self::None => false,
            Self::All => true,
            Self::Named(names) => names.contains(name),
        }
    }

    #[must_use]
    pub fn is_none(&self) -> bool {
        matches!(self, Self::None)
    }

    fn from_names(names: Vec<ServiceAccountName>) -> Self {
        if names.is_empty() {
            Self::None
        } else if names.iter().any(|n| n.0 == "*") {
            Self::All
        } else {
            Self::Named(names.into_iter().map(|n| n.0).collect())
        }
    }
}

/// How long ECR's `GetAuthorizationToken` tokens live.
pub const ECR_TOKEN_LIFETIME: SignedDuration = SignedDuration::from_hours(12);

/// The shortest `refresh.retryMin`: below it, retries would hammer AWS and the API server.
pub const MIN_RETRY: SignedDuration = SignedDuration::from_secs(1);

/// Timing of token renewal and of retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refresh {
    /// Renew when less than this is left of a token.
    pub before: SignedDuration,
    pub retry_min: SignedDuration,
    pub retry_max: SignedDuration,
}

impl Default for Refresh {
    fn default() -> Self {
        Self {
            before: SignedDuration::from_hours(6),
            retry_min: SignedDuration::from_secs(5),
            retry_max: SignedDuration::from_mins(5),
        }
    }
}

impl Config {
    /// Every distinct registry host, sorted.
    #[must_use]
    pub fn hosts(&self) -> BTreeSet<String> {
        self.secrets
            .iter()
            .flat_map(|s| s.registries.iter().map(|r| r.registry.host().to_owned()))
            .collect()
    }

    /// Every distinct secret name.
    #[must_use]
    pub fn secret_names(&self) -> BTreeSet<String> {
        self.secrets.iter().map(|s| s.name.to_string()).collect()
    }

    /// Every secret name regcred looks after: the configured ones and the former ones (whose
    /// secrets it removes).
    #[must_use]
    pub fn managed_names(&self) -> BTreeSet<String> {
        let mut names = self.secret_names();
        names.extend(self.former_names.iter().map(ToString::to_string));
        names
    }

    /// Entry `index` of the configuration as written: its own name and all its registries
    /// (the secrets of a per-host format put together again).
    #[must_use]
    pub fn entry(&self, index: usize) -> Option<SecretConfig> {
        let mut of = self.secrets.iter().filter(|s| s.entry == index);
        let first = of.next()?;
        let mut entry = first.clone();
        entry.name = first.entry_name.clone();
        entry
            .registries
            .extend(of.flat_map(|s| s.registries.iter().cloned()));
        Some(entry)
    }

    /// Whether any secret patches ServiceAccounts.
    #[must_use]
    pub fn patches_service_accounts(&self) -> bool {
        self.secrets.iter().any(|s| !s.service_accounts.is_none())
    }

    /// Every distinct token source.
    #[must_use]
    pub fn token_sources(&self) -> BTreeSet<TokenSource> {
        self.secrets
            .iter()
            .flat_map(|s| s.registries.iter().map(RegistryConfig::token_source))
            .collect()
    }

    /// Parses and validates a YAML document.
    pub fn from_yaml(path: &Path, text: &str) -> Result<Self> {
        let value: serde_json::Value = serde_saphyr::from_str(text).map_err(|e| Error::Yaml {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        // An empty file is an empty mapping.
        let value = if value.is_null() {
            serde_json::Value::Object(serde_json::Map::new())
        } else {
            value
        };
        let field_error = |field: String, message: String| Error::Field {
            path: path.to_owned(),
            field,
            message,
        };
        let file: File = serde_path_to_error::deserialize(value).map_err(|e| {
            let field = e.path().to_string();
            let field = if field == "." {
                "(top level)".to_owned()
            } else {
                field
            };
            field_error(field, e.into_inner().to_string())
        })?;
        file.validate()
            .map_err(|(field, message)| field_error(field, message))
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(path, &text)
    }
}

/// A Secret name: a DNS-1123 subdomain.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SecretName(String);

impl Default for SecretName {
    fn default() -> Self {
        Self("regcred".into())
    }
}

impl fmt::Display for SecretName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl SecretName {
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

impl FromStr for SecretName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if is_dns_subdomain(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(format!(
                "{s:?} is not a valid Secret name (lower-case letters, digits, '-' and '.', at most 253)"
            ))
        }
    }
}

/// A ServiceAccount name, or `*` for all of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAccountName(String);

impl FromStr for ServiceAccountName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "*" || is_dns_subdomain(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(format!(
                "{s:?} is not a valid ServiceAccount name (or \"*\")"
            ))
        }
    }
}

/// A positive duration such as `6h`, `90s`, `1h30m` or ISO 8601 `PT6H`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Duration(SignedDuration);

impl FromStr for Duration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let d: SignedDuration = s
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not a duration (use e.g. 30s, 5m, 6h, 1h30m)"))?;
        if d.is_positive() {
            Ok(Self(d))
        } else {
            Err(format!("{s:?} must be a positive duration"))
        }
    }
}

/// An IAM role ARN.
#[derive(Clone, Debug)]
struct RoleArn(String);

impl FromStr for RoleArn {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.splitn(6, ':').collect();
        let ok = parts.len() == 6
            && parts[0] == "arn"
            && parts[1].starts_with("aws")
            && parts[2] == "iam"
            && parts[3].is_empty()
            && parts[4].len() == 12
            && parts[4].bytes().all(|b| b.is_ascii_digit())
            && parts[5]
                .strip_prefix("role/")
                .is_some_and(|r| !r.is_empty());
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(format!(
                "{s:?} is not an IAM role ARN (arn:aws:iam::123456789012:role/NAME)"
            ))
        }
    }
}
