//! This host's agent, for people and scripts: `gale status [--json]` (read from the admin
//! endpoint), and the mutations through the control socket: `gale worker restart|reset-backoff
//! PORT`, `gale worker signal PORT SIG`, `gale worker diag PORT NAME`, `gale drain [--wait]`,
//! `gale undrain`.

use std::path::Path;
use std::time::Duration;

use super::{CliError, client_runtime, load_config};
use crate::admin::control;
use crate::admin::{SlotStatus, Status};
use crate::config::Config;
use crate::lifecycle::ExitCode;
use crate::model::action::Operation;
use crate::model::usage::WorkerUsage;

pub(crate) fn status(config_path: &Path, json: bool) -> Result<ExitCode, CliError> {
    let config = load_config(config_path)?;
    match fetch_status(&config) {
        Ok(status) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&status).expect("status serializes"));
            } else {
                print!("{}", render(&status, crate::model::unix_ms()));
            }
            Ok(ExitCode::Clean)
        }
        Err(why) => {
            down(&config, &why, json)?;
            // Down is not a success for scripts (`gale status && …`).
            Ok(ExitCode::Failure)
        }
    }
}

/// `GET /status` from the running agent.
fn fetch_status(config: &Config) -> Result<Status, String> {
    let Some(addr) = config.admin.listen else {
        return Err("admin.listen is \"\" (the admin endpoint is disabled)".into());
    };
    let host = if addr.ip().is_unspecified() {
        // Listening on every address: ask over loopback.
        std::net::SocketAddr::new(
            if addr.is_ipv4() { std::net::Ipv4Addr::LOCALHOST.into() } else { std::net::Ipv6Addr::LOCALHOST.into() },
            addr.port(),
        )
    } else {
        addr
    };
    let url = format!("http://{host}/status");
    let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(5))).build().into();
    let mut response = agent.get(&url).call().map_err(|e| format!("no answer from {url}: {e}"))?;
    let body = response.body_mut().read_to_string().map_err(|e| format!("reading {url}: {e}"))?;
    serde_json::from_str(&body).map_err(|e| format!("{url} answered something that is not a status: {e}"))
}

/// The daemon does not answer: say so, and show what it persisted.
fn down(config: &Config, why: &str, json: bool) -> Result<(), CliError> {
    let dir = config.supervisor.local_dir.join("state");
    let state = crate::local_state::LocalState::read_only(&dir)
        .map_err(|e| CliError::new(ExitCode::Failure, format!("the agent does not answer ({why}), and {e}")))?;
    let get = |state: &crate::local_state::LocalState| {
        let assignments = state.get::<crate::local_state::LocalAssignmentsKey>().ok().flatten().unwrap_or_default();
        let workers = state.get::<crate::local_state::Workers>().ok().flatten().unwrap_or_default();
        let id = state.get::<crate::local_state::SupervisorId>().ok().flatten();
        let drained = state.get::<crate::local_state::Drained>().ok().flatten().unwrap_or(false);
        (assignments, workers, id, drained)
    };
    let (assignments, workers, id, drained) = state.as_ref().map(get).unwrap_or_default();
    if json {
        let workers: Vec<serde_json::Value> = workers
            .values()
            .map(|w| {
                let alive = w.process.liveness() == crate::proc_identity::Liveness::Alive;
                serde_json::json!({"port": w.port, "topology_id": w.topology_id, "worker_id": w.worker_id,
                    "pid": w.process.pid, "alive": alive, "launched_at_ms": w.launched_at_ms})
            })
            .collect();
        let assigned: serde_json::Map<String, serde_json::Value> =
            assignments.iter().map(|(p, j)| (p.to_string(), serde_json::json!(j.topology_id))).collect();
        let state = if agent_holds_lock(&config.supervisor.local_dir) { "unreachable" } else { "down" };
        let doc = serde_json::json!({"state": state, "error": why, "supervisor_id": id, "drained": drained,
            "local_state": dir, "assignments": assigned, "workers": workers});
        println!("{}", serde_json::to_string_pretty(&doc).expect("serializes"));
        return Ok(());
    }
    if agent_holds_lock(&config.supervisor.local_dir) {
        println!("agent: RUNNING, but its status cannot be read ({why})");
    } else {
        println!("agent: DOWN ({why})");
    }
    println!("persisted local state ({}):", dir.display());
    println!("  supervisor id: {}", id.as_deref().unwrap_or("(none yet)"));
    if drained {
        println!("  drained: yes (gale undrain after the agent is back)");
    }
    if assignments.is_empty() {
        println!("  assigned ports: none");
    }
    for (port, job) in &assignments {
        println!("  port {port}: topology {}", job.topology_id);
    }
    for w in workers.values() {
        let alive = w.process.liveness() == crate::proc_identity::Liveness::Alive;
        println!(
            "  worker {} port {} topology {} pid {}: {}",
            w.worker_id,
            w.port,
            w.topology_id,
            w.process.pid,
            if alive { "still running (the next agent adopts it)" } else { "gone" }
        );
    }
    Ok(())
}

