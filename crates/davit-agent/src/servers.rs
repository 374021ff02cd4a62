//! The agent's view of the servers: a list of addresses, one of which is current. A call that cannot reach
//! the current server (or gets a 5xx) moves on to the next one.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use davit_client::{Client, ClientError, ClientTls};

#[derive(Clone)]
pub struct ServerPool {
    addrs: Arc<[String]>,
    /// Replaced as a whole when the agent's token changes (it joined and got its node identity).
    clients: Arc<RwLock<Arc<[Client]>>>,
    current: Arc<AtomicUsize>,
    tls: Option<ClientTls>,
    /// When a server last acknowledged this node (a registration or a heartbeat).
    contact: Arc<std::sync::Mutex<std::time::Instant>>,
}

impl ServerPool {
    /// `addrs` must not be empty (checked by [`crate::start`]).
    /// Every client sends `token` (the agent's ACL token), when given, and talks TLS with `tls`.
    pub fn new(addrs: &[String], token: Option<&str>, tls: Option<ClientTls>) -> ServerPool {
        let contact = Arc::new(std::sync::Mutex::new(std::time::Instant::now()));
        let pool = ServerPool { addrs: addrs.into(), clients: Arc::default(), current: Arc::new(AtomicUsize::new(0)), tls, contact };
        pool.set_token(token);
        pool
    }

    /// From now on every call sends `token`.
    pub fn set_token(&self, token: Option<&str>) {
        let clients: Arc<[Client]> = self.addrs.iter().map(|addr| Client::connect(addr, token, self.tls.as_ref())).collect();
        *self.clients.write().expect("server pool lock") = clients;
    }

    /// Runs `call` against the current server, then each other one until a server answers.
    /// Answers other than 5xx (also 4xx errors) are returned as they are.
    pub async fn call<T, F, Fut>(&self, call: F) -> Result<T, ClientError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let clients = Arc::clone(&self.clients.read().expect("server pool lock"));
        let start = self.current.load(Ordering::Relaxed);
        let mut last_error = None;
        for step in 0..clients.len() {
            let position = (start + step) % clients.len();
            let client = clients[position].clone();
            match call(client).await {
                Err(error) if is_server_failure(&error) => {
                    if clients.len() > 1 {
                        tracing::debug!(%error, server = clients[position].addr(), "server failed; trying the next one");
                    }
                    last_error = Some(error);
                    let _ = self.current.compare_exchange(position, (position + 1) % clients.len(), Ordering::Relaxed, Ordering::Relaxed);
                }
                other => return other,
            }
        }
        Err(last_error.expect("at least one server"))
    }

    /// A server acknowledged this node now.
    pub fn acknowledged(&self) {
        *self.contact.lock().expect("contact lock") = std::time::Instant::now();
    }

    /// How long no server has acknowledged this node.
    pub fn silent_for(&self) -> std::time::Duration {
        self.contact.lock().expect("contact lock").elapsed()
    }
}

/// Could not reach the server, or it failed internally: worth trying another one.
fn is_server_failure(error: &ClientError) -> bool {
    match error {
        ClientError::Unreachable { .. } | ClientError::Tls { .. } | ClientError::WrongCluster { .. } => true,
        ClientError::Api { status, .. } => *status >= 500,
        ClientError::Decode { .. } => false,
    }
}
