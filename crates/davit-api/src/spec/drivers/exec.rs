//! `exec`: a command run directly on the node.

use serde::{Deserialize, Serialize};

use super::{ConfigProblem, DriverConfig};

/// `exec` driver settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecConfig {
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub isolation: Isolation,
}

/// What an exec task sees of the node's file system.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Its own mount namespace: the host read-only except its task directory, the allocation's shared
    /// `alloc/data` and a private `/tmp`.
    #[default]
    Mount,
    /// The host as the agent sees it (needs an agent started with `--allow-root-exec`).
    None,
}

fn is_default(isolation: &Isolation) -> bool {
    *isolation == Isolation::default()
}

impl DriverConfig for ExecConfig {
    const DRIVER: &'static str = "exec";
    const REQUIRED: &'static str = "command";
    const EXAMPLE: &'static str = "config: {command: /bin/sh, args: [-c, \"echo hello\"]}";

    fn problems(&self) -> Vec<ConfigProblem> {
        if self.command.trim().is_empty() {
            return vec![ConfigProblem::new("command", "config.command must not be empty").hint(format!("e.g. {}", Self::EXAMPLE))];
        }
        Vec::new()
    }
}
