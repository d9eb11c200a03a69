//! Kills and what interrupts them: assignment changes in every phase of a worker's life,
//! escalation to SIGKILL, operator restarts, adoption next to a live worker.

use super::*;

#[test]
fn assignment_change_while_the_launch_is_outstanding_kills_the_worker_once_it_reports() {
    let (a, b) = (pj("a"), pj("b"));
    let mut d = Driver::new();
    d.run(&[
        (0, assign(&a), &["launch a"], N::WaitingForWorkerStart),
        (5, assign(&b), &[], N::Kill),
        (0, TICK, &[], N::Kill),
        (5, up("w1"), &["term w1"], N::Kill),
        (5, exit("w1", 143), &["forget w1", "launch b"], N::WaitingForWorkerStart),
    ]);
    assert_eq!((d.slot.job(), d.slot.last_exit.clone()), (Some(&b), None), "fresh job, fresh record");

    // The same with a worker already up but not yet heartbeating.
    let mut d = Driver::new();
    d.run(&[
        (0, assign(&hj("a")), &["launch a"], N::WaitingForWorkerStart),
        (5, up("w1"), &[], N::WaitingForWorkerStart),
        (5, assign(&b), &["term w1"], N::Kill),
        (5, hb("w1"), &[], N::Kill),
        (5, exit("w1", 0), &["forget w1", "launch b"], N::WaitingForWorkerStart),
    ]);
}

#[test]
fn assignment_change_while_the_worker_dies_in_either_order() {
    let (a, b) = (pj("a"), pj("b"));
    // Exit first: A is relaunched at once, then the change kills that relaunch.
    let mut d = Driver::running(&a);
    d.run(&[
        (10, exit("w1", 1), &["forget w1", "relaunch a"], N::WaitingForWorkerStart),
        (0, assign(&b), &[], N::Kill),
        (1, up("w2"), &["term w2"], N::Kill),
        (1, exit("w2", 143), &["forget w2", "launch b"], N::WaitingForWorkerStart),
    ]);
    assert_eq!((d.slot.restarts, d.slot.consecutive_failures), (0, 0));

    // Assignment first: the exit is the expected end of the kill.
    let mut d = Driver::running(&a);
    d.run(&[
        (10, assign(&b), &["term w1"], N::Kill),
        (1, exit("w1", 1), &["forget w1", "launch b"], N::WaitingForWorkerStart),
    ]);

    // The change arrives while a crashed job waits in backoff: no process, start the new one.
    let mut d = Driver::running(&a);
    d.run(&[
        (10, exit("w1", 1), &["forget w1", "relaunch a"], N::WaitingForWorkerStart),
        (0, up("w2"), &[], N::Running),
        (10, exit("w2", 1), &["forget w2"], N::Backoff),
        (0, assign(&b), &["launch b"], N::WaitingForWorkerStart),
    ]);
}

#[test]
fn assignment_removed_or_restored_during_kill_decides_what_follows() {
    let (a, b) = (pj("a"), pj("b"));
    let mut d = Driver::running(&a);
    d.run(&[
        (0, assign(&b), &["term w1"], N::Kill),
        (100, unassign(), &[], N::Kill),
        (100, exit("w1", 143), &["forget w1"], N::Empty),
    ]);
    assert!(d.slot.to_worker_info().is_none());

    let mut d = Driver::running(&a);
    d.run(&[
        (0, unassign(), &["term w1"], N::Kill),
        (100, assign(&b), &[], N::Kill),
        (100, assign(&a), &[], N::KillAndRelaunch),
        (100, assign(&a), &[], N::KillAndRelaunch),
        (100, exit("w1", 143), &["forget w1", "relaunch a"], N::WaitingForWorkerStart),
    ]);
    assert_eq!(reason(&d), ExitReason::Killed);
    assert_eq!(d.slot.consecutive_failures, 0, "an assignment change is no failure");
    assert_eq!(d.slot.state_since, d.at(400));
}

#[test]
fn kill_escalates_to_sigkill_then_reports_a_survivor_and_keeps_trying() {
    let mut d = Driver::running(&pj("a"));
    d.run(&[
        (0, unassign(), &["term w1"], N::Kill),
        (2_999, TICK, &[], N::Kill),
        (1, TICK, &["kill w1"], N::Kill),
        (2_999, TICK, &[], N::Kill),
    ]);
    assert_eq!(d.slot.error, None);
    d.run(&[(1, TICK, &["kill w1"], N::Kill)]);
    assert_eq!(d.slot.error.as_deref(), Some("worker pid 4242 survived SIGKILL"));
    assert_eq!(d.slot.to_worker_info().unwrap().error, d.slot.error);
    d.run(&[
        (3_000, TICK, &["kill w1"], N::Kill),
        (3_000, TICK, &["kill w1"], N::Kill),
        (10, exit("w1", 137), &["forget w1"], N::Empty),
    ]);
    assert_eq!(d.slot.error, None);

    // With no grace at all, SIGKILL follows at once but is re-sent at most every second.
    let mut d = Driver::running(&pj("a"));
    d.policy.shutdown_grace = Duration::ZERO;
    d.run(&[
        (0, Input::Restart, &["term w1"], N::KillAndRelaunch),
        (0, TICK, &["kill w1"], N::KillAndRelaunch),
        (999, TICK, &[], N::KillAndRelaunch),
        (1, TICK, &["kill w1"], N::KillAndRelaunch),
        (10, exit("w1", 137), &["forget w1", "relaunch a"], N::WaitingForWorkerStart),
    ]);
    assert_eq!(d.slot.error, None, "the survivor is gone");
}

