//! Prometheus metrics (SPEC §8), through `prometheus-client`; every name is prefixed `gale_`.
//! A top-level module, not part of `admin` (which serves them): everything that counts an
//! event, the ZooKeeper adapter included, uses it without depending on the admin endpoints.
//!
//! Events are counted where they happen, through the process-wide [`metrics()`] (a launch, an
//! exit, a ZooKeeper request, a download). Values that already live somewhere else (slot
//! states, queue stats, the cache, the session state) are copied in by
//! `admin::Sources::refresh_metrics` right before each scrape, so they are never stale and
//! cost nothing between scrapes.

use std::sync::{LazyLock, Mutex};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::model::usage::WorkerUsage;

/// One label set: (name, value) pairs.
pub(crate) type Labels = Vec<(&'static str, String)>;

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

/// Every metric the agent exports.
pub(crate) struct Metrics {
    registry: Registry,
    /// 1 for the current lifecycle state, 0 for the others.
    pub lifecycle: Family<Labels, Gauge>,
    /// 1 for the current ZooKeeper session state.
    pub zk_session: Family<Labels, Gauge>,
    pub zk_registered: Gauge,
    pub zk_sessions: Counter,
    pub zk_registrations: Counter,
    /// ZooKeeper requests by operation and result (`ok`, `no_node`, `error`, …).
    pub zk_operations: Family<Labels, Counter>,
    /// Slots by state (SPEC §3.1 state names); `empty` included.
    pub workers: Family<Labels, Gauge>,
    pub launches: Counter,
    pub launch_failures: Counter,
    /// Worker exits by reason (`exited`, `killed`, `start_timeout`, …).
    pub exits: Family<Labels, Counter>,
    /// Kills the agent started, by reason.
    pub kills: Family<Labels, Counter>,
    pub restarts: Counter,
    /// From a worker's exit being seen to its replacement running (immediate restarts only).
    pub restart_latency: Histogram,
    pub restarts_deferred: Counter,
    pub queue_depth: Family<Labels, Gauge>,
    pub queue_runs: Family<Labels, Counter>,
    pub queue_failures: Family<Labels, Counter>,
    pub queue_coalesced: Family<Labels, Counter>,
    pub queue_run_seconds: Family<Labels, Counter<f64>>,
    /// 1 healthy, 0 unhealthy, per health script.
    pub health_script: Family<Labels, Gauge>,
    pub health_runs: Family<Labels, Counter>,
    pub healthy: Gauge,
    pub blob_downloads: Family<Labels, Counter>,
    pub blob_download_bytes: Counter,
    pub cache_bytes: Gauge,
    pub cache_entries: Gauge,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub actions: Family<Labels, Counter>,
    /// Payloads that cannot be used, by kind (`assignment`, `blob`, `action`), now.
    pub bad_payloads: Family<Labels, Gauge>,
    pub control_requests: Family<Labels, Counter>,
    /// Diagnostics runs by command name (`-`: not configured) and result.
    pub diagnostics_runs: Family<Labels, Counter>,
    pub config_reloads: Family<Labels, Counter>,
    pub log_rotations: Counter,
    pub log_files_deleted: Counter,
    pub worker_log_bytes: Gauge,
    /// What each running worker uses, by topology and port (cAdvisor's `container_*` names).
    worker_usage: WorkerUsageFamilies,
    /// Counters copied from elsewhere at scrape time: the last value seen, to add the delta.
    seen: Mutex<std::collections::BTreeMap<String, f64>>,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("gale");
        macro_rules! reg {
            ($name:literal, $help:literal, $metric:expr) => {{
                let m = $metric;
                registry.register($name, $help, m.clone());
                m
            }};
        }
        let restart_latency = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        Metrics {
            lifecycle: reg!("lifecycle_state", "1 for the agent's current lifecycle state", Family::default()),
            zk_session: reg!("zk_session_state", "1 for the current ZooKeeper session state", Family::default()),
            zk_registered: reg!("zk_registered", "1 while this agent's node is registered", Gauge::default()),
            zk_sessions: reg!("zk_sessions", "ZooKeeper sessions established", Counter::default()),
            zk_registrations: reg!("zk_registrations", "registrations of the SupervisorInfo node", Counter::default()),
            zk_operations: reg!("zk_operations", "ZooKeeper requests by operation and result", Family::default()),
            workers: reg!("workers", "slots by state", Family::default()),
            launches: reg!("worker_launches", "worker processes started", Counter::default()),
            launch_failures: reg!("worker_launch_failures", "worker launches that failed", Counter::default()),
            exits: reg!("worker_exits", "worker exits by reason", Family::default()),
            kills: reg!("worker_kills", "worker stops started by the agent, by reason", Family::default()),
            restarts: reg!("worker_restarts", "relaunches of a job that started a process", Counter::default()),
            restart_latency: reg!(
                "worker_restart_latency_seconds",
                "from a crashed worker's exit to its replacement's spawn (immediate restarts)",
                restart_latency
            ),
            restarts_deferred: reg!(
                "worker_restarts_deferred",
                "relaunches held back by the node restart budget",
                Counter::default()
            ),
            queue_depth: reg!("queue_depth", "jobs waiting per event queue", Family::default()),
            queue_runs: reg!("queue_runs", "jobs run per event queue", Family::default()),
            queue_failures: reg!("queue_failures", "jobs that failed per event queue", Family::default()),
            queue_coalesced: reg!(
                "queue_coalesced",
                "requests merged into a pending job per event queue",
                Family::default()
            ),
            queue_run_seconds: reg!("queue_run_seconds", "time spent running jobs per event queue", Family::default()),
            health_script: reg!("health_check_healthy", "last result per health script (1 healthy)", Family::default()),
            health_runs: reg!("health_check_runs", "health script runs by outcome", Family::default()),
            healthy: reg!("healthy", "1 while every health check passes", Gauge::default()),
            blob_downloads: reg!("blob_downloads", "blob downloads by result", Family::default()),
            blob_download_bytes: reg!(
                "blob_download_bytes",
                "bytes installed in the cache from verified downloads (unpacked size for archives)",
                Counter::default()
            ),
            cache_bytes: reg!("blob_cache_bytes", "bytes in the blob cache", Gauge::default()),
            cache_entries: reg!("blob_cache_entries", "entries in the blob cache", Gauge::default()),
            cache_hits: reg!("blob_cache_hits", "blob uses served from the cache", Counter::default()),
            cache_misses: reg!("blob_cache_misses", "blob uses that needed a download", Counter::default()),
            actions: reg!("actions", "ZooKeeper actions by action and result", Family::default()),
            bad_payloads: reg!(
                "bad_payloads",
                "payloads under /assignments, /blobstore or /actions this agent cannot use, by kind",
                Family::default()
            ),
            control_requests: reg!("control_requests", "control socket requests by op and result", Family::default()),
            diagnostics_runs: reg!(
                "diagnostics_runs",
                "diagnostics runs by command name and result (ok, failed, timed_out, not_run, refused)",
                Family::default()
            ),
            config_reloads: reg!("config_reloads", "config reloads by result", Family::default()),
            log_rotations: reg!("worker_log_rotations", "worker log files rotated", Counter::default()),
            log_files_deleted: reg!(
                "worker_log_files_deleted",
                "rotated worker logs deleted (past worker_log_keep, or for the node quota)",
                Counter::default()
            ),
            worker_log_bytes: reg!("worker_log_bytes", "bytes of all worker logs on this host", Gauge::default()),
            worker_usage: WorkerUsageFamilies::register(&mut registry),
            seen: Mutex::new(std::collections::BTreeMap::new()),
            registry,
        }
    }

    /// The text exposition (OpenMetrics text, which Prometheus scrapes).
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// Sets a one-hot gauge family: `current` to 1, every other of `all` to 0.
    pub(crate) fn one_hot(family: &Family<Labels, Gauge>, label: &'static str, all: &[&str], current: &str) {
        for value in all {
            family.get_or_create(&labels(&[(label, value)])).set(i64::from(*value == current));
        }
    }

    /// Adds to `counter` what `total` (a running total kept elsewhere) grew by since last time.
    pub(crate) fn add_delta(&self, key: &str, counter: &Counter, total: u64) {
        let mut seen = self.seen.lock().unwrap();
        let last = seen.entry(key.to_owned()).or_insert(0.0);
        let now = total as f64;
        if now > *last {
            counter.inc_by((now - *last) as u64);
            *last = now;
        }
    }

    pub(crate) fn add_delta_f64(&self, key: &str, counter: &Counter<f64>, total: f64) {
        let mut seen = self.seen.lock().unwrap();
        let last = seen.entry(key.to_owned()).or_insert(0.0);
        if total > *last {
            counter.inc_by(total - *last);
            *last = total;
        }
    }

    /// Replaces the per-worker use series with `rows` (topology, port, use): a worker that
    /// stopped leaves no series behind.
    pub(crate) fn set_worker_usage(&self, rows: &[(&str, u16, &WorkerUsage)]) {
        let f = &self.worker_usage;
        let _one_at_a_time = f.lock.lock().unwrap();
        f.clear();
        for (topology, port, u) in rows {
            let l = labels(&[("topology", topology), ("port", &port.to_string())]);
            f.memory.get_or_create(&l).set(u.memory_bytes as i64);
            if let Some(peak) = u.memory_peak_bytes {
                f.memory_peak.get_or_create(&l).set(peak as i64);
            }
            f.cpu.get_or_create(&l).inc_by(u.cpu_usec as f64 / 1e6);
            f.processes.get_or_create(&l).set(u.processes as i64);
            if let Some(n) = u.oom_kills {
                f.oom.get_or_create(&l).inc_by(n);
            }
            if let Some(us) = u.cpu_throttled_usec {
                f.throttled.get_or_create(&l).inc_by(us as f64 / 1e6);
            }
        }
    }

    pub(crate) fn zk_op(&self, op: &str, result: &str) {
        self.zk_operations.get_or_create(&labels(&[("op", op), ("result", result)])).inc();
    }

    pub(crate) fn exit(&self, reason: &str) {
        self.exits.get_or_create(&labels(&[("reason", reason)])).inc();
    }

    pub(crate) fn kill(&self, reason: &str) {
        self.kills.get_or_create(&labels(&[("reason", reason)])).inc();
    }
}

