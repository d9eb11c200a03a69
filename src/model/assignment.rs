//! Assignment payload (SPEC §3.2): `/assignments/<topology-id>`, written by nimbus or
//! `gale topology submit`, read by every agent.
//!
//! Decoding is lenient about unknown fields and strict about everything that becomes a path,
//! a process argument or a number the agent acts on: [`Assignment::validate`] rejects a
//! hostile or broken payload with an error naming the topology and the field, before any of
//! it is used. Which `{…}` is a placeholder, and which names exist, is
//! [`super::placeholders`].

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::ident::{self, IdentError};
use crate::model::placeholders::{PLACEHOLDERS, placeholders};
use crate::model::{self, MAX_PAYLOAD_BYTES, PayloadError, SCHEMA};

/// How the agent decides a worker is alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LivenessMode {
    /// Alive while the process runs.
    #[default]
    Process,
    /// The worker must also touch `$GALE_HEARTBEAT_FILE` at least every
    /// `heartbeat_timeout_secs / 3`; the first heartbeat must come within `start_timeout_secs`.
    Heartbeat,
}

/// How to start one worker of the topology. (A wire type only: the local state stores its own
/// copy, `local_state::stored`, so a field added here changes nothing on disk; it is simply not
/// persisted until a new state format stores it.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Launch {
    /// argv, never run through a shell; placeholders `{port}`, `{worker_id}`, `{topology_id}`,
    /// `{supervisor_id}`, `{worker_dir}`, `{blob:NAME}`.
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub liveness: LivenessMode,
    #[serde(default)]
    pub start_timeout_secs: Option<u64>,
    #[serde(default)]
    pub heartbeat_timeout_secs: Option<u64>,
    #[serde(default)]
    pub memory_mb: Option<u64>,
    #[serde(default)]
    pub cpu_percent: Option<u32>,
    #[serde(default)]
    pub user: Option<String>,
}

fn yes() -> bool {
    true
}

/// A blob the topology needs, made available under `name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    pub key: String,
    pub name: String,
    #[serde(default)]
    pub extract: bool,
    #[serde(default = "yes")]
    pub restart_on_update: bool,
}

/// One worker placement: this topology runs one worker on `port` of `supervisor_id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WorkerPlacement {
    pub supervisor_id: String,
    pub port: u16,
}

/// `/assignments/<topology-id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub schema: u32,
    pub topology_id: String,
    pub launch: Launch,
    #[serde(default)]
    pub blobs: Vec<BlobRef>,
    #[serde(default)]
    pub workers: Vec<WorkerPlacement>,
}

/// Bounds on what a worker's argv and environment may hold; far above any real topology and
/// far below what would make `execve` fail (E2BIG) or a payload near ZooKeeper's limit.
pub const MAX_ARGS: usize = 256;
pub const MAX_ARG_BYTES: usize = 4096;
pub const MAX_ENV: usize = 256;
pub const MAX_ENV_VALUE_BYTES: usize = 32 * 1024;

/// Why an assignment cannot be used. Every variant names the topology (or, when the id itself
/// is bad, where the payload came from) and the field.
#[derive(Debug, thiserror::Error)]
pub enum AssignmentError {
    /// Too large, not JSON, unknown schema: names the path.
    #[error(transparent)]
    Payload(#[from] PayloadError),
    #[error("{at}: topology_id: {source}")]
    TopologyId {
        /// The path it was read from, or `assignment` when validated without one.
        at: String,
        #[source]
        source: IdentError,
    },
    #[error("{path}: topology_id `{topology_id}` does not match the node name `{name}`")]
    NodeName { path: String, topology_id: String, name: String },
    #[error("topology {topology}: {field}: {reason}")]
    Field { topology: String, field: String, reason: String },
}

impl Assignment {
    /// Decodes and validates the payload of `path`. When `path` is `…/assignments/<name>`, the
    /// payload's `topology_id` must be `<name>`: agents key workers by the id, operators find
    /// topologies by the node name, and the two must not disagree.
    pub fn decode(path: &str, bytes: &[u8]) -> Result<Assignment, AssignmentError> {
        let assignment: Assignment = model::decode(path, bytes)?;
        ident::validate("identifier", &assignment.topology_id)
            .map_err(|source| AssignmentError::TopologyId { at: path.to_owned(), source })?;
        if let Some(name) = node_name(path).filter(|name| *name != assignment.topology_id) {
            return Err(AssignmentError::NodeName {
                path: path.to_owned(),
                topology_id: assignment.topology_id,
                name: name.to_owned(),
            });
        }
        assignment.validate()?;
        Ok(assignment)
    }

