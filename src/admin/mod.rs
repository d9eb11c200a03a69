//! What an operator reads and does on a host: the status document, the metrics, the read-only
//! HTTP endpoints (SPEC §8) and the control socket for mutations.
//!
//! Nothing here owns agent state. The endpoints read the `watch` channels the owners publish
//! ([`Sources`]) and build a [`Status`] per request; operations are forwarded to their owner
//! (the executor, the main loop) as [`Operation`](crate::model::action::Operation)s and answered
//! from there.

pub(crate) mod control;
pub(crate) mod http;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::blob::BlobView;
use crate::health::{HealthReport, ScriptResult};
use crate::lifecycle::Lifecycle;
use crate::metrics::{self, metrics};
use crate::model::usage::{HostUsage, WorkerUsage};
use crate::model::{LastExit, NodeReport, SlotStateName, ZkStatus, unix_ms};

/// One slot as `gale status` shows it (every configured port, `empty` included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SlotStatus {
    pub port: u16,
    pub state: SlotStateName,
    pub topology_id: Option<String>,
    pub worker_id: Option<String>,
    pub pid: Option<u32>,
    /// When the slot entered its state (unix ms).
    pub since_ms: u64,
    /// Since when the worker has been running (unix ms), while it is.
    pub running_since_ms: Option<u64>,
    pub restarts: u32,
    pub last_exit: Option<LastExit>,
    /// End of the backoff wait (unix ms), in `backoff`.
    pub backoff_until_ms: Option<u64>,
    /// What the slot waits for before it can launch (blobs downloading or failing).
    #[serde(default)]
    pub waiting_for: Vec<String>,
    pub error: Option<String>,
    /// What the worker uses (latest sample), while a process runs.
    #[serde(default)]
    pub usage: Option<WorkerUsage>,
}

/// Which reader found it: the `kind` label of `gale_bad_payloads`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum PayloadKind {
    /// `/assignments/<topology-id>`
    Assignment,
    /// `/blobstore/<blob-key>`
    Blob,
    /// `/actions/<supervisor-id>/<action-id>`
    Action,
}

impl PayloadKind {
    pub(crate) const ALL: [PayloadKind; 3] = [PayloadKind::Assignment, PayloadKind::Blob, PayloadKind::Action];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            PayloadKind::Assignment => "assignment",
            PayloadKind::Blob => "blob",
            PayloadKind::Action => "action",
        }
    }
}

