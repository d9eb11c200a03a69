//! `gale health check`: the node health checks, run once in the foreground (Storm's
//! `node-health-check`), so that an operator can see what the agent would decide, and why,
//! before starting it or while it is down.
//!
//! Design: the very code the agent runs on its timer, [`crate::health::run_checks`] with
//! [`HealthSettings::from_config`], so the verdicts cannot drift apart; this file only prints
//! the report. It needs the config alone: no ZooKeeper, no admin endpoint, no local dir lock,
//! so it works with the agent down (and next to a running one).
//!
//! Invariants:
//! - **The exit code is the verdict:** 0 when the report is healthy (no checks at all, a
//!   missing or empty directory, is healthy, as for the agent), 1 when not, 78 for a bad config.
//! - **Nothing is left running.** Each script runs under its timeout in its own process group
//!   and is killed with it (`health/process.rs`). SIGINT or SIGTERM during the run drops the
//!   run, which kills every script's group, before the command exits.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use super::{CliError, client_runtime, load_config};
use crate::health::{HealthReport, HealthSettings, Outcome, ScriptResult};
use crate::lifecycle::ExitCode;

/// Runs every check once and prints the results, as a table or (`json`) one JSON document.
pub(crate) fn check(config_path: &Path, json: bool) -> Result<ExitCode, CliError> {
    let config = load_config(config_path)?;
    let settings = HealthSettings::from_config(&config.health);
    let report = client_runtime()?.block_on(run_interruptible(&settings))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&to_json(&settings, &report)).expect("serializable"));
    } else {
        print!("{}", render(&settings, &report));
    }
    Ok(if report.healthy { ExitCode::Clean } else { ExitCode::Failure })
}

/// [`crate::health::run_checks`], given up on SIGINT or SIGTERM: the run is dropped (its
/// scripts killed) and the command fails.
async fn run_interruptible(settings: &HealthSettings) -> Result<HealthReport, CliError> {
    use tokio::signal::unix::{SignalKind, signal};
    let cannot = |e: std::io::Error| CliError::new(ExitCode::Failure, format!("cannot handle signals: {e}"));
    let mut int = signal(SignalKind::interrupt()).map_err(cannot)?;
    let mut term = signal(SignalKind::terminate()).map_err(cannot)?;
    let interrupted = |name: &str| {
        CliError::new(ExitCode::Failure, format!("interrupted by {name}: every running health check was killed"))
    };
    // Run --(signal)--> the run future is dropped here, which kills its scripts' groups.
    tokio::select! {
        report = crate::health::run_checks(settings) => Ok(report),
        _ = int.recv() => Err(interrupted("SIGINT")),
        _ = term.recv() => Err(interrupted("SIGTERM")),
    }
}

/// The table: a header naming the directory and the settings, one line per script (name,
/// outcome, time, exit), the first lines of output of each script that did not pass, and a
/// summary line that starts with `healthy` or `unhealthy`.
fn render(settings: &HealthSettings, report: &HealthReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "health checks in {} (timeout {}, fail_on_timeout {})",
        settings.script_dir.display(),
        millis(settings.timeout),
        settings.fail_on_timeout
    );
    let width = report.scripts.iter().map(|s| s.script.chars().count()).max().unwrap_or(0).max("SCRIPT".len());
    if !report.scripts.is_empty() {
        let _ = writeln!(out, "{:<width$}  {:<13}  {:>8}  DETAIL", "SCRIPT", "OUTCOME", "TIME");
    }
    for s in &report.scripts {
        let time = format!("{} ms", s.duration_ms);
        let row = format!("{:<width$}  {:<13}  {time:>8}  {}", s.script, s.outcome.as_str(), detail(s, settings));
        let _ = writeln!(out, "{}", row.trim_end());
        if s.outcome != Outcome::Passed {
            for line in shown_lines(s) {
                let _ = writeln!(out, "    {line}");
            }
        }
    }
    let _ = writeln!(out, "{}", summary(settings, report));
    out
}

/// How the script ended, in words: its exit code or signal, and whether a non-passing outcome
/// still counts as healthy.
fn detail(s: &ScriptResult, settings: &HealthSettings) -> String {
    let mut parts = Vec::new();
    match s.outcome {
        Outcome::TimedOut => parts.push(format!("killed at its {} timeout", millis(settings.timeout))),
        Outcome::ErrorOutput => parts.push("exit 0 but its output starts with ERROR".to_owned()),
        Outcome::Passed | Outcome::Failed | Outcome::CouldNotRun => {}
    }
    match (&s.exit_code, &s.signal) {
        (_, Some(signal)) if s.outcome != Outcome::TimedOut => parts.push(format!("died of {signal}")),
        (Some(code), _) if s.outcome == Outcome::Failed => parts.push(format!("exit {code}")),
        _ => {}
    }
    if s.outcome != Outcome::Passed && s.healthy {
        parts.push("counted as healthy (fail_on_timeout = false)".to_owned());
    }
    parts.join(", ")
}

/// What is shown of a script that did not pass: the heads of stdout and of stderr (stderr
/// lines marked), or the one `output` line (the reason it could not run).
fn shown_lines(s: &ScriptResult) -> Vec<String> {
    let mut lines: Vec<String> = s.stdout_head.iter().map(|l| format!("| {l}")).collect();
    lines.extend(s.stderr_head.iter().map(|l| format!("! {l}")));
    if lines.is_empty() && !s.output.is_empty() {
        lines.push(format!("| {}", s.output));
    }
    lines
}

