//! Rotation of the workers' log files and the node-wide quota on them (SPEC §2 `[logs]`).
//!
//! The agent calls [`sweep`] on a timer. It is blocking file I/O: run it with
//! `spawn_blocking`, one sweep at a time (a coalescing queue, STYLE habit 3). A sweep:
//!
//! 1. in every slot directory `<log_dir>/workers/<topology>/<port>/`, deletes rotated files
//!    numbered past `keep` (so lowering `worker_log_keep` takes effect without waiting for a
//!    rotation), and rotates `worker.log` once it is larger than `max_bytes`:
//!    `worker.log.N` → `worker.log.N+1` (the one that would pass `keep` is deleted), then
//!    `worker.log` is **copied** to `worker.log.1` and **truncated** to 0;
//! 2. adds up every `worker.log`, `worker.log.N` and diagnostics run's file (`diag/*`, see
//!    [`crate::diagnostics`]) under the root and, while the total is over `node_quota_bytes`,
//!    deletes the oldest rotated or diagnostics file (by mtime, across all topologies and
//!    ports).
//!
//! Why copy-then-truncate rather than rename: a worker's stdout and stderr are the log file
//! itself, opened once with `O_APPEND` before exec (SPEC §4) and held for the worker's life,
//! with no way to tell the worker to reopen it. Renaming the file would leave the worker
//! writing into the renamed file forever. Truncating the file it holds works because of
//! `O_APPEND`: every write goes to the current end of file, so after `set_len(0)` the next
//! write lands at offset 0. (A writer without `O_APPEND` would keep its old offset and leave a
//! hole of zeros; gale never opens a worker's log that way.)
//!
//! The window (the known trade-off of copytruncate, as with logrotate's `copytruncate`):
//! bytes the worker writes after the last length measurement and before the truncation are
//! lost. To keep that window small, the bulk copy and its fsync, which take long on a big file,
//! happen first; then the length is measured again and only what was written meanwhile is
//! copied, and the file is truncated right after. The window is that second, small copy plus
//! a rename: microseconds for a worker that logs at any normal rate, never zero. Each copy
//! takes exactly the length measured before it, so a worker that writes faster than the copy
//! cannot keep a rotation going forever.
//!
//! Quota: active `worker.log` files are never deleted or truncated by the quota. When only
//! active files are left and the total is still over the quota, the sweep reports
//! `over_quota: true` (and logs a warning) and leaves them: cutting a live worker's log would
//! destroy exactly the output an operator needs, and each active file is already bounded by
//! `max_bytes` at the next sweep. `keep = 0` means no rotated file is kept: a rotation only
//! truncates (that log's content is discarded).
//!
//! Safety: nothing that is a symlink is followed, read, counted, renamed or truncated: entries
//! are classified with `lstat` (`DirEntry::file_type`, `symlink_metadata`) and files are opened
//! with `O_NOFOLLOW`, then checked again through the opened descriptor, so a link planted in a
//! log directory cannot make the agent truncate or copy a file outside the root. (A symlink
//! that happens to sit at `worker.log.N+1` when `.N` is shifted is replaced by the rename,
//! which removes the link and never touches its target.) Errors on single files are logged
//! with their path and do not stop the sweep.

use std::cmp::Reverse;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use tracing::{debug, info, warn};

use super::logfile::WORKER_LOG_FILE;
use crate::config::LogsConfig;

/// Where a rotation copies to before the copy is renamed to `worker.log.1`: a crash mid-copy
/// leaves this, never a partial `worker.log.1`; the next sweep of the directory removes it.
const ROTATING_FILE: &str = "worker.log.rotating";

const MIB: u64 = 1024 * 1024;

/// What [`sweep`] enforces, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LogPolicy {
    /// A `worker.log` larger than this is rotated.
    pub max_bytes: u64,
    /// Rotated files kept per slot; 0: a rotation only truncates.
    pub keep: usize,
    /// All worker logs under the root, active and rotated.
    pub node_quota_bytes: u64,
}

impl LogPolicy {
    pub(crate) fn from_config(logs: &LogsConfig) -> LogPolicy {
        LogPolicy {
            max_bytes: logs.worker_log_max_mb.saturating_mul(MIB),
            keep: usize::try_from(logs.worker_log_keep).unwrap_or(usize::MAX),
            node_quota_bytes: logs.node_quota_mb.saturating_mul(MIB),
        }
    }
}

/// What one [`sweep`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SweepReport {
    /// The `worker.log` files that were rotated (or only truncated, with `keep = 0`).
    pub rotated: Vec<PathBuf>,
    /// Rotated files deleted: past `keep`, or for the quota.
    pub deleted: Vec<PathBuf>,
    /// All worker logs under the root after the sweep.
    pub total_bytes: u64,
    /// Still over the quota with no rotated file left to delete (active logs are never cut).
    pub over_quota: bool,
}

