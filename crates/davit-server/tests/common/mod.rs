//! The in-process test server shared by the server's API tests: a real server on a temp redb store,
//! with fake nodes registered over HTTP (no agent), whose heartbeats never run out.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use davit_api::objects::{DriverInfo, Node, NodeResources};
use davit_server::{LivenessConfig, ServerConfig, ServerHandle};
use davit_store::RedbStore;
use serde_json::Value;

pub struct TestServer {
    _dir: tempfile::TempDir,
    /// The store, to know when a stopped server's last task let go of it.
    store: std::sync::Weak<RedbStore>,
    handle: Option<ServerHandle>,
    pub base: String,
    pub http: reqwest::Client,
    acl_enabled: bool,
}

pub async fn start() -> TestServer {
    start_in(tempfile::tempdir().unwrap()).await
}

/// A server that checks tokens (`--acl`), with its audit log at `<dir>/audit.log`.
pub async fn start_acl() -> TestServer {
    start_with(tempfile::tempdir().unwrap(), true).await
}

/// A server on the store in `dir` (a new one, or the one a stopped server left).
async fn start_in(dir: tempfile::TempDir) -> TestServer {
    start_with(dir, false).await
}

async fn start_with(dir: tempfile::TempDir, acl_enabled: bool) -> TestServer {
    start_configured(dir, acl_enabled, |_| {}).await
}

/// A server whose configuration `configure` adjusts first.
pub async fn start_configured(dir: tempfile::TempDir, acl_enabled: bool, configure: impl FnOnce(&mut ServerConfig)) -> TestServer {
    // The last store handle of a stopped server may still be closing the file (its drop joins the writer).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let store = loop {
        match RedbStore::open(&dir.path().join("state.redb")) {
            Ok(store) => break Arc::new(store),
            Err(_) if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(error) => panic!("opening the store: {error}"),
        }
    };
    let weak_store = Arc::downgrade(&store);
    let mut config = ServerConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        store,
        workers: 2,
        // Fake nodes never heartbeat: never mark them down.
        liveness: LivenessConfig { phi_threshold: f64::INFINITY, max_ttl: Duration::from_secs(600), ..Default::default() },
        scheduler: Default::default(),
        acl_enabled,
        audit_log: Some(dir.path().join("audit.log")),
        keyring: Some(dir.path().join("keyring.json")),
        tls: None,
        spec_limits: Default::default(),
        gc: Default::default(),
        admission: Default::default(),
        autoscaler: Default::default(),
        role: Default::default(),
        audit_reads: false,
    };
    configure(&mut config);
    let handle = davit_server::start(config).await.unwrap();
    let base = format!("http://{}", handle.addr());
    TestServer { _dir: dir, store: weak_store, handle: Some(handle), base, http: reqwest::Client::new(), acl_enabled }
}

impl TestServer {
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    pub async fn request(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        self.request_as(None, method, path, body).await
    }

    /// A request with the token secret `token` (none: no token header).
    pub async fn request_as(&self, token: Option<&str>, method: &str, path: &str, body: &str) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let mut request = match method {
            "GET" => self.http.get(url),
            "POST" => self.http.post(url),
            "PUT" => self.http.put(url),
            "DELETE" => self.http.delete(url),
            other => panic!("method {other}"),
        };
        if let Some(token) = token {
            request = request.header("x-davit-token", token);
        }
        let response = request.body(body.to_string()).send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// The value of an unlabelled sample of `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let (status, text) = self.request("GET", "/metrics", "").await;
        assert_eq!(status, 200, "{text}");
        let text = text.as_str().expect("metrics are text").to_string();
        let line = text.lines().find(|line| line.split_once(' ').is_some_and(|(sample, _)| sample == name));
        line.and_then(|line| line.split_once(' ')?.1.trim().parse().ok()).unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
    }

    pub async fn index(&self) -> u64 {
        self.request("GET", "/v1/status", "").await.1["index"].as_u64().unwrap()
    }

    pub fn handle(&self) -> &ServerHandle {
        self.handle.as_ref().expect("a running server")
    }

    pub async fn shutdown(mut self) {
        self.handle.take().unwrap().shutdown().await;
    }

    /// Stops the server and starts a new one on the same store (on a new port).
    pub async fn restart(mut self) -> TestServer {
        self.handle.take().unwrap().shutdown().await;
        // Tasks that end after the shutdown returns (connections, watchers) may hold the store a moment
        // longer; redb opens a file once per process.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.store.strong_count() > 0 {
            assert!(tokio::time::Instant::now() < deadline, "the stopped server still holds its store");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        start_with(self._dir, self.acl_enabled).await
    }
}

/// A ready, eligible node with 2000 millicores, `memory` MiB and a healthy exec driver.
pub fn node(id: &str, memory: u64) -> Node {
    Node {
        name: format!("node-{id}"),
        attributes: BTreeMap::from([("arch".to_string(), "x86_64".to_string())]),
        resources: NodeResources { cpu: 2000, memory, port_range: (20000, 20100), reserved_ports: vec![] },
        drivers: BTreeMap::from([("exec".to_string(), DriverInfo { detected: true, healthy: true, ..Default::default() })]),
        http_addr: "http://127.0.0.1:1".to_string(),
        ..davit_api::testing::node(id)
    }
}

/// Follows `/v1/job/{name}/status` with blocking queries until `done` holds (bounded).
pub async fn wait_status(server: &TestServer, name: &str, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    wait_status_in(server, "default", name, done).await
}

/// [`wait_status`] for a job of `namespace`.
pub async fn wait_status_in(
    server: &TestServer,
    namespace: &str,
    name: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut index = 0u64;
    loop {
        let url = format!("{}/v1/job/{name}/status?namespace={namespace}&index={index}&wait=2s", server.base);
        let response = server.http.get(url).send().await.unwrap();
        index = response.headers().get("x-davit-index").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0);
        let status: serde_json::Value = response.json().await.unwrap();
        if done(&status) {
            return status;
        }
        assert!(tokio::time::Instant::now() < deadline, "job {namespace}/{name} never reached the expected state: {status:#}");
    }
}

/// Polls `check` until it holds; panics naming `what` after 30 s.
pub async fn wait_until<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
