//! The stored records: what each local state key's value is on disk, one module per format.
//!
//! The store's values used to be the bincode of the in-memory records, which embed wire types
//! (`model::assignment::Launch`…). bincode (v1) is positional: a field added to a wire type
//! would have made every state the previous release wrote unreadable, and an agent that cannot
//! read its state refuses to start, so one innocent field would have stopped a rolling upgrade
//! host after host. Now the disk holds only the types declared here:
//!
//! - [`v1`]: format 1, exactly what gale 0.1.0 wrote. Frozen.
//! - [`v2`]: format 2, what this build writes ([`FORMAT_VERSION`]): v1's types plus worker
//!   records that note the gale version that launched them.
//! - `convert.rs`: field by field to and from the in-memory types ([`StoredForm`]).
//!
//! A data file of an older format is decoded with that format's types and migrated to the
//! current one in memory ([`migrate`]) when it is read; the next write stores the current
//! format. A newer format than [`FORMAT_VERSION`] is refused (`StateError::NewerFormat`),
//! never guessed at.
//!
//! # Changing a stored type
//!
//! Never edit a type of a released format. Add `vN.rs` (re-export what stays, define what
//! changes), bump [`FORMAT_VERSION`], add the `N-1 → N` step to [`migrate`], point the keys
//! (`keys.rs`) and `convert.rs` at the new types, and add the new format's golden bytes
//! (`golden/format-N.hex`; the golden test prints them). `tests.rs` encodes a fixed sample of
//! every key and compares it byte for byte with the golden file of the current format, so a
//! stored type changed without all this fails a test. The releases' own states are in
//! `tests/fixtures/<release>/`, read by `tests.rs` and by the integration tests.

mod convert;
#[cfg(test)]
mod tests;
pub(crate) mod v1;
pub(crate) mod v2;

use bincode::Options;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub(crate) use convert::StoredForm;

use super::format::Entries;
use super::keys::{Key, Workers};

/// The state format this build writes.
pub(crate) const FORMAT_VERSION: u32 = 2;
/// The oldest format this build reads (and migrates).
pub(crate) const OLDEST_FORMAT: u32 = 1;

/// Encodes a stored value: bincode (v1), fixed-width integers, little endian.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, bincode::Error> {
    bincode::serialize(value)
}

/// Decodes a stored value written by [`encode`] (or by gale 0.1.0's `bincode::serialize`).
/// Unlike `bincode::deserialize`, the value must use every byte: a stored type that lost a
/// trailing field would otherwise decode the old bytes without a word.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::Error> {
    bincode::DefaultOptions::new().with_fixint_encoding().reject_trailing_bytes().deserialize(bytes)
}

/// A data file of an older format whose values do not decode with that format's types.
#[derive(Debug, thiserror::Error)]
#[error("key {key:?} does not decode as format {format}: {source}")]
pub struct MigrateError {
    pub key: &'static str,
    pub format: u32,
    pub source: bincode::Error,
}

/// Brings the entries of a data file of `format` (between [`OLDEST_FORMAT`] and
/// [`FORMAT_VERSION`]) to the current format. Keys this build does not know are kept as they
/// are.
pub(crate) fn migrate(format: u32, mut entries: Entries) -> Result<Entries, MigrateError> {
    debug_assert!((OLDEST_FORMAT..=FORMAT_VERSION).contains(&format), "format {format}");
    for from in format..FORMAT_VERSION {
        entries = match from {
            1 => v1_to_v2(entries)?,
            _ => unreachable!("no migration from format {from}"),
        };
    }
    Ok(entries)
}

/// Format 1 → 2: only `workers` changed (`launched_by`, `None` for what 0.1.0 launched).
fn v1_to_v2(mut entries: Entries) -> Result<Entries, MigrateError> {
    if let Some(bytes) = entries.get_mut(Workers::NAME) {
        let err = |source| MigrateError { key: Workers::NAME, format: 1, source };
        let records: v1::WorkerRecords = decode(bytes).map_err(err)?;
        *bytes = encode(&convert::worker_records_v1_to_v2(records)).map_err(err)?;
    }
    Ok(entries)
}
