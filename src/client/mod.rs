//! The client library: connect with TLS and ALPN, send packets, read packets,
//! and wait for the reply to a request. The `tenthbit` binary, the tests and
//! the benchmark all use it.

pub mod cli;
pub mod known;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::conn::framing::{Frame, Span};
use crate::conn::gzip::{Flush, GzipEncoder};
use crate::conn::reader::{self, FrameReader};
use crate::proto::packet::DecodeError;
use crate::proto::{Packet, id};
use crate::tls::{self, Alpn, Trust};

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// TCP or TLS failed.
    #[error("i/o: {0}")]
    Io(std::io::Error),
    /// Trust settings are unusable.
    #[error(transparent)]
    Tls(#[from] tls::Error),
    /// The host is not a valid TLS server name.
    #[error("invalid server name {0:?}")]
    ServerName(String),
    /// The server picked a protocol we did not offer.
    #[error("server negotiated an unknown protocol")]
    Alpn,
    /// The server's stream is not valid.
    #[error(transparent)]
    Read(#[from] reader::Error),
    /// The server sent a line that is not a packet.
    #[error("bad packet from server: {0}")]
    Decode(DecodeError),
    /// The server sent a line over the limit.
    #[error("server sent a line over the limit")]
    TooLong,
    /// The connection ended.
    #[error("connection closed by server")]
    Closed,
    /// Nothing came in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// More than this many bytes of other packets are kept aside (for
    /// [`Client::recv`]) while waiting for an answer.
    #[error("more than {0} bytes of packets arrived before the answer; read them first")]
    Backlog(usize),
    /// The server's certificate is not the one remembered for it.
    #[error(
        "THE CERTIFICATE OF {target} HAS CHANGED. Remembered: {known}. Presented now: {presented}. \
         This may be an attack. If the change is expected, remove the line for {target} from {}.",
        file.display()
    )]
    CertificateChanged {
        /// `host:port`.
        target: String,
        /// The remembered fingerprint.
        known: String,
        /// What the server presented.
        presented: String,
        /// The known-servers file.
        file: std::path::PathBuf,
    },
}

// Plain conversions: each message above carries its cause already.
impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

impl From<DecodeError> for Error {
    fn from(e: DecodeError) -> Self {
        Error::Decode(e)
    }
}

/// Client ops whose packets carry a password, ticket or signature.
pub const SECRET_OPS: [&str; 3] = ["auth", "register", "delete-account"];

/// How to connect.
#[derive(Debug, Clone)]
pub struct Options {
    /// How to trust the server.
    pub trust: Trust,
    /// Protocols to offer by ALPN, in preference order; empty offers none.
    pub alpn: Vec<Alpn>,
    /// Name for SNI and certificate checks (`localhost`, `10b.it`, an IP).
    pub server_name: String,
    /// Longest line accepted from the server.
    pub max_line_bytes: usize,
    /// Longest the TCP connect and the TLS handshake may take together: a
    /// listener that never answers the handshake (a wrong port, a hung
    /// server, a middlebox) is given up on with [`Error::Timeout`].
    pub connect_timeout: Duration,
    /// Most bytes of packets [`Client::request`] keeps aside for
    /// [`Client::recv`] (with those kept by earlier requests and not read
    /// yet): past it the request fails with [`Error::Backlog`], rather than
    /// let a flooding server fill the client's memory.
    pub max_kept_aside_bytes: usize,
}

/// [`Options::max_kept_aside_bytes`] unless set otherwise.
pub const MAX_KEPT_ASIDE_BYTES: usize = 64 * 1024 * 1024;

/// [`Options::connect_timeout`] unless set otherwise.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

impl Options {
    /// Pin a fingerprint, offer plain `10bit/0.1`.
    pub fn pinned(fingerprint: [u8; 32]) -> Self {
        Self {
            trust: Trust::Fingerprint(fingerprint),
            alpn: vec![Alpn::Plain],
            server_name: "localhost".into(),
            max_line_bytes: 1024 * 1024,
            connect_timeout: CONNECT_TIMEOUT,
            max_kept_aside_bytes: MAX_KEPT_ASIDE_BYTES,
        }
    }

    /// The same, offering `alpn` instead.
    pub fn with_alpn(mut self, alpn: Vec<Alpn>) -> Self {
        self.alpn = alpn;
        self
    }
}

/// A connected client.
pub struct Client {
    reader: ClientReader,
    writer: ClientWriter,
    alpn: Alpn,
}

/// The receiving half of a client (for a task that only reads).
pub struct ClientReader {
    reader: FrameReader<ReadHalf<TlsStream<TcpStream>>>,
    /// Packets kept aside by [`Client::request`], with their lines' sizes.
    pending: VecDeque<(Packet, usize)>,
    pending_bytes: usize,
    max_pending_bytes: usize,
}

