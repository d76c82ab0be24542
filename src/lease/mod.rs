//! Leader election through a `coordination.k8s.io` Lease: every replica watches, only the
//! holder of the Lease writes.
//!
//! Expiry is judged by local observation, as client-go does: a Lease whose record has not
//! changed for its whole duration, as seen by this replica's own clock, is free to take.
//! Clocks of different nodes are never compared.

mod fence;
mod pace;

pub use fence::{Election, Fence, Leadership, NotLeading, Permit};
pub use pace::Pace;

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;

use fence::Validity;

/// Where the Lease lives: regcred's own namespace, and its name.
#[derive(Args, Clone, Debug)]
pub struct LeaseArgs {
    /// Namespace of the leader-election Lease (regcred's own namespace in a pod).
    #[arg(
        long,
        env = "POD_NAMESPACE",
        default_value = "default",
        value_name = "NAMESPACE"
    )]
    pub lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "REGCRED_LEASE_NAME",
        default_value = "regcred",
        value_name = "NAME"
    )]
    pub lease_name: String,
}

/// Timing of the election.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How long a Lease stays held without renewal.
    pub duration: Duration,
    /// How long the holder keeps leading without a successful renewal, counted from the start
    /// of the last one that succeeded: two thirds of the duration, so it has stopped writing
    /// well before any other replica may take the Lease.
    pub renew_deadline: Duration,
    /// How often the holder renews and the others look.
    pub retry: Duration,
}

impl Timing {
    #[must_use]
    pub fn new(duration: Duration) -> Self {
        Self {
            duration,
            renew_deadline: duration * 2 / 3,
            retry: (duration / 5).clamp(Duration::from_millis(200), Duration::from_secs(2)),
        }
    }
}

/// What this replica concluded from the Lease it read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Ours: renew it.
    Renew,
    /// Free (no holder, or not renewed for its duration): take it.
    Take,
    /// Someone else's and alive.
    Follow,
}

/// The part of a Lease that changes whenever its holder renews or it changes hands.
type Record = (Option<String>, Option<Timestamp>, Option<i32>);

/// A record and when this replica first saw it.
type Seen = Option<(Record, Instant)>;

fn record(lease: &Lease) -> Record {
    let spec = lease.spec.as_ref();
    (
        spec.and_then(|s| s.holder_identity.clone())
            .filter(|h| !h.is_empty()),
        spec.and_then(|s| s.renew_time.as_ref().map(|t| t.0)),
        spec.and_then(|s| s.lease_transitions),
    )
}

/// Decides from the Lease and when its record was last seen to change (local clock).
#[must_use]
pub fn decide(
    lease: &Lease,
    me: &str,
    last_change: Instant,
    now: Instant,
    timing: Timing,
) -> Decision {
    let (holder, _, _) = record(lease);
    let duration = lease
        .spec
        .as_ref()
        .and_then(|s| s.lease_duration_seconds)
        .and_then(|s| u64::try_from(s).ok())
        .map_or(timing.duration, Duration::from_secs);
    match holder.as_deref() {
        Some(h) if h == me => Decision::Renew,
        None => Decision::Take,
        Some(_) if now.duration_since(last_change) >= duration => Decision::Take,
        Some(_) => Decision::Follow,
    }
}

/// How long one round of the election may take: until the Lease stops being surely ours
/// while leading (so a hung call can never keep a leader writing past that), the renew
/// deadline otherwise.
fn round_budget(held_until: Option<Instant>, started: Instant, timing: Timing) -> Duration {
    held_until.map_or(timing.renew_deadline, |until| {
        until.saturating_duration_since(started)
    })
}

/// Starts the election: its handle for the rest of the controller, and the task that runs it
/// until `shutdown` fires. On shutdown this replica stops leading at once (no write starts
/// after that) but does not release the Lease: see [`release`], for once nothing writes any
/// more. The task returns whether it held the Lease when it stopped.
#[must_use]
pub fn start(
    client: kube::Client,
    namespace: String,
    name: String,
    me: String,
    timing: Timing,
    shutdown: watch::Receiver<bool>,
) -> (Election, tokio::task::JoinHandle<bool>) {
    let (tx, rx) = watch::channel(Leadership::Standby);
    let validity = Arc::new(Validity::default());
    let election = Election {
        leadership: rx,
        validity: validity.clone(),
    };
    let task = tokio::spawn(async move {
        run(
            client, &namespace, &name, &me, timing, &tx, &validity, shutdown,
        )
        .await
    });
    (election, task)
}

