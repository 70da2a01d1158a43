//! A destination's bounded queue of encoded packets, drained by that
//! connection's writer task.
//!
//! The queue is a `VecDeque` behind a mutex, not a channel: a push is one
//! uncontended lock and wakes the writer only when the queue was empty, and
//! the writer takes everything queued in one swap. With tokio's mpsc, the
//! per-packet semaphore, list and waker work was a third of the server's CPU
//! in the fanout profile (one push per recipient per message).
//!
//! Pushing never waits: the router, the session and (later) mesh links call
//! [`Outbound::push`] and move on. A destination whose queue is full has
//! stopped reading; it is closed with `session/sendq-exceeded` (the IRC
//! "SendQ exceeded" / NATS "slow consumer" rule), so nobody else slows down.
//! The queue is bounded twice: in packets, and in bytes (NATS's
//! `max_pending`), since a packet may be anything up to the line limit and
//! 4,096 large ones held a quarter of a gigabyte for one client.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::proto::{ErrorCode, Packet};

/// One item for a writer.
#[derive(Debug)]
pub enum OutFrame {
    /// Encoded packet lines, back to back. Usually one packet; a burst of
    /// one sender's messages to one topic is several, one frame shared by
    /// every recipient. `secret` packets (always alone) are isolated from
    /// the compression window (full flush before and after).
    Lines {
        /// The lines, each `\n`-terminated.
        bytes: Bytes,
        /// How many packets `bytes` holds.
        count: usize,
        /// Carries a secret (ticket, challenge).
        secret: bool,
    },
    /// Everything before this is the last the connection will send: flush,
    /// end the stream and close.
    Close,
}

impl OutFrame {
    /// What the frame counts against the queue's capacity in packets.
    fn packets(&self) -> usize {
        match self {
            OutFrame::Lines { count, .. } => *count,
            OutFrame::Close => 1,
        }
    }

    /// What the frame counts against the queue's capacity in bytes.
    fn bytes(&self) -> usize {
        match self {
            OutFrame::Lines { bytes, .. } => bytes.len(),
            OutFrame::Close => 0,
        }
    }
}

/// Why a push failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// The queue was full; the connection is being closed as a slow consumer.
    #[error("send queue full")]
    Full,
    /// The connection is gone.
    #[error("connection closed")]
    Closed,
}

/// A forced close of a connection, with the reason, visible to its reader and
/// writer. The first reason given wins.
#[derive(Debug, Default)]
pub struct Closer {
    token: CancellationToken,
    reason: OnceLock<(ErrorCode, String)>,
}

impl Closer {
    /// Closes the connection for `code`; later calls keep the first reason.
    pub fn close(&self, code: ErrorCode, message: impl Into<String>) {
        let _ = self.reason.set((code, message.into()));
        self.token.cancel();
    }

    /// Ends the connection with nothing to tell: its writer is gone (a
    /// write failed or timed out), so its reader must stop too.
    pub fn end(&self) {
        self.token.cancel();
    }

    /// Resolves once the connection is being closed.
    pub async fn closed(&self) {
        self.token.cancelled().await;
    }

    /// The reason, once closed.
    pub fn reason(&self) -> Option<&(ErrorCode, String)> {
        self.reason.get()
    }
}

/// What the pushers and the writer share.
#[derive(Debug)]
struct Chan {
    queue: Mutex<Queue>,
    /// Wakes the writer: given when the queue becomes non-empty, when the
    /// last sender goes, and never needed otherwise.
    wake: Notify,
    capacity: usize,
    /// Most bytes queued, as [`Chan::capacity`] is most packets.
    capacity_bytes: usize,
    senders: AtomicUsize,
    /// Packets the writer has taken out but not yet handed on: they still
    /// count against the capacity, so a slow reader's memory stays bounded.
    held_by_writer: AtomicUsize,
    /// The same in bytes.
    bytes_held_by_writer: AtomicUsize,
}

#[derive(Debug, Default)]
struct Queue {
    frames: VecDeque<OutFrame>,
    /// Packets in `frames`.
    packets: usize,
    /// Bytes in `frames`.
    bytes: usize,
    /// The writer is gone: pushes fail as `Closed`.
    receiver_gone: bool,
}

impl Chan {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic elsewhere while holding the lock leaves a valid queue.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Most frames a drained queue keeps room for: a burst's room is given back
/// once the writer has caught up, so an idle connection holds little.
const KEEP_ROOM: usize = 16;

/// The sending side of a destination's queue; cheap to clone.
#[derive(Debug)]
pub struct Outbound {
    chan: Arc<Chan>,
    closer: Arc<Closer>,
}

impl Clone for Outbound {
    fn clone(&self) -> Self {
        self.chan.senders.fetch_add(1, Ordering::Relaxed);
        Outbound {
            chan: self.chan.clone(),
            closer: self.closer.clone(),
        }
    }
}

impl Drop for Outbound {
    fn drop(&mut self) {
        if self.chan.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The writer may be waiting: it ends once the queue is drained.
            self.chan.wake.notify_one();
        }
    }
}

