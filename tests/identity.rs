//! Identity (SPEC §5, §6): the supervisor id is pinned to the local dir, `gale state reset-id`
//! is the deliberate way to change it, and the local dir's lock is a POSIX record lock that a
//! script can probe. Real binary, real ZooKeeper, real workers and (as root, on this project's
//! hosts) real cgroups.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;
use gale::local_state::{LocalState, Workers};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use zookeeper_client as zkc;

const LONG: Duration = Duration::from_secs(60);

/// The probe docs/operations.md gives operators ("The local directory"): F_GETLK reports the
/// holder's pid without taking the lock.
const PROBE: &str = "import fcntl,struct,sys; f=open(sys.argv[1]); \
    t,_,_,_,p=struct.unpack('hhqqi',fcntl.fcntl(f,fcntl.F_GETLK,struct.pack('hhqqi',fcntl.F_WRLCK,0,0,0,0))); \
    print(p if t!=fcntl.F_UNLCK else 'unlocked')";

fn sleeper(topology: &str, id: &str) -> Value {
    json!({"schema": 1, "topology_id": topology, "launch": {"command": ["/bin/sleep", "1000"]},
           "workers": [{"supervisor_id": id, "port": 6700}]})
}

fn info_path(t: &TestAgent, id: &str) -> String {
    format!("{}/supervisors/{id}", t.root)
}

/// Runs a sleeping worker on 6700, stops the agent cleanly (the worker keeps running) and
/// returns the worker's pid and id.
async fn one_worker_then_stop(t: &TestAgent, zk: &zkc::Client, reaper: &Reaper) -> (u32, String) {
    put_json(zk, &format!("{}/assignments/steady", t.root), &sleeper("steady", &t.id)).await;
    let mut agent = Agent::start(&t.config);
    let info = t.wait_info(zk, &agent, "the worker running", |i| running_pid(i, 6700).is_some()).await;
    let pid = running_pid(&info, 6700).unwrap();
    reaper.track(pid);
    let worker_id = slot(&info, 6700).unwrap()["worker_id"].as_str().unwrap().to_owned();
    agent.signal(Signal::SIGTERM);
    assert_eq!(agent.wait_exit(Duration::from_secs(15)), 0);
    assert!(alive(pid), "stopping the agent does not stop its worker");
    (pid, worker_id)
}

/// The worker's memory cgroup (the primary one on a v1 host) as a directory, if it has one.
fn memory_cgroup_dir(pid: u32) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers.split(',').any(|c| c == "memory").then(|| path.to_owned())
    })?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mounts.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        let fields: Vec<&str> = before.split(' ').collect();
        let after: Vec<&str> = after.split(' ').collect();
        let is_memory = after.first() == Some(&"cgroup") && after.get(2)?.split(',').any(|o| o == "memory");
        let relative = Path::new(&path).strip_prefix(fields.get(3)?).ok()?;
        let mount_point = fields.get(4)?;
        is_memory.then(|| Path::new(mount_point).join(relative))
    })
}

/// Whether this host puts workers in v1 cgroups (root, memory mounted as v1).
fn v1_cgroups() -> bool {
    nix::unistd::Uid::effective().is_root() && memory_cgroup_dir(std::process::id()).is_some()
}

fn recorded_workers(t: &TestAgent) -> usize {
    let state = LocalState::read_only(&t.local().join("state")).unwrap().unwrap();
    state.get::<Workers>().unwrap().unwrap_or_default().len()
}

