//! Blob updates: a new version of a `restart_on_update` blob stops the worker and relaunches
//! the same job once its blobs are ready again; what interrupts that; the blob problems
//! reported while a slot waits for blobs.

use super::*;

fn bj(topology: &str) -> Arc<SlotJob> {
    job(topology, LivenessMode::Process, true)
}
fn update(job: &Arc<SlotJob>) -> Input {
    Input::BlobUpdate(job.clone())
}
fn ready(job: &Arc<SlotJob>) -> Input {
    Input::BlobsReady(job.clone())
}
fn problem(job: &Arc<SlotJob>, error: Option<&str>) -> Input {
    Input::BlobProblem { job: job.clone(), error: error.map(Into::into) }
}

/// A slot running `job` (which has blobs) as worker "w1" since t0.
fn running_on_blobs(job: &Arc<SlotJob>) -> Driver {
    let mut d = Driver::new();
    d.feed(assign(job));
    d.feed(ready(job));
    d.feed(up("w1"));
    assert_eq!(d.slot.state_name(), N::Running);
    d
}

/// Feeds `input` after each setup and checks that it changes nothing at all.
fn assert_ignored(setups: &[(&[Input], N)], input: &Input) {
    for (setup, state) in setups {
        let mut d = Driver::new();
        for line in setup.iter() {
            d.feed(line.clone());
        }
        assert_eq!(d.slot.state_name(), *state, "after {setup:?}");
        let before = d.slot.clone();
        d.now += Duration::from_millis(10);
        assert_eq!(d.feed(input.clone()), Vec::<String>::new(), "{input:?} after {setup:?}");
        assert_eq!(d.slot, before, "{input:?} after {setup:?}");
    }
}

#[test]
fn a_blob_update_restarts_the_same_job_without_backoff_once_the_blobs_are_ready() {
    let a = bj("a");
    let mut d = running_on_blobs(&a);
    // An earlier crash, to show that the job's counters survive the update.
    d.run(&[
        (1_000, exit("w1", 1), &["forget w1", "relaunch a"], N::WaitingForWorkerStart),
        (0, up("w2"), &[], N::Running),
        (1_000, update(&a), &["term w2"], N::KillBlobUpdate),
        (0, update(&a), &[], N::KillBlobUpdate),
        (0, Input::Restart, &[], N::KillBlobUpdate),
        (0, assign(&a), &[], N::KillBlobUpdate),
        (100, exit("w2", 143), &["forget w2"], N::WaitingForBlobUpdate),
    ]);
    assert_eq!(reason(&d), ExitReason::Killed);
    assert_eq!(d.slot.consecutive_failures, 1, "an update kill is no failure");
    assert_eq!((d.slot.next_deadline(), d.slot.state_since), (None, d.at(2_100)), "no backoff: waits for blobs");
    let info = d.slot.to_worker_info().unwrap();
    assert_eq!(
        (info.state, info.topology_id.as_str(), info.pid, info.restarts),
        (N::WaitingForBlobUpdate, "a", None, 1)
    );
    assert_eq!(serde_json::to_value(info.state).unwrap(), "waiting_for_blob_update");

    d.run(&[
        (0, Input::Restart, &[], N::WaitingForBlobUpdate),
        (60_000, TICK, &[], N::WaitingForBlobUpdate),
        // A late answer for another job must not launch this one.
        (0, ready(&bj("b")), &[], N::WaitingForBlobUpdate),
        (0, ready(&a), &["relaunch a"], N::WaitingForWorkerStart),
        (10, up("w3"), &[], N::Running),
    ]);
    assert_eq!((d.slot.job(), d.slot.restarts, d.slot.consecutive_failures), (Some(&a), 2, 1));
    assert_eq!(reason(&d), ExitReason::Killed, "the update kill stays the last exit");
}

