//! How fast the agent reacts to its workers, and what running them costs. Prints numbers;
//! asserts nothing about them.
//!
//!     cargo bench --bench workers                 # ~2 min after the build, 60 s idle window
//!     GALE_BENCH_SECS=120 cargo bench --bench workers
//!     GALE_BENCH_KEEP=1 cargo bench --bench workers   # keep the temp dir (agent logs, marks)
//!     GALE_BENCH_LOG=gale=debug,info ...              # agents' log level (default info)
//!
//! Runs the release `gale` against a private ZooKeeper started here; assignments are written
//! as raw JSON (SPEC §3.2) by this process's own ZooKeeper session, as a scheduler would. The
//! workers are `examples/crash_worker.rs`, which stamps `start`/`exit` (unix ns) into a file,
//! so every latency is measured from the worker's own clock reading, not from polling.
//!
//! 1. crash -> restart: (a) every crash a first crash (`reset_after_secs = 1`, lifetime
//!    1100 ms): the immediate restart; (b) consecutive crashes (lifetime 200 ms, backoff
//!    1..1 ms): the backoff path. Floor: fork+exec+wait of the same binary from here.
//! 2. assignment write -> worker exec.
//! 3. adoption of 100 running workers after SIGKILL of the agent.
//! 4. agent RSS and CPU with those 100 idle workers over `GALE_BENCH_SECS` (default 60).
//!
//! Agents use the SPEC defaults for the timers (heartbeat 5 s, refresh 60 s, sync 10 s,
//! monitor 3 s), log level `info`, and a high `node_budget_per_min` where a crash loop would
//! otherwise hit it. Every worker process is SIGKILLed at the end (stopping an agent never
//! stops its workers), also when the bench panics.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use support::*;
use zookeeper_client as zkc;

const ROOT: &str = "/bench";
const GALE: &str = env!("CARGO_BIN_EXE_gale");

// ---------------------------------------------------------------------------------------------
// the worker binary and its marks

fn starts(file: &Path) -> Vec<Mark> {
    marks(file).into_iter().filter(|m| !m.exit).collect()
}

// ---------------------------------------------------------------------------------------------
// statistics and printing

fn row(label: &str, s: Percentiles) -> String {
    format!("| {label:<58} | {:>3} | {:>9.2} | {:>9.2} | {:>9.2} |", s.n, s.p50, s.p90, s.max)
}

fn table_header() -> String {
    format!(
        "| {:<58} | {:>3} | {:>9} | {:>9} | {:>9} |\n|{}|-----|-----------|-----------|-----------|",
        "latency (ms)",
        "n",
        "p50",
        "p90",
        "max",
        "-".repeat(60)
    )
}

// ---------------------------------------------------------------------------------------------
// /proc

/// SIGKILLs, on drop too (a panicking bench must not leave workers behind), every process
/// whose cwd is a worker dir under `dir`: exactly the workers of this bench's agents.
struct Reaper {
    dir: PathBuf,
}

impl Reaper {
    fn kill_all(&self) -> usize {
        let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
        let mut n = 0;
        for pid in entries.flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()) {
            let Ok(cwd) = std::fs::read_link(format!("/proc/{pid}/cwd")) else { continue };
            if cwd.starts_with(&self.dir)
                && cwd.to_string_lossy().contains("/workers/")
                && kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok()
            {
                n += 1;
            }
        }
        n
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.kill_all();
    }
}

// ---------------------------------------------------------------------------------------------
// ZooKeeper

/// Writes `<root>/assignments/<topology>` (create, or set if present). Returns the time the
/// write was sent and the time ZooKeeper's answer arrived (unix ns).
async fn write_assignment(zk: &zkc::Client, topology: &str, assignment: &Value) -> (i128, i128) {
    let path = format!("{ROOT}/assignments/{topology}");
    create_parents(zk, &path).await;
    let data = serde_json::to_vec(assignment).unwrap();
    let sent = now_ns();
    let options = zkc::CreateMode::Persistent.with_acls(zkc::Acls::anyone_all());
    match zk.create(&path, &data, &options).await {
        Ok(_) => {}
        Err(zkc::Error::NodeExists) => {
            zk.set_data(&path, &data, None).await.unwrap();
        }
        Err(e) => panic!("writing {path}: {e}"),
    }
    (sent, now_ns())
}

