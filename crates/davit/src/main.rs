//! `davit`: the command line, and the `dev`, `server` and `agent` processes.
//!
//! Exit codes: 0 success, 1 user error (bad input, rejected request, failed deployment of a job),
//! 2 the server could not be reached, 3 an internal failure of a long-running process. `davit alloc exec`
//! exits with the exit code of the command it ran.

use std::process::ExitCode;

mod bench;
mod cli;
mod commands;
mod listen;
mod output;
mod run;
mod sim;
mod terminal;

/// A failure to report to the user, with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

/// The duration a flag gives (`flag` as written on the command line, e.g. `--timeout`).
pub(crate) fn flag_duration(flag: &str, text: &str) -> Result<std::time::Duration, Failure> {
    davit_api::Duration::parse(text).map(|duration| duration.as_std()).map_err(|error| Failure::user(format!("{flag}: {error}")))
}

impl Failure {
    pub fn user(message: impl Into<String>) -> Failure {
        Failure { code: 1, message: message.into() }
    }
    pub fn internal(message: impl Into<String>) -> Failure {
        Failure { code: 3, message: message.into() }
    }
    /// Exit with `code` and print nothing (the exit code of a command run by `alloc exec`).
    pub fn silent(code: u8) -> Failure {
        Failure { code, message: String::new() }
    }
}

impl From<davit_client::ClientError> for Failure {
    fn from(error: davit_client::ClientError) -> Self {
        match &error {
            davit_client::ClientError::Unreachable { .. } => Failure {
                code: 2,
                message: format!("{error}\n  hint: start one with `davit dev`, or point DAVIT_ADDR / --address at a running server"),
            },
            davit_client::ClientError::Tls { .. } => Failure { code: 2, message: error.to_string() },
            davit_client::ClientError::Api { error: api, .. } if !api.spec_errors.is_empty() => {
                let errors: Vec<davit_api::spec::SpecError> = api.spec_errors.iter().map(Into::into).collect();
                Failure::user(davit_api::spec::SpecErrors(errors).to_string())
            }
            _ => Failure::user(error.to_string()),
        }
    }
}

/// mimalloc instead of glibc's malloc: the server's state is millions of small, long-lived objects in
/// persistent maps, where glibc's allocator spends more and more time consolidating free chunks as the heap
/// grows (`bench e2e --nodes 10000 --allocs 1000000`: 190 s with mimalloc, 312 s without; peak RSS +10%).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match cli::parse() {
        Ok(cli) => cli,
        // Bad flags are a user error (exit 1, as the README's exit codes say); `--help` and `--version` exit 0.
        Err(error) => {
            let _ = error.print();
            return ExitCode::from(u8::from(error.use_stderr()));
        }
    };
    if let cli::Command::Executor { .. } = cli.command {
        davit_drivers::executor::main();
    }
    if let cli::Command::Completion { shell } = cli.command {
        die_quietly_on_closed_output();
        commands::completion(shell);
        return ExitCode::SUCCESS;
    }
    if cli.command.is_client() {
        die_quietly_on_closed_output();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(3);
        }
    };
    match runtime.block_on(try_main(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            if !failure.message.is_empty() {
                eprintln!("error: {}", failure.message);
            }
            ExitCode::from(failure.code)
        }
    }
}

/// The TLS settings of a client (`--ca-cert`, `--client-cert`, `--client-key`), when a CA is given.
fn client_tls(args: &cli::TlsArgs) -> Result<Option<davit_client::ClientTls>, Failure> {
    let Some(ca_cert) = &args.ca_cert else {
        if args.client_cert.is_some() {
            return Err(Failure::user("--client-cert needs --ca-cert (DAVIT_CACERT): the CA that signed the server's certificate"));
        }
        return Ok(None);
    };
    let identity = match (&args.client_cert, &args.client_key) {
        (Some(cert), Some(key)) => {
            let slot = davit_tls::CertSlot::default();
            slot.load_files(cert, key).map_err(|error| Failure::user(error.to_string()))?;
            Some(std::sync::Arc::new(slot))
        }
        _ => None,
    };
    davit_client::ClientTls::load(ca_cert, identity).map(Some).map_err(|error| Failure::user(format!("--ca-cert: {error}")))
}

