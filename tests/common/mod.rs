//! Test harness: a REAL ZooKeeper (Debian's `zookeeper` package) started by the tests, and
//! the real `gale` binary run as a child process.
//!
//! One standalone server for the whole integration test binary, `tests/tests.rs`
//! ([`shared_zk`]), each test under its own root; tests that stop servers start their own. A watchdog shell around each java process kills
//! it when the test binary exits, however it exits, so no server outlives the run.

// The benches include this file too (`#[path]`), each using a part of it: what one of them
// does not use is not dead.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::time::Instant;

use gale::proc_identity::ProcessIdentity;
use nix::sys::signal::killpg;
use serde_json::Value;
use zookeeper_client as zkc;

pub const ZK_JAR: &str = "/usr/share/java/zookeeper.jar";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Sends a four-letter word and returns the answer ("" when the server does not answer).
pub fn four_letter(port: u16, word: &str) -> String {
    let Ok(mut stream) = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500)) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.write_all(word.as_bytes());
    let mut out = String::new();
    let _ = stream.read_to_string(&mut out);
    out
}

/// `Mode:` from `srvr` (`standalone`, `leader`, `follower`), once the server serves.
pub fn zk_mode(port: u16) -> Option<String> {
    four_letter(port, "srvr").lines().find_map(|l| l.strip_prefix("Mode: ").map(|m| m.trim().to_owned()))
}

/// Polls `f` every 50 ms until it returns Some or `timeout` passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::SystemTime::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if std::time::SystemTime::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One ZooKeeper server process (standalone or an ensemble member).
#[derive(Debug)]
pub struct ZkServer {
    pub dir: PathBuf,
    pub port: u16,
    pub cfg: PathBuf,
    main_class: &'static str,
    watchdog: Option<Child>,
}

impl ZkServer {
    /// A standalone server on a free port with a fresh data dir under `dir`.
    pub fn standalone(dir: &Path) -> ZkServer {
        let mut server = ZkServer::standalone_stopped(dir);
        server.start();
        server
    }

    /// Like [`ZkServer::standalone`], not started yet (nothing listens on its port).
    pub fn standalone_stopped(dir: &Path) -> ZkServer {
        let port = free_port();
        let cfg = write_cfg(dir, port, "");
        ZkServer {
            dir: dir.to_owned(),
            port,
            cfg,
            main_class: "org.apache.zookeeper.server.ZooKeeperServerMain",
            watchdog: None,
        }
    }

