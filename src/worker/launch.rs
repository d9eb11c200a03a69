//! Starting a worker process the way SPEC §4 promises: expanded argv (never a shell), its own
//! session and process group, cwd `<local_dir>/workers/<worker-id>/`, stdin `/dev/null`,
//! stdout and stderr appended to its log file, and the `GALE_*` variables.
//!
//! Design: the argv comes from [`expand`] (pure, argv template + values → argv, with the
//! placeholder grammar it shares with validation in [`crate::model::placeholders`], where every
//! placeholder rule is unit tested without a process); [`spawn_in`] is the I/O edge and makes no decision beyond "did each
//! step work". Every failure names the topology, the port, the step and the path, because the
//! operator reads it in `gale status` long after the fact.
//!
//! Two routes start the process ([`Route`]): clone3 (`super::born`: the child shares the
//! agent's memory until it execs, so no page table of the agent is copied; born in its cgroup
//! v2, or joining its cgroup or setting its rlimits before exec), wherever the kernel has it;
//! else std's `Command` (fork; the cgroup joined or the rlimits set before exec), the
//! fallback. [`worker_command`] is the one description of what the worker gets; the clone3
//! route reads argv, cwd and environment back from it.
//!
//! Invariants:
//! - The log is a plain file opened with `O_APPEND`, never a pipe to the agent: a worker must
//!   keep running, and logging, while the agent is stopped or restarting (SPEC §4).
//! - The `GALE_*` variables are set last, so an assignment's `env` cannot override them.
//! - Placeholder values are inserted verbatim and never rescanned (see [`expand`]).

use std::collections::BTreeMap;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::control::LaunchedWorker;
use super::exit::ExitWatch;
use super::heartbeat::heartbeat_file;
use crate::ident::{self, IdentError};
use crate::isolation::{Birth, IsolationError, Join, WorkerCgroup};
use crate::model::placeholders::{ExpandError, Placeholders, expand};
use crate::proc_identity::ProcessIdentity;

/// `<local_dir>/workers`: where every worker's directory is (and nothing else).
pub(crate) fn workers_dir(local_dir: &Path) -> PathBuf {
    local_dir.join("workers")
}

/// `<local_dir>/workers/<worker_id>`: a worker's cwd. The one place this path is built.
pub(crate) fn worker_dir(local_dir: &Path, worker_id: &str) -> PathBuf {
    workers_dir(local_dir).join(worker_id)
}

/// Everything needed to start one worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LaunchSpec {
    pub topology_id: String,
    pub worker_id: String,
    pub port: u16,
    pub supervisor_id: String,
    /// The assignment's argv template, placeholders not yet expanded.
    pub command: Vec<String>,
    /// The assignment's `env`.
    pub env: BTreeMap<String, String>,
    /// `<local_dir>/workers/<worker_id>` (see [`worker_dir`]).
    pub worker_dir: PathBuf,
    /// `<log_dir>/workers/<topology>/<port>/worker.log` (see [`super::logfile::worker_log_path`]).
    pub log_file: PathBuf,
    /// `$GALE_BLOB_DIR`: one entry per blob name.
    pub blob_dir: PathBuf,
    /// Blob name → local path, for `{blob:NAME}`.
    pub blobs: BTreeMap<String, PathBuf>,
    /// Run as this user (`worker.run_as_user`); `None`: as the agent's user.
    pub run_as: Option<super::users::RunAs>,
}

/// How [`spawn_by`] starts the worker's process ([`route`] chooses).
#[derive(Debug)]
pub(crate) enum Route {
    /// std's `Command`, the fallback without clone3: the child joins the cgroup (or sets its
    /// rlimits) between fork and exec.
    Fork(Join),
    /// `clone3` sharing the agent's memory until the exec (`crate::sys::clone3`): born in the
    /// cgroup v2, or joining it (or setting the rlimits) before exec.
    Clone3(Birth),
}

/// The route of a worker entering its cgroup by `birth`: clone3 wherever the kernel has it
/// with every flag the route uses (`CLONE_INTO_CGROUP`'s probe, decided once per process and
/// logged at start: `crate::isolation::log_birth`), std's fork otherwise. Being born in a
/// cgroup implies clone3.
pub(crate) fn route(birth: Birth) -> Route {
    match birth {
        Birth::JoinBeforeExec(join) if crate::isolation::clone_into_cgroup().is_err() => Route::Fork(join),
        birth => Route::Clone3(birth),
    }
}

/// The I/O step of [`spawn_in`] that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LaunchStep {
    CreateWorkerDir,
    CreateLogDir,
    OpenLog,
    /// clone3 made no process: the cgroup v2 the worker is to be born in refused it.
    CloneIntoCgroup,
    Exec,
    ReadIdentity,
}

