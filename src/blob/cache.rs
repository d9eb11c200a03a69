//! The blob cache: content addressed, reference counted, least-recently-used past a target size.
//!
//! Layout under `root` (`<local_dir>/blobs`), one entry per (sha256, extracted?, owner), in
//! the directory of its owner (`<root>` itself, or `<root>/u<uid>`: see [`Owner`]):
//! ```text
//! <owner dir>/<sha256>/file    a plain blob (a directory, so installing it is one directory rename)
//! <owner dir>/<sha256>.x/      an archive extracted
//! ```
//! A miss fetches into `tmp` (`<local_dir>/tmp`), stages the entry there (`cache-<uuid>`:
//! the file moved in, or the archive extracted), fsyncs the staged tree, renames it into `root`
//! and fsyncs `root`. Removal renames the entry out into `tmp` first, then deletes it.
//!
//! Invariants:
//! - An entry name in `root` is only ever a complete, fsynced entry: it appears and disappears
//!   with one rename each. Anything else found there by [`BlobCache::open`] is a leftover of a
//!   crash and is removed, as are `cache-*` staging dirs in `tmp`.
//! - One download per blob version and owner however many slots want it: an entry present is
//!   a hit. Entries are shared only between workers of one user ([`Owner`]); a user's entry is
//!   downloaded and verified for that user, never copied from another user's directory.
//!   `ensure` takes `&mut self`, and the caller runs every `ensure` on one queue, so two calls
//!   for the same id never overlap and never download twice.
//! - [`BlobCache::cleanup`] never removes an entry with a reference. References live in memory
//!   only: after a restart the sync that re-adds them runs before any cleanup.
//! - LRU order is `(last_used, seq)`: `seq` is a per-process counter, so two touches within one
//!   clock tick still order. `last_used` survives a restart as the entry dir's mtime (best effort).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::BlobError;
use super::meta::BlobMeta;
use super::owner::{self, Owner};
use disk::{entry_path, open_dir_nofollow, remove_any, scan_entry, stage_entry, sync_dir};

#[path = "cache_disk.rs"]
mod disk;
use crate::model::blob_meta::is_sha256_hex;

/// Prefix of everything the cache stages or deletes in `tmp`; `open` sweeps it.
const TMP_PREFIX: &str = "cache-";
/// Suffix of an extracted entry's name.
const EXTRACTED_SUFFIX: &str = ".x";
/// Name of the content file inside a plain entry.
const PLAIN_FILE: &str = "file";

/// Which entry: one blob content, as a plain file or extracted, for the workers of one owner.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct EntryId {
    pub sha256: String,
    pub extracted: bool,
    pub owner: Owner,
}

impl EntryId {
    /// The entry for `meta`'s content for `owner`'s workers; its digest becomes a path
    /// component, so it must be exactly the form we expect.
    pub(crate) fn of(meta: &BlobMeta, extracted: bool, owner: Owner) -> Result<EntryId, CacheError> {
        if !is_sha256_hex(&meta.sha256) {
            return Err(CacheError::BadDigest {
                key: meta.key.clone(),
                version: meta.version,
                sha256: meta.sha256.clone(),
            });
        }
        Ok(EntryId { sha256: meta.sha256.clone(), extracted, owner })
    }

    /// Whether `other` is the same content (whoever owns it).
    pub(crate) fn same_content(&self, other: &EntryId) -> bool {
        self.sha256 == other.sha256 && self.extracted == other.extracted
    }

    fn dir_name(&self) -> String {
        if self.extracted { format!("{}{EXTRACTED_SUFFIX}", self.sha256) } else { self.sha256.clone() }
    }

    /// The entry's directory under `root`.
    fn dir(&self, root: &Path) -> PathBuf {
        self.owner.dir(root).join(self.dir_name())
    }

