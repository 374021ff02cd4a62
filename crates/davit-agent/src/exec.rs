//! `davit alloc exec` on the agent: runs a command in a task's context (through [`Driver::exec_command`])
//! with pipes or on a pseudo-terminal, and moves its input and output over an upgraded HTTP connection as
//! [`ExecFrame`]s.
//!
//! The command runs in its own process group (its own session on a terminal). If the client goes away
//! before the command ends, the whole group is killed: nothing started by an exec outlives its session.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use davit_api::exec::ExecFrame;
use davit_client::exec::{FrameReader, write_frame};
use davit_drivers::{Driver, DriverError, TaskHandle};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;

/// How long output is still collected after the command exited (background processes may hold it open).
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);
const READ_CHUNK: usize = 32 * 1024;

/// A started exec command, before the client's connection is upgraded.
pub(crate) struct ExecSession {
    child: Child,
    io: SessionIo,
}

enum SessionIo {
    Pipes { stdin: Option<ChildStdin>, stdout: tokio::process::ChildStdout, stderr: tokio::process::ChildStderr },
    Terminal(Arc<Pty>),
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ExecError {
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error("cannot run {program:?}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("opening a terminal: {0}")]
    Pty(#[source] io::Error),
}

impl ExecSession {
    /// Starts `command` in the task. With `terminal` (columns, rows) it runs on a new pseudo-terminal as the
    /// leader of its own session; `term` becomes its `TERM`.
    pub(crate) async fn start(
        driver: &dyn Driver,
        handle: &TaskHandle,
        command: &[String],
        terminal: Option<(u16, u16)>,
        term: Option<&str>,
    ) -> Result<ExecSession, ExecError> {
        let mut env = BTreeMap::new();
        if terminal.is_some() {
            env.insert("TERM".to_owned(), term.unwrap_or("xterm").to_owned());
        }
        let mut process = driver.exec_command(handle, command, &env).await?;
        process.kill_on_drop(true);
        let program = command.first().cloned().unwrap_or_default();
        let spawn_error = |source| ExecError::Spawn { program: program.clone(), source };
        match terminal {
            None => {
                process.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
                let mut child = process.spawn().map_err(spawn_error)?;
                let io = SessionIo::Pipes {
                    stdin: child.stdin.take(),
                    stdout: child.stdout.take().expect("stdout is piped"),
                    stderr: child.stderr.take().expect("stderr is piped"),
                };
                Ok(ExecSession { child, io })
            }
            Some((cols, rows)) => {
                let (pty, replica) = Pty::open(cols, rows).map_err(ExecError::Pty)?;
                let clone = |fd: &OwnedFd| fd.try_clone().map(Stdio::from).map_err(ExecError::Pty);
                process.stdin(clone(&replica)?).stdout(clone(&replica)?).stderr(Stdio::from(replica));
                // SAFETY: setsid and ioctl are async-signal-safe system calls without memory arguments; stdin is
                // the terminal's replica end at this point (stdio is set up before the hooks run).
                unsafe {
                    process.pre_exec(|| {
                        if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                            return Err(io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
                let child = process.spawn().map_err(spawn_error)?;
                // `process` (and with it the parent's copies of the replica fds) is dropped here, so reading the
                // terminal ends (EIO) once the command and its children closed it.
                Ok(ExecSession { child, io: SessionIo::Terminal(Arc::new(pty)) })
            }
        }
    }

    /// Runs the session over `stream` until the command ends (then sends its exit code) or the client leaves
    /// (then kills the command's process group).
    pub(crate) async fn run<S: AsyncRead + AsyncWrite + Send + 'static>(self, stream: S) {
        let ExecSession { mut child, io } = self;
        let pgid = child.id().unwrap_or(0);
        let (reader, mut writer) = tokio::io::split(stream);
        let (frames, mut outgoing) = mpsc::channel::<ExecFrame>(16);

        let mut pumps = Vec::new();
        let input = match io {
            SessionIo::Pipes { stdin, stdout, stderr } => {
                pumps.push(tokio::spawn(pump(stdout, frames.clone(), ExecFrame::Stdout)));
                pumps.push(tokio::spawn(pump(stderr, frames.clone(), ExecFrame::Stderr)));
                tokio::spawn(input(reader, Input::Pipe(stdin), pgid))
            }
            SessionIo::Terminal(pty) => {
                pumps.push(tokio::spawn(pump(PtyReader(pty.clone()), frames.clone(), ExecFrame::Stdout)));
                tokio::spawn(input(reader, Input::Terminal(pty), pgid))
            }
        };
        let writing = tokio::spawn(async move {
            while let Some(frame) = outgoing.recv().await {
                if write_frame(&mut writer, &frame).await.is_err() {
                    break;
                }
            }
            let _ = writer.shutdown().await;
        });

        let last = match child.wait().await {
            Ok(status) => ExecFrame::Exit(davit_drivers::exit_code(status)),
            Err(error) => ExecFrame::Error(format!("waiting for the command: {error}")),
        };
        for pump in pumps {
            if tokio::time::timeout(DRAIN_AFTER_EXIT, pump).await.is_err() {
                tracing::debug!("exec output still open after the command exited; not waiting for it");
            }
        }
        input.abort();
        let _ = frames.send(last).await;
        drop(frames);
        let _ = writing.await;
    }
}

/// Forwards everything read from `source` as frames made by `frame`, until end of file (or a terminal's EIO).
async fn pump<R: AsyncRead + Unpin>(mut source: R, frames: mpsc::Sender<ExecFrame>, frame: fn(Vec<u8>) -> ExecFrame) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match source.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(read) => {
                if frames.send(frame(buf[..read].to_vec())).await.is_err() {
                    return;
                }
            }
        }
    }
}

enum Input {
    Pipe(Option<ChildStdin>),
    Terminal(Arc<Pty>),
}

/// Applies the client's frames to the command; when the client goes away first, kills the command's group.
async fn input<R: AsyncRead + Unpin>(reader: R, mut target: Input, pgid: u32) {
    let mut frames = FrameReader::new(reader);
    loop {
        let frame = match frames.next().await {
            Ok(Some(frame)) => frame,
            Ok(None) | Err(_) => {
                // The client is gone: a terminal hangs up, then nothing of the session may stay.
                if pgid != 0 {
                    let _ = davit_drivers::sys::kill_process_group(pgid, libc::SIGHUP);
                    let _ = davit_drivers::sys::kill_process_group(pgid, libc::SIGKILL);
                }
                return;
            }
        };
        match (&mut target, frame) {
            (Input::Pipe(stdin), ExecFrame::Stdin(data)) => {
                if let Some(pipe) = stdin
                    && pipe.write_all(&data).await.is_err()
                {
                    *stdin = None;
                }
            }
            (Input::Pipe(stdin), ExecFrame::StdinClose) => *stdin = None,
            (Input::Terminal(pty), ExecFrame::Stdin(data)) => {
                let _ = pty.write_all(&data).await;
            }
            // End of file on a terminal is its EOF character (^D), as when typed.
            (Input::Terminal(pty), ExecFrame::StdinClose) => {
                let _ = pty.write_all(&[4]).await;
            }
            (Input::Terminal(pty), ExecFrame::Resize { cols, rows }) => {
                let _ = pty.resize(cols, rows);
            }
            _ => {}
        }
    }
}

/// The controlling side of a pseudo-terminal, non-blocking and registered with tokio.
pub(crate) struct Pty {
    fd: AsyncFd<OwnedFd>,
}

impl Pty {
    /// A new terminal of `cols` × `rows`: the controlling side and the replica the command gets as its stdio.
    fn open(cols: u16, rows: u16) -> io::Result<(Pty, OwnedFd)> {
        let (mut controller, mut replica): (RawFd, RawFd) = (-1, -1);
        let size = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: the out-pointers point to live locals; name and termios may be null; `size` lives across the call.
        if unsafe { libc::openpty(&mut controller, &mut replica, std::ptr::null_mut(), std::ptr::null(), &size) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: openpty succeeded, so both are fresh fds owned by nobody else.
        let (controller, replica) = unsafe { (OwnedFd::from_raw_fd(controller), OwnedFd::from_raw_fd(replica)) };
        for fd in [&controller, &replica] {
            // SAFETY: fcntl on an fd we own.
            unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
        }
        // SAFETY: as above.
        let flags = unsafe { libc::fcntl(controller.as_raw_fd(), libc::F_GETFL) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(controller.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: an `OwnedFd` keeps its fd open and unchanged until it is dropped with the `AsyncFd`.
        let fd = unsafe { AsyncFd::register(controller) }.map_err(io::Error::from)?;
        Ok((Pty { fd }, replica))
    }

    fn resize(&self, cols: u16, rows: u16) -> io::Result<()> {
        let size = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::TIOCSWINSZ, &size) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            // SAFETY: writing from a valid buffer of the given length.
            match guard.try_io(|fd| syscall(unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) })) {
                Ok(Ok(written)) => data = &data[written..],
                Ok(Err(error)) => return Err(error),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }
}

fn syscall(result: isize) -> io::Result<usize> {
    if result < 0 { Err(io::Error::last_os_error()) } else { Ok(result as usize) }
}

/// The terminal's output as an `AsyncRead`, for [`pump`].
struct PtyReader(Arc<Pty>);

impl AsyncRead for PtyReader {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        loop {
            let mut guard = std::task::ready!(self.0.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            // SAFETY: reading into the initialised, unfilled part of the buffer.
            let result = guard.try_io(|fd| syscall(unsafe { libc::read(fd.as_raw_fd(), unfilled.as_mut_ptr().cast(), unfilled.len()) }));
            match result {
                Ok(Ok(read)) => {
                    buf.advance(read);
                    return std::task::Poll::Ready(Ok(()));
                }
                Ok(Err(error)) if error.raw_os_error() == Some(libc::EIO) => return std::task::Poll::Ready(Ok(())),
                Ok(Err(error)) => return std::task::Poll::Ready(Err(error)),
                Err(_would_block) => continue,
            }
        }
    }
}
