//! The tasks that feed the two queues, and the agent's own periodic tasks.
//!
//! | task | requests |
//! |---|---|
//! | `sync_secs` timer | `sync-supervisor` `Sync` |
//! | `blob.sync_secs` timer, `/blobstore` watch | `sync-supervisor` `Blobs` |
//! | `/actions/<id>` watch | `sync-supervisor` `Actions` |
//! | `/assignments` watch (with the changed node's path) | `sync-supervisor` `Assignments` |
//! | `monitor_secs` tick (with the use sampler and worker log rotation) | `sync-processes` `Monitor` |
//! | the earliest slot deadline | `sync-processes` `Reconcile` |
//! | a new assignment view, blob view or health verdict, a heartbeat hint, an operation | `sync-processes` `Reconcile` |
//! | health checks | nothing: they run on their own, off the queues |
//!
//! Every task ends when the [`Shutdown`] it was given fires (the first step of the stop).

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::assignments::{AssignmentChanges, AssignmentView};
use super::{ProcessJob, SupervisorJob, actions, processes, reload};
use crate::admin::control::Request;
use crate::blob::BlobView;
use crate::cluster::membership::MembershipHandles;
use crate::config::Config;
use crate::event::{Phase, QueueHandle, Ticks, spawn_timer_with};
use crate::health::HealthReport;
use crate::shutdown::Shutdown;

/// What the tasks are made from.
pub(super) struct Feeds<'a> {
    pub config: &'a Config,
    pub id: &'a str,
    pub zk: &'a MembershipHandles,
    pub sync_queue: &'a QueueHandle<SupervisorJob>,
    pub proc_queue: &'a QueueHandle<ProcessJob>,
    pub assignment_changes: &'a AssignmentChanges,
    /// Reloaded config, for its users (kept in the reload targets).
    pub config_tx: watch::Sender<Arc<Config>>,
    pub deadline: watch::Receiver<Option<tokio::time::Instant>>,
    pub hints: mpsc::Receiver<String>,
    pub desired: watch::Receiver<Option<Arc<AssignmentView>>>,
    pub blob_view: watch::Receiver<Arc<BlobView>>,
    pub health_tx: watch::Sender<HealthReport>,
    pub health: watch::Receiver<HealthReport>,
    /// Operations from the control socket and ZooKeeper actions ...
    pub front: mpsc::UnboundedReceiver<Request>,
    /// ... forwarded to the executor.
    pub ops: mpsc::UnboundedSender<Request>,
    /// Reads what workers use, every `monitor_secs`.
    pub usage: super::usage::Sampler,
    pub shutdown: Shutdown,
}

/// Starts every task of the table in the module doc. Returns where a reload sends the
/// settings those tasks follow, and the tasks.
pub(super) fn spawn(feeds: Feeds<'_>) -> (reload::Targets, Vec<JoinHandle<()>>) {
    let Feeds { config, sync_queue, proc_queue, shutdown, .. } = &feeds;
    let (sync_period_tx, sync_period_rx) = watch::channel(config.supervisor.sync);
    let (monitor_period_tx, monitor_period_rx) = watch::channel(config.supervisor.monitor);
    let (blob_period_tx, blob_period_rx) = watch::channel(config.blob.sync);
    let (log_policy_tx, log_policy_rx) = watch::channel(crate::worker::LogPolicy::from_config(&config.logs));
    let (health_settings_tx, health_settings_rx) =
        watch::channel((crate::health::HealthSettings::from_config(&config.health), config.health.interval));
    let mut tasks = vec![
        spawn_timer_with((*sync_queue).clone(), SupervisorJob::Sync, sync_period_rx, Phase::Random, shutdown.clone()),
        spawn_timer_with((*sync_queue).clone(), SupervisorJob::Blobs, blob_period_rx, Phase::Random, shutdown.clone()),
        tokio::spawn(processes::deadline_timer(feeds.deadline.clone(), (*proc_queue).clone(), shutdown.clone())),
        tokio::spawn(crate::health::run_periodically(health_settings_rx, feeds.health_tx.clone(), shutdown.clone())),
    ];
    tasks.extend(spawn_watches(&feeds));
    let logs = LogSweep { root: config.supervisor.log_dir.join("workers"), policy: log_policy_rx };
    tasks.push(tokio::spawn(monitor_tick(
        Ticks::new(monitor_period_rx, Phase::Random),
        (*proc_queue).clone(),
        feeds.usage,
        logs,
        feeds.shutdown.clone(),
    )));
    let reload_targets = reload::Targets {
        config: feeds.config_tx,
        membership: feeds.zk.commands.clone(),
        sync_period: sync_period_tx,
        monitor_period: monitor_period_tx,
        blob_period: blob_period_tx,
        health: health_settings_tx,
        log_policy: log_policy_tx,
    };
    tasks.push(tokio::spawn(wake_executor(
        feeds.proc_queue.clone(),
        ExecutorWakes {
            desired: feeds.desired,
            blob_view: feeds.blob_view,
            health: feeds.health,
            hints: feeds.hints,
            front: feeds.front,
            ops: feeds.ops,
        },
        feeds.shutdown,
    )));
    (reload_targets, tasks)
}

