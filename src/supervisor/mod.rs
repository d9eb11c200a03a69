//! The daemon from start to clean stop: [`run`] is three calls.
//!
//! 1. [`start::start`] builds the agent in order, and is the part worth reading slowly: lock
//!    the local dir (a second agent exits 4), refuse a configured id other than the stored
//!    one (exit 4, before anything in the dir changes), consume the clean-shutdown marker,
//!    open LocalState (refuse to start if it exists but no version checks out), resolve the
//!    supervisor id, go `recovering` if the marker was missing, start the membership task
//!    (ZooKeeper session, registration, heartbeat), adopt the recorded workers, then start
//!    the two event queues, the tasks that feed them and the admin endpoints.
//! 2. [`main_loop::Daemon::run_until`] waits for one [`main_loop::Event`] at a time and
//!    hands it to its handler: the first sync (`running`, `READY=1`), drain and health
//!    changes, SIGHUP and config file changes (reload), the watchdog, shutdown.
//! 3. [`stop::stop`] is the ordered stop: `stopping`, stop the tasks, close the queues
//!    (running jobs finish), close the ZooKeeper session (the ephemeral node goes at once),
//!    write `clean-shutdown`.
//!
//! Workers are never touched by any of this: they outlive the agent (SPEC §4). The work
//! itself happens on the queues: `jobs.rs` (sync-supervisor: assignments, blobs, actions) and
//! `processes.rs` (sync-processes: the executor of the slots).

mod actions;
pub(crate) mod assignments;
pub(crate) mod bad_payloads;
pub(crate) mod blobs;
mod jobs;
mod links;
mod main_loop;
pub(crate) mod processes;
pub mod records;
mod reload;
mod session_log;
mod start;
mod stop;
mod tasks;
mod usage;

use std::future::Future;

pub(crate) use jobs::SupervisorJob;
pub(crate) use processes::ProcessJob;

use crate::cluster::membership::MembershipError;
use crate::config::Config;
use crate::local_dir::LocalDirError;
use crate::local_state::StateError;

/// Why the daemon stopped other than cleanly. `main` maps each to an exit code.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RunError {
    #[error(transparent)]
    LocalDir(#[from] LocalDirError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Membership(#[from] MembershipError),
    #[error(transparent)]
    Credentials(#[from] crate::cluster::zk::CredentialsError),
    /// The config names another supervisor id than the local dir holds (identity is pinned).
    #[error(
        "supervisor.id = \"{configured}\" in the config, but local dir {} belongs to supervisor id \"{stored}\": \
         refusing to start under another id (its workers and their cgroups belong to \"{stored}\"); \
         to rename this agent, stop it and run `gale state reset-id` (docs/operations.md, \"Renaming an agent\"), \
         or set supervisor.id = \"{stored}\"",
        .local_dir.display()
    )]
    IdentityChanged { configured: String, stored: String, local_dir: std::path::PathBuf },
    #[error("{0}")]
    Internal(String),
    #[error("health checks failed with health.on_failure = \"exit\": workers stopped")]
    HealthExit,
}

impl RunError {
    /// Exit code per SPEC §6.
    pub(crate) fn exit_code(&self) -> crate::lifecycle::ExitCode {
        use crate::lifecycle::ExitCode;
        match self {
            RunError::LocalDir(LocalDirError::Locked { .. }) => ExitCode::IdentityConflict,
            RunError::Membership(MembershipError::IdentityConflict { .. }) => ExitCode::IdentityConflict,
            RunError::IdentityChanged { .. } => ExitCode::IdentityConflict,
            RunError::Credentials(_) => ExitCode::Config,
            // A downgrade: like a config this build cannot use, restarting will not help.
            RunError::State(StateError::NewerFormat { .. }) => ExitCode::Config,
            RunError::HealthExit => ExitCode::HealthCheck,
            _ => ExitCode::Failure,
        }
    }
}

/// Runs the agent until `shutdown` completes (then stops cleanly) or a fatal error.
pub(crate) async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    let (mut daemon, teardown) = start::start(config).await?;
    let outcome = daemon.run_until(shutdown).await;
    stop::stop(daemon, teardown, outcome).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::ExitCode;

    #[test]
    fn a_state_of_a_newer_format_exits_78_like_an_unusable_config() {
        let err = RunError::State(StateError::NewerFormat { dir: "/var/lib/gale/state".into(), found: 3 });
        assert_eq!(err.exit_code() as i32, ExitCode::Config as i32);
        assert_eq!(
            err.to_string(),
            "local state /var/lib/gale/state was written by a newer gale (format 3; this gale reads formats 1-2): \
             refusing to start; upgrade gale or restore a backup"
        );
    }
}
