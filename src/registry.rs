//! Registry hosts: which ECR registry a host name stands for.
//!
//! A host names an account, a region and a partition, and through its form the endpoint
//! flavour (FIPS, dual-stack). The token for a registry comes from that region's ECR API,
//! so two hosts that share a [`TokenSource`] share one `GetAuthorizationToken` call.

use std::fmt;
use std::str::FromStr;

/// The region that serves ECR Public tokens, whatever the caller's region.
pub const ECR_PUBLIC_REGION: &str = "us-east-1";

/// Why a host is not a registry regcred can serve.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("registry host is empty")]
    Empty,
    #[error(
        "{host:?} is not an ECR registry host (expected ACCOUNT.dkr.ecr.REGION.amazonaws.com, \
         a FIPS, dual-stack, China, GovCloud or ISO form, or public.ecr.aws); \
         for an alias or proxy give accountId and region"
    )]
    NotEcr { host: String },
    #[error("{host:?} is not a valid host[:port]")]
    BadHost { host: String },
    #[error("account id {0:?} must be 12 digits")]
    BadAccount(String),
    #[error("region {0:?} is not a valid AWS region name")]
    BadRegion(String),
}

/// A validated registry host name, lower-cased, with an optional port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Host(String);

impl Host {
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Host {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let s = s.trim();
        if s.is_empty() {
            return Err(Error::Empty);
        }
        let lower = s.to_ascii_lowercase();
        let bad = || Error::BadHost { host: s.to_owned() };
        let (name, port) = match lower.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (lower.as_str(), None),
        };
        if let Some(port) = port {
            port.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(bad)?;
        }
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if name.len() > 253 || !name.split('.').all(label_ok) {
            return Err(bad());
        }
        Ok(Self(lower))
    }
}

/// An AWS partition, which decides the API's DNS suffix and credentials scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Partition {
    Aws,
    AwsCn,
    AwsUsGov,
    AwsIso,
    AwsIsoB,
    AwsIsoE,
    AwsIsoF,
    AwsEusc,
}

impl Partition {
    /// The partition a region belongs to, from its name.
    #[must_use]
    pub fn of_region(region: &str) -> Self {
        let prefixes = [
            ("cn-", Self::AwsCn),
            ("us-gov-", Self::AwsUsGov),
            ("us-isob-", Self::AwsIsoB),
            ("us-isof-", Self::AwsIsoF),
            ("us-iso-", Self::AwsIso),
            ("eu-isoe-", Self::AwsIsoE),
            ("eusc-", Self::AwsEusc),
        ];
        prefixes
            .iter()
            .find(|(p, _)| region.starts_with(p))
            .map_or(Self::Aws, |(_, partition)| *partition)
    }

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Aws => "aws",
            Self::AwsCn => "aws-cn",
            Self::AwsUsGov => "aws-us-gov",
            Self::AwsIso => "aws-iso",
            Self::AwsIsoB => "aws-iso-b",
            Self::AwsIsoE => "aws-iso-e",
            Self::AwsIsoF => "aws-iso-f",
            Self::AwsEusc => "aws-eusc",
        }
    }
}

/// What a host resolves to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// A private ECR registry.
    Private {
        account: String,
        region: String,
        partition: Partition,
        fips: bool,
        dual_stack: bool,
    },
    /// ECR Public (`public.ecr.aws`), whose tokens come from `ecr-public` in us-east-1.
    Public,
}

/// A registry host with what it resolves to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Registry {
    pub host: Host,
    pub target: Target,
}

/// DNS suffixes of private ECR registry hosts, with whether the form is dual-stack.
const PRIVATE_SUFFIXES: &[(&str, bool)] = &[
    ("amazonaws.com", false),
    ("amazonaws.com.cn", false),
    ("amazonaws.eu", false),
    ("sc2s.sgov.gov", false),
    ("c2s.ic.gov", false),
    ("cloud.adc-e.uk", false),
    ("csp.hci.ic.gov", false),
    ("on.aws", true),
    ("on.amazonwebservices.com.cn", true),
];

const PUBLIC_HOSTS: &[&str] = &["public.ecr.aws", "ecr-public.aws.com"];

impl Registry {
    /// Resolves a host by its name alone.
    pub fn parse(host: &str) -> Result<Self, Error> {
        let host: Host = host.parse()?;
        let target = target_of(host.as_str()).ok_or_else(|| Error::NotEcr {
            host: host.to_string(),
        })?;
        Ok(Self { host, target })
    }

    /// A host that fronts a private registry of the given account and region (an alias,
    /// a proxy, a pull-through cache in front of ECR).
    pub fn alias(host: &str, account: &str, region: &str) -> Result<Self, Error> {
        let host: Host = host.parse()?;
        if !is_account(account) {
            return Err(Error::BadAccount(account.to_owned()));
        }
        if !is_region(region) {
            return Err(Error::BadRegion(region.to_owned()));
        }
        Ok(Self {
            host,
            target: Target::Private {
                account: account.to_owned(),
                region: region.to_owned(),
                partition: Partition::of_region(region),
                fips: false,
                dual_stack: false,
            },
        })
    }

