//! Signalling a worker's process group, only after proving the worker is the one we recorded.
//!
//! Stopping a worker is SIGTERM to its process group, a grace period, then SIGKILL to the group
//! (SPEC §4). The group id is the worker's pid because [`super::launch::spawn_in`] makes every
//! worker a session and group leader, so one `killpg` reaches everything it forked that stayed
//! in its group.
//!
//! Invariant (STYLE habit 7): nothing is signalled unless pid, start time and boot id all
//! match the record. A recycled pid, a record from another boot or an unreadable `/proc` all
//! mean "not provably ours" and nothing is sent.
//!
//! Limits, said plainly:
//! - Between the proof and `killpg` there are two system calls. The leader's pid cannot be
//!   reused in that window unless the leader exits AND is reaped AND every member of its group
//!   exits AND the pid is handed out again as a new group: not a window the kernel's pid
//!   allocator (which cycles through the whole pid space) can hit in practice.
//! - Once the leader is gone (reaped), members it left in the group cannot be proven ours from
//!   its pid any more and are not signalled ([`SignalOutcome::Gone`]). Those are what the
//!   per-worker cgroup of SPEC §7 is for.

use std::io;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use crate::proc_identity::{self, ProcessIdentity};

/// What [`signal_group`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalOutcome {
    /// The recorded process is running and its group was signalled.
    Signalled,
    /// No process has that pid any more: the worker has exited (nothing was sent).
    Gone,
    /// Something runs under that pid but it is not provably the recorded process (other start
    /// time, other boot): nothing was sent.
    NotOurs,
}

/// Sends `sig` to the process group of the worker `identity` names, if it is still that worker.
/// An error means `/proc` could not be read or the kernel refused the signal (`EPERM`: the
/// worker runs as a user the agent may not signal).
pub fn signal_group(identity: &ProcessIdentity, sig: Signal) -> io::Result<SignalOutcome> {
    let pid = i32::try_from(identity.pid)
        .ok()
        .filter(|&p| p > 1)
        // 0, 1 and negative numbers mean "my group", init or "every process" to kill(2).
        .ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("refusing to signal pid {}", identity.pid))
        })?;
    let proven = prove(identity)?;
    if proven != SignalOutcome::Signalled {
        return Ok(proven);
    }
    match killpg(Pid::from_raw(pid), sig) {
        Ok(()) => Ok(SignalOutcome::Signalled),
        // The proven leader has left its group (a worker may call setpgid itself): signal the
        // process we proved, which is all we can still vouch for.
        Err(Errno::ESRCH) => match kill(Pid::from_raw(pid), sig) {
            Ok(()) => Ok(SignalOutcome::Signalled),
            Err(Errno::ESRCH) => Ok(SignalOutcome::Gone),
            Err(e) => Err(e.into()),
        },
        Err(e) => Err(e.into()),
    }
}

/// `Signalled` here means "proven, go ahead".
fn prove(identity: &ProcessIdentity) -> io::Result<SignalOutcome> {
    if proc_identity::boot_id()? != identity.boot_id {
        return Ok(SignalOutcome::NotOurs);
    }
    match proc_identity::start_ticks(identity.pid) {
        Ok(ticks) if ticks == identity.start_ticks => Ok(SignalOutcome::Signalled),
        Ok(_) => Ok(SignalOutcome::NotOurs),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(SignalOutcome::Gone),
        Err(e) => Err(e),
    }
}
