//! The YAML file as written, deserialized field by field (a bad value fails with its
//! field's path), then validated into a [`Config`].

use std::collections::BTreeSet;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use crate::formats::{self, Format};
use crate::namespaces::{Glob, LabelSelector, Selection};
use crate::registry::{Registry, Role};

use super::{
    Config, Duration, ECR_TOKEN_LIFETIME, MIN_RETRY, Refresh, RegistryConfig, Result, RoleArn,
    SecretConfig, SecretName, ServiceAccountName, ServiceAccounts, Webhook,
};

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
pub(super) struct File {
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
    pub(super) fn validate(self) -> Result<Config, (String, String)> {
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