/// The ZooKeeper watches of `/blobstore`, `/actions/<id>` and `/assignments`.
fn spawn_watches(feeds: &Feeds<'_>) -> [JoinHandle<()>; 3] {
    let root = &feeds.config.zookeeper.root;
    let request = |job: SupervisorJob| {
        let q = feeds.sync_queue.clone();
        move |_: Option<&str>| {
            q.request(job);
        }
    };
    let watch = |dir: String, on_change| {
        tokio::spawn(crate::cluster::watch::watch_dir(dir, feeds.zk.client.clone(), feeds.shutdown.clone(), on_change))
    };
    let blobstore = watch(format!("{root}/blobstore"), Box::new(request(SupervisorJob::Blobs)) as OnChange);
    let actions = watch(actions::action_dir(root, feeds.id), Box::new(request(SupervisorJob::Actions)));
    // The changed node's path goes to the assignment sync: one read, not a full pass.
    let (q, changes) = (feeds.sync_queue.clone(), feeds.assignment_changes.clone());
    let assignments = watch(
        format!("{root}/assignments"),
        Box::new(move |path: Option<&str>| {
            changes.note(path);
            q.request(SupervisorJob::Assignments);
        }),
    );
    [blobstore, actions, assignments]
}

type OnChange = Box<dyn Fn(Option<&str>) + Send + 'static>;

/// The sources that only need to wake the process queue.
struct ExecutorWakes {
    desired: watch::Receiver<Option<Arc<AssignmentView>>>,
    blob_view: watch::Receiver<Arc<BlobView>>,
    health: watch::Receiver<HealthReport>,
    hints: mpsc::Receiver<String>,
    front: mpsc::UnboundedReceiver<Request>,
    ops: mpsc::UnboundedSender<Request>,
}

/// Requests a `sync-processes` run on a new assignment view, a new blob view, a new health
/// verdict or a heartbeat hint; forwards operations to the executor with a wake-up, so an
/// operation is applied at once, not at the next monitor tick.
async fn wake_executor(q: QueueHandle<ProcessJob>, mut from: ExecutorWakes, mut stop: Shutdown) {
    loop {
        tokio::select! {
            res = from.health.changed() => { if res.is_err() { break } q.request(ProcessJob::Reconcile); }
            Some(request) = from.front.recv() => {
                let _ = from.ops.send(request);
                q.request(ProcessJob::Reconcile);
            }
            res = from.desired.changed() => { if res.is_err() { break } q.request(ProcessJob::Reconcile); }
            res = from.blob_view.changed() => { if res.is_err() { break } q.request(ProcessJob::Reconcile); }
            Some(_) = from.hints.recv() => { q.request(ProcessJob::Reconcile); }
            () = stop.wait() => break,
        }
    }
}

/// Where worker logs are and how they are rotated.
struct LogSweep {
    root: std::path::PathBuf,
    policy: watch::Receiver<crate::worker::LogPolicy>,
}

/// Every `monitor_secs`, in one wake-up: the monitor job, then what the workers use and the
/// worker log rotation with the node quota, together in one trip to the blocking pool (file
/// copies of up to `worker_log_max_mb` must never hold up a queue). Three timers and two trips
/// cost an idle agent most of its CPU (`docs/benchmarks.md`, "Restart cost, round 3").
async fn monitor_tick(
    mut ticks: Ticks,
    queue: QueueHandle<ProcessJob>,
    mut sampler: super::usage::Sampler,
    logs: LogSweep,
    mut stop: Shutdown,
) {
    loop {
        tokio::select! {
            () = ticks.next() => {}
            () = stop.wait() => return,
        }
        queue.request(ProcessJob::Monitor);
        let read = sampler.reader();
        let (root, policy) = (logs.root.clone(), *logs.policy.borrow());
        let both = tokio::task::spawn_blocking(move || (read(), crate::worker::logrotate::sweep(&root, &policy)));
        let Ok((samples, report)) = both.await else { continue };
        sampler.publish(samples);
        let m = crate::metrics::metrics();
        m.log_rotations.inc_by(report.rotated.len() as u64);
        m.log_files_deleted.inc_by(report.deleted.len() as u64);
        m.worker_log_bytes.set(i64::try_from(report.total_bytes).unwrap_or(i64::MAX));
    }
}
