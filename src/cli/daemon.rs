//! `gale run`: config → logging → runtime → [`crate::run`] → exit code.

use std::path::Path;

use super::{CliError, load_config};
use crate::lifecycle::ExitCode;

pub(crate) fn run(config_path: &Path) -> Result<ExitCode, CliError> {
    let config = load_config(config_path)?;
    crate::logging::init(config.logs.format, &config.logs.level).map_err(|e| CliError::new(ExitCode::Config, e))?;
    // One thread: the queues serialise the agent's work anyway, and every hand-off between two
    // runtime threads was a wake-up costing CPU (docs/benchmarks.md, "Restart cost, round 3").
    // Blocking work (fsync, file copies) still goes to the blocking pool.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .thread_name("gale")
        .enable_all()
        .build()
        .map_err(|e| CliError::new(ExitCode::Failure, format!("cannot start the async runtime: {e}")))?;
    let result = runtime.block_on(async {
        // Install the handlers before anything else happens: a SIGTERM during start-up must
        // be a clean stop too, not the default action (death, then `recovering` next time).
        let signals = ShutdownSignals::install()
            .map_err(|e| crate::RunError::Internal(format!("cannot install SIGTERM/SIGINT handlers: {e}")))?;
        crate::run(config, signals.recv()).await
    });
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

/// SIGTERM and SIGINT, caught from the moment they are installed.
struct ShutdownSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn install() -> std::io::Result<ShutdownSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(ShutdownSignals { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    /// Completes on the first of them.
    async fn recv(mut self) {
        let name = tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutdown requested");
    }
}