#[allow(clippy::too_many_arguments)] // One election's settings, passed once.
async fn run(
    client: kube::Client,
    namespace: &str,
    name: &str,
    me: &str,
    timing: Timing,
    leading: &watch::Sender<Leadership>,
    validity: &Validity,
    mut shutdown: watch::Receiver<bool>,
) -> bool {
    let api: Api<Lease> = Api::namespaced(client, namespace);
    let mut seen: Seen = None;
    let mut terms = 0;
    let mut first = true;
    loop {
        let started = Instant::now();
        let held = validity.get();
        let budget = round_budget(held.map(|(_, until)| until), started, timing);
        let round = tokio::time::timeout(budget, step(&api, name, me, timing, &mut seen));
        let outcome = tokio::select! {
            outcome = round => outcome,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let still_held = || held.is_some_and(|(_, until)| Instant::now() < until);
        let now = match outcome {
            Ok(Ok(true)) => {
                let term = match held {
                    Some((term, _)) if still_held() => term,
                    _ => {
                        terms += 1;
                        terms
                    }
                };
                // Measured from before the request: the others count from when they see it.
                validity.set(Some((term, started + timing.renew_deadline)));
                Leadership::Leading { term }
            }
            Ok(Ok(false)) => Leadership::Standby,
            Ok(Err(e)) => {
                tracing::warn!(lease = name, namespace, error = %crate::chain(&e), "leader election");
                // Keep leading through brief API trouble, never past the renew deadline.
                held.filter(|_| still_held())
                    .map_or(Leadership::Standby, |(term, _)| Leadership::Leading {
                        term,
                    })
            }
            Err(_) => {
                tracing::warn!(lease = name, namespace, after = ?budget, "leader election: no answer");
                held.filter(|_| still_held())
                    .map_or(Leadership::Standby, |(term, _)| Leadership::Leading {
                        term,
                    })
            }
        };
        if !now.is_leading() {
            // No write of this replica starts after this.
            validity.set(None);
        }
        if *leading.borrow() != now {
            tracing::info!(
                lease = name,
                namespace,
                identity = me,
                leading = now.is_leading(),
                term = now.term(),
                "leadership changed"
            );
            leading.send_replace(now);
        } else if first {
            // Announced even when it stays standby: until the first answer nobody knows
            // whether this replica is one (readiness waits for it).
            leading.send_replace(now);
        }
        first = false;
        // The next round starts in time to renew before the deadline (a round itself never
        // outlasts it).
        let next = match validity.get() {
            Some((_, until)) => timing
                .retry
                .min(until.saturating_duration_since(Instant::now())),
            None => timing.retry,
        };
        tokio::select! {
            () = tokio::time::sleep(next) => {}
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
    }
    // Stop leading before anything else; the Lease is released once nothing writes.
    let held = validity.get().is_some();
    validity.set(None);
    if leading.borrow().is_leading() {
        leading.send_replace(Leadership::Standby);
    }
    held
}

/// Gives the Lease up (empties its holder) if this replica still holds it, so another takes
/// over at once; bounded by `within`.
pub async fn release(
    client: kube::Client,
    namespace: &str,
    name: &str,
    me: &str,
    within: Duration,
) {
    let api: Api<Lease> = Api::namespaced(client, namespace);
    match tokio::time::timeout(within, give_up(&api, name, me)).await {
        Ok(Ok(())) => tracing::info!(lease = name, "released the Lease"),
        Ok(Err(e)) => {
            tracing::warn!(lease = name, error = %crate::chain(&e), "could not release the Lease");
        }
        Err(_) => tracing::warn!(lease = name, "could not release the Lease in time"),
    }
}

/// One round: read the Lease, then renew it, take it, or follow. Returns whether we lead.
async fn step(
    api: &Api<Lease>,
    name: &str,
    me: &str,
    timing: Timing,
    seen: &mut Seen,
) -> Result<bool, kube::Error> {
    let now = Instant::now();
    let Some(lease) = api.get_opt(name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(held_by(me, None, timing, 0)),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(false),
            Err(e) => Err(e),
        };
    };
    let current = record(&lease);
    let last_change = match seen {
        Some((r, at)) if *r == current => *at,
        _ => {
            *seen = Some((current.clone(), now));
            now
        }
    };
    let transitions = current.2.unwrap_or(0);
    let spec = match decide(&lease, me, last_change, now, timing) {
        Decision::Follow => return Ok(false),
        Decision::Renew => held_by(
            me,
            lease.spec.as_ref().and_then(|s| s.acquire_time.clone()),
            timing,
            transitions,
        ),
        Decision::Take => held_by(me, None, timing, transitions + 1),
    };
    let mut updated = lease;
    updated.spec = Some(spec);
    // The resourceVersion read above makes this a compare-and-swap: if another replica
    // renewed or took the Lease meanwhile, the write fails with a conflict.
    match api.replace(name, &PostParams::default(), &updated).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.is_conflict() => Ok(false),
        Err(e) => Err(e),
    }
}