/// Whether an agent holds `<local_dir>/lock` (it does for its whole life): tells "down" from
/// "running without a readable endpoint". Only tries the lock; never creates the file.
fn agent_holds_lock(local_dir: &Path) -> bool {
    let Ok(file) = std::fs::File::open(local_dir.join("lock")) else { return false };
    crate::local_dir::lock_holder(&file).is_ok_and(|holder| holder.is_some())
}

/// `1h02m`, `5m12s`, `42s`.
fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// The table for people; everything in it is in the JSON too.
pub(crate) fn render(status: &Status, now_ms: u64) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let zk = &status.zookeeper;
    let _ = writeln!(
        out,
        "supervisor {}  host {}  state {}{}  up {}",
        status.supervisor_id,
        status.hostname,
        status.state,
        if status.drained { " (drained)" } else { "" },
        duration(now_ms.saturating_sub(status.started_at_ms))
    );
    let _ = writeln!(out, "isolation  {}", status.isolation);
    let _ = writeln!(
        out,
        "zookeeper  {}{}, session {}",
        zk.state,
        if zk.registered { ", registered" } else { ", NOT registered" },
        zk.session_id.as_deref().unwrap_or("-")
    );
    let h = &status.health;
    let failing: Vec<&str> = h.scripts.iter().filter(|s| !s.healthy).map(|s| s.script.as_str()).collect();
    let _ = writeln!(
        out,
        "health     {} ({} check(s), on_failure {}){}",
        h.state,
        h.scripts.len(),
        h.on_failure,
        if failing.is_empty() { String::new() } else { format!(", failing: {}", failing.join(", ")) }
    );
    let u = &status.used;
    let _ = writeln!(
        out,
        "use        {} memory, {}% CPU, {} processes in {} worker(s)",
        short_bytes(u.memory_bytes),
        u.cpu_percent,
        u.processes,
        u.workers
    );
    let c = &status.cache;
    let _ = writeln!(
        out,
        "blob cache {} in {} entries (target {}), {} hits, {} misses{}",
        mib(c.bytes),
        c.entries,
        mib(c.target_bytes),
        c.hits,
        c.misses,
        if c.downloading > 0 { format!(", {} downloading", c.downloading) } else { String::new() }
    );
    for q in &status.queues {
        for (job, error) in &q.failing {
            let _ = writeln!(out, "FAILING    {job} (queue {}): {error}", q.name);
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<6} {:<24} {:<20} {:<8} {:>8} {:>8} {:>8}  {:<22} {:<17} NOTE",
        "PORT", "STATE", "TOPOLOGY", "WORKER", "PID", "UPTIME", "RESTARTS", "LAST EXIT", "USE (MEM CPU PROCS)"
    );
    for slot in &status.slots {
        let _ = writeln!(out, "{}", row(slot, now_ms));
    }
    out.push_str(&bad_payloads(status, now_ms));
    out
}

