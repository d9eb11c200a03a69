//! Real-process tests of the worker edge: what a spawned worker sees (argv, cwd, env, stdin,
//! session), group signalling with the identity proof, and exit detection for adopted
//! processes. Each test is bounded by a deadline; nothing sleeps where it can poll.
//!
//! What a worker sees is tested on both routes of `launch::spawn_by` ([`Via`]): clone3 (the
//! route of every spawn where the kernel has it; here started where the test runs, which has
//! no cgroup to join; `isolation/tests.rs` has it born in a cgroup v2 and joining v1 ones) and
//! std's fork and exec (the fallback without clone3), so the two cannot drift apart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::time::Instant;

use super::exit::{ExitReport, ExitWatch, wait_adopted};
use super::launch::{LaunchError, LaunchStep, Route, spawn_by};
use super::*;
use crate::proc_identity::{Liveness, ProcessIdentity};

const DEADLINE: Duration = Duration::from_secs(5);

/// No limits and no cgroup (rlimits without `memory_mb` sets nothing): what these tests of the
/// process edge need, without touching the host's cgroups (`isolation/tests.rs` does that).
fn unconfined() -> crate::isolation::WorkerCgroup {
    crate::isolation::WorkerCgroup::create(&crate::isolation::Mechanism::Rlimits, "w-1", &Default::default()).unwrap()
}

/// A route of `launch::spawn_by`.
#[derive(Debug, Clone, Copy)]
enum Via {
    Fork,
    Clone3,
}

/// Both routes; clone3 only where the agent would use it (`launch::route`), said on stderr
/// otherwise.
fn both() -> Vec<Via> {
    match crate::isolation::clone_into_cgroup() {
        Ok(()) => vec![Via::Fork, Via::Clone3],
        Err(reason) => {
            eprintln!("the clone3 route is not tested here: {reason}");
            vec![Via::Fork]
        }
    }
}

fn spawn(via: Via, spec: &LaunchSpec) -> Result<LaunchedWorker, LaunchError> {
    match via {
        Via::Fork => spawn_by(spec, Route::Fork(unconfined().join().unwrap())),
        Via::Clone3 => spawn_by(spec, Route::Clone3(unconfined().birth().unwrap())),
    }
}

fn spec(root: &Path, command: &[&str]) -> LaunchSpec {
    let worker_dir = launch::worker_dir(&root.join("local"), "w-1");
    LaunchSpec {
        topology_id: "wordcount".into(),
        worker_id: "w-1".into(),
        port: 6700,
        supervisor_id: "sup-9".into(),
        command: command.iter().map(|a| a.to_string()).collect(),
        env: BTreeMap::from([
            ("WORDCOUNT_MODE".to_owned(), "fast".to_owned()),
            // The contract's variables win over the assignment's.
            ("GALE_PORT".to_owned(), "1".to_owned()),
        ]),
        log_file: worker_log_path(&root.join("log"), "wordcount", 6700),
        blob_dir: root.join("local/blobs-of-w-1"),
        blobs: BTreeMap::from([("code".to_owned(), root.join("local/blobs/ab12"))]),
        run_as: None,
        worker_dir,
    }
}

/// Fields of `/proc/<pid>/stat` from field 3 (state) on; `None` once the pid is gone.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Running means present and not a zombie (an orphan's zombie waits for init to reap it).
fn is_running(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|f| f[0] != "Z" && f[0] != "X")
}

async fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_bounded(exit: &mut ExitWatch) -> ExitReport {
    tokio::time::timeout(DEADLINE, exit.wait()).await.expect("the worker exits in time").unwrap()
}

#[tokio::test]
async fn a_worker_gets_the_contract_argv_cwd_env_stdin_session_and_log() {
    let mut ignored = Vec::new();
    for via in both() {
        ignored.push(gets_the_contract(via).await);
    }
    assert!(ignored.windows(2).all(|w| w[0] == w[1]), "both routes leave the same signals ignored: {ignored:x?}");
}

