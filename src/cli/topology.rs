//! `gale topology submit|kill|list|show` (SPEC §1): the operator's stand-in for nimbus.
//!
//! `submit` validates a file before it touches ZooKeeper, so a broken assignment is caught at
//! the operator's terminal rather than reported by every agent. With `--auto-place N` it also
//! does a scheduler's simplest job: read the live supervisors and the other assignments, and
//! pick N free slots, spread across hosts ([`place`], pure, unit tested here).
//!
//! Placement reads then writes without a lock: two concurrent `--auto-place` submits can
//! choose the same slot. That is acceptable for a hand-run tool; a real scheduler owns that.
//!
//! Exit codes: 0 done; 1 ZooKeeper unreachable or failing, a missing topology, a bad
//! assignment file; 2 a malformed topology id; 78 a bad agent config or credentials file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use super::{CliError, client_runtime, connect, failure, load_config, read_all};
use crate::cluster::zk::{ErrorClass, ZkClient};
use crate::config::Config;
use crate::ident;
use crate::lifecycle::{ExitCode, Lifecycle};
use crate::model::assignment::{Assignment, WorkerPlacement};
use crate::model::{self, Health, SupervisorInfo};

/// How long to wait for ZooKeeper to confirm the session's close before exiting anyway.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) fn submit(config_path: &Path, file: &Path, auto_place: Option<u32>) -> Result<ExitCode, CliError> {
    // The file first: checking it needs neither the config nor ZooKeeper.
    let mut assignment = read_assignment(file)?;
    let config = load_config(config_path)?;
    client_runtime()?.block_on(async {
        let client = connect(&config).await?;
        let result = submit_on(&client, &config, &mut assignment, auto_place).await;
        client.close(CLOSE_TIMEOUT).await;
        let written = result?;
        let verb = if written.created { "created" } else { "updated" };
        println!(
            "{verb} {} (node version {}): topology {}, {} worker(s)",
            written.path,
            written.version,
            assignment.topology_id,
            assignment.workers.len()
        );
        if assignment.workers.is_empty() {
            println!("  (no workers: nothing runs until some are placed; see --auto-place)");
        }
        for w in &assignment.workers {
            match written.hosts.get(&w.supervisor_id) {
                Some(host) => println!("  {} port {} (host {host})", w.supervisor_id, w.port),
                None => println!("  {} port {}", w.supervisor_id, w.port),
            }
        }
        Ok(ExitCode::Clean)
    })
}

pub(crate) fn kill(config_path: &Path, id: &str) -> Result<ExitCode, CliError> {
    check_id(id)?;
    let config = load_config(config_path)?;
    let path = config.zk_path(&format!("/assignments/{id}"));
    client_runtime()?.block_on(async {
        let client = connect(&config).await?;
        let result = client.delete(&path, None).await;
        client.close(CLOSE_TIMEOUT).await;
        match result {
            Ok(()) => {
                println!("killed topology {id} (deleted {path})");
                Ok(ExitCode::Clean)
            }
            Err(e) if e.class() == ErrorClass::NoNode => Err(no_topology(id, &path)),
            Err(e) => Err(failure(e)),
        }
    })
}

pub(crate) fn list(config_path: &Path) -> Result<ExitCode, CliError> {
    let config = load_config(config_path)?;
    let dir = config.zk_path("/assignments");
    client_runtime()?.block_on(async {
        let client = connect(&config).await?;
        let result = read_all(&client, &dir).await;
        client.close(CLOSE_TIMEOUT).await;
        let rows = result?;
        println!("{:<32} {:>7}  SUPERVISORS", "TOPOLOGY", "WORKERS");
        for (name, path, data) in &rows {
            // Decoding one node at a time: a bad payload is a row, never the end of the list.
            match Assignment::decode(path, data) {
                Ok(a) => {
                    let sups: BTreeSet<&str> = a.workers.iter().map(|w| w.supervisor_id.as_str()).collect();
                    let sups =
                        if sups.is_empty() { "-".to_owned() } else { sups.into_iter().collect::<Vec<_>>().join(",") };
                    println!("{:<32} {:>7}  {sups}", a.topology_id, a.workers.len());
                }
                Err(e) => println!("{name:<32} {:>7}  (unreadable) {e}", "?"),
            }
        }
        if rows.is_empty() {
            println!("(no topologies)");
        }
        Ok(ExitCode::Clean)
    })
}

