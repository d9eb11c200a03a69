//! Crash -> restart latency of gale against its peers: on this machine, in one run, one tool
//! after the other, with one crashing worker. Prints numbers; asserts nothing about them.
//!
//!     scripts/bench-peers.sh                    # installs supervisor runit s6 gcc, then the below
//!     cargo bench --bench peers                 # ~5 min after the build
//!     GALE_BENCH_CYCLES=60 cargo bench --bench peers     # (a) restarts per tool (default 20)
//!     GALE_BENCH_LOOP_SECS=60 cargo bench --bench peers  # (b) window per tool (default 20 s;
//!                                                        # 0 skips (b))
//!     GALE_BENCH_LIFETIME_MS=1100                        # (a) worker lifetime (default 1100)
//!     GALE_BENCH_LOOP_LIFETIME_MS=5                      # (b) worker lifetime (default 5)
//!     GALE_BENCH_PEERS=gale,runsv                        # a subset, in this order
//!                                                        # (floor,gale,supervisord,runsv,s6;
//!                                                        # also gale-baseline, see below)
//!     GALE_BENCH_BASELINE=/path/to/gale                  # another build of gale, measured as
//!                                                        # `gale-baseline` (listed in
//!                                                        # GALE_BENCH_PEERS): before/after in one run
//!     GALE_BENCH_KEEP=1 cargo bench --bench peers        # keep the temp dir (configs, logs, marks)
//!     GALE_BENCH_LOG=gale=debug,info ...                 # the agent's log level (default info)
//!
//! The worker is `benches/peers/crash.c`, compiled here with `cc -O2`: it appends
//! `start <unix_ns> <pid>` to a file, sleeps its lifetime, appends `exit <unix_ns> <pid>` and
//! exits 1. Latency is the next `start` minus the previous `exit`, both read from the worker's
//! own clock, so no polling of ours is in the numbers. Every supervisor runs that binary
//! directly (argv, or the environment for runsv and s6-supervise's `./run`), never via a shell.
//!
//! The supervisors, each a fresh process per measurement, one at a time:
//! - floor: `std::process::Command::status` in a loop on a thread of this bench (no throttle);
//! - gale: the release `gale run` against a private ZooKeeper started here (tests/common), one
//!   slot, the assignment written as raw JSON (SPEC §3.2); SPEC default timers, log level info;
//! - supervisord: `supervisord -n -c <temp>/supervisord.conf`, one `[program]`;
//! - runsv: `runsv <temp>/svc` with `./run` a symlink to the worker (no runsvdir);
//! - s6-supervise: `s6-supervise <temp>/svc`, the same (no s6-svscan).
//!
//! (a) No anti-flap throttling: lifetime 1100 ms, `GALE_BENCH_CYCLES` restarts. runsv holds a
//!     restart until 1 s after the previous start; s6-supervise does the same only for a
//!     service that notified readiness (`notification-fd`, the worker writes the newline at
//!     start) and pauses 1 s after every death of one that did not: both are measured. gale
//!     runs with `reset_after_secs = 1` (every crash a first crash: restarted at once) and a
//!     high `node_budget_per_min`; supervisord with `startsecs=0`, `autorestart=true`, huge
//!     `startretries`.
//! (b) A tight crash loop (lifetime 5 ms) for `GALE_BENCH_LOOP_SECS` from the first start, each
//!     tool with its default throttle (gale: `[restart]` defaults; supervisord: `startsecs=1`,
//!     `startretries=3`), plus supervisord once more with the (a) settings.
//! (c) The supervising process's cost: VmRSS (sampled every 100 ms) and CPU time per restart,
//!     from `/proc/<pid>/task/<tid>/schedstat` (ns on CPU) summed over its threads (a thread
//!     that exits keeps its last sample), over the measured window divided by the restarts in
//!     it. gale's agent also heartbeats ZooKeeper in that time; ZooKeeper's own CPU is not
//!     counted. The floor's cost is the CPU of its thread; its RSS is this bench's, not shown.
//!
//! ZooKeeper runs (idle for the others) through the whole bench. Every process started here
//! is stopped at the end of its measurement, and anything with a cwd in the temp dir is
//! SIGKILLed at the end and on panic ([`Reaper`]); the agent is killed by its own drop. The
//! cgroups each agent made for its workers (`gale-<id>`, which gale keeps after it stops) are
//! removed once empty.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;
use support::*;
use zookeeper_client as zkc;

const ROOT: &str = "/peers";
const GALE: &str = env!("CARGO_BIN_EXE_gale");
const PORT: u16 = 7000;

fn env_u64(key: &str, default: u64) -> u64 {
    match std::env::var(key) {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("{key}={v}: not a number")),
        Err(_) => default,
    }
}

// ---------------------------------------------------------------------------------------------
// the worker and its marks

/// Compiles `benches/peers/crash.c` into `dir` with `cc -O2`.
fn compile_crash(dir: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peers/crash.c");
    let bin = dir.join("crash");
    let out = Command::new("cc").arg("-O2").arg("-o").arg(&bin).arg(&source).output().expect("run cc");
    assert!(out.status.success(), "cc -O2 {}: {}", source.display(), String::from_utf8_lossy(&out.stderr));
    bin
}

fn starts(file: &Path) -> Vec<i128> {
    marks(file).into_iter().filter(|m| !m.exit).map(|m| m.ns).collect()
}

// ---------------------------------------------------------------------------------------------
// statistics

