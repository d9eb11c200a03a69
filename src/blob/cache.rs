//! The blob cache: content addressed, reference counted, least-recently-used past a target size.
//!
//! Layout under `root` (`<local_dir>/blobs`), one entry per (sha256, extracted?):
//! ```text
//! <root>/<sha256>/file    a plain blob (a directory, so installing it is one directory rename)
//! <root>/<sha256>.x/      an archive extracted
//! ```
//! A miss fetches into `tmp` (`<local_dir>/tmp`), stages the entry there (`cache-<uuid>`:
//! the file moved in, or the archive extracted), fsyncs the staged tree, renames it into `root`
//! and fsyncs `root`. Removal renames the entry out into `tmp` first, then deletes it.
//!
//! Invariants:
//! - An entry name in `root` is only ever a complete, fsynced entry: it appears and disappears
//!   with one rename each. Anything else found there by [`BlobCache::open`] is a leftover of a
//!   crash and is removed, as are `cache-*` staging dirs in `tmp`.
//! - One download per blob version however many slots want it: an entry present is a hit.
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
use crate::cluster::blob_meta::is_sha256_hex;

/// Prefix of everything the cache stages or deletes in `tmp`; `open` sweeps it.
const TMP_PREFIX: &str = "cache-";
/// Suffix of an extracted entry's name.
const EXTRACTED_SUFFIX: &str = ".x";
/// Name of the content file inside a plain entry.
const PLAIN_FILE: &str = "file";

/// Which entry: one blob content, as a plain file or extracted.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryId {
    pub sha256: String,
    pub extracted: bool,
}

impl EntryId {
    fn dir_name(&self) -> String {
        if self.extracted { format!("{}{EXTRACTED_SUFFIX}", self.sha256) } else { self.sha256.clone() }
    }

    /// The inverse of `dir_name`; `None` for a name the cache never writes.
    fn parse(name: &str) -> Option<EntryId> {
        let (sha, extracted) = match name.strip_suffix(EXTRACTED_SUFFIX) {
            Some(sha) => (sha, true),
            None => (name, false),
        };
        is_sha256_hex(sha).then(|| EntryId { sha256: sha.to_owned(), extracted })
    }
}

/// Who holds a reference: (slot port, topology id), one per slot and assignment.
pub type RefOwner = (u16, String);

#[derive(Debug)]
struct Entry {
    /// What a caller uses: the plain file, or the extracted directory.
    path: PathBuf,
    bytes: u64,
    last_used: SystemTime,
    seq: u64,
    refs: BTreeSet<RefOwner>,
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
    /// removes crash leftovers: unknown or incomplete names in `root`, staging dirs in `tmp`.
    pub fn open(root: &Path, tmp: &Path) -> io::Result<BlobCache> {
        std::fs::create_dir_all(root)?;
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
            let id = dirent.file_name().to_str().and_then(EntryId::parse);
            let meta = std::fs::symlink_metadata(&path)?;
            // A plain entry is a dir holding a regular `file`; an extracted one a dir.
            let complete = |id: &EntryId| {
                meta.is_dir()
                    && (id.extracted || std::fs::symlink_metadata(path.join(PLAIN_FILE)).is_ok_and(|m| m.is_file()))
            };
            match id {
                Some(id) if complete(&id) => {
                    let last_used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    found.push((last_used, id.clone(), entry_path(&path, id.extracted), tree_bytes(&path)?));
                }
                _ => {
                    tracing::warn!(path = %path.display(), "removing incomplete or unknown blob cache entry");
                    remove_any(&path);
                }
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
            cache.entries.insert(id, Entry { path, bytes, last_used, seq, refs: BTreeSet::new() });
        }
        sync_dir(root)?;
        Ok(cache)
    }

    /// Returns the path of `meta`'s content (the file, or with `extract` the unpacked directory),
    /// fetching and installing it on a miss. A hit touches the entry and reads nothing.
    ///
    /// Not for concurrent use on one id: the caller serializes calls (module docs). If the future
    /// is dropped mid-way, no entry appears; a staging dir may stay in `tmp` until the next open.
    pub async fn ensure(
        &mut self,
        meta: &BlobMeta,
        extract: bool,
        timeout: Duration,
        retries: u32,
    ) -> Result<PathBuf, CacheError> {
        // The digest becomes a path component: it must be exactly the form we expect.
        if !is_sha256_hex(&meta.sha256) {
            return Err(CacheError::BadDigest {
                key: meta.key.clone(),
                version: meta.version,
                sha256: meta.sha256.clone(),
            });
        }
        let id = EntryId { sha256: meta.sha256.clone(), extracted: extract };
        if self.entries.contains_key(&id) {
            self.hits += 1;
            return Ok(self.touch(&id));
        }
        self.misses += 1;
        let kind = match (extract, meta.archive()) {
            (false, _) => None,
            (true, Some(kind)) => Some(kind),
            (true, None) => return Err(CacheError::NotAnArchive { key: meta.key.clone(), version: meta.version }),
        };
        let fetched = super::fetch(meta, &self.tmp, timeout, retries).await?;
        let staging = self.tmp.join(format!("{TMP_PREFIX}{}", uuid::Uuid::new_v4()));
        let final_dir = self.root.join(id.dir_name());
        let root = self.root.clone();
        // Extraction, fsync of every file and the renames are blocking filesystem work.
        let bytes = tokio::task::spawn_blocking(move || {
            let result = install(&fetched, kind, &staging, &final_dir, &root);
            // Whatever happened, neither the download nor a staging dir may stay behind.
            let _ = std::fs::remove_file(&fetched);
            if result.is_err() {
                remove_any(&staging);
            }
            result
        })
        .await
        .map_err(|e| CacheError::Io {
            what: "install task failed for",
            path: self.root.clone(),
            source: io::Error::other(e),
        })??;
        let path = entry_path(&self.root.join(id.dir_name()), extract);
        let seq = self.bump();
        let entry = Entry { path: path.clone(), bytes, last_used: SystemTime::now(), seq, refs: BTreeSet::new() };
        self.entries.insert(id, entry);
        tracing::info!(key = %meta.key, version = meta.version, sha256 = %meta.sha256, extract, bytes,
            "blob installed in cache");
        Ok(path)
    }

