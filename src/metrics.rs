//! The Prometheus registry and the metrics of the spec. Labels come from fixed categories
//! and configured registry hosts, never from error text or object names.

use std::sync::atomic::AtomicU64;

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RegistryLabel {
    registry: String,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum RefreshResult {
    Success,
    Failure,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefreshLabels {
    registry: String,
    result: RefreshResult,
}

/// What became of one secret in one pass.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum WriteResult {
    Created,
    Updated,
    Unchanged,
    Failed,
    Foreign,
}

/// What the admission webhook did with one request.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum WebhookResult {
    /// The pod got a pull secret reference.
    Injected,
    /// The pod was admitted as it was.
    Unchanged,
    /// The request could not be judged (malformed, or its namespace unknown); admitted as
    /// it was.
    Error,
}

impl WebhookResult {
    fn as_str(self) -> &'static str {
        match self {
            Self::Injected => "injected",
            Self::Unchanged => "unchanged",
            Self::Error => "error",
        }
    }
}

impl RefreshResult {
    fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }
}

impl WriteResult {
    fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Unchanged => "unchanged",
            Self::Failed => "failed",
            Self::Foreign => "foreign",
        }
    }
}

/// Label values in the spec's lower case.
macro_rules! label_value {
    ($($ty:ty),*) => {$(
        impl EncodeLabelValue for $ty {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
                encoder.write_str(self.as_str())
            }
        }
    )*};
}