/// "1.2 ms" below a second, "2.00 s" above.
fn duration_text(ms: f64) -> String {
    match ms {
        ms if ms.is_nan() => "–".to_owned(),
        ms if ms < 1000.0 => format!("{ms:.1} ms"),
        ms => format!("{:.2} s", ms / 1000.0),
    }
}

// ---------------------------------------------------------------------------------------------
// /proc

/// ns on CPU of a process's threads (or of one thread), from each thread's
/// `/proc/<pid>/task/<tid>/schedstat` (first field): precise where `/proc/<pid>/stat` counts
/// ticks, and `/proc/<pid>/schedstat` alone is the main thread only. A thread that exits
/// between two samples loses the time since the last one (tokio's idle blocking threads exit
/// after 10 s of doing nothing, so that is about nothing).
/// Also keeps utime and stime (ticks, dead threads included) from `/proc/<pid>/stat`, for
/// the split between user and kernel time.
struct CpuMeter {
    pid: u32,
    only: Option<u32>,
    base: BTreeMap<u32, u64>,
    last: BTreeMap<u32, u64>,
    ticks_base: (u64, u64),
    ticks_last: (u64, u64),
    /// `(when, ns on CPU so far)` at every sample, for [`idle_ns_per_s`].
    history: Vec<(i128, u64)>,
}

/// How long before a worker's start or exit mark, and after it, the supervisor may be busy
/// with that restart: a 100 ms sample interval that touches this span around any mark is not
/// idle.
const BUSY_BEFORE_MS: i128 = 20;
const BUSY_AFTER_MS: i128 = 300;

/// The supervisor's CPU per second of wall time while no restart happens: over the sample
/// intervals (of `history`) that no worker start or exit mark comes near. `None` if there
/// was no such interval (worker lifetime too short).
fn idle_ns_per_s(history: &[(i128, u64)], marks: &[Mark]) -> Option<f64> {
    let busy = |from: i128, to: i128| {
        marks.iter().any(|m| m.ns + BUSY_AFTER_MS * 1_000_000 >= from && m.ns - BUSY_BEFORE_MS * 1_000_000 <= to)
    };
    let (mut cpu, mut wall) = (0u64, 0i128);
    for pair in history.windows(2) {
        let ((t0, c0), (t1, c1)) = (pair[0], pair[1]);
        if !busy(t0, t1) {
            cpu += c1.saturating_sub(c0);
            wall += t1 - t0;
        }
    }
    (wall > 0).then(|| cpu as f64 / (wall as f64 / 1e9))
}

impl CpuMeter {
    fn new(pid: u32, only: Option<u32>) -> CpuMeter {
        let mut meter = CpuMeter {
            pid,
            only,
            base: BTreeMap::new(),
            last: BTreeMap::new(),
            ticks_base: (0, 0),
            ticks_last: (0, 0),
            history: Vec::new(),
        };
        meter.sample();
        meter.base = meter.last.clone();
        meter.ticks_base = meter.ticks_last;
        meter.history.clear();
        meter.history.push((now_ns(), 0));
        meter
    }

    /// (utime, stime) in ticks of the process, or of the one thread.
    fn ticks(&self) -> (u64, u64) {
        let path = match self.only {
            Some(tid) => format!("/proc/{}/task/{tid}/stat", self.pid),
            None => format!("/proc/{}/stat", self.pid),
        };
        let stat = std::fs::read_to_string(path).unwrap_or_default();
        let f: Vec<u64> = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .unwrap_or("")
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        (f.get(11).copied().unwrap_or(0), f.get(12).copied().unwrap_or(0))
    }

    /// (utime, stime) ticks spent since the start.
    fn ticks_spent(&self) -> (u64, u64) {
        (self.ticks_last.0.saturating_sub(self.ticks_base.0), self.ticks_last.1.saturating_sub(self.ticks_base.1))
    }

    fn sample(&mut self) {
        let ticks = self.ticks();
        if ticks != (0, 0) {
            self.ticks_last = ticks;
        }
        let tids: Vec<u32> = match self.only {
            Some(tid) => vec![tid],
            None => std::fs::read_dir(format!("/proc/{}/task", self.pid))
                .map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
                .unwrap_or_default(),
        };
        for tid in tids {
            let text = std::fs::read_to_string(format!("/proc/{}/task/{tid}/schedstat", self.pid)).unwrap_or_default();
            if let Some(ns) = text.split_whitespace().next().and_then(|f| f.parse().ok()) {
                self.last.insert(tid, ns);
            }
        }
        let spent = self.ns();
        self.history.push((now_ns(), spent));
    }

    fn ns(&self) -> u64 {
        self.last.iter().map(|(tid, ns)| ns.saturating_sub(self.base.get(tid).copied().unwrap_or(0))).sum()
    }
}

/// Processes running now whose name is a supervisor's (a system supervisord or runsvdir left
/// running by a package install would share the CPUs with the measurement).
fn foreign_supervisors() -> Vec<String> {
    let names = ["supervisord", "runsvdir", "runsv", "s6-svscan", "s6-supervise"];
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            let comm = comm.trim();
            if !names.contains(&comm) {
                return None;
            }
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            Some(format!("{pid} {}", String::from_utf8_lossy(&cmdline).replace('\0', " ").trim()))
        })
        .collect()
}

