//! Accepting TCP connections until shutdown, for every listener (clients,
//! mesh links, federated servers, the operator's port). A failed accept
//! (usually EMFILE: out of descriptors) is logged and retried after a
//! backoff that doubles up to a second, so a descriptor shortage neither
//! spins nor ends the listener.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::warn;

const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// One listener's accepting.
pub struct Accepting<'a> {
    listener: &'a TcpListener,
    shutdown: &'a CancellationToken,
    /// Which listener, for the log.
    what: &'static str,
    backoff: Duration,
}

impl<'a> Accepting<'a> {
    /// Accepts on `listener` until `shutdown` is cancelled.
    pub fn new(
        listener: &'a TcpListener,
        shutdown: &'a CancellationToken,
        what: &'static str,
    ) -> Self {
        Self {
            listener,
            shutdown,
            what,
            backoff: FIRST_BACKOFF,
        }
    }

    /// The next connection, or `None` once shutdown began.
    pub async fn next(&mut self) -> Option<(TcpStream, SocketAddr)> {
        loop {
            let accepted = tokio::select! {
                _ = self.shutdown.cancelled() => return None,
                r = self.listener.accept() => r,
            };
            match accepted {
                Ok(a) => {
                    self.backoff = FIRST_BACKOFF;
                    return Some(a);
                }
                Err(e) => {
                    warn!(
                        listener = self.what,
                        error = %e,
                        backoff_ms = u64::try_from(self.backoff.as_millis()).unwrap_or(u64::MAX),
                        "accept failed"
                    );
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return None,
                        _ = tokio::time::sleep(self.backoff) => {}
                    }
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}
