//! The TLS record layer of a 10bit connection after its handshake, with
//! buffers that exist only while bytes wait.
//!
//! rustls does the handshake and keeps the record protection (its
//! `MessageEncrypter` and `MessageDecrypter`); this module moves records
//! between them and the socket once the handshake is done. Why: rustls's
//! buffered connection keeps a 4 KiB read buffer for the connection's whole
//! life, zero-filled, with no call that frees it: the largest single item of
//! an idle connection's memory. Here the read buffer goes whenever the
//! socket is empty, records are decrypted where they were read (no copy into
//! a second buffer), and the two directions are apart (no lock shared by
//! the reader and the writer).
//!
//! What rustls's connection would do that this layer does not: a TLS 1.3
//! `KeyUpdate` (or any other handshake message after the handshake) from
//! the client ends the connection with an error. rustls's buffered API
//! gives out the keys but not the secrets they come from, so there is
//! nothing to update them from. For the same reason, when the server's
//! own records reach the cipher's confidentiality limit (2^24 records for
//! AES-GCM, as rustls sets it; none for ChaCha20-Poly1305: a writer batch
//! is one record or more), the server closes the connection with
//! `close_notify`, which rustls does in TLS 1.2 too, where TLS 1.3 would
//! update its keys.
//!
//! The hand-over itself happens at a record boundary: the socket's reader
//! gives rustls whole records only during the handshake
//! ([`crate::conn::readahead::ReadAhead::whole_records`]), so nothing rustls
//! read is lost.

