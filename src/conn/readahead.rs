//! Socket reads in large steps under TLS.
//!
//! rustls asks its transport for at most 4 KiB at a time, so a busy
//! connection cost a `recvfrom` per 4 KiB: four or five system calls for
//! each full TLS record, a tenth of the server's time in the pairs
//! benchmark. [`ReadAhead`] reads up to [`READ_AHEAD`] bytes per call and
//! serves rustls's small reads from memory. Its buffer exists only while
//! bytes are waiting: once the socket has nothing more, it is freed, so an
//! idle connection holds none. Writes pass straight through.
//!
//! During a TLS handshake it gives whole records only
//! ([`ReadAhead::whole_records`]), so that when the handshake ends rustls
//! holds no part of a record and the rest can move to
//! [`crate::tls::record`].

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::tls::record::{HEADER as RECORD_HEADER, MAX_CIPHERTEXT_TLS12};

/// Bytes asked of the socket in one read.
pub const READ_AHEAD: usize = 64 * 1024;

/// A transport whose reads are buffered in steps of [`READ_AHEAD`] bytes.
#[derive(Debug)]
pub struct ReadAhead<T> {
    io: T,
    /// Bytes read and not yet taken; empty (no allocation) when idle.
    buf: BytesMut,
    /// Hand over only whole TLS records, one a read.
    whole_records: bool,
    /// Bytes of the record being handed over still to give.
    record_left: usize,
}

/// The longest record TLS allows, with its header.
const MAX_RECORD: usize = RECORD_HEADER + MAX_CIPHERTEXT_TLS12;
/// The first byte of a TLS record: its content type (change_cipher_spec,
/// alert, handshake, application_data).
const RECORD_TYPES: std::ops::RangeInclusive<u8> = 20..=23;