    /// Checks every rule of SPEC §3.2 that this payload alone can break. What depends on the
    /// host (timeout caps, users, ports of this supervisor) is checked by the agent that runs it.
    pub fn validate(&self) -> Result<(), AssignmentError> {
        ident::validate("identifier", &self.topology_id)
            .map_err(|source| AssignmentError::TopologyId { at: "assignment".to_owned(), source })?;
        if self.schema != SCHEMA {
            return Err(self.invalid("schema", format!("{} is not the supported schema {SCHEMA}", self.schema)));
        }
        let blob_names = self.check_blobs()?;
        self.check_command(&blob_names)?;
        self.check_env()?;
        self.check_launch_limits()?;
        self.check_workers()?;
        // Last: the bounds above keep this from serializing something huge for nothing.
        let size = self.to_json().len();
        if size > MAX_PAYLOAD_BYTES {
            let reason = format!("{size} bytes as JSON, more than the {MAX_PAYLOAD_BYTES} allowed");
            return Err(self.invalid("payload", reason));
        }
        Ok(())
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("Assignment always serializes")
    }

    fn invalid(&self, field: impl Into<String>, reason: impl Into<String>) -> AssignmentError {
        AssignmentError::Field { topology: self.topology_id.clone(), field: field.into(), reason: reason.into() }
    }

    /// Returns the declared blob names (what `{blob:NAME}` may refer to).
    fn check_blobs(&self) -> Result<BTreeSet<&str>, AssignmentError> {
        let mut names = BTreeSet::new();
        for (i, blob) in self.blobs.iter().enumerate() {
            ident::validate("identifier", &blob.key)
                .map_err(|e| self.invalid(format!("blobs[{i}].key"), e.to_string()))?;
            ident::validate("identifier", &blob.name)
                .map_err(|e| self.invalid(format!("blobs[{i}].name"), e.to_string()))?;
            if !names.insert(blob.name.as_str()) {
                return Err(self.invalid(format!("blobs[{i}].name"), format!("`{}` is declared twice", blob.name)));
            }
        }
        Ok(names)
    }

    fn check_command(&self, blob_names: &BTreeSet<&str>) -> Result<(), AssignmentError> {
        let command = &self.launch.command;
        if command.is_empty() {
            return Err(self.invalid("launch.command", "is empty; it needs at least the program to run"));
        }
        if command.len() > MAX_ARGS {
            return Err(
                self.invalid("launch.command", format!("has {} arguments, more than {MAX_ARGS}", command.len()))
            );
        }
        for (i, arg) in command.iter().enumerate() {
            let field = || format!("launch.command[{i}]");
            if arg.len() > MAX_ARG_BYTES {
                return Err(self.invalid(field(), format!("is {} bytes, more than {MAX_ARG_BYTES}", arg.len())));
            }
            if arg.contains('\0') {
                return Err(self.invalid(field(), format!("{arg:?} contains a NUL byte")));
            }
            for placeholder in placeholders(arg) {
                if PLACEHOLDERS.contains(&placeholder) {
                    continue;
                }
                let reason = match placeholder.strip_prefix("blob:") {
                    Some(name) if blob_names.contains(name) => continue,
                    Some(name) => format!("{{blob:{name}}} names no blob in `blobs` (declared: {})", list(blob_names)),
                    None => format!(
                        "unknown placeholder {{{placeholder}}} (known: {{port}}, {{worker_id}}, {{topology_id}}, \
                         {{supervisor_id}}, {{worker_dir}}, {{blob:NAME}})"
                    ),
                };
                return Err(self.invalid(field(), reason));
            }
        }
        // argv[0] is resolved by the agent without PATH lookup or a cwd, so it must say exactly
        // where the program is: `/…`, or `{blob:NAME}/…` with NAME declared. The name is checked
        // here, not left to the placeholder loop above: `{blob:a/b}/x` or `{blob:a b}/x` is no
        // placeholder at all (literal text, so a relative path), yet contains `}/`.
        let program = &command[0];
        let in_blob = program
            .strip_prefix("{blob:")
            .and_then(|rest| rest.split_once('}'))
            .is_some_and(|(name, rest)| blob_names.contains(name) && rest.starts_with('/'));
        if !program.starts_with('/') && !in_blob {
            let reason = format!("{program:?} must be an absolute path or start with {{blob:NAME}}/");
            return Err(self.invalid("launch.command[0]", reason));
        }
        Ok(())
    }

