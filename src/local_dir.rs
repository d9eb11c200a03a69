//! The agent's local directory (SPEC §5): the `lock`, `tmp/`, `workers/`, `state/` and the
//! `clean-shutdown` marker.
//!
//! Design: [`LocalDir::lock`] is the first thing the daemon does. It takes an exclusive,
//! non-blocking POSIX record lock (`fcntl(F_SETLK)`) on `<local_dir>/lock` and keeps it for the
//! life of the process (the kernel drops it when the process dies, however it dies, so there
//! is no stale lock to clean). A second agent on the same directory gets
//! [`LocalDirError::Locked`] and exits 4. Only then, and only once the agent has checked that
//! the directory is its own (the stored supervisor id), does [`LocalDir::prepare`] change
//! anything in it: an agent refused for its identity leaves the directory exactly as it was.
//! `gale state reset-id` takes the same lock, so it never runs beside an agent.
//!
//! An operator's script probes the lock with `fcntl(F_GETLK)` (it reports the holder's pid
//! without taking the lock; docs/operations.md has a `python3` one-liner), `lslocks`, or
//! `gale status`. A `flock(1)` probe says nothing: the two kinds of lock do not see each other.
//!
//! Why a record lock and not `flock`: a `flock` belongs to the open file description, which
//! every forked child shares until its `exec` closes it. An agent SIGKILLed while a worker was
//! between `fork` and `exec` left that child holding the lock for a moment, and the agent
//! restarted by systemd in that moment exited 4, which the unit does not restart (found by
//! `tests/faults.rs`). A record lock belongs to the process: a child never inherits it, and
//! it goes the instant the agent dies. Its catch is that closing ANY descriptor of the file in
//! the holding process drops it, so the file is opened only here, at most once per process
//! (an in-process registry refuses a second [`LocalDir::lock`] of the same directory before
//! it opens anything).
//!
//! Invariant: the `clean-shutdown` marker is removed (durably) at start, before anything else
//! can fail, and written only as the very last step of a clean stop. Its absence at start
//! therefore always means the previous agent did not finish a clean stop.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use std::collections::BTreeSet;
use std::sync::Mutex;

use nix::fcntl::{FcntlArg, fcntl};

#[derive(Debug, thiserror::Error)]
pub(crate) enum LocalDirError {
    #[error("local dir {dir} is locked by another gale agent{holder}: only one agent may use a local dir")]
    Locked { dir: PathBuf, holder: String },
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
}

/// How the previous agent on this directory ended, read from the `clean-shutdown` marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PreviousStop {
    /// The marker was there: the last agent stopped cleanly (or this is the first start).
    Clean,
    /// No marker, but there was earlier state: the last agent crashed or was killed.
    Unclean,
    /// Nothing here yet.
    FirstStart,
}

/// An opened, locked local directory. Dropping it releases the lock.
#[derive(Debug)]
pub(crate) struct LocalDir {
    root: PathBuf,
    /// The lock file, open for the life of this value: closing it drops the record lock.
    lock: File,
    /// This directory's entry in [`HELD`]; declared after `lock`, so the file is closed
    /// before the entry goes.
    _held: Held,
}

/// Local dirs this process holds, by canonical path (record locks do not conflict within
/// one process, and a second descriptor's close would drop the first one's lock).
static HELD: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

/// A whole-file record lock request of `kind` (`F_WRLCK`, `F_UNLCK`).
fn whole_file(kind: nix::libc::c_int) -> nix::libc::flock {
    nix::libc::flock {
        l_type: kind as nix::libc::c_short,
        l_whence: nix::libc::SEEK_SET as nix::libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    }
}

/// The pid of the process holding a record lock on `file` that would block a write lock, if
/// any (`F_GETLK`; the file may be open read-only). Used by `gale status` to tell "down" from
/// "running without a readable endpoint".
pub(crate) fn lock_holder(file: &File) -> std::io::Result<Option<u32>> {
    let mut probe = whole_file(nix::libc::F_WRLCK);
    fcntl(file, FcntlArg::F_GETLK(&mut probe)).map_err(std::io::Error::from)?;
    Ok((probe.l_type != nix::libc::F_UNLCK as nix::libc::c_short).then_some(probe.l_pid as u32))
}

