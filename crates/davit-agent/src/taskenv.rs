//! A task's view of its allocation: `${…}` interpolation in driver config and env values, and the
//! `DAVIT_*` environment. Pure: paths and node facts are passed in.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use davit_api::objects::Allocation;
use davit_api::spec::TaskSpec;

use crate::fingerprint::NodeIdentity;

/// `PATH` given to tasks that do not set one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What `${…}` variables and `DAVIT_*` variables are made of.
pub struct TaskEnvContext<'a> {
    pub alloc: &'a Allocation,
    pub task: &'a TaskSpec,
    pub node: &'a NodeIdentity,
    /// `<data_dir>/allocs/<alloc_id>`.
    pub alloc_dir: &'a Path,
    /// `<alloc_dir>/<task>`.
    pub task_dir: &'a Path,
    /// The IP of the agent's proxy listeners, where the task's `upstreams` are reached; `None` when the
    /// agent runs no service proxy (then the task gets no `DAVIT_UPSTREAM_*` variables).
    pub upstream_ip: Option<IpAddr>,
}

impl TaskEnvContext<'_> {
    /// The value of one variable (the text between `${` and `}`), if it is known.
    pub fn lookup(&self, key: &str) -> Option<String> {
        let alloc = self.alloc;
        let value = match key {
            "alloc.id" => alloc.id.clone(),
            "alloc.index" => alloc.index.to_string(),
            "alloc.name" => alloc.name.clone(),
            "job.name" => alloc.job_name.clone(),
            "group.name" => alloc.group.clone(),
            "task.name" => self.task.name.clone(),
            "node.id" => self.node.id.clone(),
            "node.name" => self.node.name.clone(),
            "node.datacenter" => self.node.datacenter.clone(),
            "node.class" => self.node.class.clone(),
            _ => {
                if let Some(service) = key.strip_prefix("upstream.") {
                    return self.upstream_addr(service).map(|addr| addr.to_string());
                }
                if let Some(label) = key.strip_prefix("port.") {
                    return alloc.resources.ports.iter().find(|port| port.label == label).map(|port| port.value.to_string());
                }
                let attribute = key.strip_prefix("attr.").or_else(|| key.strip_prefix("node."))?;
                return self.node.attributes.get(attribute).cloned();
            }
        };
        Some(value)
    }

    /// Where the task reaches the upstream `service` (`<proxy ip>:<local_port>`).
    pub fn upstream_addr(&self, service: &str) -> Option<SocketAddr> {
        let ip = self.upstream_ip?;
        self.task.upstreams.iter().find(|upstream| upstream.service == service).map(|upstream| SocketAddr::new(ip, upstream.local_port))
    }

    /// Replaces every known `${…}` in `text`; unknown variables stay as written.
    pub fn interpolate(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            match after.find('}') {
                Some(end) => {
                    let key = after[..end].trim();
                    match self.lookup(key) {
                        Some(value) => out.push_str(&value),
                        None => out.push_str(&rest[start..start + 2 + end + 1]),
                    }
                    rest = &after[end + 1..];
                }
                None => {
                    out.push_str(&rest[start..]);
                    rest = "";
                }
            }
        }
        out.push_str(rest);
        out
    }

    /// Interpolates every string in a JSON value (object keys stay as they are).
    pub fn interpolate_json(&self, value: &serde_json::Value) -> serde_json::Value {
        match value {
            serde_json::Value::String(text) => serde_json::Value::String(self.interpolate(text)),
            serde_json::Value::Array(items) => serde_json::Value::Array(items.iter().map(|item| self.interpolate_json(item)).collect()),
            serde_json::Value::Object(map) => {
                serde_json::Value::Object(map.iter().map(|(key, item)| (key.clone(), self.interpolate_json(item))).collect())
            }
            other => other.clone(),
        }
    }

    /// The task's environment: its own `env` and `secret_env` (interpolated), then the `DAVIT_*` variables (which win:
    /// also `DAVIT_UPSTREAM_<SERVICE>_ADDR` and `_PORT` per upstream, the service name upper-cased with
    /// '-' as '_'), and a default `PATH` if the task set none.
    pub fn build_env(&self) -> BTreeMap<String, String> {
        let mut env: BTreeMap<String, String> =
            self.task.env.iter().chain(&self.task.secret_env).map(|(key, value)| (key.clone(), self.interpolate(value))).collect();
        let alloc = self.alloc;
        let davit = [
            ("DAVIT_ALLOC_ID", alloc.id.clone()),
            ("DAVIT_ALLOC_INDEX", alloc.index.to_string()),
            ("DAVIT_ALLOC_NAME", alloc.name.clone()),
            ("DAVIT_JOB_NAME", alloc.job_name.clone()),
            ("DAVIT_GROUP_NAME", alloc.group.clone()),
            ("DAVIT_TASK_NAME", self.task.name.clone()),
            ("DAVIT_ALLOC_DIR", self.alloc_dir.display().to_string()),
            ("DAVIT_TASK_DIR", self.task_dir.display().to_string()),
            ("DAVIT_NODE_ID", self.node.id.clone()),
            ("DAVIT_CPU_LIMIT", self.task.resources.cpu.to_string()),
            ("DAVIT_MEMORY_LIMIT", self.task.resources.memory.to_string()),
        ];
        for (key, value) in davit {
            env.insert(key.to_string(), value);
        }
        for port in &alloc.resources.ports {
            let label = env_name_part(&port.label);
            env.insert(format!("DAVIT_PORT_{label}"), port.to.to_string());
            env.insert(format!("DAVIT_HOST_PORT_{label}"), port.value.to_string());
            env.insert(format!("DAVIT_ADDR_{label}"), format!("127.0.0.1:{}", port.value));
        }
        for upstream in &self.task.upstreams {
            if let Some(addr) = self.upstream_addr(&upstream.service) {
                let name = env_name_part(&upstream.service).to_ascii_uppercase();
                env.insert(format!("DAVIT_UPSTREAM_{name}_ADDR"), addr.to_string());
                env.insert(format!("DAVIT_UPSTREAM_{name}_PORT"), addr.port().to_string());
            }
        }
        // A container's PATH comes from its image unless the task sets one.
        if self.task.driver != davit_api::spec::DriverName::Container {
            env.entry("PATH".to_string()).or_insert_with(|| DEFAULT_PATH.to_string());
        }
        env
    }
}

