//! Registration and heartbeats. The node registers, then heartbeats at the interval the server returns;
//! a 404 (the server forgot the node) registers again; an unreachable server is retried with backoff
//! (tasks keep running meanwhile).

use std::sync::Arc;
use std::time::Duration;

use davit_api::objects::Node;
use tokio::sync::watch;

use std::path::Path;

use crate::{AgentContext, AgentError};

const MIN_INTERVAL: Duration = Duration::from_millis(100);
const MAX_INTERVAL: Duration = Duration::from_secs(300);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

const NODE_TOKEN_FILE: &str = "node-token";

/// The node token an earlier join left in `data_dir`, if any.
pub(crate) fn load_node_token(data_dir: &Path) -> Result<Option<String>, AgentError> {
    let path = data_dir.join(NODE_TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text.trim().to_string()).filter(|token| !token.is_empty())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(AgentError::Io { operation: format!("reading {}", path.display()), source }),
    }
}

fn save_node_token(data_dir: &Path, token: &str) -> std::io::Result<()> {
    crate::state::write_atomic(&data_dir.join(NODE_TOKEN_FILE), format!("{token}\n").as_bytes())
}

pub async fn run(context: Arc<AgentContext>, node: Node, registered: watch::Sender<bool>, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(250);
    let mut failures = 0u32;
    loop {
        // Register; a node that joins with TLS asks for its certificate at the same time.
        let key = context.tls.as_ref().filter(|cert| cert.needs_one()).and_then(|_| crate::tls::new_key());
        let public_key = key.as_ref().map(|(_, public)| public.clone());
        let cluster = context.cluster.known();
        let interval = match context
            .servers
            .call(|client| {
                let (node, public_key, cluster) = (node.clone(), public_key.clone(), cluster.clone());
                async move { client.register_node_with(&node, public_key.as_deref(), cluster.as_deref()).await }
            })
            .await
        {
            Ok(response) => {
                // A server of another cluster: nothing of it is taken (no identity, no allocation list).
                if let Err(reason) = context.cluster.check(Some(&response.cluster_id)) {
                    if failures.is_multiple_of(20) {
                        tracing::error!(%reason, "refusing the server");
                    }
                    failures += 1;
                    if sleep_or_shutdown(backoff, &mut shutdown).await {
                        return;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
                context.servers.acknowledged();
                tracing::info!(node_id = %node.id, interval_ms = response.heartbeat_interval_ms, acl = response.acl_enabled, "registered with the server");
                context.acl.set_enabled(response.acl_enabled);
                if let Some(node_token) = &response.node_token {
                    // Joined: keep the identity before using it, so a crash cannot lose it.
                    if let Err(error) = save_node_token(&context.data_dir, node_token) {
                        tracing::error!(%error, "cannot keep the node token; registering again");
                        if sleep_or_shutdown(backoff, &mut shutdown).await {
                            return;
                        }
                        continue;
                    }
                    context.servers.set_token(Some(node_token));
                    tracing::info!(node_id = %node.id, "joined the cluster: acting with this node's own identity from now on");
                }
                if let (Some(certificate), Some(cert), Some((key, _))) = (&response.certificate, &context.tls, &key) {
                    match cert.keep(key, certificate) {
                        Ok(()) => tracing::info!(node_id = %node.id, "got the node's certificate: mutual TLS from now on"),
                        Err(error) => tracing::error!(%error, "cannot keep the node's certificate"),
                    }
                }
                let _ = registered.send(true);
                backoff = Duration::from_millis(250);
                failures = 0;
                clamp_interval(response.heartbeat_interval_ms)
            }
            Err(error) => {
                log_failure(&mut failures, "registering the node failed", &error);
                if sleep_or_shutdown(backoff, &mut shutdown).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };

        // Heartbeat until the server forgets the node.
        let mut next = interval;
        loop {
            if sleep_or_shutdown(next, &mut shutdown).await {
                return;
            }
            match context
                .servers
                .call(|client| {
                    let id = node.id.clone();
                    async move { client.heartbeat(&id).await }
                })
                .await
            {
                Ok(response) => {
                    context.servers.acknowledged();
                    if failures > 0 {
                        tracing::info!("heartbeats reach the server again");
                    }
                    failures = 0;
                    backoff = Duration::from_millis(250);
                    next = clamp_interval(response.heartbeat_interval_ms);
                }
                Err(error) if error.is_not_found() => {
                    tracing::warn!(node_id = %node.id, "the server does not know this node; registering again");
                    break;
                }
                Err(error) => {
                    log_failure(&mut failures, "heartbeat failed", &error);
                    next = backoff.min(interval);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

fn clamp_interval(millis: u64) -> Duration {
    Duration::from_millis(millis).clamp(MIN_INTERVAL, MAX_INTERVAL)
}

/// Warns on the first failure of a streak, then only every 20th, to keep logs readable during an outage.
fn log_failure(failures: &mut u32, what: &str, error: &davit_client::ClientError) {
    if (*failures).is_multiple_of(20) {
        tracing::warn!(%error, failures = *failures + 1, "{what}; retrying");
    }
    *failures += 1;
}

/// Sleeps; true when shutdown was requested.
pub async fn sleep_or_shutdown(duration: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    if *shutdown.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(duration) => false,
        _ = shutdown.changed() => true,
    }
}
