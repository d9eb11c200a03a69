//! Isolation (SPEC §7): workers run as the assignment's user when allowed, refused otherwise.
//! Runs as root (the agent must be able to switch users); real binary, real ZooKeeper.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(60);

fn uid_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("Uid:")?.split_whitespace().next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_runs_as_its_allowed_user_and_a_disallowed_one_is_refused() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: switching users needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // Workers run as nobody must be able to reach their dir under the local dir.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = "/i-users";
    let id = "sup-users";
    let config = AgentSpec::new(&shared_zk().connect_string(), root).id(id).write(&tmp.path().join("agent"));
    std::fs::set_permissions(tmp.path().join("agent"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("{text}\n[worker]\nrun_as_user = true\nallowed_users = [\"nobody\", \"daemon\"]\nmin_uid = 1000\n"),
    )
    .unwrap();
    let reaper = Reaper::new(tmp.path().join("agent/local/workers"));
    let zk = zk_client(&shared_zk().connect_string()).await;
    let script = "echo uid=$(id -u) gid=$(id -g) user=$USER; touch \"$GALE_HEARTBEAT_FILE\" && echo wrote-heartbeat; \
                  ls ../../state >/dev/null 2>&1 && echo READ-AGENT-STATE; exec sleep 1000";
    let assign = |topology: &str, port: u16, user: Option<&str>| {
        let mut launch = json!({"command": ["/bin/sh", "-c", script], "liveness": "process"});
        if let Some(user) = user {
            launch["user"] = json!(user);
        }
        let a = json!({"schema": 1, "topology_id": topology, "launch": launch,
            "workers": [{"supervisor_id": id, "port": port}]});
        let (zk, path) = (&zk, format!("{root}/assignments/{topology}"));
        async move { put_json(zk, &path, &a).await }
    };
    assign("as-nobody", 6700, Some("nobody")).await;
    // daemon is allowed by name but its uid (1) is below min_uid.
    assign("as-daemon", 6701, Some("daemon")).await;
    let agent = Agent::start(&config);
    let path = format!("{root}/supervisors/{id}");
    let info = |pred: fn(&Value) -> bool, what: &'static str| {
        let (zk, path, agent) = (&zk, path.clone(), &agent);
        async move { wait_info(zk, &path, agent, what, LONG, move |i, _| pred(i)).await.0 }
    };
    let got = info(
        |i| running_pid(i, 6700).is_some() && slot(i, 6701).and_then(|s| s["error"].as_str()).is_some(),
        "nobody's worker running, daemon's refused",
    )
    .await;
    let pid = running_pid(&got, 6700).unwrap();
    reaper.track(pid);
    assert_eq!(uid_of(pid), Some(65534), "runs as nobody");
    let error = slot(&got, 6701).unwrap()["error"].as_str().unwrap().to_owned();
    assert!(error.contains("as-daemon") && error.contains("below worker.min_uid 1000"), "{error}");
    assert!(slot_pid(&got, 6701).is_none(), "nothing runs for a refused user");

    let log = tmp.path().join("agent/logs/workers/as-nobody/6700/worker.log");
    wait_for("the worker's first lines", LONG, || read_log(&log).contains("wrote-heartbeat").then_some(()));
    let text = read_log(&log);
    assert!(text.contains("uid=65534") && text.contains("user=nobody"), "{text}");
    assert!(!text.contains("READ-AGENT-STATE"), "the agent's state is not readable by workers: {text}");
    let state = std::fs::metadata(tmp.path().join("agent/local/state")).unwrap();
    assert_eq!((state.uid(), state.mode() & 0o777), (0, 0o700));

    // Not allowed by name, and no user at all: both refused with their reason.
    assign("as-daemon", 6701, Some("root")).await;
    info(
        |i| slot(i, 6701).and_then(|s| s["error"].as_str()).is_some_and(|e| e.contains("not in worker.allowed_users")),
        "root refused",
    )
    .await;
    assign("as-daemon", 6701, None).await;
    info(
        |i| slot(i, 6701).and_then(|s| s["error"].as_str()).is_some_and(|e| e.contains("names no `user`")),
        "a topology without a user refused",
    )
    .await;
    // Nothing was created outside the agent's dirs for the refused ones.
    assert!(!tmp.path().join("agent/logs/workers/as-daemon").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_assignments_are_rejected_and_create_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = "/i-hostile";
    let id = "sup-hostile";
    let config = AgentSpec::new(&shared_zk().connect_string(), root).id(id).write(&tmp.path().join("agent"));
    let reaper = Reaper::new(tmp.path().join("agent/local/workers"));
    let zk = zk_client(&shared_zk().connect_string()).await;
    let mut agent = Agent::start(&config);
    let path = format!("{root}/supervisors/{id}");
    wait_info(&zk, &path, &agent, "running", LONG, |i, _| i["state"] == "running").await;
    let escape = tmp.path().join("escaped");
    let base = |topology: &str| {
        json!({"schema": 1, "topology_id": topology,
               "launch": {"command": ["/bin/sh", "-c", format!("touch {}", escape.display())]},
               "workers": [{"supervisor_id": id, "port": 6700}]})
    };
    let mut hostile = Vec::new();
    let mut with = |node: &str, topology: &str, edit: &dyn Fn(&mut Value)| {
        let mut a = base(topology);
        edit(&mut a);
        hostile.push((node.to_owned(), a));
    };
    with("dotdot", "..", &|_| {});
    with("traverse", "../../../tmp/x", &|_| {});
    with("relative", "relative", &|a| a["launch"]["command"] = json!(["bin/sh", "-c", "true"]));
    with("huge-env", "huge-env", &|a| a["launch"]["env"] = json!({"BIG": "x".repeat(100_000)}));
    with("bad-env", "bad-env", &|a| a["launch"]["env"] = json!({"A=B": "1"}));
    with("blob-name", "blob-name", &|a| {
        a["blobs"] = json!([{"key": "../k", "name": "../../n"}]);
        a["launch"]["command"] = json!(["{blob:../../n}/run"]);
    });
    with("neg", "neg", &|a| a["launch"]["memory_mb"] = json!(-5));
    with("port0", "port0", &|a| a["workers"] = json!([{"supervisor_id": id, "port": 0}]));
    with("sup-dots", "sup-dots", &|a| a["workers"] = json!([{"supervisor_id": "../..", "port": 6700}]));
    for (node, a) in &hostile {
        put_json(&zk, &format!("{root}/assignments/{node}"), a).await;
    }
    // Something valid after them, so we know they were all read.
    let ok = json!({"schema": 1, "topology_id": "ok", "launch": {"command": ["/bin/sleep", "1000"]},
                    "workers": [{"supervisor_id": id, "port": 6701}]});
    put_json(&zk, &format!("{root}/assignments/ok"), &ok).await;
    let (info, _) =
        wait_info(&zk, &path, &agent, "the valid one running", LONG, |i, _| running_pid(i, 6701).is_some()).await;
    reaper.track(running_pid(&info, 6701).unwrap());
    for node in ["dotdot", "traverse", "relative", "huge-env", "bad-env", "blob-name", "neg", "port0"] {
        agent.wait_log(
            &format!("ignoring an invalid assignment; its workers are left as they are topology={node} "),
            Duration::from_secs(10),
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (info, _) = read_json(&zk, &path).await.unwrap();
    assert_eq!(info["used_slots"], json!([6701]), "nothing hostile runs: {info}");
    assert!(!escape.exists(), "no hostile command ran");
    let mut outside: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    outside.sort();
    assert_eq!(outside, ["agent"], "nothing created outside the agent's dirs");
    let logs: Vec<String> = std::fs::read_dir(tmp.path().join("agent/logs/workers"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(logs, ["ok"]);
    assert!(agent.try_status().is_none(), "the agent runs on");
}

/// An agent with its own root and id and a 5 s backoff: (temp dir, config, root, id).
async fn limited_agent(name: &str) -> (tempfile::TempDir, std::path::PathBuf, String, String) {
    let agent = TestAgent::new("i", name);
    agent.edit(|text| format!("{text}\n[restart]\nbackoff_initial_ms = 5000\n"));
    let TestAgent { tmp, root, id, config } = agent;
    (tmp, config, root, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_over_its_memory_limit_is_killed_reported_as_memory_limit_and_restarted() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: cgroups need root");
        return;
    }
    let (tmp, config, root, id) = limited_agent("oom").await;
    let reaper = Reaper::new(tmp.path().join("agent/local/workers"));
    let zk = zk_client(&shared_zk().connect_string()).await;
    let hog =
        "import time\nb = bytearray(256 * 1024 * 1024)\nfor i in range(0, len(b), 4096): b[i] = 1\ntime.sleep(60)";
    let a = json!({"schema": 1, "topology_id": "hog",
        "launch": {"command": ["/usr/bin/env", "python3", "-c", hog], "memory_mb": 64},
        "workers": [{"supervisor_id": id, "port": 6700}]});
    put_json(&zk, &format!("{root}/assignments/hog"), &a).await;
    let mut agent = Agent::start(&config);
    agent.wait_log("worker isolation", Duration::from_secs(30));
    let log = agent.log_text();
    if log.contains("mechanism=\"rlimits\"") || log.contains("mechanism=rlimits") {
        // RLIMIT_AS makes the allocation fail instead: still never above the limit.
        eprintln!("no cgroup on this host; the kernel-OOM path is not testable here");
        return;
    }
    let path = format!("{root}/supervisors/{id}");
    let (info, _) = wait_info(&zk, &path, &agent, "an exit for memory_limit", LONG, |i, _| {
        slot(i, 6700).is_some_and(|s| s["last_exit"]["reason"] == "memory_limit")
    })
    .await;
    let s = slot(&info, 6700).unwrap();
    assert_eq!(s["last_exit"]["signal"], json!("SIGKILL"), "{s}");
    // Restarted: at once after the first failure, then with backoff.
    let (info, _) = wait_info(&zk, &path, &agent, "a backoff after repeated OOM kills", LONG, |i, _| {
        slot_state(i, 6700) == Some("backoff")
    })
    .await;
    assert!(slot(&info, 6700).unwrap()["restarts"].as_u64() >= Some(1), "{info}");
    drop(reaper);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grandchild_that_escaped_its_group_and_dir_dies_with_the_workers_cgroup() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: cgroups need root");
        return;
    }
    let (tmp, config, root, id) = limited_agent("escape").await;
    let pidfile = tmp.path().join("grandchild.pid");
    // New session, cwd /: neither the process group nor the worker dir finds it again.
    let script = format!("(cd / && exec setsid sleep 1000) & echo $! > {}; exec sleep 1000", pidfile.display());
    let a = json!({"schema": 1, "topology_id": "escaper",
        "launch": {"command": ["/bin/sh", "-c", script]},
        "workers": [{"supervisor_id": id, "port": 6700}]});
    let zk = zk_client(&shared_zk().connect_string()).await;
    put_json(&zk, &format!("{root}/assignments/escaper"), &a).await;
    let agent = Agent::start(&config);
    let grandchild: u32 =
        wait_for("the grandchild's pid", LONG, || std::fs::read_to_string(&pidfile).ok()?.trim().parse().ok());
    let log = agent.log_text();
    if log.contains("mechanism=\"rlimits\"") || log.contains("mechanism=rlimits") {
        eprintln!("no cgroup on this host; the escaped grandchild cannot be tracked");
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(grandchild as i32), nix::sys::signal::Signal::SIGKILL);
        return;
    }
    // How workers enter their cgroup is said once at start: born in it wherever it is v2.
    let v2 = log.contains("mechanism=\"cgroup v2\"");
    let born = log.contains("isolation: workers are born in their cgroup (clone3 CLONE_INTO_CGROUP)");
    let joined = log.contains("isolation: workers join their cgroup between clone3 and exec")
        || log.contains("isolation: workers are forked (no clone3) and enter their cgroup between fork and exec");
    assert_eq!((born, joined), (v2, !v2), "cgroup v2: {v2}; the agent's log:\n{log}");
    println!("{}", log.lines().find(|l| l.contains("isolation: workers")).unwrap());
    // Stopping the worker (its assignment goes) kills its whole cgroup, the grandchild with it.
    std::thread::sleep(Duration::from_millis(500));
    assert!(alive(grandchild), "the grandchild runs while its worker does");
    zk.delete(&format!("{root}/assignments/escaper"), None).await.unwrap();
    wait_for("the escaped grandchild to be killed", LONG, || (!alive(grandchild)).then_some(()));
    let path = format!("{root}/supervisors/{id}");
    wait_info(&zk, &path, &agent, "slot 6700 empty", LONG, |i, _| slot(i, 6700).is_none()).await;
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_on_the_host_never_sweeps_the_first_ones_workers() {
    // Regression: the start-up sweep of unrecorded worker cgroups once looked at one parent
    // shared by every agent on the host, and killed the other agents' workers.
    let (tmp, config, root, id) = limited_agent("first").await;
    let reaper = Reaper::new(tmp.path().join("agent/local/workers"));
    let zk = zk_client(&shared_zk().connect_string()).await;
    let a = json!({"schema": 1, "topology_id": "steady", "launch": {"command": ["/bin/sleep", "1000"]},
                   "workers": [{"supervisor_id": id, "port": 6700}]});
    put_json(&zk, &format!("{root}/assignments/steady"), &a).await;
    let first = Agent::start(&config);
    let path = format!("{root}/supervisors/{id}");
    let (info, _) = wait_info(&zk, &path, &first, "running", LONG, |i, _| running_pid(i, 6700).is_some()).await;
    let pid = running_pid(&info, 6700).unwrap();
    reaper.track(pid);
    let (_tmp2, config2, root2, id2) = limited_agent("second").await;
    let second = Agent::start(&config2);
    wait_info(&zk, &format!("{root2}/supervisors/{id2}"), &second, "the second agent running", LONG, |i, _| {
        i["state"] == "running"
    })
    .await;
    std::thread::sleep(Duration::from_secs(1));
    assert!(alive(pid), "the first agent's worker survived the second agent's start:\n{}", second.log_text());
}
