//! The executor's side of operator operations (control socket, ZooKeeper actions; the
//! diagnostics runs are `diag.rs`) and of the
//! holds that keep workers stopped: `gale drain` and failing health checks. Also the slot
//! statuses it publishes for `gale status`.
//!
//! Operations are applied at the start of a `sync-processes` job, so they are ordered with
//! every other input and touch the slots only from their owner.

use std::collections::BTreeMap;
use std::str::FromStr;

use tokio::time::Instant;
use tracing::{info, warn};

use super::Processes;
use crate::admin::SlotStatus;
use crate::admin::control::Reply;
use crate::blob::BlobUse;
use crate::local_state::Drained;
use crate::model::WorkerInfo;
use crate::model::action::Operation;
use crate::slot::{Input, SlotState};
use crate::supervisor::links;

/// Operator state: the drain and health holds.
#[derive(Debug)]
pub(super) struct Ops {
    pub(super) drained: bool,
    /// `drain --wait` requests, answered once no worker runs.
    pub(super) drain_waiters: Vec<tokio::sync::oneshot::Sender<crate::admin::control::Reply>>,
    /// The health verdict last acted on (for logging the change once).
    pub(super) held_for_health: bool,
    /// Ports with a diagnostics run in progress.
    pub(super) diagnosing: super::diag::Diagnosing,
}

impl Processes {
    /// Workers must not run: drained, or unhealthy.
    pub(super) fn hold(&mut self) -> bool {
        let unhealthy = {
            let h = self.inputs.health.borrow();
            h.runs > 0 && !h.healthy
        };
        if unhealthy != self.ops.held_for_health {
            self.ops.held_for_health = unhealthy;
            if unhealthy {
                warn!("health checks fail: stopping workers until they pass again");
            } else {
                info!("health checks pass again: workers may run");
            }
        }
        self.ops.drained || unhealthy
    }

    /// Applies every operation that arrived since the last job and answers it.
    pub(super) async fn apply_operations(&mut self, now: Instant, wall: u64) {
        while let Ok((op, reply)) = self.inputs.requests.try_recv() {
            info!(op = ?op, "operator request");
            let answer = match op {
                Operation::RestartWorker { port } => match self.busy(port) {
                    Ok(()) => {
                        self.feed(port, Input::Restart, now, wall).await;
                        Reply::ok(format!("port {port}: restarting its worker"))
                    }
                    Err(e) => e,
                },
                Operation::ResetBackoff { port } => match self.busy(port) {
                    Ok(()) => {
                        self.feed(port, Input::ResetBackoff, now, wall).await;
                        Reply::ok(format!("port {port}: failures forgotten, no backoff"))
                    }
                    Err(e) => e,
                },
                Operation::SignalWorker { port, signal } => self.signal_worker(port, &signal),
                Operation::Diag { port, name, wait } => {
                    // Answered by the run's task (or at once when refused).
                    self.start_diag(port, &name, wait, reply);
                    continue;
                }
                Operation::Drain { wait } => {
                    self.set_drained(true).await;
                    let running = self.running_workers();
                    if wait && running > 0 {
                        // Answered by `answer_drain_waiters` once the last worker is gone.
                        self.ops.drain_waiters.push(reply);
                        continue;
                    }
                    Reply::ok(format!("drained: {running} worker(s) stopping"))
                }
                Operation::Undrain => {
                    self.set_drained(false).await;
                    Reply::ok("undrained: assigned workers start again")
                }
            };
            let _ = reply.send(answer);
        }
    }

    /// `Ok` if `port` is a slot with a job.
    fn busy(&self, port: u16) -> Result<(), Reply> {
        match self.slots.get(&port) {
            None => Err(Reply::err(format!("port {port} is not one of this agent's slots"))),
            Some(slot) if slot.job().is_none() => Err(Reply::err(format!("port {port}: nothing is assigned there"))),
            Some(_) => Ok(()),
        }
    }

