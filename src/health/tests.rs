//! Health checks against real shell scripts in a temp dir: verdicts, output capture, timeouts
//! that leave no process behind, concurrency, and the periodic task.
//!
//! Real processes need the real clock, so timing bounds are generous (a loaded 2-core machine).

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use super::*;

const LONG: Duration = Duration::from_secs(20);

fn settings(dir: &Path, timeout: Duration) -> HealthSettings {
    HealthSettings { script_dir: dir.to_owned(), timeout, fail_on_timeout: true }
}

/// Writes `#!/bin/sh` + `body` to `dir/name` with `mode`.
fn script(dir: &Path, name: &str, body: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

fn names(report: &HealthReport) -> Vec<&str> {
    report.scripts.iter().map(|s| s.script.as_str()).collect()
}

fn result<'a>(report: &'a HealthReport, name: &str) -> &'a ScriptResult {
    report.scripts.iter().find(|s| s.script == name).unwrap_or_else(|| panic!("no result for {name}: {report:#?}"))
}

/// Reads the pid a script wrote into `file`.
fn pid_in(file: &Path) -> u32 {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    text.trim().parse().unwrap()
}

/// Running or sleeping: not exited (zombie) and not gone.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
            !matches!(state, Some("Z" | "X"))
        }
        Err(_) => false,
    }
}

#[tokio::test]
async fn judges_pass_failure_and_error_output_and_skips_what_is_not_a_check() {
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "ok.sh", "echo all good; exit 0", 0o755);
    script(dir.path(), "fail.sh", "echo 'disk /data missing' >&2; exit 3", 0o755);
    script(dir.path(), "err.sh", "echo 'ERROR disk full'; exit 0", 0o700);
    script(dir.path(), "killed.sh", "kill -TERM $$", 0o755);
    script(dir.path(), "noexec.sh", "exit 1", 0o644);
    script(dir.path(), ".hidden.sh", "exit 1", 0o755);
    std::fs::create_dir(dir.path().join("subdir")).unwrap();

    let report = run_checks(&settings(dir.path(), LONG)).await;

    assert_eq!(names(&report), ["err.sh", "fail.sh", "killed.sh", "ok.sh"], "sorted, checks only");
    assert!(!report.healthy);
    let ok = result(&report, "ok.sh");
    assert_eq!(
        (&ok.outcome, ok.healthy, ok.exit_code, ok.output.as_str()),
        (&Outcome::Passed, true, Some(0), "all good")
    );
    let fail = result(&report, "fail.sh");
    assert_eq!((&fail.outcome, fail.healthy, fail.exit_code), (&Outcome::Failed, false, Some(3)));
    assert_eq!(fail.output, "disk /data missing", "stderr when stdout is empty");
    let err = result(&report, "err.sh");
    assert_eq!((&err.outcome, err.healthy, err.exit_code), (&Outcome::ErrorOutput, false, Some(0)));
    assert_eq!(err.output, "ERROR disk full");
    let killed = result(&report, "killed.sh");
    assert_eq!(
        (&killed.outcome, killed.exit_code, killed.signal.as_deref()),
        (&Outcome::Failed, None, Some("SIGTERM"))
    );
    assert!(report.scripts.iter().all(|s| s.at_ms > 0 && s.duration_ms < 10_000), "{report:#?}");
}

#[tokio::test]
async fn only_passing_checks_make_a_healthy_report() {
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "a", "exit 0", 0o755);
    script(dir.path(), "b", "echo 'fine, no ERROR here'", 0o755);
    let report = run_checks(&settings(dir.path(), LONG)).await;
    assert!(report.healthy, "{report:#?}");
    assert_eq!(names(&report), ["a", "b"]);
}

#[tokio::test]
async fn a_missing_or_empty_directory_has_no_checks_and_is_healthy() {
    let dir = tempfile::tempdir().unwrap();
    for d in [dir.path().to_owned(), dir.path().join("missing")] {
        let report = run_checks(&settings(&d, LONG)).await;
        assert!(report.healthy && report.scripts.is_empty(), "{}: {report:#?}", d.display());
    }
}

#[tokio::test]
async fn an_unreadable_directory_is_unhealthy_and_named() {
    // A file where the directory should be: ENOTDIR even for root (who reads any mode).
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = dir.path().join("checks");
    std::fs::write(&not_a_dir, "").unwrap();
    let report = run_checks(&settings(&not_a_dir, LONG)).await;
    assert!(!report.healthy);
    assert_eq!(report.scripts.len(), 1);
    let r = &report.scripts[0];
    assert_eq!((&r.outcome, r.script.as_str()), (&Outcome::CouldNotRun, not_a_dir.to_str().unwrap()));
    assert!(r.output.contains("cannot read the health check directory"), "{}", r.output);
}

