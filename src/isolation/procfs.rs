//! Where a cgroup is: parsing `/proc/<pid>/cgroup` and `/proc/self/mountinfo` (pure functions).
//!
//! A process's cgroup path per hierarchy comes from `/proc/<pid>/cgroup`
//! (`<id>:<controllers>:<path>`; `0::<path>` is the v2 unified hierarchy). That path is relative
//! to the root of the hierarchy as this process's cgroup namespace sees it. Where that root is
//! mounted comes from `/proc/self/mountinfo`: the mount point (field 5) shows the mount's root
//! (field 4, a cgroup path in the same frame), so the directory of cgroup `P` is
//! `<mount point>/<P without the mount root>`. Nothing here assumes `/sys/fs/cgroup/<name>`:
//! hosts mount v1 hierarchies under other names (`cpu,cpuacct`), and containers bind-mount
//! sub-trees.

use std::path::{Path, PathBuf};

/// A cgroup hierarchy as `/proc/<pid>/cgroup` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hierarchy {
    /// The v2 unified hierarchy (`0::<path>`, filesystem type `cgroup2`).
    Unified,
    /// The v1 hierarchy that holds this controller (`<n>:memory:<path>`, type `cgroup`).
    V1(&'static str),
}

impl std::fmt::Display for Hierarchy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hierarchy::Unified => f.write_str("cgroup2"),
            Hierarchy::V1(controller) => write!(f, "cgroup v1 {controller}"),
        }
    }
}

/// One line of `/proc/self/mountinfo`, the fields this module needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mount {
    /// The cgroup path that is the root of this mount (field 4).
    pub root: String,
    pub mount_point: PathBuf,
    pub fstype: String,
    /// Comma-separated super options after the separator: v1 mounts list their controllers.
    pub super_options: Vec<String>,
}

/// Parses `/proc/self/mountinfo`. Malformed lines are skipped: a line this parser cannot read
/// can only make a mechanism look unavailable, never point at a wrong directory.
pub(crate) fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines().filter_map(parse_mount_line).collect()
}

fn parse_mount_line(line: &str) -> Option<Mount> {
    // id parent major:minor root mount_point options [optional fields...] - fstype source super
    let (before, after) = line.split_once(" - ")?;
    let mut fields = before.split(' ');
    let root = unescape(fields.nth(3)?);
    let mount_point = PathBuf::from(unescape(fields.next()?));
    let mut after = after.split(' ');
    let fstype = after.next()?.to_owned();
    let _source = after.next()?;
    let super_options = after.next().unwrap_or("").split(',').map(str::to_owned).collect();
    Some(Mount { root, mount_point, fstype, super_options })
}

/// mountinfo writes space, tab, newline and backslash as `\ooo` octal escapes.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal =
            bytes.get(i + 1..i + 4).filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The path of `hierarchy` in a `/proc/<pid>/cgroup` text.
pub(crate) fn cgroup_path(proc_cgroup: &str, hierarchy: Hierarchy) -> Option<&str> {
    proc_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = match hierarchy {
            Hierarchy::Unified => id == "0" && controllers.is_empty(),
            Hierarchy::V1(name) => controllers.split(',').any(|c| c == name),
        };
        matches.then_some(path)
    })
}

/// The directory of cgroup `path` of `hierarchy`, through the first mount of that hierarchy
/// whose root contains it. `None` when the hierarchy is not mounted or no mount reaches `path`.
pub(crate) fn cgroup_dir(mounts: &[Mount], hierarchy: Hierarchy, path: &str) -> Option<PathBuf> {
    mounts.iter().find_map(|m| {
        let right_type = match hierarchy {
            Hierarchy::Unified => m.fstype == "cgroup2",
            Hierarchy::V1(name) => m.fstype == "cgroup" && m.super_options.iter().any(|o| o == name),
        };
        if !right_type {
            return None;
        }
        // Component-wise: mount root `/a` does not contain `/ab`.
        let relative = Path::new(path).strip_prefix(&m.root).ok()?;
        Some(if relative.as_os_str().is_empty() { m.mount_point.clone() } else { m.mount_point.join(relative) })
    })
}

