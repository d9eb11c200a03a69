//! The process side: one [`Slot`] state machine per port, and the executor that feeds them
//! inputs and performs their actions. Runs as the `sync-processes` queue's handler, so all
//! slot state has one owner and one job at a time touches it.
//!
//! Inputs arrive as [`ProcEvent`]s on a channel (worker exits seen by wait tasks, heartbeat
//! file changes) plus the latest [`AssignmentView`] and the clock; each job drains them,
//! steps the slots, performs the actions (launch, signal, forget) and publishes the workers
//! for SupervisorInfo. A deadline timer requests a job when the earliest slot deadline
//! (grace period, backoff, start timeout) is due, so timing does not depend on the monitor
//! tick.
//!
//! Every process operation goes through the [`ProcessControl`] seam (spawn into a cgroup,
//! signal a proven group, liveness, adoption, cleanup), so the rules here are unit tested
//! with a fake on a paused clock (`tests.rs`); the real edge is tested with real processes.
//!
//! By concern: this file holds the executor, its construction and one job's steps;
//! [`launch`] starts a worker, `recover` adopts at start and cleans up after workers,
//! [`policy`] holds the settings, the node restart budget and the session-loss policy,
//! [`operations`] the operator's operations and the drain/health holds, and [`diag`] the
//! diagnostics runs started on workers.
//!
//! Invariants:
//! - a worker is recorded in LocalState (`workers`) right after it is spawned, before the slot
//!   hears of it; it is forgotten only after its exit was seen;
//! - a process is signalled only after its identity (pid + start time + boot id) is proven;
//! - before the first assignment sync, slots get no assignment input: workers found running
//!   after a restart are adopted and kept, never stopped for lack of information.

mod diag;
mod exits;
mod launch;
mod operations;
mod policy;
mod recover;
mod wiring;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::error;

use super::links::BlobLinks;
use super::records::{PortJob, WorkerRecords};
use crate::event::{JobError, QueueHandle};
use crate::isolation::WorkerCgroup;
use crate::local_state::LocalState;
use crate::model::{ExitReason, LastExit, WorkerInfo, unix_ms};
use crate::slot::{Action, Env, Input, Slot, SlotJob, step};
use crate::worker::{self, ProcessControl};

pub(crate) use policy::ProcessConfig;
pub(crate) use recover::LocalDirCheck;
use wiring::Inputs;
pub(crate) use wiring::{ProcessInputs, ProcessLocal, ProcessOutputs};

/// Something that happened to a worker, reported by the tasks that watch them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ProcEvent {
    Exited { port: u16, worker_id: String, code: Option<i32>, signal: Option<i32> },
}

/// The `sync-processes` job kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum ProcessJob {
    /// Drain events, apply the assignment, step every slot, perform the actions.
    Reconcile,
    /// The `monitor_secs` timer: a reconcile plus the checks that need no event (heartbeat
    /// files, the local dir's integrity, the session-loss policy).
    Monitor,
}

impl crate::event::Job for ProcessJob {
    fn name(&self) -> &'static str {
        match self {
            ProcessJob::Reconcile => "sync-processes",
            ProcessJob::Monitor => "monitor",
        }
    }

    /// The monitor tick is a reconcile plus its own checks.
    fn covers(&self, other: &Self) -> bool {
        self == other || *self == ProcessJob::Monitor
    }
}

/// What a job leaves for its end, off the restart path.
#[derive(Debug, Default)]
struct Cleanup {
    /// Worker dirs to clean (after any relaunch).
    worker_dirs: Vec<String>,
    /// Cgroups of exited workers, removed last (kills what they left).
    cgroups: Vec<WorkerCgroup>,
}

/// The executor: owns the slots and the worker records.
pub(crate) struct Processes {
    config: ProcessConfig,
    control: Arc<dyn ProcessControl>,
    queue: QueueHandle<ProcessJob>,
    inputs: Inputs,
    outputs: ProcessOutputs,
    state: Arc<Mutex<LocalState>>,
    local_dir_check: LocalDirCheck,
    slots: BTreeMap<u16, Slot>,
    /// The `Arc<SlotJob>` given to each port, reused while the job is equal.
    jobs: BTreeMap<u16, Arc<SlotJob>>,
    events: mpsc::UnboundedReceiver<ProcEvent>,
    events_tx: mpsc::UnboundedSender<ProcEvent>,
    records: WorkerRecords,
    /// `records` has removals not yet written.
    records_dirty: bool,
    /// Last heartbeat-file mtime seen per worker id (the inotify fallback).
    heartbeats: BTreeMap<String, std::time::SystemTime>,
    /// inotify watchers of heartbeat-liveness workers, by worker id.
    heartbeat_watchers: BTreeMap<String, worker::HeartbeatWatcher>,
    budget: policy::RestartBudget,
    /// Since when there has been no usable ZooKeeper session (for `stop_workers`).
    session_lost_since: Option<Instant>,
    /// Workers are stopped for `on_session_loss = "stop_workers"`; the generation of the
    /// assignment view at that moment.
    stopped_for_session_loss: Option<u64>,
    /// Workers found dead at start, by port: shown as the slot's `last_exit` (`lost`) once the
    /// same topology runs there again.
    lost: BTreeMap<u16, (String, LastExit)>,
    /// Worker ids adopted after a restart (not our children: their exits come from a pidfd,
    /// with a liveness check on every monitor tick as the safety net).
    adopted: BTreeSet<String>,
    /// Blob links of the workers and the cache entries each slot holds.
    links: BlobLinks,
    ops: operations::Ops,
    /// When the exit of each port's last crashed worker was seen (restart latency metric).
    exit_seen: BTreeMap<u16, Instant>,
    /// Each worker's cgroup (or rlimit holder), by worker id.
    cgroups: BTreeMap<String, WorkerCgroup>,
    cleanup: Cleanup,
}

