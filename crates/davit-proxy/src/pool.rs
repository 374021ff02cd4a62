//! Keep-alive HTTP/1.1 connections to one backend, driven by the task of the request that uses them.
//!
//! A backend connection is a plain value around a socket and two buffers: whoever holds it does its I/O.
//! While a request is sent and its response streamed, that is the client connection's task (the response
//! body reads the connection, see [`crate::l7`]); while it is idle in the pool nobody touches it, and
//! [`ConnectionPool::checkout`] looks once before reuse whether the backend closed it. Requests and
//! responses go through [`crate::codec`]: no per-request task, channel or header copy.
//!
//! **Invariant:** a connection is in the pool only when it finished its last exchange completely (request
//! sent, response read to its end, nothing more buffered) and the backend allows another request on it; a
//! connection that failed, closed or was abandoned mid-exchange is dropped, which closes the socket.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use hyper::body::{Body, Incoming};
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Method, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::codec::{self, BodyDecoder, CodecError, Decoded, RequestFraming, ResponseHead};
use crate::proxy::lock;

/// Idle connections kept per backend and serving thread; more are closed when they become idle.
const MAX_IDLE_PER_BACKEND: usize = 256;
/// Size of each read from a backend.
const READ_SIZE: usize = 16 * 1024;

/// One HTTP/1.1 connection to a backend.
pub(crate) struct BackendConnection {
    stream: TcpStream,
    /// Bytes read and not consumed yet are `read_buffer[read_start..]`.
    read_buffer: Vec<u8>,
    read_start: usize,
    /// Bytes to send are `write_buffer[write_start..]`.
    write_buffer: Vec<u8>,
    write_start: usize,
    /// The client's request body while it is being forwarded.
    request_body: Option<OutgoingBody>,
    /// The connection carried an exchange before the current one.
    reused: bool,
    /// Bytes of the current exchange's response were read.
    received: bool,
}

struct OutgoingBody {
    body: Incoming,
    chunked: bool,
}

/// What a request to forward consists of, besides its body.
pub(crate) struct OutgoingRequest<'a> {
    pub method: &'a Method,
    pub path_and_query: &'a str,
    /// Already stripped of hop-by-hop headers, `X-Forwarded-*` added.
    pub headers: &'a HeaderMap,
    /// `Host` for requests that come without one.
    pub default_host: &'a HeaderValue,
}

