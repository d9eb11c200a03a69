//! What the agent persists about its work (LocalState keys `local-assignments`, `workers`),
//! as the agent works with it. These are in-memory types: the disk holds the stored records of
//! `local_state::stored`, converted field by field, so that these (and the wire types they
//! embed) can change without changing the state format.
//!
//! Architecture Invariant: a worker is recorded (id, port, topology, pid, start time, boot id)
//! before anything else is done with it, and forgotten only once its exit was seen. After a
//! crash of the agent these records are the only way to find, prove and adopt its workers.

use std::collections::BTreeMap;

use crate::model::assignment::{BlobRef, Launch};
use crate::proc_identity::ProcessIdentity;

/// The job assigned to one of our ports, as last read from ZooKeeper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortJob {
    pub topology_id: String,
    /// `mzxid` of the assignment node it was read from (for status and logs).
    pub zxid: i64,
    pub launch: Launch,
    pub blobs: Vec<BlobRef>,
}

/// `local-assignments`: port -> job.
pub(crate) type LocalAssignments = BTreeMap<u16, PortJob>;

/// One worker process the agent started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerRecord {
    pub worker_id: String,
    pub port: u16,
    pub topology_id: String,
    pub process: ProcessIdentity,
    pub launched_at_ms: u64,
    /// The version of the gale that launched it (`CARGO_PKG_VERSION`); `None` for a worker
    /// recorded by gale 0.1.0, which did not note it. Shown by `gale state dump`.
    pub launched_by: Option<String>,
    /// The job it was launched with: after an agent restart it is adopted as running exactly
    /// this, so a job that changed meanwhile replaces it instead of being assumed.
    pub job: PortJob,
}

/// `workers`: worker id -> record.
pub type WorkerRecords = BTreeMap<String, WorkerRecord>;
