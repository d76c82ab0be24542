//! The admin server: `/livez`, `/readyz` and `/metrics`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::sync::watch;

use crate::metrics::Metrics;

/// What readiness is made of; the controller sets the parts.
#[derive(Debug, Default)]
pub struct Health {
    /// The first full reconciliation since this replica started leading is done (standbys:
    /// their caches are filled).
    pub reconciled: AtomicBool,
    /// Every token at hand is unexpired (standbys hold none and count as fresh).
    pub tokens_fresh: AtomicBool,
    /// A shutdown signal arrived.
    pub stopping: AtomicBool,
    /// The admission webhook is on but has no certificate to serve yet.
    pub webhook_pending: AtomicBool,
    /// What cannot be served and why (a watch regcred may not make), when something cannot.
    problem: Mutex<Option<String>>,
}

impl Health {
    #[must_use]
    pub fn ready(&self) -> bool {
        self.reconciled.load(Ordering::Relaxed)
            && self.tokens_fresh.load(Ordering::Relaxed)
            && !self.stopping.load(Ordering::Relaxed)
            && !self.webhook_pending.load(Ordering::Relaxed)
            && self.problem().is_none()
    }

    pub fn set_problem(&self, problem: Option<String>) {
        *self
            .problem
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = problem;
    }

    fn problem(&self) -> Option<String> {
        self.problem
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Why it is not ready, for the `/readyz` body.
    #[must_use]
    pub fn reason(&self) -> String {
        if self.stopping.load(Ordering::Relaxed) {
            "shutting down".into()
        } else if let Some(problem) = self.problem() {
            problem
        } else if !self.reconciled.load(Ordering::Relaxed) {
            "first full reconciliation not finished".into()
        } else if !self.tokens_fresh.load(Ordering::Relaxed) {
            "a registry token is expired or missing".into()
        } else if self.webhook_pending.load(Ordering::Relaxed) {
            "the admission webhook has no certificate yet".into()
        } else {
            "ok".into()
        }
    }
}

#[derive(Clone)]
struct AppState {
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

/// Binds the admin address (fails early on a taken port).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Serves until `shutdown` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(AppState { health, metrics });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let status = if state.health.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, format!("{}\n", state.health.reason()))
}

async fn metrics_text(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}
