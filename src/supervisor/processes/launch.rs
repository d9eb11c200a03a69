//! Starting a worker for a slot: the user it runs as, its blob links, its limits and cgroup,
//! the spawn through the [`ProcessControl`](crate::worker::ProcessControl) seam, its record,
//! and the tasks that watch it (exit, heartbeat). Also the blob checks that launch a waiting
//! slot or restart a worker on new blob versions.
//!
//! Order matters: a refusal (user, limits) creates nothing; the record is written right after
//! the spawn and before the slot hears of the worker (module invariant of the executor).

use tokio::time::Instant;
use tracing::{error, info, warn};

use super::{ProcEvent, ProcessJob, Processes};
use crate::isolation::{Limits, WorkerCgroup};
use crate::model::assignment::LivenessMode;
use crate::model::unix_ms;
use crate::slot::{Input, SlotJob, Worker};
use crate::supervisor::links;
use crate::supervisor::records::{PortJob, WorkerRecord};
use crate::worker::{self, LaunchedWorker};

/// The pids limit of every worker where the mechanism has one: far above a real worker's
/// threads and processes, far below what a fork bomb needs to hurt the host.
const PIDS_MAX: u64 = 4096;

impl Processes {
    /// A launch the slot asked for, within the node restart budget when it is a restart.
    pub(super) async fn relaunch(&mut self, port: u16, job: &SlotJob, restart: bool, now: Instant) -> Input {
        let m = crate::metrics::metrics();
        if restart && let Err(until) = self.budget.take(now) {
            warn!(port, "node restart budget exhausted; the relaunch waits");
            m.restarts_deferred.inc();
            return Input::Deferred { until };
        }
        let answer = self.launch(port, job).await;
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
        answer
    }

    /// Spawns a worker for `job` on `port`, records it, and starts watching it.
    async fn launch(&mut self, port: u16, job: &SlotJob) -> Input {
        let worker_id = uuid::Uuid::new_v4().to_string();
        let spec = match self.launch_spec(port, job, &worker_id) {
            Ok(spec) => spec,
            Err(e) => return Input::LaunchFailed(e),
        };
        let cgroup = match self.worker_cgroup(port, job, &worker_id) {
            Ok(cgroup) => cgroup,
            Err(e) => {
                self.remove_worker_dir(&worker_id);
                return Input::LaunchFailed(e);
            }
        };
        let launched = match self.control.spawn(&spec, &cgroup) {
            Ok(launched) => {
                self.cgroups.insert(worker_id.clone(), cgroup);
                launched
            }
            Err(e) => {
                self.cleanup.cgroups.push((worker_id.clone(), cgroup));
                warn!(port, topology = %job.topology_id, error = %e, "cannot launch a worker");
                self.remove_worker_dir(&worker_id);
                return Input::LaunchFailed(e.to_string());
            }
        };
        self.record_launch(port, job, &worker_id, &launched).await;
        let pid = launched.identity.pid;
        info!(port, topology = %job.topology_id, worker = %worker_id, pid, "worker launched");
        if job.launch.liveness == LivenessMode::Heartbeat {
            self.watch_heartbeat(&worker_id);
        }
        self.watch_exit(port, &worker_id, launched);
        Input::Launched(Worker { worker_id, pid })
    }

    /// What to start: refused (the reason goes to the slot, and backs off) before anything is
    /// created if the user is not allowed; the blob links are made here.
    fn launch_spec(&mut self, port: u16, job: &SlotJob, worker_id: &str) -> Result<worker::LaunchSpec, String> {
        let worker_dir = self.worker_dir(worker_id);
        let run_as = self.config.users.resolve(&job.topology_id, job.launch.user.as_deref()).map_err(|e| {
            warn!(port, topology = %job.topology_id, error = %e, "worker refused");
            e
        })?;
        // GALE_BLOB_DIR exists even when the job has no blobs (SPEC §4 promises the directory).
        // Linked only to cache entries of the user it runs as (blob privacy between users).
        let owner = crate::blob::Owner::of_uid(run_as.as_ref().map(|r| r.uid));
        let blobs = self.links.link(port, job, owner, &worker_dir).map_err(|e| {
            warn!(port, topology = %job.topology_id, error = %e, "cannot launch a worker");
            self.remove_worker_dir(worker_id);
            e
        })?;
        Ok(worker::LaunchSpec {
            topology_id: job.topology_id.clone(),
            worker_id: worker_id.to_owned(),
            port,
            supervisor_id: self.config.supervisor_id.clone(),
            command: job.launch.command.clone(),
            env: job.launch.env.clone(),
            blob_dir: links::blob_dir(&worker_dir),
            worker_dir,
            log_file: worker::worker_log_path(&self.config.log_dir, &job.topology_id, port),
            blobs,
            run_as,
        })
    }

