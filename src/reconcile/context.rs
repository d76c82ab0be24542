//! What executing a plan needs ([`Context`]), and what it tells a caller that caches the
//! cluster of each write it made ([`Written`]).

use k8s_openapi::api::core::v1::{Secret, ServiceAccount};

use super::TokenView;
use super::plan::Freshness;
use crate::config::Config;
use crate::events::Events;
use crate::lease::Permit;
use crate::metrics::Metrics;
use crate::secrets::Writer;

/// What a write left in the cluster, for a caller that keeps a cache of it: the controller
/// takes its own writes in at once, so a reconciliation that follows before their watch
/// events does not act on what they replaced (a conflict, a read and a write more).
#[derive(Clone, Copy, Debug)]
pub enum Written<'a> {
    /// Created (`over` is `None`) or written over that resourceVersion.
    Secret {
        secret: &'a Secret,
        over: Option<&'a str>,
    },
    /// Deleted at that resourceVersion.
    SecretGone {
        namespace: &'a str,
        name: &'a str,
        resource_version: Option<&'a str>,
    },
    /// Patched over that resourceVersion.
    ServiceAccount {
        account: &'a ServiceAccount,
        over: Option<&'a str>,
    },
}

/// Everything execution needs, shared by every namespace of a pass.
#[derive(Clone)]
pub struct Context<'a> {
    pub client: &'a kube::Client,
    pub writer: &'a Writer,
    pub config: &'a Config,
    pub tokens: &'a TokenView,
    pub freshness: Freshness,
    pub dry_run: bool,
    pub metrics: Option<&'a Metrics>,
    pub events: Option<&'a Events>,
    /// Whether and for how long each write may be made (the controller's leadership).
    pub permit: &'a Permit,
    /// Told of every write made, when set.
    pub written: Option<&'a (dyn Fn(Written<'_>) + Send + Sync)>,
}

impl Context<'_> {
    pub(super) fn note(&self, written: Written<'_>) {
        if let Some(tell) = self.written {
            tell(written);
        }
    }
}

impl std::fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("freshness", &self.freshness)
            .field("dry_run", &self.dry_run)
            .finish_non_exhaustive()
    }
}
