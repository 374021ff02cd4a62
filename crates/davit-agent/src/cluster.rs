//! The cluster this node belongs to. The first server the agent registers with names it; the agent keeps the
//! id in `<data_dir>/cluster-id` and from then on refuses servers of any other cluster — a wiped server, or one
//! of another cluster at the same address — without stopping anything: such a server knows none of this
//! node's allocations, and obeying its empty list would destroy every workload.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

const FILE: &str = "cluster-id";

pub(crate) struct ClusterId {
    path: PathBuf,
    known: Mutex<Option<String>>,
    /// A server of another cluster was refused last (logged once when it starts, once when it ends).
    refusing: std::sync::atomic::AtomicBool,
}

impl ClusterId {
    pub fn load(data_dir: &Path) -> std::io::Result<ClusterId> {
        let path = data_dir.join(FILE);
        let known = match std::fs::read_to_string(&path) {
            Ok(text) => Some(text.trim().to_string()).filter(|id| !id.is_empty()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(error) => return Err(error),
        };
        Ok(ClusterId { path, known: Mutex::new(known), refusing: std::sync::atomic::AtomicBool::new(false) })
    }

    /// The cluster remembered, if any.
    pub fn known(&self) -> Option<String> {
        self.known.lock().expect("cluster id lock").clone()
    }

    /// Whether a server of cluster `seen` (empty or `None`: a server that does not say) is one to follow;
    /// the first one seen is remembered. Once one is known, a server that does not say is refused too.
    /// `Err`: why not.
    pub fn check(&self, seen: Option<&str>) -> Result<(), String> {
        use std::sync::atomic::Ordering;
        let mut known = self.known.lock().expect("cluster id lock");
        let Some(seen) = seen.filter(|seen| !seen.is_empty()) else {
            return match known.as_deref() {
                None => Ok(()),
                Some(known) => {
                    Err(self.refuse(format!("the server does not say which cluster it belongs to; this node belongs to cluster {known}")))
                }
            };
        };
        match known.as_deref() {
            Some(known) if known == seen => {
                if self.refusing.swap(false, Ordering::Relaxed) {
                    tracing::info!(cluster_id = %known, "a server of this node's cluster answers again");
                }
                Ok(())
            }
            Some(known) => Err(self.refuse(format!(
                "the server belongs to cluster {seen}, this node to cluster {known}: nothing is stopped and nothing is \
                 taken from it (a wiped or foreign server knows none of this node's work); if the cluster was rebuilt on \
                 purpose, stop the agent, remove {} and start it again",
                self.path.display()
            ))),
            None => {
                crate::state::write_atomic(&self.path, format!("{seen}\n").as_bytes())
                    .map_err(|error| format!("cannot keep the cluster id in {}: {error}", self.path.display()))?;
                tracing::info!(cluster_id = %seen, "this node belongs to cluster {seen}");
                *known = Some(seen.to_string());
                Ok(())
            }
        }
    }
}

impl ClusterId {
    /// Logs the refusal when it starts (callers retry often; their own logs are rate-limited).
    fn refuse(&self, reason: String) -> String {
        if !self.refusing.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::error!(%reason, "refusing a server of another cluster");
        }
        reason
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_cluster_is_kept_and_another_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = ClusterId::load(dir.path()).unwrap();
        assert!(cluster.check(None).is_ok() && cluster.check(Some("")).is_ok(), "a server that does not say, before any");
        cluster.check(Some("c1")).unwrap();
        assert!(cluster.check(None).is_err(), "once one is known, a server that does not say is refused");
        assert!(cluster.check(Some("c1")).is_ok());
        let refused = cluster.check(Some("c2")).unwrap_err();
        assert!(refused.contains("belongs to cluster c2, this node to cluster c1"), "{refused}");
        let again = ClusterId::load(dir.path()).unwrap();
        assert!(again.check(Some("c2")).is_err(), "remembered across restarts");
    }
}
