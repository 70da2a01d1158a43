//! Server-assigned packet ids (time-ordered UUIDv7) and Unix-millisecond clocks.

use std::time::{SystemTime, UNIX_EPOCH};

/// A new time-ordered id, as sent in a packet's `id`.
pub fn new_id() -> String {
    new_uuid().to_string()
}

/// A new time-ordered id, unformatted.
pub fn new_uuid() -> uuid::Uuid {
    uuid::Uuid::now_v7()
}

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
