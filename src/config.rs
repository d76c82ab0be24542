//! Configuration: the YAML file of the spec, or the single-secret flags, validated into
//! typed values before anything talks to Kubernetes or AWS.
//!
//! Every bad value fails here with the field named (`secrets[0].registries[1]: ...`).

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use clap::Args;
use jiff::SignedDuration;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use crate::formats::{self, Format};
use crate::namespaces::{Glob, LabelSelector, Selection};
use crate::registry::{self, Registry, Role, TokenSource};

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
/// ([`formats::expand`]).
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

/// The configuration flags every mode shares: a file, or one secret described by flags.
#[derive(Args, Clone, Debug, Default)]
pub struct ConfigArgs {
    /// Configuration file (YAML).
    #[arg(long, env = "REGCRED_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Registry host to serve (repeatable). ECR hosts only; aliases need the config file.
    #[arg(long = "registry", env = "REGCRED_REGISTRIES", value_name = "HOST", value_delimiter = ',', value_parser = parse_registry)]
    pub registries: Vec<Registry>,
    /// Name of the Secret to keep in each namespace.
    #[arg(long, env = "REGCRED_SECRET_NAME", value_name = "NAME")]
    pub secret_name: Option<SecretName>,
    /// Namespaces to serve, as globs (repeatable; default all).
    #[arg(
        long = "namespace",
        env = "REGCRED_NAMESPACES",
        value_name = "GLOB",
        value_delimiter = ','
    )]
    pub namespaces: Vec<Glob>,
    /// Namespaces to leave alone, as globs (repeatable; default the kube-* system namespaces).
    #[arg(
        long = "exclude-namespace",
        env = "REGCRED_EXCLUDE_NAMESPACES",
        value_name = "GLOB",
        value_delimiter = ','
    )]
    pub exclude_namespaces: Vec<Glob>,
    /// Only namespaces whose labels match this selector.
    #[arg(long, env = "REGCRED_NAMESPACE_SELECTOR", value_name = "SELECTOR")]
    pub namespace_selector: Option<LabelSelector>,
    /// ServiceAccount to add the secret to (repeatable; "*" for all).
    #[arg(
        long = "service-account",
        env = "REGCRED_SERVICE_ACCOUNTS",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub service_accounts: Vec<ServiceAccountName>,
    /// Take over an existing secret of the same name that regcred did not create.
    #[arg(long, env = "REGCRED_ADOPT")]
    pub adopt: bool,
    /// What to write: dockerconfigjson (a pull secret), argocd-repository or
    /// argocd-repo-creds (Argo CD, one secret per registry, named NAME-HOST), basic-auth.
    #[arg(long, env = "REGCRED_SECRET_FORMAT", value_name = "FORMAT", value_parser = parse_format)]
    pub secret_format: Option<Format>,
    /// A name regcred's secret had before (repeatable): its secrets of that name, and the
    /// references to them, are removed (RBAC must still allow that name).
    #[arg(
        long = "former-secret-name",
        env = "REGCRED_FORMER_SECRET_NAMES",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub former_names: Vec<SecretName>,
}

fn parse_registry(s: &str) -> Result<Registry, registry::Error> {
    Registry::parse(s)
}

fn parse_format(s: &str) -> Result<Format, String> {
    s.parse()
}

impl ConfigArgs {
    fn has_secret_flags(&self) -> bool {
        !self.registries.is_empty()
            || self.secret_name.is_some()
            || !self.namespaces.is_empty()
            || !self.exclude_namespaces.is_empty()
            || self.namespace_selector.is_some()
            || !self.service_accounts.is_empty()
            || self.adopt
            || self.secret_format.is_some()
            || !self.former_names.is_empty()
    }

