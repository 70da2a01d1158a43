//! Server-assigned packet ids (time-ordered UUIDv7) and Unix-millisecond clocks.
//!
//! Ids come from one process-wide generator: a packed (millisecond, counter)
//! stamp advanced with one atomic step, then 62 random bits. Ids are unique
//! and strictly increasing in the order they are taken, even within one
//! millisecond (RFC 9562 §6.2, method 1: a 12-bit counter in `rand_a`); past
//! 4,096 ids in one millisecond the stamp runs ahead of the clock, as the RFC
//! allows, and the clock catches up. A caller that already read the clock
//! passes its reading ([`uuid_at`]): a message, its relay and its ack cost
//! one clock read, not three.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Bits of the counter below the millisecond in a packed stamp.
const COUNTER_BITS: u32 = 12;
/// The largest millisecond a UUIDv7 holds (48 bits).
const MAX_MS: u64 = (1 << 48) - 1;

/// The last stamp handed out: millisecond << 12 | counter.
static LAST: AtomicU64 = AtomicU64::new(0);

/// A new time-ordered id, as sent in a packet's `id`.
pub fn new_id() -> String {
    new_uuid().to_string()
}

/// A new time-ordered id, unformatted.
pub fn new_uuid() -> uuid::Uuid {
    uuid_at(now_ms())
}

/// A new time-ordered id for a clock reading of `ms` (Unix milliseconds)
/// the caller already made.
pub fn uuid_at(ms: i64) -> uuid::Uuid {
    let [id] = uuids_at(ms);
    id
}

/// `N` new time-ordered ids, in order, for one clock reading: one atomic
/// step and one draw of random bits for all of them (a message and its
/// ack).
pub fn uuids_at<const N: usize>(ms: i64) -> [uuid::Uuid; N] {
    let floor = u64::try_from(ms).unwrap_or(0).min(MAX_MS) << COUNTER_BITS;
    let first_after = |last: u64| last.saturating_add(1).max(floor);
    let run = N.saturating_sub(1) as u64;
    // `fetch_update` returns the value it replaced; the run starts after it.
    let first = match LAST.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| {
        Some(first_after(l).saturating_add(run))
    }) {
        Ok(last) | Err(last) => first_after(last),
    };
    let random: [u64; N] = rand::random();
    std::array::from_fn(|i| {
        let stamp = first.saturating_add(i as u64);
        uuid::Uuid::from_u128(v7(stamp, random.get(i).copied().unwrap_or_default()))
    })
}

