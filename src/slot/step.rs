//! [`step`]: one input, one transition. The transitions are listed in the module docs of
//! [`crate::slot`]; each arm below names the one it implements.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Action, Env, Input, Killing, Policy, Signal, Slot, SlotJob, SlotState, Worker};
use crate::model::{ExitReason, LastExit};

/// Never re-send SIGKILL more often than this, even with `shutdown_grace = 0`.
const MIN_SIGKILL_INTERVAL: Duration = Duration::from_secs(1);

/// Feeds `input` to `slot` and returns the new slot and what the executor must do, in order.
pub(crate) fn step(slot: Slot, input: Input, env: &Env, policy: &Policy) -> (Slot, Vec<Action>) {
    let mut s = Step { slot, env, policy, actions: Vec::new(), entered: false };
    let before = s.slot.state_name();
    let state = std::mem::replace(&mut s.slot.state, SlotState::Empty);
    let state = s.input(state, input);
    s.slot.state = state;
    if s.entered || s.slot.state_name() != before {
        s.slot.state_since = env.now;
        s.slot.state_since_ms = env.wall_ms;
    }
    (s.slot, s.actions)
}

/// The backoff before relaunching after the `failures`-th failure in a row: none for the first,
/// then `backoff_initial * 2^(failures-2)` capped at `backoff_max`, drawn from `[d/2, d]`.
pub(crate) fn backoff_delay(failures: u32, policy: &Policy, jitter: f64) -> Duration {
    if failures <= 1 {
        return Duration::ZERO;
    }
    // 2^30 already exceeds any sane cap; stopping there keeps the shift in range.
    let factor = 1u32 << (failures - 2).min(30);
    let full = policy.backoff_initial.saturating_mul(factor).min(policy.backoff_max);
    // NaN or out-of-range jitter from the executor must not panic nor shorten the wait.
    let jitter = if jitter.is_nan() { 1.0 } else { jitter.clamp(0.0, 1.0) };
    let half = full / 2;
    let extra = Duration::try_from_secs_f64((full - half).as_secs_f64() * jitter).unwrap_or(full - half);
    half.saturating_add(extra).min(full)
}

/// `at + d`, or a far future if that overflows (a timeout of u64::MAX seconds means never).
pub(super) fn after(at: Instant, d: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 86_400);
    at.checked_add(d).or_else(|| at.checked_add(CENTURY)).unwrap_or(at)
}

struct Step<'a> {
    slot: Slot,
    env: &'a Env,
    policy: &'a Policy,
    actions: Vec<Action>,
    /// Set when a state is (re-)entered even though its name did not change (a relaunch).
    entered: bool,
}

