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
