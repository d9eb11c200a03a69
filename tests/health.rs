//! Health checks end to end: real scripts in the agent's `health.script_dir`, the real binary,
//! real ZooKeeper, real workers.

use std::path::Path;
use std::time::Duration;

use crate::common::*;
use serde_json::json;
use zookeeper_client as zkc;

const LONG: Duration = Duration::from_secs(60);

/// Logs its start and exit times (ns) and, with `MODE=crash`, exits after 0.3 s.
const WORKER_SH: &str = r#"echo "start $(date +%s%N)"
case "$MODE" in crash) sleep 0.3; echo "exit $(date +%s%N)"; exit 1;; *) exec /bin/sleep 1000;; esac"#;

struct Case(TestAgent);

impl std::ops::Deref for Case {
    type Target = TestAgent;
    fn deref(&self) -> &TestAgent {
        &self.0
    }
}

impl Case {
    fn new(name: &str, health: &str) -> Case {
        let case = Case(TestAgent::new("h", name));
        case.edit(|text| {
            let text = text.replacen("[health]\n", &format!("[health]\ninterval_secs = 1\n{health}\n"), 1);
            format!("{text}\n[restart]\nbackoff_initial_ms = 30000\n")
        });
        std::fs::create_dir_all(case.path().join("agent/health")).unwrap();
        case
    }

    fn script(&self, name: &str, body: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = self.tmp.path().join("agent/health").join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    async fn assign(&self, zk: &zkc::Client, topology: &str, port: u16, mode: &str) {
        let a = json!({"schema": 1, "topology_id": topology,
            "launch": {"command": ["/bin/sh", "-c", WORKER_SH], "env": {"MODE": mode}, "liveness": "process"},
            "workers": [{"supervisor_id": self.id, "port": port}]});
        put_json(zk, &format!("{}/assignments/{topology}", self.root), &a).await;
    }
}

/// `(word, ns)` marks of a worker log.
fn marks(log: &Path) -> Vec<(String, u128)> {
    read_log(log)
        .lines()
        .filter_map(|l| {
            let (w, t) = l.split_once(' ')?;
            Some((w.to_owned(), t.trim().parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_check_drains_the_node_and_a_fixed_one_brings_the_workers_back() {
    // A hanging check (killed at its 8 s timeout, which does not count against the node) runs
    // on every interval: it must not delay a worker's restart.
    let case = Case::new("drain", "timeout_ms = 8000\nfail_on_timeout = false\non_failure = \"drain\"");
    let reaper = Reaper::new(case.path().join("agent/local/workers"));
    let flag = case.path().join("broken");
    let hang_pid = case.path().join("hang.pid");
    case.script("disk.sh", &format!("if [ -e {} ]; then echo 'ERROR disk full'; else echo ok; fi", flag.display()));
    case.script("hang.sh", &format!("echo $$ > {}\nexec sleep 100", hang_pid.display()));
    let zk = zk_client(&shared_zk().connect_string()).await;
    case.assign(&zk, "steady", 6700, "sleep").await;
    case.assign(&zk, "crashy", 6701, "crash").await;
    let agent = Agent::start(&case.config);
    let info = case
        .wait_info(&zk, &agent, "healthy, 6700 running, 6701 relaunched once", |i| {
            i["health"] == "healthy"
                && running_pid(i, 6700).is_some()
                && slot(i, 6701).is_some_and(|s| s["restarts"].as_u64() >= Some(1))
        })
        .await;
    reaper.track(running_pid(&info, 6700).unwrap());
    // The crash-to-restart gap, while a health check hangs for 8 s.
    let m = marks(&case.worker_log("crashy", 6701));
    let exit = m.iter().find(|(w, _)| w == "exit").map(|(_, t)| *t).expect("an exit");
    let restart = m.iter().filter(|(w, _)| w == "start").map(|(_, t)| *t).find(|t| *t > exit).expect("a restart");
    let gap = Duration::from_nanos((restart - exit) as u64);
    assert!(gap < Duration::from_secs(4), "a hanging health check delayed a restart: {gap:?}");

    // The hanging script is killed at its timeout.
    let pid: u32 = wait_for("hang.sh to start", LONG, || std::fs::read_to_string(&hang_pid).ok()?.trim().parse().ok());
    wait_for("the hanging check to be killed", Duration::from_secs(30), || (!alive(pid)).then_some(()));
    // Done with it: later runs are quick again.
    std::fs::remove_file(case.path().join("agent/health/hang.sh")).unwrap();

    // Failing: workers stopped, SupervisorInfo says unhealthy.
    std::fs::write(&flag, "").unwrap();
    let info = case
        .wait_info(&zk, &agent, "unhealthy and no workers", |i| {
            i["health"] == "unhealthy" && i["workers"].as_array().is_some_and(|w| w.iter().all(|w| w["pid"].is_null()))
        })
        .await;
    assert_eq!(info["state"], json!("running"), "a health drain is not an operator drain");
    assert!(agent.log_text().contains("health checks fail: stopping workers"));
    // Fixed: everything comes back.
    std::fs::remove_file(&flag).unwrap();
    let info = case
        .wait_info(&zk, &agent, "healthy again with the steady worker", |i| {
            i["health"] == "healthy" && running_pid(i, 6700).is_some()
        })
        .await;
    reaper.track(running_pid(&info, 6700).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_failure_exit_stops_the_workers_and_exits_3() {
    let case = Case::new("exit", "timeout_ms = 2000\non_failure = \"exit\"");
    let reaper = Reaper::new(case.path().join("agent/local/workers"));
    let flag = case.path().join("broken");
    case.script("check.sh", &format!("[ ! -e {} ]", flag.display()));
    let zk = zk_client(&shared_zk().connect_string()).await;
    case.assign(&zk, "steady", 6700, "sleep").await;
    let mut agent = Agent::start(&case.config);
    let info = case
        .wait_info(&zk, &agent, "healthy and running", |i| i["health"] == "healthy" && running_pid(i, 6700).is_some())
        .await;
    let pid = running_pid(&info, 6700).unwrap();
    reaper.track(pid);
    std::fs::write(&flag, "").unwrap();
    assert_eq!(agent.wait_exit(LONG), 3, "{}", agent.log_text());
    assert!(!alive(pid), "the worker was stopped before the exit");
    assert!(agent.log_text().contains("health checks failed with on_failure = \"exit\""));
}
