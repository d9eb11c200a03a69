//! The narrow seam between the executor and the kernel (the youki `Syscall` pattern).
//!
//! The executor that carries out the slot state machine's actions needs exactly four things
//! from the operating system: start a worker, signal a worker's group, ask whether a recorded
//! worker is still the process it was, and watch a worker it adopted for its exit.
//! [`ProcessControl`] is those four and nothing more, so the executor can be tested against [`super::fake::FakeProcessControl`] (which
//! records every call and injects failures) in microseconds, while [`RealProcessControl`] is
//! tested against real processes in `worker/tests.rs`.
//!
//! `spawn` returns a [`LaunchedWorker`] rather than [`super::launch::Spawned`] because a fake
//! cannot make a `tokio::process::Child`; the exit is handed over as an [`ExitWatch`], which
//! is also what an adopted worker gets, so the executor waits for both the same way.

use std::io;

use nix::sys::signal::Signal;

use super::exit::ExitWatch;
use super::launch::{self, LaunchError, LaunchSpec};
use super::signal::{self, SignalOutcome};
use crate::proc_identity::{Liveness, ProcessIdentity};

/// A worker that was just started through [`ProcessControl::spawn`].
#[derive(Debug)]
pub struct LaunchedWorker {
    pub identity: ProcessIdentity,
    /// Await [`ExitWatch::wait`] to learn of its exit.
    pub exit: ExitWatch,
}

/// Everything the executor does to worker processes.
pub trait ProcessControl: Send + Sync {
    /// Starts a worker (see [`launch::spawn`]). Needs a tokio runtime.
    fn spawn(&self, spec: &LaunchSpec) -> Result<LaunchedWorker, LaunchError>;

    /// Signals the worker's process group if it is provably the recorded process
    /// (see [`signal::signal_group`]).
    fn signal_group(&self, identity: &ProcessIdentity, sig: Signal) -> io::Result<SignalOutcome>;

    /// Whether the recorded process still runs: `Alive` only with pid, start time and boot id
    /// all matching. Adoption at start uses this to keep a worker or forget it.
    fn liveness(&self, identity: &ProcessIdentity) -> Liveness;

    /// Watches a worker found running at start, which is not our child (see
    /// [`super::exit::wait_adopted`]). Part of the seam so that executor tests can decide
    /// when an adopted fake worker exits.
    fn adopt(&self, identity: &ProcessIdentity) -> ExitWatch;
}

/// The real thing: processes, `/proc`, `killpg`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealProcessControl;

impl ProcessControl for RealProcessControl {
    fn spawn(&self, spec: &LaunchSpec) -> Result<LaunchedWorker, LaunchError> {
        let spawned = launch::spawn(spec)?;
        Ok(LaunchedWorker { identity: spawned.identity, exit: ExitWatch::child(spawned.child) })
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
}