fn summary(settings: &HealthSettings, report: &HealthReport) -> String {
    let total = report.scripts.len();
    if total == 0 {
        return format!(
            "healthy: no health checks (no executable file in {}, or no such directory)",
            settings.script_dir.display()
        );
    }
    let failing: Vec<&str> = report.scripts.iter().filter(|s| !s.healthy).map(|s| s.script.as_str()).collect();
    if report.healthy {
        let passed = report.scripts.iter().filter(|s| s.outcome == Outcome::Passed).count();
        let mut line = format!("healthy: {passed} of {total} check(s) passed");
        if passed < total {
            let _ = write!(line, ", {} timed out (not counted: fail_on_timeout = false)", total - passed);
        }
        line
    } else {
        format!("unhealthy: {} of {total} check(s) failing: {}", failing.len(), failing.join(", "))
    }
}

/// The JSON form: the settings, the verdict, and each script as in `/status` plus the heads of
/// its output.
fn to_json(settings: &HealthSettings, report: &HealthReport) -> serde_json::Value {
    let scripts: Vec<serde_json::Value> = report
        .scripts
        .iter()
        .map(|s| {
            let mut value = serde_json::to_value(s).expect("serializable");
            value["stdout_head"] = serde_json::json!(s.stdout_head);
            value["stderr_head"] = serde_json::json!(s.stderr_head);
            value
        })
        .collect();
    serde_json::json!({
        "healthy": report.healthy,
        "script_dir": settings.script_dir,
        "timeout_ms": u64::try_from(settings.timeout.as_millis()).unwrap_or(u64::MAX),
        "fail_on_timeout": settings.fail_on_timeout,
        "at_ms": report.at_ms,
        "scripts": scripts,
    })
}

fn millis(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(script: &str, outcome: Outcome, healthy: bool) -> ScriptResult {
        ScriptResult {
            script: script.to_owned(),
            outcome,
            healthy,
            exit_code: None,
            signal: None,
            output: String::new(),
            duration_ms: 12,
            at_ms: 0,
            stdout_head: Vec::new(),
            stderr_head: Vec::new(),
        }
    }

    fn settings(fail_on_timeout: bool) -> HealthSettings {
        HealthSettings { script_dir: "/checks".into(), timeout: Duration::from_millis(500), fail_on_timeout }
    }

    #[test]
    fn a_failing_script_shows_its_exit_and_its_output_heads() {
        let mut failed = result("disk.sh", Outcome::Failed, false);
        failed.exit_code = Some(2);
        failed.stdout_head = vec!["disk full".into()];
        failed.stderr_head = vec!["df: oops".into()];
        let report = HealthReport {
            healthy: false,
            scripts: vec![failed, result("a-long-name.sh", Outcome::Passed, true)],
            ..HealthReport::default()
        };
        let text = render(&settings(true), &report);
        assert!(
            text.contains("disk.sh         failed            12 ms  exit 2\n    | disk full\n    ! df: oops\n"),
            "{text}"
        );
        assert!(text.contains("a-long-name.sh  passed            12 ms\n"), "{text}");
        assert!(text.ends_with("unhealthy: 1 of 2 check(s) failing: disk.sh\n"), "{text}");
    }

    #[test]
    fn a_tolerated_timeout_is_healthy_and_said_so() {
        let mut hung = result("hang.sh", Outcome::TimedOut, true);
        hung.signal = Some("SIGKILL".into());
        let report = HealthReport { healthy: true, scripts: vec![hung], ..HealthReport::default() };
        let text = render(&settings(false), &report);
        assert!(text.contains("killed at its 500 ms timeout, counted as healthy (fail_on_timeout = false)"), "{text}");
        assert!(
            text.ends_with("healthy: 0 of 1 check(s) passed, 1 timed out (not counted: fail_on_timeout = false)\n")
        );
    }

    #[test]
    fn no_scripts_is_healthy_and_names_the_directory() {
        let text = render(&settings(true), &HealthReport { healthy: true, ..HealthReport::default() });
        assert!(!text.contains("SCRIPT"), "{text}");
        assert!(text.ends_with("healthy: no health checks (no executable file in /checks, or no such directory)\n"));
    }

    #[test]
    fn could_not_run_shows_the_reason() {
        let mut broken = result("gone.sh", Outcome::CouldNotRun, false);
        broken.output = "cannot execute: Permission denied".into();
        assert_eq!(shown_lines(&broken), vec!["| cannot execute: Permission denied".to_owned()]);
    }

    #[test]
    fn the_json_form_carries_the_heads() {
        let mut failed = result("disk.sh", Outcome::Failed, false);
        failed.stdout_head = vec!["disk full".into()];
        let report = HealthReport { healthy: false, scripts: vec![failed], ..HealthReport::default() };
        let json = to_json(&settings(true), &report);
        assert_eq!(json["healthy"], false);
        assert_eq!(json["timeout_ms"], 500);
        assert_eq!(json["scripts"][0]["outcome"], "failed");
        assert_eq!(json["scripts"][0]["stdout_head"][0], "disk full");
        assert_eq!(json["scripts"][0]["stderr_head"], serde_json::json!([]));
    }
}