#[test]
fn a_blob_update_stops_a_started_worker_that_has_not_heartbeaten_yet() {
    let a = job("a", LivenessMode::Heartbeat, true);
    let mut d = Driver::new();
    d.run(&[
        (0, assign(&a), &[], N::WaitingForBlobs),
        (0, ready(&a), &["launch a"], N::WaitingForWorkerStart),
        // No process yet: the one being launched starts on the new versions anyway.
        (0, update(&a), &[], N::WaitingForWorkerStart),
        (10, up("w1"), &[], N::WaitingForWorkerStart),
        (0, update(&bj("b")), &[], N::WaitingForWorkerStart),
        (10, update(&a), &["term w1"], N::KillBlobUpdate),
        (0, hb("w1"), &[], N::KillBlobUpdate),
        (10, exit("w1", 143), &["forget w1"], N::WaitingForBlobUpdate),
        (0, ready(&a), &["relaunch a"], N::WaitingForWorkerStart),
        (0, up("w2"), &[], N::WaitingForWorkerStart),
        (0, hb("w2"), &[], N::Running),
    ]);
    assert_eq!((d.slot.restarts, d.slot.consecutive_failures, reason(&d)), (1, 0, ExitReason::Killed));
}

#[test]
fn a_blob_update_without_a_started_worker_of_that_job_is_ignored() {
    let (a, b) = (bj("a"), bj("b"));
    let setups: &[(&[Input], N)] = &[
        (&[], N::Empty),
        (&[assign(&a)], N::WaitingForBlobs),
        // The launch is outstanding.
        (&[assign(&a), ready(&a)], N::WaitingForWorkerStart),
        (&[assign(&a), ready(&a), Input::Deferred { until: Instant::now() + GRACE }], N::Backoff),
        (&[assign(&a), ready(&a), up("w1"), exit("w1", 1), up("w2"), exit("w2", 1)], N::Backoff),
        // Another job's worker.
        (&[assign(&b), ready(&b), up("w1")], N::Running),
        (&[assign(&a), ready(&a), up("w1"), unassign()], N::Kill),
        (&[assign(&a), ready(&a), up("w1"), Input::Restart], N::KillAndRelaunch),
        (&[assign(&a), ready(&a), up("w1"), update(&a)], N::KillBlobUpdate),
        (&[assign(&a), ready(&a), up("w1"), update(&a), exit("w1", 143)], N::WaitingForBlobUpdate),
    ];
    assert_ignored(setups, &update(&a));
}

#[test]
fn a_blob_update_kill_escalates_to_sigkill_like_any_kill() {
    let a = bj("a");
    let mut d = running_on_blobs(&a);
    d.run(&[(0, update(&a), &["term w1"], N::KillBlobUpdate)]);
    assert_eq!((d.slot.next_deadline(), d.slot.worker().map(|w| w.pid)), (Some(d.at(3_000)), Some(PID)));
    assert_eq!(serde_json::to_value(d.slot.state_name()).unwrap(), "kill_blob_update");
    d.run(&[
        (2_999, TICK, &[], N::KillBlobUpdate),
        (1, TICK, &["kill w1"], N::KillBlobUpdate),
        (2_999, TICK, &[], N::KillBlobUpdate),
    ]);
    assert_eq!((d.slot.error.as_deref(), d.slot.next_deadline()), (None, Some(d.at(6_000))));
    d.run(&[(1, TICK, &["kill w1"], N::KillBlobUpdate)]);
    assert_eq!(d.slot.error.as_deref(), Some("worker pid 4242 survived SIGKILL"));
    assert_eq!(d.slot.state_since, d.t0, "escalation is no new state");
    d.run(&[(10, exit("w1", 137), &["forget w1"], N::WaitingForBlobUpdate)]);
    assert_eq!((d.slot.error.clone(), reason(&d), d.slot.consecutive_failures), (None, ExitReason::Killed, 0));
}

