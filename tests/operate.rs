//! Operating an agent: the admin endpoints (real HTTP), `gale status`, the control socket
//! commands and ZooKeeper actions, against the real binary and a real ZooKeeper, with real
//! worker processes.

use std::path::Path;
use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};
use zookeeper_client as zkc;

const LONG: Duration = Duration::from_secs(60);

/// A crash-looping or sleeping worker, by `$MODE`.
const WORKER_SH: &str = "case \"$MODE\" in crash) sleep 0.3; exit 1;; *) exec /bin/sleep 1000;; esac";

struct Case {
    agent: TestAgent,
    admin: u16,
}

impl std::ops::Deref for Case {
    type Target = TestAgent;
    fn deref(&self) -> &TestAgent {
        &self.agent
    }
}

impl Case {
    /// Root `/o-<name>`, id `sup-<name>`, the admin endpoint on a free loopback port; `extra`
    /// is appended to the config.
    fn new(name: &str, extra: &str) -> Case {
        let agent = TestAgent::new("o", name);
        let admin = agent.enable_admin();
        agent.edit(|text| format!("{text}\n[restart]\nbackoff_initial_ms = 30000\n{extra}"));
        Case { agent, admin }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin)
    }

    async fn assign(&self, zk: &zkc::Client, topology: &str, port: u16, mode: &str) {
        let a = json!({"schema": 1, "topology_id": topology,
            "launch": {"command": ["/bin/sh", "-c", WORKER_SH], "env": {"MODE": mode}, "liveness": "process"},
            "workers": [{"supervisor_id": self.id, "port": port}]});
        put_json(zk, &format!("{}/assignments/{topology}", self.root), &a).await;
    }

    fn gale(&self, args: &[&str]) -> (i32, String, String) {
        let out = gale(&self.config, args);
        (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
    }
}

