//! What one secret slot of a namespace needs, decided from the configuration, what is
//! stored and the tokens at hand: pure functions, tested without a cluster.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Namespace, Secret};

use crate::config::{Config, SecretConfig};
use crate::ecr::Token;
use crate::formats;
use crate::namespaces::Verdict;
use crate::registry::TokenSource;
use crate::secrets::{Served, Stored};

/// Which configuration entry, if any, serves a secret name in a namespace.
#[derive(Debug)]
pub enum Assignment<'a> {
    Serve(&'a SecretConfig),
    /// No entry selects the namespace: regcred's secret of that name goes.
    Remove,
    /// The namespace is being deleted.
    Skip,
    /// Two entries with the same secret name select the namespace (their indices in the
    /// configuration file).
    Conflict(Vec<usize>),
}

#[must_use]
pub fn assign<'a>(config: &'a Config, ns: &Namespace, name: &str) -> Assignment<'a> {
    let mut serving = Vec::new();
    let mut terminating = false;
    let no_labels = BTreeMap::new();
    let labels = ns.metadata.labels.as_ref().unwrap_or(&no_labels);
    let ns_name = ns.metadata.name.as_deref().unwrap_or_default();
    for (i, spec) in config
        .secrets
        .iter()
        .enumerate()
        .filter(|(_, s)| s.name.as_str() == name)
    {
        match spec.namespaces.verdict(ns) {
            Verdict::Selected => serving.push(i),
            // Only a namespace the entry would select is skipped for terminating; any other
            // terminating namespace is simply not selected (not counted, not served).
            Verdict::Terminating => terminating |= spec.namespaces.matches(ns_name, labels),
            Verdict::NotSelected => {}
        }
    }
    match serving.as_slice() {
        _ if terminating => Assignment::Skip,
        [] => Assignment::Remove,
        [i] => Assignment::Serve(&config.secrets[*i]),
        // Named by the entries of the configuration they come from.
        _ => Assignment::Conflict(serving.iter().map(|i| config.secrets[*i].entry).collect()),
    }
}

/// Tokens at hand, and why the missing ones are missing.
#[derive(Clone, Debug, Default)]
pub struct TokenView {
    pub tokens: BTreeMap<TokenSource, Token>,
    pub errors: BTreeMap<TokenSource, String>,
    /// The controller's leadership term the tokens were fetched in (`None` in `sync`, and
    /// for a standby, which holds none).
    pub term: Option<u64>,
}

/// How strictly a stored secret must match to be left alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// Sound and not due for renewal is enough (`sync`: no token call when nothing is due).
    SoundAndFresh,
    /// It must hold exactly the current tokens (the controller, which repairs any edit).
    Exact,
}

/// What one secret slot needs.
#[derive(Debug)]
pub enum Step {
    Unchanged,
    /// Tokens from these sources are needed to decide or to write.
    NeedsTokens(BTreeSet<TokenSource>),
    Apply {
        secret: Box<Secret>,
        over: Option<String>,
    },
    /// A managed secret of the wrong type (its entry's format changed under the same name):
    /// a type cannot change in place, so the secret is deleted and created again.
    Replace {
        secret: Box<Secret>,
        resource_version: Option<String>,
    },
    Foreign,
    CannotAdopt(String),
}

