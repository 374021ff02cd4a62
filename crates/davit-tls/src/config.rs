//! rustls configurations: servers that ask for (but do not demand) client certificates, clients that check
//! a peer's certificate against the CA and one expected name, and the [`CertSlot`] both present.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::{TlsError, certs_from_pem, provider};

/// A certificate and its key, replaceable while connections use it: each handshake takes what is there.
#[derive(Debug, Default)]
pub struct CertSlot {
    current: RwLock<Option<Arc<CertifiedKey>>>,
    /// Validity of the current certificate, Unix seconds (0: none, or unknown).
    not_before: AtomicU64,
    not_after: AtomicU64,
}

impl CertSlot {
    /// Puts a certificate chain (PEM) and its private key (PEM) in the slot; `origin` names them in errors.
    pub fn set(&self, origin: &Path, chain_pem: &str, key_pem: &str) -> Result<(), TlsError> {
        let chain = certs_from_pem(origin, chain_pem)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|error| TlsError::Pem { path: origin.to_path_buf(), message: format!("private key: {error}") })?;
        let certified = CertifiedKey::from_der(chain, key, &provider())
            .map_err(|error| TlsError::Pem { path: origin.to_path_buf(), message: format!("certificate and key: {error}") })?;
        let leaf = certified.end_entity_cert().map_err(|error| TlsError::Config(error.to_string()))?;
        let (not_before, not_after) = crate::validity(leaf).unwrap_or((0, 0));
        *self.current.write().expect("certificate slot lock") = Some(Arc::new(certified));
        self.not_before.store(not_before, Ordering::Relaxed);
        self.not_after.store(not_after, Ordering::Relaxed);
        Ok(())
    }

    /// Whether the current certificate expired by `now` (Unix seconds).
    pub fn expired(&self, now: u64) -> bool {
        let end = self.not_after.load(Ordering::Relaxed);
        end > 0 && end <= now
    }

    /// Empties the slot: nothing is presented.
    pub fn clear(&self) {
        *self.current.write().expect("certificate slot lock") = None;
        self.not_before.store(0, Ordering::Relaxed);
        self.not_after.store(0, Ordering::Relaxed);
    }

    /// When the current certificate is due for renewal: after two thirds of its life (Unix seconds).
    pub fn renew_at(&self) -> Option<u64> {
        let (start, end) = (self.not_before.load(Ordering::Relaxed), self.not_after.load(Ordering::Relaxed));
        (end > start).then(|| start + (end - start) * 2 / 3)
    }

    /// Whether the current certificate is valid for `name`.
    pub fn is_for(&self, name: &str) -> bool {
        self.get().and_then(|certified| certified.end_entity_cert().ok().map(|leaf| crate::cert_is_for(leaf, name))).unwrap_or(false)
    }

    pub fn is_set(&self) -> bool {
        self.current.read().expect("certificate slot lock").is_some()
    }

    /// Puts the certificate and key of two files in the slot; returns their [`FileStamp`].
    pub fn load_files(&self, cert: &Path, key: &Path) -> Result<FileStamp, TlsError> {
        let stamp = FileStamp::of(cert, key);
        self.set(cert, &crate::read(cert)?, &crate::read(key)?)?;
        Ok(stamp)
    }

    fn get(&self) -> Option<Arc<CertifiedKey>> {
        self.current.read().expect("certificate slot lock").clone()
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.get()
    }
}

impl ResolvesClientCert for CertSlot {
    fn resolve(&self, _root_hint_subjects: &[&[u8]], _sigschemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.get()
    }

    fn has_certs(&self) -> bool {
        self.is_set()
    }
}

/// When two files last changed, to notice new ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileStamp([Option<std::time::SystemTime>; 2]);

impl FileStamp {
    fn of(cert: &Path, key: &Path) -> FileStamp {
        FileStamp([cert, key].map(|path| std::fs::metadata(path).and_then(|meta| meta.modified()).ok()))
    }
}

/// How often [`watch_files`] looks at the files.
const FILE_POLL: std::time::Duration = std::time::Duration::from_secs(5);

/// Loads the certificate files into `slot` again whenever they change (an operator renewed them): a pair
/// that cannot be used is logged and the current certificate kept. Runs until dropped.
pub async fn watch_files(slot: Arc<CertSlot>, cert: PathBuf, key: PathBuf, mut seen: FileStamp) {
    loop {
        tokio::time::sleep(FILE_POLL).await;
        let now = FileStamp::of(&cert, &key);
        if now == seen {
            continue;
        }
        // What is remembered is what was looked at: a file that changes again meanwhile is read at the next poll.
        seen = now;
        match slot.set(&cert, &crate::read(&cert).unwrap_or_default(), &crate::read(&key).unwrap_or_default()) {
            Ok(()) => tracing::info!(cert = %cert.display(), "loaded the renewed certificate"),
            Err(error) => tracing::warn!(%error, "the certificate files changed but cannot be used (yet); keeping the current certificate"),
        }
    }
}

/// The trust anchors of a CA certificate file's text.
pub fn roots(origin: &Path, ca_pem: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs_from_pem(origin, ca_pem)? {
        roots.add(cert).map_err(|error| TlsError::Pem { path: origin.to_path_buf(), message: format!("not a CA certificate: {error}") })?;
    }
    Ok(Arc::new(roots))
}

/// What a server presents `slot`'s certificate with; clients may present a certificate signed by the CA of
/// `roots` (the handshake fails with any other), and the application decides what a missing one means.
pub fn server_config(roots: Arc<RootCertStore>, slot: Arc<CertSlot>) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
        .allow_unauthenticated()
        .build()
        .map_err(|error| TlsError::Config(error.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| TlsError::Config(error.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(slot);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client that accepts only a peer whose certificate the CA of `roots` signed for `expected` (e.g.
/// [`crate::SERVER_NAME`]), whatever address it dialled, and presents `identity` when the peer asks.
pub fn client_config(roots: Arc<RootCertStore>, expected: &str, identity: Option<Arc<CertSlot>>) -> Result<ClientConfig, TlsError> {
    let expected = ServerName::try_from(expected.to_string()).map_err(|error| TlsError::Config(format!("`{expected}`: {error}")))?;
    let inner =
        WebPkiServerVerifier::builder_with_provider(roots, provider()).build().map_err(|error| TlsError::Config(error.to_string()))?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| TlsError::Config(error.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ExpectName { inner, expected }));
    let mut config = match identity {
        Some(slot) => builder.with_client_cert_resolver(slot),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The WebPKI verifier, checking the certificate's name against `expected` instead of the dialled host.
#[derive(Debug)]
struct ExpectName {
    inner: Arc<WebPkiServerVerifier>,
    expected: ServerName<'static>,
}

impl ServerCertVerifier for ExpectName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _dialled: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(end_entity, intermediates, &self.expected, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
