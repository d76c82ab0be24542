//! Leader election through a `coordination.k8s.io` Lease: every replica watches, only the
//! holder of the Lease writes.
//!
//! Expiry is judged by local observation, as client-go does: a Lease whose record has not
//! changed for its whole duration, as seen by this replica's own clock, is free to take.
//! Clocks of different nodes are never compared.

use std::time::{Duration, Instant};

use clap::Args;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;

use crate::secrets::API_TIMEOUT;

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
    /// How often the holder renews and the others look.
    pub retry: Duration,
}

impl Timing {
    #[must_use]
    pub fn new(duration: Duration) -> Self {
        Self {
            duration,
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

/// Runs the election until `shutdown` fires, publishing whether this replica leads (the
/// first outcome always, later ones when they change). On shutdown the Lease is released,
/// so another replica takes over at once.
pub async fn run(
    client: kube::Client,
    namespace: &str,
    name: &str,
    me: &str,
    timing: Timing,
    leading: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, namespace);
    let mut seen: Seen = None;
    let mut last_renewal = Instant::now();
    let mut first = true;
    loop {
        let outcome =
            tokio::time::timeout(API_TIMEOUT, step(&api, name, me, timing, &mut seen)).await;
        let now_leading = match outcome {
            Ok(Ok(lead)) => {
                if lead {
                    last_renewal = Instant::now();
                }
                lead
            }
            Ok(Err(e)) => {
                tracing::warn!(lease = name, namespace, error = %crate::chain(&e), "leader election");
                // Keep leading through brief API trouble, but never past the Lease's duration
                // (less a margin), after which another replica may take it.
                *leading.borrow() && last_renewal.elapsed() < timing.duration * 2 / 3
            }
            Err(_) => *leading.borrow() && last_renewal.elapsed() < timing.duration * 2 / 3,
        };
        if *leading.borrow() != now_leading {
            tracing::info!(
                lease = name,
                namespace,
                identity = me,
                leading = now_leading,
                "leadership changed"
            );
            let _ = leading.send(now_leading);
        } else if first {
            // Announced even when it stays `false`: until the first answer nobody knows
            // whether this replica is a standby (readiness waits for it).
            let _ = leading.send(now_leading);
        }
        first = false;
        tokio::select! {
            () = tokio::time::sleep(timing.retry) => {}
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
    }
    if *leading.borrow() {
        let _ = leading.send(false);
        if let Err(e) = tokio::time::timeout(API_TIMEOUT, release(&api, name, me))
            .await
            .unwrap_or(Ok(()))
        {
            tracing::warn!(lease = name, error = %crate::chain(&e), "could not release the Lease");
        } else {
            tracing::info!(lease = name, "released the Lease");
        }
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

/// Gives the Lease up (empties its holder) if we still hold it.
async fn release(api: &Api<Lease>, name: &str, me: &str) -> Result<(), kube::Error> {
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
