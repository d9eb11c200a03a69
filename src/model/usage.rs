//! What workers use (issue: operator truth): per worker in SupervisorInfo `workers[].usage`
//! and the status document, with host totals in SupervisorInfo `used`, so a scheduler can pack
//! hosts by use as Storm's nimbus does. Integers only, in the units of `capacity`
//! (`cpu_percent`: 100 is one core) or bytes and microseconds (the kernel's `usage_usec`).
//!
//! Use changes all the time, so it never makes SupervisorInfo be rewritten by itself:
//! [`SupervisorInfo::same_content`](super::SupervisorInfo::same_content) ignores it, and what
//! a write carries is the latest sample (at most one `heartbeat_refresh_secs` old).

use serde::{Deserialize, Serialize};

/// One worker's use, read from its cgroup (or `/proc` under rlimits). `None` where the
/// mechanism or kernel does not report it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerUsage {
    /// Memory charged to the worker now (cgroup `memory.current`, or the process's RSS).
    pub memory_bytes: u64,
    /// The most it was ever charged (`memory.peak`, or the process's peak RSS).
    pub memory_peak_bytes: Option<u64>,
    /// CPU time used, user and system, all its processes.
    pub cpu_usec: u64,
    /// CPU use over the last sampling interval, percent of one core (`None` on the first sample).
    pub cpu_percent: Option<u32>,
    /// Processes (tasks counted by the pids controller, or the worker's session).
    pub processes: u64,
    /// Processes of the worker the kernel's OOM killer ended.
    pub oom_kills: Option<u64>,
    /// Time the worker was throttled by its `cpu_percent` limit.
    pub cpu_throttled_usec: Option<u64>,
}

/// The sum over a host's workers (SupervisorInfo `used`, status `used`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostUsage {
    /// Workers with a usage sample.
    pub workers: u32,
    pub memory_bytes: u64,
    /// Sum of the workers' `cpu_percent` (comparable to `capacity.cpu_percent`).
    pub cpu_percent: u32,
    pub processes: u64,
}

impl HostUsage {
    /// Totals of `usages`.
    pub fn total<'a>(usages: impl IntoIterator<Item = &'a WorkerUsage>) -> HostUsage {
        usages.into_iter().fold(HostUsage::default(), |mut t, u| {
            t.workers += 1;
            t.memory_bytes += u.memory_bytes;
            t.cpu_percent += u.cpu_percent.unwrap_or(0);
            t.processes += u.processes;
            t
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_add_up_what_is_known() {
        let a = WorkerUsage { memory_bytes: 10, cpu_percent: Some(50), processes: 2, ..Default::default() };
        let b = WorkerUsage { memory_bytes: 5, cpu_percent: None, processes: 1, ..Default::default() };
        assert_eq!(
            HostUsage::total([&a, &b]),
            HostUsage { workers: 2, memory_bytes: 15, cpu_percent: 50, processes: 3 }
        );
        assert_eq!(HostUsage::total([]), HostUsage::default());
    }
}
