//! One health script as a process: start it, capture the head of its output, stop it at its
//! deadline, and leave nothing of it behind.
//!
//! Design: the script runs in its own session and process group (the same
//! [`crate::sys::new_session_on_exec`] the workers use), so that one `killpg` reaches everything
//! it forked that stayed in its group. Three things run side by side until the deadline: a
//! reader per pipe and the wait for the script's own exit. Whatever ends the wait (exit or
//! deadline), the whole group is then killed with SIGKILL, and only after that is the script
//! reaped.
//!
//! Invariants:
//! - **The group is killed before its leader is reaped.** The wait for the exit goes through a
//!   pidfd (or `waitid(WNOWAIT)` polling on kernels without one), which does not reap. While
//!   the leader is unreaped, its pid, and so the group id, cannot belong to anyone else, so the
//!   `killpg` provably hits only the script's group (STYLE habit 7). After the reap nothing is
//!   signalled again, it is only observed.
//! - **Dropping a running script kills it.** [`ScriptProcess`]'s `Drop` kills the group (the
//!   leader is still unreaped then), and the child is `kill_on_drop`, so tokio reaps the
//!   leftover zombie. A cancelled [`run`] leaves no process behind.
//! - **A finished check leaves nothing alive in its group.** A script that exits while children
//!   it backgrounded still run (`sleep 100 &`) gets those children killed: a health check is a
//!   probe, not a way to start daemons. [`run`] returns once no live member of the group is
//!   left, or after [`KILL_GRACE`] with a warning (a process in uninterruptible sleep, such as a
//!   `df` on a hung NFS mount, only dies when the kernel lets it).
//! - **Reading the pipes never outlasts the deadline.** Each pipe is read until EOF or the
//!   script's deadline, whichever comes first, the first [`CAPTURE_LIMIT`] bytes kept and the
//!   rest read and dropped, so a chatty script never blocks on a full pipe. A process that left
//!   the group (`setsid`, `setpgid`) is out of reach of the kill and may hold a pipe open: the
//!   read then stops at the deadline, the pipe is closed (its next write gets `EPIPE`), the
//!   result still comes from the script's own exit status, and a warning says so.

use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;
use rustix::process::{PidfdFlags, pidfd_open};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, Interest};
use tokio::time::{Instant, sleep, timeout_at};
use tracing::warn;

/// Bytes of stdout and of stderr kept for the report; the rest is read and dropped.
pub(super) const CAPTURE_LIMIT: usize = 64 * 1024;

/// How long, after SIGKILL, the script's group gets to disappear before [`run`] gives up on it.
pub(super) const KILL_GRACE: Duration = Duration::from_secs(2);

/// Pause between attempts while `exec` fails with `ETXTBSY`.
const TEXT_BUSY_RETRY: Duration = Duration::from_millis(20);

/// How often the exit is checked when the kernel has no `pidfd_open` (before 5.3), and how
/// often a killed group is checked for live members.
const POLL: Duration = Duration::from_millis(10);