#[test]
fn assignment_change_during_a_blob_update_kill_goes_on_with_the_new_assignment() {
    let (a, b) = (bj("a"), pj("b"));
    let mut d = running_on_blobs(&a);
    d.run(&[
        (0, update(&a), &["term w1"], N::KillBlobUpdate),
        (10, assign(&b), &[], N::Kill),
        (10, exit("w1", 143), &["forget w1", "launch b"], N::WaitingForWorkerStart),
    ]);
    assert_eq!((d.slot.job(), d.slot.last_exit.clone(), d.slot.restarts), (Some(&b), None, 0), "fresh job");

    let mut d = running_on_blobs(&a);
    d.run(&[
        (0, update(&a), &["term w1"], N::KillBlobUpdate),
        (10, unassign(), &[], N::Kill),
        (10, exit("w1", 143), &["forget w1"], N::Empty),
    ]);
    assert!(d.slot.to_worker_info().is_none());
}

#[test]
fn assignment_change_while_waiting_for_a_blob_update_needs_no_kill() {
    let a = bj("a");
    let mut d = running_on_blobs(&a);
    d.run(&[
        (0, update(&a), &["term w1"], N::KillBlobUpdate),
        (10, exit("w1", 143), &["forget w1"], N::WaitingForBlobUpdate),
        (10, assign(&a), &[], N::WaitingForBlobUpdate),
        (10, unassign(), &[], N::Empty),
        (0, ready(&a), &[], N::Empty),
    ]);
    assert_eq!((d.slot.last_exit.clone(), d.slot.to_worker_info()), (None, None));

    // Another job starts from the beginning: its own blobs, a first launch, fresh counters.
    let (b, c) = (bj("b"), pj("c"));
    let mut d = running_on_blobs(&a);
    d.run(&[
        (0, update(&a), &["term w1"], N::KillBlobUpdate),
        (10, exit("w1", 143), &["forget w1"], N::WaitingForBlobUpdate),
        (10, assign(&b), &[], N::WaitingForBlobs),
        (0, ready(&a), &[], N::WaitingForBlobs),
        (0, ready(&b), &["launch b"], N::WaitingForWorkerStart),
    ]);
    assert_eq!((d.slot.last_exit.clone(), d.slot.restarts), (None, 0));
    let mut d = running_on_blobs(&a);
    d.run(&[
        (0, update(&a), &["term w1"], N::KillBlobUpdate),
        (10, exit("w1", 143), &["forget w1"], N::WaitingForBlobUpdate),
        (10, assign(&c), &["launch c"], N::WaitingForWorkerStart),
    ]);
}

#[test]
fn waiting_for_a_blob_update_adopts_and_resets_backoff_without_a_launch() {
    let a = bj("a");
    let mut d = running_on_blobs(&a);
    d.run(&[
        (0, exit("w1", 1), &["forget w1", "relaunch a"], N::WaitingForWorkerStart),
        (0, up("w2"), &[], N::Running),
        (0, update(&a), &["term w2"], N::KillBlobUpdate),
        (0, exit("w2", 143), &["forget w2"], N::WaitingForBlobUpdate),
        (0, Input::ResetBackoff, &[], N::WaitingForBlobUpdate),
    ]);
    assert_eq!(d.slot.consecutive_failures, 0);
    // After an agent restart the worker of the same job turns out to be alive: keep it.
    let w = Worker { worker_id: "old".into(), pid: 77 };
    d.run(&[(0, Input::Adopt { worker: w.clone(), job: a.clone() }, &[], N::Running)]);
    assert_eq!((d.slot.worker(), d.slot.restarts, reason(&d)), (Some(&w), 1, ExitReason::Killed));
}