    /// The configuration, from the file or from the flags (not both).
    pub fn load(&self) -> Result<Config> {
        if let Some(path) = &self.config {
            if self.has_secret_flags() {
                return Err(Error::Flag {
                    flag: "config",
                    message: "cannot be combined with --registry, --secret-name, --namespace, \
                              --exclude-namespace, --namespace-selector, --service-account, \
                              --adopt, --secret-format or --former-secret-name; put those in the \
                              file"
                        .into(),
                });
            }
            return Config::from_file(path);
        }
        if self.registries.is_empty() {
            return Err(if self.has_secret_flags() {
                Error::Flag {
                    flag: "registry",
                    message: "at least one registry host is needed".into(),
                }
            } else {
                Error::Nothing
            });
        }
        let mut namespaces = Selection::default();
        if !self.namespaces.is_empty() {
            namespaces.include.clone_from(&self.namespaces);
        }
        if !self.exclude_namespaces.is_empty() {
            namespaces.exclude.clone_from(&self.exclude_namespaces);
        }
        namespaces.selector.clone_from(&self.namespace_selector);
        let name = self.secret_name.clone().unwrap_or_default();
        let secret = SecretConfig {
            entry_name: name.clone(),
            name,
            registries: self
                .registries
                .iter()
                .map(|r| RegistryConfig {
                    registry: r.clone(),
                    role: None,
                })
                .collect(),
            namespaces,
            service_accounts: ServiceAccounts::from_names(self.service_accounts.clone()),
            adopt: self.adopt,
            format: self.secret_format.unwrap_or_default(),
            entry: 0,
        };
        let mut hosts = BTreeSet::new();
        for r in &secret.registries {
            if !hosts.insert(r.registry.host()) {
                return Err(Error::Flag {
                    flag: "registry",
                    message: format!("{} is given twice", r.registry.host()),
                });
            }
        }
        let secrets = formats::expand(secret).map_err(|problem| {
            let (flag, message) = match problem {
                formats::Problem::Registries(m) => ("registry", m),
                formats::Problem::Registry(i, m) => {
                    ("registry", format!("{}: {m}", self.registries[i].host()))
                }
                formats::Problem::ServiceAccounts(m) => ("service-account", m),
            };
            Error::Flag { flag, message }
        })?;
        let former_names: BTreeSet<SecretName> = self.former_names.iter().cloned().collect();
        if let Some(s) = secrets.iter().find(|s| former_names.contains(&s.name)) {
            return Err(Error::Flag {
                flag: "former-secret-name",
                message: format!("{} is the secret's name now", s.name),
            });
        }
        Ok(Config {
            secrets,
            refresh: Refresh::default(),
            former_names,
            webhook: Webhook::default(),
        })
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

/// Deserializes a string through `FromStr`, so a bad value fails with its field's path.
macro_rules! deserialize_from_str {
    ($($ty:ty),*) => {$(
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(de::Error::custom)
            }
        }
    )*};
}

deserialize_from_str!(
    Format,
    Glob,
    LabelSelector,
    SecretName,
    ServiceAccountName,
    Duration,
    RoleArn
);

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct File {
    #[serde(default)]
    secrets: Vec<SecretEntry>,
    #[serde(default)]
    refresh: RefreshEntry,
    #[serde(default)]
    webhook: WebhookEntry,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct WebhookEntry {
    #[serde(default)]
    enabled: bool,
    port: Option<Port>,
}

/// A TCP port, 1 to 65535.
struct Port(u16);

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        value
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n > 0)
            .map(Self)
            .ok_or_else(|| de::Error::custom(format!("{value} is not a port (1 to 65535)")))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SecretEntry {
    #[serde(default)]
    name: SecretName,
    #[serde(default)]
    registries: Vec<RegistryConfig>,
    #[serde(default)]
    namespaces: NamespacesEntry,
    #[serde(default)]
    service_accounts: Vec<ServiceAccountName>,
    #[serde(default)]
    adopt: bool,
    #[serde(default)]
    former_names: Vec<SecretName>,
    #[serde(default)]
    format: Format,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NamespacesEntry {
    include: Option<Vec<Glob>>,
    exclude: Option<Vec<Glob>>,
    selector: Option<LabelSelector>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RefreshEntry {
    before: Option<Duration>,
    retry_min: Option<Duration>,
    retry_max: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RegistryEntry {
    host: String,
    role_arn: Option<RoleArn>,
    external_id: Option<String>,
    account_id: Option<AccountId>,
    region: Option<String>,
}

/// An account id, accepted as a string or a bare YAML number.
struct AccountId(String);

impl<'de> Deserialize<'de> for AccountId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => Ok(Self(s)),
            serde_json::Value::Number(n) => Ok(Self(n.to_string())),
            other => Err(de::Error::custom(format!(
                "expected a 12-digit account id, found {other}"
            ))),
        }
    }
}

impl TryFrom<RegistryEntry> for RegistryConfig {
    type Error = String;

    fn try_from(e: RegistryEntry) -> Result<Self, String> {
        let registry = match (e.account_id, e.region) {
            (Some(account), Some(region)) => Registry::alias(&e.host, &account.0, &region),
            (None, None) => Registry::parse(&e.host),
            _ => return Err("accountId and region go together: give both or neither".into()),
        }
        .map_err(|e| e.to_string())?;
        if e.external_id.is_some() && e.role_arn.is_none() {
            return Err("externalId needs roleArn".into());
        }
        Ok(Self {
            registry,
            role: e.role_arn.map(|arn| Role {
                arn: arn.0,
                external_id: e.external_id,
            }),
        })
    }
}

