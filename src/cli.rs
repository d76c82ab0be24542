//! The command line: one subcommand per mode, and dispatch to it.

use clap::{Parser, Subcommand};

use crate::telemetry::LogArgs;
use crate::{Error, Exit};

/// Keeps Kubernetes image-pull secrets for private Amazon ECR registries valid.
#[derive(Parser, Debug)]
#[command(name = "regcred", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// The controller: keeps every selected namespace's pull secret valid, forever.
    Run(crate::controller::RunArgs),
    /// One full reconciliation pass over every selected namespace, then exit with a summary.
    Sync(crate::sync::SyncArgs),
    /// Print the .dockerconfigjson, or a Secret manifest, for the configured registries.
    Render(crate::render::RenderArgs),
    /// Kubelet image credential provider (credentialprovider.kubelet.k8s.io/v1).
    CredentialProvider(crate::provider::ProviderArgs),
    /// Preflight: configuration, AWS identity, tokens and Kubernetes permissions.
    Check(crate::check::CheckArgs),
    /// Remove every secret regcred manages, and its ServiceAccount references.
    Cleanup(crate::cleanup::CleanupArgs),
}

impl Command {
    /// The async runtime the mode needs.
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    }

    /// Runs the mode.
    pub async fn dispatch(self) -> Result<Exit, Error> {
        match self {
            Self::Sync(args) => crate::sync::run(&args).await,
            Self::Render(args) => crate::render::run(&args).await,
            Self::Run(args) => crate::controller::run(&args).await,
            Self::CredentialProvider(args) => crate::provider::run(&args).await,
            Self::Check(args) => crate::check::run(&args).await,
            Self::Cleanup(args) => crate::cleanup::run(&args).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