pub(crate) fn show(config_path: &Path, id: &str) -> Result<ExitCode, CliError> {
    check_id(id)?;
    let config = load_config(config_path)?;
    let path = config.zk_path(&format!("/assignments/{id}"));
    client_runtime()?.block_on(async {
        let client = connect(&config).await?;
        let result = client.get(&path).await;
        client.close(CLOSE_TIMEOUT).await;
        let Some((data, _)) = result.map_err(failure)? else {
            return Err(no_topology(id, &path));
        };
        let value: serde_json::Value = serde_json::from_slice(&data)
            .map_err(|e| CliError::new(ExitCode::Failure, format!("{path}: not JSON: {e}")))?;
        let decoded = Assignment::decode(&path, &data);
        // A `Value` prints its keys sorted; the typed assignment prints them in SPEC order. Use
        // that only when it holds exactly what the node holds (no unknown fields dropped).
        let pretty = match &decoded {
            Ok(a) if serde_json::to_value(a).ok().as_ref() == Some(&value) => serde_json::to_string_pretty(a),
            _ => serde_json::to_string_pretty(&value),
        };
        println!("{}", pretty.expect("JSON serializes"));
        // Printed anyway: an operator looks at a bad node to see what is wrong with it.
        if let Err(e) = decoded {
            eprintln!("gale: warning: agents reject this assignment: {e}");
        }
        Ok(ExitCode::Clean)
    })
}

/// What `submit` wrote.
#[derive(Debug)]
struct Written {
    path: String,
    version: i32,
    created: bool,
    /// Host of each supervisor placed on by `--auto-place`.
    hosts: BTreeMap<String, String>,
}

async fn submit_on(
    client: &ZkClient,
    config: &Config,
    assignment: &mut Assignment,
    auto_place: Option<u32>,
) -> Result<Written, CliError> {
    let dir = config.zk_path("/assignments");
    let path = format!("{dir}/{}", assignment.topology_id);
    let mut hosts = BTreeMap::new();
    if let Some(n) = auto_place {
        let supervisors = live_supervisors(client, &config.zk_path("/supervisors")).await?;
        let taken = slots_of_other_topologies(client, &dir, &assignment.topology_id).await?;
        let free = free_slots(&supervisors, &taken, &assignment.topology_id);
        assignment.workers = place(&free, n as usize).map_err(|available| {
            CliError::new(
                ExitCode::Failure,
                format!(
                    "--auto-place {n}: only {available} free slot(s) on live supervisors under {}",
                    config.zk_path("/supervisors")
                ),
            )
        })?;
        hosts = supervisors.into_iter().map(|s| (s.id, s.hostname)).collect();
        // Placements come from other processes' payloads; check them like the rest.
        assignment.validate().map_err(|e| CliError::new(ExitCode::Failure, format!("after placement: {e}")))?;
    }
    let data = assignment.to_json();
    client.ensure_path(&dir).await.map_err(failure)?;
    // Updating a topology that exists is normal: create, else overwrite. A set always bumps
    // the version, so version 0 means this call created the node.
    let stat = client.put_persistent(&path, &data).await.map_err(failure)?;
    let created = stat.version == 0;
    Ok(Written { path, version: stat.version, created, hosts })
}

/// Reads and validates an assignment file; errors name the file and the field.
fn read_assignment(file: &Path) -> Result<Assignment, CliError> {
    let shown = file.display().to_string();
    let bad = |m: String| CliError::new(ExitCode::Failure, m);
    let bytes = std::fs::read(file).map_err(|e| bad(format!("cannot read {shown}: {e}")))?;
    // `model::decode` rather than `Assignment::decode`: a file's name need not be its id.
    let assignment: Assignment = model::decode(&shown, &bytes).map_err(|e| bad(e.to_string()))?;
    assignment.validate().map_err(|e| bad(format!("{shown}: {e}")))?;
    Ok(assignment)
}

