//! What the blob sync publishes after each pass ([`BlobView`]): per blob an assignment uses,
//! its current version and whether its content is in the cache, plus the cache's counters.
//! The executor, the blob links and the status document read it; it sits next to the blob
//! code so that those readers (admin among them) need nothing of the supervisor.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{CacheStats, EntryId};

/// One blob as an assignment uses it: its key, and whether it is unpacked.
pub(crate) type BlobUse = (String, bool);

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
