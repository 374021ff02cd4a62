//! A small async QMP (QEMU Machine Protocol) client over a unix socket.
//!
//! QMP is line-delimited JSON: the server greets, the client negotiates capabilities (`qmp_capabilities`), then
//! sends `{"execute": …, "arguments": …, "id": …}` and reads lines until the `{"return"|"error", "id"}` with the
//! same id. Asynchronous events (`{"event": …}`) may arrive in between: they are collected, never mistaken for
//! replies.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// How long one command may take before the client gives up.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("connecting to QMP socket {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("QMP protocol: {0}")]
    Protocol(String),
    #[error("QMP command {command} failed: {class}: {description}")]
    Command { command: String, class: String, description: String },
    #[error("QMP connection closed by QEMU")]
    Closed,
    #[error("QMP command {command} timed out after {after:?}")]
    Timeout { command: String, after: Duration },
}

/// An asynchronous QMP event (`POWERDOWN`, `SHUTDOWN`, `MIGRATION`, …).
#[derive(Clone, Debug, PartialEq)]
pub struct QmpEvent {
    pub name: String,
    pub data: Value,
}

/// What `query-migrate` reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MigrationStatus {
    /// `none`, `setup`, `active`, `completed`, `failed`, `cancelled`, …
    pub status: String,
    pub total_time_ms: Option<u64>,
    pub downtime_ms: Option<u64>,
    pub transferred_bytes: Option<u64>,
    pub error: Option<String>,
}

/// A negotiated QMP connection.
#[derive(Debug)]
pub struct QmpClient {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    next_id: u64,
    events: Vec<QmpEvent>,
}

impl QmpClient {
    /// Connects to `path` (retrying until QEMU has created the socket, up to `patience`) and negotiates
    /// capabilities.
    pub async fn connect(path: &Path, patience: Duration) -> Result<QmpClient, QmpError> {
        let deadline = Instant::now() + patience;
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(stream) => break stream,
                Err(source) if Instant::now() >= deadline => return Err(QmpError::Connect { path: path.to_path_buf(), source }),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let (read, writer) = stream.into_split();
        let mut client = QmpClient { reader: BufReader::new(read), writer, next_id: 1, events: Vec::new() };
        let greeting = tokio::time::timeout(COMMAND_TIMEOUT, client.read_message())
            .await
            .map_err(|_| QmpError::Timeout { command: "greeting".to_owned(), after: COMMAND_TIMEOUT })??;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(format!("expected a QMP greeting, got {greeting}")));
        }
        client.execute("qmp_capabilities", None).await?;
        Ok(client)
    }

    /// Runs one command and returns its `return` value.
    pub async fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut request = json!({"execute": command, "id": id});
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        let mut line = serde_json::to_vec(&request).expect("a JSON value serializes");
        line.push(b'\n');
        self.writer.write_all(&line).await?;
        let reply = tokio::time::timeout(COMMAND_TIMEOUT, async {
            loop {
                let message = self.read_message().await?;
                if message.get("id").and_then(Value::as_u64) != Some(id) {
                    continue;
                }
                return Ok::<Value, QmpError>(message);
            }
        })
        .await
        .map_err(|_| QmpError::Timeout { command: command.to_owned(), after: COMMAND_TIMEOUT })??;
        if let Some(error) = reply.get("error") {
            let text = |key: &str| error.get(key).and_then(Value::as_str).unwrap_or_default().to_owned();
            return Err(QmpError::Command { command: command.to_owned(), class: text("class"), description: text("desc") });
        }
        reply.get("return").cloned().ok_or_else(|| QmpError::Protocol(format!("reply without return: {reply}")))
    }

    /// The run state (`running`, `paused`, `inmigrate`, `postmigrate`, `shutdown`, …).
    pub async fn query_status(&mut self) -> Result<String, QmpError> {
        let status = self.execute("query-status", None).await?;
        status
            .get("status")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| QmpError::Protocol(format!("query-status without status: {status}")))
    }

    /// Presses the ACPI power button.
    pub async fn system_powerdown(&mut self) -> Result<(), QmpError> {
        self.execute("system_powerdown", None).await.map(drop)
    }

    /// Ends QEMU at once. QEMU may close the socket before or after replying; both count as success.
    pub async fn quit(&mut self) -> Result<(), QmpError> {
        match self.execute("quit", None).await {
            Ok(_) | Err(QmpError::Closed) => Ok(()),
            Err(QmpError::Io(error)) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Pauses the vCPUs.
    pub async fn stop(&mut self) -> Result<(), QmpError> {
        self.execute("stop", None).await.map(drop)
    }

    /// Resumes the vCPUs.
    pub async fn cont(&mut self) -> Result<(), QmpError> {
        self.execute("cont", None).await.map(drop)
    }

    /// Sets migration parameters, e.g. `{"downtime-limit": 300}` (milliseconds).
    pub async fn migrate_set_parameters(&mut self, parameters: Value) -> Result<(), QmpError> {
        self.execute("migrate-set-parameters", Some(parameters)).await.map(drop)
    }

    /// Starts an outgoing migration to `uri` (`tcp:host:port`); progress via [`QmpClient::query_migrate`].
    pub async fn migrate(&mut self, uri: &str) -> Result<(), QmpError> {
        self.execute("migrate", Some(json!({"uri": uri}))).await.map(drop)
    }

    pub async fn query_migrate(&mut self) -> Result<MigrationStatus, QmpError> {
        let info = self.execute("query-migrate", None).await?;
        let number = |key: &str| info.get(key).and_then(Value::as_u64);
        Ok(MigrationStatus {
            status: info.get("status").and_then(Value::as_str).unwrap_or("none").to_owned(),
            total_time_ms: number("total-time"),
            downtime_ms: number("downtime"),
            transferred_bytes: info.get("ram").and_then(|ram| ram.get("transferred")).and_then(Value::as_u64),
            error: info.get("error-desc").and_then(Value::as_str).map(str::to_owned),
        })
    }

    /// The events received so far (oldest first); the client forgets them.
    pub fn take_events(&mut self) -> Vec<QmpEvent> {
        std::mem::take(&mut self.events)
    }

    /// Reads the next non-event message, collecting events on the way.
    async fn read_message(&mut self) -> Result<Value, QmpError> {
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).await? == 0 {
                return Err(QmpError::Closed);
            }
            if line.trim().is_empty() {
                continue;
            }
            let message: Value =
                serde_json::from_str(&line).map_err(|error| QmpError::Protocol(format!("unparsable message {line:?}: {error}")))?;
            if let Some(name) = message.get("event").and_then(Value::as_str) {
                let data = message.get("data").cloned().unwrap_or(Value::Null);
                self.events.push(QmpEvent { name: name.to_owned(), data });
                continue;
            }
            return Ok(message);
        }
    }
}