async fn live_supervisors(client: &ZkClient, dir: &str) -> Result<Vec<SupervisorInfo>, CliError> {
    let mut out = Vec::new();
    for (name, path, data) in read_all(client, dir).await? {
        match SupervisorInfo::decode(&path, &data) {
            Ok(info) if info.id == name => out.push(info),
            Ok(info) => eprintln!("gale: warning: skipping {path}: it names itself `{}`", info.id),
            Err(e) => eprintln!("gale: warning: skipping {e}"),
        }
    }
    Ok(out)
}

/// (supervisor id, port) pairs placed by assignments other than `topology_id`.
async fn slots_of_other_topologies(
    client: &ZkClient,
    dir: &str,
    topology_id: &str,
) -> Result<BTreeSet<(String, u16)>, CliError> {
    let mut taken = BTreeSet::new();
    for (name, path, data) in read_all(client, dir).await? {
        if name == topology_id {
            continue;
        }
        // Lenient on purpose: an assignment agents reject may still be read by some; its
        // placements are not free for us either.
        match model::decode::<Assignment>(&path, &data) {
            Ok(a) => taken.extend(a.workers.into_iter().map(|w| (w.supervisor_id, w.port))),
            Err(e) => eprintln!("gale: warning: cannot tell which slots it uses: {e}"),
        }
    }
    Ok(taken)
}

/// One supervisor's slots that `--auto-place` may use.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FreeSlots {
    host: String,
    supervisor_id: String,
    ports: Vec<u16>,
}

/// The free slots of each supervisor that takes work: not draining or stopping, not unhealthy.
/// A slot is free if no other topology is placed on it and the agent does not report it used,
/// unless what uses it is `topology_id` itself, which the new placement replaces.
fn free_slots(supervisors: &[SupervisorInfo], taken: &BTreeSet<(String, u16)>, topology_id: &str) -> Vec<FreeSlots> {
    let takes_work = |s: &SupervisorInfo| {
        !matches!(s.state, Lifecycle::Draining | Lifecycle::Stopping) && s.health != Health::Unhealthy
    };
    supervisors
        .iter()
        .filter(|s| takes_work(s))
        .map(|s| {
            let ours = |port: u16| s.workers.iter().any(|w| w.port == port && w.topology_id == topology_id);
            let mut ports: Vec<u16> = s
                .slots
                .iter()
                .copied()
                .filter(|&p| !taken.contains(&(s.id.clone(), p)))
                .filter(|&p| !s.used_slots.contains(&p) || ours(p))
                .collect();
            ports.sort_unstable();
            ports.dedup();
            FreeSlots { host: s.hostname.clone(), supervisor_id: s.id.clone(), ports }
        })
        .collect()
}

/// Picks `n` slots round-robin over hosts, the host with the most free slots first (ties by
/// name, so the result is reproducible); within a host, supervisors take turns. Err carries
/// how many slots were free when that is fewer than `n`.
fn place(free: &[FreeSlots], n: usize) -> Result<Vec<WorkerPlacement>, usize> {
    let available: usize = free.iter().map(|f| f.ports.len()).sum();
    if available < n {
        return Err(available);
    }
    let mut by_host: BTreeMap<&str, Vec<(usize, &str, u16)>> = BTreeMap::new();
    for f in free {
        let slots = f.ports.iter().enumerate().map(|(i, &p)| (i, f.supervisor_id.as_str(), p));
        by_host.entry(f.host.as_str()).or_default().extend(slots);
    }
    // Each host's slots in reverse pick order, so `pop` takes the next; `by_host` is in name
    // order and the sort is stable, so ties stay by name.
    let mut hosts: Vec<Vec<(usize, &str, u16)>> = by_host
        .into_values()
        .map(|mut slots| {
            slots.sort_unstable_by(|a, b| b.cmp(a));
            slots
        })
        .collect();
    hosts.sort_by_key(|slots| std::cmp::Reverse(slots.len()));
    let mut picked = Vec::with_capacity(n);
    while picked.len() < n {
        for slots in hosts.iter_mut() {
            if picked.len() == n {
                break;
            }
            if let Some((_, sup, port)) = slots.pop() {
                picked.push(WorkerPlacement { supervisor_id: sup.to_owned(), port });
            }
        }
    }
    Ok(picked)
}

