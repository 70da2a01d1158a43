//! Certificate fingerprints, and a client-side verifier that trusts exactly
//! one server certificate by its SHA-256 fingerprint (for self-signed servers,
//! like ssh's known_hosts).

use std::fmt::Write;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

/// SHA-256 of a DER certificate.
pub fn fingerprint(der: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// `AB:CD:…`, the way `openssl x509 -fingerprint -sha256` prints it.
pub fn format_fingerprint(fp: &[u8; 32]) -> String {
    let mut s = String::with_capacity(95);
    for (i, b) in fp.iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        let _ = write!(s, "{b:02X}");
    }
    s
}

/// Parses a fingerprint written with or without colons, in either case.
pub fn parse_fingerprint(text: &str) -> Option<[u8; 32]> {
    let hex: Vec<u8> = text.bytes().filter(|&b| b != b':').collect();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        *out.get_mut(i)? = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// What a [`FingerprintVerifier`] accepts.
#[derive(Debug)]
pub enum Expect {
    /// Only the certificate with this SHA-256 fingerprint.
    Pinned([u8; 32]),
    /// Whatever the server presents, recording its fingerprint here: the
    /// first contact of trust-on-first-use.
    FirstUse(Arc<std::sync::Mutex<Option<[u8; 32]>>>),
}

/// Trusts a server by its end-entity certificate's fingerprint rather than
/// a CA chain; handshake signatures are still verified with the provider's
/// algorithms, so the peer must hold the certificate's key.
#[derive(Debug)]
pub struct FingerprintVerifier {
    expect: Expect,
    algorithms: WebPkiSupportedAlgorithms,
}

impl FingerprintVerifier {
    /// Accepts what `expect` says, verifying signatures with `provider`.
    pub fn new(expect: Expect, provider: &Arc<CryptoProvider>) -> Self {
        Self {
            expect,
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for FingerprintVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = fingerprint(end_entity);
        match &self.expect {
            Expect::Pinned(fp) if *fp == presented => Ok(ServerCertVerified::assertion()),
            Expect::Pinned(_) => Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            )),
            Expect::FirstUse(seen) => {
                if let Ok(mut seen) = seen.lock() {
                    *seen = Some(presented);
                }
                Ok(ServerCertVerified::assertion())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_text_round_trips() {
        let fp = fingerprint(b"certificate");
        let text = format_fingerprint(&fp);
        assert_eq!(text.len(), 95);
        assert_eq!(parse_fingerprint(&text), Some(fp));
        assert_eq!(
            parse_fingerprint(&text.replace(':', "").to_lowercase()),
            Some(fp)
        );
        assert_eq!(parse_fingerprint("zz"), None);
    }
}
