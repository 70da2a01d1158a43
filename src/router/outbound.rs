//! A destination's bounded queue of encoded packets, drained by that
//! connection's writer task.
//!
//! Pushing never waits: the router, the session and (later) mesh links call
//! [`Outbound::push`] and move on. A destination whose queue is full has
//! stopped reading; it is closed with `session/sendq-exceeded` (the IRC
//! "SendQ exceeded" / NATS "slow consumer" rule), so nobody else slows down.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::proto::{ErrorCode, Packet};

/// One item for a writer.
#[derive(Debug)]
pub enum OutFrame {
    /// An encoded packet line. `secret` packets are isolated from the
    /// compression window (full flush before and after).
    Packet {
        /// The line, `\n` included.
        bytes: Bytes,
        /// Carries a secret (ticket, challenge).
        secret: bool,
    },
    /// Everything before this is the last the connection will send: flush,
    /// end the stream and close.
    Close,
}

impl OutFrame {
    /// Bytes this frame puts on the wire before compression.
    pub fn len(&self) -> usize {
        match self {
            OutFrame::Packet { bytes, .. } => bytes.len(),
            OutFrame::Close => 0,
        }
    }

    /// Whether the frame carries no bytes (`Close`).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

    /// Resolves once the connection is being closed.
    pub async fn closed(&self) {
        self.token.cancelled().await;
    }

    /// The reason, once closed.
    pub fn reason(&self) -> Option<&(ErrorCode, String)> {
        self.reason.get()
    }
}

/// The sending side of a destination's queue; cheap to clone.
#[derive(Debug, Clone)]
pub struct Outbound {
    tx: mpsc::Sender<OutFrame>,
    closer: Arc<Closer>,
}

impl Outbound {
    /// A queue holding at most `capacity` frames, and its receiving end.
    pub fn channel(capacity: usize) -> (Outbound, mpsc::Receiver<OutFrame>, Arc<Closer>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let closer = Arc::new(Closer::default());
        (
            Outbound {
                tx,
                closer: closer.clone(),
            },
            rx,
            closer,
        )
    }

    /// Queues already-encoded bytes (shared between recipients). A full queue
    /// closes the destination as a slow consumer.
    pub fn push_bytes(&self, bytes: Bytes, secret: bool) -> Result<(), PushError> {
        self.push_frame(OutFrame::Packet { bytes, secret })
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
        match self.tx.try_send(frame) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.closer.close(
                    ErrorCode::SessionSendqExceeded,
                    "send queue exceeded: the client is not reading its packets",
                );
                Err(PushError::Full)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(PushError::Closed),
        }
    }

    /// The destination's closer.
    pub fn closer(&self) -> &Arc<Closer> {
        &self.closer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_queue_closes_as_slow_consumer() {
        let (out, _rx, closer) = Outbound::channel(2);
        let p = Packet::server("ping");
        assert_eq!(out.push(&p), Ok(()));
        assert_eq!(out.push(&p), Ok(()));
        assert_eq!(out.push(&p), Err(PushError::Full));
        assert_eq!(
            closer.reason().map(|r| r.0),
            Some(ErrorCode::SessionSendqExceeded)
        );
    }
}