/// Why an exchange on a connection failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectionError {
    #[error("backend connection failed")]
    Io(#[from] std::io::Error),
    #[error("backend connection closed before a response")]
    Closed,
    #[error("bad response from backend")]
    Codec(#[from] CodecError),
    #[error("client request body failed")]
    ClientBody(#[source] hyper::Error),
}

impl BackendConnection {
    fn new(stream: TcpStream) -> BackendConnection {
        BackendConnection {
            stream,
            read_buffer: Vec::with_capacity(READ_SIZE),
            read_start: 0,
            write_buffer: Vec::with_capacity(1024),
            write_start: 0,
            request_body: None,
            reused: false,
            received: false,
        }
    }

    /// Queues `request`'s head (and then its body) for sending; nothing is written until the connection
    /// is polled.
    pub fn start(&mut self, request: &OutgoingRequest<'_>, body: Option<Incoming>) {
        let framing = match &body {
            None => RequestFraming::Empty,
            Some(body) if body.size_hint().exact().is_some() && request.headers.contains_key(hyper::header::CONTENT_LENGTH) => {
                RequestFraming::Length
            }
            Some(_) => RequestFraming::Chunked,
        };
        self.write_buffer.clear();
        self.write_start = 0;
        self.received = false;
        codec::encode_request_head(
            &mut self.write_buffer,
            request.method,
            request.path_and_query,
            request.headers,
            request.default_host,
            framing,
        );
        self.request_body = body.map(|body| OutgoingBody { body, chunked: framing == RequestFraming::Chunked });
    }

    /// Sends the request and reads up to its final response head (1xx heads are skipped).
    pub async fn read_response_head(&mut self, method: &Method) -> Result<ResponseHead, ConnectionError> {
        poll_fn(|cx| self.poll_response_head(cx, method)).await
    }

    fn poll_response_head(&mut self, cx: &mut Context<'_>, method: &Method) -> Poll<Result<ResponseHead, ConnectionError>> {
        loop {
            if let Poll::Ready(Err(error)) = self.poll_send(cx) {
                return Poll::Ready(Err(error));
            }
            if !self.buffered().is_empty()
                && let Some((length, head)) = codec::parse_response_head(self.buffered(), method)?
            {
                self.consume(length);
                if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS {
                    continue;
                }
                return Poll::Ready(Ok(head));
            }
            if ready!(self.poll_fill(cx))? == 0 {
                return Poll::Ready(Err(if self.buffered().is_empty() {
                    ConnectionError::Closed
                } else {
                    ConnectionError::Codec(CodecError::IncompleteBody)
                }));
            }
        }
    }

    /// Writes what is queued and forwards the request body as far as it is available; `Ready(Ok)` once
    /// the whole request is sent.
    pub fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnectionError>> {
        loop {
            while self.write_start < self.write_buffer.len() {
                let written = ready!(Pin::new(&mut self.stream).poll_write(cx, &self.write_buffer[self.write_start..]))?;
                if written == 0 {
                    return Poll::Ready(Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into()));
                }
                self.write_start += written;
            }
            self.write_buffer.clear();
            self.write_start = 0;
            let Some(outgoing) = &mut self.request_body else { return Poll::Ready(Ok(())) };
            match ready!(Pin::new(&mut outgoing.body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        if outgoing.chunked {
                            codec::encode_chunk(&mut self.write_buffer, &data);
                        } else {
                            self.write_buffer.extend_from_slice(&data);
                        }
                    }
                }
                Some(Err(error)) => {
                    self.request_body = None;
                    return Poll::Ready(Err(ConnectionError::ClientBody(error)));
                }
                None => {
                    if outgoing.chunked {
                        self.write_buffer.extend_from_slice(codec::LAST_CHUNK);
                    }
                    self.request_body = None;
                }
            }
        }
    }

    /// Bytes read and not consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.read_buffer[self.read_start..]
    }

    pub fn consume(&mut self, length: usize) {
        self.read_start += length;
        if self.read_start == self.read_buffer.len() {
            self.read_buffer.clear();
            self.read_start = 0;
        }
    }

    /// Reads more from the backend; `Ready(Ok(0))` at its end.
    pub fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.read_start > 0 && self.read_buffer.capacity() - self.read_buffer.len() < READ_SIZE / 2 {
            self.read_buffer.drain(..self.read_start);
            self.read_start = 0;
        }
        if self.read_buffer.len() - self.read_start >= codec::MAX_HEAD_BYTES + READ_SIZE {
            // The caller consumes what it can before reading more; this much unconsumed is a runaway head.
            return Poll::Ready(Err(std::io::Error::other("backend response head too large")));
        }
        self.read_buffer.reserve(READ_SIZE);
        let filled = self.read_buffer.len();
        let mut buffer = ReadBuf::uninit(&mut self.read_buffer.spare_capacity_mut()[..READ_SIZE]);
        ready!(Pin::new(&mut self.stream).poll_read(cx, &mut buffer))?;
        let read = buffer.filled().len();
        // SAFETY: `poll_read` initialised the first `read` bytes of the spare capacity.
        unsafe { self.read_buffer.set_len(filled + read) };
        if read > 0 {
            self.received = true;
        }
        Poll::Ready(Ok(read))
    }

    /// The current exchange failed without a byte of its response on a connection that had been idle in
    /// the pool: the backend most likely closed it while it was idle, and the request may be sent again on
    /// a fresh connection.
    pub fn closed_while_idle(&self) -> bool {
        self.reused && !self.received
    }

    /// The whole request is sent.
    pub fn request_sent(&self) -> bool {
        self.request_body.is_none() && self.write_start == self.write_buffer.len()
    }

    /// Whether the backend closed the idle connection (or sent something it should not have), without
    /// waiting: tokio only reads when the socket was reported readable.
    fn closed_by_backend(&self) -> bool {
        let mut probe = [0u8; 1];
        match self.stream.try_read(&mut probe) {
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => false,
            Ok(_) | Err(_) => true,
        }
    }

    /// Moves the socket to the event loop of the runtime this is called on.
    fn reregister(mut self) -> std::io::Result<BackendConnection> {
        self.stream = TcpStream::from_std(self.stream.into_std()?)?;
        Ok(self)
    }
}

/// Opens a connection to `addr` within `timeout`.
pub(crate) async fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<BackendConnection> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(connected) => connected?,
        Err(_elapsed) => return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")),
    };
    stream.set_nodelay(true)?;
    Ok(BackendConnection::new(stream))
}

/// Decoding state of a response body read from a connection: what [`crate::l7`]'s response body polls.
pub(crate) struct ResponseReader {
    pub decoder: BodyDecoder,
    /// The backend allows another request on the connection after this response.
    pub keep_alive: bool,
}

/// One step of [`ResponseReader::poll_next`].
pub(crate) enum BodyEvent {
    Data(hyper::body::Bytes),
    Trailers(HeaderMap),
    End,
}