    /// The worker's cgroup with the job's limits, or why the worker cannot run here (a limit
    /// this host cannot enforce, or the cgroup could not be made).
    fn worker_cgroup(&self, port: u16, job: &SlotJob, worker_id: &str) -> Result<WorkerCgroup, String> {
        let isolation = &self.config.isolation;
        let limits = Limits { memory_mb: job.launch.memory_mb, cpu_percent: job.launch.cpu_percent, pids_max: None };
        let missing = isolation.unenforceable(&limits);
        if !missing.is_empty() {
            let e = format!(
                "topology {}: {} cannot be enforced on this host (limits by {})",
                job.topology_id,
                missing.join(", "),
                isolation.as_str()
            );
            warn!(port, error = %e, "worker refused");
            return Err(e);
        }
        // The pids limit only where it exists: its absence is not the assignment's problem.
        let pids_max = isolation.unenforceable(&Limits { pids_max: Some(PIDS_MAX), ..limits }).is_empty();
        let limits = Limits { pids_max: pids_max.then_some(PIDS_MAX), ..limits };
        WorkerCgroup::create(isolation, worker_id, &limits).map_err(|e| {
            warn!(port, topology = %job.topology_id, error = %e, "cannot set up the worker's limits");
            e.to_string()
        })
    }

    /// Records a spawned worker in LocalState, before the slot hears of it.
    async fn record_launch(&mut self, port: u16, job: &SlotJob, worker_id: &str, launched: &LaunchedWorker) {
        let record = WorkerRecord {
            worker_id: worker_id.to_owned(),
            port,
            topology_id: job.topology_id.clone(),
            process: launched.identity.clone(),
            launched_at_ms: unix_ms(),
            launched_by: Some(env!("CARGO_PKG_VERSION").to_owned()),
            job: PortJob {
                topology_id: job.topology_id.clone(),
                zxid: 0,
                launch: job.launch.clone(),
                blobs: job.blobs.clone(),
            },
        };
        self.records.insert(worker_id.to_owned(), record);
        if let Err(e) = self.persist_records().await {
            // The worker runs but is not recorded yet: keep going (it is watched as usual) and
            // retry the write at the end of every job until it works.
            error!(port, worker = %worker_id, error = %e, "cannot record a launched worker; will retry");
            self.records_dirty = true;
        }
    }

    /// A task that reports the worker's exit and requests a job.
    fn watch_exit(&self, port: u16, worker_id: &str, launched: LaunchedWorker) {
        let events = self.events_tx.clone();
        let queue = self.queue.clone();
        let control = self.control.clone();
        let id = worker_id.to_owned();
        let LaunchedWorker { identity, mut exit } = launched;
        tokio::spawn(async move {
            let (code, signal) = match exit.wait().await {
                Ok(report) => (report.code, report.signal),
                // Could not wait on our own child (should not happen): do not guess that it
                // exited; watch it as an adopted process instead.
                Err(e) => {
                    warn!(port, worker = %id, error = %e, "cannot wait for a worker; watching its pid instead");
                    if control.adopt(&identity).wait().await.is_err() {
                        return;
                    }
                    (None, None)
                }
            };
            let _ = events.send(ProcEvent::Exited { port, worker_id: id, code, signal });
            queue.request(ProcessJob::Reconcile);
        });
    }

    /// inotify on the worker dir: a hint to read the heartbeat file now (the mtime poll on
    /// every job is the fallback).
    pub(super) fn watch_heartbeat(&mut self, worker_id: &str) {
        let dir = self.worker_dir(worker_id);
        match worker::HeartbeatWatcher::start(worker_id, &dir, self.outputs.hints.clone()) {
            Ok(w) => {
                self.heartbeat_watchers.insert(worker_id.to_owned(), w);
            }
            Err(e) => warn!(worker = %worker_id, error = %e, "cannot watch the heartbeat file; polling it instead"),
        }
    }

    /// The heartbeat-file fallback: an mtime newer than the last one seen is a heartbeat.
    pub(super) fn poll_heartbeats(&mut self) -> Vec<(u16, String)> {
        let mut beats = Vec::new();
        for (port, slot) in &self.slots {
            let (Some(w), Some(job)) = (slot.worker(), slot.job()) else { continue };
            if job.launch.liveness != LivenessMode::Heartbeat {
                continue;
            }
            let file = worker::heartbeat_file(&worker::worker_dir(&self.config.local_dir, &w.worker_id));
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

    /// Blobs for one slot: a slot waiting for its blobs launches once they are all local (or
    /// shows why not); a live worker gets new versions through its links, or is restarted on
    /// them when a blob says `restart_on_update`.
    pub(super) async fn check_blobs(&mut self, port: u16, now: Instant, wall: u64) {
        use crate::slot::SlotState as S;
        let users = &self.config.users;
        let owner = |job: &SlotJob| links::blob_owner(users, &job.topology_id, job.launch.user.as_deref());
        let input = match &self.slots[&port].state {
            S::WaitingForBlobs { job } | S::WaitingForBlobUpdate { job } => match owner(job) {
                // A refused user is the launch's to report, before anything is created; no
                // blob is fetched for it.
                Err(_) => Input::BlobsReady(job.clone()),
                Ok(owner) => match self.links.ready(port, job, owner) {
                    Ok(()) => Input::BlobsReady(job.clone()),
                    Err(error) => Input::BlobProblem { job: job.clone(), error },
                },
            },
            S::Running { job, worker, .. } | S::WaitingForWorkerStart { job, worker: Some(worker), .. }
                if !job.blobs.is_empty() =>
            {
                let Ok(owner) = owner(job) else { return };
                let dir = worker::worker_dir(&self.config.local_dir, &worker.worker_id);
                if !self.links.check(port, job, owner, &dir).restart {
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
}
