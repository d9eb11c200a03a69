//! The main loop: one [`Event`] at a time, each to its own handler.
//!
//! Everything here is cheap: the work happens on the queues and in tasks. The loop owns the
//! lifecycle state (`starting`/`recovering` → `running` ⇄ `draining`), publishes it in the
//! [`NodeReport`] that membership turns into SupervisorInfo, keeps systemd informed (`READY`,
//! `STATUS`, `RELOADING`, the watchdog) and applies config reloads.
//!
//! | event | handler |
//! |---|---|
//! | shutdown (SIGTERM/SIGINT) | the loop ends: clean stop |
//! | the membership task ended | the loop ends with its error (exit 4 for a duplicate id) |
//! | a new ZooKeeper session or a reconnect | [`Daemon::on_session`]: full assignment re-read |
//! | a full sync completed | [`Daemon::on_synced`]: `running` (or `draining`), `READY=1` |
//! | `gale drain` / `undrain` | [`Daemon::on_drain_changed`] |
//! | a health verdict | [`Daemon::on_health`] (metrics, SupervisorInfo, `on_failure = "exit"`) |
//! | slots or the session changed | [`Daemon::on_slots_changed`], [`Daemon::on_zk_status`]: `STATUS=` |
//! | the health-exit bound passed | the loop ends: exit 3 |
//! | watchdog tick | [`Daemon::on_watchdog_tick`]: `WATCHDOG=1`; before `READY=1` also `EXTEND_TIMEOUT_USEC` |
//! | SIGHUP, a save of the config file | [`Daemon::on_reload`] |

use std::future::Future;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::{JoinError, JoinHandle};
use tokio::time::{Instant, Interval};
use tracing::{error, info, warn};

use super::assignments::AssignmentChanges;
use super::{RunError, SupervisorJob, reload};
use crate::admin::SlotStatus;
use crate::cluster::membership::{MembershipError, SessionEvent};
use crate::config::Config;
use crate::event::QueueHandle;
use crate::health::HealthReport;
use crate::lifecycle::{Lifecycle, Systemd};
use crate::model::Health;
use crate::model::NodeReport;
use crate::model::ZkStatus;

/// Everything the main loop waits for.
#[derive(Debug)]
pub(super) enum Event {
    Shutdown,
    MembershipEnded(Result<Result<(), MembershipError>, JoinError>),
    Session(SessionEvent),
    Synced,
    DrainChanged,
    HealthChanged,
    SlotsChanged,
    ZkStatusChanged,
    HealthExitOverdue,
    WatchdogTick,
    Sighup,
    ConfigFileChanged,
}

/// The channels the loop reads.
pub(super) struct Watches {
    pub session_events: mpsc::UnboundedReceiver<SessionEvent>,
    pub zk_status: watch::Receiver<ZkStatus>,
    /// Counts completed full syncs.
    pub synced: watch::Receiver<u64>,
    pub drained: watch::Receiver<bool>,
    pub health: watch::Receiver<HealthReport>,
    pub slots: watch::Receiver<Vec<SlotStatus>>,
}

/// What the start hands over to the main loop.
pub(super) struct Parts {
    /// The config in force (reloads applied).
    pub running: Config,
    pub lifecycle: Lifecycle,
    pub report: Arc<watch::Sender<NodeReport>>,
    pub membership: JoinHandle<Result<(), MembershipError>>,
    pub sync_queue: QueueHandle<SupervisorJob>,
    pub assignment_changes: AssignmentChanges,
    pub watches: Watches,
    pub reload: reload::Targets,
}

/// The main loop's state: the parts, and what only the loop keeps.
pub(super) struct Daemon {
    parts: Parts,
    config_file: reload::ConfigFileWatch,
    sighup: tokio::signal::unix::Signal,
    watchdog: Option<Interval>,
    /// With `on_failure = "exit"`: set once the checks fail; the agent exits 3 when the
    /// workers are gone, or at this instant if one will not die.
    exiting_for_health: Option<Instant>,
    /// The last `STATUS=` line sent, so systemd hears of changes only.
    last_status: String,
}

