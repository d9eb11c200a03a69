//! The PURE per-port state machine: Storm's supervisor `Slot`, done so that every hard case
//! (kill during launch, assignment change while a worker dies, crash loop) is a table-driven
//! unit test that runs in microseconds.
//!
//! One [`Slot`] per port. The executor (one task owns all slots, STYLE habit 2) feeds it
//! [`Input`]s with an [`Env`] (`now`, wall clock, a jitter draw) and performs the returned
//! [`Action`]s: spawn, signal, forget a worker record. [`step`] does no I/O, reads no clock and
//! draws no random number, so the same script always gives the same answer.
//!
//! # States and transitions
//!
//! ```text
//! Empty                 --(Assign job with blobs)--------------------> WaitingForBlobs
//! Empty                 --(Assign job without blobs: Launch)---------> WaitingForWorkerStart
//! WaitingForBlobs       --(BlobsReady of this job: Launch)-----------> WaitingForWorkerStart
//! WaitingForBlobs       --(Assign another job / none)----------------> WaitingForBlobs / Empty
//! WaitingForWorkerStart --(Launched, liveness process)---------------> Running
//! WaitingForWorkerStart --(first Heartbeat, liveness heartbeat)------> Running
//! WaitingForWorkerStart --(start_timeout: SIGTERM)-------------------> KillAndRelaunch
//! WaitingForWorkerStart --(Deferred by the node restart budget)------> Backoff
//! WaitingForWorkerStart --(Exited / LaunchFailed, 1st failure: Launch)-> WaitingForWorkerStart
//! WaitingForWorkerStart --(Exited / LaunchFailed, later failures)------> Backoff
//! Running               --(Exited, 1st failure: Launch)--------------> WaitingForWorkerStart
//! Running               --(Exited, later failures)-------------------> Backoff
//! Running               --(no Heartbeat for heartbeat_timeout: SIGTERM)-> KillAndRelaunch
//! WaitingForWorkerStart
//!   or Running          --(operator Restart: SIGTERM)----------------> KillAndRelaunch
//! WaitingForWorkerStart
//!   or Running          --(Assign another job / none: SIGTERM)-------> Kill
//! WaitingForWorkerStart
//!   (worker up) or Running --(BlobUpdate of this job: SIGTERM)-------> KillBlobUpdate
//! Kill                  --(Assign the killed job again)--------------> KillAndRelaunch
//! KillAndRelaunch,
//!   KillBlobUpdate      --(Assign another job / none)----------------> Kill
//! Kill, KillAndRelaunch
//!   or KillBlobUpdate   --(grace: SIGKILL; again every grace, error)-> same state
//! Kill                  --(Exited, nothing assigned)-----------------> Empty
//! Kill                  --(Exited, another job assigned)-------------> WaitingForBlobs / ..Start
//! KillAndRelaunch       --(Exited: relaunch; a failure may wait)-----> WaitingForWorkerStart / Backoff
//! KillBlobUpdate        --(Exited)-----------------------------------> WaitingForBlobUpdate
//! Kill, KillAndRelaunch
//!   or KillBlobUpdate   --(LaunchFailed / Deferred of the launch being killed)-> as on Exited
//! WaitingForBlobUpdate  --(BlobsReady of this job: Launch restart)---> WaitingForWorkerStart
//! WaitingForBlobUpdate  --(Assign another job / none)----------------> WaitingForBlobs / ..Start / Empty
//! WaitingForBlobs
//!   or WaitingForBlobUpdate --(BlobProblem of this job: sets error)--> same state
//! Backoff               --(until / ResetBackoff / Restart: Launch)---> WaitingForWorkerStart
//! Backoff               --(Assign another job / none)----------------> WaitingForBlobs / Empty
//! Empty, WaitingForBlobs, WaitingForBlobUpdate
//!   or Backoff          --(Adopt after an agent restart)-------------> Running
//! ```
//!
//! Every input not listed for a state leaves it as it is (no action but the `Forget` of an
//! `Exited`). That includes `BlobUpdate` anywhere but a started worker of the same job (in
//! `Backoff` or during a launch the next process starts on the new versions anyway, and the
//! executor asks again on every pass), and `Restart` in `KillBlobUpdate` (already killing in
//! order to relaunch) and `WaitingForBlobUpdate` (no process; `BlobsReady` launches).
//!
//! # Invariants
//!
//! - At most one process per slot. A launch is *outstanding* from the `Launch` action until
//!   `Launched`, `LaunchFailed` or `Deferred` answers it; while one is outstanding no other
//!   `Launch` is emitted. A kill decided during an outstanding launch waits for `Launched` and
//!   then signals that worker (`worker: None` in [`Killing`]).
//! - Any process the slot did not ask for (a `Launched` with no outstanding launch, an `Adopt`
//!   next to a live worker) gets SIGKILL: the executor vouches it is ours, and two workers on
//!   one port would fight over it.
//! - Exits are checked in EVERY state (Storm misses exits during start). Every `Exited` emits
//!   `Forget`, also for unknown or old worker ids, which are otherwise ignored.
//! - A kill never gives up: SIGKILL is re-sent every `max(shutdown_grace, 1 s)` with `error` set
//!   until the exit is seen.
//! - `state_since` changes exactly when a state is entered (also when a relaunch re-enters
//!   `WaitingForWorkerStart`), not on updates inside a state (a heartbeat, an escalation).
//! - A new job on the slot starts with fresh counters (`restarts`, failures, `last_exit`,
//!   `error`): they describe one topology's worker on this port. A blob update keeps the job,
//!   so its counters survive the `KillBlobUpdate` → `WaitingForBlobUpdate` → relaunch cycle.
//! - A blob update never relaunches on its own: after the kill the slot waits in
//!   `WaitingForBlobUpdate` for `BlobsReady` of the same job, whatever ended the kill (the
//!   exit, or the answer to a launch that was being killed). The relaunch is a restart
//!   (`Launch { restart: true }`): counted in `restarts`, subject to the node restart budget.
//! - In `WaitingForBlobs` and `WaitingForBlobUpdate`, `error` is what the last `BlobProblem`
//!   of the job said (why its blobs are not local); it never changes the state.
//!
//! # Restart policy
//!
//! The first restart after a failure is immediate; the n-th consecutive failure (n ≥ 2) waits
//! `backoff_initial * 2^(n-2)`, capped at `backoff_max`, drawn from `[d/2, d]` with
//! [`Env::jitter`]. Failures are crashes, launch failures and timeout kills; operator restarts,
//! blob-update restarts and assignment changes are not. A worker that has been `Running` for
//! `reset_after` forgets earlier failures. `restarts` counts relaunches that actually started a
//! process.