/// The UUIDv7 of a packed stamp and random bits, as one number: the
/// millisecond (48 bits), version 7, the counter in `rand_a` (12 bits),
/// the variant, then 62 random bits. Made in registers: `uuid::Builder`
/// wrote the id a few bytes at a time, and the formatting that reads it
/// back eight bytes at a time stalled on every message (pairs profile).
fn v7(stamp: u64, random: u64) -> u128 {
    let ms = u128::from(stamp >> COUNTER_BITS) & u128::from(MAX_MS);
    let counter = u128::from(stamp & ((1 << COUNTER_BITS) - 1));
    (ms << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | u128::from(random >> 2)
}

/// A UUID formatted once (hyphenated, lower case), to be written many
/// times: always ASCII hex and hyphens, so it never needs JSON escaping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UuidText([u8; 36]);

impl UuidText {
    /// Formats `id`. Eight bytes at a time, in 128-bit lanes: every
    /// message takes three of these, and a table lookup per byte was a
    /// few percent of the pairs profile. The hyphens are placed in
    /// registers and the text stored in the 16-byte pieces a copy reads
    /// it in, not in its own (8, 4, 4, 4, 12 bytes): a load spanning
    /// several smaller stores waits for them to reach the cache.
    pub fn new(id: uuid::Uuid) -> Self {
        let (high, low) = id.as_u64_pair();
        let (high, low) = (
            u128::from_be_bytes(hex16(high)),
            u128::from_be_bytes(hex16(low)),
        );
        // Byte `i` of a piece is bits `(15 - i) * 8` up, as `to_be_bytes`
        // lays it out; shifting right by 8k moves bytes k places on.
        let first = (high & const { bytes(0..8) })
            | const { dash(8) }
            | ((high >> 8) & const { bytes(9..13) })
            | const { dash(13) }
            | ((high >> 16) & const { bytes(14..16) });
        let second = ((high << 112) & const { bytes(0..2) })
            | const { dash(2) }
            | ((low >> 24) & const { bytes(3..7) })
            | const { dash(7) }
            | ((low >> 32) & const { bytes(8..16) });
        let mut text = [0u8; 36];
        text[0..16].copy_from_slice(&first.to_be_bytes());
        text[16..32].copy_from_slice(&second.to_be_bytes());
        text[32..36].copy_from_slice(&(low as u32).to_be_bytes());
        Self(text)
    }

    /// The text's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // Always ASCII: `new` is the only way in.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// A mask of bytes `at` of a 16-byte piece laid out big-endian (`at`
/// within 0..16 and shorter than 16 bytes; the callers evaluate it at
/// compile time, where a bad range is an error).
const fn bytes(at: std::ops::Range<u32>) -> u128 {
    let ones = (1u128 << ((at.end - at.start) * 8)) - 1;
    ones << ((16 - at.end) * 8)
}

/// A hyphen at byte `at` (below 16) of a 16-byte piece laid out
/// big-endian; evaluated at compile time like [`bytes`].
const fn dash(at: u32) -> u128 {
    (b'-' as u128) << ((15 - at) * 8)
}

/// `x` as 16 lower-case hex digits, most significant first.
fn hex16(x: u64) -> [u8; 16] {
    const LANES: u128 = u128::from_ne_bytes([1; 16]);
    // Spread the nibbles one to a byte: 0xAB.. becomes 0x0A0B...
    let mut n = u128::from(x);
    n = (n | (n << 32)) & 0x0000_0000_ffff_ffff_0000_0000_ffff_ffff;
    n = (n | (n << 16)) & 0x0000_ffff_0000_ffff_0000_ffff_0000_ffff;
    n = (n | (n << 8)) & 0x00ff_00ff_00ff_00ff_00ff_00ff_00ff_00ff;
    n = (n | (n << 4)) & 0x0f0f_0f0f_0f0f_0f0f_0f0f_0f0f_0f0f_0f0f;
    // A nibble of 10 or more gets bit 4 set by adding 6; those skip from
    // after '9' to 'a' (39 more). No lane carries into the next.
    let letters = ((n + LANES * 6) >> 4) & LANES;
    (n + LANES * u128::from(b'0') + letters * 39).to_be_bytes()
}

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_v7_and_strictly_increasing_within_one_millisecond() {
        let ms = now_ms();
        let ids: Vec<uuid::Uuid> = (0..10_000).map(|_| uuid_at(ms)).collect();
        for pair in ids.windows(2) {
            assert!(pair[0] < pair[1], "{} then {}", pair[0], pair[1]);
        }
        for id in &ids {
            assert_eq!(id.get_version_num(), 7);
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
        }
        // 10,000 ids overflow one millisecond's counter: the stamp runs
        // ahead of the clock by about 10,000 / 4,096 milliseconds, never
        // behind the reading it was given. Other tests take ids from the
        // same generator meanwhile (far fewer than 10,000): three
        // milliseconds more cover them.
        let after = u64::try_from(now_ms()).unwrap();
        let unix_ms = |id: &uuid::Uuid| {
            let (s, n) = id.get_timestamp().unwrap().to_unix();
            s * 1000 + u64::from(n) / 1_000_000
        };
        assert!(unix_ms(&ids[0]) >= u64::try_from(ms).unwrap());
        assert!(unix_ms(&ids[9_999]) <= after + 6);
    }

    proptest::proptest! {
        /// The id made in registers is the one `uuid::Builder` makes from
        /// the same stamp and random bits.
        #[test]
        fn v7_is_the_builders_id(ms in 0..=MAX_MS, counter in 0u64..(1 << COUNTER_BITS), random: u64) {
            let stamp = (ms << COUNTER_BITS) | counter;
            let mut bytes = [0u8; 10];
            bytes[..2].copy_from_slice(&(counter as u16).to_be_bytes());
            bytes[2..].copy_from_slice(&(random >> 2).to_be_bytes());
            let built = uuid::Builder::from_unix_timestamp_millis(ms, &bytes).into_uuid();
            proptest::prop_assert_eq!(uuid::Uuid::from_u128(v7(stamp, random)), built);
        }
    }

    #[test]
    fn uuid_text_is_the_usual_form() {
        let id = new_uuid();
        assert_eq!(UuidText::new(id).as_str(), id.to_string());
        for id in [uuid::Uuid::nil(), uuid::Uuid::max()] {
            assert_eq!(UuidText::new(id).as_str(), id.to_string());
        }
    }

    proptest::proptest! {
        #[test]
        fn any_uuid_text_is_the_usual_form(bits in proptest::prelude::any::<u128>()) {
            let id = uuid::Uuid::from_u128(bits);
            let text = UuidText::new(id);
            proptest::prop_assert_eq!(text.as_str(), id.to_string());
        }
    }

    #[test]
    fn a_run_of_ids_is_in_order_and_before_the_next() {
        let ms = now_ms();
        let [a, b, c] = uuids_at(ms);
        let d = uuid_at(ms);
        assert!(a < b && b < c && c < d);
        assert_ne!(a.as_bytes()[8..], b.as_bytes()[8..], "random bits differ");
    }

    #[test]
    fn a_clock_that_steps_back_never_repeats_an_id() {
        let now = now_ms();
        let a = uuid_at(now);
        let b = uuid_at(now - 60_000);
        assert!(b > a);
    }
}
