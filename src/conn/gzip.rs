//! The `10bit-gzip/0.1` transport: one continuous gzip stream per direction.
//!
//! The encoder sync-flushes after each batch so the peer can decode every
//! packet as soon as it arrives, and can full-flush (fresh dictionary) around
//! secret-bearing packets so no secret shares a compression window with data
//! someone else controls. The decoder is incremental and produces output in
//! caller-sized chunks, so limits apply to decompressed bytes and a
//! decompression bomb never allocates more than one chunk.
//!
//! Built on flate2's raw deflate with our own gzip header and trailer
//! (RFC 1952), because the stream API has no full-flush.

use bytes::{Buf, BytesMut};
use flate2::{Compress, Compression, Crc, Decompress, FlushCompress, FlushDecompress, Status};

/// The 10-byte gzip header we send: deflate, no flags, no mtime, OS unknown.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
/// Longest gzip header we accept (optional name, comment and extra fields).
const MAX_HEADER_BYTES: usize = 4096;

/// Why a compressed stream from the peer cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Not a gzip header (wrong magic, method or oversized optional fields).
    #[error("not a gzip stream: {0}")]
    BadHeader(&'static str),
    /// The deflate data is corrupt.
    #[error("corrupt deflate data")]
    Corrupt,
    /// The member's CRC or length trailer does not match its data.
    #[error("gzip trailer does not match the data")]
    BadTrailer,
}

/// How to end a batch of compressed output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// Byte-align and emit everything: the peer can decode all of it now.
    Sync,
    /// As `Sync`, and forget the dictionary: nothing after refers to before.
    Full,
}

/// Compressing half: turns packets into one continuous gzip member.
pub struct GzipEncoder {
    deflate: Compress,
    crc: Crc,
    header_sent: bool,
    finished: bool,
}

impl GzipEncoder {
    /// A new stream at `level` (0..=9).
    pub fn new(level: u32) -> Self {
        Self {
            deflate: Compress::new(Compression::new(level.min(9)), false),
            crc: Crc::new(),
            header_sent: false,
            finished: false,
        }
    }

    /// Compresses `data` into `out` (buffered; call [`GzipEncoder::flush`] to
    /// make it decodable by the peer).
    pub fn write(&mut self, data: &[u8], out: &mut Vec<u8>) {
        self.header(out);
        self.crc.update(data);
        self.run(data, FlushCompress::None, out);
    }

    /// Ends a batch.
    pub fn flush(&mut self, mode: Flush, out: &mut Vec<u8>) {
        self.header(out);
        let mode = match mode {
            Flush::Sync => FlushCompress::Sync,
            Flush::Full => FlushCompress::Full,
        };
        self.run(&[], mode, out);
    }

    /// Ends the member: final block and trailer. Further writes are ignored.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.finished {
            return;
        }
        self.header(out);
        self.run(&[], FlushCompress::Finish, out);
        out.extend_from_slice(&self.crc.sum().to_le_bytes());
        out.extend_from_slice(&self.crc.amount().to_le_bytes());
        self.finished = true;
    }

    fn header(&mut self, out: &mut Vec<u8>) {
        if !self.header_sent {
            out.extend_from_slice(&HEADER);
            self.header_sent = true;
        }
    }

    fn run(&mut self, mut input: &[u8], flush: FlushCompress, out: &mut Vec<u8>) {
        if self.finished {
            return;
        }
        loop {
            if out.capacity() - out.len() < 256 {
                out.reserve(input.len() / 2 + 1024);
            }
            let before = self.deflate.total_in();
            // compress_vec only fails on a misuse of the stream state, which
            // this type rules out; treat it as end of output.
            let Ok(status) = self.deflate.compress_vec(input, out, flush) else {
                return;
            };
            let consumed = usize::try_from(self.deflate.total_in() - before).unwrap_or(input.len());
            input = input.get(consumed..).unwrap_or(&[]);
            let room_left = out.len() < out.capacity();
            match (flush, status) {
                (_, Status::StreamEnd) => return,
                (FlushCompress::Finish, _) => {}
                _ if input.is_empty() && room_left => return,
                _ => {}
            }
        }
    }
}

