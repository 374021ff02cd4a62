//! L4 (TCP) forwarding: one backend connection per client connection, bytes copied both ways.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::{TcpListener, TcpStream};

use crate::balance::hash_bytes;
use crate::config::{Algorithm, HashOn};
use crate::proxy::ServiceShared;

/// Accept loop of one TCP service; runs until aborted. Accept errors (e.g. out of file descriptors) are
/// logged and the loop goes on.
pub(crate) async fn serve(shared: Arc<ServiceShared>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, client)) => {
                tokio::spawn(forward(Arc::clone(&shared), stream, client));
            }
            Err(error) => {
                tracing::warn!(%error, "proxy accept failed");
                tokio::task::yield_now().await;
            }
        }
    }
}

async fn forward(shared: Arc<ServiceShared>, mut inbound: TcpStream, client: SocketAddr) {
    // A client that goes away while it waits for a backend gives up its place.
    let available = tokio::select! {
        available = shared.with_backends(shared.snapshot()) => available,
        () = closed_by(&inbound) => return,
    };
    let snapshot = match available {
        Ok(snapshot) => snapshot,
        Err(unavailable) => {
            tracing::debug!(%client, reason = unavailable.describe(&shared.snapshot().config.name).trim_end(), "connection closed");
            return;
        }
    };
    let config = &snapshot.config;
    let hash_key = match (&config.balance, &config.hash_on) {
        (Algorithm::ConsistentHash, HashOn::SourceIp) => Some(hash_bytes(client.ip().to_string().as_bytes())),
        _ => None,
    };
    let attempts = shared.proxy_config.max_connect_attempts.max(1);
    let mut tried = Vec::new();
    for _ in 0..attempts {
        let Some(index) = shared.pick(&snapshot, hash_key, &tried, Instant::now()) else { break };
        tried.push(index);
        let endpoint = &snapshot.endpoints[index];
        let started = Instant::now();
        let guard = endpoint.stats.start();
        let connected = tokio::time::timeout(shared.proxy_config.connect_timeout, TcpStream::connect(endpoint.backend.addr)).await;
        match connected {
            Ok(Ok(mut outbound)) => {
                endpoint.stats.record_success(started.elapsed(), Instant::now());
                let _ = outbound.set_nodelay(true);
                let _ = inbound.set_nodelay(true);
                if let Err(error) = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await {
                    tracing::debug!(service = %config.name, backend = %endpoint.backend.id, %error, "tcp connection ended with error");
                }
                drop(guard);
                return;
            }
            Ok(Err(error)) => {
                tracing::debug!(service = %config.name, backend = %endpoint.backend.id, %error, "backend connect failed");
            }
            Err(_elapsed) => {
                tracing::debug!(service = %config.name, backend = %endpoint.backend.id, "backend connect timed out");
            }
        }
        if endpoint.stats.record_failure(None, &config.outlier, Instant::now()) {
            tracing::info!(service = %config.name, backend = %endpoint.backend.id, "backend ejected");
        }
    }
    tracing::debug!(service = %config.name, %client, "no backend accepted the connection");
}

/// Returns once the client closed its side (or the connection failed); never while it is open, even if it sent
/// data already (the data stays queued for the backend).
async fn closed_by(inbound: &TcpStream) {
    let mut byte = [0u8; 1];
    match inbound.peek(&mut byte).await {
        Ok(0) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
}