mod step;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{RestartConfig, WorkerConfig};
use crate::model::assignment::{BlobRef, Launch, LivenessMode};
use crate::model::{ExitReason, LastExit, SlotStateName, WorkerInfo};

pub(crate) use step::step;

/// What a slot should run, derived from the assignment for this port. Equality decides "same
/// job": any change of the assignment's part (command, env, blobs, its own timeouts in
/// `launch`) means the worker must be replaced. The effective timeouts are NOT part of it: they
/// also follow the agent's config, and a config reload must not restart workers.
#[derive(Debug, Clone)]
pub(crate) struct SlotJob {
    pub topology_id: String,
    pub launch: Launch,
    pub blobs: Vec<BlobRef>,
    /// Effective start timeout: the assignment's, capped by `max_timeout`, else the config's.
    pub start_timeout: Duration,
    /// Effective heartbeat timeout (same rule); used only with [`LivenessMode::Heartbeat`].
    pub heartbeat_timeout: Duration,
}

impl PartialEq for SlotJob {
    fn eq(&self, other: &SlotJob) -> bool {
        self.topology_id == other.topology_id && self.launch == other.launch && self.blobs == other.blobs
    }
}

impl Eq for SlotJob {}

impl SlotJob {
    /// The job of one port: the assignment's part and the effective timeouts
    /// ([`JobTimeouts::effective`]).
    pub(crate) fn new(topology_id: String, launch: Launch, blobs: Vec<BlobRef>, timeouts: &JobTimeouts) -> SlotJob {
        SlotJob {
            start_timeout: timeouts.effective(launch.start_timeout_secs, timeouts.start),
            heartbeat_timeout: timeouts.effective(launch.heartbeat_timeout_secs, timeouts.heartbeat),
            topology_id,
            launch,
            blobs,
        }
    }

    fn heartbeat_liveness(&self) -> bool {
        self.launch.liveness == LivenessMode::Heartbeat
    }
}

