//! The asking side: a client presented another server's ticket. We dial
//! that server at the address our configuration gives (never one from the
//! client), present our certificate, relay the ticket alone between
//! flushes, and accept only an answer naming an account of the server we
//! called. The whole exchange has one deadline; each server is asked at
//! most `federation.requests_per_minute` times a minute.

use std::pin::Pin;

use tokio::net::TcpStream;
use tracing::{info, warn};

use super::answer::{read_packet, write_packet};
use super::wire::{Code, Packet, account_of};
use super::{Federation, Home};
use crate::session::{Abroad, AbroadError, RedeemedAbroad};

impl Abroad for Federation {
    fn redeem(
        &self,
        home: String,
        ticket: String,
    ) -> Pin<Box<dyn Future<Output = Result<RedeemedAbroad, AbroadError>> + Send>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let Some(h) = inner.homes.get(&home.to_lowercase()) else {
                return Err(AbroadError::UnknownServer);
            };
            inner
                .take(&inner.asked, &h.name)
                .map_err(AbroadError::RateLimited)?;
            let request = Packet::Redeem {
                server: inner.server.clone(),
                ticket,
            };
            let answer = tokio::time::timeout(inner.cfg.timeout(), exchange(h, &request)).await;
            let failed = |code: Code| {
                warn!(server = %h.name, %code, "federation: ticket redemption failed");
                Err(AbroadError::Unavailable)
            };
            match answer {
                Err(_) => failed(Code::Timeout),
                Ok(Err(code)) => failed(code),
                Ok(Ok(Packet::Answer { account: None })) => {
                    info!(server = %h.name, ok = false, "federation: ticket refused by its home server");
                    Err(AbroadError::Invalid)
                }
                Ok(Ok(Packet::Answer {
                    account: Some(account),
                })) => match account_of(&account, &h.name) {
                    Some(user) => Ok(RedeemedAbroad {
                        user: user.to_owned(),
                        home: h.name.clone(),
                    }),
                    None => {
                        warn!(server = %h.name, code = %Code::BadAnswer, %account, "federation: the home server answered with an account not its own");
                        Err(AbroadError::BadAnswer)
                    }
                },
                Ok(Ok(Packet::Error { code, message })) => {
                    warn!(server = %h.name, %code, %message, "federation: the home server refused the request");
                    Err(AbroadError::Unavailable)
                }
                Ok(Ok(Packet::Redeem { .. })) => failed(Code::Malformed),
            }
        })
    }
}

/// Connects to `h`, sends `request`, reads the one answer.
async fn exchange(h: &Home, request: &Packet) -> Result<Packet, Code> {
    let tcp = TcpStream::connect(h.addr)
        .await
        .map_err(|_| Code::Unreachable)?;
    let _ = tcp.set_nodelay(true);
    let mut tls =
        h.connector
            .connect(h.tls_name.clone(), tcp)
            .await
            .map_err(|e| match tls_cause(&e) {
                Some(rustls::Error::InvalidCertificate(_)) => Code::BadCertificate,
                _ => Code::Unreachable,
            })?;
    write_packet(&mut tls, request)
        .await
        .map_err(|_| Code::Unreachable)?;
    read_packet(&mut tls).await
}

/// The rustls error behind an I/O error from a handshake, if that is what
/// it is.
fn tls_cause(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}
