//! One worker's cgroup: create with limits, be born in it or join it before exec, list, kill,
//! OOM check, remove; adopt after an agent restart; sweep what no record claims.
//!
//! With [`Mechanism::Rlimits`] a [`WorkerCgroup`] holds no directory: it only carries the
//! `RLIMIT_AS` to set before exec, lists no processes and kills nothing
//! ([`WorkerCgroup::tracks_processes`] is false), so the caller falls back to the process group.

use std::collections::BTreeSet;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};
use tracing::{debug, warn};

use super::procfs::{self, Hierarchy};
use super::{CgroupDir, IsolationError, Limits, Mechanism, io_error, write_value};

/// cpu.max / cpu.cfs_period_us: the kernel's default period, 100 ms.
const CPU_PERIOD_US: u64 = 100_000;
/// The smallest quota the kernel accepts (1 ms).
const CPU_MIN_QUOTA_US: u64 = 1_000;
const MIB: u64 = 1024 * 1024;

/// Rounds of "list members, SIGKILL each" before giving up, and the pause between them: about
/// two seconds in all. A fork bomb refills the cgroup between rounds, but each round kills
/// every member it sees and the pids limit bounds the refill.
const KILL_ROUNDS: u32 = 200;
const KILL_PAUSE: Duration = Duration::from_millis(10);
/// `rmdir` of a cgroup whose last members are still exiting fails with EBUSY for a moment.
const RMDIR_ROUNDS: u32 = 100;
const RMDIR_PAUSE: Duration = Duration::from_millis(20);

/// How a worker's process enters its cgroup ([`WorkerCgroup::birth`]).
#[derive(Debug)]
pub(crate) enum Birth {
    /// Created inside it: `clone3` with `CLONE_INTO_CGROUP` and this open cgroup v2 directory.
    IntoCgroup(OwnedFd),
    /// Started where the agent is, then joined (or its rlimits set) before `exec`.
    JoinBeforeExec(Join),
}

/// What a worker's process does between its clone (or fork) and `exec` to enter its cgroup:
/// write `0` to each `cgroup.procs` file (opened here, in the parent, because the child may
/// not allocate or open paths), or, with rlimits, set `RLIMIT_AS`. Both routes of the launch
/// do it ([`crate::sys::clone3::ExecPlan::join_before_exec`], or [`Join::on_exec_of`] for
/// std's `Command`); if a step fails the spawn fails with that error: a worker never runs
/// unconfined.
#[derive(Debug, Default)]
pub(crate) struct Join {
    /// `cgroup.procs` of every directory of the cgroup, primary first, open for writing and
    /// close-on-exec (the worker never holds them). Empty with rlimits.
    pub cgroup_procs: Vec<OwnedFd>,
    /// Rlimits only: `RLIMIT_AS` in bytes.
    pub address_space: Option<u64>,
}

impl Join {
    /// Registers this join as `pre_exec` hooks of `command`: std's route, the fallback where
    /// the kernel has no clone3 (`crate::worker::launch`).
    pub(crate) fn on_exec_of(self, command: &mut std::process::Command) {
        if !self.cgroup_procs.is_empty() {
            crate::sys::join_cgroups_on_exec(command, self.cgroup_procs);
        }
        if let Some(bytes) = self.address_space {
            crate::sys::limit_address_space_on_exec(command, bytes);
        }
    }
}

/// One worker's cgroup (or, with rlimits, the limits to apply at exec). See the module docs.
#[derive(Debug)]
pub(crate) struct WorkerCgroup {
    /// Tests only: the fake process control knows a cgroup by its worker id, even with
    /// rlimits (no directory to take the name from).
    #[cfg(test)]
    worker_id: String,
    /// Every directory the worker joins: v2 one; v1 memory, cpu, and pids when mounted.
    /// The first is the primary one (memory accounting, OOM counters). Empty for rlimits.
    dirs: Vec<CgroupDir>,
    /// Rlimits only: `RLIMIT_AS` in bytes.
    address_space: Option<u64>,
    /// Set for a cgroup under a former workers' parent (an earlier build's layout): removing
    /// it also removes that parent once it is empty.
    former_parent: bool,
}

