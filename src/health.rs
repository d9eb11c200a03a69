//! TEMPORARY shim until the health runner lands (replaced in this same change).
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSettings {
    pub script_dir: PathBuf,
    pub timeout: Duration,
    pub fail_on_timeout: bool,
}
impl HealthSettings {
    pub fn from_config(c: &crate::config::HealthConfig) -> Self {
        HealthSettings { script_dir: c.script_dir.clone(), timeout: c.timeout, fail_on_timeout: c.fail_on_timeout }
    }
}
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ScriptResult {
    pub script: String,
    pub healthy: bool,
}
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Default)]
pub struct HealthReport {
    pub healthy: bool,
    pub scripts: Vec<ScriptResult>,
    pub at_ms: u64,
    pub runs: u64,
}
pub async fn run_periodically(
    _s: watch::Receiver<(HealthSettings, Duration)>,
    _r: watch::Sender<HealthReport>,
    mut stop: watch::Receiver<bool>,
) {
    let _ = stop.wait_for(|s| *s).await;
}
