//! `regcred check`: preflight of configuration, AWS identity, tokens and Kubernetes
//! permissions, as a table with hints.

use clap::Args;

use crate::config::ConfigArgs;
use crate::{Error, Exit};

#[derive(Args, Clone, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
}

#[allow(clippy::unused_async)] // Not implemented yet; the real mode awaits.
pub async fn run(_args: &CheckArgs) -> Result<Exit, Error> {
    Err(Error::Other("check is not implemented yet".into()))
}
