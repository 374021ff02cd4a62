//! `davit alloc status|logs|migrate|exec`.

use std::io::{IsTerminal, Write};

use davit_api::http::{ExecQuery, LogsQuery};
use davit_client::Client;
use futures_util::StreamExt;

use super::{header, health_line, time_millis, wait_migration};
use crate::cli::{AllocCommand, OutputFormat};
use crate::output::{json, label, short, table, time};
use crate::{Failure, flag_duration};

pub async fn alloc(client: &Client, command: AllocCommand) -> Result<(), Failure> {
    match command {
        AllocCommand::Status { id, output } => {
            let alloc = client.allocation(&id).await?;
            if output.format == OutputFormat::Json {
                println!("{}", json(&alloc));
                return Ok(());
            }
            // `to` equal to the host port says nothing (host networking, or a vm's own `config.ports`).
            let ports: Vec<String> = alloc
                .resources
                .ports
                .iter()
                .map(|p| if p.to == p.value { format!("{}={}", p.label, p.value) } else { format!("{}={}->{}", p.label, p.value, p.to) })
                .collect();
            let rows = vec![
                vec!["ID".to_string(), alloc.id.clone()],
                vec!["Name".to_string(), alloc.name.clone()],
                vec!["Node".to_string(), format!("{} ({})", alloc.node_name, short(&alloc.node_id))],
                vec!["Job".to_string(), format!("{} version {}", alloc.job_name, alloc.job_version)],
                vec!["Desired".to_string(), format!("{} {}", label(&alloc.desired_status), alloc.desired_description).trim().to_string()],
                vec!["Status".to_string(), format!("{} {}", label(&alloc.client_status), alloc.client_description).trim().to_string()],
                vec!["Health".to_string(), health_line(alloc.healthy, &alloc.health_description)],
                vec!["Resources".to_string(), format!("cpu {} millicores, memory {} MiB", alloc.resources.cpu, alloc.resources.memory)],
                vec!["Usage".to_string(), usage_line(client.alloc_usage(&alloc.id).await.ok().as_ref())],
                vec!["Ports".to_string(), if ports.is_empty() { "-".to_string() } else { ports.join(", ") }],
                vec!["Created".to_string(), time(alloc.create_time)],
                vec!["Modified".to_string(), time(alloc.modify_time)],
            ];
            print!("{}", table(&rows).lines().map(|l| l.replacen("  ", " = ", 1) + "\n").collect::<String>());
            for (task, state) in &alloc.task_states {
                println!(
                    "\nTask {task}: {}{}, restarts {}{}",
                    label(&state.state),
                    if state.failed { " (failed)" } else { "" },
                    state.restarts,
                    state.pid.map(|pid| format!(", pid {pid}")).unwrap_or_default()
                );
                if !state.checks.is_empty() {
                    let mut rows = vec![header(&["NAME", "STATUS", "OUTPUT", "LAST CHECK"])];
                    for (name, check) in &state.checks {
                        let last = if check.last_checked == 0 { "-".to_string() } else { time_millis(check.last_checked) };
                        let output = if check.output.is_empty() { "-".to_string() } else { check.output.clone() };
                        rows.push(vec![name.clone(), label(&check.status), output, last]);
                    }
                    println!("Checks");
                    print!("{}", table(&rows));
                    println!();
                }
                let mut rows = vec![header(&["TIME", "EVENT", "DETAILS"])];
                for event in &state.events {
                    rows.push(vec![time_millis(event.time), event.kind.clone(), event.message.clone()]);
                }
                print!("{}", table(&rows));
            }
            Ok(())
        }
        AllocCommand::Logs { id, task, follow, stderr, tail } => {
            let alloc = client.allocation(&id).await?;
            let query =
                LogsQuery { task, stream: Some(if stderr { "stderr" } else { "stdout" }.to_string()), follow, offset: None, lines: tail };
            let mut stream = Box::pin(client.alloc_logs(&alloc.id, &query).await?);
            let mut stdout = std::io::stdout();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                if stdout.write_all(&chunk).and_then(|_| stdout.flush()).is_err() {
                    break; // the reader went away (e.g. `| head`)
                }
            }
            Ok(())
        }
        AllocCommand::Restart { id } => {
            let alloc = client.restart_allocation(&id).await?;
            println!("==> allocation {} ({}) restarts its tasks on node {}", short(&alloc.id), alloc.name, alloc.node_name);
            Ok(())
        }
        AllocCommand::Migrate { id, node, detach, timeout } => {
            let timeout = flag_duration("--timeout", &timeout)?;
            let started = client.migrate_allocation(&id, &davit_api::http::MigrateAllocRequest { node }).await?;
            println!(
                "Migrating allocation {} to node {}: destination allocation {}",
                short(&started.source_alloc_id),
                started.node_name,
                short(&started.alloc_id)
            );
            if detach {
                return Ok(());
            }
            wait_migration(client, &started.alloc_id, timeout).await
        }
        AllocCommand::Exec { id, task, tty, no_tty, command } => {
            let alloc = client.allocation(&id).await?;
            let stdin_is_terminal = std::io::stdin().is_terminal();
            let terminal = tty || (!no_tty && stdin_is_terminal && std::io::stdout().is_terminal());
            let size = if terminal { crate::terminal::size(libc::STDIN_FILENO) } else { None };
            let query = ExecQuery {
                task,
                command: serde_json::to_string(&command).expect("strings serialize"),
                tty: terminal,
                term: terminal.then(|| std::env::var("TERM").ok()).flatten(),
                cols: size.map(|(cols, _)| cols),
                rows: size.map(|(_, rows)| rows),
            };
            let stream = client.alloc_exec(&alloc.id, &query).await?;
            // Raw mode only while the session runs: keys go to the remote command, not to the local line editor.
            let raw = match terminal && stdin_is_terminal {
                true => {
                    Some(crate::terminal::RawMode::enable(libc::STDIN_FILENO).map_err(|e| Failure::internal(format!("terminal: {e}")))?)
                }
                false => None,
            };
            let result = exec_session(stream, terminal && stdin_is_terminal).await;
            drop(raw);
            match result? {
                0 => Ok(()),
                code => Err(Failure::silent(u8::try_from(code).unwrap_or(1))),
            }
        }
    }
}