#[tokio::test]
async fn a_file_that_cannot_be_executed_is_unhealthy() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, [0x7f, 0x00, 0xde, 0xad, 0xbe, 0xef, 0x00, 0xff]).unwrap();
    std::fs::set_permissions(&garbage, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink(dir.path().join("nowhere"), dir.path().join("dangling")).unwrap();

    let report = run_checks(&settings(dir.path(), LONG)).await;

    assert!(!report.healthy);
    assert_eq!(names(&report), ["dangling", "garbage"]);
    // Garbage: ENOEXEC, then execvp's /bin/sh fallback fails on it; whatever the kernel and
    // libc make of it, it must not pass.
    let garbage = result(&report, "garbage");
    assert!(matches!(garbage.outcome, Outcome::CouldNotRun | Outcome::Failed) && !garbage.healthy, "{garbage:#?}");
    let dangling = result(&report, "dangling");
    assert_eq!((&dangling.outcome, dangling.healthy), (&Outcome::CouldNotRun, false));
    assert!(dangling.output.starts_with("cannot execute: "), "{dangling:#?}");
}

#[tokio::test]
async fn a_script_without_a_shebang_runs_under_sh() {
    // Documents the POSIX execvp fallback (glibc, musl): such a file is a check, like in Storm.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plain");
    std::fs::write(&path, "echo ERROR from sh\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let report = run_checks(&settings(dir.path(), LONG)).await;
    let r = result(&report, "plain");
    assert_eq!((&r.outcome, r.output.as_str()), (&Outcome::ErrorOutput, "ERROR from sh"));
}

#[tokio::test]
async fn a_timed_out_check_is_killed_with_everything_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let pids = tempfile::tempdir().unwrap();
    let (own, child) = (pids.path().join("own"), pids.path().join("child"));
    script(
        dir.path(),
        "hang.sh",
        &format!(
            "sleep 100 & echo $! > {child}; echo $$ > {own}; echo still working; sleep 30",
            child = child.display(),
            own = own.display()
        ),
        0o755,
    );

    for fail_on_timeout in [true, false] {
        let started = Instant::now();
        let report =
            run_checks(&HealthSettings { fail_on_timeout, ..settings(dir.path(), Duration::from_millis(300)) }).await;
        let took = started.elapsed();

        let r = result(&report, "hang.sh");
        assert_eq!(r.outcome, Outcome::TimedOut);
        assert_eq!((r.healthy, report.healthy), (!fail_on_timeout, !fail_on_timeout));
        assert_eq!((r.exit_code, r.signal.as_deref()), (None, Some("SIGKILL")));
        assert_eq!(r.output, "still working");
        assert!(took < Duration::from_secs(5), "took {took:?}");
        // Checked at once: run_checks returns only when nothing of the group is alive.
        for file in [&own, &child] {
            let pid = pid_in(file);
            assert!(!alive(pid), "{} (pid {pid}) survived the timeout", file.display());
            std::fs::remove_file(file).unwrap();
        }
    }
}

#[tokio::test]
async fn a_check_that_exits_leaves_nothing_behind_even_holding_its_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let pids = tempfile::tempdir().unwrap();
    let child = pids.path().join("child");
    // The background sleep inherits stdout: the pipe stays open after the script exits.
    script(dir.path(), "bg.sh", &format!("sleep 100 & echo $! > {}; echo ok", child.display()), 0o755);

    let started = Instant::now();
    let report = run_checks(&settings(dir.path(), LONG)).await;

    assert!(started.elapsed() < Duration::from_secs(5), "waited for the grandchild's pipe: {:?}", started.elapsed());
    let r = result(&report, "bg.sh");
    assert_eq!((&r.outcome, r.output.as_str()), (&Outcome::Passed, "ok"));
    assert!(!alive(pid_in(&child)), "the backgrounded child survived");
}

#[tokio::test]
async fn a_process_that_left_the_group_holding_stdout_delays_the_result_only_to_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let pids = tempfile::tempdir().unwrap();
    let escaped = pids.path().join("escaped");
    // `setsid` puts the sleep in a session of its own: out of reach of the group kill.
    script(dir.path(), "escape.sh", &format!("setsid sleep 30 & echo $! > {}; echo ok", escaped.display()), 0o755);

    let started = Instant::now();
    let report = run_checks(&settings(dir.path(), Duration::from_secs(1))).await;
    let took = started.elapsed();

    let pid = pid_in(&escaped);
    // Ours to clean up: this test started it.
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
    assert!(took < Duration::from_secs(5), "the pipe read outlived the deadline: {took:?}");
    let r = result(&report, "escape.sh");
    assert_eq!((&r.outcome, r.output.as_str()), (&Outcome::Passed, "ok"), "judged by the script's own exit");
    assert!(r.duration_ms < 1000, "the script itself ended at once: {r:#?}");
}

