//! `gale logs` against fake worker log files: no daemon, no ZooKeeper (the command only reads
//! `<log_dir>/workers/<topology>/<port>/worker.log`). Follow tests run the binary as a child
//! with its stdout piped and poll its output with generous deadlines.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::common::{AgentSpec, expect, wait_for};

const DEADLINE: Duration = Duration::from_secs(20);

/// A config whose `log_dir` is `<tmp>/logs` (the ZooKeeper address is never used).
fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let config = AgentSpec::new("127.0.0.1:1", "/x").write(tmp.path());
    let root = tmp.path().join("logs/workers");
    (tmp, config, root)
}

/// `<root>/<topology>/<port>/worker.log`, created (with its directories) holding `content`.
fn log_file(root: &Path, topology: &str, port: u16, content: &str) -> PathBuf {
    let dir = root.join(topology).join(port.to_string());
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join("worker.log");
    fs::write(&path, content).unwrap();
    path
}

fn numbered(range: std::ops::RangeInclusive<u32>) -> String {
    range.map(|i| format!("line {i}\n")).collect()
}

#[test]
fn n_prints_the_last_lines_and_defaults_to_ten() {
    let (_tmp, config, root) = setup();
    log_file(&root, "wordcount", 6700, &numbered(1..=30));
    let (out, _) = expect(&config, &["logs", "6700", "-n", "3"], 0);
    assert_eq!(out, numbered(28..=30));
    let (out, _) = expect(&config, &["logs", "wordcount"], 0);
    assert_eq!(out, numbered(21..=30), "default -n 10, one port: no header");
    let (out, _) = expect(&config, &["logs", "wordcount", "--lines", "100"], 0);
    assert_eq!(out, numbered(1..=30));
    let (out, _) = expect(&config, &["logs", "wordcount", "-n", "0"], 0);
    assert_eq!(out, "");
}

#[test]
fn a_topology_with_two_ports_prints_each_log_under_a_header() {
    let (_tmp, config, root) = setup();
    // Port order is numeric, not lexical.
    let high = log_file(&root, "wordcount", 10000, "h1\nh2\nh3\n");
    let low = log_file(&root, "wordcount", 6700, "l1\nl2\nl3\n");
    log_file(&root, "other", 6701, "not this topology\n");
    let (out, _) = expect(&config, &["logs", "wordcount", "-n", "2"], 0);
    assert_eq!(out, format!("==> {} <==\nl2\nl3\n\n==> {} <==\nh2\nh3\n", low.display(), high.display()));
}

#[test]
fn a_port_shows_the_log_of_the_topology_that_wrote_it_last_and_says_so() {
    let (_tmp, config, root) = setup();
    let old = log_file(&root, "old-topology", 6700, "old\n");
    log_file(&root, "new-topology", 6700, "new\n");
    log_file(&root, "new-topology", 6701, "other port\n");
    File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    let (out, err) = expect(&config, &["logs", "6700"], 0);
    assert_eq!(out, "new\n");
    assert!(err.contains("new-topology") && err.contains("old-topology"), "names both: {err}");

    // Alone on its port: no message.
    let (out, err) = expect(&config, &["logs", "6701"], 0);
    assert_eq!((out.as_str(), err.as_str()), ("other port\n", ""));
}

#[test]
fn nothing_found_exits_1_naming_what_and_where() {
    let (_tmp, config, root) = setup();
    // Before any worker ran, the workers dir does not even exist.
    let (_, err) = expect(&config, &["logs", "wordcount"], 1);
    assert_eq!(err, format!("gale: no worker log for topology wordcount under {}\n", root.display()));
    log_file(&root, "other", 6701, "x\n");
    fs::create_dir_all(root.join("wordcount/6700")).unwrap();
    let (_, err) = expect(&config, &["logs", "wordcount", "-f"], 1);
    assert_eq!(err, format!("gale: no worker log for topology wordcount under {}\n", root.display()));
    let (_, err) = expect(&config, &["logs", "6700"], 1);
    assert_eq!(err, format!("gale: no worker log for port 6700 under {}\n", root.display()));
}

