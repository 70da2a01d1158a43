//! Mutual TLS for mesh links: TLS 1.3 only, ALPN `10bit-mesh/0.1`, each side
//! presenting its node certificate and checking the other's against the
//! configured peers (a pinned SHA-256 fingerprint, or a CA plus the node's
//! name). The client port never asks for a client certificate; this is a
//! listener of its own. Federation uses the same verifier with its own ALPN
//! and its own list of peers (other servers, by server name).

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig};

use super::pin::{self, Expect, FingerprintVerifier};
use super::{Error, Identity, load_certs, provider};

/// The mesh link's ALPN protocol.
pub const ALPN: &[u8] = b"10bit-mesh/0.1";

/// How one peer node's certificate is recognised.
#[derive(Debug, Clone)]
pub enum PeerCert {
    /// Exactly this certificate.
    Fingerprint([u8; 32]),
    /// A certificate from this CA (PEM file) valid for the node's name.
    Ca(PathBuf),
}

/// A peer node as TLS knows it.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Its node name.
    pub node: String,
    /// How its certificate is checked.
    pub cert: PeerCert,
}

fn roots(path: &std::path::Path) -> Result<Arc<RootCertStore>, Error> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| Error::Trust(format!("{}: {e}", path.display())))?;
    }
    Ok(Arc::new(roots))
}

/// Whether `cert` is valid for the DNS name `node` (the CA chain is checked
/// separately by the verifier that trusts the CA).
fn names_node(cert: &CertificateDer<'_>, node: &str) -> bool {
    let Ok(name) = ServerName::try_from(node) else {
        return false;
    };
    let Ok(ee) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    ee.verify_is_valid_for_subject_name(&name).is_ok()
}

