//! The clean stop, in order. Nothing here touches workers: they outlive the agent (SPEC §4).
//!
//! 1. `stopping` (systemd `STOPPING=1`, SupervisorInfo);
//! 2. stop the timers, watches, servers and wake-ups, and wait for them;
//! 3. close both queues: a running job finishes (jobs are bounded: every ZooKeeper request
//!    times out), within a grace period;
//! 4. close the ZooKeeper session: the ephemeral node goes at once, not at session expiry;
//! 5. write `clean-shutdown` (not after a fatal error: the next start must recover).

use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use super::jobs::SupervisorSync;
use super::main_loop::{self, Daemon};
use super::processes::Processes;
use super::{ProcessJob, RunError, SupervisorJob};
use crate::event::QueueHandle;
use crate::lifecycle::{Lifecycle, Systemd};
use crate::local_dir::LocalDir;
use crate::shutdown::Stopper;

/// What only the stop needs, handed over by the start.
pub(super) struct Teardown {
    pub local_dir: LocalDir,
    /// Timers, watches, servers, wake-ups: they end when `tasks_stopper` fires.
    pub tasks: Vec<JoinHandle<()>>,
    pub tasks_stopper: Stopper,
    pub sync_queue: QueueHandle<SupervisorJob>,
    pub sync_task: JoinHandle<SupervisorSync>,
    pub proc_queue: QueueHandle<ProcessJob>,
    pub proc_task: JoinHandle<Processes>,
    pub membership_stopper: Stopper,
}

/// How long running jobs get to finish, and the session to close.
const GRACE: Duration = Duration::from_secs(10);

/// Stops the agent after the main loop ended with `outcome` (see the module doc).
pub(super) async fn stop(
    mut daemon: Daemon,
    teardown: Teardown,
    outcome: Result<(), RunError>,
) -> Result<(), RunError> {
    let why = if outcome.is_ok() { "shutdown requested" } else { "fatal error" };
    main_loop::transition(daemon.lifecycle(), Lifecycle::Stopping, why);
    Systemd.stopping();
    daemon.report().send_modify(|r| r.lifecycle = Lifecycle::Stopping);
    teardown.tasks_stopper.stop();
    for task in teardown.tasks {
        let _ = task.await;
    }
    finish_queues(teardown.sync_queue, teardown.sync_task, teardown.proc_queue, teardown.proc_task).await;
    teardown.membership_stopper.stop();
    let membership = daemon.membership();
    if !membership.is_finished() {
        match tokio::time::timeout(GRACE, membership).await {
            Ok(Ok(Err(e))) => error!(error = %e, "zookeeper membership ended with an error while stopping"),
            Ok(_) => {}
            Err(_) => warn!("zookeeper session did not close in {}s; the server will expire it", GRACE.as_secs()),
        }
    }
    match &outcome {
        Err(RunError::HealthExit) => {
            // A deliberate stop (Storm's behaviour): the workers are stopped, nothing to recover.
            teardown.local_dir.mark_clean_shutdown()?;
            error!("exiting 3: health checks failed (health.on_failure = \"exit\")");
        }
        // A fatal stop is not a clean one: the next start should recover.
        Err(e) => error!(error = %e, "stopping after a fatal error"),
        Ok(()) => {
            teardown.local_dir.mark_clean_shutdown()?;
            info!("stopped cleanly");
        }
    }
    outcome
}

/// Closes both queues and waits for their running jobs, at most [`GRACE`]: a stop must not
/// hang on one.
async fn finish_queues(
    sync_queue: QueueHandle<SupervisorJob>,
    sync_task: JoinHandle<SupervisorSync>,
    proc_queue: QueueHandle<ProcessJob>,
    proc_task: JoinHandle<Processes>,
) {
    sync_queue.close();
    proc_queue.close();
    let aborts = [sync_task.abort_handle(), proc_task.abort_handle()];
    let finished = tokio::time::timeout(GRACE, async {
        let _ = sync_task.await;
        let _ = proc_task.await;
    })
    .await;
    if finished.is_err() {
        warn!("event queues did not finish their running jobs in {}s; stopping anyway", GRACE.as_secs());
        aborts.iter().for_each(tokio::task::AbortHandle::abort);
    }
}
