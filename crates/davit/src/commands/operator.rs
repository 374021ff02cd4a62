//! `davit operator keyring ls|rotate|remove` and `davit operator gc`.

use davit_client::Client;

use super::header;
use crate::Failure;
use crate::cli::{KeyringCommand, OperatorCommand, OutputFormat};
use crate::output::{json, table, time};

pub async fn operator(client: &Client, command: OperatorCommand) -> Result<(), Failure> {
    match command {
        OperatorCommand::Keyring(KeyringCommand::Ls { output }) => {
            let keys = client.keyring().await?;
            if output.format == OutputFormat::Json {
                println!("{}", json(&keys));
                return Ok(());
            }
            let mut rows = vec![header(&["KEY", "ACTIVE", "VARIABLES", "CREATED"])];
            rows.extend(keys.iter().map(|key| {
                vec![
                    key.id.clone(),
                    if key.active { "yes".to_string() } else { String::new() },
                    key.variables.to_string(),
                    time(key.create_time),
                ]
            }));
            print!("{}", table(&rows));
            Ok(())
        }
        OperatorCommand::Keyring(KeyringCommand::Rotate) => {
            let answer = client.rotate_keyring().await?;
            println!(
                "==> key {} is active; variables are re-encrypted with it in the background",
                answer["active"].as_str().unwrap_or("?")
            );
            Ok(())
        }
        OperatorCommand::Gc { force } => {
            let report = client.gc(force).await?;
            println!(
                "==> collected {} job(s), {} job version(s), {} evaluation(s), {} allocation(s)",
                report.jobs, report.versions, report.evals, report.allocs
            );
            Ok(())
        }
        OperatorCommand::Keyring(KeyringCommand::Remove { id }) => {
            client.remove_key(&id).await?;
            println!("==> key {id} removed");
            Ok(())
        }
    }
}
