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
//! Invariants:
//! - a worker is recorded in LocalState (`workers`) right after it is spawned, before the slot
//!   hears of it; it is forgotten only after its exit was seen;
//! - a process is signalled only after its identity (pid + start time + boot id) is proven;
//! - before the first assignment sync, slots get no assignment input: workers found running
//!   after a restart are adopted and kept, never stopped for lack of information.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::assignments::AssignmentView;
use super::links::{self, BlobLinks};
use super::records::{LocalAssignments, PortJob, WorkerRecord, WorkerRecords};
use crate::blob::BlobView;
use crate::blob::SharedCache;
use crate::event::{JobError, QueueHandle};
use crate::local_state::{LocalState, Workers};
use crate::model::assignment::LivenessMode;
use crate::model::{ExitReason, LastExit, WorkerInfo, unix_ms};
use crate::model::{NodeReport, ZkStatus};
use crate::proc_identity::{Liveness, ProcessIdentity};
use crate::shutdown::Shutdown;
use crate::slot::{Action, Env, Input, Policy, Signal, Slot, SlotJob, Worker, step};
use crate::worker;

#[path = "operations.rs"]
mod operations;

/// Something that happened to a worker, reported by the tasks that watch them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcEvent {
    Exited { port: u16, worker_id: String, code: Option<i32>, signal: Option<i32> },
    Heartbeat { port: u16, worker_id: String },
}

/// Settings of the process side, from the config.
#[derive(Debug, Clone)]
pub struct ProcessConfig {
    pub supervisor_id: String,
    pub local_dir: PathBuf,
    pub log_dir: PathBuf,
    pub slots: Vec<u16>,
    pub policy: Policy,
    pub start_timeout: Duration,
    pub heartbeat_timeout: Duration,
    pub max_timeout: Duration,
    pub node_budget_per_min: u32,
    /// `zookeeper.on_session_loss = "stop_workers"`: stop every worker after this long without
    /// a ZooKeeper session; `None` keeps them (`keep_workers`).
    pub stop_workers_after: Option<Duration>,
    /// `worker.run_as_user`, `allowed_users`, `min_uid`.
    pub users: worker::users::UserPolicy,
    /// How worker limits are enforced here (detected once at start).
    pub isolation: crate::isolation::Mechanism,
}

/// The pids limit of every worker where the mechanism has one: far above a real worker's
/// threads and processes, far below what a fork bomb needs to hurt the host.
const PIDS_MAX: u64 = 4096;

/// The `sync-processes` job kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProcessJob {
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

/// Node-wide restart budget: at most `per_min` relaunches in any 60 s window.
#[derive(Debug)]
struct RestartBudget {
    per_min: u32,
    recent: VecDeque<Instant>,
}

impl RestartBudget {
    /// `Ok` and counted, or the time the next restart is allowed.
    fn take(&mut self, now: Instant) -> Result<(), Instant> {
        while self.recent.front().is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60)) {
            self.recent.pop_front();
        }
        if self.recent.len() < self.per_min as usize {
            self.recent.push_back(now);
            Ok(())
        } else {
            Err(self.recent[0] + Duration::from_secs(60))
        }
    }
}

