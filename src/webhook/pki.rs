//! The webhook's certificates: a CA of its own and the serving certificate it signs (rcgen,
//! aws-lc-rs), what a certificate says (x509-parser), and the rustls key that serves one.
//!
//! Private keys live in [`SecretString`]s, whose `Debug` is redacted; nothing here logs.

use std::collections::BTreeSet;
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use secrecy::{ExposeSecret as _, SecretString};
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

/// Certificates are dated this far back, so a node whose clock is a little behind does
/// not see them as not yet valid.
const BACKDATE: SignedDuration = SignedDuration::from_mins(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{what}: not a PEM certificate")]
    NoCertificate { what: &'static str },
    #[error("{what}: cannot parse the certificate: {message}")]
    Parse { what: &'static str, message: String },
    #[error("{what}: the private key is unusable (not PEM, or not the certificate's): {message}")]
    Key { what: &'static str, message: String },
    #[error("{0} is out of the range of certificate dates")]
    Date(Timestamp),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A certificate and its private key, both PEM.
#[derive(Clone, Debug)]
pub struct Pair {
    pub cert: String,
    pub key: SecretString,
}

/// What regcred reads from a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    /// The subject, as text (`CN=...`); regcred's CAs have unique names.
    pub subject: String,
    pub issuer: String,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    /// DNS names and IP addresses it is valid for.
    pub hosts: BTreeSet<String>,
    pub is_ca: bool,
}

fn offset(t: Timestamp) -> Result<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp(t.as_second()).map_err(|_| Error::Date(t))
}

fn random_serial() -> SerialNumber {
    // Positive (high bit clear) and non-zero, as RFC 5280 asks.
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

/// A new self-signed CA, valid from now for `lifetime`, with a name no other regcred CA has.
pub fn new_ca(now: Timestamp, lifetime: SignedDuration) -> Result<Pair> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "regcred");
    name.push(
        DnType::CommonName,
        format!(
            "regcred webhook CA {} {:08x}",
            now.strftime("%Y%m%dT%H%M%SZ"),
            rand::random::<u32>()
        ),
    );
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = offset(now - BACKDATE)?;
    params.not_after = offset(now + lifetime)?;
    params.serial_number = Some(random_serial());
    let cert = params.self_signed(&key)?;
    Ok(Pair {
        cert: cert.pem(),
        key: SecretString::from(key.serialize_pem()),
    })
}

/// A serving certificate for `hosts` (DNS names or IP addresses), signed by `ca`, valid
/// from now for `lifetime` but never beyond the CA.
pub fn issue(
    ca: &Pair,
    hosts: &BTreeSet<String>,
    now: Timestamp,
    lifetime: SignedDuration,
) -> Result<Pair> {
    let ca_key = KeyPair::from_pem(ca.key.expose_secret()).map_err(|e| Error::Key {
        what: "webhook CA",
        message: e.to_string(),
    })?;
    let ca_facts = facts(&ca.cert, "webhook CA")?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(hosts.iter().cloned().collect::<Vec<_>>())?;
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "regcred");
    name.push(
        DnType::CommonName,
        hosts.first().map_or("regcred webhook", String::as_str),
    );
    params.distinguished_name = name;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = offset((now - BACKDATE).max(ca_facts.not_before))?;
    params.not_after = offset((now + lifetime).min(ca_facts.not_after))?;
    params.serial_number = Some(random_serial());
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Pair {
        cert: cert.pem(),
        key: SecretString::from(key.serialize_pem()),
    })
}

fn timestamp(t: x509_parser::time::ASN1Time, what: &'static str) -> Result<Timestamp> {
    Timestamp::from_second(t.timestamp()).map_err(|e| Error::Parse {
        what,
        message: e.to_string(),
    })
}

fn facts_of(der: &[u8], what: &'static str) -> Result<Facts> {
    let parse_error = |message: String| Error::Parse { what, message };
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| parse_error(e.to_string()))?;
    let mut hosts = BTreeSet::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) => {
                    hosts.insert((*n).to_owned());
                }
                GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*bytes)
                            .ok()
                            .map(std::net::IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        hosts.insert(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    Ok(Facts {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        not_before: timestamp(cert.validity().not_before, what)?,
        not_after: timestamp(cert.validity().not_after, what)?,
        hosts,
        is_ca: cert.is_ca(),
    })
}

/// The facts of the first certificate of a PEM text.
pub fn facts(pem: &str, what: &'static str) -> Result<Facts> {
    bundle(pem, what)?
        .into_iter()
        .next()
        .ok_or(Error::NoCertificate { what })
}

/// The facts of every certificate of a PEM text (a CA bundle), in order.
pub fn bundle(pem: &str, what: &'static str) -> Result<Vec<Facts>> {
    let mut all = Vec::new();
    for block in Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| Error::Parse {
            what,
            message: e.to_string(),
        })?;
        if block.label == "CERTIFICATE" {
            all.push(facts_of(&block.contents, what)?);
        }
    }
    if all.is_empty() {
        return Err(Error::NoCertificate { what });
    }
    Ok(all)
}

