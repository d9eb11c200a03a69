//! Diagnostics on demand (`[diagnostics]`): commands run against a worker by `gale worker diag`
//! and by the `diag` ZooKeeper action, their files under the worker's log dir, `gale logs
//! --diag`, the timeout, the output cap, the log quota, a reload; and `gale worker signal`.
//! Real binary, real ZooKeeper, real worker processes.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;
use serde_json::json;
use zookeeper_client as zkc;

const LONG: Duration = Duration::from_secs(60);

const COMMANDS: &str = r#"
[diagnostics]
timeout_secs = 2
max_output_mb = 1

[diagnostics.commands]
status = ["/bin/cat", "/proc/{pid}/status"]
dump = ["/bin/sh", "-c", "cat /proc/{pid}/cmdline > {out}; echo dumped {port} {topology_id}"]
hang = ["/bin/sh", "-c", "sleep 1000 & echo child $!; exec sleep 1000"]
spew = ["/bin/sh", "-c", "head -c 3145728 /dev/zero | tr '\\0' x"]
"#;

/// A test agent whose config ends with `extra` and an admin endpoint on a free port.
fn agent_with(name: &str, extra: &str) -> (TestAgent, u16) {
    let agent = TestAgent::new("d", name);
    let admin = free_port();
    agent.edit(|text| {
        let text = text.replace("listen = \"\"", &format!("listen = \"127.0.0.1:{admin}\""));
        format!("{text}\n{extra}")
    });
    (agent, admin)
}

async fn assign(zk: &zkc::Client, agent: &TestAgent, topology: &str, launch: serde_json::Value) {
    let a = json!({"schema": 1, "topology_id": topology, "launch": launch,
        "workers": [{"supervisor_id": agent.id, "port": 6700}]});
    put_json(zk, &format!("{}/assignments/{topology}", agent.root), &a).await;
}

fn diag_dir(agent: &TestAgent, topology: &str) -> PathBuf {
    agent.path().join("agent/logs/workers").join(topology).join("6700/diag")
}

