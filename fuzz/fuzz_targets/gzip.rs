//! The gzip transport: the decoder on any bytes (never panics, output
//! bounded per call, always ends), and a round trip through the encoder,
//! in any split of writes and flushes, gives the bytes back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tenthbit::conn::gzip::{Flush, GzipDecoder, GzipEncoder};

/// Inflates `input` fed in reads of `step` bytes; `None` on a stream error.
/// Stops after `cap` bytes of output (a bomb is the reader's to limit).
fn inflate(input: &[u8], step: usize, cap: usize) -> Option<Vec<u8>> {
    let mut d = GzipDecoder::new();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    for chunk in input.chunks(step.max(1)) {
        d.push(chunk);
        loop {
            let n = d.read(&mut buf).ok()?;
            if n == 0 {
                break;
            }
            assert!(n <= buf.len());
            out.extend_from_slice(&buf[..n]);
            if out.len() > cap {
                return Some(out);
            }
        }
    }
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        // Raw input as a compressed stream.
        let _ = inflate(rest, usize::from(mode >> 1) + 1, 1 << 20);
        return;
    }
    // Round trip: each control byte below 0x10 ends a write with a flush.
    let mut enc = GzipEncoder::new(u32::from(mode >> 1) % 10);
    let mut wire = Vec::new();
    let mut plain = Vec::new();
    for part in rest.split_inclusive(|&b| b < 0x10) {
        enc.write(part, &mut wire);
        plain.extend_from_slice(part);
        match part.last().copied().unwrap_or(0xff) {
            0x00..=0x03 => enc.flush(Flush::Sync, &mut wire),
            0x04..=0x05 => enc.flush(Flush::Full, &mut wire),
            _ => {}
        }
    }
    enc.finish(&mut wire);
    let back = inflate(&wire, usize::from(mode >> 2) + 1, usize::MAX).expect("own stream inflates");
    assert_eq!(back, plain);
});
