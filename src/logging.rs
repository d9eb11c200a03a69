//! The agent's own log (`tracing`), set up once from `[logs]`.
//!
//! `format = "auto"`: under journald (`JOURNAL_STREAM` is set) plain lines without timestamps
//! or colours, since journald stamps and stores each line itself; elsewhere text with
//! timestamps, coloured only on a terminal. `"json"` is one JSON object per line for log
//! shippers. `level` is a `tracing` filter; `RUST_LOG`, when set, overrides it for debugging.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber writing to stderr. Errors if the filter does not parse.
pub fn init(format: LogFormat, level: &str) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => EnvFilter::try_new(&env).map_err(|e| format!("RUST_LOG: {e}"))?,
        // The ZooKeeper client logs every reconnect attempt (and a spurious "session expired"
        // while closing a session on purpose); gale logs the session's story itself, so the
        // client's own lines are shown only for errors unless the filter names it.
        _ if level.contains("zookeeper_client") => EnvFilter::try_new(level).map_err(|e| format!("logs.level: {e}"))?,
        _ => EnvFilter::try_new(format!("{level},zookeeper_client=error")).map_err(|e| format!("logs.level: {e}"))?,
    };
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
        LogFormat::Auto if journald => builder.without_time().with_ansi(false).with_target(false).try_init(),
        LogFormat::Auto | LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
    };
    result.map_err(|e| format!("cannot install the logger: {e}"))
}
