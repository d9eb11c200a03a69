//! Crash test of the local state: a writer process is SIGKILLed at random moments, 60 times on
//! the same directory, and every value it reported as written must survive.
//!
//! What it proves: `open` always succeeds after a kill at any point of the write protocol, never
//! loses a value whose `put` returned, and never goes backwards. (SIGKILL keeps the page cache,
//! so this covers process crashes; power loss is covered by the fsync discipline, not here.)

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gale::local_state::{LastSessionId, LocalState};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const ROUNDS: usize = 60;

/// `target/<profile>/examples/state_writer`, built by `cargo test`; built here if a filtered
/// `cargo test --test tests local_state::` skipped examples.
fn writer_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let binary = profile_dir.join("examples").join("state_writer");
    if !binary.exists() {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        let status = Command::new(env!("CARGO"))
            .args(["build", "--example", "state_writer", "--manifest-path"])
            .arg(&manifest)
            .status()
            .unwrap();
        assert!(status.success(), "cargo build --example state_writer failed");
    }
    assert!(binary.exists(), "{} not found", binary.display());
    binary
}

#[test]
fn values_survive_sigkill_at_random_moments() {
    let seed = std::env::var("GALE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64);
    println!("crash test seed: {seed} (rerun with GALE_CRASH_SEED={seed})");
    let mut rng = fastrand::Rng::with_seed(seed);
    let binary = writer_binary();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");

    let mut durable = 0i64; // highest value any round has seen durable
    let mut total_printed = 0usize;
    for round in 0..ROUNDS {
        let mut child =
            Command::new(&binary).arg(&dir).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(rng.u64(5..=60)));
        kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
        child.wait().unwrap();
        let mut out = String::new();
        child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        // Only complete lines count: a line is printed after its put returned.
        let printed: Vec<i64> = out.lines().map(|l| l.parse().unwrap()).collect();
        total_printed += printed.len();
        let last_printed = printed.last().copied();

        let state = LocalState::open(&dir).unwrap_or_else(|e| panic!("round {round} (seed {seed}): open failed: {e}"));
        let stored = state.get::<LastSessionId>().unwrap().unwrap_or(0);
        let floor = last_printed.unwrap_or(durable).max(durable);
        assert!(stored >= floor, "round {round} (seed {seed}): stored {stored} < {floor} already reported durable");
        // At most the one put in flight when the kill came may have landed unreported.
        assert!(
            stored <= floor + 1,
            "round {round} (seed {seed}): stored {stored} was never written (last reported {floor})"
        );
        durable = stored;
    }
    println!("{ROUNDS} rounds, {total_printed} values reported, final value {durable}");
    assert!(total_printed > 0, "the writer never completed a put: the test proved nothing");
}

/// A downgrade: a state written by a newer gale (format 3, laid down by hand beside an older
/// readable version) makes `gale run` exit 78 with one line naming the format found, the
/// formats understood and the dir, before anything is touched (no reset, no read of the older
/// version).
#[test]
fn a_state_of_a_newer_format_makes_gale_run_exit_78_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let state_dir = tmp.path().join("local/state");
    {
        let mut state = LocalState::open(&state_dir).unwrap();
        state.put::<LastSessionId>(&7).unwrap();
    }
    let payload = [0u8; 8]; // an empty map, as format 2 would encode it; format 3 may differ
    let mut bytes = b"GALESTAT".to_vec();
    bytes.extend_from_slice(&3u32.to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&0u32.to_le_bytes());
    bytes.extend_from_slice(&payload);
    let newest = u64::MAX / 2;
    std::fs::write(state_dir.join(newest.to_string()), &bytes).unwrap();
    std::fs::write(state_dir.join(format!("{newest}.version")), b"").unwrap();
    let before = listing(&state_dir);

    let config = tmp.path().join("gale.toml");
    let text = format!(
        "[zookeeper]\nservers = [\"127.0.0.1:1\"]\n[supervisor]\nlocal_dir = \"{dir}/local\"\nlog_dir = \"{dir}/logs\"\n\
         [health]\nscript_dir = \"{dir}/health\"\n[admin]\nlisten = \"\"\n",
        dir = tmp.path().display()
    );
    std::fs::write(&config, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gale")).arg("run").arg("--config").arg(&config).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    let expected = format!(
        "gale: local state {} was written by a newer gale (format 3; this gale reads formats 1-2): refusing to start; \
         upgrade gale or restore a backup",
        state_dir.display()
    );
    assert_eq!(stderr.lines().last(), Some(expected.as_str()), "{stderr}");
    assert_eq!(listing(&state_dir), before, "nothing reset, nothing cleaned, nothing written");
}

fn listing(dir: &Path) -> Vec<(String, u64)> {
    let mut names: Vec<(String, u64)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().len()))
        .collect();
    names.sort();
    names
}
