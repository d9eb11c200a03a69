//! Errors of the local state store.
//!
//! Every variant carries the path, key or version it is about, and its message says what the
//! operator can do. A corrupt version is not an error by itself (it is a [`Defect`], logged and
//! skipped); only "nothing readable at all" is.

use std::io;
use std::path::PathBuf;

use super::format::Defect;
use super::stored::{FORMAT_VERSION, MigrateError, OLDEST_FORMAT};

/// A step of the write protocol, named in [`StateError::Write`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteStep {
    CreateTemp,
    WriteTemp,
    SyncTemp,
    Rename,
    CreateMarker,
    SyncDir,
}

impl std::fmt::Display for WriteStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WriteStep::CreateTemp => "create the temporary file",
            WriteStep::WriteTemp => "write the temporary file",
            WriteStep::SyncTemp => "fsync the temporary file",
            WriteStep::Rename => "rename the temporary file to",
            WriteStep::SyncDir => "fsync the directory",
            WriteStep::CreateMarker => "create the marker",
        })
    }
}

/// Errors of the local state store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "cannot create the local state directory {}: {source}; check that its parent exists and is writable by the agent's user",
        .dir.display()
    )]
    CreateDir { dir: PathBuf, source: io::Error },
    #[error("cannot list the local state directory {}: {source}; check that it exists and is readable", .dir.display())]
    ReadDir { dir: PathBuf, source: io::Error },
    #[error(
        "no readable version of the local state in {} ({count} versions, all corrupt; newest {newest}: {reason}): move the directory away to start as a new supervisor",
        .dir.display()
    )]
    NoReadableVersion { dir: PathBuf, count: usize, newest: u64, reason: Defect },
    /// A downgrade: the agent exits 78 (like a config it cannot use) and touches nothing.
    #[error(
        "local state {} was written by a newer gale (format {found}; this gale reads formats {OLDEST_FORMAT}-{FORMAT_VERSION}): refusing to start; upgrade gale or restore a backup",
        .dir.display()
    )]
    NewerFormat { dir: PathBuf, found: u32 },
    #[error(
        "local state {} version {version} cannot be brought to format {FORMAT_VERSION}: {source}; it was written by an incompatible gale: move the state directory away",
        .dir.display()
    )]
    Migrate { dir: PathBuf, version: u64, source: MigrateError },
    #[error(
        "local state key {key:?}{} does not decode as {ty}: it was written by an incompatible gale; remove the key or move the state directory away",
        .version.map(|v| format!(" (version {v})")).unwrap_or_default()
    )]
    Decode { key: &'static str, ty: &'static str, version: Option<u64>, source: bincode::Error },
    #[error("cannot encode the value of local state key {key:?}")]
    Encode { key: &'static str, source: bincode::Error },
    #[error("cannot encode the local state payload")]
    EncodePayload { source: bincode::Error },
    #[error(
        "cannot {step} {} while writing local state version {version}: {source}; check free space and permissions (the previous version is kept)",
        .path.display()
    )]
    Write { step: WriteStep, path: PathBuf, version: u64, source: io::Error },
}
