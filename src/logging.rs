//! The agent's own log (`tracing`), set up once from `[logs]`.
//!
//! `format = "auto"`: under journald (`JOURNAL_STREAM` is set) plain lines without timestamps
//! or colours, since journald stamps and stores each line itself; elsewhere text with
//! timestamps, coloured only on a terminal. `"json"` is one JSON object per line for log
//! shippers. `level` is a `tracing` filter; `RUST_LOG`, when set, overrides it for debugging.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, fmt, reload};

use crate::config::LogFormat;

/// The handle that swaps the filter on a config reload.
static FILTER: std::sync::OnceLock<reload::Handle<EnvFilter, Registry>> = std::sync::OnceLock::new();

/// The filter for `level`; `RUST_LOG`, when set, wins.
fn filter(level: &str) -> Result<EnvFilter, String> {
    match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => EnvFilter::try_new(&env).map_err(|e| format!("RUST_LOG: {e}")),
        // The ZooKeeper client logs every reconnect attempt (and a spurious "session expired"
        // while closing a session on purpose); gale logs the session's story itself, so the
        // client's own lines are shown only for errors unless the filter names it.
        _ if level.contains("zookeeper_client") => EnvFilter::try_new(level).map_err(|e| format!("logs.level: {e}")),
        _ => EnvFilter::try_new(format!("{level},zookeeper_client=error")).map_err(|e| format!("logs.level: {e}")),
    }
}

/// Installs the global subscriber writing to stderr. Errors if the filter does not parse.
pub(crate) fn init(format: LogFormat, level: &str) -> Result<(), String> {
    let (filter, handle) = reload::Layer::new(filter(level)?);
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let layer = fmt::layer().with_writer(std::io::stderr);
    let layer: Box<dyn Layer<_> + Send + Sync> = match format {
        LogFormat::Json => Box::new(layer.json().flatten_event(true).with_current_span(false)),
        LogFormat::Auto if journald => Box::new(layer.without_time().with_ansi(false).with_target(false)),
        LogFormat::Auto | LogFormat::Text => Box::new(layer.with_ansi(std::io::stderr().is_terminal())),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(layer)
        .try_init()
        .map_err(|e| format!("cannot install the logger: {e}"))?;
    let _ = FILTER.set(handle);
    Ok(())
}

/// A config reload's `logs.level`: takes effect at once (a no-op when `RUST_LOG` is set, or
/// before `init`).
pub(crate) fn set_level(level: &str) -> Result<(), String> {
    let filter = filter(level)?;
    match FILTER.get() {
        Some(handle) => handle.reload(filter).map_err(|e| format!("cannot change the log filter: {e}")),
        None => Ok(()),
    }
}