/// `parent` + `/` + `name` as a cgroup path (`/` + `name` under the root).
pub(crate) fn child_path(parent: &str, name: &str) -> String {
    if parent.ends_with('/') { format!("{parent}{name}") } else { format!("{parent}/{name}") }
}

/// Whether `path` (a line's path from `/proc/<pid>/cgroup`) is `cgroup` or inside it.
pub(crate) fn is_within(path: &str, cgroup: &str) -> bool {
    cgroup == "/" || path == cgroup || path.strip_prefix(cgroup).is_some_and(|rest| rest.starts_with('/'))
}

/// The value of `key` in a flat-keyed cgroup file (`memory.events`, `memory.oom_control`,
/// `cpu.stat`, `pids.events`): lines of `<key> <number>`.
pub(crate) fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        if k == key { v.trim().parse().ok() } else { None }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // A hybrid host (this project's CI): v1 controllers plus an empty v2 mount, memory in a
    // sub-cgroup, `cpu` and `cpuacct` mounted separately, and a combined `cpu,cpuacct` elsewhere.
    const MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 /kube /sys/fs/cgroup/pids\\040here rw,relatime shared:5 - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
broken line
";
    const PROC_CGROUP: &str = "\
9:name=systemd:/
8:pids:/kube/pod1
4:memory:/process_api/43e6
3:cpuset:/
1:cpu:/
0::/
";

    #[test]
    fn finds_each_hierarchy_path_by_controller_name_not_prefix() {
        assert_eq!(cgroup_path(PROC_CGROUP, Hierarchy::V1("memory")), Some("/process_api/43e6"));
        assert_eq!(cgroup_path(PROC_CGROUP, Hierarchy::V1("cpu")), Some("/"));
        assert_eq!(cgroup_path(PROC_CGROUP, Hierarchy::Unified), Some("/"));
        assert_eq!(cgroup_path(PROC_CGROUP, Hierarchy::V1("blkio")), None);
        assert_eq!(cgroup_path("2:cpu,cpuacct:/a/b\n", Hierarchy::V1("cpuacct")), Some("/a/b"));
        assert_eq!(cgroup_path("2:cpu,cpuacct:/a/b\n", Hierarchy::Unified), None);
    }

    #[test]
    fn resolves_directories_through_mount_points_and_roots() {
        let mounts = parse_mountinfo(MOUNTINFO);
        assert_eq!(mounts.len(), 7, "the broken line is skipped");
        assert_eq!(
            cgroup_dir(&mounts, Hierarchy::V1("memory"), "/process_api/43e6"),
            Some(PathBuf::from("/sys/fs/cgroup/memory/process_api/43e6"))
        );
        // `cpu` must not match the `cpuacct` or `cpuset` mounts.
        assert_eq!(cgroup_dir(&mounts, Hierarchy::V1("cpu"), "/"), Some(PathBuf::from("/sys/fs/cgroup/cpu")));
        // A mount whose root is a sub-cgroup, and an escaped space in the mount point.
        assert_eq!(
            cgroup_dir(&mounts, Hierarchy::V1("pids"), "/kube/pod1"),
            Some(PathBuf::from("/sys/fs/cgroup/pids here/pod1"))
        );
        assert_eq!(cgroup_dir(&mounts, Hierarchy::V1("pids"), "/kubelet"), None, "not under the mount root");
        assert_eq!(cgroup_dir(&mounts, Hierarchy::Unified, "/"), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(cgroup_dir(&mounts, Hierarchy::V1("blkio"), "/"), None);
    }

    #[test]
    fn cgroup_paths_nest_by_component() {
        assert_eq!(child_path("/", "gale"), "/gale");
        assert_eq!(child_path("/a/b", "gale"), "/a/b/gale");
        assert!(is_within("/a/gale/w1", "/a/gale/w1"));
        assert!(is_within("/a/gale/w1/sub", "/a/gale/w1"));
        assert!(!is_within("/a/gale/w10", "/a/gale/w1"));
        assert!(is_within("/gale", "/"));
    }

    #[test]
    fn reads_flat_keyed_files() {
        let oom_control = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(keyed_value(oom_control, "oom_kill"), Some(2));
        assert_eq!(keyed_value("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n", "oom"), Some(1));
        assert_eq!(keyed_value(oom_control, "oom_group_kill"), None);
    }
}
