//! Format 2 (gale 0.2.0): the stored records this build writes.
//!
//! What changed from format 1: a worker record notes the gale version that launched it
//! ([`WorkerRecord::launched_by`], `None` for a record migrated from format 1), so that after
//! a rolling upgrade `gale state dump` shows which workers the previous release started. Every
//! other stored type is format 1's, re-exported unchanged.
//!
//! These types change only together with a new format: freeze them (a `v3` module re-exports
//! what stays, defines what changes), bump `FORMAT_VERSION`, add the migration. The golden
//! test (`stored/tests.rs`) fails on any change to their encoding.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use super::v1::{BlobRef, Launch, LivenessMode, LocalAssignments, PortJob, ProcessIdentity};

/// One worker process the agent started (`workers`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRecord {
    pub worker_id: String,
    pub port: u16,
    pub topology_id: String,
    pub process: ProcessIdentity,
    pub launched_at_ms: u64,
    /// The version of the gale that launched it; `None` when the record comes from format 1.
    pub launched_by: Option<String>,
    pub job: PortJob,
}

/// `workers`: worker id -> record.
pub type WorkerRecords = BTreeMap<String, WorkerRecord>;
