//! Node health checks (SPEC §2 `[health]`, Storm's `storm.health.check.dir`): every executable
//! file in a directory is a probe; the node is healthy while every probe passes.
//!
//! Design: [`run_checks`] lists the directory and runs every script at once, each under its own
//! timeout, and returns a [`HealthReport`]; it decides nothing about the node. What an
//! unhealthy node does (drain, or exit 3) is the caller's business. [`run_periodically`] is
//! the task that runs the checks on a timer and publishes each report on a `watch` channel.
//! The process edge (spawn, capture, kill, reap) is `health/process.rs`.
//!
//! What counts as a check: a regular file (a symlink is followed) with any execute bit whose
//! name does not start with `.`. It is run with argv `[path]`, cwd the script directory, stdin
//! `/dev/null`, the agent's environment minus systemd's variables addressed to the agent, in a
//! session and process group of its own. A text file without a `#!` line is run by `/bin/sh`
//! (the POSIX `execvp` fallback std's spawn goes through, as Java's does for Storm).
//!
//! Verdicts, per script ([`Outcome`]):
//! - exits 0 → `passed`, unless the first non-blank line of its stdout starts with `ERROR`
//!   → `error_output` (Storm's `ERROR` prefix; Storm itself scans every line, and only of a
//!   script that exited non-zero, which this stricter rule already counts as `failed`);
//! - exits non-zero or dies of a signal → `failed`;
//! - still running at the timeout → its process group is killed → `timed_out`, which counts as
//!   healthy only with `fail_on_timeout = false`;
//! - cannot be started (no permission, vanished, a dangling symlink) → `could_not_run`.
//!
//! Invariants:
//! - **Operators must notice a broken setup.** A missing or empty directory means "no checks"
//!   (healthy); a directory that exists but cannot be read is unhealthy, with one
//!   `could_not_run` entry naming the directory and the error.
//! - **A check leaves nothing behind.** When [`run_checks`] returns, or its future is dropped,
//!   every script's process group has been sent SIGKILL, and on return nothing in those groups
//!   is alive (see `health/process.rs` for the limits: processes that leave the group, uninterruptible
//!   sleep).
//! - **A run is bounded**: about `timeout` plus `group_child::KILL_GRACE` (2 s), however the scripts
//!   behave.

mod process;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::model::unix_ms;
use crate::shutdown::Shutdown;
use process::{Exit, Finished, RunError};

/// At most this many characters of a script's output line are kept in its result.
pub(crate) const OUTPUT_CHARS: usize = 200;

/// At most this many lines of stdout, and as many of stderr, are kept in a result's
/// [`ScriptResult::stdout_head`] and [`ScriptResult::stderr_head`].
pub(crate) const HEAD_LINES: usize = 5;

/// What [`run_checks`] needs from the `[health]` config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HealthSettings {
    /// Absolute (config validation); a relative one is taken from the agent's cwd.
    pub script_dir: PathBuf,
    /// Per script, from its start.
    pub timeout: Duration,
    pub fail_on_timeout: bool,
}

impl HealthSettings {
    pub(crate) fn from_config(c: &crate::config::HealthConfig) -> Self {
        HealthSettings { script_dir: c.script_dir.clone(), timeout: c.timeout, fail_on_timeout: c.fail_on_timeout }
    }
}

/// How one script's run ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Outcome {
    Passed,
    /// Non-zero exit, or death by a signal.
    Failed,
    /// Exit 0, but the first line of stdout starts with `ERROR`.
    ErrorOutput,
    /// Still running at the timeout; its process group was killed.
    TimedOut,
    /// Could not be started (or waited for), or the script directory could not be read.
    CouldNotRun,
}

impl Outcome {
    /// The name used in JSON and logs.
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Failed => "failed",
            Outcome::ErrorOutput => "error_output",
            Outcome::TimedOut => "timed_out",
            Outcome::CouldNotRun => "could_not_run",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One script's verdict.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct ScriptResult {
    /// The file name (or, for an unreadable directory, the directory's path).
    pub script: String,
    pub outcome: Outcome,
    pub healthy: bool,
    pub exit_code: Option<i32>,
    /// `"SIGKILL"`… when the script died of a signal (a timed-out script shows our SIGKILL).
    pub signal: Option<String>,
    /// The first non-blank line of stdout, or of stderr when stdout has none, at most
    /// [`OUTPUT_CHARS`] characters; for `could_not_run`, the reason.
    pub output: String,
    pub duration_ms: u64,
    /// Unix ms when the script was started.
    pub at_ms: u64,
    /// The first [`HEAD_LINES`] non-blank lines of stdout, each cut like `output`: what
    /// `gale health check` shows of a script that did not pass. Not in `/status` (which
    /// keeps its one `output` line per script), hence not serialized.
    #[serde(skip)]
    pub stdout_head: Vec<String>,
    /// The same of stderr.
    #[serde(skip)]
    pub stderr_head: Vec<String>,
}

