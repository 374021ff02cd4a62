//! The agent's side of mutual TLS: its node certificate, presented to the servers and served on its own API.
//!
//! A node gets its certificate when it joins (it sends the public half of a key it made; the private key
//! never leaves `<data_dir>/tls/node.pem`, mode 0600, kept with the certificate) and renews it after two thirds of its life,
//! presenting the current one. An operator may instead give the agent certificate files
//! (`davit tls cert create --agent`), which it reads again when they change.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use davit_tls::{CertSlot, NodeKey};
use tokio::sync::watch;

use crate::{AgentContext, AgentError};

/// How the agent does TLS with its servers (`https://` addresses).
#[derive(Clone, Debug)]
pub struct AgentTlsConfig {
    /// The cluster's CA certificate: servers must present a certificate it signed for `server.davit`.
    pub ca_cert: PathBuf,
    /// The operator's certificate and key for this node, instead of one issued when it joins.
    pub cert_files: Option<(PathBuf, PathBuf)>,
}

/// The node's certificate and where it is kept.
pub(crate) struct NodeCert {
    pub slot: Arc<CertSlot>,
    dir: PathBuf,
    /// Issued by the servers (at join, then renewed); `false`: the operator's files.
    pub issued: bool,
    /// The cluster's CA certificate.
    ca_cert: PathBuf,
    /// Where the node's certificate and key are read from (one file when issued).
    files: (PathBuf, PathBuf),
}

/// The node's key and certificate, in one file (written at once: never a key of one and a certificate of
/// another).
const FILE: &str = "node.pem";

impl NodeCert {
    /// Loads the node's certificate (the operator's files, or one kept from an earlier join); returns the
    /// task that follows the operator's files.
    pub fn load(
        config: &AgentTlsConfig,
        data_dir: &Path,
        node_id: &str,
    ) -> Result<(NodeCert, Option<tokio::task::JoinHandle<()>>), AgentError> {
        let tls_error = |error: davit_tls::TlsError| AgentError::Config(format!("TLS: {error}"));
        let slot = Arc::new(CertSlot::default());
        let dir = data_dir.join("tls");
        if let Some((cert, key)) = &config.cert_files {
            let stamp = slot.load_files(cert, key).map_err(tls_error)?;
            if !slot.is_for(&davit_tls::node_name(node_id)) {
                return Err(AgentError::Config(format!(
                    "the certificate {} is not node {node_id}'s: make one with `davit tls cert create --agent --node-id {node_id}`",
                    cert.display()
                )));
            }
            let watch = tokio::spawn(davit_tls::watch_files(Arc::clone(&slot), cert.clone(), key.clone(), stamp));
            let files = (cert.clone(), key.clone());
            return Ok((NodeCert { slot, dir, issued: false, ca_cert: config.ca_cert.clone(), files }, Some(watch)));
        }
        let path = dir.join(FILE);
        if path.exists() {
            let pem = davit_tls::read(&path).map_err(tls_error)?;
            slot.set(&path, &pem, &pem).map_err(tls_error)?;
            if slot.expired(now_secs()) {
                // Presenting it would fail every handshake; a node whose certificate expired joins again.
                tracing::error!(
                    cert = %path.display(),
                    "the node's certificate expired: the servers will refuse this node until it joins again (stop the agent, remove its data dir's node-token and tls/, start it with a join token)"
                );
                slot.clear();
            }
        }
        Ok((NodeCert { slot, dir, issued: true, ca_cert: config.ca_cert.clone(), files: (path.clone(), path) }, None))
    }

    /// The node has no certificate yet and gets one when it joins.
    pub fn needs_one(&self) -> bool {
        self.issued && !self.slot.is_set()
    }

