//! Buffers for shared frames (a burst's relays and acks), recycled: when
//! the last writer holding a frame drops it, its buffer goes back to a
//! process-wide pool, and the next burst writes into memory that is already
//! mapped. Allocated afresh, a burst's buffer often came from pages the
//! allocator had handed back (frames are freed on the writer's thread, not
//! the session's), and the kernel zeroing them on first touch was about an
//! eighth of the server's CPU in chatbench's pairs.

use std::sync::Mutex;

use bytes::Bytes;

/// Most buffers kept, and most bytes of capacity kept in all: the pool
/// never holds more than a busy moment needs.
const MAX_BUFFERS: usize = 256;
const MAX_BYTES: usize = 8 << 20;
/// A buffer this large is not kept (a rare huge burst).
const MAX_BUFFER: usize = 256 << 10;

struct Pool {
    free: Vec<Vec<u8>>,
    bytes: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    free: Vec::new(),
    bytes: 0,
});

/// An empty buffer with room for at least `room` bytes: a recycled one
/// when the pool has any.
pub fn take(room: usize) -> Vec<u8> {
    let recycled = POOL.lock().ok().and_then(|mut p| {
        let buf = p.free.pop()?;
        p.bytes -= buf.capacity();
        Some(buf)
    });
    match recycled {
        Some(buf) if buf.capacity() >= room => buf,
        // Growing it would copy its whole old capacity (realloc does not
        // know it is empty): a new one costs less.
        _ => Vec::with_capacity(room),
    }
}

/// `lines` as a shared frame whose buffer returns to the pool when the
/// frame's last holder drops it.
pub fn frame(lines: Vec<u8>) -> Bytes {
    Bytes::from_owner(Recycled(lines))
}

/// A frame's buffer; dropping it gives the buffer back.
struct Recycled(Vec<u8>);

impl AsRef<[u8]> for Recycled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.0);
        let capacity = buf.capacity();
        if capacity == 0 || capacity > MAX_BUFFER {
            return;
        }
        buf.clear();
        if let Ok(mut p) = POOL.lock() {
            if p.free.len() < MAX_BUFFERS && p.bytes + capacity <= MAX_BYTES {
                p.bytes += capacity;
                p.free.push(buf);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_frame_gives_its_buffer_back() {
        let mut buf = take(1000);
        assert!(buf.is_empty() && buf.capacity() >= 1000);
        buf.extend_from_slice(b"{\"op\":\"a\"}\n");
        let at = buf.as_ptr();
        let frame = frame(buf);
        let copy = frame.clone();
        assert_eq!(&copy[..], b"{\"op\":\"a\"}\n");
        assert_eq!(copy.as_ptr(), at, "the frame is the buffer, not a copy");
        drop(frame);
        drop(copy);
        // No other unit test takes from the pool: the next buffer is this
        // one, emptied.
        let again = take(10);
        assert_eq!(again.as_ptr(), at);
        assert!(again.is_empty());
        // A huge one is not kept.
        drop(super::frame(vec![0; MAX_BUFFER + 1]));
        assert!(
            POOL.lock()
                .unwrap()
                .free
                .iter()
                .all(|b| b.capacity() <= MAX_BUFFER)
        );
    }
}