/// Client commands end quietly when the reader of their output goes away (`davit alloc logs -f … | head`),
/// as other Unix tools do: Rust ignores SIGPIPE, which turns that into a panic in `println!`. The server,
/// agent and executor keep ignoring it: a task or peer closing a pipe must not end them.
fn die_quietly_on_closed_output() {
    // SAFETY: signal(2) with the default disposition, before any thread is started.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

/// Of the comma-separated server addresses (`DAVIT_ADDR=a,b,c`), the first that accepts connections: a dead
/// server refuses or times out (on etcd, any live server answers: followers forward writes). With none, the first.
async fn pick_server(addresses: &str) -> Result<String, Failure> {
    let addresses: Vec<&str> = addresses.split(',').map(str::trim).filter(|address| !address.is_empty()).collect();
    let Some(first) = addresses.first() else { return Err(Failure::user("--address (DAVIT_ADDR) names no server")) };
    if addresses.len() == 1 {
        return Ok(first.to_string());
    }
    for address in &addresses {
        let authority = address.split_once("://").map_or(*address, |(_, rest)| rest).split('/').next().unwrap_or_default();
        let connect = tokio::net::TcpStream::connect(authority);
        if matches!(tokio::time::timeout(std::time::Duration::from_secs(2), connect).await, Ok(Ok(_))) {
            return Ok(address.to_string());
        }
    }
    Ok(first.to_string())
}

async fn try_main(mut cli: cli::Cli) -> Result<(), Failure> {
    // `DAVIT_TOKEN=` (set but empty) means no token.
    cli.token = cli.token.filter(|token| !token.is_empty());
    let tls = client_tls(&cli.tls)?;
    if cli.command.is_client() {
        cli.address = pick_server(&cli.address).await?;
    }
    if tls.is_some() && cli.command.is_client() && !cli.address.starts_with("https://") {
        return Err(Failure::user(format!(
            "--ca-cert (DAVIT_CACERT) is set but {} is not an https:// address: use https://, so that no token travels in clear",
            cli.address
        )));
    }
    let client = davit_client::Client::connect(&cli.address, cli.token.as_deref(), tls.as_ref()).in_namespace(cli.namespace.as_deref());
    match cli.command {
        cli::Command::Dev(args) => run::dev(args).await,
        cli::Command::Server(args) => run::server(args).await,
        cli::Command::Agent(args) => run::agent(args, cli.token, cli.tls).await,
        cli::Command::Tls(command) => commands::tls(command),
        cli::Command::Executor { .. } | cli::Command::Completion { .. } => unreachable!("handled before the runtime starts"),
        cli::Command::Job(command) => commands::job(&client, command).await,
        cli::Command::Alloc(command) => commands::alloc(&client, command).await,
        cli::Command::Node(command) => commands::node(&client, command).await,
        cli::Command::Service(command) => commands::service(&client, command).await,
        cli::Command::Eval(command) => commands::eval(&client, command).await,
        cli::Command::Deployment(command) => commands::deployment(&client, command).await,
        cli::Command::Scaling(command) => commands::scaling(&client, command).await,
        cli::Command::Rebalance(args) => commands::rebalance(&client, args).await,
        cli::Command::Event(command) => commands::event(&client, command).await,
        cli::Command::Acl(command) => commands::acl(&client, command).await,
        cli::Command::Namespace(command) => commands::namespace(&client, command).await,
        cli::Command::Var(command) => commands::var(&client, command).await,
        cli::Command::Operator(command) => commands::operator(&client, command).await,
        cli::Command::Sim(args) => sim::command(args, &cli.address, cli.token, tls).await,
        cli::Command::Bench(command) => bench::command(command).await,
    }
}

/// Wall-clock time in Unix milliseconds (for objects the tools make up, such as simulated evaluations).
pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
}