async fn delete_assignment(zk: &zkc::Client, topology: &str) {
    match zk.delete(&format!("{ROOT}/assignments/{topology}"), None).await {
        Ok(()) | Err(zkc::Error::NoNode) => {}
        Err(e) => panic!("deleting assignment {topology}: {e}"),
    }
}

async fn supervisor_info(zk: &zkc::Client, id: &str) -> Option<(Value, zkc::Stat)> {
    match zk.get_data(&format!("{ROOT}/supervisors/{id}")).await {
        Ok((data, stat)) => Some((serde_json::from_slice(&data).ok()?, stat)),
        Err(_) => None,
    }
}

fn workers_of(info: &Value) -> Vec<Value> {
    info["workers"].as_array().cloned().unwrap_or_default()
}

/// port -> (pid, worker id) of the workers whose slot is `running`.
fn running_workers(info: &Value) -> BTreeMap<u64, (u64, String)> {
    workers_of(info)
        .iter()
        .filter(|w| w["state"] == "running")
        .filter_map(|w| Some((w["port"].as_u64()?, (w["pid"].as_u64()?, w["worker_id"].as_str()?.to_owned()))))
        .collect()
}

fn assignment(topology: &str, supervisor: &str, worker: &Path, lifetime_ms: u64, file: &Path, ports: &[u16]) -> Value {
    let placements: Vec<Value> = ports.iter().map(|p| json!({"supervisor_id": supervisor, "port": p})).collect();
    json!({
        "schema": 1,
        "topology_id": topology,
        "launch": {
            "command": [worker.to_str().unwrap(), lifetime_ms.to_string(), file.to_str().unwrap()],
            "liveness": "process",
        },
        "blobs": [],
        "workers": placements,
    })
}

// ---------------------------------------------------------------------------------------------
// agents

