//! `gale state dump`: every kept version of the local state, read-only, daemon up or down.

use std::path::Path;

use super::{CliError, load_config};
use crate::lifecycle::ExitCode;

pub(crate) fn dump(config_path: &Path) -> Result<ExitCode, CliError> {
    let config = load_config(config_path)?;
    let dir = config.supervisor.local_dir.join("state");
    let text = crate::local_state::dump(&dir).map_err(|e| CliError::new(ExitCode::Failure, e.to_string()))?;
    print!("{text}");
    Ok(ExitCode::Clean)
}
