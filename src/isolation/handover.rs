//! A running worker's cgroups found from the worker itself, and the workers' parent renamed:
//! what `gale state reset-id` needs to stop workers or hand them over to a new supervisor id.
//!
//! Why from the worker: the command runs beside no agent, in the operator's shell, whose own
//! cgroup says nothing about where the agent put its workers' parent (that depends on the
//! agent's cgroup; see the module docs of `isolation`). A proven worker's `/proc/<pid>/cgroup`
//! names it for every hierarchy it joined: `<...>/gale-<id>/<worker id>[/<its own children>]`,
//! and the mount table turns that into a directory.
//!
//! Why a rename: the next agent, under the new id, looks for its workers' cgroups under
//! `gale-<new id>` in the same place ([`super::detect`], [`super::WorkerCgroup::adopt`]).
//! Renaming `gale-<old id>` to `gale-<new id>` in each hierarchy moves every worker with its
//! limits at once, without touching a process. cgroup v1 allows a rename within the same
//! parent; cgroup v2 does not (`EPERM`), so on a v2 host a hand-over is refused with that
//! reason and nothing changed (stop the workers instead).

use std::path::{Path, PathBuf};

use super::procfs::{self, Hierarchy};
use super::{CgroupDir, IsolationError, WorkerCgroup};

/// The controllers whose v1 hierarchies the agent puts workers in (see `detect_v1`).
const V1_USED: [&str; 3] = ["memory", "cpu", "pids"];

/// The workers' parent cgroups of the running worker `pid` (proven ours by the caller): one
/// per hierarchy where its cgroup path holds `<parent>/<worker_id>` with `<parent>` one of
/// `parent_names`. Empty when it is in none (rlimits, or not in a worker cgroup at all).
pub(crate) fn worker_parents(
    pid: u32,
    worker_id: &str,
    parent_names: &[&str],
) -> Result<Vec<CgroupDir>, IsolationError> {
    let proc_cgroup = PathBuf::from(format!("/proc/{pid}/cgroup"));
    let text = std::fs::read_to_string(&proc_cgroup).map_err(super::io_error("read", &proc_cgroup))?;
    let mountinfo = Path::new("/proc/self/mountinfo");
    let mounts = std::fs::read_to_string(mountinfo).map_err(super::io_error("read", mountinfo))?;
    Ok(parents_in(&text, &procfs::parse_mountinfo(&mounts), worker_id, parent_names))
}

/// [`worker_parents`] on the texts of `/proc/<pid>/cgroup` and `/proc/self/mountinfo`.
fn parents_in(proc_cgroup: &str, mounts: &[procfs::Mount], worker_id: &str, names: &[&str]) -> Vec<CgroupDir> {
    let mut hierarchies = vec![Hierarchy::Unified];
    hierarchies.extend(V1_USED.into_iter().map(Hierarchy::V1));
    let mut found: Vec<CgroupDir> = Vec::new();
    for hierarchy in hierarchies {
        let Some(path) = procfs::cgroup_path(proc_cgroup, hierarchy) else { continue };
        let parts: Vec<&str> = path.split('/').collect();
        let Some(at) = parts.windows(2).position(|w| names.contains(&w[0]) && w[1] == worker_id) else { continue };
        let cgroup = parts[..=at].join("/");
        let Some(dir) = procfs::cgroup_dir(mounts, hierarchy, &cgroup) else { continue };
        // `cpu,cpuacct` co-mounted shows the same directory for two controllers: once is enough.
        if !found.iter().any(|f| f.path == dir) {
            found.push(CgroupDir { hierarchy, path: dir, cgroup });
        }
    }
    found
}

impl WorkerCgroup {
    /// The cgroup of `worker_id` under the parents [`worker_parents`] found (primary first,
    /// as there), to kill and remove it.
    pub(crate) fn under(parents: &[CgroupDir], worker_id: &str) -> WorkerCgroup {
        let dirs = parents.iter().map(|p| p.child(worker_id)).filter(|d| d.path.is_dir()).collect();
        WorkerCgroup::with_dirs(worker_id, dirs)
    }
}