/// The executor: owns the slots and the worker records.
pub struct Processes {
    config: ProcessConfig,
    slots: BTreeMap<u16, Slot>,
    /// The `Arc<SlotJob>` given to each port, reused while the job is equal.
    jobs: BTreeMap<u16, Arc<SlotJob>>,
    desired: watch::Receiver<Option<Arc<AssignmentView>>>,
    events: mpsc::UnboundedReceiver<ProcEvent>,
    events_tx: mpsc::UnboundedSender<ProcEvent>,
    queue: Option<QueueHandle<ProcessJob>>,
    state: Arc<Mutex<LocalState>>,
    records: WorkerRecords,
    /// Last heartbeat-file mtime seen per worker id (the inotify fallback).
    heartbeats: BTreeMap<String, std::time::SystemTime>,
    budget: RestartBudget,
    report: Arc<watch::Sender<NodeReport>>,
    deadline: watch::Sender<Option<Instant>>,
    /// inotify watchers of heartbeat-liveness workers, by worker id.
    heartbeat_watchers: BTreeMap<String, worker::HeartbeatWatcher>,
    hints: mpsc::Sender<String>,
    zk_status: watch::Receiver<ZkStatus>,
    /// Since when there has been no usable ZooKeeper session (for `stop_workers`).
    session_lost_since: Option<Instant>,
    local_dir_check: LocalDirCheck,
    /// Workers found dead at start, by port: shown as the slot's `last_exit` (`lost`) once the
    /// same topology runs there again.
    lost: BTreeMap<u16, (String, LastExit)>,
    /// `records` has removals not yet written.
    records_dirty: bool,
    /// Workers are stopped for `on_session_loss = "stop_workers"`; the generation of the
    /// assignment view at that moment.
    stopped_for_session_loss: Option<u64>,
    /// Worker ids adopted after a restart (not our children: their exits come from a pidfd,
    /// with a liveness check on every monitor tick as the safety net).
    adopted: std::collections::BTreeSet<String>,
    /// Worker dirs to clean at the end of the job (after any relaunch, off the restart path).
    cleanup: Vec<String>,
    /// Blob links of the workers and the cache entries each slot holds.
    links: BlobLinks,
    /// Operator operations (control socket, ZooKeeper actions) and the drain/health holds.
    ops: Ops,
    /// When the exit of each port's last crashed worker was seen (restart latency metric).
    exit_seen: BTreeMap<u16, Instant>,
    /// Each worker's cgroup (or rlimit holder), by worker id.
    cgroups: BTreeMap<String, crate::isolation::WorkerCgroup>,
    /// Cgroups of exited workers, removed at the end of the job (kills what they left).
    cgroup_cleanup: Vec<crate::isolation::WorkerCgroup>,
}

/// What the executor takes from outside its queue: operations, the health verdict, and where
/// it publishes its slots for status.
#[derive(Debug)]
pub struct OpsWiring {
    pub requests: mpsc::UnboundedReceiver<crate::admin::control::Request>,
    /// `drained` as persisted by the previous run.
    pub drained: bool,
    pub drained_tx: watch::Sender<bool>,
    pub health: watch::Receiver<crate::health::HealthReport>,
    pub slots_tx: watch::Sender<Vec<crate::admin::SlotStatus>>,
    /// Reloaded config: `[worker]`, `[restart]` and the session-loss policy apply live.
    pub config: watch::Receiver<Arc<crate::config::Config>>,
}

#[derive(Debug)]
struct Ops {
    wiring: OpsWiring,
    drained: bool,
    /// `drain --wait` requests, answered once no worker runs.
    drain_waiters: Vec<tokio::sync::oneshot::Sender<crate::admin::control::Reply>>,
    /// The health verdict last acted on (for logging the change once).
    held_for_health: bool,
}

/// The local dir the agent depends on must stay the one it locked.
#[derive(Debug, Clone)]
pub struct LocalDirCheck {
    /// `<local_dir>/lock` and the inode we hold the record lock on: if the file at that path is
    /// another inode (the dir was removed or replaced under us), a second agent could start.
    pub lock_path: PathBuf,
    pub lock_inode: u64,
    pub state_dir: PathBuf,
}

impl LocalDirCheck {
    fn check(&self) -> Result<(), String> {
        use std::os::unix::fs::MetadataExt;
        let lock = std::fs::metadata(&self.lock_path)
            .map_err(|e| format!("local dir lock {} is gone: {e}", self.lock_path.display()))?;
        if lock.ino() != self.lock_inode {
            return Err(format!(
                "local dir lock {} was replaced under the running agent; another agent could start on this dir",
                self.lock_path.display()
            ));
        }
        std::fs::metadata(&self.state_dir)
            .map_err(|e| format!("state dir {} is gone: {e}", self.state_dir.display()))?;
        Ok(())
    }
}

impl std::fmt::Debug for Processes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Processes").field("slots", &self.slots.len()).finish_non_exhaustive()
    }
}

