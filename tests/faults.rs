//! Fault injection: the real `gale` binary, real ZooKeeper servers (a 3-node ensemble where a
//! scenario needs one) and real worker processes, pushed through the failures an operator's
//! worst day brings, with the invariants checked after every injected fault:
//!
//! 1. the ensemble loses its leader during assignment churn, then a follower, then its quorum
//!    for longer than the session timeout;
//! 2. the agent is SIGKILLed at random points of launches, kills, restarts and blob downloads,
//!    100 rounds (`GALE_FAULT_ROUNDS`);
//! 3. `local_dir` on a small tmpfs that fills up, then empties;
//! 4. 50 workers crash-looping at once against the node restart budget.
//!
//! Every random choice comes from a seeded generator (fixed per scenario, or `GALE_FAULT_SEED`)
//! and every scenario prints what it did; run them with the output shown:
//!
//!     cargo test --release --test tests faults:: -- --nocapture
//!     GALE_FAULT_SEED=7 GALE_FAULT_ROUNDS=300 cargo test --release --test tests faults::sigkill -- --nocapture
//!
//! Workers are found the way an operator would find them: every live process whose
//! environment has this agent's `GALE_SUPERVISOR_ID` (a worker's children inherit it), grouped
//! by `GALE_WORKER_ID`. "Two workers on one port" means two live worker ids with one
//! `GALE_PORT`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::*;
use gale::local_state::{LocalState, Workers};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tokio::time::Instant;
use zookeeper_client as zkc;

// ------------------------------------------------------------------------------------------
// Seeds and narration

/// The scenario's seed: `GALE_FAULT_SEED` if set, else its fixed default.
fn seed(default: u64) -> u64 {
    std::env::var("GALE_FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// Prints what a scenario does, with the time since it began.
struct Narrator {
    name: &'static str,
    start: Instant,
}

impl Narrator {
    fn new(name: &'static str, seed: u64) -> Narrator {
        let n = Narrator { name, start: Instant::now() };
        n.say(format!("seed {seed} (GALE_FAULT_SEED={seed} reproduces it)"));
        n
    }

    fn say(&self, what: impl AsRef<str>) {
        println!("[{:>7.2}s {}] {}", self.start.elapsed().as_secs_f64(), self.name, what.as_ref());
    }
}

// ------------------------------------------------------------------------------------------
// Worker processes, as /proc shows them

#[derive(Debug, Clone, PartialEq, Eq)]
struct WorkerProc {
    pid: u32,
    port: u16,
    topology: String,
    worker_id: String,
    /// `FAULT_VERSION` from the assignment's env ("" when the assignment has none).
    version: String,
}

/// Every live process carrying `GALE_SUPERVISOR_ID=supervisor_id` in its environment.
fn worker_procs(supervisor_id: &str) -> Vec<WorkerProc> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut procs = Vec::new();
    for pid in entries.flatten().filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok()) {
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        let vars: BTreeMap<String, String> = environ
            .split(|b| *b == 0)
            .filter_map(|kv| {
                let kv = std::str::from_utf8(kv).ok()?;
                let (k, v) = kv.split_once('=')?;
                k.starts_with("GALE_")
                    .then(|| (k.to_owned(), v.to_owned()))
                    .or_else(|| (k == "FAULT_VERSION").then(|| (k.to_owned(), v.to_owned())))
            })
            .collect();
        if vars.get("GALE_SUPERVISOR_ID").map(String::as_str) != Some(supervisor_id) || !alive(pid) {
            continue;
        }
        procs.push(WorkerProc {
            pid,
            port: vars.get("GALE_PORT").and_then(|p| p.parse().ok()).unwrap_or(0),
            topology: vars.get("GALE_TOPOLOGY_ID").cloned().unwrap_or_default(),
            worker_id: vars.get("GALE_WORKER_ID").cloned().unwrap_or_default(),
            version: vars.get("FAULT_VERSION").cloned().unwrap_or_default(),
        });
    }
    procs
}

/// Live worker ids per port; more than one on a port is the fault this suite hunts.
fn workers_by_port(procs: &[WorkerProc]) -> BTreeMap<u16, BTreeSet<String>> {
    let mut by_port: BTreeMap<u16, BTreeSet<String>> = BTreeMap::new();
    for p in procs {
        by_port.entry(p.port).or_default().insert(p.worker_id.clone());
    }
    by_port
}

fn assert_one_worker_per_port(procs: &[WorkerProc], when: &str) {
    for (port, ids) in workers_by_port(procs) {
        assert!(ids.len() <= 1, "{when}: {} workers on port {port}: {procs:#?}", ids.len());
    }
}

/// SIGKILLs every process of the agent's workers, their children included (they inherit the
/// environment); declared before the agent, it runs after the agent is gone (stopping an agent
/// never stops its workers, by design). It is the suite's only cleanup of worker processes.
struct KillWorkers(String);

