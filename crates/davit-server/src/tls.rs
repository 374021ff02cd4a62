//! The server's side of mutual TLS: the CA that signs node certificates when nodes join, the server's own
//! certificate (issued by that CA and renewed after two thirds of its life, or the operator's files, read
//! again when they change), and the clients the server relays to agents with, which accept only the
//! certificate of the node they mean to reach and follow no redirects.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use davit_tls::rustls::{RootCertStore, ServerConfig};
use davit_tls::{Ca, CertSlot, Issued, NodeKey, Role, TlsError};

/// How the server does TLS.
pub struct TlsConfig {
    /// Signs node certificates (and the server's own unless `cert_files` are given).
    pub ca: Ca,
    /// Where the CA certificate is (named in messages).
    pub ca_origin: String,
    /// The operator's certificate and key for this server, instead of one the CA issues; read again when
    /// either file changes.
    pub cert_files: Option<(PathBuf, PathBuf)>,
    /// More names for the server's own certificate (host names or IPs clients dial besides loopback).
    pub names: Vec<String>,
    /// Lifetime of the certificates this server issues (its own and nodes'); renewed after two thirds.
    pub cert_ttl: Duration,
}

/// The TLS state every handler can reach (`Shared::tls`).
pub struct ServerTls {
    ca: Ca,
    roots: Arc<RootCertStore>,
    ca_origin: String,
    /// The server's own certificate, presented to clients and, as a client, to agents.
    slot: Arc<CertSlot>,
    pub cert_ttl: Duration,
}

impl ServerTls {
    /// Loads or issues the server's certificate; the returned task keeps it fresh.
    pub fn start(config: TlsConfig) -> Result<(Arc<ServerTls>, tokio::task::JoinHandle<()>), TlsError> {
        let roots = davit_tls::roots(std::path::Path::new(&config.ca_origin), config.ca.cert_pem())?;
        let slot = Arc::new(CertSlot::default());
        let tls = Arc::new(ServerTls { ca: config.ca, roots, ca_origin: config.ca_origin, slot, cert_ttl: config.cert_ttl });
        let task = match config.cert_files {
            Some((cert, key)) => {
                let stamp = tls.slot.load_files(&cert, &key)?;
                tokio::spawn(davit_tls::watch_files(Arc::clone(&tls.slot), cert, key, stamp))
            }
            None => {
                let role = Role::Server { extra: config.names };
                tls.renew_own(&role)?;
                tokio::spawn(Arc::clone(&tls).keep_own_fresh(role))
            }
        };
        Ok((tls, task))
    }

    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        davit_tls::server_config(Arc::clone(&self.roots), Arc::clone(&self.slot))
    }

    fn renew_own(&self, role: &Role) -> Result<(), TlsError> {
        let (issued, key) = self.ca.issue_with_key(role, self.cert_ttl)?;
        self.slot.set(std::path::Path::new("server certificate"), &issued.cert_pem, &key)
    }

    async fn keep_own_fresh(self: Arc<ServerTls>, role: Role) {
        let mut wait = self.cert_ttl * 2 / 3;
        loop {
            tokio::time::sleep(wait).await;
            wait = match self.renew_own(&role) {
                Ok(()) => {
                    tracing::info!("renewed the server's certificate");
                    self.cert_ttl * 2 / 3
                }
                Err(error) => {
                    // Again soon, well before the current certificate expires.
                    tracing::error!(%error, "cannot renew the server's certificate; trying again");
                    (self.cert_ttl / 30).max(Duration::from_secs(1))
                }
            };
        }
    }

    /// A certificate for node `node_id`, whose agent serves its API at `http_addr`, for the public key
    /// `public_key` (hex, see [`NodeKey`]). Only an IP address of `http_addr` joins the node's name: a host
    /// name there is the node's to choose (`server.davit`, another node's name) and is never certified.
    pub fn issue_node(&self, node_id: &str, http_addr: &str, public_key: &str) -> Result<Issued, TlsError> {
        // Lower case only: certificate names compare without case, node ids do not.
        let valid = !node_id.is_empty()
            && node_id.len() <= 63
            && node_id.bytes().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-');
        if !valid {
            return Err(TlsError::Certificate(format!(
                "node id `{node_id}` cannot be named in a certificate: with TLS a node id is 1 to 63 lower-case letters, digits or `-` (agents make UUIDs)"
            )));
        }
        let host = crate::catalog::node_address(http_addr);
        let extra = host.parse::<std::net::IpAddr>().map(|ip| vec![ip.to_string()]).unwrap_or_default();
        self.ca.issue(&Role::Node { id: node_id.to_string(), extra }, &NodeKey::from_hex(public_key)?, self.cert_ttl)
    }

    /// A client for relaying to the agent of `node_id`: it accepts only that node's certificate, presents
    /// the server's, and never follows a redirect.
    pub fn agent_client(&self, node_id: &str) -> Result<reqwest::Client, TlsError> {
        let client = davit_client::ClientTls::new(Arc::clone(&self.roots), self.ca_origin.clone(), Some(Arc::clone(&self.slot)));
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .redirect(reqwest::redirect::Policy::none())
            // Never a relay in clear to an `http://` address.
            .https_only(true)
            .tls_backend_preconfigured(client.config(&davit_tls::node_name(node_id))?)
            .build()
            .map_err(|error| TlsError::Config(error.to_string()))
    }
}