/// An assignment that places a worker on this port but cannot run there: its payload is
/// invalid, so the slot gets no job from it (or keeps the last good one). Reported as the
/// slot's `error` (SPEC §3.1); it never changes what the slot does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unrunnable {
    pub topology_id: String,
    pub error: String,
    /// Since when its payload is unusable (unix ms): the `since_ms` of an empty slot's entry.
    pub since_ms: u64,
}

/// The node's job timeouts (`[worker]`): the defaults of a job that sets none, and the cap of
/// what an assignment may ask for (SPEC §3.2). Live-reloadable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct JobTimeouts {
    pub start: Duration,
    pub heartbeat: Duration,
    pub max: Duration,
}

impl JobTimeouts {
    pub(crate) fn from_config(worker: &WorkerConfig) -> JobTimeouts {
        JobTimeouts { start: worker.start_timeout, heartbeat: worker.heartbeat_timeout, max: worker.max_timeout }
    }

    /// The one rule for a job's timeout: the assignment's own (`secs`), else the node's
    /// `default`; capped by `max` either way (config validation keeps the defaults under it).
    pub(crate) fn effective(&self, secs: Option<u64>, default: Duration) -> Duration {
        secs.map_or(default, Duration::from_secs).min(self.max)
    }
}

/// The node-wide knobs of kills and restarts (`[worker]` and `[restart]`); live-reloadable,
/// so it is passed to every [`step`] rather than kept in the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Policy {
    pub shutdown_grace: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub reset_after: Duration,
}

impl Policy {
    pub(crate) fn from_config(worker: &WorkerConfig, restart: &RestartConfig) -> Policy {
        Policy {
            shutdown_grace: worker.shutdown_grace,
            backoff_initial: restart.backoff_initial,
            backoff_max: restart.backoff_max,
            reset_after: restart.reset_after,
        }
    }
}

/// A worker process of this slot, as the executor started or adopted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Worker {
    pub worker_id: String,
    pub pid: u32,
}

/// What happened, fed to [`step`] by the executor.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Input {
    /// Time passed: act on deadlines (see [`Slot::next_deadline`]).
    Tick,
    /// The desired job for this port now (`None`: nothing assigned). Same job again: no-op.
    Assign(Option<Arc<SlotJob>>),
    /// All blobs of this job are local. Carries the job so that a late answer for a job the
    /// slot no longer wants is dropped instead of launching the new job without its blobs.
    BlobsReady(Arc<SlotJob>),
    /// A blob of this job with `restart_on_update` has a new version ready locally: restart
    /// the worker on it. Carries the job for the same reason as `BlobsReady`.
    BlobUpdate(Arc<SlotJob>),
    /// Why the blobs of this job are not local (e.g. a failed download), for `error`; `None`
    /// once that no longer holds. Only reported: the executor keeps trying.
    BlobProblem { job: Arc<SlotJob>, error: Option<String> },
    /// The outstanding launch started this process.
    Launched(Worker),
    /// The outstanding launch could not spawn; counts as a crash, the message goes to `error`.
    LaunchFailed(String),
    /// A worker of this slot ended; code/signal `None` when unknown (e.g. adopted).
    Exited { worker_id: String, code: Option<i32>, signal: Option<i32> },
    /// The worker's heartbeat file was touched (at `now`).
    Heartbeat { worker_id: String },
    /// The node-wide restart budget refused the outstanding launch: try again at `until`.
    Deferred { until: Instant },
    /// Operator: kill and relaunch now (not a failure: no backoff).
    Restart,
    /// Operator: forget earlier failures; leave `Backoff` now.
    ResetBackoff,
    /// After an agent restart: `worker` (identity proven by the executor) already runs `job`.
    Adopt { worker: Worker, job: Arc<SlotJob> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    Term,
    Kill,
}

/// What the executor must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    /// Start a worker for `job` (a new worker id), then answer with `Launched`, `LaunchFailed`
    /// or `Deferred`. `restart`: a relaunch of the same job, subject to the node restart budget.
    Launch { job: Arc<SlotJob>, restart: bool },
    /// Signal the worker's process group.
    Signal { worker: Worker, signal: Signal },
    /// The worker is gone: drop its record (persisted workers, heartbeat watch, directory).
    Forget { worker_id: String },
}