impl Drop for KillWorkers {
    fn drop(&mut self) {
        for _ in 0..3 {
            for p in worker_procs(&self.0) {
                let _ = kill(Pid::from_raw(p.pid as i32), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The agent's worker records, read the way `gale state dump` reads them.
fn records(local: &Path) -> gale::supervisor::records::WorkerRecords {
    LocalState::read_only(&local.join("state"))
        .unwrap_or_else(|e| panic!("the local state must stay readable: {e}"))
        .and_then(|s| s.get::<Workers>().unwrap_or_else(|e| panic!("the worker records must decode: {e}")))
        .unwrap_or_default()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ------------------------------------------------------------------------------------------
// ZooKeeper writes that ride out failovers (the scheduler's side of the churn)

/// A test-side client that retries through connection loss and opens a new session after an
/// expiry, the way a scheduler must.
struct Writer {
    connect: String,
    client: Option<zkc::Client>,
}

impl Writer {
    fn new(connect: &str) -> Writer {
        Writer { connect: connect.to_owned(), client: None }
    }

    async fn client(&mut self) -> Option<zkc::Client> {
        if self.client.is_none() {
            let connected = zkc::Client::connector()
                .with_session_timeout(Duration::from_secs(10))
                .with_fail_eagerly()
                .connect(&self.connect)
                .await;
            self.client = connected.ok();
        }
        self.client.clone()
    }

    /// Runs `op` until it succeeds (or answers with an error `accept` takes), for up to 90 s.
    async fn retry<T, F, Fut>(&mut self, what: &str, accept: impl Fn(&zkc::Error) -> Option<T>, mut op: F) -> T
    where
        F: FnMut(zkc::Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, zkc::Error>>,
    {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(client) = self.client().await {
                match op(client).await {
                    Ok(v) => return v,
                    Err(e) => {
                        if let Some(v) = accept(&e) {
                            return v;
                        }
                        if matches!(e, zkc::Error::SessionExpired | zkc::Error::ClientClosed) {
                            self.client = None;
                        }
                        assert!(Instant::now() < deadline, "{what}: still failing after 90 s: {e}");
                    }
                }
            }
            assert!(Instant::now() < deadline, "{what}: no ZooKeeper session for 90 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn put(&mut self, path: &str, value: &Value) {
        let data = serde_json::to_vec(value).unwrap();
        let parent = path.rsplit_once('/').unwrap().0.to_owned();
        let mut prefix = String::new();
        for segment in parent.split('/').filter(|s| !s.is_empty()) {
            prefix = format!("{prefix}/{segment}");
            let p = prefix.clone();
            self.retry(
                &format!("create {p}"),
                |e| matches!(e, zkc::Error::NodeExists).then_some(()),
                |c| {
                    let p = p.clone();
                    async move {
                        let options = zkc::CreateMode::Persistent.with_acls(zkc::Acls::anyone_all());
                        c.create(&p, &[], &options).await.map(drop)
                    }
                },
            )
            .await;
        }
        let (path, data) = (path.to_owned(), data);
        self.retry(
            &format!("put {path}"),
            |_| None,
            |c| {
                let (path, data) = (path.clone(), data.clone());
                async move {
                    let options = zkc::CreateMode::Persistent.with_acls(zkc::Acls::anyone_all());
                    match c.create(&path, &data, &options).await {
                        Ok(_) => Ok(()),
                        Err(zkc::Error::NodeExists) => c.set_data(&path, &data, None).await.map(drop),
                        Err(e) => Err(e),
                    }
                }
            },
        )
        .await;
    }

    async fn delete(&mut self, path: &str) {
        let path = path.to_owned();
        self.retry(
            &format!("delete {path}"),
            |e| matches!(e, zkc::Error::NoNode).then_some(()),
            |c| {
                let path = path.clone();
                async move { c.delete(&path, None).await }
            },
        )
        .await;
    }

    /// The node's JSON and its ephemeral owner, or None.
    async fn get(&mut self, path: &str) -> Option<(Value, i64)> {
        let path = path.to_owned();
        self.retry(
            &format!("get {path}"),
            |e| matches!(e, zkc::Error::NoNode).then_some(None),
            |c| {
                let path = path.clone();
                async move {
                    let (data, stat) = c.get_data(&path).await?;
                    Ok(Some((serde_json::from_slice(&data).unwrap_or(Value::Null), stat.ephemeral_owner)))
                }
            },
        )
        .await
    }
}

/// A schema-1 assignment: `/bin/sleep` with `FAULT_VERSION=version` on `placements`
/// (supervisor id, port); `extra` fields are merged in at the top level.
fn sleep_assignment(topology: &str, version: u64, placements: &[(&str, u16)], extra: Value) -> Value {
    let workers: Vec<Value> = placements.iter().map(|(id, port)| json!({"supervisor_id": id, "port": port})).collect();
    let mut a = json!({"schema": 1, "topology_id": topology,
        "launch": {"command": ["/bin/sleep", "100000"], "env": {"FAULT_VERSION": version.to_string()},
                   "liveness": "process"},
        "workers": workers});
    for (k, v) in extra.as_object().unwrap() {
        a[k] = v.clone();
    }
    a
}

// ==========================================================================================
// 2. SIGKILL of the agent at random points, 100 rounds

/// What the test wants on the agent: topology -> (port, version), and the blob's version.
#[derive(Debug, Clone, Default)]
struct Wanted {
    topologies: BTreeMap<String, (u16, u64)>,
    blob_version: u64,
}

const PORTS: [u16; 4] = [6700, 6701, 6702, 6703];
const BLOB_TOPOLOGY: &str = "tb";

impl Wanted {
    fn free_ports(&self) -> Vec<u16> {
        PORTS.iter().copied().filter(|p| !self.topologies.values().any(|(q, _)| q == p)).collect()
    }
}

/// The first line of the blob a worker links to (`v<N>`), read through its worker dir.
fn linked_blob_version(local: &Path, worker_id: &str) -> Option<u64> {
    let text = std::fs::read(local.join("workers").join(worker_id).join("blobs/code")).ok()?;
    let first = text.split(|b| *b == b'\n').next()?;
    std::str::from_utf8(first).ok()?.strip_prefix('v')?.parse().ok()
}

/// What `<local_dir>/tmp` holds: blob downloads and staged cache entries in flight.
fn in_flight_downloads(local: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(local.join("tmp")).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default()
}

/// Whether the live worker `p` is exactly what `wanted` asks for.
fn is_wanted(wanted: &Wanted, local: &Path, p: &WorkerProc) -> bool {
    let Some((port, version)) = wanted.topologies.get(&p.topology) else { return false };
    *port == p.port
        && p.version == version.to_string()
        && (p.topology != BLOB_TOPOLOGY || linked_blob_version(local, &p.worker_id) == Some(wanted.blob_version))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_agent_at_random_points_loses_nothing_and_never_doubles_a_port() {
    let seed = seed(0x6a1e_0001);
    let rounds: usize = std::env::var("GALE_FAULT_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(100);
    let n = Narrator::new("sigkill", seed);
    let mut rng = fastrand::Rng::with_seed(seed);

    // Not "sigkill": upgrade.rs's takeover test had that id, and this test counts every process
    // with its GALE_SUPERVISOR_ID as its own (found by the VM stage: "2 workers on port 6700").
    let t = TestAgent::new("f", "random-sigkills");
    t.edit(|text| {
        let slots: Vec<String> = PORTS.iter().map(u16::to_string).collect();
        let text = text.replace("slots = [6700, 6701]", &format!("slots = [{}]", slots.join(", ")));
        format!(
            "{text}\n[worker]\nshutdown_grace_secs = 1\n\n[restart]\nbackoff_initial_ms = 100\nbackoff_max_ms = 400\n\
             node_budget_per_min = 100000\n\n[blob]\nsync_secs = 2\n"
        )
    });
    let _kill_workers = KillWorkers(t.id.clone());
    let zk = zk_client(&shared_zk().connect_string()).await;
    let local = t.local();
    let assignment_path = |topology: &str| format!("{}/assignments/{topology}", t.root);

    // The blob: big enough (8 MB) that a download takes a while to fetch, hash and fsync.
    let store = t.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let publish_blob = |version: u64| {
        let mut content = format!("v{version}\n").into_bytes();
        let mut fill = fastrand::Rng::with_seed(version);
        content.extend((0..8 << 20).map(|_| fill.u8(..)));
        let file = store.join(format!("code-{version}"));
        std::fs::write(&file, &content).unwrap();
        use sha2::Digest;
        let sha: String = sha2::Sha256::digest(&content).iter().map(|b| format!("{b:02x}")).collect();
        json!({"schema": 1, "key": "fault-code", "version": version, "sha256": sha, "size": content.len(),
               "url": format!("file://{}", file.display())})
    };
    let blob_path = format!("{}/blobstore/fault-code", t.root);
    let put_topology = |wanted: &Wanted, topology: &str| {
        let (port, version) = wanted.topologies[topology];
        let extra = if topology == BLOB_TOPOLOGY {
            json!({"blobs": [{"key": "fault-code", "name": "code", "restart_on_update": true}]})
        } else {
            json!({})
        };
        sleep_assignment(topology, version, &[(t.id.as_str(), port)], extra)
    };

    let mut wanted = Wanted { blob_version: 1, ..Wanted::default() };
    put_json(&zk, &blob_path, &publish_blob(1)).await;
    for (topology, port) in [("t0", 6700), (BLOB_TOPOLOGY, 6701)] {
        wanted.topologies.insert(topology.to_owned(), (port, 1));
        put_json(&zk, &assignment_path(topology), &put_topology(&wanted, topology)).await;
    }

    let mut agent = Agent::start(&t.config);
    let mut owner = converge(&n, &t, &zk, &agent, &wanted, 0, 0).await;
    let mut totals = BTreeMap::<&str, usize>::new();

    for round in 1..=rounds {
        // One operation the agent must carry out, then a SIGKILL somewhere inside it.
        // The worker this round crashes: dead (or dying) by the time of the snapshot below, so
        // never one to be adopted, even if /proc still shows it for a few ms.
        let mut crashed = None;
        let op = match rng.u32(0..100) {
            0..=29 => {
                let free = wanted.free_ports();
                let idle: Vec<String> = ["t0", "t1", "t2", BLOB_TOPOLOGY]
                    .iter()
                    .filter(|t| !wanted.topologies.contains_key(**t))
                    .map(|t| t.to_string())
                    .collect();
                if free.is_empty() || idle.is_empty() {
                    "bump"
                } else {
                    let topology = idle[rng.usize(..idle.len())].clone();
                    let port = free[rng.usize(..free.len())];
                    wanted.topologies.insert(topology.clone(), (port, round as u64));
                    put_json(&zk, &assignment_path(&topology), &put_topology(&wanted, &topology)).await;
                    n.say(format!("round {round}: launch {topology} on {port}"));
                    "launch"
                }
            }
            30..=49 => "bump",
            50..=64 => {
                let assigned: Vec<String> = wanted.topologies.keys().cloned().collect();
                if assigned.len() <= 1 {
                    "bump"
                } else {
                    let topology = assigned[rng.usize(..assigned.len())].clone();
                    wanted.topologies.remove(&topology);
                    delete(&zk, &assignment_path(&topology)).await;
                    n.say(format!("round {round}: kill {topology} (assignment deleted)"));
                    "kill"
                }
            }
            65..=84 => {
                let procs = worker_procs(&t.id);
                if procs.is_empty() {
                    "bump"
                } else {
                    let victim = &procs[rng.usize(..procs.len())];
                    let _ = kill(Pid::from_raw(victim.pid as i32), Signal::SIGKILL);
                    crashed = Some(victim.pid);
                    n.say(format!("round {round}: crash the worker on {} (pid {})", victim.port, victim.pid));
                    "restart"
                }
            }
            _ => {
                wanted.blob_version += 1;
                put_json(&zk, &blob_path, &publish_blob(wanted.blob_version)).await;
                if !wanted.topologies.contains_key(BLOB_TOPOLOGY)
                    && let Some(&port) = wanted.free_ports().first()
                {
                    wanted.topologies.insert(BLOB_TOPOLOGY.to_owned(), (port, round as u64));
                    put_json(&zk, &assignment_path(BLOB_TOPOLOGY), &put_topology(&wanted, BLOB_TOPOLOGY)).await;
                }
                n.say(format!("round {round}: blob v{} published", wanted.blob_version));
                "blob"
            }
        };
        let op = if op == "bump" {
            let assigned: Vec<String> = wanted.topologies.keys().cloned().collect();
            let topology = assigned[rng.usize(..assigned.len())].clone();
            wanted.topologies.get_mut(&topology).unwrap().1 = round as u64;
            put_json(&zk, &assignment_path(&topology), &put_topology(&wanted, &topology)).await;
            n.say(format!("round {round}: relaunch {topology} (new version)"));
            "relaunch"
        } else {
            op
        };
        *totals.entry(op).or_default() += 1;
        // Mostly inside the few ms an operation takes; sometimes later (a blob download).
        let delay = if rng.u32(0..4) == 0 { rng.u64(50..400) } else { rng.u64(0..50) };
        tokio::time::sleep(Duration::from_millis(delay)).await;
        agent.signal(Signal::SIGKILL);
        agent.wait_exit_signal();

        // With the agent dead: what runs, what is recorded, what was downloading.
        let at_kill = worker_procs(&t.id);
        let downloading = !in_flight_downloads(&local).is_empty();
        if downloading {
            *totals.entry("killed mid-download").or_default() += 1;
        }
        assert_one_worker_per_port(&at_kill, &format!("round {round}, agent just killed"));
        let recorded = records(&local);
        let (known, unknown): (Vec<&WorkerProc>, Vec<&WorkerProc>) =
            at_kill.iter().partition(|p| recorded.contains_key(&p.worker_id));
        n.say(format!(
            "round {round}: SIGKILL after {delay} ms; {} worker processes alive, {} recorded, {} not recorded (a launch in flight){}",
            at_kill.len(),
            known.len(),
            unknown.len(),
            if downloading { "; a blob download was in flight" } else { "" }
        ));
        let keep: Vec<WorkerProc> = known
            .iter()
            .filter(|p| is_wanted(&wanted, &local, p) && crashed != Some(p.pid))
            .map(|p| (*p).clone())
            .collect();
        let unrecorded: Vec<WorkerProc> = unknown.into_iter().cloned().collect();

        agent = Agent::start(&t.config);
        owner = converge(&n, &t, &zk, &agent, &wanted, owner, round).await;

        // No record lost: every recorded worker that is still exactly what is wanted was adopted.
        let now = worker_procs(&t.id);
        for p in &keep {
            assert!(
                now.iter().any(|q| q.pid == p.pid && q.worker_id == p.worker_id),
                "round {round}: recorded worker {p:?} was not adopted; now {now:#?}\nagent log:\n{}",
                tail(&agent.log_text(), 60)
            );
        }
        // A launch the agent had not recorded never survives its restart next to a new one.
        for p in &unrecorded {
            assert!(!alive(p.pid), "round {round}: unrecorded worker {p:?} still runs; now {now:#?}");
        }
        *totals.entry("adopted").or_default() += keep.len();
        *totals.entry("unrecorded, swept").or_default() += unrecorded.len();
    }
    n.say(format!("{rounds} rounds done: {totals:?}"));
    drop(agent);
}

/// Waits (60 s) until the agent's new session shows exactly `wanted`: each wanted topology's
/// worker running on its port with its version (and the wanted blob), no other worker process
/// of this agent anywhere, records matching. Returns the registration's ephemeral owner.
async fn converge(
    n: &Narrator,
    t: &TestAgent,
    zk: &zkc::Client,
    agent: &Agent,
    wanted: &Wanted,
    old_owner: i64,
    round: usize,
) -> i64 {
    let started = Instant::now();
    let local = t.local();
    let deadline = started + Duration::from_secs(60);
    loop {
        let info = read_json(zk, &t.info_path()).await;
        let procs = worker_procs(&t.id);
        assert_one_worker_per_port(&procs, &format!("round {round}, converging"));
        let done = info.as_ref().is_some_and(|(info, stat)| {
            stat.ephemeral_owner != old_owner
                && info["state"] == "running"
                && wanted.topologies.iter().all(|(topology, (port, _))| {
                    running_pid(info, *port).is_some_and(|pid| {
                        procs.iter().any(|p| p.pid == pid && &p.topology == topology && is_wanted(wanted, &local, p))
                    })
                })
                && procs.len() == wanted.topologies.len()
        });
        if done {
            let (info, stat) = info.clone().unwrap();
            let recorded = records(&local);
            let ids: BTreeSet<&String> = procs.iter().map(|p| &p.worker_id).collect();
            let recorded_ids: BTreeSet<&String> = recorded.keys().collect();
            if ids == recorded_ids {
                // Downloads and staged cache entries live in `<local_dir>/tmp`; with every blob
                // installed nothing may be left there.
                let leftovers = in_flight_downloads(&local);
                assert!(leftovers.is_empty(), "round {round}: download leftovers {leftovers:?}");
                n.say(format!(
                    "round {round}: converged in {} ms: {} workers running, all recorded; info {}",
                    started.elapsed().as_millis(),
                    procs.len(),
                    info["workers"].as_array().map(|w| w.len()).unwrap_or(0)
                ));
                return stat.ephemeral_owner;
            }
        }
        if Instant::now() > deadline {
            panic!(
                "round {round}: no convergence in 60 s\nwanted {wanted:?}\nprocesses {procs:#?}\nrecords {:#?}\n\
                 SupervisorInfo {}\nholders of the local dir lock: {:?}\nprevious agent's log:\n{}\nagent log:\n{}",
                records(&local).keys().collect::<Vec<_>>(),
                info.map(|(i, _)| i.to_string()).unwrap_or_default(),
                holders(&local.join("lock")),
                previous_log(agent),
                tail(&agent.log_text(), 80)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Processes holding `path` open, with their command lines and states.
fn holders(path: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut out = Vec::new();
    for pid in entries.flatten().filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok()) {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        if fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == path)) {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            out.push(format!("pid {pid} {:?}: {cmdline}", proc_stat(pid)));
        }
    }
    out
}

/// The tail of the log of the agent started before `agent` (the one just killed).
fn previous_log(agent: &Agent) -> String {
    let name = agent.log.file_name().unwrap().to_string_lossy().into_owned();
    let n: usize = name.trim_start_matches("agent-").trim_end_matches(".log").parse().unwrap_or(0);
    let dir = agent.log.parent().unwrap();
    (0..n)
        .rev()
        .map(|k| dir.join(format!("agent-{k}.log")))
        .find(|p| p.exists())
        .map(|p| tail(&read_log(&p), 60))
        .unwrap_or_default()
}

// ==========================================================================================
// 3. local_dir on a small filesystem that fills up

/// A tmpfs mounted by the test, lazily unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs"])
            .arg(at)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount a {size} tmpfs at {}: {}", at.display(), text(&out.stderr));
        Tmpfs(at.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the filesystem of `file` with zeros until it refuses more; returns the bytes written.
fn fill(file: &Path) -> u64 {
    use std::io::Write;
    let mut f = std::fs::File::create(file).unwrap();
    let chunk = vec![0u8; 16 * 1024];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(k) => written += k as u64,
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(nix::libc::ENOSPC), "filling {}: {e}", file.display());
                break;
            }
        }
    }
    let _ = f.sync_all();
    written
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_local_dir_fails_state_writes_cleanly_and_recovers_when_space_returns() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let seed = seed(0x6a1e_0003);
    let n = Narrator::new("disk-full", seed);
    let mut rng = fastrand::Rng::with_seed(seed);
    let t = TestAgent::new("f", "diskfull");
    let admin = free_port();
    t.edit(|text| text.replace("listen = \"\"", &format!("listen = \"127.0.0.1:{admin}\"")));
    let local = t.local();
    let _mount = Tmpfs::mount(&local, "2m");
    n.say(format!("local_dir {} is a 2 MiB tmpfs", local.display()));
    let _kill_workers = KillWorkers(t.id.clone());
    let zk = zk_client(&shared_zk().connect_string()).await;
    let put = |topology: &str, port: u16, version: u64| {
        let a = sleep_assignment(topology, version, &[(t.id.as_str(), port)], json!({}));
        (format!("{}/assignments/{topology}", t.root), a)
    };
    let (path, a) = put("t1", 6700, 1);
    put_json(&zk, &path, &a).await;
    let mut agent = Agent::start(&t.config);
    let info = t.wait_info(&zk, &agent, "t1 running", |i| running_pid(i, 6700).is_some()).await;
    let pid1 = running_pid(&info, 6700).unwrap();
    let before = records(&local);
    assert_eq!(before.len(), 1, "{before:?}");
    n.say(format!("t1 runs on 6700 as pid {pid1}, recorded"));

    let filler = local.join("filler");
    let written = fill(&filler);
    n.say(format!("filled the filesystem: {written} bytes, then ENOSPC"));

    // Work that needs state writes: a new worker to record, and a new assignment to persist.
    let version = rng.u64(2..1000);
    let (path, a) = put("t2", 6701, version);
    put_json(&zk, &path, &a).await;
    n.say(format!("assigned t2 (version {version}) on 6701 while full"));
    agent.wait_log("No space left on device", Duration::from_secs(30));
    let refused: Vec<String> =
        agent.log_text().lines().filter(|l| l.contains("No space left on device")).map(|l| l.to_owned()).collect();
    n.say(format!("the agent reports it: {}", refused[0]));
    assert!(
        refused[0].contains(&local.join("state").display().to_string()),
        "the error names the state dir: {}",
        refused[0]
    );

    // Full for a while: the agent lives, t1 keeps running, the previous state stays readable.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(agent.try_status().is_none(), "the agent died of a full disk:\n{}", tail(&agent.log_text(), 40));
        assert!(alive(pid1), "t1's worker was disturbed by the full disk");
        let procs = worker_procs(&t.id);
        assert_one_worker_per_port(&procs, "while full");
        // What cannot be persisted is not acted on: the agent never runs what it could not
        // record it was asked to run.
        assert!(
            procs.iter().all(|p| p.topology == "t1"),
            "t2 started while its assignment could not be persisted: {procs:?}"
        );
        let now = records(&local);
        assert!(now.values().any(|r| r.process.pid == pid1), "t1's record was lost: {now:?}");
    }
    let (status, _) = expect(&t.config, &["status"], 0);
    let failing = status
        .lines()
        .find(|l| l.starts_with("FAILING"))
        .unwrap_or_else(|| panic!("`gale status` shows the failing write:\n{status}"));
    assert!(failing.contains("No space left on device"), "{failing}");
    n.say(format!("`gale status` shows it: {failing}"));
    let (dump, _) = expect(&t.config, &["state", "dump"], 0);
    assert!(dump.contains(&pid1.to_string()), "`gale state dump` shows the previous state:\n{dump}");
    n.say("3 s full: agent alive, t1 untouched, `gale state dump` reads the previous state");

    std::fs::remove_file(&filler).unwrap();
    n.say("space returned");
    let info = t
        .wait_info(&zk, &agent, "t2 running and recorded", |i| {
            running_pid(i, 6701)
                .is_some_and(|pid| records(&local).values().any(|r| r.process.pid == pid && r.port == 6701))
        })
        .await;
    let pid2 = running_pid(&info, 6701).unwrap();
    assert_eq!(running_pid(&info, 6700), Some(pid1), "t1 is the same process: {info}");
    n.say(format!("recovered: t2 runs as pid {pid2} and is recorded"));
    let (status, _) = expect(&t.config, &["status"], 0);
    assert!(!status.contains("FAILING"), "the failure clears once the job succeeds:\n{status}");

    // The proof that what was written after the recovery is durable: a SIGKILL and a restart
    // adopt both workers.
    let owner = read_json(&zk, &t.info_path()).await.unwrap().1.ephemeral_owner;
    agent.signal(Signal::SIGKILL);
    agent.wait_exit_signal();
    let agent = Agent::start(&t.config);
    let info = wait_info(&zk, &t.info_path(), &agent, "both adopted", Duration::from_secs(60), |i, s| {
        s.ephemeral_owner != owner
            && i["state"] == "running"
            && running_pid(i, 6700).is_some()
            && running_pid(i, 6701).is_some()
    })
    .await
    .0;
    assert_eq!(
        (running_pid(&info, 6700), running_pid(&info, 6701)),
        (Some(pid1), Some(pid2)),
        "adopted, not relaunched: {info}"
    );
    n.say("after SIGKILL and restart both workers were adopted");
    drop(agent);
}

// ==========================================================================================
// 4. a worker storm against the node restart budget

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_crash_looping_workers_stay_within_the_node_restart_budget() {
    const STORM: u16 = 50;
    const BUDGET: usize = 60;
    let seed = seed(0x6a1e_0004);
    let n = Narrator::new("storm", seed);
    let mut rng = fastrand::Rng::with_seed(seed);
    let t = TestAgent::new("f", "storm");
    let ports: Vec<u16> = (6700..6700 + STORM + 4).collect();
    t.edit(|text| {
        let slots: Vec<String> = ports.iter().map(u16::to_string).collect();
        let text = text.replace("slots = [6700, 6701]", &format!("slots = [{}]", slots.join(", ")));
        format!("{text}\n[restart]\nnode_budget_per_min = {BUDGET}\n")
    });
    let _kill_workers = KillWorkers(t.id.clone());
    let zk = zk_client(&shared_zk().connect_string()).await;
    let assign = |topology: &str, on: &[u16], extra: Value| {
        let placements: Vec<(&str, u16)> = on.iter().map(|p| (t.id.as_str(), *p)).collect();
        (format!("{}/assignments/{topology}", t.root), sleep_assignment(topology, 1, &placements, extra))
    };
    let healthy_ports = [6700 + STORM, 6701 + STORM, 6702 + STORM];
    let late_port = 6703 + STORM;
    let (path, a) = assign("healthy", &healthy_ports, json!({}));
    put_json(&zk, &path, &a).await;
    let agent = Agent::start(&t.config);
    let info = t
        .wait_info(&zk, &agent, "healthy workers running", |i| {
            healthy_ports.iter().all(|p| running_pid(i, *p).is_some())
        })
        .await;
    let healthy: Vec<u32> = healthy_ports.iter().map(|p| running_pid(&info, *p).unwrap()).collect();
    n.say(format!("3 healthy workers run: {healthy:?}"));

    // 50 workers that crash after `life` ms, each crash stamped into one file.
    let starts = t.path().join("storm-starts");
    let life = rng.u64(50..300);
    let storm_ports: Vec<u16> = (6700..6700 + STORM).collect();
    let script = format!("echo start >> {}; sleep 0.{life:03}; exit 1", starts.display());
    let (path, mut a) = assign("storm", &storm_ports, json!({}));
    a["launch"]["command"] = json!(["/bin/sh", "-c", script]);
    let storm_began = Instant::now();
    put_json(&zk, &path, &a).await;
    n.say(format!("storm: {STORM} workers crashing after {life} ms each; node budget {BUDGET} restarts/min"));

    let late_at = Duration::from_millis(rng.u64(3000..8000));
    let mut late_pid = None;
    let window = Duration::from_secs(20);
    while storm_began.elapsed() < window {
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(healthy.iter().all(|p| alive(*p)), "a healthy worker was disturbed by the storm");
        assert_one_worker_per_port(&worker_procs(&t.id), "during the storm");
        if late_pid.is_none() && storm_began.elapsed() >= late_at {
            // A new assignment mid-storm is a first launch, not a restart: the budget must
            // not hold it back.
            let (path, a) = assign("late", &[late_port], json!({}));
            put_json(&zk, &path, &a).await;
            let asked = Instant::now();
            let info =
                t.wait_info(&zk, &agent, "the late worker running", |i| running_pid(i, late_port).is_some()).await;
            late_pid = running_pid(&info, late_port);
            n.say(format!("late assignment at {:?} started in {} ms", late_at, asked.elapsed().as_millis()));
        }
    }
    let launches = read_log(&starts).lines().count();
    let restarts = launches.saturating_sub(STORM as usize);
    n.say(format!(
        "{:?}: {launches} storm launches = {STORM} first launches + {restarts} restarts",
        storm_began.elapsed()
    ));
    assert!(restarts <= BUDGET, "{restarts} restarts in {window:?} exceed the budget of {BUDGET}/min");
    assert!(
        restarts >= BUDGET / 2,
        "the storm never reached the budget ({restarts} restarts): the test does not test it"
    );
    assert!(agent.log_text().contains("node restart budget exhausted"), "the budget is reported");
    let (info, _) = read_json(&zk, &t.info_path()).await.unwrap();
    for (port, pid) in healthy_ports.iter().zip(&healthy) {
        let s = slot(&info, *port).unwrap();
        assert_eq!(
            (running_pid(&info, *port), &s["restarts"]),
            (Some(*pid), &json!(0)),
            "healthy worker on {port}: {info}"
        );
    }
    let held: Vec<u16> = storm_ports.iter().copied().filter(|p| slot_state(&info, *p) == Some("backoff")).collect();
    n.say(format!("healthy workers untouched (restarts 0); {} storm slots waiting in backoff", held.len()));

    // The storm ends with its assignment: nothing of it is left.
    delete(&zk, &format!("{}/assignments/storm", t.root)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let procs = worker_procs(&t.id);
        let left: Vec<&WorkerProc> = procs.iter().filter(|p| p.topology == "storm").collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "storm workers left after its assignment went: {left:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(late_pid.is_some_and(alive) && healthy.iter().all(|p| alive(*p)));
    n.say("storm assignment deleted: no storm process left, healthy and late workers still run");
    drop(agent);
}

// ==========================================================================================
// 1. the ensemble: leader, follower, quorum

/// One agent of the ensemble scenario.
struct EnsembleAgent {
    id: String,
    agent: Agent,
}

/// What the scheduler wants: topology -> (version, placements).
type Plan = BTreeMap<String, (u64, Vec<(String, u16)>)>;

const CHURN_PORTS: [u16; 2] = [6701, 6702];

/// One random assignment change: a new version (the workers restart), a move to a free
/// (agent, port), or a delete and re-create.
async fn churn_once(
    w: &mut Writer,
    root: &str,
    plan: &mut Plan,
    ids: &[String],
    rng: &mut fastrand::Rng,
    n: &Narrator,
) {
    let churned: Vec<String> = plan.keys().filter(|t| t.starts_with('c')).cloned().collect();
    let topology = churned[rng.usize(..churned.len())].clone();
    let used: BTreeSet<(String, u16)> = plan.values().flat_map(|(_, p)| p.iter().cloned()).collect();
    let free: Vec<(String, u16)> = ids
        .iter()
        .flat_map(|id| CHURN_PORTS.iter().map(move |p| (id.clone(), *p)))
        .filter(|s| !used.contains(s))
        .collect();
    let path = format!("{root}/assignments/{topology}");
    let entry = plan.get_mut(&topology).unwrap();
    match rng.u32(0..3) {
        0 => {
            entry.0 += 1;
            n.say(format!("churn: {topology} version {}", entry.0));
        }
        1 if !free.is_empty() => {
            let to = free[rng.usize(..free.len())].clone();
            n.say(format!("churn: {topology} moves {:?} -> {to:?}", entry.1[0]));
            entry.1 = vec![to];
        }
        _ => {
            w.delete(&path).await;
            entry.0 += 1;
            n.say(format!("churn: {topology} deleted and re-created as version {}", entry.0));
        }
    }
    let (version, placements) = entry.clone();
    let placements: Vec<(&str, u16)> = placements.iter().map(|(id, p)| (id.as_str(), *p)).collect();
    w.put(&path, &sleep_assignment(&topology, version, &placements, json!({}))).await;
}

/// Waits (90 s) until every agent runs exactly what `plan` places on it; returns each agent's
/// registration owner.
async fn converge_plan(
    n: &Narrator,
    w: &mut Writer,
    root: &str,
    agents: &[EnsembleAgent],
    plan: &Plan,
    what: &str,
) -> Vec<i64> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(90);
    loop {
        let mut owners = Vec::new();
        let mut pending = Vec::new();
        for a in agents {
            let procs = worker_procs(&a.id);
            assert_one_worker_per_port(&procs, what);
            let wanted: Vec<(&String, u64, u16)> = plan
                .iter()
                .flat_map(|(t, (v, ps))| ps.iter().filter(|(id, _)| *id == a.id).map(move |(_, p)| (t, *v, *p)))
                .collect();
            let info = w.get(&format!("{root}/supervisors/{}", a.id)).await;
            let ok = info.as_ref().is_some_and(|(info, _)| {
                wanted.iter().all(|(t, v, p)| {
                    running_pid(info, *p).is_some_and(|pid| {
                        procs.iter().any(|q| q.pid == pid && &q.topology == *t && q.version == v.to_string())
                    })
                }) && procs.len() == wanted.len()
            });
            if !ok {
                pending.push(format!("{}: wants {wanted:?}, runs {procs:?}", a.id));
            }
            owners.push(info.map(|(_, o)| o).unwrap_or(0));
        }
        if pending.is_empty() {
            n.say(format!("{what}: converged in {} ms", started.elapsed().as_millis()));
            return owners;
        }
        if Instant::now() > deadline {
            // The session and sync story of each agent, not its periodic chatter.
            let story = |text: &str| -> String {
                text.lines()
                    .filter(|l| {
                        l.contains("gale::cluster")
                            || l.contains("full=true")
                            || l.contains("listed=true")
                            || l.contains("assignment")
                            || l.contains(" WARN ")
                            || l.contains(" ERROR ")
                    })
                    .filter(|l| !l.contains("supervisor info written"))
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            let logs: Vec<String> =
                agents.iter().map(|a| format!("{}:\n{}", a.id, story(&a.agent.log_text()))).collect();
            panic!("{what}: no convergence in 90 s:\n{}\n{}", pending.join("\n"), logs.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every agent is alive and every stable worker is the same process.
fn assert_undisturbed(agents: &mut [EnsembleAgent], stable: &[u32], what: &str) {
    for a in agents.iter_mut() {
        assert!(a.agent.try_status().is_none(), "{what}: agent {} exited:\n{}", a.id, tail(&a.agent.log_text(), 40));
    }
    for pid in stable {
        assert!(alive(*pid), "{what}: stable worker {pid} was disturbed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ensemble_loses_its_leader_a_follower_then_its_quorum_and_nothing_is_lost() {
    let seed = seed(0x6a1e_0005);
    let n = Narrator::new("ensemble", seed);
    let mut rng = fastrand::Rng::with_seed(seed);
    let tmp = tempfile::Builder::new().prefix("gale-f-ensemble-").tempdir().unwrap();
    let mut ensemble = Ensemble::start(&tmp.path().join("zk"));
    let connect = ensemble.connect_string();
    let root = "/f-ensemble";
    n.say(format!("3-node ensemble up at {connect}; leader is server {:?}", ensemble.leader().map(|i| i + 1)));

    let ids: Vec<String> = ["sup-ens-a", "sup-ens-b"].iter().map(|s| s.to_string()).collect();
    let _kill: Vec<KillWorkers> = ids.iter().map(|id| KillWorkers(id.clone())).collect();
    let mut agents: Vec<EnsembleAgent> = ids
        .iter()
        .map(|id| {
            let dir = tmp.path().join(id);
            let config = AgentSpec::new(&connect, root).id(id).write(&dir);
            let text =
                std::fs::read_to_string(&config).unwrap().replace("slots = [6700, 6701]", "slots = [6700, 6701, 6702]");
            std::fs::write(&config, text).unwrap();
            EnsembleAgent { id: id.clone(), agent: Agent::start(&config) }
        })
        .collect();

    let mut w = Writer::new(&connect);
    let mut plan: Plan = BTreeMap::new();
    plan.insert("stable".into(), (1, ids.iter().map(|id| (id.clone(), 6700)).collect()));
    plan.insert("c0".into(), (1, vec![(ids[0].clone(), 6701)]));
    plan.insert("c1".into(), (1, vec![(ids[1].clone(), 6701)]));
    plan.insert("c2".into(), (1, vec![(ids[0].clone(), 6702)]));
    for (topology, (version, placements)) in &plan {
        let placements: Vec<(&str, u16)> = placements.iter().map(|(id, p)| (id.as_str(), *p)).collect();
        w.put(&format!("{root}/assignments/{topology}"), &sleep_assignment(topology, *version, &placements, json!({})))
            .await;
    }
    let owners = converge_plan(&n, &mut w, root, &agents, &plan, "start").await;
    let stable: Vec<u32> = ids
        .iter()
        .flat_map(|id| worker_procs(id).into_iter().filter(|p| p.topology == "stable").map(|p| p.pid))
        .collect();
    assert_eq!(stable.len(), 2);
    n.say(format!("stable workers {stable:?}; registrations owned by sessions {owners:x?}"));

    // 1. the leader, in the middle of assignment churn
    for _ in 0..rng.usize(3..8) {
        churn_once(&mut w, root, &mut plan, &ids, &mut rng, &n).await;
        tokio::time::sleep(Duration::from_millis(rng.u64(50..300))).await;
    }
    let leader = ensemble.leader().expect("a leader");
    ensemble.servers[leader].kill();
    n.say(format!("killed the leader (server {})", leader + 1));
    for _ in 0..rng.usize(5..10) {
        churn_once(&mut w, root, &mut plan, &ids, &mut rng, &n).await;
        tokio::time::sleep(Duration::from_millis(rng.u64(50..300))).await;
    }
    converge_plan(&n, &mut w, root, &agents, &plan, "after the leader's loss").await;
    assert_undisturbed(&mut agents, &stable, "after the leader's loss");
    ensemble.servers[leader].start();
    ensemble.servers[leader].wait_serving();
    n.say(format!("server {} back as {:?}", leader + 1, zk_mode(ensemble.servers[leader].port)));

    // 2. a follower
    let follower =
        (0..3).find(|i| zk_mode(ensemble.servers[*i].port).as_deref() == Some("follower")).expect("a follower");
    ensemble.servers[follower].kill();
    n.say(format!("killed a follower (server {})", follower + 1));
    for _ in 0..rng.usize(3..8) {
        churn_once(&mut w, root, &mut plan, &ids, &mut rng, &n).await;
        tokio::time::sleep(Duration::from_millis(rng.u64(50..300))).await;
    }
    let before_quorum_loss = converge_plan(&n, &mut w, root, &agents, &plan, "after the follower's loss").await;
    assert_undisturbed(&mut agents, &stable, "after the follower's loss");
    ensemble.servers[follower].start();
    ensemble.servers[follower].wait_serving();
    n.say(format!("server {} back", follower + 1));

    // 3. two of three: no quorum for longer than the session timeout (10 s; the client gives
    //    the session up after ~14 s)
    let keep = rng.usize(0..3);
    let lost: Vec<usize> = (0..3).filter(|i| *i != keep).collect();
    for i in &lost {
        ensemble.servers[*i].kill();
    }
    n.say(format!("killed servers {:?}: quorum lost", lost.iter().map(|i| i + 1).collect::<Vec<_>>()));
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(18) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_undisturbed(&mut agents, &stable, "without a quorum");
    }
    n.say("18 s without a quorum: both agents up, stable workers untouched (keep_workers)");
    for i in &lost {
        ensemble.servers[*i].start();
    }
    for i in &lost {
        ensemble.servers[*i].wait_serving();
    }
    n.say("quorum back");
    churn_once(&mut w, root, &mut plan, &ids, &mut rng, &n).await;
    let after = converge_plan(&n, &mut w, root, &agents, &plan, "after the quorum came back").await;
    assert_undisturbed(&mut agents, &stable, "after the quorum came back");
    // The old sessions expired (the client gives a session up after ~1.4x its timeout): each
    // agent registers again under a new one. SupervisorInfo may still be the old session's
    // node for a moment (the ensemble restored that session with a fresh timeout).
    let mut after = after;
    for (i, a) in agents.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(60);
        while after[i] == before_quorum_loss[i] || after[i] == 0 {
            assert!(Instant::now() < deadline, "{} did not register again:\n{}", a.id, tail(&a.agent.log_text(), 60));
            tokio::time::sleep(Duration::from_millis(200)).await;
            after[i] = w.get(&format!("{root}/supervisors/{}", a.id)).await.map(|(_, o)| o).unwrap_or(0);
        }
    }
    let after = converge_plan(&n, &mut w, root, &agents, &plan, "re-registered").await;
    for a in &agents {
        let text = a.agent.log_text();
        for line in text.lines().filter(|l| l.contains("gale::cluster") && (l.contains("INFO") || l.contains("WARN"))) {
            n.say(format!("{}: {}", a.id, line));
        }
    }
    let now: Vec<u32> = ids
        .iter()
        .flat_map(|id| worker_procs(id).into_iter().filter(|p| p.topology == "stable").map(|p| p.pid))
        .collect();
    assert_eq!(now, stable, "the stable workers are the same processes");
    n.say(format!(
        "both agents re-registered (sessions {before_quorum_loss:x?} -> {after:x?}); stable workers unchanged"
    ));
}
