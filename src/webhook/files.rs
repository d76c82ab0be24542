//! The serving certificate from files (`--webhook-cert-dir`), for a certificate another
//! tool keeps — cert-manager's Certificate mounted from its Secret, with its CA injector
//! filling the webhook configuration's `caBundle`. regcred then writes neither.
//!
//! Kubelet swaps a mounted Secret's files at once (a symlink flip); they are read every
//! few seconds, and a pair read mid-change (a certificate without its key) is simply
//! tried again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use secrecy::SecretString;
use tokio::sync::watch;

use super::pki::Pair;
use super::server::CertSlot;
use crate::admin::Health;

/// How often the files are read again.
pub const POLL: Duration = Duration::from_secs(2);

fn read(dir: &Path) -> std::io::Result<Pair> {
    Ok(Pair {
        cert: std::fs::read_to_string(dir.join("tls.crt"))?,
        key: SecretString::from(std::fs::read_to_string(dir.join("tls.key"))?),
    })
}

/// Serves `DIR/tls.crt` with `DIR/tls.key`, and every new version of them, until `stop`.
pub async fn watch(
    dir: PathBuf,
    slot: Arc<CertSlot>,
    health: Arc<Health>,
    mut stop: watch::Receiver<bool>,
) {
    let mut complained = false;
    loop {
        match read(&dir) {
            Ok(pair) => match slot.set(&pair) {
                Ok(true) => {
                    tracing::info!(dir = %dir.display(), "serving the webhook certificate from files");
                    complained = false;
                }
                Err(e) if !complained => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot serve the webhook certificate files; trying again");
                    complained = true;
                }
                Ok(false) | Err(_) => {}
            },
            Err(e) if !complained => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot read tls.crt and tls.key; trying again");
                complained = true;
            }
            Err(_) => {}
        }
        if slot.is_loaded() {
            health.webhook_pending.store(false, Ordering::Relaxed);
        }
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
