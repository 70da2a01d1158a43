//! The read side of a connection: socket bytes → (gunzip) → lines.
//!
//! [`FrameReader::next_frame`] and [`FrameReader::next_span`] are
//! cancel-safe (partial input lives in the
//! struct), so the connection loop can `select!` it against timers and
//! shutdown. The client library reads with the same type.
//!
//! What one connection's input may cost everyone else is bounded twice: a
//! reader yields to other tasks after [`WAKE_BUDGET`] bytes of input in one
//! go, and (on the server) input that yields no packet is charged to the
//! connection's silent-input allowance ([`FrameReader::limit_silent`]).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::AsyncRead;

use super::framing::{Frame, LineDecoder, Span};
use super::gzip::{self, GzipDecoder};
use crate::session::throttle::RateLimit;

/// Free room ensured before each socket read: a full TLS record's worth, so
/// a client's burst of messages is read, and relayed, as one burst. The
/// buffer is freed whenever the connection waits with nothing in it.
const READ_ROOM: usize = 16 * 1024;
/// Bytes decompressed per step (bounded, so a bomb never lands at once).
const CHUNK: usize = 16 * 1024;
/// Bytes of input (read, or inflated from gzip) before the reader lets
/// other tasks run.
/// - A gzip stream inflates from input already buffered, never waiting for
///   the socket: 1 MB inflating to 1 GB of blank lines held a worker for
///   seconds.
/// - Plain input is checked between reads, so a turn is this much plus at
///   most one read. Bounded by tokio's budget alone (128 socket reads a
///   turn), a flooding client's relays waited in their receivers' queues
///   until its turn ended: in chatbench's pairs (tenthbitd alone,
///   alternating builds) the server peaked at 153–161 MB of RSS against
///   96–98 MB with this bound, for the same server CPU.
/// - 16 KiB cost gzip traffic a fifth to two-fifths more server CPU than
///   64 KiB (smaller turns, smaller output batches, more deflate flushes;
///   `tenthbit bench --gzip pairs`), and chatbench's plain pairs (tenthbitd
///   alone) a quarter more. A turn of 64 KiB is well under a millisecond.
pub const WAKE_BUDGET: usize = 64 * 1024;

/// Why reading stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket failed.
    #[error("read failed: {0}")]
    Io(std::io::Error),
    /// The peer's gzip stream is corrupt.
    #[error("bad gzip stream: {0}")]
    Gzip(gzip::Error),
    /// The peer sent more input that yields no packet (blank lines,
    /// `pong`) than its allowance.
    #[error("too much input that needs no reply")]
    Silent,
}

// Plain conversions, not `#[from]`: the message above already carries the
// cause, and marking it as `source` too would print it twice in a chain.
impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

impl From<gzip::Error> for Error {
    fn from(e: gzip::Error) -> Self {
        Error::Gzip(e)
    }
}

/// Reads frames from a (possibly gzip-compressed) byte stream.
pub struct FrameReader<R> {
    rd: R,
    gzip: Option<GzipDecoder>,
    lines: LineDecoder,
    inflated: Box<[u8]>,
    /// Plain bytes read, or bytes inflated from gzip, since the reader last
    /// waited or yielded.
    since_yield: usize,
    /// Whether plain input counts toward [`WAKE_BUDGET`] (see
    /// [`FrameReader::batching`]).
    plain_turns: bool,
    /// Allowance for input that yields no packet, in bytes, if limited.
    silent: Option<RateLimit>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps `rd`; `gzip` selects the compressed transport.
    pub fn new(rd: R, gzip: bool, max_line: usize) -> Self {
        Self {
            rd,
            gzip: gzip.then(GzipDecoder::new),
            lines: LineDecoder::new(max_line).silent_tails(gzip),
            inflated: if gzip {
                vec![0u8; CHUNK].into_boxed_slice()
            } else {
                Box::default()
            },
            since_yield: 0,
            plain_turns: true,
            silent: None,
        }
    }

    /// Plain input no longer ends a turn: for a reader that takes what has
    /// arrived with one poll (`now_or_never`) to gather a batch, where a
    /// yield would end the batch instead of letting anyone run (a mesh
    /// link's events, each batch one store transaction). Gzip input still
    /// yields.
    pub fn batching(mut self) -> Self {
        self.plain_turns = false;
        self
    }