    /// A standalone server someone else started on loopback at `address` (`127.0.0.1:<port>`),
    /// checked to serve; never stopped by the tests.
    pub fn external(address: &str) -> ZkServer {
        let port = address
            .strip_prefix("127.0.0.1:")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("GALE_TEST_ZOOKEEPER={address}: expected 127.0.0.1:<port>"));
        let server = ZkServer {
            dir: PathBuf::new(),
            port,
            cfg: PathBuf::new(),
            main_class: "org.apache.zookeeper.server.ZooKeeperServerMain",
            watchdog: None,
        };
        assert_eq!(zk_mode(port).as_deref(), Some("standalone"), "GALE_TEST_ZOOKEEPER={address} does not serve");
        server
    }

    /// Starts (or restarts, on the same data dir and port) the server process.
    pub fn start(&mut self) {
        let data = self.dir.join("data");
        std::fs::create_dir_all(&data).unwrap();
        let script = format!(
            r#"java -Xmx128m -Dzookeeper.jmx.log4j.disable=true -cp {ZK_JAR} {class} "$1" >>"$2" 2>&1 &
zk=$!
echo $zk > "$3"
trap 'kill -9 $zk 2>/dev/null; exit 0' TERM INT
while kill -0 {test_pid} 2>/dev/null && kill -0 $zk 2>/dev/null; do sleep 0.3; done
kill -9 $zk 2>/dev/null
exit 0"#,
            class = self.main_class,
            test_pid = std::process::id()
        );
        let child = Command::new("bash")
            .arg("-c")
            .arg(script)
            .arg("zk")
            .arg(&self.cfg)
            .arg(self.dir.join("zk.log"))
            .arg(self.dir.join("zk.pid"))
            .stdin(Stdio::null())
            // Only bash's job-control chatter ("Killed") would land here; java logs to zk.log.
            .stderr(Stdio::null())
            .spawn()
            .expect("bash");
        self.watchdog = Some(child);
    }

    pub fn wait_serving(&self) {
        wait_for(&format!("zookeeper on port {} to serve", self.port), Duration::from_secs(60), || zk_mode(self.port));
    }

    pub fn java_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir.join("zk.pid")).ok()?.trim().parse().ok()
    }

    /// SIGKILLs the server (data stays for a restart).
    pub fn kill(&mut self) {
        if let Some(pid) = self.java_pid() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.wait();
        }
        let port = self.port;
        wait_for("zookeeper port to close", Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).is_err().then_some(())
        });
    }

    pub fn connect_string(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for ZkServer {
    fn drop(&mut self) {
        if self.watchdog.is_some() {
            self.kill();
        }
    }
}

fn write_cfg(dir: &Path, port: u16, extra: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let cfg = dir.join("zoo.cfg");
    std::fs::write(
        &cfg,
        format!(
            "tickTime=1000\ninitLimit=10\nsyncLimit=5\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\n\
             4lw.commands.whitelist=*\nadmin.enableServer=false\nmaxSessionTimeout=60000\n{extra}",
            dir.join("data").display()
        ),
    )
    .unwrap();
    cfg
}

/// A 3-node ensemble on loopback.
#[derive(Debug)]
pub struct Ensemble {
    pub servers: Vec<ZkServer>,
}

impl Ensemble {
    pub fn start(dir: &Path) -> Ensemble {
        let ports: Vec<(u16, u16, u16)> = (0..3).map(|_| (free_port(), free_port(), free_port())).collect();
        let members: String = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer, election))| format!("server.{}=127.0.0.1:{peer}:{election}\n", i + 1))
            .collect();
        let mut servers = Vec::new();
        for (i, (client, _, _)) in ports.iter().enumerate() {
            let sdir = dir.join(format!("zk{}", i + 1));
            let cfg = write_cfg(&sdir, *client, &members);
            std::fs::create_dir_all(sdir.join("data")).unwrap();
            std::fs::write(sdir.join("data/myid"), format!("{}\n", i + 1)).unwrap();
            let mut server = ZkServer {
                dir: sdir,
                port: *client,
                cfg,
                main_class: "org.apache.zookeeper.server.quorum.QuorumPeerMain",
                watchdog: None,
            };
            server.start();
            servers.push(server);
        }
        let ensemble = Ensemble { servers };
        for s in &ensemble.servers {
            s.wait_serving();
        }
        ensemble
    }

    pub fn connect_string(&self) -> String {
        self.servers.iter().map(ZkServer::connect_string).collect::<Vec<_>>().join(",")
    }

    pub fn leader(&self) -> Option<usize> {
        self.servers.iter().position(|s| zk_mode(s.port).as_deref() == Some("leader"))
    }
}

/// The server shared by all tests of the test binary (every module of `tests/tests.rs`).
/// `GALE_TEST_ZOOKEEPER=127.0.0.1:<port>` names one already serving instead (the VM stage,
/// `scripts/vm/cgroup2-guest.sh`, starts one for both of its runs: a JVM starting under TCG
/// can take longer than [`ZkServer::wait_serving`] waits).
pub fn shared_zk() -> &'static ZkServer {
    static ZK: OnceLock<(tempfile::TempDir, ZkServer)> = OnceLock::new();
    let (_, server) = ZK.get_or_init(|| {
        if let Ok(address) = std::env::var("GALE_TEST_ZOOKEEPER") {
            return (tempfile::tempdir().unwrap(), ZkServer::external(&address));
        }
        let dir = tempfile::Builder::new().prefix("gale-zk-").tempdir().unwrap();
        let server = ZkServer::standalone(dir.path());
        server.wait_serving();
        (dir, server)
    });
    server
}

/// An independent ZooKeeper session for checking what the agent wrote.
pub async fn zk_client(connect: &str) -> zookeeper_client::Client {
    zookeeper_client::Client::connector()
        .with_session_timeout(Duration::from_secs(30))
        .connect(connect)
        .await
        .expect("test client connects")
}

