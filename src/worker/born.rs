//! Starting a worker by `clone3` ([`crate::sys::clone3`]: the child shares the agent's memory
//! until it execs, so the agent's page tables are not copied), born in its cgroup v2
//! (`CLONE_INTO_CGROUP`) or joining it (or setting its rlimits) before exec: the std `Command`
//! that describes the worker turned into the plan the clone3 child runs, so both routes of
//! [`super::launch::spawn_by`] give a worker the same argv, cwd and environment from one
//! description.
//!
//! What std does inside `Command::spawn` is done here before the clone: the environment is
//! the agent's with the command's changes applied. There is no PATH search: a worker's
//! program is an absolute path ([`crate::model::placeholders::expand`]).

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::process::Command;

use super::exit::ExitWatch;
use super::launch::LaunchStep;
use super::users::RunAs;
use crate::isolation::Birth;
use crate::sys::clone3::{self, Credentials, ExecPlan, SpawnError};

/// Starts `command` by clone3 (see [`clone3::spawn`]) entering its cgroup by `birth`, stdin
/// `/dev/null`, stdout and stderr `output`, as `run_as` when given. Returns the pid and its
/// exit watch; else the step that failed ([`LaunchStep::CloneIntoCgroup`] when no process was
/// made in the cgroup to be born in; [`LaunchStep::Exec`] for any other failure, as with std).
pub(super) fn spawn(
    command: &Command,
    output: [OwnedFd; 2],
    run_as: Option<&RunAs>,
    birth: Birth,
) -> Result<(u32, ExitWatch), (LaunchStep, io::Error)> {
    let exec = |e| (LaunchStep::Exec, e);
    let env = child_env(command);
    let argv: Vec<&OsStr> = std::iter::once(command.get_program()).chain(command.get_args()).collect();
    let envp: Vec<Vec<u8>> = env.iter().map(|(k, v)| [k.as_bytes(), b"=", v.as_bytes()].concat()).collect();
    // std opens it with O_CLOEXEC; the child's dup2 onto 0 makes the worker's copy.
    let stdin = OwnedFd::from(std::fs::File::open("/dev/null").map_err(exec)?);
    let [stdout, stderr] = output;
    let user = run_as.map(|u| Credentials { uid: u.uid, gid: u.gid, groups: u.groups.clone() });
    let plan =
        ExecPlan::new(command.get_program(), &argv, &envp, command.get_current_dir(), [stdin, stdout, stderr], user)
            .map_err(exec)?;
    let (plan, cgroup) = match birth {
        Birth::IntoCgroup(dir) => (plan, Some(dir)),
        Birth::JoinBeforeExec(join) => {
            (plan.join_before_exec(join.cgroup_procs, join.address_space).map_err(exec)?, None)
        }
    };
    let clone_step = if cgroup.is_some() { LaunchStep::CloneIntoCgroup } else { LaunchStep::Exec };
    let child = clone3::spawn(&plan, cgroup.as_ref().map(AsFd::as_fd)).map_err(|e| match e {
        SpawnError::Clone(e) => (clone_step, e),
        SpawnError::Child(e) => (LaunchStep::Exec, e),
    })?;
    // A second descriptor of the same process, to stop it should the watch not be set up.
    let spare = child.pidfd.try_clone();
    match ExitWatch::born(child.pidfd) {
        Ok(exit) => Ok((child.pid, exit)),
        Err(e) => {
            if let Ok(pidfd) = spare {
                let _ = rustix::process::pidfd_send_signal(&pidfd, rustix::process::Signal::KILL);
                clone3::reap(&pidfd);
            }
            Err(exec(e))
        }
    }
}

/// The agent's environment with `command`'s changes (set or removed), sorted by name as std
/// passes it.
fn child_env(command: &Command) -> BTreeMap<OsString, OsString> {
    let mut env: BTreeMap<OsString, OsString> = std::env::vars_os().collect();
    for (name, value) in command.get_envs() {
        match value {
            Some(value) => env.insert(name.to_owned(), value.to_owned()),
            None => env.remove(name),
        };
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_is_the_agents_with_the_commands_changes() {
        let mut command = Command::new("x");
        command.env("GALE_TEST_SET", "1").env_remove("PATH");
        let env = child_env(&command);
        assert_eq!(env.get(OsStr::new("GALE_TEST_SET")).map(OsString::as_os_str), Some(OsStr::new("1")));
        assert!(!env.contains_key(OsStr::new("PATH")));
        assert_eq!(env.len(), std::env::vars_os().filter(|(k, _)| k != "PATH").count() + 1);
    }
}
