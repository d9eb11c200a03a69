//! Worker isolation (SPEC §7): a per-worker cgroup with `memory_mb`, `cpu_percent` and a pids
//! limit, killed as a whole on stop; rlimits where no cgroup can be made.
//!
//! [`detect`] runs once at agent start and picks the [`Mechanism`] (reported as "cgroup v2",
//! "cgroup v1" or "rlimits"). [`WorkerCgroup`] is one worker's cgroup: created with its limits
//! before the spawn, entered by the worker's process before its first instruction (see
//! "How a worker enters its cgroup"), listed, killed and removed; found again by worker id
//! after an agent restart ([`WorkerCgroup::adopt`]); leftovers are removed by [`sweep_orphans`].
//! `handover.rs` finds a worker's cgroups from its `/proc/<pid>/cgroup` and renames the
//! workers' parent, for `gale state reset-id` (which runs without an agent).
//!
//! Layout: every worker cgroup is `<workers' parent>/<worker id>`. The workers' parent is named
//! by the caller (`detect("gale-<id>")`) and holds nothing else, so its children are exactly the
//! workers' cgroups and a listing of it is the ground truth after a crash.
//!
//! Where the workers' parent goes:
//! - **cgroup v1** (no "no internal processes" rule): `<own cgroup>/<name>` in the memory, cpu
//!   and (when mounted) pids hierarchies, each found from `/proc/self/cgroup` and
//!   `/proc/self/mountinfo`.
//! - **cgroup v2**: controllers can only be enabled in `cgroup.subtree_control` of a cgroup
//!   without processes of its own (the kernel's "no internal processes" rule; the root is
//!   exempt). The agent's own cgroup is never made an inner node, because whatever starts the
//!   agent (systemd, a container runtime, a shell) puts the *next* agent into that same cgroup,
//!   and that write fails with `EBUSY` once it has controllers enabled. Where the parent goes
//!   ([`v2_base`]):
//!   - **Under systemd** (the agent's cgroup is a unit's, `….service` or `….scope`): at the
//!     cgroup root, `/gale-<id>`, as Nomad 1.7+ puts `nomad.slice` there. Not inside the
//!     unit: systemd < 254 (Debian 12 has 252; no `DelegateSubgroup=`) starts the next agent
//!     in the unit's own cgroup, which would then be an inner node (`EBUSY` on `systemctl
//!     restart`). Not beside the unit in `system.slice`: that subtree is systemd's slice, whose
//!     controllers it recomputes from its own units. Not transient scopes over D-Bus (kubelet,
//!     containerd's systemd driver): a scope is created around a process that already runs,
//!     so a worker could not be born in it, and it needs a D-Bus client. At the root, the
//!     "no internal processes" rule does not apply, systemd never removes or migrates a cgroup
//!     it did not create, and a `systemctl stop|restart gale` cannot touch a worker, because
//!     none is in the unit's cgroup. `docs/workers.md` shows the tree.
//!   - **A delegated subgroup** (systemd ≥ 254 with `Delegate=yes` and
//!     `DelegateSubgroup=agent`), a shell's or a container's cgroup: a **sibling** of the
//!     agent's cgroup, `<parent of own cgroup>/gale-<id>` (with `DelegateSubgroup=agent`,
//!     workers land in `gale.service/gale-<id>/*`, inside the unit's delegated subtree).
//!   - The agent in the root of its cgroup namespace (a container's init): there is no parent
//!     to use, so if the root is not the real root and holds only the agent, the agent moves
//!     itself into `<root>/<name>-agent` first (a container restart gets a fresh cgroup, so
//!     the `EBUSY` problem does not arise).
//! - **rlimits**: `RLIMIT_AS` from `memory_mb`, set between clone (or fork) and `exec`. It bounds
//!   *virtual* memory (a JVM reserves far more than it touches), so it is a rough fallback.
//!   `cpu_percent` cannot be expressed (`RLIMIT_CPU` is total seconds, not a rate) and the
//!   pids limit is not applied (`RLIMIT_NPROC` counts every process of the *user*, not of the
//!   worker); [`Mechanism::unenforceable`] names what is left out.
//!
//! How a worker enters its cgroup ([`WorkerCgroup::birth`]), so that not one instruction of the
//! worker runs outside it:
//! - **born in it** on cgroup v2 when the kernel has `clone3` with `CLONE_INTO_CGROUP`
//!   (Linux ≥ 5.7): the child is created inside the worker's cgroup (`crate::sys::clone3`), so
//!   it never runs in the agent's cgroup and no migration is paid: no move of its charges, no
//!   wait on the cgroup locks (on v1, a move waits an RCU grace period: `docs/benchmarks.md`).
//!   Whether the kernel can is probed once per process ([`clone_into_cgroup`]) and logged at
//!   start ("isolation: workers are born in their cgroup (clone3 CLONE_INTO_CGROUP)").
//! - **joined between clone and `exec`** otherwise (cgroup v1, or v2 without
//!   `CLONE_INTO_CGROUP`): the child writes `0` to the
//!   `cgroup.procs` files opened by the parent before it execs ([`WorkerCgroup::join`]); with
//!   rlimits it sets `RLIMIT_AS` there instead. The child is a clone3 child sharing the agent's
//!   memory until its exec, as a born one is (`crate::sys::clone3`), wherever the same probe
//!   finds clone3; a kernel or seccomp filter without it (`ENOSYS`, `E2BIG`, `EINVAL`) gets
//!   std's fork, which copies the agent's page tables, and the reason is logged at start.
//!
//! Invariants:
//! - A process is signalled only when it is a member of the worker's cgroup (checked through a
//!   pidfd opened before the check, so a recycled pid cannot be hit; STYLE habit 7).
//! - A worker cgroup is created empty or not at all: a failed limit write removes the directory.
//! - Only `src/sys/` has `unsafe`: clone3, the pre-exec join and `setrlimit`.
//!
//! Every call here is blocking and bounded (kill and remove retry for about two seconds at
//! most): call them from `spawn_blocking` in async code.