    /// The host as it appears in the registry's pull references.
    #[must_use]
    pub fn host(&self) -> &str {
        self.host.as_str()
    }
}

fn is_account(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

fn is_region(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

fn target_of(host: &str) -> Option<Target> {
    let name = host.split(':').next().unwrap_or(host);
    if PUBLIC_HOSTS.contains(&name) {
        return Some(Target::Public);
    }
    // ACCOUNT . dkr.ecr|dkr-ecr [-fips] . REGION . SUFFIX
    let (account, rest) = name.split_once('.')?;
    let (service, rest) = rest
        .strip_prefix("dkr.")
        .map(|r| ("dot", r))
        .or_else(|| rest.strip_prefix("dkr-").map(|r| ("dash", r)))?;
    let (fips, rest) = if let Some(r) = rest.strip_prefix("ecr-fips.") {
        (true, r)
    } else {
        (false, rest.strip_prefix("ecr.")?)
    };
    let (region, suffix) = rest.split_once('.')?;
    let &(_, suffix_dual_stack) = PRIVATE_SUFFIXES.iter().find(|(s, _)| *s == suffix)?;
    if !is_account(account) || !is_region(region) {
        return None;
    }
    // `dkr-ecr` is the dual-stack spelling; it pairs with the dual-stack suffixes.
    let dual_stack = suffix_dual_stack || service == "dash";
    Some(Target::Private {
        account: account.to_owned(),
        region: region.to_owned(),
        partition: Partition::of_region(region),
        fips,
        dual_stack,
    })
}

/// Where a token comes from: one `GetAuthorizationToken` serves every registry that shares
/// the same source, so a pass makes one call per distinct source.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenSource {
    pub endpoint: Endpoint,
    pub role: Option<Role>,
}

/// The API that issues a token.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Endpoint {
    Private {
        partition: Partition,
        region: String,
        fips: bool,
        dual_stack: bool,
    },
    Public,
}

/// An IAM role to assume before asking for a token.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Role {
    pub arn: String,
    pub external_id: Option<String>,
}

impl TokenSource {
    #[must_use]
    pub fn of(registry: &Registry, role: Option<Role>) -> Self {
        let endpoint = match &registry.target {
            Target::Private {
                region,
                partition,
                fips,
                dual_stack,
                ..
            } => Endpoint::Private {
                partition: *partition,
                region: region.clone(),
                fips: *fips,
                dual_stack: *dual_stack,
            },
            Target::Public => Endpoint::Public,
        };
        Self { endpoint, role }
    }

    /// The region whose API issues the token.
    #[must_use]
    pub fn region(&self) -> &str {
        match &self.endpoint {
            Endpoint::Private { region, .. } => region,
            Endpoint::Public => ECR_PUBLIC_REGION,
        }
    }
}

