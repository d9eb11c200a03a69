//! Workers end to end: the real `gale` binary against a real ZooKeeper, running real worker
//! processes (small POSIX sh scripts written by each test into its temp dir).
//!
//! Assignments are written as raw JSON by an independent ZooKeeper session, the way a
//! scheduler would; what the agent runs is read back from its SupervisorInfo (SPEC §3.1), the
//! worker logs (SPEC §4) and `/proc`. Each test uses its own root (`/w-<name>`) and temp dir,
//! and a [`Reaper`] SIGKILLs every worker it started when the test ends (the agent never stops
//! workers by stopping itself, by design).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::*;
use gale::proc_identity::ProcessIdentity;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use zookeeper_client as zkc;

/// The worker: what it does is chosen by `$WORKER_MODE` (from the assignment's `env`). Every
/// generation logs `start pid=… at=<unix ns>` to stdout, i.e. to its worker.log.
const WORKER_SH: &str = r#"#!/bin/sh
now() { date +%s%N; }
case "$WORKER_MODE" in
term) trap 'echo "got TERM pid=$$ at=$(now)"; exit 0' TERM ;;
ignore_term) trap '' TERM ;;
esac
echo "start pid=$$ port=$GALE_PORT worker=$GALE_WORKER_ID at=$(now)"
case "$WORKER_MODE" in
env)
  for a in "$@"; do printf 'arg=[%s]\n' "$a"; done
  env | sort | sed 's/^/env /'
  echo "cwd=[$(pwd -P)]"
  echo "to stderr" >&2
  exec /bin/sleep 1000
  ;;
crash)
  sleep 0.5
  echo "exit pid=$$ at=$(now)"
  exit 1
  ;;
leave_child)
  /bin/sleep 1000 &
  echo "child=$!"
  sleep 0.5
  exit 1
  ;;
heartbeat)
  for i in 1 2 3; do touch "$GALE_HEARTBEAT_FILE"; sleep 0.5; done
  echo "hung pid=$$ at=$(now)"
  exec /bin/sleep 1000
  ;;
term)
  /bin/sleep 1000 &
  wait $!
  echo "wait ended pid=$$"
  ;;
*)
  exec /bin/sleep 1000
  ;;
esac
"#;

// ------------------------------------------------------------------------------------------
// Helpers

fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos()
}

fn ms(ns: u128) -> f64 {
    ns as f64 / 1e6
}

/// One test's agent: temp dir, root, id, config and worker script.
struct Case {
    tmp: tempfile::TempDir,
    root: String,
    id: String,
    config: PathBuf,
    script: PathBuf,
}

impl Case {
    /// Writes `<tmp>/agent/gale.toml` for root `/w-<name>`, id `sup-<name>`; `zk_extra` goes
    /// into `[zookeeper]`, `extra` (new tables such as `[worker]`) at the end.
    fn new(name: &str, servers: &str, session_timeout_ms: u64, zk_extra: &str, extra: &str) -> Case {
        let tmp = tempfile::Builder::new().prefix(&format!("gale-w-{name}-")).tempdir().unwrap();
        let root = format!("/w-{name}");
        let id = format!("sup-{name}");
        let mut spec = AgentSpec::new(servers, &root).id(&id);
        spec.session_timeout_ms = session_timeout_ms;
        let dir = tmp.path().join("agent");
        let config = spec.write(&dir);
        let mut text = std::fs::read_to_string(&config).unwrap();
        let anchor = "connect_timeout_ms = 3000\n";
        assert!(text.contains(anchor), "the harness config changed: {text}");
        text = text.replace(anchor, &format!("{anchor}{zk_extra}\n"));
        text.push_str(extra);
        std::fs::write(&config, text).unwrap();
        let script = tmp.path().join("worker.sh");
        std::fs::write(&script, WORKER_SH).unwrap();
        Case { tmp, root, id, config, script }
    }

    fn shared(name: &str, extra: &str) -> Case {
        Case::new(name, &shared_zk().connect_string(), 10_000, "", extra)
    }

    fn dir(&self) -> PathBuf {
        self.tmp.path().join("agent")
    }

    fn local(&self) -> PathBuf {
        self.dir().join("local")
    }

    fn worker_dir(&self, worker_id: &str) -> PathBuf {
        self.local().join("workers").join(worker_id)
    }

    fn worker_log(&self, topology: &str, port: u16) -> PathBuf {
        self.dir().join("logs/workers").join(topology).join(port.to_string()).join("worker.log")
    }

    fn info_path(&self) -> String {
        format!("{}/supervisors/{}", self.root, self.id)
    }

    fn assignment_path(&self, topology: &str) -> String {
        format!("{}/assignments/{topology}", self.root)
    }

    /// A schema-1 assignment running the test's worker script in `mode` on `ports` of this
    /// agent; `launch` fields are merged over the defaults.
    fn assignment(&self, topology: &str, mode: &str, ports: &[u16], launch: Value) -> Value {
        let mut l = json!({
            "command": ["/bin/sh", self.script.to_str().unwrap()],
            "env": {"WORKER_MODE": mode},
            "liveness": "process",
        });
        for (k, v) in launch.as_object().unwrap() {
            l[k] = v.clone();
        }
        let workers: Vec<Value> = ports.iter().map(|p| json!({"supervisor_id": self.id, "port": p})).collect();
        json!({"schema": 1, "topology_id": topology, "launch": l, "workers": workers})
    }

    fn start(&self) -> Agent {
        Agent::start(&self.config)
    }
}

fn start_ticks(pid: u32) -> u64 {
    ProcessIdentity::of(pid).unwrap().start_ticks
}

/// The value of `key=` in a log line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// `(pid, at_ns)` of every line starting with `word` (`start`, `exit`, `hung`, `got TERM`).
fn marks(log: &Path, word: &str) -> Vec<(u32, u128)> {
    read_log(log)
        .lines()
        .filter(|l| l.starts_with(&format!("{word} pid=")))
        .filter_map(|l| Some((field(l, "pid")?.parse().ok()?, field(l, "at")?.parse().ok()?)))
        .collect()
}