/// The per-worker use families, rebuilt from the latest sample at each scrape.
struct WorkerUsageFamilies {
    memory: Family<Labels, Gauge>,
    memory_peak: Family<Labels, Gauge>,
    cpu: Family<Labels, Counter<f64>>,
    processes: Family<Labels, Gauge>,
    oom: Family<Labels, Counter>,
    throttled: Family<Labels, Counter<f64>>,
    /// Clearing and refilling is one step for concurrent scrapes.
    lock: Mutex<()>,
}

impl WorkerUsageFamilies {
    fn register(registry: &mut Registry) -> WorkerUsageFamilies {
        let f = WorkerUsageFamilies {
            memory: Family::default(),
            memory_peak: Family::default(),
            cpu: Family::default(),
            processes: Family::default(),
            oom: Family::default(),
            throttled: Family::default(),
            lock: Mutex::new(()),
        };
        registry.register("worker_memory_usage_bytes", "memory charged to the worker now", f.memory.clone());
        registry.register(
            "worker_memory_max_usage_bytes",
            "the most memory the worker was charged",
            f.memory_peak.clone(),
        );
        registry.register("worker_cpu_usage_seconds", "CPU time of the worker's processes", f.cpu.clone());
        registry.register("worker_processes", "processes in the worker's cgroup (or session)", f.processes.clone());
        registry.register("worker_oom_events", "worker processes ended by the OOM killer", f.oom.clone());
        registry.register(
            "worker_cpu_cfs_throttled_seconds",
            "time the worker was throttled by its cpu_percent limit",
            f.throttled.clone(),
        );
        f
    }

    fn clear(&self) {
        self.memory.clear();
        self.memory_peak.clear();
        self.cpu.clear();
        self.processes.clear();
        self.oom.clear();
        self.throttled.clear();
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process-wide metrics.
pub(crate) fn metrics() -> &'static Metrics {
    &METRICS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_prefixed_and_counters_move() {
        let m = Metrics::new();
        m.launches.inc();
        m.zk_op("get", "ok");
        Metrics::one_hot(&m.lifecycle, "state", &["starting", "running"], "running");
        m.add_delta("x", &m.cache_hits, 5);
        m.add_delta("x", &m.cache_hits, 7);
        let text = m.encode();
        assert!(text.contains("gale_worker_launches_total 1"), "{text}");
        assert!(text.contains("gale_zk_operations_total{op=\"get\",result=\"ok\"} 1"), "{text}");
        assert!(text.contains("gale_lifecycle_state{state=\"running\"} 1"), "{text}");
        assert!(text.contains("gale_lifecycle_state{state=\"starting\"} 0"), "{text}");
        assert!(text.contains("gale_blob_cache_hits_total 7"), "{text}");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("gale_"), "{line}");
        }
    }
}