/// The files in `dir` whose names end with `-<name><suffix>`, oldest first.
fn files_of(dir: &Path, name: &str, suffix: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> =
        std::fs::read_dir(dir).map(|entries| entries.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    found.retain(|p| p.file_name().unwrap().to_str().unwrap().ends_with(&format!("-{name}{suffix}")));
    found.sort();
    found
}

/// `gale worker diag 6700 <name>`: (exit code, stdout, stderr).
fn diag(agent: &TestAgent, name: &str) -> (i32, String, String) {
    let out = gale(&agent.config, &["worker", "diag", "6700", name]);
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

fn http_metrics(admin: u16) -> String {
    let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(5))).build().into();
    agent.get(&format!("http://127.0.0.1:{admin}/metrics")).call().unwrap().body_mut().read_to_string().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diagnostics_run_by_cli_and_action_are_bounded_kept_and_listed() {
    let (case, admin) = agent_with("runs", COMMANDS);
    let reaper = case.reaper();
    let zk = zk_client(&shared_zk().connect_string()).await;
    assign(&zk, &case, "sleeper", json!({"command": ["/bin/sleep", "1000"]})).await;
    let agent = Agent::start(&case.config);
    let info = case.wait_info(&zk, &agent, "the worker running", |i| running_pid(i, 6700).is_some()).await;
    let pid = running_pid(&info, 6700).unwrap();
    reaper.track(pid);
    let dir = diag_dir(&case, "sleeper");

    // A command reading the worker's /proc: the reply names the file, which holds its output.
    let (code, out, err) = diag(&case, "status");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("diagnostics `status` exited with code 0 after"), "{out}");
    let status = files_of(&dir, "status", ".txt");
    assert_eq!(status.len(), 1, "{status:?}");
    assert!(out.contains(&status[0].display().to_string()), "{out}");
    let content = std::fs::read_to_string(&status[0]).unwrap();
    assert!(content.contains(&format!("Pid:\t{pid}\n")) && content.contains("Name:\tsleep"), "{content}");
    assert!(content.contains(&format!("command: /bin/cat /proc/{pid}/status\n")), "{content}");
    let meta = std::fs::metadata(&status[0]).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (nix::unistd::geteuid().as_raw(), 0o640));

    // `{out}`: the file the command wrote is kept beside its output.
    let (code, out, _) = diag(&case, "dump");
    assert_eq!(code, 0, "{out}");
    let kept = files_of(&dir, "dump", ".out");
    assert_eq!(std::fs::read(&kept[0]).unwrap(), b"/bin/sleep\x001000\x00");
    assert!(std::fs::read_to_string(&files_of(&dir, "dump", ".txt")[0]).unwrap().contains("dumped 6700 sleeper\n"));

    // Past its timeout: killed with what it forked; the CLI fails and says so. While it runs,
    // a second run on the same port is refused.
    let started = std::time::SystemTime::now();
    let config = case.config.clone();
    let hanging = std::thread::spawn(move || gale(&config, &["worker", "diag", "6700", "hang"]));
    wait_for("the hang run started", LONG, || (!files_of(&dir, "hang", ".txt").is_empty()).then_some(()));
    let (code, _, err) = diag(&case, "status");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("port 6700: a diagnostics run is in progress there"), "{err}");
    let out = hanging.join().unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("killed with its process group at its timeout"), "{err}");
    assert!(started.elapsed().unwrap() < Duration::from_secs(10), "{:?}", started.elapsed());
    let hang = std::fs::read_to_string(&files_of(&dir, "hang", ".txt")[0]).unwrap();
    let child: u32 = hang.lines().find_map(|l| l.strip_prefix("child ")?.parse().ok()).unwrap();
    wait_for("the backgrounded sleep to be gone", LONG, || (!alive(child)).then_some(()));

    // 3 MiB of output against a 1 MiB cap: cut, with the marker.
    let (code, out, _) = diag(&case, "spew");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("(1048576 bytes, truncated at diagnostics.max_output_mb)"), "{out}");
    let spew = std::fs::read_to_string(&files_of(&dir, "spew", ".txt")[0]).unwrap();
    assert!(spew.contains(
        "----- truncated: output past 1048576 bytes (diagnostics.max_output_mb) was discarded: 2097152 bytes"
    ));
    assert!(spew.len() < 1_048_576 + 2048, "{}", spew.len());

    // Refusals name the reason.
    let (code, _, err) = diag(&case, "nope");
    assert_eq!(code, 1);
    assert!(
        err.contains("no diagnostics command `nope`") && err.contains("configured: dump, hang, spew, status"),
        "{err}"
    );
    let (_, err) = expect(&case.config, &["worker", "diag", "6701", "status"], 1);
    assert!(err.contains("port 6701: no worker runs there"), "{err}");

    // The same by a ZooKeeper action; an unknown name is rejected and deleted like any action.
    let actions = format!("{}/actions/{}", case.root, case.id);
    put_json(&zk, &format!("{actions}/a-1"), &json!({"schema": 1, "action": "diag", "port": 6700, "name": "status"}))
        .await;
    put_json(&zk, &format!("{actions}/a-2"), &json!({"schema": 1, "action": "diag", "port": 6700, "name": "nope"}))
        .await;
    eventually("both actions deleted", LONG, || async {
        zk.list_children(&actions).await.unwrap().is_empty().then_some(())
    })
    .await;
    wait_for("the action's run", LONG, || (files_of(&dir, "status", ".txt").len() == 2).then_some(()));
    let log = agent.log_text();
    assert!(log.contains("zookeeper action rejected") && log.contains("no diagnostics command `nope`"), "{log}");
    let metrics = http_metrics(admin);
    for line in [
        "gale_diagnostics_runs_total{name=\"status\",result=\"ok\"} 2",
        "gale_diagnostics_runs_total{name=\"hang\",result=\"timed_out\"} 1",
        "gale_diagnostics_runs_total{name=\"-\",result=\"refused\"} 2",
        "gale_diagnostics_runs_total{name=\"status\",result=\"refused\"} 2", // the run in progress, and port 6701
        "gale_actions_total{action=\"diag\",result=\"error\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} not in:\n{metrics}");
    }

    // `gale logs --diag`: the list, a command's newest run, a file by name.
    let (list, _) = expect(&case.config, &["logs", "6700", "--diag"], 0);
    let rows: Vec<&str> = list.lines().skip(1).collect();
    assert_eq!(rows.len(), 6, "{list}");
    assert!(rows.iter().all(|r| r.contains(" 6700 ") && r.contains("sleeper")), "{list}");
    let (printed, _) = expect(&case.config, &["logs", "sleeper", "--diag", "status"], 0);
    let newest = files_of(&dir, "status", ".txt").pop().unwrap();
    assert_eq!(printed, std::fs::read_to_string(&newest).unwrap());
    let (_, notice) = expect(&case.config, &["logs", "6700", "--diag", "dump"], 0);
    assert!(notice.contains(&format!("the same run also left {}", kept[0].display())), "{notice}");
    let out_name = kept[0].file_name().unwrap().to_str().unwrap();
    let (raw, _) = expect(&case.config, &["logs", "6700", "--diag", out_name], 0);
    assert_eq!(raw, "/bin/sleep\u{0}1000\u{0}");
    let (_, err) = expect(&case.config, &["logs", "6701", "--diag"], 1);
    assert!(err.contains("no diagnostics run for port 6701"), "{err}");

    // A reload: a new command runs at once, and a small quota deletes the oldest files first.
    case.edit(|text| {
        let text = text.replace("[diagnostics.commands]\n", "[diagnostics.commands]\nenv = [\"/usr/bin/env\"]\n");
        format!("{text}\n").replace("[logs]\n", "[logs]\nnode_quota_mb = 1\n")
    });
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for("the quota applied", LONG, || files_of(&dir, "spew", ".txt").is_empty().then_some(()));
    assert_eq!(files_of(&dir, "status", ".txt"), [newest], "the newest file is kept");
    let (code, out, err) = diag(&case, "env");
    assert_eq!(code, 0, "{out}{err}");

    // Through all of it the agent stayed up and the worker was never touched.
    let info = case.wait_info(&zk, &agent, "still running", |i| i["state"] == "running").await;
    assert_eq!(running_pid(&info, 6700), Some(pid));
    assert_eq!(slot(&info, 6700).unwrap()["restarts"], json!(0));
    assert!(std::fs::read_dir(case.local().join("workers")).unwrap().flatten().all(|w| {
        std::fs::read_dir(w.path())
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().starts_with(".gale-diag"))
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_and_diagnostics_reach_a_worker_of_another_user_as_that_user() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: switching users needs root");
        return;
    }
    let extra = "[worker]\nrun_as_user = true\nallowed_users = [\"nobody\"]\n\n[diagnostics.commands]\n\
                 id = [\"/bin/sh\", \"-c\", \"id -u; id -u > {out}\"]\n";
    let (case, _) = agent_with("user", extra);
    // Workers and their diagnostics run as nobody.
    case.open_to_worker_users();
    let reaper = case.reaper();
    let zk = zk_client(&shared_zk().connect_string()).await;
    let script = "trap 'echo got-USR1' USR1; echo ready; while :; do sleep 0.1; done";
    assign(&zk, &case, "as-nobody", json!({"command": ["/bin/sh", "-c", script], "user": "nobody"})).await;
    let agent = Agent::start(&case.config);
    let info = case.wait_info(&zk, &agent, "the worker running", |i| running_pid(i, 6700).is_some()).await;
    let pid = running_pid(&info, 6700).unwrap();
    reaper.track(pid);
    let log = case.worker_log("as-nobody", 6700);
    wait_for("the worker ready", LONG, || read_log(&log).contains("ready").then_some(()));

    let (out, _) = expect(&case.config, &["worker", "signal", "6700", "SIGUSR1"], 0);
    assert!(out.contains(&format!("port 6700: sent SIGUSR1 to worker pid {pid}")), "{out}");
    wait_for("the worker's trap", LONG, || read_log(&log).contains("got-USR1").then_some(()));
    let (_, err) = expect(&case.config, &["worker", "signal", "6700", "NOPE"], 1);
    assert!(err.contains("`NOPE` is not a signal name"), "{err}");

    let (code, out, err) = diag(&case, "id");
    assert_eq!(code, 0, "{out}{err}");
    let dir = diag_dir(&case, "as-nobody");
    let text = std::fs::read_to_string(&files_of(&dir, "id", ".txt")[0]).unwrap();
    assert!(text.contains("user:    nobody (uid 65534, gid 65534)") && text.contains("\n65534\n"), "{text}");
    let kept = &files_of(&dir, "id", ".out")[0];
    assert_eq!(std::fs::read_to_string(kept).unwrap(), "65534\n");
    let meta = std::fs::metadata(kept).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o640), "kept by the agent, not the worker's user");
    assert_eq!(
        running_pid(&case.wait_info(&zk, &agent, "running", |i| i["state"] == "running").await, 6700),
        Some(pid)
    );
}