/// The harness's config with the SPEC default timers, `info` logs, `slots`, and a `[restart]`
/// section.
fn agent_config(dir: &Path, connect: &str, id: &str, slots: &[u16], restart: &str) -> PathBuf {
    let mut spec = AgentSpec::new(connect, ROOT).id(id);
    spec.session_timeout_ms = 20_000;
    spec.heartbeat_secs = 5;
    spec.heartbeat_refresh_secs = 60;
    let path = spec.write(dir);
    let mut text = std::fs::read_to_string(&path).unwrap();
    // `GALE_BENCH_LOG=gale=debug,info` to see the agents' job timings (costs some latency).
    let level = std::env::var("GALE_BENCH_LOG").unwrap_or_else(|_| "info".to_owned());
    let slots_line = format!("slots = [{}]", slots.iter().map(u16::to_string).collect::<Vec<_>>().join(", "));
    for (from, to) in [
        ("slots = [6700, 6701]", slots_line.as_str()),
        ("sync_secs = 2", "sync_secs = 10"),
        ("monitor_secs = 1", "monitor_secs = 3"),
        ("gale=debug,info", level.as_str()),
    ] {
        assert!(text.contains(from), "the harness's agent config has no `{from}` any more: update benches/workers.rs");
        text = text.replace(from, to);
    }
    assert!(!text.contains("[restart]"), "the harness's agent config now has [restart]: update benches/workers.rs");
    text.push_str(&format!("\n[restart]\n{restart}"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Waits until `id` is registered with lifecycle `running` and the given session differs from
/// `not_owner` (0: any).
async fn wait_running(zk: &zkc::Client, id: &str, not_owner: i64) -> (Value, zkc::Stat) {
    eventually(&format!("supervisor {id} running"), Duration::from_secs(60), || async {
        supervisor_info(zk, id)
            .await
            .filter(|(info, stat)| info["state"] == "running" && stat.ephemeral_owner != not_owner)
    })
    .await
}

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

// ---------------------------------------------------------------------------------------------
// the measurements

/// fork+exec+wait of the worker from this process: exit -> next start.
fn floor_gaps(worker: &Path, file: &Path, cycles: usize) -> Vec<f64> {
    for _ in 0..=cycles {
        let status = Command::new(worker).arg("20").arg(file).status().expect("run crash_worker");
        assert_eq!(status.code(), Some(1), "crash_worker exits 1");
    }
    restart_gaps(&marks(file))
}

/// What one LocalState write costs on this disk (SPEC §5: temp file, fsync, rename, fsync dir,
/// marker, fsync dir), done the same way here in `dir`, `n` times: ms each.
fn durable_write_ms(dir: &Path, n: usize) -> Vec<f64> {
    use std::io::Write;
    std::fs::create_dir_all(dir).unwrap();
    let sync_dir = || std::fs::File::open(dir).unwrap().sync_all().unwrap();
    (0..n)
        .map(|i| {
            let t = now_ns();
            let (temp, data, marker) =
                (dir.join(format!("{i}.tmp")), dir.join(format!("{i}")), dir.join(format!("{i}.version")));
            let mut f = std::fs::File::create(&temp).unwrap();
            f.write_all(&[7u8; 2048]).unwrap();
            f.sync_all().unwrap();
            drop(f);
            std::fs::rename(&temp, &data).unwrap();
            sync_dir();
            std::fs::File::create(&marker).unwrap();
            sync_dir();
            ms_between(t, now_ns())
        })
        .collect()
}

/// Round trip of a ZooKeeper read from this process: ms each.
async fn zk_read_ms(zk: &zkc::Client, n: usize) -> Vec<f64> {
    let mut out = Vec::new();
    for _ in 0..n {
        let t = now_ns();
        let _ = zk.get_data(ROOT).await;
        out.push(ms_between(t, now_ns()));
    }
    out
}

struct CrashLoop {
    gaps: Vec<f64>,
    /// SupervisorInfo writes (node versions) per restart.
    writes_per_restart: f64,
    restarts_reported: u64,
}

/// One agent, one slot, one crashing worker until `want_starts` starts were seen.
#[allow(clippy::too_many_arguments)]
async fn crash_loop(
    zk: &zkc::Client,
    connect: &str,
    base: &Path,
    name: &str,
    worker: &Path,
    lifetime_ms: u64,
    restart: &str,
    want_starts: usize,
) -> CrashLoop {
    let dir = base.join(name);
    let config = agent_config(&dir, connect, name, &[7000], restart);
    let mut agent = Agent::start_binary(&config, GALE);
    wait_running(zk, name, 0).await;
    let file = dir.join("marks.log");
    write_assignment(zk, name, &assignment(name, name, worker, lifetime_ms, &file, &[7000])).await;
    // The first start: count SupervisorInfo writes from here.
    eventually("the first crash_worker start", Duration::from_secs(30), || async {
        (!starts(&file).is_empty()).then_some(())
    })
    .await;
    let (_, stat0) = supervisor_info(zk, name).await.unwrap();
    let deadline = SystemTime::now() + Duration::from_millis(lifetime_ms * want_starts as u64 * 3 + 30_000);
    while starts(&file).len() < want_starts {
        if let Some(status) = agent.try_status() {
            panic!("agent {name} exited ({status}); log:\n{}", agent.log_text());
        }
        if SystemTime::now() > deadline {
            panic!("crash loop {name}: only {} starts; log:\n{}", starts(&file).len(), agent.log_text());
        }
        sleep_ms(100).await;
    }
    let (info1, stat1) = supervisor_info(zk, name).await.unwrap();
    delete_assignment(zk, name).await;
    eventually(&format!("{name}: slot empty and worker gone"), Duration::from_secs(30), || async {
        let (info, _) = supervisor_info(zk, name).await?;
        let gone = starts(&file).last().is_none_or(|m| !alive(m.pid));
        (gone && workers_of(&info).is_empty()).then_some(())
    })
    .await;
    agent.signal(Signal::SIGTERM);
    agent.wait_exit(Duration::from_secs(20));
    let all = restart_gaps(&marks(&file));
    let gaps: Vec<f64> = all.into_iter().take(want_starts - 1).collect();
    let restarts_reported = workers_of(&info1).first().and_then(|w| w["restarts"].as_u64()).unwrap_or(0);
    CrashLoop {
        writes_per_restart: (stat1.version - stat0.version) as f64 / restarts_reported.max(1) as f64,
        gaps,
        restarts_reported,
    }
}

struct ExecLatency {
    from_completion: Vec<f64>,
    from_send: Vec<f64>,
    create_rtt: Vec<f64>,
}

/// Write an assignment, see the worker exec, delete it, wait until it is gone; `rounds` times
/// after one warm-up round.
async fn write_to_exec(zk: &zkc::Client, connect: &str, base: &Path, worker: &Path, rounds: usize) -> ExecLatency {
    let name = "exec-latency";
    let dir = base.join(name);
    let config = agent_config(&dir, connect, name, &[7000], "");
    let mut agent = Agent::start_binary(&config, GALE);
    wait_running(zk, name, 0).await;
    let file = dir.join("marks.log");
    let job = assignment(name, name, worker, 60_000, &file, &[7000]);
    let mut out = ExecLatency { from_completion: Vec::new(), from_send: Vec::new(), create_rtt: Vec::new() };
    for round in 0..=rounds {
        let before = starts(&file).len();
        let (sent, done) = write_assignment(zk, name, &job).await;
        let start = eventually(&format!("{name} round {round}: worker start"), Duration::from_secs(30), || async {
            starts(&file).get(before).copied()
        })
        .await;
        if round > 0 {
            out.from_completion.push(ms_between(done, start.ns));
            out.from_send.push(ms_between(sent, start.ns));
            out.create_rtt.push(ms_between(sent, done));
        }
        delete_assignment(zk, name).await;
        eventually(&format!("{name} round {round}: worker gone"), Duration::from_secs(30), || async {
            let (info, _) = supervisor_info(zk, name).await?;
            (!alive(start.pid) && workers_of(&info).is_empty()).then_some(())
        })
        .await;
        if let Some(status) = agent.try_status() {
            panic!("agent {name} exited ({status}); log:\n{}", agent.log_text());
        }
    }
    agent.signal(Signal::SIGTERM);
    agent.wait_exit(Duration::from_secs(20));
    out
}

struct Adoption {
    rss_no_workers_kb: u64,
    launch_100_ms: f64,
    /// SIGKILL'd agent restarted -> its new node shows all 100 running, same pids.
    to_all_adopted_ms: f64,
    /// ... and the lifecycle `running` (out of `recovering`).
    to_lifecycle_running_ms: f64,
    /// restarted -> the new node exists at all.
    to_registered_ms: f64,
    same_pid_and_id: usize,
    launched_lines: usize,
    adopted_lines: usize,
    extra_starts: usize,
    restarts_reported: u64,
    survivors_after_kill: usize,
}

struct Idle {
    secs: u64,
    rss_start_kb: u64,
    rss_end_kb: u64,
    rss_max_kb: u64,
    cpu_ticks: u64,
    ticks_per_sec: u64,
    threads: u64,
    info_writes: i32,
    workers_alive: usize,
}

async fn adoption_and_idle(
    zk: &zkc::Client,
    connect: &str,
    base: &Path,
    worker: &Path,
    window: Duration,
) -> (Adoption, Idle, Agent) {
    let name = "hundred";
    let ports: Vec<u16> = (7000..7100).collect();
    let dir = base.join(name);
    let config = agent_config(&dir, connect, name, &ports, "");
    let mut agent = Agent::start_binary(&config, GALE);
    wait_running(zk, name, 0).await;
    sleep_ms(2000).await;
    let rss_no_workers_kb = rss_kb(agent.child.id());

    let file = dir.join("marks.log");
    let (_, written) = write_assignment(zk, name, &assignment(name, name, worker, 3_600_000, &file, &ports)).await;
    eventually("100 workers running", Duration::from_secs(180), || async {
        let (info, _) = supervisor_info(zk, name).await?;
        (running_workers(&info).len() == 100).then_some(())
    })
    .await;
    let launched = starts(&file).iter().map(|m| m.ns).max().unwrap();
    // Let the records settle (every launch is a LocalState write) before pulling the plug.
    sleep_ms(2000).await;
    let (info0, stat0) = supervisor_info(zk, name).await.unwrap();
    let before = running_workers(&info0);
    assert_eq!(before.len(), 100, "100 running before the kill");

    agent.signal(Signal::SIGKILL);
    agent.wait_exit_signal();
    let survivors_after_kill = before.values().filter(|(pid, _)| alive(*pid as u32)).count();

    let restarted = now_ns();
    let mut agent = Agent::start_binary(&config, GALE);
    let mut registered = None;
    let mut all_adopted = None;
    let mut lifecycle_running = None;
    let deadline = SystemTime::now() + Duration::from_secs(90);
    let final_info = loop {
        if let Some((info, stat)) = supervisor_info(zk, name).await
            && stat.ephemeral_owner != stat0.ephemeral_owner
        {
            let now = now_ns();
            registered.get_or_insert(now);
            let running = running_workers(&info);
            if all_adopted.is_none() && running.len() == 100 && running == before {
                all_adopted = Some(now);
            }
            if lifecycle_running.is_none() && info["state"] == "running" {
                lifecycle_running = Some(now);
            }
            if all_adopted.is_some() && lifecycle_running.is_some() {
                break info;
            }
        }
        if let Some(status) = agent.try_status() {
            panic!("restarted agent exited ({status}); log:\n{}", agent.log_text());
        }
        if SystemTime::now() > deadline {
            let info = supervisor_info(zk, name).await.map(|(i, _)| i);
            panic!(
                "the restarted agent did not show the 100 adopted workers in 90 s (registered: {}); node: {info:?}\nlog:\n{}",
                registered.is_some(),
                agent.log_text()
            );
        }
        sleep_ms(2).await;
    };
    // Anything that would relaunch does so within a monitor tick or two.
    sleep_ms(7000).await;
    let log = agent.log_text();
    let after = running_workers(&supervisor_info(zk, name).await.unwrap().0);
    let adoption = Adoption {
        rss_no_workers_kb,
        launch_100_ms: ms_between(written, launched),
        to_all_adopted_ms: ms_between(restarted, all_adopted.unwrap()),
        to_lifecycle_running_ms: ms_between(restarted, lifecycle_running.unwrap()),
        to_registered_ms: ms_between(restarted, registered.unwrap()),
        same_pid_and_id: before.iter().filter(|(port, w)| after.get(port) == Some(w)).count(),
        launched_lines: count(&log, "worker launched"),
        adopted_lines: count(&log, "adopted a worker"),
        extra_starts: starts(&file).len().saturating_sub(100),
        restarts_reported: workers_of(&final_info).iter().filter_map(|w| w["restarts"].as_u64()).sum(),
        survivors_after_kill,
    };

    // 4: the same agent, idle with its 100 adopted workers.
    let pid = agent.child.id();
    let (_, stat_a) = supervisor_info(zk, name).await.unwrap();
    let rss_start_kb = rss_kb(pid);
    let cpu0 = cpu_ticks(pid);
    let started = SystemTime::now();
    let mut rss_max_kb = rss_start_kb;
    while started.elapsed().unwrap() < window {
        sleep_ms(1000).await;
        rss_max_kb = rss_max_kb.max(rss_kb(pid));
    }
    let cpu1 = cpu_ticks(pid);
    let secs = started.elapsed().unwrap().as_secs();
    let (info_b, stat_b) = supervisor_info(zk, name).await.unwrap();
    let idle = Idle {
        secs,
        rss_start_kb,
        rss_end_kb: rss_kb(pid),
        rss_max_kb,
        cpu_ticks: cpu1 - cpu0,
        ticks_per_sec: clock_ticks_per_sec(),
        threads: status_field(pid, "Threads:").unwrap_or(0),
        info_writes: stat_b.version - stat_a.version,
        workers_alive: running_workers(&info_b).values().filter(|(pid, _)| alive(*pid as u32)).count(),
    };
    (adoption, idle, agent)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let window = Duration::from_secs(std::env::var("GALE_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60));
    let bench_started = SystemTime::now();
    let worker = crash_worker_binary();
    let tmp = tempfile::Builder::new().prefix("gale-bench-workers-").tempdir().unwrap();
    let reaper = Reaper { dir: tmp.path().to_owned() };
    let server = ZkServer::standalone(&tmp.path().join("zk"));
    server.wait_serving();
    let connect = server.connect_string();
    let zk = zk_client(&connect).await;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    println!("machine: {cores} cores; build: release; gale: {GALE}");

    eprintln!("[1/4] crash -> restart (a): first crashes, 30 cycles of 1.1 s ...");
    let first = crash_loop(
        &zk,
        &connect,
        tmp.path(),
        "crash-first",
        &worker,
        1100,
        "reset_after_secs = 1\nnode_budget_per_min = 10000\n",
        31,
    )
    .await;
    eprintln!("[1/4] crash -> restart (b): consecutive crashes, 40 cycles of 0.2 s ...");
    let backoff = crash_loop(
        &zk,
        &connect,
        tmp.path(),
        "crash-backoff",
        &worker,
        200,
        "backoff_initial_ms = 1\nbackoff_max_ms = 1\nnode_budget_per_min = 10000\n",
        42,
    )
    .await;
    // The first gap of (b) is a first crash (immediate); the rest are consecutive ones.
    let backoff_consecutive: Vec<f64> = backoff.gaps.iter().skip(1).copied().collect();

    // No agent runs now: the floor and the context numbers see a quiet machine.
    eprintln!("[1/4] floor: fork+exec+wait of crash_worker from the bench; disk and zookeeper round trips ...");
    let floor = floor_gaps(&worker, &tmp.path().join("floor.log"), 30);
    let durable = durable_write_ms(&tmp.path().join("fsync-probe"), 30);
    let zk_read = zk_read_ms(&zk, 100).await;

    eprintln!("[2/4] assignment write -> worker exec, 1 + 20 rounds ...");
    let exec = write_to_exec(&zk, &connect, tmp.path(), &worker, 20).await;

    eprintln!("[3/4] 100 workers, SIGKILL the agent, restart, adopt ...");
    eprintln!("[4/4] then {} s idle with the 100 adopted workers ...", window.as_secs());
    let (adoption, idle, agent) = adoption_and_idle(&zk, &connect, tmp.path(), &worker, window).await;

    // The agent first (it would relaunch what we kill), then every worker.
    drop(agent);
    let killed = reaper.kill_all();
    sleep_ms(500).await;
    let left = reaper.kill_all();

    let rows = [
        row("crash->restart (a) first crash, immediate restart", percentiles(&first.gaps)),
        row("crash->restart (b) consecutive crash, backoff <=1 ms", percentiles(&backoff_consecutive)),
        row("floor: fork+exec+wait from the bench (exit->start)", percentiles(&floor)),
        row("assignment write (create answered) -> worker exec", percentiles(&exec.from_completion)),
        row("assignment write (create sent) -> worker exec", percentiles(&exec.from_send)),
        row("  (the create round trip itself)", percentiles(&exec.create_rtt)),
        row("context: zookeeper read round trip from the bench", percentiles(&zk_read)),
        row("context: one LocalState-style durable write (3 fsyncs)", percentiles(&durable)),
    ];
    let cpu_pct = idle.cpu_ticks as f64 / idle.ticks_per_sec as f64 / idle.secs.max(1) as f64 * 100.0;

    println!();
    println!("{}", table_header());
    for r in &rows {
        println!("{r}");
    }
    println!();
    println!(
        "(a) worker lifetime 1100 ms, reset_after_secs = 1; {} restarts reported in SupervisorInfo; {:.2} SupervisorInfo writes per restart",
        first.restarts_reported, first.writes_per_restart
    );
    println!(
        "(b) worker lifetime 200 ms, backoff_initial_ms = backoff_max_ms = 1; its first gap (a first crash) was {:.2} ms; {:.2} SupervisorInfo writes per restart",
        backoff.gaps.first().copied().unwrap_or(f64::NAN),
        backoff.writes_per_restart
    );
    println!("write -> exec: 1 warm-up round dropped; worker lifetime 60 s; deleted and gone between rounds");
    println!();
    println!("adoption of 100 workers (slots 7000..7099) after SIGKILL of the agent:");
    println!(
        "  100 launches from one assignment write: {:.0} ms from the write to the 100th worker's exec",
        adoption.launch_100_ms
    );
    println!("  workers alive after the SIGKILL: {}/100", adoption.survivors_after_kill);
    println!("  restart -> new SupervisorInfo node:             {:>7.0} ms", adoption.to_registered_ms);
    println!("  restart -> all 100 `running`, same pids:       {:>7.0} ms", adoption.to_all_adopted_ms);
    println!("  restart -> lifecycle `running`:                {:>7.0} ms", adoption.to_lifecycle_running_ms);
    println!(
        "  same pid + worker id 7 s later: {}/100; relaunches: {} (`worker launched` log lines), {} new starts, restarts reported {}; `adopted` log lines: {}",
        adoption.same_pid_and_id,
        adoption.launched_lines,
        adoption.extra_starts,
        adoption.restarts_reported,
        adoption.adopted_lines
    );
    println!();
    println!("agent idle with 100 adopted workers over {} s:", idle.secs);
    println!(
        "  RSS: {} kB at start of window, {} kB at end, {} kB max (no workers, fresh agent: {} kB)",
        idle.rss_start_kb, idle.rss_end_kb, idle.rss_max_kb, adoption.rss_no_workers_kb
    );
    println!(
        "  CPU: {} ticks ({} /s) = {:.2}% of one core; threads: {}; SupervisorInfo writes: {}; workers still alive: {}/100",
        idle.cpu_ticks, idle.ticks_per_sec, cpu_pct, idle.threads, idle.info_writes, idle.workers_alive
    );
    println!("cleanup: SIGKILLed {killed} worker processes ({left} needed a second try)");
    println!("bench wall time: {:.0} s", bench_started.elapsed().unwrap().as_secs_f64());

    // Pasteable.
    let s = |v: &[f64]| percentiles(v);
    let (a, b, f, e) = (s(&first.gaps), s(&backoff_consecutive), s(&floor), s(&exec.from_completion));
    println!();
    println!("---- summary (benches/workers.rs, release, {cores} cores) ----");
    println!("| measurement | n | p50 | p90 | max |");
    println!("|---|---|---|---|---|");
    println!(
        "| crash -> restart, first crash (immediate) | {} | {:.1} ms | {:.1} ms | {:.1} ms |",
        a.n, a.p50, a.p90, a.max
    );
    println!(
        "| crash -> restart, consecutive crash (backoff <= 1 ms) | {} | {:.1} ms | {:.1} ms | {:.1} ms |",
        b.n, b.p50, b.p90, b.max
    );
    println!("| floor: fork+exec+wait, no agent | {} | {:.1} ms | {:.1} ms | {:.1} ms |", f.n, f.p50, f.p90, f.max);
    println!("| assignment write -> worker exec | {} | {:.1} ms | {:.1} ms | {:.1} ms |", e.n, e.p50, e.p90, e.max);
    println!(
        "| adopt 100 workers after agent SIGKILL (restart -> all running, same pids) | 1 | {:.0} ms | | |",
        adoption.to_all_adopted_ms
    );
    let (d, z) = (s(&durable), s(&zk_read));
    println!(
        "| context: one durable LocalState-style write on this disk | {} | {:.1} ms | {:.1} ms | {:.1} ms |",
        d.n, d.p50, d.p90, d.max
    );
    println!("| context: ZooKeeper read round trip | {} | {:.2} ms | {:.2} ms | {:.2} ms |", z.n, z.p50, z.p90, z.max);
    println!(
        "\nAdoption relaunched {} of 100 workers. Idle with 100 workers ({} s): RSS {} MiB (max {} MiB), CPU {:.2}% of one core.",
        adoption.launched_lines,
        idle.secs,
        idle.rss_end_kb / 1024,
        idle.rss_max_kb / 1024,
        cpu_pct
    );
    println!("------------------------------------------------------------");
    drop(zk);
    drop(server);
    drop(reaper);
    if std::env::var_os("GALE_BENCH_KEEP").is_some() {
        println!("kept {} (agent logs, worker marks)", tmp.keep().display());
    }
}
