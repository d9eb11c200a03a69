//! The executor's rules, each proven through the [`FakeProcessControl`] seam on a paused tokio
//! clock: restarts and backoff, the node restart budget, the session-loss policy both ways,
//! adoption at start (live, gone, pid reused), the OOM relabel, stop escalation, that a
//! reload gives the settings a start gives, and what a diagnostics run is about (or why
//! none). A real `LocalState` and blob cache live in a
//! tempdir; no process is started (the real edge is tested with real processes in
//! `worker/tests.rs` and `tests/workers.rs`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal as Sig;
use tokio::sync::{mpsc, watch};

use super::*;
use crate::event::JobHandler;
use crate::lifecycle::Lifecycle;
use crate::local_state::{LocalState, Workers};
use crate::model::assignment::{Launch, LivenessMode};
use crate::model::{ExitReason, SlotStateName as N};
use crate::model::{NodeReport, ZkStatus};
use crate::proc_identity::ProcessIdentity;
use crate::slot::SlotState;
use crate::supervisor::assignments::AssignmentView;
use crate::supervisor::records::{LocalAssignments, PortJob, WorkerRecord};
use crate::worker::exit::ExitReport;
use crate::worker::fake::{FAKE_BOOT_ID, FakeCall, FakeProcessControl};

const A: u16 = 6700;
const B: u16 = 6701;

/// `shutdown_grace` 5 s, backoff 1 s doubling to 60 s, reset after 30 s, budget 100/min.
fn config_text(local: &std::path::Path, extra: &str) -> String {
    format!(
        "[zookeeper]\nservers = [\"127.0.0.1:2181\"]\n{extra}\n\
         [supervisor]\nlocal_dir = \"{0}/local\"\nlog_dir = \"{0}/log\"\nslots = [{A}, {B}]\n\
         [worker]\nshutdown_grace_secs = 5\n\
         [restart]\nbackoff_initial_ms = 1000\nbackoff_max_ms = 60000\nreset_after_secs = 30\n",
        local.display()
    )
}

fn parse(text: &str) -> crate::config::Config {
    crate::config::parse(text, std::path::Path::new("/etc/gale/gale.toml")).unwrap()
}

fn zk(connected: bool) -> ZkStatus {
    ZkStatus {
        state: if connected { "connected" } else { "connecting" },
        session_id: None,
        registered: connected,
        registrations: 1,
        sessions: 1,
    }
}

fn port_job(topology: &str) -> PortJob {
    PortJob {
        topology_id: topology.into(),
        zxid: 0,
        launch: Launch {
            command: vec!["/opt/worker".into()],
            env: BTreeMap::new(),
            liveness: LivenessMode::Process,
            start_timeout_secs: None,
            heartbeat_timeout_secs: None,
            memory_mb: None,
            cpu_percent: None,
            user: None,
        },
        blobs: vec![],
    }
}

/// One executor on a fake, with the ends of its channels.
struct Harness {
    p: Processes,
    fake: Arc<FakeProcessControl>,
    desired: watch::Sender<Option<Arc<AssignmentView>>>,
    zk: watch::Sender<ZkStatus>,
    config: watch::Sender<Arc<crate::config::Config>>,
    generation: u64,
    _keep: (tempfile::TempDir, mpsc::UnboundedSender<crate::admin::control::Request>),
    _outputs: (watch::Receiver<NodeReport>, watch::Receiver<Option<Instant>>, mpsc::Receiver<String>),
}