/// Rotates the worker logs under `workers_log_root` (`<log_dir>/workers`) and enforces the
/// node quota; see the module docs. A missing root is an empty sweep.
pub(crate) fn sweep(workers_log_root: &Path, policy: &LogPolicy) -> SweepReport {
    let mut report = SweepReport::default();
    let slots = slot_dirs(workers_log_root);
    for dir in &slots {
        sweep_slot(dir, policy, &mut report, &mut || {});
    }
    enforce_quota(&slots, policy, &mut report);
    debug!(
        root = %workers_log_root.display(),
        rotated = report.rotated.len(),
        deleted = report.deleted.len(),
        total_bytes = report.total_bytes,
        over_quota = report.over_quota,
        "worker log sweep"
    );
    report
}

/// `<root>/<topology>/<port>` directories (real directories only, never through a symlink),
/// sorted.
fn slot_dirs(root: &Path) -> Vec<PathBuf> {
    let mut slots = Vec::new();
    for topology in real_entries(root, |t| t.is_dir()) {
        slots.extend(real_entries(&topology, |t| t.is_dir()));
    }
    slots.sort();
    slots
}

/// Entries of `dir` whose own type (not a link's target) passes `keep`; a directory that
/// cannot be read is logged and yields nothing (a missing one quietly: no logs yet).
fn real_entries(dir: &Path, keep: impl Fn(&fs::FileType) -> bool) -> Vec<PathBuf> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            warn!(path = %dir.display(), error = %e, "cannot list a worker log directory");
            return Vec::new();
        }
    };
    entries
        .filter_map(|entry| match entry {
            Ok(entry) => entry.file_type().is_ok_and(|t| keep(&t)).then(|| entry.path()),
            Err(e) => {
                warn!(path = %dir.display(), error = %e, "cannot list a worker log directory");
                None
            }
        })
        .collect()
}

/// `N` of `worker.log.N` (canonical decimal, N ≥ 1).
fn rotated_index(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(WORKER_LOG_FILE)?.strip_prefix('.')?;
    let n: u64 = digits.parse().ok()?;
    (n >= 1 && n.to_string() == digits).then_some(n)
}

fn rotated_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{WORKER_LOG_FILE}.{n}"))
}

/// The rotated files of a slot directory (regular files only), by index.
fn rotated_files(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut files: Vec<(u64, PathBuf)> = real_entries(dir, |t| t.is_file())
        .into_iter()
        .filter_map(|path| Some((rotated_index(path.file_name()?.to_str()?)?, path)))
        .collect();
    files.sort();
    files
}

/// Deletes a rotated file; true when it is gone (deleted now, or already gone).
fn remove(path: &Path, why: &str, report: &mut SweepReport) -> bool {
    match fs::remove_file(path) {
        Ok(()) => {
            report.deleted.push(path.to_owned());
            true
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => true,
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot delete an old worker log file ({why})");
            false
        }
    }
}

/// Step 1 of the sweep for one `<topology>/<port>` directory. `after_copy` runs between the
/// bulk copy and the catch-up copy (tests write there to prove the catch-up).
fn sweep_slot(dir: &Path, policy: &LogPolicy, report: &mut SweepReport, after_copy: &mut dyn FnMut()) {
    let leftover = dir.join(ROTATING_FILE);
    if fs::symlink_metadata(&leftover).is_ok_and(|m| m.is_file()) {
        if let Err(e) = fs::remove_file(&leftover) {
            warn!(path = %leftover.display(), error = %e, "cannot delete an interrupted rotation's copy");
        }
    }
    let keep = policy.keep as u64;
    let mut rotated = rotated_files(dir);
    for (_, path) in rotated.iter().filter(|(n, _)| *n > keep) {
        remove(path, "past worker_log_keep", report);
    }
    rotated.retain(|(n, _)| *n <= keep);

    let active = dir.join(WORKER_LOG_FILE);
    let size = match fs::symlink_metadata(&active) {
        Ok(m) if m.is_file() => m.len(),
        Ok(_) => return, // a link or anything else is not ours to touch
        Err(e) if e.kind() == io::ErrorKind::NotFound => return,
        Err(e) => {
            warn!(path = %active.display(), error = %e, "cannot stat a worker log");
            return;
        }
    };
    if size <= policy.max_bytes {
        return;
    }

    if keep == 0 {
        match open_log(&active).and_then(|f| f.set_len(0)) {
            Ok(()) => {
                info!(path = %active.display(), bytes = size, "truncated a worker log (worker_log_keep = 0)");
                report.rotated.push(active);
            }
            Err(e) => warn!(path = %active.display(), error = %e, "cannot truncate a worker log"),
        }
        return;
    }
    // Make room at `.1`, oldest first; stop at the first failure rather than overwrite a file
    // that could not be moved on.
    for (n, path) in rotated.iter().rev() {
        if *n == keep {
            if !remove(path, "rotated past worker_log_keep", report) {
                return;
            }
        } else if let Err(e) = fs::rename(path, rotated_path(dir, n + 1)) {
            warn!(path = %path.display(), error = %e, "cannot shift a rotated worker log; not rotating it this time");
            return;
        }
    }
    let first = rotated_path(dir, 1);
    match copy_truncate(&active, &first, after_copy) {
        Ok(bytes) => {
            info!(path = %active.display(), bytes, "rotated a worker log (copy, then truncate)");
            report.rotated.push(active);
        }
        Err(e) => warn!(path = %active.display(), error = %e, "cannot rotate a worker log"),
    }
}

