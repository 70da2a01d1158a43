//! Plaintext handed to rustls in small slices. rustls copies every slice it
//! is given into its record with one `memcpy`. glibc copies anything above
//! about 2 KiB with `rep movsb` on CPUs that advertise fast short
//! `rep movsb` (FSRM), and on AMD Zen 3 that ran far below the speed of
//! glibc's vector loop (glibc bug 30994; Debian 12's glibc 2.36 has no fix):
//! the copy was a third of the server's CPU in chatbench's fanout. Slices of
//! at most [`SLICE_BYTES`] take the vector loop on every x86 CPU, and cost
//! nothing elsewhere: they are only views of the same buffers.

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes of one slice handed to TLS: below glibc's smallest
/// `rep movsb` threshold (2,112 bytes with FSRM).
pub const SLICE_BYTES: usize = 2048;

/// Most slices handed over in one call (128 KiB at most: more than a
/// batch, and rustls takes at most its buffer limit anyway).
const MAX_SLICES: usize = 64;

/// A TLS stream whose writes reach it as slices of at most [`SLICE_BYTES`],
/// whoever writes (the connection's writer, hyper, a WebSocket, a mesh
/// link). Reads pass through.
#[derive(Debug)]
pub struct SmallSlices<S>(S);

impl<S> SmallSlices<S> {
    /// Wraps a stream.
    pub fn new(inner: S) -> Self {
        Self(inner)
    }
}

/// Cuts `bufs` into at most [`MAX_SLICES`] slices of at most
/// [`SLICE_BYTES`], in order; returns how many it filled.
fn cut<'b>(bufs: &'b [IoSlice<'_>], out: &mut [IoSlice<'b>; MAX_SLICES]) -> usize {
    let mut n = 0;
    for piece in bufs.iter().flat_map(|b| b.chunks(SLICE_BYTES)) {
        let Some(slot) = out.get_mut(n) else {
            break;
        };
        *slot = IoSlice::new(piece);
        n += 1;
    }
    n
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SmallSlices<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        let n = cut(bufs, &mut slices);
        let inner = Pin::new(&mut self.get_mut().0);
        match slices.get(..n) {
            Some(slices) if n > 0 => inner.poll_write_vectored(cx, slices),
            // Nothing to write: let the stream say what that means.
            _ => inner.poll_write(cx, &[]),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SmallSlices<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A stream that takes at most 7 bytes a call, checks every slice it is
    /// given, and keeps what it took.
    #[derive(Default)]
    struct Trickle {
        got: Vec<u8>,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(buf)])
        }
        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            assert!(bufs.len() <= MAX_SLICES);
            assert!(bufs.iter().all(|b| b.len() <= SLICE_BYTES));
            // Up to 7 bytes a call, across as many slices as that takes, so
            // that a slice out of order or missing shows in what arrives.
            let this = self.get_mut();
            let mut room = 7;
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(room);
                this.got.extend_from_slice(&b[..take]);
                (room, n) = (room - take, n + take);
                if room == 0 {
                    break;
                }
            }
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn writes_arrive_whole_and_in_order_in_small_slices() {
        let big = pattern(5_000);
        let mut w = SmallSlices::new(Trickle::default());
        w.write_all(&big).await.unwrap();
        let mut parts = [
            IoSlice::new(b"first\n"),
            IoSlice::new(&big),
            IoSlice::new(b""),
            IoSlice::new(b"last\n"),
        ];
        let mut rest = &mut parts[..];
        while !rest.is_empty() {
            let n = w.write_vectored(rest).await.unwrap();
            IoSlice::advance_slices(&mut rest, n);
        }
        let want = [&big[..], b"first\n", &big, b"last\n"].concat();
        assert_eq!(w.0.got, want);
    }

    #[tokio::test]
    async fn more_than_the_slices_of_one_call_is_written_in_several() {
        // 200 KiB: more than 64 slices of 2 KiB.
        let big = pattern(200 << 10);
        let mut w = SmallSlices::new(Trickle::default());
        w.write_all(&big).await.unwrap();
        assert_eq!(w.0.got, big);
    }

    #[tokio::test]
    async fn reads_and_writes_pass_through_a_real_stream() {
        let (a, mut b) = tokio::io::duplex(1 << 12);
        let mut s = SmallSlices::new(a);
        let sent = pattern(50_000);
        let echo = tokio::spawn(async move {
            let mut got = vec![0u8; 50_000];
            b.read_exact(&mut got).await.unwrap();
            b.write_all(&got).await.unwrap();
        });
        let (mut rd, mut wr) = tokio::io::split(&mut s);
        let (_, back) = tokio::join!(async { wr.write_all(&sent).await.unwrap() }, async {
            let mut back = vec![0u8; 50_000];
            rd.read_exact(&mut back).await.unwrap();
            back
        });
        echo.await.unwrap();
        assert_eq!(back, sent);
    }
}
