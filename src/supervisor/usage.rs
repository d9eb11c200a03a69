//! The use sampler: on every monitor tick it reads what each running worker uses (its cgroup,
//! or `/proc` under rlimits: `isolation::sample`) and publishes it in the [`NodeReport`], where
//! SupervisorInfo, the status document and the metrics read it. It runs off the queues and
//! never writes anything itself: SupervisorInfo carries the latest sample when it is written
//! for another reason or at the refresh (`SupervisorInfo::same_content` ignores use).

use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::admin::SlotStatus;
use crate::isolation::{Mechanism, Sample};
use crate::model::NodeReport;
use crate::model::usage::WorkerUsage;

/// What the sampler reads and where it publishes.
pub(super) struct Sampler {
    isolation: Arc<Mechanism>,
    slots: watch::Receiver<Vec<SlotStatus>>,
    report: Arc<watch::Sender<NodeReport>>,
    previous: Previous,
}

/// The previous sample of a worker: when, and its CPU time then.
type Previous = BTreeMap<String, (Instant, u64)>;

impl Sampler {
    pub(super) fn new(
        isolation: &Mechanism,
        slots: &watch::Receiver<Vec<SlotStatus>>,
        report: &Arc<watch::Sender<NodeReport>>,
    ) -> Sampler {
        let (slots, report) = (slots.clone(), report.clone());
        Sampler { isolation: Arc::new(isolation.clone()), slots, report, previous: Previous::new() }
    }

    /// The read of every worker with a process, to run on the blocking pool (the monitor
    /// tick, `tasks.rs`, runs it there with the log sweep).
    pub(super) fn reader(&self) -> impl FnOnce() -> Vec<(String, Sample)> + Send + 'static {
        let running: Vec<(String, u32)> =
            self.slots.borrow().iter().filter_map(|s| Some((s.worker_id.clone()?, s.pid?))).collect();
        let isolation = self.isolation.clone();
        move || {
            let sample = |(id, pid): (String, u32)| Some((id.clone(), crate::isolation::sample(&isolation, &id, pid)?));
            running.into_iter().filter_map(sample).collect()
        }
    }

    /// Publishes what `reader` read.
    pub(super) fn publish(&mut self, samples: Vec<(String, Sample)>) {
        let usage = to_usage(samples, &mut self.previous, Instant::now());
        self.report.send_if_modified(|r| {
            let changed = r.usage != usage;
            r.usage = usage;
            changed
        });
    }
}

/// Turns samples into what is reported, the CPU rate from each worker's previous sample
/// (`previous` is left holding exactly the workers sampled now).
fn to_usage(samples: Vec<(String, Sample)>, previous: &mut Previous, now: Instant) -> BTreeMap<String, WorkerUsage> {
    let mut next = Previous::new();
    let mut usage = BTreeMap::new();
    for (id, s) in samples {
        let cpu_percent = previous.get(&id).and_then(|&(at, cpu_ns)| {
            let wall_ns = now.checked_duration_since(at)?.as_nanos();
            (wall_ns > 0).then(|| (u128::from(s.cpu_ns.saturating_sub(cpu_ns)) * 100 / wall_ns) as u32)
        });
        next.insert(id.clone(), (now, s.cpu_ns));
        usage.insert(
            id,
            WorkerUsage {
                memory_bytes: s.memory_bytes,
                memory_peak_bytes: s.memory_peak_bytes,
                cpu_usec: s.cpu_ns / 1_000,
                cpu_percent,
                processes: s.processes,
                oom_kills: s.oom_kills,
                cpu_throttled_usec: s.throttled_ns.map(|ns| ns / 1_000),
            },
        );
    }
    *previous = next;
    usage
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sample(cpu_ns: u64) -> Sample {
        Sample {
            memory_bytes: 3 << 20,
            memory_peak_bytes: Some(4 << 20),
            cpu_ns,
            processes: 2,
            oom_kills: Some(0),
            throttled_ns: Some(5_000_000),
        }
    }

    #[test]
    fn cpu_percent_is_the_rate_since_the_same_workers_previous_sample() {
        let mut previous = Previous::new();
        let t0 = Instant::now();
        let first = to_usage(vec![("w1".into(), sample(1_000_000_000))], &mut previous, t0);
        assert_eq!(first["w1"].cpu_percent, None, "no rate from one sample");
        assert_eq!((first["w1"].cpu_usec, first["w1"].cpu_throttled_usec), (1_000_000, Some(5_000)));
        // 1.5 s of CPU in 2 s of wall time: 75 % of one core.
        let second = to_usage(vec![("w1".into(), sample(2_500_000_000))], &mut previous, t0 + Duration::from_secs(2));
        assert_eq!(second["w1"].cpu_percent, Some(75));
        // A worker that is gone is forgotten; a new one starts without a rate.
        let third = to_usage(vec![("w2".into(), sample(0))], &mut previous, t0 + Duration::from_secs(4));
        assert_eq!(third.keys().collect::<Vec<_>>(), ["w2"]);
        assert_eq!(third["w2"].cpu_percent, None);
        assert!(!previous.contains_key("w1"));
    }
}