/// Each certificate of a PEM text as its own PEM block, in order.
#[must_use]
pub fn split(pem: &str) -> Vec<String> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .map(|der| {
            let body = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &der);
            let lines: Vec<&str> = body
                .as_bytes()
                .chunks(64)
                .map(|c| std::str::from_utf8(c).unwrap_or_default())
                .collect();
            format!(
                "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                lines.join("\n")
            )
        })
        .collect()
}

/// The serving key rustls presents: the certificate (alone; the API server holds the CA)
/// and its private key, which must belong to it.
pub fn certified_key(pair: &Pair, what: &'static str) -> Result<Arc<rustls::sign::CertifiedKey>> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pair.cert.as_bytes())
        .take(1)
        .collect::<Result<_, _>>()
        .map_err(|e| Error::Parse {
            what,
            message: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(Error::NoCertificate { what });
    }
    let key = PrivateKeyDer::from_pem_slice(pair.key.expose_secret().as_bytes()).map_err(|e| {
        Error::Key {
            what,
            message: e.to_string(),
        }
    })?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let certified =
        rustls::sign::CertifiedKey::from_der(chain, key, &provider).map_err(|e| Error::Key {
            what,
            message: e.to_string(),
        })?;
    certified.keys_match().map_err(|e| Error::Key {
        what,
        message: e.to_string(),
    })?;
    Ok(Arc::new(certified))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(h: &[&str]) -> BTreeSet<String> {
        h.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_ca_signs_a_serving_certificate_for_names_and_addresses() {
        let now: Timestamp = "2026-11-29T12:00:00Z".parse().unwrap();
        let ca = new_ca(now, SignedDuration::from_hours(24 * 365)).unwrap();
        let ca_facts = facts(&ca.cert, "ca").unwrap();
        assert!(ca_facts.is_ca);
        assert_eq!(ca_facts.subject, ca_facts.issuer);
        assert!(
            ca_facts
                .subject
                .contains("regcred webhook CA 20261129T120000Z")
        );
        assert_eq!(ca_facts.not_before, now - BACKDATE);

        let names = hosts(&["regcred-webhook.regcred.svc", "127.0.0.1"]);
        let serving = issue(&ca, &names, now, SignedDuration::from_hours(24)).unwrap();
        let f = facts(&serving.cert, "serving").unwrap();
        assert!(!f.is_ca);
        assert_eq!(f.issuer, ca_facts.subject);
        assert_eq!(f.hosts, names);
        assert_eq!(f.not_after, now + SignedDuration::from_hours(24));
        certified_key(&serving, "serving").unwrap();

        // Never beyond the CA.
        let short_ca = new_ca(now, SignedDuration::from_hours(1)).unwrap();
        let clamped = issue(&short_ca, &names, now, SignedDuration::from_hours(24)).unwrap();
        assert_eq!(
            facts(&clamped.cert, "s").unwrap().not_after,
            now + SignedDuration::from_hours(1)
        );
        // Two CAs never share a name.
        let other = new_ca(now, SignedDuration::from_hours(1)).unwrap();
        assert_ne!(
            facts(&other.cert, "ca").unwrap().subject,
            facts(&short_ca.cert, "ca").unwrap().subject
        );
    }

    #[test]
    fn bundles_split_and_parse_in_order() {
        let now = Timestamp::now();
        let a = new_ca(now, SignedDuration::from_hours(1)).unwrap();
        let b = new_ca(now, SignedDuration::from_hours(2)).unwrap();
        let both = format!("{}{}", a.cert, b.cert);
        let parsed = bundle(&both, "bundle").unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[1], facts(&b.cert, "b").unwrap());
        assert_eq!(split(&both), vec![a.cert.clone(), b.cert.clone()]);
        assert!(matches!(
            bundle("nothing here", "bundle"),
            Err(Error::NoCertificate { what: "bundle" })
        ));
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused_without_showing_it() {
        let now = Timestamp::now();
        let ca = new_ca(now, SignedDuration::from_hours(1)).unwrap();
        let one = issue(
            &ca,
            &hosts(&["a.example"]),
            now,
            SignedDuration::from_mins(10),
        )
        .unwrap();
        let two = issue(
            &ca,
            &hosts(&["a.example"]),
            now,
            SignedDuration::from_mins(10),
        )
        .unwrap();
        let mixed = Pair {
            cert: one.cert.clone(),
            key: two.key.clone(),
        };
        let e = certified_key(&mixed, "serving").unwrap_err().to_string();
        assert!(e.starts_with("serving: the private key is unusable"), "{e}");
        let garbage = Pair {
            cert: one.cert.clone(),
            key: SecretString::from(
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            ),
        };
        let e = certified_key(&garbage, "serving").unwrap_err().to_string();
        assert!(!e.contains("AAAA"), "{e}");
        assert!(
            !format!("{one:?}").contains("PRIVATE KEY"),
            "Debug shows the key"
        );
    }
}
