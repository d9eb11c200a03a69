//! Watching a worker's heartbeat file, `$GALE_HEARTBEAT_FILE` = `<worker_dir>/heartbeat`.
//!
//! A worker with `liveness = "heartbeat"` proves it is not hung by touching that file, or by
//! writing the unix time into it (SPEC §4). Both change the file's mtime, so the mtime is the
//! single source of truth ([`last_heartbeat`]); the content is never parsed, so a worker with
//! a wrong clock, or one that writes a time far in the future, cannot vouch for itself.
//!
//! Design: the event is a hint, the mtime is the answer. [`HeartbeatWatcher`] uses inotify (via
//! `notify`) on the worker's directory and sends the worker id on a tokio channel whenever the
//! file is created, written, touched or renamed into place, so a first heartbeat is seen at
//! once instead of a poll period later. The receiver then reads [`last_heartbeat`]. It must
//! also poll the mtime on a timer, because events can be lost:
//! - the kernel's inotify queue can overflow (`IN_Q_OVERFLOW`); `notify` then reports a rescan,
//!   which is forwarded as a hint too, but events before it are gone;
//! - the channel is bounded and a hint is dropped when it is full (the receiver is behind and
//!   will read the mtime anyway; a hint carries nothing else);
//! - a heartbeat written between the worker's start and the watch being set up has no event.
//!
//! The directory is watched, not the file, because the file does not exist until the first
//! heartbeat and may be replaced by a rename.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Name of the heartbeat file inside a worker's directory.
pub(crate) const HEARTBEAT_FILE: &str = "heartbeat";

/// `<worker_dir>/heartbeat`: the value of `$GALE_HEARTBEAT_FILE`.
pub(crate) fn heartbeat_file(worker_dir: &Path) -> PathBuf {
    worker_dir.join(HEARTBEAT_FILE)
}

/// When the worker last touched or wrote its heartbeat file; `None` if it never did (or the
/// file cannot be read, which for the caller means the same: no proof of life).
pub(crate) fn last_heartbeat(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Why a heartbeat watch could not be set up. The caller can still rely on polling the mtime.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HeartbeatError {
    #[error("worker {worker_id}: cannot watch {} for heartbeats (polling the file instead)", .dir.display())]
    Watch { worker_id: String, dir: PathBuf, source: notify::Error },
}

/// Sends `worker_id` on a channel when the worker's heartbeat file changes. Watching stops
/// when this is dropped.
#[derive(Debug)]
pub(crate) struct HeartbeatWatcher {
    // Held only to keep the inotify watch (and notify's thread) alive.
    _watcher: RecommendedWatcher,
}

impl HeartbeatWatcher {
    /// Watches `worker_dir` (which must exist: [`super::launch::spawn_in`] creates it).
    pub(crate) fn start(
        worker_id: &str,
        worker_dir: &Path,
        hints: mpsc::Sender<String>,
    ) -> Result<HeartbeatWatcher, HeartbeatError> {
        let id = worker_id.to_owned();
        // Runs on notify's own thread, so it must not block: `try_send` and move on.
        let handler = move |event: notify::Result<notify::Event>| {
            let relevant = match event {
                Ok(event) => event.need_rescan() || (is_write(&event.kind) && names_heartbeat(&event.paths)),
                // An error from the watcher may hide an event: let the receiver look.
                Err(_) => true,
            };
            if relevant {
                let _ = hints.try_send(id.clone());
            }
        };
        let watch_error =
            |source| HeartbeatError::Watch { worker_id: worker_id.to_owned(), dir: worker_dir.to_owned(), source };
        let mut watcher = notify::recommended_watcher(handler).map_err(watch_error)?;
        watcher.watch(worker_dir, RecursiveMode::NonRecursive).map_err(watch_error)?;
        Ok(HeartbeatWatcher { _watcher: watcher })
    }
}

/// Create, any modification (data, `touch`'s attribute change, rename into place), or the close
/// of a file opened for writing.
fn is_write(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Access(AccessKind::Close(AccessMode::Write))
    )
}

fn names_heartbeat(paths: &[PathBuf]) -> bool {
    paths.iter().any(|p| p.file_name().is_some_and(|name| name == HEARTBEAT_FILE))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Waits up to `limit` for a hint; `None` if none came.
    async fn hint(rx: &mut mpsc::Receiver<String>, limit: Duration) -> Option<String> {
        tokio::time::timeout(limit, rx.recv()).await.ok().flatten()
    }

    #[tokio::test]
    async fn a_created_and_then_touched_heartbeat_is_seen_within_a_second() {
        let dir = tempfile::tempdir().unwrap();
        let file = heartbeat_file(dir.path());
        let (tx, mut rx) = mpsc::channel(16);
        let _watcher = HeartbeatWatcher::start("w-1", dir.path(), tx).unwrap();
        assert_eq!(last_heartbeat(&file), None, "no heartbeat before the first touch");

        std::fs::write(&file, b"").unwrap();
        assert_eq!(hint(&mut rx, Duration::from_secs(1)).await.as_deref(), Some("w-1"));
        let first = last_heartbeat(&file).expect("the file exists now");
        while rx.try_recv().is_ok() {} // the create's companion events

        // A touch of an existing file: only its times change.
        let later = first + Duration::from_secs(5);
        std::fs::File::options().write(true).open(&file).unwrap().set_modified(later).unwrap();
        assert_eq!(hint(&mut rx, Duration::from_secs(1)).await.as_deref(), Some("w-1"));
        assert_eq!(last_heartbeat(&file), Some(later));
    }

    #[test]
    fn only_writes_to_the_heartbeat_file_are_hints() {
        use notify::event::{CreateKind, MetadataKind, ModifyKind, RenameMode};
        let hb = vec![PathBuf::from("/w/heartbeat")];
        assert!(names_heartbeat(&hb));
        assert!(!names_heartbeat(&[PathBuf::from("/w/heartbeat.tmp"), PathBuf::from("/heartbeat/x")]));
        for kind in [
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
        ] {
            assert!(is_write(&kind), "{kind:?}");
        }
        for kind in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Remove(notify::event::RemoveKind::File),
        ] {
            assert!(!is_write(&kind), "{kind:?}");
        }
    }

    #[test]
    fn a_missing_worker_dir_is_an_error_naming_it() {
        let (tx, _rx) = mpsc::channel(1);
        let err = HeartbeatWatcher::start("w-9", Path::new("/nonexistent/gale/w-9"), tx).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/gale/w-9"), "{err}");
    }
}
