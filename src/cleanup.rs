//! `regcred cleanup`: removes every secret regcred manages and its ServiceAccount references.

use clap::Args;

use crate::{Error, Exit};

#[derive(Args, Clone, Debug)]
pub struct CleanupArgs {}

#[allow(clippy::unused_async)] // Not implemented yet; the real mode awaits.
pub async fn run(_args: &CleanupArgs) -> Result<Exit, Error> {
    Err(Error::Other("cleanup is not implemented yet".into()))
}
