//! Start-up, in the order that keeps the invariants (see ARCHITECTURE.md):
//!
//! 1. [`open_local`]: lock the local dir (a second agent exits 4), refuse a configured id
//!    that is not the stored one (exit 4, nothing in the dir changed), consume the
//!    clean-shutdown marker, open LocalState, resolve the supervisor id and the hostname;
//! 2. `recovering` if the marker was missing;
//! 3. [`start_membership`]: the task that owns the ZooKeeper session;
//! 4. [`start_executor`]: the `sync-processes` queue's handler, which adopts the recorded
//!    workers BEFORE anything can decide about their ports (refusing to start without its
//!    records rather than sweeping workers that are fine);
//! 5. [`start_sync`]: the `sync-supervisor` queue's handler (assignments, blobs, actions);
//! 6. the tasks that feed both queues (`tasks.rs`) and the admin endpoints;
//! 7. hand over to the main loop, which reports `running` once registered and synced.
//!
//! The channels between the parts are made here, so this file is also where to look for who
//! talks to whom.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use super::assignments::{AssignmentChanges, AssignmentSync, AssignmentView};
use super::bad_payloads::BadPayloads;
use super::blobs;
use super::main_loop::{self, Daemon, Parts, Watches};
use super::processes::{self, LocalDirCheck, ProcessConfig, Processes};
use super::records::LocalAssignments;
use super::stop::Teardown;
use super::{ProcessJob, SupervisorJob};
use super::{RunError, actions, jobs, session_log, tasks};
use crate::admin::BadPayload;
use crate::admin::SlotStatus;
use crate::admin::control::Request;
use crate::blob::BlobView;
use crate::blob::SharedCache;
use crate::cluster::membership::{Identity, Membership, MembershipConfig, MembershipHandles};
use crate::cluster::zk::ConnectOptions;
use crate::config::Config;
use crate::event::{QueueHandle, new_queue, run_queue};
use crate::health::HealthReport;
use crate::isolation::Mechanism;
use crate::lifecycle::{Lifecycle, Systemd};
use crate::local_dir::{LocalDir, PreviousStop};
use crate::local_state::{self, LocalState};
use crate::model::NodeReport;
use crate::model::unix_ms;
use crate::proc_identity::ProcessIdentity;
use crate::shutdown::{Shutdown, Stopper};

/// What the local dir holds and tells at start.
struct Local {
    dir: LocalDir,
    previous: PreviousStop,
    state: Arc<Mutex<LocalState>>,
    id: String,
    hostname: String,
}

/// The executor's channels that others use.
struct ExecutorEnds {
    queue: QueueHandle<ProcessJob>,
    task: tokio::task::JoinHandle<Processes>,
    deadline: watch::Receiver<Option<tokio::time::Instant>>,
    hints: mpsc::Receiver<String>,
    drained: watch::Receiver<bool>,
    slots: watch::Receiver<Vec<SlotStatus>>,
}

/// The `sync-supervisor` side's ends.
struct SyncEnds {
    queue: QueueHandle<SupervisorJob>,
    task: tokio::task::JoinHandle<jobs::SupervisorSync>,
    changes: AssignmentChanges,
    synced: watch::Receiver<u64>,
    /// What its three readers cannot use, for `/status` and the metric.
    bad_payloads: watch::Receiver<BTreeMap<String, BadPayload>>,
}