    /// The inverse of `dir_name` in `owner`'s directory; `None` for a name the cache never writes.
    fn parse(name: &str, owner: Owner) -> Option<EntryId> {
        let (sha, extracted) = match name.strip_suffix(EXTRACTED_SUFFIX) {
            Some(sha) => (sha, true),
            None => (name, false),
        };
        is_sha256_hex(sha).then(|| EntryId { sha256: sha.to_owned(), extracted, owner })
    }
}

/// Who holds a reference: (slot port, topology id), one per slot and assignment. An entry is
/// referenced while a slot's assignment wants it (the current version of one of its blobs) or
/// a worker of that slot and assignment links to it (possibly an older version).
pub(crate) type RefOwner = (u16, String);

/// The cache as the two queues share it: the blob sync installs and cleans up, the process side
/// links and references. Every critical section is short (no download under the lock).
pub(crate) type SharedCache = std::sync::Arc<std::sync::Mutex<BlobCache>>;

/// A verified download, staged in `tmp` and fsynced, ready for [`BlobCache::install`]. Dropping
/// it without installing leaves a staging dir that the next [`BlobCache::open`] removes;
/// [`Staged::discard`] removes it at once.
#[derive(Debug)]
pub(crate) struct Staged {
    pub id: EntryId,
    dir: PathBuf,
    bytes: u64,
    key: String,
    version: u64,
}

impl Staged {
    /// Size of the staged entry (unpacked size for an archive).
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    pub(crate) fn discard(self) {
        remove_any(&self.dir);
    }
}

#[derive(Debug)]
struct Entry {
    /// What a caller uses: the plain file, or the extracted directory.
    path: PathBuf,
    bytes: u64,
    last_used: SystemTime,
    seq: u64,
    /// Slots whose assignment wants this content (set by the blob sync).
    wanted: BTreeSet<RefOwner>,
    /// Slots whose worker links to this content (set by the process side).
    linked: BTreeSet<RefOwner>,
}

impl Entry {
    fn referenced(&self) -> bool {
        !self.wanted.is_empty() || !self.linked.is_empty()
    }
}

/// Counters and sizes for `gale status` and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    pub entries: usize,
    pub bytes: u64,
    pub hits: u64,
    pub misses: u64,
    /// Entries with at least one reference.
    pub referenced: usize,
}

/// Errors of the cache on top of the download edge's.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error("blob `{key}` version {version}: sha256 `{sha256}` is not 64 lowercase hex digits")]
    BadDigest { key: String, version: u64, sha256: String },
    #[error("blob `{key}` version {version} is to be extracted but has no archive kind (tar.gz or zip)")]
    NotAnArchive { key: String, version: u64 },
    #[error("blob cache: {what} {}: {source}", path.display())]
    Io { what: &'static str, path: PathBuf, source: io::Error },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CacheError + use<> {
    let path = path.to_owned();
    move |source| CacheError::Io { what, path, source }
}

/// The cache; one owner (the blob queue) holds it, so no locking.
#[derive(Debug)]
pub struct BlobCache {
    root: PathBuf,
    tmp: PathBuf,
    entries: BTreeMap<EntryId, Entry>,
    next_seq: u64,
    hits: u64,
    misses: u64,
}