impl WorkerCgroup {
    /// Creates the cgroup of `worker_id` and writes `limits` into it. A leftover empty cgroup
    /// with the same id is replaced; one with processes is an error (adopt or sweep it).
    /// On any failure nothing is left behind.
    pub(crate) fn create(
        mechanism: &Mechanism,
        worker_id: &str,
        limits: &Limits,
    ) -> Result<WorkerCgroup, IsolationError> {
        check_id(worker_id)?;
        for (limit, zero) in [
            ("memory_mb", limits.memory_mb == Some(0)),
            ("cpu_percent", limits.cpu_percent == Some(0)),
            ("pids_max", limits.pids_max == Some(0)),
        ] {
            if zero {
                return Err(IsolationError::ZeroLimit { worker_id: worker_id.to_owned(), limit });
            }
        }
        let dirs: Vec<CgroupDir> = mechanism.parents().into_iter().map(|p| p.child(worker_id)).collect();
        if dirs.is_empty() {
            let address_space = limits.memory_mb.map(|mb| mb.saturating_mul(MIB));
            return Ok(WorkerCgroup {
                #[cfg(test)]
                worker_id: worker_id.to_owned(),
                dirs,
                address_space,
                former_parent: false,
            });
        }
        let cgroup = WorkerCgroup {
            #[cfg(test)]
            worker_id: worker_id.to_owned(),
            dirs,
            address_space: None,
            former_parent: false,
        };
        for dir in &cgroup.dirs {
            if let Err(e) = make_fresh_dir(&dir.path) {
                let _ = cgroup.remove_dirs();
                return Err(e);
            }
        }
        if let Err(e) = cgroup.write_limits(limits) {
            let _ = cgroup.remove_dirs();
            return Err(e);
        }
        Ok(cgroup)
    }

    /// The cgroup of `worker_id` left by an earlier agent, if its primary directory exists.
    /// Limits are not re-read: they stay as written at create.
    pub(crate) fn adopt(mechanism: &Mechanism, worker_id: &str) -> Option<WorkerCgroup> {
        check_id(worker_id).ok()?;
        let parents = mechanism.parents();
        let primary = parents.first()?.child(worker_id);
        if !primary.path.is_dir() {
            return None;
        }
        let dirs = parents.into_iter().map(|p| p.child(worker_id)).filter(|d| d.path.is_dir()).collect();
        Some(WorkerCgroup {
            #[cfg(test)]
            worker_id: worker_id.to_owned(),
            dirs,
            address_space: None,
            former_parent: false,
        })
    }

    /// A cgroup of these directories (primary first); `handover.rs` finds them.
    pub(super) fn with_dirs(worker_id: &str, dirs: Vec<CgroupDir>) -> WorkerCgroup {
        #[cfg(not(test))]
        let _ = worker_id;
        WorkerCgroup {
            #[cfg(test)]
            worker_id: worker_id.to_owned(),
            dirs,
            address_space: None,
            former_parent: false,
        }
    }

    /// Tests only (the fake process control, the isolation tests).
    #[cfg(test)]
    pub(crate) fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// Whether [`pids`](Self::pids) and [`kill_all`](Self::kill_all) mean anything (false with
    /// rlimits: the caller must use the process group instead).
    pub(crate) fn tracks_processes(&self) -> bool {
        !self.dirs.is_empty()
    }

    /// The directories of this cgroup, primary first (empty with rlimits). Tests only.
    #[cfg(test)]
    pub(crate) fn dirs(&self) -> impl Iterator<Item = &Path> {
        self.dirs.iter().map(|d| d.path.as_path())
    }

    /// How the worker's process enters this cgroup (module docs of `isolation`): born in it
    /// when this is a cgroup v2 directory and the kernel can ([`super::clone_into_cgroup`]),
    /// with the directory opened here; otherwise joined before exec ([`Self::join`]).
    pub(crate) fn birth(&self) -> Result<Birth, IsolationError> {
        match self.dirs.as_slice() {
            [dir] if dir.hierarchy == Hierarchy::Unified && super::clone_into_cgroup().is_ok() => {
                // std opens with O_CLOEXEC: the worker never inherits it.
                let file = std::fs::File::open(&dir.path).map_err(io_error("open", &dir.path))?;
                Ok(Birth::IntoCgroup(file.into()))
            }
            _ => Ok(Birth::JoinBeforeExec(self.join()?)),
        }
    }

    /// What the worker's process does before `exec` to join this cgroup (or, with rlimits, to
    /// set `RLIMIT_AS`): see [`Join`].
    pub(crate) fn join(&self) -> Result<Join, IsolationError> {
        let mut cgroup_procs = Vec::with_capacity(self.dirs.len());
        for dir in &self.dirs {
            let path = dir.path.join("cgroup.procs");
            // std opens with O_CLOEXEC: the worker never inherits these.
            let file = std::fs::OpenOptions::new().write(true).open(&path).map_err(io_error("open", &path))?;
            cgroup_procs.push(OwnedFd::from(file));
        }
        Ok(Join { cgroup_procs, address_space: self.address_space })
    }

