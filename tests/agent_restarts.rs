//! An agent restarted again and again under its running workers, the way a service manager
//! restarts a unit: SIGTERM and SIGKILL three times each, alternating, and each new `gale run`
//! first written into the agent's cgroup, as systemd writes a unit's new main process into the
//! unit's `cgroup.procs` (on cgroup v2 that write fails with `EBUSY` once the agent has made
//! its own cgroup an inner node with controllers enabled).
//!
//! After every restart: the same worker processes, adopted (never relaunched); each still in
//! its own cgroup `gale-<supervisor id>/<worker id>`, with the limits its assignment asked for
//! (v2: `memory.max`, `cpu.max`, `pids.max`; v1: `memory.limit_in_bytes`,
//! `cpu.cfs_quota_us`/`cpu.cfs_period_us`, `pids.max`); and no `EBUSY` in the agent's log. At
//! the end, deleting the assignment kills each worker's whole cgroup, a grandchild that left
//! the worker's session and directory included: the last agent found the cgroups again.
//!
//! It runs on the host (cgroup v1 on the development machine) and in the VM stage on a cgroup v2
//! kernel (`scripts/vm/cgroup2.sh`), both in the root cgroup and in a systemd-like delegated
//! `/system.slice/gale.service`. Without root it runs with rlimits and checks the adoption only.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use zookeeper_client as zkc;

const PORTS: [u16; 2] = [6700, 6701];
const MEMORY_MB: u64 = 96;
const CPU_PERCENT: u64 = 50;
/// What gale writes to `pids.max` of every worker (`supervisor/processes/launch.rs`).
const PIDS_MAX: &str = "4096";
/// An upper bound only (a restart takes about 0.4 s on the host): under TCG in the VM stage,
/// on a busy machine, an agent's start can take tens of seconds.
const LONG: Duration = Duration::from_secs(120);

/// A cgroup hierarchy: the unified one, or the v1 hierarchy of one controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hierarchy {
    Unified,
    V1(&'static str),
}

/// The cgroup of `pid` in `hierarchy`, as `/proc/<pid>/cgroup` shows it.
fn cgroup_of(pid: u32, hierarchy: Hierarchy) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let hit = match hierarchy {
            Hierarchy::Unified => controllers.is_empty(),
            Hierarchy::V1(c) => controllers.split(',').any(|x| x == c),
        };
        hit.then(|| path.to_owned())
    })
}

/// Where `hierarchy` is mounted (the mount of its root), from this process's mountinfo.
fn mount_of(hierarchy: Hierarchy) -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        let fields: Vec<&str> = before.split_whitespace().collect();
        let after: Vec<&str> = after.split_whitespace().collect();
        let hit = match hierarchy {
            Hierarchy::Unified => after.first() == Some(&"cgroup2"),
            Hierarchy::V1(c) => after.first() == Some(&"cgroup") && after.get(2)?.split(',').any(|o| o == c),
        };
        (hit && fields.get(3) == Some(&"/")).then(|| PathBuf::from(fields[4]))
    })
}

/// The directory of `pid`'s cgroup in `hierarchy`.
fn cgroup_dir(pid: u32, hierarchy: Hierarchy) -> Option<PathBuf> {
    let cgroup = cgroup_of(pid, hierarchy)?;
    Some(mount_of(hierarchy)?.join(cgroup.trim_start_matches('/')))
}

/// What this host gives a root agent: "cgroup v2" when the unified hierarchy at /sys/fs/cgroup
/// has memory and cpu, else "cgroup v1"; "rlimits" without root.
fn expected_mechanism() -> &'static str {
    if !nix::unistd::Uid::effective().is_root() {
        return "rlimits";
    }
    let controllers = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
    let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
    if has("memory") && has("cpu") { "cgroup v2" } else { "cgroup v1" }
}

/// The `cgroup.procs` a service manager writes the agent into: the test's own cgroup (the
/// unit's), in the unified hierarchy on v2, the memory hierarchy on v1; none with rlimits.
fn unit_procs_file(mechanism: &str) -> Option<PathBuf> {
    let hierarchy = match mechanism {
        "cgroup v2" => Hierarchy::Unified,
        "cgroup v1" => Hierarchy::V1("memory"),
        _ => return None,
    };
    let dir = cgroup_dir(std::process::id(), hierarchy)
        .unwrap_or_else(|| panic!("the test's own {hierarchy:?} cgroup is not mounted"));
    Some(dir.join("cgroup.procs"))
}

/// Starts `gale run` as a service manager does: the new process writes itself into the unit's
/// `cgroup.procs` (bash names the errno if that fails), then execs the agent.
fn start_agent(config: &Path, procs: Option<&Path>, n: usize) -> Agent {
    let log = config.parent().unwrap().join(format!("agent-{n}.log"));
    let file = std::fs::File::create(&log).unwrap();
    let join = r#"if [ -n "$0" ]; then echo $$ > "$0" || exit 111; fi; exec "$@""#;
    let child = Command::new("bash")
        .arg("-c")
        .arg(join)
        .arg(procs.map(Path::as_os_str).unwrap_or_default())
        .arg(env!("CARGO_BIN_EXE_gale"))
        .args(["run", "--config"])
        .arg(config)
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .expect("spawn bash");
    Agent { child, log, status: None }
}

