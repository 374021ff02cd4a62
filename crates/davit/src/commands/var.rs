//! `davit var put|get|ls|rm`.

use std::collections::BTreeMap;

use davit_api::variables::PutVariableRequest;
use davit_client::Client;

use super::header;
use crate::Failure;
use crate::cli::{OutputFormat, VarCommand};
use crate::output::{json, table, time};

pub async fn var(client: &Client, command: VarCommand) -> Result<(), Failure> {
    match command {
        VarCommand::Put { path, items, cas } => {
            let items = parse_items(&items)?;
            let written = client.put_variable(&path, &PutVariableRequest { items }, cas).await?;
            println!("==> variable {} written (index {})", written.path, written.modify_index);
            Ok(())
        }
        VarCommand::Get { path, output } => {
            let variable = client.variable(&path).await?;
            if output.format == OutputFormat::Json {
                println!("{}", json(&variable));
                return Ok(());
            }
            for (key, value) in &variable.items {
                println!("{key}={value}");
            }
            Ok(())
        }
        VarCommand::Ls { prefix, output } => {
            let listed = client.variables(&prefix).await?;
            if output.format == OutputFormat::Json {
                println!("{}", json(&listed));
                return Ok(());
            }
            let mut rows = vec![header(&["PATH", "INDEX", "MODIFIED"])];
            rows.extend(listed.iter().map(|meta| vec![meta.path.clone(), meta.modify_index.to_string(), time(meta.modify_time)]));
            print!("{}", table(&rows));
            Ok(())
        }
        VarCommand::Rm { path, cas } => {
            client.delete_variable(&path, cas).await?;
            println!("==> variable {path} deleted");
            Ok(())
        }
    }
}

/// `KEY=VALUE` arguments, or one `@FILE` holding a JSON object of string items.
fn parse_items(arguments: &[String]) -> Result<BTreeMap<String, String>, Failure> {
    if let [single] = arguments
        && let Some(file) = single.strip_prefix('@')
    {
        let text = std::fs::read_to_string(file).map_err(|e| Failure::user(format!("cannot read {file}: {e}")))?;
        return serde_json::from_str(&text).map_err(|e| Failure::user(format!("{file}: expected a JSON object of string items: {e}")));
    }
    let mut items = BTreeMap::new();
    for argument in arguments {
        let (key, value) =
            argument.split_once('=').ok_or_else(|| Failure::user(format!("{argument:?}: expected KEY=VALUE (or a single @FILE)")))?;
        items.insert(key.to_string(), value.to_string());
    }
    Ok(items)
}
