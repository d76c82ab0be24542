//! Which namespaces a secret goes to: include and exclude globs, a label selector, and
//! never a namespace that is being deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use k8s_openapi::api::core::v1::Namespace;
use kube::core::{Expression, Selector, SelectorExt};

/// A namespace name pattern: `*` matches any run of characters, `?` one character.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Glob {
    source: String,
    pattern: glob::Pattern,
}

/// Why a glob or label selector is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("glob {0:?} may use only a-z, 0-9, '-', '*', '?' and [...] classes")]
    GlobChars(String),
    #[error("glob {glob:?}: {reason}")]
    Glob { glob: String, reason: String },
    #[error("label selector {selector:?}: {reason}")]
    Selector { selector: String, reason: String },
}

impl FromStr for Glob {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "-*?[]!".contains(c);
        if s.is_empty() || !s.chars().all(ok) {
            return Err(Error::GlobChars(s.to_owned()));
        }
        let pattern = glob::Pattern::new(s).map_err(|e| Error::Glob {
            glob: s.to_owned(),
            reason: e.msg.to_owned(),
        })?;
        Ok(Self {
            source: s.to_owned(),
            pattern,
        })
    }
}

impl Glob {
    #[must_use]
    pub fn matches(&self, name: &str) -> bool {
        self.pattern.matches(name)
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// A Kubernetes label selector in its string form (`team=payments,tier in (a,b),!legacy`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelSelector {
    source: String,
    selector: Selector,
    /// The label keys it reads.
    keys: Vec<String>,
}

impl LabelSelector {
    /// The label keys it reads (no other label can change its answer).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(String::as_str)
    }

    #[must_use]
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector.matches(labels)
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl FromStr for LabelSelector {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let err = |reason: String| Error::Selector {
            selector: s.to_owned(),
            reason,
        };
        let expressions = split_requirements(s)
            .map_err(err)?
            .into_iter()
            .map(|r| parse_requirement(r.trim()).map_err(err))
            .collect::<Result<Vec<_>, _>>()?;
        if expressions.is_empty() {
            return Err(err("is empty".into()));
        }
        let mut keys: Vec<String> = expressions
            .iter()
            .map(|e| match e {
                Expression::In(k, _)
                | Expression::NotIn(k, _)
                | Expression::Equal(k, _)
                | Expression::NotEqual(k, _)
                | Expression::Exists(k)
                | Expression::DoesNotExist(k) => k.clone(),
            })
            .collect();
        keys.sort();
        keys.dedup();
        Ok(Self {
            source: s.trim().to_owned(),
            selector: expressions.into_iter().collect(),
            keys,
        })
    }
}

/// Splits at top-level commas (not those inside `in (a,b)`).
fn split_requirements(s: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0_u32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.checked_sub(1).ok_or("unbalanced ')'")?,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced '('".into());
    }
    parts.push(&s[start..]);
    if s.trim().is_empty() {
        return Ok(Vec::new());
    }
    Ok(parts)
}

fn parse_requirement(r: &str) -> Result<Expression, String> {
    if r.is_empty() {
        return Err("has an empty requirement".into());
    }
    if let Some(key) = r.strip_prefix('!') {
        return Ok(Expression::DoesNotExist(label_key(key.trim())?));
    }
    if let Some((key, value)) = r.split_once("!=") {
        return Ok(Expression::NotEqual(
            label_key(key.trim())?,
            label_value(value.trim())?,
        ));
    }
    if let Some((key, value)) = r.split_once("==").or_else(|| r.split_once('=')) {
        return Ok(Expression::Equal(
            label_key(key.trim())?,
            label_value(value.trim())?,
        ));
    }
    let (key, rest) = match r.split_once(char::is_whitespace) {
        None => return Ok(Expression::Exists(label_key(r)?)),
        Some((key, rest)) => (label_key(key)?, rest.trim()),
    };
    let usage = || format!("{r:?}: expected `{key} in (v1,v2)` or `{key} notin (v1,v2)`");
    let (op, set) = rest.split_once('(').ok_or_else(usage)?;
    let values = set
        .strip_suffix(')')
        .ok_or_else(usage)?
        .split(',')
        .map(|v| label_value(v.trim()))
        .collect::<Result<BTreeSet<_>, _>>()?;
    match op.trim() {
        "in" => Ok(Expression::In(key, values)),
        "notin" => Ok(Expression::NotIn(key, values)),
        other => Err(format!(
            "unknown operator {other:?} (use =, ==, !=, in, notin, or !key)"
        )),
    }
}

fn label_key(key: &str) -> Result<String, String> {
    let (prefix, name) = key
        .rsplit_once('/')
        .map_or((None, key), |(p, n)| (Some(p), n));
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            })
    });
    if prefix_ok && !name.is_empty() && name_ok(name) {
        Ok(key.to_owned())
    } else {
        Err(format!("{key:?} is not a valid label key"))
    }
}

fn label_value(value: &str) -> Result<String, String> {
    if value.is_empty() || name_ok(value) {
        Ok(value.to_owned())
    } else {
        Err(format!("{value:?} is not a valid label value"))
    }
}

/// A label name or value: up to 63 alphanumerics, `-`, `_` and `.`, alphanumeric at both ends.
fn name_ok(s: &str) -> bool {
    let alnum = |c: Option<u8>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    s.len() <= 63
        && alnum(s.bytes().next())
        && alnum(s.bytes().last())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// The namespaces one secret goes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    pub include: Vec<Glob>,
    pub exclude: Vec<Glob>,
    pub selector: Option<LabelSelector>,
}