/// Checks what the worker sees; returns its ignored signals (`SigIgn`), whose SIGPIPE bit
/// must be clear (the agent ignores SIGPIPE: Rust's runtime does; std resets it).
async fn gets_the_contract(via: Via) -> u64 {
    let root = tempfile::tempdir().unwrap();
    let spec = spec(
        root.path(),
        &[
            "/bin/sh",
            "-c",
            r#"echo out; echo err >&2; pwd; env | grep ^GALE_ | sort; echo "args $0 $1 $2"; echo "mode $WORDCOUNT_MODE"; echo "stdin $(readlink /proc/$$/fd/0)"; echo "sigmask $(grep ^SigBlk /proc/$$/status)"; grep ^SigIgn /proc/$$/status; exit 3"#,
            "{worker_id}",
            "--port={port}",
            "{blob:code}/x",
        ],
    );
    // A previous generation's output must survive: the log is appended to.
    std::fs::create_dir_all(spec.log_file.parent().unwrap()).unwrap();
    std::fs::write(&spec.log_file, "previous run\n").unwrap();

    let spawned = spawn(via, &spec).unwrap();
    assert_eq!(spawned.identity, ProcessIdentity::of(spawned.identity.pid).unwrap());
    // Our child stays in /proc (as a zombie at worst) until it is awaited.
    let stat = stat_fields(spawned.identity.pid).unwrap();
    assert_eq!(stat[2], spawned.identity.pid.to_string(), "{via:?}: process group leader");
    assert_eq!(stat[3], spawned.identity.pid.to_string(), "{via:?}: session leader");
    let mut exit = spawned.exit;
    assert_eq!(wait_bounded(&mut exit).await, ExitReport { code: Some(3), signal: None }, "{via:?}");

    let log = std::fs::read_to_string(&spec.log_file).unwrap();
    let wd = spec.worker_dir.display();
    let expected = [
        "previous run".to_owned(),
        "out".to_owned(),
        "err".to_owned(),
        wd.to_string(),
        format!("GALE_BLOB_DIR={}", spec.blob_dir.display()),
        format!("GALE_HEARTBEAT_FILE={wd}/heartbeat"),
        "GALE_PORT=6700".to_owned(),
        "GALE_SUPERVISOR_ID=sup-9".to_owned(),
        "GALE_TOPOLOGY_ID=wordcount".to_owned(),
        format!("GALE_WORKER_DIR={wd}"),
        "GALE_WORKER_ID=w-1".to_owned(),
        format!("args w-1 --port=6700 {}/local/blobs/ab12/x", root.path().display()),
        "mode fast".to_owned(),
        "stdin /dev/null".to_owned(),
        // Nothing blocked, SIGPIPE not ignored (the agent ignores it: Rust's runtime does).
        "sigmask SigBlk:\t0000000000000000".to_owned(),
    ];
    let lines: Vec<&str> = log.lines().collect();
    for line in &expected {
        assert!(lines.contains(&line.as_str()), "{via:?}: log lacks {line:?}:\n{log}");
    }
    assert_eq!(lines[0], "previous run", "{log}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&spec.worker_dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777 & !0o755, 0, "worker dir no more open than 0755: {mode:o}");
    let ignored = lines.iter().find_map(|l| l.strip_prefix("SigIgn:\t")).expect("the SigIgn line");
    let ignored = u64::from_str_radix(ignored, 16).unwrap();
    assert_eq!(ignored & (1 << (Signal::SIGPIPE as i32 - 1)), 0, "{via:?}: SIGPIPE ignored: {ignored:x}");
    ignored
}

#[tokio::test]
async fn a_descriptor_opened_without_cloexec_does_not_reach_the_worker() {
    use std::os::fd::AsRawFd;
    let leaky = nix::fcntl::open("/dev/null", nix::fcntl::OFlag::O_RDONLY, nix::sys::stat::Mode::empty()).unwrap();
    let fd = leaky.as_raw_fd();
    for via in both() {
        let root = tempfile::tempdir().unwrap();
        let script = format!("if [ -e /proc/$$/fd/{fd} ]; then echo leaked; else echo closed; fi; ls /proc/self/fd");
        let spec = spec(root.path(), &["/bin/sh", "-c", &script]);
        let mut exit = spawn(via, &spec).unwrap().exit;
        assert_eq!(wait_bounded(&mut exit).await.code, Some(0));
        let log = std::fs::read_to_string(&spec.log_file).unwrap();
        assert!(log.starts_with("closed\n"), "{via:?}: {log}");
        // 0, 1, 2 and the one `ls` reads the directory from: nothing of the agent's.
        assert_eq!(log.lines().skip(1).count(), 4, "{via:?}: {log}");
    }
}

#[tokio::test]
async fn launch_failures_name_the_step_and_path() {
    for via in both() {
        let root = tempfile::tempdir().unwrap();
        let err = spawn(via, &spec(root.path(), &["/nonexistent/bin/worker"])).unwrap_err();
        assert!(
            matches!(&err, LaunchError::Io { step: LaunchStep::Exec, path, source, .. }
                if path == Path::new("/nonexistent/bin/worker") && source.kind() == std::io::ErrorKind::NotFound),
            "{via:?}: {err:?}"
        );
        assert!(err.to_string().contains("topology wordcount port 6700"), "{err}");

        let mut bad_id = spec(root.path(), &["/bin/true"]);
        bad_id.worker_id = "../escape".into();
        assert!(matches!(spawn(via, &bad_id), Err(LaunchError::InvalidId { .. })));

        let mut blocked = spec(root.path(), &["/bin/true"]);
        std::fs::write(root.path().join("file"), "").unwrap();
        blocked.log_file = root.path().join("file/sub/worker.log");
        let err = spawn(via, &blocked).unwrap_err();
        assert!(matches!(err, LaunchError::Io { step: LaunchStep::CreateLogDir, .. }), "{via:?}: {err:?}");
    }
}

/// The error kind of spawning `command` (or "ok", the exit code and the log), in a fresh root
/// (`ROOT`) where `bin/not-executable` is a plain file and `bin/no-shebang` a script without
/// a `#!` line.
async fn outcome(via: Via, command: &[&str]) -> String {
    let root = tempfile::tempdir().unwrap();
    let mut spec = spec(root.path(), command);
    let bin = root.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join("not-executable"), "echo no").unwrap();
    std::fs::write(bin.join("no-shebang"), "echo \"script $1\"").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(bin.join("no-shebang"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let command: Vec<String> =
        spec.command.iter().map(|a| a.replace("ROOT", &root.path().display().to_string())).collect();
    spec.command = command;
    match spawn(via, &spec) {
        Ok(spawned) => {
            let mut exit = spawned.exit;
            let code = wait_bounded(&mut exit).await.code;
            format!("ok {code:?} {}", std::fs::read_to_string(&spec.log_file).unwrap().trim())
        }
        Err(LaunchError::Io { step: LaunchStep::Exec, source, .. }) => format!("{:?}", source.kind()),
        Err(e) => panic!("{via:?}: {e:?}"),
    }
}

#[tokio::test]
async fn both_routes_run_and_refuse_programs_as_std_does() {
    let cases: [(&[&str], &str); 5] = [
        (&["/bin/sh", "-c", "echo ran"], "ok Some(0) ran"),
        // A file without `#!` is run by /bin/sh, as execvp does.
        (&["ROOT/bin/no-shebang", "y"], "ok Some(0) script y"),
        (&["ROOT/bin/not-executable"], "PermissionDenied"),
        (&["ROOT/bin/gale-no-such-program"], "NotFound"),
        (&["/bin/echo", "a\0b"], "InvalidInput"),
    ];
    for (command, expected) in cases {
        for via in both() {
            assert_eq!(outcome(via, command).await, expected, "{via:?} {command:?}");
        }
    }
}

#[tokio::test]
async fn both_routes_switch_to_the_workers_user() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping both_routes_switch_to_the_workers_user: needs root to switch users");
        return;
    }
    for via in both() {
        let root = tempfile::tempdir().unwrap();
        std::fs::set_permissions(root.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let mut spec =
            spec(root.path(), &["/bin/sh", "-c", "grep -E '^(Uid|Gid|Groups):' /proc/$$/status; echo $USER"]);
        spec.run_as = Some(users::RunAs { name: "nobody".into(), uid: 65534, gid: 65534, groups: vec![65534, 4] });
        let mut exit = spawn(via, &spec).unwrap().exit;
        assert_eq!(wait_bounded(&mut exit).await.code, Some(0), "{via:?}");
        let log = std::fs::read_to_string(&spec.log_file).unwrap();
        let expected =
            "Uid:\t65534\t65534\t65534\t65534\nGid:\t65534\t65534\t65534\t65534\nGroups:\t4 65534 \nnobody\n";
        assert_eq!(log, expected, "{via:?}");
    }
}

#[tokio::test]
async fn signal_group_kills_the_worker_and_what_it_forked() {
    for via in both() {
        let root = tempfile::tempdir().unwrap();
        let spec = spec(
            root.path(),
            &["/bin/sh", "-c", "sleep 1000 & echo $! > grandchild.pid.tmp; mv grandchild.pid.tmp grandchild.pid; wait"],
        );
        let spawned = spawn(via, &spec).unwrap();
        let pid_file: PathBuf = spec.worker_dir.join("grandchild.pid");
        let grandchild: u32 =
            eventually("the grandchild's pid", || std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok()).await;
        assert!(is_running(grandchild));

        assert_eq!(signal_group(&spawned.identity, Signal::SIGKILL).unwrap(), SignalOutcome::Signalled);
        let mut exit = spawned.exit;
        assert_eq!(wait_bounded(&mut exit).await, ExitReport { code: None, signal: Some(9) }, "{via:?}");
        eventually("the grandchild to die", || (!is_running(grandchild)).then_some(())).await;
        // Reaped: nothing by that identity exists any more.
        assert_eq!(signal_group(&spawned.identity, Signal::SIGKILL).unwrap(), SignalOutcome::Gone, "{via:?}");
        // The report stays the same once seen.
        assert_eq!(wait_bounded(&mut exit).await.signal, Some(9));
    }
}

#[tokio::test]
async fn a_process_that_is_not_provably_ours_is_not_signalled() {
    for via in both() {
        let root = tempfile::tempdir().unwrap();
        let spawned = spawn(via, &spec(root.path(), &["/bin/sleep", "100"])).unwrap();
        let real = spawned.identity.clone();
        let restarted = ProcessIdentity { start_ticks: real.start_ticks + 1, ..real.clone() };
        let other_boot = ProcessIdentity { boot_id: "another-boot".into(), ..real.clone() };
        for stranger in [&restarted, &other_boot] {
            assert_eq!(signal_group(stranger, Signal::SIGKILL).unwrap(), SignalOutcome::NotOurs);
            assert_eq!(RealProcessControl.signal_group(stranger, Signal::SIGKILL).unwrap(), SignalOutcome::NotOurs);
        }
        assert!(is_running(real.pid), "the refused signal was not sent");
        assert_eq!(RealProcessControl.liveness(&real), Liveness::Alive);

        assert_eq!(signal_group(&real, Signal::SIGTERM).unwrap(), SignalOutcome::Signalled);
        let mut exit = spawned.exit;
        assert_eq!(wait_bounded(&mut exit).await.signal, Some(Signal::SIGTERM as i32), "{via:?}");
        assert_eq!(RealProcessControl.liveness(&real), Liveness::Dead);
    }
}

/// Starts `sleep` through a shell that exits at once, so the sleep is not our child (as with a
/// worker found running after an agent restart).
fn orphan_sleep(secs: &str) -> ProcessIdentity {
    let out = std::process::Command::new("/bin/sh")
        .args(["-c", &format!("sleep {secs} >/dev/null 2>&1 & echo $!")])
        .output()
        .unwrap();
    let pid: u32 = String::from_utf8(out.stdout).unwrap().trim().parse().unwrap();
    ProcessIdentity::of(pid).unwrap()
}

#[tokio::test]
async fn wait_adopted_returns_when_a_process_that_is_not_our_child_exits() {
    let orphan = orphan_sleep("0.5");
    let started = Instant::now();
    let mut exit = RealProcessControl.adopt(&orphan);
    assert_eq!(wait_bounded(&mut exit).await, ExitReport::UNKNOWN);
    assert!(!is_running(orphan.pid), "wait_adopted returned while the process still ran");
    assert!(started.elapsed() < Duration::from_millis(1500), "exit seen late: {:?}", started.elapsed());
}

#[tokio::test]
async fn wait_adopted_returns_at_once_for_a_gone_or_reused_pid() {
    let mut reaped = std::process::Command::new("/bin/true").spawn().unwrap();
    let gone = ProcessIdentity::of(reaped.id()).unwrap();
    reaped.wait().unwrap();
    // This test process is alive, but not with these start ticks: a reused pid.
    let me = ProcessIdentity::current().unwrap();
    let reused = ProcessIdentity { start_ticks: me.start_ticks + 1, ..me.clone() };
    let other_boot = ProcessIdentity { boot_id: "another-boot".into(), ..me };
    for identity in [gone, reused, other_boot] {
        tokio::time::timeout(Duration::from_secs(1), wait_adopted(&identity))
            .await
            .unwrap_or_else(|_| panic!("{identity:?} is not running, yet the wait blocked"))
            .unwrap();
    }
}

#[tokio::test]
async fn the_watcher_sees_a_worker_touch_its_heartbeat_file() {
    let root = tempfile::tempdir().unwrap();
    let spec = spec(root.path(), &["/bin/sh", "-c", r#"touch "$GALE_HEARTBEAT_FILE""#]);
    std::fs::create_dir_all(&spec.worker_dir).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let _watcher = HeartbeatWatcher::start(&spec.worker_id, &spec.worker_dir, tx).unwrap();
    let mut exit = RealProcessControl.spawn(&spec, &unconfined()).unwrap().exit;
    let hint = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await.expect("a hint within a second");
    assert_eq!(hint.as_deref(), Some("w-1"));
    assert!(last_heartbeat(&heartbeat_file(&spec.worker_dir)).is_some());
    assert_eq!(wait_bounded(&mut exit).await.code, Some(0));
}
