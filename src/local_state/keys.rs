//! The typed keys of the local state.
//!
//! A key is a zero-sized type implementing [`Key`]: its `NAME` is the string stored on disk,
//! its `Value` the in-memory type callers read and write, and its `Stored` the type of the
//! current format that the disk holds (`stored::v2`, or a plain type), converted field by
//! field. All keys are declared in one `state_keys!` block so that adding a key is one line,
//! and [`known_keys`] (used by `dump` to print values as JSON) can never miss one.

use std::collections::BTreeMap;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::stored::{self, StoredForm, v2};

/// A key of the local state, naming its on-disk string, its in-memory type and its stored type.
pub trait Key {
    /// The key as stored in the file. Never rename one: old versions on disk still use it.
    const NAME: &'static str;
    /// What callers get and put.
    type Value;
    /// What the disk holds (bincode, v1 encoding), in the current format. Never a wire or
    /// in-memory type: see `local_state::stored`.
    type Stored: Serialize + DeserializeOwned;
    fn to_stored(value: &Self::Value) -> Self::Stored;
    fn from_stored(stored: Self::Stored) -> Self::Value;
}

/// Decodes a stored value of a known key and renders it as JSON (for `dump`).
pub(crate) type ToJson = fn(&[u8]) -> Result<serde_json::Value, String>;

fn to_json<K: Key>(bytes: &[u8]) -> Result<serde_json::Value, String> {
    let value: K::Stored = stored::decode(bytes).map_err(|e| e.to_string())?;
    serde_json::to_value(&value).map_err(|e| e.to_string())
}

/// Declares the key types and the registry of known keys in one place.
macro_rules! state_keys {
    ($( $(#[$doc:meta])* $ty:ident: $value:ty as $stored:ty = $name:literal; )*) => {
        $(
            $(#[$doc])*
            #[derive(Debug, Clone, Copy)]
            pub struct $ty;

            impl Key for $ty {
                const NAME: &'static str = $name;
                type Value = $value;
                type Stored = $stored;
                fn to_stored(value: &$value) -> $stored {
                    <$stored as StoredForm>::from_memory(value)
                }
                fn from_stored(stored: $stored) -> $value {
                    stored.into_memory()
                }
            }
        )*

        /// Every key this build knows, by name, with a decoder of its stored value to JSON.
        pub(crate) fn known_keys() -> BTreeMap<&'static str, ToJson> {
            BTreeMap::from([$( ($name, to_json::<$ty> as ToJson), )*])
        }
    };
}

state_keys! {
    /// This supervisor's identity, generated once (a UUID unless configured) and kept forever:
    /// losing it would make nimbus see a new supervisor and reassign this host's workers.
    SupervisorId: String as String = "supervisor-id";
    /// The ZooKeeper session id of the agent's latest registration.
    LastSessionId: i64 as i64 = "last-session-id";
    /// Older session ids of this agent (up to 15), newest first, so that ephemeral nodes left
    /// by earlier sessions can be recognised as ours.
    EarlierSessionIds: Vec<i64> as Vec<i64> = "earlier-session-ids";
    /// The agent process that recorded the session ids (pid, start time, boot id): tells the
    /// next agent whether the owner of a leftover registration is provably dead.
    SessionOwner: crate::proc_identity::ProcessIdentity as v2::ProcessIdentity = "session-owner";
    /// The jobs assigned to this agent's ports, as last read from ZooKeeper: what the workers
    /// found running after a restart are checked against, before the first sync.
    LocalAssignmentsKey: crate::supervisor::records::LocalAssignments as v2::LocalAssignments = "local-assignments";
    /// Every worker process the agent started and has not yet seen exit.
    Workers: crate::supervisor::records::WorkerRecords as v2::WorkerRecords = "workers";
    /// `gale drain` is in force: it survives an agent restart until `gale undrain`.
    Drained: bool as bool = "drained";
}
