//! One diagnostics run as a process: prepare `{out}`, start the command as the worker's user,
//! capture its output into the run's file up to the cap, stop it at its timeout, keep the
//! `{out}` file, and leave nothing of it behind.
//!
//! Design: the command is a [`GroupChild`] (its own session and process group, killed with
//! its group at the deadline or once it exits, reaped last: see `group_child.rs`). Its stdout
//! and stderr are one pipe, so the file shows them interleaved as they were written. The
//! reader runs beside [`GroupChild::finish`] until EOF or the deadline; past the cap it keeps
//! reading and drops what it reads, so a chatty command never blocks on a full pipe and is
//! stopped by its timeout alone.
//!
//! `{out}` is `<worker_dir>/.gale-diag-<stamp>-<name>/<name>.out`: a directory made for this
//! run, mode 0700 and owned by the worker's user, inside the directory the worker itself runs
//! in (so the user can certainly reach it, wherever `log_dir` is). What the command left
//! there is copied, up to the cap, into the agent's own file beside the output (opened
//! without following a symlink, and only if it is a regular file), and the directory is
//! removed.
//!
//! Invariants:
//! - **Runs as the worker's user, never as a shell.** The argv is exec'd directly; the user
//!   switch is made between fork and exec exactly as for the worker
//!   ([`crate::sys::switch_user_on_exec`]).
//! - **Bounded.** A run takes at most its timeout plus [`crate::group_child::KILL_GRACE`]
//!   and the copy of `{out}`; each file it keeps is at most the cap plus gale's lines.
//! - **A failure is reported, never propagated.** Everything that goes wrong once the output
//!   file exists is written into it and returned as the run's [`Ending`].

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, timeout_at};

use super::{OUT_FILE_SUFFIX, OUTPUT_SUFFIX, Values, expand, file_stem, uses_out};
use crate::group_child::{Exit, GroupChild};
use crate::worker::users::RunAs;

/// Mode of the files a run keeps: they may hold a worker's memory (a heap dump).
const FILE_MODE: u32 = 0o640;

/// Everything one run needs, decided by the executor.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    /// The command's name in `[diagnostics.commands]`.
    pub name: String,
    /// Its argv template.
    pub argv: Vec<String>,
    /// The worker it is about (`out` is filled in by the run).
    pub values: Values,
    /// `None`: the agent's own user (the worker runs as that too).
    pub run_as: Option<RunAs>,
    /// `<log_dir>/workers/<topology>/<port>/diag`.
    pub diag_dir: PathBuf,
    pub timeout: Duration,
    /// Cap on the output, and on the `{out}` copy.
    pub max_bytes: u64,
}

/// How the command's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ending {
    /// It exited (or died of a signal) before its timeout.
    Exited(ExitStatus),
    /// The timeout passed; it was killed with its process group.
    TimedOut,
    /// It could not be run at all, and why.
    NotRun(String),
}

/// A kept file and whether it was cut at the cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Kept {
    pub path: PathBuf,
    pub bytes: u64,
    pub truncated: bool,
}

/// What a run left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub ending: Ending,
    /// Its output (bytes: the command's, without gale's lines).
    pub output: Kept,
    /// The copy of what it wrote at `{out}`, if it wrote a file there.
    pub out_file: Option<Kept>,
    /// Problems with `{out}` (not written, not a regular file, cannot be copied).
    pub out_note: Option<String>,
    pub duration: Duration,
}

impl Outcome {
    /// A run that did its job: exited 0 in time.
    pub(crate) fn succeeded(&self) -> bool {
        matches!(self.ending, Ending::Exited(status) if status.success())
    }

