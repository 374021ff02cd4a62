//! A small HTTP/1.1 codec for the backend side of the L7 proxy: request heads are written straight into
//! the connection's buffer, response heads are parsed with `httparse`, and response bodies are framed by
//! content length, chunked encoding or the connection's end, without the per-request channels and tasks
//! of a general client. The client side stays with hyper's server.
//!
//! **Invariant:** nothing here does I/O; [`crate::pool::BackendConnection`] feeds bytes in and takes
//! bytes out, so every rule of the wire format is tested on byte strings.

use std::mem::MaybeUninit;
use std::ops::Range;

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, StatusCode};

/// Upper bound of a response head (and of a chunked body's trailers).
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Upper bound of the headers in one response head.
const MAX_HEADERS: usize = 128;
/// Upper bound of one chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4096;

/// What a backend sent that is not HTTP/1.1 as the proxy accepts it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CodecError {
    #[error("malformed response head: {0}")]
    Head(#[from] httparse::Error),
    #[error("response head larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("invalid header {0}")]
    InvalidHeader(String),
    #[error("invalid content-length")]
    InvalidContentLength,
    #[error("unexpected 101 Switching Protocols")]
    UnexpectedUpgrade,
    #[error("malformed chunked body")]
    Chunked,
    #[error("connection closed before the response body ended")]
    IncompleteBody,
}

/// How a request body goes to the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestFraming {
    /// No body.
    Empty,
    /// The body is as long as the request's own `Content-Length`.
    Length,
    /// Chunked transfer coding (the client's body has no known length).
    Chunked,
}

/// Appends the request head to `out`. `headers` were already stripped of hop-by-hop headers;
/// `default_host` is used when they have no `Host`.
pub(crate) fn encode_request_head(
    out: &mut Vec<u8>,
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    default_host: &HeaderValue,
    framing: RequestFraming,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path_and_query.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut has_host = false;
    let mut has_length = false;
    for (name, value) in headers {
        if *name == header::CONTENT_LENGTH {
            if framing == RequestFraming::Chunked {
                continue;
            }
            has_length = true;
        } else if *name == header::HOST {
            has_host = true;
        }
        write_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if !has_host {
        write_header(out, b"host", default_host.as_bytes());
    }
    match framing {
        RequestFraming::Chunked => write_header(out, b"transfer-encoding", b"chunked"),
        RequestFraming::Empty if !has_length && matches!(*method, Method::POST | Method::PUT | Method::PATCH) => {
            write_header(out, b"content-length", b"0");
        }
        RequestFraming::Empty | RequestFraming::Length => {}
    }
    out.extend_from_slice(b"\r\n");
}

fn write_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends one chunk of a chunked request body.
pub(crate) fn encode_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return; // An empty chunk would end the body.
    }
    use std::io::Write as _;
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The end of a chunked request body.
pub(crate) const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// A parsed response head, hop-by-hop headers removed.
#[derive(Debug)]
pub(crate) struct ResponseHead {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// How the body that follows is framed.
    pub body: BodyDecoder,
    /// The backend allows another request on the connection after this response.
    pub keep_alive: bool,
}

