//! A short-lived child process that leads its own process group, bounded by a deadline: the
//! shape of a health check script (`health/process.rs`) and of a diagnostics command
//! (`diagnostics/run.rs`). Start it, wait for its exit or the deadline, kill its whole group,
//! reap it, and leave nothing of it behind.
//!
//! Design: the child runs in its own session and process group (the same
//! [`crate::sys::new_session_on_exec`] the workers use, applied by [`own_group`]), so that one
//! `killpg` reaches everything it forked that stayed in its group. Whatever ends the wait
//! (exit or deadline), the whole group is then killed with SIGKILL, and only after that is the
//! child reaped. Reading its pipes is the caller's business (it runs beside [`GroupChild::finish`]).
//!
//! Invariants:
//! - **The group is killed before its leader is reaped.** The wait for the exit goes through a
//!   pidfd (or `waitid(WNOWAIT)` polling on kernels without one), which does not reap. While
//!   the leader is unreaped, its pid, and so the group id, cannot belong to anyone else, so the
//!   `killpg` provably hits only the child's group (STYLE habit 7). After the reap nothing is
//!   signalled again, it is only observed.
//! - **Dropping a running child kills it.** [`GroupChild`]'s `Drop` kills the group (the
//!   leader is still unreaped then), and the child is `kill_on_drop`, so tokio reaps the
//!   leftover zombie. A cancelled run leaves no process behind.
//! - **A finished run leaves nothing alive in its group.** A child that exits while children
//!   it backgrounded still run (`sleep 100 &`) gets those children killed: a probe is not a
//!   way to start daemons. [`GroupChild::finish`] returns once no live member of the group is
//!   left, or after [`KILL_GRACE`] with a warning (a process in uninterruptible sleep, such as
//!   a `df` on a hung NFS mount, only dies when the kernel lets it).

use std::io;
use std::os::fd::OwnedFd;
use std::process::ExitStatus;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;
use rustix::process::{PidfdFlags, pidfd_open};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::time::{Instant, sleep, timeout_at};
use tracing::warn;

/// How long, after SIGKILL, the child's group gets to disappear before [`GroupChild::finish`]
/// gives up on it.
pub(crate) const KILL_GRACE: Duration = Duration::from_secs(2);

/// Pause between attempts while `exec` fails with `ETXTBSY`.
const TEXT_BUSY_RETRY: Duration = Duration::from_millis(20);

/// How often the exit is checked when the kernel has no `pidfd_open` (before 5.3), and how
/// often a killed group is checked for live members.
const POLL: Duration = Duration::from_millis(10);

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// The child exited (or died of a signal) before its deadline.
    Exited(ExitStatus),
    /// The deadline passed first and the group was killed; the status is `None` when the
    /// child could not even be reaped within [`KILL_GRACE`].
    TimedOut(Option<ExitStatus>),
}

/// Makes `command` a child for [`GroupChild::spawn`]: without the agent's systemd variables,
/// in a session and process group of its own. Register a user switch after this.
pub(crate) fn own_group(command: &mut std::process::Command) {
    crate::worker::launch::remove_agent_only_env(command);
    crate::sys::new_session_on_exec(command);
}

/// A started child, its own process group leader. Killing its group on drop is what makes a
/// cancelled run leave nothing behind.
#[derive(Debug)]
pub(crate) struct GroupChild {
    pub(crate) child: tokio::process::Child,
    /// Its pid, which is its process group id (it called `setsid`).
    pgid: Pid,
    /// Readable once the child has exited; `None` on kernels without `pidfd_open`.
    exit_fd: Option<AsyncFd<OwnedFd>>,
    /// Set once `wait` returned: from then on its pid proves nothing and nothing is signalled.
    reaped: bool,
    /// What the child is, for warnings ("health check", "diagnostics command").
    what: &'static str,
}

impl GroupChild {
    /// Starts `command`, which went through [`own_group`]; retries while `exec` meets a busy
    /// text file until `deadline`.
    pub(crate) async fn spawn(
        command: std::process::Command,
        what: &'static str,
        deadline: Instant,
    ) -> io::Result<GroupChild> {
        let mut command = tokio::process::Command::from(command);
        // Belt and braces: `Drop` already kills the whole group; this also hands the zombie
        // to tokio's orphan reaper.
        command.kill_on_drop(true);
        let child = loop {
            match command.spawn() {
                Ok(child) => break child,
                // The file is open for writing somewhere: being installed right now, or a
                // descriptor to it caught for a moment by another thread's fork-before-exec.
                // Either clears quickly; failing for it would, say, drain a healthy node.
                Err(e)
                    if e.raw_os_error() == Some(nix::libc::ETXTBSY) && Instant::now() + TEXT_BUSY_RETRY < deadline =>
                {
                    sleep(TEXT_BUSY_RETRY).await
                }
                Err(e) => return Err(e),
            }
        };
        let pid = child.id().and_then(|pid| i32::try_from(pid).ok()).expect("a child that was never awaited has a pid");
        let mut process = GroupChild { child, pgid: Pid::from_raw(pid), exit_fd: None, reaped: false, what };
        // From here on an error drops `process`, which kills the group.
        let raw_pid = rustix::process::Pid::from_raw(pid).expect("a child's pid is positive");
        process.exit_fd = match pidfd_open(raw_pid, PidfdFlags::NONBLOCK) {
            Ok(fd) => Some(crate::sys::register_owned_fd(fd, Interest::READABLE)?),
            Err(rustix::io::Errno::NOSYS) => None,
            Err(e) => return Err(e.into()),
        };
        Ok(process)
    }

    /// Waits for the exit or the deadline, kills the group, reaps the child and waits for the
    /// rest of the group to die. Returns how it ended and when the child itself ended.
    pub(crate) async fn finish(&mut self, deadline: Instant) -> io::Result<(Exit, Instant)> {
        let in_time = match timeout_at(deadline, self.exited()).await {
            Ok(waited) => {
                waited?;
                true
            }
            Err(_elapsed) => false,
        };
        let ended = Instant::now();
        // The child (or its zombie) is unreaped here, so the group id is still certainly its.
        self.kill_group();
        let grace = ended + KILL_GRACE;
        let status = match timeout_at(grace, self.reap()).await {
            Ok(status) => Some(status?),
            Err(_elapsed) => {
                warn!(pid = %self.pgid, "the {} did not die within {KILL_GRACE:?} of SIGKILL (uninterruptible sleep?)", self.what);
                None
            }
        };
        if status.is_some() {
            self.wait_until_group_gone(grace).await;
        }
        match (in_time, status) {
            (true, Some(status)) => Ok((Exit::Exited(status), ended)),
            (true, None) => Err(io::Error::other(format!("the {} exited but could not be reaped", self.what))),
            (false, status) => Ok((Exit::TimedOut(status), ended)),
        }
    }

    /// Completes when the child has exited, without reaping it.
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
            Err(e) => warn!(pgid = %self.pgid, "cannot kill the {}'s process group: {e}", self.what),
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
                    warn!(pgid, pids = ?live, "processes of the {}'s group are still alive {KILL_GRACE:?} after SIGKILL", self.what);
                    return;
                }
                Ok(_) => sleep(POLL).await,
                Err(e) => {
                    warn!(pgid, "cannot check that the {}'s processes are gone: {e}", self.what);
                    return;
                }
            }
        }
    }
}

impl Drop for GroupChild {
    fn drop(&mut self) {
        self.kill_group();
    }
}
