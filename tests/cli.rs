//! The binary's command line without ZooKeeper: config checking and exit codes.

use std::path::Path;
use std::process::{Command, Output};

fn gale(args: &[&str], config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gale")).args(args).arg("--config").arg(config).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_example_config_passes_check_config_and_prints_every_section() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gale.toml");
    let out = gale(&["check-config"], &example);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    for section in ["[zookeeper]", "[supervisor]", "[worker]", "[restart]", "[blob]", "[health]", "[logs]", "[admin]"] {
        assert!(text.contains(section), "missing {section} in:\n{text}");
    }
    // The printed effective config is itself a valid config.
    let tmp = tempfile::tempdir().unwrap();
    let again = tmp.path().join("effective.toml");
    std::fs::write(&again, &text).unwrap();
    let out = gale(&["check-config"], &again);
    assert!(out.status.success(), "{}", stderr(&out));
    // Stable apart from the header comment, which names the file it came from.
    let body = |t: &str| t.lines().skip_while(|l| l.starts_with('#')).collect::<Vec<_>>().join("\n");
    assert_eq!(body(&String::from_utf8(out.stdout).unwrap()), body(&text), "effective config is stable");
}

#[test]
fn defaults_are_filled_in_from_a_minimal_file() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("gale.toml");
    std::fs::write(&cfg, "[zookeeper]\nservers = [\"zk1:2181\"]\n").unwrap();
    let out = gale(&["check-config"], &cfg);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    for line in
        ["root = \"/gale\"", "session_timeout_ms = 20000", "slots = [6700, 6701, 6702, 6703]", "heartbeat_secs = 5"]
    {
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }
}

#[test]
fn a_misspelt_key_exits_78_naming_file_line_key_and_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("gale.toml");
    std::fs::write(&cfg, "[zookeeper]\nservers = [\"127.0.0.1:2181\"]\nsesion_timeout_ms = 5000\n").unwrap();
    for cmd in ["check-config", "run"] {
        let out = gale(&[cmd], &cfg);
        assert_eq!(out.status.code(), Some(78), "{cmd}: {}", stderr(&out));
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.contains(&format!("{}:3", cfg.display())), "file and line: {err}");
        assert!(err.contains("sesion_timeout_ms"), "key: {err}");
        assert!(err.contains("session_timeout_ms"), "did you mean: {err}");
    }
}

#[test]
fn an_invalid_value_exits_78_naming_the_key_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("gale.toml");
    std::fs::write(&cfg, "[zookeeper]\nservers = [\"127.0.0.1:2181\"]\n\n[supervisor]\nslots = [6700, 6700]\n")
        .unwrap();
    let out = gale(&["check-config"], &cfg);
    assert_eq!(out.status.code(), Some(78));
    let err = stderr(&out);
    assert!(err.contains(":5") && err.contains("supervisor.slots"), "{err}");
}

#[test]
fn a_missing_config_file_exits_78_naming_the_path() {
    let out = gale(&["check-config"], Path::new("/nonexistent/gale.toml"));
    assert_eq!(out.status.code(), Some(78));
    assert!(stderr(&out).contains("/nonexistent/gale.toml"), "{}", stderr(&out));
}

#[test]
fn usage_errors_exit_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_gale")).arg("no-such-command").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn state_dump_works_without_a_daemon_and_reports_a_missing_store() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("gale.toml");
    std::fs::write(
        &cfg,
        format!(
            "[zookeeper]\nservers = [\"127.0.0.1:2181\"]\n[supervisor]\nlocal_dir = \"{}/local\"\n",
            tmp.path().display()
        ),
    )
    .unwrap();
    let out = gale(&["state", "dump"], &cfg);
    assert_eq!(out.status.code(), Some(1), "no store yet: {}", stderr(&out));
    assert!(stderr(&out).contains("local/state"), "{}", stderr(&out));
    assert!(!tmp.path().join("local").exists(), "dump never creates anything");
}

/// `gale state dump` on the local dirs each release wrote (tests/fixtures/): format 1 shown
/// migrated (worker records without `launched_by`), format 2 as it is; values as JSON.
#[test]
fn state_dump_prints_format_1_and_format_2_states_as_json() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for (release, format) in [("v0.1.0", ": ok, format 1 (shown as format 2)"), ("v0.2.0", ": ok, format 2\n")] {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = tmp.path().join("gale.toml");
        let local = fixtures.join(release).join("running/local");
        let text =
            format!("[zookeeper]\nservers = [\"127.0.0.1:2181\"]\n[supervisor]\nlocal_dir = \"{}\"\n", local.display());
        std::fs::write(&cfg, text).unwrap();
        let out = gale(&["state", "dump"], &cfg);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{release}: {}", stderr(&out));
        assert!(stdout.contains(format), "{release}: {stdout}");
        assert!(stdout.contains("  supervisor-id = \"fixture-running\"\n"), "{release}: {stdout}");
        let workers = stdout.lines().find_map(|l| l.strip_prefix("  workers = ")).expect("a workers line");
        let workers: serde_json::Value = serde_json::from_str(workers).unwrap();
        let records = workers.as_object().unwrap();
        assert_eq!(records.len(), 2, "{release}: {workers}");
        for record in records.values() {
            let launched_by = &record["launched_by"];
            assert_eq!(launched_by.is_null(), release == "v0.1.0", "{release}: {record}");
        }
    }
}
