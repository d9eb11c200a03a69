//! One health script as a process: start it, capture the head of its output, stop it at its
//! deadline, and leave nothing of it behind.
//!
//! Design: the script is a [`GroupChild`] (its own session and process group, killed with
//! its group, reaped last; see `group_child.rs` for those invariants). Three things run side
//! by side until the deadline: a reader per pipe and [`GroupChild::finish`].
//!
//! Invariant: **reading the pipes never outlasts the deadline.** Each pipe is read until EOF
//! or the script's deadline, whichever comes first, the first [`CAPTURE_LIMIT`] bytes kept and
//! the rest read and dropped, so a chatty script never blocks on a full pipe. A process that
//! left the group (`setsid`, `setpgid`) is out of reach of the kill and may hold a pipe open:
//! the read then stops at the deadline, the pipe is closed (its next write gets `EPIPE`), the
//! result still comes from the script's own exit status, and a warning says so.

use std::io;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::{Instant, timeout_at};
use tracing::warn;

pub(super) use crate::group_child::Exit;
use crate::group_child::GroupChild;

/// Bytes of stdout and of stderr kept for the report; the rest is read and dropped.
pub(super) const CAPTURE_LIMIT: usize = 64 * 1024;

/// How a script run ended, before it is judged healthy or not.
#[derive(Debug)]
pub(super) struct Finished {
    pub exit: Exit,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// From the start to the exit (or the kill) of the script itself.
    pub duration: Duration,
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
    let mut process = GroupChild::spawn(command(path, dir), "health check", deadline)
        .await
        .map_err(|source| RunError::Spawn { source })?;
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
pub(super) fn command(path: &Path, dir: &Path) -> std::process::Command {
    let mut command = std::process::Command::new(path);
    command.current_dir(dir).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    crate::group_child::own_group(&mut command);
    command
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