impl Outbound {
    /// A queue holding at most `capacity` packets and `capacity_bytes`
    /// bytes of them, and its receiving end.
    pub fn channel(capacity: usize, capacity_bytes: usize) -> (Outbound, Receiver, Arc<Closer>) {
        let chan = Arc::new(Chan {
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            capacity: capacity.max(1),
            capacity_bytes: capacity_bytes.max(1),
            senders: AtomicUsize::new(1),
            held_by_writer: AtomicUsize::new(0),
            bytes_held_by_writer: AtomicUsize::new(0),
        });
        let closer = Arc::new(Closer::default());
        let rx = Receiver {
            chan: chan.clone(),
            taken: VecDeque::new(),
        };
        (
            Outbound {
                chan,
                closer: closer.clone(),
            },
            rx,
            closer,
        )
    }

    /// Queues already-encoded bytes (shared between recipients). A full queue
    /// closes the destination as a slow consumer.
    pub fn push_bytes(&self, bytes: Bytes, secret: bool) -> Result<(), PushError> {
        self.push_frame(OutFrame::Lines {
            bytes,
            count: 1,
            secret,
        })
    }

    /// Queues `count` encoded packets, back to back in `bytes`, as one frame
    /// (shared between recipients); they count as `count` against the
    /// capacity, as if pushed one by one.
    pub fn push_lines(&self, bytes: Bytes, count: usize) -> Result<(), PushError> {
        self.push_frame(OutFrame::Lines {
            bytes,
            count,
            secret: false,
        })
    }

    /// Encodes and queues one packet.
    pub fn push(&self, packet: &Packet) -> Result<(), PushError> {
        self.push_bytes(packet.to_line(), false)
    }

    /// Encodes and queues a packet that carries a secret.
    pub fn push_secret(&self, packet: &Packet) -> Result<(), PushError> {
        self.push_bytes(packet.to_line(), true)
    }

    /// Queues the end of the connection.
    pub fn push_close(&self) -> Result<(), PushError> {
        self.push_frame(OutFrame::Close)
    }

    fn push_frame(&self, frame: OutFrame) -> Result<(), PushError> {
        let mut q = self.chan.lock();
        if q.receiver_gone {
            return Err(PushError::Closed);
        }
        let held = q.packets + self.chan.held_by_writer.load(Ordering::Relaxed);
        let held_bytes = q.bytes + self.chan.bytes_held_by_writer.load(Ordering::Relaxed);
        let (packets, bytes) = (frame.packets(), frame.bytes());
        if held + packets > self.chan.capacity || held_bytes + bytes > self.chan.capacity_bytes {
            drop(q);
            self.closer.close(
                ErrorCode::SessionSendqExceeded,
                "send queue exceeded: the client is not reading its packets",
            );
            return Err(PushError::Full);
        }
        let was_empty = q.frames.is_empty();
        q.frames.push_back(frame);
        q.packets += packets;
        q.bytes += bytes;
        drop(q);
        // A non-empty queue has a wake-up pending already; the writer takes
        // all of it in one go.
        if was_empty {
            self.chan.wake.notify_one();
        }
        Ok(())
    }

    /// The destination's closer.
    pub fn closer(&self) -> &Arc<Closer> {
        &self.closer
    }

    /// Packets and bytes queued and not yet handed to the writer (for tests
    /// and metrics of what a destination holds).
    pub fn queued(&self) -> (usize, usize) {
        let q = self.chan.lock();
        (
            q.packets + self.chan.held_by_writer.load(Ordering::Relaxed),
            q.bytes + self.chan.bytes_held_by_writer.load(Ordering::Relaxed),
        )
    }
}

/// The writer's end of a destination's queue.
#[derive(Debug)]
pub struct Receiver {
    chan: Arc<Chan>,
    /// Frames taken from the queue in one swap, not yet handed out.
    taken: VecDeque<OutFrame>,
}

impl Receiver {
    /// The next frame, waiting for one; `None` once every sender is gone and
    /// the queue is drained. Cancel-safe: a frame is only taken when returned.
    pub async fn recv(&mut self) -> Option<OutFrame> {
        loop {
            if let Some(frame) = self.try_recv() {
                return Some(frame);
            }
            if self.chan.senders.load(Ordering::Acquire) == 0 {
                // A push may have raced the last sender's drop.
                return self.try_recv();
            }
            self.chan.wake.notified().await;
        }
    }

    /// The next frame if one is queued, without waiting.
    pub fn try_recv(&mut self) -> Option<OutFrame> {
        if self.taken.is_empty() {
            let mut q = self.chan.lock();
            std::mem::swap(&mut q.frames, &mut self.taken);
            let packets = std::mem::take(&mut q.packets);
            self.chan.held_by_writer.store(packets, Ordering::Relaxed);
            let bytes = std::mem::take(&mut q.bytes);
            self.chan
                .bytes_held_by_writer
                .store(bytes, Ordering::Relaxed);
        }
        let frame = self.taken.pop_front()?;
        self.chan
            .held_by_writer
            .fetch_sub(frame.packets(), Ordering::Relaxed);
        self.chan
            .bytes_held_by_writer
            .fetch_sub(frame.bytes(), Ordering::Relaxed);
        Some(frame)
    }

