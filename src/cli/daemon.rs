//! `gale run`: config → logging → runtime → [`crate::run`] → exit code.

use std::path::Path;

use super::{CliError, load_config};
use crate::lifecycle::ExitCode;

pub fn run(config_path: &Path) -> Result<ExitCode, CliError> {
    let config = load_config(config_path)?;
    crate::logging::init(config.logs.format, &config.logs.level).map_err(|e| CliError::new(ExitCode::Config, e))?;
    // Two worker threads: the agent's work is I/O bound and small; this keeps its footprint low.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("gale")
        .enable_all()
        .build()
        .map_err(|e| CliError::new(ExitCode::Failure, format!("cannot start the async runtime: {e}")))?;
    let result = runtime.block_on(crate::run(config, shutdown_signal()));
    // Do not wait for stray blocking tasks (a stuck fsync) on the way out.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => Ok(ExitCode::Clean),
        Err(err) => {
            tracing::error!(error = %err, "gale stopped");
            Err(CliError::new(err.exit_code(), err.to_string()))
        }
    }
}

/// Completes on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install SIGTERM/SIGINT handlers; stop the agent with SIGKILL");
        return std::future::pending().await;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = name, "shutdown requested");
}
