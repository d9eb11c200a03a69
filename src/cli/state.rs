//! `gale state dump`: every kept version of the local state, read-only, daemon up or down.
//! `gale state reset-id`: the deliberate way to give this host's agent a new supervisor id.
//!
//! Why reset-id exists: the identity is pinned (an agent whose configured `supervisor.id` is
//! not the one its local dir holds exits 4), because switching ids under running workers
//! strands them: their cgroups are under `gale-<old id>`, where the new id never looks. So the
//! operator renames an agent with this command, with the agent stopped (it takes the local
//! dir's lock, so it refuses while an agent runs and no agent starts while it works), and
//! says what becomes of the workers still running: `--stop-workers` (SIGTERM, the configured
//! grace, SIGKILL, then their cgroups killed and removed; records forgotten) or
//! `--hand-over` (the workers' parent cgroup `gale-<old>` is renamed `gale-<new>` in every
//! hierarchy, so the next agent adopts them with their cgroups). The session ids go too: they
//! belong to the old id's registration, and the next start registers the new id afresh.
//!
//! Every signal goes through `worker::signal_group` (pid + start time + boot id proven) or
//! the cgroup's own member check; nothing unproven is signalled.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::{CliError, load_config};
use crate::isolation::{self, CgroupDir, IsolationError, WorkerCgroup};
use crate::lifecycle::ExitCode;
use crate::local_dir::{LocalDir, LocalDirError};
use crate::local_state::{
    EarlierSessionIds, LastSessionId, LocalAssignmentsKey, LocalState, SessionOwner, StateError, SupervisorId, Workers,
};
use crate::proc_identity::Liveness;
use crate::supervisor::records::WorkerRecord;

pub(crate) fn dump(config_path: &Path) -> Result<ExitCode, CliError> {
    let config = load_config(config_path)?;
    let dir = config.supervisor.local_dir.join("state");
    let text = crate::local_state::dump(&dir).map_err(|e| CliError::new(ExitCode::Failure, e.to_string()))?;
    print!("{text}");
    Ok(ExitCode::Clean)
}

/// What `gale state reset-id` does with workers still running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Leftovers {
    /// Neither option: refused if any recorded worker still runs.
    Unspecified,
    Stop,
    HandOver,
}

/// `gale state reset-id [--id NEW] [--stop-workers | --hand-over]`.
pub(crate) fn reset_id(config_path: &Path, id: Option<&str>, leftovers: Leftovers) -> Result<ExitCode, CliError> {
    let config = load_config(config_path)?;
    let local_dir = &config.supervisor.local_dir;
    if !local_dir.join("state").is_dir() {
        println!("{}: no local state, so no supervisor id to reset (the first start takes one)", local_dir.display());
        return Ok(ExitCode::Clean);
    }
    // Held until the end: no agent starts while the id and the cgroups change.
    let dir = LocalDir::lock(local_dir).map_err(locked)?;
    let mut state = LocalState::open(&dir.state_dir()).map_err(failure)?;
    let Some(old) = state.get::<SupervisorId>().map_err(failure)? else {
        println!("{}: no supervisor id stored yet: nothing to reset", local_dir.display());
        return Ok(ExitCode::Clean);
    };
    let new = new_id(id, config.supervisor.id.as_deref())?;
    if new == old {
        println!("supervisor id is already {old} ({}): nothing to do", local_dir.display());
        return Ok(ExitCode::Clean);
    }
    let records = state.get::<Workers>().map_err(failure)?.unwrap_or_default();
    let running: Vec<&WorkerRecord> = records.values().filter(|r| r.process.liveness() == Liveness::Alive).collect();
    if !running.is_empty() && leftovers == Leftovers::Unspecified {
        return Err(CliError::new(
            ExitCode::Usage,
            format!(
                "{} worker(s) of supervisor id {old} still run ({}): choose --stop-workers (stop them) or \
                 --hand-over (the agent adopts them under {new}, with their cgroups)",
                running.len(),
                describe(&running)
            ),
        ));
    }
    let mut done = Vec::new();
    let mut renamed = Vec::new();
    match leftovers {
        Leftovers::HandOver => {
            renamed = hand_over(&running, &old, &new)?;
            done.extend(
                renamed.iter().map(|(from, to)| format!("renamed cgroup {} -> {}", from.display(), to.display())),
            );
            if !running.is_empty() {
                done.push(format!("handed over {} running worker(s): {}", running.len(), describe(&running)));
            }
        }
        Leftovers::Stop if !running.is_empty() => {
            done.extend(stop_workers(&running, &old, config.worker.shutdown_grace)?);
        }
        Leftovers::Stop => {}
        Leftovers::Unspecified => {}
    }
    let forget = leftovers == Leftovers::Stop;
    if let Err(e) = rewrite(&mut state, &new, forget) {
        isolation::undo_renames(&renamed);
        return Err(failure(e));
    }
    print_report(&old, &new, local_dir, &done, forget, config.supervisor.id.as_deref());
    Ok(ExitCode::Clean)
}

