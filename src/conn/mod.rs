//! One client connection, from accepted TCP socket to close: TLS handshake
//! under a deadline, ALPN, then a reader loop (this task) and a writer task
//! joined by the outbound queue.

pub mod framing;
pub mod gzip;
pub mod readahead;
pub mod reader;
pub mod writer;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until};
use tokio_rustls::server::TlsStream;
use tracing::{Instrument, debug, field, info, info_span};

use crate::proto::{ErrorCode, reply};
use crate::router::Outbound;
use crate::server::Shared;
use crate::session::{Outcome, Session};
use crate::tls::Alpn;
use framing::Span;
use readahead::ReadAhead;
use reader::FrameReader;
use writer::WriterConfig;

/// Runs a connection to its end. `refusal` is set when the server is over a
/// connection limit: the client is told why after the handshake, then closed.
pub async fn run(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    conn_id: u64,
    refusal: Option<ErrorCode>,
) {
    let span = info_span!("conn", id = conn_id, %peer, alpn = field::Empty, account = field::Empty);
    serve(shared, tcp, peer, conn_id, refusal)
        .instrument(span)
        .await;
}

async fn serve(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    conn_id: u64,
    refusal: Option<ErrorCode>,
) {
    let limits = &shared.config.limits;
    let _ = tcp.set_nodelay(true);
    // Boxed, like every large and rare step: a task is as big as its largest
    // state for its whole life, and most connections spend it idle.
    let Some((alpn, rd, wr)) = Box::pin(handshake(&shared, tcp)).await else {
        return;
    };
    let (out, rx, closer) = Outbound::channel(limits.max_sendq_packets, limits.max_sendq_bytes);
    let writer_cfg = WriterConfig {
        gzip_level: (alpn == Alpn::Gzip).then_some(shared.config.tls.gzip_level),
        write_timeout: limits.write_timeout(),
    };
    let writer = tokio::spawn(
        writer::run(wr, rx, closer.clone(), shared.hard_stop.clone(), writer_cfg)
            .instrument(tracing::Span::current()),
    );

    let reason = if let Some(code) = refusal {
        let _ = out.push(&reply::bye(code, refusal_message(code)));
        let _ = out.push_close();
        code.as_str().to_owned()
    } else {
        info!("connection open");
        let ctx = &shared.session_ctx;
        let _ = out.push(&reply::welcome(
            &ctx.server_name,
            &ctx.auth_methods,
            alpn.name(),
        ));
        let mut frames = FrameReader::new(rd, alpn == Alpn::Gzip, limits.max_line_bytes)
            .limit_silent(limits.silent_bytes_per_second, limits.silent_burst_bytes);
        let reason = read_loop(&shared, &mut frames, &out, conn_id, peer.ip()).await;
        let _ = out.push_close();
        reason
    };
    drop(out);
    let ended = writer.await.ok();
    let reason = match closer.reason() {
        Some((code, _)) => code.as_str().to_owned(),
        None => reason,
    };
    let writer = ended.map_or("panicked", writer::Ended::as_str);
    info!(reason = %reason, writer, "connection closed");
}

/// TLS and ALPN under the handshake deadline; the stream comes back split
/// (the whole TLS state moves into the halves' shared allocation), or `None`
/// once the failure is logged.
async fn handshake(
    shared: &Shared,
    tcp: TcpStream,
) -> Option<(
    Alpn,
    ReadHalf<TlsStream<ReadAhead<TcpStream>>>,
    WriteHalf<TlsStream<ReadAhead<TcpStream>>>,
)> {
    let deadline = shared.config.limits.handshake_timeout();
    let tls =
        match tokio::time::timeout(deadline, shared.acceptor.accept(ReadAhead::new(tcp))).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                info!(reason = "tls handshake failed", error = %e, "connection closed");
                return None;
            }
            Err(_) => {
                info!(reason = "tls handshake timeout", "connection closed");
                return None;
            }
        };
    // rustls already refused offers we do not speak, so this is always Some.
    let Some(alpn) = Alpn::from_negotiated(tls.get_ref().1.alpn_protocol()) else {
        info!(reason = "unknown alpn", "connection closed");
        return None;
    };
    tracing::Span::current().record("alpn", alpn.name());
    let (rd, wr) = tokio::io::split(tls);
    Some((alpn, rd, wr))
}

/// Ends a session that sent too much input needing no reply.
fn silent_input(out: &Outbound) -> String {
    let _ = out.push(&reply::bye(
        ErrorCode::RateSilentInput,
        "too much input that needs no reply (blank lines, pong)",
    ));
    "too much silent input".into()
}

fn refusal_message(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::ServerPerIpLimit => "too many connections from your address",
        _ => "the server is full",
    }
}