    /// When no frame is waiting, gives back the room a burst left in the
    /// queue and returns true (the writer then frees its buffers too).
    pub fn shrink_if_idle(&mut self) -> bool {
        if !self.taken.is_empty() {
            return false;
        }
        let mut q = self.chan.lock();
        if !q.frames.is_empty() {
            return false;
        }
        q.frames.shrink_to(KEEP_ROOM);
        drop(q);
        self.taken.shrink_to(KEEP_ROOM);
        true
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let mut q = self.chan.lock();
        q.receiver_gone = true;
        // Queued packets die with the connection, as they did in the channel.
        q.frames = VecDeque::new();
        q.packets = 0;
        q.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_come_out_in_order_then_none_when_senders_are_gone() {
        let (out, mut rx, _closer) = Outbound::channel(8, 1 << 20);
        let other = out.clone();
        let waiting = tokio::spawn(async move {
            let mut ops = Vec::new();
            while let Some(frame) = rx.recv().await {
                ops.push(match frame {
                    OutFrame::Lines { bytes, .. } => {
                        Packet::decode(bytes.strip_suffix(b"\n").unwrap(), 8)
                            .unwrap()
                            .op
                    }
                    OutFrame::Close => "close".into(),
                });
            }
            ops
        });
        out.push(&Packet::server("ping")).unwrap();
        other.push(&Packet::server("pong")).unwrap();
        drop(out);
        other.push_close().unwrap();
        drop(other);
        assert_eq!(waiting.await.unwrap(), ["ping", "pong", "close"]);
    }

    #[test]
    fn pushes_after_the_writer_is_gone_fail_as_closed() {
        let (out, rx, closer) = Outbound::channel(8, 1 << 20);
        out.push(&Packet::server("ping")).unwrap();
        drop(rx);
        assert_eq!(out.push(&Packet::server("ping")), Err(PushError::Closed));
        assert!(closer.reason().is_none(), "not a slow consumer");
    }

    #[test]
    fn frames_the_writer_holds_count_against_the_capacity() {
        let (out, mut rx, closer) = Outbound::channel(4, 1 << 20);
        let p = Packet::server("ping");
        for _ in 0..4 {
            out.push(&p).unwrap();
        }
        // The writer takes all four in one swap and hands one on: three
        // are still held, so one more fits, as in a channel of four.
        assert!(rx.try_recv().is_some());
        assert_eq!(out.push(&p), Ok(()));
        assert_eq!(out.push(&p), Err(PushError::Full));
        assert_eq!(
            closer.reason().map(|r| r.0),
            Some(ErrorCode::SessionSendqExceeded)
        );
    }

    #[test]
    fn full_queue_closes_as_slow_consumer() {
        let (out, _rx, closer) = Outbound::channel(2, 1 << 20);
        let p = Packet::server("ping");
        assert_eq!(out.push(&p), Ok(()));
        assert_eq!(out.push(&p), Ok(()));
        assert_eq!(out.push(&p), Err(PushError::Full));
        assert_eq!(
            closer.reason().map(|r| r.0),
            Some(ErrorCode::SessionSendqExceeded)
        );
    }

    #[test]
    fn a_burst_counts_as_its_packets() {
        let (out, mut rx, closer) = Outbound::channel(4, 1 << 20);
        let three = Bytes::from_static(b"{\"op\":\"a\"}\n{\"op\":\"b\"}\n{\"op\":\"c\"}\n");
        assert_eq!(out.push_lines(three.clone(), 3), Ok(()));
        assert_eq!(out.push_lines(three.slice(..11), 1), Ok(()));
        // The writer takes both frames and hands on the burst: the one
        // packet it still holds and the two queued next make three.
        assert!(matches!(
            rx.try_recv(),
            Some(OutFrame::Lines { count: 3, .. })
        ));
        assert_eq!(out.push_lines(three.slice(..22), 2), Ok(()));
        assert!(closer.reason().is_none());
        assert_eq!(out.push_lines(three.slice(..22), 2), Err(PushError::Full));
        assert_eq!(
            closer.reason().map(|r| r.0),
            Some(ErrorCode::SessionSendqExceeded)
        );
    }

    #[test]
    fn the_queue_is_bounded_in_bytes_too() {
        let (out, mut rx, closer) = Outbound::channel(100, 1000);
        let big = Bytes::from(vec![b'x'; 400]);
        assert_eq!(out.push_bytes(big.clone(), false), Ok(()));
        assert_eq!(out.push_bytes(big.clone(), false), Ok(()));
        assert_eq!(out.queued(), (2, 800));
        // Bytes the writer took and holds still count, as packets do.
        assert!(rx.try_recv().is_some());
        assert_eq!(out.queued(), (1, 400));
        assert_eq!(out.push_bytes(big.slice(..300), false), Ok(()));
        assert!(closer.reason().is_none());
        assert_eq!(
            out.push_bytes(big.slice(..301), false),
            Err(PushError::Full)
        );
        assert_eq!(
            closer.reason().map(|r| r.0),
            Some(ErrorCode::SessionSendqExceeded)
        );
    }
}