#[tokio::test]
async fn dropping_a_run_kills_its_scripts() {
    let dir = tempfile::tempdir().unwrap();
    let pids = tempfile::tempdir().unwrap();
    let own = pids.path().join("own");
    script(dir.path(), "slow.sh", &format!("echo $$ > {}; sleep 30", own.display()), 0o755);

    let settings = settings(dir.path(), LONG);
    let run = run_checks(&settings);
    let wait_for_pid = async {
        while std::fs::read_to_string(&own).map_or(true, |s| !s.ends_with('\n')) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::select! {
        report = run => panic!("the script should still run: {report:#?}"),
        _ = tokio::time::timeout(Duration::from_secs(10), wait_for_pid) => {}
    }
    // `run` is dropped here; SIGKILL was sent synchronously, death follows within moments.
    let pid = pid_in(&own);
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) {
        assert!(Instant::now() < deadline, "pid {pid} survived the drop of its run");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn checks_run_concurrently() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["one", "two", "three"] {
        script(dir.path(), name, "sleep 1", 0o755);
    }
    let started = Instant::now();
    let report = run_checks(&settings(dir.path(), LONG)).await;
    let took = started.elapsed();
    assert!(report.healthy && report.scripts.len() == 3, "{report:#?}");
    assert!(took < Duration::from_millis(2500), "three 1 s checks took {took:?}: not concurrent");
}

#[tokio::test]
async fn a_megabyte_of_output_neither_blocks_nor_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    script(
        dir.path(),
        "chatty.sh",
        "echo first line; head -c 1048576 /dev/zero | tr '\\0' x; head -c 1048576 /dev/zero >&2; echo; echo ERROR late",
        0o755,
    );
    let started = Instant::now();
    let report = run_checks(&settings(dir.path(), LONG)).await;
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    let r = result(&report, "chatty.sh");
    assert_eq!((&r.outcome, r.output.as_str()), (&Outcome::Passed, "first line"), "only the first line counts");
}

#[tokio::test]
async fn the_output_is_the_first_non_blank_line_cut_to_200_chars() {
    let dir = tempfile::tempdir().unwrap();
    script(
        dir.path(),
        "long.sh",
        &format!("echo; echo '  '; printf '{}\\r\\nsecond\\n'; exit 1", "é".repeat(300)),
        0o755,
    );
    let report = run_checks(&settings(dir.path(), LONG)).await;
    assert_eq!(result(&report, "long.sh").output, "é".repeat(OUTPUT_CHARS));
}

#[tokio::test]
async fn the_heads_keep_the_first_non_blank_lines_of_each_stream_and_are_not_serialized() {
    let dir = tempfile::tempdir().unwrap();
    script(
        dir.path(),
        "chatty.sh",
        "for i in 1 2 3 4 5 6 7; do echo \"out $i\"; echo; echo \"err $i\" >&2; done; exit 1",
        0o755,
    );
    let report = run_checks(&settings(dir.path(), LONG)).await;
    let r = result(&report, "chatty.sh");
    assert_eq!(r.stdout_head, (1..=HEAD_LINES).map(|i| format!("out {i}")).collect::<Vec<_>>());
    assert_eq!(r.stderr_head, (1..=HEAD_LINES).map(|i| format!("err {i}")).collect::<Vec<_>>());
    let json = serde_json::to_value(r).unwrap();
    assert!(json.get("stdout_head").is_none() && json.get("stderr_head").is_none(), "/status changed: {json}");
}

#[test]
fn the_agents_systemd_variables_are_not_inherited() {
    let command = process::command(Path::new("/bin/true"), Path::new("/"));
    let removed: Vec<_> = command.get_envs().filter(|(_, value)| value.is_none()).map(|(k, _)| k).collect();
    for name in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "LISTEN_FDS"] {
        assert!(removed.iter().any(|k| *k == name), "{name} not removed: {removed:?}");
    }
}