/// The verdict of one run of every check. `Default` (`runs == 0`) means "not checked yet".
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Default)]
pub(crate) struct HealthReport {
    /// Every script is healthy (true with no scripts).
    pub healthy: bool,
    /// Sorted by script name.
    pub scripts: Vec<ScriptResult>,
    /// Unix ms when the run finished.
    pub at_ms: u64,
    /// Runs so far of [`run_periodically`] (this one included); 0 from [`run_checks`] alone.
    pub runs: u64,
}

/// Runs every check in `settings.script_dir` concurrently and reports. Never fails: every
/// problem is a result in the report. See the module docs for the rules.
pub(crate) async fn run_checks(settings: &HealthSettings) -> HealthReport {
    let dir = std::path::absolute(&settings.script_dir).unwrap_or_else(|_| settings.script_dir.clone());
    let scripts = match list_scripts(&dir) {
        Ok(scripts) => scripts,
        Err(e) => {
            let output = truncate(&format!("cannot read the health check directory: {e}"));
            let result = ScriptResult {
                script: dir.display().to_string(),
                outcome: Outcome::CouldNotRun,
                healthy: false,
                exit_code: None,
                signal: None,
                output,
                duration_ms: 0,
                at_ms: unix_ms(),
                stdout_head: Vec::new(),
                stderr_head: Vec::new(),
            };
            return HealthReport { healthy: false, scripts: vec![result], at_ms: unix_ms(), runs: 0 };
        }
    };
    let runs = scripts.into_iter().map(|(name, path)| {
        let span = info_span!("health_check", script = %name);
        let dir = &dir;
        async move {
            let at_ms = unix_ms();
            let run = process::run(&path, dir, settings.timeout).await;
            judge(name, run, at_ms, settings.fail_on_timeout)
        }
        .instrument(span)
    });
    // `list_scripts` sorted them and `join_all` keeps the order.
    let scripts = join_all(runs).await;
    HealthReport { healthy: scripts.iter().all(|s| s.healthy), scripts, at_ms: unix_ms(), runs: 0 }
}

/// `(file name, path)` of every check in `dir`, sorted by name. A missing directory has none;
/// any other error reading it is returned.
fn list_scripts(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    use std::os::unix::fs::PermissionsExt;

    // Blocking reads on the runtime: a local directory of a few entries, once per interval.
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut scripts = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        // Follows symlinks. A dangling one stays in the list: starting it fails, and that is
        // reported rather than silently skipped.
        if let Ok(meta) = std::fs::metadata(&path) {
            if !meta.is_file() {
                continue;
            }
            if meta.permissions().mode() & 0o111 == 0 {
                debug!(script = %name, "not executable, so not a health check: skipped");
                continue;
            }
        }
        scripts.push((name, path));
    }
    scripts.sort();
    Ok(scripts)
}

/// Turns how a script's run ended into its result (pure, apart from the log line).
fn judge(script: String, run: Result<Finished, RunError>, at_ms: u64, fail_on_timeout: bool) -> ScriptResult {
    let finished = match run {
        Ok(finished) => finished,
        Err(e) => {
            return ScriptResult {
                script,
                outcome: Outcome::CouldNotRun,
                healthy: false,
                exit_code: None,
                signal: None,
                output: truncate(&e.to_string()),
                duration_ms: 0,
                at_ms,
                stdout_head: Vec::new(),
                stderr_head: Vec::new(),
            };
        }
    };
    let stdout_line = first_line(&finished.stdout);
    let (outcome, status) = match finished.exit {
        Exit::Exited(status) if status.success() => {
            if stdout_line.as_deref().is_some_and(|line| line.starts_with("ERROR")) {
                (Outcome::ErrorOutput, Some(status))
            } else {
                (Outcome::Passed, Some(status))
            }
        }
        Exit::Exited(status) => (Outcome::Failed, Some(status)),
        Exit::TimedOut(status) => (Outcome::TimedOut, status),
    };
    let (exit_code, signal) = status.map(crate::worker::describe).unwrap_or((None, None));
    ScriptResult {
        script,
        healthy: match outcome {
            Outcome::Passed => true,
            Outcome::TimedOut => !fail_on_timeout,
            Outcome::Failed | Outcome::ErrorOutput | Outcome::CouldNotRun => false,
        },
        outcome,
        exit_code,
        signal: signal.map(crate::worker::signal_name),
        output: stdout_line.or_else(|| first_line(&finished.stderr)).unwrap_or_default(),
        duration_ms: finished.duration.as_millis().try_into().unwrap_or(u64::MAX),
        at_ms,
        stdout_head: head(&finished.stdout),
        stderr_head: head(&finished.stderr),
    }
}

