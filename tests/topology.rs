//! `gale topology submit|kill|list|show`: the real binary against a real ZooKeeper, each test
//! under its own root; fake supervisors are ephemeral SupervisorInfo nodes of a test session.
//! Also the example worker script, run the way an agent runs it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};
use zookeeper_client as zkc;

fn write_json(dir: &Path, name: &str, value: &Value) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec_pretty(value).unwrap()).unwrap();
    path
}

fn assignment(id: &str, workers: Value) -> Value {
    json!({ "schema": 1, "topology_id": id,
            "launch": { "command": ["/bin/sleep", "1000"], "liveness": "process" },
            "workers": workers })
}

async fn get(zk: &zkc::Client, path: &str) -> Option<(Value, zkc::Stat)> {
    match zk.get_data(path).await {
        Ok((data, stat)) => Some((serde_json::from_slice(&data).expect("JSON"), stat)),
        Err(zkc::Error::NoNode) => None,
        Err(e) => panic!("reading {path}: {e}"),
    }
}

async fn create(zk: &zkc::Client, path: &str, data: &[u8], mode: zkc::CreateMode) {
    create_parents(zk, path).await;
    zk.create(path, data, &mode.with_acls(zkc::Acls::anyone_all())).await.unwrap();
}

/// Registers a fake live supervisor: an ephemeral SupervisorInfo (SPEC §3.1) owned by `zk`.
async fn fake_supervisor(zk: &zkc::Client, root: &str, id: &str, host: &str, slots: &[u16], used: &[(u16, &str)]) {
    let workers: Vec<Value> = used
        .iter()
        .map(|(port, topology)| {
            json!({"port": port, "topology_id": topology, "worker_id": "w", "pid": 1, "state": "running",
                   "since_ms": 1, "restarts": 0, "last_exit": null})
        })
        .collect();
    let info = json!({ "schema": 1, "id": id, "hostname": host, "version": "0.1.0", "state": "running",
        "health": "healthy", "started_at_ms": 1, "time_ms": 2, "slots": slots,
        "used_slots": used.iter().map(|u| u.0).collect::<Vec<_>>(),
        "capacity": {"cpu_percent": 400, "memory_mb": 4096}, "labels": {}, "workers": workers });
    let path = format!("{root}/supervisors/{id}");
    create(zk, &path, &serde_json::to_vec(&info).unwrap(), zkc::CreateMode::Ephemeral).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_list_show_kill_round_trip() {
    let root = "/t-topo-roundtrip";
    let (tmp, config) = setup(root);
    let zk = zk_client(&shared_zk().connect_string()).await;
    let file = write_json(
        tmp.path(),
        "wc.json",
        &assignment("wc", json!([{"supervisor_id": "sup-a", "port": 6700}, {"supervisor_id": "sup-b", "port": 6701}])),
    );
    let file_arg = file.to_str().unwrap();

    let (out, _) = expect(&config, &["topology", "submit", file_arg], 0);
    assert!(out.contains(&format!("created {root}/assignments/wc (node version 0)")), "{out}");
    assert!(out.contains("sup-a port 6700") && out.contains("sup-b port 6701"), "{out}");
    let (node, stat) = get(&zk, &format!("{root}/assignments/wc")).await.expect("written");
    assert_eq!((node["schema"].clone(), node["topology_id"].clone()), (json!(1), json!("wc")));
    assert_eq!(node["workers"].as_array().unwrap().len(), 2);
    assert_eq!(stat.ephemeral_owner, 0, "assignments are persistent");

    // Submitting again is an update of the same node.
    let (out, _) = expect(&config, &["topology", "submit", file_arg], 0);
    assert!(out.contains("updated") && out.contains("(node version 1)"), "{out}");

    // A node nobody can parse is listed with its error, between the good ones.
    create(&zk, &format!("{root}/assignments/broken"), b"{not json", zkc::CreateMode::Persistent).await;
    let (list, _) = expect(&config, &["topology", "list"], 0);
    let line = |id: &str| list.lines().find(|l| l.starts_with(id)).unwrap_or_else(|| panic!("{id} in:\n{list}"));
    let wc: Vec<&str> = line("wc").split_whitespace().collect();
    assert_eq!(wc, ["wc", "2", "sup-a,sup-b"], "{list}");
    assert!(line("broken").contains(&format!("(unreadable) {root}/assignments/broken: not a valid payload")), "{list}");

    let (shown, _) = expect(&config, &["topology", "show", "wc"], 0);
    assert!(shown.lines().count() > 5, "pretty JSON: {shown}");
    assert_eq!(serde_json::from_str::<Value>(&shown).unwrap(), node);

    // Fields this gale does not know (another scheduler's) are shown, not dropped.
    let mut extra = assignment("extra", json!([]));
    extra["scheduler_note"] = json!("placed by hand");
    create(
        &zk,
        &format!("{root}/assignments/extra"),
        &serde_json::to_vec(&extra).unwrap(),
        zkc::CreateMode::Persistent,
    )
    .await;
    let (shown, warning) = expect(&config, &["topology", "show", "extra"], 0);
    assert_eq!(serde_json::from_str::<Value>(&shown).unwrap(), extra);
    assert!(warning.is_empty(), "a valid assignment: {warning}");
    // A node that does not match its name is shown with what agents will say about it.
    create(
        &zk,
        &format!("{root}/assignments/misnamed"),
        &serde_json::to_vec(&extra).unwrap(),
        zkc::CreateMode::Persistent,
    )
    .await;
    let (_, warning) = expect(&config, &["topology", "show", "misnamed"], 0);
    assert!(warning.contains("agents reject this assignment") && warning.contains("`misnamed`"), "{warning}");

    let (out, _) = expect(&config, &["topology", "kill", "wc"], 0);
    assert!(out.contains("killed topology wc"), "{out}");
    assert!(get(&zk, &format!("{root}/assignments/wc")).await.is_none(), "deleted");
    let (_, err) = expect(&config, &["topology", "kill", "wc"], 1);
    assert!(err.contains("no topology wc"), "{err}");
    let (_, err) = expect(&config, &["topology", "show", "wc"], 1);
    assert!(err.contains("no topology wc"), "{err}");
    let (_, err) = expect(&config, &["topology", "kill", "../x"], 2);
    assert!(err.contains("`../x`"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_exits_1_naming_file_and_field_and_writes_nothing() {
    let root = "/t-topo-invalid";
    let (tmp, config) = setup(root);
    let zk = zk_client(&shared_zk().connect_string()).await;

    let mut bad = assignment("wc", json!([]));
    bad["launch"]["command"][0] = json!("sleep");
    let file = write_json(tmp.path(), "bad.json", &bad);
    let (_, err) = expect(&config, &["topology", "submit", file.to_str().unwrap()], 1);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    for part in [file.to_str().unwrap(), "topology wc", "launch.command[0]", "absolute path"] {
        assert!(err.contains(part), "`{part}` missing: {err}");
    }

    let mut bad = assignment("wc", json!([]));
    bad["launch"]["env"] = json!({"GALE_PORT": "1"});
    let file = write_json(tmp.path(), "env.json", &bad);
    let (_, err) = expect(&config, &["topology", "submit", file.to_str().unwrap()], 1);
    assert!(err.contains("launch.env.GALE_PORT"), "{err}");

    let garbled = tmp.path().join("garbled.json");
    std::fs::write(&garbled, "{\"schema\": 1,").unwrap();
    let (_, err) = expect(&config, &["topology", "submit", garbled.to_str().unwrap()], 1);
    assert!(err.contains("garbled.json"), "{err}");
    let (_, err) = expect(&config, &["topology", "submit", "/nonexistent/wc.json"], 1);
    assert!(err.contains("/nonexistent/wc.json"), "{err}");

    assert!(get(&zk, &format!("{root}/assignments/wc")).await.is_none(), "nothing was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_place_spreads_the_example_over_free_slots_of_both_hosts() {
    let root = "/t-topo-place";
    let (tmp, config) = setup(root);
    let zk = zk_client(&shared_zk().connect_string()).await;
    // host-a: 6700 runs another topology's worker, 6702 is assigned to another topology that
    // has not started yet; host-b is empty. Free: a:6701, b:6700, b:6701.
    fake_supervisor(&zk, root, "sup-a", "host-a", &[6700, 6701, 6702], &[(6700, "other")]).await;
    fake_supervisor(&zk, root, "sup-b", "host-b", &[6700, 6701], &[]).await;
    let other = assignment(
        "other",
        json!([{"supervisor_id": "sup-a", "port": 6700}, {"supervisor_id": "sup-a", "port": 6702}]),
    );
    let other_file = write_json(tmp.path(), "other.json", &other);
    expect(&config, &["topology", "submit", other_file.to_str().unwrap()], 0);

    // The example, as the demo submits it.
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/wordcount.json");
    let file_arg = file.to_str().unwrap();

    let (out, _) = expect(&config, &["topology", "submit", file_arg, "--auto-place", "2"], 0);
    assert!(out.contains("topology wordcount, 2 worker(s)"), "{out}");
    let (node, _) = get(&zk, &format!("{root}/assignments/wordcount")).await.expect("written");
    let mut sups: Vec<&str> =
        node["workers"].as_array().unwrap().iter().map(|w| w["supervisor_id"].as_str().unwrap()).collect();
    sups.sort();
    assert_eq!(sups, ["sup-a", "sup-b"], "one worker per host: {node}");
    assert!(node["workers"].as_array().unwrap().contains(&json!({"supervisor_id": "sup-a", "port": 6701})), "{node}");
    assert!(out.contains("(host host-a)") && out.contains("(host host-b)"), "{out}");
    assert_eq!(node["launch"]["command"][1], json!("{blob:code}/worker.sh"), "the code comes as a blob");
    assert_eq!(node["blobs"][0]["key"], json!("wordcount-code"));

    // Its own earlier placements do not count as taken: three slots are free for it.
    let (out, _) = expect(&config, &["topology", "submit", file_arg, "--auto-place", "3"], 0);
    assert!(out.contains("updated") && out.contains("3 worker(s)"), "{out}");
    let (_, err) = expect(&config, &["topology", "submit", file_arg, "--auto-place", "4"], 1);
    assert!(err.contains("--auto-place 4: only 3 free slot(s)"), "{err}");
    let (node_after, _) = get(&zk, &format!("{root}/assignments/wordcount")).await.unwrap();
    assert_eq!(node_after["workers"].as_array().unwrap().len(), 3, "a failed placement writes nothing");
    expect(&config, &["topology", "submit", file_arg, "--auto-place", "0"], 2);
}

#[test]
fn an_unreachable_zookeeper_exits_1() {
    let tmp = tempfile::tempdir().unwrap();
    let config = AgentSpec::new(&format!("127.0.0.1:{}", free_port()), "/t").write(tmp.path());
    for args in [&["topology", "list"][..], &["topology", "show", "x"], &["topology", "kill", "x"]] {
        let (_, err) = expect(&config, args, 1);
        assert!(err.contains("cannot reach zookeeper"), "{err}");
    }
}

#[test]
fn the_example_worker_logs_heartbeats_and_stops_cleanly_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let heartbeat = tmp.path().join("heartbeat");
    let log = tmp.path().join("worker.log");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/wordcount/worker.sh");
    let mut child = Command::new("/bin/sh")
        .arg(&script)
        .args(["--port", "6700"])
        .env("GALE_TOPOLOGY_ID", "wordcount")
        .env("GALE_WORKER_ID", "w-1")
        .env("GALE_HEARTBEAT_FILE", &heartbeat)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for("two counted lines", Duration::from_secs(10), || (read().matches("counted").count() >= 2).then_some(()));
    assert!(heartbeat.exists(), "heartbeat file touched");
    let first = read();
    assert!(first.contains(&format!("topology=wordcount worker_id=w-1 port=6700 pid={}", child.id())), "{first}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = wait_for("the worker to exit", Duration::from_secs(5), || child.try_wait().unwrap());
    assert_eq!(status.code(), Some(0));
    assert!(read().contains("stopping"), "{}", read());
}