/// SIGKILLs every process whose cwd is under `dir` (not this bench), until none is left.
fn kill_under(dir: &Path) -> usize {
    let mut killed = 0;
    for _ in 0..50 {
        let pids: Vec<i32> = pids_with_cwd_under(dir).into_iter().filter(|&p| p != std::process::id() as i32).collect();
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            if kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                killed += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    killed
}

/// Removes the cgroups stopped agents leave (their parents `gale-<id>` in each hierarchy, and
/// any empty worker cgroup inside), for every agent id starting with `id`: a cgroup holding a
/// process cannot be removed, so this only ever removes empty ones. Returns how many parents
/// are still there.
fn remove_agent_cgroups(id: &str) -> usize {
    fn remove_tree(dir: &Path) -> bool {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    remove_tree(&e.path());
                }
            }
        }
        std::fs::remove_dir(dir).is_ok()
    }
    fn walk(dir: &Path, name: &str, depth: usize, left: &mut usize) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())) {
            if e.file_name().to_str().is_some_and(|n| n.starts_with(name)) {
                if !remove_tree(&e.path()) {
                    *left += 1;
                }
            } else if depth > 0 {
                walk(&e.path(), name, depth - 1, left);
            }
        }
    }
    // v1: /sys/fs/cgroup/<controller>/<the agent's own cgroup>/gale-<id>; v2 is shallower.
    let mut left = 0;
    walk(Path::new("/sys/fs/cgroup"), &format!("gale-{id}"), 3, &mut left);
    left
}

/// Kills, on drop too (a panicking bench must not leave processes behind), every process whose
/// cwd is in the bench's temp dir: the supervisors other than gale (started there) and every
/// worker (run there by all of them). The gale agent is killed by its [`Agent`]'s drop, which
/// unwinding runs before this one's.
struct Reaper {
    dir: PathBuf,
}

impl Drop for Reaper {
    fn drop(&mut self) {
        kill_under(&self.dir);
        remove_agent_cgroups(&agent_id_prefix());
    }
}

/// Every gale agent id of this run starts with this.
fn agent_id_prefix() -> String {
    format!("peers{}-", std::process::id())
}

// ---------------------------------------------------------------------------------------------
// the supervisors

#[derive(Debug, Clone, Copy, PartialEq)]
enum Tool {
    Floor,
    Gale,
    /// Another build of gale (`GALE_BENCH_BASELINE`), run exactly like [`Tool::Gale`]: the
    /// "before" of a change, measured in the same run as the "after".
    GaleBaseline,
    Supervisord,
    Runsv,
    S6,
}

impl Tool {
    /// The default list; [`Tool::GaleBaseline`] only when asked for.
    const ALL: [Tool; 5] = [Tool::Floor, Tool::Gale, Tool::Supervisord, Tool::Runsv, Tool::S6];
    const KNOWN: [Tool; 6] = [Tool::Floor, Tool::Gale, Tool::GaleBaseline, Tool::Supervisord, Tool::Runsv, Tool::S6];

    fn key(self) -> &'static str {
        match self {
            Tool::Floor => "floor",
            Tool::Gale => "gale",
            Tool::GaleBaseline => "gale-baseline",
            Tool::Supervisord => "supervisord",
            Tool::Runsv => "runsv",
            Tool::S6 => "s6",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Tool::Floor => "floor: fork/exec/wait loop",
            Tool::Gale => "gale",
            Tool::GaleBaseline => "gale, baseline build",
            Tool::Supervisord => "supervisord",
            Tool::Runsv => "runit runsv",
            Tool::S6 => "s6-supervise",
        }
    }

    fn process(self) -> &'static str {
        match self {
            Tool::Floor => "the loop's thread in this bench",
            Tool::Gale | Tool::GaleBaseline => "`gale run` (all threads)",
            Tool::Supervisord => "supervisord (python3)",
            Tool::Runsv => "runsv",
            Tool::S6 => "s6-supervise",
        }
    }
}

/// One measured setting of one tool.
#[derive(Debug, Clone)]
struct Case {
    tool: Tool,
    /// The throttle settings, as stated in the printout.
    settings: &'static str,
    /// gale: the `[restart]` section; supervisord: the `[program]` lines on top of the command;
    /// s6-supervise: [`S6_NOTIFY`] or nothing.
    config: &'static str,
}

impl Case {
    fn label(&self) -> String {
        match (self.tool, self.config) {
            (Tool::S6, S6_NOTIFY) => "s6-supervise, readiness notified".to_owned(),
            (Tool::Supervisord, c) if c.contains("startsecs=1") => "supervisord, defaults".to_owned(),
            (tool, _) => tool.label().to_owned(),
        }
    }
}

fn cases_a(tools: &[Tool]) -> Vec<Case> {
    tools
        .iter()
        .map(|&tool| match tool {
            Tool::Floor => Case { tool, settings: "none", config: "" },
            Tool::Gale | Tool::GaleBaseline => Case {
                tool,
                settings: "reset_after_secs=1, node_budget_per_min=10000",
                config: "reset_after_secs = 1\nnode_budget_per_min = 10000\n",
            },
            Tool::Supervisord => Case {
                tool,
                settings: "startsecs=0, autorestart=true, startretries=1000000",
                config: "autorestart=true\nstartsecs=0\nstartretries=1000000\n",
            },
            Tool::Runsv => Case { tool, settings: RUNSV, config: "" },
            // Without readiness s6-supervise pauses 1 s after every death: both are measured.
            Tool::S6 => Case { tool, settings: S6_READY, config: S6_NOTIFY },
        })
        .chain(tools.contains(&Tool::S6).then_some(Case { tool: Tool::S6, settings: S6_PLAIN, config: "" }))
        .collect()
}