impl std::fmt::Debug for Processes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Processes").field("slots", &self.slots.len()).finish_non_exhaustive()
    }
}

impl Processes {
    /// The executor of `queue` (its watch tasks request jobs there), doing every process
    /// operation through `control`. Call [`Processes::recover`] once before the first job.
    pub(crate) fn new(
        config: ProcessConfig,
        local: ProcessLocal,
        inputs: ProcessInputs,
        outputs: ProcessOutputs,
        queue: QueueHandle<ProcessJob>,
        control: Arc<dyn ProcessControl>,
    ) -> Processes {
        let now = Instant::now();
        let wall = unix_ms();
        let slots = config.slots.iter().map(|&p| (p, Slot::new(p, now, wall))).collect();
        let (events_tx, events) = mpsc::unbounded_channel();
        let ProcessInputs { desired, zk_status, blob_view, requests, health, config: config_rx } = inputs;
        Processes {
            budget: policy::RestartBudget::new(config.node_budget_per_min),
            config,
            control,
            queue,
            inputs: Inputs { desired, zk_status, requests, health, config: config_rx },
            outputs,
            state: local.state,
            local_dir_check: local.dir_check,
            slots,
            jobs: BTreeMap::new(),
            events,
            events_tx,
            records: WorkerRecords::new(),
            records_dirty: false,
            heartbeats: BTreeMap::new(),
            heartbeat_watchers: BTreeMap::new(),
            session_lost_since: None,
            stopped_for_session_loss: None,
            lost: BTreeMap::new(),
            adopted: BTreeSet::new(),
            links: BlobLinks::new(local.cache, blob_view),
            ops: operations::Ops {
                drained: local.drained,
                drain_waiters: Vec::new(),
                held_for_health: false,
                diagnosing: diag::Diagnosing::default(),
            },
            exit_seen: BTreeMap::new(),
            cgroups: BTreeMap::new(),
            cleanup: Cleanup::default(),
        }
    }

    /// `<local_dir>/workers/<worker_id>`.
    fn worker_dir(&self, worker_id: &str) -> std::path::PathBuf {
        worker::worker_dir(&self.config.local_dir, worker_id)
    }

    fn job_for(&mut self, port: u16, job: &PortJob) -> Arc<SlotJob> {
        let wanted =
            SlotJob::new(job.topology_id.clone(), job.launch.clone(), job.blobs.clone(), &self.config.timeouts);
        match self.jobs.get(&port) {
            // Same job and same effective timeouts: the same Arc (cheap comparisons later). A
            // reload that changed only the timeouts gives a new Arc that still compares equal,
            // so the running worker stays and later launches and steps use the new values.
            Some(existing)
                if **existing == wanted
                    && existing.start_timeout == wanted.start_timeout
                    && existing.heartbeat_timeout == wanted.heartbeat_timeout =>
            {
                existing.clone()
            }
            _ => {
                let job = Arc::new(wanted);
                self.jobs.insert(port, job.clone());
                job
            }
        }
    }

    /// A reloaded config, if one arrived since the last job.
    fn follow_config(&mut self) {
        if self.inputs.config.has_changed().unwrap_or(false) {
            let config = self.inputs.config.borrow_and_update().clone();
            self.reconfigure(&config);
        }
    }

    /// Every slot gets the assignment that applies now (none before the first sync).
    async fn apply_assignments(&mut self, now: Instant, wall: u64) {
        let Some(view) = self.desired_now(now) else { return };
        let ports: Vec<u16> = self.slots.keys().copied().collect();
        for port in ports {
            let job = view.jobs.get(&port).map(|j| self.job_for(port, j));
            self.feed(port, Input::Assign(job), now, wall).await;
            if let Some((topology, exit)) = self.lost.remove(&port)
                && let Some(slot) = self.slots.get_mut(&port)
                && slot.job().is_some_and(|j| j.topology_id == topology)
                && slot.last_exit.is_none()
            {
                slot.last_exit = Some(exit);
            }
        }
    }

    /// Blobs, then the clock, for every slot.
    async fn tick_slots(&mut self, now: Instant, wall: u64) {
        let ports: Vec<u16> = self.slots.keys().copied().collect();
        for port in ports {
            self.check_blobs(port, now, wall).await;
            self.feed(port, Input::Tick, now, wall).await;
        }
    }

