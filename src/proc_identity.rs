//! Proving which process a pid is: pid + process start time + boot id (STYLE habit 7).
//!
//! A pid alone means nothing after a reboot or once the pid is reused. The start time (in
//! clock ticks since boot, field 22 of `/proc/<pid>/stat`) and the kernel's boot id
//! (`/proc/sys/kernel/random/boot_id`) pin down one process on one boot. The agent records its
//! own identity with its ZooKeeper session ids, so that the next agent on this host can tell
//! "the previous agent here is dead" (replace its registration at once) from "that agent may
//! be alive somewhere" (a copied local dir: wait for the session to expire, else refuse).
//! Workers will be adopted by the same proof.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessIdentity {
    pub pid: u32,
    /// Start time in clock ticks after boot (`/proc/<pid>/stat` field 22).
    pub start_ticks: u64,
    pub boot_id: String,
}

/// What can be said about a recorded process now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Liveness {
    /// The same process (pid, start time, boot) is running on this host.
    Alive,
    /// Same boot, and no process with that pid and start time exists: it is gone.
    Dead,
    /// Recorded on another boot or another host: nothing can be proven from here.
    #[default]
    Unknown,
}

impl ProcessIdentity {
    /// This process.
    pub(crate) fn current() -> std::io::Result<ProcessIdentity> {
        ProcessIdentity::of(std::process::id())
    }

    /// The process running as `pid` now.
    pub fn of(pid: u32) -> std::io::Result<ProcessIdentity> {
        Ok(ProcessIdentity { pid, start_ticks: start_ticks(pid)?, boot_id: boot_id()? })
    }

    pub(crate) fn liveness(&self) -> Liveness {
        match boot_id() {
            Ok(boot) if boot == self.boot_id => {}
            _ => return Liveness::Unknown,
        }
        match read_stat(self.pid) {
            // A zombie has exited; only its parent has not reaped it yet.
            Ok((ticks, state)) if ticks == self.start_ticks && !matches!(state, 'Z' | 'X') => Liveness::Alive,
            Ok(_) => Liveness::Dead,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Liveness::Dead,
            Err(_) => Liveness::Unknown,
        }
    }
}

/// This boot's id. Read once per process (it cannot change under a running process) rather
/// than on every launch and liveness check.
pub(crate) fn boot_id() -> std::io::Result<String> {
    static BOOT_ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(id) = BOOT_ID.get() {
        return Ok(id.clone());
    }
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?.trim().to_owned();
    Ok(BOOT_ID.get_or_init(|| id).clone())
}

/// Field 22 of `/proc/<pid>/stat`. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted after the last `)`.
pub(crate) fn start_ticks(pid: u32) -> std::io::Result<u64> {
    read_stat(pid).map(|(ticks, _)| ticks)
}

/// Start ticks and state letter (`R`, `S`, `Z`…) of `pid`.
fn read_stat(pid: u32) -> std::io::Result<(u64, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&stat).ok_or_else(|| std::io::Error::other(format!("unexpected /proc/{pid}/stat format")))
}

fn parse_stat(stat: &str) -> Option<(u64, char)> {
    let (_, rest) = stat.rsplit_once(')')?;
    // rest starts at field 3 (state); field 22 is the 20th after it.
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((fields.nth(18)?.parse().ok()?, state))
}

/// Pids of the processes in process group `pgid` that have not exited (zombies are left out:
/// they run nothing, and an orphaned one waits on a parent that may never reap it).
///
/// Scans `/proc`, so it costs a read per process on the host: for the rare case where a group
/// is known to still have members. A process that vanishes during the scan is skipped.
pub(crate) fn live_group_members(pgid: u32) -> std::io::Result<Vec<u32>> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Some(pid) = entry?.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else {
            continue;
        };
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => {
                if parse_state_and_group(&stat)
                    .is_some_and(|(state, group)| group == pgid && !matches!(state, 'Z' | 'X'))
                {
                    members.push(pid);
                }
            }
            // Exited between the listing and the read (ESRCH shows up as NotFound or as an
            // error with no kind on some kernels): not a live member either way.
            Err(_) => continue,
        }
    }
    Ok(members)
}

/// State letter (field 3) and process group (field 5) of a `/proc/<pid>/stat` line.
fn parse_state_and_group(stat: &str) -> Option<(char, u32)> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((state, fields.nth(1)?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_state_and_group_after_a_command_name_with_spaces_and_parens() {
        let stat = "4242 (my (odd) name) S 1 4240 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_state_and_group(stat), Some(('S', 4240)));
        assert_eq!(parse_state_and_group("garbage"), None);
    }

    #[test]
    fn this_process_is_a_live_member_of_its_group() {
        let pgid = nix::unistd::getpgrp().as_raw() as u32;
        assert!(live_group_members(pgid).unwrap().contains(&std::process::id()));
    }

    #[test]
    fn parses_start_time_after_a_command_name_with_spaces_and_parens() {
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_stat(stat), Some((987654, 'S')));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_is_alive_and_a_made_up_one_is_dead_or_unknown() {
        let me = ProcessIdentity::current().unwrap();
        assert_eq!(me.liveness(), Liveness::Alive);
        let restarted = ProcessIdentity { start_ticks: me.start_ticks + 1, ..me.clone() };
        assert_eq!(restarted.liveness(), Liveness::Dead, "same pid, other start time: not the same process");
        let other_boot = ProcessIdentity { boot_id: "not-this-boot".into(), ..me };
        assert_eq!(other_boot.liveness(), Liveness::Unknown);
    }

    #[test]
    fn a_zombie_is_dead() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let id = ProcessIdentity::of(child.id()).unwrap();
        // Not reaped yet: a zombie with the same pid and start time.
        let deadline = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
        while read_stat(child.id()).map(|(_, s)| s).ok() != Some('Z') {
            assert!(std::time::SystemTime::now() < deadline, "child never became a zombie");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(id.liveness(), Liveness::Dead);
        child.wait().unwrap();
    }

    #[test]
    fn an_exited_child_is_dead() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let id = ProcessIdentity::of(child.id()).unwrap();
        child.wait().unwrap();
        assert_eq!(id.liveness(), Liveness::Dead);
    }
}
