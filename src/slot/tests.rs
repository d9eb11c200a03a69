//! Scripts of (wait, input) → (actions, state) through the slot, one per transition of the
//! module docs and per hard case (kill during launch, assignment change while a worker dies,
//! crash loop). Time is a plain `Instant` plus offsets: nothing sleeps. This file holds the
//! script driver and the start / run / crash / backoff cases; [`kill`] the kill cases;
//! [`blob_update`] restarts on updated blobs and blob problems; [`readout`] what the executor
//! and `gale status` read off a slot.

mod blob_update;
mod kill;
mod readout;

use super::step::backoff_delay;
use super::*;
use crate::model::SlotStateName as N;

const GRACE: Duration = Duration::from_secs(3);
const WALL0: u64 = 1_700_000_000_000;
const PID: u32 = 4242;

fn policy() -> Policy {
    Policy {
        shutdown_grace: GRACE,
        backoff_initial: Duration::from_secs(1),
        backoff_max: Duration::from_secs(60),
        reset_after: Duration::from_secs(600),
    }
}

fn job(topology: &str, liveness: LivenessMode, blobs: bool) -> Arc<SlotJob> {
    let blob = BlobRef { key: format!("{topology}-code"), name: "code".into(), extract: true, restart_on_update: true };
    Arc::new(SlotJob {
        topology_id: topology.into(),
        launch: Launch {
            command: vec!["/bin/worker".into()],
            env: Default::default(),
            liveness,
            start_timeout_secs: None,
            heartbeat_timeout_secs: None,
            memory_mb: None,
            cpu_percent: None,
            user: None,
        },
        blobs: if blobs { vec![blob] } else { vec![] },
        start_timeout: Duration::from_secs(120),
        heartbeat_timeout: Duration::from_secs(30),
    })
}
fn pj(topology: &str) -> Arc<SlotJob> {
    job(topology, LivenessMode::Process, false)
}
fn hj(topology: &str) -> Arc<SlotJob> {
    job(topology, LivenessMode::Heartbeat, false)
}

fn assign(job: &Arc<SlotJob>) -> Input {
    Input::Assign(Some(job.clone()))
}
fn unassign() -> Input {
    Input::Assign(None)
}
fn up(id: &str) -> Input {
    Input::Launched(Worker { worker_id: id.into(), pid: PID })
}
fn exit(id: &str, code: i32) -> Input {
    Input::Exited { worker_id: id.into(), code: Some(code), signal: None }
}
fn hb(id: &str) -> Input {
    Input::Heartbeat { worker_id: id.into() }
}
const TICK: Input = Input::Tick;

/// One script line: wait `ms`, feed the input, expect exactly these actions, then this state.
type Line = (u64, Input, &'static [&'static str], N);

struct Driver {
    slot: Slot,
    t0: Instant,
    now: Instant,
    jitter: f64,
    policy: Policy,
}

impl Driver {
    fn new() -> Driver {
        let t0 = Instant::now();
        Driver { slot: Slot::new(6700, t0, WALL0), t0, now: t0, jitter: 1.0, policy: policy() }
    }