impl Step<'_> {
    fn input(&mut self, state: SlotState, input: Input) -> SlotState {
        use SlotState as S;
        match input {
            Input::Tick => self.tick(state),
            Input::Assign(desired) => self.assign(state, desired),
            Input::BlobsReady(ready) => match state {
                // WaitingForBlobs --(BlobsReady of this job: Launch)--> WaitingForWorkerStart
                S::WaitingForBlobs { job } if *job == *ready => self.launch(job, false),
                // WaitingForBlobUpdate --(BlobsReady of this job: Launch restart)--> WaitingForWorkerStart
                S::WaitingForBlobUpdate { job } if *job == *ready => self.launch(job, true),
                other => other,
            },
            Input::BlobUpdate(updated) => match state {
                // WaitingForWorkerStart (worker up), Running --(BlobUpdate: SIGTERM)--> KillBlobUpdate
                S::WaitingForWorkerStart { job, worker: Some(worker), .. } if *job == *updated => {
                    self.update_kill(job, worker)
                }
                S::Running { job, worker, .. } if *job == *updated => self.update_kill(job, worker),
                // No started worker of this job: its next launch takes the new versions anyway.
                other => other,
            },
            Input::BlobProblem { job: of, error } => match state {
                // WaitingForBlobs, WaitingForBlobUpdate --(BlobProblem: sets error)--> same state
                S::WaitingForBlobs { ref job } | S::WaitingForBlobUpdate { ref job } if **job == *of => {
                    self.slot.error = error;
                    state
                }
                other => other,
            },
            Input::Launched(worker) => self.launched(state, worker),
            Input::LaunchFailed(message) => match state {
                S::WaitingForWorkerStart { job, worker: None, .. } => {
                    self.slot.error = Some(message);
                    self.failed(job)
                }
                S::Kill { kill, next } if kill.worker.is_none() => {
                    self.slot.error = Some(message);
                    self.killed(kill, next)
                }
                S::KillAndRelaunch { kill } if kill.worker.is_none() => {
                    self.slot.error = Some(message);
                    let next = Some(kill.job.clone());
                    self.killed(kill, next)
                }
                S::KillBlobUpdate { kill } if kill.worker.is_none() => {
                    self.slot.error = Some(message);
                    update_killed(kill)
                }
                other => other,
            },
            Input::Deferred { until } => match state {
                // WaitingForWorkerStart --(Deferred by the node restart budget)--> Backoff
                S::WaitingForWorkerStart { job, worker: None, restart, .. } => S::Backoff { job, until, restart },
                // The refused launch was to be killed anyway: no process, the kill is done.
                S::Kill { kill, next } if kill.worker.is_none() => self.killed(kill, next),
                S::KillAndRelaunch { kill } if kill.worker.is_none() => {
                    S::Backoff { job: kill.job, until, restart: true }
                }
                // The relaunch waits for BlobsReady, which meets the budget again.
                S::KillBlobUpdate { kill } if kill.worker.is_none() => update_killed(kill),
                other => other,
            },
            Input::Exited { worker_id, code, signal } => {
                self.actions.push(Action::Forget { worker_id: worker_id.clone() });
                self.exited(state, &worker_id, code, signal)
            }
            Input::Heartbeat { worker_id } => match state {
                // WaitingForWorkerStart --(first Heartbeat, liveness heartbeat)--> Running
                S::WaitingForWorkerStart { job, worker: Some(worker), .. } if worker.worker_id == worker_id => {
                    self.running(job, worker)
                }
                S::Running { job, worker, reset_at, .. } if worker.worker_id == worker_id => {
                    S::Running { job, worker, last_heartbeat: self.env.now, reset_at }
                }
                other => other,
            },
            Input::Restart => match state {
                // WaitingForWorkerStart, Running --(operator Restart: SIGTERM)--> KillAndRelaunch
                S::WaitingForWorkerStart { job, worker, .. } => self.start_kill(job, worker, ExitReason::Killed),
                S::Running { job, worker, .. } => self.start_kill(job, Some(worker), ExitReason::Killed),
                // Backoff --(Restart: Launch)--> WaitingForWorkerStart; keeps the failure count.
                S::Backoff { job, .. } => self.launch(job, true),
                // KillBlobUpdate already kills to relaunch; WaitingForBlobUpdate has no process
                // and relaunches on BlobsReady.
                other => other,
            },
            Input::ResetBackoff => {
                self.slot.consecutive_failures = 0;
                match state {
                    // Backoff --(ResetBackoff: Launch)--> WaitingForWorkerStart
                    S::Backoff { job, restart, .. } => self.launch(job, restart),
                    other => other,
                }
            }
            Input::Adopt { worker, job } => self.adopt(state, worker, job),
        }
    }

    fn tick(&mut self, state: SlotState) -> SlotState {
        use SlotState as S;
        let now = self.env.now;
        match state {
            // WaitingForWorkerStart --(start_timeout: SIGTERM)--> KillAndRelaunch
            S::WaitingForWorkerStart { job, worker, deadline, .. } if now >= deadline => {
                self.start_kill(job, worker, ExitReason::StartTimeout)
            }
            S::Running { job, worker, last_heartbeat, reset_at } => {
                if now >= reset_at {
                    self.slot.consecutive_failures = 0;
                }
                if job.heartbeat_liveness() && now >= after(last_heartbeat, job.heartbeat_timeout) {
                    // Running --(no Heartbeat for heartbeat_timeout: SIGTERM)--> KillAndRelaunch
                    self.start_kill(job, Some(worker), ExitReason::HeartbeatTimeout)
                } else {
                    S::Running { job, worker, last_heartbeat, reset_at }
                }
            }
            S::Kill { mut kill, next } => {
                self.escalate(&mut kill);
                S::Kill { kill, next }
            }
            S::KillAndRelaunch { mut kill } => {
                self.escalate(&mut kill);
                S::KillAndRelaunch { kill }
            }
            S::KillBlobUpdate { mut kill } => {
                self.escalate(&mut kill);
                S::KillBlobUpdate { kill }
            }
            // Backoff --(until: Launch)--> WaitingForWorkerStart
            S::Backoff { job, until, restart } if now >= until => self.launch(job, restart),
            other => other,
        }
    }

    fn assign(&mut self, state: SlotState, desired: Option<Arc<SlotJob>>) -> SlotState {
        use SlotState as S;
        // An equal job with other effective timeouts (a config reload): take the new values
        // for every later deadline, without touching the worker.
        let state = match &desired {
            Some(d) => refresh_job(state, d),
            None => state,
        };
        let wanted = |job: &Arc<SlotJob>| desired.as_deref() == Some(&**job);
        match state {
            S::Empty => self.begin(desired),
            S::WaitingForBlobs { ref job } | S::WaitingForBlobUpdate { ref job } | S::Backoff { ref job, .. }
                if wanted(job) =>
            {
                state
            }
            // WaitingForBlobs, WaitingForBlobUpdate, Backoff --(Assign other job / none)-->
            // WaitingForBlobs / WaitingForWorkerStart / Empty: no process to stop.
            S::WaitingForBlobs { .. } | S::WaitingForBlobUpdate { .. } | S::Backoff { .. } => self.begin(desired),
            S::WaitingForWorkerStart { ref job, .. } | S::Running { ref job, .. } if wanted(job) => state,
            // WaitingForWorkerStart, Running --(Assign other job / none: SIGTERM)--> Kill
            S::WaitingForWorkerStart { job, worker, .. } => self.kill_then(job, worker, desired),
            S::Running { job, worker, .. } => self.kill_then(job, Some(worker), desired),
            // The update kill goes on while its job is still wanted.
            S::KillBlobUpdate { ref kill } if wanted(&kill.job) => state,
            // Kill <--(Assign)--> KillAndRelaunch, KillBlobUpdate --(Assign other / none)--> Kill:
            // only what follows the kill changes.
            S::Kill { kill, .. } | S::KillAndRelaunch { kill } | S::KillBlobUpdate { kill } => killing(kill, desired),
        }
    }

    fn launched(&mut self, state: SlotState, worker: Worker) -> SlotState {
        use SlotState as S;
        match state {
            S::WaitingForWorkerStart { job, worker: None, restart, deadline } => {
                self.slot.error = None;
                if restart {
                    self.slot.restarts = self.slot.restarts.saturating_add(1);
                }
                if job.heartbeat_liveness() {
                    S::WaitingForWorkerStart { job, worker: Some(worker), restart, deadline }
                } else {
                    // WaitingForWorkerStart --(Launched, liveness process)--> Running
                    self.running(job, worker)
                }
            }
            // The kill decided while the launch was outstanding can now be carried out.
            S::Kill { mut kill, next } if kill.worker.is_none() => {
                self.term(&mut kill, worker);
                S::Kill { kill, next }
            }
            S::KillAndRelaunch { mut kill } if kill.worker.is_none() => {
                self.term(&mut kill, worker);
                S::KillAndRelaunch { kill }
            }
            S::KillBlobUpdate { mut kill } if kill.worker.is_none() => {
                self.term(&mut kill, worker);
                S::KillBlobUpdate { kill }
            }
            other => {
                self.stray(worker);
                other
            }
        }
    }

    fn exited(&mut self, state: SlotState, id: &str, code: Option<i32>, signal: Option<i32>) -> SlotState {
        use SlotState as S;
        let ours = |w: &Option<Worker>| w.as_ref().is_some_and(|w| w.worker_id == id);
        let at_ms = self.env.wall_ms;
        let record = |slot: &mut Slot, reason| {
            slot.last_exit = Some(LastExit { code, signal: signal.map(crate::worker::signal_name), reason, at_ms });
        };
        match state {
            // WaitingForWorkerStart, Running --(Exited: relaunch or Backoff)
            S::WaitingForWorkerStart { job, ref worker, .. } if ours(worker) => {
                record(&mut self.slot, ExitReason::Exited);
                self.failed(job)
            }
            S::Running { job, worker, reset_at, .. } if worker.worker_id == id => {
                record(&mut self.slot, ExitReason::Exited);
                if self.env.now >= reset_at {
                    self.slot.consecutive_failures = 0;
                }
                self.failed(job)
            }
            S::Kill { kill, next } if ours(&kill.worker) => {
                record(&mut self.slot, kill.reason);
                self.slot.error = None;
                self.killed(kill, next)
            }
            S::KillAndRelaunch { kill } if ours(&kill.worker) => {
                record(&mut self.slot, kill.reason);
                self.slot.error = None;
                let next = Some(kill.job.clone());
                self.killed(kill, next)
            }
            S::KillBlobUpdate { kill } if ours(&kill.worker) => {
                record(&mut self.slot, kill.reason);
                self.slot.error = None;
                update_killed(kill)
            }
            // An old or unknown worker: already forgotten above, nothing else to do.
            other => other,
        }
    }

    fn adopt(&mut self, state: SlotState, worker: Worker, job: Arc<SlotJob>) -> SlotState {
        use SlotState as S;
        match state {
            // Empty, WaitingForBlobs, WaitingForBlobUpdate, Backoff --(Adopt)--> Running: same
            // process, no relaunch.
            S::Empty | S::WaitingForBlobs { .. } | S::WaitingForBlobUpdate { .. } | S::Backoff { .. } => {
                if state.job() != Some(&job) {
                    self.forget_job();
                }
                self.running(job, worker)
            }
            // Already ours: nothing to do. Anything else would be a second process on the port.
            other if other.worker().is_some_and(|w| w.worker_id == worker.worker_id) => other,
            other => {
                self.stray(worker);
                other
            }
        }
    }

    /// A new job (or none) on this slot: fresh counters, then blobs or straight to launch.
    fn begin(&mut self, job: Option<Arc<SlotJob>>) -> SlotState {
        self.forget_job();
        self.entered = true;
        match job {
            None => SlotState::Empty,
            Some(job) if job.blobs.is_empty() => self.launch(job, false),
            Some(job) => SlotState::WaitingForBlobs { job },
        }
    }

    fn forget_job(&mut self) {
        self.slot.restarts = 0;
        self.slot.consecutive_failures = 0;
        self.slot.last_exit = None;
        self.slot.error = None;
    }

    fn launch(&mut self, job: Arc<SlotJob>, restart: bool) -> SlotState {
        self.entered = true;
        self.actions.push(Action::Launch { job: job.clone(), restart });
        let deadline = after(self.env.now, job.start_timeout);
        SlotState::WaitingForWorkerStart { job, worker: None, restart, deadline }
    }

    fn running(&mut self, job: Arc<SlotJob>, worker: Worker) -> SlotState {
        self.entered = true;
        let now = self.env.now;
        SlotState::Running { job, worker, last_heartbeat: now, reset_at: after(now, self.policy.reset_after) }
    }

    /// A crash or launch failure of `job`'s worker: relaunch at once the first time, else wait.
    fn failed(&mut self, job: Arc<SlotJob>) -> SlotState {
        self.slot.consecutive_failures = self.slot.consecutive_failures.saturating_add(1);
        let delay = backoff_delay(self.slot.consecutive_failures, self.policy, self.env.jitter);
        if delay.is_zero() {
            self.launch(job, true)
        } else {
            self.entered = true;
            SlotState::Backoff { job, until: after(self.env.now, delay), restart: true }
        }
    }

    /// The killed worker is gone (or never started): go on with what follows the kill.
    fn killed(&mut self, kill: Killing, next: Option<Arc<SlotJob>>) -> SlotState {
        match next {
            // KillAndRelaunch --(Exited: relaunch, or wait if the kill was for a failure)
            Some(next) if *next == *kill.job => match kill.reason {
                ExitReason::StartTimeout | ExitReason::HeartbeatTimeout | ExitReason::MemoryLimit => self.failed(next),
                ExitReason::Exited | ExitReason::Killed | ExitReason::Lost => self.launch(next, true),
            },
            // Kill --(Exited)--> Empty / the next job
            next => self.begin(next),
        }
    }

    /// Stops `worker` of `job` (SIGTERM now, or once the outstanding launch reports) and
    /// relaunches the same job afterwards.
    fn start_kill(&mut self, job: Arc<SlotJob>, worker: Option<Worker>, reason: ExitReason) -> SlotState {
        let next = Some(job.clone());
        self.kill_for(job, worker, reason, next)
    }

    /// Stops `worker` of `job` to relaunch the same job on updated blobs; not a failure.
    fn update_kill(&mut self, job: Arc<SlotJob>, worker: Worker) -> SlotState {
        let mut kill = Killing { job, worker: None, reason: ExitReason::Killed, sigkill_sent: false, deadline: None };
        self.term(&mut kill, worker);
        SlotState::KillBlobUpdate { kill }
    }

    /// Stops `worker` of `job` because the assignment changed to `next`.
    fn kill_then(&mut self, job: Arc<SlotJob>, worker: Option<Worker>, next: Option<Arc<SlotJob>>) -> SlotState {
        self.kill_for(job, worker, ExitReason::Killed, next)
    }

    fn kill_for(
        &mut self,
        job: Arc<SlotJob>,
        worker: Option<Worker>,
        reason: ExitReason,
        next: Option<Arc<SlotJob>>,
    ) -> SlotState {
        let mut kill = Killing { job, worker: None, reason, sigkill_sent: false, deadline: None };
        if let Some(worker) = worker {
            self.term(&mut kill, worker);
        }
        killing(kill, next)
    }

    fn term(&mut self, kill: &mut Killing, worker: Worker) {
        self.actions.push(Action::Signal { worker: worker.clone(), signal: Signal::Term });
        kill.worker = Some(worker);
        kill.deadline = Some(after(self.env.now, self.policy.shutdown_grace));
    }

    /// Kill, KillAndRelaunch, KillBlobUpdate --(shutdown_grace: SIGKILL, then again every grace)
    fn escalate(&mut self, kill: &mut Killing) {
        let (Some(worker), Some(deadline)) = (&kill.worker, kill.deadline) else { return };
        if self.env.now < deadline {
            return;
        }
        if kill.sigkill_sent {
            // Uninterruptible sleep (D state, a hung NFS mount) or a zombie nobody reaps:
            // nothing more forceful exists, so say so and keep trying.
            self.slot.error = Some(format!("worker pid {} survived SIGKILL", worker.pid));
        }
        self.actions.push(Action::Signal { worker: worker.clone(), signal: Signal::Kill });
        kill.sigkill_sent = true;
        kill.deadline = Some(after(self.env.now, self.policy.shutdown_grace.max(MIN_SIGKILL_INTERVAL)));
    }

    /// A process this slot did not ask for: SIGKILL, its `Exited` will be forgotten.
    fn stray(&mut self, worker: Worker) {
        self.actions.push(Action::Signal { worker, signal: Signal::Kill });
    }
}

