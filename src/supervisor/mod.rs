//! Orchestration: the daemon from start to clean stop.
//!
//! [`run`] owns the order of things, which is the part worth reading slowly:
//!
//! 1. lock the local dir (a second agent exits 4), consume the clean-shutdown marker;
//! 2. open LocalState (refuse to start if it exists but no version checks out), resolve the
//!    supervisor id (config, else stored, else a new UUID persisted before use);
//! 3. `recovering` if the marker was missing;
//! 4. start the membership task (ZooKeeper session, registration, heartbeat), the two event
//!    queues and their timers;
//! 5. once registered and the first sync ran: `running`, `READY=1`;
//! 6. on shutdown: `stopping`, stop timers, close queues (running jobs finish), close the
//!    ZooKeeper session (the ephemeral node goes at once), write `clean-shutdown`, return.
//!
//! Workers are never touched by any of this: they outlive the agent (SPEC §4).

mod actions;
pub mod assignments;
pub mod blobs;
mod jobs;
mod links;
pub mod processes;
pub mod records;
mod reload;
mod session_log;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tracing::{error, info, warn};

pub use jobs::SupervisorJob;
pub use processes::ProcessJob;

use crate::cluster::membership::{Identity, Membership, MembershipConfig, MembershipError, NodeReport, SessionEvent};
use crate::cluster::model::{Health, unix_ms};
use crate::cluster::zk::ConnectOptions;
use crate::config::Config;
use crate::event::{Phase, new_queue, run_queue, spawn_timer_with};
use crate::lifecycle::{Lifecycle, Systemd};
use crate::local_dir::{LocalDir, LocalDirError, PreviousStop};
use crate::local_state::{self, LocalState, StateError};
use crate::proc_identity::ProcessIdentity;
use assignments::AssignmentSync;
use processes::{LocalDirCheck, ProcessConfig, Processes};

/// Why the daemon stopped other than cleanly. `main` maps each to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    LocalDir(#[from] LocalDirError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Membership(#[from] MembershipError),
    #[error(transparent)]
    Credentials(#[from] crate::cluster::zk::CredentialsError),
    #[error("{0}")]
    Internal(String),
    #[error("health checks failed with health.on_failure = \"exit\": workers stopped")]
    HealthExit,
}

impl RunError {
    /// Exit code per SPEC §6.
    pub fn exit_code(&self) -> crate::lifecycle::ExitCode {
        use crate::lifecycle::ExitCode;
        match self {
            RunError::LocalDir(LocalDirError::Locked { .. }) => ExitCode::IdentityConflict,
            RunError::Membership(MembershipError::IdentityConflict { .. }) => ExitCode::IdentityConflict,
            RunError::Credentials(_) => ExitCode::Config,
            RunError::HealthExit => ExitCode::HealthCheck,
            _ => ExitCode::Failure,
        }
    }
}

