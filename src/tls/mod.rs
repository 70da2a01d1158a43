//! Everything rustls: the client-facing server configuration (TLS 1.2 and 1.3,
//! ALPN, certificate and key from PEM files or generated), and the client-side
//! trust settings used by the `tenthbit` client, tests and benchmark.

pub mod alpn;
pub mod pin;
pub mod selfsigned;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::config::TlsConfig;
pub use alpn::Alpn;

/// Why TLS could not be set up; each names the file involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {cause}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        cause: std::io::Error,
    },
    /// The certificate file is missing and generation is off.
    #[error(
        "certificate file {} does not exist (set tls.cert_file and tls.key_file, or tls.self_signed = true)",
        .0.display()
    )]
    MissingCert(PathBuf),
    /// One of the pair exists without the other.
    #[error("{} exists but {} does not; provide both or neither", present.display(), missing.display())]
    HalfPair {
        /// The file that exists.
        present: PathBuf,
        /// The file that does not.
        missing: PathBuf,
    },
    /// A PEM file holds nothing usable.
    #[error("{}: {what}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// rustls refused the pair (for example the key does not match the certificate).
    #[error("certificate {} and key {} cannot be used together: {cause}", cert.display(), key.display())]
    Rustls {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason.
        cause: rustls::Error,
    },
    /// rcgen failed.
    #[error("generating a self-signed certificate: {0}")]
    Generate(String),
    /// Client trust settings are unusable.
    #[error("trust settings: {0}")]
    Trust(String),
}

/// The process-wide crypto provider (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A loaded server identity.
pub struct ServerTls {
    /// The rustls configuration to accept with.
    pub config: Arc<ServerConfig>,
    /// SHA-256 of the end-entity certificate.
    pub fingerprint: [u8; 32],
    /// True when the certificate was generated during this call.
    pub generated: bool,
}

/// Loads the certificate and key named in `cfg`, generating a self-signed
/// pair for `server_name` first when allowed and neither file exists;
/// `web` adds `http/1.1` to the ALPN list.
pub fn server_config(cfg: &TlsConfig, server_name: &str, web: bool) -> Result<ServerTls, Error> {
    let (cert_path, key_path) = (&cfg.cert_file, &cfg.key_file);
    let mut generated = false;
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => {}
        (false, false) if cfg.self_signed => {
            selfsigned::generate(server_name, cert_path, key_path)?;
            generated = true;
        }
        (false, false) => return Err(Error::MissingCert(cert_path.clone())),
        (true, false) => {
            return Err(Error::HalfPair {
                present: cert_path.clone(),
                missing: key_path.clone(),
            });
        }
        (false, true) => {
            return Err(Error::HalfPair {
                present: key_path.clone(),
                missing: cert_path.clone(),
            });
        }
    }
    let certs = load_certs(cert_path)?;
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| Error::Pem {
        path: key_path.clone(),
        what: format!("no usable private key: {e}"),
    })?;
    let fingerprint = certs
        .first()
        .map(|c| pin::fingerprint(c))
        .ok_or_else(|| Error::Pem {
            path: cert_path.clone(),
            what: "no certificate found".into(),
        })?;
    let rustls_err = |cause| Error::Rustls {
        cert: cert_path.clone(),
        key: key_path.clone(),
        cause,
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(rustls_err)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(rustls_err)?;
    config.alpn_protocols = alpn_list(cfg.gzip, web);
    Ok(ServerTls {
        config: Arc::new(config),
        fingerprint,
        generated,
    })
}

/// The client port's ALPN list, in order of preference. rustls picks the
/// first of *our* list that the client offers: a client offering both 10bit
/// protocols gets gzip, since offering it means it can speak it; `http/1.1`
/// comes last (never `h2`), so a client offering 10bit too gets 10bit.
fn alpn_list(gzip: bool, web: bool) -> Vec<Vec<u8>> {
    let mut list = Vec::with_capacity(3);
    if gzip {
        list.push(alpn::GZIP.to_vec());
    }
    list.push(alpn::PLAIN.to_vec());
    if web {
        list.push(alpn::HTTP.to_vec());
    }
    list
}

/// Reads every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem_err = |e: rustls::pki_types::pem::Error| Error::Pem {
        path: path.to_owned(),
        what: format!("unreadable PEM: {e}"),
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_err)?;
    if certs.is_empty() {
        return Err(Error::Pem {
            path: path.to_owned(),
            what: "no certificate found".into(),
        });
    }
    Ok(certs)
}

/// How a client decides to trust a server.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Exactly the certificate with this SHA-256 fingerprint.
    Fingerprint([u8; 32]),
    /// Certificates chaining to the CA certificates in this PEM file.
    CaFile(PathBuf),
    /// Any certificate (trust on first use): handshake signatures are still
    /// verified, and the certificate's fingerprint is recorded in the slot
    /// so the caller can remember it.
    FirstUse(Arc<std::sync::Mutex<Option<[u8; 32]>>>),
}

/// A client configuration trusting by certificate fingerprint.
fn by_fingerprint(
    builder: rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>,
    expect: pin::Expect,
    provider: &Arc<CryptoProvider>,
) -> ClientConfig {
    builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(pin::FingerprintVerifier::new(expect, provider)))
        .with_no_client_auth()
}

/// A client configuration offering `alpn` (or no ALPN at all when `None`).
pub fn client_config(trust: &Trust, alpn: &[Alpn]) -> Result<Arc<ClientConfig>, Error> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::Trust(e.to_string()))?;
    let mut config = match trust {
        Trust::Fingerprint(fp) => by_fingerprint(builder, pin::Expect::Pinned(*fp), &provider),
        Trust::FirstUse(slot) => {
            by_fingerprint(builder, pin::Expect::FirstUse(slot.clone()), &provider)
        }
        Trust::CaFile(path) => {
            let mut roots = RootCertStore::empty();
            for cert in load_certs(path)? {
                roots
                    .add(cert)
                    .map_err(|e| Error::Trust(format!("{}: {e}", path.display())))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    config.alpn_protocols = alpn.iter().map(|a| a.wire().to_vec()).collect();
    Ok(Arc::new(config))
}