impl ResponseReader {
    /// Reads the next piece of the response body from `connection`, sending what is left of the request
    /// meanwhile.
    pub fn poll_next(&mut self, connection: &mut BackendConnection, cx: &mut Context<'_>) -> Poll<Result<BodyEvent, ConnectionError>> {
        loop {
            if let Poll::Ready(Err(error)) = connection.poll_send(cx) {
                return Poll::Ready(Err(error));
            }
            let (consumed, decoded) = self.decoder.decode(connection.buffered())?;
            let event = match decoded {
                Decoded::Data(range) => BodyEvent::Data(hyper::body::Bytes::copy_from_slice(&connection.buffered()[range])),
                Decoded::Trailers(trailers) => BodyEvent::Trailers(trailers),
                Decoded::End => BodyEvent::End,
                Decoded::NeedMore => {
                    connection.consume(consumed);
                    if ready!(connection.poll_fill(cx))? == 0 {
                        self.decoder.on_eof()?;
                        self.keep_alive = false;
                    }
                    continue;
                }
            };
            connection.consume(consumed);
            return Poll::Ready(Ok(event));
        }
    }

    /// After the body's end: whether `connection` may take another request.
    pub fn is_reusable(&self, connection: &BackendConnection) -> bool {
        self.keep_alive && self.decoder.is_done() && connection.request_sent() && connection.buffered().is_empty()
    }
}

/// Idle keep-alive connections to one backend: one stack per serving thread, most recently used last.
///
/// A connection's socket is registered with the event loop of the thread that opened it, so each thread
/// checks connections in to its own stack and takes them from there first. Only when its stack is empty
/// does it take one from another thread's, moving the socket to its own event loop (two `epoll_ctl`s),
/// so that idle connections are still shared by all clients as with one pool.
pub(crate) struct ConnectionPool {
    idle: Box<[IdleStack]>,
}

/// One thread's idle connections, alone in its cache lines so that threads do not contend on their
/// neighbours' locks (128 bytes: x86 prefetches lines in pairs).
#[derive(Default)]
#[repr(align(128))]
struct IdleStack(Mutex<Vec<IdleConnection>>);

struct IdleConnection {
    connection: BackendConnection,
    since: Instant,
}

impl std::fmt::Debug for ConnectionPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let idle: usize = self.idle.iter().map(|stack| lock(&stack.0).len()).sum();
        f.debug_struct("ConnectionPool").field("idle", &idle).finish()
    }
}

impl ConnectionPool {
    /// A pool for `threads` serving threads (at least one).
    pub fn new(threads: usize) -> ConnectionPool {
        ConnectionPool { idle: (0..threads.max(1)).map(|_| IdleStack::default()).collect() }
    }

    /// The most recently used idle connection of serving thread `worker` (or else of another thread) that
    /// is still open and was idle for less than `idle_timeout` at `now`. Must be called on thread
    /// `worker`'s runtime.
    pub fn checkout(&self, worker: usize, idle_timeout: Duration, now: Instant) -> Option<BackendConnection> {
        let own = worker % self.idle.len();
        if let Some(connection) = self.checkout_from(own, idle_timeout, now) {
            return Some(connection);
        }
        let others = (1..self.idle.len()).map(|offset| (own + offset) % self.idle.len());
        for other in others {
            let Some(connection) = self.checkout_from(other, idle_timeout, now) else { continue };
            match connection.reregister() {
                Ok(connection) => return Some(connection),
                Err(error) => tracing::debug!(%error, "cannot move an idle backend connection to this thread"),
            }
        }
        None
    }

    fn checkout_from(&self, slot: usize, idle_timeout: Duration, now: Instant) -> Option<BackendConnection> {
        loop {
            let IdleConnection { connection, since } = lock(&self.idle[slot].0).pop()?;
            if now.saturating_duration_since(since) < idle_timeout && !connection.closed_by_backend() {
                return Some(connection);
            }
        }
    }

    /// Puts `connection` back after a complete exchange (see [`ResponseReader::is_reusable`]) on serving
    /// thread `worker`.
    pub fn check_in(&self, worker: usize, mut connection: BackendConnection) {
        connection.reused = true;
        let mut idle = lock(&self.idle[worker % self.idle.len()].0);
        if idle.len() < MAX_IDLE_PER_BACKEND {
            idle.push(IdleConnection { connection, since: Instant::now() });
        } else {
            drop(idle);
            drop(connection);
        }
    }

    /// Closes the connections of serving thread `worker` idle for `idle_timeout` or longer.
    pub fn close_idle(&self, worker: usize, idle_timeout: Duration, now: Instant) {
        let expired: Vec<IdleConnection> = {
            let mut idle = lock(&self.idle[worker % self.idle.len()].0);
            let fresh = idle.iter().position(|entry| now.saturating_duration_since(entry.since) < idle_timeout).unwrap_or(idle.len());
            idle.drain(..fresh).collect()
        };
        drop(expired);
    }
}