/// Parses the response head at the start of `buffer`: `Ok(None)` when it is not complete yet, else its
/// length and the head. Informational (1xx) heads are returned like any other; the caller skips them.
pub(crate) fn parse_response_head(buffer: &[u8], request_method: &Method) -> Result<Option<(usize, ResponseHead)>, CodecError> {
    // Left uninitialised: zeroing 128 headers (4 KiB) cost more than parsing a typical head.
    let mut raw_headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let length = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut response, buffer, &mut raw_headers)? {
        httparse::Status::Complete(length) => length,
        httparse::Status::Partial if buffer.len() >= MAX_HEAD_BYTES => return Err(CodecError::HeadTooLarge),
        httparse::Status::Partial => return Ok(None),
    };
    let code = response.code.unwrap_or_default();
    let status = StatusCode::from_u16(code).map_err(|_| CodecError::Head(httparse::Error::Status))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(CodecError::UnexpectedUpgrade);
    }
    let mut keep_alive = response.version == Some(1);
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoded = false;
    let mut connection_tokens = false;
    let mut headers = HeaderMap::with_capacity(response.headers.len());
    for raw in response.headers.iter() {
        let name = raw.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let value = parse_content_length(raw.value)?;
            if content_length.is_some_and(|previous| previous != value) {
                return Err(CodecError::InvalidContentLength);
            }
            content_length = Some(value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoded = true;
            // Chunked must be the last coding; anything else is delimited by the connection's end.
            chunked = std::str::from_utf8(raw.value)
                .ok()
                .and_then(|value| value.rsplit(',').next())
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
            continue;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in raw.value.split(|&byte| byte == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive |= response.version == Some(0);
                } else if !token.is_empty() {
                    connection_tokens = true;
                }
            }
            continue;
        } else if is_hop_by_hop(name) {
            continue;
        }
        let header_name =
            HeaderName::from_bytes(name).map_err(|_| CodecError::InvalidHeader(String::from_utf8_lossy(name).into_owned()))?;
        let value = HeaderValue::from_bytes(raw.value).map_err(|_| CodecError::InvalidHeader(header_name.to_string()))?;
        headers.append(header_name, value);
    }
    if connection_tokens {
        for raw in response.headers.iter().filter(|raw| raw.name.eq_ignore_ascii_case("connection")) {
            for token in raw.value.split(|&byte| byte == b',') {
                if let Ok(name) = HeaderName::from_bytes(token.trim_ascii()) {
                    headers.remove(name);
                }
            }
        }
    }

    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || *request_method == Method::HEAD;
    let body = if bodiless {
        BodyDecoder::length(0)
    } else if chunked {
        BodyDecoder { state: DecoderState::Chunked(ChunkState::Size) }
    } else if transfer_encoded {
        BodyDecoder { state: DecoderState::UntilClose }
    } else if let Some(length) = content_length {
        BodyDecoder::length(length)
    } else {
        BodyDecoder { state: DecoderState::UntilClose }
    };
    if body.is_until_close() {
        keep_alive = false;
    }
    Ok(Some((length, ResponseHead { status, headers, body, keep_alive })))
}

fn parse_content_length(value: &[u8]) -> Result<u64, CodecError> {
    // A repeated header folded into one value ("5, 5") is accepted when all agree.
    let mut length = None;
    for part in value.split(|&byte| byte == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return Err(CodecError::InvalidContentLength);
        }
        let parsed: u64 = std::str::from_utf8(part).ok().and_then(|text| text.parse().ok()).ok_or(CodecError::InvalidContentLength)?;
        if length.is_some_and(|previous| previous != parsed) {
            return Err(CodecError::InvalidContentLength);
        }
        length = Some(parsed);
    }
    length.ok_or(CodecError::InvalidContentLength)
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) besides `Connection` and `Transfer-Encoding`, which the parser
/// reads before dropping them.
fn is_hop_by_hop(name: &[u8]) -> bool {
    ["keep-alive", "proxy-connection", "te", "trailer", "upgrade", "http2-settings"]
        .iter()
        .any(|hop| name.eq_ignore_ascii_case(hop.as_bytes()))
}

/// Decodes a response body from the bytes after its head.
#[derive(Debug)]
pub(crate) struct BodyDecoder {
    state: DecoderState,
}

#[derive(Debug)]
enum DecoderState {
    /// This many bytes are left.
    Length(u64),
    Chunked(ChunkState),
    /// Everything until the backend closes the connection.
    UntilClose,
    Done,
}

#[derive(Debug, Clone, Copy)]
enum ChunkState {
    Size,
    /// This many bytes of the current chunk are left.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    Trailers,
}

/// One step of [`BodyDecoder::decode`].
#[derive(Debug, PartialEq)]
pub(crate) enum Decoded {
    /// Body bytes at this range of the buffer.
    Data(Range<usize>),
    /// The trailer fields of a chunked body.
    Trailers(HeaderMap),
    /// More bytes are needed.
    NeedMore,
    /// The body is complete.
    End,
}

impl BodyDecoder {
    pub fn length(length: u64) -> BodyDecoder {
        BodyDecoder { state: if length == 0 { DecoderState::Done } else { DecoderState::Length(length) } }
    }

    /// The body is complete (nothing more is to be read for it).
    pub fn is_done(&self) -> bool {
        matches!(self.state, DecoderState::Done)
    }

    pub fn is_until_close(&self) -> bool {
        matches!(self.state, DecoderState::UntilClose)
    }

    /// Bytes still to come, when known.
    pub fn remaining(&self) -> Option<u64> {
        match self.state {
            DecoderState::Length(length) => Some(length),
            DecoderState::Done => Some(0),
            DecoderState::Chunked(_) | DecoderState::UntilClose => None,
        }
    }