/// Which configured peer a verified certificate chain (end entity first)
/// belongs to. A pinned certificate is its peer's, whatever names it holds;
/// a peer trusted through a CA must be named by the certificate *and* be
/// vouched for by that peer's own CA. Names alone would let a pinned server
/// (or one trusted through its own CA) that put another server's name in
/// its certificate be taken for that server, and redeem its tickets.
pub fn identify<'p>(peers: &'p [Peer], chain: &[CertificateDer<'_>]) -> Option<&'p Peer> {
    let (end_entity, intermediates) = chain.split_first()?;
    let fp = pin::fingerprint(end_entity);
    let pinned = peers
        .iter()
        .find(|p| matches!(p.cert, PeerCert::Fingerprint(want) if want == fp));
    if pinned.is_some() {
        return pinned;
    }
    let now = UnixTime::now();
    peers.iter().find(|p| match &p.cert {
        PeerCert::Fingerprint(_) => false,
        PeerCert::Ca(path) => {
            names_node(end_entity, &p.node) && chains_to(path, end_entity, intermediates, now)
        }
    })
}

/// Whether `end_entity` chains to the CA in `path` (read again here: this
/// runs once per accepted link or federation question).
fn chains_to(
    path: &std::path::Path,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
) -> bool {
    let Ok(roots) = roots(path) else {
        return false;
    };
    WebPkiClientVerifier::builder_with_provider(roots, Arc::new(super::aes128_first()))
        .build()
        .is_ok_and(|v| v.verify_client_cert(end_entity, intermediates, now).is_ok())
}

/// Accepts a client certificate that some configured peer's rule accepts.
#[derive(Debug)]
struct PeersVerifier {
    peers: Vec<Peer>,
    /// One WebPKI verifier per CA file, with the peers it vouches for.
    cas: Vec<(Arc<dyn ClientCertVerifier>, Vec<String>)>,
    schemes: Arc<rustls::crypto::CryptoProvider>,
}

impl ClientCertVerifier for PeersVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let fp = pin::fingerprint(end_entity);
        let pinned = self
            .peers
            .iter()
            .any(|p| matches!(p.cert, PeerCert::Fingerprint(want) if want == fp));
        if pinned {
            return Ok(ClientCertVerified::assertion());
        }
        for (verifier, nodes) in &self.cas {
            if verifier
                .verify_client_cert(end_entity, intermediates, now)
                .is_ok()
                && nodes.iter().any(|n| names_node(end_entity, n))
            {
                return Ok(ClientCertVerified::assertion());
            }
        }
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::ApplicationVerificationFailure,
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.schemes.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.schemes.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.schemes
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The mesh listener's configuration: our node certificate, client
/// certificates required and checked against `peers`.
pub fn acceptor_config(identity: &Identity, peers: &[Peer]) -> Result<Arc<ServerConfig>, Error> {
    let mut config = Arc::unwrap_or_clone(acceptor_config_for(identity, peers, ALPN)?);
    // Mesh peers are our own nodes, whose rustls lists AES-256 first: our
    // order decides (see `tls::server_config`). Federation peers are other
    // organisations' servers, and keep their own order.
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

/// [`acceptor_config`] offering `alpn` (federation uses the same mutual
/// TLS with its own protocol name and its own peers).
pub fn acceptor_config_for(
    identity: &Identity,
    peers: &[Peer],
    alpn: &[u8],
) -> Result<Arc<ServerConfig>, Error> {
    let provider = Arc::new(super::aes128_first());
    let mut cas: Vec<(Arc<dyn ClientCertVerifier>, Vec<String>)> = Vec::new();
    for p in peers {
        if let PeerCert::Ca(path) = &p.cert {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(roots(path)?, provider.clone())
                    .build()
                    .map_err(|e| Error::Trust(format!("{}: {e}", path.display())))?;
            cas.push((verifier, vec![p.node.clone()]));
        }
    }
    let verifier = Arc::new(PeersVerifier {
        peers: peers.to_vec(),
        cas,
        schemes: provider.clone(),
    });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Trust(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.certs.clone(), identity.key.clone_key())
        .map_err(|e| Error::Trust(format!("certificate: {e}")))?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

/// The configuration for dialling `peer`: its certificate checked by its
/// rule, ours presented.
pub fn dialer_config(identity: &Identity, peer: &Peer) -> Result<Arc<ClientConfig>, Error> {
    dialer_config_for(identity, peer, ALPN)
}

/// [`dialer_config`] offering `alpn`.
pub fn dialer_config_for(
    identity: &Identity,
    peer: &Peer,
    alpn: &[u8],
) -> Result<Arc<ClientConfig>, Error> {
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = match &peer.cert {
        PeerCert::Fingerprint(fp) => {
            Arc::new(FingerprintVerifier::new(Expect::Pinned(*fp), &provider))
        }
        PeerCert::Ca(path) => {
            WebPkiServerVerifier::builder_with_provider(roots(path)?, provider.clone())
                .build()
                .map_err(|e| Error::Trust(format!("{}: {e}", path.display())))?
        }
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Trust(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(identity.certs.clone(), identity.key.clone_key())
        .map_err(|e| Error::Trust(format!("certificate: {e}")))?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

/// The name to dial `peer` by: its node name (what a CA-issued certificate
/// names; a pinned certificate ignores it).
pub fn dial_name(peer: &Peer) -> Result<ServerName<'static>, Error> {
    ServerName::try_from(peer.node.clone())
        .map_err(|_| Error::Trust(format!("node name {:?} is not a DNS name", peer.node)))
}

/// Why [`accept_peer`] turned a connection away.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// The TLS handshake failed (a certificate no verifier accepts among
    /// the causes).
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    /// The handshake did not finish in time.
    #[error("TLS handshake timed out")]
    Timeout,
    /// The certificate verified but is no configured peer's.
    #[error("certificate of no configured peer")]
    Unknown,
}

/// Accepts a mutual-TLS connection within `deadline` and names the
/// configured peer its certificate belongs to (mesh links and federated
/// servers alike).
pub async fn accept_peer(
    acceptor: &tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    deadline: std::time::Duration,
    peers: &[Peer],
) -> Result<(tokio_rustls::server::TlsStream<tokio::net::TcpStream>, Peer), Refused> {
    let tls = tokio::time::timeout(deadline, acceptor.accept(tcp))
        .await
        .map_err(|_| Refused::Timeout)?
        .map_err(Refused::Tls)?;
    let peer = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| identify(peers, chain))
        .cloned()
        .ok_or(Refused::Unknown)?;
    Ok((tls, peer))
}
