//! Health checks end to end: real scripts in the agent's `health.script_dir`, the real binary,
//! real ZooKeeper, real workers; and `gale health check`, which runs the same checks once
//! with no agent and no ZooKeeper at all.

use std::path::Path;
use std::time::Duration;

use crate::common::*;
use serde_json::json;
use zookeeper_client as zkc;

const LONG: Duration = Duration::from_secs(60);

/// Logs its start and exit times (ns) and, with `MODE=crash`, exits after 0.3 s.
const WORKER_SH: &str = r#"echo "start $(date +%s%N)"
case "$MODE" in crash) sleep 0.3; echo "exit $(date +%s%N)"; exit 1;; *) exec /bin/sleep 1000;; esac"#;

struct Case(TestAgent);

impl std::ops::Deref for Case {
    type Target = TestAgent;
    fn deref(&self) -> &TestAgent {
        &self.0
    }
}

impl Case {
    fn new(name: &str, health: &str) -> Case {
        let case = Case(TestAgent::new("h", name));
        case.edit(|text| {
            let text = text.replacen("[health]\n", &format!("[health]\ninterval_secs = 1\n{health}\n"), 1);
            format!("{text}\n[restart]\nbackoff_initial_ms = 30000\n")
        });
        std::fs::create_dir_all(case.path().join("agent/health")).unwrap();
        case
    }