/// How a script run ended, before it is judged healthy or not.
#[derive(Debug)]
pub(super) struct Finished {
    pub exit: Exit,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// From the start to the exit (or the kill) of the script itself.
    pub duration: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Exit {
    /// The script exited (or died of a signal) before its deadline.
    Exited(ExitStatus),
    /// The deadline passed first and the group was killed; the status is `None` when the
    /// script could not even be reaped within [`KILL_GRACE`].
    TimedOut(Option<ExitStatus>),
}

/// Why a script produced no [`Finished`]: the text goes into the report.
#[derive(Debug, thiserror::Error)]
pub(super) enum RunError {
    #[error("cannot execute: {source}")]
    Spawn { source: io::Error },
    #[error("cannot wait for the script: {source}")]
    Wait { source: io::Error },
}

/// Runs `path` (argv = `[path]`, cwd `dir`) until it exits or `timeout` passes; see the
/// module invariants for what is left when this returns (nothing).
pub(super) async fn run(path: &Path, dir: &Path, timeout: Duration) -> Result<Finished, RunError> {
    let started = Instant::now();
    let deadline = started + timeout;
    let mut process = ScriptProcess::spawn(path, dir, deadline).await.map_err(|source| RunError::Spawn { source })?;
    let stdout = process.child.stdout.take();
    let stderr = process.child.stderr.take();
    let (stdout, stderr, finished) =
        tokio::join!(capture(stdout, deadline), capture(stderr, deadline), process.finish(deadline));
    let (exit, ended) = finished.map_err(|source| RunError::Wait { source })?;
    if matches!(exit, Exit::Exited(_)) && !(stdout.complete && stderr.complete) {
        warn!(
            "a process that left the health check's process group kept its output open until the timeout; \
             it was not killed (only the script's own group is), find it with `fuser` on the script's pipes or `ps -eo pid,pgid,sid,args`"
        );
    }
    Ok(Finished { exit, stdout: stdout.head, stderr: stderr.head, duration: ended - started })
}

/// What a health script inherits and how it is started (a function of its own so tests can
/// inspect it).
pub(super) fn command(path: &Path, dir: &Path) -> tokio::process::Command {
    let mut command = std::process::Command::new(path);
    command.current_dir(dir).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    crate::worker::launch::remove_agent_only_env(&mut command);
    crate::sys::new_session_on_exec(&mut command);
    let mut command = tokio::process::Command::from(command);
    // Belt and braces: `ScriptProcess::drop` already kills the whole group; this also hands the
    // zombie to tokio's orphan reaper.
    command.kill_on_drop(true);
    command
}

/// A started script, its own process group leader. Killing its group on drop is what makes a
/// cancelled check leave nothing behind.
#[derive(Debug)]
struct ScriptProcess {
    child: tokio::process::Child,
    /// Its pid, which is its process group id (it called `setsid`).
    pgid: Pid,
    /// Readable once the script has exited; `None` on kernels without `pidfd_open`.
    exit_fd: Option<AsyncFd<OwnedFd>>,
    /// Set once `wait` returned: from then on its pid proves nothing and nothing is signalled.
    reaped: bool,
}

impl ScriptProcess {
    async fn spawn(path: &Path, dir: &Path, deadline: Instant) -> io::Result<ScriptProcess> {
        let mut command = command(path, dir);
        let child = loop {
            match command.spawn() {
                Ok(child) => break child,
                // The file is open for writing somewhere: being installed right now, or a
                // descriptor to it caught for a moment by another thread's fork-before-exec.
                // Either clears quickly; failing the check for it would drain a healthy node.
                Err(e)
                    if e.raw_os_error() == Some(nix::libc::ETXTBSY) && Instant::now() + TEXT_BUSY_RETRY < deadline =>
                {
                    sleep(TEXT_BUSY_RETRY).await
                }
                Err(e) => return Err(e),
            }
        };
        let pid = child.id().and_then(|pid| i32::try_from(pid).ok()).expect("a child that was never awaited has a pid");
        let mut process = ScriptProcess { child, pgid: Pid::from_raw(pid), exit_fd: None, reaped: false };
        // From here on an error drops `process`, which kills the group.
        let raw_pid = rustix::process::Pid::from_raw(pid).expect("a child's pid is positive");
        process.exit_fd = match pidfd_open(raw_pid, PidfdFlags::NONBLOCK) {
            Ok(fd) => Some(crate::sys::register_owned_fd(fd, Interest::READABLE)?),
            Err(rustix::io::Errno::NOSYS) => None,
            Err(e) => return Err(e.into()),
        };
        Ok(process)
    }