#[test]
fn an_answer_to_a_launch_being_killed_for_a_blob_update_ends_the_kill() {
    // Not reachable from the inputs today (an update kills only a started worker); handled like
    // the other kills all the same: the kill ends, the relaunch waits for BlobsReady.
    let a = bj("a");
    let killing = |d: &mut Driver| {
        let kill =
            Killing { job: a.clone(), worker: None, reason: ExitReason::Killed, sigkill_sent: false, deadline: None };
        d.slot.state = SlotState::KillBlobUpdate { kill };
        assert_eq!(d.slot.next_deadline(), None, "nothing to signal yet");
    };
    let mut d = Driver::new();
    killing(&mut d);
    d.run(&[
        (0, TICK, &[], N::KillBlobUpdate),
        (10, up("w1"), &["term w1"], N::KillBlobUpdate),
        (10, exit("w1", 143), &["forget w1"], N::WaitingForBlobUpdate),
    ]);
    let mut d = Driver::new();
    killing(&mut d);
    d.run(&[(10, Input::LaunchFailed("no such file".into()), &[], N::WaitingForBlobUpdate)]);
    assert_eq!(d.slot.error.as_deref(), Some("no such file"));
    let mut d = Driver::new();
    killing(&mut d);
    d.run(&[
        (10, Input::Deferred { until: d.at(9_000) }, &[], N::WaitingForBlobUpdate),
        (0, ready(&a), &["relaunch a"], N::WaitingForWorkerStart),
    ]);
}

#[test]
fn blob_problems_set_and_clear_the_error_while_waiting_for_blobs() {
    let a = bj("a");
    let mut d = Driver::new();
    d.run(&[
        (0, assign(&a), &[], N::WaitingForBlobs),
        (10, problem(&a, Some("download a-code: connection refused")), &[], N::WaitingForBlobs),
        // Another job's problem is not this slot's.
        (10, problem(&bj("b"), Some("stale")), &[], N::WaitingForBlobs),
    ]);
    assert_eq!(d.slot.error.as_deref(), Some("download a-code: connection refused"));
    assert_eq!(d.slot.to_worker_info().unwrap().error, d.slot.error);
    d.run(&[(10, problem(&a, None), &[], N::WaitingForBlobs)]);
    assert_eq!((d.slot.error.clone(), d.slot.state_since), (None, d.t0), "state unchanged");

    // The same while waiting for an update.
    d.run(&[
        (10, ready(&a), &["launch a"], N::WaitingForWorkerStart),
        (0, up("w1"), &[], N::Running),
        (10, update(&a), &["term w1"], N::KillBlobUpdate),
        (10, exit("w1", 143), &["forget w1"], N::WaitingForBlobUpdate),
    ]);
    let since = d.slot.state_since;
    d.run(&[(10, problem(&a, Some("a-code: sha256 mismatch")), &[], N::WaitingForBlobUpdate)]);
    assert_eq!((d.slot.error.as_deref(), d.slot.state_since), (Some("a-code: sha256 mismatch"), since));
    d.run(&[(10, problem(&a, None), &[], N::WaitingForBlobUpdate)]);
    assert_eq!((d.slot.error.clone(), d.slot.state_since), (None, since));
}

#[test]
fn blob_problems_are_ignored_in_every_other_state() {
    let a = bj("a");
    let failed = || Input::LaunchFailed("exec /bin/worker: permission denied".into());
    let setups: &[(&[Input], N)] = &[
        (&[], N::Empty),
        (&[assign(&a), ready(&a)], N::WaitingForWorkerStart),
        (&[assign(&a), ready(&a), up("w1")], N::Running),
        // An error of its own that a blob problem must neither hide nor clear.
        (&[assign(&a), ready(&a), failed(), failed()], N::Backoff),
        (&[assign(&a), ready(&a), up("w1"), unassign()], N::Kill),
        (&[assign(&a), ready(&a), up("w1"), Input::Restart], N::KillAndRelaunch),
        (&[assign(&a), ready(&a), up("w1"), update(&a)], N::KillBlobUpdate),
        // Waiting for another job's blobs.
        (&[assign(&bj("b"))], N::WaitingForBlobs),
    ];
    assert_ignored(setups, &problem(&a, Some("download a-code: connection refused")));
    assert_ignored(setups, &problem(&a, None));
}
