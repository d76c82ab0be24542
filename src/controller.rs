//! `regcred run`: the controller that keeps every selected namespace's pull secret valid.

use std::net::SocketAddr;

use clap::Args;

use crate::config::ConfigArgs;
use crate::{Error, Exit};

#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Address of the admin server (/livez, /readyz, /metrics).
    #[arg(long, env = "REGCRED_ADMIN_ADDR", default_value = "0.0.0.0:8080", value_name = "ADDR")]
    pub admin_addr: SocketAddr,
    /// Namespace of the leader-election Lease (regcred's own namespace in a pod).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default", value_name = "NAMESPACE")]
    pub lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, env = "REGCRED_LEASE_NAME", default_value = "regcred", value_name = "NAME")]
    pub lease_name: String,
    /// This replica's identity in the Lease (the pod name in a pod; default the host name).
    #[arg(long, env = "POD_NAME", value_name = "NAME")]
    pub identity: Option<String>,
}

#[allow(clippy::unused_async)] // Not implemented yet; the real mode awaits.
pub async fn run(_args: &RunArgs) -> Result<Exit, Error> {
    Err(Error::Other("run is not implemented yet".into()))
}
