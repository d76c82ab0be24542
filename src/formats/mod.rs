//! The shapes one ECR token is written in: the pull secret (`dockerconfigjson`, the
//! default), Argo CD's repository and credential-template secrets, and a plain
//! `kubernetes.io/basic-auth` secret. Pure: what each shape's secret holds, its type, and the
//! names of the secrets an entry stands for.
//!
//! Every shape carries regcred's label and annotations, so ownership, the expiry the spec
//! promises and every guarantee built on them (no write when current, foreign secrets left
//! alone, prune on deselection) work the same whatever the shape.

mod credentials;
mod entries;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use serde_json::Value;

use crate::secrets::{self, Served, Stored};

pub use credentials::{ARGOCD_SECRET_TYPE_LABEL, BASIC_AUTH_TYPE, OPAQUE_TYPE};
pub use entries::{Problem, expand};

/// What a configured secret entry writes (`format:`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Format {
    /// A `kubernetes.io/dockerconfigjson` pull secret holding every registry of the entry.
    #[default]
    Dockerconfigjson,
    /// Per registry host, an Argo CD repository secret (`type: helm`, `enableOCI`).
    ArgocdRepository,
    /// Per registry host, an Argo CD credential template for every URL under the host.
    ArgocdRepoCreds,
    /// A `kubernetes.io/basic-auth` secret: `username` and `password` of one registry.
    BasicAuth,
}

impl Format {
    pub const ALL: [Self; 4] = [
        Self::Dockerconfigjson,
        Self::ArgocdRepository,
        Self::ArgocdRepoCreds,
        Self::BasicAuth,
    ];

    /// The name in the configuration (`format: argocd-repository`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dockerconfigjson => "dockerconfigjson",
            Self::ArgocdRepository => "argocd-repository",
            Self::ArgocdRepoCreds => "argocd-repo-creds",
            Self::BasicAuth => "basic-auth",
        }
    }

    /// The Secret `type` of this shape (immutable once a secret exists).
    #[must_use]
    pub fn secret_type(self) -> &'static str {
        match self {
            Self::Dockerconfigjson => secrets::SECRET_TYPE,
            Self::ArgocdRepository | Self::ArgocdRepoCreds => OPAQUE_TYPE,
            Self::BasicAuth => BASIC_AUTH_TYPE,
        }
    }

    /// Whether an entry stands for one secret per registry host (named by
    /// [`derived_name`]) rather than one secret of its own name.
    #[must_use]
    pub fn per_host(self) -> bool {
        matches!(self, Self::ArgocdRepository | Self::ArgocdRepoCreds)
    }

    /// Whether a secret of this shape holds exactly one registry's credentials, so an entry
    /// may list only one registry.
    #[must_use]
    pub fn single_registry(self) -> bool {
        matches!(self, Self::BasicAuth)
    }

    /// Whether pods can pull with it: only such a secret may go into `imagePullSecrets`
    /// (ServiceAccounts, the admission webhook).
    #[must_use]
    pub fn is_pull_secret(self) -> bool {
        matches!(self, Self::Dockerconfigjson)
    }

    /// Whether a stored secret has this shape's type (a type cannot change in place).
    #[must_use]
    pub fn has_type(self, stored: &Stored) -> bool {
        stored.type_() == Some(self.secret_type())
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<&str> = Self::ALL.iter().map(|f| f.as_str()).collect();
                format!("{s:?} is not a format (one of {})", all.join(", "))
            })
    }
}

/// The name of the secret a per-host entry writes for one registry host:
/// `<entry name>-<host>`, the port's `:` written as `-` (a Secret name has no `:`).
/// `ecr` and `123456789012.dkr.ecr.us-east-1.amazonaws.com` give
/// `ecr-123456789012.dkr.ecr.us-east-1.amazonaws.com`. Deterministic and readable, and the
/// chart derives the same names for its RBAC and admission policy. The caller checks that
/// the result is a valid Secret name (at most 253 characters).
#[must_use]
pub fn derived_name(entry: &str, host: &str) -> String {
    format!("{entry}-{}", host.replace(':', "-"))
}