#[test]
fn bad_arguments_are_usage_errors() {
    let (_tmp, config, _) = setup();
    for (arg, says) in [("../etc", "topology id"), ("a/b", "topology id"), ("70000", "70000"), ("0", "port")] {
        let (_, err) = expect(&config, &["logs", arg], 2);
        assert!(err.starts_with("gale: ") && err.contains(says), "{arg}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    expect(&config, &["logs", "wordcount", "-n", "many"], 2);
    expect(&config, &["logs"], 2);
}

/// `gale logs ... -f` running, its stdout collected by a thread; killed on drop.
struct Follower {
    child: Child,
    out: Arc<Mutex<Vec<u8>>>,
    stderr: PathBuf,
}

impl Follower {
    fn start(config: &Path, args: &[&str], stderr: PathBuf) -> Follower {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gale"))
            .arg("--config")
            .arg(config)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let out = Arc::new(Mutex::new(Vec::new()));
        let mut pipe = child.stdout.take().unwrap();
        let sink = out.clone();
        std::thread::spawn(move || {
            let mut buf = [0; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Follower { child, out, stderr }
    }

    fn output(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    /// Waits until the output after byte `from` is exactly `expected`; fails as soon as it
    /// cannot become that, or at the deadline, showing what came.
    fn wait_output(&self, from: usize, expected: &str) {
        let deadline = SystemTime::now() + DEADLINE;
        loop {
            let out = self.output();
            let seen = out.get(from..).unwrap_or("");
            if seen == expected {
                return;
            }
            if !expected.starts_with(seen) || SystemTime::now() > deadline {
                panic!(
                    "stdout after byte {from}: {seen:?}, expected {expected:?}; stderr: {}",
                    fs::read_to_string(&self.stderr).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// With `-n 0` nothing shows when the follower has measured the file: append sync lines to
    /// `log` until one comes out, then a last marker; returns the output length after it, from
    /// which every line appended later must appear.
    fn synchronize(&self, log: &mut File) -> usize {
        let mut tries = 0u32;
        wait_for("the follower to print a first appended line", DEADLINE, || {
            if tries % 5 == 0 {
                writeln!(log, "sync-{tries}").unwrap();
            }
            tries += 1;
            self.output().contains("sync-").then_some(())
        });
        writeln!(log, "ready").unwrap();
        wait_for("the ready marker", DEADLINE, || {
            let out = self.output();
            out.find("ready\n").map(|at| at + "ready\n".len())
        })
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child killed (and reaped) on drop, so a failed test leaves no `gale logs -f` behind.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The worker's side: its stdout, opened the way the agent opens it (SPEC §4).
fn worker_stdout(path: &Path) -> File {
    OpenOptions::new().append(true).open(path).unwrap()
}

#[test]
fn follow_prints_appended_lines_and_goes_on_after_a_copy_truncate_rotation() {
    let (tmp, config, root) = setup();
    let log = log_file(&root, "wordcount", 6700, &numbered(1..=3));
    let mut worker = worker_stdout(&log);
    let follower = Follower::start(&config, &["logs", "wordcount", "-f", "-n", "0"], tmp.path().join("stderr"));
    let from = follower.synchronize(&mut worker);

    let before: String = (1..=5).map(|i| format!("before rotation {i}\n")).collect();
    worker.write_all(before.as_bytes()).unwrap();
    follower.wait_output(from, &before);

    // The agent's rotation: copy, then truncate the file the worker keeps writing to. What is
    // written after it is much shorter than what was there, so the follower sees a truncation.
    fs::copy(&log, log.with_extension("log.1")).unwrap();
    OpenOptions::new().write(true).open(&log).unwrap().set_len(0).unwrap();
    worker.write_all(b"after 1\nafter 2\n").unwrap();
    let expected = format!("{before}after 1\nafter 2\n");
    follower.wait_output(from, &expected);
    worker.write_all(b"after 3\n").unwrap();
    let expected = format!("{expected}after 3\n");
    follower.wait_output(from, &expected);

    assert!(!follower.output().contains('\0'), "no NUL bytes");
    assert_eq!(fs::read_to_string(&log).unwrap(), "after 1\nafter 2\nafter 3\n", "the worker wrote from offset 0");
    let stderr = fs::read_to_string(&follower.stderr).unwrap();
    assert!(stderr.contains("file truncated"), "{stderr}");
}

#[test]
fn following_two_ports_prints_a_header_when_the_output_switches_files() {
    let (tmp, config, root) = setup();
    let low = log_file(&root, "wordcount", 6700, "");
    let high = log_file(&root, "wordcount", 6701, "");
    let follower = Follower::start(&config, &["logs", "wordcount", "-f", "-n", "0"], tmp.path().join("stderr"));
    // The last file printed at start is 6701's: sync through it needs no header.
    let mut high_out = worker_stdout(&high);
    let from = follower.synchronize(&mut high_out);

    worker_stdout(&low).write_all(b"to 6700\n").unwrap();
    let expected = format!("\n==> {} <==\nto 6700\n", low.display());
    follower.wait_output(from, &expected);
    high_out.write_all(b"to 6701\n").unwrap();
    follower.wait_output(from, &format!("{expected}\n==> {} <==\nto 6701\n", high.display()));
}

#[test]
fn follow_exits_0_quietly_when_stdout_is_closed() {
    let (tmp, config, root) = setup();
    // Empty: nothing is ever written, so no EPIPE; only poll can notice the closed pipe.
    log_file(&root, "wordcount", 6700, "");
    let stderr = tmp.path().join("stderr");
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_gale"))
            .arg("--config")
            .arg(&config)
            .args(["logs", "6700", "-f"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&stderr).unwrap())
            .spawn()
            .unwrap(),
    );
    // Nobody reads: the log stays idle, so only the closed pipe can end it.
    drop(child.0.stdout.take());
    let status = wait_for("gale logs -f to exit", DEADLINE, || child.0.try_wait().unwrap());
    assert_eq!(status.code(), Some(0), "stderr: {}", fs::read_to_string(&stderr).unwrap());
    assert_eq!(fs::read_to_string(&stderr).unwrap(), "");
}
