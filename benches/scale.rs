//! The agent at fleet scale on one machine: N `gale` agents, each its own process with its own
//! config, local dir and supervisor id, against ONE private ZooKeeper started here. Prints
//! numbers and a markdown summary; asserts nothing about them.
//!
//!     cargo bench --bench scale                      # N = 200: about 3 min after the build
//!     GALE_SCALE_AGENTS=50 cargo bench --bench scale
//!     scripts/bench-scale.sh                         # the same; passes the knobs through
//!
//! Knobs (environment, defaults in brackets): `GALE_SCALE_AGENTS` [200];
//! `GALE_SCALE_SECS` [60], the steady-state window; `GALE_SCALE_ROUNDS` [6], assignment rounds
//! after one warm-up round; `GALE_SCALE_TOPOLOGIES` [20], idle topologies for a second window
//! (0 skips it); `GALE_SCALE_TOPO_SECS` [30], that window; `GALE_SCALE_SETTLE_MS` [3000], the
//! time given to the agents after each change before its cost is read; `GALE_BENCH_LOG`
//! [info], the agents' log level; `GALE_BENCH_KEEP`, keep the temp dir (agent logs, marks).
//!
//! Agents use the SPEC defaults for every timer (session 20 s, connect 15 s, heartbeat 5 s,
//! refresh 60 s, sync 10 s, monitor 3 s, blob sync 30 s), slots [6700, 6701], no admin
//! endpoint. Assignments are raw JSON (SPEC §3.2) written by this process's own ZooKeeper
//! session, as a scheduler would. The ZooKeeper is the harness's standalone server (one
//! JVM, `-Xmx128m`, txn log fsync on) with `maxClientCnxns=0`: its default of 60 connections
//! per client address would refuse agent 61, since every agent connects from 127.0.0.1.
//!
//! 1. Registration: all N agents spawned in a tight loop; the time from the first spawn until
//!    each `<root>/supervisors/<id>` exists is stamped when this process's persistent watch on
//!    `<root>/supervisors` reports its creation. Then per-agent RSS, PSS, threads.
//! 2. Steady state (`GALE_SCALE_SECS`): agents registered, idle, no topologies. ZooKeeper's
//!    `mntr` (packets received, reads, writes, watch notifications, bytes) and `cons`
//!    (packets per session, so per agent) deltas; CPU of the ZooKeeper JVM and of all agents.
//! 3. Assignment propagation: per round one new topology placing one worker on every agent
//!    (ports alternate 6700/6701), then the previous round's topology is deleted. The worker is
//!    `examples/crash_worker.rs` with a 20 min lifetime; it stamps its start (unix ns, first
//!    thing in `main`) into the round's file. Latency = worker stamp minus the moment the
//!    create request was handed to the client, over N workers per round.
//! 4. `GALE_SCALE_TOPOLOGIES` idle topologies (placed on no agent of this run): the same window
//!    again, to show what each topology costs every agent on every sync.
//!
//! Every process is killed at the end, also on panic (drops), on Ctrl-C (the run is dropped),
//! and if this process is SIGKILLed (a watchdog shell sweeps whatever names the temp dir).
//! The agents' cgroup parents (`gale-<id>`, left behind by agents that did not stop their
//! workers themselves) are removed when empty. The soft `RLIMIT_NOFILE` is raised to the hard
//! limit first; children inherit it.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use support::*;
use zookeeper_client as zkc;

const ROOT: &str = "/scale";
const GALE: &str = env!("CARGO_BIN_EXE_gale");
/// Outlives the bench; a worker that escaped every cleanup still ends on its own.
const WORKER_LIFETIME_MS: u64 = 20 * 60 * 1000;

fn secs_between(from_ns: i128, to_ns: i128) -> f64 {
    (to_ns - from_ns) as f64 / 1e9
}

fn env_or<T: FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

#[derive(Debug, Clone)]
struct Knobs {
    agents: usize,
    secs: u64,
    rounds: usize,
    topologies: usize,
    topo_secs: u64,
    settle_ms: u64,
    log: String,
}

