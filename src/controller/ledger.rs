//! The controller's per-namespace bookkeeping, for the current leadership term: which
//! namespaces were reconciled with every token at hand (and the secrets that pass found),
//! how often each failed in a row (backoff), which are selected. A new term starts from
//! nothing, a standby keeps nothing, and a deleted namespace is forgotten: it never grows
//! past the namespaces that exist.

use std::collections::HashMap;

use crate::lease::Leadership;
use crate::reconcile::Freshness;

#[derive(Debug, Default)]
struct Entry {
    reconciled: bool,
    failures: u32,
    selected: bool,
    /// The secrets (names and resourceVersions) the first reconciliation with every token
    /// found, as a fingerprint: while they are unchanged, they are judged as that pass
    /// judged them.
    found: u64,
}

#[derive(Debug, Default)]
pub(super) struct Ledger {
    /// The latest term this replica has led in (0: none yet).
    term: u64,
    leading: bool,
    namespaces: HashMap<String, Entry>,
    selected: usize,
    /// Entries with `reconciled`.
    reconciled: usize,
}

impl Ledger {
    /// Follows leadership: a new term starts from nothing, a standby keeps nothing. Returns
    /// whether it started over.
    pub(super) fn follow(&mut self, leadership: Leadership) -> bool {
        match leadership {
            Leadership::Leading { term } if term > self.term => {
                self.term = term;
                self.leading = true;
                self.clear();
                true
            }
            Leadership::Standby if self.leading => {
                self.leading = false;
                self.clear();
                true
            }
            Leadership::Leading { .. } | Leadership::Standby => false,
        }
    }

    fn clear(&mut self) {
        self.namespaces = HashMap::new();
        self.selected = 0;
        self.reconciled = 0;
    }

    /// Whether results of work done in `term` still count (a later term's may start it).
    fn current(&mut self, term: u64) -> bool {
        self.follow(Leadership::Leading { term });
        self.leading && term == self.term
    }

    /// Notes what a reconciliation of `namespace` in `term` came to; ignored when that term
    /// is over. Returns whether it was noted.
    pub(super) fn note(
        &mut self,
        term: u64,
        namespace: &str,
        selected: bool,
        (reconciled, found): (bool, u64),
        succeeded: bool,
    ) -> bool {
        if !self.current(term) {
            return false;
        }
        let entry = self.namespaces.entry(namespace.to_owned()).or_default();
        if entry.selected != selected {
            entry.selected = selected;
            if selected {
                self.selected += 1;
            } else {
                self.selected -= 1;
            }
        }
        if reconciled && !entry.reconciled {
            entry.reconciled = true;
            entry.found = found;
            self.reconciled += 1;
        }
        if succeeded {
            entry.failures = 0;
        }
        true
    }

    /// Counts one more failure in a row for `namespace`; returns how many.
    pub(super) fn failed(&mut self, namespace: &str) -> u32 {
        if !self.leading {
            return 1;
        }
        let entry = self.namespaces.entry(namespace.to_owned()).or_default();
        entry.failures = entry.failures.saturating_add(1);
        entry.failures
    }

    pub(super) fn is_reconciled(&self, namespace: &str) -> bool {
        self.namespaces.get(namespace).is_some_and(|e| e.reconciled)
    }

    /// How strictly to judge a namespace's secrets, `found` being their fingerprint now:
    /// leniently (sound and fresh is enough) until this term's first reconciliation with
    /// every token, and afterwards as long as they are the ones it found (a restart or
    /// failover, however many passes follow, does not rewrite another holder's good work);
    /// exactly once any of them changed (an edit is repaired).
    pub(super) fn freshness(&self, namespace: &str, found: u64) -> Freshness {
        match self.namespaces.get(namespace) {
            Some(e) if e.reconciled && e.found != found => Freshness::Exact,
            _ => Freshness::SoundAndFresh,
        }
    }

    /// Forgets a namespace that no longer exists.
    pub(super) fn forget(&mut self, namespace: &str) {
        if let Some(entry) = self.namespaces.remove(namespace) {
            self.selected -= usize::from(entry.selected);
            self.reconciled -= usize::from(entry.reconciled);
        }
        self.shrink();
    }

