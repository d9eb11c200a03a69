//! Timers: a periodic request of one job on one queue.
//!
//! A tick is just `queue.request(job)`, so a tick that arrives while the job is pending is
//! coalesced by the queue, never stacked. Missed ticks (the runtime was busy) are delayed,
//! not burst.
//!
//! The agent's timers start at a random phase ([`Phase::Random`]): agents started together (a
//! fleet-wide upgrade, a power event, a test rig) would otherwise send their periodic
//! ZooKeeper reads in the same second for as long as they run (measured: the busiest second
//! 6–9× the mean, `docs/scale.md`). The first tick comes at a random point of the second
//! period, never earlier than one period: nothing that start-up needs waits for a timer (the
//! first sync is requested by the registration, the first monitor pass by start-up itself),
//! and no tick comes sooner after start than it did with a fixed phase.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::{Job, QueueHandle};
use crate::shutdown::Shutdown;

/// When a timer's first tick comes, after it starts or its period changes; then every period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// One period later: timers started together tick together. Tests only (their ticks at
    /// exact times); the agent's timers all use `Random`.
    #[cfg(test)]
    Fixed,
    /// Uniformly in [period, 2 × period): timers started together spread over the period.
    Random,
}

impl Phase {
    /// The delay before the first tick; `unit` is a draw from [0, 1).
    fn first_tick(self, period: Duration, unit: f64) -> Duration {
        match self {
            #[cfg(test)]
            Phase::Fixed => period,
            Phase::Random => period + period.mul_f64(unit.clamp(0.0, 1.0)),
        }
    }
}

/// Requests `job` on `queue` every `period` (first after one period) until `stop` changes
/// to true or its sender is dropped. Tests only: a fixed period and phase.
#[cfg(test)]
pub(crate) fn spawn_timer<J: Job>(queue: QueueHandle<J>, job: J, period: Duration, stop: Shutdown) -> JoinHandle<()> {
    let (_fixed, period) = watch::channel(period);
    spawn_timer_with(queue, job, period, Phase::Fixed, stop)
}

/// Requests `job` on `queue` every `period` until `stop` changes to true or its sender is
/// dropped. The period can change (a config reload): see [`Ticks`].
pub(crate) fn spawn_timer_with<J: Job>(
    queue: QueueHandle<J>,
    job: J,
    period: watch::Receiver<Duration>,
    phase: Phase,
    mut stop: Shutdown,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = Ticks::new(period, phase);
        loop {
            tokio::select! {
                () = ticks.next() => { queue.request(job); }
                () = stop.wait() => break,
            }
        }
    })
}

/// The ticks of a timer whose period can change (a config reload): a new period restarts
/// it, its first tick placed by `phase` again (so a reload pushed to a fleet at once does
/// not line the timers up either). For a task that does more on a tick than request one job.
pub(crate) struct Ticks {
    period: watch::Receiver<Duration>,
    /// False once the period's sender is gone: the period is fixed from then on.
    changes: bool,
    current: Duration,
    phase: Phase,
    ticks: tokio::time::Interval,
}

impl Ticks {
    pub(crate) fn new(mut period: watch::Receiver<Duration>, phase: Phase) -> Ticks {
        let current = *period.borrow_and_update();
        Ticks { period, changes: true, current, phase, ticks: Ticks::start(current, phase) }
    }

    fn start(period: Duration, phase: Phase) -> tokio::time::Interval {
        let first = phase.first_tick(period, fastrand::f64());
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + first, period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticks
    }

    /// The next tick (cancel safe).
    pub(crate) async fn next(&mut self) {
        loop {
            tokio::select! {
                _ = self.ticks.tick() => return,
                res = self.period.changed(), if self.changes => match res {
                    Err(_) => self.changes = false,
                    Ok(()) => {
                        let next = *self.period.borrow_and_update();
                        if next != self.current {
                            self.current = next;
                            self.ticks = Ticks::start(next, self.phase);
                        }
                    }
                },
            }
        }
    }
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
        let (_stopper, stop) = crate::shutdown::Stopper::new();
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