    /// `ok`, `failed`, `timed_out` or `not_run`: the metric's result label.
    pub(crate) fn result(&self) -> &'static str {
        match &self.ending {
            _ if self.succeeded() => "ok",
            Ending::Exited(_) => "failed",
            Ending::TimedOut => "timed_out",
            Ending::NotRun(_) => "not_run",
        }
    }

    /// One line for the operator: how it ended and where its files are.
    pub(crate) fn summary(&self) -> String {
        let mut line = format!("{}; output: {}", self.ending_text(), describe_kept(&self.output));
        if let Some(out) = &self.out_file {
            line.push_str(&format!("; {{out}}: {}", describe_kept(out)));
        }
        if let Some(note) = &self.out_note {
            line.push_str(&format!("; {note}"));
        }
        line
    }

    fn ending_text(&self) -> String {
        let secs = self.duration.as_secs_f64();
        match &self.ending {
            Ending::Exited(status) => match crate::worker::describe(*status) {
                (Some(code), _) => format!("exited with code {code} after {secs:.2} s"),
                (_, Some(signal)) => format!("died of {} after {secs:.2} s", crate::worker::signal_name(signal)),
                _ => format!("ended ({status}) after {secs:.2} s"),
            },
            Ending::TimedOut => {
                format!("killed with its process group at its timeout, {} s (diagnostics.timeout_secs)", secs.round())
            }
            Ending::NotRun(why) => format!("could not be run: {why}"),
        }
    }
}

fn describe_kept(kept: &Kept) -> String {
    let cut = if kept.truncated { ", truncated at diagnostics.max_output_mb" } else { "" };
    format!("{} ({} bytes{cut})", kept.path.display(), kept.bytes)
}

/// Why a run left nothing at all: its output file could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot create {}: {source}", path.display())]
pub(crate) struct RunError {
    path: PathBuf,
    source: io::Error,
}

/// Runs `request`, started at `started_ms` (unix ms, for the file names); see the module docs.
pub(crate) async fn run(request: &Request, started_ms: u64) -> Result<Outcome, RunError> {
    let started = Instant::now();
    let stem = file_stem(started_ms, &request.name);
    let output_path = request.diag_dir.join(format!("{stem}{OUTPUT_SUFFIX}"));
    let file = create_file(&request.diag_dir, &output_path)
        .map_err(|source| RunError { path: output_path.clone(), source })?;
    let mut file = tokio::fs::File::from_std(file);
    let scratch = request.values.worker_dir.join(format!(".gale-diag-{stem}"));
    let out_path = scratch.join(format!("{}{OUT_FILE_SUFFIX}", request.name));
    let prepared = prepare(request, &scratch, &out_path);
    let mut text = header(request, started_ms, prepared.as_ref().ok().map(|(argv, _)| argv));
    let (ending, captured, out_dir) = match prepared {
        Err(why) => (Ending::NotRun(why), Captured::default(), None),
        Ok((argv, out_dir)) => {
            let _ = file.write_all(text.as_bytes()).await;
            text.clear();
            let (ending, captured) = execute(request, &argv, started + request.timeout, &mut file).await;
            (ending, captured, out_dir)
        }
    };
    let duration = started.elapsed();
    let (out_file, out_note) = match out_dir {
        Some(dir) if !matches!(ending, Ending::NotRun(_)) => {
            let kept = request.diag_dir.join(format!("{stem}{OUT_FILE_SUFFIX}"));
            keep_out(dir, out_path, kept, request.max_bytes).await
        }
        _ => (None, None),
    };
    remove_scratch(&scratch);
    let outcome = Outcome {
        ending,
        output: Kept { path: output_path, bytes: captured.kept, truncated: captured.dropped > 0 },
        out_file,
        out_note,
        duration,
    };
    text.push_str(&trailer(request, &outcome, &captured));
    let _ = file.write_all(text.as_bytes()).await;
    let _ = file.flush().await;
    Ok(outcome)
}

/// Creates `path` in `dir` (made if missing): new, private to the agent, never through a link.
fn create_file(dir: &Path, path: &Path) -> io::Result<File> {
    DirBuilder::new().recursive(true).mode(0o755).create(dir)?;
    OpenOptions::new().write(true).create_new(true).mode(FILE_MODE).custom_flags(nix::libc::O_NOFOLLOW).open(path)
}

/// The expanded argv and, when the command uses `{out}`, the directory made for it.
///
/// The worker's user can rename and replace entries of the worker's directory at any time, so
/// after the `mkdir` everything goes through one descriptor of the directory, opened without
/// following a symlink: the `fchown` cannot be turned onto another file, and the `{out}` file
/// is later opened relative to it ([`copy_out`]).
fn prepare(request: &Request, scratch: &Path, out_path: &Path) -> Result<(Vec<String>, Option<File>), String> {
    let mut values = request.values.clone();
    let mut out_dir = None;
    if uses_out(&request.argv) {
        let fail = |what: &str, e: io::Error| format!("cannot {what} {} for {{out}}: {e}", scratch.display());
        DirBuilder::new().mode(0o700).create(scratch).map_err(|e| fail("create", e))?;
        let dir = OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_DIRECTORY | nix::libc::O_NOFOLLOW)
            .open(scratch)
            .map_err(|e| fail("open", e))?;
        if let Some(user) = &request.run_as {
            std::os::unix::fs::fchown(&dir, Some(user.uid), Some(user.gid)).map_err(|e| fail("hand over", e))?;
        }
        values.out = Some(out_path.to_owned());
        out_dir = Some(dir);
    }
    Ok((expand(&request.argv, &values)?, out_dir))
}