/// `--id`, else the configured `supervisor.id`, else a new UUID; checked like any identifier.
fn new_id(given: Option<&str>, configured: Option<&str>) -> Result<String, CliError> {
    let id = match given.or(configured) {
        Some(id) => id.to_owned(),
        None => uuid::Uuid::new_v4().to_string(),
    };
    crate::ident::validate("supervisor id", &id).map_err(|e| CliError::new(ExitCode::Usage, format!("--id: {e}")))?;
    Ok(id)
}

/// One version: the new id, no session ids (they belong to the old id's registration), and
/// with `forget_workers` no worker records and no local assignments (the old id's jobs).
fn rewrite(state: &mut LocalState, new: &str, forget_workers: bool) -> Result<u64, StateError> {
    state.update(|batch| {
        batch.put::<SupervisorId>(&new.to_owned())?;
        batch.remove::<LastSessionId>();
        batch.remove::<EarlierSessionIds>();
        batch.remove::<SessionOwner>();
        if forget_workers {
            batch.put::<Workers>(&Default::default())?;
            batch.put::<LocalAssignmentsKey>(&Default::default())?;
        }
        Ok(())
    })
}

/// Renames the workers' parent cgroup `gale-<old>` to `gale-<new>` wherever a running worker
/// is in it (a parent already renamed by an interrupted run counts as done).
fn hand_over(
    running: &[&WorkerRecord],
    old: &str,
    new: &str,
) -> Result<Vec<(std::path::PathBuf, std::path::PathBuf)>, CliError> {
    let (old_parent, new_parent) = (crate::isolation::parent_name(old), crate::isolation::parent_name(new));
    let mut parents: Vec<CgroupDir> = Vec::new();
    for record in running {
        let found = isolation::worker_parents(record.process.pid, &record.worker_id, &[&old_parent, &new_parent])
            .map_err(|e| isolation_failure("cannot find the cgroups of a worker to hand over", &e))?;
        for parent in found {
            if !parents.iter().any(|p| p.path == parent.path) {
                parents.push(parent);
            }
        }
    }
    isolation::rename_parents(&parents, &new_parent).map_err(|e| {
        let why = "cannot hand the workers over (nothing was changed; cgroup v2 cannot rename a cgroup: use \
                   --stop-workers there)";
        isolation_failure(why, &e)
    })
}

/// SIGTERM to every proven worker's group, `grace` for them to exit, SIGKILL to the groups
/// still there, then each worker's cgroup killed and removed (what left its group dies too),
/// and the emptied parent removed. Returns what was done, one line each.
fn stop_workers(running: &[&WorkerRecord], old: &str, grace: Duration) -> Result<Vec<String>, CliError> {
    let parent_name = crate::isolation::parent_name(old);
    // The cgroups are found while the workers still run: /proc/<pid>/cgroup goes with them.
    let mut cgroups = Vec::new();
    let mut parents: Vec<CgroupDir> = Vec::new();
    for record in running {
        let found = isolation::worker_parents(record.process.pid, &record.worker_id, &[&parent_name])
            .map_err(|e| isolation_failure("cannot find the cgroups of a worker to stop", &e))?;
        cgroups.push(WorkerCgroup::under(&found, &record.worker_id));
        parents.extend(found);
    }
    signal_all(running, Signal::SIGTERM)?;
    let sigkilled = !wait_gone(running, grace);
    if sigkilled {
        signal_all(running, Signal::SIGKILL)?;
    }
    for cgroup in cgroups {
        cgroup.remove().map_err(|e| isolation_failure("cannot remove a stopped worker's cgroup", &e))?;
    }
    if !wait_gone(running, Duration::from_secs(5)) {
        let left: Vec<&WorkerRecord> =
            running.iter().copied().filter(|r| r.process.liveness() == Liveness::Alive).collect();
        return Err(CliError::new(
            ExitCode::Failure,
            format!("workers still run after SIGKILL: {}; nothing was changed in the local state", describe(&left)),
        ));
    }
    for parent in &parents {
        // Empty now unless something else lives there; then it stays.
        let _ = std::fs::remove_dir(&parent.path);
    }
    let how = if sigkilled { "SIGTERM, then SIGKILL after the grace" } else { "SIGTERM" };
    Ok(vec![format!("stopped {} worker(s) ({how}): {}", running.len(), describe(running))])
}

