//! When the webhook's certificates change, decided from what the Secret holds, what the
//! webhook configuration publishes, and the time — and the change itself.
//!
//! The rule that no admission is lost: a replica serves only the certificate in the Secret,
//! and that certificate is signed by a CA the API server already trusts. So a new CA is
//! first only *added* to the trust bundle (the configuration's `caBundle`), next to the
//! one in use; it signs the serving certificate only after it has been seen published for
//! a grace period (time for every API server to read it); the old CA stays in the bundle
//! until it expires, so certificates it signed stay trusted while replicas move on.
//!
//! Lifetimes: the serving certificate lives `lifetime` (`--webhook-cert-lifetime`) and is
//! renewed when a third of it is left; the CA lives five times as long, renewed likewise.

use std::collections::BTreeSet;

use jiff::{SignedDuration, Timestamp};

use super::pki::{self, Facts, Pair};

/// What the webhook Secret holds.
#[derive(Clone, Debug)]
pub struct Material {
    /// The CA that signs serving certificates now.
    pub signer: Pair,
    /// A CA on its way in: trusted already, signing once it is published.
    pub next: Option<Pair>,
    pub serving: Pair,
    /// Every CA to trust, one PEM block each, newest first: what `caBundle` must hold.
    pub bundle: Vec<String>,
}

/// The facts of [`Material`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub signer: Facts,
    pub next: Option<Facts>,
    pub serving: Facts,
    pub bundle: Vec<Facts>,
}

impl Material {
    pub fn parse(&self) -> pki::Result<Parsed> {
        Ok(Parsed {
            signer: pki::facts(&self.signer.cert, "webhook CA")?,
            next: self
                .next
                .as_ref()
                .map(|n| pki::facts(&n.cert, "next webhook CA"))
                .transpose()?,
            serving: pki::facts(&self.serving.cert, "webhook serving certificate")?,
            bundle: self
                .bundle
                .iter()
                .map(|c| pki::facts(c, "webhook CA bundle"))
                .collect::<pki::Result<_>>()?,
        })
    }

    /// The bundle as one PEM text, as `caBundle` holds it.
    #[must_use]
    pub fn bundle_pem(&self) -> String {
        self.bundle.concat()
    }
}

/// What the serving certificate should be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// DNS names and IP addresses the API server may call it by.
    pub hosts: BTreeSet<String>,
    /// How long a serving certificate lives.
    pub lifetime: SignedDuration,
}

impl Policy {
    #[must_use]
    pub fn ca_lifetime(&self) -> SignedDuration {
        self.lifetime * 5
    }

    /// How long a new CA must have been published before it signs: a tenth of the serving
    /// lifetime, between 1 s and 1 min (API servers read webhook configurations within
    /// about a second).
    #[must_use]
    pub fn grace(&self) -> SignedDuration {
        (self.lifetime / 10).clamp(SignedDuration::from_secs(1), SignedDuration::from_mins(1))
    }

    fn serving_due(&self, serving: &Facts) -> Timestamp {
        serving.not_after - self.lifetime / 3
    }

    fn ca_due(&self, ca: &Facts) -> Timestamp {
        ca.not_after - self.ca_lifetime() / 3
    }
}

/// What the webhook configuration shows of the CAs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Publication {
    /// The MutatingWebhookConfiguration exists (without it no admission can be lost).
    pub configuration_exists: bool,
    /// How long the next CA has been in every webhook's `caBundle`, as seen here.
    pub next_published_for: Option<SignedDuration>,
}

/// One change to the Secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing usable is stored: a new CA and serving certificate.
    Bootstrap,
    /// The CA is due: make the next one (trusted from now, signing later).
    NewCa,
    /// The next CA is published: it signs from now on.
    Activate,
    /// A new serving certificate from the signing CA.
    Issue,
    /// The bundle is not what it should be (an expired CA, or a missing one).
    Rebundle,
}

/// The changes to make now, and when to look again at the latest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub wake: Timestamp,
}

