//! A WebSocket session: text messages in, each one 10bit packet, through the
//! same session loop as a 10bit connection ([`conn::run_session`]); each
//! outbound packet out as one text message.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

use crate::conn::framing::Span;
use crate::conn::writer::{
    BATCH_BYTES, Batch, Ended, WriterConfig, guarded, in_writes, next_batch,
};
use crate::conn::{self, Input, Item, Stop, Transport};
use crate::proto::{ErrorCode, reply};
use crate::router::{Closer, Receiver};
use crate::server::Shared;
use crate::session::throttle::RateLimit;
use crate::tls::Alpn;

/// Read buffer per WebSocket (tungstenite allocates it up front; its
/// default, 128 KiB, would be most of an idle session's memory).
const READ_BUFFER: usize = 8 * 1024;

/// Runs a WebSocket session on an upgraded connection to its end.
pub(super) async fn run(shared: &Shared, upgraded: Upgraded, peer: SocketAddr, conn_id: u64) {
    let web = &shared.config.web;
    let cfg = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        // A write's worth (`BATCH_BYTES`, as the 10bit writer's) is
        // flushed once.
        .write_buffer_size(BATCH_BYTES)
        .max_message_size(Some(web.max_message_bytes))
        .max_frame_size(Some(web.max_message_bytes));
    let ws =
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(cfg)).await;
    let (sink, stream) = ws.split();
    let limits = &shared.config.limits;
    let input = Messages {
        stream,
        current: Utf8Bytes::default(),
        max_line: limits.max_line_bytes,
        max_message: web.max_message_bytes,
        silent: RateLimit::new(limits.silent_bytes_per_second, limits.silent_burst_bytes),
    };
    let transport = Transport {
        protocol: Alpn::Plain.name(),
        label: "websocket",
        conn_id,
        peer_ip: peer.ip(),
        refusal: None,
    };
    let hard_stop = shared.hard_stop.clone();
    let cfg = WriterConfig {
        gzip_level: None,
        write_timeout: shared.config.limits.write_timeout(),
        packets_out: shared.session_ctx.metrics.packets_out.clone(),
        hold: Some(shared.session_ctx.store.messages().clone()),
    };
    conn::run_session(shared, input, transport, move |rx, closer| {
        write(sink, rx, closer, hard_stop, cfg)
    })
    .await;
}

/// The read side: one packet per text message.
struct Messages<S> {
    stream: SplitStream<WebSocketStream<S>>,
    /// The message last read, lent to the session as a line.
    current: Utf8Bytes,
    max_line: usize,
    max_message: usize,
    /// The silent-input allowance (protocol.md 9.6), as a 10bit
    /// connection's reader keeps one: blank messages, `pong` packets and
    /// WebSocket ping and pong frames cost the server work (a ping, a
    /// written pong) and the client nothing.
    silent: RateLimit,
}