/// gale's lines before the output: what runs, on what, as whom.
fn header(request: &Request, started_ms: u64, argv: Option<&Vec<String>>) -> String {
    let v = &request.values;
    let user = match &request.run_as {
        Some(u) => format!("{} (uid {}, gid {})", u.name, u.uid, u.gid),
        None => format!("the agent's (uid {})", nix::unistd::geteuid()),
    };
    let command = shown(argv.unwrap_or(&request.argv));
    format!(
        "gale diagnostics `{name}` on port {port}: topology {topology}, worker {worker} (pid {pid})\n\
         command: {command}\nuser:    {user}\nstarted: {started}, timeout {timeout} s, output capped at {cap} bytes\n\
         ----- output (stdout and stderr) -----\n",
        name = request.name,
        port = v.port,
        topology = v.topology_id,
        worker = v.worker_id,
        pid = v.pid,
        started = crate::local_state::format_unix_ms(started_ms),
        timeout = request.timeout.as_secs(),
        cap = request.max_bytes,
    )
}

/// An argv as one line: an argument with a space or quote in it is single-quoted, so the line
/// reads as the exec it was (no shell ever parses it).
fn shown(argv: &[String]) -> String {
    let word = |arg: &String| {
        if !arg.is_empty() && !arg.contains(|c: char| c.is_whitespace() || "'\"\\".contains(c)) {
            return arg.clone();
        }
        format!("'{}'", arg.replace('\'', "'\\''"))
    };
    argv.iter().map(word).collect::<Vec<_>>().join(" ")
}

/// gale's lines after the output: the marker of a cut, how it ended, the `{out}` file.
fn trailer(request: &Request, outcome: &Outcome, captured: &Captured) -> String {
    let mut text = String::new();
    if captured.dropped > 0 {
        text.push_str(&format!(
            "\n----- truncated: output past {} bytes (diagnostics.max_output_mb) was discarded: {} bytes -----\n",
            request.max_bytes, captured.dropped
        ));
    }
    // At the timeout the read stops by design; after an exit in time, only a process that
    // escaped the group's kill can have kept the pipe open.
    if !captured.complete && matches!(outcome.ending, Ending::Exited(_)) {
        text.push_str(
            "\n----- a process that left the command's process group kept the output open; not read further -----\n",
        );
    }
    text.push_str(&format!("----- end of output -----\n{}\n", outcome.ending_text()));
    if let Some(out) = &outcome.out_file {
        text.push_str(&format!("{{out}}: {}\n", describe_kept(out)));
    }
    if let Some(note) = &outcome.out_note {
        text.push_str(&format!("{note}\n"));
    }
    text
}

/// What the reader kept and dropped.
#[derive(Debug, Default)]
struct Captured {
    kept: u64,
    dropped: u64,
    /// Read to EOF (false: stopped at the deadline).
    complete: bool,
}

/// Starts the command and waits for it (at most until `deadline`), its output into `file`.
async fn execute(
    request: &Request,
    argv: &[String],
    deadline: Instant,
    file: &mut tokio::fs::File,
) -> (Ending, Captured) {
    let (command, output) = match command(request, argv) {
        Ok(pair) => pair,
        Err(e) => return (Ending::NotRun(format!("cannot make a pipe: {e}")), Captured::default()),
    };
    let mut child = match GroupChild::spawn(command, "diagnostics command", deadline).await {
        Ok(child) => child,
        Err(e) => return (Ending::NotRun(format!("cannot execute {}: {e}", argv[0])), Captured::default()),
    };
    let (captured, finished) = tokio::join!(capture(output, file, request.max_bytes, deadline), child.finish(deadline));
    let ending = match finished {
        Ok((Exit::Exited(status), _)) => Ending::Exited(status),
        Ok((Exit::TimedOut(_), _)) => Ending::TimedOut,
        Err(e) => Ending::NotRun(format!("cannot wait for it: {e}")),
    };
    (ending, captured)
}