/// Runs the agent until `shutdown` completes (then stops cleanly) or a fatal error.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    let systemd = Systemd;
    let mut lifecycle = Lifecycle::Starting;
    info!(state = %lifecycle, config = %config.path.display(), version = env!("CARGO_PKG_VERSION"), "lifecycle");

    let (local_dir, previous) = LocalDir::open(&config.supervisor.local_dir)?;
    let state_dir = local_dir.state_dir();
    let state = tokio::task::spawn_blocking(move || LocalState::open(&state_dir))
        .await
        .map_err(|e| RunError::Internal(e.to_string()))??;
    let state = Arc::new(Mutex::new(state));
    let id = resolve_id(&config, &state).await?;
    let hostname = match &config.supervisor.hostname {
        Some(h) => h.clone(),
        None => nix::unistd::gethostname()
            .map_err(|e| RunError::Internal(format!("cannot read the system hostname: {e}; set supervisor.hostname")))?
            .to_string_lossy()
            .into_owned(),
    };
    info!(id = %id, hostname = %hostname, local_dir = %config.supervisor.local_dir.display(), "supervisor identity");

    if previous == PreviousStop::Unclean {
        lifecycle = transition(
            lifecycle,
            Lifecycle::Recovering,
            "no clean-shutdown marker: the previous agent did not stop cleanly",
        );
    }
    systemd.status(lifecycle.as_str());

    let (report_tx, report_rx) = watch::channel(NodeReport { lifecycle, health: Health::Unknown, workers: Vec::new() });
    let report_tx = Arc::new(report_tx);
    let started_at_ms = unix_ms();
    let identity_hostname = hostname.clone();
    let identity = Identity {
        id: id.clone(),
        hostname,
        slots: config.supervisor.slots.clone(),
        capacity: config.supervisor.capacity,
        labels: config.supervisor.labels.clone(),
        started_at_ms,
    };
    let membership_config = MembershipConfig {
        connect: ConnectOptions::from_config(&config)?,
        root: config.zookeeper.root.clone(),
        heartbeat: config.supervisor.heartbeat,
        heartbeat_refresh: config.supervisor.heartbeat_refresh,
    };
    let (zk_stop_tx, zk_stop_rx) = watch::channel(false);
    let me = ProcessIdentity::current()
        .map_err(|e| RunError::Internal(format!("cannot read this process's identity from /proc: {e}")))?;
    let previous = session_log::previous_sessions(&state.lock().unwrap())?;
    let session_log = Arc::new(session_log::StateSessionLog::new(state.clone(), me));
    let (membership, mut zk) =
        Membership::new(membership_config, identity, session_log, previous, report_rx, zk_stop_rx);
    let mut membership_task = tokio::spawn(membership.run());

    // The process side first: adopt the workers that kept running while no agent was here,
    // before anything could decide about their ports.
    let (desired_tx, desired_rx) = watch::channel(None);
    let (deadline_tx, deadline_rx) = watch::channel(None);
    let (hints_tx, mut hints_rx) = tokio::sync::mpsc::channel::<String>(256);
    let proc_queue = new_queue::<ProcessJob>("sync-processes");
    // How worker limits are enforced here: cgroup v2, v1, or rlimits (logged with the reason).
    // The workers' parent cgroup is named after this agent: the start-up sweep of cgroups no
    // record names must never reach another agent's workers on the same host.
    let cgroup_parent = format!("gale-{id}");
    let isolation = tokio::task::spawn_blocking(move || crate::isolation::detect(&cgroup_parent))
        .await
        .map_err(|e| RunError::Internal(e.to_string()))?;
    info!(mechanism = isolation.as_str(), "worker isolation");
    // Reloaded config reaches its users through these (see `reload.rs`).
    let (config_tx, config_rx) = watch::channel(Arc::new(config.clone()));
    // The blob cache, rebuilt from disk (crash leftovers removed) before any worker is adopted:
    // adopted workers reference the entries they link to.
    let cache = {
        let (root, tmp) = (local_dir.root().join("blobs"), local_dir.tmp_dir());
        tokio::task::spawn_blocking(move || crate::blob::BlobCache::open(&root, &tmp))
            .await
            .map_err(|e| RunError::Internal(e.to_string()))?
            .map_err(|e| {
                RunError::Internal(format!(
                    "cannot open the blob cache {}: {e}",
                    config.supervisor.local_dir.join("blobs").display()
                ))
            })?
    };
    let cache: crate::blob::SharedCache = Arc::new(Mutex::new(cache));
    let (blob_view_tx, blob_view_rx) = watch::channel(Arc::new(blobs::BlobView::default()));
    // Operations (control socket, ZooKeeper actions) go to the executor; health and drain hold
    // its workers; it publishes its slots for status.
    let (ops_tx, ops_rx) = tokio::sync::mpsc::unbounded_channel();
    // What the control socket and actions send: forwarded to the executor with a wake-up, so
    // an operation is applied at once, not at the next monitor tick.
    let (front_tx, mut front_rx) = tokio::sync::mpsc::unbounded_channel::<crate::admin::control::Request>();
    let drained = state.lock().unwrap().get::<local_state::Drained>()?.unwrap_or(false);
    if drained {
        warn!("this host is drained (gale drain): no worker runs until `gale undrain`");
    }
    let (drained_tx, drained_rx) = watch::channel(drained);
    let (health_tx, health_rx) = watch::channel(crate::health::HealthReport::default());
    let (slots_tx, slots_rx) = watch::channel(Vec::new());
    let mut processes = Processes::new(
        ProcessConfig::from_config(&config, &id, isolation.clone()),
        processes::ProcessLocal {
            state: state.clone(),
            cache: cache.clone(),
            dir_check: LocalDirCheck {
                lock_path: local_dir.lock_path(),
                lock_inode: local_dir
                    .lock_inode()
                    .map_err(|e| RunError::Internal(format!("cannot stat the lock file: {e}")))?,
                state_dir: local_dir.state_dir(),
            },
            drained,
        },
        processes::ProcessInputs {
            desired: desired_rx.clone(),
            zk_status: zk.status.clone(),
            blob_view: blob_view_rx.clone(),
            requests: ops_rx,
            health: health_rx.clone(),
            config: config_rx.clone(),
        },
        processes::ProcessOutputs {
            report: report_tx.clone(),
            deadline: deadline_tx,
            hints: hints_tx,
            slots: slots_tx,
            drained: drained_tx,
        },
        proc_queue.clone(),
        Arc::new(crate::worker::RealProcessControl),
    );
    let assigned = state.lock().unwrap().get::<local_state::LocalAssignmentsKey>()?.unwrap_or_default();
    // Without its records the agent cannot tell its workers from orphans: refuse to start
    // rather than sweep (kill) workers that are fine.
    processes.recover(&assigned).await.map_err(|e| {
        RunError::Internal(format!(
            "cannot recover the recorded workers: {e}; refusing to start rather than lose track of running workers \
             (inspect with `gale state dump`)"
        ))
    })?;
    let proc_task = run_queue(&proc_queue, processes);

    let (synced_tx, mut synced_rx) = watch::channel(0u64);
    let sync_queue = new_queue::<SupervisorJob>("sync-supervisor");
    let blob_sync = blobs::BlobSync::new(
        blobs::BlobSyncConfig {
            root: config.zookeeper.root.clone(),
            tmp: local_dir.tmp_dir(),
            cache_target_bytes: config.blob.cache_target_mb.saturating_mul(1024 * 1024),
            download_timeout: config.blob.download_timeout,
            download_retries: config.blob.download_retries,
        },
        cache.clone(),
        desired_rx.clone(),
        blob_view_tx,
        {
            let q = sync_queue.clone();
            Arc::new(move || {
                q.request(SupervisorJob::Blobs);
            })
        },
    );
    let mut blob_sync = blob_sync;
    blob_sync.follow_config(config_rx.clone());
    let assignment_sync =
        AssignmentSync::new(&config.zookeeper.root, &id, &config.supervisor.slots, state.clone(), assigned, desired_tx);
    // What the `/assignments` watch and the session events tell the assignment sync.
    let assignment_changes = assignment_sync.changes();
    let sync_task = run_queue(
        &sync_queue,
        jobs::SupervisorSync {
            membership: zk.commands.clone(),
            zk_status: zk.status.clone(),
            client: zk.client.clone(),
            assignments: assignment_sync,
            blobs: blob_sync,
            actions: actions::ActionSync::new(&config.zookeeper.root, &id, front_tx.clone()),
            completed: synced_tx,
            timeout: 2 * crate::cluster::zk::OP_TIMEOUT,
        },
    );
    let (timers_stop_tx, timers_stop_rx) = watch::channel(false);
    let (sync_period_tx, sync_period_rx) = watch::channel(config.supervisor.sync);
    let (monitor_period_tx, monitor_period_rx) = watch::channel(config.supervisor.monitor);
    let (blob_period_tx, blob_period_rx) = watch::channel(config.blob.sync);
    let (log_policy_tx, log_policy_rx) = watch::channel(crate::worker::LogPolicy::from_config(&config.logs));
    let (health_settings_tx, health_settings_rx) =
        watch::channel((crate::health::HealthSettings::from_config(&config.health), config.health.interval));
    let timers = [
        spawn_timer_with(
            sync_queue.clone(),
            SupervisorJob::Sync,
            sync_period_rx,
            Phase::Random,
            timers_stop_rx.clone(),
        ),
        spawn_timer_with(
            sync_queue.clone(),
            SupervisorJob::Blobs,
            blob_period_rx,
            Phase::Random,
            timers_stop_rx.clone(),
        ),
        spawn_timer_with(
            proc_queue.clone(),
            ProcessJob::Monitor,
            monitor_period_rx,
            Phase::Random,
            timers_stop_rx.clone(),
        ),
        tokio::spawn(processes::deadline_timer(deadline_rx, proc_queue.clone(), timers_stop_rx.clone())),
        tokio::spawn(assignments::watch_dir(
            format!("{}/blobstore", config.zookeeper.root),
            zk.client.clone(),
            timers_stop_rx.clone(),
            {
                let q = sync_queue.clone();
                move |_: Option<&str>| {
                    q.request(SupervisorJob::Blobs);
                }
            },
        )),
        tokio::spawn(assignments::watch_dir(
            actions::action_dir(&config.zookeeper.root, &id),
            zk.client.clone(),
            timers_stop_rx.clone(),
            {
                let q = sync_queue.clone();
                move |_: Option<&str>| {
                    q.request(SupervisorJob::Actions);
                }
            },
        )),
        tokio::spawn(rotate_worker_logs(
            config.supervisor.log_dir.join("workers"),
            log_policy_rx,
            config.supervisor.monitor,
            timers_stop_rx.clone(),
        )),
        tokio::spawn(crate::health::run_periodically(health_settings_rx, health_tx, timers_stop_rx.clone())),
        tokio::spawn(assignments::watch_dir(
            format!("{}/assignments", config.zookeeper.root),
            zk.client.clone(),
            timers_stop_rx.clone(),
            {
                // The changed node's path goes to the assignment sync: one read, not a full pass.
                let (q, changes) = (sync_queue.clone(), assignment_changes.clone());
                move |path: Option<&str>| {
                    changes.note(path);
                    q.request(SupervisorJob::Assignments);
                }
            },
        )),
        // Sources that only need to wake the process queue: a new assignment view, a new blob
        // view, heartbeat hints.
        tokio::spawn({
            let (q, mut desired, mut stop) = (proc_queue.clone(), desired_rx, timers_stop_rx.clone());
            let mut blob_view = blob_view_rx.clone();
            let mut health = health_rx.clone();
            async move {
                loop {
                    tokio::select! {
                        res = health.changed() => { if res.is_err() { break } q.request(ProcessJob::Reconcile); }
                        Some(request) = front_rx.recv() => {
                            let _ = ops_tx.send(request);
                            q.request(ProcessJob::Reconcile);
                        }
                        res = desired.changed() => { if res.is_err() { break } q.request(ProcessJob::Reconcile); }
                        res = blob_view.changed() => { if res.is_err() { break } q.request(ProcessJob::Reconcile); }
                        Some(_) = hints_rx.recv() => { q.request(ProcessJob::Reconcile); }
                        _ = stop.wait_for(|s| *s) => break,
                    }
                }
            }
        }),
    ];
    // The read-only admin endpoint and the control socket; a port or socket that cannot be
    // bound fails the start (an operator must not think the endpoint is there).
    let sources = crate::admin::Sources {
        supervisor_id: id.clone(),
        hostname: identity_hostname.clone(),
        started_at_ms,
        config: config_rx.clone(),
        isolation: isolation.as_str().to_owned(),
        report: report_tx.subscribe(),
        zk: zk.status.clone(),
        slots: slots_rx.clone(),
        health: health_rx.clone(),
        cache: blob_view_rx.clone(),
        drained: drained_rx.clone(),
        queues: vec![queue_probe(&sync_queue), queue_probe(&proc_queue)],
    };
    let mut servers = Vec::new();
    if let Some(addr) = config.admin.listen {
        let serve = crate::admin::http::bind(addr, sources.clone(), timers_stop_rx.clone())
            .await
            .map_err(|e| RunError::Internal(format!("cannot listen on admin.listen = {addr}: {e}")))?;
        info!(listen = %addr, "admin endpoint: /live /ready /status /metrics");
        servers.push(tokio::spawn(serve));
    }
    let socket = config.control_socket();
    // Without it the agent still supervises (and ZooKeeper actions still work): say so loudly
    // rather than refuse to run workers over a path problem.
    match crate::admin::control::bind(&socket, front_tx.clone(), timers_stop_rx.clone()) {
        Ok(serve) => servers.push(tokio::spawn(serve)),
        Err(e) => error!(path = %socket.display(), error = %e,
            "cannot create the control socket; gale worker/drain/undrain will not work on this host"),
    }
    proc_queue.request(ProcessJob::Monitor);

    let watchdog = systemd.watchdog_interval();
    let mut watchdog_tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    let mut sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| RunError::Internal(format!("cannot install the SIGHUP handler: {e}")))?;
    tokio::pin!(shutdown);
    let reload_targets = reload::Targets {
        config: config_tx,
        membership: zk.commands.clone(),
        sync_period: sync_period_tx,
        monitor_period: monitor_period_tx,
        blob_period: blob_period_tx,
        health: health_settings_tx,
        log_policy: log_policy_tx,
    };
    let mut running = config.clone();
    let (mut file_changes, _config_watcher) = watch_config_file(&config.path);
    let mut drained_watch = drained_rx.clone();
    let mut health_watch = health_rx.clone();
    let mut slots_watch = slots_rx.clone();
    // With on_failure = "exit": set once the checks fail; the agent exits 3 when the workers
    // are gone (or after a bound, if one will not die).
    let mut exiting_for_health: Option<tokio::time::Instant> = None;
    // The last STATUS= line sent, so systemd hears of changes only.
    let mut last_status = String::new();
    let mut zk_watch = zk.status.clone();

    // The main loop: everything here is cheap; work happens on the queues and in tasks.
    let outcome: Result<(), RunError> = loop {
        tokio::select! {
            () = &mut shutdown => break Ok(()),
            res = &mut membership_task => {
                break match res {
                    Ok(Ok(())) => Err(RunError::Internal("the zookeeper membership task stopped unexpectedly".into())),
                    Ok(Err(e)) => Err(e.into()),
                    Err(e) => Err(RunError::Internal(format!("the zookeeper membership task failed: {e}"))),
                };
            }
            Some(event) = zk.events.recv() => match event {
                SessionEvent::Registered { .. } | SessionEvent::Reconnected => {
                    // A new session or a reconnect: watches may have missed events, so re-read all.
                    assignment_changes.resync();
                    sync_queue.request(SupervisorJob::Sync);
                }
            },
            Ok(()) = synced_rx.changed() => {
                if matches!(lifecycle, Lifecycle::Starting | Lifecycle::Recovering) && zk.status.borrow().registered {
                    let (to, why) = if *drained_rx.borrow() {
                        (Lifecycle::Draining, "registered and first sync done; drained (gale undrain to resume)")
                    } else {
                        (Lifecycle::Running, "registered and first sync done")
                    };
                    lifecycle = transition(lifecycle, to, why);
                    report_tx.send_modify(|r| r.lifecycle = lifecycle);
                    systemd.ready(&status_line(lifecycle, &slots_rx.borrow(), &zk.status.borrow(), running.supervisor.slots.len()));
                }
            }
            Ok(()) = drained_watch.changed() => {
                let drained = *drained_watch.borrow_and_update();
                let to = match (lifecycle, drained) {
                    (Lifecycle::Running, true) => Some((Lifecycle::Draining, "gale drain: stopping workers")),
                    (Lifecycle::Draining, false) => Some((Lifecycle::Running, "gale undrain")),
                    _ => None,
                };
                if let Some((to, why)) = to {
                    lifecycle = transition(lifecycle, to, why);
                    report_tx.send_modify(|r| r.lifecycle = lifecycle);
                }
            }
            Ok(()) = health_watch.changed() => {
                let report = health_watch.borrow_and_update().clone();
                let m = crate::admin::metrics();
                for script in &report.scripts {
                    m.health_runs.get_or_create(&vec![("outcome", script.outcome.as_str().to_owned())]).inc();
                }
                let health = if report.healthy { Health::Healthy } else { Health::Unhealthy };
                report_tx.send_if_modified(|r| {
                    let changed = r.health != health;
                    r.health = health;
                    changed
                });
                if !report.healthy
                    && running.health.on_failure == crate::config::OnHealthFailure::Exit
                    && exiting_for_health.is_none()
                {
                    error!("health checks failed with on_failure = \"exit\": stopping every worker, then exiting 3");
                    exiting_for_health = Some(tokio::time::Instant::now() + exit_bound(&running));
                }
            }
            Ok(()) = slots_watch.changed() => {
                let line = status_line(lifecycle, &slots_watch.borrow_and_update(), &zk.status.borrow(), running.supervisor.slots.len());
                if line != last_status {
                    systemd.status(&line);
                    last_status = line;
                }
                if exiting_for_health.is_some() && slots_watch.borrow().iter().all(|s| s.pid.is_none()) {
                    break Err(RunError::HealthExit);
                }
            }
            Ok(()) = zk_watch.changed() => {
                let line = status_line(lifecycle, &slots_rx.borrow(), &zk_watch.borrow_and_update(), running.supervisor.slots.len());
                if line != last_status {
                    systemd.status(&line);
                    last_status = line;
                }
            }
            () = async { match exiting_for_health { Some(at) => tokio::time::sleep_until(at).await, None => std::future::pending().await } } => {
                warn!("workers still running {}s after the health failure; exiting anyway", exit_bound(&running).as_secs());
                break Err(RunError::HealthExit);
            }
            _ = watchdog_tick.tick(), if watchdog.is_some() => systemd.watchdog(),
            Some(()) = sighup.recv() => {
                info!(config = %config.path.display(), "SIGHUP: reloading the config");
                systemd.reloading();
                running = apply_reload(&running, &reload_targets);
                systemd.ready(&status_line(lifecycle, &slots_rx.borrow(), &zk.status.borrow(), running.supervisor.slots.len()));
            }
            Some(()) = file_changes.recv() => {
                // An editor's save is several events: let them settle, then read once.
                tokio::time::sleep(Duration::from_millis(200)).await;
                while file_changes.try_recv().is_ok() {}
                info!(config = %config.path.display(), "the config file changed: reloading");
                systemd.reloading();
                running = apply_reload(&running, &reload_targets);
                systemd.ready(&status_line(lifecycle, &slots_rx.borrow(), &zk.status.borrow(), running.supervisor.slots.len()));
            }
        }
    };

    // Clean stop, in order. Nothing here touches workers.
    transition(lifecycle, Lifecycle::Stopping, if outcome.is_ok() { "shutdown requested" } else { "fatal error" });
    systemd.stopping();
    report_tx.send_modify(|r| r.lifecycle = Lifecycle::Stopping);
    let _ = timers_stop_tx.send(true);
    for timer in timers.into_iter().chain(servers) {
        let _ = timer.await;
    }
    sync_queue.close();
    proc_queue.close();
    // A running job finishes (jobs are bounded: every ZooKeeper request times out), but a
    // stop must not hang on one: give them a grace period, then go on.
    let aborts = [sync_task.abort_handle(), proc_task.abort_handle()];
    let grace = Duration::from_secs(10);
    if tokio::time::timeout(grace, async {
        let _ = sync_task.await;
        let _ = proc_task.await;
    })
    .await
    .is_err()
    {
        warn!("event queues did not finish their running jobs in {}s; stopping anyway", grace.as_secs());
        aborts.iter().for_each(tokio::task::AbortHandle::abort);
    }
    let _ = zk_stop_tx.send(true);
    if !membership_task.is_finished() {
        match tokio::time::timeout(Duration::from_secs(10), &mut membership_task).await {
            Ok(Ok(Err(e))) => error!(error = %e, "zookeeper membership ended with an error while stopping"),
            Ok(_) => {}
            Err(_) => warn!("zookeeper session did not close in 10s; the server will expire it"),
        }
    }
    if let Err(RunError::HealthExit) = &outcome {
        // A deliberate stop (Storm's behaviour): the workers are stopped, nothing to recover.
        local_dir.mark_clean_shutdown()?;
        error!("exiting 3: health checks failed (health.on_failure = \"exit\")");
        return outcome;
    }
    if let Err(e) = &outcome {
        // A fatal stop is not a clean one: the next start should recover.
        error!(error = %e, "stopping after a fatal error");
        return outcome;
    }
    local_dir.mark_clean_shutdown()?;
    info!("stopped cleanly");
    Ok(())
}

