//! The default certificate: a self-signed pair generated with rcgen the first
//! time the daemon starts without one, so `cargo run` works out of the box.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::Error;

/// Writes a new self-signed certificate for `server_name` (plus localhost,
/// 127.0.0.1 and ::1) to `cert_path`, and its key to `key_path` with mode 0600.
pub fn generate(server_name: &str, cert_path: &Path, key_path: &Path) -> Result<(), Error> {
    let mut names = vec![server_name.to_owned()];
    for extra in ["localhost", "127.0.0.1", "::1"] {
        if !names.iter().any(|n| n == extra) {
            names.push(extra.to_owned());
        }
    }
    let generate = || -> Result<(String, String), rcgen::Error> {
        let mut params = rcgen::CertificateParams::new(names)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, server_name);
        let key = rcgen::KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let (cert_pem, key_pem) = generate().map_err(|e| Error::Generate(e.to_string()))?;
    for path in [cert_path, key_path] {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|cause| Error::Io {
                path: dir.to_owned(),
                cause,
            })?;
        }
    }
    write_new(key_path, key_pem.as_bytes(), 0o600)?;
    write_new(cert_path, cert_pem.as_bytes(), 0o644)?;
    Ok(())
}

fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), Error> {
    let io = |cause| Error::Io {
        path: path.to_owned(),
        cause,
    };
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    f.write_all(data).map_err(io)?;
    f.sync_all().map_err(io)
}