/// The namespaces excluded unless the configuration says otherwise.
pub const DEFAULT_EXCLUDE: &[&str] = &["kube-system", "kube-public", "kube-node-lease"];

impl Default for Selection {
    fn default() -> Self {
        Self {
            include: vec!["*".parse().expect("valid glob")],
            exclude: DEFAULT_EXCLUDE
                .iter()
                .map(|g| g.parse().expect("valid glob"))
                .collect(),
            selector: None,
        }
    }
}

/// What selection makes of one namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Selected,
    NotSelected,
    /// Being deleted: left alone, neither served nor cleaned.
    Terminating,
}

impl Selection {
    /// Whether a namespace with this name and these labels matches, ignoring its phase.
    #[must_use]
    pub fn matches(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        self.include.iter().any(|g| g.matches(name))
            && !self.exclude.iter().any(|g| g.matches(name))
            && self.selector.as_ref().is_none_or(|s| s.matches(labels))
    }

    #[must_use]
    pub fn verdict(&self, ns: &Namespace) -> Verdict {
        if is_terminating(ns) {
            return Verdict::Terminating;
        }
        let name = ns.metadata.name.as_deref().unwrap_or_default();
        let empty = BTreeMap::new();
        let labels = ns.metadata.labels.as_ref().unwrap_or(&empty);
        if self.matches(name, labels) {
            Verdict::Selected
        } else {
            Verdict::NotSelected
        }
    }
}

/// A namespace that is being deleted (it may linger as Terminating for a long time).
#[must_use]
pub fn is_terminating(ns: &Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_some()
        || ns
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Terminating")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NamespaceStatus;
    use kube::api::ObjectMeta;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn globs_match_names() {
        let g: Glob = "team-*".parse().unwrap();
        assert!(g.matches("team-a"));
        assert!(!g.matches("teams"));
        let q: Glob = "ns-?".parse().unwrap();
        assert!(q.matches("ns-1") && !q.matches("ns-10"));
        for bad in ["", "Team", "a b", "ns/x", "[a-", "ns.x"] {
            assert!(bad.parse::<Glob>().is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn label_selectors_parse_and_match() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], bool);
        let cases: &[Case] = &[
            ("team=payments", &[("team", "payments")], true),
            ("team==payments", &[("team", "search")], false),
            ("team!=payments", &[], true),
            ("env in (prod, staging)", &[("env", "staging")], true),
            ("env in (prod,staging)", &[("env", "dev")], false),
            ("env notin (prod)", &[("env", "dev")], true),
            ("example.com/pull", &[("example.com/pull", "")], true),
            ("!legacy", &[("legacy", "yes")], false),
            ("team=payments,!legacy", &[("team", "payments")], true),
            (
                "team=payments, env in (a,b)",
                &[("team", "payments"), ("env", "c")],
                false,
            ),
        ];
        for (sel, l, want) in cases {
            let s: LabelSelector = sel.parse().unwrap_or_else(|e| panic!("{sel}: {e}"));
            assert_eq!(s.matches(&labels(l)), *want, "{sel} on {l:?}");
            // Only the keys it reads count: the labels kept for it give the same answer.
            let keys: BTreeSet<&str> = s.keys().collect();
            let kept: Vec<(&str, &str)> = l
                .iter()
                .copied()
                .chain([("unrelated", "x")])
                .filter(|(k, _)| keys.contains(k))
                .collect();
            assert_eq!(s.matches(&labels(&kept)), *want, "{sel} on {kept:?}");
        }
        let s: LabelSelector = "team=payments, env in (a,b), !legacy, team!=x"
            .parse()
            .unwrap();
        assert_eq!(s.keys().collect::<Vec<_>>(), ["env", "legacy", "team"]);
        for bad in [
            "",
            "team=",
            "=x",
            "env in prod",
            "env in (a",
            "env within (a)",
            "a b c",
            "Bad Key=x",
            "t=a,,b=c",
            "x=-bad",
        ] {
            if bad == "team=" {
                // An empty value is allowed: it selects the label with an empty value.
                assert!(bad.parse::<LabelSelector>().is_ok());
                continue;
            }
            assert!(
                bad.parse::<LabelSelector>().is_err(),
                "{bad:?} must be refused"
            );
        }
    }

    fn ns(name: &str, l: &[(&str, &str)], terminating: bool) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(labels(l)),
                ..ObjectMeta::default()
            },
            status: terminating.then(|| NamespaceStatus {
                phase: Some("Terminating".into()),
                ..NamespaceStatus::default()
            }),
            ..Namespace::default()
        }
    }

    #[test]
    fn selection_combines_globs_selector_and_phase() {
        let default = Selection::default();
        assert_eq!(default.verdict(&ns("apps", &[], false)), Verdict::Selected);
        assert_eq!(
            default.verdict(&ns("kube-system", &[], false)),
            Verdict::NotSelected
        );
        assert_eq!(
            default.verdict(&ns("apps", &[], true)),
            Verdict::Terminating
        );
        let s = Selection {
            include: vec!["team-*".parse().unwrap()],
            exclude: vec!["team-old".parse().unwrap()],
            selector: Some("pull=ecr".parse().unwrap()),
        };
        assert_eq!(
            s.verdict(&ns("team-a", &[("pull", "ecr")], false)),
            Verdict::Selected
        );
        assert_eq!(s.verdict(&ns("team-a", &[], false)), Verdict::NotSelected);
        assert_eq!(
            s.verdict(&ns("team-old", &[("pull", "ecr")], false)),
            Verdict::NotSelected
        );
        assert_eq!(
            s.verdict(&ns("other", &[("pull", "ecr")], false)),
            Verdict::NotSelected
        );
    }
}