    /// Waits for the exit or the deadline, kills the group, reaps the script and waits for the
    /// rest of the group to die. Returns how it ended and when the script itself ended.
    async fn finish(&mut self, deadline: Instant) -> io::Result<(Exit, Instant)> {
        let in_time = match timeout_at(deadline, self.exited()).await {
            Ok(waited) => {
                waited?;
                true
            }
            Err(_elapsed) => false,
        };
        let ended = Instant::now();
        // The script (or its zombie) is unreaped here, so the group id is still certainly its.
        self.kill_group();
        let grace = ended + KILL_GRACE;
        let status = match timeout_at(grace, self.reap()).await {
            Ok(status) => Some(status?),
            Err(_elapsed) => {
                warn!(pid = %self.pgid, "the health check did not die within {KILL_GRACE:?} of SIGKILL (uninterruptible sleep?)");
                None
            }
        };
        if status.is_some() {
            self.wait_until_group_gone(grace).await;
        }
        match (in_time, status) {
            (true, Some(status)) => Ok((Exit::Exited(status), ended)),
            (true, None) => Err(io::Error::other("the script exited but could not be reaped")),
            (false, status) => Ok((Exit::TimedOut(status), ended)),
        }
    }

    /// Completes when the script has exited, without reaping it.
    async fn exited(&self) -> io::Result<()> {
        if let Some(fd) = &self.exit_fd {
            // Readable means exited; the state never goes back, so the guard is not cleared.
            let _ready = fd.readable().await?;
            return Ok(());
        }
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        loop {
            match waitid(Id::Pid(self.pgid), flags) {
                Ok(WaitStatus::StillAlive) => sleep(POLL).await,
                Ok(_) => return Ok(()),
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn reap(&mut self) -> io::Result<ExitStatus> {
        let status = self.child.wait().await;
        // Even on error (ECHILD: reaped elsewhere) the pid no longer proves anything.
        self.reaped = true;
        status
    }

    /// SIGKILL to the whole group, only while the leader is unreaped (module invariant).
    fn kill_group(&self) {
        if self.reaped {
            return;
        }
        match killpg(self.pgid, Signal::SIGKILL) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => warn!(pgid = %self.pgid, "cannot kill the health check's process group: {e}"),
        }
    }

    /// After the kill and the reap: waits (polling, until `until`) for the group's other
    /// members to die. Zombies count as gone: an orphan's new parent reaps it, or never does.
    async fn wait_until_group_gone(&self, until: Instant) {
        let pgid = self.pgid.as_raw() as u32;
        loop {
            // Signal 0 only probes. ESRCH: not even a zombie is left, the common case.
            if let Err(Errno::ESRCH) = killpg(self.pgid, None) {
                return;
            }
            match crate::proc_identity::live_group_members(pgid) {
                Ok(live) if live.is_empty() => return,
                Ok(live) if Instant::now() >= until => {
                    warn!(pgid, pids = ?live, "processes of the health check's group are still alive {KILL_GRACE:?} after SIGKILL");
                    return;
                }
                Ok(_) => sleep(POLL).await,
                Err(e) => {
                    warn!(pgid, "cannot check that the health check's processes are gone: {e}");
                    return;
                }
            }
        }
    }
}

impl Drop for ScriptProcess {
    fn drop(&mut self) {
        self.kill_group();
    }
}

/// The head of one pipe, and whether it was read to the end.
#[derive(Debug, Default)]
struct Captured {
    head: Vec<u8>,
    complete: bool,
}

/// Reads `pipe` until EOF or `deadline`, keeping the first [`CAPTURE_LIMIT`] bytes.
async fn capture<R: AsyncRead + Unpin>(pipe: Option<R>, deadline: Instant) -> Captured {
    let Some(mut pipe) = pipe else {
        return Captured { head: Vec::new(), complete: true };
    };
    let mut head = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let read_to_end = async {
        loop {
            match pipe.read(&mut chunk).await {
                Ok(0) => return,
                Ok(n) => {
                    let keep = n.min(CAPTURE_LIMIT - head.len());
                    head.extend_from_slice(&chunk[..keep]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A pipe read does not fail in practice; if it does, what was read is all.
                Err(_) => return,
            }
        }
    };
    let complete = timeout_at(deadline, read_to_end).await.is_ok();
    Captured { head, complete }
}