impl fmt::Display for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.endpoint {
            Endpoint::Private {
                region,
                fips,
                dual_stack,
                ..
            } => {
                write!(f, "ecr {region}")?;
                if *fips {
                    f.write_str(" fips")?;
                }
                if *dual_stack {
                    f.write_str(" dual-stack")?;
                }
            }
            Endpoint::Public => f.write_str("ecr-public us-east-1")?,
        }
        if let Some(role) = &self.role {
            write!(f, " as {}", role.arn)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn private(account: &str, region: &str, partition: Partition, fips: bool, ds: bool) -> Target {
        Target::Private {
            account: account.into(),
            region: region.into(),
            partition,
            fips,
            dual_stack: ds,
        }
    }

    #[test]
    fn every_ecr_host_form_resolves() {
        use Partition::*;
        let a = "123456789012";
        let cases = [
            (
                "123456789012.dkr.ecr.us-east-1.amazonaws.com",
                private(a, "us-east-1", Aws, false, false),
            ),
            (
                "123456789012.DKR.ECR.eu-west-1.AMAZONAWS.COM",
                private(a, "eu-west-1", Aws, false, false),
            ),
            (
                "123456789012.dkr.ecr-fips.us-west-2.amazonaws.com",
                private(a, "us-west-2", Aws, true, false),
            ),
            (
                "123456789012.dkr-ecr.us-east-1.on.aws",
                private(a, "us-east-1", Aws, false, true),
            ),
            (
                "123456789012.dkr-ecr-fips.us-east-1.on.aws",
                private(a, "us-east-1", Aws, true, true),
            ),
            (
                "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn",
                private(a, "cn-north-1", AwsCn, false, false),
            ),
            (
                "123456789012.dkr-ecr.cn-northwest-1.on.amazonwebservices.com.cn",
                private(a, "cn-northwest-1", AwsCn, false, true),
            ),
            (
                "123456789012.dkr.ecr.us-gov-west-1.amazonaws.com",
                private(a, "us-gov-west-1", AwsUsGov, false, false),
            ),
            (
                "123456789012.dkr.ecr-fips.us-gov-east-1.amazonaws.com",
                private(a, "us-gov-east-1", AwsUsGov, true, false),
            ),
            (
                "123456789012.dkr.ecr.us-iso-east-1.c2s.ic.gov",
                private(a, "us-iso-east-1", AwsIso, false, false),
            ),
            (
                "123456789012.dkr.ecr.us-isob-east-1.sc2s.sgov.gov",
                private(a, "us-isob-east-1", AwsIsoB, false, false),
            ),
            (
                "123456789012.dkr.ecr.eu-isoe-west-1.cloud.adc-e.uk",
                private(a, "eu-isoe-west-1", AwsIsoE, false, false),
            ),
            (
                "123456789012.dkr.ecr.us-isof-south-1.csp.hci.ic.gov",
                private(a, "us-isof-south-1", AwsIsoF, false, false),
            ),
            (
                "123456789012.dkr.ecr.eusc-de-east-1.amazonaws.eu",
                private(a, "eusc-de-east-1", AwsEusc, false, false),
            ),
            (
                "123456789012.dkr.ecr.us-east-1.amazonaws.com:443",
                private(a, "us-east-1", Aws, false, false),
            ),
            ("public.ecr.aws", Target::Public),
            ("ecr-public.aws.com", Target::Public),
        ];
        for (host, want) in cases {
            let got = Registry::parse(host).unwrap_or_else(|e| panic!("{host}: {e}"));
            assert_eq!(got.target, want, "{host}");
            assert_eq!(
                got.host(),
                host.to_ascii_lowercase(),
                "host is kept, lower-cased"
            );
        }
    }

    #[test]
    fn non_ecr_and_malformed_hosts_are_refused() {
        for host in [
            "docker.io",
            "ghcr.io",
            "12345678901.dkr.ecr.us-east-1.amazonaws.com",
            "1234567890123.dkr.ecr.us-east-1.amazonaws.com",
            "123456789012.dkr.ecr.us-east-1.amazonaws.com.evil.example",
            "123456789012.dkr.ecr.us-east-1.example.com",
            "123456789012.ecr.us-east-1.amazonaws.com",
            "abcdefghijkl.dkr.ecr.us-east-1.amazonaws.com",
            "public.ecr.aws.evil.example",
        ] {
            assert!(
                matches!(Registry::parse(host), Err(Error::NotEcr { .. })),
                "{host} must not resolve"
            );
        }
        for host in [
            "",
            "  ",
            "123456789012.dkr.ecr..amazonaws.com",
            "bad host",
            "a..b",
            "-a.example",
            "h:0",
            "h:99999",
            "h:x",
            "https://public.ecr.aws",
        ] {
            assert!(Registry::parse(host).is_err(), "{host:?} must be refused");
        }
    }

    #[test]
    fn aliases_take_account_and_region() {
        let r = Registry::alias(
            "registry.internal.example:5000",
            "123456789012",
            "cn-north-1",
        )
        .unwrap();
        assert_eq!(
            r.target,
            private("123456789012", "cn-north-1", Partition::AwsCn, false, false)
        );
        assert_eq!(
            Registry::alias("127.0.0.1:5000", "12345", "us-east-1"),
            Err(Error::BadAccount("12345".into()))
        );
        assert_eq!(
            Registry::alias("127.0.0.1:5000", "123456789012", "US East"),
            Err(Error::BadRegion("US East".into()))
        );
    }

    #[test]
    fn hosts_in_one_region_share_a_token_source() {
        let a = Registry::parse("111111111111.dkr.ecr.us-east-1.amazonaws.com").unwrap();
        let b = Registry::parse("222222222222.dkr.ecr.us-east-1.amazonaws.com").unwrap();
        let c = Registry::parse("111111111111.dkr.ecr.eu-west-1.amazonaws.com").unwrap();
        let f = Registry::parse("111111111111.dkr.ecr-fips.us-east-1.amazonaws.com").unwrap();
        assert_eq!(TokenSource::of(&a, None), TokenSource::of(&b, None));
        assert_ne!(TokenSource::of(&a, None), TokenSource::of(&c, None));
        assert_ne!(TokenSource::of(&a, None), TokenSource::of(&f, None));
        let role = Role {
            arn: "arn:aws:iam::222222222222:role/pull".into(),
            external_id: None,
        };
        assert_ne!(TokenSource::of(&a, None), TokenSource::of(&b, Some(role)));
        let public = Registry::parse("public.ecr.aws").unwrap();
        assert_eq!(TokenSource::of(&public, None).region(), "us-east-1");
    }
}