impl Processes {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: ProcessConfig,
        state: Arc<Mutex<LocalState>>,
        desired: watch::Receiver<Option<Arc<AssignmentView>>>,
        report: Arc<watch::Sender<NodeReport>>,
        deadline: watch::Sender<Option<Instant>>,
        hints: mpsc::Sender<String>,
        zk_status: watch::Receiver<ZkStatus>,
        cache: SharedCache,
        blob_view: watch::Receiver<Arc<BlobView>>,
        local_dir_check: LocalDirCheck,
        ops: OpsWiring,
    ) -> Processes {
        let now = Instant::now();
        let wall = unix_ms();
        let slots = config.slots.iter().map(|&p| (p, Slot::new(p, now, wall))).collect();
        let (events_tx, events) = mpsc::unbounded_channel();
        let budget = RestartBudget { per_min: config.node_budget_per_min, recent: VecDeque::new() };
        Processes {
            config,
            slots,
            jobs: BTreeMap::new(),
            desired,
            events,
            events_tx,
            queue: None,
            state,
            records: WorkerRecords::new(),
            heartbeats: BTreeMap::new(),
            budget,
            report,
            deadline,
            heartbeat_watchers: BTreeMap::new(),
            hints,
            zk_status,
            session_lost_since: None,
            local_dir_check,
            lost: BTreeMap::new(),
            records_dirty: false,
            stopped_for_session_loss: None,
            adopted: std::collections::BTreeSet::new(),
            cleanup: Vec::new(),
            links: BlobLinks::new(cache, blob_view),
            ops: Ops { drained: ops.drained, wiring: ops, drain_waiters: Vec::new(), held_for_health: false },
            exit_seen: BTreeMap::new(),
            cgroups: BTreeMap::new(),
            cgroup_cleanup: Vec::new(),
        }
    }

    /// The queue this executor runs on, so watch tasks can request a job after an event.
    pub fn set_queue(&mut self, queue: QueueHandle<ProcessJob>) {
        self.queue = Some(queue);
    }

    pub fn events(&self) -> mpsc::UnboundedSender<ProcEvent> {
        self.events_tx.clone()
    }

    fn job_for(&mut self, port: u16, job: &PortJob) -> Arc<SlotJob> {
        let cap = |t: Option<u64>, default: Duration| {
            t.map(Duration::from_secs).unwrap_or(default).min(self.config.max_timeout)
        };
        let wanted = SlotJob {
            topology_id: job.topology_id.clone(),
            launch: job.launch.clone(),
            blobs: job.blobs.clone(),
            start_timeout: cap(job.launch.start_timeout_secs, self.config.start_timeout),
            heartbeat_timeout: cap(job.launch.heartbeat_timeout_secs, self.config.heartbeat_timeout),
        };
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

    /// After a start: adopt every recorded worker that is provably still running, forget the
    /// rest, and stop workers that were spawned but never recorded (the agent died between
    /// the two). Runs once, before the first job.
    pub async fn recover(&mut self, assigned: &LocalAssignments) -> Result<(), String> {
        let state = self.state.clone();
        let records = tokio::task::spawn_blocking(move || state.lock().unwrap().get::<Workers>())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        let now = Instant::now();
        let wall = unix_ms();
        let mut kept = WorkerRecords::new();
        for (id, record) in records {
            let port = record.port;
            if record.process.liveness() != Liveness::Alive {
                info!(port, worker = %id, pid = record.process.pid, "a recorded worker ended while the agent was down");
                let lost = LastExit { code: None, signal: None, reason: ExitReason::Lost, at_ms: wall };
                self.lost.insert(port, (record.topology_id.clone(), lost));
                self.remove_worker_dir(&id);
                continue;
            }
            // Alive and proven ours: adopt it into its slot, as running the job it was launched
            // with (a port no longer configured gets a slot of its own, just to stop it).
            self.slots.entry(port).or_insert_with(|| Slot::new(port, now, wall));
            let job = self.job_for(port, &record.job);
            let heartbeat = job.launch.liveness == LivenessMode::Heartbeat;
            info!(port, topology = %record.topology_id, worker = %id, pid = record.process.pid,
                "adopted a worker that kept running while the agent was down");
            let w = Worker { worker_id: id.clone(), pid: record.process.pid };
            self.adopted.insert(id.clone());
            self.links.adopt(port, &job, &self.config.local_dir.join("workers").join(&id));
            if let Some(cgroup) = crate::isolation::WorkerCgroup::adopt(&self.config.isolation, &id) {
                self.cgroups.insert(id.clone(), cgroup);
            }
            self.feed(port, Input::Adopt { worker: w, job: job.clone() }, now, wall).await;
            // The last sync before the agent went down may have moved this port on (the agent
            // persisted it and died before acting): act on that persisted result now, the
            // slot's way (SIGTERM, grace, SIGKILL, then the new job). An unchanged job is a no-op.
            let current =
                assigned.get(&port).filter(|_| self.config.slots.contains(&port)).map(|j| self.job_for(port, j));
            if current.as_ref() != Some(&job) {
                warn!(port, worker = %id, "the adopted worker's job is no longer what its port should run; replacing it");
                self.feed(port, Input::Assign(current), now, wall).await;
            }
            if heartbeat {
                // Only a change from here on is a heartbeat: a stale file must not count as one.
                let file = worker::heartbeat_file(&self.config.local_dir.join("workers").join(&id));
                if let Some(mtime) = worker::last_heartbeat(&file) {
                    self.heartbeats.insert(id.clone(), mtime);
                }
            }
            self.watch_adopted(&record);
            if heartbeat {
                self.watch_heartbeat(&id);
            }
            kept.insert(id, record);
        }
        self.records = kept.clone();
        self.persist_records().await?;
        self.sweep_orphans(&kept);
        // Cgroups of workers nobody recorded (the agent died between the two): kill and remove.
        let ids: std::collections::BTreeSet<String> = kept.keys().cloned().collect();
        match crate::isolation::sweep_orphans(&self.config.isolation, &ids) {
            Ok(outcome) if !outcome.removed.is_empty() => {
                warn!(removed = ?outcome.removed, "removed worker cgroups no record names");
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "cannot sweep stray worker cgroups"),
        }
        Ok(())
    }

    /// Worker dirs without a record are leftovers; a process still running in one was spawned
    /// by an agent that died before recording it: stop it (its cwd proves where it came from).
    fn sweep_orphans(&self, kept: &WorkerRecords) {
        let dir = self.config.local_dir.join("workers");
        let Ok(entries) = std::fs::read_dir(&dir) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if kept.contains_key(&name) {
                continue;
            }
            for pid in pids_with_cwd(&entry.path()) {
                if let Ok(identity) = ProcessIdentity::of(pid) {
                    warn!(worker = %name, pid, "stopping an unrecorded worker process (its agent died before recording it)");
                    let _ = worker::signal_group(&identity, nix::sys::signal::Signal::SIGKILL);
                }
            }
            self.remove_worker_dir(&name);
        }
    }

    /// After a worker exited: processes it left behind in its directory (children that
    /// ignored SIGTERM, or outlived a leader that exited on its own) would otherwise keep
    /// running beside the relaunched worker, untracked once the directory is gone. Their cwd
    /// proves where they come from.
    fn clean_worker_dir(&self, worker_id: &str) {
        if crate::ident::validate("worker id", worker_id).is_err() {
            return;
        }
        let dir = self.config.local_dir.join("workers").join(worker_id);
        for pid in pids_with_cwd(&dir) {
            if let Ok(identity) = ProcessIdentity::of(pid) {
                warn!(worker = %worker_id, pid, "killing a process the exited worker left behind");
                let _ = worker::signal_group(&identity, nix::sys::signal::Signal::SIGKILL);
            }
        }
        self.remove_worker_dir(worker_id);
    }

    fn remove_worker_dir(&self, worker_id: &str) {
        if crate::ident::validate("worker id", worker_id).is_err() {
            return;
        }
        let path = self.config.local_dir.join("workers").join(worker_id);
        if let Err(e) = std::fs::remove_dir_all(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!(path = %path.display(), error = %e, "cannot remove a worker dir");
        }
    }

    async fn persist_records(&mut self) -> Result<(), String> {
        let state = self.state.clone();
        let records = self.records.clone();
        tokio::task::spawn_blocking(move || state.lock().unwrap().put::<Workers>(&records).map(drop))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        self.records_dirty = false;
        Ok(())
    }

    /// inotify on the worker dir: a hint to read the heartbeat file now (the mtime poll on
    /// every job is the fallback).
    fn watch_heartbeat(&mut self, worker_id: &str) {
        let dir = self.config.local_dir.join("workers").join(worker_id);
        match worker::HeartbeatWatcher::start(worker_id, &dir, self.hints.clone()) {
            Ok(w) => {
                self.heartbeat_watchers.insert(worker_id.to_owned(), w);
            }
            Err(e) => warn!(worker = %worker_id, error = %e, "cannot watch the heartbeat file; polling it instead"),
        }
    }

    fn watch_adopted(&self, record: &WorkerRecord) {
        let events = self.events_tx.clone();
        let queue = self.queue.clone();
        let identity = record.process.clone();
        let (port, worker_id) = (record.port, record.worker_id.clone());
        tokio::spawn(async move {
            if let Err(e) = worker::wait_adopted(&identity).await {
                warn!(pid = identity.pid, error = %e, "cannot watch an adopted worker; the monitor will notice its exit");
                return;
            }
            let _ = events.send(ProcEvent::Exited { port, worker_id, code: None, signal: None });
            if let Some(q) = queue {
                q.request(ProcessJob::Reconcile);
            }
        });
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
            Action::Launch { job, restart } => {
                let m = crate::metrics::metrics();
                if restart && let Err(until) = self.budget.take(now) {
                    warn!(port, "node restart budget exhausted; the relaunch waits");
                    m.restarts_deferred.inc();
                    return Some(Input::Deferred { until });
                }
                let answer = self.launch(port, &job).await;
                let exit_seen = self.exit_seen.remove(&port);
                if let Input::Launched(_) = answer {
                    m.launches.inc();
                    if restart {
                        m.restarts.inc();
                        if let Some(seen) = exit_seen {
                            m.restart_latency.observe(Instant::now().duration_since(seen).as_secs_f64());
                        }
                    }
                } else {
                    m.launch_failures.inc();
                }
                Some(answer)
            }
            Action::Signal { worker, signal } => {
                let Some(record) = self.records.get(&worker.worker_id) else {
                    debug!(port, worker = %worker.worker_id, "no record for a worker to signal");
                    return None;
                };
                let sig = match signal {
                    Signal::Term => nix::sys::signal::Signal::SIGTERM,
                    Signal::Kill => nix::sys::signal::Signal::SIGKILL,
                };
                if signal == Signal::Term
                    && let Some(reason) = self.slots.get(&port).and_then(|s| s.state.killing()).map(|k| k.reason)
                {
                    crate::metrics::metrics().kill(reason.as_str());
                }
                match worker::signal_group(&record.process, sig) {
                    Ok(outcome) => info!(port, worker = %worker.worker_id, pid = worker.pid, signal = %sig, ?outcome,
                        state = ?self.slots.get(&port).map(Slot::state_name), "stopping worker"),
                    Err(e) => warn!(port, worker = %worker.worker_id, error = %e, "cannot signal a worker"),
                }
                // Then the rest of its cgroup: whatever left the process group dies too.
                if signal == Signal::Kill
                    && let Some(cgroup) = self.cgroups.get(&worker.worker_id)
                    && cgroup.tracks_processes()
                    && let Err(e) = cgroup.kill_all()
                {
                    warn!(port, worker = %worker.worker_id, error = %e, "cannot kill the worker's cgroup");
                }
                None
            }
            Action::Forget { worker_id } => {
                // Not persisted on the spot: a record of a process that has exited is harmless
                // (the next start proves it dead), so the removal rides along with the next
                // write — the relaunch's record, or the end of this job — and a restart costs one
                // durable write, not two.
                if self.records.remove(&worker_id).is_some() {
                    self.records_dirty = true;
                }
                self.heartbeats.remove(&worker_id);
                self.heartbeat_watchers.remove(&worker_id);
                self.adopted.remove(&worker_id);
                if let Some(cgroup) = self.cgroups.remove(&worker_id) {
                    self.cgroup_cleanup.push(cgroup);
                }
                self.cleanup.push(worker_id);
                None
            }
        }
    }

    /// Spawns a worker for `job` on `port`, records it, and starts watching it.
    async fn launch(&mut self, port: u16, job: &SlotJob) -> Input {
        let worker_id = uuid::Uuid::new_v4().to_string();
        let worker_dir = self.config.local_dir.join("workers").join(&worker_id);
        // Refused before anything is created: the reason goes to the slot (and backs off).
        let run_as = match self.config.users.resolve(&job.topology_id, job.launch.user.as_deref()) {
            Ok(run_as) => run_as,
            Err(e) => {
                warn!(port, topology = %job.topology_id, error = %e, "worker refused");
                return Input::LaunchFailed(e);
            }
        };
        // GALE_BLOB_DIR exists even when the job has no blobs (SPEC §4 promises the directory).
        let blobs = match self.links.link(port, job, &worker_dir) {
            Ok(blobs) => blobs,
            Err(e) => {
                warn!(port, topology = %job.topology_id, error = %e, "cannot launch a worker");
                self.remove_worker_dir(&worker_id);
                return Input::LaunchFailed(e);
            }
        };
        let spec = worker::LaunchSpec {
            topology_id: job.topology_id.clone(),
            worker_id: worker_id.clone(),
            port,
            supervisor_id: self.config.supervisor_id.clone(),
            command: job.launch.command.clone(),
            env: job.launch.env.clone(),
            blob_dir: links::blob_dir(&worker_dir),
            worker_dir,
            log_file: worker::worker_log_path(&self.config.log_dir, &job.topology_id, port),
            blobs,
            run_as,
        };
        let limits = crate::isolation::Limits {
            memory_mb: job.launch.memory_mb,
            cpu_percent: job.launch.cpu_percent,
            pids_max: None,
        };
        let missing = self.config.isolation.unenforceable(&limits);
        if !missing.is_empty() {
            let e = format!(
                "topology {}: {} cannot be enforced on this host (limits by {})",
                job.topology_id,
                missing.join(", "),
                self.config.isolation.as_str()
            );
            warn!(port, error = %e, "worker refused");
            self.remove_worker_dir(&worker_id);
            return Input::LaunchFailed(e);
        }
        // The pids limit only where it exists: its absence is not the assignment's problem.
        let limits = crate::isolation::Limits {
            pids_max: self
                .config
                .isolation
                .unenforceable(&crate::isolation::Limits { pids_max: Some(PIDS_MAX), ..limits })
                .is_empty()
                .then_some(PIDS_MAX),
            ..limits
        };
        let cgroup = match crate::isolation::WorkerCgroup::create(&self.config.isolation, &worker_id, &limits) {
            Ok(cgroup) => cgroup,
            Err(e) => {
                warn!(port, topology = %job.topology_id, error = %e, "cannot set up the worker's limits");
                self.remove_worker_dir(&worker_id);
                return Input::LaunchFailed(e.to_string());
            }
        };
        let spawned = match worker::spawn_in(&spec, Some(&cgroup)) {
            Ok(spawned) => {
                self.cgroups.insert(worker_id.clone(), cgroup);
                spawned
            }
            Err(e) => {
                self.cgroup_cleanup.push(cgroup);
                warn!(port, topology = %job.topology_id, error = %e, "cannot launch a worker");
                self.remove_worker_dir(&worker_id);
                return Input::LaunchFailed(e.to_string());
            }
        };
        let record = WorkerRecord {
            worker_id: worker_id.clone(),
            port,
            topology_id: job.topology_id.clone(),
            process: spawned.identity.clone(),
            launched_at_ms: unix_ms(),
            job: PortJob {
                topology_id: job.topology_id.clone(),
                zxid: 0,
                launch: job.launch.clone(),
                blobs: job.blobs.clone(),
            },
        };
        self.records.insert(worker_id.clone(), record.clone());
        if let Err(e) = self.persist_records().await {
            // The worker runs but is not recorded yet: keep going (it is watched as usual) and
            // retry the write at the end of every job until it works.
            error!(port, worker = %worker_id, error = %e, "cannot record a launched worker; will retry");
            self.records_dirty = true;
        }
        let identity = record.process;
        info!(port, topology = %job.topology_id, worker = %worker_id, pid = spawned.pid, "worker launched");
        if job.launch.liveness == LivenessMode::Heartbeat {
            self.watch_heartbeat(&worker_id);
        }
        let events = self.events_tx.clone();
        let queue = self.queue.clone();
        let mut child = spawned.child;
        let id = worker_id.clone();
        tokio::spawn(async move {
            let (code, signal) = match child.wait().await {
                Ok(status) => worker::describe(status),
                // Could not wait on our own child (should not happen): do not guess that it
                // exited; watch it as an adopted process instead.
                Err(e) => {
                    warn!(port, worker = %id, error = %e, "cannot wait for a worker; watching its pid instead");
                    if worker::wait_adopted(&identity).await.is_err() {
                        return;
                    }
                    (None, None)
                }
            };
            let _ = events.send(ProcEvent::Exited { port, worker_id: id, code, signal });
            if let Some(q) = queue {
                q.request(ProcessJob::Reconcile);
            }
        });
        Input::Launched(Worker { worker_id, pid: spawned.pid })
    }

    /// The heartbeat-file fallback: an mtime newer than the last one seen is a heartbeat.
    fn poll_heartbeats(&mut self) -> Vec<(u16, String)> {
        let mut beats = Vec::new();
        for (port, slot) in &self.slots {
            let (Some(w), Some(job)) = (slot.worker(), slot.job()) else { continue };
            if job.launch.liveness != LivenessMode::Heartbeat {
                continue;
            }
            let file = self.config.local_dir.join("workers").join(&w.worker_id).join("heartbeat");
            if let Some(mtime) = worker::last_heartbeat(&file)
                // `!=`, not `>`: a wall clock stepped back must not hide heartbeats.
                && self.heartbeats.get(&w.worker_id).is_none_or(|seen| mtime != *seen)
            {
                self.heartbeats.insert(w.worker_id.clone(), mtime);
                beats.push((*port, w.worker_id.clone()));
            }
        }
        beats
    }

    fn publish(&self) {
        let workers: Vec<WorkerInfo> = self.slots.values().filter_map(Slot::to_worker_info).collect();
        self.report.send_if_modified(|r| {
            if r.workers == workers {
                false
            } else {
                r.workers = workers;
                true
            }
        });
        let statuses = self.slot_statuses();
        self.ops.wiring.slots_tx.send_if_modified(|current| {
            if *current == statuses {
                false
            } else {
                *current = statuses;
                true
            }
        });
        let next = self.slots.values().filter_map(Slot::next_deadline).min();
        self.deadline.send_if_modified(|d| {
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
        if self.ops.wiring.config.has_changed().unwrap_or(false) {
            let config = self.ops.wiring.config.borrow_and_update().clone();
            self.reconfigure(&config);
        }
        if job == ProcessJob::Monitor {
            // Safety net for adopted workers (not our children): their exit normally arrives
            // through a pidfd at once; if that watch failed, it is noticed here.
            let gone: Vec<(u16, String)> = self
                .adopted
                .iter()
                .filter_map(|id| self.records.get(id))
                .filter(|r| r.process.liveness() != Liveness::Alive)
                .map(|r| (r.port, r.worker_id.clone()))
                .collect();
            for (port, worker_id) in gone {
                let _ = self.events_tx.send(ProcEvent::Exited { port, worker_id, code: None, signal: None });
            }
        }
        let mut oom_killed = std::collections::BTreeSet::new();
        while let Ok(event) = self.events.try_recv() {
            let (port, input) = match event {
                ProcEvent::Exited { port, worker_id, code, signal } => {
                    let oom = signal == Some(nix::libc::SIGKILL)
                        && self.cgroups.get(&worker_id).is_some_and(crate::isolation::WorkerCgroup::oom_killed);
                    info!(port, worker = %worker_id, code, signal = signal.map(worker::signal_name), oom, "worker exited");
                    if oom {
                        oom_killed.insert(worker_id.clone());
                    }
                    (port, Input::Exited { worker_id, code, signal })
                }
                ProcEvent::Heartbeat { port, worker_id } => (port, Input::Heartbeat { worker_id }),
            };
            let oom = matches!(&input, Input::Exited { worker_id, .. } if oom_killed.contains(worker_id));
            self.feed(port, input, now, wall).await;
            if oom {
                // The kernel's OOM killer, not a crash of the worker's own: say so (SPEC §3.1).
                if let Some(slot) = self.slots.get_mut(&port)
                    && let Some(exit) = slot.last_exit.as_mut()
                    && exit.reason == ExitReason::Exited
                {
                    exit.reason = ExitReason::MemoryLimit;
                    crate::metrics::metrics().exit(ExitReason::MemoryLimit.as_str());
                    warn!(port, "the worker was killed for exceeding its memory limit (memory_mb)");
                }
            }
        }
        for (port, worker_id) in self.poll_heartbeats() {
            self.feed(port, Input::Heartbeat { worker_id }, now, wall).await;
        }
        self.apply_operations(now, wall).await;
        let view = self.desired_now(now);
        if let Some(view) = view {
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
        let ports: Vec<u16> = self.slots.keys().copied().collect();
        for port in ports {
            self.check_blobs(port, now, wall).await;
            self.feed(port, Input::Tick, now, wall).await;
        }
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
        for worker_id in std::mem::take(&mut self.cleanup) {
            self.clean_worker_dir(&worker_id);
        }
        // Then each exited worker's cgroup: what left both its group and its dir dies here.
        let cgroups = std::mem::take(&mut self.cgroup_cleanup);
        if !cgroups.is_empty() {
            // Kills whatever the workers left in them, then removes them; bounded, off the job.
            tokio::task::spawn_blocking(move || {
                for cgroup in cgroups {
                    if let Err(e) = cgroup.remove() {
                        warn!(error = %e, "cannot remove a worker cgroup; the next start sweeps it");
                    }
                }
            });
        }
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

impl Processes {
    /// A config reload: new timeouts, restart policy and session-loss policy, for every step
    /// from now on (a running backoff or grace period keeps the deadline it was given).
    fn reconfigure(&mut self, config: &crate::config::Config) {
        self.config.policy = Policy::from_config(&config.worker, &config.restart);
        self.config.start_timeout = config.worker.start_timeout;
        self.config.heartbeat_timeout = config.worker.heartbeat_timeout;
        self.config.max_timeout = config.worker.max_timeout;
        self.config.node_budget_per_min = config.restart.node_budget_per_min;
        self.budget.per_min = config.restart.node_budget_per_min;
        self.config.users = worker::users::UserPolicy::from_config(&config.worker);
        self.config.stop_workers_after = (config.zookeeper.on_session_loss
            == crate::config::OnSessionLoss::StopWorkers)
            .then_some(config.zookeeper.stop_workers_after);
        info!("worker and restart settings reloaded");
    }

    /// Blobs for one slot: a slot waiting for its blobs launches once they are all local (or
    /// shows why not); a live worker gets new versions through its links, or is restarted on
    /// them when a blob says `restart_on_update`.
    async fn check_blobs(&mut self, port: u16, now: Instant, wall: u64) {
        use crate::slot::SlotState as S;
        let input = match &self.slots[&port].state {
            S::WaitingForBlobs { job } | S::WaitingForBlobUpdate { job } => match self.links.ready(port, job) {
                Ok(()) => Input::BlobsReady(job.clone()),
                Err(error) => Input::BlobProblem { job: job.clone(), error },
            },
            S::Running { job, worker, .. } | S::WaitingForWorkerStart { job, worker: Some(worker), .. }
                if !job.blobs.is_empty() =>
            {
                let dir = self.config.local_dir.join("workers").join(&worker.worker_id);
                if !self.links.check(port, job, &dir).restart {
                    return;
                }
                info!(port, topology = %job.topology_id, worker = %worker.worker_id,
                    "a blob with restart_on_update has a new version: restarting the worker on it");
                Input::BlobUpdate(job.clone())
            }
            _ => return,
        };
        self.feed(port, input, now, wall).await;
    }

    /// The assignment to apply now: the latest synced view, or nothing at all once the
    /// session has been gone longer than `stop_workers_after` (`on_session_loss =
    /// "stop_workers"`). `None` before the first sync: apply nothing, change nothing.
    fn desired_now(&mut self, now: Instant) -> Option<Arc<AssignmentView>> {
        let view = self.session_policy(now);
        // Drained by the operator, or failing health checks (`on_failure`): nothing runs, the
        // assignments are kept and apply again once the hold ends.
        if self.hold() { Some(Arc::new(AssignmentView::default())) } else { view }
    }

    fn session_policy(&mut self, now: Instant) -> Option<Arc<AssignmentView>> {
        let connected = {
            let zk = self.zk_status.borrow();
            zk.registered && zk.state == "connected"
        };
        let view = self.desired.borrow().clone();
        if connected {
            self.session_lost_since = None;
        } else if self.session_lost_since.is_none() {
            self.session_lost_since = Some(now);
        }
        if let (Some(limit), Some(since)) = (self.config.stop_workers_after, self.session_lost_since)
            && now.duration_since(since) >= limit
            && self.stopped_for_session_loss.is_none()
        {
            warn!(
                lost_for_s = now.duration_since(since).as_secs(),
                "no zookeeper session for longer than stop_workers_after_secs: stopping workers (on_session_loss = \"stop_workers\")"
            );
            self.stopped_for_session_loss = Some(view.as_ref().map_or(0, |v| v.generation));
        }
        if let Some(stopped_at) = self.stopped_for_session_loss {
            // Stay stopped until a view read after the session came back: the one from before
            // the outage may be stale, and relaunching from it is the double run this policy
            // exists to prevent.
            match view {
                Some(v) if connected && v.generation > stopped_at => {
                    info!("zookeeper session back and assignments re-read: workers may run again");
                    self.stopped_for_session_loss = None;
                    return Some(v);
                }
                _ => return Some(Arc::new(AssignmentView::default())),
            }
        }
        view
    }
}

/// Requests a `sync-processes` job whenever the earliest slot deadline is reached.
pub async fn deadline_timer(
    mut deadline: watch::Receiver<Option<Instant>>,
    queue: QueueHandle<ProcessJob>,
    mut stop: Shutdown,
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
            _ = stop.wait() => return,
        };
        if due {
            queue.request(ProcessJob::Reconcile);
            // Wait for the job to publish a new deadline rather than spinning on this one; the
            // monitor timer covers a deadline that stays put.
            tokio::select! {
                res = deadline.changed() => if res.is_err() { return },
                _ = stop.wait() => return,
            }
        }
    }
}

/// Processes whose working directory is `dir` (read from `/proc/<pid>/cwd`).
fn pids_with_cwd(dir: &std::path::Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == dir))
        .collect()
}