    /// Adds a reference so `cleanup` keeps the entry; false (and nothing done) if it is unknown.
    pub fn add_ref(&mut self, id: &EntryId, owner: RefOwner) -> bool {
        match self.entries.get_mut(id) {
            Some(entry) => {
                entry.refs.insert(owner);
                true
            }
            None => false,
        }
    }

    /// Drops every reference held by `owner` (the slot left that assignment).
    pub fn release(&mut self, owner: &RefOwner) {
        for entry in self.entries.values_mut() {
            entry.refs.remove(owner);
        }
    }

    /// While the total is above `target_bytes`, removes unreferenced entries, least recently
    /// used first. Referenced entries are never removed, so the total may stay above target.
    /// Returns the ids removed.
    pub fn cleanup(&mut self, target_bytes: u64) -> Vec<EntryId> {
        let mut candidates: Vec<_> = self
            .entries
            .iter()
            .filter(|(_, e)| e.refs.is_empty())
            .map(|(id, e)| (e.last_used, e.seq, id.clone()))
            .collect();
        candidates.sort();
        let mut total = self.total_bytes();
        let mut removed = Vec::new();
        for (_, _, id) in candidates {
            if total <= target_bytes {
                break;
            }
            let dir = self.root.join(id.dir_name());
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
            tracing::info!(sha256 = %id.sha256, extracted = id.extracted, bytes = entry.bytes,
                "blob cache entry removed");
            removed.push(id);
        }
        if !removed.is_empty()
            && let Err(e) = sync_dir(&self.root)
        {
            tracing::warn!(path = %self.root.display(), error = %e, "cannot fsync blob cache dir");
        }
        removed
    }

    pub fn total_bytes(&self) -> u64 {
        self.entries.values().map(|e| e.bytes).sum()
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            entries: self.entries.len(),
            bytes: self.total_bytes(),
            hits: self.hits,
            misses: self.misses,
            referenced: self.entries.values().filter(|e| !e.refs.is_empty()).count(),
        }
    }

    /// The path of an entry, if present; does not count as a use.
    pub fn path(&self, id: &EntryId) -> Option<&Path> {
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
        let dir = self.root.join(id.dir_name());
        if let Err(e) = std::fs::File::open(&dir).and_then(|f| f.set_modified(now)) {
            tracing::debug!(path = %dir.display(), error = %e, "cannot record blob use time");
        }
        entry.path.clone()
    }

    fn bump(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }
}

/// Where a caller finds the content of the entry whose directory is `dir`.
fn entry_path(dir: &Path, extracted: bool) -> PathBuf {
    if extracted { dir.to_owned() } else { dir.join(PLAIN_FILE) }
}

/// Stages `fetched` into `staging` (moved in, or extracted), fsyncs it, renames it to
/// `final_dir` and fsyncs `root`. Returns the entry's size.
fn install(
    fetched: &Path,
    kind: Option<super::Archive>,
    staging: &Path,
    final_dir: &Path,
    root: &Path,
) -> Result<u64, CacheError> {
    match kind {
        Some(kind) => super::extract(fetched, kind, staging)?,
        None => {
            std::fs::create_dir(staging).map_err(io_err("cannot create staging dir", staging))?;
            let file = staging.join(PLAIN_FILE);
            // Same filesystem (both in tmp), so a rename; fetch already fsynced the content.
            std::fs::rename(fetched, &file).map_err(io_err("cannot move download to", &file))?;
        }
    }
    // The entry dir's mtime is its persisted last use (an archive may have set an old one).
    if let Err(e) = std::fs::File::open(staging).and_then(|f| f.set_modified(SystemTime::now())) {
        tracing::debug!(path = %staging.display(), error = %e, "cannot record blob use time");
    }
    sync_tree(staging).map_err(io_err("cannot fsync", staging))?;
    let bytes = tree_bytes(staging).map_err(io_err("cannot measure", staging))?;
    std::fs::rename(staging, final_dir).map_err(io_err("cannot install entry", final_dir))?;
    sync_dir(root).map_err(io_err("cannot fsync", root))?;
    Ok(bytes)
}

/// Sum of file (and symlink) lengths under `path`, not following links.
fn tree_bytes(path: &Path) -> io::Result<u64> {
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        return Ok(meta.len());
    }
    let mut total = 0;
    for dirent in std::fs::read_dir(path)? {
        total += tree_bytes(&dirent?.path())?;
    }
    Ok(total)
}

/// Fsyncs every regular file and directory under `path` (extract does not), so the entry is
/// durable before its name is.
fn sync_tree(path: &Path) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        for dirent in std::fs::read_dir(path)? {
            sync_tree(&dirent?.path())?;
        }
        sync_dir(path)
    } else if meta.is_file() {
        std::fs::File::open(path)?.sync_all()
    } else {
        // A symlink's target string is in its directory entry, which the dir fsync covers.
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Best-effort removal of a file or tree; a failure leaves something the next open sweeps.
fn remove_any(path: &Path) {
    let result = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => return,
    };
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove blob cache leftover");
    }
}

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;
