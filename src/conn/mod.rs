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

use rustls::server::Acceptor;
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until};
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::{Instrument, debug, field, info, info_span};

use crate::proto::{ErrorCode, reply};
use crate::router::{Closer, Outbound, Receiver};
use crate::server::Shared;
use crate::session::{Outcome, Session};
use crate::tls::Alpn;
use crate::tls::plaintext::SmallSlices;
use crate::tls::record::{RecordReader, RecordWriter};
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
    // state for its whole life, and most connections spend it idle. What
    // comes out is small: rustls's connection (kilobytes) never lives here.
    let next = Box::pin(accept(&shared, tcp, peer, conn_id, refusal)).await;
    let (alpn, rd, wr) = match next {
        Some(Accepted::Web(web)) => return web.await,
        Some(Accepted::Records(alpn, rd, wr)) => (alpn, rd, wr),
        None => return,
    };
    let writer_cfg = WriterConfig {
        gzip_level: (alpn == Alpn::Gzip).then_some(shared.config.tls.gzip_level),
        write_timeout: limits.write_timeout(),
        packets_out: shared.session_ctx.metrics.packets_out.clone(),
        hold: Some(shared.session_ctx.store.messages().clone()),
    };
    let hard_stop = shared.hard_stop.clone();
    let frames = FrameReader::new(rd, alpn == Alpn::Gzip, limits.max_line_bytes)
        .limit_silent(limits.silent_bytes_per_second, limits.silent_burst_bytes);
    let session = Transport {
        protocol: alpn.name(),
        label: alpn.name(),
        conn_id,
        peer_ip: peer.ip(),
        refusal,
    };
    run_session(&shared, frames, session, move |rx, closer| {
        writer::run(wr, rx, closer, hard_stop, writer_cfg)
    })
    .await;
}

/// What [`run_session`] needs to know about the connection.
pub(crate) struct Transport {
    /// The protocol named in `welcome`.
    pub protocol: &'static str,
    /// The transport's label in the metrics.
    pub label: &'static str,
    /// The connection's id.
    pub conn_id: u64,
    /// The client's address.
    pub peer_ip: std::net::IpAddr,
    /// Over a connection limit: say so in a `bye` and close.
    pub refusal: Option<ErrorCode>,
}

/// A session from `welcome` (or a refusal) to the close log line: reads
/// packets from `input`, while the writer made by `writer` (spawned) drains
/// the outbound queue to the client.
pub(crate) async fn run_session<I, W>(
    shared: &Shared,
    mut input: I,
    transport: Transport,
    writer: impl FnOnce(Receiver, Arc<Closer>) -> W,
) where
    I: Input,
    W: Future<Output = writer::Ended> + Send + 'static,
{
    let metrics = &shared.session_ctx.metrics;
    let _open = metrics.connection(transport.label);
    let limits = &shared.config.limits;
    let (out, rx, closer) = Outbound::channel(limits.max_sendq_packets, limits.max_sendq_bytes);
    let ends = closer.clone();
    // A writer that failed (the peer is gone, or did not read for the
    // write timeout) ends the session as well: its replies, which would
    // fail with `Closed` rather than `Full`, might be few, and it would
    // stay online until its idle timeout. `map`, not an async block: that
    // would hold the writer's future twice (its capture and its awaiting),
    // about 1 KiB more per connection.
    let writing = futures_util::FutureExt::map(writer(rx, closer.clone()), move |ended| {
        if ended == writer::Ended::WriteFailed {
            ends.end();
        }
        ended
    });
    let writer = tokio::spawn(writing.instrument(tracing::Span::current()));
    let reason = if let Some(code) = transport.refusal {
        bye(shared, &out, code, refusal_message(code));
        let _ = out.push_close();
        code.as_str().to_owned()
    } else {
        info!("connection open");
        let ctx = &shared.session_ctx;
        let _ = out.push(&reply::welcome(
            &ctx.server_name,
            &ctx.auth_methods,
            transport.protocol,
        ));
        let (id, ip) = (transport.conn_id, transport.peer_ip);
        let reason = read_loop(shared, &mut input, &out, id, ip).await;
        let _ = out.push_close();
        reason
    };
    drop(out);
    let ended = writer.await.ok();
    let reason = match closer.reason() {
        Some((code, _)) => {
            // The writer said `bye` with this code.
            metrics.error(*code);
            if *code == ErrorCode::SessionSendqExceeded {
                metrics.slow_consumer();
            }
            code.as_str().to_owned()
        }
        None => reason,
    };
    let writer = ended.map_or("panicked", writer::Ended::as_str);
    info!(reason = %reason, writer, "connection closed");
}