impl Daemon {
    pub(super) fn new(parts: Parts) -> Result<Daemon, RunError> {
        let watchdog = Systemd.watchdog_interval().map(tokio::time::interval);
        let sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| RunError::Internal(format!("cannot install the SIGHUP handler: {e}")))?;
        let config_file = reload::ConfigFileWatch::new(&parts.running.path);
        Ok(Daemon { parts, config_file, sighup, watchdog, exiting_for_health: None, last_status: String::new() })
    }

    pub(super) fn lifecycle(&self) -> Lifecycle {
        self.parts.lifecycle
    }

    pub(super) fn report(&self) -> &watch::Sender<NodeReport> {
        &self.parts.report
    }

    /// The membership task, for the stop (which waits for the session to close).
    pub(super) fn membership(&mut self) -> &mut JoinHandle<Result<(), MembershipError>> {
        &mut self.parts.membership
    }

    /// Runs until `shutdown` completes (`Ok`) or something ends the agent (`Err`).
    pub(super) async fn run_until(&mut self, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
        tokio::pin!(shutdown);
        loop {
            let event = self.next_event(shutdown.as_mut()).await;
            if let ControlFlow::Break(outcome) = self.handle(event).await {
                return outcome;
            }
        }
    }

    async fn next_event(&mut self, shutdown: std::pin::Pin<&mut impl Future<Output = ()>>) -> Event {
        let w = &mut self.parts.watches;
        tokio::select! {
            () = shutdown => Event::Shutdown,
            res = &mut self.parts.membership => Event::MembershipEnded(res),
            Some(event) = w.session_events.recv() => Event::Session(event),
            Ok(()) = w.synced.changed() => Event::Synced,
            Ok(()) = w.drained.changed() => Event::DrainChanged,
            Ok(()) = w.health.changed() => Event::HealthChanged,
            Ok(()) = w.slots.changed() => Event::SlotsChanged,
            Ok(()) = w.zk_status.changed() => Event::ZkStatusChanged,
            () = sleep_until(self.exiting_for_health) => Event::HealthExitOverdue,
            () = tick(self.watchdog.as_mut()) => Event::WatchdogTick,
            Some(()) = self.sighup.recv() => Event::Sighup,
            Some(()) = self.config_file.changes.recv() => Event::ConfigFileChanged,
        }
    }

    async fn handle(&mut self, event: Event) -> ControlFlow<Result<(), RunError>> {
        match event {
            Event::Shutdown => return ControlFlow::Break(Ok(())),
            Event::MembershipEnded(res) => return ControlFlow::Break(Err(membership_ended(res))),
            Event::Session(event) => self.on_session(event),
            Event::Synced => self.on_synced(),
            Event::DrainChanged => self.on_drain_changed(),
            Event::HealthChanged => self.on_health(),
            Event::SlotsChanged => return self.on_slots_changed(),
            Event::ZkStatusChanged => self.on_zk_status(),
            Event::HealthExitOverdue => {
                let bound = exit_bound(&self.parts.running).as_secs();
                warn!("workers still running {bound}s after the health failure; exiting anyway");
                return ControlFlow::Break(Err(RunError::HealthExit));
            }
            Event::WatchdogTick => self.on_watchdog_tick(),
            Event::Sighup => {
                info!(config = %self.parts.running.path.display(), "SIGHUP: reloading the config");
                self.on_reload();
            }
            Event::ConfigFileChanged => {
                // An editor's save is several events: let them settle, then read once.
                tokio::time::sleep(Duration::from_millis(200)).await;
                while self.config_file.changes.try_recv().is_ok() {}
                info!(config = %self.parts.running.path.display(), "the config file changed: reloading");
                self.on_reload();
            }
        }
        ControlFlow::Continue(())
    }

    /// A new session or a reconnect: watches may have missed events, so re-read all.
    fn on_session(&mut self, event: SessionEvent) {
        match event {
            SessionEvent::Registered { .. } | SessionEvent::Reconnected => {
                self.parts.assignment_changes.resync();
                self.parts.sync_queue.request(SupervisorJob::Sync);
            }
        }
    }

    /// `WATCHDOG=1`. Until `READY=1` (ZooKeeper unreachable, recovery), also asks systemd to
    /// extend the start timeout by a whole `WatchdogSec`: a start that waits for ZooKeeper is
    /// never killed while this loop runs, and times out one interval after it stops.
    fn on_watchdog_tick(&self) {
        Systemd.watchdog();
        if matches!(self.parts.lifecycle, Lifecycle::Starting | Lifecycle::Recovering) {
            if let Some(interval) = &self.watchdog {
                Systemd.extend_start(interval.period() * 2);
            }
        }
    }

    /// The first full sync after registering makes the agent `running` (or `draining`).
    fn on_synced(&mut self) {
        let starting = matches!(self.parts.lifecycle, Lifecycle::Starting | Lifecycle::Recovering);
        if !starting || !self.parts.watches.zk_status.borrow().registered {
            return;
        }
        let (to, why) = if *self.parts.watches.drained.borrow() {
            (Lifecycle::Draining, "registered and first sync done; drained (gale undrain to resume)")
        } else {
            (Lifecycle::Running, "registered and first sync done")
        };
        self.set_lifecycle(to, why);
        Systemd.ready(&self.status_line());
    }

    fn on_drain_changed(&mut self) {
        let drained = *self.parts.watches.drained.borrow_and_update();
        let to = match (self.parts.lifecycle, drained) {
            (Lifecycle::Running, true) => Some((Lifecycle::Draining, "gale drain: stopping workers")),
            (Lifecycle::Draining, false) => Some((Lifecycle::Running, "gale undrain")),
            _ => None,
        };
        if let Some((to, why)) = to {
            self.set_lifecycle(to, why);
        }
    }

    fn on_health(&mut self) {
        let report = self.parts.watches.health.borrow_and_update().clone();
        let m = crate::metrics::metrics();
        for script in &report.scripts {
            m.health_runs.get_or_create(&vec![("outcome", script.outcome.as_str().to_owned())]).inc();
        }
        let health = if report.healthy { Health::Healthy } else { Health::Unhealthy };
        self.parts.report.send_if_modified(|r| {
            let changed = r.health != health;
            r.health = health;
            changed
        });
        if !report.healthy
            && self.parts.running.health.on_failure == crate::config::OnHealthFailure::Exit
            && self.exiting_for_health.is_none()
        {
            error!("health checks failed with on_failure = \"exit\": stopping every worker, then exiting 3");
            self.exiting_for_health = Some(Instant::now() + exit_bound(&self.parts.running));
        }
    }

    /// `STATUS=` for systemd; with a health exit pending, the exit once no worker runs.
    fn on_slots_changed(&mut self) -> ControlFlow<Result<(), RunError>> {
        self.parts.watches.slots.borrow_and_update();
        self.send_status();
        if self.exiting_for_health.is_some() && self.parts.watches.slots.borrow().iter().all(|s| s.pid.is_none()) {
            return ControlFlow::Break(Err(RunError::HealthExit));
        }
        ControlFlow::Continue(())
    }

    fn on_zk_status(&mut self) {
        self.parts.watches.zk_status.borrow_and_update();
        self.send_status();
    }

    fn on_reload(&mut self) {
        Systemd.reloading();
        self.parts.running = apply_reload(&self.parts.running, &self.parts.reload);
        Systemd.ready(&self.status_line());
    }

    fn set_lifecycle(&mut self, to: Lifecycle, why: &str) {
        self.parts.lifecycle = transition(self.parts.lifecycle, to, why);
        let lifecycle = self.parts.lifecycle;
        self.parts.report.send_modify(|r| r.lifecycle = lifecycle);
    }

    /// Sends `STATUS=` when it changed.
    fn send_status(&mut self) {
        let line = self.status_line();
        if line != self.last_status {
            Systemd.status(&line);
            self.last_status = line;
        }
    }

    fn status_line(&self) -> String {
        let w = &self.parts.watches;
        status_line(
            self.parts.lifecycle,
            &w.slots.borrow(),
            &w.zk_status.borrow(),
            self.parts.running.supervisor.slots.len(),
        )
    }
}

