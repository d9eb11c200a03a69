//! `/supervisors/<id>`: SupervisorInfo (SPEC §3.1), what an agent is and runs, with the slot
//! states and exit reasons it reports, and [`NodeReport`], what the rest of the agent publishes
//! for it (the membership task writes the node).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::usage::{HostUsage, WorkerUsage};
use super::{PayloadError, decode};
use crate::config::Capacity;
use crate::lifecycle::Lifecycle;

/// Node health as advertised in SupervisorInfo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Healthy,
    Unhealthy,
    #[default]
    Unknown,
}

/// The state of a slot, as named in SPEC §3.1 (Storm's names in snake_case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotStateName {
    Empty,
    WaitingForBlobs,
    WaitingForWorkerStart,
    Running,
    Kill,
    KillAndRelaunch,
    KillBlobUpdate,
    WaitingForBlobUpdate,
    Backoff,
}

impl SlotStateName {
    pub const ALL: [SlotStateName; 9] = [
        SlotStateName::Empty,
        SlotStateName::WaitingForBlobs,
        SlotStateName::WaitingForWorkerStart,
        SlotStateName::Running,
        SlotStateName::Kill,
        SlotStateName::KillAndRelaunch,
        SlotStateName::KillBlobUpdate,
        SlotStateName::WaitingForBlobUpdate,
        SlotStateName::Backoff,
    ];

    /// The SPEC §3.1 name.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SlotStateName::Empty => "empty",
            SlotStateName::WaitingForBlobs => "waiting_for_blobs",
            SlotStateName::WaitingForWorkerStart => "waiting_for_worker_start",
            SlotStateName::Running => "running",
            SlotStateName::Kill => "kill",
            SlotStateName::KillAndRelaunch => "kill_and_relaunch",
            SlotStateName::KillBlobUpdate => "kill_blob_update",
            SlotStateName::WaitingForBlobUpdate => "waiting_for_blob_update",
            SlotStateName::Backoff => "backoff",
        }
    }
}

/// Why a worker process ended (SPEC §3.1 `last_exit.reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitReason {
    Exited,
    StartTimeout,
    HeartbeatTimeout,
    MemoryLimit,
    Killed,
    Lost,
}

impl ExitReason {
    /// The SPEC §3.1 name.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ExitReason::Exited => "exited",
            ExitReason::StartTimeout => "start_timeout",
            ExitReason::HeartbeatTimeout => "heartbeat_timeout",
            ExitReason::MemoryLimit => "memory_limit",
            ExitReason::Killed => "killed",
            ExitReason::Lost => "lost",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastExit {
    pub code: Option<i32>,
    /// Signal name (`"SIGKILL"`) when the process died of a signal.
    pub signal: Option<String>,
    pub reason: ExitReason,
    pub at_ms: u64,
}

/// One non-empty slot in SupervisorInfo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub port: u16,
    pub topology_id: String,
    pub worker_id: String,
    pub pid: Option<u32>,
    pub state: SlotStateName,
    pub since_ms: u64,
    pub restarts: u32,
    pub last_exit: Option<LastExit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What the worker uses (latest sample), while a process runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<WorkerUsage>,
}

/// `/supervisors/<id>`: what this agent is and runs (SPEC §3.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupervisorInfo {
    pub schema: u32,
    pub id: String,
    pub hostname: String,
    pub version: String,
    pub state: Lifecycle,
    pub health: Health,
    pub started_at_ms: u64,
    pub time_ms: u64,
    pub slots: Vec<u16>,
    pub used_slots: Vec<u16>,
    pub capacity: Capacity,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub workers: Vec<WorkerInfo>,
    /// The workers' use summed (absent from agents before 0.2.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used: Option<HostUsage>,
}

impl SupervisorInfo {
    /// True when `self` and `other` differ only in `time_ms` and use (which changes all the
    /// time): no rewrite is needed before the refresh interval.
    pub(crate) fn same_content(&self, other: &SupervisorInfo) -> bool {
        self.without_time_and_use() == other.without_time_and_use()
    }

    fn without_time_and_use(&self) -> SupervisorInfo {
        let workers = self.workers.iter().map(|w| WorkerInfo { usage: None, ..w.clone() }).collect();
        SupervisorInfo { time_ms: 0, used: None, workers, ..self.clone() }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("SupervisorInfo always serializes")
    }

    /// Decodes a payload read from `path`; see the module docs for the rules.
    pub fn decode(path: &str, bytes: &[u8]) -> Result<SupervisorInfo, PayloadError> {
        decode(path, bytes)
    }
}

/// What the rest of the agent publishes for SupervisorInfo; changes trigger a rewrite (use
/// changes do not: see [`SupervisorInfo::same_content`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeReport {
    pub lifecycle: Lifecycle,
    pub health: Health,
    /// From the executor, without `usage`.
    pub workers: Vec<WorkerInfo>,
    /// The latest use sample per worker id, from the usage sampler.
    pub usage: BTreeMap<String, WorkerUsage>,
}

