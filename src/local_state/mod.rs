//! The supervisor's local state: a small, crash-safe, versioned key/value store.
//!
//! This is Storm's `LocalState`/`VersionedStore` done so that a crash at any instant (SIGKILL,
//! power loss, a full disk) can never make the agent forget who it is. It holds a handful of keys
//! (`supervisor-id`, `last-session-id`, `earlier-session-ids`, `session-owner`,
//! `local-assignments`, `workers`, `drained`) whose values are typed through the [`Key`] trait.
//!
//! # Layout
//!
//! Every write stores the WHOLE map as a new version in the state directory:
//!
//! ```text
//! <dir>/<version>           data file
//! <dir>/<version>.version   empty marker: "this data file was completely written and synced"
//! <dir>/<version>.tmp       only while a write is in flight (or after a crash during one)
//! ```
//!
//! A version name is a millisecond unix timestamp, bumped to `newest + 1` when the clock has not
//! moved past the newest version on disk (or went backwards), so names are strictly increasing.
//!
//! # Data file format
//!
//! ```text
//! offset  size  field
//!      0     8  magic b"GALESTAT"
//!      8     4  format version, u32 LE (this build writes 2, reads 1 and 2)
//!     12     8  payload length, u64 LE
//!     20     4  CRC32, u32 LE: of the payload in format 1; of bytes 0..20 and the payload
//!               from format 2 on (a damaged format field cannot pass for another format)
//!     24     n  payload: bincode (v1) of BTreeMap<String, Vec<u8>>,
//!               each value being the bincode encoding of that key's stored type
//! ```
//!
//! Values are encoded per key so that one key whose type changed (or that this build does not
//! know) never prevents reading the others. Each key's stored type belongs to the format
//! ([`stored`]: `v1` is what gale 0.1.0 wrote, `v2` what this build writes), never to the wire
//! or in-memory types, which are converted to and from it field by field. A file of an older
//! format is read with that format's types and migrated in memory; the next write stores the
//! current format. A file of a newer format makes the whole directory refused
//! ([`StateError::NewerFormat`], exit 78): neither reset nor read around.
//!
//! # Write protocol
//!
//! 1. write `<v>.tmp`, fsync it;
//! 2. rename it to `<v>`, fsync the directory;
//! 3. create the empty marker `<v>.version`, fsync the directory;
//! 4. only then delete versions older than the newest [`KEEP_VERSIONS`] (marker first).
//!
//! The directory is synced after the rename as well as after the marker so that no filesystem
//! may persist the marker without the data file it vouches for. If any step fails, the partial
//! files of that version are removed best-effort, the in-memory map is left as it was, and the
//! error is returned: the previous version stays the newest readable one.
//!
//! # Invariants
//!
//! - **Architecture Invariant:** once [`LocalState::put`] / [`LocalState::update`] has returned
//!   `Ok(v)`, version `v` (or a newer one) is what the next [`LocalState::open`] reads, whatever
//!   happens to the process afterwards.
//! - Reading takes the newest version that has a marker AND whose data file has the exact length,
//!   magic, a format version from 1 to the current one, a matching CRC and decodes (then
//!   migrates). If any marked version names a newer format, nothing is read: a downgrade is
//!   refused. A version failing any check is
//!   logged (`warn`) and skipped; it is never treated as an empty store.
//! - Markers present but none readable is an error: the agent refuses to start rather than come
//!   up as a new supervisor with a new identity. Only a directory with no marker at all is fresh.
//! - Data files without a marker and `*.tmp` files are torn writes: `open` deletes them.
//! - [`dump`] and [`versions`] are read-only and tolerate files vanishing under them, so they can
//!   run while an agent is writing.
//!
//! The store is synchronous (`std::fs`); async callers wrap it in `spawn_blocking`. One process
//! owns a state directory at a time (the agent holds a lock on its local dir, SPEC §5).

mod dump;
mod error;
mod format;
mod keys;
#[cfg(test)]
mod prop_tests;
mod scan;
mod store;
pub(crate) mod stored;
#[cfg(test)]
mod tests;

pub(crate) use dump::{dump, format_unix_ms};
pub use error::StateError;
pub use keys::{
    Drained, EarlierSessionIds, Key, LastSessionId, LocalAssignmentsKey, SessionOwner, SupervisorId, Workers,
};
pub use store::LocalState;