/// A connection after its TLS handshake.
#[expect(
    clippy::large_enum_variant,
    reason = "made once per connection and taken apart at once; boxing the halves costs an allocation"
)]
enum Accepted {
    /// `http/1.1`: the web client's session, with rustls's own stream.
    Web(std::pin::Pin<Box<dyn Future<Output = ()> + Send>>),
    /// 10bit: the record layer's halves.
    Records(
        Alpn,
        RecordReader<tokio::net::tcp::OwnedReadHalf>,
        RecordWriter<tokio::net::tcp::OwnedWriteHalf>,
    ),
}

/// The handshake, then what the connection goes on with; `None` once a
/// failure is logged.
async fn accept(
    shared: &Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    conn_id: u64,
    refusal: Option<ErrorCode>,
) -> Option<Accepted> {
    let (alpn, mut tls) = handshake(shared, tcp).await?;
    if alpn == Alpn::Http {
        // hyper and WebSockets keep rustls's own stream.
        tls.get_mut().0.any_bytes();
        let tls = SmallSlices::new(tls);
        let web = crate::web::serve(shared.clone(), tls, peer, conn_id, refusal);
        return Some(Accepted::Web(Box::pin(web)));
    }
    let (rd, wr) = records(tls)?;
    Some(Accepted::Records(alpn, rd, wr))
}

/// TLS and ALPN under the handshake deadline, or `None` once the failure
/// is logged.
async fn handshake(
    shared: &Shared,
    tcp: TcpStream,
) -> Option<(Alpn, TlsStream<ReadAhead<TcpStream>>)> {
    let deadline = shared.config.limits.handshake_timeout();
    let accept = async {
        // Whole records only, so that the record layer can take over where
        // rustls's handshake ends.
        let io = ReadAhead::whole_records(tcp);
        let start = LazyConfigAcceptor::new(Acceptor::default(), io).await?;
        let config = shared.tls.for_hello(&start.client_hello());
        start.into_stream(config).await
    };
    // A connection still in its handshake has nothing to finish: shutdown
    // drops it at once instead of waiting out the deadline.
    let handshake = tokio::select! {
        done = tokio::time::timeout(deadline, accept) => done,
        () = shared.shutdown.cancelled() => {
            info!(reason = "shutting down", "connection closed in its tls handshake");
            return None;
        }
    };
    let tls = match handshake {
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
    Some((alpn, tls))
}

/// A 10bit connection's TLS after its handshake: the record layer of
/// [`crate::tls::record`], or `None` once the failure is logged.
fn records(
    tls: TlsStream<ReadAhead<TcpStream>>,
) -> Option<(
    RecordReader<tokio::net::tcp::OwnedReadHalf>,
    RecordWriter<tokio::net::tcp::OwnedWriteHalf>,
)> {
    let (io, conn) = tls.into_inner();
    let halves = if io.at_record_boundary() {
        let (tcp, unread) = io.into_parts();
        crate::tls::record::split(conn, tcp, unread)
    } else {
        // Cannot happen: rustls stops reading once it holds plaintext.
        Err(std::io::Error::other("part of a record left in rustls"))
    };
    match halves {
        Ok(halves) => Some(halves),
        Err(e) => {
            info!(reason = "tls hand-over failed", error = %e, "connection closed");
            None
        }
    }
}

/// A count kept locally and added to a shared counter in one step: at
/// [`Tally::flush`] and when dropped.
struct Tally<'a> {
    counter: &'a prometheus_client::metrics::counter::Counter,
    n: u64,
}

