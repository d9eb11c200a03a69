//! What a worker uses, read from its cgroup (v2 or v1) or, under rlimits, from `/proc`: the
//! numbers cAdvisor and the kubelet read, in the kernel's units (see [`Sample`]). Processes
//! are counted from `cgroup.procs` (not `pids.current`, which counts threads).
//!
//! Every file read here is a cgroupfs or procfs read (no disk I/O), bounded, and blocking:
//! call it from `spawn_blocking` in async code.

use std::path::Path;

use super::procfs::keyed_value;
use super::{CgroupDir, Mechanism};

/// One reading of a worker's use. `None` where the mechanism or the kernel does not report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sample {
    pub memory_bytes: u64,
    pub memory_peak_bytes: Option<u64>,
    /// CPU time, user + system, of every process of the worker (dead ones included).
    pub cpu_ns: u64,
    pub processes: u64,
    pub oom_kills: Option<u64>,
    pub throttled_ns: Option<u64>,
}

/// Reads the use of the worker `worker_id` whose main process is `pid`. `None` when its
/// cgroup (or, under rlimits, its process) is gone.
pub(crate) fn sample(mechanism: &Mechanism, worker_id: &str, pid: u32) -> Option<Sample> {
    match mechanism {
        Mechanism::CgroupV2 { root } => sample_v2(&root.child(worker_id).path),
        Mechanism::CgroupV1 { memory, cpu, .. } => sample_v1(&memory.child(worker_id), &cpu.child(worker_id), pid),
        Mechanism::Rlimits => sample_proc(pid),
    }
}

fn read(dir: &Path, file: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(file)).ok()
}

fn number(dir: &Path, file: &str) -> Option<u64> {
    read(dir, file)?.trim().parse().ok()
}

/// Processes listed in a cgroup's `cgroup.procs` (a worker's cgroup is a leaf).
fn procs_count(dir: &Path) -> Option<u64> {
    Some(read(dir, "cgroup.procs")?.lines().count() as u64)
}

/// `memory.current`, `memory.peak` (kernel 5.19+), `cpu.stat`, `cgroup.procs`, `memory.events`.
fn sample_v2(dir: &Path) -> Option<Sample> {
    let memory_bytes = number(dir, "memory.current")?;
    let cpu = read(dir, "cpu.stat")?;
    Some(Sample {
        memory_bytes,
        memory_peak_bytes: number(dir, "memory.peak"),
        cpu_ns: keyed_value(&cpu, "usage_usec")?.saturating_mul(1000),
        processes: procs_count(dir)?,
        oom_kills: read(dir, "memory.events").and_then(|e| keyed_value(&e, "oom_kill")),
        throttled_ns: keyed_value(&cpu, "throttled_usec").map(|us| us.saturating_mul(1000)),
    })
}

/// `memory.usage_in_bytes` and `memory.max_usage_in_bytes`, `cpuacct.usage` where cpuacct is
/// mounted with cpu (else the members' times from `/proc`, see [`members_cpu_ns`]), `cpu.stat`'s
/// `throttled_time`, `cgroup.procs`, `memory.oom_control`'s `oom_kill` (kernel 4.13+).
fn sample_v1(memory: &CgroupDir, cpu: &CgroupDir, pid: u32) -> Option<Sample> {
    let memory_bytes = number(&memory.path, "memory.usage_in_bytes")?;
    Some(Sample {
        memory_bytes,
        memory_peak_bytes: number(&memory.path, "memory.max_usage_in_bytes"),
        cpu_ns: number(&cpu.path, "cpuacct.usage").or_else(|| members_cpu_ns(&memory.path, pid))?,
        processes: procs_count(&memory.path)?,
        oom_kills: read(&memory.path, "memory.oom_control").and_then(|t| keyed_value(&t, "oom_kill")),
        throttled_ns: read(&cpu.path, "cpu.stat").and_then(|t| keyed_value(&t, "throttled_time")),
    })
}

/// The CPU time of a cgroup's members from `/proc` (each with its reaped children's), for a
/// v1 host whose cpuacct controller is not mounted with cpu: 10 ms resolution, and the time of
/// a member that exited without being reaped by another member is lost. `pid` when the
/// cgroup lists nobody.
fn members_cpu_ns(dir: &Path, pid: u32) -> Option<u64> {
    let members: Vec<u32> = read(dir, "cgroup.procs")?.lines().filter_map(|l| l.parse().ok()).collect();
    if members.is_empty() {
        return proc_cpu_ns(pid);
    }
    Some(members.into_iter().filter_map(proc_cpu_ns).sum())
}

/// Under rlimits: the main process's RSS and peak RSS, its CPU time with its reaped
/// children's, and the processes of its session (a worker leads its own).
fn sample_proc(pid: u32) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| {
        status.lines().find_map(|l| l.strip_prefix(key)?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
    };
    Some(Sample {
        memory_bytes: kib("VmRSS:")?.saturating_mul(1024),
        memory_peak_bytes: kib("VmHWM:").map(|k| k.saturating_mul(1024)),
        cpu_ns: proc_cpu_ns(pid)?,
        processes: session_members(pid),
        oom_kills: None,
        throttled_ns: None,
    })
}

/// Fields after the `(comm)` of `/proc/<pid>/stat`, which may itself hold spaces.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Linux reports process times in USER_HZ, 100 on every architecture gale builds for.
const NS_PER_TICK: u64 = 10_000_000;

/// utime + stime + cutime + cstime of `pid` (fields 14-17 of stat; 12-15 after the comm).
fn proc_cpu_ns(pid: u32) -> Option<u64> {
    let fields = stat_fields(pid)?;
    let ticks: Option<u64> = fields.get(11..15)?.iter().map(|f| f.parse::<u64>().ok()).sum();
    Some(ticks?.saturating_mul(NS_PER_TICK))
}

/// Processes whose session is `sid` (stat field 6; 4 after the comm).
fn session_members(sid: u32) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    let sid = sid.to_string();
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| stat_fields(pid).is_some_and(|f| f.get(3) == Some(&sid)))
        .count() as u64
}