impl Knobs {
    fn from_env() -> Knobs {
        Knobs {
            agents: env_or("GALE_SCALE_AGENTS", 200usize).max(1),
            secs: env_or("GALE_SCALE_SECS", 60u64).max(1),
            rounds: env_or("GALE_SCALE_ROUNDS", 6usize).max(1),
            topologies: env_or("GALE_SCALE_TOPOLOGIES", 20usize),
            topo_secs: env_or("GALE_SCALE_TOPO_SECS", 30u64).max(1),
            settle_ms: env_or("GALE_SCALE_SETTLE_MS", 3000u64),
            log: std::env::var("GALE_BENCH_LOG").unwrap_or_else(|_| "info".to_owned()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// statistics

fn median_u64(values: &[u64]) -> u64 {
    let mut v = values.to_vec();
    v.sort_unstable();
    v.get(v.len().saturating_sub(1) / 2).copied().unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// /proc and the machine

/// Proportional set size: shared pages (the binary, libc) split between their users, so the
/// sum over agents is what they really occupy together.
fn pss_kb(pid: u32) -> u64 {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// `(busy, steal)` ticks of the whole machine (all cores) from /proc/stat: busy is user, nice,
/// system, irq and softirq; steal is time the hypervisor gave to other guests.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> =
        stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal
    ([0, 1, 2, 5, 6].iter().filter_map(|i| f.get(*i)).sum(), f.get(7).copied().unwrap_or(0))
}

/// CPU used by others between two samples, in % of one core: other processes (busy minus
/// this bench's own ticks) and hypervisor steal.
fn others_pct(before: ((u64, u64), u64), after: ((u64, u64), u64), ticks: u64, secs: f64) -> (f64, f64) {
    let (((b0, s0), o0), ((b1, s1), o1)) = (before, after);
    let pct = |t: u64| t as f64 / ticks as f64 / secs * 100.0;
    (pct((b1 - b0).saturating_sub(o1 - o0)), pct(s1 - s0))
}

/// CPU ticks of this bench's own processes: the agents, the ZooKeeper JVM and this process.
fn bench_ticks(pids: &[u32], java: u32) -> u64 {
    pids.iter().map(|p| cpu_ticks(*p)).sum::<u64>() + cpu_ticks(java) + cpu_ticks(std::process::id())
}

/// Raises the soft open-files limit to the hard one (inherited by the agents and the JVM).
fn raise_nofile() -> (Option<u64>, Option<u64>) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let before = limit.current;
    let raised = rustix::process::Rlimit { current: limit.maximum, maximum: limit.maximum };
    if let Err(e) = setrlimit(Resource::Nofile, raised) {
        eprintln!("cannot raise RLIMIT_NOFILE: {e}");
    }
    (before, getrlimit(Resource::Nofile).current)
}

/// Heap in use by the ZooKeeper JVM right after a full GC (`jcmd`), in kB: the live data.
fn java_heap_after_gc_kb(pid: i32) -> Option<u64> {
    let pid = pid.to_string();
    let gc = Command::new("jcmd").args([pid.as_str(), "GC.run"]).output().ok()?;
    if !gc.status.success() {
        return None;
    }
    let info = Command::new("jcmd").args([pid.as_str(), "GC.heap_info"]).output().ok()?;
    // One line per heap generation: "<name> total 131072K, used 20480K [...]".
    let used: Vec<u64> = String::from_utf8_lossy(&info.stdout)
        .lines()
        .filter(|l| l.contains(" total "))
        .filter_map(|l| l.split("used ").nth(1)?.split('K').next()?.trim().parse().ok())
        .collect();
    (!used.is_empty()).then(|| used.iter().sum())
}

// ---------------------------------------------------------------------------------------------
// ZooKeeper's own counters

/// One `mntr` answer: every numeric key.
#[derive(Debug, Clone)]
struct Mntr(HashMap<String, f64>);

impl Mntr {
    fn read(port: u16) -> Mntr {
        Mntr(
            four_letter(port, "mntr")
                .lines()
                .filter_map(|l| {
                    let (k, v) = l.split_once('\t')?;
                    Some((k.to_owned(), v.trim().parse().ok()?))
                })
                .collect(),
        )
    }

    fn get(&self, key: &str) -> f64 {
        self.0.get(key).copied().unwrap_or(f64::NAN)
    }

    fn text(port: u16, key: &str) -> String {
        four_letter(port, "mntr").lines().find_map(|l| l.strip_prefix(key)).unwrap_or("?").trim().to_owned()
    }
}

/// What ZooKeeper counted between two `mntr` answers.
#[derive(Debug, Clone, Copy, Default)]
struct ZkDelta {
    secs: f64,
    /// Every request packet incl. pings (`zk_packets_received`).
    packets: f64,
    /// Non-transaction requests (`zk_cnt_readlatency`): reads, exists, lists, watch setup and,
    /// in ZooKeeper 3.8, pings too (they carry no txn header).
    reads: f64,
    /// Transactions (`zk_cnt_updatelatency`): create, setData, delete, session create/close.
    writes: f64,
    /// Watches triggered (`zk_sum_node_{created,deleted,changed,children}_watch_count`).
    notifications: f64,
    bytes_in: f64,
    bytes_out: f64,
}

fn zk_delta(a: &Mntr, b: &Mntr, secs: f64) -> ZkDelta {
    let d = |k: &str| b.get(k) - a.get(k);
    let watch = |k: &str| d(&format!("zk_sum_node_{k}_watch_count"));
    ZkDelta {
        secs,
        packets: d("zk_packets_received"),
        reads: d("zk_cnt_readlatency"),
        writes: d("zk_cnt_updatelatency"),
        notifications: watch("created") + watch("deleted") + watch("changed") + watch("children"),
        bytes_in: d("zk_bytes_received_count"),
        bytes_out: d("zk_response_bytes"),
    }
}

impl ZkDelta {
    /// Every counter of `self` and `other` combined by `f` (`secs` stays `self`'s).
    fn zip(&self, other: &ZkDelta, f: impl Fn(f64, f64) -> f64) -> ZkDelta {
        ZkDelta {
            secs: self.secs,
            packets: f(self.packets, other.packets),
            reads: f(self.reads, other.reads),
            writes: f(self.writes, other.writes),
            notifications: f(self.notifications, other.notifications),
            bytes_in: f(self.bytes_in, other.bytes_in),
            bytes_out: f(self.bytes_out, other.bytes_out),
        }
    }

    /// This delta minus what the steady state `bg` would have done in the same time.
    fn minus_background(&self, bg: &ZkDelta) -> ZkDelta {
        let r = self.secs / bg.secs.max(1e-9);
        self.zip(bg, |a, b| a - b * r)
    }
}

/// Packets received per session (`cons`): session id -> count.
fn cons(port: u16) -> HashMap<i64, u64> {
    four_letter(port, "cons")
        .lines()
        .filter_map(|l| {
            let field = |name: &str| l.split([',', '(', ')']).find_map(|f| f.trim().strip_prefix(name));
            let sid = u64::from_str_radix(field("sid=0x")?, 16).ok()? as i64;
            Some((sid, field("recved=")?.parse().ok()?))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// what this process sees of `<root>/supervisors`

#[derive(Debug, Default)]
struct Seen {
    /// id -> unix ns when the creation of its node was reported.
    created: HashMap<String, i128>,
    data_changes: u64,
    deleted: usize,
}

/// A persistent recursive watch on `<root>/supervisors`, followed by a task.
async fn follow_supervisors(zk: &zkc::Client) -> (Arc<Mutex<Seen>>, tokio::task::JoinHandle<()>) {
    let path = format!("{ROOT}/supervisors");
    let mut watcher = zk.watch(&path, zkc::AddWatchMode::PersistentRecursive).await.expect("watch supervisors");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let record = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let event = watcher.changed().await;
            let at = now_ns();
            let id = event.path.rsplit('/').next().unwrap_or("").to_owned();
            let mut seen = record.lock().unwrap();
            match event.event_type {
                zkc::EventType::NodeCreated => {
                    seen.created.entry(id).or_insert(at);
                }
                zkc::EventType::NodeDataChanged => seen.data_changes += 1,
                zkc::EventType::NodeDeleted => seen.deleted += 1,
                // The crate panics if polled again after a terminal session event.
                zkc::EventType::Session if event.session_state.is_terminated() => return,
                _ => {}
            }
        }
    });
    (seen, task)
}

// ---------------------------------------------------------------------------------------------
// workers, agents, assignments

/// `(unix ns, pid)` of every `start` line in a crash_worker file.
fn starts(file: &Path) -> Vec<(i128, u32)> {
    marks(file).into_iter().filter(|m| !m.exit).map(|m| (m.ns, m.pid)).collect()
}

/// The harness's agent config with every timer at its SPEC default and `info` logs.
fn agent_config(dir: &Path, connect: &str, id: &str, log: &str) -> PathBuf {
    let mut spec = AgentSpec::new(connect, ROOT).id(id);
    spec.session_timeout_ms = 20_000;
    spec.heartbeat_secs = 5;
    spec.heartbeat_refresh_secs = 60;
    let path = spec.write(dir);
    let mut text = std::fs::read_to_string(&path).unwrap();
    for (from, to) in [
        ("connect_timeout_ms = 3000", "connect_timeout_ms = 15000"),
        ("sync_secs = 2", "sync_secs = 10"),
        ("monitor_secs = 1", "monitor_secs = 3"),
        ("gale=debug,info", log),
        ("slots = [6700, 6701]", "slots = [6700, 6701]"),
        ("listen = \"\"", "listen = \"\""),
    ] {
        assert!(text.contains(from), "the harness's agent config has no `{from}` any more: update benches/scale.rs");
        text = text.replace(from, to);
    }
    std::fs::write(&path, text).unwrap();
    path
}

/// One worker on `port` of every agent in `ids`.
fn assignment(topology: &str, ids: &[String], port: u16, worker: &Path, file: &Path) -> Value {
    let workers: Vec<Value> = ids.iter().map(|id| json!({"supervisor_id": id, "port": port})).collect();
    json!({
        "schema": 1,
        "topology_id": topology,
        "launch": {
            "command": [worker.to_str().unwrap(), WORKER_LIFETIME_MS.to_string(), file.to_str().unwrap()],
            "liveness": "process",
        },
        "blobs": [],
        "workers": workers,
    })
}

/// Creates `<root>/assignments/<topology>`; returns when the request was handed to the
/// client and when the answer came (unix ns).
async fn create_assignment(zk: &zkc::Client, topology: &str, value: &Value) -> (i128, i128) {
    let path = format!("{ROOT}/assignments/{topology}");
    let data = serde_json::to_vec(value).unwrap();
    let options = zkc::CreateMode::Persistent.with_acls(zkc::Acls::anyone_all());
    let sent = now_ns();
    zk.create(&path, &data, &options).await.unwrap_or_else(|e| panic!("creating {path}: {e}"));
    (sent, now_ns())
}

async fn delete_assignment(zk: &zkc::Client, topology: &str) {
    match zk.delete(&format!("{ROOT}/assignments/{topology}"), None).await {
        Ok(()) | Err(zkc::Error::NoNode) => {}
        Err(e) => panic!("deleting assignment {topology}: {e}"),
    }
}

/// Panics with the agent's log tail if any agent has exited.
fn check_alive(agents: &mut [Agent], ids: &[String]) {
    for (agent, id) in agents.iter_mut().zip(ids) {
        if let Some(status) = agent.try_status() {
            let log = agent.log_text();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "agent {id} exited ({status}); log tail:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

/// The agent id a process belongs to, from its cwd (`<base>/agents/<id>/local/workers/...`).
fn agent_of(pid: u32) -> Option<String> {
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
    let text = cwd.to_string_lossy().into_owned();
    let rest = text.split("/agents/").nth(1)?;
    Some(rest.split('/').next()?.to_owned())
}

// ---------------------------------------------------------------------------------------------
// cleanup

/// SIGKILLs every process whose cwd is a worker dir of this bench's agents, and removes the
/// agents' (empty) cgroups, named `gale-<id>` with this run's id prefix. On drop too: a
/// panicking bench must leave nothing behind. Declare it before the agents, so they are
/// dropped (SIGKILLed) first and cannot relaunch anything.
struct Cleanup {
    agents_dir: PathBuf,
    cgroup_prefix: String,
}

impl Cleanup {
    fn kill_workers(&self) -> usize {
        let mut n = 0;
        for pid in pids_with_cwd_under(&self.agents_dir) {
            let is_worker = std::fs::read_link(format!("/proc/{pid}/cwd"))
                .is_ok_and(|cwd| cwd.to_string_lossy().contains("/local/workers/"));
            if is_worker && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                n += 1;
            }
        }
        n
    }

    /// Removes cgroup directories named `<prefix>*` (and the worker cgroups inside) under
    /// every hierarchy in /sys/fs/cgroup. Only empty cgroups can be removed; others stay.
    fn remove_cgroups(&self) -> usize {
        fn remove_tree(dir: &Path) -> usize {
            let mut n = 0;
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    n += remove_tree(&entry.path());
                }
            }
            n + usize::from(std::fs::remove_dir(dir).is_ok())
        }
        fn visit(dir: &Path, prefix: &str, depth: usize) -> usize {
            let mut n = 0;
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                if entry.file_name().to_string_lossy().starts_with(prefix) {
                    n += remove_tree(&entry.path());
                } else if depth < 4 {
                    n += visit(&entry.path(), prefix, depth + 1);
                }
            }
            n
        }
        visit(Path::new("/sys/fs/cgroup"), &self.cgroup_prefix, 0)
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.kill_workers();
        std::thread::sleep(Duration::from_millis(300));
        self.kill_workers();
        std::thread::sleep(Duration::from_millis(200));
        self.remove_cgroups();
    }
}

/// If this process is SIGKILLed no destructor runs: a shell polls our pid and then SIGKILLs
/// every process whose command line names our temp dir (agents: their config path; workers:
/// their marks file; the ZooKeeper JVM: its zoo.cfg), removes the agents' empty cgroups and
/// the temp dir. The dir is passed in the environment, so the shell's own command line does
/// not name it. Killed on drop (declare it first): a normal end cleans up by itself.
struct Watchdog(Child);

impl Watchdog {
    fn spawn(dir: &Path, cgroup_prefix: &str) -> Watchdog {
        let script = r#"while kill -0 "$BENCH_PID" 2>/dev/null; do sleep 1; done
for round in 1 2; do
  for p in /proc/[0-9]*; do
    c=$(tr '\0' ' ' < "$p/cmdline" 2>/dev/null) || continue
    case "$c" in *"$SCALE_DIR"*) kill -9 "${p#/proc/}" 2>/dev/null ;; esac
  done
  sleep 1
done
find /sys/fs/cgroup -maxdepth 5 -type d -name "$CGROUP_PREFIX*" 2>/dev/null | while read -r d; do
  find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null
done
[ -n "${GALE_BENCH_KEEP:-}" ] || rm -rf "$SCALE_DIR""#;
        let child = Command::new("bash")
            .arg("-c")
            .arg(script)
            .env("BENCH_PID", std::process::id().to_string())
            .env("SCALE_DIR", dir)
            .env("CGROUP_PREFIX", cgroup_prefix)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the watchdog shell");
        Watchdog(child)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// measurements

/// Per-agent resources at one moment.
#[derive(Debug, Clone)]
struct Footprint {
    rss_kb: Vec<u64>,
    pss_kb: Vec<u64>,
    threads: Vec<u64>,
}

fn footprint(agents: &[Agent]) -> Footprint {
    let pids: Vec<u32> = agents.iter().map(|a| a.child.id()).collect();
    Footprint {
        rss_kb: pids.iter().map(|p| status_field(*p, "VmRSS:").unwrap_or(0)).collect(),
        pss_kb: pids.iter().map(|p| pss_kb(*p)).collect(),
        threads: pids.iter().map(|p| status_field(*p, "Threads:").unwrap_or(0)).collect(),
    }
}

#[derive(Debug, Clone)]
struct Window {
    zk: ZkDelta,
    /// Packets per second of each agent session (`cons`).
    per_session: Percentiles,
    sessions_seen: usize,
    info_writes: u64,
    /// ZooKeeper packets received per second, one sample a second.
    per_second: Percentiles,
    java_cpu_pct: f64,
    java_rss_kb: u64,
    /// CPU used meanwhile by processes that are not this bench's, and hypervisor steal (% of
    /// one core): the noise on a shared machine.
    others: (f64, f64),
    agents_cpu_pct: f64,
    agent_cpu_pct: Percentiles,
    watches: f64,
    load: String,
}

#[allow(clippy::too_many_arguments)]
async fn window(
    port: u16,
    java: u32,
    agents: &mut [Agent],
    ids: &[String],
    seen: &Mutex<Seen>,
    bench_sid: i64,
    secs: u64,
    ticks: u64,
) -> Window {
    let pids: Vec<u32> = agents.iter().map(|a| a.child.id()).collect();
    let (m0, c0, j0) = (Mntr::read(port), cons(port), cpu_ticks(java));
    let a0: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect();
    let others0 = (machine_ticks(), bench_ticks(&pids, java));
    let w0 = seen.lock().unwrap().data_changes;
    let t0 = now_ns();
    let mut java_rss_kb = 0;
    let mut tick = 0u64;
    // Packets per one-second sample: shows whether the agents' timers fire together.
    let mut samples = Vec::new();
    let mut last = (t0, m0.get("zk_packets_received"));
    while secs_between(t0, now_ns()) < secs as f64 {
        sleep_ms(1000).await;
        let (at, packets) = (now_ns(), Mntr::read(port).get("zk_packets_received"));
        samples.push((packets - last.1) / secs_between(last.0, at));
        last = (at, packets);
        java_rss_kb = java_rss_kb.max(status_field(java, "VmRSS:").unwrap_or(0));
        tick += 1;
        if tick % 5 == 0 {
            check_alive(agents, ids);
        }
    }
    let (m1, c1, j1) = (Mntr::read(port), cons(port), cpu_ticks(java));
    let a1: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect();
    let others1 = (machine_ticks(), bench_ticks(&pids, java));
    let w1 = seen.lock().unwrap().data_changes;
    let elapsed = secs_between(t0, now_ns());
    let per_session: Vec<f64> = c1
        .iter()
        .filter(|(sid, _)| **sid != bench_sid)
        .filter_map(|(sid, after)| Some((after - c0.get(sid)?) as f64 / elapsed))
        .collect();
    let pct_of = |t: u64| t as f64 / ticks as f64 / elapsed * 100.0;
    let agent_ticks: Vec<f64> = a0.iter().zip(&a1).map(|(a, b)| pct_of(b - a)).collect();
    Window {
        zk: zk_delta(&m0, &m1, elapsed),
        sessions_seen: per_session.len(),
        per_session: percentiles(&per_session),
        info_writes: w1 - w0,
        per_second: percentiles(&samples),
        java_cpu_pct: pct_of(j1 - j0),
        java_rss_kb,
        others: others_pct(others0, others1, ticks, elapsed),
        agents_cpu_pct: agent_ticks.iter().sum(),
        agent_cpu_pct: percentiles(&agent_ticks),
        watches: m1.get("zk_watch_count"),
        load: loadavg(),
    }
}

#[derive(Debug, Clone)]
struct Round {
    topology: String,
    port: u16,
    sent: i128,
    done: i128,
    /// Worker start stamps, unix ns.
    starts: Vec<i128>,
    pids: Vec<u32>,
    create: ZkDelta,
    /// Deleting the previous round's topology: ms until its last worker was gone, and the cost.
    delete: Option<(f64, ZkDelta)>,
}

impl Round {
    fn latencies(&self) -> Vec<f64> {
        self.starts.iter().map(|s| ms_between(self.sent, *s)).collect()
    }
}

async fn wait_gone(pids: &[u32], what: &str) -> i128 {
    eventually(what, Duration::from_secs(120), || async { pids.iter().all(|p| !alive(*p)).then(now_ns) }).await
}

#[allow(clippy::too_many_arguments)]
async fn propagation_round(
    r: usize,
    zk: &zkc::Client,
    zk_port: u16,
    ids: &[String],
    worker: &Path,
    marks: &Path,
    previous: Option<&Round>,
    settle_ms: u64,
    agents: &mut [Agent],
) -> Round {
    let n = ids.len();
    let topology = format!("prop-{r}");
    let slot = 6700 + (r % 2) as u16;
    let file = marks.join(format!("{topology}.log"));
    let value = assignment(&topology, ids, slot, worker, &file);
    let m0 = Mntr::read(zk_port);
    let (sent, done) = create_assignment(zk, &topology, &value).await;
    let deadline = now_ns() + 120 * 1_000_000_000;
    let started = loop {
        let s = starts(&file);
        if s.len() >= n {
            break s;
        }
        if now_ns() > deadline {
            let have: std::collections::BTreeSet<String> = s.iter().filter_map(|(_, pid)| agent_of(*pid)).collect();
            let missing: Vec<&String> = ids.iter().filter(|id| !have.contains(*id)).take(10).collect();
            check_alive(agents, ids);
            panic!("round {r}: only {} of {n} workers started in 120 s; some without one: {missing:?}", s.len());
        }
        sleep_ms(20).await;
    };
    sleep_ms(settle_ms).await;
    let m1 = Mntr::read(zk_port);
    let create = zk_delta(&m0, &m1, secs_between(sent, now_ns()));
    let delete = match previous {
        Some(prev) => {
            let t0 = now_ns();
            delete_assignment(zk, &prev.topology).await;
            let gone = wait_gone(&prev.pids, &format!("round {r}: the workers of {} to stop", prev.topology)).await;
            sleep_ms(settle_ms).await;
            let m2 = Mntr::read(zk_port);
            Some((ms_between(t0, gone), zk_delta(&m1, &m2, secs_between(t0, now_ns()))))
        }
        None => None,
    };
    check_alive(agents, ids);
    Round {
        topology,
        port: slot,
        sent,
        done,
        starts: started.iter().take(n).map(|(ns, _)| *ns).collect(),
        pids: started.iter().map(|(_, pid)| *pid).collect(),
        create,
        delete,
    }
}

/// WARN/ERROR lines of all agent logs, grouped by message (fields dropped).
fn log_problems(agents: &[Agent]) -> (usize, usize, BTreeMap<String, usize>) {
    let (mut warns, mut errors) = (0, 0);
    let mut kinds = BTreeMap::new();
    for agent in agents {
        for line in agent.log_text().lines() {
            let level = if line.contains(" WARN ") {
                warns += 1;
                " WARN "
            } else if line.contains(" ERROR ") {
                errors += 1;
                " ERROR "
            } else {
                continue;
            };
            let rest = line.split(level).nth(1).unwrap_or("");
            // "<target>: message field=value ..." -> "message"
            let rest = rest.split_once(": ").map(|(_, m)| m).unwrap_or(rest);
            let message: Vec<&str> = rest.split_whitespace().take_while(|w| !w.contains('=')).collect();
            *kinds.entry(format!("{}: {}", level.trim(), message.join(" "))).or_insert(0) += 1;
        }
    }
    (warns, errors, kinds)
}

/// Phase 1: what starting the agents took.
#[derive(Debug)]
struct Registration {
    spawn_ms: f64,
    all_registered_ms: f64,
    /// Each agent: its own spawn -> its node exists, ms.
    own: Percentiles,
    all_running_ms: f64,
    /// ZooKeeper's counters from the first spawn to 10 s after all were `running`.
    startup: ZkDelta,
    idle: Footprint,
}

/// Spawns one agent per config in a tight loop, then waits until every node exists and every
/// SupervisorInfo says `running`, and 10 s more.
async fn start_agents(
    zk: &zkc::Client,
    port: u16,
    ids: &[String],
    configs: &[PathBuf],
    seen: &Mutex<Seen>,
) -> (Vec<Agent>, Registration) {
    let n = ids.len();
    let m_start = Mntr::read(port);
    let (mut agents, spawned_at) = tokio::task::block_in_place(|| {
        let mut agents = Vec::with_capacity(n);
        let mut at = Vec::with_capacity(n);
        for config in configs {
            at.push(now_ns());
            agents.push(Agent::start_binary(config, GALE));
        }
        (agents, at)
    });
    let first_spawn = spawned_at[0];
    let spawn_ms = ms_between(first_spawn, now_ns());
    eventually(&format!("all {n} agents registered"), Duration::from_secs(300), || {
        let count = seen.lock().unwrap().created.len();
        async move { (count >= n).then_some(()) }
    })
    .await;
    let created = seen.lock().unwrap().created.clone();
    let all_registered_ms = created.values().map(|at| ms_between(first_spawn, *at)).fold(0.0, f64::max);
    let own: Vec<f64> =
        ids.iter().zip(&spawned_at).filter_map(|(id, at)| Some(ms_between(*at, *created.get(id)?))).collect();
    // `running` = registered and the first sync done (SPEC §6); polled, so +- 250 ms.
    let mut not_running: Vec<&String> = ids.iter().collect();
    let deadline = now_ns() + 300 * 1_000_000_000;
    while !not_running.is_empty() {
        let mut still = Vec::new();
        for id in not_running {
            let running = match zk.get_data(&format!("{ROOT}/supervisors/{id}")).await {
                Ok((data, _)) => serde_json::from_slice::<Value>(&data).is_ok_and(|v| v["state"] == "running"),
                Err(_) => false,
            };
            if !running {
                still.push(id);
            }
        }
        not_running = still;
        if !not_running.is_empty() {
            check_alive(&mut agents, ids);
            assert!(
                now_ns() < deadline,
                "{} agents not `running` after 300 s: {:?}",
                not_running.len(),
                &not_running[..5.min(not_running.len())]
            );
            sleep_ms(250).await;
        }
    }
    let all_running_ms = ms_between(first_spawn, now_ns());
    eprintln!(
        "[1/4] spawned in {spawn_ms:.0} ms; all registered after {all_registered_ms:.0} ms, all running after {all_running_ms:.0} ms; settling 10 s"
    );
    sleep_ms(10_000).await;
    let startup = zk_delta(&m_start, &Mntr::read(port), secs_between(first_spawn, now_ns()));
    let idle = footprint(&agents);
    check_alive(&mut agents, ids);
    (agents, Registration { spawn_ms, all_registered_ms, own: percentiles(&own), all_running_ms, startup, idle })
}

/// The clean stop of every agent: SIGTERM closes its session, so its node goes at once.
#[derive(Debug)]
struct Teardown {
    all_exited_ms: f64,
    nodes_gone_ms: f64,
    exit_codes: BTreeMap<String, usize>,
    warns: usize,
    errors: usize,
    /// WARN/ERROR messages and how often they were logged.
    kinds: BTreeMap<String, usize>,
    config_watch_failures: usize,
}

async fn stop_agents(agents: &mut [Agent], seen: &Mutex<Seen>) -> Teardown {
    let n = agents.len();
    let deleted_before = seen.lock().unwrap().deleted;
    let stop_sent = now_ns();
    for agent in agents.iter() {
        agent.signal(Signal::SIGTERM);
    }
    let mut exit_codes: BTreeMap<String, usize> = BTreeMap::new();
    for agent in agents.iter_mut() {
        let status = wait_for("an agent to exit after SIGTERM", Duration::from_secs(60), || agent.try_status());
        *exit_codes.entry(status.code().map(|c| c.to_string()).unwrap_or_else(|| status.to_string())).or_insert(0) += 1;
    }
    let all_exited_ms = ms_between(stop_sent, now_ns());
    let gone_at = eventually("every registration gone", Duration::from_secs(60), || {
        let gone = seen.lock().unwrap().deleted - deleted_before;
        async move { (gone >= n).then(now_ns) }
    })
    .await;
    let (warns, errors, kinds) = log_problems(agents);
    Teardown {
        all_exited_ms,
        nodes_gone_ms: ms_between(stop_sent, gone_at),
        exit_codes,
        warns,
        errors,
        kinds,
        config_watch_failures: agents.iter().filter(|a| a.log_text().contains("cannot watch the config file")).count(),
    }
}

// ---------------------------------------------------------------------------------------------
// the run

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let knobs = Knobs::from_env();
    tokio::select! {
        () = run(knobs) => {}
        _ = tokio::signal::ctrl_c() => eprintln!("interrupted: killing the agents and their workers"),
    }
}

async fn run(knobs: Knobs) {
    let bench_started = now_ns();
    let n = knobs.agents;
    let nofile = raise_nofile();
    let ticks = clock_ticks_per_sec();
    let worker = crash_worker_binary();
    let tmp = tempfile::Builder::new().prefix("gale-bench-scale-").tempdir().unwrap();
    let base = tmp.path().to_owned();
    let prefix = format!("scale-{}-", std::process::id());
    // Drop order on a panic or Ctrl-C (reverse of declaration): agents, ZooKeeper, workers
    // and cgroups (`cleanup`), the watchdog, the temp dir.
    let _watchdog = Watchdog::spawn(&base, &format!("gale-{prefix}"));
    let cleanup = Cleanup { agents_dir: base.join("agents"), cgroup_prefix: format!("gale-{prefix}") };
    let marks = base.join("marks");
    std::fs::create_dir_all(&marks).unwrap();

    let mut server = ZkServer::standalone_stopped(&base.join("zk"));
    let mut cfg = std::fs::read_to_string(&server.cfg).unwrap();
    assert!(!cfg.contains("maxClientCnxns"), "the harness now sets maxClientCnxns: update benches/scale.rs");
    cfg.push_str("maxClientCnxns=0\n");
    std::fs::write(&server.cfg, cfg).unwrap();
    server.start();
    server.wait_serving();
    let port = server.port;
    let connect = server.connect_string();
    let java = server.java_pid().expect("zookeeper pid") as u32;
    let zk = zk_client(&connect).await;
    let bench_sid = zk.session_id().0;
    create_parents(&zk, &format!("{ROOT}/supervisors/x")).await;
    create_parents(&zk, &format!("{ROOT}/assignments/x")).await;
    let (seen, follower) = follow_supervisors(&zk).await;
    let heap_empty = java_heap_after_gc_kb(java as i32);
    let java_rss_empty = status_field(java, "VmRSS:").unwrap_or(0);

    let machine = machine();
    let versions = format!(
        "gale {}, ZooKeeper {}, {}, {}",
        first_line(GALE, &["--version"]).trim_start_matches("gale "),
        Mntr::text(port, "zk_version").split(['-', ',']).next().unwrap_or("?").trim(),
        first_line("java", &["-version"]),
        first_line("rustc", &["--version"]),
    );
    eprintln!("machine: {machine}");
    eprintln!("versions: {versions}");
    eprintln!("RLIMIT_NOFILE soft: {:?} -> {:?}", nofile.0, nofile.1);

    // ---- 1. registration
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}{i:04}")).collect();
    let configs: Vec<PathBuf> =
        ids.iter().map(|id| agent_config(&base.join("agents").join(id), &connect, id, &knobs.log)).collect();
    eprintln!("[1/4] starting {n} agents ...");
    let (mut agents, registration) = start_agents(&zk, port, &ids, &configs, &seen).await;

    // ---- 2. steady state
    eprintln!("[2/4] steady state: {} s window, {n} idle agents, no topologies ...", knobs.secs);
    let steady = window(port, java, &mut agents, &ids, &seen, bench_sid, knobs.secs, ticks).await;
    let heap_agents = java_heap_after_gc_kb(java as i32);
    let mntr_idle = Mntr::read(port);

    // ---- 3. assignment propagation
    eprintln!(
        "[3/4] assignment propagation: 1 warm-up + {} rounds, one worker on each of {n} agents ...",
        knobs.rounds
    );
    let mut rounds: Vec<Round> = Vec::new();
    let pids: Vec<u32> = agents.iter().map(|a| a.child.id()).collect();
    let (rounds_t0, others0) = (now_ns(), (machine_ticks(), bench_ticks(&pids, java)));
    for r in 0..=knobs.rounds {
        let round =
            propagation_round(r, &zk, port, &ids, &worker, &marks, rounds.last(), knobs.settle_ms, &mut agents).await;
        let l = percentiles(&round.latencies());
        eprintln!(
            "      round {r} (port {}): p50 {:.0} ms, p99 {:.0} ms, last {:.0} ms; previous topology's workers gone after {}",
            round.port,
            l.p50,
            l.p99,
            l.max,
            round.delete.map(|(ms, _)| format!("{ms:.0} ms")).unwrap_or_else(|| "-".into())
        );
        rounds.push(round);
    }
    let rounds_others =
        others_pct(others0, (machine_ticks(), bench_ticks(&pids, java)), ticks, secs_between(rounds_t0, now_ns()));
    let rounds_load = loadavg();
    let with_workers = footprint(&agents);
    let last = rounds.last().unwrap();
    delete_assignment(&zk, &last.topology).await;
    wait_gone(&last.pids, "the last round's workers to stop").await;
    sleep_ms(knobs.settle_ms).await;

    // ---- 4. idle topologies
    let topologies = if knobs.topologies > 0 {
        eprintln!(
            "[4/4] {} idle topologies (no worker on these agents), then a {} s window ...",
            knobs.topologies, knobs.topo_secs
        );
        for k in 0..knobs.topologies {
            let nobody = vec![format!("nobody-{k}")];
            let value = assignment(&format!("idle-{k}"), &nobody, 6700, &worker, &marks.join("idle.log"));
            create_assignment(&zk, &format!("idle-{k}"), &value).await;
        }
        sleep_ms(10_000).await;
        let w = window(port, java, &mut agents, &ids, &seen, bench_sid, knobs.topo_secs, ticks).await;
        for k in 0..knobs.topologies {
            delete_assignment(&zk, &format!("idle-{k}")).await;
        }
        Some(w)
    } else {
        None
    };

    eprintln!("stopping the agents (SIGTERM) ...");
    let teardown = stop_agents(&mut agents, &seen).await;
    drop(agents);
    let leftovers = cleanup.kill_workers();
    let cgroups_removed = cleanup.remove_cgroups();
    follower.abort();

    report(&Report {
        knobs,
        machine,
        versions,
        nofile,
        bench_secs: secs_between(bench_started, now_ns()),
        registration,
        steady,
        heap_empty,
        heap_agents,
        java_rss_empty,
        mntr_idle,
        rounds,
        rounds_others,
        rounds_load,
        with_workers,
        topologies,
        teardown,
        leftovers,
        cgroups_removed,
    });

    drop(zk);
    drop(server);
    drop(cleanup);
    if std::env::var_os("GALE_BENCH_KEEP").is_some() {
        println!("kept {} (agent logs, worker marks, zk.log)", tmp.keep().display());
    }
}

// ---------------------------------------------------------------------------------------------
// the summary

/// Everything the summary prints.
#[derive(Debug)]
struct Report {
    knobs: Knobs,
    machine: String,
    versions: String,
    nofile: (Option<u64>, Option<u64>),
    bench_secs: f64,
    registration: Registration,
    steady: Window,
    heap_empty: Option<u64>,
    heap_agents: Option<u64>,
    java_rss_empty: u64,
    mntr_idle: Mntr,
    /// The warm-up round first.
    rounds: Vec<Round>,
    rounds_others: (f64, f64),
    rounds_load: String,
    with_workers: Footprint,
    topologies: Option<Window>,
    teardown: Teardown,
    leftovers: usize,
    cgroups_removed: usize,
}

/// The mean of the rounds' costs, each net of the steady-state rate.
fn mean_cost(rounds: &[Round], bg: &ZkDelta, cost: impl Fn(&Round) -> Option<ZkDelta>) -> ZkDelta {
    let ds: Vec<ZkDelta> = rounds.iter().filter_map(cost).map(|d| d.minus_background(bg)).collect();
    let k = 1.0 / ds.len().max(1) as f64;
    ds.iter().fold(ZkDelta::default(), |sum, d| sum.zip(d, |a, b| a + b * k))
}

fn report(r: &Report) {
    let n = r.knobs.agents;
    let (reg, steady) = (&r.registration, &r.steady);
    let per = |v: f64| v / n as f64;
    let rate = |d: &ZkDelta, v: f64| v / d.secs;
    let measured = &r.rounds[1..];
    let lat = percentiles(&measured.iter().flat_map(Round::latencies).collect::<Vec<_>>());
    let warm = percentiles(&r.rounds[0].latencies());
    let list = |f: &dyn Fn(&Round) -> Option<f64>| -> String {
        measured.iter().filter_map(f).map(|v| format!("{v:.0}")).collect::<Vec<_>>().join(", ")
    };
    let create_rtt = percentiles(&measured.iter().map(|r| ms_between(r.sent, r.done)).collect::<Vec<_>>());
    let create_cost = mean_cost(measured, &steady.zk, |r| Some(r.create));
    let delete_cost = mean_cost(measured, &steady.zk, |r| r.delete.map(|(_, d)| d));
    let startup = reg.startup.minus_background(&steady.zk);
    let mb = |kb: &[u64]| percentiles(&kb.iter().map(|k| *k as f64 / 1024.0).collect::<Vec<_>>());
    let (rss, rss_w) = (mb(&reg.idle.rss_kb), mb(&r.with_workers.rss_kb));
    let total_mb = |kb: &[u64]| kb.iter().sum::<u64>() as f64 / 1024.0;
    let kb_mb = |k: Option<u64>| k.map(|k| format!("{:.1} MB", k as f64 / 1024.0)).unwrap_or_else(|| "n/a".into());
    let heap_per_agent = match (r.heap_empty, r.heap_agents) {
        (Some(a), Some(b)) => format!("{:.1} kB", (b as f64 - a as f64) / n as f64),
        _ => "n/a".into(),
    };
    let t = &r.teardown;

    println!();
    println!("---- summary (benches/scale.rs, release) ----");
    println!();
    println!("Machine: {}. Versions: {}.", r.machine, r.versions);
    println!(
        "{n} agents, SPEC-default timers, one standalone ZooKeeper (JVM -Xmx128m) on loopback; bench wall time {:.0} s.",
        r.bench_secs
    );
    println!();
    println!("| measurement | value |");
    println!("|---|---|");
    println!("| agents (separate `gale run` processes) | {n} |");
    println!("| spawning all {n} (fork+exec from the bench, tight loop) | {:.0} ms |", reg.spawn_ms);
    println!("| **first spawn → all {n} `<root>/supervisors/<id>` exist** | **{:.0} ms** |", reg.all_registered_ms);
    println!(
        "| each agent: its own spawn → its node exists, p50 / p99 / max | {:.0} / {:.0} / {:.0} ms |",
        reg.own.p50, reg.own.p99, reg.own.max
    );
    println!(
        "| first spawn → all {n} SupervisorInfo `running` (first sync done; polled, ±250 ms) | {:.0} ms |",
        reg.all_running_ms
    );
    println!(
        "| start-up cost per agent on ZooKeeper (net of steady state): packets / reads / writes | {:.1} / {:.1} / {:.1} |",
        per(startup.packets),
        per(startup.reads),
        per(startup.writes)
    );
    println!(
        "| agent RSS idle, median / max; total of {n} | {:.1} / {:.1} MB; {:.0} MB (PSS total {:.0} MB) |",
        rss.p50,
        rss.max,
        total_mb(&reg.idle.rss_kb),
        total_mb(&reg.idle.pss_kb)
    );
    println!("| agent RSS with one worker, median / max | {:.1} / {:.1} MB |", rss_w.p50, rss_w.max);
    println!("| agent threads, median | {} |", median_u64(&reg.idle.threads));
    println!(
        "| **assignment write → worker exec, p50 / p99 / max** ({} rounds × {n} = {} starts) | **{:.0} / {:.0} / {:.0} ms** |",
        measured.len(),
        lat.n,
        lat.p50,
        lat.p99,
        lat.max
    );
    println!("| per-round max (the last agent), ms | {} |", list(&|r| Some(percentiles(&r.latencies()).max)));
    println!("| per-round min (the first agent), ms | {} |", list(&|r| Some(percentiles(&r.latencies()).min)));
    println!("| warm-up round (not counted): p50 / max | {:.0} / {:.0} ms |", warm.p50, warm.max);
    println!(
        "| during the rounds: CPU of other processes; hypervisor steal (% of one core); load average after | {:.0} %; {:.0} %; {} |",
        r.rounds_others.0, r.rounds_others.1, r.rounds_load
    );
    println!("| the bench's create round trip, p50 / max | {:.1} / {:.1} ms |", create_rtt.p50, create_rtt.max);
    println!(
        "| delete of the previous topology → its last worker gone, per round, ms | {} |",
        list(&|r| r.delete.map(|(ms, _)| ms))
    );
    println!(
        "| one topology created (1 worker on every agent), per agent: packets / reads / writes | {:.1} / {:.1} / {:.1} |",
        per(create_cost.packets),
        per(create_cost.reads),
        per(create_cost.writes)
    );
    println!(
        "| one topology deleted (its worker stopped on every agent), per agent: packets / reads / writes | {:.1} / {:.1} / {:.1} |",
        per(delete_cost.packets),
        per(delete_cost.reads),
        per(delete_cost.writes)
    );
    println!(
        "| watch notifications per create / delete (all {n} agents + the bench's watch) | {:.0} / {:.0} |",
        create_cost.notifications, delete_cost.notifications
    );
    println!(
        "| bytes ZooKeeper sent per create / delete, per agent | {:.0} / {:.0} B |",
        per(create_cost.bytes_out),
        per(delete_cost.bytes_out)
    );
    println!(
        "| **steady state ({:.0} s): ZooKeeper packets received/s, total; per agent** | **{:.1}; {:.3}** |",
        steady.zk.secs,
        rate(&steady.zk, steady.zk.packets),
        per(rate(&steady.zk, steady.zk.packets))
    );
    println!(
        "| steady: packets received per 1-s sample, p50 / max (timer alignment) | {:.0} / {:.0} |",
        steady.per_second.p50, steady.per_second.max
    );
    println!(
        "| steady: non-txn requests (reads incl. pings)/s; writes/s — total | {:.1}; {:.2} |",
        rate(&steady.zk, steady.zk.reads),
        rate(&steady.zk, steady.zk.writes)
    );
    println!(
        "| steady: per agent, reads/s; writes/min; SupervisorInfo writes/min (seen by watch) | {:.3}; {:.2}; {:.2} |",
        per(rate(&steady.zk, steady.zk.reads)),
        per(rate(&steady.zk, steady.zk.writes)) * 60.0,
        per(steady.info_writes as f64 / steady.zk.secs) * 60.0
    );
    println!(
        "| steady: packets/s per agent session (`cons`), p50 [min–max] over {} sessions | {:.3} [{:.3}–{:.3}] |",
        steady.sessions_seen, steady.per_session.p50, steady.per_session.min, steady.per_session.max
    );
    println!(
        "| steady: bytes in / out per agent per s | {:.0} / {:.0} B |",
        per(rate(&steady.zk, steady.zk.bytes_in)),
        per(rate(&steady.zk, steady.zk.bytes_out))
    );
    println!(
        "| steady: ZooKeeper watches (`zk_watch_count`), per agent | {:.0}, {:.2} |",
        steady.watches,
        per(steady.watches)
    );
    println!(
        "| steady: ZooKeeper JVM CPU (% of one core); RSS (empty: {:.0} MB) | {:.1} %; {:.0} MB |",
        r.java_rss_empty as f64 / 1024.0,
        steady.java_cpu_pct,
        steady.java_rss_kb as f64 / 1024.0
    );
    println!(
        "| ZooKeeper heap after full GC: empty / with {n} agents; per agent | {} / {}; {} |",
        kb_mb(r.heap_empty),
        kb_mb(r.heap_agents),
        heap_per_agent
    );
    println!(
        "| steady: all agents' CPU (% of one core), total; per agent p50 / max | {:.1} %; {:.3} / {:.3} % |",
        steady.agents_cpu_pct, steady.agent_cpu_pct.p50, steady.agent_cpu_pct.max
    );
    println!(
        "| steady: CPU of other processes; hypervisor steal (% of one core); load average after | {:.0} %; {:.0} %; {} |",
        steady.others.0, steady.others.1, steady.load
    );
    if let Some(w) = &r.topologies {
        let k = r.knobs.topologies;
        println!(
            "| with {k} idle topologies ({:.0} s): packets/s per agent; extra reads/s per agent per topology | {:.3}; {:.4} |",
            w.zk.secs,
            per(rate(&w.zk, w.zk.packets)),
            (per(rate(&w.zk, w.zk.reads)) - per(rate(&steady.zk, steady.zk.reads))) / k as f64
        );
        println!(
            "| with {k} idle topologies: packets per 1-s sample, p50 / max; ZooKeeper JVM CPU; all agents' CPU | {:.0} / {:.0}; {:.1} %; {:.1} % |",
            w.per_second.p50, w.per_second.max, w.java_cpu_pct, w.agents_cpu_pct
        );
    }
    println!(
        "| SIGTERM to all → all exited; → all registrations gone | {:.0} ms; {:.0} ms |",
        t.all_exited_ms, t.nodes_gone_ms
    );
    println!();
    let m = &r.mntr_idle;
    println!(
        "ZooKeeper at the end of the steady window: {} znodes, {} ephemerals, {} sessions, {} connections, {} watches, ~{} bytes of data, {} fds.",
        m.get("zk_znode_count"),
        m.get("zk_ephemerals_count"),
        m.get("zk_global_sessions"),
        m.get("zk_num_alive_connections"),
        m.get("zk_watch_count"),
        m.get("zk_approximate_data_size"),
        m.get("zk_open_file_descriptor_count"),
    );
    println!(
        "Latency = the worker's own start stamp (first thing in its main) minus the moment the bench handed the create of \
         `{ROOT}/assignments/prop-<r>` to its ZooKeeper client. Costs per change are mntr deltas over the change and \
         {} ms of settling, minus the steady-state rate for the same time.",
        r.knobs.settle_ms
    );
    println!(
        "Agent exits after SIGTERM: {:?}. Agent logs: {} WARN, {} ERROR lines; {} agents could not watch their config \
         file (inotify instances per user: /proc/sys/fs/inotify/max_user_instances = {}). Cleanup: {} stray workers \
         SIGKILLed, {} cgroup dirs removed. RLIMIT_NOFILE soft {:?} -> {:?}.",
        t.exit_codes,
        t.warns,
        t.errors,
        t.config_watch_failures,
        std::fs::read_to_string("/proc/sys/fs/inotify/max_user_instances").unwrap_or_default().trim(),
        r.leftovers,
        r.cgroups_removed,
        r.nofile.0,
        r.nofile.1
    );
    for (kind, count) in t.kinds.iter().take(12) {
        println!("  {count:>5} × {kind}");
    }
    println!("------------------------------------------------------------");
}