    /// A slot running `job` as worker "w1" since t0.
    fn running(job: &Arc<SlotJob>) -> Driver {
        let mut d = Driver::new();
        d.feed(assign(job));
        d.feed(up("w1"));
        if job.heartbeat_liveness() {
            d.feed(hb("w1"));
        }
        assert_eq!(d.slot.state_name(), N::Running);
        d
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    fn feed(&mut self, input: Input) -> Vec<String> {
        let wall_ms = WALL0 + (self.now - self.t0).as_millis() as u64;
        let env = Env { now: self.now, wall_ms, jitter: self.jitter };
        let slot = std::mem::replace(&mut self.slot, Slot::new(0, self.now, 0));
        let (slot, actions) = step(slot, input, &env, &self.policy);
        self.slot = slot;
        actions.iter().map(describe).collect()
    }

    fn run(&mut self, script: &[Line]) {
        for (i, (ms, input, want, state)) in script.iter().enumerate() {
            self.now += Duration::from_millis(*ms);
            let got = self.feed(input.clone());
            assert_eq!(got, *want, "line {i} ({input:?}): actions");
            assert_eq!(self.slot.state_name(), *state, "line {i} ({input:?}): state");
        }
    }
}

fn describe(action: &Action) -> String {
    match action {
        Action::Launch { job, restart: false } => format!("launch {}", job.topology_id),
        Action::Launch { job, restart: true } => format!("relaunch {}", job.topology_id),
        Action::Signal { worker, signal: Signal::Term } => format!("term {}", worker.worker_id),
        Action::Signal { worker, signal: Signal::Kill } => format!("kill {}", worker.worker_id),
        Action::Forget { worker_id } => format!("forget {worker_id}"),
    }
}

fn reason(d: &Driver) -> ExitReason {
    d.slot.last_exit.as_ref().expect("an exit was recorded").reason
}

#[test]
fn first_launch_waits_for_blobs_and_a_job_without_blobs_launches_at_once() {
    let a = job("a", LivenessMode::Process, true);
    let mut d = Driver::new();
    d.run(&[
        (0, assign(&a), &[], N::WaitingForBlobs),
        (0, assign(&a), &[], N::WaitingForBlobs),
        // A late answer for a job the slot no longer wants must not launch this one.
        (0, Input::BlobsReady(pj("other")), &[], N::WaitingForBlobs),
        (5, Input::BlobsReady(a.clone()), &["launch a"], N::WaitingForWorkerStart),
        (5, up("w1"), &[], N::Running),
        (5, assign(&a), &[], N::Running),
    ]);
    assert_eq!((d.slot.restarts, d.slot.state_since), (0, d.at(10)));

    let mut d = Driver::new();
    d.run(&[(0, assign(&pj("b")), &["launch b"], N::WaitingForWorkerStart)]);
}

#[test]
fn heartbeat_liveness_runs_after_the_first_heartbeat_and_is_killed_when_they_stop() {
    let a = hj("a");
    let mut d = Driver::new();
    d.run(&[
        (0, assign(&a), &["launch a"], N::WaitingForWorkerStart),
        (1_000, up("w1"), &[], N::WaitingForWorkerStart),
        (0, hb("other"), &[], N::WaitingForWorkerStart),
        (10_000, hb("w1"), &[], N::Running),
        (29_999, TICK, &[], N::Running),
        (0, hb("w1"), &[], N::Running),
        (29_999, TICK, &[], N::Running),
        (1, TICK, &["term w1"], N::KillAndRelaunch),
        (100, exit("w1", 143), &["forget w1", "relaunch a"], N::WaitingForWorkerStart),
    ]);
    assert_eq!(reason(&d), ExitReason::HeartbeatTimeout);
    assert_eq!(d.slot.consecutive_failures, 1, "a timeout kill is a failure");
}

#[test]
fn no_first_heartbeat_within_start_timeout_kills_and_relaunches() {
    let mut d = Driver::new();
    d.run(&[
        (0, assign(&hj("a")), &["launch a"], N::WaitingForWorkerStart),
        (10, up("w1"), &[], N::WaitingForWorkerStart),
        (119_989, TICK, &[], N::WaitingForWorkerStart),
        (1, TICK, &["term w1"], N::KillAndRelaunch),
        (10, exit("w1", 0), &["forget w1", "relaunch a"], N::WaitingForWorkerStart),
    ]);
    assert_eq!(reason(&d), ExitReason::StartTimeout);
}

#[test]
fn a_crash_while_starting_is_seen_and_relaunched_at_once() {
    let mut d = Driver::new();
    d.run(&[
        (0, assign(&hj("a")), &["launch a"], N::WaitingForWorkerStart),
        (10, up("w1"), &[], N::WaitingForWorkerStart),
        (
            10,
            Input::Exited { worker_id: "w1".into(), code: None, signal: Some(9) },
            &["forget w1", "relaunch a"],
            N::WaitingForWorkerStart,
        ),
    ]);
    let exit = d.slot.last_exit.clone().unwrap();
    assert_eq!(
        exit,
        LastExit { code: None, signal: Some("SIGKILL".into()), reason: ExitReason::Exited, at_ms: WALL0 + 20 }
    );
    assert_eq!((d.slot.state_since, d.slot.restarts), (d.at(20), 0), "re-entered; counted once it starts");
    d.run(&[(1, up("w2"), &[], N::WaitingForWorkerStart)]);
    assert_eq!(d.slot.restarts, 1);
}

#[test]
fn crash_loop_relaunches_at_once_then_backs_off_doubling_up_to_the_cap() {
    let mut d = Driver::running(&pj("a"));
    // (failure n, expected wait with jitter 1.0)
    let waits = [0, 1, 2, 4, 8, 16, 32, 60, 60];
    for (n, wait) in waits.iter().enumerate() {
        let id = format!("w{}", n + 1);
        let next = format!("w{}", n + 2);
        let actions = d.feed(exit(&id, 1));
        assert_eq!(d.slot.consecutive_failures, n as u32 + 1);
        if *wait == 0 {
            assert_eq!(actions, ["forget ".to_owned() + &id, "relaunch a".into()]);
        } else {
            assert_eq!(actions, ["forget ".to_owned() + &id]);
            assert_eq!(d.slot.state_name(), N::Backoff);
            let until = d.now + Duration::from_secs(*wait);
            assert_eq!(d.slot.next_deadline(), Some(until), "failure {}", n + 1);
            d.now = until - Duration::from_millis(1);
            assert!(d.feed(TICK).is_empty());
            d.now = until;
            assert_eq!(d.feed(TICK), ["relaunch a"]);
        }
        d.feed(up(&next));
        d.now += Duration::from_secs(5);
    }
    assert_eq!(d.slot.restarts, waits.len() as u32);
}

#[test]
fn backoff_jitter_draws_from_half_to_full_delay() {
    let p = policy();
    let s = Duration::from_secs;
    // (failures, jitter, expected)
    let table: &[(u32, f64, Duration)] = &[
        (0, 0.0, Duration::ZERO),
        (1, 0.5, Duration::ZERO),
        (2, 0.0, Duration::from_millis(500)),
        (2, 1.0, s(1)),
        (3, 0.5, Duration::from_millis(1_500)),
        (4, 0.0, s(2)),
        (8, 0.0, s(30)),
        (8, 1.0, s(60)),
        (u32::MAX, 1.0, s(60)),
        (u32::MAX, 0.0, s(30)),
        // Bad draws from the executor never panic nor shorten the wait below d/2.
        (2, f64::NAN, s(1)),
        (2, -3.0, Duration::from_millis(500)),
        (2, 7.0, s(1)),
        (2, f64::INFINITY, s(1)),
    ];
    for &(n, jitter, want) in table {
        assert_eq!(backoff_delay(n, &p, jitter), want, "failures {n}, jitter {jitter}");
    }
    let huge = Policy { backoff_initial: Duration::MAX, backoff_max: Duration::MAX, ..p };
    assert!(backoff_delay(40, &huge, 0.3) >= Duration::MAX / 2);
}

#[test]
fn a_worker_up_for_reset_after_forgets_earlier_failures() {
    // On exit: two quick crashes, then one after a long run is a "first" failure again.
    let mut d = Driver::running(&pj("a"));
    d.run(&[
        (1_000, exit("w1", 1), &["forget w1", "relaunch a"], N::WaitingForWorkerStart),
        (0, up("w2"), &[], N::Running),
        (1_000, exit("w2", 1), &["forget w2"], N::Backoff),
        (1_000, TICK, &["relaunch a"], N::WaitingForWorkerStart),
        (0, up("w3"), &[], N::Running),
    ]);
    // No wake-up for it: nothing changes for anyone until the next exit, which applies it.
    assert_eq!((d.slot.consecutive_failures, d.slot.next_deadline()), (2, None));
    d.run(&[(600_000, exit("w3", 1), &["forget w3", "relaunch a"], N::WaitingForWorkerStart)]);
    assert_eq!(d.slot.consecutive_failures, 1);

    // Or on any tick while running past it.
    d.run(&[(0, up("w4"), &[], N::Running), (600_000, TICK, &[], N::Running)]);
    assert_eq!((d.slot.consecutive_failures, d.slot.next_deadline()), (0, None));
}

#[test]
fn deferred_by_the_restart_budget_waits_then_relaunches() {
    let mut d = Driver::running(&pj("a"));
    let until = d.at(30_000);
    d.run(&[
        (0, exit("w1", 1), &["forget w1", "relaunch a"], N::WaitingForWorkerStart),
        (0, Input::Deferred { until }, &[], N::Backoff),
        (0, Input::Deferred { until }, &[], N::Backoff),
    ]);
    assert_eq!(d.slot.next_deadline(), Some(until));
    d.run(&[
        (29_999, TICK, &[], N::Backoff),
        (1, TICK, &["relaunch a"], N::WaitingForWorkerStart),
        (0, up("w2"), &[], N::Running),
    ]);
    assert_eq!(d.slot.restarts, 1, "the refused launch is not a restart");
}

#[test]
fn launch_failures_back_off_like_crashes_and_a_start_clears_the_error() {
    let mut d = Driver::new();
    d.run(&[
        (0, assign(&pj("a")), &["launch a"], N::WaitingForWorkerStart),
        (
            0,
            Input::LaunchFailed("exec /bin/worker: permission denied".into()),
            &["relaunch a"],
            N::WaitingForWorkerStart,
        ),
        (0, Input::LaunchFailed("exec /bin/worker: permission denied".into()), &[], N::Backoff),
        (0, Input::LaunchFailed("stale".into()), &[], N::Backoff),
    ]);
    let info = d.slot.to_worker_info().unwrap();
    assert_eq!(
        (info.error.as_deref(), info.pid, info.worker_id.as_str()),
        (Some("exec /bin/worker: permission denied"), None, "")
    );
    d.run(&[(1_000, TICK, &["relaunch a"], N::WaitingForWorkerStart), (0, up("w1"), &[], N::Running)]);
    assert_eq!((d.slot.error.clone(), d.slot.restarts), (None, 1));
}

#[test]
fn timeout_kills_count_as_consecutive_failures() {
    let mut d = Driver::running(&hj("a"));
    d.run(&[
        (30_000, TICK, &["term w1"], N::KillAndRelaunch),
        (1, exit("w1", 143), &["forget w1", "relaunch a"], N::WaitingForWorkerStart),
        (0, up("w2"), &[], N::WaitingForWorkerStart),
        (120_000, TICK, &["term w2"], N::KillAndRelaunch),
        (1, exit("w2", 143), &["forget w2"], N::Backoff),
    ]);
}

#[test]
fn exits_of_unknown_workers_are_only_forgotten_in_every_state() {
    let a = job("a", LivenessMode::Heartbeat, true);
    let setups: &[&[Input]] = &[
        &[],
        &[assign(&a)],
        &[assign(&a), Input::BlobsReady(a.clone())],
        &[assign(&a), Input::BlobsReady(a.clone()), up("w1")],
        &[assign(&a), Input::BlobsReady(a.clone()), up("w1"), hb("w1")],
        &[assign(&a), Input::BlobsReady(a.clone()), up("w1"), unassign()],
        &[assign(&a), Input::BlobsReady(a.clone()), up("w1"), Input::Restart],
        &[assign(&a), Input::BlobsReady(a.clone()), up("w1"), Input::BlobUpdate(a.clone())],
        &[assign(&a), Input::BlobsReady(a.clone()), up("w1"), Input::BlobUpdate(a.clone()), exit("w1", 143)],
        &[assign(&a), Input::BlobsReady(a.clone()), Input::Deferred { until: Instant::now() + GRACE }],
    ];
    for setup in setups {
        let mut d = Driver::new();
        for input in setup.iter() {
            d.feed(input.clone());
        }
        let before = d.slot.clone();
        assert_eq!(d.feed(exit("ghost", 1)), ["forget ghost"], "after {setup:?}");
        assert_eq!(d.slot, before, "after {setup:?}");
    }
}

#[test]
fn absurd_timeouts_never_panic() {
    let mut j = (*hj("a")).clone();
    j.start_timeout = Duration::MAX;
    j.heartbeat_timeout = Duration::MAX;
    let j = Arc::new(j);
    let mut d = Driver::new();
    d.policy = Policy { shutdown_grace: Duration::MAX, reset_after: Duration::MAX, ..policy() };
    d.run(&[
        (0, assign(&j), &["launch a"], N::WaitingForWorkerStart),
        (0, up("w1"), &[], N::WaitingForWorkerStart),
        (0, hb("w1"), &[], N::Running),
        (1_000_000, TICK, &[], N::Running),
        (0, Input::Restart, &["term w1"], N::KillAndRelaunch),
        (1_000_000, TICK, &[], N::KillAndRelaunch),
    ]);
    assert!(d.slot.next_deadline().is_some_and(|t| t > d.now));
}

#[test]
fn new_effective_timeouts_for_the_same_job_apply_without_touching_the_worker() {
    let a = hj("a");
    let mut d = Driver::running(&a);
    // A config reload: same assignment, heartbeat timeout 30 s -> 5 s.
    let shorter = Arc::new(SlotJob { heartbeat_timeout: Duration::from_secs(5), ..(*a).clone() });
    assert_eq!(*shorter, *a, "the same job");
    d.run(&[
        // The last heartbeat was at 0: hung from 5 s on now, not 30 s.
        (1_000, assign(&shorter), &[], N::Running),
        (3_999, TICK, &[], N::Running),
        (1, TICK, &["term w1"], N::KillAndRelaunch),
    ]);
    assert_eq!(d.slot.state.killing().map(|k| k.reason), Some(ExitReason::HeartbeatTimeout));
}