impl<'a> Tally<'a> {
    fn new(counter: &'a prometheus_client::metrics::counter::Counter) -> Self {
        Self { counter, n: 0 }
    }

    fn add(&mut self) {
        self.n += 1;
    }

    fn flush(&mut self) {
        if self.n > 0 {
            self.counter.inc_by(std::mem::take(&mut self.n));
        }
    }
}

impl Drop for Tally<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Queues the connection's last word, counted by code.
fn bye(shared: &Shared, out: &Outbound, code: ErrorCode, message: impl Into<String>) {
    shared.session_ctx.metrics.error(code);
    let _ = out.push(&reply::bye(code, message));
}

fn refusal_message(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::ServerPerIpLimit => "too many connections from your address",
        _ => "the server is full",
    }
}

/// Where a session's packets come from: lines of a 10bit stream
/// ([`FrameReader`]) or WebSocket messages (`web`).
pub(crate) trait Input {
    /// A packet already read, if any; never waits.
    fn buffered(&mut self) -> Option<Item>;
    /// The next packet, waiting for it (cancel-safe); `Ok(None)` at a clean end.
    fn next(&mut self) -> impl Future<Output = Result<Option<Item>, Stop>>;
    /// The bytes of a line lent by [`Input::buffered`] or [`Input::next`].
    fn line(&self, range: std::ops::Range<usize>) -> &[u8];
    /// Charges `bytes` of a packet that needed no reply (a `pong`, its
    /// newline counted) to the input's silent-input allowance.
    fn charge_silent(&mut self, bytes: usize) -> Result<(), Stop>;
}

/// One thing read from an [`Input`].
pub(crate) enum Item {
    /// A line, or an over-long one discarded.
    Span(Span),
    /// Something that is not a packet (a WebSocket binary message): one
    /// error reply with this code and message. Boxed: the session loop
    /// moves every line's item, and a line's is smaller without it.
    Refused(Box<(ErrorCode, String)>),
}

/// Why an [`Input`] cannot go on.
pub(crate) struct Stop {
    /// A last word for the client, if it can still be told.
    pub bye: Option<(ErrorCode, String)>,
    /// For the connection's close log line.
    pub reason: String,
}

impl<R: tokio::io::AsyncRead + Unpin> Input for FrameReader<R> {
    fn buffered(&mut self) -> Option<Item> {
        self.buffered_span().map(Item::Span)
    }

    async fn next(&mut self) -> Result<Option<Item>, Stop> {
        match self.next_span().await {
            Ok(span) => Ok(span.map(Item::Span)),
            Err(reader::Error::Gzip(e)) => Err(Stop {
                bye: Some((ErrorCode::TransportBadGzip, e.to_string())),
                reason: "bad gzip stream".into(),
            }),
            Err(reader::Error::Io(e)) => Err(Stop {
                bye: None,
                reason: format!("read error: {e}"),
            }),
            Err(reader::Error::Silent) => Err(silent_input()),
        }
    }

    fn line(&self, range: std::ops::Range<usize>) -> &[u8] {
        FrameReader::line(self, range)
    }

    fn charge_silent(&mut self, bytes: usize) -> Result<(), Stop> {
        FrameReader::charge_silent(self, bytes).map_err(|_| silent_input())
    }
}

/// The end of a session that sent more input needing no reply (blank
/// lines, `pong`) than its allowance.
pub(crate) fn silent_input() -> Stop {
    Stop {
        bye: Some((
            ErrorCode::RateSilentInput,
            "too much input that needs no reply (blank lines, pong)".into(),
        )),
        reason: "too much silent input".into(),
    }
}

