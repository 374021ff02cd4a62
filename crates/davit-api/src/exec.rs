//! The wire format of `davit alloc exec` after the HTTP upgrade (`Upgrade: davit-exec`).
//!
//! Both directions carry frames: one kind byte, a big-endian `u32` payload length, the payload.
//! The client sends [`ExecFrame::Stdin`], [`ExecFrame::StdinClose`] and [`ExecFrame::Resize`]; the agent
//! sends [`ExecFrame::Stdout`], [`ExecFrame::Stderr`], then exactly one [`ExecFrame::Exit`] or
//! [`ExecFrame::Error`], and closes. A terminal (`tty=true`) session has no separate stderr.

/// The `Upgrade` protocol token of an exec session.
pub const EXEC_PROTOCOL: &str = "davit-exec";

/// The largest payload a frame may carry; bigger output is split.
pub const MAX_FRAME_PAYLOAD: usize = 1 << 20;

const HEADER: usize = 5;

/// One message of an exec session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecFrame {
    Stdin(Vec<u8>),
    /// The client's stdin ended: the command's stdin is closed (pipes) or gets end-of-file (terminal).
    StdinClose,
    /// The client's terminal changed size.
    Resize {
        cols: u16,
        rows: u16,
    },
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The command exited with this code (128 + signal number when a signal ended it).
    Exit(i32),
    /// The command could not run or the session broke; the text says why.
    Error(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("unknown exec frame kind {0}")]
    UnknownKind(u8),
    #[error("exec frame of {0} bytes is larger than the limit of {MAX_FRAME_PAYLOAD}")]
    TooLarge(usize),
    #[error("malformed exec frame of kind {kind}: {reason}")]
    Malformed { kind: u8, reason: &'static str },
}

impl ExecFrame {
    fn kind(&self) -> u8 {
        match self {
            ExecFrame::Stdin(_) => 1,
            ExecFrame::StdinClose => 2,
            ExecFrame::Resize { .. } => 3,
            ExecFrame::Stdout(_) => 4,
            ExecFrame::Stderr(_) => 5,
            ExecFrame::Exit(_) => 6,
            ExecFrame::Error(_) => 7,
        }
    }

    /// Appends the encoded frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut payload_of = |payload: &[u8]| {
            out.push(self.kind());
            out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            out.extend_from_slice(payload);
        };
        match self {
            ExecFrame::Stdin(bytes) | ExecFrame::Stdout(bytes) | ExecFrame::Stderr(bytes) => payload_of(bytes),
            ExecFrame::StdinClose => payload_of(&[]),
            ExecFrame::Resize { cols, rows } => {
                let [c0, c1] = cols.to_be_bytes();
                let [r0, r1] = rows.to_be_bytes();
                payload_of(&[c0, c1, r0, r1]);
            }
            ExecFrame::Exit(code) => payload_of(&code.to_be_bytes()),
            ExecFrame::Error(message) => payload_of(message.as_bytes()),
        }
    }

    /// Decodes the frame at the start of `buf`: `Ok(None)` while it is incomplete, else the frame and the
    /// number of bytes it took.
    pub fn decode(buf: &[u8]) -> Result<Option<(ExecFrame, usize)>, FrameError> {
        let Some(header) = buf.get(..HEADER) else {
            return Ok(None);
        };
        let kind = header[0];
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if len > MAX_FRAME_PAYLOAD {
            return Err(FrameError::TooLarge(len));
        }
        let Some(payload) = buf.get(HEADER..HEADER + len) else {
            return Ok(None);
        };
        let malformed = |reason| FrameError::Malformed { kind, reason };
        let frame = match kind {
            1 => ExecFrame::Stdin(payload.to_vec()),
            2 => ExecFrame::StdinClose,
            3 => match payload {
                [c0, c1, r0, r1] => ExecFrame::Resize { cols: u16::from_be_bytes([*c0, *c1]), rows: u16::from_be_bytes([*r0, *r1]) },
                _ => return Err(malformed("a resize carries 4 bytes")),
            },
            4 => ExecFrame::Stdout(payload.to_vec()),
            5 => ExecFrame::Stderr(payload.to_vec()),
            6 => match <[u8; 4]>::try_from(payload) {
                Ok(bytes) => ExecFrame::Exit(i32::from_be_bytes(bytes)),
                Err(_) => return Err(malformed("an exit code carries 4 bytes")),
            },
            7 => ExecFrame::Error(String::from_utf8_lossy(payload).into_owned()),
            other => return Err(FrameError::UnknownKind(other)),
        };
        Ok(Some((frame, HEADER + len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_frame_round_trips_even_when_split_anywhere() {
        let frames = vec![
            ExecFrame::Stdin(b"echo hi\n".to_vec()),
            ExecFrame::StdinClose,
            ExecFrame::Resize { cols: 120, rows: 40 },
            ExecFrame::Stdout(vec![0, 255, 10]),
            ExecFrame::Stderr(Vec::new()),
            ExecFrame::Exit(-3),
            ExecFrame::Error("no such task".to_owned()),
        ];
        let mut wire = Vec::new();
        for frame in &frames {
            frame.encode(&mut wire);
        }
        for split in 0..wire.len() {
            let mut buf = wire[..split].to_vec();
            let mut decoded = Vec::new();
            let mut rest = &wire[split..];
            loop {
                while let Some((frame, used)) = ExecFrame::decode(&buf).unwrap() {
                    decoded.push(frame);
                    buf.drain(..used);
                }
                let Some((&byte, tail)) = rest.split_first() else { break };
                buf.push(byte);
                rest = tail;
            }
            assert_eq!(decoded, frames, "split at {split}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn bad_frames_are_errors() {
        assert_eq!(ExecFrame::decode(&[9, 0, 0, 0, 0]), Err(FrameError::UnknownKind(9)));
        assert_eq!(ExecFrame::decode(&[4, 0xff, 0, 0, 0]), Err(FrameError::TooLarge(0xff00_0000)));
        assert!(matches!(ExecFrame::decode(&[6, 0, 0, 0, 1, 7]), Err(FrameError::Malformed { kind: 6, .. })));
    }
}