/// `state` with its job replaced by `desired` where they are the same job (equal, maybe not the
/// same `Arc`: the effective timeouts may differ).
fn refresh_job(mut state: SlotState, desired: &Arc<SlotJob>) -> SlotState {
    use SlotState as S;
    let swap = |job: &mut Arc<SlotJob>| {
        if **job == **desired && !Arc::ptr_eq(job, desired) {
            *job = desired.clone();
        }
    };
    match &mut state {
        S::Empty => {}
        S::WaitingForBlobs { job }
        | S::WaitingForBlobUpdate { job }
        | S::WaitingForWorkerStart { job, .. }
        | S::Running { job, .. }
        | S::Backoff { job, .. } => swap(job),
        S::Kill { kill, next } => {
            swap(&mut kill.job);
            if let Some(next) = next {
                swap(next);
            }
        }
        S::KillAndRelaunch { kill } | S::KillBlobUpdate { kill } => swap(&mut kill.job),
    }
    state
}

/// The kill state for `kill` followed by `next`: relaunching the killed job is
/// `KillAndRelaunch`, anything else (another job, nothing) is `Kill`.
fn killing(kill: Killing, next: Option<Arc<SlotJob>>) -> SlotState {
    match next {
        Some(next) if *next == *kill.job => SlotState::KillAndRelaunch { kill },
        next => SlotState::Kill { kill, next },
    }
}

/// KillBlobUpdate --(the killed worker is gone, or never started)--> WaitingForBlobUpdate: the
/// relaunch waits for `BlobsReady`, so it always starts on what is local by then.
fn update_killed(kill: Killing) -> SlotState {
    SlotState::WaitingForBlobUpdate { job: kill.job }
}
