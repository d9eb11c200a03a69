//! Timers: a periodic request of one job on one queue.
//!
//! A tick is just `queue.request(job)`, so a tick that arrives while the job is pending is
//! coalesced by the queue, never stacked. Missed ticks (the runtime was busy) are delayed,
//! not burst.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::{Job, QueueHandle};

/// Requests `job` on `queue` every `period` (first after one period) until `stop` changes
/// to true or its sender is dropped.
pub fn spawn_timer<J: Job>(
    queue: QueueHandle<J>,
    job: J,
    period: Duration,
    stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let (_fixed, period) = watch::channel(period);
    spawn_timer_with(queue, job, period, stop)
}

/// As [`spawn_timer`], with a period that can change (a config reload): a new period restarts
/// the timer, the next tick one new period later.
pub fn spawn_timer_with<J: Job>(
    queue: QueueHandle<J>,
    job: J,
    mut period: watch::Receiver<Duration>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut current = *period.borrow_and_update();
        let start = |p: Duration| {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + p, p);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            ticks
        };
        let mut ticks = start(current);
        let mut changes = true;
        loop {
            tokio::select! {
                _ = ticks.tick() => { queue.request(job); }
                res = period.changed(), if changes => match res {
                    // The sender is gone: the period is fixed from now on.
                    Err(_) => changes = false,
                    Ok(()) => {
                        let next = *period.borrow_and_update();
                        if next != current {
                            current = next;
                            ticks = start(current);
                        }
                    }
                },
                res = stop.wait_for(|stopped| *stopped) => {
                    let _ = res;
                    break;
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{JobError, JobHandler, spawn_queue};
    use std::sync::{Arc, Mutex};

    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    struct Tick;
    impl Job for Tick {
        fn name(&self) -> &'static str {
            "tick"
        }
    }

    /// Records the (paused-clock) time of each run, then takes `cost`.
    struct Stamp {
        at: Arc<Mutex<Vec<Duration>>>,
        start: tokio::time::Instant,
        cost: Duration,
    }
    impl JobHandler<Tick> for Stamp {
        async fn run(&mut self, _: Tick) -> Result<(), JobError> {
            self.at.lock().unwrap().push(self.start.elapsed());
            tokio::time::sleep(self.cost).await;
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_sync_never_delays_the_heartbeat_timer() {
        let start = tokio::time::Instant::now();
        let syncs = Arc::new(Mutex::new(Vec::new()));
        let beats = Arc::new(Mutex::new(Vec::new()));
        // A sync that takes 60 s, requested every 10 s; a heartbeat every 5 s on its own.
        let (sync_q, _t1) = spawn_queue("sync", Stamp { at: syncs.clone(), start, cost: Duration::from_secs(60) });
        let (beat_q, _t2) = spawn_queue("beat", Stamp { at: beats.clone(), start, cost: Duration::ZERO });
        let (_stop_tx, stop) = watch::channel(false);
        spawn_timer(sync_q.clone(), Tick, Duration::from_secs(10), stop.clone());
        spawn_timer(beat_q, Tick, Duration::from_secs(5), stop);

        tokio::time::sleep(Duration::from_millis(120_500)).await;
        let beats = beats.lock().unwrap().clone();
        let expected: Vec<Duration> = (1..=24).map(|i| Duration::from_secs(5 * i)).collect();
        assert_eq!(beats, expected, "heartbeats exactly every 5 s despite the slow sync");
        // The sync ran at 10 s and, coalesced, once more right after (at 70 s), not 12 times.
        assert_eq!(*syncs.lock().unwrap(), vec![Duration::from_secs(10), Duration::from_secs(70)]);
        assert!(sync_q.stats().coalesced.load(std::sync::atomic::Ordering::Relaxed) >= 4);
    }

    #[tokio::test(start_paused = true)]
    async fn stop_ends_the_timer() {
        let (q, _t) =
            spawn_queue("q", Stamp { at: Arc::default(), start: tokio::time::Instant::now(), cost: Duration::ZERO });
        let (stop_tx, stop) = watch::channel(false);
        let timer = spawn_timer(q, Tick, Duration::from_secs(1), stop);
        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), timer).await.expect("timer stops").unwrap();
    }
}
