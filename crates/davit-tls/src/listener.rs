//! Serving HTTPS with axum: a listener that completes TLS handshakes off the accept loop, and the peer's
//! certificate as a per-connection [`Peer`] (axum's `ConnectInfo`).
//!
//! A client that speaks plain HTTP to a TLS port gets a plain-HTTP 400 saying so, instead of a closed
//! connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use rustls::ServerConfig;
use rustls_pki_types::CertificateDer;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

/// How long a client may take to say hello and finish the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; a connection beyond is closed at once (slow clients cannot pile up).
const MAX_HANDSHAKES: usize = 1024;

/// The answer to plain HTTP on a TLS port (a JSON body in the shape of the API's errors).
const PLAIN_HTTP_ANSWER: &str = concat!(
    "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n",
    r#"{"code":"tls_required","message":"this davit endpoint speaks HTTPS: use an https:// address and the cluster's CA certificate (--ca-cert or DAVIT_CACERT)"}"#
);

/// A TCP listener whose connections come out TLS-terminated.
pub struct TlsListener {
    handshaken: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    acceptor: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, handshaken) = mpsc::channel(64);
        let acceptor = tokio::spawn(accept_loop(listener, tokio_rustls::TlsAcceptor::from(config), tx));
        Ok(TlsListener { handshaken, local, acceptor })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    handshaken: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!(%remote, "too many TLS handshakes in progress; closing the connection");
            continue;
        };
        let (acceptor, handshaken) = (acceptor.clone(), handshaken.clone());
        tokio::spawn(async move {
            let outcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(stream, &acceptor)).await;
            drop(slot);
            match outcome {
                Ok(Ok(Some(tls))) => {
                    let _ = handshaken.send((tls, remote)).await;
                }
                Ok(Ok(None)) => tracing::debug!(%remote, "plain HTTP on the TLS port: told the client to use https"),
                Ok(Err(error)) => tracing::debug!(%remote, %error, "TLS handshake failed"),
                Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
            }
        });
    }
}

/// The TLS stream, or `None` when the client spoke plain HTTP (answered with a 400).
async fn handshake(mut stream: TcpStream, acceptor: &tokio_rustls::TlsAcceptor) -> std::io::Result<Option<TlsStream<TcpStream>>> {
    let mut first = [0u8; 1];
    stream.peek(&mut first).await?;
    // 0x16: a TLS handshake record.
    if first[0] != 0x16 {
        stream.write_all(PLAIN_HTTP_ANSWER.as_bytes()).await?;
        stream.shutdown().await?;
        return Ok(None);
    }
    acceptor.accept(stream).await.map(Some)
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.handshaken.recv().await {
            Some(connection) => connection,
            // The accept loop only ends when the listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// Who is on the other end of a connection: its address, and the certificate the client presented
/// (verified against the CA during the handshake), if any. Plain TCP connections have none.
#[derive(Clone, Debug, Default)]
pub struct Peer {
    pub remote: Option<SocketAddr>,
    pub cert: Option<Arc<CertificateDer<'static>>>,
}

impl Peer {
    /// Whether the peer presented a certificate valid for `name`.
    pub fn is(&self, name: &str) -> bool {
        self.cert.as_deref().is_some_and(|cert| crate::cert_is_for(cert, name))
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Peer {
        let (_, connection) = stream.io().get_ref();
        let cert = connection.peer_certificates().and_then(|chain| chain.first()).map(|leaf| Arc::new(leaf.clone().into_owned()));
        Peer { remote: Some(*stream.remote_addr()), cert }
    }
}

impl Connected<IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Peer {
        Peer { remote: Some(*stream.remote_addr()), cert: None }
    }
}