/// Decides the changes. `current` is `None` when the Secret is missing or unusable.
#[must_use]
pub fn plan(
    current: Option<&Parsed>,
    policy: &Policy,
    publication: Publication,
    now: Timestamp,
) -> Plan {
    let Some(p) = current.filter(|p| p.signer.not_after > now && p.serving.not_after > now) else {
        return Plan {
            steps: vec![Step::Bootstrap],
            wake: now,
        };
    };
    let mut steps = Vec::new();
    let mut wake = Timestamp::MAX;
    let mut next = p.next.as_ref().map(|n| (n, publication.next_published_for));
    if next.is_none() {
        if now >= policy.ca_due(&p.signer) {
            steps.push(Step::NewCa);
            next = Some((&p.signer, None)); // A placeholder: new, so not yet published.
        } else {
            wake = wake.min(policy.ca_due(&p.signer));
        }
    }
    let mut signer = &p.signer.subject;
    if let Some((n, published_for)) = next {
        let grace = policy.grace();
        match published_for {
            _ if !publication.configuration_exists => {
                steps.push(Step::Activate);
            }
            Some(d) if d >= grace && !steps.contains(&Step::NewCa) => {
                steps.push(Step::Activate);
                signer = &n.subject;
            }
            Some(d) => wake = wake.min(now + (grace - d).max(SignedDuration::from_secs(1))),
            // Not published yet: the configuration's watch brings the change.
            None => wake = wake.min(now + grace),
        }
    }
    let activating = steps.contains(&Step::Activate);
    let issuer_changes = activating || p.serving.issuer != *signer;
    let hosts_missing = !policy.hosts.is_subset(&p.serving.hosts);
    if issuer_changes || hosts_missing || now >= policy.serving_due(&p.serving) {
        steps.push(Step::Issue);
    } else {
        wake = wake.min(policy.serving_due(&p.serving));
    }
    let kept = |f: &Facts| f.not_after > now;
    let mut wanted: Vec<&str> = p
        .next
        .iter()
        .chain([&p.signer])
        .map(|f| f.subject.as_str())
        .collect();
    for f in p.bundle.iter().filter(|f| kept(f)) {
        if !wanted.contains(&f.subject.as_str()) {
            wanted.push(&f.subject);
        }
    }
    let have: Vec<&str> = p.bundle.iter().map(|f| f.subject.as_str()).collect();
    if steps.is_empty() && have != wanted {
        steps.push(Step::Rebundle);
    }
    for f in &p.bundle {
        if kept(f) {
            wake = wake.min(f.not_after);
        }
    }
    Plan {
        steps,
        wake: wake.max(now),
    }
}

