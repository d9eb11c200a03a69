//! Every release's golden local dirs (`tests/fixtures/<release>/`, written by that release's
//! real binary with `scripts/make-fixture.sh`) run under this build: the upgrade of one host,
//! against real ZooKeeper.
//!
//! Each case is copied into a temp dir and started with `gale run` (a config without
//! `supervisor.id`, so the stored one must be used). What the release that wrote it would have
//! done is what this build must do:
//! - `running/`: its recorded workers are long dead, so each is reported `lost` once its
//!   topology runs there again, and relaunched; a port whose topology is no longer in ZooKeeper
//!   gets nothing from its persisted local assignment alone (never act on "nothing read");
//! - `drained/`: the host keeps draining, with its topology assigned;
//! - both: the supervisor id is kept, the earlier session ids are still known after the new
//!   session, and the state is then written in the current format.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;
use gale::local_state::{Drained, EarlierSessionIds, LastSessionId, LocalState, SupervisorId, Workers};
use nix::sys::signal::Signal;
use serde_json::Value;
use zookeeper_client as zkc;

/// The state format this build writes (`local_state::stored::FORMAT_VERSION`).
const CURRENT_FORMAT: u32 = 2;

fn releases() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut releases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    releases.sort();
    assert!(!releases.is_empty(), "no fixtures under {}", dir.display());
    releases
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// One fixture case, copied into a temp dir with a config of its own.
struct Copy {
    tmp: tempfile::TempDir,
    root: String,
    config: PathBuf,
    /// What the release stored, read before this build touches it.
    id: String,
    sessions: Vec<i64>,
}

impl Copy {
    fn new(case_dir: &Path, release: &str, case: &str) -> Copy {
        let tmp = tempfile::Builder::new().prefix(&format!("gale-fixture-{release}-{case}-")).tempdir().unwrap();
        let agent_dir = tmp.path().join("agent");
        copy_dir(&case_dir.join("local"), &agent_dir.join("local"));
        let root = format!("/fixtures-{}-{case}", release.replace('.', "-"));
        let config = AgentSpec::new(&shared_zk().connect_string(), &root).write(&agent_dir);
        let state = LocalState::read_only(&agent_dir.join("local/state")).unwrap().expect("the fixture has a state");
        let id = state.get::<SupervisorId>().unwrap().expect("the fixture has an id");
        let mut sessions: Vec<i64> = state.get::<LastSessionId>().unwrap().into_iter().collect();
        sessions.extend(state.get::<EarlierSessionIds>().unwrap().unwrap_or_default());
        assert!(sessions.len() >= 2, "the fixture has earlier sessions: {sessions:?}");
        Copy { tmp, root, config, id, sessions }
    }

    fn local(&self) -> PathBuf {
        self.tmp.path().join("agent/local")
    }

    fn info_path(&self) -> String {
        format!("{}/supervisors/{}", self.root, self.id)
    }

    /// Puts the fixture's assignment payload of `topology` back into ZooKeeper.
    async fn assign(&self, zk: &zkc::Client, case_dir: &Path, topology: &str) {
        let file = case_dir.join("assignments").join(format!("{topology}.json"));
        let payload: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        put_json(zk, &format!("{}/assignments/{topology}", self.root), &payload).await;
    }

    /// After a clean stop: the newest version is in the current format, keeps the id, and
    /// still knows every session the release recorded (behind the new one).
    fn check_state_after_the_run(&self) -> LocalState {
        let dir = self.local().join("state");
        let newest = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.unwrap().file_name().to_str()?.strip_suffix(".version")?.parse::<u64>().ok())
            .max()
            .unwrap();
        let bytes = std::fs::read(dir.join(newest.to_string())).unwrap();
        assert_eq!(&bytes[..8], b"GALESTAT");
        assert_eq!(
            u32::from_le_bytes(bytes[8..12].try_into().unwrap()),
            CURRENT_FORMAT,
            "written in the current format"
        );
        let state = LocalState::open(&dir).unwrap();
        assert_eq!(state.get::<SupervisorId>().unwrap().as_deref(), Some(self.id.as_str()));
        let earlier = state.get::<EarlierSessionIds>().unwrap().unwrap_or_default();
        for session in &self.sessions {
            assert!(earlier.contains(session), "session {session:x} of the release is still known: {earlier:?}");
        }
        state
    }
}