    /// The processes in this cgroup (and any cgroups below it), sorted. Empty with rlimits.
    pub(crate) fn pids(&self) -> Result<Vec<u32>, IsolationError> {
        let mut pids = BTreeSet::new();
        for dir in &self.dirs {
            collect_pids(&dir.path, &mut pids)?;
        }
        Ok(pids.into_iter().collect())
    }

    /// Kills every process in the cgroup and waits (bounded) until none is left; returns the
    /// members the first listing found. v2 with `cgroup.kill` (Linux ≥ 5.14) kills atomically,
    /// forks included; otherwise each member is SIGKILLed, round after round, until a listing
    /// comes back empty.
    pub(crate) fn kill_all(&self) -> Result<Vec<u32>, IsolationError> {
        let Some(primary) = self.dirs.first() else { return Ok(Vec::new()) };
        let found = self.pids()?;
        if found.is_empty() {
            return Ok(found);
        }
        let kill_file = primary.path.join("cgroup.kill");
        let has_kill_file = primary.hierarchy == Hierarchy::Unified && kill_file.exists();
        let mut pids = found.clone();
        for _ in 0..KILL_ROUNDS {
            if pids.is_empty() {
                return Ok(found);
            }
            if has_kill_file {
                write_value(&kill_file, "1")?;
            } else {
                for &pid in &pids {
                    self.kill_member(pid)?;
                }
            }
            std::thread::sleep(KILL_PAUSE);
            pids = self.pids()?;
        }
        if pids.is_empty() {
            Ok(found)
        } else {
            Err(IsolationError::StillPopulated { path: primary.path.clone(), pids })
        }
    }

    /// Whether the kernel's OOM killer killed a process of this cgroup. v2: `oom_kill` in
    /// `memory.events`; v1: `oom_kill` in `memory.oom_control` (Linux ≥ 4.13). On older v1
    /// kernels the only evidence is `memory.failcnt` > 0 (the limit was hit), which means an
    /// OOM kill only if the worker also died of SIGKILL: the caller must check that.
    /// False with rlimits, or when nothing can be read (logged).
    pub(crate) fn oom_killed(&self) -> bool {
        let Some(primary) = self.dirs.first() else { return false };
        let (file, key) = match primary.hierarchy {
            Hierarchy::Unified => ("memory.events", "oom_kill"),
            Hierarchy::V1(_) => ("memory.oom_control", "oom_kill"),
        };
        let read = |file: &str, key: &str| {
            let path = primary.path.join(file);
            std::fs::read_to_string(&path)
                .map_err(|e| debug!(path = %path.display(), error = %e, "cannot read an OOM counter"))
                .ok()
                .and_then(|text| procfs::keyed_value(&text, key))
        };
        match read(file, key) {
            Some(count) => count > 0,
            None if primary.hierarchy != Hierarchy::Unified => {
                std::fs::read_to_string(primary.path.join("memory.failcnt"))
                    .ok()
                    .and_then(|t| t.trim().parse::<u64>().ok())
                    .is_some_and(|n| n > 0)
            }
            None => false,
        }
    }

    /// Kills everything in the cgroup and removes its directories; returns the processes it
    /// found there (and killed). On error the directories that remain are found again by
    /// [`WorkerCgroup::adopt`] or [`sweep_orphans`].
    pub(crate) fn remove(self) -> Result<Vec<u32>, IsolationError> {
        let killed = if self.remove_if_empty() {
            Vec::new()
        } else {
            let killed = self.kill_all()?;
            self.remove_dirs()?;
            killed
        };
        if self.former_parent {
            for parent in self.dirs.iter().filter_map(|d| d.path.parent()) {
                // Fails while other workers of the old layout are still in it: the last one's
                // removal (or the next start's detection) takes it.
                if std::fs::remove_dir(parent).is_ok() {
                    debug!(cgroup = %parent.display(), "removed the emptied former workers' parent");
                }
            }
        }
        Ok(killed)
    }

    /// Removes the cgroup if nothing is left in it (one `rmdir` per directory, no listing: the
    /// common case right after a worker exited). Otherwise, or when it also has a former
    /// parent to remove, gives it back for [`WorkerCgroup::remove`].
    pub(crate) fn remove_empty(self) -> Result<(), WorkerCgroup> {
        if !self.former_parent && self.remove_if_empty() { Ok(()) } else { Err(self) }
    }

    /// This cgroup, found under a former workers' parent, removes that parent with it once
    /// the parent is empty.
    pub(crate) fn under_former_parent(mut self) -> WorkerCgroup {
        self.former_parent = true;
        self
    }

