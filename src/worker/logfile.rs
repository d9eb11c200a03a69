//! Where a worker's output goes: `<log_dir>/workers/<topology-id>/<port>/worker.log` (SPEC §4).
//!
//! Keyed by topology and port, not by worker id, so that the log of a slot survives the worker's
//! relaunches under new ids and `gale logs <topology>|<port>` finds it without asking anyone.
//! The path is only built here; [`super::launch::spawn_in`] creates the directory and opens the
//! file in append mode (several generations of the worker write one after the other, and a
//! worker keeps writing to it while the agent restarts). That is also why
//! [`super::logrotate`] rotates it by copy-then-truncate rather than by rename.
//!
//! Invariant: `topology` has passed [`crate::ident::validate`] before it gets here (assignment
//! validation does it), so it cannot contain `/` or `..`.

use std::path::{Path, PathBuf};

/// The file name of a worker's log inside its slot directory.
pub(crate) const WORKER_LOG_FILE: &str = "worker.log";

/// `<log_dir>/workers/<topology>/<port>`: the directory of one slot's logs.
pub(crate) fn worker_log_dir(log_dir: &Path, topology: &str, port: u16) -> PathBuf {
    log_dir.join("workers").join(topology).join(port.to_string())
}

/// The directory, inside a slot's log directory, of its diagnostics runs' files.
pub(crate) const DIAG_DIR: &str = "diag";

/// `<log_dir>/workers/<topology>/<port>/diag`: where diagnostics runs on that slot's workers
/// keep their output (see [`crate::diagnostics`]).
pub(crate) fn diag_dir(log_dir: &Path, topology: &str, port: u16) -> PathBuf {
    worker_log_dir(log_dir, topology, port).join(DIAG_DIR)
}

/// `<log_dir>/workers/<topology>/<port>/worker.log`.
pub(crate) fn worker_log_path(log_dir: &Path, topology: &str, port: u16) -> PathBuf {
    worker_log_dir(log_dir, topology, port).join(WORKER_LOG_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_path_follows_the_spec_layout() {
        assert_eq!(
            worker_log_path(Path::new("/var/log/gale"), "wordcount", 6700),
            PathBuf::from("/var/log/gale/workers/wordcount/6700/worker.log")
        );
        assert_eq!(worker_log_dir(Path::new("/l"), "t", 1), PathBuf::from("/l/workers/t/1"));
        assert_eq!(diag_dir(Path::new("/l"), "t", 1), PathBuf::from("/l/workers/t/1/diag"));
    }
}
