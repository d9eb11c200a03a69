//! The executor's node-wide policies: its settings (built from the config in one place, at start
//! and on every reload), the node restart budget, and what the slots are told to run now (the
//! session-loss policy and the drain/health holds).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::Processes;
use crate::config::{Config, OnSessionLoss};
use crate::slot::{JobTimeouts, Policy};
use crate::supervisor::assignments::AssignmentView;
use crate::worker;

/// Settings of the process side, from the config ([`ProcessConfig::from_config`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ProcessConfig {
    pub supervisor_id: String,
    pub local_dir: PathBuf,
    pub log_dir: PathBuf,
    pub slots: Vec<u16>,
    pub policy: Policy,
    /// `[worker]` start and heartbeat timeouts and their cap.
    pub timeouts: JobTimeouts,
    pub node_budget_per_min: u32,
    /// `zookeeper.on_session_loss = "stop_workers"`: stop every worker after this long without
    /// a ZooKeeper session; `None` keeps them (`keep_workers`).
    pub stop_workers_after: Option<Duration>,
    /// `worker.run_as_user`, `allowed_users`, `min_uid`.
    pub users: worker::users::UserPolicy,
    /// How worker limits are enforced here (detected once at start).
    pub isolation: crate::isolation::Mechanism,
    /// `[diagnostics]`: the commands `gale worker diag` and the `diag` action run.
    pub diagnostics: crate::config::DiagnosticsConfig,
}

impl ProcessConfig {
    /// The settings `config` gives, for the agent `supervisor_id` with limits enforced by
    /// `isolation` (both fixed for the agent's life). The start and every reload use this.
    pub(crate) fn from_config(
        config: &Config,
        supervisor_id: &str,
        isolation: crate::isolation::Mechanism,
    ) -> ProcessConfig {
        ProcessConfig {
            supervisor_id: supervisor_id.to_owned(),
            local_dir: config.supervisor.local_dir.clone(),
            log_dir: config.supervisor.log_dir.clone(),
            slots: config.supervisor.slots.clone(),
            policy: Policy::from_config(&config.worker, &config.restart),
            timeouts: JobTimeouts::from_config(&config.worker),
            node_budget_per_min: config.restart.node_budget_per_min,
            stop_workers_after: (config.zookeeper.on_session_loss == OnSessionLoss::StopWorkers)
                .then_some(config.zookeeper.stop_workers_after),
            users: worker::users::UserPolicy::from_config(&config.worker),
            isolation,
            diagnostics: config.diagnostics.clone(),
        }
    }
}

/// Node-wide restart budget: at most `per_min` relaunches in any 60 s window.
#[derive(Debug)]
pub(super) struct RestartBudget {
    pub(super) per_min: u32,
    recent: VecDeque<Instant>,
}

impl RestartBudget {
    pub(super) fn new(per_min: u32) -> RestartBudget {
        RestartBudget { per_min, recent: VecDeque::new() }
    }

    /// `Ok` and counted, or the time the next restart is allowed.
    pub(super) fn take(&mut self, now: Instant) -> Result<(), Instant> {
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

impl Processes {
    /// A config reload: new timeouts, restart policy, users, session-loss policy and
    /// diagnostics commands, for every step from now on (a running backoff or grace period
    /// keeps the deadline it was given; a running diagnostics run, its settings).
    /// The keys that need a restart (`local_dir`, `log_dir`, `slots`) come out unchanged:
    /// `reload::merge` keeps the running values of those.
    pub(super) fn reconfigure(&mut self, config: &Config) {
        self.config = ProcessConfig::from_config(config, &self.config.supervisor_id, self.config.isolation.clone());
        self.budget.per_min = self.config.node_budget_per_min;
        info!("worker and restart settings reloaded");
    }

    /// The assignment to apply now: the latest synced view, or nothing at all once the
    /// session has been gone longer than `stop_workers_after` (`on_session_loss =
    /// "stop_workers"`). `None` before the first sync: apply nothing, change nothing.
    pub(super) fn desired_now(&mut self, now: Instant) -> Option<Arc<AssignmentView>> {
        let view = self.session_policy(now);
        // Drained by the operator, or failing health checks (`on_failure`): nothing runs, the
        // assignments are kept and apply again once the hold ends.
        if self.hold() { Some(Arc::new(AssignmentView::default())) } else { view }
    }

    fn session_policy(&mut self, now: Instant) -> Option<Arc<AssignmentView>> {
        let connected = self.inputs.zk_status.borrow().usable();
        let view = self.inputs.desired.borrow().clone();
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