/// The outside world at one step: the executor reads the clocks and draws the jitter.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Env {
    pub now: Instant,
    /// Wall clock (ms since the epoch), only for the timestamps reported in SupervisorInfo.
    pub wall_ms: u64,
    /// Uniform in `[0, 1]`; spreads backoffs so crashed workers do not restart in lockstep.
    pub jitter: f64,
}

/// A kill in progress.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Killing {
    /// The job of the worker being killed.
    pub job: Arc<SlotJob>,
    /// `None` while our launch is outstanding: signalled as soon as `Launched` names it.
    pub worker: Option<Worker>,
    /// Recorded in `last_exit.reason` when the worker exits.
    pub reason: ExitReason,
    pub sigkill_sent: bool,
    /// When to send the next SIGKILL; `None` exactly when `worker` is `None`.
    pub deadline: Option<Instant>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SlotState {
    Empty,
    WaitingForBlobs {
        job: Arc<SlotJob>,
    },
    /// A launch is outstanding (`worker: None`), or the process runs but has not sent its
    /// first heartbeat yet.
    WaitingForWorkerStart {
        job: Arc<SlotJob>,
        worker: Option<Worker>,
        restart: bool,
        /// Launch time + `start_timeout`.
        deadline: Instant,
    },
    Running {
        job: Arc<SlotJob>,
        worker: Worker,
        last_heartbeat: Instant,
        /// Entry + `reset_after`: from then on earlier failures are forgotten.
        reset_at: Instant,
    },
    /// Killing the worker; then `next` (or nothing). `next` is never the killed job itself:
    /// that is [`SlotState::KillAndRelaunch`].
    Kill {
        kill: Killing,
        next: Option<Arc<SlotJob>>,
    },
    /// Killing the worker, then relaunching the same job.
    KillAndRelaunch {
        kill: Killing,
    },
    /// Killing the worker so that the same job relaunches on the new version of a blob with
    /// `restart_on_update`; then [`SlotState::WaitingForBlobUpdate`]. Reason `Killed`: not a
    /// failure.
    KillBlobUpdate {
        kill: Killing,
    },
    /// The worker stopped for a blob update is gone: waiting for `BlobsReady` of `job` to
    /// relaunch it.
    WaitingForBlobUpdate {
        job: Arc<SlotJob>,
    },
    /// Waiting until `until`, then launching `job` (`restart` as for [`Action::Launch`]).
    Backoff {
        job: Arc<SlotJob>,
        until: Instant,
        restart: bool,
    },
}

impl SlotState {
    /// The process of this slot, if one is known to run.
    pub(crate) fn worker(&self) -> Option<&Worker> {
        match self {
            Self::WaitingForWorkerStart { worker, .. } => worker.as_ref(),
            Self::Running { worker, .. } => Some(worker),
            Self::Kill { kill, .. } | Self::KillAndRelaunch { kill } | Self::KillBlobUpdate { kill } => {
                kill.worker.as_ref()
            }
            Self::Empty | Self::WaitingForBlobs { .. } | Self::WaitingForBlobUpdate { .. } | Self::Backoff { .. } => {
                None
            }
        }
    }

    /// The job this slot is busy with: while killing, the job of the worker being killed.
    pub(crate) fn job(&self) -> Option<&Arc<SlotJob>> {
        match self {
            Self::Empty => None,
            Self::WaitingForBlobs { job }
            | Self::WaitingForWorkerStart { job, .. }
            | Self::Running { job, .. }
            | Self::WaitingForBlobUpdate { job }
            | Self::Backoff { job, .. } => Some(job),
            Self::Kill { kill, .. } | Self::KillAndRelaunch { kill } | Self::KillBlobUpdate { kill } => Some(&kill.job),
        }
    }

    /// The kill in progress, if the slot is stopping its worker.
    pub(crate) fn killing(&self) -> Option<&Killing> {
        match self {
            Self::Kill { kill, .. } | Self::KillAndRelaunch { kill } | Self::KillBlobUpdate { kill } => Some(kill),
            _ => None,
        }
    }
}

/// One port: its state and what is reported about it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Slot {
    pub port: u16,
    pub state: SlotState,
    /// Relaunches of the current job that started a process (the first launch is not one).
    pub restarts: u32,
    /// Failures in a row; drives the backoff.
    pub consecutive_failures: u32,
    pub last_exit: Option<LastExit>,
    /// Why the slot cannot run its worker (launch failure, a worker surviving SIGKILL).
    pub error: Option<String>,
    pub state_since: Instant,
    pub state_since_ms: u64,
}