mod handover;
mod procfs;
mod usage;
mod worker;

#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use tracing::info;

pub(crate) use handover::{rename_parents, undo_renames, worker_parents};
pub(crate) use procfs::Hierarchy;
pub(crate) use usage::{Sample, sample};
pub(crate) use worker::{Birth, Join, WorkerCgroup, sweep_orphans};

/// The name of the workers' parent cgroup of the agent with supervisor id `supervisor_id`:
/// the start-up sweep of cgroups no record names must never reach another agent's workers on
/// the same host.
pub(crate) fn parent_name(supervisor_id: &str) -> String {
    format!("gale-{supervisor_id}")
}

/// The limits of one worker (SPEC §3.2 `memory_mb`, `cpu_percent`; a pids limit per §7).
/// `None` leaves that resource unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Limits {
    pub memory_mb: Option<u64>,
    /// Percent of one CPU: 100 is one full core, 250 two and a half.
    pub cpu_percent: Option<u32>,
    pub pids_max: Option<u64>,
}

/// One cgroup directory, and the path `/proc/<pid>/cgroup` shows for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CgroupDir {
    pub hierarchy: Hierarchy,
    /// The directory in the mounted cgroup filesystem.
    pub path: PathBuf,
    /// The cgroup path as `/proc/<pid>/cgroup` shows it for `hierarchy`.
    pub cgroup: String,
}

impl CgroupDir {
    fn child(&self, name: &str) -> CgroupDir {
        CgroupDir {
            hierarchy: self.hierarchy,
            path: self.path.join(name),
            cgroup: procfs::child_path(&self.cgroup, name),
        }
    }
}

/// How worker limits are enforced on this host; chosen once by [`detect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Mechanism {
    /// `root` is the workers' parent in the unified hierarchy, with memory and cpu (and pids
    /// when the kernel has it) enabled in its `cgroup.subtree_control`.
    CgroupV2 {
        root: CgroupDir,
    },
    /// The workers' parent in each v1 hierarchy used; pids only when that controller is mounted.
    CgroupV1 {
        memory: CgroupDir,
        cpu: CgroupDir,
        pids: Option<CgroupDir>,
    },
    Rlimits,
}

