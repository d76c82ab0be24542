//! The configuration flags every mode shares: a file, or one secret described by flags.

use std::collections::BTreeSet;
use std::path::PathBuf;

use clap::Args;

use crate::formats::{self, Format};
use crate::namespaces::{Glob, LabelSelector, Selection};
use crate::registry::{self, Registry};

use super::{
    Config, Error, Refresh, RegistryConfig, Result, SecretConfig, SecretName, ServiceAccountName,
    ServiceAccounts, Webhook,
};

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