impl std::fmt::Display for LaunchStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LaunchStep::CreateWorkerDir => "create the worker directory",
            LaunchStep::CreateLogDir => "create the log directory",
            LaunchStep::OpenLog => "open the log file",
            LaunchStep::CloneIntoCgroup => "start a process in its cgroup (clone3 CLONE_INTO_CGROUP) for",
            LaunchStep::Exec => "execute",
            LaunchStep::ReadIdentity => "read the start time of the new process from",
        })
    }
}

/// Why a worker could not be started.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LaunchError {
    /// The argv template did not expand (see [`crate::model::placeholders`]).
    #[error(transparent)]
    Expand(#[from] ExpandError),
    #[error("topology {topology} port {port}: refusing to use an invalid id as a path")]
    InvalidId { topology: String, port: u16, source: IdentError },
    #[error("topology {topology} port {port}: cannot {step} {}", .path.display())]
    Io { topology: String, port: u16, step: LaunchStep, path: PathBuf, source: io::Error },
    #[error("topology {topology} port {port}: cannot prepare the worker's cgroup")]
    Isolation { topology: String, port: u16, source: IsolationError },
}

/// Variables set by the agent itself and addressed to its own main pid (systemd notify socket,
/// watchdog, socket activation). A worker or health script inheriting them could speak to
/// systemd as if it were the agent, so they are removed from every child's environment.
const AGENT_ONLY_ENV: &[&str] =
    &["NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"];

/// Removes [`AGENT_ONLY_ENV`] from what `command` inherits. Every process the agent starts
/// (workers here, health scripts in [`crate::health`]) goes through this.
pub(crate) fn remove_agent_only_env(command: &mut std::process::Command) {
    for name in AGENT_ONLY_ENV {
        command.env_remove(name);
    }
}

/// Starts the worker described by `spec` inside `isolation` (its cgroup, or its rlimits),
/// which its process enters before its first instruction: born in it (clone3, cgroup v2) or
/// joined between clone (or fork) and `exec` (see [`crate::isolation`]). If it cannot enter,
/// the spawn fails (step `Exec`, with the errno): a worker never runs outside its cgroup, and
/// there is no way to start one without a [`WorkerCgroup`]. Must run inside a tokio runtime.
/// Does not wait for anything but `exec`: a worker that exits at once is reported by its exit
/// watch, not here.
pub(crate) fn spawn_in(spec: &LaunchSpec, isolation: &WorkerCgroup) -> Result<LaunchedWorker, LaunchError> {
    let birth = isolation.birth().map_err(|source| LaunchError::Isolation {
        topology: spec.topology_id.clone(),
        port: spec.port,
        source,
    })?;
    spawn_by(spec, route(birth))
}

/// [`spawn_in`] by the route given. Both routes give the worker the same argv, cwd, environment,
/// stdio, session, cgroup and user: one `Command` describes them ([`worker_command`]).
pub(crate) fn spawn_by(spec: &LaunchSpec, route: Route) -> Result<LaunchedWorker, LaunchError> {
    let argv = checked_argv(spec)?;
    let exec_err = |source| io_error(spec, LaunchStep::Exec, Path::new(&argv[0]), source);
    // std's `Command` hides such a string behind a placeholder (its spawn then fails like
    // this); the clone3 route reads the strings back from it, so both refuse them here.
    let strings = argv.iter().chain(spec.env.iter().flat_map(|(k, v)| [k, v]));
    if strings.map(String::as_bytes).chain([spec.blob_dir.as_os_str().as_bytes()]).any(|s| s.contains(&0)) {
        return Err(exec_err(io::Error::new(io::ErrorKind::InvalidInput, "nul byte found in provided data")));
    }
    let (log, log_for_stderr) = prepare_files(spec)?;
    let command = worker_command(spec, &argv);
    let (pid, mut exit) = match route {
        Route::Fork(join) => {
            let mut command = command;
            command.stdin(Stdio::null()).stdout(log).stderr(log_for_stderr);
            crate::sys::new_session_on_exec(&mut command);
            // Before the user switch (hooks run in registration order), so the join is made
            // with the agent's credentials whichever the kernel checks: the writer's, or (v2,
            // Linux ≥ 5.16) the opener's. The worker's user could not write `cgroup.procs`.
            join.on_exec_of(&mut command);
            if let Some(user) = &spec.run_as {
                crate::sys::switch_user_on_exec(&mut command, user.uid, user.gid, &user.groups);
            }
            // kill_on_drop stays false (the default): dropping the handle, or the agent
            // stopping, must never stop a worker.
            let child = tokio::process::Command::from(command).spawn().map_err(exec_err)?;
            (child.id().expect("a child that was never awaited has a pid"), ExitWatch::child(child))
        }
        Route::Clone3(birth) => {
            let stdio = [OwnedFd::from(log), OwnedFd::from(log_for_stderr)];
            super::born::spawn(&command, stdio, spec.run_as.as_ref(), birth)
                .map_err(|(step, source)| io_error(spec, step, Path::new(&argv[0]), source))?
        }
    };
    match ProcessIdentity::of(pid) {
        Ok(identity) => Ok(LaunchedWorker { identity, exit }),
        Err(source) => {
            // A worker we cannot prove is ours could never be stopped safely (STYLE habit 7):
            // kill it now, while its pid is still certainly this child's.
            exit.kill_new();
            Err(io_error(spec, LaunchStep::ReadIdentity, Path::new(&format!("/proc/{pid}/stat")), source))
        }
    }
}