/// A port label as part of a variable name: characters other than letters, digits and `_` become `_`.
fn env_name_part(label: &str) -> String {
    label.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use davit_api::objects::{AllocatedResources, AssignedPort, ClientStatus};

    use super::*;

    fn alloc() -> Allocation {
        Allocation {
            job_version: 3,
            node_name: "box".to_string(),
            eval_id: "e1".to_string(),
            client_status: ClientStatus::Pending,
            resources: AllocatedResources {
                cpu: 500,
                memory: 256,
                ports: vec![
                    AssignedPort { label: "http".to_string(), value: 23456, to: 8080 },
                    AssignedPort { label: "admin-ui".to_string(), value: 23457, to: 23457 },
                ],
            },
            ..davit_api::testing::alloc("a1b2", "shop", "web", 2, "n1")
        }
    }

    fn task(env: &[(&str, &str)]) -> TaskSpec {
        serde_json::from_value(serde_json::json!({
            "name": "app",
            "driver": "exec",
            "config": {"command": "/bin/app"},
            "env": env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
            "resources": {"cpu": 250, "memory": 128},
        }))
        .unwrap()
    }

    fn node() -> NodeIdentity {
        NodeIdentity {
            id: "node-1".to_string(),
            name: "box".to_string(),
            datacenter: "dc1".to_string(),
            class: "fast".to_string(),
            attributes: BTreeMap::from([("arch".to_string(), "x86_64".to_string()), ("zone".to_string(), "a".to_string())]),
        }
    }

    fn check(text: &str, expected: &str) {
        let (alloc, task, node) = (alloc(), task(&[]), node());
        let (alloc_dir, task_dir) = (PathBuf::from("/d/allocs/a1b2"), PathBuf::from("/d/allocs/a1b2/app"));
        let context =
            TaskEnvContext { alloc: &alloc, task: &task, node: &node, alloc_dir: &alloc_dir, task_dir: &task_dir, upstream_ip: None };
        assert_eq!(context.interpolate(text), expected, "{text}");
    }

    #[test]
    fn interpolation() {
        check("--port=${port.http}", "--port=23456");
        check("${alloc.id} ${alloc.index} ${alloc.name}", "a1b2 2 shop.web[2]");
        check("${job.name}/${group.name}/${task.name}", "shop/web/app");
        check("${node.id} ${node.name} ${node.datacenter} ${node.class}", "node-1 box dc1 fast");
        check("${attr.arch}-${node.zone}", "x86_64-a");
        check("${ port.http }", "23456");
        check("keep ${unknown.thing} and ${port.nope}", "keep ${unknown.thing} and ${port.nope}");
        check("unterminated ${port.http", "unterminated ${port.http");
        check("$${port.http}", "$23456");
        check("no variables", "no variables");
    }

    #[test]
    fn interpolation_walks_json() {
        let (alloc, task, node) = (alloc(), task(&[]), node());
        let (alloc_dir, task_dir) = (PathBuf::from("/d"), PathBuf::from("/d/app"));
        let context =
            TaskEnvContext { alloc: &alloc, task: &task, node: &node, alloc_dir: &alloc_dir, task_dir: &task_dir, upstream_ip: None };
        let config = serde_json::json!({"command": "/bin/${task.name}", "args": ["--port", "${port.http}", 3, {"${job.name}": "${alloc.index}"}], "flag": true});
        let expected = serde_json::json!({"command": "/bin/app", "args": ["--port", "23456", 3, {"${job.name}": "2"}], "flag": true});
        assert_eq!(context.interpolate_json(&config), expected);
    }

    #[test]
    fn environment() {
        let (alloc, node) = (alloc(), node());
        let task = task(&[("MODE", "prod"), ("LISTEN", "0.0.0.0:${port.http}"), ("DAVIT_TASK_NAME", "mine")]);
        let (alloc_dir, task_dir) = (PathBuf::from("/d/allocs/a1b2"), PathBuf::from("/d/allocs/a1b2/app"));
        let context =
            TaskEnvContext { alloc: &alloc, task: &task, node: &node, alloc_dir: &alloc_dir, task_dir: &task_dir, upstream_ip: None };
        let env = context.build_env();
        let expected = [
            ("DAVIT_ADDR_admin_ui", "127.0.0.1:23457"),
            ("DAVIT_ADDR_http", "127.0.0.1:23456"),
            ("DAVIT_ALLOC_DIR", "/d/allocs/a1b2"),
            ("DAVIT_ALLOC_ID", "a1b2"),
            ("DAVIT_ALLOC_INDEX", "2"),
            ("DAVIT_ALLOC_NAME", "shop.web[2]"),
            ("DAVIT_CPU_LIMIT", "250"),
            ("DAVIT_GROUP_NAME", "web"),
            ("DAVIT_HOST_PORT_admin_ui", "23457"),
            ("DAVIT_HOST_PORT_http", "23456"),
            ("DAVIT_JOB_NAME", "shop"),
            ("DAVIT_MEMORY_LIMIT", "128"),
            ("DAVIT_NODE_ID", "node-1"),
            ("DAVIT_PORT_admin_ui", "23457"),
            ("DAVIT_PORT_http", "8080"),
            ("DAVIT_TASK_DIR", "/d/allocs/a1b2/app"),
            ("DAVIT_TASK_NAME", "app"),
            ("LISTEN", "0.0.0.0:23456"),
            ("MODE", "prod"),
            ("PATH", DEFAULT_PATH),
        ];
        let expected: BTreeMap<String, String> = expected.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(env, expected);

        let task = task_with_path();
        let context =
            TaskEnvContext { alloc: &alloc, task: &task, node: &node, alloc_dir: &alloc_dir, task_dir: &task_dir, upstream_ip: None };
        assert_eq!(context.build_env()["PATH"], "/opt/bin");
    }

    #[test]
    fn upstreams_become_addresses() {
        let (alloc, node) = (alloc(), node());
        let mut task = task(&[("API", "http://${upstream.user-api}/v1")]);
        task.upstreams = vec![davit_api::spec::UpstreamSpec { service: "user-api".to_string(), local_port: 9000 }];
        let (alloc_dir, task_dir) = (PathBuf::from("/d"), PathBuf::from("/d/app"));
        let context = TaskEnvContext {
            alloc: &alloc,
            task: &task,
            node: &node,
            alloc_dir: &alloc_dir,
            task_dir: &task_dir,
            upstream_ip: Some(IpAddr::from([127, 0, 0, 1])),
        };
        let env = context.build_env();
        assert_eq!(env["DAVIT_UPSTREAM_USER_API_ADDR"], "127.0.0.1:9000");
        assert_eq!(env["DAVIT_UPSTREAM_USER_API_PORT"], "9000");
        assert_eq!(env["API"], "http://127.0.0.1:9000/v1");
        // Without a service proxy there is nothing to reach: no variables, and `${upstream.…}` stays.
        let context = TaskEnvContext { upstream_ip: None, ..context };
        let env = context.build_env();
        assert!(!env.contains_key("DAVIT_UPSTREAM_USER_API_ADDR"), "{env:?}");
        assert_eq!(env["API"], "http://${upstream.user-api}/v1");
    }

    fn task_with_path() -> TaskSpec {
        task(&[("PATH", "/opt/bin")])
    }
}