use std::io::{self, IoSlice};
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use rustls::crypto::cipher::{
    InboundOpaqueMessage, MessageDecrypter, MessageEncrypter, OutboundChunks, OutboundPlainMessage,
};
use rustls::{
    AlertDescription, ConnectionTrafficSecrets, ContentType, ProtocolVersion, ServerConnection,
    SupportedCipherSuite,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::plaintext::SLICE_BYTES;

/// The record header: type, version, length.
pub(crate) const HEADER: usize = 5;
/// Most plaintext in one record (2^14).
const MAX_FRAGMENT: usize = 16_384;
/// Most ciphertext a record may carry: TLS 1.2 allows 2,048 bytes of
/// expansion (RFC 5246 6.2.3), TLS 1.3 256 (RFC 8446 5.2).
pub(crate) const MAX_CIPHERTEXT_TLS12: usize = MAX_FRAGMENT + 2048;
const MAX_CIPHERTEXT_TLS13: usize = MAX_FRAGMENT + 256;
/// Bytes asked of the socket in one read (as `ReadAhead` does before the
/// hand-over).
const READ_STEP: usize = 64 * 1024;
/// Room below which a read first makes more.
const MIN_SPARE: usize = 8 * 1024;
/// Encrypted bytes a writer holds before a write waits for the socket.
const MAX_UNSENT: usize = 256 * 1024;
/// Most slices in one record: 16 KiB in pieces of at most [`SLICE_BYTES`],
/// or a batch of small packets (a record per packet would cost an AEAD
/// call and 22 bytes each).
const MAX_CHUNKS: usize = 128;
/// Empty records in a row past which a peer is only making work (rustls's
/// own bound).
const MAX_EMPTY_RECORDS: u32 = 32;

/// Takes a finished handshake's record protection out of rustls: the
/// reading and the writing half over `tcp`'s two halves. `unread` is what
/// the socket's reader holds beyond what rustls was given (whole records
/// only, see the module's doc).
pub fn split(
    conn: ServerConnection,
    tcp: tokio::net::TcpStream,
    unread: BytesMut,
) -> io::Result<(
    RecordReader<tokio::net::tcp::OwnedReadHalf>,
    RecordWriter<tokio::net::tcp::OwnedWriteHalf>,
)> {
    let (rd, wr) = tcp.into_split();
    split_io(conn, rd, wr, unread)
}

/// [`split`] over any transport's halves (tests use in-memory ones).
fn split_io<R, W>(
    mut conn: ServerConnection,
    rd: R,
    wr: W,
    unread: BytesMut,
) -> io::Result<(RecordReader<R>, RecordWriter<W>)> {
    // What rustls read past the handshake and decrypted already: the
    // client may send its first request with its last handshake record.
    let mut early = BytesMut::new();
    let mut closed = false;
    let mut chunk = [0u8; 4096];
    loop {
        match io::Read::read(&mut conn.reader(), &mut chunk) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => early.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    let suite = conn
        .negotiated_cipher_suite()
        .ok_or_else(|| invalid("handshake not complete"))?;
    let tls13 = conn.protocol_version() == Some(ProtocolVersion::TLSv1_3);
    let secrets = conn.dangerous_extract_secrets().map_err(tls_error)?;
    let (rx_seq, rx) = secrets.rx;
    let (tx_seq, tx) = secrets.tx;
    let reader = RecordReader {
        io: rd,
        dec: decrypter(suite, rx)?,
        seq: rx_seq,
        empty_in_a_row: 0,
        failed: false,
        tls13,
        buf: unread,
        plain: 0..0,
        record_end: 0,
        early,
        eof: closed,
    };
    let writer = RecordWriter {
        io: wr,
        enc: encrypter(suite, tx)?,
        seq: tx_seq,
        // One kept back for the close_notify at the limit.
        limit: suite_limit(suite).saturating_sub(1),
        unsent: Vec::new(),
        first: 0,
        offset: 0,
        unsent_bytes: 0,
        close_sent: false,
    };
    Ok((reader, writer))
}

fn suite_limit(suite: SupportedCipherSuite) -> u64 {
    match suite {
        SupportedCipherSuite::Tls13(s) => s.common.confidentiality_limit,
        SupportedCipherSuite::Tls12(s) => s.common.confidentiality_limit,
    }
}

fn decrypter(
    suite: SupportedCipherSuite,
    secrets: ConnectionTrafficSecrets,
) -> io::Result<Box<dyn MessageDecrypter>> {
    let (key, iv) = key_and_iv(secrets)?;
    Ok(match suite {
        SupportedCipherSuite::Tls13(s) => s.aead_alg.decrypter(key, iv),
        SupportedCipherSuite::Tls12(s) => {
            // The decrypter takes the fixed part of the nonce only; the
            // rest comes with each record.
            let (salt, _) = tls12_iv(s, &iv)?;
            s.aead_alg.decrypter(key, salt)
        }
    })
}

fn encrypter(
    suite: SupportedCipherSuite,
    secrets: ConnectionTrafficSecrets,
) -> io::Result<Box<dyn MessageEncrypter>> {
    let (key, iv) = key_and_iv(secrets)?;
    Ok(match suite {
        SupportedCipherSuite::Tls13(s) => s.aead_alg.encrypter(key, iv),
        SupportedCipherSuite::Tls12(s) => {
            let (salt, extra) = tls12_iv(s, &iv)?;
            s.aead_alg.encrypter(key, salt, extra)
        }
    })
}

/// A TLS 1.2 IV as rustls extracts it (fixed part, then the explicit
/// nonce's start), cut where the suite's key block puts the line.
fn tls12_iv<'a>(
    suite: &rustls::Tls12CipherSuite,
    iv: &'a rustls::crypto::cipher::Iv,
) -> io::Result<(&'a [u8], &'a [u8])> {
    let shape = suite.aead_alg.key_block_shape();
    let (fixed, explicit) = (shape.fixed_iv_len, shape.explicit_nonce_len);
    let iv = iv.as_ref();
    let salt = iv.get(..fixed).ok_or_else(|| invalid("short iv"))?;
    let extra = iv
        .get(fixed..fixed + explicit)
        .ok_or_else(|| invalid("short iv"))?;
    Ok((salt, extra))
}

fn key_and_iv(
    secrets: ConnectionTrafficSecrets,
) -> io::Result<(rustls::crypto::cipher::AeadKey, rustls::crypto::cipher::Iv)> {
    match secrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv }
        | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
        | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => Ok((key, iv)),
        _ => Err(invalid("cipher suite without a record layer here")),
    }
}

fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// The reading half: records from the socket, decrypted in place.
pub struct RecordReader<R> {
    io: R,
    dec: Box<dyn MessageDecrypter>,
    /// The next record's sequence number.
    seq: u64,
    /// Empty records read in a row.
    empty_in_a_row: u32,
    /// A record was refused: every later read fails too.
    failed: bool,
    tls13: bool,
    /// Bytes from the socket not yet consumed; no allocation when idle.
    buf: BytesMut,
    /// Decrypted bytes in `buf` not yet handed out.
    plain: Range<usize>,
    /// Where the record holding `plain` ends in `buf`.
    record_end: usize,
    /// Plaintext rustls decrypted before the hand-over, handed out first.
    early: BytesMut,
    /// The client sent `close_notify`.
    eof: bool,
}

impl<R> RecordReader<R> {
    /// Bytes of read buffer held (for tests of what an idle connection keeps).
    pub fn buffer_capacity(&self) -> usize {
        self.buf.capacity() + self.early.capacity()
    }

    /// Decrypts the next whole record in `buf`, if there is one; `Ok(false)`
    /// when more bytes are needed.
    fn next_record(&mut self) -> io::Result<bool> {
        let Some(&[typ, v0, v1, l0, l1]) = self.buf.get(..HEADER) else {
            return Ok(false);
        };
        let typ = ContentType::from(typ);
        let version = ProtocolVersion::from(u16::from_be_bytes([v0, v1]));
        let len = usize::from(u16::from_be_bytes([l0, l1]));
        let max = if self.tls13 {
            MAX_CIPHERTEXT_TLS13
        } else {
            MAX_CIPHERTEXT_TLS12
        };
        if len > max {
            return Err(invalid("TLS record too long"));
        }
        if self.tls13 && typ != ContentType::ApplicationData {
            return Err(invalid("unprotected TLS record after the handshake"));
        }
        let end = HEADER + len;
        if self.buf.len() < end {
            self.buf.reserve(end - self.buf.len());
            return Ok(false);
        }
        let next_seq = self
            .seq
            .checked_add(1)
            .ok_or_else(|| invalid("TLS sequence numbers used up"))?;
        let base = self.buf.as_ptr() as usize;
        let body = self
            .buf
            .get_mut(HEADER..end)
            .ok_or_else(|| invalid("TLS record out of bounds"))?;
        let msg = InboundOpaqueMessage::new(typ, version, body);
        let plain = self.dec.decrypt(msg, self.seq).map_err(tls_error)?;
        self.seq = next_seq;
        // The plaintext is decrypted in place: a part of the record's body.
        let start = (plain.payload.as_ptr() as usize).wrapping_sub(base);
        let range = start..start.saturating_add(plain.payload.len());
        if range.start < HEADER || range.end > end {
            return Err(invalid("TLS plaintext outside its record"));
        }
        self.record_end = end;
        match plain.typ {
            ContentType::ApplicationData => self.plain = range,
            ContentType::Alert => {
                let desc = match plain.payload {
                    &[_, desc] => AlertDescription::from(desc),
                    _ => return Err(invalid("malformed TLS alert")),
                };
                match desc {
                    AlertDescription::CloseNotify => {
                        self.eof = true;
                        self.buf = BytesMut::new();
                        return Ok(true);
                    }
                    // A client giving up says so, then close_notify
                    // follows (RFC 8446 6.1); rustls ignores it too.
                    AlertDescription::UserCanceled => {}
                    _ => return Err(invalid("TLS alert from the client")),
                }
            }
            ContentType::Handshake => {
                return Err(invalid(
                    "TLS handshake message after the handshake (key update or renegotiation)",
                ));
            }
            _ => return Err(invalid("unexpected TLS record type")),
        }
        if self.plain.is_empty() {
            self.empty_in_a_row += 1;
            if self.empty_in_a_row > MAX_EMPTY_RECORDS {
                return Err(invalid("too many empty TLS records"));
            }
            self.consume_record();
        } else {
            self.empty_in_a_row = 0;
        }
        Ok(true)
    }