impl Mechanism {
    /// "cgroup v2", "cgroup v1" or "rlimits": what `gale status` reports.
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            Mechanism::CgroupV2 { .. } => "cgroup v2",
            Mechanism::CgroupV1 { .. } => "cgroup v1",
            Mechanism::Rlimits => "rlimits",
        }
    }

    /// The workers' parent directories (empty for rlimits). Tests only (their clean-up).
    #[cfg(test)]
    pub(crate) fn parent_dirs(&self) -> Vec<&Path> {
        self.parents().into_iter().map(|d| d.path.as_path()).collect()
    }

    /// The names of the limits in `limits` this mechanism cannot enforce (SPEC §3.2: such a
    /// worker is rejected with a reported reason, or the operator accepts the gap).
    pub(crate) fn unenforceable(&self, limits: &Limits) -> Vec<&'static str> {
        let mut missing = Vec::new();
        match self {
            Mechanism::CgroupV2 { root } => {
                // Enabled in the parent's subtree_control at detection when the kernel has it.
                let subtree = std::fs::read_to_string(root.path.join("cgroup.subtree_control")).unwrap_or_default();
                if limits.pids_max.is_some() && !subtree.split_whitespace().any(|c| c == "pids") {
                    missing.push("pids_max");
                }
            }
            Mechanism::CgroupV1 { pids, .. } => {
                if limits.pids_max.is_some() && pids.is_none() {
                    missing.push("pids_max");
                }
            }
            Mechanism::Rlimits => {
                if limits.cpu_percent.is_some() {
                    missing.push("cpu_percent");
                }
                if limits.pids_max.is_some() {
                    missing.push("pids_max");
                }
            }
        }
        missing
    }

    /// Parent dirs, primary (the one listing members) first.
    fn parents(&self) -> Vec<&CgroupDir> {
        match self {
            Mechanism::CgroupV2 { root } => vec![root],
            Mechanism::CgroupV1 { memory, cpu, pids } => {
                [Some(memory), Some(cpu), pids.as_ref()].into_iter().flatten().collect()
            }
            Mechanism::Rlimits => Vec::new(),
        }
    }
}