/// The command with stdout and stderr on one pipe, in its own group, as the worker's user;
/// and the pipe's reading end.
fn command(
    request: &Request,
    argv: &[String],
) -> io::Result<(std::process::Command, tokio::net::unix::pipe::Receiver)> {
    let (writer, reader) = tokio::net::unix::pipe::pipe()?;
    let stdout = writer.into_blocking_fd()?;
    let stderr = stdout.try_clone()?;
    let mut command = std::process::Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .current_dir(&request.values.worker_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr));
    crate::group_child::own_group(&mut command);
    if let Some(user) = &request.run_as {
        command.env("USER", &user.name).env("LOGNAME", &user.name);
        crate::sys::switch_user_on_exec(&mut command, user.uid, user.gid, &user.groups);
    }
    Ok((command, reader))
}

/// Reads `pipe` until EOF or `deadline` into `file`, the first `max` bytes kept.
async fn capture(
    mut pipe: impl AsyncRead + Unpin,
    file: &mut tokio::fs::File,
    max: u64,
    deadline: Instant,
) -> Captured {
    let mut captured = Captured::default();
    let mut chunk = vec![0u8; 64 * 1024];
    let read_to_end = async {
        loop {
            match pipe.read(&mut chunk).await {
                Ok(0) => return,
                Ok(n) => {
                    let keep = (n as u64).min(max - captured.kept) as usize;
                    if keep > 0 && file.write_all(&chunk[..keep]).await.is_err() {
                        // The disk refuses: the rest is dropped like output past the cap.
                        captured.dropped += n as u64;
                        continue;
                    }
                    captured.kept += keep as u64;
                    captured.dropped += (n - keep) as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A pipe read does not fail in practice; if it does, what was read is all.
                Err(_) => return,
            }
        }
    };
    let complete = timeout_at(deadline, read_to_end).await.is_ok();
    captured.complete = complete;
    captured
}

/// Copies what the command wrote at `out` (in `dir`) to `kept` (at most `max` bytes); or says
/// why not.
async fn keep_out(dir: File, out: PathBuf, kept: PathBuf, max: u64) -> (Option<Kept>, Option<String>) {
    let copy = tokio::task::spawn_blocking(move || copy_out(&dir, &out, &kept, max));
    match copy.await {
        Ok(Ok(kept)) => (Some(kept), None),
        Ok(Err(note)) => (None, Some(note)),
        Err(e) => (None, Some(format!("{{out}}: the copy failed: {e}"))),
    }
}

fn copy_out(dir: &File, out: &Path, kept: &Path, max: u64) -> Result<Kept, String> {
    use nix::fcntl::OFlag;
    let name = out.file_name().unwrap_or_default();
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let opened = nix::fcntl::openat(dir, name, flags, nix::sys::stat::Mode::empty());
    let source = File::from(opened.map_err(|e| match e {
        nix::errno::Errno::ENOENT => "{out}: the command wrote no file there".to_owned(),
        _ => format!("{{out}}: cannot open {}: {e} (a symlink is not followed)", out.display()),
    })?);
    let len = source.metadata().map_err(|e| format!("{{out}}: {e}"))?;
    if !len.is_file() {
        return Err(format!("{{out}}: {} is not a regular file; not kept", out.display()));
    }
    let mut target = create_file(kept.parent().unwrap_or(Path::new(".")), kept)
        .map_err(|e| format!("{{out}}: cannot create {}: {e}", kept.display()))?;
    let bytes = io::copy(&mut source.take(max), &mut target)
        .map_err(|e| format!("{{out}}: copy to {}: {e}", kept.display()))?;
    Ok(Kept { path: kept.to_owned(), bytes, truncated: len.len() > bytes })
}

/// Removes the run's `{out}` directory, whatever the command left in it.
fn remove_scratch(scratch: &Path) {
    match std::fs::remove_dir_all(scratch) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %scratch.display(), error = %e, "cannot remove a diagnostics run's {{out}} directory")
        }
    }
}

#[cfg(test)]
#[path = "run_tests.rs"]
mod tests;
