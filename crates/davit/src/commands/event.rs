//! `davit event stream`.

use std::io::Write;

use davit_client::Client;
use futures_util::StreamExt;

use super::time_millis;
use crate::Failure;
use crate::cli::{EventCommand, OutputFormat};

pub async fn event(client: &Client, command: EventCommand) -> Result<(), Failure> {
    match command {
        EventCommand::Stream { topics, index, format } => {
            let mut stream = Box::pin(client.event_stream(index, &topics).await?);
            let mut stdout = std::io::stdout();
            while let Some(event) = stream.next().await {
                let event = event?;
                let line = match format {
                    OutputFormat::Json => serde_json::to_string(&event).expect("events serialize"),
                    OutputFormat::Text => {
                        let now =
                            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
                        format!("{} {} {} {}", time_millis(now), event.topic, event.kind, event.key)
                    }
                };
                if writeln!(stdout, "{line}").and_then(|_| stdout.flush()).is_err() {
                    break; // the reader went away (e.g. `| head`)
                }
            }
            Ok(())
        }
    }
}