impl std::fmt::Display for Mechanism {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an isolation step failed. Every variant names the path it was about.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IsolationError {
    #[error("cannot {op} {}", .path.display())]
    Io { op: &'static str, path: PathBuf, source: io::Error },
    #[error("cannot write `{value}` to {}", .path.display())]
    Write { path: PathBuf, value: String, source: io::Error },
    #[error("{hierarchy} is not mounted or does not reach this process's cgroup")]
    NotMounted { hierarchy: Hierarchy },
    #[error("controllers {missing:?} are not available in {}: enable them in the parent's cgroup.subtree_control", .path.display())]
    ControllersUnavailable { path: PathBuf, missing: Vec<&'static str> },
    #[error(
        "{} has processes other than the agent, so controllers cannot be enabled in it (the cgroup v2 \"no internal processes\" rule)", .path.display()
    )]
    InternalProcesses { path: PathBuf },
    #[error("refusing to use worker id `{worker_id}` as a cgroup name")]
    InvalidId { worker_id: String, source: crate::ident::IdentError },
    #[error("worker {worker_id}: {limit} = 0 would stop the worker from running at all")]
    ZeroLimit { worker_id: String, limit: &'static str },
    #[error("{} already exists and has processes {pids:?}: adopt it or sweep it", .path.display())]
    AlreadyPopulated { path: PathBuf, pids: Vec<u32> },
    #[error("cannot rename the cgroup {} to {}", .from.display(), .to.display())]
    Rename { from: PathBuf, to: PathBuf, source: io::Error },
    #[error("{} still has processes {pids:?} after repeated SIGKILL", .path.display())]
    StillPopulated { path: PathBuf, pids: Vec<u32> },
}

fn io_error(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> IsolationError {
    let path = path.to_owned();
    move |source| IsolationError::Io { op, path, source }
}

/// Picks the mechanism for this host and prepares the workers' parent cgroup(s) named
/// `parent_name` (see the module docs for where they go): cgroup v2 if memory and cpu can be
/// delegated to it, else cgroup v1 if the memory and cpu controllers are mounted as v1 and
/// the parent can be created in both, else rlimits. Why each better mechanism was passed over
/// is logged at info.
pub(crate) fn detect(parent_name: &str) -> Mechanism {
    let (mounts, own) =
        match (std::fs::read_to_string("/proc/self/mountinfo"), std::fs::read_to_string("/proc/self/cgroup")) {
            (Ok(m), Ok(c)) => (procfs::parse_mountinfo(&m), c),
            (Err(e), _) | (_, Err(e)) => {
                info!(error = %e, "isolation: cannot read /proc/self/mountinfo or /proc/self/cgroup: using rlimits");
                return Mechanism::Rlimits;
            }
        };
    match detect_v2(parent_name, &mounts, &own) {
        Ok(m) => return m,
        Err(e) => info!(reason = %e, "isolation: cgroup v2 not usable"),
    }
    match detect_v1(parent_name, &mounts, &own) {
        Ok(m) => m,
        Err(e) => {
            info!(reason = %e, "isolation: cgroup v1 not usable: using rlimits");
            Mechanism::Rlimits
        }
    }
}

const V2_REQUIRED: [&str; 2] = ["memory", "cpu"];
const V2_WANTED: [&str; 3] = ["memory", "cpu", "pids"];

fn detect_v2(name: &str, mounts: &[procfs::Mount], own: &str) -> Result<Mechanism, IsolationError> {
    let not_mounted = || IsolationError::NotMounted { hierarchy: Hierarchy::Unified };
    let own_cgroup = procfs::cgroup_path(own, Hierarchy::Unified).ok_or_else(not_mounted)?;
    let base_cgroup = v2_base(own_cgroup);
    let base_path = procfs::cgroup_dir(mounts, Hierarchy::Unified, &base_cgroup).ok_or_else(not_mounted)?;
    let base = CgroupDir { hierarchy: Hierarchy::Unified, path: base_path, cgroup: base_cgroup };
    let available = read_controllers(&base.path.join("cgroup.controllers"))?;
    let missing: Vec<_> = V2_REQUIRED.into_iter().filter(|c| !available.iter().any(|a| a == c)).collect();
    if !missing.is_empty() {
        return Err(IsolationError::ControllersUnavailable { path: base.path.clone(), missing });
    }
    let wanted: Vec<&str> = V2_WANTED.into_iter().filter(|c| available.iter().any(|a| a == c)).collect();
    match enable_controllers(&base.path, &wanted) {
        Ok(()) => {}
        // Only the namespace root case can get here with our own processes inside.
        Err(IsolationError::Write { source, .. })
            if source.raw_os_error() == Some(nix::libc::EBUSY) && base.cgroup == own_cgroup =>
        {
            move_self_into(&base.child(&format!("{name}-agent")))?;
            enable_controllers(&base.path, &wanted)?;
        }
        Err(e) => return Err(e),
    }
    remove_former_parent(&base, own_cgroup, name, mounts);
    let root = base.child(name);
    if root.cgroup == own_cgroup {
        return Err(IsolationError::InternalProcesses { path: root.path });
    }
    make_dir(&root.path)?;
    enable_controllers(&root.path, &wanted)?;
    Ok(Mechanism::CgroupV2 { root })
}

/// Where the workers' parent is created in the unified hierarchy, given the agent's own cgroup
/// (module docs): the cgroup root when the agent runs in a systemd unit's own cgroup (a
/// `.service` or `.scope`, whose subtree and slice systemd manages), else a sibling of the
/// agent's cgroup (a `DelegateSubgroup=` of the agent's unit, or a shell's or container's
/// cgroup), or the namespace root itself when the agent is there.
fn v2_base(own_cgroup: &str) -> String {
    let own = Path::new(own_cgroup);
    let in_unit = own.file_name().and_then(|n| n.to_str()).is_some_and(is_systemd_unit_cgroup);
    match own.parent() {
        Some(_) if in_unit => "/".to_owned(),
        Some(parent) => parent.to_str().expect("a parent of a str path is a str").to_owned(),
        None => own_cgroup.to_owned(),
    }
}

/// Removes, when it is empty, the workers' parent an earlier build made beside the agent's
/// unit (before it moved to the root, `v2_base`). A parent that still holds adopted workers
/// stays; the removal of its last worker's cgroup takes it (`WorkerCgroup::under_former_parent`).
fn remove_former_parent(base: &CgroupDir, own_cgroup: &str, name: &str, mounts: &[procfs::Mount]) {
    let Some(sibling_base) = Path::new(own_cgroup).parent().and_then(Path::to_str) else { return };
    if sibling_base == base.cgroup {
        return;
    }
    let Some(dir) = procfs::cgroup_dir(mounts, Hierarchy::Unified, &procfs::child_path(sibling_base, name)) else {
        return;
    };
    if dir.is_dir() && std::fs::remove_dir(&dir).is_ok() {
        info!(cgroup = %dir.display(), "isolation: removed the empty workers' parent of an earlier layout");
    }
}

/// Whether a cgroup directory name is one systemd gives a unit that holds processes.
fn is_systemd_unit_cgroup(name: &str) -> bool {
    name.ends_with(".service") || name.ends_with(".scope")
}

fn detect_v1(name: &str, mounts: &[procfs::Mount], own: &str) -> Result<Mechanism, IsolationError> {
    let parent = |controller: &'static str| -> Result<CgroupDir, IsolationError> {
        let hierarchy = Hierarchy::V1(controller);
        let cgroup = procfs::cgroup_path(own, hierarchy).ok_or(IsolationError::NotMounted { hierarchy })?;
        let path = procfs::cgroup_dir(mounts, hierarchy, cgroup).ok_or(IsolationError::NotMounted { hierarchy })?;
        let dir = CgroupDir { hierarchy, path, cgroup: cgroup.to_owned() }.child(name);
        make_dir(&dir.path)?;
        // Creating it (or finding it) is not proof we may create children in it.
        nix::unistd::access(&dir.path, nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK)
            .map_err(|e| IsolationError::Io { op: "create cgroups in", path: dir.path.clone(), source: e.into() })?;
        Ok(dir)
    };
    let memory = parent("memory")?;
    let cpu = parent("cpu").inspect_err(|_| {
        // Leave nothing behind for a mechanism that is not used (fails harmlessly if a worker
        // cgroup of an earlier agent is still inside).
        let _ = std::fs::remove_dir(&memory.path);
    })?;
    let pids = match parent("pids") {
        Ok(dir) => Some(dir),
        Err(e) => {
            info!(reason = %e, "isolation: cgroup v1 without pids: pids limits are not enforced");
            None
        }
    };
    Ok(Mechanism::CgroupV1 { memory, cpu, pids })
}

/// mkdir that accepts an existing directory.
fn make_dir(path: &Path) -> Result<(), IsolationError> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(IsolationError::Io { op: "create the cgroup", path: path.to_owned(), source: e }),
    }
}

