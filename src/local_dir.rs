//! The agent's local directory (SPEC §5): the `lock`, `tmp/`, `workers/`, `state/` and the
//! `clean-shutdown` marker.
//!
//! Design: [`LocalDir::open`] is the first thing the daemon does. It takes an exclusive,
//! non-blocking `flock` on `<local_dir>/lock` and keeps it for the life of the process (the
//! kernel drops it when the process dies, however it dies, so there is no stale lock to
//! clean). A second agent on the same directory gets [`LocalDirError::Locked`] and exits 4.
//!
//! Invariant: the `clean-shutdown` marker is removed (durably) at start, before anything else
//! can fail, and written only as the very last step of a clean stop. Its absence at start
//! therefore always means the previous agent did not finish a clean stop.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

#[derive(Debug, thiserror::Error)]
pub enum LocalDirError {
    #[error("local dir {dir} is locked by another gale agent{holder}: only one agent may use a local dir")]
    Locked { dir: PathBuf, holder: String },
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
}

/// How the previous agent on this directory ended, read from the `clean-shutdown` marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreviousStop {
    /// The marker was there: the last agent stopped cleanly (or this is the first start).
    Clean,
    /// No marker, but there was earlier state: the last agent crashed or was killed.
    Unclean,
    /// Nothing here yet.
    FirstStart,
}

/// An opened, locked local directory. Dropping it releases the lock.
#[derive(Debug)]
pub struct LocalDir {
    root: PathBuf,
    lock: Flock<File>,
}

impl LocalDir {
    /// Locks `root`, creates its layout, empties `tmp/`, and consumes the clean-shutdown marker.
    pub fn open(root: &Path) -> Result<(LocalDir, PreviousStop), LocalDirError> {
        let io = |what, path: &Path| {
            let path = path.to_owned();
            move |source| LocalDirError::Io { what, path, source }
        };
        fs::DirBuilder::new().recursive(true).mode(0o755).create(root).map_err(io("cannot create local dir", root))?;
        let lock_path = root.join("lock");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io("cannot open lock file", &lock_path))?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                let holder = if pid.is_empty() { String::new() } else { format!(" (pid {pid})") };
                return Err(LocalDirError::Locked { dir: root.to_owned(), holder });
            }
            Err((_, errno)) => return Err(io("cannot lock", &lock_path)(errno.into())),
        };
        // The pid is only for the message a second agent prints; the flock is the truth.
        lock.set_len(0).map_err(io("cannot write lock file", &lock_path))?;
        write!(&mut *lock, "{}", std::process::id()).map_err(io("cannot write lock file", &lock_path))?;

        let dir = LocalDir { root: root.to_owned(), lock };
        // `state/` is the agent's alone. `workers/` may be traversed but not listed by others:
        // a worker run as another user (run_as_user) reaches its own dir, and nothing else.
        for (sub, mode) in [("state", 0o700), ("workers", 0o711)] {
            let path = root.join(sub);
            fs::DirBuilder::new().recursive(true).mode(mode).create(&path).map_err(io("cannot create", &path))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(io("cannot chmod", &path))?;
        }
        dir.reset_tmp()?;

        let marker = dir.clean_shutdown_marker();
        let previous = if marker.exists() {
            fs::remove_file(&marker).map_err(io("cannot remove", &marker))?;
            sync_dir(root).map_err(io("cannot sync", root))?;
            PreviousStop::Clean
        } else if dir.has_state()? {
            PreviousStop::Unclean
        } else {
            PreviousStop::FirstStart
        };
        Ok((dir, previous))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn lock_path(&self) -> PathBuf {
        self.root.join("lock")
    }

    /// Inode of the lock file we hold, to notice the directory being replaced under us.
    pub fn lock_inode(&self) -> std::io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        Ok(self.lock.metadata()?.ino())
    }

    pub fn state_dir(&self) -> PathBuf {
        self.root.join("state")
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub fn workers_dir(&self) -> PathBuf {
        self.root.join("workers")
    }

    pub fn clean_shutdown_marker(&self) -> PathBuf {
        self.root.join("clean-shutdown")
    }

    /// The last step of a clean stop: durably writes the marker.
    pub fn mark_clean_shutdown(&self) -> Result<(), LocalDirError> {
        let marker = self.clean_shutdown_marker();
        let io = |source| LocalDirError::Io { what: "cannot write", path: marker.clone(), source };
        let mut file = File::create(&marker).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        file.sync_all().map_err(io)?;
        sync_dir(&self.root).map_err(|source| LocalDirError::Io {
            what: "cannot sync",
            path: self.root.clone(),
            source,
        })
    }

    fn has_state(&self) -> Result<bool, LocalDirError> {
        let state = self.state_dir();
        let mut entries =
            fs::read_dir(&state).map_err(|source| LocalDirError::Io { what: "cannot read", path: state, source })?;
        Ok(entries.next().is_some())
    }

    /// `tmp/` holds only what a running agent is writing; whatever is there at start is a
    /// leftover of a dead agent.
    fn reset_tmp(&self) -> Result<(), LocalDirError> {
        let tmp = self.tmp_dir();
        let io = |what, path: &Path| {
            let path = path.to_owned();
            move |source| LocalDirError::Io { what, path, source }
        };
        match fs::remove_dir_all(&tmp) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(io("cannot empty", &tmp)(err)),
        }
        fs::DirBuilder::new().mode(0o700).create(&tmp).map_err(io("cannot create", &tmp))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o700)).map_err(io("cannot chmod", &tmp))
    }
}

/// fsync of a directory, so that a rename or unlink in it survives power loss.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_start_then_unclean_then_clean() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("gale");
        let (dir, prev) = LocalDir::open(&root).unwrap();
        assert_eq!(prev, PreviousStop::FirstStart);
        fs::write(dir.state_dir().join("1"), b"x").unwrap();
        drop(dir);

        // No marker written: the agent "crashed".
        let (dir, prev) = LocalDir::open(&root).unwrap();
        assert_eq!(prev, PreviousStop::Unclean);
        dir.mark_clean_shutdown().unwrap();
        drop(dir);

        let (dir, prev) = LocalDir::open(&root).unwrap();
        assert_eq!(prev, PreviousStop::Clean);
        assert!(!dir.clean_shutdown_marker().exists(), "marker is consumed at start");
    }

    #[test]
    fn second_open_is_refused_while_the_first_holds_the_lock() {
        let tmp = tempfile::tempdir().unwrap();
        let (first, _) = LocalDir::open(tmp.path()).unwrap();
        let err = LocalDir::open(tmp.path()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, LocalDirError::Locked { .. }), "{msg}");
        assert!(msg.contains(&format!("pid {}", std::process::id())), "{msg}");
        drop(first);
        LocalDir::open(tmp.path()).unwrap();
    }

    #[test]
    fn tmp_is_emptied_at_start() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, _) = LocalDir::open(tmp.path()).unwrap();
        fs::write(dir.tmp_dir().join("half-download"), b"x").unwrap();
        drop(dir);
        let (dir, _) = LocalDir::open(tmp.path()).unwrap();
        assert_eq!(fs::read_dir(dir.tmp_dir()).unwrap().count(), 0);
    }
}