const RUNSV: &str = "built in: ./run restarted at once if it ran >= 1 s, else 1 s after its start";
const S6_READY: &str = "notification-fd=3, the worker notifies readiness at start: restarted at once once ready >= 1 s";
const S6_PLAIN: &str = "no notification-fd (never ready): pauses 1 s after every death";
/// `Case::config` of s6-supervise with readiness notification.
const S6_NOTIFY: &str = "notification-fd";

fn cases_b(tools: &[Tool]) -> Vec<Case> {
    let mut out = Vec::new();
    for &tool in tools {
        match tool {
            Tool::Gale | Tool::GaleBaseline => out.push(Case {
                tool,
                settings: "defaults: backoff_initial_ms=1000 doubling to backoff_max_ms=60000, reset_after_secs=600, node_budget_per_min=120",
                config: "backoff_initial_ms = 1000\nbackoff_max_ms = 60000\nreset_after_secs = 600\nnode_budget_per_min = 120\n",
            }),
            Tool::Supervisord => {
                out.push(Case {
                    tool,
                    settings: "defaults: startsecs=1, startretries=3, autorestart=true",
                    config: "autorestart=true\nstartsecs=1\nstartretries=3\n",
                });
                out.push(cases_a(&[tool]).remove(0));
            }
            Tool::S6 => out.push(Case { tool, settings: S6_PLAIN, config: "" }),
            _ => out.extend(cases_a(&[tool])),
        }
    }
    out
}

/// The harness's agent config with the SPEC default timers, `info` logs, one slot and the
/// case's `[restart]` section, as `<dir>/etc/gale.toml` (local dir and logs in `<dir>`).
///
/// The config gets a directory of its own, as `/etc/gale` on a host: the agent watches the
/// config file's directory for changes (SPEC §2 reload), and the `notify` crate's inotify
/// watch reports every open, write and close of any file in it. Beside the worker's marks
/// (read by this bench every 100 ms) and the agent's own log, that watch woke the agent a few
/// dozen times a second and counted as restart cost; no host keeps such files in `/etc/gale`.
fn gale_config(dir: &Path, connect: &str, id: &str, restart: &str) -> PathBuf {
    let mut spec = AgentSpec::new(connect, ROOT).id(id);
    spec.session_timeout_ms = 20_000;
    spec.heartbeat_secs = 5;
    spec.heartbeat_refresh_secs = 60;
    let written = spec.write(dir);
    let etc = dir.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    let path = etc.join("gale.toml");
    std::fs::rename(&written, &path).unwrap();
    let mut text = std::fs::read_to_string(&path).unwrap();
    let level = std::env::var("GALE_BENCH_LOG").unwrap_or_else(|_| "info".to_owned());
    let slots = format!("slots = [{PORT}]");
    for (from, to) in [
        ("slots = [6700, 6701]", slots.as_str()),
        ("sync_secs = 2", "sync_secs = 10"),
        ("monitor_secs = 1", "monitor_secs = 3"),
        ("gale=debug,info", level.as_str()),
    ] {
        assert!(text.contains(from), "the harness's agent config has no `{from}` any more: update benches/peers.rs");
        text = text.replace(from, to);
    }
    assert!(!text.contains("[restart]"), "the harness's agent config now has [restart]: update benches/peers.rs");
    text.push_str(&format!("\n[restart]\n{restart}"));
    std::fs::write(&path, text).unwrap();
    path
}

