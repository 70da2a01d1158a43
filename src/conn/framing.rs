//! Line framing: splits a byte stream into packet lines at `\n`, accepting
//! `\r\n`, skipping blank lines, and discarding over-long lines without ever
//! buffering more than the limit.

use bytes::{Buf, Bytes, BytesMut};

/// What the decoder yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A complete line, without its `\n` or `\r\n`, never blank.
    Line(Bytes),
    /// A line longer than the limit was discarded (reported once per line, as
    /// soon as the limit is passed; the rest of it is dropped as it arrives).
    TooLong,
}

/// Incremental line splitter with a hard size bound.
///
/// Feed bytes with [`LineDecoder::feed`], then drain with
/// [`LineDecoder::next_frame`] until it returns `None`. Memory held is at most
/// the limit plus one fed chunk.
#[derive(Debug)]
pub struct LineDecoder {
    buf: BytesMut,
    max_line: usize,
    /// Bytes of `buf` already scanned without finding `\n`.
    scanned: usize,
    /// Inside an over-long line: drop bytes up to the next `\n`.
    discarding: bool,
}

impl LineDecoder {
    /// A decoder refusing lines longer than `max_line` bytes (newline excluded).
    pub fn new(max_line: usize) -> Self {
        Self {
            // Grows with traffic: an idle connection holds next to nothing.
            buf: BytesMut::new(),
            max_line,
            scanned: 0,
            discarding: false,
        }
    }

    /// Appends bytes read from the peer.
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The buffer to read socket bytes into directly (no copy), with at
    /// least `room` bytes free.
    pub fn read_target(&mut self, room: usize) -> &mut BytesMut {
        self.buf.reserve(room);
        &mut self.buf
    }

    /// Frees the buffer when it holds nothing, so a connection waiting for
    /// its next packet keeps no read buffer (the read wants room again only
    /// once bytes have arrived).
    pub fn release_if_empty(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
            self.scanned = 0;
        }
    }

    /// Bytes of buffer held, used or not (for tests of the memory bound).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Bytes currently held (for tests of the memory bound).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next frame, or `None` when more bytes are needed.
    pub fn next_frame(&mut self) -> Option<Frame> {
        loop {
            let found = memchr(&self.buf[self.scanned..]).map(|i| self.scanned + i);
            match found {
                Some(nl) => {
                    let mut line = self.buf.split_to(nl + 1);
                    self.scanned = 0;
                    if self.discarding {
                        self.discarding = false;
                        continue;
                    }
                    line.truncate(nl);
                    if line.last() == Some(&b'\r') {
                        line.truncate(nl - 1);
                    }
                    if line.len() > self.max_line {
                        // Arrived complete in one chunk, already over the limit.
                        return Some(Frame::TooLong);
                    }
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    return Some(Frame::Line(line.freeze()));
                }
                None => {
                    if self.discarding {
                        self.buf.clear();
                        self.scanned = 0;
                        return None;
                    }
                    // One byte of slack for the `\r` of a `\r\n` ending.
                    if self.buf.len() > self.max_line + 1 {
                        self.buf.clear();
                        self.scanned = 0;
                        self.discarding = true;
                        return Some(Frame::TooLong);
                    }
                    self.scanned = self.buf.len();
                    return None;
                }
            }
        }
    }

    /// Drops everything buffered (used when a stream is abandoned).
    pub fn clear(&mut self) {
        self.buf.advance(self.buf.len());
        self.scanned = 0;
        self.discarding = false;
    }
}

/// The first `\n`, found a vector at a time (the memchr crate).
fn memchr(haystack: &[u8]) -> Option<usize> {
    memchr::memchr(b'\n', haystack)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn drain(d: &mut LineDecoder) -> Vec<Frame> {
        std::iter::from_fn(|| d.next_frame()).collect()
    }

    fn line(s: &str) -> Frame {
        Frame::Line(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn splits_crlf_and_skips_blank() {
        let mut d = LineDecoder::new(16);
        d.feed(b"a\r\n\n  \r\nbc\nd");
        assert_eq!(drain(&mut d), vec![line("a"), line("bc")]);
        d.feed(b"e\n");
        assert_eq!(drain(&mut d), vec![line("de")]);
    }

    #[test]
    fn over_long_line_is_reported_once_and_skipped() {
        let mut d = LineDecoder::new(4);
        d.feed(b"abc");
        assert_eq!(drain(&mut d), vec![]);
        d.feed(b"defgh");
        assert_eq!(drain(&mut d), vec![Frame::TooLong]);
        d.feed(b"ijkl");
        assert_eq!(drain(&mut d), vec![]);
        assert_eq!(d.buffered(), 0);
        d.feed(b"m\nok\n");
        assert_eq!(drain(&mut d), vec![line("ok")]);
    }

    #[test]
    fn exact_limit_is_accepted() {
        let mut d = LineDecoder::new(4);
        d.feed(b"abcd\r\nabcde\n");
        assert_eq!(drain(&mut d), vec![line("abcd"), Frame::TooLong]);
    }

    proptest! {
        #[test]
        fn never_holds_more_than_limit_and_matches_reference(
            data in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'\r'), Just(b'x'), any::<u8>()], 0..2048),
            chunk in 1usize..64,
            max in 1usize..40,
        ) {
            let mut d = LineDecoder::new(max);
            let mut got = Vec::new();
            for part in data.chunks(chunk) {
                d.feed(part);
                while let Some(f) = d.next_frame() {
                    got.push(f);
                }
                prop_assert!(d.buffered() <= max + 1 + chunk);
            }
            // Reference: split the whole input at '\n' (the last, unterminated
            // piece is still pending unless it is already too long).
            let mut want = Vec::new();
            let pieces: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
            let (last, complete) = pieces.split_last().unwrap();
            for p in complete {
                let p = p.strip_suffix(b"\r").unwrap_or(p);
                if p.len() > max {
                    want.push(Frame::TooLong);
                } else if !p.iter().all(u8::is_ascii_whitespace) {
                    want.push(Frame::Line(Bytes::copy_from_slice(p)));
                }
            }
            let _ = last;
            let got_complete: Vec<Frame> = got.into_iter().take(want.len()).collect();
            prop_assert_eq!(got_complete, want);
        }
    }
}