/// Each worker leaves a grandchild in a new session with cwd `/`, so only the worker's cgroup
/// can find it; its pid goes to `<dir>/grandchild-<port>`.
fn assignment(id: &str, dir: &Path) -> Value {
    let script = format!(
        "(cd / && exec setsid sleep 1000) & echo $! > {}/grandchild-$GALE_PORT; exec sleep 1000",
        dir.display()
    );
    let workers: Vec<Value> = PORTS.iter().map(|p| json!({"supervisor_id": id, "port": p})).collect();
    json!({"schema": 1, "topology_id": "steady",
        "launch": {"command": ["/bin/sh", "-c", script], "memory_mb": MEMORY_MB, "cpu_percent": CPU_PERCENT},
        "workers": workers})
}

/// The two workers as (pid, worker id), once both run; with the registration's session.
async fn running_workers(
    t: &TestAgent,
    zk: &zkc::Client,
    agent: &Agent,
    what: &str,
    not_session: i64,
) -> ([(u32, String); 2], i64) {
    let (info, stat) = wait_info(zk, &t.info_path(), agent, what, LONG, |v, s| {
        s.ephemeral_owner != not_session
            && v["state"] == "running"
            && PORTS.iter().all(|p| running_pid(v, *p).is_some())
    })
    .await;
    let worker = |port| {
        (running_pid(&info, port).unwrap(), slot(&info, port).unwrap()["worker_id"].as_str().unwrap().to_owned())
    };
    ([worker(PORTS[0]), worker(PORTS[1])], stat.ephemeral_owner)
}

fn read_trimmed(dir: &Path, file: &str) -> String {
    let path = dir.join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).trim().to_owned()
}

/// The worker's cgroup in `hierarchy`: `<mount>/.../gale-<supervisor id>/<worker id>`.
fn worker_cgroup(pid: u32, worker_id: &str, supervisor_id: &str, hierarchy: Hierarchy) -> PathBuf {
    let dir = cgroup_dir(pid, hierarchy).unwrap_or_else(|| panic!("worker {pid} has no {hierarchy:?} cgroup"));
    assert!(dir.ends_with(worker_id), "worker {pid} is in {} (its id is {worker_id})", dir.display());
    let parent = dir.parent().unwrap();
    assert!(parent.ends_with(format!("gale-{supervisor_id}")), "worker {pid}'s parent cgroup: {}", parent.display());
    dir
}

/// The worker is in its own cgroup with the assignment's limits; returns its primary directory.
fn assert_confined(mechanism: &str, pid: u32, worker_id: &str, supervisor_id: &str) -> Option<PathBuf> {
    let memory = (MEMORY_MB * 1024 * 1024).to_string();
    let quota = (100_000 * CPU_PERCENT / 100).to_string();
    match mechanism {
        "cgroup v2" => {
            let dir = worker_cgroup(pid, worker_id, supervisor_id, Hierarchy::Unified);
            assert_eq!(read_trimmed(&dir, "memory.max"), memory, "{}", dir.display());
            assert_eq!(read_trimmed(&dir, "cpu.max"), format!("{quota} 100000"), "{}", dir.display());
            assert_eq!(read_trimmed(&dir, "pids.max"), PIDS_MAX, "{}", dir.display());
            assert_v2_layout(&dir);
            Some(dir)
        }
        "cgroup v1" => {
            let dir = worker_cgroup(pid, worker_id, supervisor_id, Hierarchy::V1("memory"));
            assert_eq!(read_trimmed(&dir, "memory.limit_in_bytes"), memory, "{}", dir.display());
            let cpu = worker_cgroup(pid, worker_id, supervisor_id, Hierarchy::V1("cpu"));
            assert_eq!(read_trimmed(&cpu, "cpu.cfs_quota_us"), quota, "{}", cpu.display());
            assert_eq!(read_trimmed(&cpu, "cpu.cfs_period_us"), "100000", "{}", cpu.display());
            if mount_of(Hierarchy::V1("pids")).is_some() {
                let pids = worker_cgroup(pid, worker_id, supervisor_id, Hierarchy::V1("pids"));
                assert_eq!(read_trimmed(&pids, "pids.max"), PIDS_MAX, "{}", pids.display());
            }
            Some(dir)
        }
        _ => None,
    }
}

