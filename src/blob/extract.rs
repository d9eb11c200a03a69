//! Unpacks a verified archive into a new directory, refusing anything that escapes it.
//!
//! Every entry is checked before it is written: its path must be relative without `..`; it must
//! not pass through (or replace) a symlink the archive created earlier, since a link followed
//! at a different depth could resolve outside; a symlink's target must stay inside `dest` when
//! resolved from the link's own directory; a hard link may only name a regular file unpacked
//! before it (a hard link to a symlink would move the symlink, and its relative target, to a
//! new depth); devices, fifos and unknown entry types are refused. Any refusal or I/O error
//! removes `dest` entirely, so a caller never sees a half-extracted tree.
//!
//! Sync on purpose (the archive crates are sync): callers run it in `spawn_blocking`.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::path::{Component, Path, PathBuf};

use super::BlobError;
use super::meta::Archive;

/// Unpacks `archive` (of `kind`) into `dest`, which must not exist yet and is created.
pub(crate) fn extract(archive: &Path, kind: Archive, dest: &Path) -> Result<(), BlobError> {
    let io_err = |source| BlobError::Extract { archive: archive.to_owned(), dest: dest.to_owned(), source };
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(io_err)?;
    }
    match std::fs::create_dir(dest) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(BlobError::DestExists { archive: archive.to_owned(), dest: dest.to_owned() });
        }
        Err(e) => return Err(io_err(e)),
    }
    let result = match kind {
        Archive::TarGz => extract_tar_gz(archive, dest),
        Archive::Zip => extract_zip(archive, dest),
    };
    if result.is_err() {
        // Best effort: a leftover dir is in the cache's area and found by its cleanup.
        let _ = std::fs::remove_dir_all(dest);
    }
    result
}

/// What one entry is, as far as the safety checks care.
enum Kind<'a> {
    Dir,
    File,
    Symlink(&'a Path),
    HardLink(&'a Path),
}

/// The checks of the module docs, with what the archive has created so far.
struct Guard<'a> {
    archive: &'a Path,
    symlinks: HashSet<PathBuf>,
    files: HashSet<PathBuf>,
}

impl<'a> Guard<'a> {
    fn new(archive: &'a Path) -> Guard<'a> {
        Guard { archive, symlinks: HashSet::new(), files: HashSet::new() }
    }

    fn refuse(&self, entry: &Path, reason: impl Into<String>) -> BlobError {
        BlobError::UnsafeEntry {
            archive: self.archive.to_owned(),
            entry: entry.display().to_string(),
            reason: reason.into(),
        }
    }

    /// Checks `entry`; returns its normalized relative path (empty for the root itself).
    fn check(&mut self, entry: &Path, kind: Kind<'_>) -> Result<PathBuf, BlobError> {
        let rel = relative(entry).map_err(|reason| self.refuse(entry, reason))?;
        if rel.as_os_str().is_empty() && !matches!(kind, Kind::Dir) {
            return Err(self.refuse(entry, "empty path"));
        }
        if rel.ancestors().any(|a| self.symlinks.contains(a)) {
            return Err(self.refuse(entry, "path goes through a symlink in the archive"));
        }
        match kind {
            Kind::Dir => {}
            Kind::File => {
                self.files.insert(rel.clone());
            }
            Kind::Symlink(target) => {
                if !link_stays_inside(&rel, target) {
                    return Err(self.refuse(entry, format!("symlink to `{}` points outside", target.display())));
                }
                self.symlinks.insert(rel.clone());
            }
            Kind::HardLink(target) => {
                let ok = relative(target).is_ok_and(|t| self.files.contains(&t));
                if !ok {
                    let reason = format!("hard link to `{}` is not a regular file of this archive", target.display());
                    return Err(self.refuse(entry, reason));
                }
                self.files.insert(rel.clone());
            }
        }
        Ok(rel)
    }
}

/// `path` as plain relative components, or why it is not one.
fn relative(path: &Path) -> Result<PathBuf, &'static str> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err("`..` in path"),
            Component::RootDir | Component::Prefix(_) => return Err("absolute path"),
        }
    }
    Ok(out)
}

