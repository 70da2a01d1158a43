//! The application protocols negotiated by ALPN.

/// ALPN name of the plain protocol.
pub const PLAIN: &[u8] = b"10bit/0.1";
/// ALPN name of the gzip-compressed protocol.
pub const GZIP: &[u8] = b"10bit-gzip/0.1";
/// ALPN name of HTTP/1.1 (the web client and WebSocket sessions).
pub const HTTP: &[u8] = b"http/1.1";

/// The protocol a connection speaks after the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// `10bit/0.1`: JSON lines as they are.
    Plain,
    /// `10bit-gzip/0.1`: JSON lines inside one gzip stream per direction.
    Gzip,
    /// `http/1.1`: the web client's page and WebSocket sessions.
    Http,
}

impl Alpn {
    /// Maps the negotiated ALPN value; no ALPN at all means plain, so
    /// `openssl s_client` without `-alpn` works.
    pub fn from_negotiated(proto: Option<&[u8]>) -> Option<Alpn> {
        match proto {
            None => Some(Alpn::Plain),
            Some(p) if p == PLAIN => Some(Alpn::Plain),
            Some(p) if p == GZIP => Some(Alpn::Gzip),
            Some(p) if p == HTTP => Some(Alpn::Http),
            Some(_) => None,
        }
    }

    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            Alpn::Plain => "10bit/0.1",
            Alpn::Gzip => "10bit-gzip/0.1",
            Alpn::Http => "http/1.1",
        }
    }

    /// The ALPN bytes.
    pub fn wire(self) -> &'static [u8] {
        match self {
            Alpn::Plain => PLAIN,
            Alpn::Gzip => GZIP,
            Alpn::Http => HTTP,
        }
    }
}
