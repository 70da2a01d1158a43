//! HTTP/1.1 on the client port (ALPN `http/1.1`): the bundled web client at
//! `/`, and WebSocket sessions at `/ws` that carry one 10bit packet per text
//! message through the same session code as a 10bit connection
//! ([`crate::conn::run_session`]). The origin policy and the HTTP phase's
//! deadlines live here; nothing in `session/` knows about HTTP.

mod assets;
pub mod origin;
mod routes;
mod socket;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_io_timeout::TimeoutStream;
use tokio_rustls::server::TlsStream;
use tracing::info;

use crate::conn::readahead::ReadAhead;
use crate::proto::ErrorCode;
use crate::server::Shared;
use crate::tls::plaintext::SmallSlices;

/// Largest request head read (request line and headers): a browser's are
/// a few KiB; hyper's floor is 8 KiB.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Serves HTTP on a connection that negotiated `http/1.1` until it closes or
/// upgrades, then runs the WebSocket session in this same task (so it holds
/// its place in the connection limits). `refusal` answers every request 503.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    tls: SmallSlices<TlsStream<ReadAhead<TcpStream>>>,
    peer: SocketAddr,
    conn_id: u64,
    refusal: Option<ErrorCode>,
) {
    let counted = shared.session_ctx.metrics.connection("http");
    // The service leaves a pending upgrade here; hyper hands the connection
    // over to it once the response is written.
    let upgrade: Arc<Mutex<Option<routes::Pending>>> = Arc::default();
    let service = {
        let (shared, upgrade) = (shared.clone(), upgrade.clone());
        service_fn(move |req| {
            let response = routes::respond(&shared, &upgrade, refusal, req);
            async move { Ok::<_, Infallible>(response) }
        })
    };
    // hyper times only the wait for a request head: a client that sends
    // requests and never reads the answers would hold its connection (and
    // its place in the limits) forever, blocked in a write. Every write now
    // has `write_timeout_ms`, as a 10bit connection's writer does.
    let mut io = TimeoutStream::new(tls);
    io.set_write_timeout(Some(shared.config.limits.write_timeout()));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // Runs whenever hyper waits for a request head, between requests too:
        // slow-header clients and idle keep-alive connections are cut.
        .header_read_timeout(shared.config.web.header_timeout())
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(refusal.is_none());
    let conn = builder
        .serve_connection(TokioIo::new(Box::pin(io)), service)
        .with_upgrades();
    tokio::pin!(conn);
    // A connection that has not upgraded within the login timeout is
    // closed, as a 10bit connection that has not logged in is: requests
    // spaced under the header deadline would otherwise keep it forever.
    let deadline = tokio::time::sleep(shared.config.limits.login_timeout());
    tokio::pin!(deadline);
    let served = tokio::select! {
        r = conn.as_mut() => r,
        _ = &mut deadline => {
            conn.as_mut().graceful_shutdown();
            let write_timeout = shared.config.limits.write_timeout();
            let _ = tokio::time::timeout(write_timeout, conn.as_mut()).await;
            info!(reason = "http login timeout", "connection closed");
            return;
        }
        _ = shared.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                r = conn.as_mut() => r,
                _ = shared.hard_stop.cancelled() => return,
            }
        }
    };
    if let Err(e) = served {
        let reason = if e.is_timeout() {
            "http header timeout"
        } else if is_write_timeout(&e) {
            "http write timeout"
        } else {
            "http error"
        };
        info!(reason, error = %e, "connection closed");
        return;
    }
    let pending = upgrade.lock().ok().and_then(|mut slot| slot.take());
    let Some(pending) = pending else {
        info!(reason = "http done", "connection closed");
        return;
    };
    drop(counted);
    match pending.on.await {
        Ok(upgraded) if pending.accepted => {
            Box::pin(socket::run(&shared, upgraded, peer, conn_id)).await;
        }
        // An upgrade refused (403, 400, 426): hyper left the connection to
        // us, so it gets its TLS close_notify here.
        Ok(upgraded) => {
            let timeout = shared.config.limits.write_timeout();
            let _ = tokio::time::timeout(timeout, TokioIo::new(upgraded).shutdown()).await;
            info!(reason = "upgrade refused", "connection closed");
        }
        Err(e) => info!(reason = "websocket upgrade failed", error = %e, "connection closed"),
    }
}

/// True when hyper failed because a write outlasted `write_timeout_ms`
/// (the I/O error [`TimeoutStream`] gives).
fn is_write_timeout(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::TimedOut;
        }
        source = err.source();
    }
    false
}
