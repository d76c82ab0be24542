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
    /// Print the .dockerconfigjson, or Secret manifests in any format, for the configured registries.
    Render(crate::render::RenderArgs),
    /// Kubelet image credential provider (credentialprovider.kubelet.k8s.io/v1).
    ///
    /// A drop-in for ecr-credential-provider: reads a CredentialProviderRequest on stdin and
    /// prints a CredentialProviderResponse for the image's ECR or ECR Public registry. List it
    /// in kubelet's --image-credential-provider-config (see
    /// deploy/kubelet/credential-provider-config.yaml). AWS credentials come from the default
    /// chain: the config's env: list, kubelet's environment, instance metadata.
    CredentialProvider(crate::provider::ProviderArgs),
    /// Preflight: configuration, AWS identity, tokens and Kubernetes permissions.
    ///
    /// One ✓/✗ row per check, with a hint under each ✗. Kubernetes permissions are asked with
    /// SelfSubjectAccessReview as the identity regcred runs as. Exit 0 when all pass, 1 when
    /// any fails, 2 when the configuration is bad.
    Check(crate::check::CheckArgs),
    /// Remove every secret regcred manages, and its ServiceAccount references.
    ///
    /// Removes every secret with the label app.kubernetes.io/managed-by=regcred, in every
    /// namespace, and its entries in ServiceAccounts' imagePullSecrets. Secrets regcred did
    /// not create, and other imagePullSecrets entries, are left alone. A secret regcred
    /// adopted that still holds other registries' entries is given back to its owner with
    /// those entries (regcred's label, annotations and entries removed) instead of deleted.
    ///
    /// Run it as a cluster admin (or an identity that may list, get and delete secrets and
    /// get, list and patch ServiceAccounts in every namespace), not as the chart's
    /// ServiceAccount: that one may read only secrets of the configured names. Stop the
    /// controller first, or it writes the secrets again.
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