/// Whether a symlink at `link` (relative to dest) with `target` resolves inside dest; lexical,
/// which is sound because no entry may go through a symlink of the archive.
fn link_stays_inside(link: &Path, target: &Path) -> bool {
    let mut depth = link.components().count().saturating_sub(1);
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir if depth > 0 => depth -= 1,
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

fn extract_tar_gz(archive: &Path, dest: &Path) -> Result<(), BlobError> {
    let io_err = |source| BlobError::Extract { archive: archive.to_owned(), dest: dest.to_owned(), source };
    let file = File::open(archive).map_err(io_err)?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(io::BufReader::new(file)));
    let mut guard = Guard::new(archive);
    for entry in tar.entries().map_err(io_err)? {
        let mut entry = entry.map_err(io_err)?;
        let path = entry.path().map_err(io_err)?.into_owned();
        let link = entry.link_name().map_err(io_err)?.map(|l| l.into_owned());
        let kind = match (entry.header().entry_type(), &link) {
            (tar::EntryType::Directory, _) => Kind::Dir,
            (tar::EntryType::Regular | tar::EntryType::Continuous, _) => Kind::File,
            (tar::EntryType::Symlink, Some(target)) => Kind::Symlink(target),
            (tar::EntryType::Link, Some(target)) => Kind::HardLink(target),
            (other, _) => {
                return Err(guard.refuse(&path, format!("entry type {other:?} is not allowed")));
            }
        };
        guard.check(&path, kind)?;
        // `unpack_in` repeats its own containment checks (it canonicalizes the parent dir), a
        // second line of defence behind ours.
        if !entry.unpack_in(dest).map_err(io_err)? {
            return Err(guard.refuse(&path, "refused by the tar crate's own path check"));
        }
    }
    Ok(())
}

fn extract_zip(archive: &Path, dest: &Path) -> Result<(), BlobError> {
    let io_err = |source| BlobError::Extract { archive: archive.to_owned(), dest: dest.to_owned(), source };
    let zip_err = |e: zip::result::ZipError| io_err(io::Error::other(e));
    let file = File::open(archive).map_err(io_err)?;
    let mut zip = zip::ZipArchive::new(io::BufReader::new(file)).map_err(zip_err)?;
    let mut guard = Guard::new(archive);
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(zip_err)?;
        let path = PathBuf::from(entry.name());
        let mode = entry.unix_mode();
        // Unix file type bits, when the archive was made on unix: only dir, file and symlink.
        const S_IFMT: u32 = 0o170_000;
        if let Some(ty) = mode.map(|m| m & S_IFMT)
            && !matches!(ty, 0 | 0o040_000 | 0o100_000 | 0o120_000)
        {
            return Err(guard.refuse(&path, format!("unix file type {ty:o} is not allowed")));
        }
        if entry.is_symlink() {
            let mut target = String::new();
            io::Read::read_to_string(&mut entry, &mut target).map_err(io_err)?;
            let rel = guard.check(&path, Kind::Symlink(Path::new(&target)))?;
            let at = dest.join(&rel);
            create_parent(&at).map_err(io_err)?;
            std::os::unix::fs::symlink(&target, &at).map_err(io_err)?;
        } else if entry.is_dir() {
            let rel = guard.check(&path, Kind::Dir)?;
            std::fs::create_dir_all(dest.join(rel)).map_err(io_err)?;
        } else {
            let rel = guard.check(&path, Kind::File)?;
            let at = dest.join(&rel);
            create_parent(&at).map_err(io_err)?;
            // create_new: a duplicate name must not write through whatever is already there.
            let mut out = std::fs::OpenOptions::new().write(true).create_new(true).open(&at).map_err(io_err)?;
            io::copy(&mut entry, &mut out).map_err(io_err)?;
            if let Some(mode) = mode {
                use std::os::unix::fs::PermissionsExt;
                // Permission bits only: no setuid/setgid/sticky from an archive.
                let perms = std::fs::Permissions::from_mode(mode & 0o777);
                std::fs::set_permissions(&at, perms).map_err(io_err)?;
            }
        }
    }
    Ok(())
}

fn create_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(parent) => std::fs::create_dir_all(parent),
        None => Ok(()),
    }
}

#[cfg(test)]
#[path = "extract_tests.rs"]
mod tests;
