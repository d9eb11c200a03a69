//! systemd notification (SPEC §6) against a NOTIFY_SOCKET bound by the test: READY=1 only
//! after registration and the first sync, STATUS= lines, WATCHDOG=1 at half the interval,
//! RELOADING=1 then READY=1 around a reload, STOPPING=1 on SIGTERM. Real binary, real
//! ZooKeeper (its own server, started late on purpose).

use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use nix::sys::signal::Signal;

/// Every datagram received, with when (ms since the socket was bound).
type Received = Arc<Mutex<Vec<(u128, String)>>>;

fn listen(path: &std::path::Path) -> Received {
    let socket = UnixDatagram::bind(path).unwrap();
    let got: Received = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    let start = std::time::SystemTime::now();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = socket.recv(&mut buf) {
            let at = start.elapsed().unwrap().as_millis();
            sink.lock().unwrap().push((at, String::from_utf8_lossy(&buf[..n]).into_owned()));
        }
    });
    got
}

fn lines(got: &Received) -> Vec<(u128, String)> {
    got.lock().unwrap().clone()
}

fn wait_message(got: &Received, what: &str, timeout: Duration) -> (u128, String) {
    wait_for(&format!("a notification with {what}"), timeout, || {
        lines(got).into_iter().find(|(_, m)| m.lines().any(|l| l == what))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_follow_the_lifecycle() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = ZkServer::standalone_stopped(&tmp.path().join("zk"));
    let config = AgentSpec::new(&server.connect_string(), "/n").id("sup-notify").write(&tmp.path().join("agent"));
    let socket = tmp.path().join("notify.sock");
    let got = listen(&socket);
    let mut agent = Agent::start_with_env(
        &config,
        env!("CARGO_BIN_EXE_gale"),
        &[("NOTIFY_SOCKET", socket.to_str().unwrap()), ("WATCHDOG_USEC", "2000000")],
    );
    // ZooKeeper is down: no READY, but the watchdog already pings (the loop is alive).
    std::thread::sleep(Duration::from_secs(3));
    assert!(!lines(&got).iter().any(|(_, m)| m.contains("READY=1")), "READY before registration: {:?}", lines(&got));
    let early_pings = lines(&got).iter().filter(|(_, m)| m.contains("WATCHDOG=1")).count();
    assert!((2..=6).contains(&early_pings), "a ping about every second with WatchdogSec=2: {early_pings}");
    // Not ready yet: each ping also extends systemd's start timeout by WatchdogSec, so a long
    // wait for ZooKeeper is not killed at TimeoutStartSec.
    let extensions = lines(&got).iter().filter(|(_, m)| m.lines().any(|l| l == "EXTEND_TIMEOUT_USEC=2000000")).count();
    assert!(
        extensions >= early_pings - 1,
        "EXTEND_TIMEOUT_USEC=2000000 with each ping before READY: {:?}",
        lines(&got)
    );

    server.start();
    let (ready_at, ready) = wait_message(&got, "READY=1", Duration::from_secs(60));
    assert!(ready.contains("STATUS=running: 0/2 slots used, zk connected"), "{ready}");
    let zk = zk_client(&server.connect_string()).await;
    assert!(read_json(&zk, "/n/supervisors/sup-notify").await.is_some(), "registered before READY");
    assert!(agent.log_text().contains("registered and first sync done"));
    std::thread::sleep(Duration::from_secs(3));
    let late: Vec<_> =
        lines(&got).into_iter().filter(|(at, m)| *at > ready_at && m.contains("EXTEND_TIMEOUT_USEC")).collect();
    assert!(late.is_empty(), "no start timeout extension once ready: {late:?}");

    // A reload: RELOADING=1 (with MONOTONIC_USEC), then READY=1 again.
    agent.signal(Signal::SIGHUP);
    let (reload_at, reloading) = wait_message(&got, "RELOADING=1", Duration::from_secs(20));
    assert!(reload_at > ready_at && reloading.contains("MONOTONIC_USEC="), "{reloading}");
    wait_for("READY=1 after the reload", Duration::from_secs(20), || {
        lines(&got).into_iter().find(|(at, m)| *at >= reload_at && m.contains("READY=1"))
    });

    agent.signal(Signal::SIGTERM);
    assert_eq!(agent.wait_exit(Duration::from_secs(30)), 0);
    wait_message(&got, "STOPPING=1", Duration::from_secs(5));
}
