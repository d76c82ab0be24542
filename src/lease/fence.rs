//! Leadership as the rest of the controller sees it, and the right to write that comes with
//! it: a [`Fence`] lasts while this replica leads in one term and its Lease is surely its
//! own, and every write asks its [`Permit`] how long it may take.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::Pace;
use crate::secrets::API_TIMEOUT;

/// What the election concluded for this replica.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Leadership {
    /// Another replica leads, or the election has not answered yet.
    #[default]
    Standby,
    /// This replica leads. `term` counts the times it took the Lease (from 1): work begun in
    /// one term is never carried into another.
    Leading { term: u64 },
}

impl Leadership {
    #[must_use]
    pub fn is_leading(self) -> bool {
        matches!(self, Self::Leading { .. })
    }

    #[must_use]
    pub fn term(self) -> Option<u64> {
        match self {
            Self::Leading { term } => Some(term),
            Self::Standby => None,
        }
    }
}

/// Until when, on this replica's own clock, the Lease is surely still its own, and in which
/// term: the renew deadline after the start of the last renewal that succeeded.
#[derive(Debug, Default)]
pub(super) struct Validity(Mutex<Option<(u64, Instant)>>);

impl Validity {
    pub(super) fn get(&self) -> Option<(u64, Instant)> {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn set(&self, value: Option<(u64, Instant)>) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = value;
    }
}

/// The election as the rest of the controller sees it: whether this replica leads, and the
/// right to write.
#[derive(Clone, Debug)]
pub struct Election {
    pub(super) leadership: watch::Receiver<Leadership>,
    pub(super) validity: Arc<Validity>,
}

impl Election {
    /// Leadership as it changes (the first answer of the election is always announced).
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<Leadership> {
        self.leadership.clone()
    }

    /// The fence of the current term, if this replica leads.
    #[must_use]
    pub fn fence(&self) -> Option<Fence> {
        let term = self.leadership.borrow().term()?;
        Some(Fence {
            term,
            validity: self.validity.clone(),
        })
    }
}

/// The right to write for work begun in one term: it lasts while this replica leads in that
/// term and its Lease is surely its own, and not a moment longer.
#[derive(Clone, Debug)]
pub struct Fence {
    term: u64,
    validity: Arc<Validity>,
}

impl Fence {
    #[must_use]
    pub fn term(&self) -> u64 {
        self.term
    }

    /// How long writes of this term may still go on; `None` once the term is over.
    #[must_use]
    pub fn remaining(&self) -> Option<Duration> {
        match self.validity.get() {
            Some((term, until)) if term == self.term => until
                .checked_duration_since(Instant::now())
                .filter(|left| !left.is_zero()),
            _ => None,
        }
    }
}

/// Why a write was not made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no longer the leader: left to the next one")]
pub struct NotLeading;

/// How long the next API call of a piece of work may take: [`API_TIMEOUT`], or less when the
/// work is fenced and its term ends sooner — after which no call is made at all; and, when
/// writes are paced, when the next write may go.
#[derive(Clone, Debug, Default)]
pub struct Permit {
    fence: Option<Fence>,
    pace: Option<Arc<Pace>>,
}

impl Permit {
    /// No election (`sync`, `cleanup`): every call may take [`API_TIMEOUT`].
    #[must_use]
    pub fn always() -> Self {
        Self::default()
    }

    #[must_use]
    pub fn fenced(fence: Fence) -> Self {
        Self {
            fence: Some(fence),
            pace: None,
        }
    }

    /// Writes under this permit wait for their turn of `pace`.
    #[must_use]
    pub fn paced(self, pace: Arc<Pace>) -> Self {
        Self {
            pace: Some(pace),
            ..self
        }
    }

    /// Waits for the next write's turn (at once when writes are not paced). Asked before
    /// [`Permit::next_call`], so the wait never eats into the time a write may take.
    pub async fn write_turn(&self) {
        if let Some(pace) = &self.pace {
            pace.turn().await;
        }
    }

    /// The time the next call may take, or why it may not be made.
    pub fn next_call(&self) -> Result<Duration, NotLeading> {
        match &self.fence {
            None => Ok(API_TIMEOUT),
            Some(fence) => fence
                .remaining()
                .map(|left| left.min(API_TIMEOUT))
                .ok_or(NotLeading),
        }
    }

    /// Whether work under this permit may still write.
    #[must_use]
    pub fn holds(&self) -> bool {
        self.next_call().is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fence_holds_only_in_its_term_and_before_the_deadline() {
        let validity = Arc::new(Validity::default());
        let fence = |term| Fence {
            term,
            validity: validity.clone(),
        };
        assert_eq!(fence(1).remaining(), None, "not leading");
        validity.set(Some((1, Instant::now() + Duration::from_secs(5))));
        let left = fence(1).remaining().unwrap();
        assert!(left > Duration::from_secs(4) && left <= Duration::from_secs(5));
        assert_eq!(fence(2).remaining(), None, "another term");
        let call = Permit::fenced(fence(1)).next_call().unwrap();
        assert!(call <= left && call > Duration::from_secs(4), "{call:?}");
        validity.set(Some((1, Instant::now())));
        assert_eq!(fence(1).remaining(), None, "past the deadline");
        assert_eq!(Permit::fenced(fence(1)).next_call(), Err(NotLeading));
        validity.set(None);
        assert!(!Permit::fenced(fence(1)).holds());
        assert_eq!(Permit::always().next_call(), Ok(API_TIMEOUT));
    }
}