/// Reads and handles packets until the session ends; returns the reason.
pub(crate) async fn read_loop<I: Input>(
    shared: &Shared,
    frames: &mut I,
    out: &Outbound,
    conn_id: u64,
    peer_ip: std::net::IpAddr,
) -> String {
    let mut session = Session::new(&shared.session_ctx, out.clone(), conn_id, peer_ip);
    let stop = serve_session(shared, frames, out, &mut session).await;
    // Messages already kept are relayed whatever ended the session: others
    // must see what the log holds. Their acks go before the `bye`, the
    // connection's last word.
    session.finish();
    if let Some((code, message)) = stop.bye {
        bye(shared, out, code, message);
    }
    stop.reason
}

impl Stop {
    /// An end the session itself decided (its own `bye`, if any, queued).
    fn quiet(reason: impl Into<String>) -> Stop {
        Stop {
            bye: None,
            reason: reason.into(),
        }
    }

    /// An end the client is told of with `code`.
    fn telling(code: ErrorCode, message: &str, reason: &str) -> Stop {
        Stop {
            bye: Some((code, message.to_owned())),
            reason: reason.to_owned(),
        }
    }
}

/// The session's read loop; returns why it ended and what to tell the
/// client once what it sent before is answered.
async fn serve_session<I: Input>(
    shared: &Shared,
    frames: &mut I,
    out: &Outbound,
    session: &mut Session<'_>,
) -> Stop {
    let limits = &shared.config.limits;
    // Counted per burst, not per packet: one shared counter touched by
    // every connection for every packet would be a contended cache line.
    let mut packets_in = Tally::new(&shared.session_ctx.metrics.packets_in);
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
        // loop holds where a line is and reads it from the reader. The
        // item alone, not the wait's larger `Result`, goes on: a line's
        // item was stored in pieces and read back whole, a load the CPU
        // could not take from the stores (3% of the pairs profile).
        let item = match frames.buffered() {
            Some(item) => item,
            None => {
                packets_in.flush();
                if let Outcome::Close(reason) = session.flush_burst() {
                    return Stop::quiet(reason.as_str());
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
                let frame = tokio::select! {
                    biased;
                    _ = &mut closed => return Stop::quiet("forced close"),
                    _ = &mut shutdown => {
                        return Stop::telling(ErrorCode::ServerShutdown, "the server is shutting down", "server shutdown");
                    }
                    _ = &mut timer => {
                        let now = Instant::now();
                        if session.account().is_none() && now >= login_deadline {
                            return Stop::telling(ErrorCode::SessionLoginTimeout, "no login before the deadline", "login timeout");
                        }
                        if now >= idle_at {
                            return Stop::telling(ErrorCode::SessionIdleTimeout, "no packet from the client for too long", "idle timeout");
                        }
                        if !pinged && now >= ping_at {
                            pinged = true;
                            let _ = out.push(&reply::ping());
                        }
                        continue;
                    }
                    frame = frames.next() => frame,
                };
                match frame {
                    Ok(Some(item)) => item,
                    Ok(None) => return Stop::quiet("client closed"),
                    Err(stop) => return stop,
                }
            }
        };
        let outcome = match item {
            Item::Span(Span::Line(range)) => {
                packets_in.add();
                heard = true;
                pinged = false;
                let line = frames.line(range);
                let len = line.len();
                debug!(bytes = len, "packet in");
                // Not boxed: `handle_line` boxes the large handler states
                // itself, so what it adds to every connection is small.
                let outcome = session.handle_line(line).await;
                if outcome == Outcome::Silent {
                    if let Err(stop) = frames.charge_silent(len + 1) {
                        return stop;
                    }
                }
                outcome
            }
            Item::Span(Span::TooLong) => {
                packets_in.add();
                heard = true;
                pinged = false;
                Box::pin(session.handle_too_long()).await
            }
            Item::Refused(refused) => {
                packets_in.add();
                heard = true;
                pinged = false;
                let (code, message) = *refused;
                Box::pin(session.handle_refused(code, message)).await
            }
        };
        if let Outcome::Close(reason) = outcome {
            return Stop::quiet(reason.as_str());
        }
    }
}