impl LocalDir {
    /// Locks `root`, creates its layout, empties `tmp/`, and consumes the clean-shutdown marker:
    /// [`LocalDir::lock`] then [`LocalDir::prepare`]. Tests only: the agent checks its
    /// identity between the two.
    #[cfg(test)]
    pub(crate) fn open(root: &Path) -> Result<(LocalDir, PreviousStop), LocalDirError> {
        let dir = LocalDir::lock(root)?;
        let previous = dir.prepare()?;
        Ok((dir, previous))
    }

    /// Takes the lock on `root` (creating `root` and `lock` if missing) and changes nothing
    /// else: what must be checked before the directory is touched (the agent's identity) and
    /// what an offline command does (`gale state reset-id`) happens between this and
    /// [`LocalDir::prepare`].
    pub(crate) fn lock(root: &Path) -> Result<LocalDir, LocalDirError> {
        let io = |what, path: &Path| {
            let path = path.to_owned();
            move |source| LocalDirError::Io { what, path, source }
        };
        fs::DirBuilder::new().recursive(true).mode(0o755).create(root).map_err(io("cannot create local dir", root))?;
        let held_as = fs::canonicalize(root).map_err(io("cannot resolve local dir", root))?;
        if !HELD.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(held_as.clone()) {
            let holder = format!(" (pid {}, this process)", std::process::id());
            return Err(LocalDirError::Locked { dir: root.to_owned(), holder });
        }
        // From here on an error drops `held`, which gives the registry entry back.
        let held = Held(held_as);
        let lock_path = root.join("lock");
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io("cannot open lock file", &lock_path))?;
        match fcntl(&lock, FcntlArg::F_SETLK(&whole_file(nix::libc::F_WRLCK))) {
            Ok(_) => {}
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES) => {
                let holder = match lock_holder(&lock) {
                    Ok(Some(pid)) => format!(" (pid {pid})"),
                    _ => {
                        let mut pid = String::new();
                        let _ = lock.read_to_string(&mut pid);
                        let pid = pid.trim().to_owned();
                        if pid.is_empty() { String::new() } else { format!(" (pid {pid})") }
                    }
                };
                return Err(LocalDirError::Locked { dir: root.to_owned(), holder });
            }
            Err(errno) => return Err(io("cannot lock", &lock_path)(errno.into())),
        }
        Ok(LocalDir { root: root.to_owned(), lock, _held: held })
    }

    /// The agent's start on a locked directory: writes its pid into `lock`, creates the
    /// layout, empties `tmp/` and consumes the clean-shutdown marker.
    pub(crate) fn prepare(&self) -> Result<PreviousStop, LocalDirError> {
        let root = &self.root;
        let io = |what, path: &Path| {
            let path = path.to_owned();
            move |source| LocalDirError::Io { what, path, source }
        };
        // The pid is only for people reading the file; the record lock is the truth.
        let lock_path = self.lock_path();
        self.lock.set_len(0).map_err(io("cannot write lock file", &lock_path))?;
        write!(&self.lock, "{}", std::process::id()).map_err(io("cannot write lock file", &lock_path))?;

        // `state/` is the agent's alone. `workers/` may be traversed but not listed by others:
        // a worker run as another user (run_as_user) reaches its own dir, and nothing else.
        for (sub, mode) in [("state", 0o700), ("workers", 0o711)] {
            let path = root.join(sub);
            fs::DirBuilder::new().recursive(true).mode(mode).create(&path).map_err(io("cannot create", &path))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(io("cannot chmod", &path))?;
        }
        self.reset_tmp()?;

        let marker = self.clean_shutdown_marker();
        let previous = if marker.exists() {
            fs::remove_file(&marker).map_err(io("cannot remove", &marker))?;
            sync_dir(root).map_err(io("cannot sync", root))?;
            PreviousStop::Clean
        } else if self.has_state()? {
            PreviousStop::Unclean
        } else {
            PreviousStop::FirstStart
        };
        Ok(previous)
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn lock_path(&self) -> PathBuf {
        self.root.join("lock")
    }

    /// Inode of the lock file we hold, to notice the directory being replaced under us.
    pub(crate) fn lock_inode(&self) -> std::io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        Ok(self.lock.metadata()?.ino())
    }

    pub(crate) fn state_dir(&self) -> PathBuf {
        self.root.join("state")
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub(crate) fn clean_shutdown_marker(&self) -> PathBuf {
        self.root.join("clean-shutdown")
    }

    /// The last step of a clean stop: durably writes the marker.
    pub(crate) fn mark_clean_shutdown(&self) -> Result<(), LocalDirError> {
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

/// A [`HELD`] entry, given back when dropped.
#[derive(Debug)]
struct Held(PathBuf);

impl Drop for Held {
    fn drop(&mut self) {
        HELD.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&self.0);
    }
}

/// fsync of a directory, so that a rename or unlink in it survives power loss.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
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

    /// The fault the record lock fixes: an agent SIGKILLed while a child still holds a copy
    /// of the lock file's descriptor (a worker between `fork` and `exec`) must not keep the
    /// next agent out. The "agent" is this test binary run again as a child process: it opens
    /// the dir, hands a descriptor copy to a `sleep`, and is SIGKILLed. With `flock` the
    /// reopen failed with `Locked` for as long as `sleep` ran.
    #[test]
    fn a_killed_holders_child_with_a_copy_of_the_descriptor_does_not_hold_the_lock() {
        use std::io::BufRead;
        use std::os::fd::AsFd;
        const ROLE: &str = "GALE_TEST_LOCK_HOLDER_DIR";
        if let Ok(root) = std::env::var(ROLE) {
            let (dir, _) = LocalDir::open(Path::new(&root)).unwrap();
            // dup() clears close-on-exec: `sleep` inherits the open file description.
            let copy = nix::unistd::dup(dir.lock.as_fd()).unwrap();
            // Never waited for: this process is SIGKILLed, and `sleep` is killed by the test.
            #[allow(clippy::zombie_processes)]
            let sleep = std::process::Command::new("sleep").arg("60").spawn().unwrap();
            // `copy` stays open: closing any descriptor of the file would drop a record lock.
            println!("holding sleep={}", sleep.id());
            loop {
                std::thread::sleep(std::time::Duration::from_secs(60));
                let _ = &copy;
            }
        }
        let tmp = tempfile::tempdir().unwrap();
        let mut holder = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "local_dir::tests::a_killed_holders_child_with_a_copy_of_the_descriptor_does_not_hold_the_lock",
            ])
            .args(["--nocapture", "--test-threads=1"])
            .env(ROLE, tmp.path())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Killed however this test ends, so no holder outlives it.
        struct KillOnDrop(std::process::Child);
        impl Drop for KillOnDrop {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let stdout = holder.stdout.take().unwrap();
        let mut holder = KillOnDrop(holder);
        let mut lines = std::io::BufReader::new(stdout).lines();
        let sleep_pid: i32 = lines
            .find_map(|l| l.ok()?.split("holding sleep=").nth(1)?.trim().parse().ok())
            .expect("the holder process reports its child");
        assert!(matches!(LocalDir::open(tmp.path()), Err(LocalDirError::Locked { .. })), "held while the holder lives");
        holder.0.kill().unwrap();
        holder.0.wait().unwrap();
        let reopened = LocalDir::open(tmp.path());
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(sleep_pid), nix::sys::signal::Signal::SIGKILL);
        reopened.expect("the lock went with its holder, not with the child's descriptor");
    }

    /// Another process sees the lock and its holder's pid (what `gale status` relies on).
    #[test]
    fn another_process_sees_the_holder() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, _) = LocalDir::open(tmp.path()).unwrap();
        // F_GETLK in this process reports no conflict (record locks never conflict with their
        // own process), so ask from a child: python3 is on every test machine.
        let probe = std::process::Command::new("python3")
            .arg("-c")
            .arg(
                "import fcntl,struct,sys\n\
                 f=open(sys.argv[1],'rb')\n\
                 r=fcntl.fcntl(f, fcntl.F_GETLK, struct.pack('hhqqi',fcntl.F_WRLCK,0,0,0,0))\n\
                 t,_,_,_,pid=struct.unpack('hhqqi',r)\n\
                 print(pid if t!=fcntl.F_UNLCK else 'none')",
            )
            .arg(tmp.path().join("lock"))
            .output()
            .unwrap();
        assert!(probe.status.success(), "{}", String::from_utf8_lossy(&probe.stderr));
        assert_eq!(String::from_utf8_lossy(&probe.stdout).trim(), std::process::id().to_string());
        drop(dir);
        assert_eq!(lock_holder(&File::open(tmp.path().join("lock")).unwrap()).unwrap(), None);
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
