//! Socket reads in large steps under TLS.
//!
//! rustls asks its transport for at most 4 KiB at a time, so a busy
//! connection cost a `recvfrom` per 4 KiB: four or five system calls for
//! each full TLS record, a tenth of the server's time in the pairs
//! benchmark. [`ReadAhead`] reads up to [`READ_AHEAD`] bytes per call and
//! serves rustls's small reads from memory. Its buffer exists only while
//! bytes are waiting: once the socket has nothing more, it is freed, so an
//! idle connection holds none. Writes pass straight through.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes asked of the socket in one read.
pub const READ_AHEAD: usize = 64 * 1024;

/// A transport whose reads are buffered in steps of [`READ_AHEAD`] bytes.
#[derive(Debug)]
pub struct ReadAhead<T> {
    io: T,
    /// Bytes read and not yet taken; empty (no allocation) when idle.
    buf: BytesMut,
}

impl<T> ReadAhead<T> {
    /// Wraps `io`.
    pub fn new(io: T) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
        }
    }

    /// The transport.
    pub fn get_ref(&self) -> &T {
        &self.io
    }

    /// Bytes read from the transport and not yet taken.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Bytes of read buffer held (for tests of what an idle connection keeps).
    pub fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ReadAhead<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // No room asked for: nothing to read (a read here would look like
        // the end of the stream).
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if this.buf.is_empty() {
            this.buf.reserve(READ_AHEAD);
            let read = tokio_util::io::poll_read_buf(Pin::new(&mut this.io), cx, &mut this.buf);
            match read {
                Poll::Ready(Ok(n)) if n > 0 => {}
                // Nothing waiting, the end of the stream or an error: the
                // buffer goes until bytes come. At the end nothing is put
                // in `out`.
                other => {
                    this.buf = BytesMut::new();
                    return other.map_ok(drop);
                }
            }
        }
        let n = out.remaining().min(this.buf.len());
        if let Some(bytes) = this.buf.get(..n) {
            out.put_slice(bytes);
        }
        this.buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ReadAhead<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn small_reads_are_served_from_one_large_one_and_the_buffer_goes_when_idle() {
        let (mut peer, io) = tokio::io::duplex(4 * READ_AHEAD);
        let mut r = ReadAhead::new(io);
        let sent: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        peer.write_all(&sent).await.unwrap();
        let mut got = vec![0u8; sent.len()];
        let mut at = 0;
        while at < sent.len() {
            let end = (at + 4096).min(sent.len());
            let n = r.read(&mut got[at..end]).await.unwrap();
            assert!(n > 0);
            at += n;
            // One socket read took far more than was asked: the rest of
            // it is served from the buffer.
            if at == 4096 {
                assert!(r.buffered() >= READ_AHEAD - 4096, "{}", r.buffered());
            }
        }
        assert_eq!(got, sent);
        // Nothing left to read: the next read waits, and frees the buffer.
        let mut one = [0u8; 1];
        let pending = std::future::poll_fn(|cx| {
            let mut out = ReadBuf::new(&mut one);
            Poll::Ready(Pin::new(&mut r).poll_read(cx, &mut out).is_pending())
        })
        .await;
        assert!(pending);
        assert_eq!(r.buffer_capacity(), 0);
        // Writes pass through, and end of stream reads as 0.
        r.write_all(b"pong").await.unwrap();
        let mut back = [0u8; 4];
        peer.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"pong");
        assert_eq!(r.read(&mut []).await.unwrap(), 0);
        assert_eq!(r.buffer_capacity(), 0, "an empty read reads nothing");
        drop(peer);
        assert_eq!(r.read(&mut one).await.unwrap(), 0);
        assert_eq!(r.buffer_capacity(), 0);
    }
}
