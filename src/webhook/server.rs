//! The webhook's HTTPS server: rustls with the certificate of the moment, HTTP/1.1 (what
//! the API server speaks to a Service-backed webhook), and a shutdown that loses no request.
//!
//! On the first signal the server keeps answering for `--webhook-shutdown-delay` while the
//! replica, no longer ready, leaves the Service's endpoints; every answer in that time
//! says `Connection: close`, so the API server opens its next connection elsewhere. Then it
//! stops accepting and lets requests in flight finish.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONNECTION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::Admit;
use super::pki::{self, Pair};

/// The path the webhook configuration calls.
pub const PATH: &str = "/mutate";
/// Larger than any pod the API server stores (1.5 MiB by default) in its review.
const MAX_BODY: usize = 3 << 20;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long requests in flight may take to finish after the drain.
const FINISH_TIMEOUT: Duration = Duration::from_secs(3);

/// The serving certificate of the moment; every new TLS handshake takes the latest.
#[derive(Default)]
pub struct CertSlot {
    current: RwLock<Option<(String, Arc<rustls::sign::CertifiedKey>)>>,
}

impl std::fmt::Debug for CertSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertSlot")
    }
}

impl CertSlot {
    /// Serves this certificate from the next handshake on. `Ok(true)` when it changed.
    pub fn set(&self, pair: &Pair) -> pki::Result<bool> {
        if self.serves(&pair.cert) {
            return Ok(false);
        }
        let key = pki::certified_key(pair, "webhook serving certificate")?;
        *self.current.write().expect("not poisoned") = Some((pair.cert.clone(), key));
        Ok(true)
    }

    /// Whether this certificate (PEM) is the one served.
    #[must_use]
    pub fn serves(&self, cert: &str) -> bool {
        self.current
            .read()
            .expect("not poisoned")
            .as_ref()
            .is_some_and(|(c, _)| c == cert)
    }

    #[must_use]
    pub fn is_loaded(&self) -> bool {
        self.current.read().expect("not poisoned").is_some()
    }
}

impl rustls::server::ResolvesServerCert for CertSlot {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.current
            .read()
            .expect("not poisoned")
            .as_ref()
            .map(|(_, key)| key.clone())
    }
}

/// Binds the webhook's address (fails early on a taken port).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves until `stop`, then drains for `drain` and lets requests in flight finish.
pub async fn serve(
    listener: TcpListener,
    slot: Arc<CertSlot>,
    admit: Arc<Admit>,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = match rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
    {
        Ok(builder) => builder.with_no_client_auth().with_cert_resolver(slot),
        Err(e) => {
            tracing::error!(error = %e, "cannot configure TLS for the webhook");
            return;
        }
    };
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let graceful = GracefulShutdown::new();
    let draining = Arc::new(AtomicBool::new(false));
    let accept = |stream: tokio::net::TcpStream| {
        let (acceptor, admit, draining) = (acceptor.clone(), admit.clone(), draining.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "webhook TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = hyper::service::service_fn(move |req| {
                let (admit, draining) = (admit.clone(), draining.clone());
                async move { Ok::<_, Infallible>(handle(req, &admit, &draining).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(error = %e, "webhook connection ended with an error");
            }
        });
    };
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => break,
        };
        match accepted {
            Ok((stream, _)) => accept(stream),
            Err(e) => {
                tracing::warn!(error = %e, "webhook accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    draining.store(true, Ordering::Relaxed);
    tracing::info!(drain = ?drain, "webhook: draining before it stops");
    let until = tokio::time::sleep(drain);
    tokio::pin!(until);
    loop {
        tokio::select! {
            accepted = listener.accept() => if let Ok((stream, _)) = accepted { accept(stream) },
            () = &mut until => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(FINISH_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "webhook: requests still in flight after {FINISH_TIMEOUT:?}; stopping anyway"
        );
    }
}

async fn handle(
    req: Request<Incoming>,
    admit: &Admit,
    draining: &AtomicBool,
) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::POST, PATH) => match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(body) => {
                let (status, text) = admit.review(&body.to_bytes()).await;
                let kind = if status == StatusCode::OK {
                    "application/json"
                } else {
                    "text/plain; charset=utf-8"
                };
                (status, kind, text)
            }
            Err(e) => {
                admit.malformed(&format!(
                    "request body unreadable or over {MAX_BODY} bytes: {e}"
                ));
                (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "text/plain; charset=utf-8",
                    format!("request body unreadable or over {MAX_BODY} bytes\n"),
                )
            }
        },
        (&Method::GET, "/livez") => (StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into()),
        (_, PATH) => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            format!("POST an admission.k8s.io/v1 AdmissionReview to {PATH}\n"),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            format!("not found; the webhook is at {PATH}\n"),
        ),
    };
    let mut response = Response::builder()
        .status(status)
        .header(CONTENT_TYPE, content_type);
    if draining.load(Ordering::Relaxed) {
        response = response.header(CONNECTION, "close");
    }
    response
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}
