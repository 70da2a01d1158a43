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

/// A frame lent by [`LineDecoder::next_span`]: a line is
/// [`LineDecoder::line`] of the range, until the decoder is next changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Span {
    /// Where a complete line is, without its `\n` or `\r\n`, never blank.
    Line(std::ops::Range<usize>),
    /// As [`Frame::TooLong`].
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
    /// Bytes at the front of `buf` that belong to the line last lent;
    /// dropped when the decoder is next changed (a cursor step, where
    /// splitting the line off cost two atomic steps per line).
    lent: usize,
    /// Bytes skipped that yield nothing since [`LineDecoder::take_silent`]:
    /// blank lines, and (see [`LineDecoder::silent_tails`]) an
    /// over-long line's tail past [`FREE_TAIL`]. The reader charges them to
    /// the peer's silent-input allowance.
    silent: usize,
    /// Bytes of the over-long line being discarded, since its `TooLong`.
    tail: usize,
    /// Whether over-long lines' tails count as silent input.
    silent_tails: bool,
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
            lent: 0,
            silent: 0,
            tail: 0,
            silent_tails: false,
        }
    }

    /// Bytes skipped that yield nothing since the last call.
    pub fn take_silent(&mut self) -> usize {
        std::mem::take(&mut self.silent)
    }

    /// Whether over-long lines' tails past [`FREE_TAIL`] count as silent
    /// input: yes for inflated input, where a few KiB sent make gigabytes
    /// of a line; input read as it was sent costs the peer what it costs
    /// the server.
    pub fn silent_tails(mut self, silent: bool) -> Self {
        self.silent_tails = silent;
        self
    }

    /// Skips `n` bytes of an over-long line's tail, charging what is past
    /// [`FREE_TAIL`] when tails are silent input.
    fn skip_tail(&mut self, n: usize) {
        let free = FREE_TAIL.saturating_sub(self.tail);
        self.tail = self.tail.saturating_add(n);
        if self.silent_tails {
            self.silent += n.saturating_sub(free);
        }
    }

    /// Drops the line last lent.
    fn settle(&mut self) {
        self.buf.advance(std::mem::take(&mut self.lent));
    }

    /// Appends bytes read from the peer.
    pub fn feed(&mut self, data: &[u8]) {
        self.settle();
        self.buf.extend_from_slice(data);
    }

    /// The buffer to read socket bytes into directly (no copy), with at
    /// least `room` bytes free.
    pub fn read_target(&mut self, room: usize) -> &mut BytesMut {
        self.settle();
        self.buf.reserve(room);
        &mut self.buf
    }

    /// Frees the buffer when it holds nothing, so a connection waiting for
    /// its next packet keeps no read buffer (the read wants room again only
    /// once bytes have arrived).
    pub fn release_if_empty(&mut self) {
        self.settle();
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
            self.scanned = 0;
        }
    }

    /// Bytes of buffer held, used or not (for tests of the memory bound).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Bytes held and not yet handed out (for tests of the memory bound);
    /// the line last lent is not counted.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.lent
    }

    /// The next frame, or `None` when more bytes are needed.
    pub fn next_frame(&mut self) -> Option<Frame> {
        let span = self.next_span()?;
        Some(self.own(span))
    }

    /// The span just lent, as a frame that owns its bytes. Only for the
    /// span [`LineDecoder::next_span`] has just returned.
    pub(crate) fn own(&mut self, span: Span) -> Frame {
        match span {
            Span::Line(range) => {
                let line = self.buf.split_to(std::mem::take(&mut self.lent));
                Frame::Line(line.freeze().slice(range))
            }
            Span::TooLong => Frame::TooLong,
        }
    }

    /// A line lent by [`LineDecoder::next_span`]. Read it before the
    /// decoder is used again: a range kept past that reads whatever is
    /// there by then (a later line's bytes), or nothing.
    pub fn line(&self, range: std::ops::Range<usize>) -> &[u8] {
        self.buf.get(range).unwrap_or_default()
    }

    /// The next frame, lent, or `None` when more bytes are needed.
    pub fn next_span(&mut self) -> Option<Span> {
        self.settle();
        loop {
            let found = memchr(&self.buf[self.scanned..]).map(|i| self.scanned + i);
            match found {
                Some(nl) => {
                    self.scanned = 0;
                    if self.discarding {
                        self.discarding = false;
                        self.buf.advance(nl + 1);
                        self.skip_tail(nl + 1);
                        continue;
                    }
                    let mut end = nl;
                    if nl > 0 && self.buf.get(nl - 1) == Some(&b'\r') {
                        end = nl - 1;
                    }
                    let line = self.buf.get(..end).unwrap_or_default();
                    if line.len() > self.max_line {
                        // Arrived complete in one chunk, already over the limit.
                        self.buf.advance(nl + 1);
                        return Some(Span::TooLong);
                    }
                    if line.iter().all(u8::is_ascii_whitespace) {
                        self.buf.advance(nl + 1);
                        self.silent += nl + 1;
                        continue;
                    }
                    self.lent = nl + 1;
                    return Some(Span::Line(0..end));
                }
                None => {
                    if self.discarding {
                        self.skip_tail(self.buf.len());
                        self.buf.clear();
                        self.scanned = 0;
                        return None;
                    }
                    // One byte of slack for the `\r` of a `\r\n` ending.
                    if self.buf.len() > self.max_line + 1 {
                        self.buf.clear();
                        self.scanned = 0;
                        self.discarding = true;
                        self.tail = 0;
                        return Some(Span::TooLong);
                    }
                    self.scanned = self.buf.len();
                    return None;
                }
            }
        }
    }

    /// Drops everything buffered (used when a stream is abandoned).
    pub fn clear(&mut self) {
        self.lent = 0;
        self.buf.advance(self.buf.len());
        self.scanned = 0;
        self.discarding = false;
    }
}

