//! A recording [`ProcessControl`] for the executor's tests: no process is ever started.
//!
//! It models just enough of the kernel to be believable: spawned "processes" get increasing
//! pids and a fake boot id; a signal sent to a running one ends it with that signal unless the
//! test made it ignore the signal (SIGKILL cannot be ignored, as in the kernel); a signal to an
//! exited one is `Gone`, to an identity it never handed out `NotOurs`. Failures are injected
//! one call at a time (`fail_next_*`), and every call is recorded in order so a test can assert
//! exactly what the executor did. The executor's unit tests (`supervisor::processes::tests`)
//! drive it; cgroups there are made with `Mechanism::Rlimits`, which touches no file, and the
//! OOM verdict is whatever the test set with [`FakeProcessControl::set_oom_killed`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::sys::signal::Signal;
use tokio::sync::oneshot;

use super::control::{LaunchedWorker, ProcessControl};
use super::exit::{ExitReport, ExitWatch};
use super::launch::{LaunchError, LaunchSpec};
use super::signal::SignalOutcome;
use crate::isolation::{IsolationError, WorkerCgroup};
use crate::proc_identity::{Liveness, ProcessIdentity};

/// The boot id of every fake process: never this host's, so a fake identity that leaks into
/// real code is "not ours" there.
pub(crate) const FAKE_BOOT_ID: &str = "fake-boot";

/// One call made to the fake, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FakeCall {
    Spawn { topology_id: String, port: u16, worker_id: String },
    Signal { pid: u32, signal: Signal },
    Liveness { pid: u32 },
    Adopt { pid: u32 },
    KillCgroup { worker_id: String },
    KillLeftIn { dir: PathBuf },
}

#[derive(Debug)]
struct FakeProcess {
    identity: ProcessIdentity,
    /// `None` once it exited (or while nobody watches an adopted one).
    exit: Option<oneshot::Sender<ExitReport>>,
    running: bool,
}

#[derive(Debug, Default)]
struct State {
    calls: Vec<FakeCall>,
    spawn_failures: VecDeque<LaunchError>,
    signal_failures: VecDeque<io::Error>,
    ignored: BTreeSet<i32>,
    processes: BTreeMap<u32, FakeProcess>,
    next_pid: u32,
    /// Worker ids whose cgroup reports an OOM kill.
    oom_killed: BTreeSet<String>,
}

/// See the module doc.
#[derive(Debug, Default)]
pub(crate) struct FakeProcessControl {
    state: Mutex<State>,
}

impl FakeProcessControl {
    pub(crate) fn new() -> FakeProcessControl {
        FakeProcessControl::default()
    }

    /// Every call so far, in order.
    pub(crate) fn calls(&self) -> Vec<FakeCall> {
        self.state.lock().unwrap().calls.clone()
    }

    /// The next `spawn` fails with `error` (queued: several calls fail several spawns).
    pub(crate) fn fail_next_spawn(&self, error: LaunchError) {
        self.state.lock().unwrap().spawn_failures.push_back(error);
    }

    /// The next `signal_group` fails with `error`, and nothing is delivered.
    pub(crate) fn fail_next_signal(&self, error: io::Error) {
        self.state.lock().unwrap().signal_failures.push_back(error);
    }

    /// Fake processes survive `sig` from now on (a worker that ignores SIGTERM).
    pub(crate) fn ignore_signal(&self, sig: Signal) {
        assert_ne!(sig, Signal::SIGKILL, "SIGKILL cannot be ignored");
        self.state.lock().unwrap().ignored.insert(sig as i32);
    }

    /// A process that runs without having been spawned by this agent (for adoption).
    pub(crate) fn add_running(&self, identity: ProcessIdentity) {
        let pid = identity.pid;
        self.state.lock().unwrap().processes.insert(pid, FakeProcess { identity, exit: None, running: true });
    }

    /// The process `pid` exits on its own with `report`. Panics if it is not running.
    pub(crate) fn exit(&self, pid: u32, report: ExitReport) {
        let mut state = self.state.lock().unwrap();
        let process =
            state.processes.get_mut(&pid).filter(|p| p.running).expect("exit of a fake process that is not running");
        end(process, report);
    }

    /// The cgroup of `worker_id` reports an OOM kill from now on.
    pub(crate) fn set_oom_killed(&self, worker_id: &str) {
        self.state.lock().unwrap().oom_killed.insert(worker_id.to_owned());
    }

