//! A serial, coalescing job queue (rust-analyzer's `OpQueue` idea, as a task).
//!
//! State per queue: a set of pending jobs. `request(job)` inserts; if the job was already
//! pending the request is dropped and counted as coalesced. The queue task takes the
//! smallest pending job (jobs are an ordered closed enum, so the order of kinds is fixed and
//! predictable), runs it to completion, and loops. A request that arrives while its job is
//! *running* marks it pending again, so the work requested after the run started is never
//! lost: N requests during one slow run give exactly one more run, not N.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::Instrument;

/// A kind of work a queue runs. Ordered: when several are pending, the smallest runs first.
pub(crate) trait Job: Copy + Ord + Debug + Send + Sync + 'static {
    fn name(&self) -> &'static str;

    /// Whether a successful run of `self` also did `other`'s work (a full sync covers its
    /// parts): it then clears `other`'s recorded failure.
    fn covers(&self, other: &Self) -> bool {
        self == other
    }
}

/// A job's failure, logged with its cause and counted; the queue keeps running.
pub(crate) type JobError = Box<dyn std::error::Error + Send + Sync>;

/// What runs the jobs. It owns the state the jobs work on (one owner, no shared lock).
pub(crate) trait JobHandler<J: Job>: Send + 'static {
    fn run(&mut self, job: J) -> impl Future<Output = Result<(), JobError>> + Send;
}

/// Counters of one queue, for status and metrics.
#[derive(Debug, Default)]
pub(crate) struct QueueStats {
    pub requested: AtomicU64,
    pub coalesced: AtomicU64,
    pub runs: AtomicU64,
    pub failures: AtomicU64,
    /// Total run time in microseconds, and the last run's.
    pub run_micros_total: AtomicU64,
    pub last_run_micros: AtomicU64,
}

#[derive(Debug)]
struct Shared<J> {
    name: &'static str,
    pending: Mutex<BTreeSet<J>>,
    wake: Notify,
    closed: AtomicBool,
    stats: QueueStats,
    /// Jobs whose last run failed, with that error, until a run that covers them succeeds:
    /// `gale status` shows what keeps failing (a full disk, a refused write).
    failing: Mutex<BTreeMap<J, String>>,
}

/// A cheap, cloneable handle to request jobs on a queue.
#[derive(Debug)]
pub(crate) struct QueueHandle<J> {
    shared: Arc<Shared<J>>,
}

impl<J> Clone for QueueHandle<J> {
    fn clone(&self) -> Self {
        QueueHandle { shared: self.shared.clone() }
    }
}

impl<J: Job> QueueHandle<J> {
    /// Asks for `job` to run. Returns false when it was already pending (coalesced) or the
    /// queue is closed.
    pub(crate) fn request(&self, job: J) -> bool {
        let shared = &self.shared;
        if shared.closed.load(Ordering::Acquire) {
            return false;
        }
        shared.stats.requested.fetch_add(1, Ordering::Relaxed);
        let inserted = shared.pending.lock().unwrap().insert(job);
        if inserted {
            shared.wake.notify_one();
        } else {
            shared.stats.coalesced.fetch_add(1, Ordering::Relaxed);
            tracing::trace!(queue = shared.name, job = job.name(), "coalesced");
        }
        inserted
    }

    /// Jobs waiting to run (not counting the one running).
    pub(crate) fn depth(&self) -> usize {
        self.shared.pending.lock().unwrap().len()
    }

    pub(crate) fn name(&self) -> &'static str {
        self.shared.name
    }

    pub(crate) fn stats(&self) -> &QueueStats {
        &self.shared.stats
    }

    /// `(job name, error)` of the jobs whose last run failed and that no successful run has
    /// covered since.
    pub(crate) fn failing(&self) -> Vec<(&'static str, String)> {
        self.shared.failing.lock().unwrap().iter().map(|(job, e)| (job.name(), e.clone())).collect()
    }

    /// Stops the queue: pending jobs are dropped, the running one finishes, then the task
    /// returns its handler. Later requests are ignored.
    pub(crate) fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.pending.lock().unwrap().clear();
        // notify_one stores a permit, so the task sees this even if it is not waiting yet.
        self.shared.wake.notify_one();
    }
}

