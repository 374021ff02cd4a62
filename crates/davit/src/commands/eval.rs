//! `davit eval status`.

use davit_client::Client;

use crate::Failure;
use crate::cli::{EvalCommand, OutputFormat};
use crate::output::{json, label};

pub async fn eval(client: &Client, command: EvalCommand) -> Result<(), Failure> {
    match command {
        EvalCommand::Status { id, output } => {
            let eval = client.evaluation(&id).await?;
            if output.format == OutputFormat::Json {
                println!("{}", json(&eval));
                return Ok(());
            }
            println!("ID          = {}", eval.id);
            println!("Job         = {}", eval.job_name);
            println!("Triggered   = {}", label(&eval.triggered_by));
            println!("Status      = {} {}", label(&eval.status), eval.status_description);
            for (group, failure) in &eval.failed_groups {
                println!("Group {group}: {} not placed: {}", failure.missing, failure.summary());
            }
            Ok(())
        }
    }
}
