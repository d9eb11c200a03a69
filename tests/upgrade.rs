//! Upgrades (issue 15): workers started by the PREVIOUS release's real binary are adopted by
//! this build, not restarted, and this build then runs them as its own.
//!
//! The previous release is built from git by `scripts/build-previous-release.sh`
//! ([`previous_release`]); a fixture alone would not prove that what the old binary really
//! writes (local state, worker records, cgroups, its registration) is what this one reads.
//! Two paths: the new binary taking over the same config and local dir after a SIGTERM or a
//! SIGKILL of the old agent, and `dpkg -i` of this build's package over the previous one's in
//! a scratch root, followed by a restart of the agent (no systemd VM yet: the package's
//! `try-restart` is done by hand). A third: the previous release's blob cache (one shared
//! entry per content) under workers that run as two users, taken over by this build's
//! per-user cache.
//!
//! The config is the harness's ([`AgentSpec`]); every test first checks that BOTH binaries
//! accept it, so a key the old release does not know fails here, not as a mystery later.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use zookeeper_client as zkc;

const LONG: Duration = Duration::from_secs(60);

/// A plain long-running worker; its one `start` line in worker.log counts its launches.
const WORKER_SH: &str = "echo \"start pid=$$\"; exec /bin/sleep 1000";

/// The two topologies, one per slot: the first is crashed after the takeover, the second has
/// its assignment deleted.
const CRASHED: (&str, u16) = ("t-crashed", 6700);
const REMOVED: (&str, u16) = ("t-removed", 6701);

struct Case {
    agent: TestAgent,
}

impl std::ops::Deref for Case {
    type Target = TestAgent;
    fn deref(&self) -> &TestAgent {
        &self.agent
    }
}

impl Case {
    /// Root `/u-<name>`, id `sup-<name>`, the admin endpoint on a free loopback port (for
    /// `gale status --json`); the config is checked with both binaries.
    fn new(name: &str) -> Case {
        let agent = TestAgent::new("u", name);
        let admin = free_port();
        agent.edit(|text| text.replace("listen = \"\"", &format!("listen = \"127.0.0.1:{admin}\"")));
        check_config(previous_release(), &agent.config);
        check_config(Path::new(env!("CARGO_BIN_EXE_gale")), &agent.config);
        Case { agent }
    }

    async fn assign(&self, zk: &zkc::Client, (topology, port): (&str, u16)) {
        let a = json!({"schema": 1, "topology_id": topology,
            "launch": {"command": ["/bin/sh", "-c", WORKER_SH], "liveness": "process"},
            "workers": [{"supervisor_id": self.id, "port": port}]});
        put_json(zk, &self.assignment(topology), &a).await;
    }

    fn assignment(&self, topology: &str) -> String {
        format!("{}/assignments/{topology}", self.root)
    }

    /// How many times the worker of `(topology, port)` was launched (its `start` lines).
    fn starts(&self, (topology, port): (&str, u16)) -> usize {
        read_log(&self.worker_log(topology, port)).lines().filter(|l| l.starts_with("start pid=")).count()
    }

