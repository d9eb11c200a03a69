//! What the benches share (`mod support;` in each): clocks, the worker's start/exit marks,
//! percentiles, `/proc` readings and a description of the machine. A directory module, so
//! cargo does not take it for a bench of its own.

// Each bench compiles its own copy of this module and uses only part of it: what one bench
// leaves unused is not dead.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub fn now_ns() -> i128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as i128
}

pub fn ms_between(from_ns: i128, to_ns: i128) -> f64 {
    (to_ns - from_ns) as f64 / 1e6
}

pub async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

// ---------------------------------------------------------------------------------------------
// the crashing workers and their marks

/// `<target>/release/examples/crash_worker` next to the bench's `gale`, built if missing.
pub fn crash_worker_binary() -> PathBuf {
    let release = Path::new(env!("CARGO_BIN_EXE_gale")).parent().expect("gale lives in <target>/<profile>");
    let bin = release.join("examples").join("crash_worker");
    if !bin.exists() {
        eprintln!("building {} ...", bin.display());
        let status = Command::new(env!("CARGO"))
            .args(["build", "--release", "--example", "crash_worker", "--manifest-path"])
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .arg("--target-dir")
            .arg(release.parent().expect("<target>"))
            .status()
            .expect("run cargo");
        assert!(status.success() && bin.exists(), "cannot build the crash_worker example");
    }
    bin
}

/// One `start <unix_ns> <pid>` or `exit <unix_ns> <pid>` line of a marks file (written by
/// `examples/crash_worker.rs` and `benches/peers/crash.c`).
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    pub exit: bool,
    pub ns: i128,
    pub pid: u32,
}

/// The marks of a file, in file order.
pub fn marks(file: &Path) -> Vec<Mark> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let exit = match f.next()? {
                "start" => false,
                "exit" => true,
                _ => return None,
            };
            Some(Mark { exit, ns: f.next()?.parse().ok()?, pid: f.next()?.parse().ok()? })
        })
        .collect()
}

/// exit -> next start, in ms, for one slot's sequential workers.
pub fn restart_gaps(marks: &[Mark]) -> Vec<f64> {
    let mut gaps = Vec::new();
    let mut last_exit = None;
    for m in marks {
        if m.exit {
            last_exit = Some(m.ns);
        } else if let Some(exit) = last_exit.take() {
            gaps.push(ms_between(exit, m.ns));
        }
    }
    gaps
}

// ---------------------------------------------------------------------------------------------
// statistics

#[derive(Debug, Clone, Copy)]
pub struct Percentiles {
    pub n: usize,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// Nearest-rank percentiles (NaN when there are no values).
pub fn percentiles(values: &[f64]) -> Percentiles {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let at = |p: f64| if n == 0 { f64::NAN } else { v[((p * n as f64).ceil() as usize).clamp(1, n) - 1] };
    Percentiles { n, min: at(0.0), p50: at(0.5), p90: at(0.9), p99: at(0.99), max: at(1.0) }
}

// ---------------------------------------------------------------------------------------------
// /proc and the machine

/// A `kB` (or plain number) field of `/proc/<pid>/status`, such as `VmRSS:` or `Threads:`.
pub fn status_field(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

pub fn rss_kb(pid: u32) -> u64 {
    status_field(pid, "VmRSS:").unwrap_or(0)
}

pub fn clock_ticks_per_sec() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

/// The first line a program prints (stdout, else stderr), for versions.
pub fn first_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| {
            let text = if o.stdout.is_empty() { o.stderr } else { o.stdout };
            String::from_utf8_lossy(&text).lines().next().unwrap_or("").trim().to_owned()
        })
        .unwrap_or_else(|e| format!("({program}: {e})"))
}

/// CPUs, CPU model, memory, kernel and OS, for the line every bench prints with its numbers.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model =
        cpuinfo.lines().find_map(|l| l.strip_prefix("model name")).map(|v| v.trim_start_matches([' ', '\t', ':']));
    let os = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let os = os.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=")).unwrap_or("?").trim_matches('"').to_owned();
    let mem_kb = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    format!(
        "nproc {}, {}, {:.0} GiB RAM, kernel {}, {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        model.unwrap_or("?"),
        mem_kb as f64 / 1024.0 / 1024.0,
        std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        os
    )
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}