/// Plans one served secret slot from what is stored and the tokens at hand.
#[must_use]
pub fn plan(
    spec: &SecretConfig,
    namespace: &str,
    stored: Option<&Stored>,
    tokens: &TokenView,
    now: Timestamp,
    before: jiff::SignedDuration,
    freshness: Freshness,
) -> Step {
    let format = spec.format;
    let hosts: BTreeSet<&str> = spec.registries.iter().map(|r| r.registry.host()).collect();
    let resource_version = stored.and_then(Stored::resource_version);
    if let Some(s) = stored {
        let managed = s.is_managed();
        if !managed && !spec.adopt {
            return Step::Foreign;
        }
        if !managed && !format.has_type(s) {
            return Step::CannotAdopt(format!(
                "it has type {:?}, which cannot be changed in place; delete it and regcred will create its own",
                s.type_().unwrap_or_default()
            ));
        }
        if freshness == Freshness::SoundAndFresh
            && formats::is_sound_and_fresh(format, s, &hosts, now, before)
        {
            return Step::Unchanged;
        }
    }
    let mut served = Vec::with_capacity(spec.registries.len());
    let mut missing = BTreeSet::new();
    for r in &spec.registries {
        let source = r.token_source();
        // An expired token is as good as none: it is never written.
        match tokens.tokens.get(&source).filter(|t| !t.is_expired(now)) {
            Some(token) => served.push(Served {
                host: r.registry.host(),
                token,
            }),
            None => {
                missing.insert(source);
            }
        }
    }
    if !missing.is_empty() {
        return Step::NeedsTokens(missing);
    }
    let kept = stored
        .map(|s| formats::kept_entries(format, s, &hosts))
        .unwrap_or_default();
    let desired = Box::new(formats::desired(
        format,
        spec.name.as_str(),
        namespace,
        &served,
        kept,
    ));
    match stored {
        Some(s) if s.is_managed() && !format.has_type(s) => Step::Replace {
            secret: desired,
            resource_version,
        },
        Some(s) if formats::is_current(format, s, &desired) => Step::Unchanged,
        _ => Step::Apply {
            secret: desired,
            over: resource_version,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dockerconfig::Credential;
    use crate::registry::Registry;
    use crate::secrets;
    use jiff::SignedDuration;
    use kube::api::ObjectMeta;

    const HOST: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com";

    fn config(extra: &str) -> Config {
        let yaml = format!("secrets:\n  - registries: [{HOST}]\n{extra}");
        Config::from_yaml(std::path::Path::new("t.yaml"), &yaml).unwrap()
    }

    fn ns(name: &str) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        }
    }

    fn view(password: &str, expires: Timestamp) -> TokenView {
        let source = crate::registry::TokenSource::of(&Registry::parse(HOST).unwrap(), None);
        let token = Token {
            credential: Credential {
                username: "AWS".into(),
                password: password.to_owned().into(),
            },
            expires_at: expires,
            fetched_at: Timestamp::now(),
        };
        TokenView {
            tokens: [(source, token)].into(),
            errors: BTreeMap::new(),
            term: None,
        }
    }

    fn written(step: Step) -> Secret {
        match step {
            Step::Apply { secret, .. } => *secret,
            other => panic!("expected a write, got {other:?}"),
        }
    }

    #[test]
    fn assignment_follows_selection_and_flags_conflicts() {
        let c = config(
            "    namespaces: {include: ['team-*']}\n  - registries: [public.ecr.aws]\n    namespaces: {include: ['team-b']}\n",
        );
        assert!(matches!(
            assign(&c, &ns("team-a"), "regcred"),
            Assignment::Serve(_)
        ));
        assert!(matches!(
            assign(&c, &ns("other"), "regcred"),
            Assignment::Remove
        ));
        assert!(
            matches!(assign(&c, &ns("team-b"), "regcred"), Assignment::Conflict(v) if v == [0, 1])
        );
        // Terminating: skipped where it would be selected, not selected elsewhere.
        let mut dying = ns("team-a");
        dying.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now()),
        );
        assert!(matches!(assign(&c, &dying, "regcred"), Assignment::Skip));
        dying.metadata.name = Some("other".into());
        assert!(matches!(assign(&c, &dying, "regcred"), Assignment::Remove));
    }

    #[test]
    fn sync_asks_for_a_token_only_when_a_secret_is_due() {
        let c = config("");
        let spec = &c.secrets[0];
        let now = Timestamp::now();
        let six = SignedDuration::from_hours(6);
        let none = TokenView::default();
        assert!(
            matches!(plan(spec, "a", None, &none, now, six, Freshness::SoundAndFresh), Step::NeedsTokens(s) if s.len() == 1)
        );
        let fresh = Stored::of(written(plan(
            spec,
            "a",
            None,
            &view("pw", now + SignedDuration::from_hours(12)),
            now,
            six,
            Freshness::SoundAndFresh,
        )));
        assert!(matches!(
            plan(
                spec,
                "a",
                Some(&fresh),
                &none,
                now,
                six,
                Freshness::SoundAndFresh
            ),
            Step::Unchanged
        ));
        let later = now + SignedDuration::from_hours(7);
        assert!(matches!(
            plan(
                spec,
                "a",
                Some(&fresh),
                &none,
                later,
                six,
                Freshness::SoundAndFresh
            ),
            Step::NeedsTokens(_)
        ));
        // The controller wants exactly its current token.
        let newer = view("pw2", now + SignedDuration::from_hours(12));
        assert!(matches!(
            plan(spec, "a", Some(&fresh), &newer, now, six, Freshness::Exact),
            Step::Apply { .. }
        ));
        let same = view("pw", now + SignedDuration::from_hours(12));
        assert!(matches!(
            plan(spec, "a", Some(&fresh), &same, now, six, Freshness::Exact),
            Step::Unchanged
        ));
    }

    #[test]
    fn an_expired_token_is_never_written() {
        let c = config("");
        let now = Timestamp::now();
        let six = SignedDuration::from_hours(6);
        let expired = view("pw", now - SignedDuration::from_secs(1));
        for freshness in [Freshness::SoundAndFresh, Freshness::Exact] {
            assert!(
                matches!(
                    plan(&c.secrets[0], "a", None, &expired, now, six, freshness),
                    Step::NeedsTokens(_)
                ),
                "{freshness:?}"
            );
        }
    }

    #[test]
    fn foreign_secrets_are_left_alone_unless_adopted() {
        let now = Timestamp::now();
        let six = SignedDuration::from_hours(6);
        let tokens = view("pw", now + SignedDuration::from_hours(12));
        let foreign = Secret {
            metadata: ObjectMeta {
                resource_version: Some("7".into()),
                ..ObjectMeta::default()
            },
            type_: Some(secrets::SECRET_TYPE.into()),
            ..Secret::default()
        };
        let c = config("");
        assert!(matches!(
            plan(
                &c.secrets[0],
                "a",
                Some(&Stored::of(foreign.clone())),
                &tokens,
                now,
                six,
                Freshness::Exact
            ),
            Step::Foreign
        ));
        let adopt = config("    adopt: true\n");
        match plan(
            &adopt.secrets[0],
            "a",
            Some(&Stored::of(foreign.clone())),
            &tokens,
            now,
            six,
            Freshness::SoundAndFresh,
        ) {
            Step::Apply { over, secret } => {
                assert_eq!(
                    over.as_deref(),
                    Some("7"),
                    "adoption writes over the version it read"
                );
                assert!(secrets::is_managed(&secret));
            }
            other => panic!("{other:?}"),
        }
        let opaque = Secret {
            type_: Some("Opaque".into()),
            ..foreign
        };
        assert!(matches!(
            plan(
                &adopt.secrets[0],
                "a",
                Some(&Stored::of(opaque)),
                &tokens,
                now,
                six,
                Freshness::Exact
            ),
            Step::CannotAdopt(_)
        ));
    }

    #[test]
    fn each_format_plans_its_own_shape_and_adopts_only_its_own_type() {
        let now = Timestamp::now();
        let six = SignedDuration::from_hours(6);
        let tokens = view("pw", now + SignedDuration::from_hours(12));
        let argo = config("    format: argocd-repository\n    adopt: true\n");
        let spec = &argo.secrets[0];
        assert_eq!(spec.name.as_str(), format!("regcred-{HOST}"));
        let created = written(plan(
            spec,
            "argocd",
            None,
            &tokens,
            now,
            six,
            Freshness::Exact,
        ));
        assert_eq!(created.type_.as_deref(), Some("Opaque"));
        assert!(matches!(
            plan(
                spec,
                "argocd",
                Some(&Stored::of(created.clone())),
                &tokens,
                now,
                six,
                Freshness::Exact
            ),
            Step::Unchanged
        ));
        // Someone's Opaque secret of that name is taken over (adopt: true); a pull secret of
        // that name cannot become one.
        let theirs = Secret {
            type_: Some("Opaque".into()),
            ..Secret::default()
        };
        assert!(matches!(
            plan(
                spec,
                "argocd",
                Some(&Stored::of(theirs.clone())),
                &tokens,
                now,
                six,
                Freshness::Exact
            ),
            Step::Apply { .. }
        ));
        let pull = Secret {
            type_: Some(secrets::SECRET_TYPE.into()),
            ..Secret::default()
        };
        assert!(matches!(
            plan(spec, "argocd", Some(&Stored::of(pull)), &tokens, now, six, Freshness::Exact),
            Step::CannotAdopt(why) if why.contains("kubernetes.io/dockerconfigjson")
        ));
        // regcred's own secret of another shape under the same name: the format changed.
        let mut was_basic = created.clone();
        was_basic.type_ = Some("kubernetes.io/basic-auth".into());
        assert!(matches!(
            plan(
                spec,
                "argocd",
                Some(&Stored::of(was_basic.clone())),
                &tokens,
                now,
                six,
                Freshness::SoundAndFresh
            ),
            Step::Replace { .. }
        ));
    }

    #[test]
    fn a_managed_secret_of_the_wrong_type_is_replaced() {
        let now = Timestamp::now();
        let tokens = view("pw", now + SignedDuration::from_hours(12));
        let c = config("");
        let mut broken = written(plan(
            &c.secrets[0],
            "a",
            None,
            &tokens,
            now,
            SignedDuration::from_hours(6),
            Freshness::Exact,
        ));
        broken.type_ = Some("Opaque".into());
        assert!(matches!(
            plan(
                &c.secrets[0],
                "a",
                Some(&Stored::of(broken)),
                &tokens,
                now,
                SignedDuration::from_hours(6),
                Freshness::SoundAndFresh
            ),
            Step::Replace { .. }
        ));
    }
}