    /// The pids of every successful spawn so far, in order.
    pub(crate) fn spawned(&self) -> Vec<u32> {
        (1..=self.state.lock().unwrap().next_pid).map(|n| 10_000 + n).collect()
    }

    /// The signals sent so far, in order, as `(pid, signal)`.
    pub(crate) fn signals(&self) -> Vec<(u32, Signal)> {
        let calls = self.calls();
        calls
            .into_iter()
            .filter_map(|c| match c {
                FakeCall::Signal { pid, signal } => Some((pid, signal)),
                _ => None,
            })
            .collect()
    }

    pub(crate) fn is_running(&self, pid: u32) -> bool {
        self.state.lock().unwrap().processes.get(&pid).is_some_and(|p| p.running)
    }
}

fn end(process: &mut FakeProcess, report: ExitReport) {
    process.running = false;
    if let Some(exit) = process.exit.take() {
        // The watcher may have been dropped: an exit nobody waits for is still an exit.
        let _ = exit.send(report);
    }
}

impl ProcessControl for FakeProcessControl {
    fn spawn(&self, spec: &LaunchSpec, _cgroup: &WorkerCgroup) -> Result<LaunchedWorker, LaunchError> {
        let mut state = self.state.lock().unwrap();
        state.calls.push(FakeCall::Spawn {
            topology_id: spec.topology_id.clone(),
            port: spec.port,
            worker_id: spec.worker_id.clone(),
        });
        if let Some(error) = state.spawn_failures.pop_front() {
            return Err(error);
        }
        state.next_pid += 1;
        let pid = 10_000 + state.next_pid;
        let identity = ProcessIdentity { pid, start_ticks: u64::from(pid) * 100, boot_id: FAKE_BOOT_ID.into() };
        let (tx, rx) = oneshot::channel();
        state.processes.insert(pid, FakeProcess { identity: identity.clone(), exit: Some(tx), running: true });
        Ok(LaunchedWorker { identity, exit: ExitWatch::fake(rx) })
    }

    fn signal_group(&self, identity: &ProcessIdentity, sig: Signal) -> io::Result<SignalOutcome> {
        let mut state = self.state.lock().unwrap();
        state.calls.push(FakeCall::Signal { pid: identity.pid, signal: sig });
        if let Some(error) = state.signal_failures.pop_front() {
            return Err(error);
        }
        let ignored = state.ignored.contains(&(sig as i32));
        match state.processes.get_mut(&identity.pid) {
            Some(p) if p.identity != *identity => Ok(SignalOutcome::NotOurs),
            Some(p) if p.running => {
                if !ignored {
                    end(p, ExitReport { code: None, signal: Some(sig as i32) });
                }
                Ok(SignalOutcome::Signalled)
            }
            Some(_) => Ok(SignalOutcome::Gone),
            None => Ok(SignalOutcome::NotOurs),
        }
    }

    fn liveness(&self, identity: &ProcessIdentity) -> Liveness {
        let mut state = self.state.lock().unwrap();
        state.calls.push(FakeCall::Liveness { pid: identity.pid });
        match state.processes.get(&identity.pid) {
            Some(p) if p.identity == *identity && p.running => Liveness::Alive,
            _ if identity.boot_id != FAKE_BOOT_ID => Liveness::Unknown,
            _ => Liveness::Dead,
        }
    }

    fn adopt(&self, identity: &ProcessIdentity) -> ExitWatch {
        let mut state = self.state.lock().unwrap();
        state.calls.push(FakeCall::Adopt { pid: identity.pid });
        let (tx, rx) = oneshot::channel();
        match state.processes.get_mut(&identity.pid) {
            Some(p) if p.identity == *identity && p.running => p.exit = Some(tx),
            // Not running (or not this one): the watch completes at once, like a pidfd of a
            // process that already exited.
            _ => drop(tx.send(ExitReport::UNKNOWN)),
        }
        ExitWatch::fake(rx)
    }

    fn kill_cgroup(&self, cgroup: &WorkerCgroup) -> Result<(), IsolationError> {
        let mut state = self.state.lock().unwrap();
        state.calls.push(FakeCall::KillCgroup { worker_id: cgroup.worker_id().to_owned() });
        Ok(())
    }

    fn oom_killed(&self, cgroup: &WorkerCgroup) -> bool {
        self.state.lock().unwrap().oom_killed.contains(cgroup.worker_id())
    }