fn read_controllers(path: &Path) -> Result<Vec<String>, IsolationError> {
    let text = std::fs::read_to_string(path).map_err(io_error("read", path))?;
    Ok(text.split_whitespace().map(str::to_owned).collect())
}

/// Enables `controllers` for the children of `dir`, writing only the missing ones.
fn enable_controllers(dir: &Path, controllers: &[&str]) -> Result<(), IsolationError> {
    let file = dir.join("cgroup.subtree_control");
    let enabled = read_controllers(&file)?;
    let value: Vec<String> =
        controllers.iter().filter(|c| !enabled.iter().any(|e| e == *c)).map(|c| format!("+{c}")).collect();
    if value.is_empty() {
        return Ok(());
    }
    write_value(&file, &value.join(" "))
}

/// Moves the agent (all its threads) into `leaf`, when the agent is alone where it is.
fn move_self_into(leaf: &CgroupDir) -> Result<(), IsolationError> {
    let here = leaf.path.parent().expect("a child dir has a parent");
    let procs_file = here.join("cgroup.procs");
    let procs = std::fs::read_to_string(&procs_file).map_err(io_error("read", &procs_file))?;
    let me = std::process::id().to_string();
    if procs.lines().any(|pid| pid != me) {
        return Err(IsolationError::InternalProcesses { path: here.to_owned() });
    }
    make_dir(&leaf.path)?;
    info!(cgroup = %leaf.cgroup, "isolation: moving the agent into a leaf cgroup so workers get delegated controllers");
    write_value(&leaf.path.join("cgroup.procs"), &me)
}

