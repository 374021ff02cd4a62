//! End to end with separate processes: `davit server --acl`, tokens made with the CLI, agents that need a
//! token to join, `alloc exec` and `alloc logs` checked on the server and again on the agent, and every route
//! of the agent's own API (`davit_agent::routes()`, the list its router is built from) refusing requests
//! without a token (401) and with a token lacking the route's capability (403).

mod util;

use std::path::Path;
use std::time::{Duration, Instant};

use davit_api::acl::{Access, Rule};
use davit_api::objects::{ClientStatus, DesiredStatus};
use util::{Cluster, require_root, runtime, wait_alloc_as, wait_job_as, wait_ready_nodes_as};

const JOB: &str = r#"
name: guarded
groups:
  - name: g
    tasks:
      - name: main
        driver: exec
        config: {command: /bin/sh, args: [-c, "echo hello-from-guarded; exec sleep 600"]}
        resources: {cpu: 20, memory: 32}
"#;

/// Runs `davit` with `token` (if any) and returns (exit code, stdout, stderr).
fn cli(addr: &str, dir: &Path, token: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let output = match token {
        Some(token) => util::davit_as(addr, token, dir, args),
        None => util::davit(addr, dir, args),
    };
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.code().unwrap_or(-1), text(&output.stdout), text(&output.stderr))
}

fn cli_ok(addr: &str, dir: &Path, token: &str, args: &[&str]) -> String {
    let (code, stdout, stderr) = cli(addr, dir, Some(token), args);
    assert_eq!(code, 0, "`davit {}` failed:\n{stdout}\n{stderr}", args.join(" "));
    stdout
}

/// Applies a policy and makes a client token holding it; returns the secret.
fn token_with(addr: &str, dir: &Path, management: &str, name: &str, policy: &str) -> String {
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, policy).unwrap();
    cli_ok(addr, dir, management, &["acl", "policy", "apply", name, &file.display().to_string()]);
    let created = cli_ok(addr, dir, management, &["acl", "token", "create", "--name", name, "--policy", name, "-o", "json"]);
    serde_json::from_str::<serde_json::Value>(&created).unwrap()["secret_id"].as_str().unwrap().to_string()
}

