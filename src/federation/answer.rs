//! The answering side: the federation listener. A configured server (its
//! certificate says which, never its words) asks once per connection to
//! redeem one of our tickets for a login on it; every read has a deadline,
//! every asker a rate.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use super::Inner;
use super::wire::{Code, MAX_PACKET_BYTES, Packet};
use crate::session::{Redeemer, redeem_anywhere};
use crate::tls::mesh as mtls;

/// TLS handshakes in progress at most; past it a new connection is closed
/// at once. Generous: a handshake holds no `max_concurrent` permit.
const MAX_HANDSHAKES: usize = 4096;

/// Accepts asking servers until shutdown: any number in their TLS
/// handshake (up to [`MAX_HANDSHAKES`], each under the deadline), at most
/// `max_concurrent` configured servers' requests at once. A permit taken
/// before the handshake let anyone who reaches the port hold them all with
/// sockets that never speak, and lock every configured server out.
pub(super) async fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    let mut accepting = crate::accept::Accepting::new(&listener, &inner.shutdown, "federation");
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Some((tcp, addr)) = accepting.next().await else {
            return;
        };
        let Ok(handshake) = handshakes.clone().try_acquire_owned() else {
            debug!(%addr, "federation: too many TLS handshakes at once; closed");
            continue;
        };
        let inner2 = inner.clone();
        inner.tracker.spawn(async move {
            let deadline = inner2.cfg.timeout();
            let shutdown = inner2.shutdown.clone();
            // Each phase has its deadline; shutdown ends whatever is left.
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::timeout(deadline * 3, serve(inner2, tcp, addr, handshake)) => {}
            }
        });
    }
}

/// One asking server's connection: TLS, one request, one answer.
async fn serve(
    inner: Arc<Inner>,
    tcp: TcpStream,
    addr: SocketAddr,
    handshake: tokio::sync::OwnedSemaphorePermit,
) {
    let _ = tcp.set_nodelay(true);
    let deadline = inner.cfg.timeout();
    let (tls, asker) = match mtls::accept_peer(&inner.acceptor, tcp, deadline, &inner.peers).await {
        Ok((tls, peer)) => (tls, peer.node),
        Err(mtls::Refused::Timeout) => {
            debug!(%addr, "federation: TLS handshake timed out");
            return;
        }
        Err(e) => {
            warn!(%addr, code = %Code::BadCertificate, error = %e, "federation: refused a server at TLS");
            return;
        }
    };
    drop(handshake);
    // A configured server: one of `max_concurrent` requests at once.
    let Ok(_permit) = inner.permits.clone().acquire_owned().await else {
        return;
    };
    let (rd, mut wr) = tokio::io::split(tls);
    let reply = match tokio::time::timeout(deadline, read_packet(rd)).await {
        Err(_) => {
            debug!(%addr, server = %asker, "federation: request timed out");
            return;
        }
        Ok(Err(code)) => refuse(code, "expected one fed.redeem line"),
        Ok(Ok(Packet::Redeem { server, ticket })) => redeem(&inner, &asker, &server, &ticket).await,
        Ok(Ok(_)) => refuse(Code::Malformed, "expected fed.redeem"),
    };
    if let Packet::Error { code, message } = &reply {
        warn!(%addr, server = %asker, %code, %message, "federation: refused a request");
    }
    let write = async {
        write_packet(&mut wr, &reply).await?;
        wr.shutdown().await
    };
    match tokio::time::timeout(deadline, write).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            debug!(%addr, server = %asker, error = %e, "federation: answer not delivered")
        }
        Err(_) => debug!(%addr, server = %asker, "federation: answer not delivered in time"),
    }
}

/// Redeems `ticket` for a login on `asker`, the server the certificate
/// names; `claimed` is the server the request says it is.
async fn redeem(inner: &Inner, asker: &str, claimed: &str, ticket: &str) -> Packet {
    if !claimed.eq_ignore_ascii_case(asker) {
        return refuse(
            Code::ServerMismatch,
            "the request names another server than the certificate",
        );
    }
    if inner.take(&inner.answered, asker).is_err() {
        return refuse(Code::RateLimited, "too many redemptions; slow down");
    }
    match redeem_anywhere(&inner.ctx, Redeemer::Abroad(asker), ticket).await {
        Ok(Ok(account)) => {
            info!(server = %asker, ok = account.is_some(), "federation: redeemed a ticket for another server");
            Packet::Answer {
                account: account.map(|a| format!("{}@{}", a.name, inner.server)),
            }
        }
        Ok(Err(crate::session::Unavailable)) => refuse(
            Code::Unavailable,
            "the node that issued the ticket cannot be reached; try again later",
        ),
        Err(e) => {
            warn!(error = %e, "federation: ticket redemption failed in the store");
            refuse(Code::Internal, "the server could not redeem the ticket")
        }
    }
}

fn refuse(code: Code, message: &str) -> Packet {
    Packet::Error {
        code,
        message: message.to_owned(),
    }
}

/// Reads one packet line, at most [`MAX_PACKET_BYTES`].
pub(super) async fn read_packet(rd: impl AsyncRead + Unpin) -> Result<Packet, Code> {
    let mut line = Vec::with_capacity(256);
    let limit = u64::try_from(MAX_PACKET_BYTES).unwrap_or(u64::MAX) + 1;
    let mut bounded = BufReader::new(rd.take(limit));
    match bounded.read_until(b'\n', &mut line).await {
        Ok(_) if line.last() == Some(&b'\n') => {}
        Ok(_) if line.len() > MAX_PACKET_BYTES => return Err(Code::TooLarge),
        Ok(_) | Err(_) => return Err(Code::Malformed),
    }
    Packet::decode(&line).map_err(|_| Code::Malformed)
}

/// Writes one packet and flushes it: nothing else shares its TLS records.
pub(super) async fn write_packet(
    wr: &mut (impl AsyncWrite + Unpin),
    p: &Packet,
) -> std::io::Result<()> {
    wr.flush().await?;
    wr.write_all(&p.to_line()).await?;
    wr.flush().await
}
