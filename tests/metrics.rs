//! Metrics coverage: one agent driven through launches, crashes, kills, a deferred restart, a
//! launch failure, blob downloads and hits, a health check, a control request, an action, a
//! reload, log rotation and a ZooKeeper outage; every metric family must be seen to move from
//! the 0 it starts at (and the ones that go back and forth, like the session state, to change
//! between scrapes).
//! Its own ZooKeeper server, so the outage hurts nobody else.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::common::*;
use serde_json::json;
use sha2::{Digest, Sha256};

const LONG: Duration = Duration::from_secs(60);

fn scrape(port: u16) -> BTreeMap<String, f64> {
    let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(5))).build().into();
    let text =
        agent.get(&format!("http://127.0.0.1:{port}/metrics")).call().unwrap().body_mut().read_to_string().unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The family of a sample: its name without labels and the histogram/counter suffixes.
fn family(sample: &str) -> String {
    let name = sample.split('{').next().unwrap();
    for suffix in ["_bucket", "_sum", "_count", "_total", "_created"] {
        if let Some(base) = name.strip_suffix(suffix) {
            return base.to_owned();
        }
    }
    name.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_is_seen_to_move() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = ZkServer::standalone(&tmp.path().join("zk"));
    let zk = zk_client(&server.connect_string()).await;
    let root = "/m";
    let id = "sup-metrics";
    let config = AgentSpec::new(&server.connect_string(), root).id(id).write(&tmp.path().join("agent"));
    let admin = free_port();
    let toml = std::fs::read_to_string(&config)
        .unwrap()
        .replace("listen = \"\"", &format!("listen = \"127.0.0.1:{admin}\""))
        .replacen("[health]\n", "[health]\ninterval_secs = 1\n", 1)
        .replacen("[logs]\n", "[logs]\nworker_log_max_mb = 1\nworker_log_keep = 1\nnode_quota_mb = 2\n", 1);
    std::fs::write(&config, format!("{toml}\n[restart]\nbackoff_initial_ms = 500\nnode_budget_per_min = 3\n")).unwrap();
    let health = tmp.path().join("agent/health");
    std::fs::create_dir_all(&health).unwrap();
    let flag = tmp.path().join("unhealthy");
    {
        use std::os::unix::fs::PermissionsExt;
        let script = health.join("check.sh");
        std::fs::write(&script, format!("#!/bin/sh\n[ ! -e {} ]\n", flag.display())).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let reaper = Reaper::new(tmp.path().join("agent/local/workers"));
    // A little work first, so its CPU time is seen (at /proc's 10 ms resolution on v1 hosts
    // without cpuacct), then sleep.
    let blob = b"#!/bin/sh\ni=0; while [ $i -lt 30000 ]; do i=$((i+1)); done\nexec /bin/sleep 1000\n";
    let blob_path = tmp.path().join("prog");
    std::fs::write(&blob_path, blob).unwrap();
    let sha: String = Sha256::digest(blob).iter().map(|b| format!("{b:02x}")).collect();
    put_json(
        &zk,
        &format!("{root}/blobstore/prog"),
        &json!({"schema": 1, "key": "prog", "version": 1,
        "sha256": sha, "size": blob.len(), "url": format!("file://{}", blob_path.display())}),
    )
    .await;
    let put = |topology: &str, port: u16, command: serde_json::Value, blobs: serde_json::Value| {
        let a = json!({"schema": 1, "topology_id": topology, "launch": {"command": command, "liveness": "process"},
            "blobs": blobs, "workers": [{"supervisor_id": id, "port": port}]});
        let (zk, path) = (&zk, format!("{root}/assignments/{topology}"));
        async move { put_json(zk, &path, &a).await }
    };
    // 6700: from a blob; 6701: the same blob (a cache hit), writing a lot of log, crashing.
    let noisy = "head -c 1500000 /dev/zero | tr '\\0' x; sleep 0.5; exit 1";
    put("blobbed", 6700, json!(["/bin/sh", "{blob:p}"]), json!([{"key": "prog", "name": "p"}])).await;
    put("noisy", 6701, json!(["/bin/sh", "-c", noisy]), json!([{"key": "prog", "name": "p"}])).await;
    let mut agent = Agent::start(&config);
    let info_path = format!("{root}/supervisors/{id}");
    wait_info(&zk, &info_path, &agent, "running", LONG, |i, _| {
        i["state"] == "running" && running_pid(i, 6700).is_some()
    })
    .await;
    let first = scrape(admin);

    // A crash loop on 6701 (exits, restarts, latency, backoff, the budget defers one).
    eventually("restarts and a deferral", LONG, || async {
        let m = scrape(admin);
        (m.get("gale_worker_restarts_deferred_total").copied().unwrap_or(0.0) >= 1.0).then_some(())
    })
    .await;
    // A launch failure: the crash-looping topology now names a program that does not exist.
    put("noisy", 6701, json!(["/nonexistent/program"]), json!([])).await;
    eventually("a launch failure", LONG, || async {
        (scrape(admin).get("gale_worker_launch_failures_total").copied().unwrap_or(0.0) >= 1.0).then_some(())
    })
    .await;
    // Operator: a restart of 6700 (a kill), through the socket; an action; a reload.
    let out = gale(&config, &["worker", "restart", "6700"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    put_json(&zk, &format!("{root}/actions/{id}/a1"), &json!({"schema": 1, "action": "reset_backoff", "port": 6701}))
        .await;
    // An action that does not parse: kept and reported (gale_bad_payloads) until deleted.
    put_raw(&zk, &format!("{root}/actions/{id}/a2"), b"not json").await;
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    // Unhealthy, then healthy again.
    std::fs::write(&flag, "").unwrap();
    wait_info(&zk, &info_path, &agent, "unhealthy", LONG, |i, _| i["health"] == "unhealthy").await;
    let unhealthy = scrape(admin);
    std::fs::remove_file(&flag).unwrap();
    let info = wait_info(&zk, &info_path, &agent, "healthy", LONG, |i, _| {
        i["health"] == "healthy" && running_pid(i, 6700).is_some()
    })
    .await;
    reaper.track(running_pid(&info.0, 6700).unwrap());
    // Coalescing: bursts of `/blobstore` changes ask for blob syncs faster than they run (a
    // request for a job already pending is dropped and counted). The nodes are nobody's blobs.
    eventually("a coalesced request", LONG, || async {
        for n in 0..20 {
            put_json(&zk, &format!("{root}/blobstore/burst-{n}"), &json!({"n": n})).await;
        }
        let m = scrape(admin);
        (m.get("gale_queue_coalesced_total{queue=\"sync-supervisor\"}").copied().unwrap_or(0.0) >= 1.0).then_some(())
    })
    .await;
    // The blob is no longer wanted by anything: with a 0 target it leaves the cache.
    let before_outage = scrape(admin);
    // A ZooKeeper outage: the session state moves and syncs fail.
    server.kill();
    eventually("a failed sync", LONG, || async {
        let m = scrape(admin);
        (m.get("gale_queue_failures_total{queue=\"sync-supervisor\"}").copied().unwrap_or(0.0) >= 1.0).then_some(())
    })
    .await;
    let last = scrape(admin);
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    let _ = agent.wait_exit(Duration::from_secs(30));

    let samples: BTreeSet<&String> = first.keys().chain(last.keys()).chain(unhealthy.keys()).collect();
    let families: BTreeSet<String> = samples.iter().map(|s| family(s)).collect();
    let mut still = Vec::new();
    for fam in &families {
        let moved = samples.iter().filter(|s| family(s) == *fam).any(|s| {
            // Every metric starts at 0 when the agent starts: moving means seen at another value.
            [&first, &unhealthy, &before_outage, &last].iter().any(|m| m.get(*s).copied().unwrap_or(0.0) != 0.0)
        });
        if !moved {
            still.push(fam.clone());
        }
    }
    // The queue depth is 0 between jobs; its move is covered by the unit test on a queue with
    // pending jobs (admin::tests).
    still.retain(|f| f != "gale_queue_depth");
    // No worker here is OOM-killed or throttled while it runs (an OOM kill ends a v2 worker's
    // whole cgroup): those two per-worker series are seen to move in tests/usage.rs and the
    // isolation unit tests.
    still.retain(|f| f != "gale_worker_oom_events" && f != "gale_worker_cpu_cfs_throttled_seconds");
    assert!(still.is_empty(), "metrics never seen to move: {still:?}\nlast scrape: {last:#?}");
    let connected = "gale_zk_session_state{state=\"connected\"}";
    assert_eq!((first.get(connected), last.get(connected)), (Some(&1.0), Some(&0.0)), "the outage shows");
    assert_eq!(unhealthy.get("gale_healthy"), Some(&0.0));
    assert_eq!(before_outage.get("gale_healthy"), Some(&1.0));
    for expected in ["gale_blob_downloads", "gale_worker_kills", "gale_health_check_runs", "gale_control_requests"] {
        assert!(families.contains(expected), "{expected} missing: {families:?}");
    }
}
