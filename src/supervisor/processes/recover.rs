//! What survives the agent: adoption of recorded workers at start, the sweep of what no record
//! names (worker dirs and the processes in them, cgroups), the cleanup after a worker exited,
//! the persisted records, and the check that the local dir is still the one we locked.
//!
//! Every liveness check and kill goes through the
//! [`ProcessControl`](crate::worker::ProcessControl) seam: a recorded worker is adopted only
//! when it is provably the process that was recorded (pid + start time + boot id).

use std::collections::BTreeSet;
use std::path::PathBuf;

use tokio::time::Instant;
use tracing::{info, warn};

use super::{ProcEvent, ProcessJob, Processes};
use crate::isolation::WorkerCgroup;
use crate::local_state::Workers;
use crate::model::assignment::LivenessMode;
use crate::model::{ExitReason, LastExit, unix_ms};
use crate::proc_identity::Liveness;
use crate::slot::{Input, Slot, Worker};
use crate::supervisor::records::{LocalAssignments, WorkerRecord, WorkerRecords};
use crate::worker;

/// The local dir the agent depends on must stay the one it locked.
#[derive(Debug, Clone)]
pub(crate) struct LocalDirCheck {
    /// `<local_dir>/lock` and the inode we hold the record lock on: if the file at that path is
    /// another inode (the dir was removed or replaced under us), a second agent could start.
    pub lock_path: PathBuf,
    pub lock_inode: u64,
    pub state_dir: PathBuf,
}