#[test]
fn judging_follows_the_exit_and_the_first_line() {
    let finished = |exit, stdout: &str| {
        Ok(Finished {
            exit,
            stdout: stdout.into(),
            stderr: b"from stderr".to_vec(),
            duration: Duration::from_millis(7),
        })
    };
    let exited = |code: i32| Exit::Exited(ExitStatus::from_raw(code << 8));
    let judged = |run, fail_on_timeout| {
        let r = judge("s".into(), run, 1, fail_on_timeout);
        (r.outcome, r.healthy, r.output)
    };
    assert_eq!(judged(finished(exited(0), "\nERROR x\n"), true), (Outcome::ErrorOutput, false, "ERROR x".into()));
    assert_eq!(judged(finished(exited(0), " ERROR x"), true), (Outcome::Passed, true, " ERROR x".into()));
    assert_eq!(judged(finished(exited(0), "ok\nERROR x"), true), (Outcome::Passed, true, "ok".into()));
    assert_eq!(judged(finished(exited(2), "ERROR x"), true), (Outcome::Failed, false, "ERROR x".into()));
    assert_eq!(judged(finished(exited(1), ""), true), (Outcome::Failed, false, "from stderr".into()));
    assert_eq!(judged(finished(Exit::TimedOut(None), ""), true), (Outcome::TimedOut, false, "from stderr".into()));
    assert!(judged(finished(Exit::TimedOut(None), ""), false).1, "an ignored timeout is healthy");
    let spawn = Err(RunError::Spawn { source: std::io::Error::from_raw_os_error(nix::libc::EACCES) });
    let (outcome, healthy, output) = judged(spawn, false);
    assert_eq!((outcome, healthy), (Outcome::CouldNotRun, false));
    assert!(output.starts_with("cannot execute: Permission denied"), "{output}");
}

#[test]
fn outcomes_serialize_as_snake_case() {
    for outcome in [Outcome::Passed, Outcome::Failed, Outcome::ErrorOutput, Outcome::TimedOut, Outcome::CouldNotRun] {
        assert_eq!(serde_json::to_value(&outcome).unwrap(), outcome.as_str());
    }
}

#[tokio::test]
async fn the_periodic_task_reports_every_run_and_sees_a_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join(".ready");
    script(
        dir.path(),
        "flag.sh",
        &format!("test -e {} || {{ echo 'not ready'; exit 1; }}; echo ready", flag.display()),
        0o755,
    );

    let interval = Duration::from_millis(200);
    let (_settings_tx, settings_rx) = watch::channel((settings(dir.path(), LONG), interval));
    let (report_tx, mut report_rx) = watch::channel(HealthReport::default());
    let (stopper, stop_rx) = crate::shutdown::Stopper::new();
    let task = tokio::spawn(run_periodically(settings_rx, report_tx, stop_rx));

    let first = tokio::time::timeout(LONG, report_rx.wait_for(|r| r.runs >= 1)).await.unwrap().unwrap().clone();
    assert!(!first.healthy, "{first:#?}");
    assert_eq!(result(&first, "flag.sh").output, "not ready");

    std::fs::write(&flag, "").unwrap();
    let recovered = tokio::time::timeout(LONG, report_rx.wait_for(|r| r.healthy)).await.unwrap().unwrap().clone();
    assert!(recovered.runs > first.runs, "{recovered:#?}");
    assert_eq!(result(&recovered, "flag.sh").outcome, Outcome::Passed);
    let later = recovered.runs + 2;
    tokio::time::timeout(LONG, report_rx.wait_for(|r| r.runs >= later)).await.unwrap().unwrap();

    stopper.stop();
    tokio::time::timeout(LONG, task).await.expect("the task stops when told").unwrap();
}

#[tokio::test]
async fn the_periodic_task_takes_new_settings_and_stops_during_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let pids = tempfile::tempdir().unwrap();
    let own = pids.path().join("own");
    let (settings_tx, settings_rx) = watch::channel((settings(dir.path(), LONG), Duration::from_secs(3600)));
    let (report_tx, mut report_rx) = watch::channel(HealthReport::default());
    let (stopper, stop_rx) = crate::shutdown::Stopper::new();
    let task = tokio::spawn(run_periodically(settings_rx, report_tx, stop_rx));

    // The first run is immediate and finds no checks.
    let first = tokio::time::timeout(LONG, report_rx.wait_for(|r| r.runs == 1)).await.unwrap().unwrap().clone();
    assert!(first.healthy && first.scripts.is_empty(), "{first:#?}");

    // A shorter interval re-arms the hour-long timer; the new run starts a slow script.
    script(dir.path(), "slow.sh", &format!("echo $$ > {}; sleep 30", own.display()), 0o755);
    settings_tx.send_replace((settings(dir.path(), LONG), Duration::from_millis(100)));
    let deadline = Instant::now() + LONG;
    while std::fs::read_to_string(&own).map_or(true, |s| !s.ends_with('\n')) {
        assert!(Instant::now() < deadline, "the new interval never took effect");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Stopping mid-run returns without waiting for the script, and kills it.
    stopper.stop();
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("stops during a run").unwrap();
    let pid = pid_in(&own);
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) {
        assert!(Instant::now() < deadline, "pid {pid} survived the stop");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(report_rx.borrow().runs, 1, "the interrupted run is not reported");
}