/// Logs a lifecycle change and tells systemd.
pub(super) fn transition(from: Lifecycle, to: Lifecycle, why: &str) -> Lifecycle {
    info!(from = %from, state = %to, why, "lifecycle");
    Systemd.status(to.as_str());
    to
}

fn membership_ended(res: Result<Result<(), MembershipError>, JoinError>) -> RunError {
    match res {
        Ok(Ok(())) => RunError::Internal("the zookeeper membership task stopped unexpectedly".into()),
        Ok(Err(e)) => e.into(),
        Err(e) => RunError::Internal(format!("the zookeeper membership task failed: {e}")),
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn tick(interval: Option<&mut Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Applies a reload of `running.path` and returns the config now in force.
fn apply_reload(running: &Config, targets: &reload::Targets) -> Config {
    let m = crate::metrics::metrics();
    let count = |result: &str| m.config_reloads.get_or_create(&vec![("result", result.to_owned())]).inc();
    match reload::reload(&running.path, running, targets) {
        reload::Outcome::Rejected(e) => {
            error!(error = %e, "config reload rejected: the running config stays");
            count("rejected");
            running.clone()
        }
        reload::Outcome::Unchanged => {
            info!("config reload: nothing changed");
            count("unchanged");
            running.clone()
        }
        reload::Outcome::Applied { live, restart } => {
            for key in &live {
                info!(key = %key, "config reload: applied");
            }
            for key in &restart {
                warn!(key = %key, "config reload: this key needs a restart of the agent; the running value stays");
            }
            count("applied");
            targets.config.borrow().as_ref().clone()
        }
    }
}

/// How long an `on_failure = "exit"` waits for the workers to stop before exiting anyway.
fn exit_bound(config: &Config) -> Duration {
    config.worker.shutdown_grace * 3 + Duration::from_secs(10)
}

/// The `STATUS=` line systemd shows: `running: 3/4 slots used, zk connected`.
fn status_line(lifecycle: Lifecycle, slots: &[SlotStatus], zk: &ZkStatus, configured: usize) -> String {
    let used = slots.iter().filter(|s| s.pid.is_some()).count();
    let zk = if zk.usable() { "zk connected".to_owned() } else { format!("zk {}", zk.state) };
    format!("{}: {used}/{configured} slots used, {zk}", lifecycle.as_str())
}