/// The sending half of a client (for a task that only writes).
pub struct ClientWriter {
    writer: WriteHalf<TlsStream<TcpStream>>,
    gzip: Option<GzipEncoder>,
    wire: Vec<u8>,
}

impl Client {
    /// Connects to `addr` (`host:port`) and completes the TLS handshake.
    pub async fn connect(addr: &str, opts: &Options) -> Result<Client, Error> {
        let config = tls::client_config(&opts.trust, &opts.alpn)?;
        let name = ServerName::try_from(opts.server_name.clone())
            .map_err(|_| Error::ServerName(opts.server_name.clone()))?;
        let handshake = async {
            let tcp = TcpStream::connect(addr).await?;
            let _ = tcp.set_nodelay(true);
            TlsConnector::from(Arc::clone(&config))
                .connect(name, tcp)
                .await
        };
        let stream = tokio::time::timeout(opts.connect_timeout, handshake)
            .await
            .map_err(|_| Error::Timeout(opts.connect_timeout))??;
        let alpn = Alpn::from_negotiated(stream.get_ref().1.alpn_protocol()).ok_or(Error::Alpn)?;
        let (rd, wr) = tokio::io::split(stream);
        Ok(Client {
            reader: ClientReader {
                reader: FrameReader::new(rd, alpn == Alpn::Gzip, opts.max_line_bytes),
                pending: VecDeque::new(),
                pending_bytes: 0,
                max_pending_bytes: opts.max_kept_aside_bytes,
            },
            writer: ClientWriter {
                writer: wr,
                gzip: (alpn == Alpn::Gzip).then(|| GzipEncoder::new(6)),
                wire: Vec::new(),
            },
            alpn,
        })
    }

    /// The negotiated protocol.
    pub fn alpn(&self) -> Alpn {
        self.alpn
    }

    /// Splits into halves that separate tasks can drive.
    pub fn into_split(self) -> (ClientReader, ClientWriter) {
        (self.reader, self.writer)
    }

    /// Sends a packet (see [`ClientWriter::send`]).
    pub async fn send(&mut self, packet: &Packet) -> Result<(), Error> {
        self.writer.send(packet).await
    }

    /// Sends bytes as they are (see [`ClientWriter::send_raw`]).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.writer.send_raw(bytes).await
    }

    /// The next line from the server, undecoded; `None` when it closed.
    /// Cancel-safe.
    pub async fn recv_line(&mut self) -> Result<Option<Bytes>, Error> {
        self.reader.recv_line().await
    }

    /// The next packet from the server; `None` when it closed. Cancel-safe.
    pub async fn recv(&mut self) -> Result<Option<Packet>, Error> {
        self.reader.recv().await
    }

    /// The next packet within `limit`.
    pub async fn recv_timeout(&mut self, limit: Duration) -> Result<Packet, Error> {
        self.reader.recv_timeout(limit).await
    }

    /// Sends `packet` (with a fresh `id` if it has none) and returns the
    /// packet whose `ex.for` names it. Packets that arrive in between are kept
    /// for [`Client::recv`].
    pub async fn request(&mut self, mut packet: Packet, limit: Duration) -> Result<Packet, Error> {
        let id = packet.id.get_or_insert_with(id::new_id).clone();
        self.writer.send(&packet).await?;
        let deadline = tokio::time::Instant::now() + limit;
        let mut skipped = VecDeque::new();
        let mut kept = 0;
        let room = self
            .reader
            .max_pending_bytes
            .saturating_sub(self.reader.pending_bytes);
        let result = loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let next = match tokio::time::timeout(remaining, self.reader.recv_line()).await {
                Ok(Ok(Some(line))) => Packet::decode(&line, 128)
                    .map(|p| (p, line.len()))
                    .map_err(Error::from),
                Ok(Ok(None)) => Err(Error::Closed),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(Error::Timeout(limit)),
            };
            match next {
                Ok((p, _)) if p.ex_str("for") == Some(id.as_str()) => break Ok(p),
                Ok((p, len)) => {
                    kept += len;
                    skipped.push_back((p, len));
                    if kept > room {
                        break Err(Error::Backlog(self.reader.max_pending_bytes));
                    }
                }
                Err(e) => break Err(e),
            }
        };
        self.reader.pending_bytes += kept;
        self.reader.pending.extend(skipped);
        result
    }

    /// Ends our direction cleanly (see [`ClientWriter::finish`]).
    pub async fn finish(&mut self) -> Result<(), Error> {
        self.writer.finish().await
    }

    /// Closes the connection cleanly: our side ends (TLS close_notify),
    /// then whatever the server still sends is read and dropped until it
    /// closes too, for at most `limit`. Dropping a connection with unread
    /// data instead resets it, which the server sees (and logs) as a read
    /// error.
    pub async fn close(mut self, limit: Duration) {
        if self.finish().await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(limit, async {
            while let Ok(Some(_)) = self.reader.recv_line().await {}
        })
        .await;
    }
}