    /// Limits input that yields no packet (blank lines, and whatever the
    /// caller charges with [`FrameReader::charge_silent`]) to `burst` bytes,
    /// refilled at `per_second`; past it, reading fails with
    /// [`Error::Silent`]. Such input costs the server work and the peer
    /// nothing, and over gzip a little of it inflates to gigabytes.
    pub fn limit_silent(mut self, per_second: u32, burst: u32) -> Self {
        self.silent = Some(RateLimit::new(per_second, burst));
        self
    }

    /// Charges `bytes` of input that yielded no packet to the allowance.
    pub fn charge_silent(&mut self, bytes: usize) -> Result<(), Error> {
        match self.silent.as_mut() {
            Some(allowance) if bytes > 0 => allowance
                .spend(Instant::now(), bytes as f64)
                .map_err(|_| Error::Silent),
            _ => Ok(()),
        }
    }

    /// The next frame; `Ok(None)` at a clean end of stream.
    pub async fn next_frame(&mut self) -> Result<Option<Frame>, Error> {
        Ok(match self.next_span().await? {
            None => None,
            Some(span) => Some(self.lines.own(span)),
        })
    }

    /// The next frame, lent ([`FrameReader::line`] reads a line's bytes
    /// until the reader is next used); `Ok(None)` at a clean end of stream.
    /// It may wait with input at hand, to let other tasks run after
    /// [`WAKE_BUDGET`] bytes: a caller that polls once to gather what has
    /// arrived reads with [`FrameReader::batching`].
    pub async fn next_span(&mut self) -> Result<Option<Span>, Error> {
        loop {
            let span = self.lines.next_span();
            let silent = self.lines.take_silent();
            self.charge_silent(silent)?;
            if span.is_some() {
                return Ok(span);
            }
            // Checked once per chunk, never per line. The lines of the last
            // chunk were handled before this call, so this bounds the
            // connection's whole turn, not just the inflating.
            if self.since_yield >= WAKE_BUDGET {
                self.since_yield = 0;
                tokio::task::yield_now().await;
            }
            // Decompress one bounded chunk at a time, draining lines in
            // between, so the decompressed bytes held never exceed the limit.
            if let Some(z) = self.gzip.as_mut() {
                let n = z.read(&mut self.inflated)?;
                if n > 0 {
                    self.since_yield += n;
                    self.lines.feed(self.inflated.get(..n).unwrap_or_default());
                    continue;
                }
            }
            if std::future::poll_fn(|cx| self.poll_fill(cx)).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// The next frame, lent, if the bytes already read hold one; never
    /// reads. `None` means [`FrameReader::next_span`] may have to wait.
    pub fn buffered_span(&mut self) -> Option<Span> {
        self.lines.next_span()
    }

    /// The bytes of a line lent by [`FrameReader::next_span`] or
    /// [`FrameReader::buffered_span`].
    pub fn line(&self, range: std::ops::Range<usize>) -> &[u8] {
        self.lines.line(range)
    }

    /// One read, straight into the buffer that consumes the bytes. When
    /// nothing is there to read, the plain line buffer is freed if empty:
    /// an idle connection then holds no read buffer at all (it cost 4 KiB
    /// each), and a busy one allocates once per burst it drains.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        let target = match self.gzip.as_mut() {
            Some(z) => z.input_target(READ_ROOM),
            None => self.lines.read_target(READ_ROOM),
        };
        let polled = tokio_util::io::poll_read_buf(Pin::new(&mut self.rd), cx, target);
        // Plain input counts as it is read (gzip input as it inflates).
        if let (None, true, Poll::Ready(Ok(n))) = (&self.gzip, self.plain_turns, &polled) {
            self.since_yield += n;
        }
        if polled.is_pending() {
            // Waiting lets everyone else run: the turn starts afresh.
            self.since_yield = 0;
            if self.gzip.is_none() {
                self.lines.release_if_empty();
            }
        }
        polled
    }

    /// Bytes of line buffer held (for tests of what an idle reader keeps).
    pub fn buffer_capacity(&self) -> usize {
        self.lines.capacity()
    }

