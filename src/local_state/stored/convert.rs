//! Field-by-field conversions between the stored records and the in-memory ones
//! (`supervisor::records`, `proc_identity`) with the wire types they embed (`model::assignment`).
//!
//! Why by hand: a stored type never IS a wire or in-memory type, so a field added to
//! `model::assignment::Launch` changes nothing on disk. Such a field is simply not stored
//! (the conversion back gives it its default and says so); to store it, make a new format.

use super::{v1, v2};
use crate::model::assignment as wire;
use crate::proc_identity::ProcessIdentity;
use crate::supervisor::records::{LocalAssignments, PortJob, WorkerRecord, WorkerRecords};

/// A stored type of the current format and the in-memory type it holds.
pub(crate) trait StoredForm {
    type Memory;
    fn from_memory(value: &Self::Memory) -> Self;
    fn into_memory(self) -> Self::Memory;
}

/// Plain values are stored as they are.
macro_rules! stored_as_is {
    ($($ty:ty),*) => {$(
        impl StoredForm for $ty {
            type Memory = $ty;
            fn from_memory(value: &$ty) -> $ty {
                value.clone()
            }
            fn into_memory(self) -> $ty {
                self
            }
        }
    )*};
}

stored_as_is!(String, i64, Vec<i64>, bool);

impl StoredForm for v2::ProcessIdentity {
    type Memory = ProcessIdentity;
    fn from_memory(p: &ProcessIdentity) -> Self {
        v2::ProcessIdentity { pid: p.pid, start_ticks: p.start_ticks, boot_id: p.boot_id.clone() }
    }
    fn into_memory(self) -> ProcessIdentity {
        ProcessIdentity { pid: self.pid, start_ticks: self.start_ticks, boot_id: self.boot_id }
    }
}

impl StoredForm for v2::LocalAssignments {
    type Memory = LocalAssignments;
    fn from_memory(jobs: &LocalAssignments) -> Self {
        jobs.iter().map(|(port, job)| (*port, port_job(job))).collect()
    }
    fn into_memory(self) -> LocalAssignments {
        self.into_iter().map(|(port, job)| (port, memory_port_job(job))).collect()
    }
}

impl StoredForm for v2::WorkerRecords {
    type Memory = WorkerRecords;
    fn from_memory(records: &WorkerRecords) -> Self {
        records.iter().map(|(id, r)| (id.clone(), worker_record(r))).collect()
    }
    fn into_memory(self) -> WorkerRecords {
        self.into_iter().map(|(id, r)| (id, memory_worker_record(r))).collect()
    }
}

fn worker_record(r: &WorkerRecord) -> v2::WorkerRecord {
    v2::WorkerRecord {
        worker_id: r.worker_id.clone(),
        port: r.port,
        topology_id: r.topology_id.clone(),
        process: v2::ProcessIdentity::from_memory(&r.process),
        launched_at_ms: r.launched_at_ms,
        launched_by: r.launched_by.clone(),
        job: port_job(&r.job),
    }
}

fn memory_worker_record(r: v2::WorkerRecord) -> WorkerRecord {
    WorkerRecord {
        worker_id: r.worker_id,
        port: r.port,
        topology_id: r.topology_id,
        process: r.process.into_memory(),
        launched_at_ms: r.launched_at_ms,
        launched_by: r.launched_by,
        job: memory_port_job(r.job),
    }
}

fn port_job(job: &PortJob) -> v2::PortJob {
    v2::PortJob {
        topology_id: job.topology_id.clone(),
        zxid: job.zxid,
        launch: launch(&job.launch),
        blobs: job.blobs.iter().map(blob_ref).collect(),
    }
}

fn memory_port_job(job: v2::PortJob) -> PortJob {
    PortJob {
        topology_id: job.topology_id,
        zxid: job.zxid,
        launch: memory_launch(job.launch),
        blobs: job.blobs.into_iter().map(memory_blob_ref).collect(),
    }
}

fn launch(l: &wire::Launch) -> v2::Launch {
    v2::Launch {
        command: l.command.clone(),
        env: l.env.clone(),
        liveness: match l.liveness {
            wire::LivenessMode::Process => v2::LivenessMode::Process,
            wire::LivenessMode::Heartbeat => v2::LivenessMode::Heartbeat,
        },
        start_timeout_secs: l.start_timeout_secs,
        heartbeat_timeout_secs: l.heartbeat_timeout_secs,
        memory_mb: l.memory_mb,
        cpu_percent: l.cpu_percent,
        user: l.user.clone(),
    }
}

/// A wire field the stored `Launch` does not have would be listed here with its default (it
/// was not stored): after an agent restart, the job read from ZooKeeper then differs from the
/// recorded one when it sets that field, and the worker is replaced rather than assumed.
fn memory_launch(l: v2::Launch) -> wire::Launch {
    wire::Launch {
        command: l.command,
        env: l.env,
        liveness: match l.liveness {
            v2::LivenessMode::Process => wire::LivenessMode::Process,
            v2::LivenessMode::Heartbeat => wire::LivenessMode::Heartbeat,
        },
        start_timeout_secs: l.start_timeout_secs,
        heartbeat_timeout_secs: l.heartbeat_timeout_secs,
        memory_mb: l.memory_mb,
        cpu_percent: l.cpu_percent,
        user: l.user,
    }
}

fn blob_ref(b: &wire::BlobRef) -> v2::BlobRef {
    v2::BlobRef { key: b.key.clone(), name: b.name.clone(), extract: b.extract, restart_on_update: b.restart_on_update }
}

fn memory_blob_ref(b: v2::BlobRef) -> wire::BlobRef {
    wire::BlobRef { key: b.key, name: b.name, extract: b.extract, restart_on_update: b.restart_on_update }
}

/// Format 1 to 2: worker records gain `launched_by`, unknown for what 0.1.0 launched.
pub(super) fn worker_records_v1_to_v2(records: v1::WorkerRecords) -> v2::WorkerRecords {
    records
        .into_iter()
        .map(|(id, r)| {
            let record = v2::WorkerRecord {
                worker_id: r.worker_id,
                port: r.port,
                topology_id: r.topology_id,
                process: r.process,
                launched_at_ms: r.launched_at_ms,
                launched_by: None,
                job: r.job,
            };
            (id, record)
        })
        .collect()
}