    /// The end of every job: persist, release blobs, answer, publish, then clean up.
    async fn finish_job(&mut self) {
        if self.records_dirty
            && let Err(e) = self.persist_records().await
        {
            error!(error = %e, "cannot persist worker records");
        }
        let held: BTreeMap<u16, (Option<String>, bool)> = self
            .slots
            .iter()
            .map(|(port, slot)| (*port, (slot.job().map(|j| j.topology_id.clone()), slot.worker().is_some())))
            .collect();
        self.links.release_unused(&held);
        self.answer_drain_waiters();
        self.publish();
        self.clean_up_exited();
    }

    /// Steps one slot with one input and performs the resulting actions (which may feed more
    /// inputs, e.g. `Launched`), until it settles.
    async fn feed(&mut self, port: u16, input: Input, now: Instant, wall: u64) {
        let mut pending = VecDeque::from([input]);
        while let Some(input) = pending.pop_front() {
            let Some(slot) = self.slots.remove(&port) else { return };
            let env = Env { now, wall_ms: wall, jitter: fastrand::f64() };
            let exited = matches!(input, Input::Exited { .. });
            let last_exit = slot.last_exit.clone();
            let (slot, actions) = step(slot, input, &env, &self.config.policy);
            if exited
                && slot.last_exit != last_exit
                && let Some(exit) = &slot.last_exit
            {
                crate::metrics::metrics().exit(exit.reason.as_str());
                if exit.reason == ExitReason::Exited {
                    self.exit_seen.insert(port, now);
                }
            }
            self.slots.insert(port, slot);
            for action in actions {
                if let Some(next) = self.perform(port, action, now).await {
                    pending.push_back(next);
                }
            }
        }
    }

    async fn perform(&mut self, port: u16, action: Action, now: Instant) -> Option<Input> {
        match action {
            Action::Launch { job, restart } => Some(self.relaunch(port, &job, restart, now).await),
            Action::Signal { worker, signal } => {
                self.signal(port, &worker.worker_id, signal);
                None
            }
            Action::Forget { worker_id } => {
                self.forget(worker_id);
                None
            }
        }
    }

    /// What each slot reports (SupervisorInfo `workers[]`, `gale status`): the slot, and
    /// the assignment of the latest view that cannot run on its port, if any. From the view as
    /// read, not [`Processes::desired_now`]: a drained host still shows a broken assignment.
    fn slot_reports(&self) -> BTreeMap<u16, Option<WorkerInfo>> {
        let view = self.inputs.desired.borrow();
        let unrunnable = |port: &u16| view.as_ref().and_then(|v| v.unrunnable.get(port));
        self.slots.iter().map(|(port, slot)| (*port, slot.report(unrunnable(port)))).collect()
    }

    fn publish(&self) {
        let reports = self.slot_reports();
        let workers: Vec<WorkerInfo> = reports.values().flatten().cloned().collect();
        self.outputs.report.send_if_modified(|r| {
            if r.workers == workers {
                false
            } else {
                r.workers = workers;
                true
            }
        });
        let statuses = self.slot_statuses(&reports);
        self.outputs.slots.send_if_modified(|current| {
            if *current == statuses {
                false
            } else {
                *current = statuses;
                true
            }
        });
        let next = self.slots.values().filter_map(Slot::next_deadline).min();
        self.outputs.deadline.send_if_modified(|d| {
            if *d == next {
                false
            } else {
                *d = next;
                true
            }
        });
    }
}

impl crate::event::JobHandler<ProcessJob> for Processes {
    async fn run(&mut self, job: ProcessJob) -> Result<(), JobError> {
        let now = Instant::now();
        let wall = unix_ms();
        self.follow_config();
        if job == ProcessJob::Monitor {
            self.check_adopted();
        }
        self.take_events(now, wall).await;
        for (port, worker_id) in self.poll_heartbeats() {
            self.feed(port, Input::Heartbeat { worker_id }, now, wall).await;
        }
        self.apply_operations(now, wall).await;
        self.apply_assignments(now, wall).await;
        self.tick_slots(now, wall).await;
        self.finish_job().await;
        if job == ProcessJob::Monitor {
            // Periodically too, not only at start: a directory is created and recorded within
            // one job of this queue, so between jobs an unrecorded one is always a leftover.
            let records = self.records.clone();
            self.sweep_orphans(&records);
            self.local_dir_check.check()?;
        }
        Ok(())
    }
}

/// Requests a `sync-processes` job whenever the earliest slot deadline is reached.
pub(crate) async fn deadline_timer(
    mut deadline: watch::Receiver<Option<Instant>>,
    queue: QueueHandle<ProcessJob>,
    mut stop: crate::shutdown::Shutdown,
) {
    loop {
        let next = *deadline.borrow_and_update();
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let due = tokio::select! {
            () = sleep => true,
            res = deadline.changed() => if res.is_err() { return } else { false },
            () = stop.wait() => return,
        };
        if due {
            queue.request(ProcessJob::Reconcile);
            // Wait for the job to publish a new deadline rather than spinning on this one; the
            // monitor timer covers a deadline that stays put.
            tokio::select! {
                res = deadline.changed() => if res.is_err() { return },
                () = stop.wait() => return,
            }
        }
    }
}