label_value!(RefreshResult, WriteResult, WebhookResult);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WriteLabels {
    result: WriteResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    result: WebhookResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabel {
    resource: &'static str,
}

/// A gauge that can also be absent (no label set at all): what a standby exports for the
/// leader's gauges.
type Optional = Family<Vec<(String, String)>, Gauge>;

/// Every metric regcred exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    token_expiry: Family<RegistryLabel, Gauge<f64, AtomicU64>>,
    token_refreshes: Family<RefreshLabels, Counter>,
    secret_writes: Family<WriteLabels, Counter>,
    namespaces_selected: Optional,
    namespaces_tracked: Gauge,
    reconcile_duration: Histogram,
    leader: Gauge,
    webhook_requests: Family<WebhookLabels, Counter>,
    watch_healthy: Family<ResourceLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    #[must_use]
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let token_expiry = Family::<RegistryLabel, Gauge<f64, AtomicU64>>::default();
        let token_refreshes = Family::<RefreshLabels, Counter>::default();
        let secret_writes = Family::<WriteLabels, Counter>::default();
        let namespaces_selected = Optional::default();
        let namespaces_tracked = Gauge::default();
        let reconcile_duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let leader = Gauge::default();
        let webhook_requests = Family::<WebhookLabels, Counter>::default();
        let watch_healthy = Family::<ResourceLabel, Gauge>::default();
        registry.register(
            "regcred_token_expiry_timestamp_seconds",
            "When the current token of a registry expires (Unix seconds)",
            token_expiry.clone(),
        );
        registry.register(
            "regcred_token_refreshes",
            "Token fetches by registry and result",
            token_refreshes.clone(),
        );
        registry.register(
            "regcred_secret_writes",
            "Secrets examined, by what became of them",
            secret_writes.clone(),
        );
        registry.register(
            "regcred_namespaces_selected",
            "Namespaces regcred serves (leader only)",
            namespaces_selected.clone(),
        );
        registry.register(
            "regcred_namespaces_tracked",
            "Namespaces the controller keeps per-namespace state for; follows the namespaces that exist",
            namespaces_tracked.clone(),
        );
        registry.register(
            "regcred_reconcile_duration_seconds",
            "Time to bring one namespace in line",
            reconcile_duration.clone(),
        );
        registry.register(
            "regcred_leader",
            "1 on the replica that writes",
            leader.clone(),
        );
        registry.register(
            "regcred_webhook_requests",
            "Admission requests by what the webhook did",
            webhook_requests.clone(),
        );
        registry.register(
            "regcred_watch_healthy",
            "1 while every watch of that resource works, 0 while one fails (the log and a WatchFailed Event say why)",
            watch_healthy.clone(),
        );
        Self {
            registry,
            token_expiry,
            token_refreshes,
            secret_writes,
            namespaces_selected,
            namespaces_tracked,
            reconcile_duration,
            leader,
            webhook_requests,
            watch_healthy,
        }
    }

    pub fn token_refreshed(&self, registry: &str, result: RefreshResult) {
        self.token_refreshes
            .get_or_create(&RefreshLabels {
                registry: registry.to_owned(),
                result,
            })
            .inc();
    }

    pub fn token_expiry(&self, registry: &str, expires_at: jiff::Timestamp) {
        #[allow(clippy::cast_precision_loss)] // Unix seconds fit an f64 exactly for millennia.
        let seconds = expires_at.as_second() as f64;
        self.token_expiry
            .get_or_create(&RegistryLabel {
                registry: registry.to_owned(),
            })
            .set(seconds);
    }

    pub fn secret_write(&self, result: WriteResult) {
        self.secret_writes
            .get_or_create(&WriteLabels { result })
            .inc();
    }

    /// Stops exporting every registry's token expiry (a standby's would be stale).
    pub fn forget_token_expiries(&self) {
        self.token_expiry.clear();
    }

    /// Namespaces served; `None` stops exporting the gauge (a standby's would be stale).
    pub fn namespaces_selected(&self, n: Option<usize>) {
        match n {
            Some(n) => {
                self.namespaces_selected
                    .get_or_create(&Vec::new())
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            None => self.namespaces_selected.clear(),
        }
    }

    pub fn namespaces_tracked(&self, n: usize) {
        self.namespaces_tracked
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Whether every watch of `resource` (`namespaces`, `secrets`, `serviceaccounts`) works.
    pub fn watch_healthy(&self, resource: &'static str, healthy: bool) {
        self.watch_healthy
            .get_or_create(&ResourceLabel { resource })
            .set(i64::from(healthy));
    }

    pub fn reconcile_duration(&self, seconds: f64) {
        self.reconcile_duration.observe(seconds);
    }

    pub fn leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    pub fn webhook_request(&self, result: WebhookResult) {
        self.webhook_requests
            .get_or_create(&WebhookLabels { result })
            .inc();
    }

    /// The OpenMetrics text exposition.
    #[must_use]
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_the_spec_names() {
        let m = Metrics::new();
        m.token_refreshed("public.ecr.aws", RefreshResult::Success);
        m.token_expiry("public.ecr.aws", "2026-11-29T12:00:00Z".parse().unwrap());
        m.secret_write(WriteResult::Foreign);
        m.namespaces_selected(Some(3));
        m.namespaces_tracked(7);
        m.reconcile_duration(0.01);
        m.leader(true);
        m.webhook_request(WebhookResult::Injected);
        m.watch_healthy("serviceaccounts", false);
        let text = m.encode();
        for want in [
            "regcred_token_expiry_timestamp_seconds{registry=\"public.ecr.aws\"} 1795953600",
            "regcred_token_refreshes_total{registry=\"public.ecr.aws\",result=\"success\"} 1",
            "regcred_secret_writes_total{result=\"foreign\"} 1",
            "regcred_namespaces_selected 3",
            "regcred_reconcile_duration_seconds_count 1",
            "regcred_leader 1",
            "regcred_webhook_requests_total{result=\"injected\"} 1",
            "regcred_namespaces_tracked 7",
            "regcred_watch_healthy{resource=\"serviceaccounts\"} 0",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }

    #[test]
    fn a_standby_exports_no_token_expiry_and_no_selection() {
        let m = Metrics::new();
        m.token_expiry("public.ecr.aws", "2026-11-29T12:00:00Z".parse().unwrap());
        m.namespaces_selected(Some(3));
        m.forget_token_expiries();
        m.namespaces_selected(None);
        let text = m.encode();
        for gone in [
            "regcred_token_expiry_timestamp_seconds{",
            "regcred_namespaces_selected ",
        ] {
            assert!(!text.contains(gone), "{gone:?} still in\n{text}");
        }
    }
}