    fn script(&self, name: &str, body: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = self.tmp.path().join("agent/health").join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    async fn assign(&self, zk: &zkc::Client, topology: &str, port: u16, mode: &str) {
        let a = json!({"schema": 1, "topology_id": topology,
            "launch": {"command": ["/bin/sh", "-c", WORKER_SH], "env": {"MODE": mode}, "liveness": "process"},
            "workers": [{"supervisor_id": self.id, "port": port}]});
        put_json(zk, &format!("{}/assignments/{topology}", self.root), &a).await;
    }
}

/// `(word, ns)` marks of a worker log.
fn marks(log: &Path) -> Vec<(String, u128)> {
    read_log(log)
        .lines()
        .filter_map(|l| {
            let (w, t) = l.split_once(' ')?;
            Some((w.to_owned(), t.trim().parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_check_drains_the_node_and_a_fixed_one_brings_the_workers_back() {
    // A hanging check (killed at its 8 s timeout, which does not count against the node) runs
    // on every interval: it must not delay a worker's restart.
    let case = Case::new("drain", "timeout_ms = 8000\nfail_on_timeout = false\non_failure = \"drain\"");
    let reaper = Reaper::new(case.path().join("agent/local/workers"));
    let flag = case.path().join("broken");
    let hang_pid = case.path().join("hang.pid");
    case.script("disk.sh", &format!("if [ -e {} ]; then echo 'ERROR disk full'; else echo ok; fi", flag.display()));
    case.script("hang.sh", &format!("echo $$ > {}\nexec sleep 100", hang_pid.display()));
    let zk = zk_client(&shared_zk().connect_string()).await;
    case.assign(&zk, "steady", 6700, "sleep").await;
    case.assign(&zk, "crashy", 6701, "crash").await;
    let agent = Agent::start(&case.config);
    let info = case
        .wait_info(&zk, &agent, "healthy, 6700 running, 6701 relaunched once", |i| {
            i["health"] == "healthy"
                && running_pid(i, 6700).is_some()
                && slot(i, 6701).is_some_and(|s| s["restarts"].as_u64() >= Some(1))
        })
        .await;
    reaper.track(running_pid(&info, 6700).unwrap());
    // The crash-to-restart gap, while a health check hangs for 8 s.
    let m = marks(&case.worker_log("crashy", 6701));
    let exit = m.iter().find(|(w, _)| w == "exit").map(|(_, t)| *t).expect("an exit");
    let restart = m.iter().filter(|(w, _)| w == "start").map(|(_, t)| *t).find(|t| *t > exit).expect("a restart");
    let gap = Duration::from_nanos((restart - exit) as u64);
    assert!(gap < Duration::from_secs(4), "a hanging health check delayed a restart: {gap:?}");

    // The hanging script is killed at its timeout.
    let pid: u32 = wait_for("hang.sh to start", LONG, || std::fs::read_to_string(&hang_pid).ok()?.trim().parse().ok());
    wait_for("the hanging check to be killed", Duration::from_secs(30), || (!alive(pid)).then_some(()));
    // Done with it: later runs are quick again.
    std::fs::remove_file(case.path().join("agent/health/hang.sh")).unwrap();

    // Failing: workers stopped, SupervisorInfo says unhealthy.
    std::fs::write(&flag, "").unwrap();
    let info = case
        .wait_info(&zk, &agent, "unhealthy and no workers", |i| {
            i["health"] == "unhealthy" && i["workers"].as_array().is_some_and(|w| w.iter().all(|w| w["pid"].is_null()))
        })
        .await;
    assert_eq!(info["state"], json!("running"), "a health drain is not an operator drain");
    assert!(agent.log_text().contains("health checks fail: stopping workers"));
    // Fixed: everything comes back.
    std::fs::remove_file(&flag).unwrap();
    let info = case
        .wait_info(&zk, &agent, "healthy again with the steady worker", |i| {
            i["health"] == "healthy" && running_pid(i, 6700).is_some()
        })
        .await;
    reaper.track(running_pid(&info, 6700).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_failure_exit_stops_the_workers_and_exits_3() {
    let case = Case::new("exit", "timeout_ms = 2000\non_failure = \"exit\"");
    let reaper = Reaper::new(case.path().join("agent/local/workers"));
    let flag = case.path().join("broken");
    case.script("check.sh", &format!("[ ! -e {} ]", flag.display()));
    let zk = zk_client(&shared_zk().connect_string()).await;
    case.assign(&zk, "steady", 6700, "sleep").await;
    let mut agent = Agent::start(&case.config);
    let info = case
        .wait_info(&zk, &agent, "healthy and running", |i| i["health"] == "healthy" && running_pid(i, 6700).is_some())
        .await;
    let pid = running_pid(&info, 6700).unwrap();
    reaper.track(pid);
    std::fs::write(&flag, "").unwrap();
    assert_eq!(agent.wait_exit(LONG), 3, "{}", agent.log_text());
    assert!(!alive(pid), "the worker was stopped before the exit");
    assert!(agent.log_text().contains("health checks failed with on_failure = \"exit\""));
}

// ---- gale health check

/// A config whose ZooKeeper is a closed port and whose agent never runs: `gale health check`
/// needs neither. Scripts go in `<tmp>/health`.
struct Offline {
    tmp: tempfile::TempDir,
    config: std::path::PathBuf,
}

impl Offline {
    fn new(health: &str) -> Offline {
        let tmp = tempfile::Builder::new().prefix("gale-hcheck-").tempdir().unwrap();
        let config = AgentSpec::new(&format!("127.0.0.1:{}", free_port()), "/hcheck").write(tmp.path());
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(&config, text.replacen("[health]\n", &format!("[health]\n{health}\n"), 1)).unwrap();
        std::fs::create_dir_all(tmp.path().join("health")).unwrap();
        Offline { tmp, config }
    }

    fn script(&self, name: &str, body: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = self.tmp.path().join("health").join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// `gale health check [extra]`, asserting its exit code; returns stdout and how long it took.
    fn check(&self, extra: &[&str], code: i32) -> (String, Duration) {
        let started = tokio::time::Instant::now();
        let (stdout, _) = expect(&self.config, &[&["health", "check"], extra].concat(), code);
        (stdout, started.elapsed())
    }
}

/// The table line of `script`.
fn row<'a>(stdout: &'a str, script: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(script))
        .unwrap_or_else(|| panic!("no {script}: {stdout}"))
}

#[test]
fn health_check_passes_a_healthy_dir_with_no_agent_and_no_zookeeper() {
    let case = Offline::new("timeout_ms = 5000");
    case.script("disk.sh", "echo ok");
    case.script("mem.sh", "exit 0");
    std::fs::write(case.tmp.path().join("health/README"), "not executable: not a check").unwrap();
    let (stdout, took) = case.check(&[], 0);
    for script in ["disk.sh", "mem.sh"] {
        let row = row(&stdout, script);
        assert_eq!(row.split_whitespace().nth(1), Some("passed"), "{row}");
        assert!(row.contains(" ms"), "time taken: {row}");
    }
    assert!(!stdout.contains("README"), "{stdout}");
    assert!(stdout.ends_with("healthy: 2 of 2 check(s) passed\n"), "{stdout}");
    // No ZooKeeper connection attempt (connect_timeout_ms is 3 s) and no local dir, lock or state.
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(!case.tmp.path().join("local").exists(), "gale health check touched the local dir");
}

#[test]
fn health_check_shows_a_failing_script_and_its_output_and_exits_1() {
    let case = Offline::new("timeout_ms = 5000");
    case.script("ok.sh", "echo fine");
    case.script("disk.sh", "echo '/var is 99% full'; echo 'second line'; echo 'df: warning' >&2; exit 3");
    case.script("load.sh", "echo 'ERROR load too high'");
    let (stdout, _) = case.check(&[], 1);
    assert!(row(&stdout, "disk.sh").contains("failed") && row(&stdout, "disk.sh").ends_with("exit 3"), "{stdout}");
    assert!(stdout.contains("    | /var is 99% full\n    | second line\n    ! df: warning\n"), "{stdout}");
    assert_eq!(row(&stdout, "load.sh").split_whitespace().nth(1), Some("error_output"), "{stdout}");
    assert!(stdout.contains("    | ERROR load too high\n"), "{stdout}");
    assert_eq!(row(&stdout, "ok.sh").split_whitespace().nth(1), Some("passed"), "{stdout}");
    assert!(!stdout.contains("| fine"), "a passing script's output is not shown: {stdout}");
    assert!(stdout.ends_with("unhealthy: 2 of 3 check(s) failing: disk.sh, load.sh\n"), "{stdout}");

    let (json, _) = case.check(&["--json"], 1);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["healthy"], false);
    let disk = json["scripts"].as_array().unwrap().iter().find(|s| s["script"] == "disk.sh").unwrap();
    assert_eq!((&disk["outcome"], &disk["exit_code"]), (&json!("failed"), &json!(3)));
    assert_eq!(disk["stdout_head"], json!(["/var is 99% full", "second line"]));
    assert_eq!(disk["stderr_head"], json!(["df: warning"]));
}

#[test]
fn health_check_kills_a_hanging_script_at_its_timeout() {
    let case = Offline::new("timeout_ms = 1000");
    let pids = case.tmp.path().join("pids");
    // The script and a child it forked (same process group) both hang.
    case.script("hang.sh", &format!("sleep 100 & echo \"$$ $!\" > {}\nwait", pids.display()));
    case.script("ok.sh", "true");
    let (stdout, took) = case.check(&[], 1);
    let hang = row(&stdout, "hang.sh");
    assert_eq!(hang.split_whitespace().nth(1), Some("timed_out"), "{stdout}");
    assert!(hang.contains("killed at its 1000 ms timeout"), "{hang}");
    assert!(stdout.ends_with("unhealthy: 1 of 2 check(s) failing: hang.sh\n"), "{stdout}");
    // Timeout + KILL_GRACE (2 s) at most, plus a margin for a loaded machine.
    assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(5), "{took:?}");
    let pids: Vec<u32> =
        std::fs::read_to_string(&pids).unwrap().split_whitespace().map(|p| p.parse().unwrap()).collect();
    assert_eq!(pids.len(), 2);
    for pid in pids {
        assert!(!alive(pid), "{pid} outlived gale health check");
    }

    // With fail_on_timeout = false a timeout does not make the node unhealthy.
    case.script("hang.sh", "exec sleep 100");
    let text = std::fs::read_to_string(&case.config).unwrap();
    std::fs::write(&case.config, text.replacen("[health]\n", "[health]\nfail_on_timeout = false\n", 1)).unwrap();
    let (stdout, _) = case.check(&[], 0);
    assert!(row(&stdout, "hang.sh").contains("counted as healthy (fail_on_timeout = false)"), "{stdout}");
    assert!(stdout.ends_with("healthy: 1 of 2 check(s) passed, 1 timed out (not counted: fail_on_timeout = false)\n"));
}

#[test]
fn health_check_with_an_empty_or_missing_dir_is_healthy_like_the_agent() {
    // The agent's rule (src/health.rs): a missing or empty directory means no checks, healthy.
    let case = Offline::new("");
    let dir = case.tmp.path().join("health");
    let (stdout, _) = case.check(&[], 0);
    let expected =
        format!("healthy: no health checks (no executable file in {}, or no such directory)\n", dir.display());
    assert!(stdout.ends_with(&expected), "{stdout}");
    std::fs::remove_dir(&dir).unwrap();
    let (stdout, _) = case.check(&[], 0);
    assert!(stdout.ends_with(&expected), "{stdout}");
    let (json, _) = case.check(&["--json"], 0);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!((&json["healthy"], &json["scripts"]), (&json!(true), &json!([])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_runs_next_to_a_running_agent_and_agrees_with_it() {
    // The agent holds the local dir lock and a ZooKeeper session; the command needs neither.
    let case = Case::new("cli", "timeout_ms = 2000");
    case.script("ok.sh", "true");
    case.script("broken.sh", "echo 'nfs mount missing'; exit 1");
    let zk = zk_client(&shared_zk().connect_string()).await;
    let agent = Agent::start(&case.config);
    case.wait_info(&zk, &agent, "unhealthy", |i| i["health"] == "unhealthy").await;
    let (stdout, _) = expect(&case.config, &["health", "check"], 1);
    assert!(stdout.contains("    | nfs mount missing\n"), "{stdout}");
    assert!(stdout.ends_with("unhealthy: 1 of 2 check(s) failing: broken.sh\n"), "{stdout}");
    std::fs::remove_file(case.path().join("agent/health/broken.sh")).unwrap();
    case.wait_info(&zk, &agent, "healthy again", |i| i["health"] == "healthy").await;
    expect(&case.config, &["health", "check"], 0);
}

#[test]
fn health_check_interrupted_kills_its_running_scripts() {
    use nix::sys::signal::{Signal, kill};
    let case = Offline::new("timeout_ms = 60000");
    let pid_file = case.tmp.path().join("pid");
    case.script("hang.sh", &format!("echo $$ > {}\nexec sleep 100", pid_file.display()));
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_gale"))
        .arg("--config")
        .arg(&case.config)
        .args(["health", "check"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let script: u32 =
        wait_for("hang.sh to start", LONG, || std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok());
    kill(nix::unistd::Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stderr).contains("interrupted by SIGINT: every running health check was killed"), "{out:?}");
    wait_for("the script to die", Duration::from_secs(5), || (!alive(script)).then_some(()));
}
