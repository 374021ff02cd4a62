//! The agent's view of the servers: a list of addresses, one of which is current. A call that cannot reach
//! the current server (or gets a 5xx) moves on to the next one.

use std::future::Future;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use davit_client::{Client, ClientError, ClientTls};

#[derive(Clone)]
pub struct ServerPool {
    addrs: Arc<[String]>,
    /// Replaced as a whole when the agent's token changes (it joined and got its node identity).
    clients: Arc<RwLock<Arc<[Client]>>>,
    current: Arc<AtomicUsize>,
    tls: Option<ClientTls>,
    /// When a server last acknowledged this node (a registration or a heartbeat).
    contact: Arc<std::sync::Mutex<Contact>>,
}

/// The last acknowledgement: kept in memory, and as the modification time of a file in the data dir, so that
/// an agent restarted during a partition goes on counting its silence from the last acknowledgement (and
/// fences at once what `stop_after` says should have stopped) instead of from its start.
struct Contact {
    at: Instant,
    /// Silence before `at` (what the file said at start; zero after an acknowledgement).
    before: Duration,
    file: Option<PathBuf>,
    /// When the file was last touched: at most once a second.
    touched: Option<Instant>,
}

impl Contact {
    fn load(file: Option<PathBuf>) -> Contact {
        let before = file
            .as_deref()
            .and_then(|file| std::fs::symlink_metadata(file).ok())
            .filter(|meta| meta.is_file())
            .and_then(|meta| meta.modified().ok())
            .and_then(|modified| SystemTime::now().duration_since(modified).ok())
            .unwrap_or_default();
        Contact { at: Instant::now(), before, file, touched: None }
    }

    fn acknowledged(&mut self) {
        let now = Instant::now();
        (self.at, self.before) = (now, Duration::ZERO);
        let Some(file) = &self.file else { return };
        if self.touched.is_some_and(|touched| now.duration_since(touched) < Duration::from_secs(1)) {
            return;
        }
        self.touched = Some(now);
        let touched = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(file)
            .and_then(|opened| opened.set_modified(SystemTime::now()));
        if let Err(error) = touched {
            tracing::warn!(file = %file.display(), %error, "cannot record the server's acknowledgement");
        }
    }
}

impl ServerPool {
    /// `addrs` must not be empty (checked by [`crate::start`]).
    /// Every client sends `token` (the agent's ACL token), when given, and talks TLS with `tls`. The last
    /// acknowledgement is kept in `contact_file`'s modification time, when given.
    pub fn new(addrs: &[String], token: Option<&str>, tls: Option<ClientTls>, contact_file: Option<PathBuf>) -> ServerPool {
        let contact = Arc::new(std::sync::Mutex::new(Contact::load(contact_file)));
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
        self.contact.lock().expect("contact lock").acknowledged();
    }

    /// How long no server has acknowledged this node.
    pub fn silent_for(&self) -> Duration {
        let contact = self.contact.lock().expect("contact lock");
        contact.before + contact.at.elapsed()
    }
}

/// Could not reach the server, or it failed internally: worth trying another one.
fn is_server_failure(error: &ClientError) -> bool {
    match error {
        ClientError::Unreachable { .. } | ClientError::Tls { .. } | ClientError::WrongCluster { .. } => true,
        ClientError::Api { status, .. } => *status >= 500,
        ClientError::Decode { .. } | ClientError::StreamEnded { .. } => false,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn silence_counts_from_the_acknowledgement_recorded_before_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("last-contact");
        let pool = ServerPool::new(&["http://127.0.0.1:9".to_string()], None, None, Some(file.clone()));
        assert!(pool.silent_for() < Duration::from_secs(5), "no record: silence counts from the start");
        pool.acknowledged();
        let recorded = std::fs::metadata(&file).unwrap();
        assert_eq!(recorded.permissions().mode() & 0o777, 0o600);
        // The agent stops; 30 s later it starts again.
        std::fs::File::options().write(true).open(&file).unwrap().set_modified(SystemTime::now() - Duration::from_secs(30)).unwrap();
        let restarted = ServerPool::new(&["http://127.0.0.1:9".to_string()], None, None, Some(file.clone()));
        let silent = restarted.silent_for();
        assert!(silent >= Duration::from_secs(30) && silent < Duration::from_secs(40), "{silent:?}");
        restarted.acknowledged();
        assert!(restarted.silent_for() < Duration::from_secs(5));
        assert!(std::fs::metadata(&file).unwrap().modified().unwrap() > SystemTime::now() - Duration::from_secs(5));
    }
}