fn io_error(spec: &LaunchSpec, step: LaunchStep, path: &Path, source: io::Error) -> LaunchError {
    LaunchError::Io { topology: spec.topology_id.clone(), port: spec.port, step, path: path.to_owned(), source }
}

/// The ids checked, the argv template expanded.
fn checked_argv(spec: &LaunchSpec) -> Result<Vec<String>, LaunchError> {
    let (topology, port) = (&spec.topology_id, spec.port);
    // Ids become directory names; assignment validation already checked them, this keeps a
    // caller bug from ever turning into a path outside the local dir.
    for (kind, value) in [("topology id", topology), ("worker id", &spec.worker_id)] {
        ident::validate(kind, value).map_err(|source| LaunchError::InvalidId {
            topology: topology.clone(),
            port,
            source,
        })?;
    }
    Ok(expand(
        &spec.command,
        &Placeholders {
            port,
            worker_id: spec.worker_id.clone(),
            topology_id: topology.clone(),
            supervisor_id: spec.supervisor_id.clone(),
            worker_dir: spec.worker_dir.clone(),
            blobs: spec.blobs.clone(),
        },
    )?)
}

/// The worker's directory and log directory (owned by its user), and its log opened twice
/// (stdout, stderr).
fn prepare_files(spec: &LaunchSpec) -> Result<(File, File), LaunchError> {
    let mut dirs = DirBuilder::new();
    dirs.recursive(true).mode(0o755);
    dirs.create(&spec.worker_dir).map_err(|e| io_error(spec, LaunchStep::CreateWorkerDir, &spec.worker_dir, e))?;
    if let Some(log_dir) = spec.log_file.parent() {
        dirs.create(log_dir).map_err(|e| io_error(spec, LaunchStep::CreateLogDir, log_dir, e))?;
    }
    if let Some(user) = &spec.run_as {
        // The worker writes its heartbeat and whatever it likes into its own dir, as its user.
        for dir in [spec.worker_dir.as_path(), spec.blob_dir.as_path()].into_iter().filter(|d| d.exists()) {
            std::os::unix::fs::chown(dir, Some(user.uid), Some(user.gid))
                .map_err(|e| io_error(spec, LaunchStep::CreateWorkerDir, dir, e))?;
        }
    }
    // std opens it with O_CLOEXEC: the only way the worker gets this descriptor is as its
    // stdout and stderr.
    let log = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .open(&spec.log_file)
        .map_err(|e| io_error(spec, LaunchStep::OpenLog, &spec.log_file, e))?;
    let log_for_stderr = log.try_clone().map_err(|e| io_error(spec, LaunchStep::OpenLog, &spec.log_file, e))?;
    Ok((log, log_for_stderr))
}

/// What the worker is given: argv, cwd and environment (the `GALE_*` variables last, so an
/// assignment's `env` cannot override them; `USER` and `LOGNAME` of `run_as`).
fn worker_command(spec: &LaunchSpec, argv: &[String]) -> std::process::Command {
    let mut command = std::process::Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .current_dir(&spec.worker_dir)
        .envs(&spec.env)
        .env("GALE_TOPOLOGY_ID", &spec.topology_id)
        .env("GALE_WORKER_ID", &spec.worker_id)
        .env("GALE_PORT", spec.port.to_string())
        .env("GALE_SUPERVISOR_ID", &spec.supervisor_id)
        .env("GALE_WORKER_DIR", &spec.worker_dir)
        .env("GALE_HEARTBEAT_FILE", heartbeat_file(&spec.worker_dir))
        .env("GALE_BLOB_DIR", &spec.blob_dir);
    remove_agent_only_env(&mut command);
    if let Some(user) = &spec.run_as {
        command.env("USER", &user.name).env("LOGNAME", &user.name);
    }
    command
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_dir_is_under_local_dir() {
        assert_eq!(worker_dir(Path::new("/var/lib/gale"), "w-1"), PathBuf::from("/var/lib/gale/workers/w-1"));
    }
}