/// `gale undrain`, then the worker on 6700 runs again (tracked for cleanup).
async fn undrain(case: &Case, zk: &zkc::Client, agent: &Agent, reaper: &Reaper) {
    let (code, out, err) = case.gale(&["undrain"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("undrained"), "{out}");
    let info = case
        .wait_info(zk, agent, "running again with its worker", |i| {
            i["state"] == "running" && running_pid(i, 6700).is_some()
        })
        .await;
    reaper.track(running_pid(&info, 6700).unwrap());
}

fn status_json(case: &Case) -> Value {
    let (code, body) = http_get(&case.url("/status"));
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn slot_of(status: &Value, port: u16) -> Value {
    status["slots"].as_array().unwrap().iter().find(|s| s["port"] == port).cloned().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_status_and_the_table_agree_with_what_runs() {
    let case = Case::new("endpoints", "");
    let reaper = case.reaper();
    let zk = zk_client(&shared_zk().connect_string()).await;
    case.assign(&zk, "sleeper", 6700, "sleep").await;
    let agent = Agent::start(&case.config);
    let info = case.wait_info(&zk, &agent, "the worker running", |i| running_pid(i, 6700).is_some()).await;
    let pid = running_pid(&info, 6700).unwrap();
    reaper.track(pid);

    assert_eq!(http_get(&case.url("/live")).0, 200);
    eventually("ready", LONG, || async { (http_get(&case.url("/ready")).0 == 200).then_some(()) }).await;
    assert_eq!(http_get(&case.url("/nothing")).0, 404);

    let status = status_json(&case);
    assert_eq!(status["supervisor_id"], json!(case.id));
    assert_eq!(status["state"], json!("running"));
    assert_eq!(status["zookeeper"]["state"], json!("connected"));
    assert_eq!(status["zookeeper"]["registered"], json!(true));
    let s = slot_of(&status, 6700);
    assert_eq!(
        (s["state"].clone(), s["topology_id"].clone(), s["pid"].clone()),
        (json!("running"), json!("sleeper"), json!(pid))
    );
    assert_eq!(s["worker_id"], slot(&info, 6700).unwrap()["worker_id"]);
    assert_eq!(slot_of(&status, 6701)["state"], json!("empty"));
    assert!(status["queues"].as_array().unwrap().iter().any(|q| q["name"] == "sync-processes"));

    // `gale status --json` is the same document; the table shows the same facts.
    let (code, out, err) = case.gale(&["status", "--json"]);
    assert_eq!(code, 0, "{err}");
    let cli: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(cli["slots"], status["slots"]);
    assert_eq!(cli["supervisor_id"], status["supervisor_id"]);
    let (code, table, _) = case.gale(&["status"]);
    assert_eq!(code, 0);
    let row = table.lines().find(|l| l.starts_with("6700")).unwrap_or_else(|| panic!("{table}"));
    let short_id: String = s["worker_id"].as_str().unwrap().chars().take(8).collect();
    for word in ["running", "sleeper", &pid.to_string(), &short_id] {
        assert!(row.contains(word), "{row}");
    }
    assert!(table.contains("state running") && table.contains("registered"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("6701") && l.contains("empty")), "{table}");

    let (code, metrics) = http_get(&case.url("/metrics"));
    assert_eq!(code, 200);
    assert_eq!(metric(&metrics, "gale_workers{state=\"running\"}"), Some(1.0), "{metrics}");
    assert_eq!(metric(&metrics, "gale_workers{state=\"empty\"}"), Some(1.0));
    assert_eq!(metric(&metrics, "gale_worker_launches_total"), Some(1.0));
    assert_eq!(metric(&metrics, "gale_lifecycle_state{state=\"running\"}"), Some(1.0));
    assert_eq!(metric(&metrics, "gale_zk_session_state{state=\"connected\"}"), Some(1.0));
    assert!(metric(&metrics, "gale_queue_runs_total{queue=\"sync-processes\"}").unwrap() >= 1.0);
    assert!(metric(&metrics, "gale_zk_operations_total{op=\"create\",result=\"ok\"}").is_some(), "{metrics}");
    for line in metrics.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        assert!(line.starts_with("gale_"), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_commands_do_what_they_say_once() {
    let case = Case::new("control", "");
    let reaper = case.reaper();
    let zk = zk_client(&shared_zk().connect_string()).await;
    case.assign(&zk, "sleeper", 6700, "sleep").await;
    case.assign(&zk, "crasher", 6701, "crash").await;
    let agent = Agent::start(&case.config);
    let info = case
        .wait_info(&zk, &agent, "6700 running, 6701 in backoff", |i| {
            running_pid(i, 6700).is_some() && slot_state(i, 6701) == Some("backoff")
        })
        .await;
    let pid = running_pid(&info, 6700).unwrap();
    reaper.track(pid);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(case.local().join("control.sock")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "control socket is private");

    // restart: a new process, counted as a restart, not a failure.
    let (code, out, err) = case.gale(&["worker", "restart", "6700"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("port 6700"), "{out}");
    let info = case.wait_info(&zk, &agent, "6700 relaunched", |i| running_pid(i, 6700).is_some_and(|p| p != pid)).await;
    let s = slot(&info, 6700).unwrap();
    reaper.track(running_pid(&info, 6700).unwrap());
    assert_eq!((s["restarts"].clone(), s["last_exit"]["reason"].clone()), (json!(1), json!("killed")), "{s}");
    assert!(!alive(pid));

    // reset-backoff: the 30 s backoff ends now.
    let restarts = slot(&info, 6701).unwrap()["restarts"].as_u64().unwrap();
    let (code, _, err) = case.gale(&["worker", "reset-backoff", "6701"]);
    assert_eq!(code, 0, "{err}");
    case.wait_info(&zk, &agent, "6701 relaunched at once", |i| {
        slot(i, 6701).is_some_and(|s| s["restarts"].as_u64().unwrap() > restarts)
    })
    .await;

    // Bad requests name what is wrong; nothing changes.
    let (code, _, err) = case.gale(&["worker", "restart", "6799"]);
    assert_eq!(code, 1);
    assert!(err.contains("6799") && err.contains("not one of this agent's slots"), "{err}");

    // drain --wait returns once no worker runs; SupervisorInfo says draining; it survives a restart.
    let (code, out, err) = case.gale(&["drain", "--wait"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("drained"), "{out}");
    // `--wait` answered once the executor saw the last exit; SupervisorInfo follows it.
    case.wait_info(&zk, &agent, "draining, no workers", |i| {
        i["state"] == "draining" && i["workers"].as_array().is_some_and(|w| w.iter().all(|w| w["pid"].is_null()))
    })
    .await;
    assert!(
        status_json(&case)["slots"].as_array().unwrap().iter().all(|s| s["pid"].is_null()),
        "the executor has none"
    );
    assert_eq!(status_json(&case)["drained"], json!(true));
    let (_, table, _) = case.gale(&["status"]);
    assert!(table.contains("(drained)"), "{table}");
    undrain(&case, &zk, &agent, &reaper).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_actions_apply_once_and_are_deleted() {
    let case = Case::new("actions", "");
    let reaper = case.reaper();
    let zk = zk_client(&shared_zk().connect_string()).await;
    case.assign(&zk, "sleeper", 6700, "sleep").await;
    let agent = Agent::start(&case.config);
    let info = case.wait_info(&zk, &agent, "running", |i| running_pid(i, 6700).is_some()).await;
    let pid = running_pid(&info, 6700).unwrap();
    reaper.track(pid);
    let dir = format!("{}/actions/{}", case.root, case.id);
    put_json(&zk, &format!("{dir}/a-1"), &json!({"schema": 1, "action": "restart_worker", "port": 6700})).await;
    put_json(&zk, &format!("{dir}/a-2"), &json!({"schema": 1, "action": "reboot"})).await;
    put_json(&zk, &format!("{dir}/a-3"), &json!({"schema": 1, "action": "restart_worker"})).await;
    eventually("every action node deleted", LONG, || async {
        zk.list_children(&dir).await.unwrap().is_empty().then_some(())
    })
    .await;
    let info = case.wait_info(&zk, &agent, "relaunched", |i| running_pid(i, 6700).is_some_and(|p| p != pid)).await;
    let new_pid = running_pid(&info, 6700).unwrap();
    reaper.track(new_pid);
    // Once: a second relaunch does not follow.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let info = case.wait_info(&zk, &agent, "settled", |i| running_pid(i, 6700).is_some()).await;
    assert_eq!(running_pid(&info, 6700), Some(new_pid), "one relaunch only: {info}\nagent log:\n{}", agent.log_text());
    assert_eq!(slot(&info, 6700).unwrap()["restarts"], json!(1));
    let log = agent.log_text();
    assert!(log.contains("unknown action `reboot`") && log.contains("needs a `port`"), "{log}");
    let (_, metrics) = http_get(&case.url("/metrics"));
    assert_eq!(metric(&metrics, "gale_actions_total{action=\"restart_worker\",result=\"ok\"}"), Some(1.0), "{metrics}");
    assert_eq!(metric(&metrics, "gale_actions_total{action=\"invalid\",result=\"error\"}"), Some(2.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_says_when_the_agent_is_down_and_shows_the_persisted_state() {
    let case = Case::new("down", "");
    let reaper = case.reaper();
    let zk = zk_client(&shared_zk().connect_string()).await;
    case.assign(&zk, "sleeper", 6700, "sleep").await;
    let mut agent = Agent::start(&case.config);
    let info = case.wait_info(&zk, &agent, "running", |i| running_pid(i, 6700).is_some()).await;
    let pid = running_pid(&info, 6700).unwrap();
    reaper.track(pid);
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(agent.wait_exit(Duration::from_secs(20)), 0);
    let (code, out, _) = case.gale(&["status"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("DOWN"), "{out}");
    assert!(out.contains("port 6700: topology sleeper"), "{out}");
    assert!(out.contains(&format!("pid {pid}: still running")), "{out}");
    let (code, out, _) = case.gale(&["status", "--json"]);
    assert_eq!(code, 1);
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["state"], json!("down"));
    assert_eq!(doc["workers"][0]["alive"], json!(true));
    assert!(!Path::new(&case.local().join("control.sock")).exists(), "socket removed at stop");
}

/// Writes numbered lines (`<n> xxxx…`, ~200 bytes) at about 2 MB/s.
const FAST_SH: &str = r#"pad=$(printf '%0190d' 0); n=0
while :; do seq $n $((n+4999)) | sed "s/\$/ $pad/"; n=$((n+5000)); sleep 0.5; done"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_worker_log_is_rotated_within_its_limits_and_followed_across_rotations() {
    let case = Case::new("logs", "");
    let text = std::fs::read_to_string(&case.config).unwrap();
    let logs = "[logs]\nworker_log_max_mb = 1\nworker_log_keep = 2\nnode_quota_mb = 3\n";
    std::fs::write(&case.config, text.replacen("[logs]\n", logs, 1)).unwrap();
    let reaper = case.reaper();
    let zk = zk_client(&shared_zk().connect_string()).await;
    let a = json!({"schema": 1, "topology_id": "fast",
        "launch": {"command": ["/bin/sh", "-c", FAST_SH], "liveness": "process"},
        "workers": [{"supervisor_id": case.id, "port": 6700}]});
    put_json(&zk, &format!("{}/assignments/fast", case.root), &a).await;
    let agent = Agent::start(&case.config);
    let info = case.wait_info(&zk, &agent, "running", |i| running_pid(i, 6700).is_some()).await;
    reaper.track(running_pid(&info, 6700).unwrap());
    let dir = case.tmp.path().join("agent/logs/workers/fast/6700");
    wait_for("the worker to write", LONG, || dir.join("worker.log").exists().then_some(()));

    // Follow from now on, like an operator would.
    let mut follower = std::process::Command::new(env!("CARGO_BIN_EXE_gale"))
        .args(["--config", case.config.to_str().unwrap(), "logs", "fast", "-f", "-n", "0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut out = follower.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out, &mut text);
        String::from_utf8_lossy(&text).into_owned()
    });
    let rotations =
        |case: &Case| metric(&http_get(&case.url("/metrics")).1, "gale_worker_log_rotations_total").unwrap_or(0.0);
    let start = rotations(&case);
    eventually("two more rotations", LONG, || async { (rotations(&case) >= start + 2.0).then_some(()) }).await;
    let rotated = std::fs::read_to_string(dir.join("worker.log.1")).unwrap();
    let last_rotated: u64 = rotated.lines().filter_map(|l| l.split(' ').next()?.parse().ok()).max().unwrap();
    // Let the follower catch up with what comes after, then stop it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    follower.kill().unwrap();
    let _ = follower.wait();
    let followed = reader.join().unwrap();
    let numbers: Vec<u64> = followed.lines().filter_map(|l| l.split(' ').next()?.parse().ok()).collect();
    assert!(
        numbers.iter().any(|n| *n > last_rotated),
        "the follower saw nothing written after a rotation (last rotated {last_rotated}, followed up to {:?})",
        numbers.last()
    );

    // Kept: worker.log and at most 2 rotated files; the rotated ones fit the node quota.
    let mut names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert!(names.iter().all(|n| ["worker.log", "worker.log.1", "worker.log.2"].contains(&n.as_str())), "{names:?}");
    let rotated_bytes: u64 = names
        .iter()
        .filter(|n| n.as_str() != "worker.log")
        .map(|n| std::fs::metadata(dir.join(n)).unwrap().len())
        .sum();
    assert!(rotated_bytes <= 3 * 1024 * 1024, "rotated files over the node quota: {rotated_bytes}");
    let (_, metrics) = http_get(&case.url("/metrics"));
    assert!(metric(&metrics, "gale_worker_log_files_deleted_total").unwrap() >= 1.0, "{metrics}");
    assert!(metric(&metrics, "gale_worker_log_bytes").unwrap() > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_live_keys_names_restart_keys_and_rejects_an_invalid_file() {
    let case = Case::new("reload", "");
    let zk = zk_client(&shared_zk().connect_string()).await;
    let original = std::fs::read_to_string(&case.config)
        .unwrap()
        .replace("heartbeat_refresh_secs = 5", "heartbeat_refresh_secs = 60");
    std::fs::write(&case.config, &original).unwrap();
    let mut agent = Agent::start(&case.config);
    let path = case.info_path();
    let (_, stat) = wait_info(&zk, &path, &agent, "registered", LONG, |i, _| i["state"] == "running").await;
    // Unchanged content and a 60 s refresh: no rewrite for a while.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, quiet) = read_json(&zk, &path).await.unwrap();
    assert_eq!(quiet.version, stat.version, "no rewrite with an unchanged payload and a 60 s refresh");

    // SIGHUP with a 1 s refresh (and a slot change, which needs a restart).
    let edited = original
        .replace("heartbeat_refresh_secs = 60", "heartbeat_refresh_secs = 1")
        .replace("slots = [6700, 6701]", "slots = [6700, 6701, 6702]");
    std::fs::write(&case.config, &edited).unwrap();
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    agent.wait_log("config reload: applied key=supervisor.heartbeat_refresh_secs", LONG);
    agent.wait_log("needs a restart of the agent; the running value stays key=supervisor.slots", LONG);
    let (_, before) = read_json(&zk, &path).await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (info, after) = read_json(&zk, &path).await.unwrap();
    assert!(
        after.version >= before.version + 2,
        "refreshed about every second now: {} -> {}",
        before.version,
        after.version
    );
    assert_eq!(info["slots"], json!([6700, 6701]), "slots keep their running value");

    // A change seen by the file watch alone: labels are live.
    std::fs::write(&case.config, edited.replace("rack = \"r1\"", "rack = \"r2\"")).unwrap();
    wait_info(&zk, &path, &agent, "the new label advertised", LONG, |i, _| i["labels"]["rack"] == "r2").await;

    // An invalid file is rejected whole; the agent runs on with what it had.
    std::fs::write(&case.config, edited.replace("heartbeat_secs = 1", "heartbeat_secs = \"soon\"")).unwrap();
    agent.wait_log("config reload rejected: the running config stays", LONG);
    let (_, stat) = read_json(&zk, &path).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (info, later) = read_json(&zk, &path).await.unwrap();
    assert!(later.version > stat.version, "still heartbeating");
    assert_eq!(info["labels"]["rack"], json!("r2"));
    assert_eq!(http_get(&case.url("/live")).0, 200);
    let (_, metrics) = http_get(&case.url("/metrics"));
    assert!(metric(&metrics, "gale_config_reloads_total{result=\"rejected\"}").unwrap() >= 1.0, "{metrics}");
    assert!(metric(&metrics, "gale_config_reloads_total{result=\"applied\"}").unwrap() >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_without_an_admin_endpoint_tells_running_from_down() {
    let tmp = tempfile::tempdir().unwrap();
    let config = AgentSpec::new(&shared_zk().connect_string(), "/o-noadmin").id("sup-noadmin").write(tmp.path());
    let zk = zk_client(&shared_zk().connect_string()).await;
    let mut agent = Agent::start(&config);
    wait_info(&zk, "/o-noadmin/supervisors/sup-noadmin", &agent, "running", LONG, |i, _| i["state"] == "running").await;
    let out = gale(&config, &["status"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("agent: RUNNING, but its status cannot be read") && stdout.contains("admin.listen"),
        "{stdout}"
    );
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(agent.wait_exit(Duration::from_secs(20)), 0);
    let stdout = text(&gale(&config, &["status"]).stdout);
    assert!(stdout.contains("agent: DOWN"), "{stdout}");
}

/// A `local_dir` whose `control.sock` path is longer than a Unix socket address (108 bytes):
/// the socket is still `<local_dir>/control.sock`, and `gale worker`/`drain`/`undrain` reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_socket_works_under_a_local_dir_longer_than_a_socket_address() {
    let case = Case::new("longdir", "");
    let local = case.path().join("agent").join("l".repeat(60)).join("m".repeat(60));
    let socket = local.join("control.sock");
    assert!(socket.as_os_str().len() > 108, "{}", socket.display());
    let old = format!("local_dir = \"{}\"", case.local().display());
    case.edit(|text| {
        assert!(text.contains(&old), "{text}");
        text.replace(&old, &format!("local_dir = \"{}\"", local.display()))
    });
    let reaper = Reaper::new(local.join("workers"));
    let zk = zk_client(&shared_zk().connect_string()).await;
    case.assign(&zk, "sleeper", 6700, "sleep").await;
    let mut agent = Agent::start(&case.config);
    let info = case.wait_info(&zk, &agent, "6700 running", |i| running_pid(i, 6700).is_some()).await;
    let pid = running_pid(&info, 6700).unwrap();
    reaper.track(pid);
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let meta = std::fs::metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket(), "the documented path is the socket");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "control socket is private");

    let (code, out, err) = case.gale(&["worker", "restart", "6700"]);
    assert_eq!(code, 0, "{out}{err}");
    let info = case.wait_info(&zk, &agent, "6700 relaunched", |i| running_pid(i, 6700).is_some_and(|p| p != pid)).await;
    reaper.track(running_pid(&info, 6700).unwrap());

    let (code, out, err) = case.gale(&["drain", "--wait"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("drained"), "{out}");
    case.wait_info(&zk, &agent, "draining", |i| i["state"] == "draining").await;
    undrain(&case, &zk, &agent, &reaper).await;

    agent.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(agent.wait_exit(Duration::from_secs(20)), 0);
    let log = agent.log_text();
    assert!(!log.contains("cannot create the control socket"), "{log}");
    assert!(!socket.exists(), "socket removed at stop");
}
