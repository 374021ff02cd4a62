//! Test support: an etcd cluster of real `etcd` processes on loopback, for the etcd backend's conformance run
//! and for tests of several davit servers. Built with the cargo feature `conformance`.
//!
//! Members listen on free loopback ports with their data in a temporary directory (on tmpfs where there is
//! one), with etcd's default heartbeat and election timeout (100 ms, 1 s), which stay stable on a busy machine.
//! Dropping the cluster kills the members.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One member: its name, client URL and peer URL, and its process while it runs.
pub struct EtcdMember {
    pub name: String,
    pub client_url: String,
    pub peer_url: String,
    /// Plain HTTP `/health` and `/metrics` (also when clients talk TLS).
    metrics_url: String,
    /// More flags (TLS, auth token settings).
    extra: Vec<String>,
    data_dir: PathBuf,
    log: PathBuf,
    process: Option<Child>,
    initial_cluster: String,
}

/// A cluster of `etcd` members on loopback.
pub struct EtcdCluster {
    pub members: Vec<EtcdMember>,
    _dir: tempfile::TempDir,
}

/// Whether `etcd` can be run here. Outside CI a missing binary skips (the caller prints why); under `CI=true`
/// it is a failure.
pub fn etcd_available() -> bool {
    let found = Command::new("etcd").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "etcd is not installed (scripts/deps.sh installs etcd-server); CI must run the etcd tests"
        );
        eprintln!("skipping: etcd is not installed (apt-get install etcd-server)");
    }
    found
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|listener| listener.local_addr()).map(|addr| addr.port()).expect("a free port")
}

/// How the members serve their clients.
#[derive(Clone, Debug, Default)]
pub struct EtcdSetup {
    /// TLS for clients: (CA certificate, member certificate, its key) files; clients must show a certificate the
    /// CA signed (`--client-cert-auth`).
    pub tls: Option<(PathBuf, PathBuf, PathBuf)>,
    /// More `etcd` flags.
    pub extra: Vec<String>,
}

impl EtcdCluster {
    /// Starts `size` members and waits until every one answers (at most 30 s). A member that could not start (its
    /// port, picked free, was taken meanwhile) makes it start the cluster again on new ports, up to three times.
    pub fn start(size: usize) -> EtcdCluster {
        EtcdCluster::start_with(size, &EtcdSetup::default())
    }

    /// [`EtcdCluster::start`] with TLS or more flags.
    pub fn start_with(size: usize, setup: &EtcdSetup) -> EtcdCluster {
        for attempt in 1..=3 {
            let cluster = EtcdCluster::start_once(size, setup);
            if cluster.wait_all(Duration::from_secs(30)) {
                return cluster;
            }
            let logs: Vec<String> = cluster.members.iter().map(EtcdMember::log_tail).collect();
            assert!(attempt < 3, "the etcd cluster did not start:\n{}", logs.join("\n"));
            eprintln!("the etcd cluster did not start (attempt {attempt}); trying again on other ports:\n{}", logs.join("\n"));
        }
        unreachable!("the last attempt returns or panics")
    }

    fn start_once(size: usize, setup: &EtcdSetup) -> EtcdCluster {
        // On tmpfs where there is one: etcd fsyncs its log on every write.
        let dir = if Path::new("/dev/shm").is_dir() { tempfile::tempdir_in("/dev/shm") } else { tempfile::tempdir() }.expect("temp dir");
        let token = format!("davit-test-{}-{}", std::process::id(), free_port());
        let mut members: Vec<EtcdMember> = (0..size)
            .map(|index| {
                let name = format!("m{index}");
                let mut extra = setup.extra.clone();
                if let Some((ca, cert, key)) = &setup.tls {
                    for (flag, file) in [("--trusted-ca-file", ca), ("--cert-file", cert), ("--key-file", key)] {
                        extra.extend([flag.to_string(), file.display().to_string()]);
                    }
                    extra.push("--client-cert-auth".to_string());
                }
                EtcdMember {
                    client_url: format!("{}://127.0.0.1:{}", if setup.tls.is_some() { "https" } else { "http" }, free_port()),
                    peer_url: format!("http://127.0.0.1:{}", free_port()),
                    metrics_url: format!("http://127.0.0.1:{}", free_port()),
                    extra,
                    data_dir: dir.path().join(&name),
                    log: dir.path().join(format!("{name}.log")),
                    name,
                    process: None,
                    initial_cluster: String::new(),
                }
            })
            .collect();
        let initial_cluster = members.iter().map(|member| format!("{}={}", member.name, member.peer_url)).collect::<Vec<_>>().join(",");
        for member in &mut members {
            member.initial_cluster = format!("{initial_cluster}|{token}");
            member.start();
        }
        EtcdCluster { members, _dir: dir }
    }

    /// Whether every member answers within `limit`.
    fn wait_all(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.members.iter().all(EtcdMember::answers) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// The client URLs of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|member| member.client_url.clone()).collect()
    }

    /// Waits until a majority of the members answers a linearizable read.
    pub fn wait_healthy(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let answering = self.members.iter().filter(|member| member.process.is_some() && member.answers()).count();
            if answering > self.members.len() / 2 {
                return;
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self.members.iter().map(EtcdMember::log_tail).collect();
                panic!("the etcd cluster did not become healthy within {limit:?}:\n{}", logs.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl EtcdMember {
    fn start(&mut self) {
        let (initial_cluster, token) = self.initial_cluster.split_once('|').expect("cluster and token");
        let log = std::fs::File::create(&self.log).expect("member log");
        let state = if self.data_dir.join("member").exists() { "existing" } else { "new" };
        let child = Command::new("etcd")
            .args(["--name", &self.name, "--data-dir"])
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &self.client_url, "--advertise-client-urls", &self.client_url])
            .args(["--listen-peer-urls", &self.peer_url, "--initial-advertise-peer-urls", &self.peer_url])
            .args(["--initial-cluster", initial_cluster, "--initial-cluster-state", state, "--initial-cluster-token", token])
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000", "--logger", "zap", "--log-outputs", "stderr"])
            .args(["--listen-metrics-urls", &self.metrics_url])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting etcd");
        self.process = Some(child);
    }

    /// Kills the member (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a killed member again on its data directory.
    pub fn restart(&mut self) {
        assert!(self.process.is_none(), "member {} runs", self.name);
        self.start();
    }

    /// Whether the member answers a linearizable read now (its health endpoint, with a leader).
    pub fn answers(&self) -> bool {
        let Some(addr) = self.metrics_url.strip_prefix("http://") else { return false };
        http_get(addr, "/health").is_some_and(|body| body.contains("\"health\":\"true\""))
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!("--- {} ---\n{}", self.name, lines[lines.len().saturating_sub(20)..].join("\n"))
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            member.kill();
        }
    }
}

/// A plain HTTP/1.0 GET on loopback (etcd's `/health`); the body when it answered.
fn http_get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}