/// Polls an async condition every 50 ms until Some or timeout.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Settings of a test agent's config file.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    pub servers: String,
    pub root: String,
    pub id: Option<String>,
    pub session_timeout_ms: u64,
    pub heartbeat_secs: u64,
    pub heartbeat_refresh_secs: u64,
}

impl AgentSpec {
    pub fn new(servers: &str, root: &str) -> AgentSpec {
        AgentSpec {
            servers: servers.to_owned(),
            root: root.to_owned(),
            id: None,
            session_timeout_ms: 10_000,
            heartbeat_secs: 1,
            heartbeat_refresh_secs: 5,
        }
    }

    pub fn id(mut self, id: &str) -> AgentSpec {
        self.id = Some(id.to_owned());
        self
    }

    /// Writes `<dir>/gale.toml` (local dir `<dir>/local`, logs `<dir>/logs`).
    pub fn write(&self, dir: &Path) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let servers: Vec<String> = self.servers.split(',').map(|s| format!("\"{s}\"")).collect();
        let id = self.id.as_ref().map(|id| format!("id = \"{id}\"\n")).unwrap_or_default();
        let text = format!(
            r#"[zookeeper]
servers = [{servers}]
root = "{root}"
session_timeout_ms = {st}
connect_timeout_ms = 3000

[supervisor]
local_dir = "{dir}/local"
log_dir = "{dir}/logs"
{id}slots = [6700, 6701]
heartbeat_secs = {hb}
heartbeat_refresh_secs = {hbr}
sync_secs = 2
monitor_secs = 1
labels = {{ rack = "r1" }}

[health]
script_dir = "{dir}/health"

[logs]
level = "gale=debug,info"
format = "text"

[admin]
listen = ""
"#,
            servers = servers.join(", "),
            root = self.root,
            st = self.session_timeout_ms,
            dir = dir.display(),
            hb = self.heartbeat_secs,
            hbr = self.heartbeat_refresh_secs,
        );
        let path = dir.join("gale.toml");
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// The real `gale run` as a child process; SIGKILLed on drop if still running.
#[derive(Debug)]
pub struct Agent {
    pub child: Child,
    pub log: PathBuf,
    pub status: Option<ExitStatus>,
}

impl Agent {
    /// Starts `gale run --config <config>`, stderr appended to `<config dir>/agent-<n>.log`.
    pub fn start(config: &Path) -> Agent {
        Agent::start_binary(config, env!("CARGO_BIN_EXE_gale"))
    }

    /// Like [`Agent::start`] with another build of the binary (benches use release).
    pub fn start_binary(config: &Path, binary: &str) -> Agent {
        Agent::start_with_env(config, binary, &[])
    }

    /// Like [`Agent::start_binary`] with extra environment variables.
    pub fn start_with_env(config: &Path, binary: &str, env: &[(&str, &str)]) -> Agent {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Agent::start_logging_to(config, binary, env, &config.parent().unwrap().join(format!("agent-{n}.log")))
    }

