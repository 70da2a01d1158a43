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
    let pair =
        rcgen::generate_simple_self_signed(names).map_err(|e| Error::Generate(e.to_string()))?;
    for path in [cert_path, key_path] {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                path: dir.to_owned(),
                source,
            })?;
        }
    }
    write_new(key_path, pair.signing_key.serialize_pem().as_bytes(), 0o600)?;
    write_new(cert_path, pair.cert.pem().as_bytes(), 0o644)?;
    Ok(())
}

fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), Error> {
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
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
