//! [`LocalState`]: opening a state directory, typed reads, and the crash-safe write path.
//!
//! The in-memory map is only replaced after a new version is durable, so a failed write leaves
//! both memory and disk as they were. Version names are chosen past every name ever seen in the
//! directory (including corrupt versions and torn leftovers), so a new write always becomes the
//! newest version, even when the newest one on disk is unreadable.

use std::collections::BTreeMap;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::{debug, info, warn};

use super::error::{StateError, WriteStep};
use super::format::{self, Decoded, Entries};
use super::keys::Key;
use super::scan::{self, data_path, marker_path, temp_path};
use super::stored::{self, FORMAT_VERSION};

/// How many versions are kept; older ones are deleted once a new version is durable.
pub(crate) const KEEP_VERSIONS: usize = 4;

/// The local state of one supervisor, backed by a versioned directory.
#[derive(Debug)]
pub struct LocalState {
    dir: PathBuf,
    /// The directory, opened once, for its fsyncs (`None` until the first write of a store
    /// opened read-only).
    dir_file: Option<File>,
    /// The versions with files in the directory and whether each has its marker: read once at
    /// open, then kept up to date by this store's own writes and prunes (the agent holds the
    /// local dir's lock, so nothing else writes here), so a write lists nothing.
    on_disk: BTreeMap<u64, bool>,
    /// Newest version read or written; `None` for a fresh store.
    version: Option<u64>,
    /// Highest version name seen in the directory or attempted by us; the next write goes past it.
    highest_seen: Option<u64>,
    entries: Entries,
    /// Milliseconds since the unix epoch; replaceable so tests can freeze or rewind it.
    clock: fn() -> u64,
    #[cfg(test)]
    pub(super) fail_at: Option<WriteStep>,
}

/// Changes made inside [`LocalState::update`], written together as one version.
#[derive(Debug)]
pub(crate) struct Batch {
    entries: Entries,
    /// Tests only, for [`Batch::get`].
    #[cfg(test)]
    version: Option<u64>,
}

impl Batch {
    /// Reads a key as it stands in this batch (including its own changes). Tests only: the
    /// daemon's updates write without reading.
    #[cfg(test)]
    pub(crate) fn get<K: Key>(&self) -> Result<Option<K::Value>, StateError> {
        decode_value::<K>(&self.entries, self.version)
    }

    pub(crate) fn put<K: Key>(&mut self, value: &K::Value) -> Result<(), StateError> {
        let bytes =
            stored::encode(&K::to_stored(value)).map_err(|source| StateError::Encode { key: K::NAME, source })?;
        self.entries.insert(K::NAME.to_owned(), bytes);
        Ok(())
    }

    /// Removes a key (absent afterwards, as in a store that never had it).
    pub(crate) fn remove<K: Key>(&mut self) {
        self.entries.remove(K::NAME);
    }
}

impl LocalState {
    /// Opens (creating the directory if missing, mode 0700) and reads the newest good version;
    /// cleans leftovers of torn writes.
    pub fn open(dir: &Path) -> Result<LocalState, StateError> {
        Self::open_with_clock(dir, system_now_ms)
    }

    /// Reads the newest good version without creating, cleaning or writing anything (for
    /// commands that run beside a live agent). `None` if the directory does not exist.
    pub fn read_only(dir: &Path) -> Result<Option<LocalState>, StateError> {
        if !dir.exists() {
            return Ok(None);
        }
        let (listing, version, entries) = Self::read_newest(dir)?;
        Ok(Some(LocalState {
            dir: dir.to_owned(),
            dir_file: None,
            on_disk: on_disk(&listing),
            version,
            highest_seen: listing.keys().next_back().copied(),
            entries,
            clock: system_now_ms,
            #[cfg(test)]
            fail_at: None,
        }))
    }

    /// The directory listing and the newest version that checks out, in the current format.
    fn read_newest(dir: &Path) -> Result<(scan::Listing, Option<u64>, Entries), StateError> {
        let listing = scan::scan(dir).map_err(|source| StateError::ReadDir { dir: dir.to_owned(), source })?;
        refuse_newer_format(dir, &listing)?;

        let mut newest_good = None;
        let mut defects = Vec::new();
        for (&version, _) in listing.iter().rev().filter(|(_, files)| files.marker) {
            let path = data_path(dir, version);
            match format::read_version(&path) {
                Ok(decoded) => {
                    newest_good = Some((version, decoded));
                    break;
                }
                Err(reason) => {
                    warn!(path = %path.display(), version, %reason, "skipping unreadable local state version");
                    defects.push((version, reason));
                }
            }
        }
        let (version, entries) = match newest_good {
            Some((version, Decoded { format, entries })) => (Some(version), migrate(dir, version, format, entries)?),
            None if defects.is_empty() => (None, Entries::new()),
            None => {
                let count = defects.len();
                let (newest, reason) = defects.swap_remove(0);
                return Err(StateError::NoReadableVersion { dir: dir.to_owned(), count, newest, reason });
            }
        };

        Ok((listing, version, entries))
    }