/// The `BAD PAYLOAD` section; nothing while every payload is usable.
fn bad_payloads(status: &Status, now_ms: u64) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if status.bad_payloads.is_empty() {
        return out;
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<11} {:<24} {:>8}  NODE: REASON (unused until fixed or deleted)",
        "BAD PAYLOAD", "NAME", "FOR"
    );
    for bad in &status.bad_payloads {
        let age = duration(now_ms.saturating_sub(bad.since_ms));
        let _ = writeln!(out, "{:<11} {:<24} {age:>8}  {}: {}", bad.kind.as_str(), bad.name, bad.path, bad.reason);
    }
    out
}

fn row(slot: &SlotStatus, now_ms: u64) -> String {
    let dash = || "-".to_owned();
    let last_exit = slot.last_exit.as_ref().map_or_else(dash, |e| {
        let how = match (&e.signal, e.code) {
            (Some(sig), _) => sig.clone(),
            (None, Some(code)) => format!("code {code}"),
            (None, None) => "?".into(),
        };
        format!("{} {how}", e.reason.as_str())
    });
    let mut notes = Vec::new();
    if let Some(until) = slot.backoff_until_ms {
        notes.push(format!("next try in {}", duration(until.saturating_sub(now_ms))));
    }
    notes.extend(slot.waiting_for.iter().cloned());
    // A blob's failure is both what the slot waits for and its error: once is enough.
    if let Some(e) = slot.error.as_ref().filter(|e| !notes.iter().any(|n| n.contains(e.as_str()))) {
        notes.push(e.clone());
    }
    format!(
        "{:<6} {:<24} {:<20} {:<8} {:>8} {:>8} {:>8}  {:<22} {:<17} {}",
        slot.port,
        slot.state.as_str(),
        slot.topology_id.clone().unwrap_or_else(dash),
        // The first 8 characters (a UUID's first group) tell workers apart; --json has it whole.
        slot.worker_id.as_deref().map_or_else(dash, |w| w.chars().take(8).collect()),
        slot.pid.map_or_else(dash, |p| p.to_string()),
        slot.running_since_ms.map_or_else(dash, |t| duration(now_ms.saturating_sub(t))),
        slot.restarts,
        last_exit,
        slot.usage.as_ref().map_or_else(dash, usage_cell),
        notes.join("; ")
    )
}

/// `212.4M 37% 3`: memory now, CPU over the last sample (percent of one core), processes.
fn usage_cell(u: &WorkerUsage) -> String {
    let cpu = u.cpu_percent.map_or_else(|| "-".to_owned(), |p| format!("{p}%"));
    format!("{} {cpu} {}", short_bytes(u.memory_bytes), u.processes)
}

/// `980K`, `212.4M`, `3.1G`.
fn short_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..1_048_576 => format!("{:.0}K", b / 1024.0),
        1_048_576..1_073_741_824 => format!("{:.1}M", b / 1_048_576.0),
        _ => format!("{:.1}G", b / 1_073_741_824.0),
    }
}

/// Sends `op` over the control socket and prints the answer.
pub(crate) fn operate(config_path: &Path, op: Operation) -> Result<ExitCode, CliError> {
    let config = load_config(config_path)?;
    let socket = config.control_socket();
    let reply = client_runtime()?.block_on(control::request(&socket, &op)).map_err(|e| {
        CliError::new(
            ExitCode::Failure,
            format!(
                "cannot reach the agent's control socket {}: {e} (is `gale run` up, and are you root?)",
                socket.display()
            ),
        )
    })?;
    if reply.ok {
        println!("{}", reply.message);
        Ok(ExitCode::Clean)
    } else {
        Err(CliError::new(ExitCode::Failure, reply.message))
    }
}