/// Spawns the queue task. The returned `JoinHandle` yields the handler once the queue is
/// closed and its running job (if any) has finished. Tests only: the daemon makes its queues
/// with [`new_queue`] and [`run_queue`], since its handlers need their handle first.
#[cfg(test)]
pub(crate) fn spawn_queue<J: Job, H: JobHandler<J>>(name: &'static str, handler: H) -> (QueueHandle<J>, JoinHandle<H>) {
    let handle = new_queue(name);
    let task = run_queue(&handle, handler);
    (handle, task)
}

/// A queue without its task yet: for a handler that needs the handle (to give to the tasks it
/// starts) before it runs. Requests made before [`run_queue`] wait for it.
pub(crate) fn new_queue<J: Job>(name: &'static str) -> QueueHandle<J> {
    QueueHandle {
        shared: Arc::new(Shared {
            name,
            pending: Mutex::new(BTreeSet::new()),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            stats: QueueStats::default(),
            failing: Mutex::new(BTreeMap::new()),
        }),
    }
}

/// Starts the task that runs `handle`'s jobs with `handler` (once per queue).
pub(crate) fn run_queue<J: Job, H: JobHandler<J>>(handle: &QueueHandle<J>, mut handler: H) -> JoinHandle<H> {
    let shared = handle.shared.clone();
    let name = shared.name;
    tokio::spawn(
        async move {
            loop {
                if shared.closed.load(Ordering::Acquire) {
                    break;
                }
                let next = shared.pending.lock().unwrap().pop_first();
                let Some(job) = next else {
                    shared.wake.notified().await;
                    continue;
                };
                let started = tokio::time::Instant::now();
                let result = handler.run(job).instrument(tracing::info_span!("job", job = job.name())).await;
                let took = started.elapsed();
                record_run(&shared.stats, took);
                match result {
                    Ok(()) => {
                        shared.failing.lock().unwrap().retain(|failed, _| !job.covers(failed));
                        tracing::debug!(job = job.name(), took_ms = took.as_millis() as u64, "job done")
                    }
                    Err(err) => {
                        shared.stats.failures.fetch_add(1, Ordering::Relaxed);
                        shared.failing.lock().unwrap().insert(job, err.to_string());
                        tracing::warn!(job = job.name(), took_ms = took.as_millis() as u64, error = %err, "job failed");
                    }
                }
            }
            handler
        }
        .instrument(tracing::info_span!("queue", queue = name)),
    )
}

