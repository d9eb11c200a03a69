//! From a [`Config`] back to TOML: the effective config (`gale check-config`), in the file's
//! own key names and units, so that `parse(&config.to_toml(), path)` gives an equal `Config`.
//! One renderer per section, in the section order of SPEC §2. Also the pieces of TOML syntax
//! that parsing shares: [`quote`] (error messages name a non-bare key quoted) and the words of
//! each enum-valued key.
//!
//! Kept apart from `validate.rs` so that the two layers of the config module form a chain
//! (validate → raw → render) instead of a cycle.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use super::{
    AdminConfig, BlobConfig, Config, DiagnosticsConfig, HealthConfig, LogFormat, LogsConfig, OnHealthFailure,
    OnSessionLoss, RestartConfig, SupervisorConfig, WorkerConfig, ZookeeperConfig,
};

/// The words of each enum-valued key, shared by parsing and [`Config::to_toml`]; the first
/// is the default.
pub(super) const SESSION_LOSS: [(&str, OnSessionLoss); 2] =
    [("keep_workers", OnSessionLoss::KeepWorkers), ("stop_workers", OnSessionLoss::StopWorkers)];
pub(super) const HEALTH_FAILURE: [(&str, OnHealthFailure); 2] =
    [("drain", OnHealthFailure::Drain), ("exit", OnHealthFailure::Exit)];
pub(super) const LOG_FORMAT: [(&str, LogFormat); 3] =
    [("auto", LogFormat::Auto), ("text", LogFormat::Text), ("json", LogFormat::Json)];

