//! The wire data of SPEC §3: the JSON payloads gale exchanges through ZooKeeper (`schema: 1`),
//! decoded leniently (unknown fields ignored) and checked strictly (schema, identifiers, every
//! field that becomes a path, an argument or a number the agent acts on). Plain data and pure
//! functions, no I/O: this module imports nothing of ZooKeeper, so whatever reads or reports
//! these values (slots, workers, blobs, admin, the CLI) depends on the model, not on the
//! client. Reading and writing the nodes is `cluster`'s and the sync jobs' business.
//!
//! - [`SupervisorInfo`] (`/supervisors/<id>`, §3.1) with the slot states and exit reasons it
//!   reports, and [`NodeReport`], what the agent publishes for it;
//! - [`assignment`]: the Assignment payload (§3.2) and its validation;
//! - [`placeholders`]: the `{port}`-style grammar of a launch command and its expansion;
//! - [`blob_meta`]: BlobMeta (`/blobstore/<key>`, §3.3);
//! - [`action`]: Action (§3.4) and the [`action::Operation`] it asks for;
//! - [`usage`]: what workers use, per worker and summed for the host;
//! - [`ZkStatus`]: the session as the rest of the agent sees it.
//!
//! Every payload goes through [`decode`]: a bad payload is an error that names its path, and
//! never crashes anything.

pub(crate) mod action;
pub mod assignment;
pub mod blob_meta;
pub mod placeholders;
mod status;
mod supervisor_info;
pub mod usage;

pub(crate) use status::ZkStatus;
pub(crate) use supervisor_info::NodeReport;
pub use supervisor_info::{ExitReason, Health, LastExit, SlotStateName, SupervisorInfo, WorkerInfo};

/// The payload schema this agent writes and understands.
pub const SCHEMA: u32 = 1;

/// Payloads larger than this are rejected before parsing (ZooKeeper's own limit is ~1 MiB).
pub const MAX_PAYLOAD_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("{path}: payload is {size} bytes, more than the {MAX_PAYLOAD_BYTES} allowed")]
    TooLarge { path: String, size: usize },
    #[error("{path}: not a valid payload: {source}")]
    Json { path: String, source: serde_json::Error },
    #[error("{path}: unknown schema {schema} (this agent understands schema {SCHEMA})")]
    Schema { path: String, schema: u64 },
}

/// Decodes any schema-1 payload: size bound, JSON, schema check, then the type.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(path: &str, bytes: &[u8]) -> Result<T, PayloadError> {
    if bytes.len() > MAX_PAYLOAD_BYTES {
        return Err(PayloadError::TooLarge { path: path.to_owned(), size: bytes.len() });
    }
    let json = |source| PayloadError::Json { path: path.to_owned(), source };
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(json)?;
    match value.get("schema").and_then(serde_json::Value::as_u64) {
        Some(s) if s == u64::from(SCHEMA) => {}
        Some(schema) => return Err(PayloadError::Schema { path: path.to_owned(), schema }),
        None => {
            let source = <serde_json::Error as serde::de::Error>::custom("missing or non-integer `schema`");
            return Err(json(source));
        }
    }
    serde_json::from_value(value).map_err(json)
}

/// Milliseconds since the unix epoch, for payload timestamps (wall clock on purpose: other
/// hosts read these).
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
