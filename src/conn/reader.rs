//! The read side of a connection: socket bytes → (gunzip) → lines.
//!
//! [`FrameReader::next_frame`] is cancel-safe (partial input lives in the
//! struct), so the connection loop can `select!` it against timers and
//! shutdown. The client library reads with the same type.

use tokio::io::{AsyncRead, AsyncReadExt};

use super::framing::{Frame, LineDecoder};
use super::gzip::{self, GzipDecoder};

/// Bytes read from the socket per call, and decompressed per step.
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
    raw: Box<[u8]>,
    inflated: Box<[u8]>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps `rd`; `gzip` selects the compressed transport.
    pub fn new(rd: R, gzip: bool, max_line: usize) -> Self {
        Self {
            rd,
            gzip: gzip.then(GzipDecoder::new),
            lines: LineDecoder::new(max_line),
            raw: vec![0u8; CHUNK].into_boxed_slice(),
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
            let n = self.rd.read(&mut self.raw).await?;
            if n == 0 {
                return Ok(None);
            }
            let data = self.raw.get(..n).unwrap_or_default();
            match self.gzip.as_mut() {
                Some(z) => z.push(data),
                None => self.lines.feed(data),
            }
        }
    }

    /// The underlying reader.
    pub fn get_ref(&self) -> &R {
        &self.rd
    }
}