impl LocalDirCheck {
    pub(super) fn check(&self) -> Result<(), String> {
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

impl Processes {
    /// After a start: adopt every recorded worker that is provably still running, forget the
    /// rest, and stop workers that were spawned but never recorded (the agent died between
    /// the two). Runs once, before the first job.
    pub(crate) async fn recover(&mut self, assigned: &LocalAssignments) -> Result<(), String> {
        let state = self.state.clone();
        let records = tokio::task::spawn_blocking(move || state.lock().unwrap().get::<Workers>())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        let mut kept = WorkerRecords::new();
        for (id, record) in records {
            if self.control.liveness(&record.process) != Liveness::Alive {
                info!(port = record.port, worker = %id, pid = record.process.pid, "a recorded worker ended while the agent was down");
                let lost = LastExit { code: None, signal: None, reason: ExitReason::Lost, at_ms: unix_ms() };
                self.lost.insert(record.port, (record.topology_id.clone(), lost));
                self.remove_worker_dir(&id);
                continue;
            }
            self.adopt(&record, assigned).await;
            kept.insert(id, record);
        }
        self.records = kept.clone();
        self.persist_records().await?;
        self.sweep_orphans(&kept);
        // Cgroups of workers nobody recorded (the agent died between the two): kill and remove.
        let ids: BTreeSet<String> = kept.keys().cloned().collect();
        match crate::isolation::sweep_orphans(&self.config.isolation, &ids) {
            Ok(outcome) if !outcome.removed.is_empty() => {
                warn!(removed = ?outcome.removed, "removed worker cgroups no record names");
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "cannot sweep stray worker cgroups"),
        }
        Ok(())
    }

    /// A recorded worker that is alive and proven ours: adopt it into its slot, as running the
    /// job it was launched with (a port no longer configured gets a slot of its own, just to
    /// stop it).
    async fn adopt(&mut self, record: &WorkerRecord, assigned: &LocalAssignments) {
        let (now, wall) = (Instant::now(), unix_ms());
        let (port, id) = (record.port, record.worker_id.clone());
        self.slots.entry(port).or_insert_with(|| Slot::new(port, now, wall));
        let job = self.job_for(port, &record.job);
        let heartbeat = job.launch.liveness == LivenessMode::Heartbeat;
        info!(port, topology = %record.topology_id, worker = %id, pid = record.process.pid,
            "adopted a worker that kept running while the agent was down");
        let w = Worker { worker_id: id.clone(), pid: record.process.pid };
        self.adopted.insert(id.clone());
        let dir = self.worker_dir(&id);
        self.links.adopt(port, &job, &dir);
        let cgroup = crate::isolation::WorkerCgroup::adopt(&self.config.isolation, &id)
            .or_else(|| self.cgroup_elsewhere(record.process.pid, &id));
        if let Some(cgroup) = cgroup {
            self.cgroups.insert(id.clone(), cgroup);
        }
        self.feed(port, Input::Adopt { worker: w, job: job.clone() }, now, wall).await;
        // The last sync before the agent went down may have moved this port on (the agent
        // persisted it and died before acting): act on that persisted result now, the slot's
        // way (SIGTERM, grace, SIGKILL, then the new job). An unchanged job is a no-op.
        let current = assigned.get(&port).filter(|_| self.config.slots.contains(&port)).map(|j| self.job_for(port, j));
        if current.as_ref() != Some(&job) {
            warn!(port, worker = %id, "the adopted worker's job is no longer what its port should run; replacing it");
            self.feed(port, Input::Assign(current), now, wall).await;
        }
        if heartbeat {
            // Only a change from here on is a heartbeat: a stale file must not count as one.
            if let Some(mtime) = worker::last_heartbeat(&worker::heartbeat_file(&dir)) {
                self.heartbeats.insert(id.clone(), mtime);
            }
        }
        self.watch_adopted(record);
        if heartbeat {
            self.watch_heartbeat(&id);
        }
    }

    /// The cgroup of an adopted worker that is not under this agent's workers' parent: one an
    /// earlier build launched where it put that parent then (on cgroup v2 under systemd,
    /// beside the unit in `system.slice`, before it moved to the cgroup root). Found from the
    /// worker's `/proc/<pid>/cgroup`, so the worker is still stopped and killed as a whole; its
    /// next launch is under the current parent.
    fn cgroup_elsewhere(&self, pid: u32, worker_id: &str) -> Option<crate::isolation::WorkerCgroup> {
        if self.config.isolation == crate::isolation::Mechanism::Rlimits {
            return None;
        }
        let name = crate::isolation::parent_name(&self.config.supervisor_id);
        let parents = crate::isolation::worker_parents(pid, worker_id, &[&name]).ok()?;
        let cgroup = crate::isolation::WorkerCgroup::under(&parents, worker_id).under_former_parent();
        if !cgroup.tracks_processes() {
            return None;
        }
        info!(pid, worker = worker_id, "adopted worker's cgroup found where an earlier build put it");
        Some(cgroup)
    }

    /// A task that reports an adopted worker's exit (a pidfd for the real control).
    fn watch_adopted(&self, record: &WorkerRecord) {
        let events = self.events_tx.clone();
        let queue = self.queue.clone();
        let mut exit = self.control.adopt(&record.process);
        let (port, worker_id, pid) = (record.port, record.worker_id.clone(), record.process.pid);
        tokio::spawn(async move {
            if let Err(e) = exit.wait().await {
                warn!(pid, error = %e, "cannot watch an adopted worker; the monitor will notice its exit");
                return;
            }
            let _ = events.send(ProcEvent::Exited { port, worker_id, code: None, signal: None });
            queue.request(ProcessJob::Reconcile);
        });
    }

    /// Safety net for adopted workers (not our children): their exit normally arrives through
    /// a pidfd at once; if that watch failed, it is noticed here, on the monitor tick.
    pub(super) fn check_adopted(&self) {
        let gone: Vec<(u16, String)> = self
            .adopted
            .iter()
            .filter_map(|id| self.records.get(id))
            .filter(|r| self.control.liveness(&r.process) != Liveness::Alive)
            .map(|r| (r.port, r.worker_id.clone()))
            .collect();
        for (port, worker_id) in gone {
            let _ = self.events_tx.send(ProcEvent::Exited { port, worker_id, code: None, signal: None });
        }
    }

    /// Worker dirs without a record are leftovers; a process still running in one was spawned
    /// by an agent that died before recording it: stop it (its cwd proves where it came from).
    pub(super) fn sweep_orphans(&self, kept: &WorkerRecords) {
        let Ok(entries) = std::fs::read_dir(worker::workers_dir(&self.config.local_dir)) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if kept.contains_key(&name) {
                continue;
            }
            for pid in self.control.kill_left_in(&entry.path()) {
                warn!(worker = %name, pid, "stopping an unrecorded worker process (its agent died before recording it)");
            }
            self.remove_worker_dir(&name);
        }
    }

    /// The end of a job: the dirs and cgroups of the workers that exited in it.
    pub(super) fn clean_up_exited(&mut self) {
        for dir in std::mem::take(&mut self.cleanup.worker_dirs) {
            self.clean_worker_dir(&dir);
        }
        // Then each exited worker's cgroup: an empty one goes here and now (a few `rmdir`s);
        // in any other, what the worker left dies first, off the job.
        let cgroups: Vec<(String, WorkerCgroup)> = std::mem::take(&mut self.cleanup.cgroups)
            .into_iter()
            .filter_map(|(worker_id, cgroup)| cgroup.remove_empty().err().map(|cgroup| (worker_id, cgroup)))
            .collect();
        if !cgroups.is_empty() {
            // Kills whatever the workers left in them, then removes them; bounded.
            tokio::task::spawn_blocking(move || {
                for (worker_id, cgroup) in cgroups {
                    match cgroup.remove() {
                        Ok(left) if !left.is_empty() => {
                            warn!(worker = %worker_id, pids = ?left, "killed processes the exited worker left behind in its cgroup");
                        }
                        Ok(_) => {}
                        Err(e) => {
                            warn!(worker = %worker_id, error = %e, "cannot remove a worker cgroup; the next start sweeps it")
                        }
                    }
                }
            });
        }
    }

    /// After a worker exited: processes it left behind (children that ignored SIGTERM, or
    /// outlived a leader that exited on its own) would otherwise keep running beside the
    /// relaunched worker. Where no cgroup holds them, their cwd in the worker's directory
    /// proves where they come from, and they are killed before the directory goes.
    fn clean_worker_dir(&self, dir: &super::ExitedDir) {
        let worker_id = &dir.worker_id;
        if crate::ident::validate("worker id", worker_id).is_err() {
            return;
        }
        if dir.scan_for_leftovers {
            for pid in self.control.kill_left_in(&self.worker_dir(worker_id)) {
                warn!(worker = %worker_id, pid, "killing a process the exited worker left behind");
            }
        }
        self.remove_worker_dir(worker_id);
    }

    pub(super) fn remove_worker_dir(&self, worker_id: &str) {
        if crate::ident::validate("worker id", worker_id).is_err() {
            return;
        }
        let path = self.worker_dir(worker_id);
        if let Err(e) = remove_worker_tree(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!(path = %path.display(), error = %e, "cannot remove a worker dir");
        }
    }

    pub(super) async fn persist_records(&mut self) -> Result<(), String> {
        let state = self.state.clone();
        let records = self.records.clone();
        tokio::task::spawn_blocking(move || state.lock().unwrap().put::<Workers>(&records).map(drop))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        self.records_dirty = false;
        Ok(())
    }
}

/// Removes a worker's directory. One whose blob dir is empty (a job without blobs) and that
/// holds nothing else goes with two `rmdir`s; anything else (blob links, a heartbeat file,
/// what the worker wrote) takes the full walk.
fn remove_worker_tree(path: &std::path::Path) -> std::io::Result<()> {
    let blobs = crate::supervisor::links::blob_dir(path);
    let quick = std::fs::remove_dir(&blobs).or_else(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Ok(()),
        _ => Err(e),
    });
    match quick.and_then(|()| std::fs::remove_dir(path)) {
        Ok(()) => Ok(()),
        Err(_) => std::fs::remove_dir_all(path),
    }
}

#[cfg(test)]
mod tests {
    use super::remove_worker_tree;

    #[test]
    fn a_worker_dir_goes_whatever_it_holds() {
        let tmp = tempfile::tempdir().unwrap();
        let bare = tmp.path().join("bare");
        std::fs::create_dir_all(bare.join("blobs")).unwrap();
        let full = tmp.path().join("full");
        std::fs::create_dir_all(full.join("blobs")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", full.join("blobs/conf")).unwrap();
        std::fs::write(full.join("heartbeat"), "x").unwrap();
        let no_blobs = tmp.path().join("no-blobs");
        std::fs::create_dir_all(no_blobs.join("out")).unwrap();
        for dir in [&bare, &full, &no_blobs] {
            remove_worker_tree(dir).unwrap();
            assert!(!dir.exists(), "{}", dir.display());
        }
        assert_eq!(remove_worker_tree(&bare).unwrap_err().kind(), std::io::ErrorKind::NotFound);
        assert!(std::path::Path::new("/etc/hostname").exists(), "a link's target is never followed");
    }
}