fn dump(t: &TestAgent) -> String {
    expect(&t.config, &["state", "dump"], 0).0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_id_other_than_the_stored_one_exits_4_and_changes_nothing() {
    let t = TestAgent::new("id", "pinned");
    let zk = zk_client(&shared_zk().connect_string()).await;
    let mut agent = Agent::start(&t.config);
    t.wait_info(&zk, &agent, "registered", |i| i["state"] == "running").await;
    agent.signal(Signal::SIGTERM);
    assert_eq!(agent.wait_exit(Duration::from_secs(15)), 0);
    let versions = |t: &TestAgent| std::fs::read_dir(t.local().join("state")).unwrap().count();
    let before = versions(&t);

    t.edit(|text| text.replace("id = \"sup-pinned\"", "id = \"sup-renamed\""));
    let (_, stderr) = expect(&t.config, &["run"], 4);
    let line = stderr.lines().find(|l| l.starts_with("gale: ")).unwrap_or_else(|| panic!("{stderr}"));
    for part in ["\"sup-pinned\"", "\"sup-renamed\"", &t.local().display().to_string(), "gale state reset-id"] {
        assert!(line.contains(part), "{part} missing from: {line}");
    }
    assert!(t.local().join("clean-shutdown").exists(), "the marker is not consumed");
    assert_eq!(versions(&t), before, "no state written");
    assert!(dump(&t).contains("sup-pinned"));
    assert!(read_json(&zk, &info_path(&t, "sup-renamed")).await.is_none(), "never registered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_id_is_refused_while_the_agent_runs_and_the_lock_probe_names_the_agent() {
    let t = TestAgent::new("id", "running");
    let zk = zk_client(&shared_zk().connect_string()).await;
    let agent = Agent::start(&t.config);
    t.wait_info(&zk, &agent, "registered", |i| i["state"] == "running").await;
    let (_, stderr) = expect(&t.config, &["state", "reset-id", "--id", "sup-other"], 4);
    assert!(stderr.contains(&format!("pid {}", agent.pid())), "{stderr}");
    assert!(stderr.contains("stop it first"), "{stderr}");
    assert!(dump(&t).contains("sup-running") && !dump(&t).contains("sup-other"), "nothing changed");

    // The documented probe reports the holder without taking the lock (the agent keeps it).
    let lock = t.local().join("lock");
    let probe = || std::process::Command::new("python3").args(["-c", PROBE]).arg(&lock).output().unwrap();
    let out = probe();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), agent.pid().to_string());
    assert_eq!(text(&probe().stdout).trim(), agent.pid().to_string(), "still held after a probe");
    drop(agent);
    wait_for("the lock to go with the agent", Duration::from_secs(5), || {
        (text(&probe().stdout).trim() == "unlocked").then_some(())
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_id_hands_running_workers_over_to_the_agent_under_the_new_id() {
    if !v1_cgroups() {
        eprintln!("skipped: needs root and cgroup v1 (cgroup v2 cannot rename a cgroup)");
        return;
    }
    let t = TestAgent::new("id", "handover");
    let reaper = t.reaper();
    let zk = zk_client(&shared_zk().connect_string()).await;
    let (pid, worker_id) = one_worker_then_stop(&t, &zk, &reaper).await;
    let before = memory_cgroup_dir(pid).unwrap();
    assert!(before.ends_with(format!("gale-sup-handover/{worker_id}")), "{}", before.display());

    let (_, stderr) = expect(&t.config, &["state", "reset-id", "--id", "sup-handover-2"], 2);
    assert!(stderr.contains("--stop-workers") && stderr.contains("--hand-over"), "{stderr}");
    assert!(stderr.contains(&format!("pid {pid}")), "names the running worker: {stderr}");

    let (stdout, _) = expect(&t.config, &["state", "reset-id", "--id", "sup-handover-2", "--hand-over"], 0);
    println!("{stdout}");
    assert!(stdout.contains("supervisor id: sup-handover -> sup-handover-2"), "{stdout}");
    assert!(stdout.contains("renamed cgroup") && stdout.contains("handed over 1"), "{stdout}");
    assert!(stdout.contains("set supervisor.id = \"sup-handover-2\""), "the config still names the old id: {stdout}");
    assert!(alive(pid));
    let moved = memory_cgroup_dir(pid).unwrap();
    assert!(moved.ends_with(format!("gale-sup-handover-2/{worker_id}")), "{}", moved.display());
    assert!(dump(&t).contains("sup-handover-2"));

    // The scheduler places the topology on the new id; the agent is configured with it.
    put_json(&zk, &format!("{}/assignments/steady", t.root), &sleeper("steady", "sup-handover-2")).await;
    t.edit(|text| text.replace("id = \"sup-handover\"", "id = \"sup-handover-2\""));
    let agent = Agent::start(&t.config);
    let path = info_path(&t, "sup-handover-2");
    let (info, _) = wait_info(&zk, &path, &agent, "the worker adopted under the new id", LONG, |i, _| {
        i["state"] == "running" && running_pid(i, 6700).is_some()
    })
    .await;
    assert_eq!(running_pid(&info, 6700), Some(pid), "the same process: {info}");
    assert_eq!(slot(&info, 6700).unwrap()["restarts"], 0, "{info}");
    assert!(agent.log_text().contains("adopted a worker"), "{}", agent.log_text());
    assert!(read_json(&zk, &info_path(&t, "sup-handover")).await.is_none(), "the old id is not registered");
    assert_eq!(memory_cgroup_dir(pid).unwrap(), moved, "the start-up sweep left the adopted worker's cgroup alone");

    // The agent found the cgroup under the new parent: stopping the worker removes it.
    zk.delete(&format!("{}/assignments/steady", t.root), None).await.unwrap();
    wait_for("the worker stopped", LONG, || (!alive(pid)).then_some(()));
    wait_for("its cgroup removed by the agent", LONG, || (!moved.exists()).then_some(()));
    drop(agent);
    drop(reaper);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_id_with_stop_workers_stops_them_and_empties_the_records() {
    let t = TestAgent::new("id", "stop");
    let reaper = t.reaper();
    let zk = zk_client(&shared_zk().connect_string()).await;
    let (pid, _) = one_worker_then_stop(&t, &zk, &reaper).await;
    let cgroup = v1_cgroups().then(|| memory_cgroup_dir(pid)).flatten();
    assert_eq!(recorded_workers(&t), 1);

    let (stdout, _) = expect(&t.config, &["state", "reset-id", "--id", "sup-stop-2", "--stop-workers"], 0);
    println!("{stdout}");
    assert!(stdout.contains("supervisor id: sup-stop -> sup-stop-2"), "{stdout}");
    assert!(stdout.contains("stopped 1 worker(s) (SIGTERM)"), "{stdout}");
    assert!(!alive(pid), "the worker is gone when the command returns");
    assert_eq!(recorded_workers(&t), 0, "the records are empty");
    if let Some(dir) = cgroup {
        assert!(!dir.exists(), "its cgroup is removed: {}", dir.display());
        assert!(!dir.parent().unwrap().exists(), "and the emptied gale-sup-stop parent");
    }

    // The next agent, configured with the new id, registers under it and starts nothing of
    // the old id's placements.
    t.edit(|text| text.replace("id = \"sup-stop\"", "id = \"sup-stop-2\""));
    let agent = Agent::start(&t.config);
    let path = info_path(&t, "sup-stop-2");
    let (info, _) =
        wait_info(&zk, &path, &agent, "registered under the new id", LONG, |i, _| i["state"] == "running").await;
    assert!(slot(&info, 6700).is_none(), "{info}");
    drop(agent);
}