/// Moves stdin to the remote command and its output to stdout/stderr until it exits; its exit code.
async fn exec_session(stream: davit_client::exec::ExecStream, track_size: bool) -> Result<i32, Failure> {
    use davit_api::exec::ExecFrame;
    let (reader, mut writer) = tokio::io::split(stream);
    let (frames, mut outgoing) = tokio::sync::mpsc::channel::<ExecFrame>(16);
    // A plain thread reads stdin: a read blocked forever must not keep the process from exiting.
    let stdin_frames = frames.clone();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = stdin_frames.blocking_send(ExecFrame::StdinClose);
                    return;
                }
                Ok(read) => {
                    if stdin_frames.blocking_send(ExecFrame::Stdin(buf[..read].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    if track_size {
        let resize_frames = frames.clone();
        tokio::spawn(async move {
            let Ok(mut changes) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()) else { return };
            while changes.recv().await.is_some() {
                if let Some((cols, rows)) = crate::terminal::size(libc::STDIN_FILENO)
                    && resize_frames.send(ExecFrame::Resize { cols, rows }).await.is_err()
                {
                    return;
                }
            }
        });
    }
    drop(frames);
    tokio::spawn(async move {
        while let Some(frame) = outgoing.recv().await {
            if davit_client::exec::write_frame(&mut writer, &frame).await.is_err() {
                return;
            }
        }
    });
    let mut incoming = davit_client::exec::FrameReader::new(reader);
    let (mut stdout, mut stderr) = (std::io::stdout(), std::io::stderr());
    loop {
        match incoming.next().await {
            Ok(Some(ExecFrame::Stdout(data))) => {
                let _ = stdout.write_all(&data).and_then(|_| stdout.flush());
            }
            Ok(Some(ExecFrame::Stderr(data))) => {
                let _ = stderr.write_all(&data).and_then(|_| stderr.flush());
            }
            Ok(Some(ExecFrame::Exit(code))) => return Ok(code),
            Ok(Some(ExecFrame::Error(message))) => return Err(Failure::user(message)),
            Ok(Some(_)) => {}
            Ok(None) => return Err(Failure::internal("the exec session ended before the command did")),
            Err(error) => return Err(Failure::internal(format!("exec session: {error}"))),
        }
    }
}

/// "cpu 120 of 250 millicores (48%), memory 30.5 of 64 MiB (47%); 12.5 requests/s, p99 2.5 ms": the latest
/// sample next to the request, summed over the tasks.
fn usage_line(info: Option<&davit_api::http::AllocUsageInfo>) -> String {
    let Some(info) = info.filter(|info| info.time.is_some()) else { return "no sample (yet)".to_string() };
    let (mut cpu, mut cpu_request, mut memory, mut memory_request) = (0u64, 0u64, 0u64, 0u64);
    for task in info.tasks.values() {
        cpu += task.cpu_millicores.unwrap_or(0);
        memory += task.memory_bytes.unwrap_or(0);
        cpu_request += task.cpu_request;
        memory_request += task.memory_request_mib;
    }
    let percent = |used: f64, of: f64| if of > 0.0 { format!(" ({:.0}%)", used * 100.0 / of) } else { String::new() };
    let memory_mib = memory as f64 / 1_048_576.0;
    let mut line = format!(
        "cpu {cpu} of {cpu_request} millicores{}, memory {memory_mib:.1} of {memory_request} MiB{}",
        percent(cpu as f64, cpu_request as f64),
        percent(memory_mib, memory_request as f64)
    );
    if let Some(rate) = info.requests_per_second {
        line.push_str(&format!("; {rate:.1} requests/s"));
        if let Some(p99) = info.latency_p99_ms {
            line.push_str(&format!(", p99 {p99} ms"));
        }
    }
    line
}
