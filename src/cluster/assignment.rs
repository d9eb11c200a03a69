//! Assignment payload (SPEC §3.2): `/assignments/<topology-id>`, written by nimbus or
//! `gale topology submit`, read by every agent.
//!
//! Decoding is lenient about unknown fields and strict about everything that becomes a path,
//! a process argument or a number the agent acts on: [`Assignment::validate`] rejects a
//! hostile or broken payload with an error naming the topology and the field, before any of
//! it is used.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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

/// How to start one worker of the topology.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Launch {
    /// argv, never run through a shell; placeholders `{port}`, `{worker_id}`, `{topology_id}`,
    /// `{supervisor_id}`, `{worker_dir}`, `{blob:NAME}`.
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub liveness: LivenessMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timeout_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_timeout_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