/// Renames every parent in `parents` to its sibling `new_name` (one already so named is left
/// as it is: a reset that was interrupted finishes). An existing sibling is replaced only if
/// it is empty. All or nothing: on a failure the renames done so far are undone. Returns the
/// renames done, as (from, to).
pub(crate) fn rename_parents(parents: &[CgroupDir], new_name: &str) -> Result<Vec<(PathBuf, PathBuf)>, IsolationError> {
    let mut done: Vec<(PathBuf, PathBuf)> = Vec::new();
    for parent in parents {
        if parent.path.file_name().is_some_and(|n| n == new_name) {
            continue;
        }
        let to = parent.path.with_file_name(new_name);
        let renamed = remove_if_empty(&to).and_then(|()| {
            std::fs::rename(&parent.path, &to).map_err(|source| IsolationError::Rename {
                from: parent.path.clone(),
                to: to.clone(),
                source,
            })
        });
        if let Err(e) = renamed {
            undo_renames(&done);
            return Err(e);
        }
        done.push((parent.path.clone(), to));
    }
    Ok(done)
}

/// Puts back what [`rename_parents`] did (best effort: a failure here leaves a parent under
/// the new name, which a second `gale state reset-id` with the same id completes).
pub(crate) fn undo_renames(done: &[(PathBuf, PathBuf)]) {
    for (from, to) in done.iter().rev() {
        let _ = std::fs::rename(to, from);
    }
}

/// An empty leftover parent of the new name (an agent started once under it) is removed;
/// one with workers in it is not ours to merge with.
fn remove_if_empty(dir: &Path) -> Result<(), IsolationError> {
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(IsolationError::Io { op: "replace the existing cgroup", path: dir.to_owned(), source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn a_workers_parents_come_from_its_own_cgroup_lines() {
        let mounts = procfs::parse_mountinfo(MOUNTINFO);
        // v1 memory and cpu under the agent's cgroup; the worker made a child of its own in
        // memory; pids not joined; the unified hierarchy unused (hybrid host).
        let proc_cgroup = "\
9:name=systemd:/
8:pids:/
4:memory:/agent.slice/gale-old/w1/inner
1:cpu:/gale-old/w1
0::/
";
        let found = parents_in(proc_cgroup, &mounts, "w1", &["gale-old", "gale-new"]);
        let dirs: Vec<&Path> = found.iter().map(|d| d.path.as_path()).collect();
        assert_eq!(
            dirs,
            [Path::new("/sys/fs/cgroup/memory/agent.slice/gale-old"), Path::new("/sys/fs/cgroup/cpu/gale-old")]
        );
        assert_eq!(found[0].cgroup, "/agent.slice/gale-old");
        assert!(parents_in(proc_cgroup, &mounts, "w2", &["gale-old"]).is_empty(), "another worker id");
        assert!(parents_in(proc_cgroup, &mounts, "w1", &["gale-other"]).is_empty(), "another parent");
        let v2 = parents_in("0::/system.slice/gale-new/w1\n", &mounts, "w1", &["gale-old", "gale-new"]);
        assert_eq!(v2.len(), 1);
        assert_eq!(v2[0].path, Path::new("/sys/fs/cgroup/unified/system.slice/gale-new"));
    }

    /// On plain directories (the rename itself is the same system call on cgroupfs v1).
    #[test]
    fn renames_are_all_or_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir =
            |p: &str| CgroupDir { hierarchy: Hierarchy::V1("memory"), path: tmp.path().join(p), cgroup: p.into() };
        for d in ["a/gale-old/w1", "b/gale-old/w1", "b/gale-new/w9", "c/gale-new/w1"] {
            std::fs::create_dir_all(tmp.path().join(d)).unwrap();
        }
        // `b` already has a non-empty gale-new: nothing is renamed, `a` is put back.
        let err = rename_parents(&[dir("a/gale-old"), dir("b/gale-old")], "gale-new").unwrap_err();
        assert!(err.to_string().contains("b/gale-new"), "{err}");
        assert!(tmp.path().join("a/gale-old/w1").is_dir() && !tmp.path().join("a/gale-new").exists());
        // An empty one is replaced; one already renamed is left alone.
        std::fs::remove_dir(tmp.path().join("b/gale-new/w9")).unwrap();
        let done = rename_parents(&[dir("a/gale-old"), dir("b/gale-old"), dir("c/gale-new")], "gale-new").unwrap();
        assert_eq!(done.len(), 2);
        for d in ["a/gale-new/w1", "b/gale-new/w1", "c/gale-new/w1"] {
            assert!(tmp.path().join(d).is_dir(), "{d}");
        }
        undo_renames(&done);
        assert!(tmp.path().join("a/gale-old/w1").is_dir() && tmp.path().join("b/gale-old/w1").is_dir());
    }
}