/// Builds and starts the agent (see the module doc); the main loop takes it from here.
pub(super) async fn start(config: Config) -> Result<(Daemon, Teardown), RunError> {
    let (lifecycle, local) = begin(&config).await?;

    let (report_tx, report_rx) = watch::channel(NodeReport::new(lifecycle));
    let report = Arc::new(report_tx);
    let started_at_ms = unix_ms();
    let (membership_stopper, membership_shutdown) = Stopper::new();
    let (membership, zk) = start_membership(&config, &local, started_at_ms, report_rx, membership_shutdown)?;
    let isolation = detect_isolation(&local.id).await?;
    // Reloaded config reaches its users through this (see `reload.rs`).
    let (config_tx, config_rx) = watch::channel(Arc::new(config.clone()));
    let cache = open_blob_cache(&config, &local.dir).await?;
    let (desired_tx, desired_rx) = watch::channel(None);
    let (blob_view_tx, blob_view_rx) = watch::channel(Arc::new(BlobView::default()));
    let (health_tx, health_rx) = watch::channel(HealthReport::default());
    let (tasks_stopper, shutdown) = Stopper::new();

    let assigned = local.state.lock().unwrap().get::<local_state::LocalAssignmentsKey>()?.unwrap_or_default();
    // Operations (control socket, ZooKeeper actions) for the executor.
    let (ops_tx, ops_rx) = mpsc::unbounded_channel();
    let inputs = processes::ProcessInputs {
        desired: desired_rx.clone(),
        zk_status: zk.status.clone(),
        blob_view: blob_view_rx.clone(),
        requests: ops_rx,
        health: health_rx.clone(),
        config: config_rx.clone(),
    };
    let executor =
        start_executor(&config, &local, &isolation, &assigned, cache.clone(), report.clone(), inputs).await?;
    let (front_tx, front_rx) = mpsc::unbounded_channel::<Request>();
    let sync = start_sync(
        &config,
        &local,
        &zk,
        SyncInputs {
            cache,
            desired_tx,
            desired: desired_rx.clone(),
            blob_view: blob_view_tx,
            config: config_rx.clone(),
            operations: front_tx.clone(),
            assigned,
        },
    );

    let (reload_targets, mut running_tasks) = tasks::spawn(tasks::Feeds {
        config: &config,
        id: &local.id,
        zk: &zk,
        sync_queue: &sync.queue,
        proc_queue: &executor.queue,
        assignment_changes: &sync.changes,
        config_tx,
        deadline: executor.deadline,
        hints: executor.hints,
        desired: desired_rx,
        blob_view: blob_view_rx.clone(),
        health_tx,
        health: health_rx.clone(),
        front: front_rx,
        ops: ops_tx,
        usage: super::usage::Sampler::new(&isolation, &executor.slots, &report),
        shutdown: shutdown.clone(),
    });
    let sources = crate::admin::Sources {
        supervisor_id: local.id.clone(),
        hostname: local.hostname.clone(),
        started_at_ms,
        config: config_rx,
        isolation: isolation.as_str().to_owned(),
        report: report.subscribe(),
        zk: zk.status.clone(),
        slots: executor.slots.clone(),
        health: health_rx.clone(),
        cache: blob_view_rx,
        drained: executor.drained.clone(),
        bad_payloads: sync.bad_payloads,
        queues: vec![queue_probe(&sync.queue), queue_probe(&executor.queue)],
    };
    running_tasks.extend(start_servers(&config, sources, front_tx, shutdown).await?);
    executor.queue.request(ProcessJob::Monitor);

    let watches = Watches {
        session_events: zk.events,
        zk_status: zk.status,
        synced: sync.synced,
        drained: executor.drained,
        health: health_rx,
        slots: executor.slots,
    };
    let daemon = Daemon::new(Parts {
        running: config,
        lifecycle,
        report,
        membership,
        sync_queue: sync.queue.clone(),
        assignment_changes: sync.changes,
        watches,
        reload: reload_targets,
    })?;
    let teardown = Teardown {
        local_dir: local.dir,
        tasks: running_tasks,
        tasks_stopper,
        sync_queue: sync.queue,
        sync_task: sync.task,
        proc_queue: executor.queue,
        proc_task: executor.task,
        membership_stopper,
    };
    Ok((daemon, teardown))
}

/// `starting`, the local dir opened, and `recovering` when the previous agent did not stop
/// cleanly (told to systemd too).
async fn begin(config: &Config) -> Result<(Lifecycle, Local), RunError> {
    let mut lifecycle = Lifecycle::Starting;
    info!(state = %lifecycle, config = %config.path.display(), version = env!("CARGO_PKG_VERSION"), "lifecycle");
    let local = open_local(config).await?;
    if local.previous == PreviousStop::Unclean {
        let why = "no clean-shutdown marker: the previous agent did not stop cleanly";
        lifecycle = main_loop::transition(lifecycle, Lifecycle::Recovering, why);
    }
    Systemd.status(lifecycle.as_str());
    Ok((lifecycle, local))
}