    fn consume_record(&mut self) {
        self.buf.advance(self.record_end.min(self.buf.len()));
        self.plain = 0..0;
        self.record_end = 0;
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for RecordReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if !this.early.is_empty() {
                let n = this.early.len().min(out.remaining());
                out.put_slice(this.early.get(..n).unwrap_or_default());
                this.early.advance(n);
                if this.early.is_empty() {
                    this.early = BytesMut::new();
                }
                return Poll::Ready(Ok(()));
            }
            if !this.plain.is_empty() {
                let n = this.plain.len().min(out.remaining());
                let from = this.plain.start;
                out.put_slice(this.buf.get(from..from + n).unwrap_or_default());
                this.plain.start += n;
                if this.plain.is_empty() {
                    this.consume_record();
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            if this.failed {
                return Poll::Ready(Err(invalid("TLS connection failed")));
            }
            match this.next_record() {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => {
                    this.failed = true;
                    return Poll::Ready(Err(e));
                }
            }
            if this.buf.capacity() == 0 {
                this.buf = BytesMut::with_capacity(READ_STEP);
            } else if this.buf.capacity() - this.buf.len() < MIN_SPARE {
                // Reuses the consumed front of the buffer when that is
                // enough (BytesMut moves the part record there).
                let want = READ_STEP.saturating_sub(this.buf.len()).max(MIN_SPARE);
                this.buf.reserve(want);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.io), cx, &mut this.buf) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "peer closed connection without sending TLS close_notify",
                    )));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // Nothing waiting: an idle connection holds no buffer.
                    if this.buf.is_empty() {
                        this.buf = BytesMut::new();
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// The writing half: plaintext sealed into records and written with
/// vectored writes.
pub struct RecordWriter<W> {
    io: W,
    enc: Box<dyn MessageEncrypter>,
    seq: u64,
    limit: u64,
    /// Sealed records not yet written, from `first`; `offset` bytes of
    /// the first are written.
    unsent: Vec<Vec<u8>>,
    first: usize,
    offset: usize,
    unsent_bytes: usize,
    close_sent: bool,
}

impl<W> RecordWriter<W> {
    /// Bytes of write buffer held (for tests of what an idle connection keeps).
    pub fn buffer_capacity(&self) -> usize {
        self.unsent.capacity() * std::mem::size_of::<Vec<u8>>()
            + self.unsent.iter().map(Vec::capacity).sum::<usize>()
    }

    fn seal(&mut self, typ: ContentType, chunks: &[&[u8]]) -> io::Result<()> {
        // Past the limit only the close_notify kept back for it.
        if self.seq > self.limit || (self.seq == self.limit && typ != ContentType::Alert) {
            return Err(invalid("TLS record limit reached"));
        }
        let msg = OutboundPlainMessage {
            typ,
            version: ProtocolVersion::TLSv1_2,
            payload: OutboundChunks::new(chunks),
        };
        let record = self.enc.encrypt(msg, self.seq).map_err(tls_error)?.encode();
        self.seq += 1;
        self.unsent_bytes += record.len();
        self.unsent.push(record);
        Ok(())
    }

    /// Seals up to [`MAX_UNSENT`] bytes of `bufs` into records, and no
    /// record past the cipher's limit (the rest waits for the next write,
    /// which closes); returns how many bytes it took.
    fn seal_from(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut taken = 0;
        let mut pieces = bufs
            .iter()
            .flat_map(|b| b.chunks(SLICE_BYTES))
            .filter(|p| !p.is_empty())
            .peekable();
        while pieces.peek().is_some() && self.unsent_bytes < MAX_UNSENT && self.seq < self.limit {
            let mut chunks: [&[u8]; MAX_CHUNKS] = [&[]; MAX_CHUNKS];
            let (mut n, mut size) = (0, 0);
            while let Some(piece) = pieces.peek_mut() {
                let Some(slot) = chunks.get_mut(n) else {
                    break;
                };
                let room = MAX_FRAGMENT - size;
                if room == 0 {
                    break;
                }
                let (now, later) = piece.split_at(piece.len().min(room));
                *slot = now;
                n += 1;
                size += now.len();
                if later.is_empty() {
                    pieces.next();
                } else {
                    *piece = later;
                }
            }
            self.seal(
                ContentType::ApplicationData,
                chunks.get(..n).unwrap_or_default(),
            )?;
            taken += size;
        }
        Ok(taken)
    }
}

impl<W: AsyncWrite + Unpin> RecordWriter<W> {
    /// Seals `close_notify` (once) and writes everything sealed, so the
    /// client can tell a clean close from a cut.
    fn poll_close_notify(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.close_sent {
            let alert = [1u8, u8::from(AlertDescription::CloseNotify)];
            self.seal(ContentType::Alert, &[&alert])?;
            self.close_sent = true;
        }
        self.poll_send(cx)
    }

    /// Writes sealed records until none is left, or the socket is full.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.unsent_bytes > 0 {
            let mut slices = [IoSlice::new(&[]); 64];
            let mut n = 0;
            for (i, record) in self.unsent.iter().skip(self.first).enumerate() {
                let Some(slot) = slices.get_mut(n) else {
                    break;
                };
                let from = if i == 0 { self.offset } else { 0 };
                *slot = IoSlice::new(record.get(from..).unwrap_or_default());
                n += 1;
            }
            let written = ready!(
                Pin::new(&mut self.io).poll_write_vectored(cx, slices.get(..n).unwrap_or_default())
            )?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.unsent_bytes -= written.min(self.unsent_bytes);
            let mut left = written + self.offset;
            self.offset = 0;
            while let Some(record) = self.unsent.get(self.first) {
                if left < record.len() {
                    self.offset = left;
                    break;
                }
                left -= record.len();
                self.first += 1;
            }
        }
        // All written: an idle connection holds no write buffer.
        self.unsent = Vec::new();
        self.first = 0;
        self.offset = 0;
        Poll::Ready(Ok(()))
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for RecordWriter<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.seq >= this.limit {
            // The cipher's limit: close as rustls does in TLS 1.2, cleanly.
            // Checked first: a write polled again while the close_notify
            // waits for the socket finishes sending it.
            ready!(this.poll_close_notify(cx))?;
            return Poll::Ready(Err(invalid("TLS record limit reached: connection closed")));
        }
        if this.close_sent {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if this.unsent_bytes >= MAX_UNSENT {
            ready!(this.poll_send(cx))?;
        }
        let taken = this.seal_from(bufs)?;
        // Start the write now; what the socket does not take waits for
        // the next write or the flush.
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(taken))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_close_notify(cx))?;
        match ready!(Pin::new(&mut this.io).poll_shutdown(cx)) {
            Err(e) if e.kind() != io::ErrorKind::NotConnected => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::readahead::ReadAhead;
    use std::io::Write;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};

    type Halves = (
        RecordReader<ReadHalf<DuplexStream>>,
        RecordWriter<WriteHalf<DuplexStream>>,
    );

    /// The client port's configuration on a fresh self-signed pair, and a
    /// client trusting it that speaks `version` only.
    fn configs(
        dir: &tempfile::TempDir,
        version: &'static rustls::SupportedProtocolVersion,
        suite: Option<rustls::CipherSuite>,
    ) -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
        let cfg = crate::config::TlsConfig {
            cert_file: dir.path().join("cert.pem"),
            key_file: dir.path().join("key.pem"),
            ..crate::config::TlsConfig::default()
        };
        let server = crate::tls::server_config(&cfg, "localhost", false).unwrap();
        let mut provider = rustls::crypto::ring::default_provider();
        if let Some(suite) = suite {
            provider.cipher_suites.retain(|s| s.suite() == suite);
        }
        let provider = Arc::new(provider);
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[version])
            .unwrap();
        let expect = crate::tls::pin::Expect::Pinned(server.fingerprint);
        let mut client = super::super::by_fingerprint(builder, expect, &provider);
        client.alpn_protocols = vec![crate::tls::alpn::PLAIN.to_vec()];
        (server.config.preferred(), Arc::new(client))
    }

    /// The server's side as `conn` does it: the handshake over whole
    /// records, then the hand-over.
    async fn accept(config: Arc<rustls::ServerConfig>, s: DuplexStream) -> Halves {
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let tls = acceptor.accept(ReadAhead::whole_records(s)).await.unwrap();
        let (io, conn) = tls.into_inner();
        assert!(io.at_record_boundary());
        let (s, unread) = io.into_parts();
        let (rd, wr) = tokio::io::split(s);
        split_io(conn, rd, wr, unread).unwrap()
    }

    async fn pair(
        version: &'static rustls::SupportedProtocolVersion,
        suite: Option<rustls::CipherSuite>,
    ) -> (Halves, tokio_rustls::client::TlsStream<DuplexStream>) {
        let dir = tempfile::tempdir().unwrap();
        let (server_config, client_config) = configs(&dir, version, suite);
        let (c, s) = tokio::io::duplex(1 << 16);
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let connect = tokio_rustls::TlsConnector::from(client_config).connect(name, c);
        let (server, client) = tokio::join!(accept(server_config, s), connect);
        (server, client.unwrap())
    }

    /// A rustls client driven by hand: its handshake, then `first` sent in
    /// the same write as its last handshake flight, with the first half of
    /// `cut`'s record when there is one; returns the other half.
    async fn by_hand(
        client: &mut rustls::ClientConnection,
        c: &mut DuplexStream,
        first: &[u8],
        close: bool,
        cut: Option<&[u8]>,
    ) -> Vec<u8> {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let mut out = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut out).unwrap();
            }
            if !client.is_handshaking() {
                client.writer().write_all(first).unwrap();
                if close {
                    client.send_close_notify();
                }
                while client.wants_write() {
                    client.write_tls(&mut out).unwrap();
                }
                let mut rest = Vec::new();
                if let Some(cut) = cut {
                    client.writer().write_all(cut).unwrap();
                    client.write_tls(&mut rest).unwrap();
                    out.extend(rest.drain(..rest.len() / 2));
                }
                c.write_all(&out).await.unwrap();
                return rest;
            }
            c.write_all(&out).await.unwrap();
            let n = c.read(&mut buf).await.unwrap();
            assert!(n > 0);
            client.read_tls(&mut &buf[..n]).unwrap();
            client.process_new_packets().unwrap();
        }
    }

    async fn by_hand_pair(
        first: &[u8],
        close: bool,
        cut: Option<&[u8]>,
    ) -> (Halves, rustls::ClientConnection, DuplexStream, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let (server_config, client_config) = configs(&dir, &rustls::version::TLS13, None);
        let (mut c, s) = tokio::io::duplex(1 << 16);
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut client = rustls::ClientConnection::new(client_config, name).unwrap();
        let (server, rest) = tokio::join!(
            accept(server_config, s),
            by_hand(&mut client, &mut c, first, close, cut)
        );
        (server, client, c, rest)
    }

    /// True if a read on `rd` has to wait for the peer.
    async fn read_waits<R: AsyncRead + Unpin>(rd: &mut RecordReader<R>) -> bool {
        let mut one = [0u8; 1];
        std::future::poll_fn(|cx| {
            let mut buf = ReadBuf::new(&mut one);
            Poll::Ready(Pin::new(&mut *rd).poll_read(cx, &mut buf).is_pending())
        })
        .await
    }

    async fn both_ways(
        version: &'static rustls::SupportedProtocolVersion,
        suite: Option<rustls::CipherSuite>,
    ) {
        let ((mut rd, mut wr), mut client) = pair(version, suite).await;
        if let Some(suite) = suite {
            let got = client
                .get_ref()
                .1
                .negotiated_cipher_suite()
                .map(|s| s.suite());
            assert_eq!(got, Some(suite));
        }
        // Many records each way, and a burst of small vectored writes.
        let sent: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let small: Vec<Vec<u8>> = (0..500u32)
            .map(|i| format!("line {i}\n").into_bytes())
            .collect();
        let server = async {
            // Read first: each side writes more than the pipe holds.
            let mut got = vec![0u8; sent.len()];
            rd.read_exact(&mut got).await.unwrap();
            assert_eq!(got, sent);
            wr.write_all(&sent).await.unwrap();
            let slices: Vec<IoSlice<'_>> = small.iter().map(|s| IoSlice::new(s)).collect();
            let mut rest = &mut slices.clone()[..];
            while !rest.is_empty() {
                let n = wr.write_vectored(rest).await.unwrap();
                IoSlice::advance_slices(&mut rest, n);
            }
            wr.flush().await.unwrap();
        };
        let from_server = async {
            client.write_all(&sent).await.unwrap();
            client.flush().await.unwrap();
            let mut got = vec![0u8; sent.len()];
            client.read_exact(&mut got).await.unwrap();
            assert_eq!(got, sent);
            let lines = small.concat();
            let mut got = vec![0u8; lines.len()];
            client.read_exact(&mut got).await.unwrap();
            assert_eq!(got, lines);
        };
        tokio::join!(server, from_server);
        // Nothing in flight: the next read waits and neither half holds a buffer.
        assert!(read_waits(&mut rd).await);
        assert_eq!(rd.buffer_capacity(), 0);
        assert_eq!(wr.buffer_capacity(), 0);
        // The client's close_notify ends the server's reads cleanly, and
        // the server's shutdown ends the client's.
        client.shutdown().await.unwrap();
        let mut rest = Vec::new();
        assert_eq!(rd.read_to_end(&mut rest).await.unwrap(), 0);
        wr.shutdown().await.unwrap();
        assert_eq!(client.read_to_end(&mut rest).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn tls13_carries_records_both_ways_and_holds_no_buffers_when_idle() {
        both_ways(&rustls::version::TLS13, None).await;
    }

    #[tokio::test]
    async fn tls12_carries_records_both_ways_and_holds_no_buffers_when_idle() {
        both_ways(&rustls::version::TLS12, None).await;
    }

    #[tokio::test]
    async fn every_cipher_suite_carries_records_both_ways() {
        use rustls::CipherSuite as S;
        for (version, suite) in [
            (&rustls::version::TLS13, S::TLS13_AES_256_GCM_SHA384),
            (&rustls::version::TLS13, S::TLS13_CHACHA20_POLY1305_SHA256),
            (
                &rustls::version::TLS12,
                S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            ),
            (
                &rustls::version::TLS12,
                S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            ),
        ] {
            both_ways(version, Some(suite)).await;
        }
    }

    #[tokio::test]
    async fn a_batch_of_small_packets_goes_out_in_one_record() {
        let ((_rd, mut wr), _client) = pair(&rustls::version::TLS13, None).await;
        let lines: Vec<Vec<u8>> = (0..100u32)
            .map(|i| format!("{i:099}\n").into_bytes())
            .collect();
        let slices: Vec<IoSlice<'_>> = lines.iter().map(|l| IoSlice::new(l)).collect();
        let before = wr.seq;
        let n = wr.write_vectored(&slices).await.unwrap();
        assert_eq!(n, 10_000);
        assert_eq!(wr.seq - before, 1);
    }

    #[tokio::test]
    async fn at_the_record_limit_the_server_closes_cleanly() {
        let ((_rd, mut wr), mut client) = pair(&rustls::version::TLS13, None).await;
        // Two records' room, and the close_notify kept back.
        wr.limit = wr.seq + 2;
        wr.write_all(b"one\n").await.unwrap();
        wr.write_all(b"two\n").await.unwrap();
        let err = wr.write_all(b"three\n").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"one\ntwo\n");
    }

    #[tokio::test]
    async fn a_write_across_the_record_limit_takes_what_fits_and_closes_cleanly() {
        let ((rd, mut wr), mut client) = pair(&rustls::version::TLS13, None).await;
        // One record's room: a write of more than a record takes one.
        wr.limit = wr.seq + 1;
        let big = vec![b'x'; MAX_FRAGMENT + 100];
        let n = wr.write(&big).await.unwrap();
        assert_eq!(n, MAX_FRAGMENT);
        let err = wr.write(&big[n..]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        drop((rd, wr));
        // What was taken arrives, then close_notify.
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, big[..MAX_FRAGMENT]);
    }

    #[tokio::test]
    async fn at_the_record_limit_a_full_socket_still_gets_the_close_notify() {
        let ((_rd, mut wr), mut client) = pair(&rustls::version::TLS13, None).await;
        // Four records' room, more than the pipe holds.
        wr.limit = wr.seq + 4;
        let sent = vec![b'y'; 4 * MAX_FRAGMENT];
        wr.write_all(&sent).await.unwrap();
        // The socket is full: the close_notify waits for room.
        let waits = std::future::poll_fn(|cx| {
            Poll::Ready(Pin::new(&mut wr).poll_write(cx, b"z").is_pending())
        })
        .await;
        assert!(waits);
        let reading = tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.map(|_| got)
        });
        // The same write, polled again, ends with the limit's error once
        // the close_notify is out.
        let err = wr.write(b"z").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(reading.await.unwrap().unwrap(), sent);
    }

    #[tokio::test]
    async fn a_close_notify_sent_with_the_handshake_ends_the_reads() {
        let ((mut rd, _wr), _client, _c, _) = by_hand_pair(b"last\n", true, None).await;
        let mut got = Vec::new();
        rd.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last\n");
    }

    #[tokio::test]
    async fn a_request_sent_with_the_last_handshake_record_is_read_first() {
        let ((mut rd, _wr), mut client, mut c, _) = by_hand_pair(b"first\n", false, None).await;
        // rustls had read and decrypted it during the handshake.
        assert_eq!(&rd.early[..], b"first\n");
        client.writer().write_all(b"second\n").unwrap();
        let mut out = Vec::new();
        client.write_tls(&mut out).unwrap();
        c.write_all(&out).await.unwrap();
        let mut got = [0u8; 13];
        rd.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"first\nsecond\n");
    }

    #[tokio::test]
    async fn a_record_cut_where_the_handshake_ends_is_read_whole() {
        // The client's last flight, a request, and half of the next record
        // arrive in one read: rustls must not take the half with it.
        let ((mut rd, _wr), _client, mut c, rest) =
            by_hand_pair(b"first\n", false, Some(b"second\n")).await;
        assert!(!rest.is_empty());
        c.write_all(&rest).await.unwrap();
        let mut got = [0u8; 13];
        rd.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"first\nsecond\n");
    }

    #[tokio::test]
    async fn a_key_update_from_the_client_ends_the_connection() {
        let ((mut rd, _wr), mut client, mut c, _) = by_hand_pair(b"first\n", false, None).await;
        client.refresh_traffic_keys().unwrap();
        client.writer().write_all(b"after\n").unwrap();
        let mut out = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut out).unwrap();
        }
        c.write_all(&out).await.unwrap();
        let mut rest = Vec::new();
        let err = rd.read_to_end(&mut rest).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(rest, b"first\n");
    }

    #[tokio::test]
    async fn a_forged_record_is_refused() {
        let ((mut rd, _wr), mut client, mut c, _) = by_hand_pair(b"", false, None).await;
        client.writer().write_all(b"hello\n").unwrap();
        let mut out = Vec::new();
        client.write_tls(&mut out).unwrap();
        if let Some(last) = out.last_mut() {
            *last ^= 1;
        }
        c.write_all(&out).await.unwrap();
        let mut got = [0u8; 6];
        let err = rd.read_exact(&mut got).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn an_overlong_record_is_refused_before_it_is_read() {
        let ((mut rd, _wr), _client, mut c, _) = by_hand_pair(b"", false, None).await;
        // A header announcing one byte more than TLS 1.3 allows, and none
        // of them.
        let len = u16::try_from(MAX_CIPHERTEXT_TLS13 + 1)
            .unwrap()
            .to_be_bytes();
        c.write_all(&[23, 3, 3, len[0], len[1]]).await.unwrap();
        let mut got = [0u8; 1];
        let err = rd.read_exact(&mut got).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn a_cut_without_close_notify_is_an_error() {
        let ((mut rd, _wr), client) = pair(&rustls::version::TLS13, None).await;
        drop(client);
        let mut rest = Vec::new();
        let err = rd.read_to_end(&mut rest).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