fn record_run(stats: &QueueStats, took: Duration) {
    let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
    stats.runs.fetch_add(1, Ordering::Relaxed);
    stats.run_micros_total.fetch_add(micros, Ordering::Relaxed);
    stats.last_run_micros.store(micros, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    enum TestJob {
        Slow,
        Fast,
    }

    impl Job for TestJob {
        fn name(&self) -> &'static str {
            match self {
                TestJob::Slow => "slow",
                TestJob::Fast => "fast",
            }
        }
    }

    struct Recorder {
        runs: Arc<Mutex<Vec<TestJob>>>,
        slow: Duration,
        fail_fast: bool,
    }

    impl JobHandler<TestJob> for Recorder {
        async fn run(&mut self, job: TestJob) -> Result<(), JobError> {
            self.runs.lock().unwrap().push(job);
            match job {
                TestJob::Slow => tokio::time::sleep(self.slow).await,
                TestJob::Fast if self.fail_fast => return Err("boom".into()),
                TestJob::Fast => {}
            }
            Ok(())
        }
    }

    fn recorder(slow: Duration) -> (Recorder, Arc<Mutex<Vec<TestJob>>>) {
        let runs = Arc::new(Mutex::new(Vec::new()));
        (Recorder { runs: runs.clone(), slow, fail_fast: false }, runs)
    }

    /// Lets the queue task run until it blocks (paused clock: time does not move).
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn n_requests_during_a_slow_run_give_exactly_one_more_run() {
        let (handler, runs) = recorder(Duration::from_secs(10));
        let (queue, _task) = spawn_queue("test", handler);
        assert!(queue.request(TestJob::Slow));
        settle().await;
        assert_eq!(runs.lock().unwrap().len(), 1, "first run started");

        // 25 ticks while the first run is in progress.
        let accepted = (0..25).filter(|_| queue.request(TestJob::Slow)).count();
        assert_eq!(accepted, 1, "only the first request during the run is queued");
        assert_eq!(queue.depth(), 1);
        assert_eq!(queue.stats().coalesced.load(Ordering::Relaxed), 24);

        tokio::time::sleep(Duration::from_secs(25)).await;
        settle().await;
        assert_eq!(*runs.lock().unwrap(), vec![TestJob::Slow, TestJob::Slow]);
        assert_eq!(queue.stats().runs.load(Ordering::Relaxed), 2);
        assert_eq!(queue.depth(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn different_jobs_do_not_coalesce_and_run_in_order() {
        let (handler, runs) = recorder(Duration::from_secs(1));
        let (queue, _task) = spawn_queue("test", handler);
        queue.request(TestJob::Fast);
        queue.request(TestJob::Slow);
        queue.request(TestJob::Fast);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(*runs.lock().unwrap(), vec![TestJob::Slow, TestJob::Fast]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_job_is_counted_and_the_queue_keeps_running() {
        let runs = Arc::new(Mutex::new(Vec::new()));
        let handler = Recorder { runs: runs.clone(), slow: Duration::from_secs(1), fail_fast: true };
        let (queue, _task) = spawn_queue("test", handler);
        queue.request(TestJob::Fast);
        settle().await;
        queue.request(TestJob::Fast);
        queue.request(TestJob::Slow);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(queue.stats().failures.load(Ordering::Relaxed), 2);
        assert_eq!(runs.lock().unwrap().len(), 3);
    }

    /// A failure stays visible until a run that covers the job succeeds (here: `Slow`, by the
    /// default rule, covers only itself, so `Fast`'s failure stays; a good `Fast` clears it).
    #[tokio::test(start_paused = true)]
    async fn a_failure_is_shown_until_a_covering_run_succeeds() {
        struct Flaky(Arc<std::sync::atomic::AtomicBool>);
        impl JobHandler<TestJob> for Flaky {
            async fn run(&mut self, job: TestJob) -> Result<(), JobError> {
                if job == TestJob::Fast && self.0.load(Ordering::Relaxed) {
                    return Err("disk full".into());
                }
                Ok(())
            }
        }
        let broken = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (queue, _task) = spawn_queue("test", Flaky(broken.clone()));
        queue.request(TestJob::Fast);
        settle().await;
        assert_eq!(queue.failing(), vec![("fast", "disk full".to_owned())]);
        queue.request(TestJob::Slow);
        settle().await;
        assert_eq!(queue.failing().len(), 1, "another job's success does not hide the failure");
        broken.store(false, Ordering::Relaxed);
        queue.request(TestJob::Fast);
        settle().await;
        assert!(queue.failing().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn close_lets_the_running_job_finish_and_drops_the_rest() {
        let finished = Arc::new(AtomicUsize::new(0));
        struct Counting(Arc<AtomicUsize>);
        impl JobHandler<TestJob> for Counting {
            async fn run(&mut self, _job: TestJob) -> Result<(), JobError> {
                tokio::time::sleep(Duration::from_secs(3)).await;
                self.0.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        }
        let (queue, task) = spawn_queue("test", Counting(finished.clone()));
        queue.request(TestJob::Slow);
        settle().await;
        queue.request(TestJob::Fast);
        queue.close();
        assert!(!queue.request(TestJob::Fast), "closed queue refuses work");
        let _handler = task.await.unwrap();
        assert_eq!(finished.load(Ordering::SeqCst), 1, "running job finished, pending one dropped");
    }
}
