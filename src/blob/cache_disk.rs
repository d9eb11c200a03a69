//! The blob cache's file operations: scanning an owner's directory at open, staging an entry,
//! measuring, fsyncing and removing trees. Nothing here follows a symlink it did not make: a
//! user's directory may hold what that user put there (see the owner module).

use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{CacheError, EntryId, Owner, PLAIN_FILE, io_err};

/// An entry found on disk by [`BlobCache::open`]: last use, id, content path, bytes.
pub(super) type Found = (SystemTime, EntryId, PathBuf, u64);

/// One name in `owner`'s directory: a complete entry joins `found`; anything else is a crash
/// leftover (or was never the cache's) and is removed.
pub(super) fn scan_entry(dirent: &std::fs::DirEntry, owner: Owner, found: &mut Vec<Found>) -> io::Result<()> {
    let path = dirent.path();
    let id = dirent.file_name().to_str().and_then(|name| EntryId::parse(name, owner));
    let meta = std::fs::symlink_metadata(&path)?;
    // A plain entry is a dir holding a regular `file`; an extracted one a dir.
    let complete = |id: &EntryId| {
        meta.is_dir() && (id.extracted || std::fs::symlink_metadata(path.join(PLAIN_FILE)).is_ok_and(|m| m.is_file()))
    };
    match id {
        Some(id) if complete(&id) => {
            let last_used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            let content = entry_path(&path, id.extracted);
            found.push((last_used, id, content, tree_bytes(&path)?));
        }
        _ => {
            tracing::warn!(path = %path.display(), "removing incomplete or unknown blob cache entry");
            remove_any(&path);
        }
    }
    Ok(())
}

/// Where a caller finds the content of the entry whose directory is `dir`.
pub(super) fn entry_path(dir: &Path, extracted: bool) -> PathBuf {
    if extracted { dir.to_owned() } else { dir.join(PLAIN_FILE) }
}

/// Stages `fetched` into `staging` (moved in, or extracted) and fsyncs it. Returns its size.
/// With `for_user`, everything in it is made readable by whoever may enter the user's directory
/// (see [`open_to_user`]).
pub(super) fn stage_entry(
    fetched: &Path,
    kind: Option<crate::blob::Archive>,
    staging: &Path,
    for_user: bool,
) -> Result<u64, CacheError> {
    match kind {
        Some(kind) => crate::blob::extract(fetched, kind, staging)?,
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
    if for_user {
        open_to_user(staging).map_err(io_err("cannot open to its user", staging))?;
    }
    sync_tree(staging).map_err(io_err("cannot fsync", staging))?;
    tree_bytes(staging).map_err(io_err("cannot measure", staging))
}

/// Adds read permission (and search, and execute where the owner has it) for everyone to every
/// file and directory of a user's entry. Only that user (and root) can enter the directory the
/// entry lives in, and the files stay the agent's: the user reads and runs them, and cannot
/// change them. Without it, an archive's 0600 file (or the agent's umask) would leave a user
/// unable to read its own blob. Never adds a special bit, never follows a link.
pub(super) fn open_to_user(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(path)?;
    let mode = meta.permissions().mode() & 0o777;
    let wanted = if meta.is_dir() {
        mode | 0o555
    } else if meta.is_file() {
        mode | 0o444 | if mode & 0o100 != 0 { 0o111 } else { 0 }
    } else {
        return Ok(());
    };
    if wanted != meta.permissions().mode() & 0o7777 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(wanted))?;
    }
    if meta.is_dir() {
        for dirent in std::fs::read_dir(path)? {
            open_to_user(&dirent?.path())?;
        }
    }
    Ok(())
}

/// Sum of file (and symlink) lengths under `path`, not following links.
pub(super) fn tree_bytes(path: &Path) -> io::Result<u64> {
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
pub(super) fn sync_tree(path: &Path) -> io::Result<()> {
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

/// Opens a directory, refusing a symlink in its place: a user's directory is writable by its
/// user once it changes the mode, and the agent must not be led to touch what a link names.
pub(super) fn open_dir_nofollow(dir: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let flags = nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_DIRECTORY;
    std::fs::OpenOptions::new().read(true).custom_flags(flags.bits()).open(dir)
}

pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Best-effort removal of a file or tree; a failure leaves something the next open sweeps.
pub(super) fn remove_any(path: &Path) {
    let result = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => return,
    };
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove blob cache leftover");
    }
}
