//! The executor's side of diagnostics (`gale worker diag`, the `diag` action): decide what a
//! run is about (the worker on the port, proven alive; its user; the configured command) and
//! start it as a task of its own, so that a run never holds up a `sync-processes` job.
//!
//! Invariants:
//! - **A run cannot hang or kill the agent.** It is a separate task ([`crate::diagnostics::run`]
//!   is bounded by its timeout); a panic in it ends that task only, and its outcome is
//!   logged and counted, never returned into the executor.
//! - **One run per port at a time.** A second request while one runs is refused with a reason,
//!   so a looping script cannot pile up heap dumps of one worker.
//! - **Only a proven worker.** `{pid}` is handed to a debugger only after pid + start time +
//!   boot id match the record.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use tracing::{info, warn};

use super::Processes;
use crate::admin::control::Reply;
use crate::diagnostics::Values;
use crate::diagnostics::run::{self, Request};
use crate::proc_identity::Liveness;

/// The ports with a run in progress, shared with the runs' tasks.
pub(super) type Diagnosing = Arc<Mutex<BTreeSet<u16>>>;

/// Holds a port in [`Diagnosing`] for the life of one run (released even if the task panics).
struct PortBusy {
    ports: Diagnosing,
    port: u16,
}

impl Drop for PortBusy {
    fn drop(&mut self) {
        if let Ok(mut ports) = self.ports.lock() {
            ports.remove(&self.port);
        }
    }
}

impl Processes {
    /// Starts diagnostics command `name` against the worker on `port`. `reply` is answered
    /// at once (refused, or started), or with `wait` once the run has ended.
    pub(super) fn start_diag(&mut self, port: u16, name: &str, wait: bool, reply: oneshot::Sender<Reply>) {
        let request = match self.diag_request(port, name) {
            Ok(request) => request,
            Err(why) => {
                // An unknown name is counted as `-`: the label's values stay the configured ones.
                let configured = self.config.diagnostics.commands.contains_key(name);
                count(if configured { name } else { "-" }, "refused");
                warn!(port, diag = name, problem = %why, "diagnostics refused");
                let _ = reply.send(Reply::err(format!("port {port}: {why}")));
                return;
            }
        };
        let busy = {
            let mut ports = self.ops.diagnosing.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if !ports.insert(port) {
                count(name, "refused");
                let _ = reply.send(Reply::err(format!(
                    "port {port}: a diagnostics run is in progress there; try again when it ends"
                )));
                return;
            }
            PortBusy { ports: self.ops.diagnosing.clone(), port }
        };
        let (dir, pid) = (request.diag_dir.clone(), request.values.pid);
        info!(port, diag = name, pid, "diagnostics started");
        let waiting = if wait {
            Some(reply)
        } else {
            let started =
                format!("port {port}: diagnostics `{name}` started on pid {pid}; its output goes to {}", dir.display());
            let _ = reply.send(Reply::ok(started));
            None
        };
        tokio::spawn(async move {
            let _busy = busy;
            let answer = finish_run(&request).await;
            if let Some(reply) = waiting {
                let _ = reply.send(answer);
            }
        });
    }

    /// What a run of `name` on `port` is, or why there is none.
    pub(super) fn diag_request(&self, port: u16, name: &str) -> Result<Request, String> {
        let settings = &self.config.diagnostics;
        let Some(argv) = settings.commands.get(name) else {
            let known: Vec<&str> = settings.commands.keys().map(String::as_str).collect();
            let known = if known.is_empty() {
                "none is configured".to_owned()
            } else {
                format!("configured: {}", known.join(", "))
            };
            return Err(format!("no diagnostics command `{name}` in [diagnostics.commands] ({known})"));
        };
        if !self.slots.contains_key(&port) {
            return Err("not one of this agent's slots".into());
        }
        let Some(w) = self.slots.get(&port).and_then(|s| s.worker()) else {
            return Err("no worker runs there".into());
        };
        let Some(record) = self.records.get(&w.worker_id) else {
            return Err(format!("worker {} is not recorded", w.worker_id));
        };
        if self.control.liveness(&record.process) != Liveness::Alive {
            return Err(format!("worker pid {} is not provably the recorded process any more", w.pid));
        }
        let run_as = self.config.users.resolve(&record.topology_id, record.job.launch.user.as_deref())?;
        Ok(Request {
            name: name.to_owned(),
            argv: argv.clone(),
            values: Values {
                pid: record.process.pid,
                port,
                topology_id: record.topology_id.clone(),
                worker_id: w.worker_id.clone(),
                worker_dir: self.worker_dir(&w.worker_id),
                out: None,
            },
            run_as,
            diag_dir: crate::worker::logfile::diag_dir(&self.config.log_dir, &record.topology_id, port),
            timeout: settings.timeout,
            max_bytes: settings.max_output_mb.saturating_mul(1024 * 1024),
        })
    }
}

/// Runs `request` to its end; logs, counts, and says how it went.
async fn finish_run(request: &Request) -> Reply {
    let (port, name) = (request.values.port, request.name.as_str());
    match run::run(request, crate::model::unix_ms()).await {
        Ok(outcome) => {
            count(name, outcome.result());
            let summary = format!("port {port}: diagnostics `{name}` {}", outcome.summary());
            if outcome.succeeded() {
                info!(port, diag = name, "{summary}");
                Reply::ok(summary)
            } else {
                warn!(port, diag = name, "{summary}");
                Reply::err(summary)
            }
        }
        Err(e) => {
            count(name, "not_run");
            warn!(port, diag = name, error = %e, "diagnostics could not run");
            Reply::err(format!("port {port}: diagnostics `{name}` could not run: {e}"))
        }
    }
}

fn count(name: &str, result: &str) {
    crate::metrics::metrics()
        .diagnostics_runs
        .get_or_create(&vec![("name", name.to_owned()), ("result", result.to_owned())])
        .inc();
}
