//! A worker for `benches/workers.rs` that records its life and then crashes: it appends
//! `start <unix_ns> <pid>` to a file, sleeps, appends `exit <unix_ns> <pid>` and exits 1.
//!
//! Usage: `crash_worker <lifetime_ms> [file]`; without `file`, `$CRASH_WORKER_FILE`. Each line
//! is one `write` on an `O_APPEND` descriptor, so workers may share a file. std only: the
//! start stamp is taken first thing in `main`, so it measures the exec, not our own start-up.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

fn append(file: &str, what: &str, ns: u128) {
    let line = format!("{what} {ns} {}\n", std::process::id());
    match std::fs::OpenOptions::new().append(true).create(true).open(file) {
        Ok(mut f) => {
            if let Err(e) = f.write_all(line.as_bytes()) {
                eprintln!("crash_worker: cannot write {file}: {e}");
            }
        }
        Err(e) => eprintln!("crash_worker: cannot open {file}: {e}"),
    }
}

fn main() {
    let started = now_ns();
    let mut args = std::env::args().skip(1);
    let Some(lifetime_ms) = args.next().and_then(|a| a.parse::<u64>().ok()) else {
        eprintln!("usage: crash_worker <lifetime_ms> [file]   (file defaults to $CRASH_WORKER_FILE)");
        std::process::exit(2);
    };
    let Some(file) = args.next().or_else(|| std::env::var("CRASH_WORKER_FILE").ok()) else {
        eprintln!("crash_worker: no file: pass it as the second argument or set CRASH_WORKER_FILE");
        std::process::exit(2);
    };
    append(&file, "start", started);
    std::thread::sleep(Duration::from_millis(lifetime_ms));
    append(&file, "exit", now_ns());
    std::process::exit(1);
}
