//! The narrow seam between the executor (`supervisor::processes`) and the kernel (the youki
//! `Syscall` pattern).
//!
//! The executor that carries out the slot state machine's actions needs exactly these things
//! from the operating system: start a worker inside its cgroup, signal a worker's group, ask
//! whether a recorded worker is still the process it was, watch a worker it adopted for its
//! exit, and clean up after a worker (the rest of its cgroup, processes left in its dir, the
//! OOM verdict). [`ProcessControl`] is those and nothing more, so the executor's rules are
//! unit tested against `super::fake::FakeProcessControl` (which records every call and
//! injects failures) on a paused clock, while [`RealProcessControl`] is tested against real
//! processes in `worker/tests.rs` and the integration tests.
//!
//! The exit of a started worker is handed over as an [`ExitWatch`], which is also what an
//! adopted worker and the fake's workers get, so the executor waits for all the same way.
//!
//! Invariant: `spawn` takes the worker's [`WorkerCgroup`]; there is no way through this seam
//! to start a worker outside one.

use std::io;
use std::path::Path;

use nix::sys::signal::Signal;

use super::exit::ExitWatch;
use super::launch::{self, LaunchError, LaunchSpec};
use super::signal::{self, SignalOutcome};
use crate::isolation::{IsolationError, WorkerCgroup};
use crate::proc_identity::{Liveness, ProcessIdentity};

/// A worker that was just started through [`ProcessControl::spawn`].
#[derive(Debug)]
pub(crate) struct LaunchedWorker {
    /// Read right after the spawn, while the child cannot have been reaped yet (we hold it).
    pub identity: ProcessIdentity,
    /// Await [`ExitWatch::wait`] to learn of its exit.
    pub exit: ExitWatch,
}

/// Everything the executor does to worker processes.
pub(crate) trait ProcessControl: Send + Sync + std::fmt::Debug {
    /// Starts a worker inside `cgroup` (see [`launch::spawn_in`]). Needs a tokio runtime.
    fn spawn(&self, spec: &LaunchSpec, cgroup: &WorkerCgroup) -> Result<LaunchedWorker, LaunchError>;

    /// Signals the worker's process group if it is provably the recorded process
    /// (see [`signal::signal_group`]).
    fn signal_group(&self, identity: &ProcessIdentity, sig: Signal) -> io::Result<SignalOutcome>;

    /// Whether the recorded process still runs: `Alive` only with pid, start time and boot id
    /// all matching. Adoption at start and the monitor's safety net for adopted workers use it.
    fn liveness(&self, identity: &ProcessIdentity) -> Liveness;

    /// Watches a worker that is not our child (adopted at start, or a child whose wait failed;
    /// see [`super::exit::wait_adopted`]).
    fn adopt(&self, identity: &ProcessIdentity) -> ExitWatch;

    /// Kills whatever is left in the worker's cgroup after its process group got SIGKILL
    /// (nothing to do where the mechanism tracks no processes: rlimits). Blocking, bounded.
    fn kill_cgroup(&self, cgroup: &WorkerCgroup) -> Result<(), IsolationError>;

    /// Whether the kernel's OOM killer killed a process of the worker's cgroup.
    fn oom_killed(&self, cgroup: &WorkerCgroup) -> bool;

    /// SIGKILLs the process group of every process whose working directory is `dir` (proven by
    /// its identity, read before the signal): what a worker left behind, or a worker whose
    /// agent died before recording it. Returns the pids whose identity could be read (those a
    /// signal was sent to, unless they exited in between).
    fn kill_left_in(&self, dir: &Path) -> Vec<u32>;
}

/// The real thing: processes, `/proc`, `killpg`, cgroup files.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RealProcessControl;

impl ProcessControl for RealProcessControl {
    fn spawn(&self, spec: &LaunchSpec, cgroup: &WorkerCgroup) -> Result<LaunchedWorker, LaunchError> {
        launch::spawn_in(spec, cgroup)
    }

    fn signal_group(&self, identity: &ProcessIdentity, sig: Signal) -> io::Result<SignalOutcome> {
        signal::signal_group(identity, sig)
    }

    fn liveness(&self, identity: &ProcessIdentity) -> Liveness {
        identity.liveness()
    }

    fn adopt(&self, identity: &ProcessIdentity) -> ExitWatch {
        ExitWatch::adopted(identity.clone())
    }

    fn kill_cgroup(&self, cgroup: &WorkerCgroup) -> Result<(), IsolationError> {
        if cgroup.tracks_processes() { cgroup.kill_all() } else { Ok(()) }
    }

    fn oom_killed(&self, cgroup: &WorkerCgroup) -> bool {
        cgroup.oom_killed()
    }

    fn kill_left_in(&self, dir: &Path) -> Vec<u32> {
        pids_with_cwd(dir)
            .into_iter()
            .filter(|&pid| {
                let Ok(identity) = ProcessIdentity::of(pid) else { return false };
                let _ = signal::signal_group(&identity, Signal::SIGKILL);
                true
            })
            .collect()
    }
}

/// Processes whose working directory is `dir` (read from `/proc/<pid>/cwd`).
fn pids_with_cwd(dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == dir))
        .collect()
}
