//! The daemon end to end: the real `gale` binary against a real ZooKeeper.

use std::time::Duration;

use crate::common::*;
use nix::sys::signal::Signal;
use serde_json::Value;

/// Reads `<root>/supervisors/<id>` with an independent session.
async fn read_node(zk: &zookeeper_client::Client, path: &str) -> Option<(Value, zookeeper_client::Stat)> {
    match zk.get_data(path).await {
        Ok((data, stat)) => Some((serde_json::from_slice(&data).expect("node holds JSON"), stat)),
        Err(zookeeper_client::Error::NoNode) => None,
        Err(e) => panic!("reading {path}: {e}"),
    }
}

/// Waits until the agent's node exists with `state: running`; returns its payload and stat.
async fn wait_running(zk: &zookeeper_client::Client, path: &str) -> (Value, zookeeper_client::Stat) {
    eventually(&format!("{path} with state running"), Duration::from_secs(30), || async {
        read_node(zk, path).await.filter(|(v, _)| v["state"] == "running")
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_is_an_ephemeral_node_with_the_spec_payload() {
    let zk_server = shared_zk();
    let tmp = tempfile::tempdir().unwrap();
    let config = AgentSpec::new(&zk_server.connect_string(), "/t-register").id("sup-register").write(tmp.path());
    let started = std::time::SystemTime::now();
    let _agent = Agent::start(&config);
    let zk = zk_client(&zk_server.connect_string()).await;
    let (info, stat) = wait_running(&zk, "/t-register/supervisors/sup-register").await;
    println!("registered and running after {:?}", started.elapsed().unwrap());

    assert_ne!(stat.ephemeral_owner, 0, "the node must be ephemeral");
    assert_ne!(stat.ephemeral_owner, zk.session_id().0, "owned by the agent's session, not ours");
    assert_eq!(info["schema"], 1);
    assert_eq!(info["id"], "sup-register");
    assert!(info["hostname"].as_str().is_some_and(|h| !h.is_empty()), "{info}");
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(info["state"], "running");
    assert!(["healthy", "unhealthy", "unknown"].contains(&info["health"].as_str().unwrap()), "{info}");
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let started_at = info["started_at_ms"].as_u64().expect("started_at_ms is an integer");
    let time = info["time_ms"].as_u64().expect("time_ms is an integer");
    assert!(started_at <= time && time <= now_ms + 1000, "{info}");
    assert_eq!(info["slots"], serde_json::json!([6700, 6701]));
    assert_eq!(info["used_slots"], serde_json::json!([]));
    assert_eq!(info["capacity"], serde_json::json!({"cpu_percent": 400, "memory_mb": 4096}));
    assert_eq!(info["labels"], serde_json::json!({"rack": "r1"}));
    assert_eq!(info["workers"], serde_json::json!([]));

    // Parents are persistent.
    let (_, parent) = zk.get_data("/t-register/supervisors").await.unwrap();
    assert_eq!(parent.ephemeral_owner, 0);

    // Unchanged content is refreshed every heartbeat_refresh_secs (5 s here), not every beat.
    let (_, first) = read_node(&zk, "/t-register/supervisors/sup-register").await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, second) = read_node(&zk, "/t-register/supervisors/sup-register").await.unwrap();
    let (_, later) = eventually("a refresh write", Duration::from_secs(12), || async {
        read_node(&zk, "/t-register/supervisors/sup-register").await.filter(|(_, s)| s.version > second.version)
    })
    .await;
    assert!(second.version <= first.version + 1, "no write per heartbeat: {} -> {}", first.version, second.version);
    assert_eq!(later.ephemeral_owner, stat.ephemeral_owner, "same session throughout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_registration_is_put_back_by_the_watch_even_after_our_own_writes() {
    let zk_server = shared_zk();
    let tmp = tempfile::tempdir().unwrap();
    // No refresh and no sync (whose registration check is the safety net) within the test:
    // only the watch on the node can notice a deletion (an unchanged payload is not written,
    // so no write fails either).
    let mut spec = AgentSpec::new(&zk_server.connect_string(), "/t-rewatch").id("sup-rewatch");
    spec.heartbeat_refresh_secs = 3600;
    let config = spec.write(tmp.path());
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("sync_secs = 2", "sync_secs = 3600")).unwrap();
    let _agent = Agent::start(&config);
    let zk = zk_client(&zk_server.connect_string()).await;
    let path = "/t-rewatch/supervisors/sup-rewatch";
    let (_, stat) = wait_running(&zk, path).await;

    // Our own writes (drain, undrain: the state changes twice) fire the watch too, and must
    // neither use it up nor be taken for someone else's.
    for (args, state) in [(&["drain", "--wait"][..], "draining"), (&["undrain"][..], "running")] {
        expect(&config, args, 0);
        eventually(&format!("{path} with state {state}"), Duration::from_secs(30), || async {
            read_node(&zk, path).await.filter(|(v, _)| v["state"] == state)
        })
        .await;
    }
    for round in 1..=2 {
        zk.delete(path, None).await.unwrap();
        let (info, again) =
            eventually(&format!("{path} created again (round {round})"), Duration::from_secs(30), || async {
                read_node(&zk, path).await
            })
            .await;
        assert_eq!(again.ephemeral_owner, stat.ephemeral_owner, "same session: {info}");
        assert_eq!(info["state"], "running", "{info}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_the_session_at_once_and_the_next_start_is_clean() {
    let zk_server = shared_zk();
    let tmp = tempfile::tempdir().unwrap();
    let config = AgentSpec::new(&zk_server.connect_string(), "/t-sigterm").id("sup-term").write(tmp.path());
    let path = "/t-sigterm/supervisors/sup-term";
    let zk = zk_client(&zk_server.connect_string()).await;

    let mut agent = Agent::start(&config);
    wait_running(&zk, path).await;
    agent.signal(Signal::SIGTERM);
    let signalled = tokio::time::Instant::now();
    eventually("the node to go", Duration::from_secs(5), || async {
        read_node(&zk, path).await.is_none().then_some(())
    })
    .await;
    let gone_after = signalled.elapsed();
    println!("node gone {gone_after:?} after SIGTERM");
    assert!(gone_after < Duration::from_secs(1), "ephemeral node took {gone_after:?} to go");
    assert_eq!(agent.wait_exit(Duration::from_secs(10)), 0, "log:\n{}", agent.log_text());
    assert!(tmp.path().join("local/clean-shutdown").exists(), "clean-shutdown marker written");
    let log = agent.log_text();
    assert!(log.contains("state=stopping"), "{log}");

    // Clean restart: straight to running, never recovering; the marker is consumed.
    let mut agent = Agent::start(&config);
    wait_running(&zk, path).await;
    agent.wait_log("state=running", Duration::from_secs(5));
    assert!(!agent.log_text().contains("state=recovering"), "{}", agent.log_text());
    assert!(!tmp.path().join("local/clean-shutdown").exists(), "marker is consumed at start");

    // SIGKILL: no marker, so the next start goes through recovering. The dead agent's node
    // lives until its session expires; the new agent recognises it as its own and replaces it.
    let (_, old) = read_node(&zk, path).await.unwrap();
    agent.signal(Signal::SIGKILL);
    agent.wait_exit_signal();
    assert!(read_node(&zk, path).await.is_some(), "the killed agent's session still holds the node");
    let restarted = tokio::time::Instant::now();
    let mut agent = Agent::start(&config);
    agent.wait_log("state=recovering", Duration::from_secs(10));
    let (_, new) = eventually("re-registration under a new session", Duration::from_secs(8), || async {
        read_node(&zk, path).await.filter(|(v, s)| s.ephemeral_owner != old.ephemeral_owner && v["state"] == "running")
    })
    .await;
    println!("re-registered {:?} after restart (session timeout 10 s)", restarted.elapsed());
    assert_ne!(new.ephemeral_owner, old.ephemeral_owner);
    agent.wait_log("left by the previous agent on this host, which is no longer running", Duration::from_secs(1));

    // `gale state dump` shows the id and the session ids, daemon up.
    let dump = std::process::Command::new(env!("CARGO_BIN_EXE_gale"))
        .args(["state", "dump", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&dump.stdout);
    assert!(dump.status.success(), "{}", String::from_utf8_lossy(&dump.stderr));
    assert!(text.contains("supervisor-id") && text.contains("sup-term"), "{text}");
    assert!(text.contains("last-session-id"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_on_the_same_local_dir_exits_4() {
    let zk_server = shared_zk();
    let tmp = tempfile::tempdir().unwrap();
    let config = AgentSpec::new(&zk_server.connect_string(), "/t-lock").id("sup-lock").write(tmp.path());
    let zk = zk_client(&zk_server.connect_string()).await;
    let mut first = Agent::start(&config);
    wait_running(&zk, "/t-lock/supervisors/sup-lock").await;

    let mut second = Agent::start(&config);
    assert_eq!(second.wait_exit(Duration::from_secs(10)), 4);
    let log = second.log_text();
    assert!(log.contains("is locked by another gale agent"), "{log}");
    assert!(log.contains(&format!("pid {}", first.child.id())), "{log}");
    assert!(first.try_status().is_none(), "the first agent keeps running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_id_live_elsewhere_exits_4_and_leaves_the_first_alone() {
    let zk_server = shared_zk();
    let tmp = tempfile::tempdir().unwrap();
    let spec = AgentSpec::new(&zk_server.connect_string(), "/t-dup").id("sup-dup");
    let first_cfg = spec.write(&tmp.path().join("a"));
    let second_cfg = spec.write(&tmp.path().join("b"));
    let zk = zk_client(&zk_server.connect_string()).await;
    let mut first = Agent::start(&first_cfg);
    let (_, stat) = wait_running(&zk, "/t-dup/supervisors/sup-dup").await;

    let mut second = Agent::start(&second_cfg);
    assert_eq!(second.wait_exit(Duration::from_secs(20)), 4, "log:\n{}", second.log_text());
    let log = second.log_text();
    assert!(log.contains("another live zookeeper session") && log.contains("cloned disk"), "{log}");

    let (_, after) = read_node(&zk, "/t-dup/supervisors/sup-dup").await.expect("first agent's node stays");
    assert_eq!(after.ephemeral_owner, stat.ephemeral_owner);
    assert!(first.try_status().is_none(), "the first agent keeps running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_session_expiry_the_agent_registers_again_with_the_same_id() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = ZkServer::standalone(&tmp.path().join("zk"));
    server.wait_serving();
    let mut spec = AgentSpec::new(&server.connect_string(), "/t-expiry").id("sup-expiry");
    spec.session_timeout_ms = 6000;
    let config = spec.write(&tmp.path().join("agent"));
    let path = "/t-expiry/supervisors/sup-expiry";
    let mut agent = Agent::start(&config);
    let old = {
        let zk = zk_client(&server.connect_string()).await;
        wait_running(&zk, path).await.1
    };

    // Down for longer than 1.4 × the session timeout: the client declares the session expired.
    server.kill();
    tokio::time::sleep(Duration::from_millis(10_000)).await;
    server.start();
    server.wait_serving();
    let back = tokio::time::Instant::now();
    let zk = zk_client(&server.connect_string()).await;
    let (info, new) = eventually("re-registration after expiry", Duration::from_secs(20), || async {
        read_node(&zk, path).await.filter(|(_, s)| s.ephemeral_owner != old.ephemeral_owner)
    })
    .await;
    println!("registered again {:?} after the server came back", back.elapsed());
    assert!(back.elapsed() < Duration::from_secs(15));
    assert_eq!(info["id"], "sup-expiry");
    assert_ne!(new.ephemeral_owner, 0);
    assert!(agent.try_status().is_none(), "the agent survived the outage");
    let log = agent.log_text();
    assert!(log.contains("zookeeper session lost; starting a new one"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_ensemble_leader_keeps_the_registration() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ensemble = Ensemble::start(&tmp.path().join("zk"));
    let mut spec = AgentSpec::new(&ensemble.connect_string(), "/t-ensemble").id("sup-ensemble");
    spec.heartbeat_refresh_secs = 1;
    let config = spec.write(&tmp.path().join("agent"));
    let path = "/t-ensemble/supervisors/sup-ensemble";
    let mut agent = Agent::start(&config);
    let zk = zk_client(&ensemble.connect_string()).await;
    let (_, before) = wait_running(&zk, path).await;
    drop(zk);

    let leader = wait_for("a leader", Duration::from_secs(30), || ensemble.leader());
    println!("killing leader zk{} (port {})", leader + 1, ensemble.servers[leader].port);
    ensemble.servers[leader].kill();
    let survivors: Vec<String> =
        ensemble.servers.iter().enumerate().filter(|(i, _)| *i != leader).map(|(_, s)| s.connect_string()).collect();
    wait_for("a new leader", Duration::from_secs(60), || ensemble.leader());
    let zk = zk_client(&survivors.join(",")).await;
    // The node is kept by the same session and keeps being refreshed (heartbeat every 1 s).
    let (_, after) = eventually("a heartbeat write after failover", Duration::from_secs(30), || async {
        read_node(&zk, path).await.filter(|(_, s)| s.mtime > before.mtime + 2000)
    })
    .await;
    assert_eq!(after.ephemeral_owner, before.ephemeral_owner, "same session: no re-registration");
    assert_eq!(after.czxid, before.czxid, "the node was never re-created");
    let log = agent.log_text();
    assert_eq!(log.matches("registered in zookeeper").count(), 1, "{log}");
    assert!(!log.contains("ERROR"), "{log}");
    assert!(agent.try_status().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_started_before_zookeeper_registers_when_it_comes_and_stops_cleanly_while_it_is_gone() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = ZkServer::standalone_stopped(&tmp.path().join("zk"));
    let config = AgentSpec::new(&server.connect_string(), "/t-late").id("sup-late").write(&tmp.path().join("agent"));
    let mut agent = Agent::start(&config);
    agent.wait_log("cannot connect to zookeeper", Duration::from_secs(10));
    assert!(!agent.log_text().contains("state=running"), "not running without a registration");

    server.start();
    server.wait_serving();
    let zk = zk_client(&server.connect_string()).await;
    wait_running(&zk, "/t-late/supervisors/sup-late").await;
    drop(zk);

    // ZooKeeper goes away; a stop must still be prompt and clean (requests are bounded).
    server.kill();
    agent.wait_log("connection to zookeeper lost", Duration::from_secs(15));
    agent.signal(Signal::SIGTERM);
    let signalled = tokio::time::Instant::now();
    assert_eq!(agent.wait_exit(Duration::from_secs(20)), 0, "log:\n{}", agent.log_text());
    println!("stopped {:?} after SIGTERM with zookeeper down", signalled.elapsed());
    assert!(tmp.path().join("agent/local/clean-shutdown").exists());
}

/// A copy of a running agent's local dir (a cloned disk, a copied directory) carries its
/// session ids. The copy must refuse to start, and must never take the registration from the
/// live original.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_local_dir_refuses_to_start_and_never_steals_the_registration() {
    let zk_server = shared_zk();
    let tmp = tempfile::tempdir().unwrap();
    let spec = AgentSpec::new(&zk_server.connect_string(), "/t-clone");
    let original_cfg = spec.write(&tmp.path().join("a"));
    let zk = zk_client(&zk_server.connect_string()).await;
    let mut original = Agent::start(&original_cfg);
    original.wait_log("registered in zookeeper", Duration::from_secs(20));
    let id = eventually("the generated id in zookeeper", Duration::from_secs(10), || async {
        zk.list_children("/t-clone/supervisors").await.ok().and_then(|c| c.into_iter().next())
    })
    .await;
    let path = format!("/t-clone/supervisors/{id}");
    let (_, before) = wait_running(&zk, &path).await;

    let copy_state = |dir: &str| {
        let dst = tmp.path().join(dir).join("local/state");
        std::fs::create_dir_all(&dst).unwrap();
        for entry in std::fs::read_dir(tmp.path().join("a/local/state")).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
        }
        spec.write(&tmp.path().join(dir))
    };

    // Copied on this host: the recorded agent is provably alive here. Refused at once.
    let mut copy = Agent::start(&copy_state("b"));
    assert_eq!(copy.wait_exit(Duration::from_secs(20)), 4, "log:\n{}", copy.log_text());
    assert!(copy.log_text().contains("cloned disk"), "{}", copy.log_text());

    // Copied to "another machine": the recorded agent's boot is not ours, so nothing can be
    // proven; the copy waits for the session to expire, sees it alive, and refuses.
    let cfg = copy_state("c");
    {
        let mut state = gale::local_state::LocalState::open(&tmp.path().join("c/local/state")).unwrap();
        let mut owner = state.get::<gale::local_state::SessionOwner>().unwrap().expect("owner recorded");
        owner.boot_id = "another-machine".into();
        state.put::<gale::local_state::SessionOwner>(&owner).unwrap();
    }
    let mut copy = Agent::start(&cfg);
    copy.wait_log("waiting for that session to expire", Duration::from_secs(20));
    assert_eq!(copy.wait_exit(Duration::from_secs(40)), 4, "log:\n{}", copy.log_text());
    assert!(copy.log_text().contains("still alive"), "{}", copy.log_text());

    let (info, after) = read_node(&zk, &path).await.expect("the original keeps its registration");
    assert_eq!(after.ephemeral_owner, before.ephemeral_owner, "never replaced");
    assert_eq!(after.czxid, before.czxid, "never re-created");
    assert_eq!(info["state"], "running");
    assert!(original.try_status().is_none(), "the original keeps running");
    assert_eq!(original.log_text().matches("registered in zookeeper").count(), 1, "{}", original.log_text());
}

/// After a reboot (the recorded agent's boot is not this one) nothing proves the old session
/// dead, so the agent waits for it to expire, then registers under the same id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_reboot_the_old_registration_is_waited_out_then_replaced() {
    let zk_server = shared_zk();
    let tmp = tempfile::tempdir().unwrap();
    let mut spec = AgentSpec::new(&zk_server.connect_string(), "/t-reboot").id("sup-reboot");
    spec.session_timeout_ms = 6000;
    let config = spec.write(tmp.path());
    let path = "/t-reboot/supervisors/sup-reboot";
    let zk = zk_client(&zk_server.connect_string()).await;
    let mut agent = Agent::start(&config);
    let (_, old) = wait_running(&zk, path).await;
    agent.signal(Signal::SIGKILL);
    agent.wait_exit_signal();
    {
        let mut state = gale::local_state::LocalState::open(&tmp.path().join("local/state")).unwrap();
        let mut owner = state.get::<gale::local_state::SessionOwner>().unwrap().expect("owner recorded");
        owner.boot_id = "the-boot-before-the-reboot".into();
        state.put::<gale::local_state::SessionOwner>(&owner).unwrap();
    }
    let restarted = tokio::time::Instant::now();
    let mut agent = Agent::start(&config);
    agent.wait_log("waiting for that session to expire", Duration::from_secs(20));
    let (_, new) = eventually("registration after the old session expired", Duration::from_secs(30), || async {
        read_node(&zk, path).await.filter(|(v, s)| s.ephemeral_owner != old.ephemeral_owner && v["state"] == "running")
    })
    .await;
    println!("registered {:?} after restart (old session timeout 6 s)", restarted.elapsed());
    assert_ne!(new.ephemeral_owner, 0);
    assert!(agent.try_status().is_none(), "{}", agent.log_text());
}

/// `logs.format`: "json" is one JSON object per line; "auto" under journald (JOURNAL_STREAM
/// set) is plain lines without timestamps (journald stamps them), elsewhere timestamped text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_formats_json_and_journald_friendly_auto() {
    let zk_server = shared_zk();
    let tmp = tempfile::tempdir().unwrap();
    let with_format = |dir: &str, format: &str| {
        let cfg = AgentSpec::new(&zk_server.connect_string(), &format!("/t-logs-{dir}")).write(&tmp.path().join(dir));
        let text =
            std::fs::read_to_string(&cfg).unwrap().replace("format = \"text\"", &format!("format = \"{format}\""));
        std::fs::write(&cfg, text).unwrap();
        cfg
    };
    let bin = env!("CARGO_BIN_EXE_gale");

    let mut json = Agent::start_with_env(&with_format("json", "json"), bin, &[]);
    json.wait_log("registered in zookeeper", Duration::from_secs(20));
    for line in json.log_text().lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string() && v["message"].is_string(), "{line}");
    }

    let mut journald = Agent::start_with_env(&with_format("journald", "auto"), bin, &[("JOURNAL_STREAM", "8:12345")]);
    journald.wait_log("registered in zookeeper", Duration::from_secs(20));
    for line in journald.log_text().lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        assert!(["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&first), "no timestamp, level first: {line}");
        assert!(!line.contains('\u{1b}'), "no colours: {line}");
    }

    let mut plain = Agent::start_with_env(&with_format("plain", "auto"), bin, &[]);
    plain.wait_log("registered in zookeeper", Duration::from_secs(20));
    let first = plain.log_text().lines().next().unwrap_or("").to_owned();
    assert!(first.starts_with("20") && first.contains('T'), "a timestamp first: {first}");
}

/// The agent's own ZooKeeper read requests (`gale_zk_operations_total`, every result) and its
/// `sync-supervisor` job runs, from `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
struct Reads {
    stat: u64,
    list: u64,
    get: u64,
    runs: u64,
}

impl Reads {
    fn scrape(admin: u16) -> Reads {
        let http: ureq::Agent =
            ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(5))).build().into();
        let text =
            http.get(&format!("http://127.0.0.1:{admin}/metrics")).call().unwrap().body_mut().read_to_string().unwrap();
        let mut reads = Reads::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, value)) = line.rsplit_once(' ') else { continue };
            let value = value.parse::<f64>().unwrap_or(0.0) as u64;
            let op = |op: &str| name.starts_with(&format!("gale_zk_operations_total{{op=\"{op}\","));
            if op("stat") {
                reads.stat += value;
            } else if op("list") {
                reads.list += value;
            } else if op("get") {
                reads.get += value;
            } else if name == "gale_queue_runs_total{queue=\"sync-supervisor\"}" {
                reads.runs = value;
            }
        }
        reads
    }

    fn total(&self) -> u64 {
        self.stat + self.list + self.get
    }

    fn since(&self, earlier: &Reads) -> Reads {
        Reads {
            stat: self.stat - earlier.stat,
            list: self.list - earlier.list,
            get: self.get - earlier.get,
            runs: self.runs - earlier.runs,
        }
    }
}

/// Scale regression (docs/scale.md, "Scaling problems"): topologies that place nothing on this
/// agent must not cost it a read per sync, and a change of one topology must cost one read of
/// that node, not a re-read of every topology. Counts, not times: the agent's own request
/// counters against its `sync-supervisor` job runs (`sync_secs = 2` here). Before the fix, each
/// periodic sync stated every topology (32 reads a run with 30 topologies) and a change of one
/// topology re-listed and re-stated all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_topologies_cost_no_read_per_sync_and_a_change_costs_one_read() {
    const LONG: Duration = Duration::from_secs(90);
    let tmp = tempfile::tempdir().unwrap();
    // Its own server: the restart at the end must not disturb other tests.
    let mut server = ZkServer::standalone(&tmp.path().join("zk"));
    server.wait_serving();
    let (root, id) = ("/t-sync-cost", "sup-cost");
    let zk = zk_client(&server.connect_string()).await;
    let idle = |k: usize, note: &str| {
        serde_json::json!({"schema": 1, "topology_id": format!("idle-{k:02}"), "note": note,
            "launch": {"command": ["/bin/sleep", "1000"], "liveness": "process"},
            "workers": [{"supervisor_id": "sup-elsewhere", "port": 6700}]})
    };
    for k in 0..30 {
        put_json(&zk, &format!("{root}/assignments/idle-{k:02}"), &idle(k, "v1")).await;
    }
    let config = AgentSpec::new(&server.connect_string(), root).id(id).write(&tmp.path().join("agent"));
    let admin = free_port();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("listen = \"\"", &format!("listen = \"127.0.0.1:{admin}\""))).unwrap();
    let agent = Agent::start(&config);
    let info_path = format!("{root}/supervisors/{id}");
    wait_info(&zk, &info_path, &agent, "running", LONG, |i, _| i["state"] == "running").await;
    let after_runs = |from: Reads, n: u64| async move {
        eventually(&format!("{n} more sync-supervisor runs"), LONG, || async {
            let now = Reads::scrape(admin);
            (now.runs >= from.runs + n).then_some(now)
        })
        .await
    };
    // Start-up (two full passes: the registration's and the new watch's) is over.
    let settled = after_runs(Reads::scrape(admin), 2).await;
    assert!(settled.stat >= 30, "the start-up read every topology once: {settled:?}");

    // Several periods with 30 topologies: per sync one stat of `/assignments`, one list of
    // `/actions/<id>` and one stat of our own node (the registration check); nothing per
    // topology. (A job cut by either end of the window: +3.)
    let steady = after_runs(settled, 4).await.since(&settled);
    assert!(steady.total() <= 3 * steady.runs + 3, "reads grow with the topologies: {steady:?}");
    assert_eq!(steady.get, 0, "{steady:?}");

    // 30 more: each is read once, from the watch event (a timer pass that lists at that very
    // moment may read a few twice); then the steady cost is the same as with 30.
    let before = Reads::scrape(admin);
    for k in 30..60 {
        put_json(&zk, &format!("{root}/assignments/idle-{k:02}"), &idle(k, "v1")).await;
    }
    let created = eventually("the 30 new topologies read", LONG, || async {
        let now = Reads::scrape(admin);
        (now.get >= before.get + 30).then_some(now)
    })
    .await;
    let listed = after_runs(created, 2).await;
    let growth = listed.since(&before);
    assert!(growth.stat <= 2 * growth.runs + 1, "a create made the agent stat the others: {growth:?}");
    let steady60 = after_runs(listed, 4).await.since(&listed);
    assert!(steady60.total() <= 3 * steady60.runs + 3, "reads grow with the topologies: {steady60:?}");

    // A data change of one topology: exactly one read, a get of that node.
    let before = Reads::scrape(admin);
    put_json(&zk, &format!("{root}/assignments/idle-07"), &idle(7, "v2")).await;
    eventually("the change logged", LONG, || async {
        agent.log_text().lines().any(|l| l.contains("assignment changed") && l.contains("idle-07")).then_some(())
    })
    .await;
    let change = Reads::scrape(admin).since(&before);
    assert_eq!(change.get, 1, "one get of the changed node: {change:?}");
    assert!(change.stat <= 2 * change.runs + 1, "a change made the agent stat every topology: {change:?}");
    assert!(change.list <= change.runs + 1, "{change:?}");

    // A reconnect (or a new session) is followed by a full pass: events may have been missed.
    let before = Reads::scrape(admin);
    server.kill();
    server.start();
    server.wait_serving();
    let full = eventually("a full pass after the reconnect", LONG, || async {
        let now = Reads::scrape(admin);
        (now.stat >= before.stat + 60).then_some(now)
    })
    .await;
    println!(
        "reads: steady(30) {steady:?}; create 30 {growth:?}; steady(60) {steady60:?}; change {change:?}; reconnect {:?}",
        full.since(&before)
    );
}
