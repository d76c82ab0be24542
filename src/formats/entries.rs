//! The secrets one configuration entry stands for, and the rules that tie a format to its
//! registries and ServiceAccounts.
//!
//! A per-host format makes one secret per registry host, named [`derived_name`]`(entry,
//! host)`; every other format one secret of the entry's own name. Each becomes a
//! [`SecretConfig`] of its own, so everything keyed by secret name (watches, RBAC names, the
//! admission policy, `check`, removal of deselected secrets) covers them unchanged.

use std::collections::BTreeMap;

use super::derived_name;
use crate::config::{SecretConfig, SecretName};

/// Why an entry cannot be written in its format, and which of its fields is at fault.
#[derive(Debug, PartialEq, Eq)]
pub enum Problem {
    /// `registries` as a whole.
    Registries(String),
    /// `registries[i]`.
    Registry(usize, String),
    ServiceAccounts(String),
}

/// The secrets of an entry: `entry` as configured (its `name`, all its `registries`),
/// expanded as its format says.
///
/// # Errors
///
/// A [`Problem`] when the format does not fit the entry: several registries for a
/// single-registry format, ServiceAccounts for a secret pods cannot pull with, or a derived
/// name that is not a valid Secret name (too long) or that two hosts share.
pub fn expand(entry: SecretConfig) -> Result<Vec<SecretConfig>, Problem> {
    let format = entry.format;
    if format.single_registry() && entry.registries.len() != 1 {
        return Err(Problem::Registries(format!(
            "format {format} holds one registry's username and password, and this entry lists {}: give each registry an entry of its own",
            entry.registries.len()
        )));
    }
    if !format.is_pull_secret() && !entry.service_accounts.is_none() {
        return Err(Problem::ServiceAccounts(format!(
            "only a dockerconfigjson secret can be an image pull secret; a secret of format {format} cannot go into imagePullSecrets (remove serviceAccounts)"
        )));
    }
    if !format.per_host() {
        return Ok(vec![entry]);
    }
    let mut seen: BTreeMap<SecretName, usize> = BTreeMap::new();
    let mut out = Vec::with_capacity(entry.registries.len());
    for (i, registry) in entry.registries.iter().enumerate() {
        let derived = derived_name(entry.name.as_str(), registry.registry.host());
        let name: SecretName = derived.parse().map_err(|e: String| {
            Problem::Registry(
                i,
                format!(
                    "format {format} writes a secret per host named <name>-<host>, and {e}; shorten the entry's name"
                ),
            )
        })?;
        if let Some(first) = seen.insert(name.clone(), i) {
            return Err(Problem::Registry(
                i,
                format!("its secret would be named {name}, as that of registries[{first}]"),
            ));
        }
        out.push(SecretConfig {
            name,
            registries: vec![registry.clone()],
            ..entry.clone()
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RegistryConfig, ServiceAccounts};
    use crate::formats::Format;
    use crate::namespaces::Selection;
    use crate::registry::Registry;

    fn entry(name: &str, format: Format, hosts: &[&str]) -> SecretConfig {
        SecretConfig {
            name: name.parse().unwrap(),
            registries: hosts
                .iter()
                .map(|h| RegistryConfig {
                    registry: if h.ends_with(".amazonaws.com") {
                        Registry::parse(h).unwrap()
                    } else {
                        Registry::alias(h, "123456789012", "us-east-1").unwrap()
                    },
                    role: None,
                })
                .collect(),
            namespaces: Selection::default(),
            service_accounts: ServiceAccounts::None,
            adopt: false,
            format,
            entry: 3,
            entry_name: name.parse().unwrap(),
        }
    }

    const A: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com";
    const B: &str = "210987654321.dkr.ecr.eu-west-1.amazonaws.com";

    #[test]
    fn a_per_host_entry_is_one_secret_per_host_named_after_both() {
        let secrets = expand(entry("ecr", Format::ArgocdRepository, &[A, B])).unwrap();
        let names: Vec<&str> = secrets.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, [format!("ecr-{A}"), format!("ecr-{B}")]);
        for (s, host) in secrets.iter().zip([A, B]) {
            assert_eq!(s.registries.len(), 1);
            assert_eq!(s.registries[0].registry.host(), host);
            assert_eq!(s.entry, 3);
            assert_eq!(s.entry_name.as_str(), "ecr");
            assert_eq!(s.format, Format::ArgocdRepository);
        }
        let one = expand(entry("ecr", Format::Dockerconfigjson, &[A, B])).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].name.as_str(), "ecr");
        assert_eq!(one[0].registries.len(), 2);
    }

    #[test]
    fn formats_refuse_what_they_cannot_hold() {
        assert!(matches!(
            expand(entry("x", Format::BasicAuth, &[A, B])),
            Err(Problem::Registries(m)) if m.contains("format basic-auth holds one registry's username and password, and this entry lists 2")
        ));
        assert_eq!(
            expand(entry("x", Format::BasicAuth, &[A])).unwrap().len(),
            1
        );
        for format in [
            Format::ArgocdRepository,
            Format::ArgocdRepoCreds,
            Format::BasicAuth,
        ] {
            let mut e = entry("x", format, &[A]);
            e.service_accounts = ServiceAccounts::All;
            assert!(
                matches!(expand(e), Err(Problem::ServiceAccounts(m)) if m.contains(&format!("a secret of format {format} cannot go into imagePullSecrets"))),
                "{format}"
            );
        }
        let long = "n".repeat(220);
        assert!(matches!(
            expand(entry(&long, Format::ArgocdRepoCreds, &[A])),
            Err(Problem::Registry(0, m)) if m.contains("not a valid Secret name") && m.contains("shorten the entry's name")
        ));
        // A port is written as "-": a host may collide with another's name:port.
        assert!(matches!(
            expand(entry("x", Format::ArgocdRepository, &["charts.example:5000", "charts.example-5000"])),
            Err(Problem::Registry(1, m)) if m.contains("x-charts.example-5000, as that of registries[0]")
        ));
    }
}
