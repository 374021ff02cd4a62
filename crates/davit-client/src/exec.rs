//! The client half of an exec session: opening the upgraded connection and moving [`ExecFrame`]s over it.

use davit_api::exec::{EXEC_PROTOCOL, ExecFrame, MAX_FRAME_PAYLOAD};
use davit_api::http::ExecQuery;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{ClientError, api_error};

/// An open exec session: a byte stream both ways (frames on top).
pub type ExecStream = reqwest::Upgraded;

/// Asks `url` (a server's or an agent's exec route) to upgrade to an exec session. Used by the client and by
/// the server when it relays a session to the allocation's agent.
/// Opens an exec session at `url`; `token` is sent as the caller's token (a relay passes its caller's on).
pub async fn open(http: &reqwest::Client, url: &str, query: &ExecQuery, token: Option<&str>) -> Result<ExecStream, ClientError> {
    let mut request = http.get(url).timeout(crate::STREAM_TIMEOUT);
    if let Some(token) = token {
        request = request.header(davit_api::acl::TOKEN_HEADER, token);
    }
    let response = request
        .query(query)
        .header(reqwest::header::CONNECTION, "upgrade")
        .header(reqwest::header::UPGRADE, EXEC_PROTOCOL)
        .send()
        .await
        .map_err(|source| ClientError::Unreachable { addr: url.to_owned(), source })?;
    let status = response.status();
    if status != reqwest::StatusCode::SWITCHING_PROTOCOLS {
        let bytes = response.bytes().await.map_err(|source| ClientError::Unreachable { addr: url.to_owned(), source })?;
        return Err(api_error(status, &bytes));
    }
    response.upgrade().await.map_err(|source| ClientError::Unreachable { addr: url.to_owned(), source })
}

/// Reads frames from a byte stream.
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R) -> FrameReader<R> {
        FrameReader { inner, buf: Vec::new() }
    }

    /// The next frame; `None` when the stream ended between frames.
    pub async fn next(&mut self) -> std::io::Result<Option<ExecFrame>> {
        loop {
            match ExecFrame::decode(&self.buf) {
                Ok(Some((frame, used))) => {
                    self.buf.drain(..used);
                    return Ok(Some(frame));
                }
                Ok(None) => {}
                Err(error) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, error)),
            }
            let mut chunk = [0u8; 16 * 1024];
            let read = self.inner.read(&mut chunk).await?;
            if read == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "exec stream ended inside a frame"))
                };
            }
            self.buf.extend_from_slice(&chunk[..read]);
        }
    }
}

/// Writes one frame (data frames bigger than the limit are split) and flushes.
pub async fn write_frame<W: AsyncWrite + Unpin>(writer: &mut W, frame: &ExecFrame) -> std::io::Result<()> {
    let mut bytes = Vec::new();
    match frame {
        ExecFrame::Stdin(data) | ExecFrame::Stdout(data) | ExecFrame::Stderr(data) if data.len() > MAX_FRAME_PAYLOAD => {
            for chunk in data.chunks(MAX_FRAME_PAYLOAD) {
                let part = match frame {
                    ExecFrame::Stdin(_) => ExecFrame::Stdin(chunk.to_vec()),
                    ExecFrame::Stdout(_) => ExecFrame::Stdout(chunk.to_vec()),
                    _ => ExecFrame::Stderr(chunk.to_vec()),
                };
                part.encode(&mut bytes);
            }
        }
        _ => frame.encode(&mut bytes),
    }
    writer.write_all(&bytes).await?;
    writer.flush().await
}