enum State {
    Header,
    Body,
    Trailer,
    /// The stream was corrupt after output already handed out: every read
    /// from now on fails.
    Corrupt,
}

/// Decompressing half: incremental, bounded output per call.
pub struct GzipDecoder {
    state: State,
    inflate: Decompress,
    crc: Crc,
    input: BytesMut,
}

impl Default for GzipDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl GzipDecoder {
    /// A decoder expecting a gzip header first.
    pub fn new() -> Self {
        Self {
            state: State::Header,
            inflate: Decompress::new(false),
            crc: Crc::new(),
            input: BytesMut::new(),
        }
    }

    /// Appends compressed bytes from the peer.
    pub fn push(&mut self, data: &[u8]) {
        self.input.extend_from_slice(data);
    }

    /// The buffer to read compressed bytes into directly, with at least
    /// `room` bytes free.
    pub fn input_target(&mut self, room: usize) -> &mut BytesMut {
        self.input.reserve(room);
        &mut self.input
    }

    /// Compressed bytes not yet consumed.
    pub fn pending_input(&self) -> usize {
        self.input.len()
    }

    /// Decompresses into `out`; returns how many bytes were written, 0 when
    /// more input is needed. Call until it returns 0.
    pub fn read(&mut self, out: &mut [u8]) -> Result<usize, Error> {
        loop {
            match self.state {
                State::Header => match parse_header(&self.input)? {
                    Some(len) => {
                        self.input.advance(len);
                        self.inflate.reset(false);
                        self.crc.reset();
                        self.state = State::Body;
                    }
                    None => return Ok(0),
                },
                State::Body => {
                    // Input may be used up while inflate still holds output
                    // that did not fit last time, so always ask it.
                    if out.is_empty() {
                        return Ok(0);
                    }
                    let (in0, out0) = (self.inflate.total_in(), self.inflate.total_out());
                    let status =
                        match self
                            .inflate
                            .decompress(&self.input, out, FlushDecompress::None)
                        {
                            Ok(status) => status,
                            // What inflated before the fault in this same call
                            // (a sync-flushed request, then garbage) is handed
                            // out first: those lines get their replies
                            // (protocol.md 4), and the next read fails.
                            Err(_) => {
                                self.state = State::Corrupt;
                                let produced = usize::try_from(self.inflate.total_out() - out0)
                                    .map_err(|_| Error::Corrupt)?;
                                if produced == 0 {
                                    return Err(Error::Corrupt);
                                }
                                return Ok(produced.min(out.len()));
                            }
                        };
                    let consumed = usize::try_from(self.inflate.total_in() - in0)
                        .map_err(|_| Error::Corrupt)?;
                    let produced = usize::try_from(self.inflate.total_out() - out0)
                        .map_err(|_| Error::Corrupt)?;
                    self.input.advance(consumed.min(self.input.len()));
                    let written = out.get(..produced).ok_or(Error::Corrupt)?;
                    self.crc.update(written);
                    if status == Status::StreamEnd {
                        self.state = State::Trailer;
                    }
                    if produced > 0 {
                        return Ok(produced);
                    }
                    if consumed == 0 && status != Status::StreamEnd {
                        return Ok(0);
                    }
                }
                State::Trailer => {
                    let Some(trailer) = self.input.get(..8) else {
                        return Ok(0);
                    };
                    let crc = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
                    let size = u32::from_le_bytes([trailer[4], trailer[5], trailer[6], trailer[7]]);
                    if crc != self.crc.sum() || size != self.crc.amount() {
                        return Err(Error::BadTrailer);
                    }
                    self.input.advance(8);
                    // A peer may start a new member after finishing one.
                    self.state = State::Header;
                }
                State::Corrupt => return Err(Error::Corrupt),
            }
        }
    }
}