#[test]
fn an_answer_to_a_launch_that_is_being_killed_ends_the_kill() {
    let (a, b) = (pj("a"), pj("b"));
    // LaunchFailed: nothing to kill, go on with the next job.
    let mut d = Driver::new();
    d.run(&[
        (0, assign(&a), &["launch a"], N::WaitingForWorkerStart),
        (0, assign(&b), &[], N::Kill),
        (0, Input::LaunchFailed("no such file".into()), &["launch b"], N::WaitingForWorkerStart),
    ]);
    // Deferred: same; and a timeout kill of a deferred launch waits for the budget.
    let mut d = Driver::new();
    d.run(&[
        (0, assign(&a), &["launch a"], N::WaitingForWorkerStart),
        (0, unassign(), &[], N::Kill),
        (0, Input::Deferred { until: d.at(9_000) }, &[], N::Empty),
    ]);
    let mut d = Driver::new();
    d.run(&[
        (0, assign(&a), &["launch a"], N::WaitingForWorkerStart),
        (120_000, TICK, &[], N::KillAndRelaunch),
        (0, Input::Deferred { until: d.at(130_000) }, &[], N::Backoff),
    ]);
    assert_eq!(d.slot.next_deadline(), Some(d.at(130_000)));
}

#[test]
fn operator_restart_and_reset_backoff() {
    let a = pj("a");
    let mut d = Driver::running(&a);
    d.run(&[
        (10, Input::Restart, &["term w1"], N::KillAndRelaunch),
        (0, Input::Restart, &[], N::KillAndRelaunch),
        (10, exit("w1", 143), &["forget w1", "relaunch a"], N::WaitingForWorkerStart),
        (0, up("w2"), &[], N::Running),
    ]);
    assert_eq!((reason(&d), d.slot.consecutive_failures, d.slot.restarts), (ExitReason::Killed, 0, 1));

    // Two crashes put it in backoff; Restart launches now but keeps counting failures,
    // ResetBackoff launches now and forgets them.
    d.run(&[
        (10, exit("w2", 1), &["forget w2", "relaunch a"], N::WaitingForWorkerStart),
        (0, up("w3"), &[], N::Running),
        (10, exit("w3", 1), &["forget w3"], N::Backoff),
        (0, Input::Restart, &["relaunch a"], N::WaitingForWorkerStart),
        (0, up("w4"), &[], N::Running),
        (10, exit("w4", 1), &["forget w4"], N::Backoff),
        (0, Input::ResetBackoff, &["relaunch a"], N::WaitingForWorkerStart),
        (0, up("w5"), &[], N::Running),
        (10, exit("w5", 1), &["forget w5", "relaunch a"], N::WaitingForWorkerStart),
    ]);
    // Nothing to restart or reset elsewhere.
    let mut d = Driver::new();
    d.run(&[(0, Input::Restart, &[], N::Empty), (0, Input::ResetBackoff, &[], N::Empty)]);
}

#[test]
fn adopt_takes_over_a_running_worker_without_relaunch() {
    let a = hj("a");
    let mut d = Driver::new();
    d.now = d.at(50);
    let w = Worker { worker_id: "old".into(), pid: 77 };
    d.run(&[(0, Input::Adopt { worker: w.clone(), job: a.clone() }, &[], N::Running)]);
    assert_eq!((d.slot.worker(), d.slot.state_since, d.slot.state_since_ms), (Some(&w), d.at(50), WALL0 + 50));
    d.run(&[
        (0, assign(&a), &[], N::Running),
        (0, Input::Adopt { worker: w.clone(), job: a.clone() }, &[], N::Running),
        // A second process on this port must not live.
        (
            0,
            Input::Adopt { worker: Worker { worker_id: "dup".into(), pid: 78 }, job: a.clone() },
            &["kill dup"],
            N::Running,
        ),
        (0, up("stray"), &["kill stray"], N::Running),
        (0, Input::Exited { worker_id: "dup".into(), code: None, signal: None }, &["forget dup"], N::Running),
        (30_000, TICK, &["term old"], N::KillAndRelaunch),
    ]);
}
