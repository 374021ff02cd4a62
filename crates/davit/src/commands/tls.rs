//! `davit tls ca create`, `davit tls cert create`: certificates made offline, with the CA's files at hand.

use davit_tls::{Ca, Role};

use crate::Failure;
use crate::cli::{TlsCaCommand, TlsCertCommand, TlsCommand};

pub fn tls(command: TlsCommand) -> Result<(), Failure> {
    match command {
        TlsCommand::Ca(TlsCaCommand::Create { dir, ttl }) => {
            let ca = Ca::generate(duration(&ttl, "--ttl")?).map_err(tls_failure)?;
            let (cert, key) = ca.write(&dir).map_err(tls_failure)?;
            println!("CA certificate {} and key {} (keep the key secret; servers sign with it)", cert.display(), key.display());
            println!("  start servers with: davit server --tls-ca-cert {} --tls-ca-key {} …", cert.display(), key.display());
            println!("  clients trust it with: export DAVIT_CACERT={}", cert.display());
            Ok(())
        }
        TlsCommand::Cert(TlsCertCommand::Create { server, agent, cli: _, node_id, names, ca_dir, dir, ttl }) => {
            let ca = Ca::load(&ca_dir.join(Ca::CERT_FILE), &ca_dir.join(Ca::KEY_FILE)).map_err(tls_failure)?;
            let (role, stem) = if server {
                (Role::Server { extra: names }, "server")
            } else if agent {
                (Role::Node { id: node_id.unwrap_or_default(), extra: names }, "agent")
            } else {
                (Role::Cli, "cli")
            };
            let (issued, key_pem) = ca.issue_with_key(&role, duration(&ttl, "--ttl")?).map_err(tls_failure)?;
            let (cert, key) = (dir.join(format!("{stem}.pem")), dir.join(format!("{stem}-key.pem")));
            for path in [&cert, &key] {
                if path.exists() {
                    return Err(Failure::user(format!("{} exists: remove it first, or write elsewhere with --dir", path.display())));
                }
            }
            davit_tls::write_atomic(&key, &key_pem, 0o600).map_err(tls_failure)?;
            davit_tls::write_atomic(&cert, &issued.cert_pem, 0o644).map_err(tls_failure)?;
            println!(
                "certificate {} and key {}, valid until {}",
                cert.display(),
                key.display(),
                crate::output::time(issued.not_after * 1000)
            );
            Ok(())
        }
    }
}

fn duration(text: &str, flag: &str) -> Result<std::time::Duration, Failure> {
    let duration = crate::flag_duration(flag, text)?;
    if duration.is_zero() {
        return Err(Failure::user(format!("{flag}: a certificate must be valid for some time")));
    }
    Ok(duration)
}

fn tls_failure(error: davit_tls::TlsError) -> Failure {
    Failure::user(error.to_string())
}
