//! What a leadership term starts: readiness, the ledger following leadership, and the look
//! for ServiceAccounts outside the configured names that hold regcred's references.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::watch;

use crate::lease::Leadership;

use super::namespace::Ctx;
use super::queue::Queue;
use super::watches::until_usable;

/// Readiness for what this replica is, once the election has answered: a standby is ready
/// once its caches are filled; a leader once it has reconciled every namespace in this
/// term. The ledger follows leadership here too: a new term starts from nothing, a standby
/// keeps nothing and exports no selection. A new term also looks for ServiceAccounts outside
/// the configured names that hold regcred's references.
pub(super) async fn readiness(
    ctx: Arc<Ctx>,
    queue: Arc<Queue>,
    mut leading: watch::Receiver<Leadership>,
) {
    // Every replica looks like a standby until the election first answers; one that is
    // about to lead must not report ready before it has reconciled anything.
    if leading.changed().await.is_err() {
        return;
    }
    until_usable(&ctx.watches, ctx.namespaces.watch, &ctx.stop).await;
    let mut sweeping: Option<tokio::task::JoinHandle<()>> = None;
    // The term swept: once per term, whoever started it in the ledger (a fast first pass
    // notes its term before this loop sees it, and `follow` then says nothing started).
    let mut swept: Option<u64> = None;
    loop {
        let now = *leading.borrow_and_update();
        {
            let mut ledger = ctx.ledger();
            // A replica that already leads may have reconciled (and noted) a whole small
            // first pass meanwhile: the same term is not started over.
            let started = ledger.follow(now);
            if started || !now.is_leading() {
                ctx.health
                    .reconciled
                    .store(!now.is_leading(), Ordering::Relaxed);
            }
            let unswept = match now {
                Leadership::Leading { term } => swept != Some(term),
                Leadership::Standby => false,
            };
            if started || unswept {
                if let Some(s) = sweeping.take() {
                    s.abort();
                }
                if let Some(tended) = &ctx.service_accounts {
                    tended.clear();
                }
                if let Leadership::Leading { term } = now {
                    swept = Some(term);
                    sweeping = Some(tokio::spawn(sweep(ctx.clone(), queue.clone(), term)));
                }
            }
            ctx.metrics.namespaces_selected(ledger.selected());
            ctx.metrics.namespaces_tracked(ledger.tracked());
        }
        if leading.changed().await.is_err() {
            return;
        }
    }
}

/// Finds the ServiceAccounts outside the configured names that hold regcred's references
/// (see [`accounts`]) once in a term, retrying with the refresh backoff, and reconciles
/// their namespaces.
async fn sweep(ctx: Arc<Ctx>, queue: Arc<Queue>, term: u64) {
    use rand::Rng as _;
    let Some(tended) = &ctx.service_accounts else {
        return;
    };
    let secrets = ctx.config.managed_names();
    let mut failures = 0;
    loop {
        if ctx.election.fence().is_none_or(|f| f.term() != term) || *ctx.stop.borrow() {
            return;
        }
        match tended.sweep(&ctx.client, &secrets).await {
            Ok(namespaces) => {
                if !namespaces.is_empty() {
                    tracing::info!(
                        namespaces = namespaces.len(),
                        "ServiceAccounts outside the configured names hold references regcred added; removing them"
                    );
                }
                queue.trigger_all(namespaces.into_iter().map(Arc::from));
                return;
            }
            Err(e) => {
                failures += 1;
                let delay = crate::refresher::backoff(
                    &ctx.config.refresh,
                    failures,
                    rand::rng().random::<f64>(),
                );
                if failures == 1 {
                    tracing::warn!(error = %e, retry_in = ?delay, "cannot list ServiceAccounts to find references regcred added outside the configured names; retrying");
                } else {
                    tracing::debug!(error = %e, retry_in = ?delay, "ServiceAccount sweep failed again");
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}