impl<T> ReadAhead<T> {
    /// Wraps `io`.
    pub fn new(io: T) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            whole_records: false,
            record_left: 0,
        }
    }

    /// Wraps `io`, handing over whole TLS records only (for a handshake).
    pub fn whole_records(io: T) -> Self {
        Self {
            whole_records: true,
            ..Self::new(io)
        }
    }

    /// Ends the whole-records mode (the handshake is over and rustls keeps
    /// the connection).
    pub fn any_bytes(&mut self) {
        self.whole_records = false;
    }

    /// The transport and the bytes read from it and not yet taken. In the
    /// whole-records mode these begin at a record's start, unless the
    /// last read handed over only part of a record.
    pub fn into_parts(self) -> (T, BytesMut) {
        (self.io, self.buf)
    }

    /// Whether the last record is handed over whole.
    pub fn at_record_boundary(&self) -> bool {
        self.record_left == 0
    }

    /// In the whole-records mode, the bytes up to the end of a record now
    /// in the buffer, or the bytes the buffer lacks for one.
    fn whole_record(&mut self) -> Result<usize, usize> {
        if self.record_left > 0 {
            return Ok(self.record_left);
        }
        let Some(&[typ, major, _, l0, l1]) = self.buf.get(..RECORD_HEADER) else {
            // Any first byte that no record starts with (plain HTTP, for
            // one) goes to rustls at once, to be refused now.
            return match self.buf.first() {
                Some(typ) if !RECORD_TYPES.contains(typ) => Ok(self.buf.len()),
                _ => Err(RECORD_HEADER - self.buf.len()),
            };
        };
        let len = RECORD_HEADER + usize::from(u16::from_be_bytes([l0, l1]));
        if len > MAX_RECORD || !RECORD_TYPES.contains(&typ) || major != 3 {
            // Not a TLS record, or longer than TLS allows: hand it over as
            // it is, so rustls refuses it now rather than at the deadline.
            return Ok(self.buf.len());
        }
        if self.buf.len() < len {
            return Err(len - self.buf.len());
        }
        self.record_left = len;
        Ok(len)
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
        let mut whole = out.remaining();
        loop {
            let lack = if this.whole_records {
                match this.whole_record() {
                    Ok(len) => {
                        whole = whole.min(len);
                        break;
                    }
                    Err(lack) => lack,
                }
            } else if this.buf.is_empty() {
                1
            } else {
                break;
            };
            this.buf.reserve(READ_AHEAD.max(lack));
            let read = tokio_util::io::poll_read_buf(Pin::new(&mut this.io), cx, &mut this.buf);
            match read {
                Poll::Ready(Ok(n)) if n > 0 => {}
                // Nothing waiting (or no whole record yet), the end of the
                // stream or an error: an empty buffer goes until bytes
                // come. At the end nothing is put in `out`; a part of a
                // record there is the transport's end too.
                other => {
                    if this.buf.is_empty() {
                        this.buf = BytesMut::new();
                    }
                    return other.map_ok(drop);
                }
            }
        }
        let n = whole.min(this.buf.len());
        if let Some(bytes) = this.buf.get(..n) {
            out.put_slice(bytes);
        }
        this.buf.advance(n);
        if this.whole_records {
            this.record_left -= n.min(this.record_left);
        }
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

#[cfg(test)]
mod whole_records {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn record(len: usize, fill: u8) -> Vec<u8> {
        let mut r = vec![22, 3, 3];
        r.extend_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
        r.extend(std::iter::repeat_n(fill, len));
        r
    }

    #[tokio::test]
    async fn reads_end_at_a_record_and_wait_for_a_whole_one() {
        let (mut peer, io) = tokio::io::duplex(1 << 16);
        let mut r = ReadAhead::whole_records(io);
        let (a, b) = (record(300, 1), record(5000, 2));
        // The first record and half of the second.
        peer.write_all(&a).await.unwrap();
        peer.write_all(&b[..2000]).await.unwrap();
        let mut got = vec![0u8; 8192];
        let n = r.read(&mut got).await.unwrap();
        assert_eq!(&got[..n], &a[..]);
        assert!(r.at_record_boundary());
        // Half a record is not handed over: the read waits for the rest.
        let waits = std::future::poll_fn(|cx| {
            let mut out = ReadBuf::new(&mut got);
            Poll::Ready(Pin::new(&mut r).poll_read(cx, &mut out).is_pending())
        })
        .await;
        assert!(waits);
        peer.write_all(&b[2000..]).await.unwrap();
        peer.write_all(&a).await.unwrap();
        // A small read takes part of a record; the next goes to its end.
        let n = r.read(&mut got[..1000]).await.unwrap();
        assert_eq!(n, 1000);
        assert!(!r.at_record_boundary());
        let m = r.read(&mut got[1000..]).await.unwrap();
        assert_eq!(&got[..n + m], &b[..]);
        assert!(r.at_record_boundary());
        // What follows stays behind for whoever takes over.
        r.any_bytes();
        let (_, unread) = r.into_parts();
        assert_eq!(&unread[..], &a[..]);
    }

    #[tokio::test]
    async fn what_is_not_a_tls_record_is_handed_over_at_once() {
        let (mut peer, io) = tokio::io::duplex(1 << 16);
        let mut r = ReadAhead::whole_records(io);
        peer.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut got = [0u8; 64];
        let n = r.read(&mut got).await.unwrap();
        assert_eq!(&got[..n], b"GET / HTTP/1.1\r\n");
        // Fewer bytes than a header, none of them a record's first.
        let (mut peer, io) = tokio::io::duplex(1 << 16);
        let mut r = ReadAhead::whole_records(io);
        peer.write_all(b"G").await.unwrap();
        assert_eq!(r.read(&mut got).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_record_longer_than_tls_allows_is_handed_over_at_once() {
        let (mut peer, io) = tokio::io::duplex(1 << 16);
        let mut r = ReadAhead::whole_records(io);
        peer.write_all(&[22, 3, 3, 0xff, 0xff, 1, 2]).await.unwrap();
        let mut got = [0u8; 16];
        let n = r.read(&mut got).await.unwrap();
        assert_eq!(&got[..n], &[22, 3, 3, 0xff, 0xff, 1, 2]);
    }
}