    fn signal_worker(&self, port: u16, name: &str) -> Reply {
        let upper = name.to_ascii_uppercase();
        let full = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
        let Ok(signal) = nix::sys::signal::Signal::from_str(&full) else {
            return Reply::err(format!("`{name}` is not a signal name (QUIT, USR1, …)"));
        };
        let Some(w) = self.slots.get(&port).and_then(|s| s.worker()) else {
            return Reply::err(format!("port {port}: no worker runs there"));
        };
        let Some(record) = self.records.get(&w.worker_id) else {
            return Reply::err(format!("port {port}: worker {} is not recorded", w.worker_id));
        };
        match self.control.signal_group(&record.process, signal) {
            Ok(outcome) => Reply::ok(format!("port {port}: sent {signal} to worker pid {} ({outcome:?})", w.pid)),
            Err(e) => Reply::err(format!("port {port}: cannot signal worker pid {}: {e}", w.pid)),
        }
    }

    async fn set_drained(&mut self, drained: bool) {
        if self.ops.drained == drained {
            return;
        }
        self.ops.drained = drained;
        info!(drained, "drain state changed");
        let state = self.state.clone();
        let persisted =
            tokio::task::spawn_blocking(move || state.lock().unwrap().put::<Drained>(&drained).map(drop)).await;
        match persisted {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "cannot persist the drain state; it holds until the agent restarts"),
            Err(e) => warn!(error = %e, "cannot persist the drain state"),
        }
        self.outputs.drained.send_replace(drained);
        // Not draining any more: nobody is waiting for the workers to go.
        if !drained {
            for waiter in self.ops.drain_waiters.drain(..) {
                let _ = waiter.send(Reply::err("undrained before every worker had stopped"));
            }
        }
    }

    fn running_workers(&self) -> usize {
        self.slots.values().filter(|s| s.worker().is_some()).count()
    }

    pub(super) fn answer_drain_waiters(&mut self) {
        if self.ops.drain_waiters.is_empty() || self.running_workers() > 0 {
            return;
        }
        for waiter in self.ops.drain_waiters.drain(..) {
            let _ = waiter.send(Reply::ok("drained: no worker runs"));
        }
    }

    /// Every slot, for `gale status`; its topology and error as in `reports`
    /// ([`Processes::slot_reports`]), so status and SupervisorInfo agree.
    pub(super) fn slot_statuses(&self, reports: &BTreeMap<u16, Option<WorkerInfo>>) -> Vec<SlotStatus> {
        let now = Instant::now();
        let wall = crate::model::unix_ms();
        let view = self.links.view();
        self.slots
            .values()
            .map(|slot| {
                let report = reports.get(&slot.port).and_then(Option::as_ref);
                let worker = slot.worker();
                let backoff_until_ms = match &slot.state {
                    SlotState::Backoff { until, .. } => {
                        Some(wall + u64::try_from(until.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX))
                    }
                    _ => None,
                };
                let waiting_for = match &slot.state {
                    SlotState::WaitingForBlobs { job } | SlotState::WaitingForBlobUpdate { job } => {
                        let users = &self.config.users;
                        // The user's entries; a refused user's slot shows the refusal instead.
                        let owner = links::blob_owner(users, &job.topology_id, job.launch.user.as_deref()).ok();
                        job.blobs
                            .iter()
                            .filter_map(|b| {
                                let status = owner.and_then(|owner| view.blobs.get(&BlobUse::of(b, owner)));
                                match status {
                                    Some(s) if s.ready.is_some() => None,
                                    Some(s) if s.downloading => Some(format!(
                                        "blob `{}`{}: downloading",
                                        b.key,
                                        s.version.map(|v| format!(" version {v}")).unwrap_or_default()
                                    )),
                                    Some(s) => Some(format!(
                                        "blob `{}`: {}",
                                        b.key,
                                        s.error.clone().unwrap_or_else(|| "not local".into())
                                    )),
                                    None => Some(format!("blob `{}`: not looked up yet", b.key)),
                                }
                            })
                            .collect()
                    }
                    _ => Vec::new(),
                };
                SlotStatus {
                    port: slot.port,
                    state: slot.state_name(),
                    topology_id: report.map(|r| r.topology_id.clone()),
                    worker_id: worker.map(|w| w.worker_id.clone()),
                    pid: worker.map(|w| w.pid),
                    since_ms: report.map_or(slot.state_since_ms, |r| r.since_ms),
                    running_since_ms: matches!(slot.state, SlotState::Running { .. }).then_some(slot.state_since_ms),
                    restarts: slot.restarts,
                    last_exit: slot.last_exit.clone(),
                    backoff_until_ms,
                    waiting_for,
                    error: report.and_then(|r| r.error.clone()),
                    // Joined at read time from the use sampler's report (admin::Sources).
                    usage: None,
                }
            })
            .collect()
    }
}