/// Opens a worker log for reading and truncating, refusing a symlink at the last component
/// and anything that is not a regular file once open.
fn open_log(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags((nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK).bits())
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    Ok(file)
}

/// Copies `active` to `rotated` and truncates `active` to 0; returns the bytes copied. See the
/// module docs for the order of steps and the window in which bytes are lost.
fn copy_truncate(active: &Path, rotated: &Path, after_copy: &mut dyn FnMut()) -> io::Result<u64> {
    let dir = active.parent().unwrap_or(Path::new("."));
    let mut src = open_log(active)?;
    let meta = src.metadata()?;
    let temp = dir.join(ROTATING_FILE);
    let mut copy = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(meta.mode() & 0o777)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(&temp)?;
    let result = (|| {
        // The bulk: exactly the length measured now, and made durable, outside the window.
        let mut copied = io::copy(&mut (&mut src).take(meta.len()), &mut copy)?;
        copy.sync_data()?;
        after_copy();
        // The catch-up: what was written during the bulk copy. From here to `set_len` is the
        // window in which a write is lost.
        let now = src.metadata()?.len();
        if now > copied {
            copied += io::copy(&mut (&mut src).take(now - copied), &mut copy)?;
        }
        fs::rename(&temp, rotated)?;
        src.set_len(0)?;
        copy.sync_all()?;
        File::open(dir)?.sync_all()?;
        Ok(copied)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// Step 2 of the sweep: the node quota over every slot directory.
fn enforce_quota(slots: &[PathBuf], policy: &LogPolicy, report: &mut SweepReport) {
    let mut total = 0u64;
    // (mtime, index, size, path): oldest first; on equal mtimes the higher index is older.
    // Diagnostics files are index 0.
    let mut rotated: Vec<(SystemTime, Reverse<u64>, u64, PathBuf)> = Vec::new();
    for dir in slots {
        for (path, meta) in diag_files(dir) {
            total = total.saturating_add(meta.len());
            rotated.push((meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), Reverse(0), meta.len(), path));
        }
        let Ok(entries) = fs::read_dir(dir) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let index = rotated_index(name);
            if name != WORKER_LOG_FILE && index.is_none() {
                continue;
            }
            // DirEntry::metadata is lstat: a symlink is not a file here and is not counted.
            let meta = match entry.metadata() {
                Ok(m) if m.is_file() => m,
                Ok(_) => continue,
                Err(e) => {
                    warn!(path = %entry.path().display(), error = %e, "cannot stat a worker log");
                    continue;
                }
            };
            total = total.saturating_add(meta.len());
            if let Some(index) = index {
                let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                rotated.push((mtime, Reverse(index), meta.len(), entry.path()));
            }
        }
    }
    rotated.sort();
    for (_, _, size, path) in rotated {
        if total <= policy.node_quota_bytes {
            break;
        }
        if remove(&path, "node quota", report) {
            info!(path = %path.display(), bytes = size, "deleted an old worker log file (logs.node_quota_mb)");
            total -= size;
        }
    }
    report.total_bytes = total;
    report.over_quota = total > policy.node_quota_bytes;
    if report.over_quota {
        warn!(
            total_bytes = total,
            quota_bytes = policy.node_quota_bytes,
            "worker logs are over logs.node_quota_mb with no rotated file left to delete; active logs are never cut"
        );
    }
}

/// The regular files (never a link) in a slot directory's `diag/`, with their metadata.
fn diag_files(slot_dir: &Path) -> Vec<(PathBuf, fs::Metadata)> {
    real_entries(&slot_dir.join(super::logfile::DIAG_DIR), |t| t.is_file())
        .into_iter()
        .filter_map(|path| Some((fs::symlink_metadata(&path).ok().filter(fs::Metadata::is_file)?, path)))
        .map(|(meta, path)| (path, meta))
        .collect()
}

#[cfg(test)]
#[path = "logrotate_tests.rs"]
mod tests;