    #[test]
    fn a_random_phase_is_within_the_second_period() {
        let p = Duration::from_secs(10);
        assert_eq!(Phase::Fixed.first_tick(p, 0.7), p);
        assert_eq!(Phase::Random.first_tick(p, 0.0), p);
        assert_eq!(Phase::Random.first_tick(p, 0.25), Duration::from_millis(12_500));
        assert!(Phase::Random.first_tick(p, 0.999_999) < 2 * p);
    }

    #[tokio::test(start_paused = true)]
    async fn timers_started_together_with_a_random_phase_spread_over_the_period() {
        let start = tokio::time::Instant::now();
        let (_stopper, stop) = crate::shutdown::Stopper::new();
        let period = Duration::from_secs(10);
        let mut runs = Vec::new();
        for _ in 0..40 {
            // One queue each: on a shared queue the ticks would coalesce.
            let at = Arc::new(Mutex::new(Vec::new()));
            let (q, _t) = spawn_queue("q", Stamp { at: at.clone(), start, cost: Duration::ZERO });
            let (_fixed, period_rx) = watch::channel(period);
            spawn_timer_with(q, Tick, period_rx, Phase::Random, stop.clone());
            runs.push((at, _fixed));
        }
        tokio::time::sleep(Duration::from_millis(45_500)).await;
        let mut firsts = Vec::new();
        for (at, _) in &runs {
            let at = at.lock().unwrap().clone();
            let first = at[0];
            // (<=: the timer wheel rounds a deadline up to the next millisecond.)
            assert!(first >= period && first <= 2 * period, "first tick {first:?} not in the second period");
            // Then a fixed rhythm from that phase (compared up to 45 s: all of those have run).
            let upto = |t: &Duration| *t < Duration::from_secs(45);
            let expected: Vec<Duration> = (0u32..).map(|i| first + period * i).take_while(upto).collect();
            let seen: Vec<Duration> = at.iter().copied().filter(upto).collect();
            assert_eq!(seen, expected, "every period after the first tick");
            firsts.push(first);
        }
        firsts.sort();
        let spread = *firsts.last().unwrap() - firsts[0];
        // 40 uniform draws over 10 s: all within 5 s of each other has odds ~1e-10.
        assert!(spread >= Duration::from_secs(5), "first ticks not spread over the period: {firsts:?}");
        firsts.dedup();
        assert!(firsts.len() >= 30, "first ticks should differ: {firsts:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_period_restarts_random_phase_timers_spread_again() {
        // A reload pushed to a fleet at once: all timers get the new period at the same moment.
        let start = tokio::time::Instant::now();
        let (period_tx, period_rx) = watch::channel(Duration::from_secs(100));
        let (_stopper, stop) = crate::shutdown::Stopper::new();
        let mut stamps = Vec::new();
        for _ in 0..30 {
            let at = Arc::new(Mutex::new(Vec::new()));
            let (q, _t) = spawn_queue("q", Stamp { at: at.clone(), start, cost: Duration::ZERO });
            spawn_timer_with(q, Tick, period_rx.clone(), Phase::Random, stop.clone());
            stamps.push(at);
        }
        tokio::time::sleep(Duration::from_secs(50)).await;
        period_tx.send(Duration::from_secs(4)).unwrap();
        tokio::time::sleep(Duration::from_millis(20_500)).await;
        let mut firsts = Vec::new();
        for at in &stamps {
            let at = at.lock().unwrap().clone();
            assert!(at[0] >= Duration::from_secs(54) && at[0] <= Duration::from_secs(58), "{at:?}");
            assert!(at.windows(2).all(|w| w[1] - w[0] == Duration::from_secs(4)), "{at:?}");
            firsts.push(at[0]);
        }
        firsts.sort();
        // 30 uniform draws over 4 s: all within 2 s of each other has odds ~1e-7.
        assert!(*firsts.last().unwrap() - firsts[0] >= Duration::from_secs(2), "not spread again: {firsts:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn stop_ends_the_timer() {
        let (q, _t) =
            spawn_queue("q", Stamp { at: Arc::default(), start: tokio::time::Instant::now(), cost: Duration::ZERO });
        let (stopper, stop) = crate::shutdown::Stopper::new();
        let timer = spawn_timer(q, Tick, Duration::from_secs(1), stop);
        stopper.stop();
        tokio::time::timeout(Duration::from_secs(5), timer).await.expect("timer stops").unwrap();
    }
}