    pub(super) fn open_with_clock(dir: &Path, clock: fn() -> u64) -> Result<LocalState, StateError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| StateError::CreateDir { dir: dir.to_owned(), source })?;
        let (listing, version, entries) = Self::read_newest(dir)?;

        // Cleaning only after a successful read: a directory we refuse to start on is left
        // exactly as found for whoever investigates it.
        for (&v, files) in &listing {
            if files.temp {
                remove_leftover(&temp_path(dir, v));
            }
            if files.data && !files.marker {
                remove_leftover(&data_path(dir, v));
            }
        }
        debug!(dir = %dir.display(), ?version, keys = entries.len(), "opened local state");
        let dir_file = File::open(dir).map_err(|source| StateError::ReadDir { dir: dir.to_owned(), source })?;
        Ok(LocalState {
            dir: dir.to_owned(),
            dir_file: Some(dir_file),
            on_disk: on_disk(&scan::scan(dir).map_err(|source| StateError::ReadDir { dir: dir.to_owned(), source })?),
            version,
            highest_seen: listing.keys().next_back().copied(),
            entries,
            clock,
            #[cfg(test)]
            fail_at: None,
        })
    }

    /// The newest version read or written; `None` for a fresh, never written store. Tests only.
    #[cfg(test)]
    pub(crate) fn version(&self) -> Option<u64> {
        self.version
    }

    pub fn get<K: Key>(&self) -> Result<Option<K::Value>, StateError> {
        decode_value::<K>(&self.entries, self.version)
    }

    /// Writes one new version with `key` set to `value`; returns the version.
    pub fn put<K: Key>(&mut self, value: &K::Value) -> Result<u64, StateError> {
        self.update(|batch| batch.put::<K>(value))
    }

    /// Applies several changes and writes them as ONE new version (atomic together). If `f`
    /// fails, nothing is written.
    pub(crate) fn update(&mut self, f: impl FnOnce(&mut Batch) -> Result<(), StateError>) -> Result<u64, StateError> {
        let mut batch = Batch {
            entries: self.entries.clone(),
            #[cfg(test)]
            version: self.version,
        };
        f(&mut batch)?;
        let bytes = format::encode(&batch.entries).map_err(|source| StateError::EncodePayload { source })?;
        let version = next_version(self.highest_seen, (self.clock)());
        // Even a failed attempt may leave a file behind if cleanup fails too; never reuse its name.
        self.highest_seen = Some(version);
        if let Err(e) = self.write_version(version, &bytes) {
            if !self.remove_version_files(version) {
                self.on_disk.insert(version, false);
            }
            return Err(e);
        }
        self.on_disk.insert(version, true);
        self.entries = batch.entries;
        self.version = Some(version);
        self.prune();
        Ok(version)
    }

    /// SPEC §5's protocol: temp file, fsync, rename, marker, fsync of the directory. One
    /// directory fsync covers the rename and the marker: a crash that keeps the marker but not
    /// the rename leaves a version whose data file is missing, which reading skips (it takes the
    /// newest version that checks out), as it skips a torn one.
    fn write_version(&mut self, version: u64, bytes: &[u8]) -> Result<(), StateError> {
        let dir = &self.dir;
        let (temp, data, marker) = (temp_path(dir, version), data_path(dir, version), marker_path(dir, version));
        let mut file = self.step(WriteStep::CreateTemp, &temp, version, || {
            OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&temp)
        })?;
        self.step(WriteStep::WriteTemp, &temp, version, || file.write_all(bytes))?;
        self.step(WriteStep::SyncTemp, &temp, version, || file.sync_all())?;
        drop(file);
        self.step(WriteStep::Rename, &data, version, || fs::rename(&temp, &data))?;
        self.step(WriteStep::CreateMarker, &marker, version, || create_marker(&data, &marker))?;
        if self.dir_file.is_none() {
            self.dir_file = Some(self.step(WriteStep::SyncDir, dir, version, || File::open(dir))?);
        }
        let dir_file = self.dir_file.as_ref().expect("opened above");
        self.step(WriteStep::SyncDir, &self.dir, version, || dir_file.sync_all())
    }

    /// Runs one step of the write protocol, attaching its context to a failure.
    fn step<T>(
        &self,
        step: WriteStep,
        path: &Path,
        version: u64,
        op: impl FnOnce() -> io::Result<T>,
    ) -> Result<T, StateError> {
        #[cfg(test)]
        if self.fail_at == Some(step) {
            return Err(StateError::Write {
                step,
                path: path.to_owned(),
                version,
                source: io::ErrorKind::StorageFull.into(),
            });
        }
        op().map_err(|source| StateError::Write { step, path: path.to_owned(), version, source })
    }

    /// Deletes every version older than the newest [`KEEP_VERSIONS`] markers. Runs only after
    /// the newest is durable; failures are logged, not returned, since the write itself
    /// succeeded, and a version that could not be removed is tried again at the next prune.
    fn prune(&mut self) {
        let mut markers = self.on_disk.iter().rev().filter(|(_, marker)| **marker).map(|(&v, _)| v);
        let Some(oldest_kept) = markers.nth(KEEP_VERSIONS - 1) else {
            return;
        };
        let old: Vec<u64> = self.on_disk.range(..oldest_kept).map(|(&v, _)| v).collect();
        for version in old {
            debug!(version, "pruning old local state version");
            if self.remove_version_files(version) {
                self.on_disk.remove(&version);
            }
        }
    }

    /// Removes a version's files, marker first: a crash midway then leaves a data file without
    /// marker (a leftover `open` cleans up), never a marker pointing at nothing. False if a
    /// file is still there.
    fn remove_version_files(&self, version: u64) -> bool {
        let mut removed = true;
        for path in [marker_path(&self.dir, version), data_path(&self.dir, version), temp_path(&self.dir, version)] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "cannot remove local state file");
                    removed = false;
                }
            }
        }
        removed
    }

    #[cfg(test)]
    pub(super) fn set_clock(&mut self, clock: fn() -> u64) {
        self.clock = clock;
    }
}