/// The secret regcred wants in a namespace, in this shape: the served registries with
/// their tokens; for a pull secret also the entries it keeps from the stored one.
#[must_use]
pub fn desired(
    format: Format,
    name: &str,
    namespace: &str,
    served: &[Served<'_>],
    kept: BTreeMap<String, Value>,
) -> Secret {
    match format {
        Format::Dockerconfigjson => secrets::desired(name, namespace, served, kept),
        _ => credentials::desired(format, name, namespace, served),
    }
}

/// Whether the stored secret already holds exactly what regcred would write. Keys and
/// metadata others added to a credential secret (Argo CD's `project`, say) are theirs and do
/// not count. A pull secret is judged from its digests; a secret of another shape is kept
/// whole by [`Stored`] (few of them exist) and judged from that.
#[must_use]
pub fn is_current(format: Format, stored: &Stored, desired: &Secret) -> bool {
    match format {
        Format::Dockerconfigjson => stored.is_current(desired),
        _ => stored
            .content()
            .is_some_and(|s| credentials::is_current(s, desired)),
    }
}

/// Whether a managed secret is sound and not yet due for renewal, judged without a token
/// (`sync` asks for no token when nothing is due).
#[must_use]
pub fn is_sound_and_fresh(
    format: Format,
    stored: &Stored,
    served: &BTreeSet<&str>,
    now: Timestamp,
    before: SignedDuration,
) -> bool {
    match format {
        Format::Dockerconfigjson => stored.is_sound_and_fresh(served, now, before),
        _ => stored
            .content()
            .is_some_and(|s| credentials::is_sound_and_fresh(format, s, served, now, before)),
    }
}

/// The entries of a stored secret regcred keeps when it writes (only a pull secret holds
/// other registries' entries).
#[must_use]
pub fn kept_entries(
    format: Format,
    stored: &Stored,
    served: &BTreeSet<&str>,
) -> BTreeMap<String, Value> {
    match format {
        Format::Dockerconfigjson => stored.kept_entries(served),
        _ => BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_from_their_names_and_refuse_others() {
        for f in Format::ALL {
            assert_eq!(f.as_str().parse::<Format>(), Ok(f));
        }
        let err = "argocd".parse::<Format>().unwrap_err();
        assert!(
            err.contains("\"argocd\" is not a format")
                && err
                    .contains("dockerconfigjson, argocd-repository, argocd-repo-creds, basic-auth"),
            "{err}"
        );
        assert_eq!(Format::default(), Format::Dockerconfigjson);
    }

    #[test]
    fn each_format_has_its_type_and_cardinality() {
        assert_eq!(
            Format::Dockerconfigjson.secret_type(),
            "kubernetes.io/dockerconfigjson"
        );
        assert_eq!(Format::ArgocdRepository.secret_type(), "Opaque");
        assert_eq!(Format::ArgocdRepoCreds.secret_type(), "Opaque");
        assert_eq!(Format::BasicAuth.secret_type(), "kubernetes.io/basic-auth");
        let per_host: Vec<Format> = Format::ALL.into_iter().filter(|f| f.per_host()).collect();
        assert_eq!(
            per_host,
            [Format::ArgocdRepository, Format::ArgocdRepoCreds]
        );
        assert!(Format::BasicAuth.single_registry());
        assert!(
            Format::ALL
                .iter()
                .filter(|f| f.is_pull_secret())
                .eq([Format::Dockerconfigjson].iter()),
            "only the pull secret goes into imagePullSecrets"
        );
    }

    #[test]
    fn derived_names_join_the_entry_and_the_host() {
        assert_eq!(
            derived_name("ecr", "123456789012.dkr.ecr.us-east-1.amazonaws.com"),
            "ecr-123456789012.dkr.ecr.us-east-1.amazonaws.com"
        );
        assert_eq!(
            derived_name("charts", "registry.internal.example:5000"),
            "charts-registry.internal.example-5000"
        );
        assert_eq!(derived_name("a", "127.0.0.1:25002"), "a-127.0.0.1-25002");
    }
}