    /// Decodes from the start of `buffer`: returns how many bytes of it were consumed and what they were.
    /// A `Data` range lies within the consumed bytes.
    pub fn decode(&mut self, buffer: &[u8]) -> Result<(usize, Decoded), CodecError> {
        let mut consumed = 0;
        loop {
            let rest = &buffer[consumed..];
            match &mut self.state {
                DecoderState::Done => return Ok((consumed, Decoded::End)),
                DecoderState::Length(left) => {
                    let take = (*left).min(rest.len() as u64) as usize;
                    if take == 0 {
                        return Ok((consumed, Decoded::NeedMore));
                    }
                    *left -= take as u64;
                    if *left == 0 {
                        self.state = DecoderState::Done;
                    }
                    return Ok((consumed + take, Decoded::Data(consumed..consumed + take)));
                }
                DecoderState::UntilClose => {
                    if rest.is_empty() {
                        return Ok((consumed, Decoded::NeedMore));
                    }
                    return Ok((buffer.len(), Decoded::Data(consumed..buffer.len())));
                }
                DecoderState::Chunked(chunk) => match *chunk {
                    ChunkState::Size => {
                        let Some(newline) = rest.iter().position(|&byte| byte == b'\n') else {
                            if rest.len() > MAX_CHUNK_LINE {
                                return Err(CodecError::Chunked);
                            }
                            return Ok((consumed, Decoded::NeedMore));
                        };
                        let line = rest[..newline].strip_suffix(b"\r").ok_or(CodecError::Chunked)?;
                        let size = parse_chunk_size(line)?;
                        *chunk = if size == 0 { ChunkState::Trailers } else { ChunkState::Data(size) };
                        consumed += newline + 1;
                    }
                    ChunkState::Data(left) => {
                        let take = left.min(rest.len() as u64) as usize;
                        if take == 0 {
                            return Ok((consumed, Decoded::NeedMore));
                        }
                        *chunk = if left == take as u64 { ChunkState::DataEnd } else { ChunkState::Data(left - take as u64) };
                        return Ok((consumed + take, Decoded::Data(consumed..consumed + take)));
                    }
                    ChunkState::DataEnd => {
                        if rest.len() < 2 {
                            return Ok((consumed, Decoded::NeedMore));
                        }
                        if &rest[..2] != b"\r\n" {
                            return Err(CodecError::Chunked);
                        }
                        *chunk = ChunkState::Size;
                        consumed += 2;
                    }
                    ChunkState::Trailers => {
                        if rest.len() < 2 {
                            return Ok((consumed, Decoded::NeedMore));
                        }
                        if rest.starts_with(b"\r\n") {
                            self.state = DecoderState::Done;
                            return Ok((consumed + 2, Decoded::End));
                        }
                        let mut raw_headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                        match httparse::parse_headers(rest, &mut raw_headers).map_err(|_| CodecError::Chunked)? {
                            httparse::Status::Partial if rest.len() >= MAX_HEAD_BYTES => return Err(CodecError::Chunked),
                            httparse::Status::Partial => return Ok((consumed, Decoded::NeedMore)),
                            httparse::Status::Complete((length, fields)) => {
                                let mut trailers = HeaderMap::with_capacity(fields.len());
                                for field in fields {
                                    let (Ok(name), Ok(value)) =
                                        (HeaderName::from_bytes(field.name.as_bytes()), HeaderValue::from_bytes(field.value))
                                    else {
                                        return Err(CodecError::Chunked);
                                    };
                                    trailers.append(name, value);
                                }
                                self.state = DecoderState::Done;
                                return Ok((consumed + length, Decoded::Trailers(trailers)));
                            }
                        }
                    }
                },
            }
        }
    }

    /// The backend closed the connection: the end of a close-delimited body, an error for the others.
    pub fn on_eof(&mut self) -> Result<(), CodecError> {
        match self.state {
            DecoderState::UntilClose | DecoderState::Done => {
                self.state = DecoderState::Done;
                Ok(())
            }
            DecoderState::Length(_) | DecoderState::Chunked(_) => Err(CodecError::IncompleteBody),
        }
    }
}