/// Reads and handles packets until the session ends; returns the reason.
async fn read_loop<R>(
    shared: &Shared,
    frames: &mut FrameReader<R>,
    out: &Outbound,
    conn_id: u64,
    peer_ip: std::net::IpAddr,
) -> String
where
    R: tokio::io::AsyncRead + Unpin,
{
    let mut session = Session::new(&shared.session_ctx, out.clone(), conn_id, peer_ip);
    let reason = serve_session(shared, frames, out, &mut session).await;
    // Messages already committed are relayed whatever ended the session:
    // others must see what the store kept.
    session.finish().await;
    reason
}

/// The session's read loop; returns why it ended.
async fn serve_session<R>(
    shared: &Shared,
    frames: &mut FrameReader<R>,
    out: &Outbound,
    session: &mut Session<'_>,
) -> String
where
    R: tokio::io::AsyncRead + Unpin,
{
    let limits = &shared.config.limits;
    let login_deadline = Instant::now() + limits.login_timeout();
    let mut last_rx = Instant::now();
    // A packet came in since the loop last waited: `last_rx` is set when
    // the input runs dry, one clock read per burst rather than per packet.
    let mut heard = false;
    let mut pinged = false;
    // Made once, not per packet: a timer registered and a token waited on
    // anew for every packet were a tenth of the pairs profile. The timer
    // is only moved earlier; when it fires, the deadlines are checked
    // against the latest packet and it is re-armed.
    let closed = out.closer().closed();
    let shutdown = shared.shutdown.cancelled();
    let timer = sleep_until(login_deadline);
    tokio::pin!(closed, shutdown, timer);
    loop {
        // Lines already read are handled without waiting; only when the
        // input runs dry does the loop deliver what the burst gathered and
        // wait for the peer, the timers and the closers. Lines are lent: the
        // loop holds where a line is and reads it from the reader.
        let frame = match frames.buffered_span() {
            Some(span) => Ok(Some(span)),
            None => {
                if let Outcome::Close(reason) = session.flush_burst() {
                    return reason.as_str().into();
                }
                if std::mem::take(&mut heard) {
                    last_rx = Instant::now();
                }
                let idle_at = last_rx + limits.idle_timeout();
                let ping_at = last_rx + limits.keepalive_interval();
                let mut wake = idle_at;
                if !pinged {
                    wake = wake.min(ping_at);
                }
                if session.account().is_none() {
                    wake = wake.min(login_deadline);
                }
                if wake < timer.deadline() || timer.is_elapsed() {
                    timer.as_mut().reset(wake);
                }
                tokio::select! {
                    biased;
                    _ = &mut closed => return "forced close".into(),
                    _ = &mut shutdown => {
                        let _ = out.push(&reply::bye(ErrorCode::ServerShutdown, "the server is shutting down"));
                        return "server shutdown".into();
                    }
                    _ = &mut timer => {
                        let now = Instant::now();
                        if session.account().is_none() && now >= login_deadline {
                            let _ = out.push(&reply::bye(ErrorCode::SessionLoginTimeout, "no login before the deadline"));
                            return "login timeout".into();
                        }
                        if now >= idle_at {
                            let _ = out.push(&reply::bye(ErrorCode::SessionIdleTimeout, "no packet from the client for too long"));
                            return "idle timeout".into();
                        }
                        if !pinged && now >= ping_at {
                            pinged = true;
                            let _ = out.push(&reply::ping());
                        }
                        continue;
                    }
                    outcome = session.complete_next(), if session.has_inflight() => {
                        if let Outcome::Close(reason) = outcome {
                            return reason.as_str().into();
                        }
                        continue;
                    }
                    frame = frames.next_span() => frame,
                }
            }
        };
        let outcome = match frame {
            Ok(Some(Span::Line(range))) => {
                heard = true;
                pinged = false;
                let line = frames.line(range);
                let len = line.len();
                debug!(bytes = len, "packet in");
                // Not boxed: `handle_line` boxes the large handler states
                // itself, so what it adds to every connection is small.
                let outcome = session.handle_line(line).await;
                if outcome == Outcome::Silent && frames.charge_silent(len + 1).is_err() {
                    return silent_input(out);
                }
                outcome
            }
            Ok(Some(Span::TooLong)) => {
                heard = true;
                pinged = false;
                Box::pin(session.handle_too_long()).await
            }
            Ok(None) => return "client closed".into(),
            Err(reader::Error::Gzip(e)) => {
                let _ = out.push(&reply::bye(ErrorCode::TransportBadGzip, e.to_string()));
                return "bad gzip stream".into();
            }
            Err(reader::Error::Io(e)) => return format!("read error: {e}"),
            Err(reader::Error::Silent) => return silent_input(out),
        };
        if let Outcome::Close(reason) = outcome {
            return reason.as_str().into();
        }
    }
}
