//! The read side of a connection: socket bytes → (gunzip) → lines.
//!
//! [`FrameReader::next_frame`] is cancel-safe (partial input lives in the
//! struct), so the connection loop can `select!` it against timers and
//! shutdown. The client library reads with the same type.

use tokio::io::{AsyncRead, AsyncReadExt};

use super::framing::{Frame, LineDecoder};
use super::gzip::{self, GzipDecoder};

/// Free room ensured before each socket read.
const READ_ROOM: usize = 4 * 1024;
/// Bytes decompressed per step (bounded, so a bomb never lands at once).
const CHUNK: usize = 16 * 1024;

/// Why reading stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket failed.
    #[error("read failed: {0}")]
    Io(std::io::Error),
    /// The peer's gzip stream is corrupt.
    #[error("bad gzip stream: {0}")]
    Gzip(gzip::Error),
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
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps `rd`; `gzip` selects the compressed transport.
    pub fn new(rd: R, gzip: bool, max_line: usize) -> Self {
        Self {
            rd,
            gzip: gzip.then(GzipDecoder::new),
            lines: LineDecoder::new(max_line),
            inflated: if gzip {
                vec![0u8; CHUNK].into_boxed_slice()
            } else {
                Box::default()
            },
        }
    }

    /// The next frame; `Ok(None)` at a clean end of stream.
    pub async fn next_frame(&mut self) -> Result<Option<Frame>, Error> {
        loop {
            if let Some(frame) = self.lines.next_frame() {
                return Ok(Some(frame));
            }
            // Decompress one bounded chunk at a time, draining lines in
            // between, so the decompressed bytes held never exceed the limit.
            if let Some(z) = self.gzip.as_mut() {
                let n = z.read(&mut self.inflated)?;
                if n > 0 {
                    self.lines.feed(self.inflated.get(..n).unwrap_or_default());
                    continue;
                }
            }
            // Socket bytes go straight into the buffer that consumes them.
            let target = match self.gzip.as_mut() {
                Some(z) => z.input_target(READ_ROOM),
                None => self.lines.read_target(READ_ROOM),
            };
            if self.rd.read_buf(target).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// The underlying reader.
    pub fn get_ref(&self) -> &R {
        &self.rd
    }
}