    /// The underlying reader.
    pub fn get_ref(&self) -> &R {
        &self.rd
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use tokio::io::AsyncWriteExt;

    /// Polls `next_frame` once; true if it had to wait for the peer.
    async fn waits<R: AsyncRead + Unpin>(frames: &mut FrameReader<R>) -> bool {
        let mut next = Box::pin(frames.next_frame());
        std::future::poll_fn(|cx| Poll::Ready(next.as_mut().poll(cx).is_pending())).await
    }

    #[tokio::test]
    async fn a_waiting_reader_holds_no_buffer() {
        let (mut peer, ours) = tokio::io::duplex(1 << 16);
        let mut frames = FrameReader::new(ours, false, 1024);
        peer.write_all(b"{\"op\":\"ping\"}\n{\"op\":")
            .await
            .unwrap();
        let first = frames.next_frame().await.unwrap();
        assert_eq!(first, Some(Frame::Line(b"{\"op\":\"ping\"}"[..].into())));
        // Half a packet is buffered: the buffer stays while waiting.
        assert!(waits(&mut frames).await);
        assert!(frames.buffer_capacity() > 0);
        peer.write_all(b"\"pong\"}\n").await.unwrap();
        let second = frames.next_frame().await.unwrap();
        assert_eq!(second, Some(Frame::Line(b"{\"op\":\"pong\"}"[..].into())));
        // Nothing buffered: waiting for the next packet holds no buffer.
        assert!(waits(&mut frames).await);
        assert_eq!(frames.buffer_capacity(), 0);
        peer.write_all(b"{\"op\":\"quit\"}\n").await.unwrap();
        drop(peer);
        let third = frames.next_frame().await.unwrap();
        assert_eq!(third, Some(Frame::Line(b"{\"op\":\"quit\"}"[..].into())));
        assert_eq!(frames.next_frame().await.unwrap(), None);
    }

    /// Reads all of `input` (an always-ready source: only the reader's own
    /// budget can make it wait), polling once per frame as a batching
    /// caller does: the lines, and the bytes of lines read in each turn.
    async fn turns_of(input: &[u8], batching: bool) -> (Vec<Vec<u8>>, Vec<usize>) {
        let mut frames = FrameReader::new(input, false, 1024);
        if batching {
            frames = frames.batching();
        }
        let (mut lines, mut turns, mut bytes) = (Vec::new(), Vec::new(), 0);
        loop {
            let mut next = Box::pin(frames.next_frame());
            match std::future::poll_fn(|cx| Poll::Ready(next.as_mut().poll(cx))).await {
                Poll::Pending => turns.push(std::mem::take(&mut bytes)),
                Poll::Ready(Ok(Some(Frame::Line(l)))) => {
                    bytes += l.len() + 1;
                    lines.push(l.to_vec());
                }
                Poll::Ready(Ok(Some(Frame::TooLong))) => panic!("a line too long"),
                Poll::Ready(Ok(None)) => return (lines, turns),
                Poll::Ready(Err(e)) => panic!("{e}"),
            }
        }
    }

    #[tokio::test]
    async fn a_flood_of_plain_input_yields_every_turn() {
        let line = |n: usize| format!("{{\"op\":\"send\",\"ex\":{{\"message\":\"{n:08}\"}}}}");
        let count = 3 * WAKE_BUDGET / line(0).len() + 1;
        let sent: Vec<Vec<u8>> = (0..count).map(|n| line(n).into_bytes()).collect();
        let input: Vec<u8> = sent
            .iter()
            .flat_map(|l| l.iter().chain(b"\n"))
            .copied()
            .collect();

        let (lines, turns) = turns_of(&input, false).await;
        assert!(lines == sent, "every line, once, in order");
        assert!(turns.len() >= 2, "{turns:?}");
        for bytes in turns {
            // Checked between reads: a turn is the budget and at most one
            // read more (here a read is the buffer's spare room, well under
            // another budget's worth).
            assert!(bytes + line(0).len() >= WAKE_BUDGET, "{bytes}");
            assert!(bytes < 2 * WAKE_BUDGET, "{bytes}");
        }

        // A batching reader (a mesh link) takes it all in one turn.
        let (lines, turns) = turns_of(&input, true).await;
        assert!(lines == sent);
        assert_eq!(turns, Vec::<usize>::new());
    }
}
