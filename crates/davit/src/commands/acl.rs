//! `davit acl bootstrap|policy|token …`.

use davit_api::acl::{AclToken, ApplyPolicyRequest, CreateTokenRequest, CreatedToken, TokenType};
use davit_client::Client;

use super::header;
use crate::Failure;
use crate::cli::{AclCommand, AclJoinTokenCommand, AclPolicyCommand, AclTokenCommand, OutputFormat, TokenTypeArg};
use crate::output::{json, label, table, time};

pub async fn acl(client: &Client, command: AclCommand) -> Result<(), Failure> {
    match command {
        AclCommand::Bootstrap { output } => {
            let created = client.acl_bootstrap().await?;
            print_created(&created, output.format);
            Ok(())
        }
        AclCommand::Policy(command) => policy(client, command).await,
        AclCommand::Token(command) => token(client, command).await,
        AclCommand::JoinToken(AclJoinTokenCommand::Create { name, uses, ttl, output }) => {
            let ttl = parse_ttl(ttl)?;
            let created =
                client.create_acl_token(&CreateTokenRequest { name, token_type: TokenType::Join, policies: Vec::new(), ttl, uses }).await?;
            print_created(&created, output.format);
            Ok(())
        }
    }
}

async fn policy(client: &Client, command: AclPolicyCommand) -> Result<(), Failure> {
    match command {
        AclPolicyCommand::Apply { name, file, description } => {
            let source = std::fs::read_to_string(&file).map_err(|e| Failure::user(format!("cannot read {}: {e}", file.display())))?;
            let filename = file.display().to_string();
            // Checked here first, so mistakes show at file:line:col without a server round trip.
            davit_api::acl::parse_policy(&source, &filename).map_err(|errors| Failure::user(errors.to_string()))?;
            let policy = client.apply_acl_policy(&name, &ApplyPolicyRequest { description, source, filename }).await?;
            println!("==> policy {} applied (index {})", policy.name, policy.modify_index);
            Ok(())
        }
        AclPolicyCommand::Ls { output } => {
            let policies = client.acl_policies().await?;
            if output.format == OutputFormat::Json {
                println!("{}", json(&policies));
                return Ok(());
            }
            let mut rows = vec![header(&["NAME", "DESCRIPTION"])];
            rows.extend(policies.iter().map(|policy| vec![policy.name.clone(), policy.description.clone()]));
            print!("{}", table(&rows));
            Ok(())
        }
        AclPolicyCommand::Info { name, output } => {
            let policy = client.acl_policy(&name).await?;
            if output.format == OutputFormat::Json {
                println!("{}", json(&policy));
                return Ok(());
            }
            println!("Name        = {}", policy.name);
            println!("Description = {}", policy.description);
            println!("Rules:\n{}", policy.source.trim_end());
            Ok(())
        }
        AclPolicyCommand::Delete { name } => {
            client.delete_acl_policy(&name).await?;
            println!("==> policy {name} deleted");
            Ok(())
        }
    }
}

async fn token(client: &Client, command: AclTokenCommand) -> Result<(), Failure> {
    match command {
        AclTokenCommand::Create { name, token_type, policies, ttl, output } => {
            let ttl = parse_ttl(ttl)?;
            let token_type = match token_type {
                TokenTypeArg::Client => TokenType::Client,
                TokenTypeArg::Management => TokenType::Management,
            };
            let created = client.create_acl_token(&CreateTokenRequest { name, token_type, policies, ttl, uses: None }).await?;
            print_created(&created, output.format);
            Ok(())
        }
        AclTokenCommand::Ls { output } => {
            let tokens = client.acl_tokens().await?;
            if output.format == OutputFormat::Json {
                println!("{}", json(&tokens));
                return Ok(());
            }
            let mut rows = vec![header(&["ACCESSOR ID", "NAME", "TYPE", "POLICIES", "EXPIRES"])];
            for token in &tokens {
                rows.push(vec![
                    token.accessor_id.clone(),
                    token.name.clone(),
                    label(&token.token_type),
                    token.policies.join(","),
                    token.expiration_time.map_or_else(|| "never".to_string(), time),
                ]);
            }
            print!("{}", table(&rows));
            Ok(())
        }
        AclTokenCommand::Info { accessor_id, output } => {
            let token = client.acl_token(&accessor_id).await?;
            print_token(&token, output.format);
            Ok(())
        }
        AclTokenCommand::Revoke { accessor_id } => {
            let token = client.acl_token(&accessor_id).await?;
            client.revoke_acl_token(&token.accessor_id).await?;
            println!("==> token {} ({}) revoked", token.accessor_id, token.name);
            Ok(())
        }
        AclTokenCommand::Whoami { output } => {
            let token_self = client.acl_token_self(None).await?;
            if output.format == OutputFormat::Json {
                println!("{}", json(&token_self));
                return Ok(());
            }
            print_token(&token_self.token, output.format);
            Ok(())
        }
    }
}

fn parse_ttl(ttl: Option<String>) -> Result<Option<davit_api::Duration>, Failure> {
    ttl.map(|text| davit_api::Duration::parse(&text).map_err(|e| Failure::user(format!("--ttl: {e}")))).transpose()
}

fn print_created(created: &CreatedToken, format: OutputFormat) {
    if format == OutputFormat::Json {
        println!("{}", json(created));
        return;
    }
    print_token(&created.token, format);
    println!("Secret ID   = {}", created.secret_id);
    println!("(the secret is shown only now; use it as DAVIT_TOKEN)");
}

fn print_token(token: &AclToken, format: OutputFormat) {
    if format == OutputFormat::Json {
        println!("{}", json(token));
        return;
    }
    println!("Accessor ID = {}", token.accessor_id);
    println!("Name        = {}", token.name);
    println!("Type        = {}", label(&token.token_type));
    println!("Policies    = {}", token.policies.join(", "));
    if let Some(uses) = token.uses_left {
        println!("Uses left   = {uses}");
    }
    if let Some(node) = &token.node_id {
        println!("Node        = {node}");
    }
    println!("Created     = {}", time(token.create_time));
    println!("Expires     = {}", token.expiration_time.map_or_else(|| "never".to_string(), time));
}