    fn write_limits(&self, limits: &Limits) -> Result<(), IsolationError> {
        let quota = limits.cpu_percent.map(|pct| (CPU_PERIOD_US * u64::from(pct) / 100).max(CPU_MIN_QUOTA_US));
        for dir in &self.dirs {
            let file = |name: &str| dir.path.join(name);
            let optional = |name: &str, value: &str| match file(name).exists() {
                true => write_value(&file(name), value),
                false => Ok(()),
            };
            match dir.hierarchy {
                Hierarchy::Unified => {
                    if let Some(mb) = limits.memory_mb {
                        write_value(&file("memory.max"), &(mb.saturating_mul(MIB)).to_string())?;
                        // Swap would let the worker dodge memory.max; absent without swap support.
                        optional("memory.swap.max", "0")?;
                    }
                    // An OOM kill takes the whole worker, not one of its processes at random.
                    optional("memory.oom.group", "1")?;
                    if let Some(quota) = quota {
                        write_value(&file("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
                    }
                    if let Some(max) = limits.pids_max {
                        write_value(&file("pids.max"), &max.to_string())?;
                    }
                }
                Hierarchy::V1("memory") => {
                    if let Some(mb) = limits.memory_mb {
                        let bytes = mb.saturating_mul(MIB).to_string();
                        // memsw (memory + swap) must be ≥ the memory limit: set the memory limit
                        // first. Without memsw (swap accounting off) swap is not counted.
                        write_value(&file("memory.limit_in_bytes"), &bytes)?;
                        optional("memory.memsw.limit_in_bytes", &bytes)?;
                    }
                }
                Hierarchy::V1("cpu") => {
                    if let Some(quota) = quota {
                        write_value(&file("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                        write_value(&file("cpu.cfs_quota_us"), &quota.to_string())?;
                    }
                }
                Hierarchy::V1("pids") => {
                    if let Some(max) = limits.pids_max {
                        write_value(&file("pids.max"), &max.to_string())?;
                    }
                }
                Hierarchy::V1(_) => {}
            }
        }
        Ok(())
    }

    /// SIGKILLs `pid` if it is (still) a member. The pidfd is opened before the membership
    /// check, so if `pid` is recycled after the check the signal goes to the dead process the
    /// pidfd names (ESRCH), never to the newcomer.
    fn kill_member(&self, pid: u32) -> Result<(), IsolationError> {
        // 0, 1 and negative numbers mean "my group", init or "every process" to kill(2).
        let Some(raw) = i32::try_from(pid).ok().filter(|&p| p > 1).and_then(Pid::from_raw) else { return Ok(()) };
        let pidfd = match pidfd_open(raw, PidfdFlags::empty()) {
            Ok(fd) => Some(fd),
            Err(rustix::io::Errno::SRCH) => return Ok(()),
            // Linux < 5.3: no pidfd. The membership check just before kill(2) leaves a window
            // of two system calls, accepted on such old kernels.
            Err(rustix::io::Errno::NOSYS) => None,
            Err(e) => {
                return Err(IsolationError::Io { op: "open a pidfd for", path: proc_path(pid), source: e.into() });
            }
        };
        if !self.is_member(pid)? {
            return Ok(());
        }
        let sent = match &pidfd {
            Some(fd) => pidfd_send_signal(fd, Signal::KILL).map_err(io::Error::from),
            None => nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(raw.as_raw_nonzero().get()),
                nix::sys::signal::SIGKILL,
            )
            .map_err(io::Error::from),
        };
        match sent {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(nix::libc::ESRCH) => Ok(()),
            Err(source) => Err(IsolationError::Io { op: "SIGKILL", path: proc_path(pid), source }),
        }
    }

    /// Whether `/proc/<pid>/cgroup` puts `pid` in (or below) one of this worker's cgroups.
    fn is_member(&self, pid: u32) -> Result<bool, IsolationError> {
        let path = proc_path(pid).join("cgroup");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if matches!(e.raw_os_error(), Some(nix::libc::ENOENT | nix::libc::ESRCH)) => return Ok(false),
            Err(e) => return Err(IsolationError::Io { op: "read", path, source: e }),
        };
        Ok(self
            .dirs
            .iter()
            .any(|d| procfs::cgroup_path(&text, d.hierarchy).is_some_and(|p| procfs::is_within(p, &d.cgroup))))
    }

    /// The common case after a worker exited and left nothing behind: one `rmdir` per
    /// directory, which the kernel refuses (`EBUSY`) while a process or a child cgroup is in
    /// it, so an empty cgroup goes without listing anything (the listings cost a restart more
    /// than the rest of the removal). False if any directory is still there.
    fn remove_if_empty(&self) -> bool {
        let mut all_gone = true;
        for dir in &self.dirs {
            match std::fs::remove_dir(&dir.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(_) => all_gone = false,
            }
        }
        all_gone
    }

    /// rmdir every directory, deepest first, retrying while the last members finish exiting.
    fn remove_dirs(&self) -> Result<(), IsolationError> {
        for dir in &self.dirs {
            let mut tree = Vec::new();
            collect_dirs(&dir.path, &mut tree)?;
            // Children come after their parent in the walk: remove in reverse.
            for path in tree.iter().rev() {
                rmdir_retrying(path)?;
            }
        }
        Ok(())
    }
}

/// The ids of [`sweep_orphans`]: what was removed and what could not be.
#[derive(Debug, Default)]
pub(crate) struct SweepOutcome {
    pub removed: Vec<String>,
    pub failed: Vec<(String, IsolationError)>,
}

/// Kills and removes every worker cgroup under the workers' parent whose id is not in `keep`
/// (leftovers of workers that are gone, or of a crash during a launch). Names that are not
/// valid worker ids are not ours and are left alone.
pub(crate) fn sweep_orphans(mechanism: &Mechanism, keep: &BTreeSet<String>) -> Result<SweepOutcome, IsolationError> {
    let mut outcome = SweepOutcome::default();
    for id in super::worker_ids(mechanism)? {
        if keep.contains(&id) {
            continue;
        }
        if check_id(&id).is_err() {
            warn!(name = %id, "isolation: a cgroup under the workers' parent is not named like a worker; leaving it");
            continue;
        }
        // adopt() needs the primary dir; a crash mid-create may have left only others.
        let parents = mechanism.parents();
        let dirs = parents.into_iter().map(|p| p.child(&id)).filter(|d| d.path.is_dir()).collect();
        let cgroup = WorkerCgroup {
            #[cfg(test)]
            worker_id: id.clone(),
            dirs,
            address_space: None,
            former_parent: false,
        };
        match cgroup.remove() {
            Ok(_) => outcome.removed.push(id),
            Err(e) => outcome.failed.push((id, e)),
        }
    }
    Ok(outcome)
}

fn check_id(worker_id: &str) -> Result<(), IsolationError> {
    crate::ident::validate("worker id", worker_id)
        .map_err(|source| IsolationError::InvalidId { worker_id: worker_id.to_owned(), source })
}

fn proc_path(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}"))
}

/// Creates `path`; an existing one is removed first if it is empty (a crash between create
/// and launch), refused if it has processes.
fn make_fresh_dir(path: &Path) -> Result<(), IsolationError> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let mut pids = BTreeSet::new();
            collect_pids(path, &mut pids)?;
            if !pids.is_empty() {
                return Err(IsolationError::AlreadyPopulated {
                    path: path.to_owned(),
                    pids: pids.into_iter().collect(),
                });
            }
            let mut tree = Vec::new();
            collect_dirs(path, &mut tree)?;
            for dir in tree.iter().rev() {
                rmdir_retrying(dir)?;
            }
            std::fs::create_dir(path).map_err(io_error("create the cgroup", path))
        }
        Err(e) => Err(IsolationError::Io { op: "create the cgroup", path: path.to_owned(), source: e }),
    }
}