/// Length of a complete gzip header at the start of `buf`, `None` if more
/// bytes are needed.
fn parse_header(buf: &[u8]) -> Result<Option<usize>, Error> {
    const FHCRC: u8 = 0x02;
    const FEXTRA: u8 = 0x04;
    const FNAME: u8 = 0x08;
    const FCOMMENT: u8 = 0x10;
    if let Some(&m) = buf.first() {
        if m != 0x1f {
            return Err(Error::BadHeader("wrong magic"));
        }
    }
    if let Some(&m) = buf.get(1) {
        if m != 0x8b {
            return Err(Error::BadHeader("wrong magic"));
        }
    }
    if let Some(&m) = buf.get(2) {
        if m != 8 {
            return Err(Error::BadHeader("method is not deflate"));
        }
    }
    let Some(&flags) = buf.get(3) else {
        return Ok(None);
    };
    if flags & 0xe0 != 0 {
        return Err(Error::BadHeader("reserved flags set"));
    }
    let mut pos = 10;
    if buf.len() < pos {
        return Ok(None);
    }
    if flags & FEXTRA != 0 {
        let (Some(&lo), Some(&hi)) = (buf.get(pos), buf.get(pos + 1)) else {
            return Ok(None);
        };
        pos += 2 + usize::from(u16::from_le_bytes([lo, hi]));
    }
    for flag in [FNAME, FCOMMENT] {
        if flags & flag != 0 {
            match buf
                .get(pos..)
                .and_then(|rest| rest.iter().position(|&b| b == 0))
            {
                Some(nul) => pos += nul + 1,
                None if buf.len() > MAX_HEADER_BYTES => {
                    return Err(Error::BadHeader("header fields too long"));
                }
                None => return Ok(None),
            }
        }
    }
    if flags & FHCRC != 0 {
        pos += 2;
    }
    if pos > MAX_HEADER_BYTES {
        return Err(Error::BadHeader("header fields too long"));
    }
    Ok(if buf.len() >= pos { Some(pos) } else { None })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Write;

    fn decode_all(d: &mut GzipDecoder) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        let mut chunk = [0u8; 7];
        loop {
            let n = d.read(&mut chunk)?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&chunk[..n]);
        }
    }

    #[test]
    fn every_sync_flush_is_decodable_at_once() {
        let mut enc = GzipEncoder::new(6);
        let mut dec = GzipDecoder::new();
        for i in 0..50 {
            let line = format!("{{\"op\":\"send\",\"n\":{i}}}\n");
            let mut wire = Vec::new();
            enc.write(line.as_bytes(), &mut wire);
            enc.flush(
                if i % 7 == 0 { Flush::Full } else { Flush::Sync },
                &mut wire,
            );
            dec.push(&wire);
            assert_eq!(decode_all(&mut dec).unwrap(), line.as_bytes());
        }
    }

    #[test]
    fn full_flush_isolates_a_secret_from_what_follows() {
        let secret = b"ticket=OHMYSECRETTICKETVALUE\n";
        let mut enc = GzipEncoder::new(9);
        let mut wire = Vec::new();
        enc.write(b"public before\n", &mut wire);
        enc.flush(Flush::Full, &mut wire);
        enc.write(secret, &mut wire);
        enc.flush(Flush::Full, &mut wire);
        let after_secret = wire.len();
        // Data repeating the secret would compress to a back-reference into
        // it if the dictionary were kept.
        enc.write(b"echo ticket=OHMYSECRETTICKETVALUE\n", &mut wire);
        enc.flush(Flush::Sync, &mut wire);
        // A fresh inflater with no history must decode what follows alone.
        let mut fresh = Decompress::new(false);
        let mut out = vec![0u8; 256];
        fresh
            .decompress(&wire[after_secret..], &mut out, FlushDecompress::Sync)
            .expect("independent of earlier data");
        let n = fresh.total_out() as usize;
        assert_eq!(&out[..n], b"echo ticket=OHMYSECRETTICKETVALUE\n");
        // Sanity: without the full flush the same data is not independent.
        let mut enc = GzipEncoder::new(9);
        let mut wire = Vec::new();
        enc.write(secret, &mut wire);
        enc.flush(Flush::Sync, &mut wire);
        let cut = wire.len();
        enc.write(b"echo ticket=OHMYSECRETTICKETVALUE\n", &mut wire);
        enc.flush(Flush::Sync, &mut wire);
        let mut fresh = Decompress::new(false);
        let mut out = vec![0u8; 256];
        let r = fresh.decompress(&wire[cut..], &mut out, FlushDecompress::Sync);
        let n = fresh.total_out() as usize;
        assert!(r.is_err() || &out[..n] != b"echo ticket=OHMYSECRETTICKETVALUE\n");
    }

    #[test]
    fn our_stream_is_standard_gzip() {
        let mut enc = GzipEncoder::new(6);
        let mut wire = Vec::new();
        enc.write(b"hello\n", &mut wire);
        enc.flush(Flush::Sync, &mut wire);
        enc.write(b"world\n", &mut wire);
        enc.flush(Flush::Full, &mut wire);
        enc.finish(&mut wire);
        let mut plain = Vec::new();
        let mut reference = flate2::write::GzDecoder::new(&mut plain);
        reference.write_all(&wire).unwrap();
        reference.finish().unwrap();
        assert_eq!(plain, b"hello\nworld\n");
    }

    #[test]
    fn reads_reference_gzip_with_optional_fields_and_members() {
        let mut wire = Vec::new();
        for text in ["one\n", "two\n"] {
            let mut e = flate2::GzBuilder::new()
                .filename("f.txt")
                .comment("c")
                .extra(vec![1, 2, 3])
                .write(Vec::new(), flate2::Compression::best());
            e.write_all(text.as_bytes()).unwrap();
            wire.extend(e.finish().unwrap());
        }
        let mut dec = GzipDecoder::new();
        for b in &wire {
            dec.push(&[*b]);
        }
        assert_eq!(decode_all(&mut dec).unwrap(), b"one\ntwo\n");
    }

    #[test]
    fn garbage_is_an_error() {
        let mut dec = GzipDecoder::new();
        dec.push(b"{\"op\":\"ping\"}\n");
        assert_eq!(decode_all(&mut dec), Err(Error::BadHeader("wrong magic")));
        let mut dec = GzipDecoder::new();
        dec.push(&HEADER);
        dec.push(&[0xff; 32]);
        assert_eq!(decode_all(&mut dec), Err(Error::Corrupt));
    }

    /// Lines inflated before a fault in the same input are handed out;
    /// the read after them fails.
    #[test]
    fn what_inflated_before_a_fault_comes_out_first() {
        let mut enc = GzipEncoder::new(6);
        let mut wire = Vec::new();
        enc.write(b"{\"op\":\"ping\",\"id\":\"p1\"}\n", &mut wire);
        enc.flush(Flush::Sync, &mut wire);
        wire.extend_from_slice(&[0xff; 8]);
        let mut dec = GzipDecoder::new();
        dec.push(&wire);
        let mut out = [0u8; 256];
        let n = dec.read(&mut out).unwrap();
        assert_eq!(&out[..n], b"{\"op\":\"ping\",\"id\":\"p1\"}\n");
        assert_eq!(dec.read(&mut out), Err(Error::Corrupt));
        assert_eq!(dec.read(&mut out), Err(Error::Corrupt));
    }

    #[test]
    fn bomb_is_decoded_in_bounded_chunks() {
        let zeros = vec![0u8; 8 * 1024 * 1024];
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(&zeros).unwrap();
        let wire = e.finish().unwrap();
        assert!(wire.len() < 64 * 1024);
        let mut dec = GzipDecoder::new();
        dec.push(&wire);
        let mut chunk = vec![0u8; 16 * 1024];
        let mut total = 0;
        loop {
            let n = dec.read(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            assert!(n <= chunk.len());
            total += n;
        }
        assert_eq!(total, zeros.len());
    }

    proptest! {
        #[test]
        fn random_input_never_panics(prefix in any::<bool>(), bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let mut dec = GzipDecoder::new();
            if prefix {
                dec.push(&HEADER);
            }
            dec.push(&bytes);
            let mut chunk = [0u8; 64];
            for _ in 0..100_000 {
                match dec.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => prop_assert!(n <= 64),
                }
            }
        }

        #[test]
        fn round_trips_any_batches(batches in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..20)) {
            let mut enc = GzipEncoder::new(1);
            let mut dec = GzipDecoder::new();
            for b in &batches {
                let mut wire = Vec::new();
                enc.write(b, &mut wire);
                enc.flush(Flush::Sync, &mut wire);
                dec.push(&wire);
                prop_assert_eq!(&decode_all(&mut dec).unwrap(), b);
            }
        }
    }
}