fn parse_chunk_size(line: &[u8]) -> Result<u64, CodecError> {
    let digits_end = line.iter().position(|byte| !byte.is_ascii_hexdigit()).unwrap_or(line.len());
    let (digits, rest) = line.split_at(digits_end);
    // After the size only whitespace and extensions (";name=value") may follow.
    let rest = rest.trim_ascii_start();
    if digits.is_empty() || digits.len() > 15 || !(rest.is_empty() || rest[0] == b';') {
        return Err(CodecError::Chunked);
    }
    let digits = std::str::from_utf8(digits).map_err(|_| CodecError::Chunked)?;
    u64::from_str_radix(digits, 16).map_err(|_| CodecError::Chunked)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, method: Method) -> ResponseHead {
        let (length, head) = parse_response_head(text.as_bytes(), &method).unwrap().expect("complete head");
        assert_eq!(length, text.len());
        head
    }

    /// Feeds `wire` to a decoder `step` bytes at a time, as reads would; returns the body, the trailers
    /// and whether it ended.
    fn decode_all(mut decoder: BodyDecoder, wire: &[u8], step: usize) -> Result<(Vec<u8>, Option<HeaderMap>, bool), CodecError> {
        let mut buffer = Vec::new();
        let mut fed = 0;
        let mut body = Vec::new();
        let mut trailers = None;
        loop {
            let (consumed, decoded) = decoder.decode(&buffer)?;
            match decoded {
                Decoded::Data(range) => body.extend_from_slice(&buffer[range]),
                Decoded::Trailers(fields) => trailers = Some(fields),
                Decoded::End => return Ok((body, trailers, true)),
                Decoded::NeedMore if fed == wire.len() => {
                    decoder.on_eof()?;
                    return Ok((body, trailers, decoder.is_done()));
                }
                Decoded::NeedMore => {
                    let next = (fed + step).min(wire.len());
                    buffer.extend_from_slice(&wire[fed..next]);
                    fed = next;
                }
            }
            buffer.drain(..consumed);
        }
    }

    #[test]
    fn request_head_is_written_with_host_and_framing() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("192.0.2.7"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        let host = HeaderValue::from_static("10.0.0.1:80");
        let mut out = Vec::new();
        encode_request_head(&mut out, &Method::POST, "/a?b=c", &headers, &host, RequestFraming::Length);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /a?b=c HTTP/1.1\r\nx-forwarded-for: 192.0.2.7\r\ncontent-length: 5\r\nhost: 10.0.0.1:80\r\n\r\n"
        );

        let mut out = Vec::new();
        encode_request_head(&mut out, &Method::POST, "/", &headers, &host, RequestFraming::Chunked);
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("content-length"), "{text}");
        assert!(text.ends_with("transfer-encoding: chunked\r\n\r\n"), "{text}");

        headers.clear();
        headers.insert(header::HOST, HeaderValue::from_static("web.example"));
        let mut out = Vec::new();
        encode_request_head(&mut out, &Method::PUT, "/", &headers, &host, RequestFraming::Empty);
        assert_eq!(String::from_utf8(out).unwrap(), "PUT / HTTP/1.1\r\nhost: web.example\r\ncontent-length: 0\r\n\r\n");
        let mut out = Vec::new();
        encode_request_head(&mut out, &Method::GET, "/", &headers, &host, RequestFraming::Empty);
        assert_eq!(String::from_utf8(out).unwrap(), "GET / HTTP/1.1\r\nhost: web.example\r\n\r\n");

        let mut chunk = Vec::new();
        encode_chunk(&mut chunk, &[b'x'; 26]);
        encode_chunk(&mut chunk, b"");
        chunk.extend_from_slice(LAST_CHUNK);
        assert_eq!(chunk, format!("1a\r\n{}\r\n0\r\n\r\n", "x".repeat(26)).into_bytes());
    }

    #[test]
    fn content_length_body() {
        let head = parse("HTTP/1.1 200 OK\r\nContent-Length: 11\r\nX-A: 1\r\n\r\n", Method::GET);
        assert_eq!(head.status, StatusCode::OK);
        assert!(head.keep_alive);
        assert_eq!(head.headers["content-length"], "11");
        assert_eq!(head.body.remaining(), Some(11));
        for step in [1, 3, 100] {
            let decoder = head_decoder("HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n");
            // Bytes after the body belong to the next response and are not consumed.
            let (body, _, ended) = decode_all(decoder, b"hello worldHTTP/1.1", step).unwrap();
            assert_eq!((body.as_slice(), ended), (&b"hello world"[..], true), "step {step}");
        }
        let truncated = decode_all(head_decoder("HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n"), b"hello", 4);
        assert!(matches!(truncated, Err(CodecError::IncompleteBody)), "{truncated:?}");
        assert!(parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", &Method::GET).is_err());
        assert!(parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", &Method::GET).is_err());
        assert_eq!(parse("HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\n", Method::GET).body.remaining(), Some(3));
    }

    fn head_decoder(text: &str) -> BodyDecoder {
        parse(text, Method::GET).body
    }

    #[test]
    fn chunked_body_with_extensions_and_trailers() {
        let wire = b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: 42\r\n\r\n";
        for step in [1, 2, 7, 1000] {
            let head = parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", Method::GET);
            assert!(head.headers.get("transfer-encoding").is_none(), "transfer-encoding is hop-by-hop");
            assert!(head.keep_alive);
            let (body, trailers, ended) = decode_all(head.body, wire, step).unwrap();
            assert_eq!(body, b"hello world", "step {step}");
            assert!(ended);
            assert_eq!(trailers.unwrap()["x-checksum"], "42");
        }
        let (body, trailers, ended) =
            decode_all(head_decoder("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), b"A\r\n0123456789\r\n0\r\n\r\n", 3).unwrap();
        assert_eq!((body.as_slice(), trailers.is_none(), ended), (&b"0123456789"[..], true, true));
        // Chunked wins over a content-length sent along with it.
        let head = parse("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", Method::GET);
        assert_eq!(head.body.remaining(), None);
        assert!(!head.body.is_until_close());

        for bad in [&b"zz\r\nhello\r\n"[..], b"5\r\nhelloXX0\r\n\r\n", b"5 x\r\nhello\r\n", b"ffffffffffffffffff\r\n", b"5\nhello\r\n"] {
            let result = decode_all(head_decoder("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), bad, 4);
            assert!(matches!(result, Err(CodecError::Chunked)), "{:?}: {result:?}", String::from_utf8_lossy(bad));
        }
        let truncated = decode_all(head_decoder("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), b"5\r\nhel", 4);
        assert!(matches!(truncated, Err(CodecError::IncompleteBody)), "{truncated:?}");
    }

    #[test]
    fn close_delimited_body() {
        for text in ["HTTP/1.1 200 OK\r\n\r\n", "HTTP/1.0 200 OK\r\n\r\n", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"] {
            let head = parse(text, Method::GET);
            assert!(head.body.is_until_close(), "{text}");
            assert!(!head.keep_alive, "{text}");
            let (body, _, ended) = decode_all(head.body, b"all of it", 2).unwrap();
            assert_eq!((body.as_slice(), ended), (&b"all of it"[..], true));
        }
    }

    #[test]
    fn bodiless_responses_and_informational_heads() {
        for (text, method) in [
            ("HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n", Method::HEAD),
            ("HTTP/1.1 204 No Content\r\n\r\n", Method::GET),
            ("HTTP/1.1 304 Not Modified\r\nContent-Length: 42\r\n\r\n", Method::GET),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", Method::HEAD),
            ("HTTP/1.1 100 Continue\r\n\r\n", Method::POST),
            ("HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n", Method::GET),
        ] {
            let head = parse(text, method);
            assert!(head.body.is_done(), "{text}");
            assert!(head.keep_alive, "{text}");
        }
        assert_eq!(parse("HTTP/1.1 100 Continue\r\n\r\n", Method::POST).status, StatusCode::CONTINUE);
        assert_eq!(parse("HTTP/1.1 304 Not Modified\r\nContent-Length: 42\r\n\r\n", Method::GET).headers["content-length"], "42");
        assert!(matches!(
            parse_response_head(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", &Method::GET),
            Err(CodecError::UnexpectedUpgrade)
        ));
    }

    #[test]
    fn hop_by_hop_response_headers_are_removed_and_close_is_seen() {
        let head = parse(
            "HTTP/1.1 200 OK\r\nConnection: close, X-Private\r\nX-Private: 1\r\nKeep-Alive: timeout=5\r\nUpgrade: h2c\r\n\
             Trailer: x-sum\r\nX-Kept: yes\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 0\r\n\r\n",
            Method::GET,
        );
        assert!(!head.keep_alive);
        let mut names: Vec<&str> = head.headers.keys().map(|name| name.as_str()).collect();
        names.sort();
        assert_eq!(names, vec!["content-length", "set-cookie", "x-kept"]);
        assert_eq!(head.headers.get_all("set-cookie").iter().count(), 2);
        assert!(!parse_response_head(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", &Method::GET).unwrap().unwrap().1.keep_alive);
        assert!(
            parse_response_head(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", &Method::GET)
                .unwrap()
                .unwrap()
                .1
                .keep_alive
        );
    }

    #[test]
    fn partial_and_garbage_heads() {
        assert!(parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Le", &Method::GET).unwrap().is_none());
        assert!(parse_response_head(b"", &Method::GET).unwrap().is_none());
        for garbage in
            [&b"garbage\r\n\r\n"[..], b"HTTP/1.1 abc OK\r\n\r\n", b"SSH-2.0-OpenSSH_9.6\r\n", b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n"]
        {
            assert!(parse_response_head(garbage, &Method::GET).is_err(), "{:?}", String::from_utf8_lossy(garbage));
        }
        let endless = format!("HTTP/1.1 200 OK\r\n{}", "x-filler: 0123456789\r\n".repeat(MAX_HEAD_BYTES / 20));
        assert!(parse_response_head(endless.as_bytes(), &Method::GET).is_err());
    }
}
