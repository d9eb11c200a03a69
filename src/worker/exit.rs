//! Learning that a worker exited, at once and without polling.
//!
//! Two cases, one answer ([`ExitWatch::wait`]):
//! - a worker this agent started is its child: `tokio::process::Child::wait` reaps it and gives
//!   the exit status ([`describe`] splits it into code and signal); a worker born in its cgroup
//!   by `clone3` (no `tokio::process::Child` exists for it) is waited on through the pidfd
//!   clone3 returned, and reaped with `waitid(P_PIDFD)`;
//! - a worker adopted after an agent restart is not our child, so its status is not ours to
//!   read (its parent is init or a subreaper). [`wait_adopted`] waits on a pidfd, which the
//!   kernel makes readable when the process exits, registered with tokio's reactor.
//!
//! Invariant (STYLE habit 7): [`wait_adopted`] proves the identity (start time, boot id) only
//! AFTER opening the pidfd. A pidfd refers to one process for its whole life, so if the pid was
//! reused between the recorded check and `pidfd_open`, the check after the open sees another
//! start time and reports the recorded process as exited instead of watching a stranger.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use std::os::fd::{AsFd, OwnedFd};

use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags, WaitId, WaitIdOptions, pidfd_open, pidfd_send_signal, waitid};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::proc_identity::{self, ProcessIdentity};

/// `(exit code, terminating signal)`: exactly one is `Some` for a process that exited, both are
/// `None` for a status that is neither (a stopped or continued process, never seen from `wait`).
pub(crate) fn describe(status: ExitStatus) -> (Option<i32>, Option<i32>) {
    (status.code(), status.signal())
}

/// `9` → `"SIGKILL"`; a number with no name (real-time signals) → `"SIG40"`. The one
/// spelling of a terminating signal: a slot's `last_exit` (status, SupervisorInfo: the
/// spelling it always had on the wire), health script results and logs all use it.
pub(crate) fn signal_name(sig: i32) -> String {
    match nix::sys::signal::Signal::try_from(sig) {
        Ok(signal) => signal.as_str().to_owned(),
        Err(_) => format!("SIG{sig}"),
    }
}

/// How a worker ended, as far as the agent can know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct ExitReport {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl ExitReport {
    pub(crate) fn from_status(status: ExitStatus) -> ExitReport {
        let (code, signal) = describe(status);
        ExitReport { code, signal }
    }

    /// An adopted worker exited: it was not our child, so neither code nor signal is known.
    pub(crate) const UNKNOWN: ExitReport = ExitReport { code: None, signal: None };
}

/// Waits for the end of one worker, started or adopted. `wait` may be called again after it
/// returned (it returns the same report) and is cancel-safe, so it can sit in a `select!`.
#[derive(Debug)]
pub(crate) struct ExitWatch {
    inner: Watched,
}

#[derive(Debug)]
enum Watched {
    Child(tokio::process::Child),
    /// Our child started by clone3: its pidfd, readable once it exited. Dropped before the
    /// exit, it stays a zombie until the agent exits (the watch tasks live that long).
    Born(AsyncFd<OwnedFd>),
    Adopted(ProcessIdentity),
    #[cfg(test)]
    Fake(tokio::sync::oneshot::Receiver<ExitReport>),
    Exited(ExitReport),
}

impl ExitWatch {
    /// A worker this agent spawned.
    pub(crate) fn child(child: tokio::process::Child) -> ExitWatch {
        ExitWatch { inner: Watched::Child(child) }
    }

    /// A worker this agent started with clone3 ([`crate::sys::clone3::spawn`]): its pidfd.
    /// Needs a tokio runtime.
    pub(crate) fn born(pidfd: OwnedFd) -> io::Result<ExitWatch> {
        Ok(ExitWatch { inner: Watched::Born(crate::sys::register_owned_fd(pidfd, Interest::READABLE)?) })
    }

    /// A worker found running at start (not our child).
    pub(crate) fn adopted(identity: ProcessIdentity) -> ExitWatch {
        ExitWatch { inner: Watched::Adopted(identity) }
    }

    /// For [`super::fake::FakeProcessControl`]: exits when the sender sends.
    #[cfg(test)]
    pub(crate) fn fake(exit: tokio::sync::oneshot::Receiver<ExitReport>) -> ExitWatch {
        ExitWatch { inner: Watched::Fake(exit) }
    }