impl BlobCache {
    /// Opens (creating) `root` and `tmp`, rebuilds the entries from disk without references and
    /// removes crash leftovers: unknown or incomplete names in `root` and in the users'
    /// directories, staging dirs in `tmp`. The root and every user's directory get their modes
    /// and owners again ([`Owner`]); entries of a cache without users' directories (an older
    /// release's) are the agent's.
    pub fn open(root: &Path, tmp: &Path) -> io::Result<BlobCache> {
        std::fs::create_dir_all(root)?;
        owner::prepare_root(root)?;
        std::fs::create_dir_all(tmp)?;
        for dirent in std::fs::read_dir(tmp)? {
            let dirent = dirent?;
            if dirent.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                remove_any(&dirent.path());
            }
        }
        let mut found = Vec::new();
        for dirent in std::fs::read_dir(root)? {
            let dirent = dirent?;
            let path = dirent.path();
            match dirent.file_name().to_str().and_then(Owner::parse_dir) {
                Some(user) if std::fs::symlink_metadata(&path)?.is_dir() => {
                    user.prepare_dir(root).map_err(|e| {
                        io::Error::new(e.kind(), format!("cannot give {} its owner and mode: {e}", path.display()))
                    })?;
                    for dirent in std::fs::read_dir(&path)? {
                        scan_entry(&dirent?, user, &mut found)?;
                    }
                    sync_dir(&path)?;
                }
                _ => scan_entry(&dirent, Owner::Agent, &mut found)?,
            }
        }
        // Number them in LRU order so `seq` stays a valid tie-breaker.
        found.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        let mut cache = BlobCache {
            root: root.to_owned(),
            tmp: tmp.to_owned(),
            entries: BTreeMap::new(),
            next_seq: 0,
            hits: 0,
            misses: 0,
        };
        for (last_used, id, path, bytes) in found {
            let seq = cache.bump();
            let (wanted, linked) = (BTreeSet::new(), BTreeSet::new());
            cache.entries.insert(id, Entry { path, bytes, last_used, seq, wanted, linked });
        }
        sync_dir(root)?;
        Ok(cache)
    }

    /// Returns the path of `meta`'s content (the file, or with `extract` the unpacked directory),
    /// fetching and installing it on a miss. A hit touches the entry and reads nothing.
    ///
    /// The entry is the agent's own ([`Owner::Agent`]: for workers that run as the agent's user).
    /// Holds `&mut self` across the download: for a cache shared between tasks, use
    /// [`BlobCache::stage`] outside the lock and [`BlobCache::install`] under it.
    pub async fn ensure(
        &mut self,
        meta: &BlobMeta,
        extract: bool,
        timeout: Duration,
        retries: u32,
    ) -> Result<PathBuf, CacheError> {
        let id = EntryId::of(meta, extract, Owner::Agent)?;
        if let Some(path) = self.hit(&id) {
            return Ok(path);
        }
        self.count_miss();
        let staged = BlobCache::stage(meta, extract, Owner::Agent, &self.tmp, timeout, retries).await?;
        self.install(staged)
    }

    /// Whether the content is present; not a use.
    pub(crate) fn contains(&self, id: &EntryId) -> bool {
        self.entries.contains_key(id)
    }

    /// A use of a present entry: counted as a hit and touched (LRU). `None` if absent.
    pub(crate) fn hit(&mut self, id: &EntryId) -> Option<PathBuf> {
        if !self.entries.contains_key(id) {
            return None;
        }
        self.hits += 1;
        Some(self.touch(id))
    }

    /// A use that found the content absent and starts a download.
    pub(crate) fn count_miss(&mut self) {
        self.misses += 1;
    }

    /// The slow half of a miss, without the cache: fetch `meta` into `tmp` (verified), stage the
    /// entry for `owner` there (moved in, or extracted) and fsync it. Counted as a miss by `install`.
    ///
    /// If the future is dropped mid-way, a staging dir may stay in `tmp` until the next open.
    pub(crate) async fn stage(
        meta: &BlobMeta,
        extract: bool,
        owner: Owner,
        tmp: &Path,
        timeout: Duration,
        retries: u32,
    ) -> Result<Staged, CacheError> {
        let id = EntryId::of(meta, extract, owner)?;
        let kind = match (extract, meta.archive()) {
            (false, _) => None,
            (true, Some(kind)) => Some(kind),
            (true, None) => return Err(CacheError::NotAnArchive { key: meta.key.clone(), version: meta.version }),
        };
        let fetched = super::fetch(meta, tmp, timeout, retries).await?;
        let staging = tmp.join(format!("{TMP_PREFIX}{}", uuid::Uuid::new_v4()));
        let dir = staging.clone();
        // Extraction and the fsync of every file are blocking filesystem work.
        let bytes = tokio::task::spawn_blocking(move || {
            let result = stage_entry(&fetched, kind, &staging, matches!(owner, Owner::User(_)));
            // Whatever happened, neither the download nor a failed staging dir may stay behind.
            let _ = std::fs::remove_file(&fetched);
            if result.is_err() {
                remove_any(&staging);
            }
            result
        })
        .await
        .map_err(|e| CacheError::Io {
            what: "staging task failed for",
            path: dir.clone(),
            source: io::Error::other(e),
        })??;
        Ok(Staged { id, dir, bytes, key: meta.key.clone(), version: meta.version })
    }

    /// The quick half of a miss: renames a staged entry into the cache (one rename, then an fsync
    /// of the cache dir) and returns its path. An entry already present wins; the staged copy is
    /// discarded.
    pub(crate) fn install(&mut self, staged: Staged) -> Result<PathBuf, CacheError> {
        let id = staged.id.clone();
        if self.entries.contains_key(&id) {
            staged.discard();
            return Ok(self.touch(&id));
        }
        // A user's directory gets its owner and mode (again) before the entry appears in it.
        let parent = match id.owner.prepare_dir(&self.root) {
            Ok(parent) => parent,
            Err(e) => {
                staged.discard();
                let path = id.owner.dir(&self.root);
                return Err(CacheError::Io { what: "cannot prepare the owner's directory", path, source: e });
            }
        };
        let final_dir = id.dir(&self.root);
        if let Err(e) = std::fs::rename(&staged.dir, &final_dir) {
            staged.discard();
            return Err(CacheError::Io { what: "cannot install entry", path: final_dir, source: e });
        }
        sync_dir(&parent).map_err(io_err("cannot fsync", &parent))?;
        let path = entry_path(&final_dir, id.extracted);
        let seq = self.bump();
        let (wanted, linked) = (BTreeSet::new(), BTreeSet::new());
        let entry =
            Entry { path: path.clone(), bytes: staged.bytes, last_used: SystemTime::now(), seq, wanted, linked };
        self.entries.insert(id.clone(), entry);
        tracing::info!(key = %staged.key, version = staged.version, sha256 = %id.sha256, extract = id.extracted,
            owner = ?id.owner, bytes = staged.bytes, "blob installed in cache");
        Ok(path)
    }

    /// Replaces every "wanted" reference: `wanted` maps each slot and assignment to the entries
    /// its blobs currently need. Entries not present are skipped.
    pub(crate) fn set_wanted(&mut self, wanted: &BTreeMap<RefOwner, BTreeSet<EntryId>>) {
        for entry in self.entries.values_mut() {
            entry.wanted.clear();
        }
        for (owner, ids) in wanted {
            for id in ids {
                if let Some(entry) = self.entries.get_mut(id) {
                    entry.wanted.insert(owner.clone());
                }
            }
        }
    }

    /// Makes `ids` exactly the entries `owner`'s workers link to. All or nothing: if one is not
    /// present, nothing changes and its id is returned.
    pub(crate) fn set_linked(&mut self, owner: &RefOwner, ids: &BTreeSet<EntryId>) -> Result<(), EntryId> {
        if let Some(missing) = ids.iter().find(|id| !self.entries.contains_key(id)) {
            return Err(missing.clone());
        }
        for (id, entry) in &mut self.entries {
            if ids.contains(id) {
                entry.linked.insert(owner.clone());
            } else {
                entry.linked.remove(owner);
            }
        }
        Ok(())
    }

    /// The entry whose content `path` (a link target) is, if it lies in this cache; its owner
    /// is the directory it lies in.
    pub(crate) fn entry_of(&self, path: &Path) -> Option<EntryId> {
        let mut names = path.strip_prefix(&self.root).ok()?.components().map(|c| c.as_os_str().to_str());
        let first = names.next()??;
        match Owner::parse_dir(first) {
            Some(user) => EntryId::parse(names.next()??, user),
            None => EntryId::parse(first, Owner::Agent),
        }
    }

    /// Adds a reference so `cleanup` keeps the entry; false (and nothing done) if it is unknown.
    /// Tests only: the daemon sets an entry's references from the links it makes.
    #[cfg(test)]
    pub(crate) fn add_ref(&mut self, id: &EntryId, owner: RefOwner) -> bool {
        match self.entries.get_mut(id) {
            Some(entry) => {
                entry.linked.insert(owner);
                true
            }
            None => false,
        }
    }

    /// Drops every reference held by `owner` (the slot left that assignment).
    pub(crate) fn release(&mut self, owner: &RefOwner) {
        for entry in self.entries.values_mut() {
            entry.linked.remove(owner);
        }
    }

    /// While the total is above `target_bytes`, removes unreferenced entries, least recently
    /// used first; and every unreferenced entry whose owner is not `usable` (no worker can be
    /// given it under the current `run_as_user`, [`Owner::usable`]) whatever the size.
    /// Referenced entries are never removed, so the total may stay above target. Returns the
    /// ids removed.
    pub(crate) fn cleanup(&mut self, target_bytes: u64, usable: impl Fn(Owner) -> bool) -> Vec<EntryId> {
        let mut candidates: Vec<_> = self
            .entries
            .iter()
            .filter(|(_, e)| !e.referenced())
            .map(|(id, e)| (e.last_used, e.seq, id.clone()))
            .collect();
        candidates.sort();
        let mut total = self.total_bytes();
        let mut removed = Vec::new();
        let mut parents = BTreeSet::new();
        for (_, _, id) in candidates {
            if total <= target_bytes && usable(id.owner) {
                continue;
            }
            let dir = id.dir(&self.root);
            let doomed = self.tmp.join(format!("{TMP_PREFIX}{}", uuid::Uuid::new_v4()));
            // Rename first: the entry vanishes in one step, and a crash mid-delete leaves only a
            // staging leftover in tmp, never a half-deleted entry that looks complete.
            if let Err(e) = std::fs::rename(&dir, &doomed) {
                tracing::warn!(path = %dir.display(), error = %e, "cannot remove blob cache entry; keeping it");
                continue;
            }
            remove_any(&doomed);
            let entry = self.entries.remove(&id).expect("candidate comes from entries");
            total -= entry.bytes;
            tracing::info!(sha256 = %id.sha256, extracted = id.extracted, owner = ?id.owner, bytes = entry.bytes,
                "blob cache entry removed");
            parents.insert(id.owner.dir(&self.root));
            removed.push(id);
        }
        for parent in parents {
            if let Err(e) = sync_dir(&parent) {
                tracing::warn!(path = %parent.display(), error = %e, "cannot fsync blob cache dir");
            }
        }
        removed
    }

    pub(crate) fn total_bytes(&self) -> u64 {
        self.entries.values().map(|e| e.bytes).sum()
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            entries: self.entries.len(),
            bytes: self.total_bytes(),
            hits: self.hits,
            misses: self.misses,
            referenced: self.entries.values().filter(|e| e.referenced()).count(),
        }
    }

    /// The path of an entry, if present; does not count as a use.
    pub(crate) fn path(&self, id: &EntryId) -> Option<&Path> {
        self.entries.get(id).map(|e| e.path.as_path())
    }

    /// Marks `id` (present) as just used; persists that as the dir's mtime, best effort, so the
    /// LRU order roughly survives a restart.
    fn touch(&mut self, id: &EntryId) -> PathBuf {
        let seq = self.bump();
        let now = SystemTime::now();
        let entry = self.entries.get_mut(id).expect("touch of a present entry");
        entry.last_used = now;
        entry.seq = seq;
        let dir = id.dir(&self.root);
        if let Err(e) = open_dir_nofollow(&dir).and_then(|f| f.set_modified(now)) {
            tracing::debug!(path = %dir.display(), error = %e, "cannot record blob use time");
        }
        entry.path.clone()
    }

    fn bump(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }
}

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;
