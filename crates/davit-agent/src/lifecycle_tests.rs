//! Allocation and task lifecycle against an in-process fake driver. No server: allocations are given as
//! local state (with their group spec), as after an agent restart; status updates just queue up.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use davit_api::objects::{AllocatedResources, Allocation, ClientStatus, DesiredStatus, TaskState, TaskStatus};
use davit_api::spec::{GroupSpec, JobType};
use davit_drivers::{
    BoxFuture, Driver, DriverError, ExitResult, Fingerprint, LogRotation, TaskConfig, TaskHandle, TaskRunState, TaskStats,
};
use tokio::sync::watch;

use crate::alloc_runner::AllocRunner;
use crate::fingerprint::NodeIdentity;
use crate::servers::ServerPool;
use crate::state::PersistedAlloc;
use crate::status::Updater;
use crate::{AgentContext, state};

#[derive(Default)]
struct FakeDriver {
    inner: Mutex<FakeInner>,
}

#[derive(Default)]
struct FakeInner {
    next_pid: u32,
    exits: HashMap<u32, watch::Sender<Option<ExitResult>>>,
    started: Vec<TaskConfig>,
    /// Pids whose tasks died while "the agent was down", with how.
    gone: HashMap<u32, ExitResult>,
    stopped: Vec<(u32, String)>,
    /// Pids re-attached to.
    recovered: Vec<u32>,
}

impl FakeDriver {
    fn channel(&self, pid: u32) -> watch::Receiver<Option<ExitResult>> {
        let mut inner = self.inner.lock().unwrap();
        inner.exits.entry(pid).or_insert_with(|| watch::channel(None).0).subscribe()
    }

    fn exit(&self, pid: u32, code: i32) {
        let sender = self.inner.lock().unwrap().exits.get(&pid).expect("known pid").clone();
        sender.send_replace(Some(ExitResult { exit_code: Some(code), signal: None, oom_killed: false }));
    }

    fn started(&self) -> Vec<TaskConfig> {
        self.inner.lock().unwrap().started.clone()
    }
}

impl Driver for FakeDriver {
    fn name(&self) -> &'static str {
        "exec"
    }
    fn fingerprint(&self) -> BoxFuture<'_, Fingerprint> {
        Box::pin(async { Fingerprint { detected: true, healthy: true, ..Fingerprint::default() } })
    }
    fn start<'a>(&'a self, config: &'a TaskConfig) -> BoxFuture<'a, Result<TaskHandle, DriverError>> {
        Box::pin(async move {
            let pid = {
                let mut inner = self.inner.lock().unwrap();
                inner.next_pid += 1;
                inner.started.push(config.clone());
                1000 + inner.next_pid
            };
            self.channel(pid);
            Ok(TaskHandle {
                driver: "exec".to_string(),
                alloc_id: config.alloc_id.clone(),
                task_name: config.task_name.clone(),
                pid,
                started_at_ms: 1,
                driver_state: serde_json::Value::Null,
            })
        })
    }
    fn wait<'a>(&'a self, handle: &'a TaskHandle) -> BoxFuture<'a, Result<ExitResult, DriverError>> {
        Box::pin(async move {
            if let Some(exit) = self.inner.lock().unwrap().gone.get(&handle.pid) {
                return Ok(exit.clone());
            }
            let mut exits = self.channel(handle.pid);
            let exit = exits.wait_for(|exit| exit.is_some()).await.map_err(|_| DriverError::Other("closed".to_string()))?;
            Ok(exit.clone().expect("some"))
        })
    }
    fn stop<'a>(&'a self, handle: &'a TaskHandle, signal: &'a str, _timeout: Duration) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            self.channel(handle.pid);
            let sender = {
                let mut inner = self.inner.lock().unwrap();
                inner.stopped.push((handle.pid, signal.to_string()));
                inner.exits[&handle.pid].clone()
            };
            sender.send_replace(Some(ExitResult { exit_code: None, signal: Some(15), oom_killed: false }));
            Ok(())
        })
    }
    fn destroy<'a>(&'a self, _handle: &'a TaskHandle) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async { Ok(()) })
    }
    fn inspect<'a>(&'a self, _handle: &'a TaskHandle) -> BoxFuture<'a, Result<TaskRunState, DriverError>> {
        Box::pin(async { Ok(TaskRunState::Running) })
    }
    fn recover<'a>(&'a self, handle: &'a TaskHandle) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            if self.inner.lock().unwrap().gone.contains_key(&handle.pid) {
                return Err(DriverError::TaskGone { pid: handle.pid });
            }
            self.channel(handle.pid);
            self.inner.lock().unwrap().recovered.push(handle.pid);
            Ok(())
        })
    }
    fn exec_command<'a>(
        &'a self,
        _handle: &'a TaskHandle,
        _command: &'a [String],
        _env: &'a BTreeMap<String, String>,
    ) -> BoxFuture<'a, Result<tokio::process::Command, DriverError>> {
        Box::pin(async { Err(DriverError::Unsupported("not supported".to_string())) })
    }
    fn stats<'a>(&'a self, _handle: &'a TaskHandle) -> BoxFuture<'a, Result<TaskStats, DriverError>> {
        Box::pin(async { Ok(TaskStats::default()) })
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    context: Arc<AgentContext>,
    driver: Arc<FakeDriver>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let driver = Arc::new(FakeDriver::default());
    let servers = ServerPool::new(&["http://127.0.0.1:9".to_string()], None, None, None);
    let context = Arc::new(AgentContext {
        node: NodeIdentity {
            id: "node-1".to_string(),
            name: "box".to_string(),
            datacenter: "dc1".to_string(),
            class: String::new(),
            attributes: BTreeMap::new(),
        },
        data_dir: dir.path().to_path_buf(),
        drivers: BTreeMap::from([("exec".to_string(), driver.clone() as Arc<dyn Driver>)]),
        servers: servers.clone(),
        updater: Updater::new("node-1".to_string(), servers),
        log_rotation: LogRotation::default(),
        advertise_host: "127.0.0.1".to_string(),
        port_range: (20000, 20100),
        specs: Mutex::new(HashMap::new()),
        runners: Mutex::new(BTreeMap::new()),
        service_proxy: None,
        local_services: tokio::sync::watch::channel(0).0,
        acl: crate::acl::AgentAcl::new(false),
        tls: None,
        cluster: crate::cluster::ClusterId::load(dir.path()).unwrap(),
        loop_restarts: Arc::default(),
        destroyed: Mutex::new(HashSet::new()),
    });
    Fixture { _dir: dir, context, driver }
}