    /// Like [`Agent::start_with_env`], stderr written to `log` (created or truncated): a
    /// benchmark keeps the config's directory quiet, as `/etc/gale` is on a host, because the
    /// agent watches that directory for config changes.
    pub fn start_logging_to(config: &Path, binary: &str, env: &[(&str, &str)], log: &Path) -> Agent {
        let log = log.to_owned();
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(binary)
            .arg("run")
            .arg("--config")
            .arg(config)
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("spawn gale");
        Agent { child, log, status: None }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).unwrap();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&mut self, needle: &str, timeout: Duration) {
        let log = self.log.clone();
        let deadline = std::time::SystemTime::now() + timeout;
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains(needle) {
                return;
            }
            if let Some(status) = self.try_status() {
                panic!("agent exited ({status}) before logging {needle:?}; log:\n{text}");
            }
            if std::time::SystemTime::now() > deadline {
                panic!("timed out waiting for {needle:?} in the agent log:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().unwrap();
        }
        self.status
    }

    /// Waits for the process to die of a signal (after a SIGKILL).
    pub fn wait_exit_signal(&mut self) {
        wait_for("the agent to die", Duration::from_secs(10), || self.try_status());
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let status = wait_for("the agent to exit", timeout, || self.try_status());
        status.code().unwrap_or_else(|| panic!("agent died of a signal: {status}; log:\n{}", self.log_text()))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Creates the persistent parents of `path` (not `path` itself) with an independent client.
pub async fn create_parents(zk: &zookeeper_client::Client, path: &str) {
    use zookeeper_client as zkc;
    let mut prefix = String::new();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    for parent in &segments[..segments.len().saturating_sub(1)] {
        prefix = format!("{prefix}/{parent}");
        let options = zkc::CreateMode::Persistent.with_acls(zkc::Acls::anyone_all());
        match zk.create(&prefix, &[], &options).await {
            Ok(_) | Err(zkc::Error::NodeExists) => {}
            Err(e) => panic!("creating {prefix}: {e}"),
        }
    }
}

/// utime + stime of `pid` in clock ticks (`/proc/<pid>/stat` fields 14 and 15).
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

/// Runs the real `gale` with `--config config` and `args`.
pub fn gale(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gale")).arg("--config").arg(config).args(args).output().unwrap()
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `gale` and asserts its exit code; returns (stdout, stderr).
pub fn expect(config: &Path, args: &[&str], code: i32) -> (String, String) {
    let out = gale(config, args);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(code), "gale {args:?}\nstdout: {stdout}\nstderr: {stderr}");
    (stdout, stderr)
}

/// A config for ZooKeeper root `root` (on the shared server) in a fresh temp dir, kept alive
/// by the returned guard.
pub fn setup(root: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let config = AgentSpec::new(&shared_zk().connect_string(), root).write(tmp.path());
    (tmp, config)
}

// ------------------------------------------------------------------------------------------
// Workers: processes, SupervisorInfo, logs (shared by the tests that run workers)

/// SIGKILLs, at the end of a test, every worker it saw and every process whose cwd is under
/// the test's `<local_dir>/workers` (a worker's children included). Declare it BEFORE the
/// agent, so the agent is dropped (killed) first and cannot relaunch anything.
pub struct Reaper {
    workers_dir: PathBuf,
    seen: Mutex<Vec<ProcessIdentity>>,
}

impl Reaper {
    pub fn new(workers_dir: PathBuf) -> Reaper {
        Reaper { workers_dir, seen: Mutex::new(Vec::new()) }
    }

    pub fn track(&self, pid: u32) {
        if let Ok(identity) = ProcessIdentity::of(pid) {
            self.seen.lock().unwrap().push(identity);
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for identity in self.seen.lock().unwrap().iter() {
            let _ = gale::worker::signal_group(identity, Signal::SIGKILL);
        }
        for pid in pids_with_cwd_under(&self.workers_dir) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// The uid of local user `name`, created (no home, no login shell, uid ≥ 1000) if missing: the
/// users that `run_as_user` tests run workers as. Needs root; tests that call it check first.
pub fn test_user(name: &str) -> u32 {
    if let Some(user) = nix::unistd::User::from_name(name).unwrap() {
        return user.uid.as_raw();
    }
    let out = Command::new("useradd")
        .args(["--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group", name])
        .output()
        .expect("useradd (passwd package) runs");
    // Exit 9: created meanwhile by a concurrent test process; anything else is a failure.
    assert!(out.status.success() || out.status.code() == Some(9), "useradd {name}: {}", text(&out.stderr));
    let user = nix::unistd::User::from_name(name).unwrap().unwrap_or_else(|| panic!("user {name} after useradd"));
    user.uid.as_raw()
}

pub fn pids_with_cwd_under(dir: &Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(dir)))
        .collect()
}

/// `(state, ppid, pgrp, session)` from `/proc/<pid>/stat`.
pub fn proc_stat(pid: u32) -> Option<(char, i32, i32, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    Some((state, f.next()?.parse().ok()?, f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}

/// Running (a zombie, which nobody may reap in this container, counts as gone).
pub fn alive(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|(state, ..)| !matches!(state, 'Z' | 'X'))
}

// ---- ZooKeeper

/// Creates or overwrites a persistent node with raw bytes.
pub async fn put_raw(zk: &zkc::Client, path: &str, data: &[u8]) {
    create_parents(zk, path).await;
    let options = zkc::CreateMode::Persistent.with_acls(zkc::Acls::anyone_all());
    match zk.create(path, data, &options).await {
        Ok(_) => {}
        Err(zkc::Error::NodeExists) => {
            zk.set_data(path, data, None).await.unwrap_or_else(|e| panic!("setting {path}: {e}"));
        }
        Err(e) => panic!("creating {path}: {e}"),
    }
}

pub async fn put_json(zk: &zkc::Client, path: &str, value: &Value) {
    put_raw(zk, path, &serde_json::to_vec(value).unwrap()).await;
}

pub async fn delete(zk: &zkc::Client, path: &str) {
    zk.delete(path, None).await.unwrap_or_else(|e| panic!("deleting {path}: {e}"));
}

pub async fn read_json(zk: &zkc::Client, path: &str) -> Option<(Value, zkc::Stat)> {
    match zk.get_data(path).await {
        Ok((data, stat)) => Some((serde_json::from_slice(&data).expect("node holds JSON"), stat)),
        Err(zkc::Error::NoNode) => None,
        Err(e) => panic!("reading {path}: {e}"),
    }
}

/// Polls SupervisorInfo until `pred` holds; panics with the last payload seen and the agent
/// log on timeout.
pub async fn wait_info(
    zk: &zkc::Client,
    path: &str,
    agent: &Agent,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&Value, &zkc::Stat) -> bool,
) -> (Value, zkc::Stat) {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = None;
    loop {
        if let Some((info, stat)) = read_json(zk, path).await {
            if pred(&info, &stat) {
                return (info, stat);
            }
            last = Some(info);
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}; last SupervisorInfo: {}\nagent log:\n{}",
                last.map(|v| v.to_string()).unwrap_or_else(|| "none".into()),
                agent.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `workers[]` entry of `port`.
pub fn slot(info: &Value, port: u16) -> Option<&Value> {
    info["workers"].as_array()?.iter().find(|w| w["port"] == port)
}

pub fn slot_state(info: &Value, port: u16) -> Option<&str> {
    slot(info, port)?["state"].as_str()
}

pub fn slot_pid(info: &Value, port: u16) -> Option<u32> {
    slot(info, port)?["pid"].as_u64().map(|p| p as u32)
}

pub fn running_pid(info: &Value, port: u16) -> Option<u32> {
    (slot_state(info, port) == Some("running")).then(|| slot_pid(info, port)).flatten()
}

// ---- worker logs

pub fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

// ------------------------------------------------------------------------------------------
// One test's agent: temp dir, root, id and config (the shape every agent test starts from)

/// Root `/<prefix>-<name>`, id `sup-<name>`, config in `<tmp>/agent/gale.toml` (harness
/// defaults on the shared ZooKeeper); test files wrap it with their own helpers.
pub struct TestAgent {
    pub tmp: tempfile::TempDir,
    pub root: String,
    pub id: String,
    pub config: PathBuf,
}

impl TestAgent {
    pub fn new(prefix: &str, name: &str) -> TestAgent {
        // Two tests with one id share the workers' parent cgroup `gale-<id>` (each agent's
        // start-up sweep may kill the other's workers) and `GALE_SUPERVISOR_ID`, by which some
        // tests count their workers: refuse the second one.
        static IDS: Mutex<Vec<String>> = Mutex::new(Vec::new());
        let mut ids = IDS.lock().unwrap_or_else(|e| e.into_inner());
        assert!(
            !ids.iter().any(|n| n == name),
            "two tests make a TestAgent named {name:?} (id sup-{name}): rename one"
        );
        ids.push(name.to_owned());
        drop(ids);
        let tmp = tempfile::Builder::new().prefix(&format!("gale-{prefix}-{name}-")).tempdir().unwrap();
        let root = format!("/{prefix}-{name}");
        let id = format!("sup-{name}");
        let config = AgentSpec::new(&shared_zk().connect_string(), &root).id(&id).write(&tmp.path().join("agent"));
        TestAgent { tmp, root, id, config }
    }

    /// Rewrites the config text.
    pub fn edit(&self, f: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        std::fs::write(&self.config, f(text)).unwrap();
    }

    /// Turns the admin endpoint on, on a free loopback port, and returns the port.
    pub fn enable_admin(&self) -> u16 {
        let admin = free_port();
        self.edit(|text| text.replace("listen = \"\"", &format!("listen = \"127.0.0.1:{admin}\"")));
        admin
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    pub fn local(&self) -> PathBuf {
        self.tmp.path().join("agent/local")
    }

    pub fn info_path(&self) -> String {
        format!("{}/supervisors/{}", self.root, self.id)
    }

    /// Makes the test's dir and the agent's dir searchable by everyone: workers that run as
    /// other users (`run_as_user`) must reach their own dirs under the local dir.
    pub fn open_to_worker_users(&self) {
        use std::os::unix::fs::PermissionsExt;
        for dir in [self.path().to_owned(), self.path().join("agent")] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    pub fn reaper(&self) -> Reaper {
        Reaper::new(self.local().join("workers"))
    }

    pub fn worker_log(&self, topology: &str, port: u16) -> PathBuf {
        self.tmp.path().join("agent/logs/workers").join(topology).join(port.to_string()).join("worker.log")
    }

    /// Polls this agent's SupervisorInfo (60 s) until `pred` holds.
    pub async fn wait_info(&self, zk: &zkc::Client, agent: &Agent, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_info(zk, &self.info_path(), agent, what, Duration::from_secs(60), |i, _| pred(i)).await.0
    }
}

// ------------------------------------------------------------------------------------------
// The admin endpoint

/// `GET url`: (status code, body); 0 when nothing answers.
pub fn http_get(url: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(false)
        .build()
        .into();
    match agent.get(url).call() {
        Ok(mut r) => (r.status().as_u16(), r.body_mut().read_to_string().unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

/// The value of the metric line `name` (exact, labels included), if present.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

// ------------------------------------------------------------------------------------------
// The previous release (tests/upgrade.rs)

/// The `gale` binary of the previous release, built from git: `$GALE_PREVIOUS_RELEASE` when
/// set (`scripts/test.sh` builds it before the tests, so the build eats into no deadline), else
/// `scripts/build-previous-release.sh` run once per test process (cached under `target/`).
/// The binary sits in its release's tree as `<tree>/target/debug/gale`: see [`previous_tree`].
pub fn previous_release() -> &'static Path {
    // The outcome, failure included, is kept: a failed build is not tried again by every test.
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let binary = BINARY.get_or_init(|| {
        let binary = match std::env::var_os("GALE_PREVIOUS_RELEASE") {
            Some(path) => PathBuf::from(path),
            None => {
                let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-previous-release.sh");
                let out = Command::new(&script).output().map_err(|e| format!("{}: {e}", script.display()))?;
                if !out.status.success() {
                    return Err(format!(
                        "the upgrade tests need the previous release's binary, and {} failed ({}):\n{}",
                        script.display(),
                        out.status,
                        text(&out.stderr)
                    ));
                }
                PathBuf::from(text(&out.stdout).trim())
            }
        };
        if !binary.is_file() {
            return Err(format!("the previous release's binary {} does not exist", binary.display()));
        }
        Ok(binary)
    });
    binary.as_deref().unwrap_or_else(|e| panic!("{e}"))
}

/// The source tree the previous release's binary was built in (its own scripts and docs).
pub fn previous_tree() -> &'static Path {
    let binary = previous_release();
    let tree =
        binary.ancestors().nth(3).unwrap_or_else(|| panic!("{} is not <tree>/target/debug/gale", binary.display()));
    assert!(
        tree.join("scripts/build-deb.sh").is_file(),
        "{} is not <tree>/target/debug/gale of a gale tree (no scripts/build-deb.sh in {})",
        binary.display(),
        tree.display()
    );
    tree
}

/// `x.y.z` from `<binary> --version` (`gale x.y.z`).
pub fn binary_version(binary: &Path) -> String {
    let out = Command::new(binary).arg("--version").output().unwrap_or_else(|e| panic!("{}: {e}", binary.display()));
    let line = text(&out.stdout);
    line.trim()
        .strip_prefix("gale ")
        .unwrap_or_else(|| panic!("{} --version said {line:?}", binary.display()))
        .to_owned()
}
