//! Real-kernel tests of worker isolation. The cgroup tests need root and a cgroup mechanism;
//! without them they print why and return (they never pass by asserting nothing when they
//! can run). Each test detects under its own uniquely named workers' parent, so tests running
//! in parallel (and a real agent's `gale` parent) never see each other's cgroups, and a
//! [`Fixture`] sweeps and removes everything it made, even when an assertion fails.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::*;

/// Linux reports utime/stime in USER_HZ, 100 on every architecture gale builds for.
const USER_HZ: f64 = 100.0;

struct Fixture {
    mechanism: Mechanism,
}

impl Fixture {
    /// A fresh mechanism under a unique parent, or `None` (with the reason printed) when this
    /// host cannot run cgroup tests.
    fn new(test: &str) -> Option<Fixture> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping {test}: needs root to create cgroups");
            return None;
        }
        let mechanism = detect(&format!("gale-test-{}", uuid::Uuid::new_v4()));
        if mechanism == Mechanism::Rlimits {
            eprintln!("skipping {test}: detection found no usable cgroup mechanism on this host");
            return None;
        }
        Some(Fixture { mechanism })
    }

    fn create(&self, limits: Limits) -> WorkerCgroup {
        WorkerCgroup::create(&self.mechanism, &uuid::Uuid::new_v4().to_string(), &limits).unwrap()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        match sweep_orphans(&self.mechanism, &BTreeSet::new()) {
            Ok(outcome) => assert!(outcome.failed.is_empty() || std::thread::panicking(), "{:?}", outcome.failed),
            Err(e) => eprintln!("cleanup: {e}"),
        }
        for parent in self.mechanism.parent_dirs() {
            if let Err(e) = std::fs::remove_dir(parent) {
                eprintln!("cleanup: cannot remove {}: {e}", parent.display());
            }
        }
    }
}

/// Starts `argv` inside `cgroup`, joined before exec by std's fork (the launch's fallback
/// route where the kernel has no clone3), stdout piped.
fn spawn_in(cgroup: &WorkerCgroup, argv: &[&str]) -> Child {
    let mut command = Command::new(argv[0]);
    command.args(&argv[1..]).stdin(Stdio::null()).stdout(Stdio::piped());
    cgroup.join().unwrap().on_exec_of(&mut command);
    command.spawn().unwrap()
}

/// The routes by which the agent can start a worker of `cg`: the one it uses here
/// (`launch::route`: clone3 where the kernel has it), and std's fork, the fallback.
fn routes(cg: &WorkerCgroup) -> Vec<crate::worker::launch::Route> {
    use crate::worker::launch::{Route, route};
    match route(cg.birth().unwrap()) {
        fork @ Route::Fork(_) => vec![fork],
        clone3 => vec![clone3, Route::Fork(cg.join().unwrap())],
    }
}

/// How `route` starts a worker, for messages.
fn route_name(route: &crate::worker::launch::Route) -> &'static str {
    use crate::worker::launch::Route;
    match route {
        Route::Clone3(Birth::IntoCgroup(_)) => "clone3 born in it",
        Route::Clone3(Birth::JoinBeforeExec(_)) => "clone3 joining before exec",
        Route::Fork(_) => "fork joining before exec",
    }
}

/// Starts `spec` by `route` and waits (bounded) for its exit; the log it wrote.
async fn run_to_exit(spec: &crate::worker::LaunchSpec, route: crate::worker::launch::Route) -> String {
    let name = route_name(&route);
    let mut spawned = crate::worker::launch::spawn_by(spec, route).unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(5), spawned.exit.wait()).await.unwrap().unwrap();
    assert_eq!(exit.code, Some(0), "{name}: {exit:?}");
    std::fs::read_to_string(&spec.log_file).unwrap()
}

