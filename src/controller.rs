//! `regcred run`: the controller that keeps every selected namespace's pull secret valid.

use clap::Args;

use crate::config::ConfigArgs;
use crate::{Error, Exit};

#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
}

#[allow(clippy::unused_async)] // Not implemented yet; the real mode awaits.
pub async fn run(_args: &RunArgs) -> Result<Exit, Error> {
    Err(Error::Other("run is not implemented yet".into()))
}
