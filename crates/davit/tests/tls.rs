//! End to end with separate processes: `davit server --acl --tls` makes its CA, agents join over HTTPS with
//! join tokens and get node certificates, jobs run and their logs are relayed to the agents' HTTPS APIs, a
//! node's token is worth nothing without its certificate, certificates rotate without restarts, and a client
//! with the wrong CA or scheme is told so in plain words.

mod util;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use davit_api::objects::ClientStatus;
use util::{Cluster, require_root, wait_until};

const JOB: &str = r#"
name: sealed
groups:
  - name: g
    tasks:
      - name: main
        driver: exec
        config: {command: /bin/sh, args: [-c, "echo hello-over-tls; exec sleep 600"]}
        resources: {cpu: 20, memory: 32}
"#;

/// Lifetime of every certificate the server issues in this test: short, to see them renewed.
const CERT_TTL: Duration = Duration::from_secs(9);

/// `davit` against `addr` trusting `ca`, with `token`.
fn cli(addr: &str, ca: &Path, token: Option<&str>, dir: &Path, args: &[&str]) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_davit"));
    command.current_dir(dir).env("DAVIT_ADDR", addr).env("DAVIT_CACERT", ca).env_remove("DAVIT_TOKEN").args(args);
    if let Some(token) = token {
        command.env("DAVIT_TOKEN", token);
    }
    command.output().unwrap()
}

fn cli_ok(addr: &str, ca: &Path, token: &str, dir: &Path, args: &[&str]) -> String {
    let output = cli(addr, ca, Some(token), dir, args);
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    assert!(output.status.success(), "`davit {}` failed:\n{}\n{}", args.join(" "), text(&output.stdout), text(&output.stderr));
    text(&output.stdout)
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn secret(json: &str) -> String {
    serde_json::from_str::<serde_json::Value>(json).unwrap()["secret_id"].as_str().unwrap().to_string()
}

#[test]
fn agents_join_over_mutual_tls_and_certificates_rotate_without_restarts() {
    if !require_root() {
        return;
    }
    let ttl = format!("{}s", CERT_TTL.as_secs());
    let started = Instant::now();
    let cluster = Cluster::start_tls(&["--acl", "--tls-cert-ttl", &ttl]);
    let (addr, dir, ca) = (cluster.addr.clone(), cluster.path().to_path_buf(), cluster.ca_cert());

    // The server made its CA; bootstrap once it answers.
    let mut management = String::new();
    wait_until("the server answers over HTTPS", Duration::from_secs(30), || {
        let output = cli(&addr, &ca, None, &dir, &["acl", "bootstrap", "-o", "json"]);
        if output.status.success() {
            management = secret(&String::from_utf8_lossy(&output.stdout));
        }
        output.status.success()
    });
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: PathBuf| std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(ca.with_file_name("ca-key.pem")), 0o600, "the CA key is owner-only");

    // Mismatches get plain words and exit 2 (or the server's 400 for plain HTTP).
    cli_ok(&addr, &ca, &management, &dir, &["tls", "ca", "create", "--dir", "other-ca"]);
    let wrong_ca = cli(&addr, &dir.join("other-ca/ca.pem"), Some(&management), &dir, &["node", "ls"]);
    assert_eq!(wrong_ca.status.code(), Some(2));
    assert!(stderr(&wrong_ca).contains("server certificate not signed by DAVIT_CACERT"), "{}", stderr(&wrong_ca));
    let plain = cli(&addr.replace("https://", "http://"), &ca, Some(&management), &dir, &["node", "ls"]);
    assert_eq!(plain.status.code(), Some(1));
    assert!(stderr(&plain).contains("is not an https:// address"), "the token is not sent in clear: {}", stderr(&plain));
    // Other tools speaking plain HTTP to the TLS port are told what to do.
    let answer = {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(addr.trim_start_matches("https://")).unwrap();
        stream.write_all(b"GET /v1/status HTTP/1.1\r\nHost: davit\r\n\r\n").unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    };
    assert!(answer.starts_with("HTTP/1.1 400") && answer.contains("speaks HTTPS"), "{answer}");

    // Two agents join with a two-use join token; one without a token is refused.
    let join = secret(&cli_ok(&addr, &ca, &management, &dir, &["acl", "join-token", "create", "--uses", "2", "-o", "json"]));
    let agent_args = |name: &str, slot: u16| {
        let mut args = cluster.agent_args(name, slot);
        args.extend(["--ca-cert".to_string(), ca.display().to_string()]);
        args
    };
    let a = cluster.spawn_agent_with_env("a", &agent_args("a", 0), &[("DAVIT_JOIN_TOKEN", &join)]);
    let b = cluster.spawn_agent_with_env("b", &agent_args("b", 1), &[("DAVIT_JOIN_TOKEN", &join)]);
    let stranger = cluster.spawn_agent("stranger", &agent_args("stranger", 2));
    let client = davit_client::Client::connect(&addr, Some(&management), Some(&davit_client::ClientTls::load(&ca, None).unwrap()));
    let runtime = util::runtime();
    let ready =
        || runtime.block_on(client.nodes()).unwrap().iter().filter(|node| node.status == davit_api::objects::NodeStatus::Ready).count();
    wait_until("both agents joined", Duration::from_secs(30), || ready() == 2);
    wait_until("the stranger was refused", Duration::from_secs(30), || stranger.logs().contains("token not found or expired"));
    for agent in [&a, &b] {
        wait_until("the agent got its certificate", Duration::from_secs(30), || agent.logs().contains("got the node's certificate"));
    }
    // Key and certificate in one owner-only file.
    let (a_cert, a_key) = (dir.join("a/tls/node.pem"), dir.join("a/tls/node.pem"));
    assert_eq!(mode(a_key.clone()), 0o600, "the node's key is owner-only");
    let first_a_cert = std::fs::read_to_string(&a_cert).unwrap();

    // A job runs; its logs come through the server's relay to the agent's HTTPS API.
    std::fs::write(dir.join("sealed.yaml"), JOB).unwrap();
    cli_ok(&addr, &ca, &management, &dir, &["job", "run", "--detach", "sealed.yaml"]);
    let mut alloc_id = String::new();
    wait_until("the job runs", Duration::from_secs(60), || {
        let allocs = runtime.block_on(client.job_allocations("sealed")).unwrap();
        alloc_id =
            allocs.iter().find(|alloc| alloc.client_status == ClientStatus::Running).map(|alloc| alloc.id.clone()).unwrap_or_default();
        !alloc_id.is_empty()
    });
    let logs = |token: &str| cli(&addr, &ca, Some(token), &dir, &["alloc", "logs", &alloc_id]);
    wait_until("the task's output is relayed", Duration::from_secs(30), || {
        String::from_utf8_lossy(&logs(&management).stdout).contains("hello-over-tls")
    });

    // A token that may read logs but not exec gets the 403 naming the capability.
    std::fs::write(dir.join("reader.yaml"), "namespaces:\n  default: {policy: read, capabilities: [read-logs]}\n").unwrap();
    cli_ok(&addr, &ca, &management, &dir, &["acl", "policy", "apply", "reader", "reader.yaml"]);
    let reader =
        secret(&cli_ok(&addr, &ca, &management, &dir, &["acl", "token", "create", "--name", "r", "--policy", "reader", "-o", "json"]));
    let exec = cli(&addr, &ca, Some(&reader), &dir, &["alloc", "exec", &alloc_id, "--", "true"]);
    assert_eq!(exec.status.code(), Some(1));
    assert!(stderr(&exec).contains("alloc-exec"), "{}", stderr(&exec));

    // Node a's token is its identity only together with its certificate: without one, or with node b's,
    // even its own heartbeat is refused.
    let a_token = std::fs::read_to_string(dir.join("a/node-token")).unwrap().trim().to_string();
    let node_a = std::fs::read_to_string(dir.join("a/node-id")).unwrap().trim().to_string();
    let as_a_with = |cert: Option<(&Path, &Path)>| {
        let slot = cert.map(|(cert, key)| {
            let slot = davit_tls::CertSlot::default();
            slot.load_files(cert, key).unwrap();
            std::sync::Arc::new(slot)
        });
        davit_client::Client::connect(&addr, Some(&a_token), Some(&davit_client::ClientTls::load(&ca, slot).unwrap()))
    };
    for (who, cert) in [("no certificate", None), ("node b's certificate", Some((dir.join("b/tls/node.pem"), dir.join("b/tls/node.pem"))))]
    {
        let forged = runtime.block_on(as_a_with(cert.as_ref().map(|(c, k)| (c.as_path(), k.as_path()))).heartbeat(&node_a)).unwrap_err();
        assert!(forged.is_denied() && forged.to_string().contains("presents its certificate"), "{who}: {forged}");
    }

    // Certificates rotate: node a renews its own after two thirds of its life, and the server its own; once
    // the first server certificate expired, everything still works without a restart.
    wait_until("node a renewed its certificate", CERT_TTL * 3, || std::fs::read_to_string(&a_cert).unwrap() != first_a_cert);
    runtime.block_on(as_a_with(Some((&a_cert, &a_key))).heartbeat(&node_a)).expect("node a, with its renewed certificate");
    wait_until("the server's first certificate expired", CERT_TTL * 2, || started.elapsed() > CERT_TTL + Duration::from_secs(1));
    assert!(String::from_utf8_lossy(&logs(&management).stdout).contains("hello-over-tls"), "relay after rotation");
    assert_eq!(ready(), 2, "both nodes still heartbeat");
    assert!(a.logs().contains("renewed the node's certificate"), "{}", a.logs());
}

