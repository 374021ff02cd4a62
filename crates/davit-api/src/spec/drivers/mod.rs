//! The `config:` block of each task driver, defined once: the spec validator checks it at `file:line:col`
//! and the drivers parse what the agent hands them with the same types and the same rules.
//!
//! A driver config type says what serde cannot ([`DriverConfig::problems`]: empty values, exclusive
//! fields, paths); relations to the rest of the spec (port labels of the group) stay in the validator.

mod container;
mod exec;
mod vm;

use std::fmt;

pub use container::{CAPABILITIES, ContainerConfig, ContainerMount};
pub use exec::{ExecConfig, Isolation};
pub use vm::{Accel, Console, DiskFormat, Machine, VmCloudInit, VmConfig, VmDisk, parse_checksum};

/// Something wrong with a driver config that its type alone does not rule out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Where, relative to `config`: `image`, `cap_add[1]`, `disk.checksum`; empty for the config itself.
    pub field: String,
    pub message: String,
    pub hint: Option<String>,
}

impl ConfigProblem {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> ConfigProblem {
        ConfigProblem { field: field.into(), message: message.into(), hint: None }
    }

    pub(crate) fn hint(mut self, hint: impl Into<String>) -> ConfigProblem {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}

/// The `config:` block of one driver.
pub trait DriverConfig: serde::de::DeserializeOwned {
    /// The driver's name in specs.
    const DRIVER: &'static str;
    /// The field a config cannot do without, named when it is missing.
    const REQUIRED: &'static str;
    /// A config to show in hints.
    const EXAMPLE: &'static str;

    /// What is wrong beyond what deserializing rejects; empty when the config is good.
    fn problems(&self) -> Vec<ConfigProblem>;

    /// Parses the config a driver receives (JSON, already interpolated) and checks it: the first thing
    /// wrong, as one line.
    fn parse(value: &serde_json::Value) -> Result<Self, String> {
        let config: Self = serde_json::from_value(value.clone()).map_err(|error| error.to_string())?;
        match config.problems().into_iter().next() {
            Some(problem) => Err(problem.to_string()),
            None => Ok(config),
        }
    }
}

/// A relative path that stays inside the task directory: no `/` in front, no empty, `.` or `..` part.
pub fn inside_task_dir(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= 256
        && !path.starts_with('/')
        && path.split('/').all(|part| !part.is_empty() && part != "." && part != "..")
}
