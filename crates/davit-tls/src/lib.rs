//! davit's mutual TLS: the cluster's certificate authority, the certificates it issues to servers, nodes and
//! CLI users, and the rustls configurations of every davit connection (rustls with the aws-lc-rs provider).
//!
//! Identities are names in certificates, checked against the cluster's CA, never against the addresses
//! connections happen to use: every server certificate is valid for [`SERVER_NAME`], a node's for
//! [`node_name`]`(id)`, so a node cannot pass for a server or for another node, wherever it listens.
//! Certificates live in a [`CertSlot`] that handshakes read at each connection: replacing its content
//! rotates a certificate without restarting anything.
//!
//! This crate must never open a network connection of its own or decide what a caller may do (the ACL
//! does); it writes only the files it is asked to, atomically and owner-only for keys.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

mod ca;
mod config;
mod listener;

pub use ca::{Ca, Issued, NodeKey, Role, validity};
pub use config::{CertSlot, FileStamp, client_config, roots, server_config, watch_files};
pub use listener::{Peer, TlsListener};
pub use rustls;
pub use rustls_pki_types::CertificateDer;

/// The name every server certificate is valid for; clients verify servers against it.
pub const SERVER_NAME: &str = "server.davit";
/// The name of certificates made for CLI users (`davit tls cert create --cli`).
pub const CLI_NAME: &str = "cli.davit";

/// The name a node's certificate is valid for.
pub fn node_name(node_id: &str) -> String {
    format!("{node_id}.node.davit")
}

/// Whether `cert` (already verified against the CA by the handshake) is valid for `name`.
pub fn cert_is_for(cert: &CertificateDer<'_>, name: &str) -> bool {
    let Ok(name) = rustls_pki_types::ServerName::try_from(name) else { return false };
    webpki::EndEntityCert::try_from(cert).is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{operation} {}", path.display())]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Pem { path: PathBuf, message: String },
    #[error("making a certificate: {0}")]
    Certificate(String),
    #[error("{0}")]
    Config(String),
}

/// The crypto provider of every davit TLS configuration.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider())))
}

/// Reads a whole file, naming it in the error.
pub fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Io { operation: "reading", path: path.to_path_buf(), source })
}

/// Writes `data` to `path` through a temporary file and a rename, with `mode` (0600 for keys).
pub fn write_atomic(path: &Path, data: impl AsRef<[u8]>, mode: u32) -> Result<(), TlsError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let io = |source| TlsError::Io { operation: "writing", path: path.to_path_buf(), source };
    let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
    // A directory made for keys is the owner's alone.
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io)?;
    // A new file of our own (never one left over or planted there), named at random.
    let mut suffix = [0u8; 8];
    rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut suffix).expect("the OS random number generator works");
    let suffix = hex(&suffix);
    let tmp = dir.join(format!(".{}.{suffix}.tmp", path.file_name().and_then(|name| name.to_str()).unwrap_or("pem")));
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).map_err(io)?;
    let written = file.write_all(data.as_ref()).and_then(|()| file.sync_all()).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(io)
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The certificates of a PEM text, in order.
pub fn certs_from_pem(path: &Path, pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    use rustls_pki_types::pem::PemObject;
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::Pem { path: path.to_path_buf(), message: error.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Pem { path: path.to_path_buf(), message: "no certificate in this file".to_string() });
    }
    Ok(certs)
}
