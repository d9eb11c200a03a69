//! What each worker uses (issue 16, item 2), through the real binary and real ZooKeeper: a
//! busy worker limited by `cpu_percent` shows its memory, CPU, processes and throttling in
//! `/status`, `gale status`, `/metrics` and SupervisorInfo, with host totals; and use changes
//! alone never make SupervisorInfo be written more than once per `heartbeat_refresh_secs`.

use std::time::Duration;

use tokio::time::Instant;

use crate::common::*;
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(60);

fn get(port: u16, path: &str) -> String {
    let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(5))).build().into();
    agent.get(&format!("http://127.0.0.1:{port}{path}")).call().unwrap().body_mut().read_to_string().unwrap()
}

fn metric(text: &str, sample: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_workers_use_is_shown_everywhere_without_extra_writes() {
    let zks = shared_zk();
    let zk = zk_client(&zks.connect_string()).await;
    let (root, id) = ("/usage", "sup-usage");
    let tmp = tempfile::tempdir().unwrap();
    let mut spec = AgentSpec::new(&zks.connect_string(), root).id(id);
    spec.heartbeat_refresh_secs = 6;
    let config = spec.write(&tmp.path().join("agent"));
    let admin = free_port();
    let toml =
        std::fs::read_to_string(&config).unwrap().replace("listen = \"\"", &format!("listen = \"127.0.0.1:{admin}\""));
    std::fs::write(&config, toml).unwrap();
    let reaper = Reaper::new(tmp.path().join("agent/local/workers"));
    // Two processes, one of them spinning, held to a fifth of a core where a cgroup can.
    let busy = json!(["/bin/sh", "-c", "sleep 1000 & while :; do :; done"]);
    let assignment = json!({"schema": 1, "topology_id": "busy",
        "launch": {"command": busy, "liveness": "process", "cpu_percent": 20, "memory_mb": 256},
        "workers": [{"supervisor_id": id, "port": 6700}]});
    put_json(&zk, &format!("{root}/assignments/busy"), &assignment).await;
    let mut agent = Agent::start(&config);
    let info_path = format!("{root}/supervisors/{id}");
    let (info, _) =
        wait_info(&zk, &info_path, &agent, "a running worker", LONG, |i, _| running_pid(i, 6700).is_some()).await;
    reaper.track(running_pid(&info, 6700).unwrap());

    // /status: the slot's use (a CPU rate needs two samples) and the totals.
    let status: Value = eventually("a CPU rate in /status", LONG, || async {
        let s: Value = serde_json::from_str(&get(admin, "/status")).unwrap();
        (s["slots"][0]["usage"]["cpu_percent"].as_u64() > Some(0)).then_some(s)
    })
    .await;
    let usage = &status["slots"][0]["usage"];
    println!("status usage: {usage}, used: {}", status["used"]);
    assert_eq!(usage["processes"], 2, "{usage}");
    assert!(usage["memory_bytes"].as_u64() > Some(0), "{usage}");
    assert!(usage["cpu_percent"].as_u64() < Some(60), "held near 20 % (or, under rlimits, one core): {usage}");
    assert_eq!(status["used"]["workers"], 1);
    assert_eq!(status["used"]["processes"], 2);
    let cgroups = status["isolation"] != "rlimits";
    if cgroups {
        assert!(usage["cpu_throttled_usec"].as_u64().is_some(), "a cgroup reports throttling: {usage}");
    }

    // gale status: the USE column (memory, CPU, processes) and the totals line.
    let out = gale(&config, &["status"]);
    let table = text(&out.stdout);
    println!("{table}");
    assert!(table.contains("USE (MEM CPU PROCS)"), "{table}");
    let row = table.lines().find(|l| l.starts_with("6700")).unwrap();
    let cells: Vec<&str> = row.split_whitespace().collect();
    let has_use = cells.windows(3).any(|w| {
        w[0].ends_with(['K', 'M', 'G'])
            && w[1].strip_suffix('%').is_some_and(|p| p.parse::<u32>().is_ok())
            && w[2] == "2"
    });
    assert!(has_use, "memory, CPU % and 2 processes: {row}");
    assert!(table.contains("processes in 1 worker(s)"), "{table}");

    // /metrics: per topology and port, cAdvisor's names.
    let labels = "{topology=\"busy\",port=\"6700\"}";
    let m = get(admin, "/metrics");
    assert!(metric(&m, &format!("gale_worker_memory_usage_bytes{labels}")) > Some(0.0), "{m}");
    assert!(metric(&m, &format!("gale_worker_cpu_usage_seconds_total{labels}")) > Some(0.0), "{m}");
    assert_eq!(metric(&m, &format!("gale_worker_processes{labels}")), Some(2.0), "{m}");
    if cgroups {
        eventually("throttled seconds", LONG, || async {
            let m = get(admin, "/metrics");
            (metric(&m, &format!("gale_worker_cpu_cfs_throttled_seconds_total{labels}")) > Some(0.0)).then_some(())
        })
        .await;
    }

    // SupervisorInfo: the use rides along on the refresh write, with the totals.
    let (info, _) = wait_info(&zk, &info_path, &agent, "use in SupervisorInfo", LONG, |i, _| {
        i["workers"][0]["usage"]["processes"] == 2 && i["used"]["processes"] == 2
    })
    .await;
    assert!(info["used"]["memory_bytes"].as_u64() > Some(0), "{info}");
    // The CPU time grows every second; the node is still written only at the refresh.
    let (_, before) = read_json(&zk, &info_path).await.unwrap();
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(15)).await;
    let (_, after) = read_json(&zk, &info_path).await.unwrap();
    let writes = after.version - before.version;
    println!("SupervisorInfo writes in {:?} with heartbeat_refresh_secs = 6: {writes}", start.elapsed());
    assert!(writes <= 3, "{writes} writes in 15 s: use changes alone must not make writes");

    // Gone with the worker.
    delete(&zk, &format!("{root}/assignments/busy")).await;
    eventually("no use once the worker is gone", LONG, || async {
        let s: Value = serde_json::from_str(&get(admin, "/status")).unwrap();
        let m = get(admin, "/metrics");
        (s["used"]["workers"] == 0 && !m.contains("gale_worker_processes{")).then_some(())
    })
    .await;
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(agent.wait_exit(LONG), 0);
}