/// `davit acl bootstrap` once the server listens (it cannot be reached before: exit 2); the management secret.
fn bootstrap(addr: &str, dir: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, stdout, stderr) = cli(addr, dir, None, &["acl", "bootstrap", "-o", "json"]);
        if code == 0 {
            return serde_json::from_str::<serde_json::Value>(&stdout).unwrap()["secret_id"].as_str().unwrap().to_string();
        }
        assert!(code == 2 && Instant::now() < deadline, "bootstrap failed ({code}): {stderr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (30 s at most) until `path` contains `needle`.
fn wait_for_text(path: &Path, needle: &str) {
    util::wait_for_text(path, needle, Duration::from_secs(30));
}

/// The status code of `GET url` (an `http://host:port/path` URL) with `token`, over plain HTTP/1.0.
fn http_status(url: &str, token: Option<&str>) -> u16 {
    use std::io::{BufRead, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let header = token.map(|token| format!("X-Davit-Token: {token}\r\n")).unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n{header}\r\n").unwrap();
    let mut line = String::new();
    std::io::BufReader::new(stream).read_line(&mut line).unwrap();
    line.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or_else(|| panic!("GET {url}: {line:?}"))
}

#[test]
fn a_secured_cluster_checks_tokens_on_the_server_and_on_agents() {
    if !require_root() {
        return;
    }
    let cluster = Cluster::start_with(&["--acl"]);
    let (addr, dir) = (cluster.addr.clone(), cluster.path());

    let management = bootstrap(&addr, dir);
    let (code, _, stderr) = cli(&addr, dir, None, &["acl", "bootstrap"]);
    assert_eq!(code, 1, "a second bootstrap is refused");
    assert!(stderr.contains("already done"), "{stderr}");

    let agent_token = token_with(&addr, dir, &management, "agent", "node: write\n");
    let reader = token_with(&addr, dir, &management, "reader", "namespaces: {default: {policy: read, capabilities: [read-logs]}}\n");
    let elsewhere = token_with(&addr, dir, &management, "elsewhere", "namespaces: {other: {policy: write}}\n");

    // An agent without a token is refused and never becomes a node.
    let intruder = cluster.spawn_agent("intruder", &cluster.agent_args("intruder", 0));
    wait_for_text(&intruder.log, "token not found or expired");
    let mut agents = Vec::new();
    for (slot, name) in [(1, "a"), (2, "b")] {
        agents.push(cluster.spawn_agent_with_env(name, &cluster.agent_args(name, slot), &[("DAVIT_TOKEN", &agent_token)]));
    }
    wait_ready_nodes_as(&addr, Some(&management), 2);
    let nodes = runtime().block_on(davit_client::Client::with_token(&addr, Some(&management)).nodes()).unwrap();
    assert_eq!(nodes.len(), 2, "only the agents with a token joined: {nodes:?}");

    // A job runs; the reader may read it and its logs, but not exec into it or submit jobs.
    let job = dir.join("guarded.yaml");
    std::fs::write(&job, JOB).unwrap();
    let (code, _, stderr) = cli(&addr, dir, Some(&reader), &["job", "run", "-d", &job.display().to_string()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("lacks `submit-job` in namespace `default`"), "{stderr}");
    cli_ok(&addr, dir, &management, &["job", "run", "-d", &job.display().to_string()]);
    let placed = |status: &davit_api::http::JobStatusResponse| status.allocations.iter().any(|a| a.desired_status == DesiredStatus::Run);
    let status = wait_job_as(&addr, Some(&reader), "guarded", Duration::from_secs(30), placed);
    let alloc = status.allocations[0].id.clone();
    wait_alloc_as(&addr, Some(&reader), &alloc, Duration::from_secs(30), |a| a.client_status == ClientStatus::Running);

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let logs = cli_ok(&addr, dir, &reader, &["alloc", "logs", &alloc]);
        if logs.contains("hello-from-guarded") {
            break;
        }
        assert!(Instant::now() < deadline, "the reader never saw the task's output: {logs:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, _, stderr) = cli(&addr, dir, Some(&reader), &["alloc", "exec", &alloc, "--", "/bin/echo", "hi"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("lacks `alloc-exec`"), "{stderr}");
    let (code, stdout, stderr) = cli(&addr, dir, Some(&management), &["alloc", "exec", &alloc, "--", "/bin/echo", "hi"]);
    assert_eq!((code, stdout.trim()), (0, "hi"), "{stderr}");

    // The agent's own API, route by route.
    let node = runtime().block_on(davit_client::Client::with_token(&addr, Some(&management)).allocation(&alloc)).unwrap().node_id;
    let agent_url = runtime().block_on(davit_client::Client::with_token(&addr, Some(&management)).node(&node)).unwrap().http_addr;
    let operator = token_with(&addr, dir, &management, "operator", "operator: read\n");
    let node_reader = token_with(&addr, dir, &management, "node-reader", "node: read\n");
    let exec_only = token_with(&addr, dir, &management, "exec-only", "namespaces: {default: {capabilities: [alloc-exec]}}\n");
    let job_reader = token_with(&addr, dir, &management, "job-reader", "namespaces: {default: {capabilities: [read-job]}}\n");
    let routes = davit_agent::routes();
    assert_eq!(routes.len(), 5, "the agent's route list: {routes:?}");
    for route in routes {
        let url = format!("{agent_url}{}", route.path.replace("{id}", &alloc));
        let what = format!("agent {} {} ({})", route.method, route.path, route.rule);
        assert_eq!(http_status(&url, None), 401, "{what} without a token");
        assert_eq!(http_status(&url, Some(&elsewhere)), 403, "{what} with a token lacking the capability");
        let fitting = match route.rule {
            Rule::Namespace(davit_api::acl::Capability::ReadLogs) => &reader,
            Rule::Namespace(davit_api::acl::Capability::AllocExec) => &exec_only,
            Rule::Namespace(davit_api::acl::Capability::ReadJob) => &job_reader,
            Rule::Node(Access::Read) => &node_reader,
            Rule::Operator(Access::Read) => &operator,
            other => panic!("{what}: no test token for {other}"),
        };
        let allowed = http_status(&url, Some(fitting));
        assert!(![401, 403].contains(&allowed), "{what}: a token with exactly the capability was refused ({allowed})");
    }
    // A revoked token stops working on the server at once.
    let accessor = cli_ok(&addr, dir, &management, &["acl", "token", "ls", "-o", "json"]);
    let tokens: Vec<serde_json::Value> = serde_json::from_str(&accessor).unwrap();
    let reader_accessor = tokens.iter().find(|t| t["name"] == "reader").unwrap()["accessor_id"].as_str().unwrap().to_string();
    cli_ok(&addr, dir, &management, &["acl", "token", "revoke", &reader_accessor]);
    let (code, _, stderr) = cli(&addr, dir, Some(&reader), &["job", "status"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("token not found or expired"), "{stderr}");

    cli_ok(&addr, dir, &management, &["job", "stop", "guarded"]);
    drop((agents, intruder));
}

#[test]
fn a_server_without_acls_stays_on_loopback_unless_told_otherwise() {
    let dir = util::tempdir();
    let port = util::free_port();
    let data = dir.path().join("server").display().to_string();
    let bind = format!("0.0.0.0:{port}");
    let (code, _, stderr) = cli("http://127.0.0.1:1", dir.path(), None, &["server", "--bind", &bind, "--data-dir", &data]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains(&format!("refusing to serve the API on {bind} without ACLs")), "{stderr}");
    assert!(stderr.contains("--insecure-open-api"), "the refusal names the way out: {stderr}");
    assert!(!dir.path().join("server").exists(), "nothing was created");
    // A bad flag is refused before anything is written either (store, CA).
    for bad in [&["--gc-interval", "soon"][..], &["--tls", "--tls-cert-ttl", "forever"]] {
        let args = [&["server", "--bind", "127.0.0.1:1", "--data-dir", &data][..], bad].concat();
        let (code, _, stderr) = cli("http://127.0.0.1:1", dir.path(), None, &args);
        assert_eq!(code, 1, "{stderr}");
        assert!(stderr.contains(&format!("{}: invalid duration", bad[bad.len() - 2])), "{stderr}");
        assert!(!dir.path().join("server").exists(), "nothing was created for {bad:?}");
    }

    // The operator may insist; the server then warns.
    let server = util::Process::spawn("open", dir.path(), &["server", "--bind", &bind, "--data-dir", &data, "--insecure-open-api"]);
    wait_for_text(&server.log, "the API is open");
    util::wait_ready_nodes(&format!("http://127.0.0.1:{port}"), 0);
}

#[test]
fn agents_join_with_join_tokens_and_then_act_only_for_their_own_node() {
    if !require_root() {
        return;
    }
    let cluster = Cluster::start_with(&["--acl"]);
    let (addr, dir) = (cluster.addr.clone(), cluster.path());
    let management = bootstrap(&addr, dir);
    let join = |uses: &str| {
        let created = cli_ok(&addr, dir, &management, &["acl", "join-token", "create", "--uses", uses, "-o", "json"]);
        serde_json::from_str::<serde_json::Value>(&created).unwrap()["secret_id"].as_str().unwrap().to_string()
    };
    let once = join("1");

    // The first agent joins with the one-time token and keeps its identity (owner-only file).
    let a_args = cluster.agent_args("a", 0);
    let mut a = cluster.spawn_agent_with_env("a", &a_args, &[("DAVIT_JOIN_TOKEN", &once)]);
    wait_ready_nodes_as(&addr, Some(&management), 1);
    wait_for_text(&a.log, "joined the cluster");
    let token_file = dir.join("a").join("node-token");
    let a_token = std::fs::read_to_string(&token_file).unwrap().trim().to_string();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777, 0o600);

    // The used token, and a wrong one, let nobody else in; each says why.
    let b = cluster.spawn_agent_with_env("b", &cluster.agent_args("b", 1), &[("DAVIT_JOIN_TOKEN", &once)]);
    wait_for_text(&b.log, "join token was used up");
    let c = cluster.spawn_agent_with_env("c", &cluster.agent_args("c", 2), &[("DAVIT_JOIN_TOKEN", "not-a-join-token")]);
    wait_for_text(&c.log, "token not found or expired");

    // Node a's identity acts for node a alone.
    let client = davit_client::Client::with_token(&addr, Some(&management));
    let nodes = runtime().block_on(client.nodes()).unwrap();
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    let node_a = nodes[0].id.clone();
    let as_a = davit_client::Client::with_token(&addr, Some(&a_token));
    runtime().block_on(as_a.heartbeat(&node_a)).expect("its own heartbeat");
    let forged = runtime().block_on(as_a.heartbeat("some-other-node")).unwrap_err();
    assert!(forged.is_denied() && forged.to_string().contains("this node's identity"), "{forged}");
    let mut other = runtime().block_on(client.node(&node_a)).unwrap();
    other.id = "some-other-node".to_string();
    let impersonation = runtime().block_on(as_a.register_node(&other)).unwrap_err();
    assert!(impersonation.to_string().contains("not of node some-other-node"), "{impersonation}");
    assert!(runtime().block_on(as_a.nodes()).unwrap_err().is_denied(), "a node does not list the cluster's nodes");
    assert!(runtime().block_on(as_a.jobs()).unwrap_err().is_denied(), "nor read jobs");

    // A node that joined registers only with its identity; restarted without a join token, it uses it.
    let b_token = join("1");
    let mut stolen = runtime().block_on(client.node(&node_a)).unwrap();
    stolen.name = "thief".to_string();
    let as_join = davit_client::Client::with_token(&addr, Some(&b_token));
    let takeover = runtime().block_on(as_join.register_node(&stolen)).unwrap_err();
    assert!(takeover.to_string().contains("already joined"), "{takeover}");
    a.interrupt();
    let _a = cluster.spawn_agent("a-again", &a_args);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !util::read(&dir.join("a-again.log")).contains("registered with the server") {
        assert!(Instant::now() < deadline, "the restarted agent never registered:\n{}", util::read(&dir.join("a-again.log")));
        std::thread::sleep(Duration::from_millis(50));
    }
    drop((b, c));
}