/// A worker of `cg` running `command`, its dirs and log under `root`.
fn worker_spec(cg: &WorkerCgroup, root: &Path, command: &[&str]) -> crate::worker::LaunchSpec {
    crate::worker::LaunchSpec {
        topology_id: "t1".into(),
        worker_id: cg.worker_id().to_owned(),
        port: 6700,
        supervisor_id: "s1".into(),
        command: command.iter().map(|a| a.to_string()).collect(),
        env: BTreeMap::new(),
        worker_dir: root.join("worker"),
        log_file: root.join("worker.log"),
        blob_dir: root.join("blobs"),
        blobs: BTreeMap::new(),
        run_as: None,
    }
}

/// Polls `probe` every 10 ms for up to `secs` seconds.
fn eventually<T>(what: &str, secs: u64, mut probe: impl FnMut() -> Option<T>) -> T {
    for _ in 0..secs * 100 {
        if let Some(value) = probe() {
            return value;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("timed out waiting for {what}");
}

/// Present and not a zombie.
fn is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| Some(stat.rsplit_once(')')?.1.split_whitespace().next()?.to_owned()))
        .is_some_and(|state| state != "Z" && state != "X")
}

/// utime + stime of `pid`, in ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    // Fields 14 and 15 of stat; `fields` starts at field 3.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn uptime_secs() -> f64 {
    std::fs::read_to_string("/proc/uptime").unwrap().split_whitespace().next().unwrap().parse().unwrap()
}

/// A flat-keyed value from the first of `cgroup`'s dirs that has `file`.
fn counter(cgroup: &WorkerCgroup, file: &str, key: &str) -> Option<u64> {
    cgroup.dirs().find_map(|d| procfs::keyed_value(&std::fs::read_to_string(d.join(file)).ok()?, key))
}

#[test]
fn detection_picks_the_hosts_cgroup_version_and_reports_it() {
    let Some(fx) = Fixture::new("detection_picks_the_hosts_cgroup_version_and_reports_it") else { return };
    let pure_v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let expected = if pure_v2 { "cgroup v2" } else { "cgroup v1" };
    println!("isolation mechanism: {} (parents {:?})", fx.mechanism, fx.mechanism.parent_dirs());
    assert_eq!(fx.mechanism.as_str(), expected);
    assert_eq!(fx.mechanism.to_string(), expected);
    if let Mechanism::CgroupV1 { memory, cpu, .. } = &fx.mechanism {
        // Under our own cgroup of each hierarchy, wherever that is mounted.
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        for dir in [memory, cpu] {
            let mine = procfs::cgroup_path(&own, dir.hierarchy).unwrap();
            assert!(procfs::is_within(&dir.cgroup, mine), "{dir:?} is not under {mine}");
            assert!(dir.path.join("cgroup.procs").exists(), "{dir:?}");
        }
    }
    if let Mechanism::CgroupV2 { root } = &fx.mechanism {
        // Where v2_base puts it, and the path /proc shows matches the directory.
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let base = v2_base(procfs::cgroup_path(&own, Hierarchy::Unified).unwrap());
        assert_eq!(Path::new(&root.cgroup).parent(), Some(Path::new(&base)), "{root:?}");
        assert!(root.path.ends_with(root.cgroup.trim_start_matches('/')), "{root:?}");
    }
    for parent in fx.mechanism.parent_dirs() {
        assert!(parent.is_dir(), "{}", parent.display());
    }
}

#[test]
fn a_worker_over_its_memory_limit_is_oom_killed_by_the_kernel() {
    let Some(fx) = Fixture::new("a_worker_over_its_memory_limit_is_oom_killed_by_the_kernel") else { return };
    let cg = fx.create(Limits { memory_mb: Some(64), ..Limits::default() });
    assert!(!cg.oom_killed(), "a fresh cgroup has no OOM kill");
    // `b'x' * n` writes every byte, so the 256 MB are resident, not just reserved.
    let mut child =
        spawn_in(&cg, &["/usr/bin/python3", "-c", "b = b'x' * (256 * 1024 * 1024); import time; time.sleep(5)"]);
    let status = eventually("the worker to die", 20, || child.try_wait().unwrap());
    assert_eq!(status.signal(), Some(9), "killed by SIGKILL, not by exiting: {status:?}");
    assert!(cg.oom_killed(), "the kernel's OOM kill is seen");
    cg.remove().unwrap();
}

