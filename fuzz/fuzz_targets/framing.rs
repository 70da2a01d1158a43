//! The line framer: whatever the bytes and however they are split into
//! reads, every line it yields is complete, never blank, within the limit
//! and without its line ending, and the frames are the same as when the
//! whole input arrives in one read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tenthbit::conn::framing::{Frame, LineDecoder, Span};

/// Frames of `input` fed in reads of the given sizes, by the lending path.
fn frames(input: &[u8], max_line: usize, sizes: &[u8]) -> Vec<Frame> {
    let mut d = LineDecoder::new(max_line);
    let mut out = Vec::new();
    let mut rest = input;
    let mut sizes = sizes.iter().cycle();
    while !rest.is_empty() {
        let n = usize::from(*sizes.next().unwrap_or(&255)).clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        d.feed(chunk);
        while let Some(span) = d.next_span() {
            out.push(match span {
                Span::Line(range) => Frame::Line(d.line(range).to_vec().into()),
                Span::TooLong => Frame::TooLong,
            });
        }
        // Held memory stays bounded by the limit plus one read.
        assert!(d.buffered() <= max_line + 2 + chunk.len());
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&limit, rest)) = data.split_first() else {
        return;
    };
    let Some((&n_sizes, rest)) = rest.split_first() else {
        return;
    };
    let split = usize::from(n_sizes % 8).min(rest.len());
    let (sizes, input) = rest.split_at(split);
    let max_line = usize::from(limit) + 1;
    let chunked = frames(
        input,
        max_line,
        if sizes.is_empty() { &[255] } else { sizes },
    );
    for frame in &chunked {
        if let Frame::Line(line) = frame {
            assert!(line.len() <= max_line);
            assert!(!line.contains(&b'\n'));
            assert!(!line.iter().all(u8::is_ascii_whitespace));
        }
    }
    // The owning path and one read of everything agree with it.
    let mut d = LineDecoder::new(max_line);
    d.feed(input);
    let mut whole = Vec::new();
    while let Some(frame) = d.next_frame() {
        whole.push(frame);
    }
    assert_eq!(chunked, whole);
});
