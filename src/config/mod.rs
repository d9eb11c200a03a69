//! Operator configuration (SPEC §2): the TOML file, its defaults and its validation.
//!
//! Two layers, as in ripgrep's low/high args: [`raw`] mirrors the file (serde,
//! `deny_unknown_fields`, every key optional) and [`validate`] turns it into the typed
//! [`Config`] below (durations as `Duration`, defaults filled, rules checked). Every error
//! names the file, the line and the key; a misspelt key gets the nearest valid one.
//!
//! Invariant: a `Config` value has passed validation. Nothing else constructs one except
//! tests through [`parse`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

mod raw;
mod render;
mod validate;

pub use validate::{ConfigError, load, parse};

/// Default config path when neither `--config` nor `$GALE_CONFIG` is given.
pub(crate) const DEFAULT_PATH: &str = "/etc/gale/gale.toml";

/// The validated configuration of one agent.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this came from (for messages).
    pub path: PathBuf,
    pub zookeeper: ZookeeperConfig,
    pub supervisor: SupervisorConfig,
    pub worker: WorkerConfig,
    pub restart: RestartConfig,
    pub blob: BlobConfig,
    pub health: HealthConfig,
    pub logs: LogsConfig,
    pub admin: AdminConfig,
    pub diagnostics: DiagnosticsConfig,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ZookeeperConfig {
    /// `host:port` strings, in file order.
    pub servers: Vec<String>,
    /// Absolute ZooKeeper path without a trailing slash, e.g. `/gale`.
    pub root: String,
    pub session_timeout: Duration,
    pub connect_timeout: Duration,
    pub auth: Option<ZkAuth>,
    pub on_session_loss: OnSessionLoss,
    pub stop_workers_after: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZkAuth {
    pub scheme: String,
    pub credentials_file: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnSessionLoss {
    KeepWorkers,
    StopWorkers,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SupervisorConfig {
    pub local_dir: PathBuf,
    pub log_dir: PathBuf,
    /// Fixed supervisor id; `None`: a UUID generated once and kept in the local state.
    pub id: Option<String>,
    /// `None`: the system hostname.
    pub hostname: Option<String>,
    /// Unique ports, in file order.
    pub slots: Vec<u16>,
    pub heartbeat: Duration,
    pub heartbeat_refresh: Duration,
    pub sync: Duration,
    pub monitor: Duration,
    pub labels: BTreeMap<String, String>,
    pub capacity: Capacity,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Capacity {
    pub cpu_percent: u32,
    pub memory_mb: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WorkerConfig {
    pub start_timeout: Duration,
    pub heartbeat_timeout: Duration,
    pub max_timeout: Duration,
    pub shutdown_grace: Duration,
    pub run_as_user: bool,
    pub allowed_users: Vec<String>,
    pub min_uid: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RestartConfig {
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub reset_after: Duration,
    pub node_budget_per_min: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BlobConfig {
    pub cache_target_mb: u64,
    pub sync: Duration,
    pub download_timeout: Duration,
    pub download_retries: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    pub script_dir: PathBuf,
    pub interval: Duration,
    pub timeout: Duration,
    pub fail_on_timeout: bool,
    pub on_failure: OnHealthFailure,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnHealthFailure {
    Drain,
    Exit,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogsConfig {
    pub worker_log_max_mb: u64,
    pub worker_log_keep: u32,
    pub node_quota_mb: u64,
    pub format: LogFormat,
    /// A `tracing` filter (`info`, `gale=debug,info`), checked at validation.
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Plain text without timestamps under journald, text on a terminal or elsewhere.
    Auto,
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    /// `None` when `listen = ""` (disabled).
    pub listen: Option<SocketAddr>,
}

/// `[diagnostics]`: commands an operator runs against a worker on demand (`gale worker diag`,
/// the `diag` action); see [`crate::diagnostics`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiagnosticsConfig {
    /// Each run is killed (with its process group) after this long.
    pub timeout: Duration,
    /// Cap on what one run keeps: its output, and the `{out}` file, each.
    pub max_output_mb: u64,
    /// Name → argv template (placeholders not expanded), checked by
    /// [`crate::diagnostics::check_command`].
    pub commands: BTreeMap<String, Vec<String>>,
}

impl Config {
    /// `<local_dir>/control.sock`.
    pub(crate) fn control_socket(&self) -> PathBuf {
        self.supervisor.local_dir.join("control.sock")
    }

    /// ZooKeeper path under the configured root, e.g. `path("/supervisors")`.
    pub(crate) fn zk_path(&self, rel: &str) -> String {
        debug_assert!(rel.starts_with('/'));
        format!("{}{}", self.zookeeper.root, rel)
    }
}