#[test]
fn tls_certificates_are_made_offline_for_servers_agents_and_cli_users() {
    let dir = util::tempdir();
    let run = |args: &[&str]| std::process::Command::new(env!("CARGO_BIN_EXE_davit")).current_dir(dir.path()).args(args).output().unwrap();
    assert!(run(&["tls", "ca", "create"]).status.success());
    let again = run(&["tls", "ca", "create"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("a CA is there already"), "{}", stderr(&again));
    for role in [&["--server", "--name", "10.0.0.5"][..], &["--agent", "--node-id", "9f1c"], &["--cli"]] {
        let output = run(&[&["tls", "cert", "create"], role].concat());
        assert!(output.status.success(), "{role:?}: {}", stderr(&output));
    }
    let pem = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    let der = |name: &str| davit_tls::certs_from_pem(Path::new(name), &pem(name)).unwrap().remove(0);
    assert!(davit_tls::cert_is_for(&der("server.pem"), davit_tls::SERVER_NAME));
    assert!(davit_tls::cert_is_for(&der("server.pem"), "10.0.0.5"));
    assert!(davit_tls::cert_is_for(&der("agent.pem"), &davit_tls::node_name("9f1c")));
    assert!(!davit_tls::cert_is_for(&der("agent.pem"), davit_tls::SERVER_NAME), "an agent is not a server");
    assert!(davit_tls::cert_is_for(&der("cli.pem"), davit_tls::CLI_NAME));
    let missing = run(&["tls", "cert", "create", "--agent"]);
    assert!(!missing.status.success() && stderr(&missing).contains("--node-id"), "{}", stderr(&missing));
}