    fn check_env(&self) -> Result<(), AssignmentError> {
        let env = &self.launch.env;
        if env.len() > MAX_ENV {
            return Err(self.invalid("launch.env", format!("has {} variables, more than {MAX_ENV}", env.len())));
        }
        for (name, value) in env {
            if !is_env_name(name) {
                return Err(self.invalid("launch.env", format!("name {name:?} must match [A-Za-z_][A-Za-z0-9_]*")));
            }
            let field = || format!("launch.env.{name}");
            if name.starts_with("GALE_") {
                return Err(self.invalid(field(), "GALE_ variables are set by the agent (SPEC §4); rename it"));
            }
            if value.len() > MAX_ENV_VALUE_BYTES {
                let reason = format!("value is {} bytes, more than {MAX_ENV_VALUE_BYTES}", value.len());
                return Err(self.invalid(field(), reason));
            }
            if value.contains('\0') {
                return Err(self.invalid(field(), "value contains a NUL byte"));
            }
        }
        Ok(())
    }

    fn check_launch_limits(&self) -> Result<(), AssignmentError> {
        let launch = &self.launch;
        let positive = [
            ("launch.start_timeout_secs", launch.start_timeout_secs),
            ("launch.heartbeat_timeout_secs", launch.heartbeat_timeout_secs),
            ("launch.memory_mb", launch.memory_mb),
            ("launch.cpu_percent", launch.cpu_percent.map(u64::from)),
        ];
        for (field, value) in positive {
            if value == Some(0) {
                return Err(self.invalid(field, "must be more than 0 (leave it out for the agent's default)"));
            }
        }
        if let Some(user) = &launch.user {
            if !is_user_name(user) {
                return Err(self
                    .invalid("launch.user", format!("{user:?} is not a user name ([A-Za-z_][A-Za-z0-9._-]{{0,31}})")));
            }
        }
        Ok(())
    }

    fn check_workers(&self) -> Result<(), AssignmentError> {
        let mut seen = BTreeMap::new();
        for (i, worker) in self.workers.iter().enumerate() {
            ident::validate("identifier", &worker.supervisor_id)
                .map_err(|e| self.invalid(format!("workers[{i}].supervisor_id"), e.to_string()))?;
            if worker.port == 0 {
                return Err(self.invalid(format!("workers[{i}].port"), "0 is not a port; use 1 to 65535"));
            }
            if let Some(first) = seen.insert((worker.supervisor_id.as_str(), worker.port), i) {
                let reason = format!(
                    "supervisor {} port {} is already used by workers[{first}]",
                    worker.supervisor_id, worker.port
                );
                return Err(self.invalid(format!("workers[{i}]"), reason));
            }
        }
        Ok(())
    }
}

/// The placements of a payload that [`Assignment::decode`] refused, as far as they can be
/// read: the well-formed `workers` entries of a schema-1 JSON object. Used only to say on which
/// slots a broken assignment would run (SPEC §3.1 `error`), never to run anything; a payload
/// of another schema means something this agent does not know, so it places nothing.
pub(crate) fn placements_of_invalid(bytes: &[u8]) -> Vec<WorkerPlacement> {
    if bytes.len() > MAX_PAYLOAD_BYTES {
        return Vec::new();
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) else { return Vec::new() };
    if value.get("schema").and_then(serde_json::Value::as_u64) != Some(u64::from(SCHEMA)) {
        return Vec::new();
    }
    let workers = value.get("workers").and_then(serde_json::Value::as_array);
    workers.into_iter().flatten().filter_map(|w| WorkerPlacement::deserialize(w).ok()).collect()
}

/// `<name>` when `path` is `…/assignments/<name>`.
fn node_name(path: &str) -> Option<&str> {
    let (parent, name) = path.rsplit_once('/')?;
    (parent.rsplit('/').next() == Some("assignments")).then_some(name)
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// POSIX portable user names, as `useradd` accepts them (at most 32 bytes, no leading `-`).
fn is_user_name(user: &str) -> bool {
    let mut chars = user.chars();
    user.len() <= 32
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn list(names: &BTreeSet<&str>) -> String {
    if names.is_empty() { "none".to_owned() } else { names.iter().copied().collect::<Vec<_>>().join(", ") }
}

// Unit tests (every rule, round trip) live in `assignment/tests.rs`.
#[cfg(test)]
mod tests;
