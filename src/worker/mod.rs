//! Everything that touches worker processes: the I/O edge of slot supervision.
//!
//! The decisions (when to launch, when a worker is hung, when to escalate SIGTERM to SIGKILL)
//! live in the pure slot state machine; this module only carries them out and reports back.
//!
//! - [`launch`]: expand the assignment's argv and start a worker per SPEC §4;
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

pub mod control;
pub mod exit;
#[cfg(test)]
pub mod fake;
pub mod heartbeat;
pub mod launch;
pub mod logfile;
pub mod logrotate;
pub mod signal;
pub mod users;

#[cfg(test)]
mod tests;

pub use control::{LaunchedWorker, ProcessControl, RealProcessControl};
pub use exit::{ExitReport, ExitWatch, describe, signal_name, wait_adopted};
pub use heartbeat::{HeartbeatError, HeartbeatWatcher, heartbeat_file, last_heartbeat};
pub use launch::{LaunchError, LaunchSpec, LaunchStep, Spawned, spawn_in, worker_dir, workers_dir};
pub use logfile::worker_log_path;
pub use logrotate::{LogPolicy, SweepReport};
pub use signal::{SignalOutcome, signal_group};