impl Harness {
    fn new(extra_config: &str) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let config = parse(&config_text(dir.path(), extra_config));
        let local = dir.path().join("local");
        let state = LocalState::open(&local.join("state")).unwrap();
        let lock_path = local.join("lock");
        std::fs::write(&lock_path, "").unwrap();
        let lock_inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&lock_path).unwrap());
        let cache = crate::blob::BlobCache::open(&local.join("blobs"), &local.join("tmp")).unwrap();
        let (desired, desired_rx) = watch::channel(None);
        let (zk, zk_rx) = watch::channel(zk(true));
        let (config_tx, config_rx) = watch::channel(Arc::new(config.clone()));
        let (requests_tx, requests) = mpsc::unbounded_channel();
        let report = NodeReport::new(Lifecycle::Running);
        let (report, report_rx) = watch::channel(report);
        let (deadline, deadline_rx) = watch::channel(None);
        let (hints, hints_rx) = mpsc::channel(16);
        let fake = Arc::new(FakeProcessControl::new());
        let p = Processes::new(
            ProcessConfig::from_config(&config, "sup-1", crate::isolation::Mechanism::Rlimits),
            ProcessLocal {
                state: Arc::new(Mutex::new(state)),
                cache: Arc::new(Mutex::new(cache)),
                dir_check: LocalDirCheck { lock_path, lock_inode, state_dir: local.join("state") },
                drained: false,
            },
            ProcessInputs {
                desired: desired_rx,
                zk_status: zk_rx,
                blob_view: watch::channel(Arc::new(crate::blob::BlobView::default())).1,
                requests,
                health: watch::channel(Default::default()).1,
                config: config_rx,
            },
            ProcessOutputs {
                report: Arc::new(report),
                deadline,
                hints,
                slots: watch::channel(Vec::new()).0,
                drained: watch::channel(false).0,
            },
            crate::event::new_queue("sync-processes"),
            fake.clone(),
        );
        Harness {
            p,
            fake,
            desired,
            zk,
            config: config_tx,
            generation: 0,
            _keep: (dir, requests_tx),
            _outputs: (report_rx, deadline_rx, hints_rx),
        }
    }

    /// A sync read `jobs` (port -> topology): a view of the next generation.
    fn assign(&mut self, jobs: &[(u16, &str)]) {
        self.generation += 1;
        let jobs: LocalAssignments = jobs.iter().map(|(port, t)| (*port, port_job(t))).collect();
        let view = AssignmentView { generation: self.generation, jobs, ..AssignmentView::default() };
        self.desired.send_replace(Some(Arc::new(view)));
    }

    async fn job(&mut self) {
        self.p.run(ProcessJob::Reconcile).await.unwrap();
    }

    /// Lets the watch tasks run until one reported an exit (bounded: fails, never hangs).
    async fn exit_reported(&mut self) {
        self.exits_reported(1).await;
    }

    async fn exits_reported(&mut self, n: usize) {
        for _ in 0..1000 {
            if self.p.events.len() >= n {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("no exit was reported");
    }

    /// `pid` exits with `report`; the job that follows sees it.
    async fn exits(&mut self, pid: u32, report: ExitReport) {
        self.fake.exit(pid, report);
        self.exit_reported().await;
        self.job().await;
    }

    fn state(&self, port: u16) -> N {
        self.p.slots[&port].state_name()
    }

    fn pid(&self, port: u16) -> u32 {
        self.p.slots[&port].worker().expect("a worker runs").pid
    }

    fn worker_id(&self, port: u16) -> String {
        self.p.slots[&port].worker().expect("a worker runs").worker_id.clone()
    }

    fn spawns(&self) -> usize {
        self.fake.spawned().len()
    }

    fn last_exit_reason(&self, port: u16) -> Option<ExitReason> {
        self.p.slots[&port].last_exit.as_ref().map(|e| e.reason)
    }

    /// Records `identity` as a worker of `topology` on `port`, as a previous agent run would.
    fn record(&self, port: u16, worker_id: &str, topology: &str, identity: ProcessIdentity) {
        let record = WorkerRecord {
            worker_id: worker_id.into(),
            port,
            topology_id: topology.into(),
            process: identity,
            launched_at_ms: 1,
            launched_by: Some("test".into()),
            job: port_job(topology),
        };
        let records = BTreeMap::from([(worker_id.to_owned(), record)]);
        self.p.state.lock().unwrap().put::<Workers>(&records).unwrap();
    }
}

const CRASH: ExitReport = ExitReport { code: Some(1), signal: None };

fn identity(pid: u32, start_ticks: u64) -> ProcessIdentity {
    ProcessIdentity { pid, start_ticks, boot_id: FAKE_BOOT_ID.into() }
}

#[tokio::test(start_paused = true)]
async fn the_first_crash_restarts_at_once_later_ones_back_off_and_a_long_run_resets_them() {
    let mut h = Harness::new("");
    h.assign(&[(A, "a")]);
    h.job().await;
    assert_eq!((h.spawns(), h.state(A)), (1, N::Running));

    h.exits(h.pid(A), CRASH).await;
    assert_eq!((h.spawns(), h.state(A)), (2, N::Running), "first crash: relaunched at once");
    assert_eq!(h.last_exit_reason(A), Some(ExitReason::Exited));

    h.exits(h.pid(A), CRASH).await;
    assert_eq!((h.spawns(), h.state(A)), (2, N::Backoff), "second crash: waits");
    tokio::time::advance(Duration::from_millis(400)).await;
    h.job().await;
    assert_eq!(h.spawns(), 2, "the wait is at least half of backoff_initial (1 s)");
    tokio::time::advance(Duration::from_millis(600)).await;
    h.job().await;
    assert_eq!((h.spawns(), h.state(A)), (3, N::Running), "relaunched once backoff_initial passed");

    // Running for reset_after (30 s) forgets the failures: the next crash restarts at once.
    tokio::time::advance(Duration::from_secs(30)).await;
    h.job().await;
    h.exits(h.pid(A), CRASH).await;
    assert_eq!((h.spawns(), h.state(A)), (4, N::Running));
}

#[tokio::test(start_paused = true)]
async fn the_node_restart_budget_defers_relaunches_until_its_window_passes() {
    let mut h = Harness::new("");
    h.p.reconfigure(&parse(
        &config_text(h._keep.0.path(), "")
            .replace("reset_after_secs = 30\n", "reset_after_secs = 30\nnode_budget_per_min = 1\n"),
    ));
    h.assign(&[(A, "a"), (B, "b")]);
    h.job().await;
    assert_eq!(h.spawns(), 2, "first launches are not restarts");
    let deferred = crate::metrics::metrics().restarts_deferred.get();
    h.fake.exit(h.pid(A), CRASH);
    h.fake.exit(h.pid(B), CRASH);
    h.exits_reported(2).await;
    h.job().await;
    assert_eq!(h.spawns(), 3, "one restart fits the budget of 1 per minute");
    // Which exit is seen first is up to the watch tasks: the other one is deferred.
    let deferred_port = if h.state(A) == N::Backoff { A } else { B };
    let mut states = [h.state(A), h.state(B)];
    states.sort_by_key(|s| format!("{s:?}"));
    assert_eq!(states, [N::Backoff, N::Running]);
    assert!(crate::metrics::metrics().restarts_deferred.get() > deferred, "counted in restarts_deferred");

    tokio::time::advance(Duration::from_secs(59)).await;
    h.job().await;
    assert_eq!(h.spawns(), 3, "still within the window");
    tokio::time::advance(Duration::from_secs(1)).await;
    h.job().await;
    assert_eq!((h.spawns(), h.state(deferred_port)), (4, N::Running), "the window passed: relaunched");
}

#[tokio::test(start_paused = true)]
async fn keep_workers_keeps_them_through_a_session_loss() {
    let mut h = Harness::new("on_session_loss = \"keep_workers\"\nstop_workers_after_secs = 10");
    h.assign(&[(A, "a")]);
    h.job().await;
    h.zk.send_replace(zk(false));
    h.job().await;
    tokio::time::advance(Duration::from_secs(3600)).await;
    h.job().await;
    assert_eq!(h.state(A), N::Running);
    assert!(h.fake.signals().is_empty(), "{:?}", h.fake.signals());
}

#[tokio::test(start_paused = true)]
async fn stop_workers_stops_them_after_the_limit_and_relaunches_only_on_a_view_read_after_the_session_came_back() {
    let mut h = Harness::new("on_session_loss = \"stop_workers\"\nstop_workers_after_secs = 10");
    h.assign(&[(A, "a")]);
    h.job().await;
    let pid = h.pid(A);
    h.zk.send_replace(zk(false));
    h.job().await;
    tokio::time::advance(Duration::from_secs(9)).await;
    h.job().await;
    assert!(h.fake.signals().is_empty(), "not before stop_workers_after");
    tokio::time::advance(Duration::from_secs(1)).await;
    h.job().await;
    assert_eq!(h.fake.signals(), vec![(pid, Sig::SIGTERM)]);
    h.exit_reported().await;
    h.job().await;
    assert_eq!((h.state(A), h.spawns()), (N::Empty, 1));

    h.zk.send_replace(zk(true));
    h.job().await;
    assert_eq!(h.spawns(), 1, "the view from before the outage may be stale: nothing relaunched");
    h.assign(&[(A, "a")]);
    h.job().await;
    assert_eq!((h.state(A), h.spawns()), (N::Running, 2), "a view read after the session came back");
}

#[tokio::test(start_paused = true)]
async fn a_recorded_worker_that_still_runs_is_adopted_not_relaunched() {
    let mut h = Harness::new("");
    let old = identity(77, 5);
    h.fake.add_running(old.clone());
    h.record(A, "w-old", "a", old);
    let assigned = LocalAssignments::from([(A, port_job("a"))]);
    h.p.recover(&assigned).await.unwrap();
    h.assign(&[(A, "a")]);
    h.job().await;
    assert_eq!((h.state(A), h.pid(A), h.worker_id(A)), (N::Running, 77, "w-old".to_owned()));
    assert_eq!(h.spawns(), 0);
    assert!(h.fake.calls().contains(&FakeCall::Adopt { pid: 77 }));

    // Its exit comes through the adoption watch: then it is relaunched like any crash.
    h.exits(77, ExitReport::UNKNOWN).await;
    assert_eq!((h.spawns(), h.state(A)), (1, N::Running));
}

#[tokio::test(start_paused = true)]
async fn a_recorded_worker_that_is_gone_is_lost_and_shown_so_when_its_topology_runs_there_again() {
    let mut h = Harness::new("");
    h.record(A, "w-old", "a", identity(77, 5));
    h.p.recover(&LocalAssignments::new()).await.unwrap();
    assert!(!h.fake.calls().iter().any(|c| matches!(c, FakeCall::Adopt { .. } | FakeCall::Signal { .. })));
    h.assign(&[(A, "a")]);
    h.job().await;
    assert_eq!((h.state(A), h.spawns()), (N::Running, 1));
    assert_eq!(h.last_exit_reason(A), Some(ExitReason::Lost));
}

#[tokio::test(start_paused = true)]
async fn a_reused_pid_is_neither_adopted_nor_signalled() {
    let mut h = Harness::new("");
    h.fake.add_running(identity(77, 6));
    h.record(A, "w-old", "a", identity(77, 5));
    h.p.recover(&LocalAssignments::new()).await.unwrap();
    h.job().await;
    assert_eq!(h.state(A), N::Empty);
    assert!(h.fake.signals().is_empty());
    assert!(!h.fake.calls().contains(&FakeCall::Adopt { pid: 77 }));
    assert!(h.fake.is_running(77), "the stranger on that pid runs on");
}

#[tokio::test(start_paused = true)]
async fn a_sigkill_with_an_oom_kill_in_the_cgroup_is_a_memory_limit_exit() {
    let mut h = Harness::new("");
    h.assign(&[(A, "a"), (B, "b")]);
    h.job().await;
    h.fake.set_oom_killed(&h.worker_id(A));
    let killed = ExitReport { code: None, signal: Some(9) };
    h.exits(h.pid(A), killed).await;
    assert_eq!(h.last_exit_reason(A), Some(ExitReason::MemoryLimit));
    h.exits(h.pid(B), killed).await;
    assert_eq!(h.last_exit_reason(B), Some(ExitReason::Exited), "no OOM kill in its cgroup");
    let exit = h.p.slots[&B].last_exit.clone().unwrap();
    assert_eq!(exit.signal.as_deref(), Some("SIGKILL"));
}

#[tokio::test(start_paused = true)]
async fn a_removed_assignment_stops_its_worker_with_sigterm_then_sigkill_after_the_grace() {
    let mut h = Harness::new("");
    h.assign(&[(A, "a")]);
    h.job().await;
    let (pid, worker_id) = (h.pid(A), h.worker_id(A));
    h.fake.ignore_signal(Sig::SIGTERM);
    h.assign(&[]);
    h.job().await;
    assert_eq!(h.fake.signals(), vec![(pid, Sig::SIGTERM)]);
    assert!(matches!(h.p.slots[&A].state, SlotState::Kill { .. }));
    tokio::time::advance(Duration::from_millis(4_900)).await;
    h.job().await;
    assert_eq!(h.fake.signals().len(), 1, "no SIGKILL before shutdown_grace (5 s)");
    tokio::time::advance(Duration::from_millis(100)).await;
    h.job().await;
    let stops: Vec<FakeCall> = h
        .fake
        .calls()
        .into_iter()
        .filter(|c| matches!(c, FakeCall::Signal { .. } | FakeCall::KillCgroup { .. }))
        .collect();
    let want = vec![
        FakeCall::Signal { pid, signal: Sig::SIGTERM },
        FakeCall::Signal { pid, signal: Sig::SIGKILL },
        FakeCall::KillCgroup { worker_id },
    ];
    assert_eq!(stops, want, "SIGTERM, SIGKILL after the grace, then the rest of its cgroup");
    h.exit_reported().await;
    h.job().await;
    assert_eq!((h.state(A), h.spawns()), (N::Empty, 1));
}

#[tokio::test(start_paused = true)]
async fn a_reload_gives_the_settings_a_start_gives() {
    let mut h = Harness::new("");
    let text = config_text(h._keep.0.path(), "on_session_loss = \"stop_workers\"\nstop_workers_after_secs = 42")
        .replace("shutdown_grace_secs = 5", "shutdown_grace_secs = 7\nstart_timeout_secs = 60\nmax_timeout_secs = 90")
        .replace("reset_after_secs = 30", "reset_after_secs = 31\nnode_budget_per_min = 7");
    let reloaded = parse(&text);
    let start = ProcessConfig::from_config(&reloaded, "sup-1", crate::isolation::Mechanism::Rlimits);
    assert_ne!(h.p.config, start, "the test changes something");
    h.config.send_replace(Arc::new(reloaded));
    h.job().await;
    assert_eq!(h.p.config, start);
    assert_eq!(h.p.budget.per_min, 7);
}

#[tokio::test(start_paused = true)]
async fn a_diagnostics_run_is_about_the_proven_worker_of_a_slot_with_a_configured_command() {
    let mut h = Harness::new(
        "[diagnostics]\ntimeout_secs = 7\nmax_output_mb = 2\n[diagnostics.commands]\nst = [\"/bin/cat\", \"/proc/{pid}/status\"]\n",
    );
    h.assign(&[(A, "a")]);
    h.job().await;
    let (pid, worker) = (h.pid(A), h.worker_id(A));
    let request = h.p.diag_request(A, "st").unwrap();
    assert_eq!((request.name.as_str(), request.argv.len()), ("st", 2));
    assert_eq!((request.values.pid, request.values.port, request.values.topology_id.as_str()), (pid, A, "a"));
    assert_eq!(request.values.worker_dir, h.p.worker_dir(&worker));
    assert_eq!(request.diag_dir, h._keep.0.path().join("log/workers/a/6700/diag"));
    assert_eq!((request.timeout, request.max_bytes, request.run_as), (Duration::from_secs(7), 2 << 20, None));

    let refused = |h: &Harness, port, name| h.p.diag_request(port, name).unwrap_err();
    assert_eq!(refused(&h, A, "jstack"), "no diagnostics command `jstack` in [diagnostics.commands] (configured: st)");
    assert_eq!(refused(&h, B, "st"), "no worker runs there");
    assert_eq!(refused(&h, 6999, "st"), "not one of this agent's slots");
    // The process is gone but its exit is not handled yet: its pid proves nothing any more.
    h.fake.exit(pid, CRASH);
    assert_eq!(refused(&h, A, "st"), format!("worker pid {pid} is not provably the recorded process any more"));

    // With none configured, the refusal says so.
    h.p.config.diagnostics.commands.clear();
    let err = refused(&h, A, "st");
    assert!(err.contains("no diagnostics command `st`") && err.contains("none is configured"), "{err}");
}