/// A registry is a host string or a mapping with `host` and options.
impl<'de> Deserialize<'de> for RegistryConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RegistryConfig;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a registry host, or a mapping with host and optional roleArn, externalId, accountId, region")
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<RegistryConfig, E> {
                Registry::parse(s)
                    .map(|registry| RegistryConfig {
                        registry,
                        role: None,
                    })
                    .map_err(E::custom)
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RegistryConfig, A::Error> {
                let entry = RegistryEntry::deserialize(de::value::MapAccessDeserializer::new(map))?;
                RegistryConfig::try_from(entry).map_err(de::Error::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl SecretEntry {
    /// The secrets entry `i` stands for (one, or one per host), or why it is refused, with
    /// the field at fault.
    fn into_secrets(self, i: usize) -> Result<Vec<SecretConfig>, (String, String)> {
        if self.registries.is_empty() {
            return Err((
                format!("secrets[{i}].registries"),
                "at least one registry is needed".into(),
            ));
        }
        let mut hosts = BTreeSet::new();
        for (j, r) in self.registries.iter().enumerate() {
            if !hosts.insert(r.registry.host()) {
                return Err((
                    format!("secrets[{i}].registries[{j}]"),
                    format!("{} is listed twice", r.registry.host()),
                ));
            }
        }
        let mut namespaces = Selection::default();
        if let Some(include) = self.namespaces.include {
            namespaces.include = include;
        }
        if let Some(exclude) = self.namespaces.exclude {
            namespaces.exclude = exclude;
        }
        namespaces.selector = self.namespaces.selector;
        formats::expand(SecretConfig {
            entry_name: self.name.clone(),
            name: self.name,
            registries: self.registries,
            namespaces,
            service_accounts: ServiceAccounts::from_names(self.service_accounts),
            adopt: self.adopt,
            format: self.format,
            entry: i,
        })
        .map_err(|problem| match problem {
            formats::Problem::Registries(m) => (format!("secrets[{i}].registries"), m),
            formats::Problem::Registry(j, m) => (format!("secrets[{i}].registries[{j}]"), m),
            formats::Problem::ServiceAccounts(m) => (format!("secrets[{i}].serviceAccounts"), m),
        })
    }
}

impl File {
    fn validate(self) -> Result<Config, (String, String)> {
        if self.secrets.is_empty() {
            return Err(("secrets".into(), "at least one entry is needed".into()));
        }
        let mut former = Vec::new();
        let mut secrets = Vec::with_capacity(self.secrets.len());
        for (i, s) in self.secrets.into_iter().enumerate() {
            former.push(s.former_names.clone());
            secrets.extend(s.into_secrets(i)?);
        }
        let current: BTreeSet<&SecretName> = secrets.iter().map(|s| &s.name).collect();
        let mut former_names = BTreeSet::new();
        for (i, names) in former.into_iter().enumerate() {
            for (j, name) in names.into_iter().enumerate() {
                if current.contains(&name) {
                    return Err((
                        format!("secrets[{i}].formerNames[{j}]"),
                        format!(
                            "{name} is the name of a secret now; a former name must not be in use"
                        ),
                    ));
                }
                former_names.insert(name);
            }
        }
        let defaults = Refresh::default();
        let refresh = Refresh {
            before: self.refresh.before.map_or(defaults.before, |d| d.0),
            retry_min: self.refresh.retry_min.map_or(defaults.retry_min, |d| d.0),
            retry_max: self.refresh.retry_max.map_or(defaults.retry_max, |d| d.0),
        };
        if refresh.before >= ECR_TOKEN_LIFETIME {
            return Err((
                "refresh.before".into(),
                format!(
                    "{} is not shorter than the {} an ECR token lives: every token would be due at once",
                    refresh.before, ECR_TOKEN_LIFETIME
                ),
            ));
        }
        if refresh.retry_min < MIN_RETRY {
            return Err((
                "refresh.retryMin".into(),
                format!(
                    "{:#} is too short: at least {MIN_RETRY:#} (a failing token source or API call would be retried in a tight loop)",
                    refresh.retry_min
                ),
            ));
        }
        if refresh.retry_min > refresh.retry_max {
            return Err((
                "refresh.retryMin".into(),
                format!(
                    "{} is longer than retryMax {}",
                    refresh.retry_min, refresh.retry_max
                ),
            ));
        }
        let webhook = Webhook {
            enabled: self.webhook.enabled,
            port: self.webhook.port.map_or(Webhook::default().port, |p| p.0),
        };
        Ok(Config {
            secrets,
            refresh,
            former_names,
            webhook,
        })
    }
}

#[cfg(test)]
mod tests;