/// How much of an over-long line's tail (past its `packet/too-large`) is
/// not silent input over gzip: a paste somewhat over the limit gets its
/// error and the session goes on; a line of gigabytes, which takes a few
/// KiB to send, is cut as blank lines are (protocol.md 9.6).
const FREE_TAIL: usize = 1 << 20;

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
        line_of(s.as_bytes())
    }

    fn line_of(bytes: &[u8]) -> Frame {
        Frame::Line(Bytes::copy_from_slice(bytes))
    }

    #[test]
    fn splits_crlf_and_skips_blank() {
        let mut d = LineDecoder::new(16);
        d.feed(b"a\r\n\n  \r\nbc\nd");
        assert_eq!(drain(&mut d), vec![line("a"), line("bc")]);
        d.feed(b"e\n");
        assert_eq!(drain(&mut d), vec![line("de")]);
    }

    /// Feeding or reading more while a line is lent drops that line first,
    /// and nothing else.
    #[test]
    fn a_lent_line_goes_when_the_decoder_takes_more() {
        let mut d = LineDecoder::new(16);
        d.feed(b"ab\r\ncd");
        let Some(Span::Line(r)) = d.next_span() else {
            panic!("a line")
        };
        assert_eq!(d.line(r), b"ab");
        assert_eq!(d.buffered(), 2);
        d.feed(b"\nef");
        let Some(Span::Line(r)) = d.next_span() else {
            panic!("a line")
        };
        assert_eq!(d.line(r), b"cd");
        d.read_target(8).extend_from_slice(b"\n");
        assert_eq!(d.next_frame(), Some(line("ef")));
        assert_eq!(d.buffered(), 0);
        d.release_if_empty();
        assert_eq!(d.capacity(), 0);
    }

    #[test]
    fn blank_lines_are_counted() {
        let mut d = LineDecoder::new(16);
        d.feed(b"\n \r\nab\n\t\n");
        assert_eq!(drain(&mut d), vec![line("ab")]);
        assert_eq!(d.take_silent(), 6);
        assert_eq!(d.take_silent(), 0);
    }

    /// What an over-long line sends past its `TooLong` and [`FREE_TAIL`]
    /// more yields nothing, and counts as silent input.
    #[test]
    fn an_over_long_lines_tail_past_the_free_part_is_silent() {
        let mut d = LineDecoder::new(4).silent_tails(true);
        d.feed(b"abcdefg");
        assert_eq!(drain(&mut d), vec![Frame::TooLong]);
        d.feed(&vec![b'x'; FREE_TAIL - 2]);
        assert_eq!(drain(&mut d), vec![]);
        assert_eq!(d.take_silent(), 0);
        d.feed(b"hijkl");
        assert_eq!(drain(&mut d), vec![]);
        d.feed(b"mn\nok\n");
        assert_eq!(drain(&mut d), vec![line("ok")]);
        assert_eq!(d.take_silent(), 5 + 3 - 2);
        // The next over-long line has its own free part.
        d.feed(b"abcdefg\n");
        assert_eq!(drain(&mut d), vec![Frame::TooLong]);
        assert_eq!(d.take_silent(), 0);
        // Input read as it was sent: the peer pays for its tails.
        let mut d = LineDecoder::new(4);
        d.feed(b"abcdefg");
        d.feed(&vec![b'x'; FREE_TAIL + 10]);
        d.feed(b"\nok\n");
        assert_eq!(drain(&mut d), vec![Frame::TooLong, line("ok")]);
        assert_eq!(d.take_silent(), 0);
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
            // The same input through the lending path.
            let mut lender = LineDecoder::new(max);
            let mut lent = Vec::new();
            for part in data.chunks(chunk) {
                d.feed(part);
                while let Some(f) = d.next_frame() {
                    got.push(f);
                }
                prop_assert!(d.buffered() <= max + 1 + chunk);
                lender.feed(part);
                while let Some(span) = lender.next_span() {
                    lent.push(match span {
                        Span::Line(range) => line_of(lender.line(range)),
                        Span::TooLong => Frame::TooLong,
                    });
                }
                prop_assert!(lender.buffered() <= max + 1 + chunk);
            }
            prop_assert_eq!(&lent, &got);
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