impl NodeReport {
    /// What an agent reports before it knows anything: health unknown, no workers.
    pub(crate) fn new(lifecycle: Lifecycle) -> NodeReport {
        NodeReport { lifecycle, health: Health::Unknown, workers: Vec::new(), usage: BTreeMap::new() }
    }

    /// `workers` with their latest use, and the host totals.
    pub(crate) fn workers_with_usage(&self) -> (Vec<WorkerInfo>, HostUsage) {
        let workers: Vec<WorkerInfo> = self
            .workers
            .iter()
            .map(|w| WorkerInfo { usage: w.pid.and(self.usage.get(&w.worker_id).cloned()), ..w.clone() })
            .collect();
        let used = HostUsage::total(workers.iter().filter_map(|w| w.usage.as_ref()));
        (workers, used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{MAX_PAYLOAD_BYTES, SCHEMA};

    fn sample() -> SupervisorInfo {
        SupervisorInfo {
            schema: SCHEMA,
            id: "6f1c".into(),
            hostname: "worker-17".into(),
            version: "0.1.0".into(),
            state: Lifecycle::Running,
            health: Health::Healthy,
            started_at_ms: 1,
            time_ms: 2,
            slots: vec![6700, 6701],
            used_slots: vec![6700],
            capacity: Capacity { cpu_percent: 400, memory_mb: 4096 },
            labels: BTreeMap::from([("rack".into(), "r1".into())]),
            workers: vec![WorkerInfo {
                port: 6700,
                topology_id: "wordcount".into(),
                worker_id: "w1".into(),
                pid: None,
                state: SlotStateName::WaitingForWorkerStart,
                since_ms: 3,
                restarts: 0,
                last_exit: Some(LastExit { code: Some(1), signal: None, reason: ExitReason::StartTimeout, at_ms: 4 }),
                error: None,
                usage: None,
            }],
            used: None,
        }
    }

    #[test]
    fn json_has_the_spec_field_names_and_values() {
        let v: serde_json::Value = serde_json::from_slice(&sample().to_json()).unwrap();
        assert_eq!(v["schema"], 1);
        assert_eq!(v["state"], "running");
        assert_eq!(v["health"], "healthy");
        assert_eq!(v["workers"][0]["state"], "waiting_for_worker_start");
        assert_eq!(v["workers"][0]["pid"], serde_json::Value::Null);
        assert_eq!(v["workers"][0]["last_exit"]["reason"], "start_timeout");
        assert!(v["workers"][0].get("error").is_none(), "error only when there is one");
        assert_eq!(v["capacity"]["memory_mb"], 4096);
    }

    #[test]
    fn round_trip_and_unknown_fields_are_ignored() {
        let mut v: serde_json::Value = serde_json::from_slice(&sample().to_json()).unwrap();
        v["from_the_future"] = serde_json::json!({"x": 1});
        let back = SupervisorInfo::decode("/p", &serde_json::to_vec(&v).unwrap()).unwrap();
        assert_eq!(back, sample());
    }

    #[test]
    fn bad_payloads_are_errors_naming_the_path() {
        let mut v: serde_json::Value = serde_json::from_slice(&sample().to_json()).unwrap();
        v["schema"] = 2.into();
        let err = SupervisorInfo::decode("/gale/supervisors/x", &serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(err.to_string().contains("/gale/supervisors/x: unknown schema 2"), "{err}");
        assert!(SupervisorInfo::decode("/p", b"{not json").is_err());
        assert!(SupervisorInfo::decode("/p", b"{\"id\":\"x\"}").unwrap_err().to_string().contains("schema"));
        assert!(matches!(
            SupervisorInfo::decode("/p", &vec![b' '; MAX_PAYLOAD_BYTES + 1]),
            Err(PayloadError::TooLarge { .. })
        ));
    }

    #[test]
    fn same_content_ignores_only_time() {
        let a = sample();
        let mut b = sample();
        b.time_ms = 99;
        assert!(a.same_content(&b));
        b.workers[0].usage = Some(WorkerUsage { memory_bytes: 1 << 20, ..Default::default() });
        b.used = Some(HostUsage { workers: 1, memory_bytes: 1 << 20, ..Default::default() });
        assert!(a.same_content(&b), "use changes alone do not make a write");
        b.used_slots.clear();
        assert!(!a.same_content(&b));
    }

    #[test]
    fn the_report_joins_use_by_worker_id_for_running_workers_only() {
        let mut report = NodeReport { workers: sample().workers, ..NodeReport::new(Lifecycle::Running) };
        let usage = WorkerUsage { memory_bytes: 7, processes: 2, ..Default::default() };
        report.usage.insert("w1".into(), usage.clone());
        let (workers, used) = report.workers_with_usage();
        assert_eq!(workers[0].usage, None, "no process (pid null): a stale sample is not shown");
        assert_eq!(used, HostUsage::default());
        report.workers[0].pid = Some(42);
        let (workers, used) = report.workers_with_usage();
        assert_eq!(workers[0].usage, Some(usage));
        assert_eq!((used.workers, used.memory_bytes, used.processes), (1, 7, 2));
    }
}
