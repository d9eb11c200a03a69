//! Isolation (SPEC §7): workers run as the assignment's user when allowed, refused otherwise.
//! Runs as root (the agent must be able to switch users); real binary, real ZooKeeper.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use common::*;
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
