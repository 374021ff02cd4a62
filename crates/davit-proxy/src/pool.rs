//! Keep-alive HTTP/1.1 connections to one backend, driven by the task of the request that uses them.
//!
//! hyper's pooled client (`hyper_util::client::legacy`) runs every backend connection as a task of its
//! own and passes each request and response through channels to it, so one proxied request woke the
//! client connection's task, the backend connection's task and the client's task again, often on the
//! other worker thread. Here a backend connection is a plain value: whoever holds it polls it. While a
//! request is sent and its response streamed, that is the client connection's task (the response body
//! polls the connection, see [`BackendConnection::drive`]); while it is idle in the pool nobody polls it,
//! and [`ConnectionPool::checkout`] polls it once before reuse, which notices a backend that closed it.
//!
//! **Invariant:** a connection is in the pool only when it finished its last exchange and hyper is
//! ready for the next request on it; a connection that failed, closed or was abandoned mid-exchange is
//! dropped, which closes the socket.

use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::client::conn::TrySendError;
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::proxy::lock;

/// Idle connections kept per backend; more are closed when they become idle.
const MAX_IDLE_PER_BACKEND: usize = 256;

/// What is sent to a backend: the client's request body, or nothing (for a retry, which only happens
/// for requests without a body).
pub(crate) enum RequestBody {
    Client(Incoming),
    Empty,
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Client(body) => Pin::new(body).poll_frame(cx),
            RequestBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Client(body) => body.is_end_stream(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Client(body) => body.size_hint(),
            RequestBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// One HTTP/1.1 connection to a backend: hyper's request sender and the connection state machine.
pub(crate) struct BackendConnection {
    sender: SendRequest<RequestBody>,
    driver: Connection<TokioIo<TcpStream>, RequestBody>,
    /// The driver finished (the connection is closed or failed); it is never polled again.
    closed: bool,
}

/// How sending a request on a connection failed.
pub(crate) enum SendError {
    /// The request was not written (the connection closed before): it may be sent on another one.
    NotSent(Box<Request<RequestBody>>),
    /// The request may have reached the backend.
    Failed(hyper::Error),
}

impl BackendConnection {
    /// Sends `request` and waits for the response head, driving the connection meanwhile.
    pub async fn send(&mut self, request: Request<RequestBody>) -> Result<Response<Incoming>, SendError> {
        let response = self.sender.try_send_request(request);
        let mut response = std::pin::pin!(response);
        let result = poll_fn(|cx| {
            self.drive(cx);
            response.as_mut().poll(cx)
        })
        .await;
        result.map_err(|mut error: TrySendError<Request<RequestBody>>| match error.take_message() {
            Some(request) => SendError::NotSent(Box::new(request)),
            None => SendError::Failed(error.into_error()),
        })
    }

    /// Lets hyper read and write on the connection; registers `cx` for its socket.
    pub fn drive(&mut self, cx: &mut Context<'_>) {
        if self.closed {
            return;
        }
        if let Poll::Ready(result) = Pin::new(&mut self.driver).poll(cx) {
            self.closed = true;
            if let Err(error) = result {
                tracing::debug!(%error, "backend connection ended with error");
            }
        }
    }

    /// Open and done with its last exchange (after [`BackendConnection::drive`]).
    fn is_reusable(&self) -> bool {
        !self.closed && self.sender.is_ready()
    }
}

/// Opens a connection to `addr` within `timeout`. Boxed: connections move between the pool, requests and
/// response bodies, and hyper's connection state is large.
pub(crate) async fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<Box<BackendConnection>> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(connected) => connected?,
        Err(_elapsed) => return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")),
    };
    stream.set_nodelay(true)?;
    let (sender, driver) = http1::Builder::new().handshake(TokioIo::new(stream)).await.map_err(std::io::Error::other)?;
    Ok(Box::new(BackendConnection { sender, driver, closed: false }))
}

/// Idle keep-alive connections to one backend, most recently used last.
#[derive(Default)]
pub(crate) struct ConnectionPool {
    idle: Mutex<Vec<IdleConnection>>,
}

struct IdleConnection {
    connection: Box<BackendConnection>,
    since: Instant,
}

impl std::fmt::Debug for ConnectionPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionPool").field("idle", &lock(&self.idle).len()).finish()
    }
}

impl ConnectionPool {
    /// The most recently used idle connection that is still open and was idle for less than
    /// `idle_timeout` at `now`.
    pub async fn checkout(&self, idle_timeout: Duration, now: Instant) -> Option<Box<BackendConnection>> {
        loop {
            let IdleConnection { mut connection, since } = lock(&self.idle).pop()?;
            if now.saturating_duration_since(since) >= idle_timeout {
                continue;
            }
            let reusable = poll_fn(|cx| {
                connection.drive(cx);
                Poll::Ready(connection.is_reusable())
            })
            .await;
            if reusable {
                return Some(connection);
            }
        }
    }

    /// Puts `connection` back after an exchange if it can take another request; otherwise drops
    /// (closes) it.
    pub fn check_in(&self, mut connection: Box<BackendConnection>, cx: &mut Context<'_>) {
        connection.drive(cx);
        if !connection.is_reusable() {
            return;
        }
        let mut idle = lock(&self.idle);
        if idle.len() < MAX_IDLE_PER_BACKEND {
            idle.push(IdleConnection { connection, since: Instant::now() });
        } else {
            drop(idle);
            drop(connection);
        }
    }

    /// Closes the connections idle for `idle_timeout` or longer.
    pub fn close_idle(&self, idle_timeout: Duration, now: Instant) {
        let expired: Vec<IdleConnection> = {
            let mut idle = lock(&self.idle);
            let fresh = idle.iter().position(|entry| now.saturating_duration_since(entry.since) < idle_timeout).unwrap_or(idle.len());
            idle.drain(..fresh).collect()
        };
        drop(expired);
    }
}