/// Adds the pids of `cgroup.procs` of `dir` and every cgroup below it. A directory that is
/// gone adds nothing (it was removed, or the worker's own sub-cgroup went away).
fn collect_pids(dir: &Path, pids: &mut BTreeSet<u32>) -> Result<(), IsolationError> {
    let mut tree = Vec::new();
    collect_dirs(dir, &mut tree)?;
    for d in tree {
        let path = d.join("cgroup.procs");
        match std::fs::read_to_string(&path) {
            Ok(text) => pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(IsolationError::Io { op: "read", path, source: e }),
        }
    }
    Ok(())
}

/// `dir` and every directory below it, parents before children. Nothing if `dir` is gone.
fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), IsolationError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(IsolationError::Io { op: "list", path: dir.to_owned(), source: e }),
    };
    out.push(dir.to_owned());
    for entry in entries {
        let entry = entry.map_err(io_error("list", dir))?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect_dirs(&entry.path(), out)?;
        }
    }
    Ok(())
}

fn rmdir_retrying(path: &Path) -> Result<(), IsolationError> {
    let mut rounds = 0;
    loop {
        match std::fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) && rounds < RMDIR_ROUNDS => {
                rounds += 1;
                std::thread::sleep(RMDIR_PAUSE);
            }
            Err(e) => return Err(IsolationError::Io { op: "remove the cgroup", path: path.to_owned(), source: e }),
        }
    }
}