fn group(tasks: &[&str], restart: serde_json::Value) -> GroupSpec {
    let tasks: Vec<serde_json::Value> = tasks
        .iter()
        .map(|name| serde_json::json!({"name": name, "driver": "exec", "config": {"command": "/bin/true", "args": ["${task.name}"]}}))
        .collect();
    serde_json::from_value(serde_json::json!({"name": "g", "restart": restart, "tasks": tasks})).unwrap()
}

fn persisted(job_type: JobType, group: GroupSpec) -> PersistedAlloc {
    let alloc = Allocation {
        node_name: "box".to_string(),
        client_status: ClientStatus::Pending,
        resources: AllocatedResources::default(),
        ..davit_api::testing::alloc("alloc-1", "job", "g", 0, "node-1")
    };
    let task_states = group.tasks.iter().map(|task| (task.name.clone(), TaskState::default())).collect();
    PersistedAlloc {
        alloc,
        job_type: Some(job_type),
        group: Some(group),
        task_states,
        handles: BTreeMap::new(),
        restart_trackers: BTreeMap::new(),
        stop_requested: false,
        failure: None,
        migration_listen: BTreeMap::new(),
        migration_progress: None,
        deployment_health: None,
    }
}

/// Polls until `condition` holds on the allocation's state (or fails after 5 s).
async fn until(runner: &AllocRunner, what: &str, condition: impl Fn(&PersistedAlloc) -> bool) {
    for _ in 0..500 {
        if runner.shared_state(|state| condition(state)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}: {:#?}", runner.shared_state(|state| state.task_states.clone()));
}

fn kinds(state: &PersistedAlloc, task: &str) -> Vec<String> {
    state.task_states[task].events.iter().map(|event| event.kind.clone()).collect()
}

fn running(state: &PersistedAlloc, task: &str) -> bool {
    state.task_states[task].state == TaskStatus::Running
}

#[tokio::test]
async fn service_task_restarts_then_fails() {
    let fixture = fixture();
    let restart = serde_json::json!({"attempts": 1, "interval": "1h", "delay": "0", "mode": "fail"});
    let runner = AllocRunner::restore(fixture.context.clone(), persisted(JobType::Service, group(&["web"], restart)));
    until(&runner, "first start", |state| running(state, "web")).await;
    let first = fixture.driver.started()[0].clone();
    assert_eq!(first.driver_config, serde_json::json!({"command": "/bin/true", "args": ["web"]}));
    assert_eq!(first.env["DAVIT_TASK_NAME"], "web");
    assert_eq!(first.task_dir, fixture.context.alloc_dir("alloc-1").join("web"));
    assert!(first.task_dir.join("local").is_dir());

    fixture.driver.exit(1001, 0);
    until(&runner, "restart", |state| state.task_states["web"].restarts == 1 && running(state, "web")).await;
    fixture.driver.exit(1002, 3);
    runner.wait_finished().await;
    let state = runner.shared_state(|state| state.clone());
    assert_eq!(kinds(&state, "web"), ["Task Setup", "Started", "Terminated", "Restarting", "Started", "Terminated", "Not Restarting"]);
    let web = &state.task_states["web"];
    assert_eq!((web.state, web.failed, web.restarts), (TaskStatus::Dead, true, 1));
    assert_eq!(web.events[5].exit_code, Some(3));
    assert_eq!(web.events[6].message, "exceeded 1 restarts in 1h");
    assert_eq!(runner.client_status(), ClientStatus::Failed);
    assert!(state.handles.is_empty());
    // The state on disk is the final one.
    assert_eq!(state::load(&fixture.context.alloc_dir("alloc-1")).unwrap(), state);
}

#[tokio::test]
async fn batch_success_completes_and_sibling_failure_kills() {
    let fixture = fixture();
    let restart = serde_json::json!({"attempts": 0, "interval": "1h", "delay": "0", "mode": "fail"});
    let runner = AllocRunner::restore(fixture.context.clone(), persisted(JobType::Batch, group(&["a", "b", "c"], restart)));
    until(&runner, "all running", |state| ["a", "b", "c"].iter().all(|task| running(state, task))).await;
    assert_eq!(runner.client_status(), ClientStatus::Running);
    let pid = |task: &str| runner.shared_state(|state| state.task_states[task].pid.unwrap());
    fixture.driver.exit(pid("a"), 0);
    until(&runner, "a done", |state| state.task_states["a"].state == TaskStatus::Dead).await;
    assert_eq!(runner.client_status(), ClientStatus::Running);
    fixture.driver.exit(pid("b"), 1);
    runner.wait_finished().await;
    let state = runner.shared_state(|state| state.clone());
    assert_eq!(kinds(&state, "a")[2..], ["Terminated", "Not Restarting"]);
    assert_eq!(state.task_states["a"].events[3].message, "batch task completed successfully");
    assert!(!state.task_states["a"].failed);
    assert!(state.task_states["b"].failed);
    assert_eq!(kinds(&state, "c")[2..], ["Sibling Task Failed", "Killing", "Killed"]);
    assert!(!state.task_states["c"].failed);
    assert_eq!(runner.client_status(), ClientStatus::Failed);
}

#[tokio::test]
async fn reattach_keeps_running_tasks_and_stop_kills_them() {
    let fixture = fixture();
    let restart = serde_json::json!({"attempts": 2, "interval": "1h", "delay": "0", "mode": "fail"});
    let mut state = persisted(JobType::Service, group(&["web", "db"], restart));
    for (task, pid) in [("web", 500), ("db", 501)] {
        let task_state = state.task_states.get_mut(task).unwrap();
        task_state.state = TaskStatus::Running;
        task_state.pid = Some(pid);
        task_state.started_at = Some(1);
        state.handles.insert(
            task.to_string(),
            TaskHandle {
                driver: "exec".to_string(),
                alloc_id: "alloc-1".to_string(),
                task_name: task.to_string(),
                pid,
                started_at_ms: 1,
                driver_state: serde_json::Value::Null,
            },
        );
    }
    // db died while the agent was down.
    fixture.driver.inner.lock().unwrap().gone.insert(501, ExitResult { exit_code: Some(2), signal: None, oom_killed: false });
    let runner = AllocRunner::restore(fixture.context.clone(), state);
    until(&runner, "db restarted", |state| state.task_states["db"].restarts == 1 && running(state, "db")).await;
    let state = runner.shared_state(|state| state.clone());
    assert_eq!(state.task_states["web"].pid, Some(500));
    assert!(kinds(&state, "web").is_empty(), "no new events for a re-attached task");
    assert_eq!(kinds(&state, "db"), ["Terminated", "Restarting", "Started"]);
    assert!(state.task_states["db"].events[0].message.contains("while the agent was not running"));
    assert_eq!(fixture.driver.started().len(), 1, "only db was started again");

    runner.update(&Allocation { job_version: 7, ..state.alloc.clone() });
    until(&runner, "in-place update", |state| state.alloc.job_version == 7).await;
    assert_eq!(fixture.driver.started().len(), 1, "an in-place update restarts nothing");

    runner.update(&Allocation { desired_status: DesiredStatus::Stop, job_version: 7, ..state.alloc.clone() });
    runner.wait_finished().await;
    let state = runner.shared_state(|state| state.clone());
    assert_eq!(kinds(&state, "web"), ["Killing", "Killed"]);
    assert_eq!(state.task_states["web"].events[0].message, "sending SIGTERM, timeout 5s");
    assert!(state.stop_requested);
    assert_eq!(runner.client_status(), ClientStatus::Complete);
    assert_eq!(fixture.driver.inner.lock().unwrap().stopped.len(), 2);

    runner.destroy().await;
    assert!(!fixture.context.alloc_dir("alloc-1").exists());
}

#[tokio::test]
async fn restored_allocation_the_server_marked_lost_is_stopped() {
    // The agent was killed, the server marked its node down and the allocation lost (desired stop),
    // and placed a replacement elsewhere. The restarted agent re-attaches, then must stop the task.
    let fixture = fixture();
    let restart = serde_json::json!({"attempts": 2, "interval": "1h", "delay": "0", "mode": "fail"});
    let mut state = persisted(JobType::Service, group(&["web"], restart));
    let web = state.task_states.get_mut("web").unwrap();
    web.state = TaskStatus::Running;
    web.pid = Some(700);
    web.started_at = Some(1);
    state.handles.insert(
        "web".to_string(),
        TaskHandle {
            driver: "exec".to_string(),
            alloc_id: "alloc-1".to_string(),
            task_name: "web".to_string(),
            pid: 700,
            started_at_ms: 1,
            driver_state: serde_json::Value::Null,
        },
    );
    state::save(&fixture.context.alloc_dir("alloc-1"), &state).unwrap();

    crate::watcher::restore(&fixture.context);
    let runner = fixture.context.runners.lock().unwrap().get("alloc-1").cloned().expect("restored from local state");
    until(&runner, "re-attached", |state| running(state, "web") && state.task_states["web"].pid == Some(700)).await;

    let lost = Allocation {
        desired_status: DesiredStatus::Stop,
        desired_description: "node down".to_string(),
        client_status: ClientStatus::Lost,
        client_description: "node down".to_string(),
        ..state.alloc.clone()
    };
    crate::watcher::reconcile(&fixture.context, std::slice::from_ref(&lost));
    runner.wait_finished().await;
    let inner = fixture.driver.inner.lock().unwrap();
    assert_eq!(inner.stopped, [(700, "SIGTERM".to_string())]);
    assert!(inner.started.is_empty(), "nothing was started again");
    drop(inner);
    let state = runner.shared_state(|state| state.clone());
    assert!(state.stop_requested);
    assert_eq!(state.task_states["web"].state, TaskStatus::Dead);
    assert_eq!(runner.client_status(), ClientStatus::Complete);
    // A second listing of the same allocation starts nothing.
    crate::watcher::reconcile(&fixture.context, &[lost]);
    assert!(fixture.driver.started().is_empty());
}

#[tokio::test]
async fn detach_leaves_tasks_running() {
    let fixture = fixture();
    let restart = serde_json::json!({"attempts": 2, "interval": "1h", "delay": "0", "mode": "fail"});
    let runner = AllocRunner::restore(fixture.context.clone(), persisted(JobType::Service, group(&["web"], restart)));
    until(&runner, "running", |state| running(state, "web")).await;
    runner.detach();
    runner.wait_finished().await;
    assert!(fixture.driver.inner.lock().unwrap().stopped.is_empty());
    let on_disk = state::load(&fixture.context.alloc_dir("alloc-1")).unwrap();
    assert_eq!(on_disk.handles["web"].pid, 1001);
    assert!(running(&on_disk, "web"));

    // A new runner from the same state re-attaches: nothing is started again.
    let again = AllocRunner::restore(fixture.context.clone(), on_disk);
    for _ in 0..500 {
        if fixture.driver.inner.lock().unwrap().recovered.contains(&1001) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(fixture.driver.inner.lock().unwrap().recovered, [1001], "re-attached");
    assert_eq!(fixture.driver.started().len(), 1);
    assert_eq!(again.client_status(), ClientStatus::Running);
    again.stop();
    again.wait_finished().await;
    assert_eq!(again.client_status(), ClientStatus::Complete);
}

#[tokio::test]
async fn missing_driver_fails_the_task() {
    let fixture = fixture();
    let mut group = group(&["vm"], serde_json::json!({}));
    group.tasks[0].driver = davit_api::spec::DriverName::Vm;
    let runner = AllocRunner::restore(fixture.context.clone(), persisted(JobType::Service, group));
    runner.wait_finished().await;
    let state = runner.shared_state(|state| state.clone());
    assert_eq!(kinds(&state, "vm"), ["Driver Failure"]);
    assert_eq!(state.task_states["vm"].events[0].message, "driver vm is not available on this node");
    assert_eq!(runner.client_status(), ClientStatus::Failed);
}

/// One HTTP/1.1 GET against the agent API: (status, body).
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text[9..12].parse().unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_string() };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

#[tokio::test]
async fn agent_api_serves_health_and_logs() {
    let dir = tempfile::tempdir().unwrap();
    // Two allocations from an earlier run, whose tasks are done: nothing to start, nothing to re-attach.
    for (id, tasks) in [("alloc-1", vec!["web"]), ("alloc-2", vec!["web", "db"])] {
        let mut state = persisted(JobType::Batch, group(&tasks, serde_json::json!({})));
        state.alloc.id = id.to_string();
        for task_state in state.task_states.values_mut() {
            task_state.state = TaskStatus::Dead;
        }
        let alloc_dir = state::allocs_dir(dir.path()).join(id);
        state::save(&alloc_dir, &state).unwrap();
        std::fs::create_dir_all(alloc_dir.join(".logs")).unwrap();
        std::fs::write(alloc_dir.join(".logs/web.stdout.0"), "hello\n").unwrap();
        std::fs::write(alloc_dir.join(".logs/web.stdout.1"), "world\n").unwrap();
    }
    let mut config = crate::AgentConfig::new(dir.path().to_path_buf(), vec!["http://127.0.0.1:9".to_string()]);
    config.drivers = vec![Arc::new(FakeDriver::default())];
    let agent = crate::start(config).await.unwrap();
    let addr = agent.http_addr();
    assert_eq!(std::fs::read_to_string(dir.path().join("node-id")).unwrap().trim(), agent.node_id());

    let (status, body) = http_get(addr, "/v1/agent/health").await;
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap(), serde_json::json!({"ok": true, "node_id": agent.node_id()}));

    assert_eq!(http_get(addr, "/v1/agent/allocation/alloc-1/logs").await, (200, "hello\nworld\n".to_string()));
    assert_eq!(http_get(addr, "/v1/agent/allocation/alloc-1/logs?offset=-8&stream=stdout").await, (200, "o\nworld\n".to_string()));
    // Follow ends by itself: the allocation is terminal and no more data comes.
    assert_eq!(http_get(addr, "/v1/agent/allocation/alloc-1/logs?follow=true&offset=6").await, (200, "world\n".to_string()));
    assert_eq!(http_get(addr, "/v1/agent/allocation/alloc-1/logs?task=web&stream=stderr").await, (200, String::new()));

    let (status, body) = http_get(addr, "/v1/agent/allocation/alloc-2/logs").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("web, db"), "{body}");
    assert_eq!(http_get(addr, "/v1/agent/allocation/alloc-2/logs?task=web").await.0, 200);
    let (status, body) = http_get(addr, "/v1/agent/allocation/alloc-2/logs?task=nope").await;
    assert_eq!(status, 404);
    assert_eq!(serde_json::from_str::<davit_api::http::ApiError>(&body).unwrap().code, "not_found");
    assert_eq!(http_get(addr, "/v1/agent/allocation/unknown/logs").await.0, 404);
    assert_eq!(http_get(addr, "/v1/agent/allocation/alloc-1/logs?stream=stdin").await.0, 400);

    tokio::time::timeout(Duration::from_secs(10), agent.shutdown()).await.unwrap();
    // The local state stays for the next start.
    assert!(state::allocs_dir(dir.path()).join("alloc-1").join(state::STATE_FILE).is_file());
}