fn supervisord_config(dir: &Path, command: &str, program: &str) -> PathBuf {
    let path = dir.join("supervisord.conf");
    let text = format!(
        "[supervisord]\nnodaemon=true\nlogfile=%(here)s/supervisord.log\npidfile=%(here)s/supervisord.pid\n\
         childlogdir=%(here)s\nloglevel=info\nuser=root\n\n\
         [program:crash]\ncommand={command}\ndirectory=%(here)s/work\nautostart=true\n{program}\
         stdout_logfile=%(here)s/worker.out\nredirect_stderr=true\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// The gale binary a case runs: this build's, or `GALE_BENCH_BASELINE` for
/// [`Tool::GaleBaseline`].
fn gale_binary(tool: Tool) -> String {
    match tool {
        Tool::GaleBaseline => std::env::var("GALE_BENCH_BASELINE").unwrap_or_else(|_| {
            panic!("GALE_BENCH_PEERS lists gale-baseline: set GALE_BENCH_BASELINE to a gale binary")
        }),
        _ => GALE.to_owned(),
    }
}

/// The programs a tool needs on PATH (gale's own binary and ZooKeeper are the harness's).
fn required_programs(tool: Tool) -> &'static [&'static str] {
    match tool {
        Tool::Floor | Tool::Gale | Tool::GaleBaseline => &[],
        Tool::Supervisord => &["supervisord"],
        Tool::Runsv => &["runsv"],
        Tool::S6 => &["s6-supervise"],
    }
}

fn supervisor_path(id: &str) -> String {
    format!("{ROOT}/supervisors/{id}")
}

/// A tool running the worker.
enum Running {
    Floor { stop: Arc<AtomicBool>, thread: Option<std::thread::JoinHandle<()>>, tid: u32 },
    Gale { agent: Agent, id: String },
    Process { child: Child, log: PathBuf },
}

impl Drop for Running {
    fn drop(&mut self) {
        match self {
            Running::Floor { stop, .. } => stop.store(true, Ordering::Relaxed),
            Running::Gale { .. } => {} // the Agent kills itself on drop
            Running::Process { child, .. } => {
                if child.try_wait().ok().flatten().is_none() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
    }
}

impl Running {
    fn meter(&self) -> CpuMeter {
        match self {
            Running::Floor { tid, .. } => CpuMeter::new(std::process::id(), Some(*tid)),
            Running::Gale { agent, .. } => CpuMeter::new(agent.child.id(), None),
            Running::Process { child, .. } => CpuMeter::new(child.id(), None),
        }
    }

    fn rss_kb(&self) -> Option<u64> {
        match self {
            Running::Floor { .. } => None,
            Running::Gale { agent, .. } => status_field(agent.child.id(), "VmRSS:"),
            Running::Process { child, .. } => status_field(child.id(), "VmRSS:"),
        }
    }

    /// Panics (with the tool's log) when the tool is gone.
    fn check_alive(&mut self, what: &str) {
        match self {
            Running::Floor { thread, .. } => {
                assert!(!thread.as_ref().is_some_and(|t| t.is_finished()), "{what}: the floor loop ended");
            }
            Running::Gale { agent, .. } => {
                if let Some(status) = agent.try_status() {
                    panic!("{what}: the agent exited ({status}); log:\n{}", agent.log_text());
                }
            }
            Running::Process { child, log } => {
                if let Some(status) = child.try_wait().unwrap() {
                    panic!("{what}: exited ({status}); log:\n{}", read_log(log));
                }
            }
        }
    }

    /// gale: the worker isolation it chose on this host (`worker isolation mechanism=...`).
    fn isolation(&self) -> Option<String> {
        let Running::Gale { agent, .. } = self else { return None };
        let log = agent.log_text();
        let line = log.lines().find(|l| l.contains("worker isolation"))?;
        let mechanism = line.split_once("mechanism=")?.1.trim().trim_matches('"').to_owned();
        // How a worker gets into its cgroup (src/isolation/mod.rs logs it once at start).
        let born = log.contains("workers are born in their cgroup");
        Some(if born { format!("{mechanism}, workers born in their cgroup (clone3)") } else { mechanism })
    }

    /// What the tool says of the worker now (gale: the slot's state; supervisord: whether it
    /// gave up).
    async fn state(&self, zk: &zkc::Client, dir: &Path) -> String {
        match self {
            Running::Gale { id, .. } => match read_json(zk, &supervisor_path(id)).await {
                Some((info, _)) => match slot(&info, PORT) {
                    Some(w) => format!("slot `{}`, restarts {}", w["state"].as_str().unwrap_or("?"), w["restarts"]),
                    None => "no slot".to_owned(),
                },
                None => "not registered".to_owned(),
            },
            Running::Process { .. } if dir.join("supervisord.conf").exists() => {
                let log = read_log(&dir.join("supervisord.log"));
                if log.contains("gave up:") { "FATAL (gave up)".to_owned() } else { "restarting".to_owned() }
            }
            _ => "restarting".to_owned(),
        }
    }
}

async fn start(
    case: &Case,
    dir: &Path,
    crash: &Path,
    lifetime_ms: u64,
    file: &Path,
    zk: &zkc::Client,
    connect: &str,
) -> Running {
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let lifetime = lifetime_ms.to_string();
    let spawn_in = |program: &str, args: &[&str], env: &[(&str, &str)]| {
        // `.out`: supervisord.log is supervisord's own log file (see its config).
        let log = dir.join(format!("{program}.out"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
        Running::Process { child, log }
    };
    match case.tool {
        Tool::Floor => {
            let stop = Arc::new(AtomicBool::new(false));
            let (tid_tx, tid_rx) = std::sync::mpsc::channel();
            let (crash, file, stop2) = (crash.to_owned(), file.to_owned(), stop.clone());
            let thread = std::thread::spawn(move || {
                // "<pid>/task/<tid>"
                let me = std::fs::read_link("/proc/thread-self").unwrap();
                tid_tx.send(me.file_name().unwrap().to_str().unwrap().parse::<u32>().unwrap()).unwrap();
                while !stop2.load(Ordering::Relaxed) {
                    let status = Command::new(&crash)
                        .arg(&lifetime)
                        .arg(&file)
                        .current_dir(&work)
                        .stdin(Stdio::null())
                        .status()
                        .expect("run the crash worker");
                    assert_eq!(status.code(), Some(1), "the crash worker exits 1");
                }
            });
            let tid = tid_rx.recv().unwrap();
            Running::Floor { stop, thread: Some(thread), tid }
        }
        Tool::Gale | Tool::GaleBaseline => {
            // Unique on the host: the agent's parent cgroups are named after it (`gale-<id>`).
            let id = format!("{}{}", agent_id_prefix(), dir.file_name().unwrap().to_str().unwrap());
            let config = gale_config(dir, connect, &id, case.config);
            let agent = Agent::start_logging_to(&config, &gale_binary(case.tool), &[], &dir.join("agent.log"));
            eventually(&format!("gale {id} registered and running"), Duration::from_secs(60), || async {
                read_json(zk, &supervisor_path(&id)).await.filter(|(info, _)| info["state"] == "running")
            })
            .await;
            let assignment = json!({
                "schema": 1,
                "topology_id": id,
                "launch": {
                    "command": [crash.to_str().unwrap(), lifetime, file.to_str().unwrap()],
                    "liveness": "process",
                },
                "blobs": [],
                "workers": [{"supervisor_id": id, "port": PORT}],
            });
            put_json(zk, &format!("{ROOT}/assignments/{id}"), &assignment).await;
            Running::Gale { agent, id }
        }
        Tool::Supervisord => {
            let command = format!("{} {lifetime} {}", crash.display(), file.display());
            let config = supervisord_config(dir, &command, case.config);
            spawn_in("supervisord", &["-n", "-c", config.to_str().unwrap()], &[])
        }
        Tool::Runsv | Tool::S6 => {
            let svc = dir.join("svc");
            std::fs::create_dir_all(&svc).unwrap();
            std::os::unix::fs::symlink(crash, svc.join("run")).unwrap();
            let program = if case.tool == Tool::Runsv { "runsv" } else { "s6-supervise" };
            let mut env = vec![("CRASH_LIFETIME_MS", lifetime.as_str()), ("CRASH_FILE", file.to_str().unwrap())];
            if case.config == S6_NOTIFY {
                std::fs::write(svc.join("notification-fd"), "3\n").unwrap();
                env.push(("CRASH_NOTIFY_FD", "3"));
            }
            spawn_in(program, &["svc"], &env)
        }
    }
}

/// Stops the tool the way its operator would (gale: the assignment deleted, then SIGTERM; the
/// others: SIGTERM, which stops the worker too), then kills whatever is left in `dir`.
async fn stop(mut running: Running, zk: &zkc::Client, dir: &Path) -> usize {
    match &mut running {
        Running::Floor { stop, thread, .. } => {
            stop.store(true, Ordering::Relaxed);
            if let Some(t) = thread.take() {
                t.join().expect("the floor loop panicked");
            }
        }
        Running::Gale { agent, id } => {
            delete(zk, &format!("{ROOT}/assignments/{id}")).await;
            eventually(&format!("gale {id}: slot empty and worker gone"), Duration::from_secs(30), || async {
                let (info, _) = read_json(zk, &supervisor_path(id)).await?;
                let gone = pids_with_cwd_under(dir).is_empty();
                (gone && info["workers"].as_array().is_none_or(|w| w.is_empty())).then_some(())
            })
            .await;
            agent.signal(Signal::SIGTERM);
            agent.wait_exit(Duration::from_secs(20));
            let left = remove_agent_cgroups(id);
            if left > 0 {
                eprintln!("warning: {left} cgroups named gale-{id} could not be removed");
            }
        }
        Running::Process { child, .. } => {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let deadline = SystemTime::now() + Duration::from_secs(10);
            while child.try_wait().unwrap().is_none() && SystemTime::now() < deadline {
                sleep_ms(50).await;
            }
        }
    }
    drop(running);
    kill_under(dir)
}

// ---------------------------------------------------------------------------------------------
// one measurement

enum Until {
    /// (a): this many restarts after the first start.
    Restarts(usize),
    /// (b): this long after the first start.
    Window(Duration),
}

struct Measured {
    case: Case,
    /// exit -> next start (ms) of the restarts measured.
    gaps: Vec<f64>,
    restarts: usize,
    window_ms: f64,
    cpu_ns: u64,
    /// (utime, stime) ticks in the window.
    ticks: (u64, u64),
    /// CPU per second while no restart happens ([`idle_ns_per_s`]).
    idle_ns_per_s: Option<f64>,
    rss_max_kb: Option<u64>,
    /// (b): the last start in the window, ms after the first.
    last_start_ms: f64,
    state: String,
    /// gale: its worker isolation on this host.
    isolation: Option<String>,
    leftovers: usize,
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    case: &Case,
    phase: &str,
    dir: &Path,
    crash: &Path,
    lifetime_ms: u64,
    until: Until,
    zk: &zkc::Client,
    connect: &str,
) -> Measured {
    std::fs::create_dir_all(dir).unwrap();
    let file = dir.join("marks.log");
    let what = format!("({phase}) {} [{}]", case.label(), case.settings);
    eprintln!("{what} ...");
    let mut running = start(case, dir, crash, lifetime_ms, &file, zk, connect).await;
    let first = eventually(&format!("{what}: the first start"), Duration::from_secs(60), || async {
        starts(&file).first().copied()
    })
    .await;
    let mut meter = running.meter();
    let began = now_ns();
    let mut rss_max_kb = running.rss_kb();
    let deadline = SystemTime::now() + Duration::from_secs(600);
    loop {
        sleep_ms(100).await;
        meter.sample();
        rss_max_kb = rss_max_kb.max(running.rss_kb());
        running.check_alive(&what);
        let done = match until {
            Until::Restarts(n) => starts(&file).len() > n,
            Until::Window(w) => ms_between(began, now_ns()) >= w.as_millis() as f64,
        };
        if done {
            break;
        }
        assert!(SystemTime::now() < deadline, "{what}: only {} starts after 10 min", starts(&file).len());
    }
    meter.sample();
    let window_ms = ms_between(began, now_ns());
    let state = running.state(zk, dir).await;
    let isolation = running.isolation();
    let leftovers = stop(running, zk, dir).await;
    let all = marks(&file);
    let idle_ns_per_s = idle_ns_per_s(&meter.history, &all);
    let (gaps, restarts, last) = match until {
        Until::Restarts(n) => {
            let gaps: Vec<f64> = restart_gaps(&all).into_iter().take(n).collect();
            (gaps, n, first)
        }
        Until::Window(w) => {
            let end = first + w.as_nanos() as i128;
            let within: Vec<Mark> = all.into_iter().filter(|m| m.ns <= end).collect();
            let last = within.iter().filter(|m| !m.exit).map(|m| m.ns).max().unwrap_or(first);
            let gaps = restart_gaps(&within);
            let n = gaps.len();
            (gaps, n, last)
        }
    };
    Measured {
        case: case.clone(),
        gaps,
        restarts,
        window_ms,
        cpu_ns: meter.ns(),
        ticks: meter.ticks_spent(),
        idle_ns_per_s,
        rss_max_kb,
        last_start_ms: ms_between(first, last),
        state,
        isolation,
        leftovers,
    }
}

// ---------------------------------------------------------------------------------------------
// versions and the machine

fn dpkg_version(package: &str) -> String {
    let v = first_line("dpkg-query", &["-W", "-f=${Version}", package]);
    if v.is_empty() || v.contains("no packages") { "not installed".to_owned() } else { v }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(program).is_file()))
}

/// The (b) table.
fn write_b(o: &mut String, b: &[Measured], lifetime_b: u64, loop_secs: u64) {
    writeln!(o, "\n(b) tight crash loop, worker lifetime {lifetime_b} ms, {loop_secs} s from the first start\n")
        .unwrap();
    writeln!(o, "| tool | throttle settings | restarts | per min | first gaps (exit -> start) | p50 gap | last start | state at the end |")
    .unwrap();
    writeln!(o, "|---|---|---|---|---|---|---|---|").unwrap();
    for m in b {
        let first: Vec<String> = m.gaps.iter().take(6).map(|g| duration_text(*g)).collect();
        writeln!(
            o,
            "| {} | {} | {} | {:.0} | {}{} | {} | +{:.1} s | {} |",
            m.case.label(),
            m.case.settings,
            m.restarts,
            m.restarts as f64 * 60.0 / loop_secs as f64,
            first.join(", "),
            if m.gaps.len() > 6 { ", …" } else { "" },
            duration_text(percentiles(&m.gaps).p50),
            m.last_start_ms / 1000.0,
            m.state
        )
        .unwrap();
    }
}

// ---------------------------------------------------------------------------------------------

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cycles = env_u64("GALE_BENCH_CYCLES", 20) as usize;
    let loop_secs = env_u64("GALE_BENCH_LOOP_SECS", 20);
    let lifetime_a = env_u64("GALE_BENCH_LIFETIME_MS", 1100);
    let lifetime_b = env_u64("GALE_BENCH_LOOP_LIFETIME_MS", 5);
    let tools: Vec<Tool> = match std::env::var("GALE_BENCH_PEERS") {
        Ok(list) => list
            .split(',')
            .map(|k| {
                *Tool::KNOWN
                    .iter()
                    .find(|t| t.key() == k.trim())
                    .unwrap_or_else(|| panic!("GALE_BENCH_PEERS: unknown {k:?}"))
            })
            .collect(),
        Err(_) => Tool::ALL.to_vec(),
    };
    let missing: Vec<&str> = ["cc", "dpkg-query"]
        .iter()
        .chain(tools.iter().flat_map(|&t| required_programs(t)))
        .copied()
        .filter(|p| !on_path(p))
        .collect();
    assert!(
        missing.is_empty(),
        "not on PATH: {missing:?}; scripts/bench-peers.sh installs supervisor, runit, s6 and gcc \
         (or measure a subset: GALE_BENCH_PEERS)"
    );
    let foreign = foreign_supervisors();
    let bench_started = SystemTime::now();
    let load_before = loadavg();

    let tmp = tempfile::Builder::new().prefix("gale-bench-peers-").tempdir().unwrap();
    // After `tmp`, so it is dropped (kills) before the dir goes.
    let reaper = Reaper { dir: tmp.path().to_owned() };
    let crash = compile_crash(tmp.path());
    let server = ZkServer::standalone(&tmp.path().join("zk"));
    server.wait_serving();
    let connect = server.connect_string();
    let zk = zk_client(&connect).await;

    let mut a = Vec::new();
    for (i, case) in cases_a(&tools).iter().enumerate() {
        let dir = tmp.path().join(format!("a{i}-{}", case.tool.key()));
        a.push(measure(case, "a", &dir, &crash, lifetime_a, Until::Restarts(cycles), &zk, &connect).await);
    }
    let window = Duration::from_secs(loop_secs);
    let mut b = Vec::new();
    let cases = if loop_secs == 0 { Vec::new() } else { cases_b(&tools) };
    for (i, case) in cases.iter().enumerate() {
        let dir = tmp.path().join(format!("b{i}-{}", case.tool.key()));
        b.push(measure(case, "b", &dir, &crash, lifetime_b, Until::Window(window), &zk, &connect).await);
    }
    let load_after = loadavg();
    let left: usize = a.iter().chain(&b).map(|m| m.leftovers).sum();
    let still = foreign_supervisors().into_iter().filter(|p| !foreign.contains(p)).count();

    let mut out = String::new();
    let o = &mut out;
    writeln!(o, "\n---- benches/peers.rs ----").unwrap();
    writeln!(o, "machine: {}; load average {load_before} before, {load_after} after", machine()).unwrap();
    writeln!(o, "\n| tool | version |\n|---|---|").unwrap();
    let isolation: Vec<String> =
        a.iter().chain(&b).filter_map(|m| m.isolation.clone()).collect::<BTreeSet<_>>().into_iter().collect();
    writeln!(
        o,
        "| gale | {} (release build); worker isolation here: {} |",
        first_line(GALE, &["--version"]),
        if isolation.is_empty() { "(gale not run)".to_owned() } else { isolation.join(", ") }
    )
    .unwrap();
    if tools.contains(&Tool::GaleBaseline) {
        let baseline = gale_binary(Tool::GaleBaseline);
        writeln!(o, "| gale, baseline build | {} ({baseline}) |", first_line(&baseline, &["--version"])).unwrap();
    }
    for (name, pkg) in [("supervisord", "supervisor"), ("runsv", "runit"), ("s6-supervise", "s6")] {
        writeln!(o, "| {name} | {pkg} {} (Debian) |", dpkg_version(pkg)).unwrap();
    }
    writeln!(o, "| python3 (runs supervisord) | {} |", dpkg_version("python3")).unwrap();
    writeln!(o, "| zookeeper (gale's) | {} |", dpkg_version("zookeeper")).unwrap();
    writeln!(o, "| cc (the worker: `cc -O2`) | {} |", first_line("cc", &["--version"])).unwrap();
    if !foreign.is_empty() {
        writeln!(o, "\nWARNING: supervisors not started by this bench were running: {foreign:?}").unwrap();
    }

    writeln!(o, "\n(a) crash -> restart, worker lifetime {lifetime_a} ms, no throttle applies; ms from the worker's exit stamp to the next start stamp\n").unwrap();
    writeln!(o, "| tool | settings | n | p50 | p90 | max |\n|---|---|---|---|---|---|").unwrap();
    for m in &a {
        let s = percentiles(&m.gaps);
        writeln!(
            o,
            "| {} | {} | {} | {:.2} | {:.2} | {:.2} |",
            m.case.label(),
            m.case.settings,
            s.n,
            s.p50,
            s.p90,
            s.max
        )
        .unwrap();
    }

    if !b.is_empty() {
        write_b(o, &b, lifetime_b, loop_secs);
    }

    writeln!(o, "\n(c) the supervising process: VmRSS (max of 100 ms samples over (a) and (b)); CPU (schedstat, all threads) per restart and in % of one core over the window; idle: its CPU per second over the 100 ms samples no worker start or exit came within {BUSY_BEFORE_MS} ms before or {BUSY_AFTER_MS} ms after, and the CPU per restart less that idle rate over the window\n").unwrap();
    writeln!(
        o,
        "| tool | process | VmRSS max | CPU / restart (a) | idle CPU (a) | CPU / restart less idle (a) | CPU % (a) | ticks user/sys (a) | CPU / restart (b) | CPU % (b) |"
    )
    .unwrap();
    writeln!(o, "|---|---|---|---|---|---|---|---|---|---|").unwrap();
    for ma in &a {
        let rss = a.iter().chain(&b).filter(|m| m.case.tool == ma.case.tool).filter_map(|m| m.rss_max_kb).max();
        // The (b) run of the same settings if there is one, else the tool's (default) one.
        let mb = b
            .iter()
            .find(|m| m.case.tool == ma.case.tool && m.case.config == ma.case.config)
            .or_else(|| b.iter().find(|m| m.case.tool == ma.case.tool));
        let per = |m: &Measured| m.cpu_ns as f64 / 1e3 / m.restarts.max(1) as f64;
        let pct = |m: &Measured| m.cpu_ns as f64 / 1e6 / m.window_ms * 100.0;
        let busy =
            |m: &Measured, idle: f64| (m.cpu_ns as f64 - idle * m.window_ms / 1e3) / 1e3 / m.restarts.max(1) as f64;
        writeln!(
            o,
            "| {} | {} | {} | {:.0} µs | {} | {} | {:.2} % | {}/{} | {} | {} |",
            ma.case.label(),
            ma.case.tool.process(),
            rss.map(|kb| format!("{:.1} MiB", kb as f64 / 1024.0)).unwrap_or_else(|| "–".to_owned()),
            per(ma),
            ma.idle_ns_per_s.map(|i| format!("{:.0} µs/s", i / 1e3)).unwrap_or_else(|| "–".to_owned()),
            ma.idle_ns_per_s.map(|i| format!("{:.0} µs", busy(ma, i))).unwrap_or_else(|| "–".to_owned()),
            pct(ma),
            ma.ticks.0,
            ma.ticks.1,
            mb.map(|m| format!("{:.0} µs ({} restarts)", per(m), m.restarts)).unwrap_or_default(),
            mb.map(|m| format!("{:.2} %", pct(m))).unwrap_or_default(),
        )
        .unwrap();
    }
    writeln!(
        o,
        "\ncleanup: {left} processes needed a SIGKILL after their tool was stopped; supervisors left running: {still}"
    )
    .unwrap();
    writeln!(o, "bench wall time: {:.0} s", bench_started.elapsed().unwrap().as_secs_f64()).unwrap();
    println!("{out}");

    drop(zk);
    drop(server);
    drop(reaper);
    if std::env::var_os("GALE_BENCH_KEEP").is_some() {
        println!("kept {} (configs, logs, marks)", tmp.keep().display());
    }
}