fn word<T: PartialEq>(table: &[(&'static str, T)], value: &T) -> &'static str {
    table.iter().find(|(_, v)| v == value).map_or("", |(w, _)| w)
}

impl Config {
    /// The effective configuration as TOML, in the file's key names and units, every key
    /// written (optional unset ones as comments saying what applies instead).
    /// `parse(&config.to_toml(), path)` gives back an equal `Config`.
    pub fn to_toml(&self) -> String {
        let sections = [
            zookeeper(&self.zookeeper),
            supervisor(&self.supervisor),
            worker(&self.worker),
            restart(&self.restart),
            blob(&self.blob),
            health(&self.health),
            logs(&self.logs),
            admin(&self.admin),
            diagnostics(&self.diagnostics),
        ];
        format!(
            "# effective configuration of {file} (defaults filled in)\n{}",
            sections.concat(),
            file = self.path.display()
        )
    }
}

fn list(items: Vec<String>) -> String {
    format!("[{}]", items.join(", "))
}

fn strings(v: &[String]) -> String {
    list(v.iter().map(|s| quote(s)).collect())
}

fn path(p: &Path) -> String {
    quote(&p.to_string_lossy())
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

fn secs(d: Duration) -> u64 {
    d.as_secs()
}

/// `key = value`, or, for an optional key that is not set, a comment saying what applies.
fn or_comment(key: &str, value: Option<String>, instead: &str) -> String {
    match value {
        Some(v) => format!("{key} = {v}"),
        None => format!("# {key} = ({instead})"),
    }
}

fn zookeeper(z: &ZookeeperConfig) -> String {
    let auth = or_comment(
        "auth",
        z.auth.as_ref().map(|a| {
            let (scheme, file) = (quote(&a.scheme), path(&a.credentials_file));
            format!("{{ scheme = {scheme}, credentials_file = {file} }}")
        }),
        "none: the ZooKeeper session is not authenticated",
    );
    let on_session_loss = quote(word(&SESSION_LOSS, &z.on_session_loss));
    format!(
        "
[zookeeper]
servers = {servers}
root = {root}
session_timeout_ms = {session_timeout_ms}
connect_timeout_ms = {connect_timeout_ms}
{auth}
on_session_loss = {on_session_loss}
stop_workers_after_secs = {stop_workers_after_secs}
",
        servers = strings(&z.servers),
        root = quote(&z.root),
        session_timeout_ms = ms(z.session_timeout),
        connect_timeout_ms = ms(z.connect_timeout),
        stop_workers_after_secs = secs(z.stop_workers_after),
    )
}

fn supervisor(s: &SupervisorConfig) -> String {
    let id = or_comment("id", s.id.as_deref().map(quote), "generated once, kept in local state");
    let hostname = or_comment("hostname", s.hostname.as_deref().map(quote), "the system hostname");
    let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{} = {}", quote(k), quote(v))).collect();
    let labels = if labels.is_empty() { "{}".to_owned() } else { format!("{{ {} }}", labels.join(", ")) };
    format!(
        "
[supervisor]
local_dir = {local_dir}
log_dir = {log_dir}
{id}
{hostname}
slots = {slots}
heartbeat_secs = {heartbeat_secs}
heartbeat_refresh_secs = {heartbeat_refresh_secs}
sync_secs = {sync_secs}
monitor_secs = {monitor_secs}
labels = {labels}
capacity = {{ cpu_percent = {cpu_percent}, memory_mb = {memory_mb} }}
",
        local_dir = path(&s.local_dir),
        log_dir = path(&s.log_dir),
        slots = list(s.slots.iter().map(u16::to_string).collect()),
        heartbeat_secs = secs(s.heartbeat),
        heartbeat_refresh_secs = secs(s.heartbeat_refresh),
        sync_secs = secs(s.sync),
        monitor_secs = secs(s.monitor),
        cpu_percent = s.capacity.cpu_percent,
        memory_mb = s.capacity.memory_mb,
    )
}

fn worker(w: &WorkerConfig) -> String {
    format!(
        "
[worker]
start_timeout_secs = {start_timeout_secs}
heartbeat_timeout_secs = {heartbeat_timeout_secs}
max_timeout_secs = {max_timeout_secs}
shutdown_grace_secs = {shutdown_grace_secs}
run_as_user = {run_as_user}
allowed_users = {allowed_users}
min_uid = {min_uid}
",
        start_timeout_secs = secs(w.start_timeout),
        heartbeat_timeout_secs = secs(w.heartbeat_timeout),
        max_timeout_secs = secs(w.max_timeout),
        shutdown_grace_secs = secs(w.shutdown_grace),
        run_as_user = w.run_as_user,
        allowed_users = strings(&w.allowed_users),
        min_uid = w.min_uid,
    )
}

fn restart(r: &RestartConfig) -> String {
    format!(
        "
[restart]
backoff_initial_ms = {backoff_initial_ms}
backoff_max_ms = {backoff_max_ms}
reset_after_secs = {reset_after_secs}
node_budget_per_min = {node_budget_per_min}
",
        backoff_initial_ms = ms(r.backoff_initial),
        backoff_max_ms = ms(r.backoff_max),
        reset_after_secs = secs(r.reset_after),
        node_budget_per_min = r.node_budget_per_min,
    )
}

fn blob(b: &BlobConfig) -> String {
    format!(
        "
[blob]
cache_target_mb = {cache_target_mb}
sync_secs = {sync_secs}
download_timeout_secs = {download_timeout_secs}
download_retries = {download_retries}
",
        cache_target_mb = b.cache_target_mb,
        sync_secs = secs(b.sync),
        download_timeout_secs = secs(b.download_timeout),
        download_retries = b.download_retries,
    )
}

fn health(h: &HealthConfig) -> String {
    let on_failure = quote(word(&HEALTH_FAILURE, &h.on_failure));
    format!(
        "
[health]
script_dir = {script_dir}
interval_secs = {interval_secs}
timeout_ms = {timeout_ms}
fail_on_timeout = {fail_on_timeout}
on_failure = {on_failure}
",
        script_dir = path(&h.script_dir),
        interval_secs = secs(h.interval),
        timeout_ms = ms(h.timeout),
        fail_on_timeout = h.fail_on_timeout,
    )
}

fn logs(l: &LogsConfig) -> String {
    let format = quote(word(&LOG_FORMAT, &l.format));
    format!(
        "
[logs]
worker_log_max_mb = {worker_log_max_mb}
worker_log_keep = {worker_log_keep}
node_quota_mb = {node_quota_mb}
format = {format}
level = {level}
",
        worker_log_max_mb = l.worker_log_max_mb,
        worker_log_keep = l.worker_log_keep,
        node_quota_mb = l.node_quota_mb,
        level = quote(&l.level),
    )
}

fn admin(a: &AdminConfig) -> String {
    let listen = quote(&a.listen.map(|a| a.to_string()).unwrap_or_default());
    format!(
        "
[admin]
listen = {listen}
"
    )
}

/// Last, because its commands are a sub-table: keys written after `[diagnostics.commands]`
/// would belong to it.
fn diagnostics(d: &DiagnosticsConfig) -> String {
    let mut out = format!(
        "
[diagnostics]
timeout_secs = {timeout_secs}
max_output_mb = {max_output_mb}
",
        timeout_secs = secs(d.timeout),
        max_output_mb = d.max_output_mb,
    );
    if d.commands.is_empty() {
        out.push_str("# commands = (none: `gale worker diag` has nothing to run)\n");
    } else {
        out.push_str("\n[diagnostics.commands]\n");
        for (name, argv) in &d.commands {
            let _ = writeln!(out, "{} = {}", key(name), strings(argv));
        }
    }
    out
}

/// A table key as written: bare when TOML allows it, else quoted.
pub(super) fn key(k: &str) -> String {
    let bare = !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare { k.to_owned() } else { quote(k) }
}

/// A TOML basic string: `"` and `\` escaped, control characters as `\uXXXX`.
pub(super) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
