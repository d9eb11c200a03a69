//! Format 1: the stored records exactly as gale 0.1.0 wrote them. FROZEN: no field of a
//! type here is ever added, removed, reordered or retyped again.
//!
//! gale 0.1.0 stored the bincode (v1, positional: fields in declaration order, no names, no
//! tags; an enum as its variant index, u32 LE; an `Option` as a 0/1 byte; sequences and maps
//! with a u64 LE length) of its in-memory and wire types. These are copies of those types as
//! they were in that release (`supervisor::records`, `cluster::assignment`,
//! `proc_identity`), so the bytes it wrote decode here whatever the wire types become.
//! The keys whose value is a plain type (`supervisor-id`: `String`, `last-session-id`: `i64`,
//! `earlier-session-ids`: `Vec<i64>`, `drained`: `bool`) need no copy.
//!
//! Format 2 still stores most of these types unchanged (`super::v2` re-exports them); a
//! format that changes one defines its own version in its own module.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `session-owner`; also inside [`WorkerRecord`]. Was `proc_identity::ProcessIdentity`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessIdentity {
    pub pid: u32,
    pub start_ticks: u64,
    pub boot_id: String,
}

/// Was `cluster::assignment::LivenessMode` (variant index 0, 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LivenessMode {
    Process,
    Heartbeat,
}

/// Was `cluster::assignment::Launch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Launch {
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub liveness: LivenessMode,
    pub start_timeout_secs: Option<u64>,
    pub heartbeat_timeout_secs: Option<u64>,
    pub memory_mb: Option<u64>,
    pub cpu_percent: Option<u32>,
    pub user: Option<String>,
}

/// Was `cluster::assignment::BlobRef`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    pub key: String,
    pub name: String,
    pub extract: bool,
    pub restart_on_update: bool,
}

/// Was `supervisor::records::PortJob`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortJob {
    pub topology_id: String,
    pub zxid: i64,
    pub launch: Launch,
    pub blobs: Vec<BlobRef>,
}

/// `local-assignments`: port -> job.
pub type LocalAssignments = BTreeMap<u16, PortJob>;

/// Was `supervisor::records::WorkerRecord`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRecord {
    pub worker_id: String,
    pub port: u16,
    pub topology_id: String,
    pub process: ProcessIdentity,
    pub launched_at_ms: u64,
    pub job: PortJob,
}

/// `workers`: worker id -> record.
pub type WorkerRecords = BTreeMap<String, WorkerRecord>;