/// Steps 1 of the start: the local dir, its state, who this agent is. The identity is checked
/// between taking the lock and touching anything in the directory, so an agent refused for
/// its id leaves the clean-shutdown marker, `tmp/` and the state as they were.
async fn open_local(config: &Config) -> Result<Local, RunError> {
    let local_dir = config.supervisor.local_dir.clone();
    let dir = LocalDir::lock(&local_dir)?;
    let (state_dir, wanted) = (dir.state_dir(), config.supervisor.id.clone());
    let stored = tokio::task::spawn_blocking(move || match LocalState::read_only(&state_dir)? {
        Some(state) => state.get::<local_state::SupervisorId>(),
        None => Ok(None),
    })
    .await
    .map_err(|e| RunError::Internal(e.to_string()))??;
    check_id(wanted.as_deref(), stored.as_deref(), &local_dir)?;
    let previous = dir.prepare()?;
    let state_dir = dir.state_dir();
    let state = tokio::task::spawn_blocking(move || LocalState::open(&state_dir))
        .await
        .map_err(|e| RunError::Internal(e.to_string()))??;
    let state = Arc::new(Mutex::new(state));
    let id = resolve_id(config, &state).await?;
    let hostname = match &config.supervisor.hostname {
        Some(h) => h.clone(),
        None => nix::unistd::gethostname()
            .map_err(|e| RunError::Internal(format!("cannot read the system hostname: {e}; set supervisor.hostname")))?
            .to_string_lossy()
            .into_owned(),
    };
    info!(id = %id, hostname = %hostname, local_dir = %local_dir.display(), "supervisor identity");
    Ok(Local { dir, previous, state, id, hostname })
}