/// Refuses a directory in which any version (not only the newest) was written in a format
/// newer than this build's: reading an older version beside it would run on stale state, and
/// resetting would lose the identity. Only versions with a marker count; a torn write is not
/// a state anyone ran on.
fn refuse_newer_format(dir: &Path, listing: &scan::Listing) -> Result<(), StateError> {
    let newer = listing
        .iter()
        .filter(|(_, files)| files.marker)
        .filter_map(|(&version, _)| format::peek_format(&data_path(dir, version)))
        .filter(|found| *found > FORMAT_VERSION)
        .max();
    match newer {
        Some(found) => Err(StateError::NewerFormat { dir: dir.to_owned(), found }),
        None => Ok(()),
    }
}

/// Brings a version read in an older format to the current one, in memory; the next write
/// stores the current format.
fn migrate(dir: &Path, version: u64, format: u32, entries: Entries) -> Result<Entries, StateError> {
    if format == FORMAT_VERSION {
        return Ok(entries);
    }
    info!(dir = %dir.display(), version, format, current = FORMAT_VERSION,
        "read local state written in an older format; the next write stores the current one");
    stored::migrate(format, entries).map_err(|source| StateError::Migrate { dir: dir.to_owned(), version, source })
}

fn decode_value<K: Key>(entries: &Entries, version: Option<u64>) -> Result<Option<K::Value>, StateError> {
    let Some(bytes) = entries.get(K::NAME) else {
        return Ok(None);
    };
    stored::decode::<K::Stored>(bytes).map(|stored| Some(K::from_stored(stored))).map_err(|source| StateError::Decode {
        key: K::NAME,
        ty: std::any::type_name::<K::Stored>(),
        version,
        source,
    })
}

/// The name for a new version: the clock, unless that would not be past every existing name.
pub(super) fn next_version(highest_seen: Option<u64>, now_ms: u64) -> u64 {
    match highest_seen {
        Some(highest) if now_ms <= highest => highest + 1,
        _ => now_ms,
    }
}

fn system_now_ms() -> u64 {
    // A clock before 1970 reads as 0, which next_version bumps past the newest version anyway.
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The marker of the version in `data`: a hard link to the data file, which allocates no inode
/// (under restart churn ext4 makes a new inode cost about as much as an fsync: it skips inodes
/// freed in the last minute). Only its name is ever read. Where the filesystem has no hard
/// links, an empty file, as earlier releases wrote.
fn create_marker(data: &Path, marker: &Path) -> io::Result<()> {
    // `create_new`: a marker that is there already may be a link to a data file, never truncated.
    fs::hard_link(data, marker)
        .or_else(|_| OpenOptions::new().write(true).create_new(true).mode(0o600).open(marker).map(drop))
}

/// The versions of `listing` and whether each has its marker.
fn on_disk(listing: &scan::Listing) -> BTreeMap<u64, bool> {
    listing.iter().map(|(&v, files)| (v, files.marker)).collect()
}

fn remove_leftover(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {
            info!(path = %path.display(), "removed leftover of an interrupted local state write")
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot remove leftover of an interrupted local state write")
        }
    }
}
