//! The operator's listener: `/metrics` (Prometheus text format) and
//! `/healthz`, plain HTTP on its own address (loopback by default), never
//! on the client port. Off unless `ops.enabled`.

pub mod metrics;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

pub use metrics::Metrics;

/// How long an operator's request head may take (a scraper sends it at once).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `/metrics` and `/healthz` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    let mut accepting = crate::accept::Accepting::new(&listener, &shutdown, "ops");
    while let Some((tcp, peer)) = accepting.next().await {
        let metrics = metrics.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let service = service_fn(move |req| {
                let r = respond(&metrics, &req);
                async move { Ok::<_, Infallible>(r) }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let conn = builder.serve_connection(TokioIo::new(tcp), service);
            tokio::pin!(conn);
            let served = tokio::select! {
                r = conn.as_mut() => r,
                _ = shutdown.cancelled() => return,
            };
            if let Err(e) = served {
                debug!(%peer, error = %e, "ops connection failed");
            }
        });
    }
    tracker.close();
    tracker.wait().await;
}

fn respond<B>(metrics: &Metrics, req: &Request<B>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match req.uri().path() {
        "/metrics" => {
            let mut r = text(StatusCode::OK, metrics.encode());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        "/healthz" if metrics.is_ready() => text(StatusCode::OK, "ok\n".into()),
        "/healthz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into()),
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
