//! Handing plaintext to rustls. rustls copies every slice it is given into
//! its record with one `memcpy`. glibc copies anything above about 2 KiB
//! with `rep movsb` on CPUs that advertise fast short `rep movsb` (FSRM),
//! and on AMD Zen 3 that ran at a quarter of the speed of glibc's vector
//! loop (glibc bug 30994; Debian 12's glibc 2.36 has no fix): the copy was a
//! third of the server's CPU in chatbench's fanout. Slices of at most
//! [`SLICE_BYTES`] take the vector loop on every x86 CPU, and cost nothing
//! elsewhere: the slices are only views of the same buffers.

use std::io::IoSlice;

use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Most bytes of one slice handed to TLS: below glibc's smallest
/// `rep movsb` threshold (2,112 bytes with FSRM).
pub const SLICE_BYTES: usize = 2048;

/// Writes `parts` in order with vectored writes, each part cut into slices
/// of at most [`SLICE_BYTES`].
pub async fn write_all<'a, W: AsyncWrite + Unpin>(
    wr: &mut W,
    parts: impl IntoIterator<Item = &'a [u8]>,
) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice<'a>> = parts
        .into_iter()
        .flat_map(|p| p.chunks(SLICE_BYTES))
        .map(IoSlice::new)
        .collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let n = wr.write_vectored(rest).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut rest, n);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A writer that takes at most 7 bytes a call and checks the slices.
    struct Trickle(Vec<u8>);

    impl AsyncWrite for Trickle {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let n = buf.len().min(7);
            self.get_mut().0.extend_from_slice(&buf[..n]);
            std::task::Poll::Ready(Ok(n))
        }
        fn poll_write_vectored(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> std::task::Poll<std::io::Result<usize>> {
            assert!(bufs.iter().all(|b| b.len() <= SLICE_BYTES));
            match bufs.iter().find(|b| !b.is_empty()) {
                Some(b) => self.poll_write(cx, b),
                None => std::task::Poll::Ready(Ok(0)),
            }
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn parts_arrive_whole_and_in_order_in_small_slices() {
        let big: Vec<u8> = (0..5_000u32).map(|i| (i % 251) as u8).collect();
        let parts: [&[u8]; 3] = [b"first\n", &big, b"last\n"];
        let mut w = Trickle(Vec::new());
        write_all(&mut w, parts).await.unwrap();
        assert_eq!(w.0, parts.concat());
    }

    #[tokio::test]
    async fn through_a_real_stream() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let big = vec![b'x'; 10_000];
        let writer = tokio::spawn(async move {
            write_all(&mut a, [&big[..], b"\n"]).await.unwrap();
        });
        let mut got = Vec::new();
        while got.last() != Some(&b'\n') {
            let mut chunk = [0u8; 100];
            let n = b.read(&mut chunk).await.unwrap();
            got.extend_from_slice(&chunk[..n]);
        }
        writer.await.unwrap();
        assert_eq!(got.len(), 10_001);
    }
}