#[tokio::test]
async fn a_grandchild_left_behind_is_listed_and_killed_with_the_cgroup() {
    let Some(fx) = Fixture::new("a_grandchild_left_behind_is_listed_and_killed_with_the_cgroup") else { return };
    let cg = fx.create(Limits::default());
    // Through the real launch path, so the pre-exec join is proven together with setsid and
    // the switch to another user.
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut spec = worker_spec(&cg, root.path(), &["/bin/sh", "-c", "sleep 1000 & echo $!; exit 0"]);
    spec.run_as = Some(crate::worker::users::RunAs { name: "nobody".into(), uid: 65534, gid: 65534, groups: vec![] });
    let mut spawned = crate::worker::launch::spawn_in(&spec, &cg).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(5), spawned.exit.wait()).await.unwrap().unwrap();
    assert_eq!(status.code, Some(0));
    let grandchild: u32 = std::fs::read_to_string(&spec.log_file).unwrap().trim().parse().unwrap();
    assert!(is_running(grandchild));
    let status = std::fs::read_to_string(format!("/proc/{grandchild}/status")).unwrap();
    assert!(status.lines().any(|l| l.starts_with("Uid:\t65534")), "runs as nobody: {status}");
    assert_eq!(cg.pids().unwrap(), vec![grandchild], "the leader is gone, its child is still a member");

    cg.kill_all().unwrap();
    eventually("the grandchild to die", 5, || (!is_running(grandchild)).then_some(()));
    assert_eq!(cg.pids().unwrap(), Vec::<u32>::new());
    let dirs: Vec<PathBuf> = cg.dirs().map(Path::to_owned).collect();
    cg.remove().unwrap();
    assert!(dirs.iter().all(|d| !d.exists()), "{dirs:?}");
}

#[test]
fn remove_kills_what_is_still_running() {
    let Some(fx) = Fixture::new("remove_kills_what_is_still_running") else { return };
    let cg = fx.create(Limits::default());
    let mut child = spawn_in(&cg, &["/bin/sh", "-c", "sleep 1000 & echo $!; wait"]);
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let grandchild: u32 = line.trim().parse().unwrap();
    assert_eq!(cg.pids().unwrap().len(), 2);
    cg.remove().unwrap();
    assert_eq!(child.wait().unwrap().signal(), Some(9));
    eventually("the grandchild to die", 5, || (!is_running(grandchild)).then_some(()));
}

#[test]
fn cpu_percent_throttles_a_busy_loop() {
    let Some(fx) = Fixture::new("cpu_percent_throttles_a_busy_loop") else { return };
    let cg = fx.create(Limits { cpu_percent: Some(20), ..Limits::default() });
    let mut child = spawn_in(&cg, &["/bin/sh", "-c", "while :; do :; done"]);
    std::thread::sleep(Duration::from_millis(200));
    let (ticks0, t0) = (cpu_ticks(child.id()), uptime_secs());
    std::thread::sleep(Duration::from_secs(2));
    let (ticks1, t1) = (cpu_ticks(child.id()), uptime_secs());
    let share = (ticks1 - ticks0) as f64 / USER_HZ / (t1 - t0);
    println!("busy loop under cpu_percent = 20 used {:.0}% of a core", share * 100.0);
    assert!(share <= 0.35, "used {:.0}% of a core", share * 100.0);
    assert!(share > 0.02, "it ran at all: {:.1}%", share * 100.0);
    assert!(counter(&cg, "cpu.stat", "nr_throttled").unwrap() > 0, "the kernel throttled it");
    cg.remove().unwrap();
    assert_eq!(child.wait().unwrap().signal(), Some(9));
}