    /// `gale status --json` of the running agent (this build's CLI).
    fn status(&self) -> Value {
        let out = gale(&self.config, &["status", "--json"]);
        assert_eq!(out.status.code(), Some(0), "gale status --json: {}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

/// `binary check-config --config config` succeeds.
fn check_config(binary: &Path, config: &Path) {
    let out = Command::new(binary).arg("check-config").arg("--config").arg(config).output().unwrap();
    assert!(
        out.status.success(),
        "{} rejects the test config {}: {}",
        binary.display(),
        config.display(),
        text(&out.stderr)
    );
}

fn status_slot(status: &Value, port: u16) -> Value {
    status["slots"].as_array().unwrap().iter().find(|s| s["port"] == port).cloned().unwrap_or(Value::Null)
}

/// Both slots running, under `version`, as pids `[crashed, removed]`.
fn both_running(info: &Value, version: &str) -> Option<[u32; 2]> {
    (info["version"] == version && info["state"] == "running")
        .then(|| Some([running_pid(info, CRASHED.1)?, running_pid(info, REMOVED.1)?]))
        .flatten()
}

/// The previous release's `binary` (built, or installed from its package) runs both workers
/// under `config`: returns the old agent and the workers' pids.
async fn old_agent_runs_both(
    case: &Case,
    zk: &zkc::Client,
    reaper: &Reaper,
    binary: &Path,
    config: &Path,
) -> (Agent, [u32; 2]) {
    let old_version = binary_version(binary);
    assert_ne!(old_version, env!("CARGO_PKG_VERSION"), "the previous release must be another version");
    case.assign(zk, CRASHED).await;
    case.assign(zk, REMOVED).await;
    let old = Agent::start_binary(config, binary.to_str().unwrap());
    let info = case
        .wait_info(zk, &old, "the previous release running both workers", |i| both_running(i, &old_version).is_some())
        .await;
    let pids = both_running(&info, &old_version).unwrap();
    pids.iter().for_each(|p| reaper.track(*p));
    wait_for("both workers' start lines", Duration::from_secs(10), || {
        (case.starts(CRASHED) == 1 && case.starts(REMOVED) == 1).then_some(())
    });
    (old, pids)
}

/// The new agent has adopted `pids`: same processes, no restart, in SupervisorInfo, in
/// `gale status --json` and in the workers' logs.
async fn assert_adopted(case: &Case, zk: &zkc::Client, new: &Agent, pids: [u32; 2]) {
    let version = env!("CARGO_PKG_VERSION");
    let info = case.wait_info(zk, new, "this build running both workers", |i| both_running(i, version).is_some()).await;
    assert_eq!(both_running(&info, version), Some(pids), "adopted, not restarted: {info}");
    for port in [CRASHED.1, REMOVED.1] {
        assert_eq!(slot(&info, port).unwrap()["restarts"], 0, "{info}");
    }
    let status = case.status();
    assert_eq!(status["version"], version, "{status}");
    for (port, pid) in [(CRASHED.1, pids[0]), (REMOVED.1, pids[1])] {
        let s = status_slot(&status, port);
        assert_eq!(
            (s["state"].clone(), s["pid"].clone(), s["restarts"].clone()),
            (json!("running"), json!(pid), json!(0)),
            "{status}"
        );
    }
    assert_eq!(new.log_text().matches("adopted a worker").count(), 2, "{}", new.log_text());
    assert_eq!((case.starts(CRASHED), case.starts(REMOVED)), (1, 1), "never relaunched");
}

/// After the takeover this build acts on the adopted workers: a crash is restarted, a deleted
/// assignment stops its worker, and nothing else is left running.
async fn assert_runs_them(case: &Case, zk: &zkc::Client, new: &Agent, reaper: &Reaper, pids: [u32; 2]) {
    kill(Pid::from_raw(pids[0] as i32), Signal::SIGKILL).unwrap();
    let info = case
        .wait_info(zk, new, "the crashed worker restarted", |i| running_pid(i, CRASHED.1).is_some_and(|p| p != pids[0]))
        .await;
    let relaunched = running_pid(&info, CRASHED.1).unwrap();
    reaper.track(relaunched);
    assert_eq!(slot(&info, CRASHED.1).unwrap()["restarts"], 1, "{info}");
    assert_eq!(running_pid(&info, REMOVED.1), Some(pids[1]), "the other worker is untouched: {info}");

    delete(zk, &case.assignment(REMOVED.0)).await;
    // An empty slot has no `workers[]` entry and is not in `used_slots`.
    case.wait_info(zk, new, "the removed topology's slot empty", |i| {
        slot(i, REMOVED.1).is_none() && !i["used_slots"].as_array().is_some_and(|u| u.contains(&json!(REMOVED.1)))
    })
    .await;
    wait_for("the removed topology's worker to be gone", Duration::from_secs(30), || (!alive(pids[1])).then_some(()));

    let status = case.status();
    let (crashed, removed) = (status_slot(&status, CRASHED.1), status_slot(&status, REMOVED.1));
    assert_eq!((crashed["state"].clone(), crashed["pid"].clone()), (json!("running"), json!(relaunched)), "{status}");
    assert_eq!(removed["state"], "empty", "{status}");
    let left: Vec<i32> =
        pids_with_cwd_under(&case.local().join("workers")).into_iter().filter(|p| alive(*p as u32)).collect();
    assert_eq!(left, vec![relaunched as i32], "only the restarted worker runs");
}

/// The previous release runs two workers; it is stopped with `stop`; this build takes over the
/// same config and local dir, adopts both, then restarts one that crashes and stops one whose
/// assignment is deleted.
async fn takeover(name: &str, stop: Signal) {
    let case = Case::new(name);
    let reaper = case.reaper();
    let zk = zk_client(&shared_zk().connect_string()).await;
    let (mut old, pids) = old_agent_runs_both(&case, &zk, &reaper, previous_release(), &case.config).await;

    old.signal(stop);
    if stop == Signal::SIGKILL {
        old.wait_exit_signal();
    } else {
        assert_eq!(old.wait_exit(Duration::from_secs(15)), 0, "{}", old.log_text());
    }
    assert!(pids.iter().all(|p| alive(*p)), "the workers outlive the old agent");

    let mut new = Agent::start(&case.config);
    assert_adopted(&case, &zk, &new, pids).await;
    assert_runs_them(&case, &zk, &new, &reaper, pids).await;
    new.signal(Signal::SIGTERM);
    assert_eq!(new.wait_exit(Duration::from_secs(15)), 0, "{}", new.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_previous_release_stopped_with_sigterm_hands_its_workers_to_this_build() {
    takeover("sigterm", Signal::SIGTERM).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_previous_release_sigkilled_leaves_its_workers_to_this_build() {
    takeover("sigkill", Signal::SIGKILL).await;
}

// ------------------------------------------------------------------------------------------
// The package path: dpkg -i of this build's .deb over the previous release's

/// dpkg with its own database in a scratch root. Maintainer scripts run without chroot (the
/// root has no shell) and find a recording `systemctl` first on PATH, so they never reach the
/// host's systemd; the package's scripts touch nothing else (the conffile is dpkg's business,
/// inside the root).
struct ScratchDpkg {
    dir: PathBuf,
}

impl ScratchDpkg {
    fn new(dir: &Path) -> ScratchDpkg {
        let admin = dir.join("root/var/lib/dpkg");
        for sub in ["updates", "info", "triggers"] {
            std::fs::create_dir_all(admin.join(sub)).unwrap();
        }
        std::fs::write(admin.join("status"), "").unwrap();
        std::fs::write(admin.join("available"), "").unwrap();
        let shim = dir.join("shim");
        std::fs::create_dir_all(&shim).unwrap();
        let systemctl = shim.join("systemctl");
        std::fs::write(&systemctl, format!("#!/bin/sh\necho \"$@\" >> {}\n", dir.join("systemctl.log").display()))
            .unwrap();
        std::fs::set_permissions(&systemctl, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        ScratchDpkg { dir: dir.to_owned() }
    }

    fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    fn run(&self, args: &[&str]) -> String {
        let path = format!("{}:{}", self.dir.join("shim").display(), std::env::var("PATH").unwrap_or_default());
        let out = Command::new("dpkg")
            .arg(format!("--root={}", self.root().display()))
            .arg(format!("--log={}", self.dir.join("dpkg.log").display()))
            .args(["--force-not-root", "--force-script-chrootless", "--force-depends"])
            .args(["--force-confdef", "--force-confold"])
            .args(args)
            .env("PATH", path)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "dpkg {args:?}: {all}");
        all
    }

    /// `Version:` of the installed gale, from the scratch database.
    fn installed_version(&self) -> String {
        let status = self.run(&["-s", "gale"]);
        assert!(status.contains("Status: install ok installed"), "{status}");
        status.lines().find_map(|l| l.strip_prefix("Version: ")).unwrap_or_else(|| panic!("{status}")).to_owned()
    }
}

/// Builds a package with `tree`'s own `scripts/build-deb.sh` around `binary`; returns its path.
/// The debug binary's debug info is stripped first (when `strip` is there): packing and
/// unpacking 180 MB twice would take most of the test's time.
fn build_deb(tree: &Path, binary: &Path, out: &Path) -> PathBuf {
    std::fs::create_dir_all(out).unwrap();
    let stripped = out.join("gale");
    let strip = Command::new("strip").arg("--strip-debug").arg("-o").arg(&stripped).arg(binary).status();
    let binary = if strip.is_ok_and(|s| s.success()) { stripped.as_path() } else { binary };
    let result = Command::new(tree.join("scripts/build-deb.sh"))
        .arg("--binary")
        .arg(binary)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(result.status.success(), "{}: {}", tree.display(), text(&result.stderr));
    PathBuf::from(text(&result.stdout).trim())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deb_upgrade_over_the_previous_release_keeps_the_workers_running_and_adopted() {
    let case = Case::new("deb");
    let reaper = case.reaper();
    let tmp = tempfile::Builder::new().prefix("gale-u-deb-").tempdir().unwrap();
    let old_deb = build_deb(previous_tree(), previous_release(), &tmp.path().join("old"));
    let new_deb = build_deb(
        Path::new(env!("CARGO_MANIFEST_DIR")),
        Path::new(env!("CARGO_BIN_EXE_gale")),
        &tmp.path().join("new"),
    );
    let dpkg = ScratchDpkg::new(&tmp.path().join("scratch"));
    dpkg.run(&["-i", old_deb.to_str().unwrap()]);
    let old_version = binary_version(previous_release());
    assert_eq!(dpkg.installed_version(), old_version);

    // The operator's edit of the conffile: this test's config, which both releases accept.
    let config = dpkg.root().join("etc/gale/gale.toml");
    let edited = std::fs::read_to_string(&case.config).unwrap();
    std::fs::write(&config, &edited).unwrap();
    let binary = dpkg.root().join("usr/bin/gale");
    let zk = zk_client(&shared_zk().connect_string()).await;
    let (mut old, pids) = old_agent_runs_both(&case, &zk, &reaper, &binary, &config).await;

    let upgrade = dpkg.run(&["-i", new_deb.to_str().unwrap()]);
    assert_eq!(dpkg.installed_version(), env!("CARGO_PKG_VERSION"), "an upgrade in dpkg's eyes:\n{upgrade}");
    assert!(upgrade.contains(&format!("over ({old_version})")), "dpkg saw an upgrade:\n{upgrade}");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), edited, "the edited conffile is kept");
    assert_eq!(binary_version(&binary), env!("CARGO_PKG_VERSION"));
    assert!(pids.iter().all(|p| alive(*p)), "the package upgrade leaves the workers alone");

    // What the package's postinst asks systemd for (`try-restart`), by hand.
    old.signal(Signal::SIGTERM);
    assert_eq!(old.wait_exit(Duration::from_secs(15)), 0, "{}", old.log_text());
    let mut new = Agent::start_binary(&config, binary.to_str().unwrap());
    assert_adopted(&case, &zk, &new, pids).await;
    new.signal(Signal::SIGTERM);
    assert_eq!(new.wait_exit(LONG), 0, "{}", new.log_text());
    assert!(pids.iter().all(|p| alive(*p)), "the workers outlive the agent");
}

/// A worker reading its blob every half second: `own=<content>`, or `cat`'s error.
const READER_SH: &str = "echo \"start pid=$$\"; \
    while :; do echo \"own=$(cat \"$GALE_BLOB_DIR/data\" 2>&1)\"; sleep 0.5; done";

/// The previous release kept one cache for every user (`blobs/<sha256>/file`, readable by any
/// worker). This build keeps a user's entries in a directory only that user can enter
/// (`blobs/u<uid>/`); it must open the old cache as it is, adopt the old workers without a
/// restart and keep their old entries while they link to them, give a relaunched worker its
/// user's own entry, and let the old shared one go once nothing links to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_previous_release_blob_cache_is_kept_for_its_workers_and_users_get_their_own() {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: running workers as other users needs root");
        return;
    }
    let users = ["gale-blob-a", "gale-blob-b"];
    let uids = users.map(test_user);
    let case = Case::new("blobs");
    case.edit(|text| {
        format!(
            "{text}\n[worker]\nrun_as_user = true\nallowed_users = [\"{}\", \"{}\"]\nmin_uid = 1000\n\
             [blob]\ncache_target_mb = 0\nsync_secs = 2\n",
            users[0], users[1]
        )
    });
    check_config(previous_release(), &case.config);
    check_config(Path::new(env!("CARGO_BIN_EXE_gale")), &case.config);
    case.open_to_worker_users();
    let reaper = case.reaper();
    let zk = zk_client(&shared_zk().connect_string()).await;
    let store = case.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let topologies = [CRASHED, REMOVED];
    let mut shas = Vec::new();
    for (i, ((topology, port), user)) in topologies.iter().zip(users).enumerate() {
        let content = format!("secret of {user}");
        std::fs::write(store.join(topology), &content).unwrap();
        let sha: String = Sha256::digest(content.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
        let meta = json!({"schema": 1, "key": topology, "version": 1, "sha256": sha, "size": content.len(),
                          "url": format!("file://{}", store.join(topology).display())});
        put_json(&zk, &format!("{}/blobstore/{topology}", case.root), &meta).await;
        shas.push(sha);
        let a = json!({"schema": 1, "topology_id": topology,
            "launch": {"command": ["/bin/sh", "-c", READER_SH], "user": users[i]},
            "blobs": [{"key": topology, "name": "data"}],
            "workers": [{"supervisor_id": case.id, "port": port}]});
        put_json(&zk, &case.assignment(topology), &a).await;
    }
    let old_version = binary_version(previous_release());
    let mut old = Agent::start_binary(&case.config, previous_release().to_str().unwrap());
    let info = case
        .wait_info(&zk, &old, "the previous release running both workers", |i| both_running(i, &old_version).is_some())
        .await;
    let pids = both_running(&info, &old_version).unwrap();
    pids.iter().for_each(|p| reaper.track(*p));
    let cache = case.local().join("blobs");
    let names = || {
        let mut names: Vec<String> = std::fs::read_dir(&cache)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let mut old_entries = shas.clone();
    old_entries.sort();
    assert_eq!(names(), old_entries, "the old layout: one shared entry per content");
    old.signal(Signal::SIGKILL);
    old.wait_exit_signal();

    // This build adopts both, keeps the old entries they link to and fetches each user's own.
    let new = Agent::start(&case.config);
    let version = env!("CARGO_PKG_VERSION");
    let user_dirs = uids.map(|uid| format!("u{uid}"));
    eventually("both adopted, each user's entry fetched", LONG, || async {
        let info = read_json(&zk, &case.info_path()).await?.0;
        let mut want = [old_entries.clone(), user_dirs.to_vec()].concat();
        want.sort();
        (both_running(&info, version) == Some(pids) && names() == want).then_some(())
    })
    .await;
    for (i, topology) in [CRASHED.0, REMOVED.0].iter().enumerate() {
        let mine = cache.join(&user_dirs[i]);
        assert_eq!(std::fs::metadata(&mine).map(|m| (m.uid(), m.mode() & 0o7777)).unwrap(), (uids[i], 0o500));
        assert!(mine.join(&shas[i]).join("file").is_file(), "{topology}: its user's own entry");
    }
    // Past a sync and cleanup pass (every 2 s, target 0): still reading their blobs, never restarted.
    let reads = |topology: &str, port: u16| read_log(&case.worker_log(topology, port)).matches("own=secret of").count();
    let before = reads(CRASHED.0, CRASHED.1);
    eventually("six more reads", LONG, || async { (reads(CRASHED.0, CRASHED.1) >= before + 6).then_some(()) }).await;
    for ((topology, port), user) in topologies.iter().zip(users) {
        let log = read_log(&case.worker_log(topology, *port));
        assert!(!log.contains("own=cat:") && log.contains(&format!("own=secret of {user}")), "{log}");
    }
    assert_eq!((case.starts(CRASHED), case.starts(REMOVED)), (1, 1), "never relaunched");
    assert!(names().contains(&shas[0]) && names().contains(&shas[1]), "the adopted workers' entries stay");

    // A crash: the relaunch links to its user's entry; the old shared one, now unused, goes.
    kill(Pid::from_raw(pids[0] as i32), Signal::SIGKILL).unwrap();
    let info = case
        .wait_info(&zk, &new, "the crashed worker restarted", |i| {
            running_pid(i, CRASHED.1).is_some_and(|p| p != pids[0])
        })
        .await;
    let relaunched = running_pid(&info, CRASHED.1).unwrap();
    reaper.track(relaunched);
    let worker = slot(&info, CRASHED.1).unwrap()["worker_id"].as_str().unwrap().to_owned();
    let link = std::fs::read_link(case.local().join("workers").join(worker).join("blobs/data")).unwrap();
    assert_eq!(link, cache.join(&user_dirs[0]).join(&shas[0]).join("file"));
    wait_for("the unused shared entry removed", LONG, || (!names().contains(&shas[0])).then_some(()));
    assert!(names().contains(&shas[1]), "still linked by the adopted worker of {}", users[1]);
    assert_eq!(running_pid(&info, REMOVED.1), Some(pids[1]));

    // Stopped by this build: the adopted worker's cgroup, where the previous release put it,
    // goes with it, and so does that release's workers' parent once empty (under a unit on
    // cgroup v2 it was beside the unit, in system.slice; the VM stage runs this there).
    let unified = |pid: u32| {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let path = text.lines().find_map(|l| l.strip_prefix("0::")).unwrap_or("/").trim_start_matches('/').to_owned();
        Path::new("/sys/fs/cgroup").join(path)
    };
    let (old_cgroup, new_cgroup) = (unified(pids[1]), unified(relaunched));
    for (topology, _) in topologies {
        delete(&zk, &case.assignment(topology)).await;
    }
    case.wait_info(&zk, &new, "both workers stopped", |i| i["workers"].as_array().is_some_and(|w| w.is_empty())).await;
    if old_cgroup != Path::new("/sys/fs/cgroup") {
        // Only a former parent goes; this build's own stays for its next workers.
        let former = old_cgroup.parent() != new_cgroup.parent();
        wait_for("the adopted worker's cgroup (and a former parent) removed", LONG, || {
            let left = old_cgroup.exists() || (former && old_cgroup.parent().unwrap().exists());
            (!left).then_some(())
        });
    }
}
