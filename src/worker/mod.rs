//! Everything that touches worker processes: the I/O edge of slot supervision.
//!
//! The decisions (when to launch, when a worker is hung, when to escalate SIGTERM to SIGKILL)
//! live in the pure slot state machine; this module only carries them out and reports back.
//!
//! - [`launch`]: expand the assignment's argv and start a worker per SPEC §4; `born`: the
//!   route by which it is born in its cgroup (clone3, cgroup v2);
//! - [`exit`]: learn of an exit at once, for our children (`wait`) and adopted workers (pidfd);
//! - [`signal`]: signal a worker's process group, only after proving it is ours;
//! - [`heartbeat`]: a worker's heartbeat file, its mtime and an inotify hint;
//! - [`logfile`]: where a worker's output goes;
//! - [`logrotate`]: rotation of those logs (copy, then truncate) and the node quota on them;
//! - [`users`]: which user a worker runs as (`run_as_user`), and the refusals;
//! - [`control`]: the narrow [`ProcessControl`] trait the executor uses, and the real
//!   implementation; `fake` (tests only) records calls and injects failures.
//!
//! Architecture invariant: no process is signalled on the strength of a pid alone; every
//! signal and every adoption goes through pid + start time + boot id
//! ([`crate::proc_identity::ProcessIdentity`]).

mod born;
pub(crate) mod control;
pub(crate) mod exit;
#[cfg(test)]
pub(crate) mod fake;
pub(crate) mod heartbeat;
pub(crate) mod launch;
pub(crate) mod logfile;
pub(crate) mod logrotate;
pub(crate) mod signal;
pub(crate) mod users;

#[cfg(test)]
mod tests;

pub(crate) use control::{LaunchedWorker, ProcessControl, RealProcessControl};
pub(crate) use exit::{describe, signal_name};
pub(crate) use heartbeat::{HeartbeatWatcher, heartbeat_file, last_heartbeat};
pub(crate) use launch::{LaunchSpec, worker_dir, workers_dir};
pub(crate) use logfile::worker_log_path;
pub(crate) use logrotate::LogPolicy;
pub use signal::{SignalOutcome, signal_group};