    pub(crate) async fn wait(&mut self) -> io::Result<ExitReport> {
        let report = match &mut self.inner {
            Watched::Child(child) => ExitReport::from_status(child.wait().await?),
            Watched::Born(pidfd) => wait_born(pidfd).await?,
            Watched::Adopted(identity) => {
                wait_adopted(identity).await?;
                ExitReport::UNKNOWN
            }
            #[cfg(test)]
            Watched::Fake(exit) => exit.await.map_err(|_| io::Error::other("the fake process control was dropped"))?,
            Watched::Exited(report) => return Ok(*report),
        };
        self.inner = Watched::Exited(report);
        Ok(report)
    }

    /// SIGKILLs a worker that was just started, and reaps it if it was born by clone3 (a
    /// `tokio::process::Child` is reaped by tokio once dropped). For a launch that cannot
    /// go on.
    pub(crate) fn kill_new(&mut self) {
        if let Watched::Child(child) = &mut self.inner {
            let _ = child.start_kill();
        } else if let Watched::Born(pidfd) = &self.inner {
            let _ = pidfd_send_signal(pidfd.get_ref(), rustix::process::Signal::KILL);
            crate::sys::clone3::reap(pidfd.get_ref());
            let signal = Some(nix::libc::SIGKILL);
            self.inner = Watched::Exited(ExitReport { code: None, signal });
        }
    }
}

/// The exit of a child born by clone3: the pidfd turns readable, then `waitid` reaps it.
/// Cancel-safe: nothing is consumed until `waitid` returns the status.
async fn wait_born(pidfd: &AsyncFd<OwnedFd>) -> io::Result<ExitReport> {
    loop {
        let mut ready = pidfd.readable().await?;
        match waitid(WaitId::PidFd(pidfd.get_ref().as_fd()), WaitIdOptions::EXITED | WaitIdOptions::NOHANG) {
            Ok(Some(status)) => {
                return Ok(ExitReport { code: status.exit_status(), signal: status.terminating_signal() });
            }
            Ok(None) => ready.clear_ready(),
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// How often an adopted worker is checked when the kernel has no `pidfd_open` (before 5.3).
const POLL_WITHOUT_PIDFD: Duration = Duration::from_secs(1);

/// Completes when the process `identity` names has exited: at once if it is already gone, if
/// its pid now belongs to another process, or if it was recorded on another boot.
pub(crate) async fn wait_adopted(identity: &ProcessIdentity) -> io::Result<()> {
    let pid = i32::try_from(identity.pid).ok().and_then(Pid::from_raw).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("pid {} is not a valid process id", identity.pid))
    })?;
    let pidfd = match pidfd_open(pid, PidfdFlags::NONBLOCK) {
        Ok(fd) => Some(fd),
        Err(Errno::SRCH) => return Ok(()),
        Err(Errno::NOSYS) => None,
        Err(e) => return Err(e.into()),
    };
    // After the open (module invariant): from here on the pidfd cannot follow a reused pid.
    if !is_same_process(identity)? {
        return Ok(());
    }
    let Some(pidfd) = pidfd else {
        while is_same_process(identity)? {
            tokio::time::sleep(POLL_WITHOUT_PIDFD).await;
        }
        return Ok(());
    };
    let pidfd = crate::sys::register_owned_fd(pidfd, Interest::READABLE)?;
    // Readable means exited; the guard is not cleared because the state never goes back.
    let _ready = pidfd.readable().await?;
    Ok(())
}

/// Same boot and same start time at that pid. `Ok(false)` for gone, reused or another boot;
/// an error only when `/proc` cannot be read, which must not be mistaken for "exited".
fn is_same_process(identity: &ProcessIdentity) -> io::Result<bool> {
    if proc_identity::boot_id()? != identity.boot_id {
        return Ok(false);
    }
    match proc_identity::start_ticks(identity.pid) {
        Ok(ticks) => Ok(ticks == identity.start_ticks),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_signals() {
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(15), "SIGTERM");
        assert_eq!(signal_name(40), "SIG40");
    }

    #[test]
    fn describes_codes_and_signals() {
        assert_eq!(describe(ExitStatus::from_raw(3 << 8)), (Some(3), None));
        assert_eq!(describe(ExitStatus::from_raw(9)), (None, Some(9)));
        assert_eq!(ExitReport::from_status(ExitStatus::from_raw(0)), ExitReport { code: Some(0), signal: None });
    }
}