impl<S> Messages<S> {
    /// Charges a message that yields no packet: its bytes and one for its
    /// place, as a blank line's newline.
    fn charge(&mut self, bytes: usize) -> Result<(), Stop> {
        self.silent
            .spend(std::time::Instant::now(), (bytes + 1) as f64)
            .map_err(|_| conn::silent_input())
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Input for Messages<S> {
    fn buffered(&mut self) -> Option<Item> {
        None
    }

    async fn next(&mut self) -> Result<Option<Item>, Stop> {
        // The last message has been handled: an idle session keeps none.
        self.current = Utf8Bytes::default();
        loop {
            let message = match self.stream.next().await {
                None => return Ok(None),
                Some(Ok(m)) => m,
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => return Ok(None),
                Some(Err(WsError::Capacity(_))) => {
                    let max = self.max_message;
                    return Err(Stop {
                        bye: Some((
                            ErrorCode::PacketTooLarge,
                            format!("WebSocket message longer than {max} bytes; closing"),
                        )),
                        reason: "websocket message too large".into(),
                    });
                }
                Some(Err(e)) => {
                    return Err(Stop {
                        bye: None,
                        reason: format!("websocket error: {e}"),
                    });
                }
            };
            match message {
                Message::Text(text) if text.len() > self.max_line => {
                    return Ok(Some(Item::Span(Span::TooLong)));
                }
                // A blank message is skipped, as a blank line is.
                Message::Text(text) if text.trim().is_empty() => self.charge(text.len())?,
                Message::Text(text) => {
                    let len = text.len();
                    self.current = text;
                    return Ok(Some(Item::Span(Span::Line(0..len))));
                }
                Message::Binary(_) => {
                    return Ok(Some(Item::Refused(Box::new((
                        ErrorCode::TransportBinaryFrame,
                        "packets travel in text messages; binary message discarded".into(),
                    )))));
                }
                Message::Close(_) => return Ok(None),
                // Pings are answered by tungstenite itself.
                Message::Ping(b) | Message::Pong(b) => self.charge(b.len())?,
                Message::Frame(_) => {}
            }
        }
    }

    fn line(&self, range: std::ops::Range<usize>) -> &[u8] {
        self.current.as_bytes().get(range).unwrap_or_default()
    }

    fn charge_silent(&mut self, bytes: usize) -> Result<(), Stop> {
        // The packet's bytes; its message's place is counted here.
        self.charge(bytes.saturating_sub(1))
    }
}

/// The write side, as [`conn::writer::run`] for a 10bit connection: drains
/// the outbound queue in batches, one text message per packet, one flush
/// per batch; ends with a close message.
async fn write<S: AsyncRead + AsyncWrite + Unpin>(
    mut sink: SplitSink<WebSocketStream<S>, Message>,
    mut rx: Receiver,
    closer: Arc<Closer>,
    hard_stop: CancellationToken,
    cfg: WriterConfig,
) -> Ended {
    let write_timeout = cfg.write_timeout;
    let mut batch: Vec<Message> = Vec::new();
    let ended = loop {
        batch.clear();
        let taken = next_batch(
            &mut rx,
            &closer,
            &hard_stop,
            cfg.hold.as_ref(),
            |bytes, _| split_lines(bytes, &mut batch),
        );
        let Batch { packets, close } = match taken.await {
            Ok(b) => b,
            Err(ended) => break ended,
        };
        // A write at a time, as the 10bit writer cuts them (a held batch
        // is larger than one), each under the write timeout; a close alone
        // is one write too.
        let mut runs: Vec<usize> = in_writes(&batch, Message::len).map(<[_]>::len).collect();
        if runs.is_empty() {
            runs.push(0);
        }
        let last = runs.len() - 1;
        let mut messages = batch.drain(..);
        let mut failed = None;
        for (i, run) in runs.into_iter().enumerate() {
            let write = async {
                for message in messages.by_ref().take(run) {
                    sink.feed(message).await?;
                }
                match close && i == last {
                    true => closed_ok(sink.close().await),
                    false => sink.flush().await,
                }
            };
            if let Err(ended) = guarded(&closer, &hard_stop, write_timeout, write).await {
                failed = Some(ended);
                break;
            }
        }
        drop(messages);
        if let Some(ended) = failed {
            break ended;
        }
        cfg.packets_out.inc_by(packets as u64);
        if close {
            break Ended::Drained;
        }
        if rx.shrink_if_idle() {
            batch = Vec::new();
        }
    };
    if ended == Ended::Forced {
        // Skip whatever is queued: tell the client why, then go.
        if let Some((code, message)) = closer.reason() {
            let mut bye = Vec::new();
            split_lines(reply::bye(*code, message.clone()).to_line(), &mut bye);
            let last = async {
                for message in bye {
                    sink.feed(message).await?;
                }
                sink.close().await
            };
            let _ = tokio::time::timeout(write_timeout, last).await;
        }
    }
    ended
}

/// A close that found the WebSocket already closing (the client closed
/// first: tungstenite has answered its close message) is a clean end.
fn closed_ok(r: Result<(), WsError>) -> Result<(), WsError> {
    match r {
        Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Ok(()),
        other => other,
    }
}

/// Appends one text message per `\n`-terminated packet in `bytes` (the
/// queue holds bursts of several packets in one buffer).
fn split_lines(bytes: Bytes, into: &mut Vec<Message>) {
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', &bytes) {
        if end > start {
            // The server's own packets are JSON text: always UTF-8.
            match Utf8Bytes::try_from(bytes.slice(start..end)) {
                Ok(text) => into.push(Message::Text(text)),
                Err(_) => tracing::error!("outbound packet is not UTF-8; dropped"),
            }
        }
        start = end + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A held batch of several writes' worth goes out whole, one message a
    /// packet, and the close after it.
    #[tokio::test]
    async fn a_held_batch_past_one_write_goes_out_whole() {
        use crate::proto::Packet;
        use crate::router::Outbound;
        use crate::store::message_log::{Entry, Limits, MessageLog};
        let dir = tempfile::tempdir().unwrap();
        // Nothing appended: nothing to wait for.
        let start = Entry { seq: 0, hlc: 0 };
        let (log, thread) = MessageLog::open(dir.path(), Limits::default(), start, |_| {}).unwrap();
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (out, rx, closer) = Outbound::channel(1024, 1 << 22);
        let text = "x".repeat(1000);
        let queued = 3 * BATCH_BYTES / text.len();
        for _ in 0..queued {
            out.push(&Packet::server("msg").with("text", text.as_str()))
                .unwrap();
        }
        out.push_close().unwrap();
        let server = WebSocketStream::from_raw_socket(server, Role::Server, None).await;
        let (sink, _) = server.split();
        let cfg = WriterConfig {
            gzip_level: None,
            write_timeout: std::time::Duration::from_secs(5),
            packets_out: Default::default(),
            hold: Some(log.clone()),
        };
        let writer = tokio::spawn(write(sink, rx, closer, CancellationToken::new(), cfg));
        let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        let (mut texts, mut closed) = (0, false);
        while let Some(message) = client.next().await {
            match message {
                Ok(Message::Text(t)) => {
                    assert!(Packet::decode(t.as_bytes(), 8).is_ok());
                    texts += 1;
                }
                Ok(Message::Close(_)) => closed = true,
                // The reply to the close finds the server gone.
                Err(_) if closed => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(writer.await.unwrap(), Ended::Drained);
        assert_eq!((texts, closed), (queued, true));
        drop(log);
        thread.finish();
    }

    #[test]
    fn a_burst_becomes_one_message_per_packet() {
        let mut out = Vec::new();
        split_lines(
            Bytes::from_static(b"{\"op\":\"a\"}\n{\"op\":\"b\"}\n"),
            &mut out,
        );
        assert_eq!(
            out,
            [
                Message::text("{\"op\":\"a\"}"),
                Message::text("{\"op\":\"b\"}")
            ]
        );
    }
}
