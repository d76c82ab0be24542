//! `regcred credential-provider`: the kubelet image credential provider
//! (`credentialprovider.kubelet.k8s.io/v1`), a drop-in for `ecr-credential-provider`.

use clap::Args;

use crate::{Error, Exit};

#[derive(Args, Clone, Debug)]
pub struct ProviderArgs {}

#[allow(clippy::unused_async)] // Not implemented yet; the real mode awaits.
pub async fn run(_args: &ProviderArgs) -> Result<Exit, Error> {
    Err(Error::Other(
        "credential-provider is not implemented yet".into(),
    ))
}
