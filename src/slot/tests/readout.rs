//! What the executor and `gale status` read off a slot: the next deadline in each state, when
//! the state began, the SPEC §3.1 entry, and the job built from an assignment.

use super::*;

#[test]
fn next_deadline_in_each_state() {
    let (a, h) = (job("a", LivenessMode::Process, true), hj("h"));
    let mut d = Driver::new();
    assert_eq!(d.slot.next_deadline(), None, "empty");
    d.feed(assign(&a));
    assert_eq!(d.slot.next_deadline(), None, "waiting for blobs");
    d.feed(Input::BlobsReady(a.clone()));
    assert_eq!(d.slot.next_deadline(), Some(d.at(120_000)), "start timeout");
    d.feed(up("w1"));
    assert_eq!(d.slot.next_deadline(), None, "running, process liveness, no failures");
    d.now = d.at(1_000);
    d.feed(unassign());
    assert_eq!(d.slot.next_deadline(), Some(d.at(4_000)), "sigterm grace");
    d.now = d.at(4_000);
    d.feed(TICK);
    assert_eq!(d.slot.next_deadline(), Some(d.at(7_000)), "sigkill repeat");

    let mut d = Driver::running(&h);
    d.now = d.at(10_000);
    d.feed(hb("w1"));
    assert_eq!(d.slot.next_deadline(), Some(d.at(40_000)), "heartbeat timeout");

    // Failures to forget add no deadline: the next exit (or tick) forgets them.
    let mut d = Driver::new();
    d.policy.reset_after = Duration::from_secs(5);
    d.run(&[
        (0, assign(&h), &["launch h"], N::WaitingForWorkerStart),
        (0, Input::LaunchFailed("busy".into()), &["relaunch h"], N::WaitingForWorkerStart),
        (0, up("w1"), &[], N::WaitingForWorkerStart),
        (0, hb("w1"), &[], N::Running),
    ]);
    assert_eq!(d.slot.consecutive_failures, 1);
    assert_eq!(d.slot.next_deadline(), Some(d.at(30_000)), "the heartbeat timeout only");

    let mut d = Driver::running(&pj("a"));
    d.feed(exit("w1", 1));
    d.feed(up("w2"));
    d.feed(exit("w2", 1));
    assert_eq!(d.slot.next_deadline(), Some(d.at(1_000)), "backoff");
}

#[test]
fn since_moves_on_entering_a_state_not_on_updates_inside_it() {
    let mut d = Driver::running(&hj("a"));
    d.run(&[(10, hb("w1"), &[], N::Running), (10, TICK, &[], N::Running), (10, assign(&hj("a")), &[], N::Running)]);
    assert_eq!((d.slot.state_since, d.slot.state_since_ms), (d.t0, WALL0));
    d.run(&[(10, Input::Restart, &["term w1"], N::KillAndRelaunch), (3_000, TICK, &["kill w1"], N::KillAndRelaunch)]);
    assert_eq!(d.slot.state_since_ms, WALL0 + 40);
}

#[test]
fn worker_info_is_the_spec_entry() {
    let mut d = Driver::new();
    assert_eq!(d.slot.to_worker_info(), None);
    d.feed(assign(&job("a", LivenessMode::Process, true)));
    let info = d.slot.to_worker_info().unwrap();
    assert_eq!((info.port, info.topology_id.as_str(), info.worker_id.as_str(), info.pid), (6700, "a", "", None));
    assert_eq!(info.state, N::WaitingForBlobs);

    let mut d = Driver::running(&pj("a"));
    d.now = d.at(7);
    d.feed(Input::Exited { worker_id: "w1".into(), code: Some(3), signal: None });
    d.feed(up("w2"));
    let info = d.slot.to_worker_info().unwrap();
    let want = WorkerInfo {
        port: 6700,
        topology_id: "a".into(),
        worker_id: "w2".into(),
        pid: Some(PID),
        state: N::Running,
        since_ms: WALL0 + 7,
        restarts: 1,
        last_exit: Some(LastExit { code: Some(3), signal: None, reason: ExitReason::Exited, at_ms: WALL0 + 7 }),
        error: None,
        usage: None,
    };
    assert_eq!(info, want);
    let json = serde_json::to_value(&info).unwrap();
    assert_eq!((json["state"].as_str(), json["last_exit"]["reason"].as_str()), (Some("running"), Some("exited")));
}

#[test]
fn an_assignment_that_cannot_run_is_reported_on_its_slot_and_nowhere_else() {
    let broken = |topology: &str| Unrunnable {
        topology_id: topology.into(),
        error: format!("{topology} is broken"),
        since_ms: 5,
    };
    let d = Driver::new();
    assert_eq!(d.slot.report(None), None, "empty, nothing to say");
    let info = d.slot.report(Some(&broken("b"))).unwrap();
    assert_eq!((info.topology_id.as_str(), info.state, info.pid), ("b", N::Empty, None));
    assert_eq!((info.worker_id.as_str(), info.since_ms, info.error.as_deref()), ("", 5, Some("b is broken")));

    let d = Driver::running(&pj("a"));
    assert_eq!(d.slot.report(None), d.slot.to_worker_info());
    assert_eq!(d.slot.report(Some(&broken("a"))).unwrap().error.as_deref(), Some("a is broken"), "its own topology");
    assert_eq!(d.slot.report(Some(&broken("b"))), d.slot.to_worker_info(), "another topology's problem");

    // The slot's own error (why its worker cannot start) comes first.
    let mut d = Driver::running(&pj("a"));
    d.slot.error = Some("launch failed".into());
    assert_eq!(d.slot.report(Some(&broken("a"))).unwrap().error.as_deref(), Some("launch failed"));
}

#[test]
fn a_jobs_timeouts_are_its_own_or_the_nodes_capped_by_max_timeout() {
    let worker = WorkerConfig {
        start_timeout: Duration::from_secs(120),
        heartbeat_timeout: Duration::from_secs(30),
        max_timeout: Duration::from_secs(600),
        shutdown_grace: GRACE,
        run_as_user: false,
        allowed_users: vec![],
        min_uid: 1000,
    };
    let timeouts = JobTimeouts::from_config(&worker);
    let mut launch = pj("a").launch.clone();
    let job = |launch: &Launch, timeouts: &JobTimeouts| SlotJob::new("a".into(), launch.clone(), vec![], timeouts);
    let j = job(&launch, &timeouts);
    assert_eq!((j.start_timeout, j.heartbeat_timeout), (worker.start_timeout, worker.heartbeat_timeout));
    launch.start_timeout_secs = Some(9_999);
    launch.heartbeat_timeout_secs = Some(10);
    let j = job(&launch, &timeouts);
    assert_eq!((j.start_timeout, j.heartbeat_timeout), (Duration::from_secs(600), Duration::from_secs(10)));
    // The node's default is capped too (validation forbids it, a reload must not get around it).
    let low_cap = JobTimeouts { max: Duration::from_secs(20), ..timeouts };
    let j = job(&pj("a").launch, &low_cap);
    assert_eq!((j.start_timeout, j.heartbeat_timeout), (Duration::from_secs(20), Duration::from_secs(20)));
}
