//! Exits and stops: the exits and heartbeats the watch tasks report (with the OOM relabel),
//! signals to a worker's group (and, with SIGKILL, the rest of its cgroup), and forgetting a
//! worker whose exit was seen.

use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{ProcEvent, Processes};
use crate::model::ExitReason;
use crate::slot::{Input, Signal, Slot};
use crate::worker;

impl Processes {
    /// Feeds the exits the watch tasks reported (heartbeat hints come on their own channel).
    pub(super) async fn take_events(&mut self, now: Instant, wall: u64) {
        while let Ok(event) = self.events.try_recv() {
            let ProcEvent::Exited { port, worker_id, code, signal } = event;
            let oom = signal == Some(nix::libc::SIGKILL)
                && self.cgroups.get(&worker_id).is_some_and(|c| self.control.oom_killed(c));
            info!(port, worker = %worker_id, code, signal = signal.map(worker::signal_name), oom, "worker exited");
            self.feed(port, Input::Exited { worker_id, code, signal }, now, wall).await;
            if oom {
                self.relabel_oom(port);
            }
        }
    }

    /// The kernel's OOM killer, not a crash of the worker's own: say so (SPEC §3.1).
    fn relabel_oom(&mut self, port: u16) {
        if let Some(slot) = self.slots.get_mut(&port)
            && let Some(exit) = slot.last_exit.as_mut()
            && exit.reason == ExitReason::Exited
        {
            exit.reason = ExitReason::MemoryLimit;
            crate::metrics::metrics().exit(ExitReason::MemoryLimit.as_str());
            warn!(port, "the worker was killed for exceeding its memory limit (memory_mb)");
        }
    }

    /// SIGTERM or SIGKILL to a recorded worker's group; with SIGKILL, the rest of its cgroup.
    pub(super) fn signal(&mut self, port: u16, worker_id: &str, signal: Signal) {
        let Some(record) = self.records.get(worker_id) else {
            debug!(port, worker = %worker_id, "no record for a worker to signal");
            return;
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
        match self.control.signal_group(&record.process, sig) {
            Ok(outcome) => info!(port, worker = %worker_id, pid = record.process.pid, signal = %sig, ?outcome,
                state = ?self.slots.get(&port).map(Slot::state_name), "stopping worker"),
            Err(e) => warn!(port, worker = %worker_id, error = %e, "cannot signal a worker"),
        }
        // Then the rest of its cgroup: whatever left the process group dies too.
        if signal == Signal::Kill
            && let Some(cgroup) = self.cgroups.get(worker_id)
            && let Err(e) = self.control.kill_cgroup(cgroup)
        {
            warn!(port, worker = %worker_id, error = %e, "cannot kill the worker's cgroup");
        }
    }

    /// A worker's exit was seen: drop everything about it; its dir and cgroup go at the end
    /// of the job.
    pub(super) fn forget(&mut self, worker_id: String) {
        // Not persisted on the spot: a record of a process that has exited is harmless (the
        // next start proves it dead), so the removal rides along with the next write — the
        // relaunch's record, or the end of this job — and a restart costs one durable write,
        // not two.
        if self.records.remove(&worker_id).is_some() {
            self.records_dirty = true;
        }
        self.heartbeats.remove(&worker_id);
        self.heartbeat_watchers.remove(&worker_id);
        self.adopted.remove(&worker_id);
        let tracked = match self.cgroups.remove(&worker_id) {
            Some(cgroup) => {
                let tracked = cgroup.tracks_processes();
                self.cleanup.cgroups.push((worker_id.clone(), cgroup));
                tracked
            }
            None => false,
        };
        self.cleanup.worker_dirs.push(super::ExitedDir { worker_id, scan_for_leftovers: !tracked });
    }
}