    /// The credentials of a live migration's stream: the CA, this node's certificate and key, and the name of
    /// the destination node's certificate (`peer_node_id`).
    pub fn migration_tls(&self, peer_node_id: &str) -> Result<davit_drivers::MigrationTls, String> {
        let read = |path: &Path| std::fs::read_to_string(path).map_err(|error| format!("reading {}: {error}", path.display()));
        Ok(davit_drivers::MigrationTls {
            ca_pem: read(&self.ca_cert)?,
            cert_pem: read(&self.files.0)?,
            key_pem: read(&self.files.1)?,
            peer_name: davit_tls::node_name(peer_node_id),
        })
    }

    /// Keeps a new certificate and its key (one owner-only file, replaced at once), then uses them.
    pub fn keep(&self, key_pem: &str, cert_pem: &str) -> Result<(), davit_tls::TlsError> {
        let path = self.dir.join(FILE);
        self.slot.set(&path, cert_pem, key_pem)?;
        davit_tls::write_atomic(&path, format!("{key_pem}{cert_pem}"), 0o600)
    }
}

/// A key for a certificate the node asks for: `(private key PEM, public key hex)`.
pub(crate) fn new_key() -> Option<(String, String)> {
    NodeKey::generate().map_err(|error| tracing::error!(%error, "cannot make a key for the node's certificate")).ok()
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Renews the node's certificate after two thirds of its life, with a new key.
pub(crate) async fn keep_fresh(context: Arc<AgentContext>, cert: Arc<NodeCert>, mut shutdown: watch::Receiver<bool>) {
    let mut retry = Duration::from_secs(1);
    loop {
        let wait = match cert.slot.renew_at() {
            Some(at) if at > now_secs() => Duration::from_secs(at - now_secs()),
            Some(_) => retry,
            // Not joined yet.
            None => Duration::from_secs(1),
        };
        if crate::heartbeat::sleep_or_shutdown(wait, &mut shutdown).await {
            return;
        }
        if cert.slot.renew_at().is_none_or(|at| at > now_secs()) {
            continue;
        }
        let Some((key, public)) = new_key() else { continue };
        let id = context.node.id.clone();
        let renewed = context
            .servers
            .call(|client| {
                let (id, public) = (id.clone(), public.clone());
                async move { client.renew_node_certificate(&id, &public).await }
            })
            .await;
        match renewed
            .map_err(|error| error.to_string())
            .and_then(|response| cert.keep(&key, &response.certificate).map_err(|e| e.to_string()))
        {
            Ok(()) => {
                retry = Duration::from_secs(1);
                tracing::info!(node_id = %context.node.id, "renewed the node's certificate");
            }
            Err(error) => {
                tracing::warn!(%error, "renewing the node's certificate failed; trying again");
                retry = (retry * 2).min(Duration::from_secs(60));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_migration_gets_the_cluster_ca_and_the_nodes_own_certificate_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let ca = davit_tls::Ca::generate(Duration::from_secs(3600)).unwrap();
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca.cert_pem()).unwrap();
        let role = davit_tls::Role::Node { id: "n1".to_string(), extra: Vec::new() };
        let (issued, key_pem) = ca.issue_with_key(&role, Duration::from_secs(3600)).unwrap();
        std::fs::create_dir_all(dir.path().join("tls")).unwrap();
        std::fs::write(dir.path().join("tls").join(FILE), format!("{key_pem}{}", issued.cert_pem)).unwrap();
        let config = AgentTlsConfig { ca_cert: ca_path, cert_files: None };
        let (cert, watch) = NodeCert::load(&config, dir.path(), "n1").unwrap();
        assert!(watch.is_none() && cert.slot.is_set());
        let tls = cert.migration_tls("n2").unwrap();
        assert_eq!(tls.ca_pem, ca.cert_pem());
        assert!(tls.cert_pem.contains(&issued.cert_pem) && tls.key_pem.contains(&key_pem));
        assert_eq!(tls.peer_name, davit_tls::node_name("n2"));
        assert!(!format!("{tls:?}").contains("PRIVATE KEY"), "the key is never logged");
    }
}