fn transition(from: Lifecycle, to: Lifecycle, why: &str) -> Lifecycle {
    info!(from = %from, state = %to, why, "lifecycle");
    Systemd.status(to.as_str());
    to
}

/// The supervisor id: `supervisor.id` from the config, else the one in LocalState, else a
/// new UUID, persisted before anything uses it.
async fn resolve_id(config: &Config, state: &Arc<Mutex<LocalState>>) -> Result<String, RunError> {
    let wanted = config.supervisor.id.clone();
    let state = state.clone();
    tokio::task::spawn_blocking(move || {
        let mut state = state.lock().unwrap();
        let stored = state.get::<local_state::SupervisorId>()?;
        let id = match (wanted, stored) {
            (Some(wanted), Some(stored)) if wanted == stored => return Ok(stored),
            (Some(wanted), Some(stored)) => {
                warn!(configured = %wanted, stored = %stored, "supervisor.id differs from the stored id; using the configured one");
                wanted
            }
            (Some(wanted), None) => wanted,
            (None, Some(stored)) => return Ok(stored),
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

/// Reads a queue's counters for status and metrics.
fn queue_probe<J: crate::event::Job>(queue: &crate::event::QueueHandle<J>) -> crate::admin::QueueProbe {
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

/// Worker log rotation and the node quota, every `interval`, on its own task (file copies of
/// up to `worker_log_max_mb` must never hold up a queue).
async fn rotate_worker_logs(
    root: std::path::PathBuf,
    policy: watch::Receiver<crate::worker::LogPolicy>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let root = root.clone();
        let policy = *policy.borrow();
        let Ok(report) = tokio::task::spawn_blocking(move || crate::worker::logrotate::sweep(&root, &policy)).await
        else {
            continue;
        };
        let m = crate::admin::metrics();
        m.log_rotations.inc_by(report.rotated.len() as u64);
        m.log_files_deleted.inc_by(report.deleted.len() as u64);
        m.worker_log_bytes.set(i64::try_from(report.total_bytes).unwrap_or(i64::MAX));
    }
}

/// Applies a reload of `running.path` and returns the config now in force.
fn apply_reload(running: &Config, targets: &reload::Targets) -> Config {
    let m = crate::admin::metrics();
    let count = |result: &str| m.config_reloads.get_or_create(&vec![("result", result.to_owned())]).inc();
    match reload::reload(&running.path, running, targets) {
        reload::Outcome::Rejected(e) => {
            error!(error = %e, "config reload rejected: the running config stays");
            count("rejected");
            running.clone()
        }
        reload::Outcome::Unchanged => {
            info!("config reload: nothing changed");
            count("unchanged");
            running.clone()
        }
        reload::Outcome::Applied { live, restart } => {
            for key in &live {
                info!(key = %key, "config reload: applied");
            }
            for key in &restart {
                warn!(key = %key, "config reload: this key needs a restart of the agent; the running value stays");
            }
            count("applied");
            targets.config.borrow().as_ref().clone()
        }
    }
}

/// A `notify` watch on the config file's directory (editors replace the file rather than
/// write it), reporting changes of that file name. `None` watcher if it cannot be set up:
/// SIGHUP still works.
fn watch_config_file(
    path: &std::path::Path,
) -> (tokio::sync::mpsc::UnboundedReceiver<()>, Option<notify::RecommendedWatcher>) {
    use notify::Watcher;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().map(std::ffi::OsStr::to_owned)) else {
        return (rx, None);
    };
    let handler = move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && !event.kind.is_access()
            && event.paths.iter().any(|p| p.file_name() == Some(name.as_os_str()))
        {
            let _ = tx.send(());
        }
    };
    let watcher = notify::recommended_watcher(handler).and_then(|mut w| {
        w.watch(dir, notify::RecursiveMode::NonRecursive)?;
        Ok(w)
    });
    match watcher {
        Ok(w) => (rx, Some(w)),
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot watch the config file; reload with SIGHUP");
            (rx, None)
        }
    }
}

/// How long an `on_failure = "exit"` waits for the workers to stop before exiting anyway.
fn exit_bound(config: &Config) -> Duration {
    config.worker.shutdown_grace * 3 + Duration::from_secs(10)
}

/// The `STATUS=` line systemd shows: `running: 3/4 slots used, zk connected`.
fn status_line(
    lifecycle: Lifecycle,
    slots: &[crate::admin::SlotStatus],
    zk: &crate::cluster::membership::ZkStatus,
    configured: usize,
) -> String {
    let used = slots.iter().filter(|s| s.pid.is_some()).count();
    let zk =
        if zk.registered && zk.state == "connected" { "zk connected".to_owned() } else { format!("zk {}", zk.state) };
    format!("{}: {used}/{configured} slots used, {zk}", lifecycle.as_str())
}