#[test]
fn pids_max_stops_a_fork_loop_at_the_limit() {
    let Some(fx) = Fixture::new("pids_max_stops_a_fork_loop_at_the_limit") else { return };
    if !fx.mechanism.unenforceable(&Limits { pids_max: Some(10), ..Limits::default() }).is_empty() {
        eprintln!("skipping pids_max_stops_a_fork_loop_at_the_limit: no pids controller here");
        return;
    }
    let cg = fx.create(Limits { pids_max: Some(10), ..Limits::default() });
    let mut child = spawn_in(
        &cg,
        &["/bin/sh", "-c", "i=0; while [ $i -lt 40 ]; do sleep 1000 & i=$((i+1)); done 2>/dev/null; sleep 1000"],
    );
    // The kernel counts every fork refused at the limit in pids.events.
    eventually("a fork to be refused", 10, || counter(&cg, "pids.events", "max").filter(|&n| n > 0));
    let mut most = 0;
    for _ in 0..20 {
        most = most.max(cg.pids().unwrap().len());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!((1..=10).contains(&most), "{most} processes under pids_max = 10");
    cg.remove().unwrap();
    let _ = child.wait();
}

#[test]
fn sweep_removes_a_stray_cgroup_and_keeps_the_others() {
    let Some(fx) = Fixture::new("sweep_removes_a_stray_cgroup_and_keeps_the_others") else { return };
    let kept = fx.create(Limits::default());
    let stray = fx.create(Limits::default());
    let mut child = spawn_in(&stray, &["/bin/sleep", "1000"]);
    let stray_dirs: Vec<PathBuf> = stray.dirs().map(Path::to_owned).collect();
    // A new agent finds both again by id.
    assert!(WorkerCgroup::adopt(&fx.mechanism, stray.worker_id()).unwrap().pids().unwrap() == vec![child.id()]);

    let outcome = sweep_orphans(&fx.mechanism, &BTreeSet::from([kept.worker_id().to_owned()])).unwrap();
    assert_eq!(outcome.removed, vec![stray.worker_id().to_owned()]);
    assert!(outcome.failed.is_empty(), "{:?}", outcome.failed);
    assert_eq!(child.wait().unwrap().signal(), Some(9), "the stray's process was killed");
    assert!(stray_dirs.iter().all(|d| !d.exists()), "{stray_dirs:?}");
    assert!(kept.dirs().all(Path::exists));
    assert!(WorkerCgroup::adopt(&fx.mechanism, stray.worker_id()).is_none());
    kept.remove().unwrap();
}

#[tokio::test]
async fn a_worker_is_born_in_its_cgroup_on_v2_and_joins_it_before_exec_on_v1() {
    let Some(fx) = Fixture::new("a_worker_is_born_in_its_cgroup_on_v2_and_joins_it_before_exec_on_v1") else { return };
    let cg = fx.create(Limits::default());
    // Decided once per process: clone3 on cgroup v2 (Linux ≥ 5.7); v1 cannot.
    match (&fx.mechanism, cg.birth().unwrap()) {
        (Mechanism::CgroupV2 { .. }, Birth::IntoCgroup(_)) | (Mechanism::CgroupV1 { .. }, Birth::JoinBeforeExec(_)) => {
        }
        (mechanism, birth) => {
            panic!("{mechanism}: workers enter their cgroup by {birth:?}; clone3: {:?}", clone_into_cgroup())
        }
    }
    // The worker's first act (the first program it execs) reads where it is. On v2 the
    // clone3 route has no join step at all: only being born there puts it there. Each route
    // the agent has (clone3, and std's fork where the kernel lacks it) gets there.
    for route in routes(&cg) {
        let name = route_name(&route);
        let root = tempfile::tempdir().unwrap();
        let spec = worker_spec(&cg, root.path(), &["/bin/cat", "/proc/self/cgroup"]);
        let seen = run_to_exit(&spec, route).await;
        println!("{} by {name}: the worker's /proc/self/cgroup:\n{seen}", fx.mechanism);
        for parent in fx.mechanism.parents() {
            let own = parent.child(cg.worker_id());
            assert_eq!(procfs::cgroup_path(&seen, own.hierarchy), Some(own.cgroup.as_str()), "{name}: {seen}");
        }
    }
    cg.remove().unwrap();
}

#[test]
fn the_clone3_probe_agrees_with_the_kernel_version() {
    let release = nix::sys::utsname::uname().unwrap().release().to_string_lossy().into_owned();
    let mut numbers = release.split(|c: char| !c.is_ascii_digit()).map(|n| n.parse::<u32>().unwrap_or(0));
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let filtered = status.lines().any(|l| l.starts_with("Seccomp:") && l.trim_end() != "Seccomp:\t0");
    let probed = clone_into_cgroup();
    println!("Linux {release}, seccomp filter: {filtered}, clone3 CLONE_INTO_CGROUP: {probed:?}");
    assert_eq!(probed, clone_into_cgroup(), "decided once");
    if version < (5, 7) {
        assert!(probed.is_err(), "Linux {release} has no CLONE_INTO_CGROUP");
    } else if !filtered {
        assert_eq!(probed, Ok(()), "Linux {release} has CLONE_INTO_CGROUP and no filter hides it");
    }
}

#[tokio::test]
async fn a_worker_that_cannot_enter_its_cgroup_does_not_start() {
    let Some(fx) = Fixture::new("a_worker_that_cannot_enter_its_cgroup_does_not_start") else { return };
    let cg = fx.create(Limits::default());
    let routes = routes(&cg);
    WorkerCgroup::adopt(&fx.mechanism, cg.worker_id()).unwrap().remove().unwrap();
    for route in routes {
        use crate::worker::launch::{LaunchError, LaunchStep, Route};
        // Born in it: clone3 makes no process. Joining it: the child fails before its exec.
        let expected = match &route {
            Route::Clone3(Birth::IntoCgroup(_)) => LaunchStep::CloneIntoCgroup,
            Route::Clone3(Birth::JoinBeforeExec(_)) | Route::Fork(_) => LaunchStep::Exec,
        };
        let name = route_name(&route);
        let root = tempfile::tempdir().unwrap();
        let spec = worker_spec(&cg, root.path(), &["/bin/true"]);
        let err = crate::worker::launch::spawn_by(&spec, route).unwrap_err();
        println!("{name} into a removed cgroup: {err}: {}", std::error::Error::source(&err).unwrap());
        assert!(matches!(err, LaunchError::Io { step, .. } if step == expected), "{name}: {err:?}");
    }
}

#[test]
fn an_existing_cgroup_with_processes_is_not_taken_over() {
    let Some(fx) = Fixture::new("an_existing_cgroup_with_processes_is_not_taken_over") else { return };
    let cg = fx.create(Limits::default());
    let mut child = spawn_in(&cg, &["/bin/sleep", "1000"]);
    let err = WorkerCgroup::create(&fx.mechanism, cg.worker_id(), &Limits::default()).unwrap_err();
    assert!(matches!(&err, IsolationError::AlreadyPopulated { pids, .. } if pids == &vec![child.id()]), "{err}");
    cg.remove().unwrap();
    let _ = child.wait();
}

#[tokio::test]
async fn rlimits_bound_the_address_space_and_track_no_processes() {
    let cg =
        WorkerCgroup::create(&Mechanism::Rlimits, "w-1", &Limits { memory_mb: Some(64), ..Limits::default() }).unwrap();
    assert!(!cg.tracks_processes());
    for route in routes(&cg) {
        let name = route_name(&route);
        let root = tempfile::tempdir().unwrap();
        let spec = worker_spec(&cg, root.path(), &["/bin/sh", "-c", "ulimit -v"]);
        assert_eq!(run_to_exit(&spec, route).await.trim(), "65536", "{name}: KiB");
    }
    assert_eq!(cg.pids().unwrap(), Vec::<u32>::new());
    assert!(!cg.oom_killed());
    cg.remove().unwrap();
}

#[test]
fn rlimits_cannot_enforce_cpu_or_pids() {
    let all = Limits { memory_mb: Some(1), cpu_percent: Some(50), pids_max: Some(10) };
    assert_eq!(Mechanism::Rlimits.unenforceable(&all), vec!["cpu_percent", "pids_max"]);
    assert_eq!(Mechanism::Rlimits.as_str(), "rlimits");
}

#[test]
fn zero_limits_and_path_like_ids_are_refused() {
    let zero = Limits { cpu_percent: Some(0), ..Limits::default() };
    let err = WorkerCgroup::create(&Mechanism::Rlimits, "w-1", &zero).unwrap_err();
    assert!(matches!(err, IsolationError::ZeroLimit { limit: "cpu_percent", .. }), "{err}");
    for bad in ["..", "a/b", ""] {
        let err = WorkerCgroup::create(&Mechanism::Rlimits, bad, &Limits::default()).unwrap_err();
        assert!(matches!(err, IsolationError::InvalidId { .. }), "{bad:?}: {err}");
    }
}

#[test]
fn v2_workers_go_to_the_root_under_a_systemd_unit_else_beside_the_agent() {
    // A unit's own cgroup: systemd < 254 starts the next agent there, and its slice is systemd's.
    assert_eq!(v2_base("/system.slice/gale.service"), "/");
    assert_eq!(v2_base("/user.slice/user-0.slice/session-3.scope"), "/");
    // A delegated subgroup of the unit (DelegateSubgroup=agent): the unit's subtree is ours.
    assert_eq!(v2_base("/system.slice/gale.service/agent"), "/system.slice/gale.service");
    // A shell's or container's cgroup, and the namespace root.
    assert_eq!(v2_base("/build/job-7"), "/build");
    assert_eq!(v2_base("/"), "/");
}

#[test]
fn use_is_read_from_the_cgroup_of_a_busy_worker_and_ends_with_it() {
    let Some(fx) = Fixture::new("use_is_read_from_the_cgroup_of_a_busy_worker_and_ends_with_it") else { return };
    let id = uuid::Uuid::new_v4().to_string();
    let cg = WorkerCgroup::create(&fx.mechanism, &id, &Limits { cpu_percent: Some(20), ..Limits::default() }).unwrap();
    let mut child = spawn_in(&cg, &["/bin/sh", "-c", "sleep 1000 & while :; do :; done"]);
    let s = eventually("200 ms of CPU, some throttling and both processes", 30, || {
        // The shell has forked its sleep once both are listed (under TCG its start alone can
        // use the CPU time asked for).
        sample(&fx.mechanism, &id, child.id())
            .filter(|s| s.cpu_ns > 200_000_000 && s.throttled_ns > Some(0) && s.processes == 2)
    });
    println!("{s:?}");
    assert_eq!(s.processes, 2, "the shell and its sleep");
    assert!(s.memory_bytes > 0);
    assert!(s.memory_peak_bytes.is_none_or(|peak| peak >= s.memory_bytes), "{s:?}");
    assert_eq!(s.oom_kills, Some(0), "the kernel reports OOM kills (none here)");
    cg.remove().unwrap();
    assert_eq!(child.wait().unwrap().signal(), Some(9));
    assert_eq!(sample(&fx.mechanism, &id, child.id()), None, "no cgroup, no use");
}

#[test]
fn under_rlimits_use_is_the_main_process_and_its_session() {
    let mut child = Command::new("/usr/bin/setsid")
        .args(["/bin/sh", "-c", "sleep 1000 & i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; wait"])
        .spawn()
        .unwrap();
    // The shell and its sleep share its session (once it has forked; under TCG its start
    // alone can use CPU time).
    let s = eventually("some CPU time and both processes", 30, || {
        sample(&Mechanism::Rlimits, "w", child.id()).filter(|s| s.cpu_ns > 0 && s.processes == 2)
    });
    assert!(s.memory_bytes > 0 && s.memory_peak_bytes >= Some(s.memory_bytes), "{s:?}");
    assert_eq!((s.oom_kills, s.throttled_ns), (None, None), "not known without a cgroup");
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGKILL);
    child.wait().unwrap();
    assert_eq!(sample(&Mechanism::Rlimits, "w", child.id()), None, "no process, no use");
}