/// Waits until `log` has at least `n` lines starting with `word`; returns them all.
fn wait_marks(log: &Path, word: &str, n: usize, timeout: Duration, agent: &Agent) -> Vec<(u32, u128)> {
    let deadline = SystemTime::now() + timeout;
    loop {
        let found = marks(log, word);
        if found.len() >= n {
            return found;
        }
        if SystemTime::now() > deadline {
            panic!(
                "timed out after {timeout:?} waiting for {n} `{word}` lines in {}:\n{}\nagent log:\n{}",
                log.display(),
                read_log(log),
                agent.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_gone(pid: u32, timeout: Duration) -> Duration {
    let started = SystemTime::now();
    wait_for(&format!("pid {pid} to be gone"), timeout, || (!alive(pid)).then_some(()));
    started.elapsed().unwrap()
}

// ------------------------------------------------------------------------------------------
// 1. launch: argv, env, cwd, log, SupervisorInfo

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assignment_starts_its_worker_with_the_spec_argv_env_cwd_and_log() {
    let case = Case::shared("launch", "");
    let reaper = Reaper::new(case.local().join("workers"));
    let agent = case.start();
    let zk = zk_client(&shared_zk().connect_string()).await;
    let info_path = case.info_path();
    wait_info(&zk, &info_path, &agent, "the agent running", Duration::from_secs(30), |v, _| v["state"] == "running")
        .await;

    let topology = "t-launch";
    let mut assignment = case.assignment(
        topology,
        "env",
        &[6700],
        json!({"env": {"WORKER_MODE": "env", "MY_VAR": "a b $HOME \"q\" {port}"}}),
    );
    let script = case.script.to_str().unwrap();
    assignment["launch"]["command"] = json!([
        "/bin/sh",
        script,
        "--port={port}",
        "{worker_id}",
        "t={topology_id},s={supervisor_id}",
        "{worker_dir}/data",
        "two words",
        "$HOME"
    ]);
    let written = SystemTime::now();
    put_json(&zk, &case.assignment_path(topology), &assignment).await;

    let (info, _) = wait_info(&zk, &info_path, &agent, "the worker running", Duration::from_secs(20), |v, _| {
        running_pid(v, 6700).is_some()
    })
    .await;
    let pid = running_pid(&info, 6700).unwrap();
    reaper.track(pid);
    let log_path = case.worker_log(topology, 6700);
    // The script prints everything, then its stderr line, then execs sleep.
    wait_for("the worker's stderr line in worker.log", Duration::from_secs(10), || {
        read_log(&log_path).contains("to stderr").then_some(())
    });
    println!("assignment written -> worker running in SupervisorInfo: {:?}", written.elapsed().unwrap());
    let log = read_log(&log_path);
    println!("worker.log:\n{log}");

    let entry = slot(&info, 6700).unwrap();
    let worker_id = entry["worker_id"].as_str().unwrap().to_owned();
    assert_eq!(entry["topology_id"], topology, "{info}");
    assert_eq!(entry["restarts"], 0, "{info}");
    assert_eq!(entry["last_exit"], Value::Null, "{info}");
    assert!(entry["since_ms"].as_u64().is_some(), "{info}");
    assert_eq!(info["used_slots"], json!([6700]), "{info}");
    assert_eq!(info["workers"].as_array().unwrap().len(), 1, "{info}");

    // The pid in SupervisorInfo is the process that logged (the script execs sleep: same pid).
    let (logged_pid, _) = marks(&log_path, "start")[0];
    assert_eq!(logged_pid, pid, "{log}");
    assert!(alive(pid));

    let worker_dir = case.worker_dir(&worker_id);
    let args: Vec<&str> = log.lines().filter_map(|l| l.strip_prefix("arg=[")?.strip_suffix(']')).collect();
    assert_eq!(
        args,
        vec![
            "--port=6700".to_owned(),
            worker_id.clone(),
            format!("t={topology},s={}", case.id),
            format!("{}/data", worker_dir.display()),
            "two words".to_owned(),
            "$HOME".to_owned(),
        ],
        "argv placeholders expanded, never through a shell"
    );

    let env: std::collections::BTreeMap<&str, &str> =
        log.lines().filter_map(|l| l.strip_prefix("env ")?.split_once('=')).collect();
    let dir_str = worker_dir.to_str().unwrap();
    let expect = [
        ("GALE_TOPOLOGY_ID", topology.to_owned()),
        ("GALE_WORKER_ID", worker_id.clone()),
        ("GALE_PORT", "6700".to_owned()),
        ("GALE_SUPERVISOR_ID", case.id.clone()),
        ("GALE_WORKER_DIR", dir_str.to_owned()),
        ("GALE_HEARTBEAT_FILE", format!("{dir_str}/heartbeat")),
        ("MY_VAR", "a b $HOME \"q\" {port}".to_owned()),
        ("WORKER_MODE", "env".to_owned()),
    ];
    for (name, value) in expect {
        assert_eq!(env.get(name).copied(), Some(value.as_str()), "env {name}; worker.log:\n{log}");
    }
    let blob_dir = env.get("GALE_BLOB_DIR").copied().expect("GALE_BLOB_DIR is set");
    assert!(Path::new(blob_dir).is_absolute(), "GALE_BLOB_DIR={blob_dir}");
    println!("GALE_BLOB_DIR={blob_dir} (exists: {})", Path::new(blob_dir).exists());
    assert!(env.contains_key("PATH"), "the agent's environment is inherited");
    assert!(!env.contains_key("NOTIFY_SOCKET"));

    let canonical = std::fs::canonicalize(&worker_dir).unwrap();
    assert!(log.contains(&format!("cwd=[{}]", canonical.display())), "cwd is the worker dir; log:\n{log}");
    assert!(log.contains("to stderr"), "stderr lands in worker.log");

    // Its own session and process group, stdin /dev/null, stdout/stderr the log file.
    let (_, _, pgrp, session) = proc_stat(pid).unwrap();
    assert_eq!((pgrp, session), (pid as i32, pid as i32), "session and group leader");
    assert_eq!(std::fs::read_link(format!("/proc/{pid}/fd/0")).unwrap(), PathBuf::from("/dev/null"));
    let canonical_log = std::fs::canonicalize(&log_path).unwrap();
    assert_eq!(std::fs::read_link(format!("/proc/{pid}/fd/1")).unwrap(), canonical_log);
    assert_eq!(std::fs::read_link(format!("/proc/{pid}/fd/2")).unwrap(), canonical_log);
    drop(agent);
}

// ------------------------------------------------------------------------------------------
// 2. crash: immediate first restart, then backoff

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_worker_is_restarted_at_once_then_backs_off() {
    let case = Case::shared("crash", "\n[restart]\nbackoff_initial_ms = 2000\n");
    let reaper = Reaper::new(case.local().join("workers"));
    let zk = zk_client(&shared_zk().connect_string()).await;
    let topology = "t-crash";
    put_json(&zk, &case.assignment_path(topology), &case.assignment(topology, "crash", &[6700], json!({}))).await;
    let agent = case.start();
    let info_path = case.info_path();
    let log_path = case.worker_log(topology, 6700);

    // Watch SupervisorInfo until it shows the backoff after a crash.
    let mut restarts_seen = Vec::new();
    let (info, _) =
        wait_info(&zk, &info_path, &agent, "state backoff after crashes", Duration::from_secs(30), |v, _| {
            if let Some(pid) = slot_pid(v, 6700) {
                reaper.track(pid);
            }
            slot_state(v, 6700) == Some("backoff")
        })
        .await;
    let entry = slot(&info, 6700).unwrap();
    println!("backoff entry: {entry}");
    assert_eq!(entry["pid"], Value::Null, "no process in backoff: {info}");
    assert!(entry["restarts"].as_u64().unwrap() >= 1, "{info}");
    restarts_seen.push(entry["restarts"].as_u64().unwrap());
    let last_exit = &entry["last_exit"];
    assert_eq!(last_exit["code"], 1, "{info}");
    assert_eq!(last_exit["signal"], Value::Null, "{info}");
    assert_eq!(last_exit["reason"], "exited", "{info}");
    assert!(last_exit["at_ms"].as_u64().is_some(), "{info}");
    assert_eq!(info["used_slots"], json!([6700]), "a slot in backoff is used: {info}");

    // Three generations: the first relaunch is immediate, the next waits (backoff 2000 ms
    // drawn from [1000, 2000]).
    let starts = wait_marks(&log_path, "start", 3, Duration::from_secs(20), &agent);
    let exits = wait_marks(&log_path, "exit", 2, Duration::from_secs(5), &agent);
    for (pid, _) in &starts {
        reaper.track(*pid);
    }
    let first_gap = starts[1].1 as i128 - exits[0].1 as i128;
    let second_gap = starts[2].1 as i128 - exits[1].1 as i128;
    println!(
        "exit #1 -> start #2: {:.0} ms (immediate restart); exit #2 -> start #3: {:.0} ms (backoff)",
        first_gap as f64 / 1e6,
        second_gap as f64 / 1e6
    );
    assert!((0..1_000_000_000).contains(&first_gap), "first restart not immediate: {first_gap} ns");
    assert!(second_gap >= 950_000_000, "second restart did not back off: {second_gap} ns");

    let (info, _) = wait_info(&zk, &info_path, &agent, "restarts to grow", Duration::from_secs(20), |v, _| {
        slot(v, 6700).and_then(|w| w["restarts"].as_u64()).is_some_and(|r| r > restarts_seen[0])
    })
    .await;
    println!("restarts {} -> {}", restarts_seen[0], slot(&info, 6700).unwrap()["restarts"]);
    drop(agent);
}

// ------------------------------------------------------------------------------------------
// 3. heartbeat liveness

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_stops_heartbeating_is_killed_and_relaunched() {
    let case = Case::shared("heartbeat", "\n[worker]\nshutdown_grace_secs = 1\n");
    let reaper = Reaper::new(case.local().join("workers"));
    let zk = zk_client(&shared_zk().connect_string()).await;
    let (hung, silent) = ("t-hb", "t-hb-silent");
    let timeouts = json!({"liveness": "heartbeat", "heartbeat_timeout_secs": 3, "start_timeout_secs": 5});
    put_json(&zk, &case.assignment_path(hung), &case.assignment(hung, "heartbeat", &[6700], timeouts)).await;
    // Never heartbeats: killed after start_timeout_secs.
    let never = json!({"liveness": "heartbeat", "heartbeat_timeout_secs": 3, "start_timeout_secs": 2});
    put_json(&zk, &case.assignment_path(silent), &case.assignment(silent, "sleep", &[6701], never)).await;
    let agent = case.start();
    let info_path = case.info_path();

    // 6701 waits for its first heartbeat with a process, then hits the start timeout.
    let (info, _) =
        wait_info(&zk, &info_path, &agent, "6701 waiting for its first heartbeat", Duration::from_secs(30), |v, _| {
            slot_state(v, 6701) == Some("waiting_for_worker_start") && slot_pid(v, 6701).is_some()
        })
        .await;
    reaper.track(slot_pid(&info, 6701).unwrap());

    // 6700 turns running with its first heartbeat.
    let (info, _) = wait_info(&zk, &info_path, &agent, "6700 running", Duration::from_secs(20), |v, _| {
        running_pid(v, 6700).is_some()
    })
    .await;
    let first = running_pid(&info, 6700).unwrap();
    reaper.track(first);

    let (info, _) =
        wait_info(&zk, &info_path, &agent, "6700 killed for heartbeat_timeout", Duration::from_secs(20), |v, _| {
            slot(v, 6700).is_some_and(|w| w["last_exit"]["reason"] == "heartbeat_timeout")
        })
        .await;
    let entry = slot(&info, 6700).unwrap();
    println!("after the heartbeat timeout: {entry}");
    assert_eq!(entry["last_exit"]["signal"], "SIGTERM", "{info}");
    assert_eq!(entry["last_exit"]["code"], Value::Null, "{info}");
    assert!(entry["restarts"].as_u64().unwrap() >= 1, "{info}");
    assert!(!alive(first), "the hung worker {first} is gone");

    let log_path = case.worker_log(hung, 6700);
    let starts = wait_marks(&log_path, "start", 2, Duration::from_secs(10), &agent);
    let hangs = marks(&log_path, "hung");
    for (pid, _) in &starts {
        reaper.track(*pid);
    }
    assert_eq!(starts[0].0, first);
    assert_ne!(starts[1].0, first, "relaunched as a new process");
    // Last touch = `hung` - 0.5 s; the kill comes heartbeat_timeout (3 s) after the last touch.
    let hung_to_relaunch = starts[1].1 - hangs[0].1;
    println!("last heartbeat -> relaunch: {:.0} ms (heartbeat_timeout 3 s)", ms(hung_to_relaunch) + 500.0);
    assert!(hung_to_relaunch >= 2_000_000_000, "killed before the heartbeat timeout: {} ms", ms(hung_to_relaunch));
    assert!(hung_to_relaunch <= 6_500_000_000, "killed too late: {} ms", ms(hung_to_relaunch));

    let (info, _) =
        wait_info(&zk, &info_path, &agent, "6701 killed for start_timeout", Duration::from_secs(20), |v, _| {
            slot(v, 6701).is_some_and(|w| w["last_exit"]["reason"] == "start_timeout")
        })
        .await;
    println!("the silent worker: {}", slot(&info, 6701).unwrap());
    for (pid, _) in marks(&case.worker_log(silent, 6701), "start") {
        reaper.track(pid);
    }
    drop(agent);
}

// ------------------------------------------------------------------------------------------
// 4. changed, then removed assignment: SIGTERM, exit, dir removed

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_or_removed_assignment_stops_its_worker_with_sigterm() {
    let case = Case::shared("remove", "");
    let reaper = Reaper::new(case.local().join("workers"));
    let zk = zk_client(&shared_zk().connect_string()).await;
    let topology = "t-remove";
    let path = case.assignment_path(topology);
    put_json(&zk, &path, &case.assignment(topology, "term", &[6700], json!({}))).await;
    let agent = case.start();
    let info_path = case.info_path();
    let log_path = case.worker_log(topology, 6700);
    let (info, _) = wait_info(&zk, &info_path, &agent, "the worker running", Duration::from_secs(30), |v, _| {
        running_pid(v, 6700).is_some()
    })
    .await;
    let first = running_pid(&info, 6700).unwrap();
    reaper.track(first);
    let first_dir = case.worker_dir(slot(&info, 6700).unwrap()["worker_id"].as_str().unwrap());
    wait_marks(&log_path, "start", 1, Duration::from_secs(10), &agent); // its TERM trap is set

    // A changed launch (env) replaces the worker: SIGTERM first, the new one only after the exit.
    let changed = now_ns();
    let v2 = case.assignment(topology, "term", &[6700], json!({"env": {"WORKER_MODE": "term", "VERSION": "2"}}));
    put_json(&zk, &path, &v2).await;
    let starts = wait_marks(&log_path, "start", 2, Duration::from_secs(15), &agent);
    let term = marks(&log_path, "got TERM");
    reaper.track(starts[1].0);
    assert_eq!(term.first().map(|t| t.0), Some(first), "the old worker got SIGTERM:\n{}", read_log(&log_path));
    assert!(starts[1].1 >= term[0].1, "the new worker started before the old one was stopped");
    println!(
        "assignment changed -> old worker got SIGTERM: {:.0} ms -> new worker started: {:.0} ms",
        ms(term[0].1 - changed),
        ms(starts[1].1 - changed)
    );
    let (info, _) = wait_info(&zk, &info_path, &agent, "the new worker running", Duration::from_secs(10), |v, _| {
        running_pid(v, 6700) == Some(starts[1].0)
    })
    .await;
    println!("after the change: {}", slot(&info, 6700).unwrap());
    assert!(!alive(first));
    wait_for("the old worker dir to be removed", Duration::from_secs(5), || (!first_dir.exists()).then_some(()));

    let pid = starts[1].0;
    let worker_dir = case.worker_dir(slot(&info, 6700).unwrap()["worker_id"].as_str().unwrap());
    assert!(worker_dir.is_dir(), "{} exists while the worker runs", worker_dir.display());
    let deleted = now_ns();
    delete(&zk, &path).await;
    let term = wait_marks(&log_path, "got TERM", 2, Duration::from_secs(15), &agent);
    assert_eq!(term[1].0, pid);
    println!("assignment deleted -> worker got SIGTERM: {:.0} ms", ms(term[1].1 - deleted));
    let gone = wait_gone(pid, Duration::from_secs(10));
    println!("  and its process was gone {gone:?} later");
    let (info, _) = wait_info(&zk, &info_path, &agent, "no workers", Duration::from_secs(15), |v, _| {
        v["workers"] == json!([]) && v["used_slots"] == json!([])
    })
    .await;
    println!("assignment deleted -> SupervisorInfo without workers: {:.0} ms", ms(now_ns() - deleted));
    assert_eq!(info["workers"], json!([]));
    wait_for("the worker dir to be removed", Duration::from_secs(5), || (!worker_dir.exists()).then_some(()));
    assert_eq!(marks(&log_path, "start").len(), 2, "not relaunched:\n{}", read_log(&log_path));
    assert!(!read_log(&log_path).contains("wait ended"), "{}", read_log(&log_path));
    drop(agent);
}

// ------------------------------------------------------------------------------------------
// 5. SIGTERM ignored: SIGKILL after the grace

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_ignoring_sigterm_is_sigkilled_after_the_grace() {
    let case = Case::shared("grace", "\n[worker]\nshutdown_grace_secs = 1\n");
    let reaper = Reaper::new(case.local().join("workers"));
    let zk = zk_client(&shared_zk().connect_string()).await;
    let topology = "t-grace";
    put_json(&zk, &case.assignment_path(topology), &case.assignment(topology, "ignore_term", &[6700], json!({}))).await;
    let agent = case.start();
    let info_path = case.info_path();
    let (info, _) = wait_info(&zk, &info_path, &agent, "the worker running", Duration::from_secs(30), |v, _| {
        running_pid(v, 6700).is_some()
    })
    .await;
    let pid = running_pid(&info, 6700).unwrap();
    reaper.track(pid);
    wait_marks(&case.worker_log(topology, 6700), "start", 1, Duration::from_secs(10), &agent);

    let deleted = SystemTime::now();
    delete(&zk, &case.assignment_path(topology)).await;
    // The slot reports `kill` while the SIGTERMed worker keeps running.
    wait_info(&zk, &info_path, &agent, "slot 6700 in state kill", Duration::from_secs(10), |v, _| {
        slot_state(v, 6700) == Some("kill") && slot_pid(v, 6700) == Some(pid)
    })
    .await;
    let kill_seen = deleted.elapsed().unwrap();
    assert!(alive(pid), "SIGTERM is ignored: the worker is still running {kill_seen:?} after the delete");
    wait_gone(pid, Duration::from_secs(10));
    let gone = deleted.elapsed().unwrap();
    println!("assignment deleted -> state kill seen after {kill_seen:?} -> process gone after {gone:?} (grace 1 s)");
    assert!(gone >= Duration::from_millis(900), "killed before the grace ran out: {gone:?}");
    assert!(gone <= Duration::from_secs(3), "not SIGKILLed within grace + 2 s: {gone:?}");
    assert!(agent.log_text().contains("SIGKILL"), "{}", agent.log_text());
    wait_info(&zk, &info_path, &agent, "no workers", Duration::from_secs(10), |v, _| v["workers"] == json!([])).await;
    drop(agent);
}

// ------------------------------------------------------------------------------------------
// 6. adoption after an agent crash

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_survive_an_agent_sigkill_and_are_adopted_without_a_relaunch() {
    let case = Case::shared("adopt", "");
    let reaper = Reaper::new(case.local().join("workers"));
    let zk = zk_client(&shared_zk().connect_string()).await;
    let topology = "t-adopt";
    put_json(&zk, &case.assignment_path(topology), &case.assignment(topology, "sleep", &[6700, 6701], json!({}))).await;
    let mut agent = case.start();
    let info_path = case.info_path();
    let (info, old) = wait_info(&zk, &info_path, &agent, "both workers running", Duration::from_secs(30), |v, _| {
        running_pid(v, 6700).is_some() && running_pid(v, 6701).is_some()
    })
    .await;
    let pids = [running_pid(&info, 6700).unwrap(), running_pid(&info, 6701).unwrap()];
    pids.iter().for_each(|p| reaper.track(*p));
    let logs = [case.worker_log(topology, 6700), case.worker_log(topology, 6701)];
    for log in &logs {
        wait_marks(log, "start", 1, Duration::from_secs(10), &agent);
    }

    agent.signal(Signal::SIGKILL);
    agent.wait_exit_signal();
    assert!(pids.iter().all(|p| alive(*p)), "workers outlive the agent");
    let restarted = SystemTime::now();
    let mut agent = case.start();
    agent.wait_log("state=recovering", Duration::from_secs(10));
    let (info, _) =
        wait_info(&zk, &info_path, &agent, "re-registered with both adopted", Duration::from_secs(30), |v, s| {
            s.ephemeral_owner != old.ephemeral_owner
                && v["state"] == "running"
                && running_pid(v, 6700).is_some()
                && running_pid(v, 6701).is_some()
        })
        .await;
    println!("agent restarted -> re-registered with both workers: {:?}", restarted.elapsed().unwrap());
    assert_eq!([running_pid(&info, 6700).unwrap(), running_pid(&info, 6701).unwrap()], pids, "same processes");
    assert_eq!(slot(&info, 6700).unwrap()["restarts"], 0, "{info}");
    assert_eq!(slot(&info, 6701).unwrap()["restarts"], 0, "{info}");
    assert_eq!(agent.log_text().matches("adopted a worker").count(), 2, "{}", agent.log_text());
    for log in &logs {
        assert_eq!(marks(log, "start").len(), 1, "adopted, never relaunched:\n{}", read_log(log));
    }

    // An adopted worker (not the agent's child) that dies is noticed at once.
    let killed = now_ns();
    kill(Pid::from_raw(pids[0] as i32), Signal::SIGKILL).unwrap();
    let starts = wait_marks(&logs[0], "start", 2, Duration::from_secs(10), &agent);
    reaper.track(starts[1].0);
    let relaunch = starts[1].1.saturating_sub(killed);
    println!("adopted worker SIGKILLed -> relaunched (its start line): {:.0} ms", ms(relaunch));
    assert!(relaunch < 1_000_000_000, "relaunch took {:.0} ms", ms(relaunch));
    let (info, _) = wait_info(&zk, &info_path, &agent, "6700 relaunched", Duration::from_secs(10), |v, _| {
        running_pid(v, 6700).is_some_and(|p| p != pids[0])
    })
    .await;
    println!("killed -> SupervisorInfo shows the new worker: {:.0} ms", ms(now_ns() - killed));
    let entry = slot(&info, 6700).unwrap();
    assert_eq!(entry["restarts"], 1, "{info}");
    assert_eq!(entry["last_exit"]["reason"], "exited", "{info}");
    assert_eq!(running_pid(&info, 6701), Some(pids[1]), "the other worker is untouched: {info}");
    assert_eq!(marks(&logs[1], "start").len(), 1);
    drop(agent);
}

// ------------------------------------------------------------------------------------------
// 7. a recorded pid now used by an unrelated process

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_pid_reused_by_an_unrelated_process_is_never_signalled() {
    use gale::local_state::{LocalAssignmentsKey, LocalState, Workers};
    use gale::supervisor::records::WorkerRecord;

    let case = Case::shared("reuse", "");
    let reaper = Reaper::new(case.local().join("workers"));
    let zk = zk_client(&shared_zk().connect_string()).await;
    let topology = "t-reuse";
    put_json(&zk, &case.assignment_path(topology), &case.assignment(topology, "sleep", &[6700], json!({}))).await;
    let mut agent = case.start();
    let info_path = case.info_path();
    let (info, _) = wait_info(&zk, &info_path, &agent, "the worker running", Duration::from_secs(30), |v, _| {
        running_pid(v, 6700).is_some()
    })
    .await;
    let worker_pid = running_pid(&info, 6700).unwrap();
    reaper.track(worker_pid);
    let worker_id = slot(&info, 6700).unwrap()["worker_id"].as_str().unwrap().to_owned();

    // Clean stop (the worker keeps running), then the worker ends while no agent is here and
    // its pid "is reused": the record now names an unrelated process with another start time.
    agent.signal(Signal::SIGTERM);
    assert_eq!(agent.wait_exit(Duration::from_secs(15)), 0, "{}", agent.log_text());
    assert!(alive(worker_pid));
    kill(Pid::from_raw(worker_pid as i32), Signal::SIGKILL).unwrap();
    wait_gone(worker_pid, Duration::from_secs(5));
    // With the assignment gone, a wrongly adopted worker would be stopped at the first sync.
    delete(&zk, &case.assignment_path(topology)).await;

    let mut strangers: Vec<std::process::Child> =
        (0..2).map(|_| std::process::Command::new("/bin/sleep").arg("1000").spawn().unwrap()).collect();
    let stranger_pids: Vec<u32> = strangers.iter().map(std::process::Child::id).collect();
    {
        let mut state = LocalState::open(&case.local().join("state")).unwrap();
        let mut records = state.get::<Workers>().unwrap().expect("workers are recorded");
        let assigned = state.get::<LocalAssignmentsKey>().unwrap().expect("local assignments are recorded");
        assert_eq!(assigned.get(&6700).map(|j| j.topology_id.as_str()), Some(topology), "{assigned:?}");
        let record = records.get_mut(&worker_id).expect("the worker's record");
        assert_eq!(record.process.pid, worker_pid);
        // Port 6700: its local assignment matches; port 6701: no local assignment at all.
        record.process.pid = stranger_pids[0];
        record.process.start_ticks = start_ticks(stranger_pids[0]) + 7;
        let template = record.clone();
        records.insert(
            "w-stranger".to_owned(),
            WorkerRecord {
                worker_id: "w-stranger".to_owned(),
                port: 6701,
                topology_id: "t-gone".to_owned(),
                process: ProcessIdentity {
                    pid: stranger_pids[1],
                    start_ticks: start_ticks(stranger_pids[1]) + 7,
                    ..template.process
                },
                launched_at_ms: template.launched_at_ms,
                launched_by: template.launched_by.clone(),
                job: template.job.clone(),
            },
        );
        state.put::<Workers>(&records).unwrap();
    }

    let mut agent = case.start();
    wait_info(&zk, &info_path, &agent, "the agent running again", Duration::from_secs(30), |v, _| {
        v["state"] == "running"
    })
    .await;
    agent.wait_log("state=running", Duration::from_secs(10));
    // Give the monitor (1 s) and the sync (2 s) a few rounds to do something wrong.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = agent.log_text();
    for (child, pid) in strangers.iter_mut().zip(&stranger_pids) {
        assert!(child.try_wait().unwrap().is_none() && alive(*pid), "unrelated process {pid} was signalled:\n{log}");
    }
    assert_eq!(log.matches("a recorded worker ended while the agent was down").count(), 2, "{log}");
    assert!(log.contains(&worker_id) && log.contains("w-stranger"), "{log}");
    assert!(!log.contains("adopted a worker"), "{log}");
    assert!(!log.contains("stopping it"), "{log}");
    println!("unrelated processes {stranger_pids:?} untouched; records reported as ended");
    for mut child in strangers {
        let _ = child.kill();
        let _ = child.wait();
    }
    drop(agent);
}

// ------------------------------------------------------------------------------------------
// 8. bad assignments

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_assignments_do_not_disturb_a_running_worker() {
    let case = Case::shared("malformed", "");
    let reaper = Reaper::new(case.local().join("workers"));
    let zk = zk_client(&shared_zk().connect_string()).await;
    let good = "t-good";
    put_json(&zk, &case.assignment_path(good), &case.assignment(good, "sleep", &[6700], json!({}))).await;
    let mut agent = case.start();
    let info_path = case.info_path();
    let (info, _) = wait_info(&zk, &info_path, &agent, "the good worker running", Duration::from_secs(30), |v, _| {
        running_pid(v, 6700).is_some()
    })
    .await;
    let pid = running_pid(&info, 6700).unwrap();
    reaper.track(pid);

    put_raw(&zk, &case.assignment_path("t-notjson"), b"this is { not json").await;
    let mut schema2 = case.assignment("t-schema2", "sleep", &[6701], json!({}));
    schema2["schema"] = json!(2);
    put_json(&zk, &case.assignment_path("t-schema2"), &schema2).await;
    agent.wait_log("t-notjson", Duration::from_secs(15));
    agent.wait_log("t-schema2", Duration::from_secs(15));
    // The running topology's own payload breaks: it keeps its last good version.
    let mentions = |agent: &Agent| agent.log_text().lines().filter(|l| l.contains(good)).count();
    let before = mentions(&agent);
    put_raw(&zk, &case.assignment_path(good), b"{\"schema\": 1, \"topology_id\": ").await;
    wait_for("the broken t-good payload to be reported", Duration::from_secs(15), || {
        (mentions(&agent) > before).then_some(())
    });
    // A marker written last: once it runs, every node above was read.
    let marker = "t-marker";
    put_json(&zk, &case.assignment_path(marker), &case.assignment(marker, "sleep", &[6701], json!({}))).await;
    let (info, _) = wait_info(&zk, &info_path, &agent, "the marker running", Duration::from_secs(20), |v, _| {
        slot(v, 6701).is_some_and(|w| w["topology_id"] == marker) && running_pid(v, 6701).is_some()
    })
    .await;
    reaper.track(running_pid(&info, 6701).unwrap());
    // Two more monitor rounds for anything to go wrong.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (info, _) = read_json(&zk, &info_path).await.unwrap();
    println!("SupervisorInfo workers: {}", info["workers"]);
    assert_eq!(running_pid(&info, 6700), Some(pid), "the good worker keeps running: {info}");
    assert_eq!(slot(&info, 6700).unwrap()["restarts"], 0, "{info}");
    assert_eq!(slot(&info, 6700).unwrap()["topology_id"], good, "{info}");
    assert_eq!(info["used_slots"], json!([6700, 6701]), "{info}");
    assert!(alive(pid));
    assert_eq!(marks(&case.worker_log(good, 6700), "start").len(), 1);
    assert!(!case.worker_log("t-schema2", 6701).exists(), "schema 2 started nothing");
    let log = agent.log_text();
    assert!(log.contains("ignoring an invalid assignment"), "{log}");
    assert!(agent.try_status().is_none(), "the agent keeps running");
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placements_for_other_ports_or_supervisors_start_nothing_and_an_unknown_port_is_reported() {
    let case = Case::shared("placement", "");
    let reaper = Reaper::new(case.local().join("workers"));
    let zk = zk_client(&shared_zk().connect_string()).await;
    let mut agent = case.start();
    let info_path = case.info_path();
    wait_info(&zk, &info_path, &agent, "the agent running", Duration::from_secs(30), |v, _| v["state"] == "running")
        .await;

    put_json(&zk, &case.assignment_path("t-port7000"), &case.assignment("t-port7000", "sleep", &[7000], json!({})))
        .await;
    let mut elsewhere = case.assignment("t-elsewhere", "sleep", &[], json!({}));
    elsewhere["workers"] = json!([{"supervisor_id": "sup-someone-else", "port": 6700}]);
    put_json(&zk, &case.assignment_path("t-elsewhere"), &elsewhere).await;
    let marker = "t-marker";
    put_json(&zk, &case.assignment_path(marker), &case.assignment(marker, "sleep", &[6701], json!({}))).await;
    let (info, _) = wait_info(&zk, &info_path, &agent, "the marker running", Duration::from_secs(20), |v, _| {
        running_pid(v, 6701).is_some()
    })
    .await;
    reaper.track(running_pid(&info, 6701).unwrap());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (info, _) = read_json(&zk, &info_path).await.unwrap();
    println!("SupervisorInfo workers: {}", info["workers"]);
    assert_eq!(info["used_slots"], json!([6701]), "only the marker runs: {info}");
    assert_eq!(info["workers"].as_array().unwrap().len(), 1, "{info}");
    assert!(!case.worker_log("t-port7000", 7000).exists());
    assert!(!case.worker_log("t-elsewhere", 6700).exists());
    assert!(agent.try_status().is_none(), "the agent keeps running");

    // SPEC §3.2: "an unknown port is reported" (§3: log + status + metric). There is no status
    // endpoint yet; the log is the least that must say so.
    let deadline = SystemTime::now() + Duration::from_secs(5);
    let reported = loop {
        let log = agent.log_text();
        let found = log.lines().any(|l| l.contains("t-port7000") && l.contains("7000"));
        if found || SystemTime::now() > deadline {
            break found;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        reported,
        "a placement on port 7000 (not a slot) must be reported; the agent log never mentions it:\n{}",
        agent.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignments_with_invalid_or_mismatched_ids_are_rejected() {
    let case = Case::shared("names", "");
    let reaper = Reaper::new(case.local().join("workers"));
    let zk = zk_client(&shared_zk().connect_string()).await;
    let mut agent = case.start();
    let info_path = case.info_path();
    wait_info(&zk, &info_path, &agent, "the agent running", Duration::from_secs(30), |v, _| v["state"] == "running")
        .await;

    // Node names (and topology ids) outside [A-Za-z0-9][A-Za-z0-9._-]{0,127}, and a payload
    // whose topology_id is not its node's name; all placed on 6700 of this agent.
    for name in ["_bad", "bad~id", "-bad"] {
        put_json(&zk, &case.assignment_path(name), &case.assignment(name, "sleep", &[6700], json!({}))).await;
    }
    put_json(&zk, &case.assignment_path("t-name"), &case.assignment("t-other-name", "sleep", &[6700], json!({}))).await;
    let marker = "t-marker";
    put_json(&zk, &case.assignment_path(marker), &case.assignment(marker, "sleep", &[6701], json!({}))).await;
    let (info, _) = wait_info(&zk, &info_path, &agent, "the marker running", Duration::from_secs(20), |v, _| {
        running_pid(v, 6701).is_some()
    })
    .await;
    reaper.track(running_pid(&info, 6701).unwrap());
    for needle in ["_bad", "bad~id", "-bad", "t-other-name"] {
        agent.wait_log(needle, Duration::from_secs(10));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (info, _) = read_json(&zk, &info_path).await.unwrap();
    println!("SupervisorInfo workers: {}", info["workers"]);
    assert_eq!(info["used_slots"], json!([6701]), "nothing started on 6700: {info}");
    let logs = case.dir().join("logs/workers");
    let started: Vec<String> =
        std::fs::read_dir(&logs).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(started, vec![marker.to_owned()], "worker log dirs");
    assert!(agent.try_status().is_none(), "the agent keeps running");
}

// ------------------------------------------------------------------------------------------
// 9. on_session_loss

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_zookeeper_stop_workers_stops_them_after_the_delay_and_keep_workers_keeps_them() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = ZkServer::standalone(&tmp.path().join("zk"));
    server.wait_serving();
    let connect = server.connect_string();
    let stop =
        Case::new("sl-stop", &connect, 6000, "on_session_loss = \"stop_workers\"\nstop_workers_after_secs = 3", "");
    let keep = Case::new("sl-keep", &connect, 6000, "", "");
    let (stop_reaper, keep_reaper) =
        (Reaper::new(stop.local().join("workers")), Reaper::new(keep.local().join("workers")));
    let topology = "t-session";
    let mut pids = Vec::new();
    let mut agents = Vec::new();
    {
        let zk = zk_client(&connect).await;
        for case in [&stop, &keep] {
            put_json(&zk, &case.assignment_path(topology), &case.assignment(topology, "term", &[6700], json!({})))
                .await;
            agents.push(case.start());
        }
        for (case, agent) in [&stop, &keep].into_iter().zip(&agents) {
            let (info, _) =
                wait_info(&zk, &case.info_path(), agent, "the worker running", Duration::from_secs(30), |v, _| {
                    running_pid(v, 6700).is_some()
                })
                .await;
            pids.push(running_pid(&info, 6700).unwrap());
            wait_marks(&case.worker_log(topology, 6700), "start", 1, Duration::from_secs(10), agent);
        }
    }
    stop_reaper.track(pids[0]);
    keep_reaper.track(pids[1]);

    let killed = now_ns();
    println!("killing zookeeper at {killed}");
    server.kill();
    let stop_log = stop.worker_log(topology, 6700);
    let term = wait_marks(&stop_log, "got TERM", 1, Duration::from_secs(15), &agents[0]);
    let after = term[0].1 - killed;
    println!("zookeeper killed -> stop_workers worker got SIGTERM: {:.0} ms (stop_workers_after_secs 3)", ms(after));
    assert!(after >= 2_800_000_000, "stopped before stop_workers_after_secs: {:.0} ms", ms(after));
    assert!(after <= 8_000_000_000, "stopped too late: {:.0} ms", ms(after));
    wait_gone(pids[0], Duration::from_secs(10));
    for line in agents[0].log_text().lines().filter(|l| l.contains("lost") || l.contains("stopping")) {
        println!("  stop_workers agent: {line}");
    }

    // keep_workers: still running well past the session timeout (6 s) + 5 s.
    let keep_log = keep.worker_log(topology, 6700);
    let until = killed + 11_000_000_000;
    while now_ns() < until {
        assert!(alive(pids[1]), "keep_workers worker died {:.0} ms after zookeeper went", ms(now_ns() - killed));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!read_log(&keep_log).contains("got TERM"), "{}", read_log(&keep_log));
    assert!(agents[1].log_text().contains("zookeeper session lost"), "{}", agents[1].log_text());
    println!("keep_workers worker still running {:.0} ms after zookeeper went", ms(now_ns() - killed));

    // ZooKeeper back: the stop_workers agent applies its assignment again; keep_workers kept its
    // worker (same process, not relaunched).
    server.start();
    server.wait_serving();
    let back = now_ns();
    let starts = wait_marks(&stop_log, "start", 2, Duration::from_secs(30), &agents[0]);
    stop_reaper.track(starts[1].0);
    println!("zookeeper back -> stop_workers worker relaunched: {:.0} ms", ms(starts[1].1.saturating_sub(back)));
    let zk = zk_client(&connect).await;
    let (info, _) =
        wait_info(&zk, &keep.info_path(), &agents[1], "keep_workers re-registered", Duration::from_secs(30), |v, _| {
            v["state"] == "running" && slot(v, 6700).is_some()
        })
        .await;
    assert_eq!(running_pid(&info, 6700), Some(pids[1]), "{info}");
    assert_eq!(marks(&keep_log, "start").len(), 1, "{}", read_log(&keep_log));
    assert!(agents.iter_mut().all(|a| a.try_status().is_none()), "both agents survived the outage");
    drop(agents);
}

// ------------------------------------------------------------------------------------------
// 10. literal braces that validation accepts

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn literal_braces_accepted_by_validation_reach_the_worker_verbatim() {
    let case = Case::shared("braces", "");
    let reaper = Reaper::new(case.local().join("workers"));
    let zk = zk_client(&shared_zk().connect_string()).await;
    let topology = "t-braces";
    let mut assignment = case.assignment(topology, "env", &[6700], json!({}));
    let literal = [r#"{"json": {"n": 1}}"#, "{}", "{ port }"];
    let mut command = vec![json!("/bin/sh"), json!(case.script.to_str().unwrap()), json!("--port={port}")];
    command.extend(literal.iter().map(|a| json!(a)));
    assignment["launch"]["command"] = json!(command);
    // `gale topology submit`'s validation (SPEC §3.2) accepts these as literal text.
    let parsed: gale::model::assignment::Assignment = serde_json::from_value(assignment.clone()).unwrap();
    parsed.validate().expect("validation accepts literal braces");
    put_json(&zk, &case.assignment_path(topology), &assignment).await;
    let agent = case.start();
    let info_path = case.info_path();
    let (info, _) =
        wait_info(&zk, &info_path, &agent, "the worker running or failing", Duration::from_secs(30), |v, _| {
            running_pid(v, 6700).is_some() || slot(v, 6700).is_some_and(|w| w["error"].is_string())
        })
        .await;
    if let Some(pid) = slot_pid(&info, 6700) {
        reaper.track(pid);
    }
    assert!(
        running_pid(&info, 6700).is_some(),
        "an assignment that validation accepts must launch; slot 6700: {}",
        slot(&info, 6700).unwrap()
    );
    let log_path = case.worker_log(topology, 6700);
    wait_for("the worker's argv in its log", Duration::from_secs(10), || {
        read_log(&log_path).contains("to stderr").then_some(())
    });
    let log = read_log(&log_path);
    let args: Vec<&str> = log.lines().filter_map(|l| l.strip_prefix("arg=[")?.strip_suffix(']')).collect();
    assert_eq!(args, [&["--port=6700"][..], &literal[..]].concat(), "{log}");
    drop(agent);
}

// ------------------------------------------------------------------------------------------
// 11. recovery: a live recorded worker that is no longer assigned

/// The agent synced a change (persisted `local-assignments` without the worker's port) and
/// died before stopping the worker. The next agent must stop it the way every stop goes
/// (SPEC §4: SIGTERM, `shutdown_grace_secs`, then SIGKILL), and must not start the port's new
/// job next to it (one process per slot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_worker_that_is_no_longer_assigned_is_stopped_with_the_grace_then_sigkill() {
    use gale::local_state::{LocalAssignmentsKey, LocalState};

    let case = Case::shared("unassigned", "\n[worker]\nshutdown_grace_secs = 1\n");
    let reaper = Reaper::new(case.local().join("workers"));
    let zk = zk_client(&shared_zk().connect_string()).await;
    let (old, new) = ("t-old", "t-new");
    put_json(&zk, &case.assignment_path(old), &case.assignment(old, "ignore_term", &[6700], json!({}))).await;
    let mut agent = case.start();
    let info_path = case.info_path();
    let (info, _) = wait_info(&zk, &info_path, &agent, "the old worker running", Duration::from_secs(30), |v, _| {
        running_pid(v, 6700).is_some()
    })
    .await;
    let pid = running_pid(&info, 6700).unwrap();
    reaper.track(pid);
    wait_marks(&case.worker_log(old, 6700), "start", 1, Duration::from_secs(10), &agent);

    agent.signal(Signal::SIGKILL);
    agent.wait_exit_signal();
    delete(&zk, &case.assignment_path(old)).await;
    put_json(&zk, &case.assignment_path(new), &case.assignment(new, "sleep", &[6700], json!({}))).await;
    {
        let mut state = LocalState::open(&case.local().join("state")).unwrap();
        let mut assigned = state.get::<LocalAssignmentsKey>().unwrap().expect("local assignments");
        assert!(assigned.remove(&6700).is_some(), "{assigned:?}");
        state.put::<LocalAssignmentsKey>(&assigned).unwrap();
    }

    let restarted = now_ns();
    let agent = case.start();
    let gone_by = restarted + 6_000_000_000;
    // The last instant the old worker was seen alive: the new one must start after it.
    let mut last_seen_alive = restarted;
    while now_ns() < gone_by {
        let checked = now_ns();
        if !alive(pid) {
            break;
        }
        last_seen_alive = checked;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let new_starts = marks(&case.worker_log(new, 6700), "start");
    new_starts.iter().for_each(|(p, _)| reaper.track(*p));
    assert!(
        !alive(pid),
        "the unassigned worker {pid} (ignoring SIGTERM) still runs {:.0} ms after the agent started with \
         shutdown_grace_secs = 1; workers started for port 6700 meanwhile: {new_starts:?}\nagent log:\n{}",
        ms(now_ns() - restarted),
        agent.log_text()
    );
    let gone = now_ns();
    println!("agent restarted -> unassigned recovered worker gone: {:.0} ms", ms(gone - restarted));
    let starts = wait_marks(&case.worker_log(new, 6700), "start", 1, Duration::from_secs(15), &agent);
    reaper.track(starts[0].0);
    assert!(
        starts[0].1 >= last_seen_alive,
        "port 6700's new worker started while the old one still ran ({:.0} ms before it was last seen alive)",
        ms(last_seen_alive - starts[0].1)
    );
}

// ------------------------------------------------------------------------------------------
// 12. recovery: a worker that died while no agent was running

/// SPEC §3.1: `last_exit.reason` is `lost` for a worker that "vanished while the agent was
/// down"; the slot's job is still assigned, so it is relaunched and the entry says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_died_while_the_agent_was_down_is_relaunched_and_reported_lost() {
    let case = Case::shared("lost", "");
    let reaper = Reaper::new(case.local().join("workers"));
    let zk = zk_client(&shared_zk().connect_string()).await;
    let topology = "t-lost";
    put_json(&zk, &case.assignment_path(topology), &case.assignment(topology, "sleep", &[6700], json!({}))).await;
    let mut agent = case.start();
    let info_path = case.info_path();
    let (info, _) = wait_info(&zk, &info_path, &agent, "the worker running", Duration::from_secs(30), |v, _| {
        running_pid(v, 6700).is_some()
    })
    .await;
    let pid = running_pid(&info, 6700).unwrap();
    reaper.track(pid);
    agent.signal(Signal::SIGTERM);
    assert_eq!(agent.wait_exit(Duration::from_secs(15)), 0, "{}", agent.log_text());
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    wait_gone(pid, Duration::from_secs(5));

    let restarted = now_ns();
    let mut agent = case.start();
    let (info, _) = wait_info(&zk, &info_path, &agent, "a new worker on 6700", Duration::from_secs(30), |v, _| {
        v["state"] == "running" && running_pid(v, 6700).is_some_and(|p| p != pid)
    })
    .await;
    reaper.track(running_pid(&info, 6700).unwrap());
    println!("agent restarted -> lost worker relaunched: {:.0} ms", ms(now_ns() - restarted));
    agent.wait_log("a recorded worker ended while the agent was down", Duration::from_secs(1));
    // Running means spawned; the script's first line may still be on its way.
    let starts = wait_marks(&case.worker_log(topology, 6700), "start", 2, Duration::from_secs(10), &agent);
    assert_eq!(starts.len(), 2, "exactly one relaunch");
    let entry = slot(&info, 6700).unwrap();
    println!("relaunched entry: {entry}");
    assert_eq!(
        entry["last_exit"]["reason"], "lost",
        "SupervisorInfo must say the previous worker vanished while the agent was down: {entry}"
    );
}

// ------------------------------------------------------------------------------------------
// 13. recovery: what the agent knows from before its restart is not thrown away

/// Assigns `topology` (a sleeping worker) to port 6700, waits until it runs, stops the agent
/// cleanly (the worker keeps running) and returns the worker's pid.
async fn run_one_worker_then_stop_the_agent(case: &Case, zk: &zkc::Client, reaper: &Reaper, topology: &str) -> u32 {
    put_json(zk, &case.assignment_path(topology), &case.assignment(topology, "sleep", &[6700], json!({}))).await;
    let mut agent = case.start();
    let (info, _) = wait_info(zk, &case.info_path(), &agent, "running", Duration::from_secs(30), |v, _| {
        running_pid(v, 6700).is_some()
    })
    .await;
    let pid = running_pid(&info, 6700).unwrap();
    reaper.track(pid);
    agent.signal(Signal::SIGTERM);
    assert_eq!(agent.wait_exit(Duration::from_secs(15)), 0);
    assert!(alive(pid), "stopping the agent must not stop its worker");
    pid
}

/// A topology's payload breaks while the agent is down. The new agent has no good version of
/// it in memory, so it must fall back to what it persisted: the adopted worker keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_broken_while_the_agent_was_down_keeps_the_adopted_worker() {
    let case = Case::shared("broken-at-restart", "");
    let reaper = Reaper::new(case.local().join("workers"));
    let zk = zk_client(&shared_zk().connect_string()).await;
    let topology = "t-brk";
    let pid = run_one_worker_then_stop_the_agent(&case, &zk, &reaper, topology).await;
    let info_path = case.info_path();
    put_raw(&zk, &case.assignment_path(topology), b"{\"schema\": 1, \"topology_id\": ").await;

    let mut agent = case.start();
    agent.wait_log("registered and first sync done", Duration::from_secs(30));
    // A few syncs (2 s) and monitor ticks (1 s) in which a wrong decision would show.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(alive(pid), "the adopted worker was stopped:\n{}", agent.log_text());
    let (info, _) =
        wait_info(&zk, &info_path, &agent, "the adopted worker reported", Duration::from_secs(10), |v, _| {
            running_pid(v, 6700) == Some(pid)
        })
        .await;
    println!("still running with the same pid after 5 s: {}", slot(&info, 6700).unwrap());
    assert!(agent.log_text().contains("ignoring an invalid assignment"), "{}", agent.log_text());
}

/// The `workers` records cannot be decoded at start (a damaged or foreign store). The agent
/// must not treat that as "no workers" (its orphan sweep would kill them all): it refuses to
/// start, and the workers keep running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_worker_records_refuse_the_start_and_leave_the_workers_alone() {
    use gale::local_state::{Key, LocalState};
    struct NotWorkerRecords;
    impl Key for NotWorkerRecords {
        const NAME: &'static str = "workers";
        type Value = String;
        type Stored = String;
        fn to_stored(value: &String) -> String {
            value.clone()
        }
        fn from_stored(stored: String) -> String {
            stored
        }
    }
    let case = Case::shared("undecodable-records", "");
    let reaper = Reaper::new(case.local().join("workers"));
    let zk = zk_client(&shared_zk().connect_string()).await;
    let topology = "t-undec";
    let pid = run_one_worker_then_stop_the_agent(&case, &zk, &reaper, topology).await;
    {
        let mut state = LocalState::open(&case.local().join("state")).unwrap();
        state.put::<NotWorkerRecords>(&"not a map of worker records".to_owned()).unwrap();
    }
    let mut agent = case.start();
    assert_eq!(agent.wait_exit(Duration::from_secs(20)), 1, "{}", agent.log_text());
    assert!(agent.log_text().contains("cannot recover the recorded workers"), "{}", agent.log_text());
    assert!(alive(pid), "a worker was killed because its record did not decode");
}

/// A worker that exits on its own and leaves a child behind (in its directory): the child is
/// killed when the agent cleans up after the exit, so the relaunched worker never runs beside
/// leftovers of the previous one. With a cgroup the kill of the exited worker's cgroup finds
/// it; without one (rlimits), a scan of the processes' working directories.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_left_behind_by_an_exited_worker_are_killed() {
    let case = Case::shared("leftovers", "");
    let reaper = Reaper::new(case.local().join("workers"));
    let zk = zk_client(&shared_zk().connect_string()).await;
    let topology = "t-left";
    put_json(&zk, &case.assignment_path(topology), &case.assignment(topology, "leave_child", &[6700], json!({}))).await;
    let mut agent = case.start();
    let log_path = case.worker_log(topology, 6700);
    let child: u32 = wait_for("the first worker's child pid", Duration::from_secs(20), || {
        read_log(&log_path).lines().find_map(|l| l.strip_prefix("child=")?.trim().parse().ok())
    });
    reaper.track(child);
    let exited = now_ns();
    wait_for("the left-behind child to be killed", Duration::from_secs(10), || (!alive(child)).then_some(()));
    println!("left-behind child {child} gone {:.0} ms after its worker started", ms(now_ns() - exited));
    // Logged once the kill is done (with a cgroup: after its removal, which waits for the
    // killed process to be gone), so possibly a moment after the child disappeared.
    agent.wait_log("the exited worker left behind", Duration::from_secs(10));
}

// ------------------------------------------------------------------------------------------
// a reconnect must not silence the assignment watch

/// zookeeper-client 0.11.2 does not set persistent watches again after a reconnect, so an
/// agent that reconnected inside its session saw no assignment change again (the sync timer
/// only checks for created and deleted topologies). The agent now sets its watch again on
/// every reconnect. Found by the ensemble scenario of `tests/faults.rs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_reconnect_inside_the_session_a_changed_assignment_is_still_applied() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = ZkServer::standalone(&tmp.path().join("zk"));
    server.wait_serving();
    let connect = server.connect_string();
    let case = Case::new("reconnect", &connect, 20_000, "", "");
    let reaper = Reaper::new(case.local().join("workers"));
    let topology = "t-reconnect";
    let zk = zk_client(&connect).await;
    let version =
        |v: &str| case.assignment(topology, "sleep", &[6700], json!({"env": {"WORKER_MODE": "sleep", "V": v}}));
    put_json(&zk, &case.assignment_path(topology), &version("1")).await;
    drop(zk);
    let mut agent = case.start();
    let zk = zk_client(&connect).await;
    let (info, stat) = wait_info(&zk, &case.info_path(), &agent, "v1 running", Duration::from_secs(30), |v, _| {
        running_pid(v, 6700).is_some()
    })
    .await;
    let first = running_pid(&info, 6700).unwrap();
    reaper.track(first);
    drop(zk);

    // The server goes away and comes back well inside the 20 s session: same session.
    server.kill();
    std::thread::sleep(Duration::from_secs(2));
    server.start();
    server.wait_serving();
    agent.wait_log("reconnected to zookeeper", Duration::from_secs(30));

    let zk = zk_client(&connect).await;
    put_json(&zk, &case.assignment_path(topology), &version("2")).await;
    let (info, now) = wait_info(
        &zk,
        &case.info_path(),
        &agent,
        "v2 replacing v1 after the reconnect",
        Duration::from_secs(30),
        |v, _| running_pid(v, 6700).is_some_and(|p| p != first),
    )
    .await;
    reaper.track(running_pid(&info, 6700).unwrap());
    assert_eq!(now.ephemeral_owner, stat.ephemeral_owner, "the session survived the reconnect");
    drop(agent);
}