/// The first line with something on it (trailing whitespace and `\r` dropped), truncated to
/// [`OUTPUT_CHARS`]; invalid UTF-8 is replaced.
fn first_line(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    text.lines().map(str::trim_end).find(|line| !line.is_empty()).map(truncate)
}

/// The first [`HEAD_LINES`] lines with something on them, each as [`first_line`] cuts it.
fn head(bytes: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    text.lines().map(str::trim_end).filter(|line| !line.is_empty()).take(HEAD_LINES).map(truncate).collect()
}

fn truncate(text: &str) -> String {
    text.chars().take(OUTPUT_CHARS).collect()
}

/// Polls every future in the same task until all are done; outputs in input order.
///
/// Not spawned tasks, on purpose: dropping the joined future drops every script's future at
/// once, and with it (synchronously) every script's process group (module invariant). A few
/// scripts are polled per wake-up, so the O(n) re-poll costs nothing.
async fn join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending { Poll::Pending } else { Poll::Ready(()) }
    })
    .await;
    outputs.into_iter().map(|output| output.expect("every future completed")).collect()
}

/// The health task: runs the checks at once, then every interval, and publishes every report
/// on `report` (with `runs` counting up from 1), until `stop` becomes true or its sender is
/// dropped. Running scripts are killed when it stops (their future is dropped).
///
/// `settings` carries `(settings, interval)`. A change takes effect at the next run; a new
/// interval re-arms the timer from the start of the last run (so a shorter one may run the
/// checks at once). If its sender is dropped, the last value stays. Runs never overlap: a run
/// longer than the interval is followed at once by the next one.
///
/// Logs each script whose outcome changed: a warning when it is no longer `passed` (with its
/// output), info when it passes again.
pub(crate) async fn run_periodically(
    mut settings: watch::Receiver<(HealthSettings, Duration)>,
    report: watch::Sender<HealthReport>,
    mut stop: Shutdown,
) {
    let (mut current, mut interval) = settings.borrow_and_update().clone();
    let mut settings_open = true;
    let mut last_start: Option<Instant> = None;
    let mut next = Instant::now();
    let mut outcomes = BTreeMap::new();
    let mut runs = 0u64;
    loop {
        // Idle --(timer)--> run; --(settings)--> idle, maybe re-armed; --(stop)--> return.
        loop {
            tokio::select! {
                biased;
                _ = stop.wait() => return,
                changed = settings.changed(), if settings_open => match changed {
                    Ok(()) => {
                        let (new_settings, new_interval) = settings.borrow_and_update().clone();
                        if new_interval != interval {
                            info!(interval = ?new_interval, "health check interval changed");
                            if let Some(start) = last_start {
                                next = start + new_interval;
                            }
                        }
                        (current, interval) = (new_settings, new_interval);
                    }
                    Err(_closed) => settings_open = false,
                },
                () = tokio::time::sleep_until(next) => break,
            }
        }
        let start = Instant::now();
        last_start = Some(start);
        // Run --(stop)--> return: dropping the run kills its scripts.
        let result = tokio::select! {
            biased;
            _ = stop.wait() => return,
            result = run_checks(&current) => result,
        };
        runs += 1;
        log_changes(&mut outcomes, &result);
        report.send_replace(HealthReport { runs, ..result });
        next = start + interval;
    }
}

/// Logs the scripts whose outcome differs from `outcomes` (the previous run's), and updates it.
fn log_changes(outcomes: &mut BTreeMap<String, Outcome>, report: &HealthReport) {
    for r in &report.scripts {
        let before = outcomes.insert(r.script.clone(), r.outcome.clone());
        if before.as_ref() == Some(&r.outcome) {
            continue;
        }
        let was = before.as_ref().map_or("new", Outcome::as_str);
        match r.outcome {
            Outcome::Passed if before.is_none() => debug!(script = %r.script, "health check passes"),
            Outcome::Passed => info!(script = %r.script, was, "health check passes again"),
            _ => warn!(
                script = %r.script,
                outcome = %r.outcome,
                healthy = r.healthy,
                exit_code = ?r.exit_code,
                signal = ?r.signal,
                output = %r.output,
                was,
                "health check {}{}",
                r.outcome,
                if r.healthy { " (counted as healthy: fail_on_timeout = false)" } else { "" }
            ),
        }
    }
    outcomes.retain(|script, _| {
        let present = report.scripts.iter().any(|r| &r.script == script);
        if !present {
            info!(script = %script, "health check removed");
        }
        present
    });
}

#[cfg(test)]
mod tests;
