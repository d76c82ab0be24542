//! Client-side pacing of writes (`regcred run --max-writes-per-second`): for clusters whose
//! API server is small, a rotation of every namespace spread out instead of sent at once.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// At most `rate` writes a second, evenly spaced (no burst), handed out in the order they
/// are asked for.
#[derive(Debug)]
pub struct Pace {
    interval: Duration,
    next: Mutex<Option<Instant>>,
}

impl Pace {
    #[must_use]
    pub fn per_second(rate: u32) -> Self {
        Self {
            interval: Duration::from_secs(1) / rate.max(1),
            next: Mutex::new(None),
        }
    }

    /// Waits for the next write's turn.
    pub async fn turn(&self) {
        let at = {
            let mut next = self
                .next
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = Instant::now();
            let at = next.map_or(now, |n| n.max(now));
            *next = Some(at + self.interval);
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_are_spaced_evenly() {
        let pace = Pace::per_second(50);
        let start = Instant::now();
        let mut at = Vec::new();
        for _ in 0..5 {
            pace.turn().await;
            at.push(start.elapsed());
        }
        // Turns 20 ms apart, the first at once (a busy machine may only make them later).
        assert!(at[0] < Duration::from_millis(20), "{at:?}");
        for (i, t) in at.iter().enumerate() {
            assert!(
                *t >= Duration::from_millis(20) * u32::try_from(i).unwrap(),
                "{at:?}"
            );
        }
        // After a quiet spell no burst was saved up: two turns are still 20 ms apart.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let quiet = Instant::now();
        pace.turn().await;
        pace.turn().await;
        assert!(quiet.elapsed() >= Duration::from_millis(20));
    }
}