fn check_id(id: &str) -> Result<(), CliError> {
    ident::validate("topology id", id).map_err(|e| CliError::new(ExitCode::Usage, e.to_string()))
}

fn no_topology(id: &str, path: &str) -> CliError {
    CliError::new(ExitCode::Failure, format!("no topology {id} (no node {path})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free(host: &str, sup: &str, ports: &[u16]) -> FreeSlots {
        FreeSlots { host: host.into(), supervisor_id: sup.into(), ports: ports.to_vec() }
    }

    fn placed(p: &[WorkerPlacement]) -> Vec<String> {
        p.iter().map(|w| format!("{}:{}", w.supervisor_id, w.port)).collect()
    }

    #[test]
    fn placement_alternates_hosts_starting_with_the_freest() {
        let slots = [free("h1", "a", &[1, 2]), free("h2", "b", &[1, 2, 3])];
        assert_eq!(placed(&place(&slots, 4).unwrap()), ["b:1", "a:1", "b:2", "a:2"]);
        assert_eq!(placed(&place(&slots, 5).unwrap()), ["b:1", "a:1", "b:2", "a:2", "b:3"]);
        assert_eq!(place(&slots, 6), Err(5));
        assert_eq!(place(&[], 1), Err(0));
        assert!(place(&slots, 0).unwrap().is_empty());
    }

    #[test]
    fn supervisors_on_one_host_take_turns_within_it() {
        let slots = [free("h1", "a", &[1, 2]), free("h1", "b", &[1]), free("h2", "c", &[1])];
        assert_eq!(placed(&place(&slots, 4).unwrap()), ["a:1", "c:1", "b:1", "a:2"]);
    }

    fn info(id: &str, host: &str, slots: &[u16], used: &[(u16, &str)]) -> SupervisorInfo {
        let worker = |&(port, topology): &(u16, &str)| model::WorkerInfo {
            port,
            topology_id: topology.into(),
            worker_id: "w".into(),
            pid: None,
            state: model::SlotStateName::Running,
            since_ms: 0,
            restarts: 0,
            last_exit: None,
            error: None,
            usage: None,
        };
        SupervisorInfo {
            schema: model::SCHEMA,
            id: id.into(),
            hostname: host.into(),
            version: "0".into(),
            state: Lifecycle::Running,
            health: Health::Healthy,
            started_at_ms: 0,
            time_ms: 0,
            slots: slots.to_vec(),
            used_slots: used.iter().map(|u| u.0).collect(),
            capacity: crate::config::Capacity { cpu_percent: 100, memory_mb: 100 },
            labels: BTreeMap::new(),
            workers: used.iter().map(worker).collect(),
            used: None,
        }
    }

    #[test]
    fn free_slots_skip_used_taken_and_unavailable_supervisors() {
        let mut draining = info("d", "h3", &[1], &[]);
        draining.state = Lifecycle::Draining;
        let mut sick = info("s", "h4", &[1], &[]);
        sick.health = Health::Unhealthy;
        let sups =
            [info("a", "h1", &[1, 2, 3, 4], &[(1, "other"), (2, "wc")]), info("b", "h2", &[1, 2], &[]), draining, sick];
        let taken = BTreeSet::from([("a".to_owned(), 3), ("b".to_owned(), 2)]);
        let free = free_slots(&sups, &taken, "wc");
        // a:2 runs this topology's own worker: replaced by the new placement, so it is free.
        assert_eq!(free[0], FreeSlots { host: "h1".into(), supervisor_id: "a".into(), ports: vec![2, 4] });
        assert_eq!(free[1].ports, [1]);
        assert_eq!(free.len(), 2, "draining and unhealthy supervisors take no work");
    }
}