/// One `write(2)` of `value`: cgroup files take a value per write.
fn write_value(path: &Path, value: &str) -> Result<(), IsolationError> {
    use std::io::Write;
    let err = |source| IsolationError::Write { path: path.to_owned(), value: value.to_owned(), source };
    let mut file = std::fs::OpenOptions::new().write(true).open(path).map_err(err)?;
    match file.write(value.as_bytes()) {
        Ok(n) if n == value.len() => Ok(()),
        Ok(_) => Err(err(io::Error::from(io::ErrorKind::WriteZero))),
        Err(e) => Err(err(e)),
    }
}

/// Reads the ids of the worker cgroups under every parent of `mechanism`.
fn worker_ids(mechanism: &Mechanism) -> Result<BTreeSet<String>, IsolationError> {
    let mut ids = BTreeSet::new();
    for parent in mechanism.parents() {
        for entry in std::fs::read_dir(&parent.path).map_err(io_error("list", &parent.path))? {
            let entry = entry.map_err(io_error("list", &parent.path))?;
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if let Some(name) = entry.file_name().to_str() {
                ids.insert(name.to_owned());
            }
        }
    }
    Ok(ids)
}

/// Whether this kernel starts a process inside a chosen cgroup v2 (`clone3` with
/// `CLONE_INTO_CGROUP`, Linux ≥ 5.7); else why not. Probed once per process (the probe starts
/// no process), so every worker of an agent enters its cgroup the same way. It also decides
/// whether workers are started by clone3 at all (`crate::worker::launch::route`): the route
/// needs `CLONE_CLEAR_SIGHAND` (5.5), and of the kernels with clone3 only 5.5 and 5.6 have that
/// without `CLONE_INTO_CGROUP`; they get std's fork.
pub(crate) fn clone_into_cgroup() -> Result<(), &'static str> {
    static PROBED: OnceLock<Result<(), String>> = OnceLock::new();
    let probed = PROBED.get_or_init(|| {
        crate::sys::clone3::probe_clone_into_cgroup().map_err(|e| match e.raw_os_error() {
            Some(nix::libc::ENOSYS) => format!("clone3 is not available (Linux < 5.3, or a seccomp filter): {e}"),
            Some(nix::libc::E2BIG | nix::libc::EINVAL) => {
                format!("clone3 does not know CLONE_INTO_CGROUP (Linux < 5.7): {e}")
            }
            _ => format!("clone3 with CLONE_INTO_CGROUP failed: {e}"),
        })
    });
    probed.as_ref().map(|_| ()).map_err(String::as_str)
}

/// Logs, once at start, how workers will be started and enter their cgroup under
/// `mechanism` (module docs).
pub(crate) fn log_birth(mechanism: &Mechanism) {
    let reason = match (mechanism, clone_into_cgroup()) {
        (Mechanism::CgroupV2 { .. }, Ok(())) => {
            info!("isolation: workers are born in their cgroup (clone3 CLONE_INTO_CGROUP)");
            return;
        }
        (Mechanism::CgroupV1 { .. }, Ok(())) => {
            info!(
                reason = "CLONE_INTO_CGROUP needs cgroup v2",
                "isolation: workers join their cgroup between clone3 and exec"
            );
            return;
        }
        (Mechanism::Rlimits, Ok(())) => {
            info!("isolation: workers set their rlimits between clone3 and exec");
            return;
        }
        (_, Err(reason)) => reason,
    };
    info!(reason, "isolation: workers are forked (no clone3) and enter their cgroup between fork and exec");
}
