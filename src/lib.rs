//! regcred keeps Kubernetes image-pull secrets for private Amazon ECR registries valid.
//!
//! One binary, several modes (see [`cli::Command`]); this library holds all of it so tests
//! reach every piece. Desired state is computed by pure functions (`dockerconfig`,
//! `formats`, `secrets`, `reconcile::plan`, `serviceaccounts`); I/O stays in thin layers
//! around them.

pub mod admin;
pub mod check;
pub mod cleanup;
pub mod cli;
pub mod config;
pub mod controller;
pub mod dockerconfig;
pub mod ecr;
pub mod events;
pub mod formats;
pub mod k8s;
pub mod lease;
pub mod metrics;
pub mod namespaces;
pub mod provider;
pub mod reconcile;
pub mod refresher;
pub mod registry;
pub mod render;
pub mod secrets;
pub mod serviceaccounts;
pub mod sync;
pub mod telemetry;
pub mod token_cache;
pub mod webhook;

use std::io::Write;

/// How a mode ended, as the process exit code of the spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Everything succeeded.
    Ok = 0,
    /// The work partly or wholly failed; what succeeded stays done.
    Failed = 1,
    /// Bad usage or configuration, found before anything was written.
    Usage = 2,
}

/// Why a mode could not do its work at all.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] config::Error),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Kube(#[from] k8s::Error),
    #[error(transparent)]
    Token(#[from] ecr::Error),
    #[error("write to stdout: {0}")]
    Stdout(#[from] std::io::Error),
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// The exit code this error ends the process with.
    #[must_use]
    pub fn exit(&self) -> Exit {
        match self {
            Self::Config(_) | Self::Usage(_) => Exit::Usage,
            _ => Exit::Failed,
        }
    }
}

/// An error and its causes on one line (`outer: cause: root cause`), for reports and logs
/// that carry errors as text.
#[must_use]
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
        source = source.and_then(std::error::Error::source);
    }
    text
}

/// Writes a result to stdout (the only place results go).
pub fn write_stdout(out: &mut impl Write, text: &str) -> std::io::Result<()> {
    out.write_all(text.as_bytes())?;
    out.flush()
}