/// A payload this agent read and cannot use (`/status` `bad_payloads[]`); the set is kept by
/// `supervisor::bad_payloads`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BadPayload {
    pub kind: PayloadKind,
    /// The ZooKeeper node.
    pub path: String,
    /// The topology id, blob key or action node name (the node's last path component).
    pub name: String,
    /// What is wrong, without the path (it is in `path`).
    pub reason: String,
    /// When this node was first found bad (unix ms).
    pub since_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ZkStatusDoc {
    pub state: String,
    pub session_id: Option<String>,
    pub registered: bool,
    pub sessions: u64,
    pub registrations: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HealthDoc {
    /// `healthy`, `unhealthy` or `unknown` (no run yet).
    pub state: String,
    /// `drain` or `exit`.
    pub on_failure: String,
    pub runs: u64,
    pub last_run_ms: Option<u64>,
    pub scripts: Vec<ScriptResult>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CacheDoc {
    pub entries: usize,
    pub bytes: u64,
    pub target_bytes: u64,
    pub referenced: usize,
    pub hits: u64,
    pub misses: u64,
    pub downloading: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct QueueDoc {
    pub name: String,
    pub depth: usize,
    pub runs: u64,
    pub failures: u64,
    pub coalesced: u64,
    pub run_seconds_total: f64,
    pub last_run_ms: f64,
    /// Job name -> error, for jobs whose last run failed (empty when all is well).
    #[serde(default)]
    pub failing: std::collections::BTreeMap<String, String>,
}

/// `GET /status`, `gale status --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Status {
    pub version: String,
    pub supervisor_id: String,
    pub hostname: String,
    /// Lifecycle state (SPEC §6).
    pub state: String,
    /// Workers stopped by `gale drain` (or a `drain` action).
    pub drained: bool,
    /// How worker limits are enforced (SPEC §7): `cgroup v2`, `cgroup v1` or `rlimits`.
    pub isolation: String,
    pub started_at_ms: u64,
    pub time_ms: u64,
    pub zookeeper: ZkStatusDoc,
    pub slots: Vec<SlotStatus>,
    /// The workers' use summed.
    #[serde(default)]
    pub used: HostUsage,
    pub health: HealthDoc,
    pub cache: CacheDoc,
    pub queues: Vec<QueueDoc>,
    /// Payloads under `/assignments`, `/blobstore` (of blobs this host uses) and `/actions/<id>`
    /// that cannot be used, until they are fixed or deleted (SPEC §3).
    #[serde(default)]
    pub bad_payloads: Vec<BadPayload>,
}

/// A queue's numbers, read at request time.
pub(crate) type QueueProbe = Arc<dyn Fn() -> QueueDoc + Send + Sync>;

/// Everything the endpoints read; cheap to clone.
#[derive(Clone)]
pub(crate) struct Sources {
    pub supervisor_id: String,
    pub hostname: String,
    pub started_at_ms: u64,
    /// The config in force (reloads included): `health.on_failure`, `blob.cache_target_mb`.
    pub config: watch::Receiver<Arc<crate::config::Config>>,
    /// How worker limits are enforced: "cgroup v2", "cgroup v1" or "rlimits".
    pub isolation: String,
    pub report: watch::Receiver<NodeReport>,
    pub zk: watch::Receiver<ZkStatus>,
    pub slots: watch::Receiver<Vec<SlotStatus>>,
    pub health: watch::Receiver<HealthReport>,
    pub cache: watch::Receiver<Arc<BlobView>>,
    pub drained: watch::Receiver<bool>,
    /// The payloads the readers cannot use, by path.
    pub bad_payloads: watch::Receiver<BTreeMap<String, BadPayload>>,
    pub queues: Vec<QueueProbe>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources").field("supervisor_id", &self.supervisor_id).finish_non_exhaustive()
    }
}

impl Sources {
    pub(crate) fn lifecycle(&self) -> Lifecycle {
        self.report.borrow().lifecycle
    }

    /// `/ready`: running (or draining) with a registered, connected session.
    pub(crate) fn ready(&self) -> bool {
        let zk = self.zk.borrow();
        matches!(self.lifecycle(), Lifecycle::Running | Lifecycle::Draining) && zk.usable()
    }

    pub(crate) fn status(&self) -> Status {
        let zk = self.zk.borrow().clone();
        let health = Some(self.health.borrow().clone()).filter(|h| h.runs > 0);
        let (cache, downloading) = {
            let view = self.cache.borrow();
            (view.cache, view.blobs.values().filter(|b| b.downloading).count())
        };
        let slots = self.slots_with_usage();
        Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            supervisor_id: self.supervisor_id.clone(),
            hostname: self.hostname.clone(),
            state: self.lifecycle().as_str().to_owned(),
            drained: *self.drained.borrow(),
            isolation: self.isolation.clone(),
            started_at_ms: self.started_at_ms,
            time_ms: unix_ms(),
            zookeeper: ZkStatusDoc {
                state: zk.state.to_owned(),
                session_id: zk.session_id.clone(),
                registered: zk.registered,
                sessions: zk.sessions,
                registrations: zk.registrations,
            },
            used: HostUsage::total(slots.iter().filter_map(|s| s.usage.as_ref())),
            slots,
            health: HealthDoc {
                state: match &health {
                    None => "unknown",
                    Some(h) if h.healthy => "healthy",
                    Some(_) => "unhealthy",
                }
                .to_owned(),
                on_failure: match self.config.borrow().health.on_failure {
                    crate::config::OnHealthFailure::Drain => "drain",
                    crate::config::OnHealthFailure::Exit => "exit",
                }
                .to_owned(),
                runs: health.as_ref().map_or(0, |h| h.runs),
                last_run_ms: health.as_ref().map(|h| h.at_ms),
                scripts: health.map(|h| h.scripts).unwrap_or_default(),
            },
            cache: CacheDoc {
                entries: cache.entries,
                bytes: cache.bytes,
                target_bytes: self.config.borrow().blob.cache_target_mb.saturating_mul(1024 * 1024),
                referenced: cache.referenced,
                hits: cache.hits,
                misses: cache.misses,
                downloading,
            },
            queues: self.queues.iter().map(|probe| probe()).collect(),
            bad_payloads: self.bad_payloads.borrow().values().cloned().collect(),
        }
    }

    /// The slots, each running worker with its latest use sample.
    fn slots_with_usage(&self) -> Vec<SlotStatus> {
        let report = self.report.borrow();
        let mut slots = self.slots.borrow().clone();
        for slot in &mut slots {
            slot.usage = slot.pid.and(slot.worker_id.as_ref()).and_then(|id| report.usage.get(id).cloned());
        }
        slots
    }

    /// Copies what lives elsewhere into the metrics, right before a scrape.
    pub(crate) fn refresh_metrics(&self) {
        let m = metrics();
        let status = self.status();
        metrics::Metrics::one_hot(
            &m.lifecycle,
            "state",
            &["starting", "recovering", "running", "draining", "stopping"],
            &status.state,
        );
        metrics::Metrics::one_hot(
            &m.zk_session,
            "state",
            &["connecting", "connected", "disconnected", "expired", "closed", "auth_failed"],
            &status.zookeeper.state,
        );
        m.zk_registered.set(i64::from(status.zookeeper.registered));
        m.add_delta("zk_sessions", &m.zk_sessions, status.zookeeper.sessions);
        m.add_delta("zk_registrations", &m.zk_registrations, status.zookeeper.registrations);
        let mut by_state: BTreeMap<&str, i64> = BTreeMap::new();
        for slot in &status.slots {
            *by_state.entry(slot.state.as_str()).or_default() += 1;
        }
        for state in SlotStateName::ALL {
            let n = by_state.get(state.as_str()).copied().unwrap_or(0);
            m.workers.get_or_create(&vec![("state", state.as_str().to_owned())]).set(n);
        }
        for q in &status.queues {
            let l = vec![("queue", q.name.clone())];
            m.queue_depth.get_or_create(&l).set(q.depth as i64);
            m.add_delta(&format!("qr/{}", q.name), &m.queue_runs.get_or_create(&l), q.runs);
            m.add_delta(&format!("qf/{}", q.name), &m.queue_failures.get_or_create(&l), q.failures);
            m.add_delta(&format!("qc/{}", q.name), &m.queue_coalesced.get_or_create(&l), q.coalesced);
            m.add_delta_f64(&format!("qs/{}", q.name), &m.queue_run_seconds.get_or_create(&l), q.run_seconds_total);
        }
        m.healthy.set(i64::from(status.health.state == "healthy"));
        for script in &status.health.scripts {
            m.health_script.get_or_create(&vec![("script", script.script.clone())]).set(i64::from(script.healthy));
        }
        for kind in PayloadKind::ALL {
            let n = status.bad_payloads.iter().filter(|b| b.kind == kind).count();
            m.bad_payloads.get_or_create(&vec![("kind", kind.as_str().to_owned())]).set(n as i64);
        }
        let usage: Vec<(&str, u16, &WorkerUsage)> =
            status.slots.iter().filter_map(|s| Some((s.topology_id.as_deref()?, s.port, s.usage.as_ref()?))).collect();
        m.set_worker_usage(&usage);
        m.cache_bytes.set(status.cache.bytes as i64);
        m.cache_entries.set(status.cache.entries as i64);
        m.add_delta("cache_hits", &m.cache_hits, status.cache.hits);
        m.add_delta("cache_misses", &m.cache_misses, status.cache.misses);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    enum J {
        A,
        B,
    }
    impl crate::event::Job for J {
        fn name(&self) -> &'static str {
            "j"
        }
    }

    fn probe(queue: &crate::event::QueueHandle<J>) -> QueueProbe {
        let queue = queue.clone();
        Arc::new(move || QueueDoc {
            name: "test-queue".into(),
            depth: queue.depth(),
            runs: 0,
            failures: 0,
            coalesced: queue.stats().coalesced.load(std::sync::atomic::Ordering::Relaxed),
            run_seconds_total: 0.0,
            last_run_ms: 0.0,
            failing: Default::default(),
        })
    }

    #[test]
    fn queue_depth_and_status_come_from_their_sources() {
        // A queue nobody runs: requests stay pending.
        let queue = crate::event::new_queue::<J>("test-queue");
        queue.request(J::A);
        queue.request(J::B);
        queue.request(J::B);
        let report = NodeReport::new(Lifecycle::Running);
        let zk = ZkStatus {
            state: "connected",
            session_id: Some("0x1".into()),
            registered: true,
            registrations: 1,
            sessions: 1,
        };
        let sources = Sources {
            supervisor_id: "s".into(),
            hostname: "h".into(),
            started_at_ms: 0,
            config: watch::channel(Arc::new(
                crate::config::parse("[zookeeper]\nservers = [\"127.0.0.1:2181\"]\n", std::path::Path::new("/x.toml"))
                    .unwrap(),
            ))
            .1,
            isolation: "rlimits".into(),
            report: watch::channel(report).1,
            zk: watch::channel(zk).1,
            slots: watch::channel(Vec::new()).1,
            health: watch::channel(HealthReport::default()).1,
            cache: watch::channel(Arc::new(BlobView::default())).1,
            drained: watch::channel(false).1,
            bad_payloads: watch::channel(BTreeMap::new()).1,
            queues: vec![probe(&queue)],
        };
        assert!(sources.ready());
        let status = sources.status();
        assert_eq!((status.queues[0].depth, status.queues[0].coalesced), (2, 1));
        assert_eq!(status.health.state, "unknown", "no run yet");
        sources.refresh_metrics();
        let text = metrics().encode();
        assert!(text.contains("gale_queue_depth{queue=\"test-queue\"} 2"), "{text}");
        assert!(text.contains("gale_queue_coalesced_total{queue=\"test-queue\"} 1"), "{text}");
    }
}