fn signal_all(running: &[&WorkerRecord], signal: Signal) -> Result<(), CliError> {
    for record in running {
        crate::worker::signal_group(&record.process, signal).map_err(|e| {
            CliError::new(
                ExitCode::Failure,
                format!("cannot send {signal} to worker {} (pid {}): {e}", record.worker_id, record.process.pid),
            )
        })?;
    }
    Ok(())
}

/// Whether every recorded process has exited within `limit` (polled every 50 ms).
fn wait_gone(running: &[&WorkerRecord], limit: Duration) -> bool {
    const POLL: Duration = Duration::from_millis(50);
    let rounds = limit.as_millis() / POLL.as_millis() + 1;
    for _ in 0..rounds {
        if running.iter().all(|r| r.process.liveness() != Liveness::Alive) {
            return true;
        }
        std::thread::sleep(POLL);
    }
    running.iter().all(|r| r.process.liveness() != Liveness::Alive)
}

fn describe(records: &[&WorkerRecord]) -> String {
    let each: Vec<String> = records
        .iter()
        .map(|r| format!("{} port {} topology {} pid {}", r.worker_id, r.port, r.topology_id, r.process.pid))
        .collect();
    each.join(", ")
}

fn print_report(old: &str, new: &str, local_dir: &Path, done: &[String], forgot: bool, configured: Option<&str>) {
    println!("supervisor id: {old} -> {new} (local dir {})", local_dir.display());
    for line in done {
        println!("{line}");
    }
    if forgot {
        println!("worker records and local assignments of {old}: cleared");
    }
    println!("session ids of {old}: cleared (the next start registers {new} afresh)");
    match configured {
        Some(id) if id != new => {
            println!("next: set supervisor.id = \"{new}\" in the config (it says \"{id}\"), then start the agent")
        }
        _ => println!("next: start the agent"),
    }
}

fn locked(e: LocalDirError) -> CliError {
    match e {
        LocalDirError::Locked { dir, holder } => CliError::new(
            ExitCode::IdentityConflict,
            format!(
                "local dir {} is locked by a running gale agent{holder}: stop it first (systemctl stop gale), \
                 then run `gale state reset-id` again",
                dir.display()
            ),
        ),
        other => CliError::new(ExitCode::Failure, other.to_string()),
    }
}

fn failure(e: StateError) -> CliError {
    CliError::new(ExitCode::Failure, e.to_string())
}

/// `what: error: cause: cause…` on one line.
fn isolation_failure(what: &str, e: &IsolationError) -> CliError {
    let mut line = format!("{what}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        line.push_str(&format!(": {cause}"));
        source = std::error::Error::source(cause);
    }
    CliError::new(ExitCode::Failure, line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_new_id_is_given_else_configured_else_a_uuid_and_is_checked() {
        assert_eq!(new_id(Some("b"), Some("c")).unwrap(), "b");
        assert_eq!(new_id(None, Some("c")).unwrap(), "c");
        assert!(uuid::Uuid::parse_str(&new_id(None, None).unwrap()).is_ok());
        let err = new_id(Some("../x"), None).unwrap_err();
        assert_eq!(err.code, ExitCode::Usage);
        assert!(err.message.contains("supervisor id"), "{}", err.message);
    }

    /// The rewrite: new id, no session ids; worker records and local assignments only go with
    /// `--stop-workers`; other keys (drained) stay.
    #[test]
    fn the_rewrite_clears_the_session_ids_and_keeps_the_rest() {
        let tmp = tempfile::tempdir().unwrap();
        let mut state = LocalState::open(tmp.path()).unwrap();
        let me = crate::proc_identity::ProcessIdentity::current().unwrap();
        state
            .update(|b| {
                b.put::<SupervisorId>(&"old".to_owned())?;
                b.put::<LastSessionId>(&7)?;
                b.put::<EarlierSessionIds>(&vec![5, 6])?;
                b.put::<SessionOwner>(&me)?;
                b.put::<crate::local_state::Drained>(&true)
            })
            .unwrap();
        rewrite(&mut state, "new", false).unwrap();
        let state = LocalState::open(tmp.path()).unwrap();
        assert_eq!(state.get::<SupervisorId>().unwrap().as_deref(), Some("new"));
        assert_eq!(state.get::<LastSessionId>().unwrap(), None);
        assert_eq!(state.get::<EarlierSessionIds>().unwrap(), None);
        assert_eq!(state.get::<SessionOwner>().unwrap(), None);
        assert_eq!(state.get::<crate::local_state::Drained>().unwrap(), Some(true));
    }
}