    /// Keeps only the namespaces that exist (after a relist, which sends no deletions).
    pub(super) fn retain(&mut self, exists: impl Fn(&str) -> bool) {
        let before = self.namespaces.len();
        self.namespaces.retain(|name, _| exists(name));
        if self.namespaces.len() != before {
            self.selected = self.namespaces.values().filter(|e| e.selected).count();
            self.reconciled = self.namespaces.values().filter(|e| e.reconciled).count();
        }
        self.shrink();
    }

    /// Gives back the room of a map that lost most of its entries (a map only ever grows).
    fn shrink(&mut self) {
        if self.namespaces.capacity() > 64 && self.namespaces.capacity() > 4 * self.namespaces.len()
        {
            self.namespaces.shrink_to_fit();
        }
    }

    /// Namespaces reconciled with every token at hand in this term.
    pub(super) fn reconciled(&self) -> usize {
        self.reconciled
    }

    /// Namespaces with bookkeeping.
    pub(super) fn tracked(&self) -> usize {
        self.namespaces.len()
    }

    /// Namespaces served, while leading.
    pub(super) fn selected(&self) -> Option<usize> {
        self.leading.then_some(self.selected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_term_starts_from_nothing_and_a_standby_keeps_nothing() {
        let mut l = Ledger::default();
        assert_eq!(l.selected(), None);
        assert!(
            l.note(1, "a", true, (true, 7), true),
            "work of a first term"
        );
        assert!(l.note(1, "b", false, (true, 7), true));
        assert_eq!((l.tracked(), l.selected()), (2, Some(1)));
        assert!(l.is_reconciled("a"));
        assert!(l.follow(Leadership::Standby));
        assert_eq!((l.tracked(), l.selected()), (0, None));
        assert!(
            !l.note(1, "a", true, (true, 7), true),
            "late work of a past term"
        );
        assert_eq!(l.tracked(), 0);
        assert!(l.follow(Leadership::Leading { term: 2 }));
        assert!(!l.is_reconciled("a"));
        assert!(!l.follow(Leadership::Leading { term: 2 }), "the same term");
        assert!(!l.note(1, "a", true, (true, 7), true));
        assert!(l.note(2, "a", true, (false, 7), true));
        assert_eq!(l.selected(), Some(1));
    }

    #[test]
    fn deleted_namespaces_are_forgotten() {
        let mut l = Ledger::default();
        for ns in ["a", "b", "c"] {
            l.note(1, ns, ns != "c", (true, 7), true);
        }
        assert_eq!(l.failed("b"), 1);
        assert_eq!(l.failed("b"), 2);
        assert_eq!(l.reconciled(), 3);
        l.forget("a");
        assert_eq!((l.tracked(), l.selected(), l.reconciled()), (2, Some(1), 2));
        l.retain(|ns| ns == "c");
        assert_eq!((l.tracked(), l.selected(), l.reconciled()), (1, Some(0), 1));
        assert_eq!(l.failed("b"), 1, "a namespace made again starts afresh");
    }

    #[test]
    fn secrets_a_first_pass_found_are_judged_leniently_until_they_change() {
        let mut l = Ledger::default();
        assert_eq!(
            l.freshness("a", 1),
            Freshness::SoundAndFresh,
            "not reconciled yet"
        );
        l.note(1, "a", true, (false, 1), true);
        assert_eq!(
            l.freshness("a", 1),
            Freshness::SoundAndFresh,
            "without every token"
        );
        l.note(1, "a", true, (true, 1), true);
        assert_eq!(
            l.freshness("a", 1),
            Freshness::SoundAndFresh,
            "what it found"
        );
        assert_eq!(l.freshness("a", 2), Freshness::Exact, "changed since");
        l.note(1, "a", true, (true, 3), true);
        assert_eq!(
            l.freshness("a", 1),
            Freshness::SoundAndFresh,
            "the first pass's, kept"
        );
    }
}
