//! First-run edges: what a new user tries first either works or says what to do. A job run right after
//! `davit dev` (or before a cluster's first node) waits for it; a second agent on the default addresses
//! exits at once naming the flags to pass; `davit agent` takes --servers, not --address; shell completion.

mod util;

use std::net::{TcpListener, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use davit_api::objects::ClientStatus;
use util::{Cluster, DAVIT, Dev, Process, free_port, proxy_ip, require_root, slot_port_range, wait_for_text, wait_job, wait_ready_nodes};

const JOB: &str = "name: first\ngroups:\n  - name: g\n    tasks:\n      - name: t\n        driver: exec\n        config: {command: /bin/sleep, args: ['600']}\n        resources: {memory: 16}\n";

fn running(status: &davit_api::http::JobStatusResponse) -> usize {
    status.allocations.iter().filter(|alloc| alloc.client_status == ClientStatus::Running).count()
}

/// `davit dev & davit job run x.yaml`: the job run does not wait for anything first, and succeeds.
#[test]
fn a_job_run_right_after_davit_dev_starts_runs_the_job() {
    if !require_root() {
        return;
    }
    let dev = Dev::spawn();
    let file = dev.write("first.yaml", JOB);
    let stdout = dev.ok(&["job", "run", &file]);
    assert!(stdout.contains("==> job first version 0: all allocations running"), "{stdout}");
    wait_job(&dev.addr, "first", Duration::from_secs(10), |status| running(status) == 1);
}

/// The two waits of `job run`, each seen on stderr: for a server that is not listening yet, then for the
/// cluster's first ready node.
#[test]
fn a_job_run_waits_for_a_starting_server_and_its_first_node() {
    if !require_root() {
        return;
    }
    let mut cluster = Cluster::unstarted();
    let file = cluster.path().join("first.yaml");
    std::fs::write(&file, JOB).unwrap();
    let mut run =
        Process::spawn_with_env("job-run", cluster.path(), &["job", "run", &file.display().to_string()], &[("DAVIT_ADDR", &cluster.addr)]);
    wait_for_text(&run.log, "no davit server answers", Duration::from_secs(10));

    cluster.start_server(&[]);
    wait_for_text(&run.log, "no node is ready yet", Duration::from_secs(10));

    let _agent = cluster.spawn_agent("agent", &cluster.agent_args("one", 1));
    let status = run.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "job run: {status}\n{}", run.logs());
    assert!(run.logs().contains("==> job first version 0: all allocations running"), "{}", run.logs());
    wait_job(&cluster.addr, "first", Duration::from_secs(10), |status| running(status) == 1);
}

/// Whether this host's default agent addresses are free (something else may hold them: then the test is
/// skipped outside CI, with the reason).
fn default_addresses_free() -> bool {
    let free = TcpListener::bind("127.0.0.1:7647").is_ok() && UdpSocket::bind("127.0.0.1:8600").is_ok();
    if !free {
        let reason = "127.0.0.1:7647 or 127.0.0.1:8600 (the default agent addresses) is taken on this host";
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{reason}");
        }
        eprintln!("skipping: {reason}");
    }
    free
}

#[test]
fn a_second_agent_on_the_default_addresses_exits_at_once_naming_the_flags() {
    if !require_root() || !default_addresses_free() {
        return;
    }
    let cluster = Cluster::start();
    let data = |name: &str| cluster.path().join(name).display().to_string();
    let on_defaults = |name: &str, slot: u16| {
        ["agent", "--servers", &cluster.addr, "--node-name", name, "--data-dir", &data(name), "--port-range", &slot_port_range(slot)]
            .map(str::to_string)
            .to_vec()
    };
    let first = cluster.spawn_agent("first", &on_defaults("first", 2));
    wait_for_text(&first.log, "davit agent running", Duration::from_secs(30));

    let started = Instant::now();
    let mut second = cluster.spawn_agent("second", &on_defaults("second", 3));
    let status = second.wait_exit(Duration::from_secs(10));
    let said = second.logs();
    assert_eq!(status.code(), Some(1), "{said}");
    for expected in [
        "127.0.0.1:7647 is in use (another agent?): pass --bind ADDR:PORT",
        "127.0.0.1:8600 is in use (another agent's DNS server?): pass --dns-bind ADDR:PORT",
        "the service proxy IP 127.0.0.1 is another agent's on this host: pass --proxy-bind-ip IP",
    ] {
        assert!(said.contains(expected), "expected {expected:?} in:\n{said}");
    }
    assert!(started.elapsed() < Duration::from_secs(5), "it took {:?} to say so", started.elapsed());
    assert!(!cluster.path().join("second").exists(), "the refused agent made its data directory");

    // With the three flags it joins.
    let mut third = on_defaults("third", 3);
    let (bind, dns, proxy) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()), proxy_ip());
    third.extend(["--bind", &bind, "--dns-bind", &dns, "--proxy-bind-ip", &proxy].map(str::to_string));
    let _third = cluster.spawn_agent("third", &third);
    wait_ready_nodes(&cluster.addr, 2);
}

#[test]
fn davit_agent_names_its_servers_with_servers_not_address() {
    let dir = util::tempdir();
    let data = dir.path().join("agent").display().to_string();
    let output = Command::new(DAVIT).args(["agent", "--address", "http://127.0.0.1:1", "--data-dir", &data]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("`davit agent` takes no --address") && stderr.contains("pass --servers ADDR[,ADDR…]"), "{stderr}");
    assert!(!dir.path().join("agent").exists());

    let help = Command::new(DAVIT).args(["agent", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--servers") && !help.contains("--address"), "{help}");
}

#[test]
fn davit_completion_prints_a_script_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let output = Command::new(DAVIT).args(["completion", shell]).output().unwrap();
        let script = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{shell}: {}", String::from_utf8_lossy(&output.stderr));
        assert!(script.contains("job") && script.contains("alloc") && script.contains("--servers"), "{shell}:\n{script}");
    }
    let bad = Command::new(DAVIT).args(["completion", "cmd.exe"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(1));
}
