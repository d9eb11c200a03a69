//! What the blob sync publishes after each pass ([`BlobView`]): per blob an assignment uses,
//! for the user its workers run as, its current version and whether its content is in the cache, plus the cache's counters.
//! The executor, the blob links and the status document read it; it sits next to the blob
//! code so that those readers (admin among them) need nothing of the supervisor.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{CacheStats, EntryId, Owner};

/// One blob as the workers of one owner use it: its key, whether it is unpacked, and whose
/// workers read it (cache entries are never shared between users).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct BlobUse {
    pub key: String,
    pub extract: bool,
    pub owner: Owner,
}

impl BlobUse {
    /// How a worker of `owner` uses `blob`.
    pub(crate) fn of(blob: &crate::model::assignment::BlobRef, owner: Owner) -> BlobUse {
        BlobUse { key: blob.key.clone(), extract: blob.extract, owner }
    }
}

/// What the process side knows about one [`BlobUse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BlobStatus {
    /// The current version (BlobMeta), if one is known.
    pub version: Option<u64>,
    /// The current version's content, once it is in the cache.
    pub ready: Option<(EntryId, PathBuf)>,
    /// Why it is not ready, if something went wrong (not while a download simply runs).
    pub error: Option<String>,
    /// A download of the current version is running.
    pub downloading: bool,
}

/// Every blob the assigned jobs use, published after each pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct BlobView {
    pub blobs: BTreeMap<BlobUse, BlobStatus>,
    pub cache: CacheStats,
}