    fn kill_left_in(&self, dir: &Path) -> Vec<u32> {
        self.state.lock().unwrap().calls.push(FakeCall::KillLeftIn { dir: dir.to_owned() });
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(port: u16) -> LaunchSpec {
        LaunchSpec {
            topology_id: "t".into(),
            worker_id: format!("w{port}"),
            port,
            supervisor_id: "s".into(),
            command: vec!["/bin/true".into()],
            env: BTreeMap::new(),
            worker_dir: "/nonexistent/w".into(),
            log_file: "/nonexistent/log".into(),
            blob_dir: "/nonexistent/blobs".into(),
            blobs: BTreeMap::new(),
            run_as: None,
        }
    }

    /// A cgroup that touches nothing (rlimits).
    fn cgroup() -> WorkerCgroup {
        WorkerCgroup::create(&crate::isolation::Mechanism::Rlimits, "w", &crate::isolation::Limits::default()).unwrap()
    }

    #[tokio::test]
    async fn records_calls_and_models_signals_and_exits() {
        let fake = FakeProcessControl::new();
        let mut a = fake.spawn(&spec(6700), &cgroup()).unwrap();
        let b = fake.spawn(&spec(6701), &cgroup()).unwrap();
        assert_ne!(a.identity.pid, b.identity.pid);
        assert_eq!(fake.liveness(&a.identity), Liveness::Alive);

        fake.ignore_signal(Signal::SIGTERM);
        assert_eq!(fake.signal_group(&a.identity, Signal::SIGTERM).unwrap(), SignalOutcome::Signalled);
        assert!(fake.is_running(a.identity.pid), "SIGTERM is ignored");
        assert_eq!(fake.signal_group(&a.identity, Signal::SIGKILL).unwrap(), SignalOutcome::Signalled);
        assert_eq!(a.exit.wait().await.unwrap(), ExitReport { code: None, signal: Some(9) });
        assert_eq!(fake.signal_group(&a.identity, Signal::SIGKILL).unwrap(), SignalOutcome::Gone);
        let stranger = ProcessIdentity { start_ticks: 1, ..b.identity.clone() };
        assert_eq!(fake.signal_group(&stranger, Signal::SIGKILL).unwrap(), SignalOutcome::NotOurs);
        assert!(fake.is_running(b.identity.pid));

        assert_eq!(
            fake.calls(),
            vec![
                FakeCall::Spawn { topology_id: "t".into(), port: 6700, worker_id: "w6700".into() },
                FakeCall::Spawn { topology_id: "t".into(), port: 6701, worker_id: "w6701".into() },
                FakeCall::Liveness { pid: a.identity.pid },
                FakeCall::Signal { pid: a.identity.pid, signal: Signal::SIGTERM },
                FakeCall::Signal { pid: a.identity.pid, signal: Signal::SIGKILL },
                FakeCall::Signal { pid: a.identity.pid, signal: Signal::SIGKILL },
                FakeCall::Signal { pid: b.identity.pid, signal: Signal::SIGKILL },
            ]
        );
    }

    #[tokio::test]
    async fn injected_failures_are_used_once_and_adopted_processes_exit_on_demand() {
        let fake = FakeProcessControl::new();
        fake.fail_next_spawn(LaunchError::Expand(crate::model::placeholders::ExpandError::EmptyCommand {
            topology: "t".into(),
            port: 6700,
        }));
        assert!(matches!(
            fake.spawn(&spec(6700), &cgroup()),
            Err(LaunchError::Expand(crate::model::placeholders::ExpandError::EmptyCommand { .. }))
        ));
        let w = fake.spawn(&spec(6700), &cgroup()).unwrap();
        fake.fail_next_signal(io::Error::from_raw_os_error(nix::libc::EPERM));
        assert!(fake.signal_group(&w.identity, Signal::SIGTERM).is_err());
        assert!(fake.is_running(w.identity.pid), "a failed signal delivers nothing");

        let old = ProcessIdentity { pid: 77, start_ticks: 5, boot_id: FAKE_BOOT_ID.into() };
        fake.add_running(old.clone());
        let mut watch = fake.adopt(&old);
        fake.exit(77, ExitReport::UNKNOWN);
        assert_eq!(watch.wait().await.unwrap(), ExitReport::UNKNOWN);
        assert_eq!(watch.wait().await.unwrap(), ExitReport::UNKNOWN, "wait may be repeated");
        assert_eq!(fake.liveness(&old), Liveness::Dead);
        let mut gone = fake.adopt(&old);
        assert_eq!(gone.wait().await.unwrap(), ExitReport::UNKNOWN, "adopting an exited process ends at once");
    }
}