/// Makes the changes: new keys and certificates as the steps say, and the bundle made
/// again (next CA, signing CA, then older CAs until they expire).
pub fn execute(
    current: Option<Material>,
    steps: &[Step],
    policy: &Policy,
    now: Timestamp,
) -> pki::Result<Material> {
    let mut m = match current {
        Some(m) if !steps.contains(&Step::Bootstrap) => m,
        _ => {
            let ca = pki::new_ca(now, policy.ca_lifetime())?;
            let serving = pki::issue(&ca, &policy.hosts, now, policy.lifetime)?;
            return Ok(Material {
                bundle: vec![ca.cert.clone()],
                signer: ca,
                next: None,
                serving,
            });
        }
    };
    let mut older = m.bundle.clone();
    for step in steps {
        match step {
            Step::Bootstrap | Step::Rebundle => {}
            Step::NewCa => m.next = Some(pki::new_ca(now, policy.ca_lifetime())?),
            Step::Activate => {
                if let Some(next) = m.next.take() {
                    older.insert(0, m.signer.cert.clone());
                    m.signer = next;
                }
            }
            Step::Issue => {
                let have = pki::facts(&m.serving.cert, "webhook serving certificate")
                    .map(|f| f.hosts)
                    .unwrap_or_default();
                let hosts = if policy.hosts.is_subset(&have) {
                    policy.hosts.clone()
                } else {
                    policy.hosts.union(&have).cloned().collect()
                };
                m.serving = pki::issue(&m.signer, &hosts, now, policy.lifetime)?;
            }
        }
    }
    let mut bundle: Vec<String> = m.next.iter().map(|n| n.cert.clone()).collect();
    bundle.push(m.signer.cert.clone());
    for cert in older {
        let live = pki::facts(&cert, "webhook CA bundle").is_ok_and(|f| f.not_after > now);
        if live && !bundle.contains(&cert) {
            bundle.push(cert);
        }
    }
    m.bundle = bundle;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier as _;
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use std::sync::Arc;

    fn policy(lifetime: SignedDuration) -> Policy {
        Policy {
            hosts: [
                "regcred-webhook.regcred.svc".to_owned(),
                "127.0.0.1".to_owned(),
            ]
            .into(),
            lifetime,
        }
    }

    /// Whether a client trusting `bundle` (PEM) accepts `serving` for `host` at `now`, as
    /// the API server would.
    fn trusted(bundle: &str, serving: &str, host: &str, now: Timestamp) -> bool {
        let mut roots = rustls::RootCertStore::empty();
        for der in CertificateDer::pem_slice_iter(bundle.as_bytes()) {
            roots.add(der.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        let leaf = CertificateDer::from_pem_slice(serving.as_bytes()).unwrap();
        let seconds = u64::try_from(now.as_second()).unwrap();
        verifier
            .verify_server_cert(
                &leaf,
                &[],
                &ServerName::try_from(host.to_owned()).unwrap(),
                &[],
                UnixTime::since_unix_epoch(std::time::Duration::from_secs(seconds)),
            )
            .is_ok()
    }

    #[test]
    fn nothing_stored_or_expired_means_a_fresh_start() {
        let p = policy(SignedDuration::from_hours(24));
        let now: Timestamp = "2026-11-29T00:00:00Z".parse().unwrap();
        assert_eq!(
            plan(None, &p, Publication::default(), now).steps,
            vec![Step::Bootstrap]
        );
        let m = execute(None, &[Step::Bootstrap], &p, now).unwrap();
        let parsed = m.parse().unwrap();
        let later = plan(
            Some(&parsed),
            &p,
            Publication::default(),
            now + SignedDuration::from_hours(25),
        );
        assert_eq!(later.steps, vec![Step::Bootstrap]);
        // Fresh: nothing to do until a third of the serving lifetime is left.
        let quiet = plan(Some(&parsed), &p, Publication::default(), now);
        assert!(quiet.steps.is_empty());
        assert_eq!(
            quiet.wake,
            parsed.serving.not_after - SignedDuration::from_hours(8)
        );
    }

    #[test]
    fn a_new_host_gets_a_certificate_that_keeps_the_old_ones() {
        let p = policy(SignedDuration::from_hours(24));
        let now = Timestamp::now();
        let m = execute(None, &[Step::Bootstrap], &p, now).unwrap();
        let mut wider = p.clone();
        wider.hosts.insert("regcred-webhook.other.svc".into());
        let steps = plan(
            Some(&m.parse().unwrap()),
            &wider,
            Publication::default(),
            now,
        )
        .steps;
        assert_eq!(steps, vec![Step::Issue]);
        let m = execute(Some(m), &steps, &wider, now).unwrap();
        assert_eq!(m.parse().unwrap().serving.hosts, wider.hosts);
        // A replica that still wants the narrower set is content with it.
        assert!(
            plan(Some(&m.parse().unwrap()), &p, Publication::default(), now)
                .steps
                .is_empty()
        );
    }

    /// A whole timeline of a replica that acts whenever something is due, with the API
    /// server reading the configuration a little late: at every instant, the certificate in
    /// the Secret is trusted by the bundle the API server holds.
    #[test]
    fn through_serving_and_ca_rotations_the_api_server_always_trusts_what_is_served() {
        let p = policy(SignedDuration::from_secs(60));
        let start: Timestamp = "2026-11-29T00:00:00Z".parse().unwrap();
        let host = "regcred-webhook.regcred.svc";
        let lag = SignedDuration::from_millis(900); // API server sees a bundle this late.
        let mut now = start;
        let mut material: Option<Material> = None;
        // (since, bundle) as published, oldest first.
        let mut published: Vec<(Timestamp, String)> = Vec::new();
        let mut first_seen: Option<(String, Timestamp)> = None;
        let (mut cas, mut servings) = (BTreeSet::new(), BTreeSet::new());
        while now < start + SignedDuration::from_secs(1200) {
            let parsed = material.as_ref().map(|m| m.parse().unwrap());
            let next_subject = parsed
                .as_ref()
                .and_then(|p| p.next.as_ref().map(|n| n.subject.clone()));
            let publication = Publication {
                configuration_exists: true,
                next_published_for: next_subject.and_then(|s| {
                    let seen = published.last().is_some_and(|(_, b)| {
                        pki::bundle(b, "b").unwrap().iter().any(|f| f.subject == s)
                    });
                    if !seen {
                        return None;
                    }
                    if first_seen.as_ref().is_none_or(|(f, _)| *f != s) {
                        first_seen = Some((s.clone(), now));
                    }
                    Some(now.duration_since(first_seen.as_ref().unwrap().1))
                }),
            };
            let decided = plan(parsed.as_ref(), &p, publication, now);
            if !decided.steps.is_empty() {
                let m = execute(material.take(), &decided.steps, &p, now).unwrap();
                published.push((now, m.bundle_pem()));
                material = Some(m);
            }
            let m = material.as_ref().unwrap();
            let parsed = m.parse().unwrap();
            cas.insert(parsed.signer.subject.clone());
            servings.insert(m.serving.cert.clone());
            // What the API server trusts now: the last bundle published at least `lag` ago
            // (or, right after the very first, none yet: nothing was registered to lose).
            if let Some((_, seen)) = published.iter().rev().find(|(t, _)| *t + lag <= now) {
                assert!(
                    trusted(seen, &m.serving.cert, host, now),
                    "at +{}s the served certificate is not trusted by the published bundle; steps {:?}",
                    now.duration_since(start).as_secs(),
                    decided.steps
                );
                // And a replica a little behind, still serving the previous certificate.
                if servings.len() > 1 {
                    let previous = servings.iter().find(|c| **c != m.serving.cert).unwrap();
                    let prev = pki::facts(previous, "p").unwrap();
                    if prev.not_after > now + SignedDuration::from_secs(5) {
                        assert!(trusted(seen, previous, host, now));
                    }
                }
            }
            assert!(
                parsed.bundle.len() <= 3,
                "the bundle grows: {:?}",
                parsed.bundle
            );
            now += SignedDuration::from_millis(500);
        }
        // 1200 s with a 60 s serving lifetime and a 300 s CA: many of each.
        assert!(cas.len() >= 5, "{} CAs", cas.len());
        assert!(
            servings.len() >= 25,
            "{} serving certificates",
            servings.len()
        );
    }
}
