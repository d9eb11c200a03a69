//! What one idle agent costs: time from start to registered, resident memory, and the
//! ZooKeeper writes it makes per minute. Prints numbers; asserts nothing.
//!
//!     cargo bench --bench idle_agent              # 125 s window (two refresh periods)
//!     GALE_BENCH_SECS=300 cargo bench --bench idle_agent
//!
//! Runs the release binary with the SPEC defaults for the heartbeat (5 s) and the refresh
//! (60 s) against a private ZooKeeper started here.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, SystemTime};

use common::*;

fn mntr(port: u16, key: &str) -> Option<u64> {
    four_letter(port, "mntr")
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse::<f64>().ok()).map(|v| v as u64))
}

/// Packets ZooKeeper received on the connection of session `sid` (from `cons`).
fn session_packets(port: u16, sid: i64) -> Option<u64> {
    let needle = format!("sid={sid:#x}");
    let cons = four_letter(port, "cons");
    let line = cons.lines().find(|l| l.contains(&needle))?;
    line.split(['(', ',', ')']).find_map(|f| f.strip_prefix("recved=")).and_then(|v| v.parse().ok())
}

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let window = Duration::from_secs(std::env::var("GALE_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(125));
    let tmp = tempfile::tempdir().unwrap();
    let server = ZkServer::standalone(&tmp.path().join("zk"));
    server.wait_serving();
    let mut spec = AgentSpec::new(&server.connect_string(), "/bench").id("bench-idle");
    spec.session_timeout_ms = 20_000;
    spec.heartbeat_secs = 5;
    spec.heartbeat_refresh_secs = 60;
    let config = spec.write(&tmp.path().join("agent"));
    std::fs::write(
        &config,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("sync_secs = 2", "sync_secs = 10")
            .replace("monitor_secs = 1", "monitor_secs = 3")
            .replace("gale=debug,info", "info"),
    )
    .unwrap();

    let zk = zk_client(&server.connect_string()).await;
    let started = SystemTime::now();
    let agent = Agent::start_binary(&config, env!("CARGO_BIN_EXE_gale"));
    let path = "/bench/supervisors/bench-idle";
    let (_, first) =
        eventually("registration", Duration::from_secs(30), || async { zk.get_data(path).await.ok() }).await;
    let registered = started.elapsed().unwrap();
    // Let start-up writes (lifecycle starting -> running) settle before counting.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, settled) = zk.get_data(path).await.unwrap();
    let pid = agent.child.id();
    let updates0 = mntr(server.port, "zk_cnt_updatelatency");
    let packets0 = mntr(server.port, "zk_packets_received").unwrap_or(0);
    let own0 = session_packets(server.port, settled.ephemeral_owner);
    let cpu0 = cpu_ticks(pid);
    let rss_start = rss_kb(pid);
    tokio::time::sleep(window).await;
    let (_, end) = zk.get_data(path).await.unwrap();
    let updates1 = mntr(server.port, "zk_cnt_updatelatency");
    let packets1 = mntr(server.port, "zk_packets_received").unwrap_or(0);
    let own1 = session_packets(server.port, settled.ephemeral_owner);
    let cpu1 = cpu_ticks(pid);
    let minutes = window.as_secs_f64() / 60.0;

    println!("machine: {} cores; build: release", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
    println!("start -> registered: {:.0} ms", registered.as_secs_f64() * 1000.0);
    println!("writes during start-up: {} (node version after 3 s; create counts as version 0)", settled.version);
    println!("RSS idle: {} kB after start, {} kB after {:.0} s", rss_start, rss_kb(pid), window.as_secs_f64());
    println!(
        "SupervisorInfo writes: {} in {:.1} min = {:.2}/min (heartbeat_refresh_secs = 60)",
        end.version - settled.version,
        minutes,
        (end.version - settled.version) as f64 / minutes
    );
    if let (Some(a), Some(b)) = (updates0, updates1) {
        println!("all ZooKeeper updates (mntr zk_cnt_updatelatency): {} = {:.2}/min", b - a, (b - a) as f64 / minutes);
    }
    println!(
        "requests+pings received by ZooKeeper (all clients incl. this bench's): {:.1}/min",
        (packets1 - packets0) as f64 / minutes
    );
    if let (Some(a), Some(b)) = (own0, own1) {
        println!("requests+pings from the agent's own session (cons): {:.1}/min", (b - a) as f64 / minutes);
    }
    println!("agent CPU: {} ticks in {:.0} s", cpu1 - cpu0, window.as_secs_f64());
    let _ = first;
    drop(agent);
}