/// v2 only. The agent's own cgroup (the unit's) stays a leaf unless it is the root, so the
/// next start can always be written into it; no worker cgroup is inside it; and when it is a
/// systemd unit's (`*.service`, `*.scope`), no worker cgroup is inside that unit's slice either
/// (a subtree systemd manages as its own).
fn assert_v2_layout(worker_dir: &Path) {
    let own = cgroup_dir(std::process::id(), Hierarchy::Unified).unwrap();
    assert!(!worker_dir.starts_with(&own) || own == mount_of(Hierarchy::Unified).unwrap(), "{}", worker_dir.display());
    if own != mount_of(Hierarchy::Unified).unwrap() {
        assert_eq!(
            read_trimmed(&own, "cgroup.subtree_control"),
            "",
            "the unit's cgroup {} became an inner node",
            own.display()
        );
    }
    let name = own.file_name().unwrap().to_string_lossy();
    if name.ends_with(".service") || name.ends_with(".scope") {
        let slice = own.parent().unwrap();
        assert!(
            !worker_dir.starts_with(slice),
            "worker cgroup {} is inside {}, which systemd manages",
            worker_dir.display(),
            slice.display()
        );
    }
}

/// Everything one agent generation must show: adopted workers (`adopted` of them logged),
/// confined as asked, and no `EBUSY` anywhere in its log.
fn assert_generation(mechanism: &str, t: &TestAgent, agent: &Agent, workers: &[(u32, String)], adopted: usize) {
    let log = agent.log_text();
    for busy in ["EBUSY", "Device or resource busy", "os error 16"] {
        assert!(!log.contains(busy), "`{busy}` in the agent's log:\n{log}");
    }
    assert!(log.contains(&format!("mechanism=\"{mechanism}\"")), "the agent did not use {mechanism}:\n{log}");
    assert_eq!(log.matches("adopted a worker").count(), adopted, "{log}");
    for (pid, worker_id) in workers {
        assert_confined(mechanism, *pid, worker_id, &t.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_keep_their_cgroups_and_limits_through_three_sigterm_and_three_sigkill_restarts() {
    let mechanism = expected_mechanism();
    let t = TestAgent::new("r", "restarts");
    let reaper = t.reaper();
    let zk = zk_client(&shared_zk().connect_string()).await;
    put_json(&zk, &format!("{}/assignments/steady", t.root), &assignment(&t.id, t.path())).await;
    let procs = unit_procs_file(mechanism);
    let mut agent = start_agent(&t.config, procs.as_deref(), 0);
    let (workers, mut session) = running_workers(&t, &zk, &agent, "both workers running", 0).await;
    workers.iter().for_each(|(pid, _)| reaper.track(*pid));
    let grandchildren: Vec<u32> = PORTS
        .iter()
        .map(|p| {
            let file = t.path().join(format!("grandchild-{p}"));
            wait_for("a grandchild's pid", LONG, || std::fs::read_to_string(&file).ok()?.trim().parse().ok())
        })
        .collect();
    grandchildren.iter().for_each(|pid| reaper.track(*pid));
    assert_generation(mechanism, &t, &agent, &workers, 0);
    let signals = [Signal::SIGTERM, Signal::SIGKILL].repeat(3);
    for (n, signal) in signals.into_iter().enumerate() {
        agent.signal(signal);
        match signal {
            Signal::SIGTERM => assert_eq!(agent.wait_exit(LONG), 0, "{}", agent.log_text()),
            _ => agent.wait_exit_signal(),
        }
        agent = start_agent(&t.config, procs.as_deref(), n + 1);
        let what = format!("the same workers after restart {} ({signal})", n + 1);
        let (now, new_session) = running_workers(&t, &zk, &agent, &what, session).await;
        assert_eq!(now, workers, "{what}: {}", agent.log_text());
        assert_generation(mechanism, &t, &agent, &workers, workers.len());
        println!("restart {} after {signal}: {mechanism}, both workers adopted and confined", n + 1);
        session = new_session;
    }
    assert!(grandchildren.iter().all(|p| alive(*p)), "the grandchildren ran through every restart");
    stop_and_check_cleanup(mechanism, &t, &zk, &agent, &workers, &grandchildren).await;
}

/// Deleting the assignment makes the last agent kill each worker's cgroup (the grandchildren
/// with it) and remove it: proof it found the cgroups again.
async fn stop_and_check_cleanup(
    mechanism: &str,
    t: &TestAgent,
    zk: &zkc::Client,
    agent: &Agent,
    workers: &[(u32, String)],
    grandchildren: &[u32],
) {
    let dirs: Vec<Option<PathBuf>> =
        workers.iter().map(|(pid, id)| assert_confined(mechanism, *pid, id, &t.id)).collect();
    delete(zk, &format!("{}/assignments/steady", t.root)).await;
    t.wait_info(zk, agent, "no workers", |v| v["workers"] == json!([])).await;
    for (pid, _) in workers {
        wait_for("the worker to be gone", LONG, || (!alive(*pid)).then_some(()));
    }
    if mechanism == "rlimits" {
        println!("cgroups not checked: without root the agent uses rlimits");
        return;
    }
    for pid in grandchildren {
        wait_for("the escaped grandchild killed with its worker's cgroup", LONG, || (!alive(*pid)).then_some(()));
    }
    for dir in dirs.into_iter().flatten() {
        wait_for("the worker's cgroup removed", LONG, || (!dir.exists()).then_some(()));
    }
}