fn held_by(me: &str, acquired: Option<MicroTime>, timing: Timing, transitions: i32) -> LeaseSpec {
    let now = MicroTime(Timestamp::now());
    LeaseSpec {
        holder_identity: Some(me.to_owned()),
        acquire_time: Some(acquired.unwrap_or_else(|| now.clone())),
        renew_time: Some(now),
        lease_duration_seconds: Some(
            i32::try_from(timing.duration.as_secs().max(1)).unwrap_or(i32::MAX),
        ),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    }
}

/// Empties the Lease's holder if it is still this replica.
async fn give_up(api: &Api<Lease>, name: &str, me: &str) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(name).await? else {
        return Ok(());
    };
    if record(&lease).0.as_deref() != Some(me) {
        return Ok(());
    }
    if let Some(spec) = lease.spec.as_mut() {
        spec.holder_identity = None;
        spec.acquire_time = None;
        spec.renew_time = None;
    }
    api.replace(name, &PostParams::default(), &lease)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                lease_duration_seconds: Some(15),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        }
    }

    #[test]
    fn holders_renew_others_follow_until_the_lease_goes_stale() {
        let timing = Timing::new(Duration::from_secs(15));
        let t0 = Instant::now();
        assert_eq!(
            decide(&lease(Some("a")), "a", t0, t0, timing),
            Decision::Renew
        );
        assert_eq!(decide(&lease(None), "a", t0, t0, timing), Decision::Take);
        assert_eq!(
            decide(&lease(Some("")), "a", t0, t0, timing),
            Decision::Take
        );
        assert_eq!(
            decide(
                &lease(Some("b")),
                "a",
                t0,
                t0 + Duration::from_secs(14),
                timing
            ),
            Decision::Follow
        );
        assert_eq!(
            decide(
                &lease(Some("b")),
                "a",
                t0,
                t0 + Duration::from_secs(15),
                timing
            ),
            Decision::Take
        );
    }

    #[test]
    fn a_round_never_outlasts_the_lease_it_holds() {
        let timing = Timing::new(Duration::from_secs(15));
        assert_eq!(timing.renew_deadline, Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(round_budget(None, t0, timing), Duration::from_secs(10));
        assert_eq!(
            round_budget(Some(t0 + Duration::from_secs(4)), t0, timing),
            Duration::from_secs(4),
            "leading: only until the Lease stops being surely ours"
        );
        assert_eq!(
            round_budget(Some(t0), t0 + Duration::from_secs(1), timing),
            Duration::ZERO
        );
    }

    #[test]
    fn retry_period_scales_with_duration() {
        assert_eq!(
            Timing::new(Duration::from_secs(15)).retry,
            Duration::from_secs(2)
        );
        assert_eq!(
            Timing::new(Duration::from_secs(3)).retry,
            Duration::from_millis(600)
        );
    }
}