impl ClientReader {
    /// The next line if the bytes already read hold one, lent: its bytes
    /// are [`ClientReader::line`] until the reader is next used (read them
    /// first: a range kept longer reads a later line). Never waits. For
    /// readers of many lines, which then allocate nothing per line. Like
    /// the other line readers, it skips packets kept aside by
    /// [`Client::request`].
    pub fn buffered_span(&mut self) -> Option<Span> {
        self.reader.buffered_span()
    }

    /// The next line, lent as by [`ClientReader::buffered_span`]; `None`
    /// when the server closed. Cancel-safe.
    pub async fn next_span(&mut self) -> Result<Option<Span>, Error> {
        Ok(self.reader.next_span().await?)
    }

    /// The bytes of a line lent by [`ClientReader::buffered_span`] or
    /// [`ClientReader::next_span`].
    pub fn line(&self, range: std::ops::Range<usize>) -> &[u8] {
        self.reader.line(range)
    }

    /// The next line from the server, undecoded; `None` when it closed.
    /// Cancel-safe.
    pub async fn recv_line(&mut self) -> Result<Option<Bytes>, Error> {
        match self.reader.next_frame().await? {
            Some(Frame::Line(line)) => Ok(Some(line)),
            Some(Frame::TooLong) => Err(Error::TooLong),
            None => Ok(None),
        }
    }

    /// The next packet from the server; `None` when it closed. Cancel-safe.
    pub async fn recv(&mut self) -> Result<Option<Packet>, Error> {
        if let Some((p, len)) = self.pending.pop_front() {
            self.pending_bytes = self.pending_bytes.saturating_sub(len);
            return Ok(Some(p));
        }
        match self.recv_line().await? {
            Some(line) => Ok(Some(Packet::decode(&line, 128)?)),
            None => Ok(None),
        }
    }

    /// The next packet within `limit`.
    pub async fn recv_timeout(&mut self, limit: Duration) -> Result<Packet, Error> {
        match tokio::time::timeout(limit, self.recv()).await {
            Ok(Ok(Some(p))) => Ok(p),
            Ok(Ok(None)) => Err(Error::Closed),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Timeout(limit)),
        }
    }
}

impl ClientWriter {
    /// Sends a packet. Packets that carry secrets (`auth`, `register`,
    /// `delete-account`) are isolated from the compression window.
    pub async fn send(&mut self, packet: &Packet) -> Result<(), Error> {
        let secret = SECRET_OPS.contains(&packet.op.as_str());
        self.write(&packet.to_line(), secret).await
    }

    /// Sends bytes as they are (a test's malformed line, or a batch of
    /// encoded packets; include the `\n`s).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.write(bytes, false).await
    }

    async fn write(&mut self, bytes: &[u8], secret: bool) -> Result<(), Error> {
        self.wire.clear();
        match self.gzip.as_mut() {
            Some(z) => {
                if secret {
                    z.flush(Flush::Full, &mut self.wire);
                }
                z.write(bytes, &mut self.wire);
                z.flush(
                    if secret { Flush::Full } else { Flush::Sync },
                    &mut self.wire,
                );
            }
            None => self.wire.extend_from_slice(bytes),
        }
        self.writer.write_all(&self.wire).await?;
        self.writer.flush().await?;
        Ok(())
    }

    /// Ends our direction cleanly (gzip trailer, TLS close_notify) without
    /// sending `quit`; packets already on their way can still be read.
    pub async fn finish(&mut self) -> Result<(), Error> {
        if let Some(z) = self.gzip.as_mut() {
            self.wire.clear();
            z.finish(&mut self.wire);
            self.writer.write_all(&self.wire).await?;
        }
        self.writer.shutdown().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listener that accepts TCP but never answers the TLS handshake is
    /// given up on after the connect timeout (`tenthbit send` then exits 2,
    /// "could not connect"), not waited for forever.
    #[tokio::test]
    async fn a_server_that_never_handshakes_is_given_up_on() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        // Accepted and held open, never read from or written to.
        let held = tokio::spawn(async move {
            let mut kept = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                kept.push(s);
            }
        });
        let limit = Duration::from_millis(200);
        let opts = Options {
            connect_timeout: limit,
            ..Options::pinned([0; 32])
        };
        let outcome = tokio::time::timeout(Duration::from_secs(20), Client::connect(&addr, &opts))
            .await
            .expect("the client gave up by itself");
        let err = outcome.err().expect("no handshake, no client");
        assert!(matches!(err, Error::Timeout(t) if t == limit), "{err}");
        held.abort();
    }
}
