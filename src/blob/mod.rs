//! Blob localizer: fetch a blob's content (verified), unpack it, and keep it in a
//! content-addressed cache with references and LRU cleanup ([`BlobCache`]).
//!
//! Nothing here touches ZooKeeper or the slots; the blob sync that decides what to fetch and
//! the wiring into `waiting_for_blobs` come on top of it (`supervisor::blobs`), and publish
//! what they find as a [`BlobView`].
//!
//! Invariants:
//! - [`fetch`] returns a path only for a file whose size and sha256 match the BlobMeta and that
//!   has been fsynced; every failed attempt deletes its temp file (also when the future is
//!   dropped), so nothing half downloaded is ever seen by a caller.
//! - [`extract`] either unpacks every entry inside `dest` or leaves no `dest` at all; an entry
//!   that could write or point outside `dest` (absolute path, `..`, escaping link, device, fifo)
//!   fails the whole archive.

mod cache;
mod extract;
mod fetch;
mod meta;
mod owner;
mod view;

use std::path::PathBuf;

pub use cache::BlobCache;
pub(crate) use cache::{CacheError, CacheStats, EntryId, RefOwner, SharedCache, Staged};
pub(crate) use extract::extract;
pub use fetch::fetch;
pub(crate) use meta::Archive;
pub use meta::BlobMeta;
pub(crate) use owner::Owner;
pub(crate) use view::{BlobStatus, BlobUse, BlobView};

/// What can go wrong between a BlobMeta payload and an unpacked blob.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob `{key}` version {version} from {url}: {reason} (gave up after {attempts} attempts)")]
    Fetch { key: String, version: u64, url: String, attempts: u32, reason: String },
    #[error("cannot use temp dir {}: {source}", path.display())]
    TmpDir { path: PathBuf, source: std::io::Error },
    #[error("cannot extract {} into {}: destination already exists", archive.display(), dest.display())]
    DestExists { archive: PathBuf, dest: PathBuf },
    #[error("archive {}: refusing entry `{entry}`: {reason}", archive.display())]
    UnsafeEntry { archive: PathBuf, entry: String, reason: String },
    #[error("cannot extract {} into {}: {source}", archive.display(), dest.display())]
    Extract { archive: PathBuf, dest: PathBuf, source: std::io::Error },
}