/// The identity is pinned: a configured `supervisor.id` other than the one the local dir
/// holds is refused (exit 4). Switching would strand the workers: their cgroups are under
/// `gale-<stored id>`, where an agent with another id never looks, and the scheduler still
/// places them on the stored id. `gale state reset-id` is the deliberate way.
fn check_id(configured: Option<&str>, stored: Option<&str>, local_dir: &std::path::Path) -> Result<(), RunError> {
    match (configured, stored) {
        (Some(configured), Some(stored)) if configured != stored => Err(RunError::IdentityChanged {
            configured: configured.to_owned(),
            stored: stored.to_owned(),
            local_dir: local_dir.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// The supervisor id: the one in LocalState, else `supervisor.id` from the config, else a new
/// UUID, persisted before anything uses it. A configured id that differs from the stored one
/// is refused ([`check_id`]; checked before the local dir was prepared, and again here).
async fn resolve_id(config: &Config, state: &Arc<Mutex<LocalState>>) -> Result<String, RunError> {
    let wanted = config.supervisor.id.clone();
    let local_dir = config.supervisor.local_dir.clone();
    let state = state.clone();
    tokio::task::spawn_blocking(move || {
        let mut state = state.lock().unwrap();
        let stored = state.get::<local_state::SupervisorId>()?;
        check_id(wanted.as_deref(), stored.as_deref(), &local_dir)?;
        let id = match (wanted, stored) {
            (_, Some(stored)) => return Ok(stored),
            (Some(wanted), None) => wanted,
            (None, None) => {
                let id = uuid::Uuid::new_v4().to_string();
                info!(id = %id, "first start: generated a supervisor id");
                id
            }
        };
        state.put::<local_state::SupervisorId>(&id)?;
        Ok(id)
    })
    .await
    .map_err(|e| RunError::Internal(e.to_string()))?
}

/// Step 3: the membership task, which owns the ZooKeeper session from here on.
fn start_membership(
    config: &Config,
    local: &Local,
    started_at_ms: u64,
    report: watch::Receiver<NodeReport>,
    shutdown: Shutdown,
) -> Result<
    (tokio::task::JoinHandle<Result<(), crate::cluster::membership::MembershipError>>, MembershipHandles),
    RunError,
> {
    let identity = Identity {
        id: local.id.clone(),
        hostname: local.hostname.clone(),
        slots: config.supervisor.slots.clone(),
        capacity: config.supervisor.capacity,
        labels: config.supervisor.labels.clone(),
        started_at_ms,
    };
    let membership_config = MembershipConfig {
        connect: ConnectOptions::from_config(config)?,
        root: config.zookeeper.root.clone(),
        heartbeat: config.supervisor.heartbeat,
        heartbeat_refresh: config.supervisor.heartbeat_refresh,
    };
    let me = ProcessIdentity::current()
        .map_err(|e| RunError::Internal(format!("cannot read this process's identity from /proc: {e}")))?;
    let previous = session_log::previous_sessions(&local.state.lock().unwrap())?;
    let session_log = Arc::new(session_log::StateSessionLog::new(local.state.clone(), me));
    let (membership, handles) = Membership::new(membership_config, identity, session_log, previous, report, shutdown);
    Ok((tokio::spawn(membership.run()), handles))
}

/// How worker limits are enforced here: cgroup v2, v1, or rlimits (logged with the reason).
/// The workers' parent cgroup is named after this agent: the start-up sweep of cgroups no
/// record names must never reach another agent's workers on the same host.
async fn detect_isolation(id: &str) -> Result<Mechanism, RunError> {
    let cgroup_parent = crate::isolation::parent_name(id);
    let isolation = tokio::task::spawn_blocking(move || crate::isolation::detect(&cgroup_parent))
        .await
        .map_err(|e| RunError::Internal(e.to_string()))?;
    info!(mechanism = isolation.as_str(), "worker isolation");
    crate::isolation::log_birth(&isolation);
    Ok(isolation)
}

/// The blob cache, rebuilt from disk (crash leftovers removed) before any worker is adopted:
/// adopted workers reference the entries they link to.
async fn open_blob_cache(config: &Config, local_dir: &LocalDir) -> Result<SharedCache, RunError> {
    let (root, tmp) = (local_dir.root().join("blobs"), local_dir.tmp_dir());
    let cache = tokio::task::spawn_blocking(move || crate::blob::BlobCache::open(&root, &tmp))
        .await
        .map_err(|e| RunError::Internal(e.to_string()))?
        .map_err(|e| {
            RunError::Internal(format!(
                "cannot open the blob cache {}: {e}",
                config.supervisor.local_dir.join("blobs").display()
            ))
        })?;
    Ok(Arc::new(Mutex::new(cache)))
}

/// Step 4: the executor adopts what kept running while no agent was here, then runs as the
/// `sync-processes` queue's handler.
async fn start_executor(
    config: &Config,
    local: &Local,
    isolation: &Mechanism,
    assigned: &LocalAssignments,
    cache: SharedCache,
    report: Arc<watch::Sender<NodeReport>>,
    inputs: processes::ProcessInputs,
) -> Result<ExecutorEnds, RunError> {
    let (deadline_tx, deadline_rx) = watch::channel(None);
    let (hints_tx, hints_rx) = mpsc::channel::<String>(256);
    let queue = new_queue::<ProcessJob>("sync-processes");
    let drained = local.state.lock().unwrap().get::<local_state::Drained>()?.unwrap_or(false);
    if drained {
        warn!("this host is drained (gale drain): no worker runs until `gale undrain`");
    }
    let (drained_tx, drained_rx) = watch::channel(drained);
    let (slots_tx, slots_rx) = watch::channel(Vec::new());
    let lock_inode =
        local.dir.lock_inode().map_err(|e| RunError::Internal(format!("cannot stat the lock file: {e}")))?;
    let dir_check = LocalDirCheck { lock_path: local.dir.lock_path(), lock_inode, state_dir: local.dir.state_dir() };
    let mut processes = Processes::new(
        ProcessConfig::from_config(config, &local.id, isolation.clone()),
        processes::ProcessLocal { state: local.state.clone(), cache, dir_check, drained },
        inputs,
        processes::ProcessOutputs {
            report,
            deadline: deadline_tx,
            hints: hints_tx,
            slots: slots_tx,
            drained: drained_tx,
        },
        queue.clone(),
        Arc::new(crate::worker::RealProcessControl),
    );
    // Without its records the agent cannot tell its workers from orphans: refuse to start
    // rather than sweep (kill) workers that are fine.
    processes.recover(assigned).await.map_err(|e| {
        RunError::Internal(format!(
            "cannot recover the recorded workers: {e}; refusing to start rather than lose track of running workers \
             (inspect with `gale state dump`)"
        ))
    })?;
    let task = run_queue(&queue, processes);
    Ok(ExecutorEnds { queue, task, deadline: deadline_rx, hints: hints_rx, drained: drained_rx, slots: slots_rx })
}

/// What the `sync-supervisor` side reads and publishes.
struct SyncInputs {
    cache: SharedCache,
    /// Publishes this host's jobs (the assignment sync) ...
    desired_tx: watch::Sender<Option<Arc<AssignmentView>>>,
    /// ... which the blob sync reads.
    desired: watch::Receiver<Option<Arc<AssignmentView>>>,
    blob_view: watch::Sender<Arc<BlobView>>,
    config: watch::Receiver<Arc<Config>>,
    /// ZooKeeper actions become operations for the executor.
    operations: mpsc::UnboundedSender<Request>,
    /// The previous run's `local-assignments`.
    assigned: LocalAssignments,
}

/// Step 5: the `sync-supervisor` queue and its handler.
fn start_sync(config: &Config, local: &Local, zk: &MembershipHandles, inputs: SyncInputs) -> SyncEnds {
    let (synced_tx, synced_rx) = watch::channel(0u64);
    // Where all three readers report the payloads they cannot use.
    let bad_payloads = BadPayloads::default();
    let queue = new_queue::<SupervisorJob>("sync-supervisor");
    let wake: Arc<dyn Fn() + Send + Sync> = {
        let q = queue.clone();
        Arc::new(move || {
            q.request(SupervisorJob::Blobs);
        })
    };
    let blob_config = blobs::BlobSyncConfig {
        root: config.zookeeper.root.clone(),
        tmp: local.dir.tmp_dir(),
        cache_target_bytes: config.blob.cache_target_mb.saturating_mul(1024 * 1024),
        download_timeout: config.blob.download_timeout,
        download_retries: config.blob.download_retries,
        users: crate::worker::users::UserPolicy::from_config(&config.worker),
    };
    let mut blob_sync =
        blobs::BlobSync::new(blob_config, inputs.cache, inputs.desired, inputs.blob_view, wake, bad_payloads.clone());
    blob_sync.follow_config(inputs.config);
    let root = &config.zookeeper.root;
    let (slots, state) = (&config.supervisor.slots, local.state.clone());
    let assignments =
        AssignmentSync::new(root, &local.id, slots, state, inputs.assigned, inputs.desired_tx, bad_payloads.clone());
    // What the `/assignments` watch and the session events tell the assignment sync.
    let changes = assignments.changes();
    let task = run_queue(
        &queue,
        jobs::SupervisorSync {
            membership: zk.commands.clone(),
            zk_status: zk.status.clone(),
            client: zk.client.clone(),
            assignments,
            blobs: blob_sync,
            actions: actions::ActionSync::new(root, &local.id, inputs.operations, bad_payloads.clone()),
            completed: synced_tx,
            timeout: 2 * crate::cluster::zk::OP_TIMEOUT,
        },
    );
    SyncEnds { queue, task, changes, synced: synced_rx, bad_payloads: bad_payloads.subscribe() }
}

/// Step 6: the read-only admin endpoint and the control socket. A port that cannot be bound
/// fails the start (an operator must not think the endpoint is there).
async fn start_servers(
    config: &Config,
    sources: crate::admin::Sources,
    operations: mpsc::UnboundedSender<Request>,
    shutdown: Shutdown,
) -> Result<Vec<tokio::task::JoinHandle<()>>, RunError> {
    let mut servers = Vec::new();
    if let Some(addr) = config.admin.listen {
        let serve = crate::admin::http::bind(addr, sources, shutdown.clone())
            .await
            .map_err(|e| RunError::Internal(format!("cannot listen on admin.listen = {addr}: {e}")))?;
        info!(listen = %addr, "admin endpoint: /live /ready /status /metrics");
        servers.push(tokio::spawn(serve));
    }
    let socket = config.control_socket();
    // Without it the agent still supervises (and ZooKeeper actions still work): say so loudly
    // rather than refuse to run workers over a path problem.
    match crate::admin::control::bind(&socket, operations, shutdown) {
        Ok(serve) => servers.push(tokio::spawn(serve)),
        Err(e) => error!(path = %socket.display(), error = %e,
            "cannot create the control socket; gale worker/drain/undrain will not work on this host"),
    }
    Ok(servers)
}

/// Reads a queue's counters for status and metrics.
fn queue_probe<J: crate::event::Job>(queue: &QueueHandle<J>) -> crate::admin::QueueProbe {
    use std::sync::atomic::Ordering::Relaxed;
    let queue = queue.clone();
    Arc::new(move || {
        let stats = queue.stats();
        crate::admin::QueueDoc {
            name: queue.name().to_owned(),
            depth: queue.depth(),
            runs: stats.runs.load(Relaxed),
            failures: stats.failures.load(Relaxed),
            coalesced: stats.coalesced.load(Relaxed),
            run_seconds_total: stats.run_micros_total.load(Relaxed) as f64 / 1e6,
            last_run_ms: stats.last_run_micros.load(Relaxed) as f64 / 1e3,
            failing: queue.failing().into_iter().map(|(job, e)| (job.to_owned(), e)).collect(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::ExitCode;

    fn config(local: &std::path::Path, id: Option<&str>) -> Config {
        let id = id.map(|id| format!("id = \"{id}\"\n")).unwrap_or_default();
        let text = format!(
            "[zookeeper]\nservers = [\"127.0.0.1:2181\"]\n[supervisor]\nlocal_dir = \"{0}\"\nlog_dir = \"{0}/log\"\n{id}",
            local.display()
        );
        crate::config::parse(&text, std::path::Path::new("/etc/gale/gale.toml")).unwrap()
    }

    /// Identity is pinned: another configured id is exit 4, names both ids and the dir, and
    /// leaves the directory as it was (marker, `tmp/`, state); the stored id is kept when the
    /// config names none.
    #[tokio::test]
    async fn a_configured_id_other_than_the_stored_one_is_refused_and_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("local");
        let first = open_local(&config(&root, Some("sup-a"))).await.unwrap();
        assert_eq!(first.id, "sup-a");
        first.dir.mark_clean_shutdown().unwrap();
        drop(first);
        std::fs::write(root.join("tmp/left-over"), b"x").unwrap();
        let versions = std::fs::read_dir(root.join("state")).unwrap().count();

        let err = open_local(&config(&root, Some("sup-b"))).await.err().expect("refused");
        assert_eq!(err.exit_code(), ExitCode::IdentityConflict);
        let line = err.to_string();
        for part in ["\"sup-a\"", "\"sup-b\"", &root.display().to_string(), "gale state reset-id"] {
            assert!(line.contains(part), "{part} missing from: {line}");
        }
        assert!(!line.contains('\n'), "one line: {line}");
        assert!(root.join("clean-shutdown").exists(), "the marker is not consumed");
        assert!(root.join("tmp/left-over").exists(), "tmp/ is not emptied");
        assert_eq!(std::fs::read_dir(root.join("state")).unwrap().count(), versions, "no state version written");

        let again = open_local(&config(&root, None)).await.unwrap();
        assert_eq!(again.id, "sup-a", "without supervisor.id the stored id is used");
        assert_eq!(again.previous, PreviousStop::Clean, "the refused start did not count as a start");
        drop(again);
        let same = open_local(&config(&root, Some("sup-a"))).await.unwrap();
        assert_eq!(same.id, "sup-a");
    }
}