impl Slot {
    pub(crate) fn new(port: u16, now: Instant, wall_ms: u64) -> Slot {
        Slot {
            port,
            state: SlotState::Empty,
            restarts: 0,
            consecutive_failures: 0,
            last_exit: None,
            error: None,
            state_since: now,
            state_since_ms: wall_ms,
        }
    }

    /// The earliest instant at which a [`Input::Tick`] would change something; `None`: only
    /// an input will.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        match &self.state {
            SlotState::Empty | SlotState::WaitingForBlobs { .. } | SlotState::WaitingForBlobUpdate { .. } => None,
            SlotState::WaitingForWorkerStart { deadline, .. } => Some(*deadline),
            // Not `reset_at`: forgetting earlier failures changes nothing anyone sees until the
            // worker's next exit, which applies it (a wake-up for it cost every restart a job).
            SlotState::Running { job, last_heartbeat, .. } => {
                job.heartbeat_liveness().then(|| step::after(*last_heartbeat, job.heartbeat_timeout))
            }
            SlotState::Kill { kill, .. } | SlotState::KillAndRelaunch { kill } | SlotState::KillBlobUpdate { kill } => {
                kill.deadline
            }
            SlotState::Backoff { until, .. } => Some(*until),
        }
    }

    pub(crate) fn state_name(&self) -> SlotStateName {
        match self.state {
            SlotState::Empty => SlotStateName::Empty,
            SlotState::WaitingForBlobs { .. } => SlotStateName::WaitingForBlobs,
            SlotState::WaitingForWorkerStart { .. } => SlotStateName::WaitingForWorkerStart,
            SlotState::Running { .. } => SlotStateName::Running,
            SlotState::Kill { .. } => SlotStateName::Kill,
            SlotState::KillAndRelaunch { .. } => SlotStateName::KillAndRelaunch,
            SlotState::KillBlobUpdate { .. } => SlotStateName::KillBlobUpdate,
            SlotState::WaitingForBlobUpdate { .. } => SlotStateName::WaitingForBlobUpdate,
            SlotState::Backoff { .. } => SlotStateName::Backoff,
        }
    }

    /// The process of this slot, if one is known to run.
    pub(crate) fn worker(&self) -> Option<&Worker> {
        self.state.worker()
    }

    /// The job this slot is busy with: while killing, the job of the worker being killed.
    pub(crate) fn job(&self) -> Option<&Arc<SlotJob>> {
        self.state.job()
    }

    /// What SPEC §3.1 `workers[]` says about this port: [`Slot::to_worker_info`], with the
    /// reason of an assignment that cannot run here in `error` (the slot's own error first)
    /// when it is the slot's topology. An empty slot has an entry only for such an
    /// assignment: state `empty`, no worker, its topology and the reason.
    pub(crate) fn report(&self, unrunnable: Option<&Unrunnable>) -> Option<WorkerInfo> {
        let Some(mut info) = self.to_worker_info() else {
            let u = unrunnable?;
            return Some(WorkerInfo {
                port: self.port,
                topology_id: u.topology_id.clone(),
                worker_id: String::new(),
                pid: None,
                state: SlotStateName::Empty,
                since_ms: u.since_ms,
                restarts: 0,
                last_exit: None,
                error: Some(u.error.clone()),
                usage: None,
            });
        };
        if info.error.is_none()
            && let Some(u) = unrunnable.filter(|u| u.topology_id == info.topology_id)
        {
            info.error = Some(u.error.clone());
        }
        Some(info)
    }

    /// The SPEC §3.1 `workers[]` entry of what the slot runs; `None` when the slot is empty.
    pub(crate) fn to_worker_info(&self) -> Option<WorkerInfo> {
        let job = self.job()?;
        let worker = self.worker();
        Some(WorkerInfo {
            port: self.port,
            topology_id: job.topology_id.clone(),
            worker_id: worker.map(|w| w.worker_id.clone()).unwrap_or_default(),
            pid: worker.map(|w| w.pid),
            state: self.state_name(),
            since_ms: self.state_since_ms,
            restarts: self.restarts,
            last_exit: self.last_exit.clone(),
            error: self.error.clone(),
            usage: None,
        })
    }
}