async fn stop(mut agent: Agent) {
    agent.signal(Signal::SIGTERM);
    assert_eq!(agent.wait_exit(Duration::from_secs(15)), 0, "{}", agent.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_release_running_fixture_reports_its_dead_workers_lost_and_runs_what_zookeeper_assigns() {
    let zk = zk_client(&shared_zk().connect_string()).await;
    for release_dir in releases() {
        let release = release_dir.file_name().unwrap().to_string_lossy().into_owned();
        let case_dir = release_dir.join("running");
        let copy = Copy::new(&case_dir, &release, "running");
        let reaper = Reaper::new(copy.local().join("workers"));
        let recorded = LocalState::read_only(&copy.local().join("state")).unwrap().unwrap().get::<Workers>().unwrap();
        let recorded = recorded.expect("the fixture records workers");
        let old_pids: Vec<u32> = recorded.values().map(|r| r.process.pid).collect();
        assert_eq!(recorded.len(), 2, "{release}: {recorded:?}");

        // Only t-sleep (6700) is still assigned; t-beat (6701) is in the persisted local
        // assignments alone.
        copy.assign(&zk, &case_dir, "t-sleep").await;
        let agent = Agent::start(&copy.config);
        let (info, _) =
            wait_info(&zk, &copy.info_path(), &agent, "6700 relaunched", Duration::from_secs(60), |v, _| {
                v["state"] == "running" && running_pid(v, 6700).is_some()
            })
            .await;
        let pid = running_pid(&info, 6700).unwrap();
        reaper.track(pid);
        assert!(!old_pids.contains(&pid), "{release}: a new worker, not the recorded one");
        let entry = slot(&info, 6700).unwrap();
        assert_eq!(entry["last_exit"]["reason"], "lost", "{release}: {entry}");
        let log = agent.log_text();
        assert_eq!(log.matches("a recorded worker ended while the agent was down").count(), 2, "{release}: {log}");
        // A few syncs: 6701's persisted job alone never starts a worker.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (info, _) = read_json(&zk, &copy.info_path()).await.unwrap();
        assert_eq!(running_pid(&info, 6701), None, "{release}: nothing runs on 6701: {info}");
        stop(agent).await;

        let state = copy.check_state_after_the_run();
        let workers = state.get::<Workers>().unwrap().unwrap();
        let ours: Vec<_> = workers.values().map(|r| (r.port, r.launched_by.as_deref())).collect();
        assert_eq!(ours, [(6700, Some(env!("CARGO_PKG_VERSION")))], "{release}: only the relaunched worker");
        println!("{release}: running fixture upgraded: lost reported, id and sessions kept, format {CURRENT_FORMAT}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_release_drained_fixture_keeps_the_host_draining() {
    let zk = zk_client(&shared_zk().connect_string()).await;
    for release_dir in releases() {
        let release = release_dir.file_name().unwrap().to_string_lossy().into_owned();
        let case_dir = release_dir.join("drained");
        let copy = Copy::new(&case_dir, &release, "drained");
        let reaper = Reaper::new(copy.local().join("workers"));
        copy.assign(&zk, &case_dir, "t-sleep").await;
        copy.assign(&zk, &case_dir, "t-beat").await;
        let agent = Agent::start(&copy.config);
        wait_info(&zk, &copy.info_path(), &agent, "draining", Duration::from_secs(60), |v, _| v["state"] == "draining")
            .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (info, _) = read_json(&zk, &copy.info_path()).await.unwrap();
        for port in [6700, 6701] {
            if let Some(pid) = running_pid(&info, port) {
                reaper.track(pid);
                panic!("{release}: a worker runs on {port} on a drained host: {info}");
            }
        }
        stop(agent).await;
        let state = copy.check_state_after_the_run();
        assert_eq!(state.get::<Drained>().unwrap(), Some(true), "{release}: still drained");
        println!("{release}: drained fixture upgraded: still draining, id and sessions kept, format {CURRENT_FORMAT}");
    }
}
