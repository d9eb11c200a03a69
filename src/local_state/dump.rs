//! Read-only inspection of a state directory, for `gale state dump` and for tests.
//!
//! Nothing here creates, deletes or locks anything, so it can run while an agent is writing:
//! a version pruned between listing and reading shows up as a defect of that version, not as a
//! failure of the whole dump.

use std::fmt::Write as _;
use std::path::Path;

use super::error::StateError;
use super::format::{self, Decoded, Defect, Entries};
use super::keys::known_keys;
use super::scan::{self, data_path};
use super::stored::{self, FORMAT_VERSION};

/// Whether a version present in the directory can be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum VersionStatus {
    Ok,
    /// A data or temp file without marker: a write that never completed.
    NoMarker,
    /// Has a marker, but its data file fails a check.
    Unreadable(Defect),
}

impl std::fmt::Display for VersionStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VersionStatus::Ok => f.write_str("ok"),
            VersionStatus::NoMarker => f.write_str("no marker (torn write)"),
            VersionStatus::Unreadable(defect) => defect.fmt(f),
        }
    }
}

/// One version found in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VersionInfo {
    pub version: u64,
    pub status: VersionStatus,
    /// The format and the decoded map (values in that format), when `status` is `Ok`.
    pub decoded: Option<Decoded>,
}

/// Every version present in `dir` (with a data file, marker or temp file), newest first.
pub(crate) fn versions(dir: &Path) -> Result<Vec<VersionInfo>, StateError> {
    let listing = scan::scan(dir).map_err(|source| StateError::ReadDir { dir: dir.to_owned(), source })?;
    Ok(listing
        .iter()
        .rev()
        .map(|(&version, files)| {
            if !files.marker {
                return VersionInfo { version, status: VersionStatus::NoMarker, decoded: None };
            }
            match format::read_version(&data_path(dir, version)) {
                Ok(decoded) => VersionInfo { version, status: VersionStatus::Ok, decoded: Some(decoded) },
                Err(defect) => VersionInfo { version, status: VersionStatus::Unreadable(defect), decoded: None },
            }
        })
        .collect())
}

/// Renders every version in `dir`, newest first, with its status, format and (when readable)
/// every key: known keys as compact JSON, unknown ones by size. A version of an older format is
/// shown migrated to the current one (what this build would run on), and says so.
pub(crate) fn dump(dir: &Path) -> Result<String, StateError> {
    let versions = versions(dir)?;
    let mut out = String::new();
    if versions.is_empty() {
        let _ = writeln!(out, "local state in {}: no versions (a fresh store)", dir.display());
        return Ok(out);
    }
    let _ = writeln!(out, "local state in {}: {} versions, newest first", dir.display(), versions.len());
    for info in &versions {
        let at = format_unix_ms(info.version);
        let Some(Decoded { format, entries }) = &info.decoded else {
            let _ = writeln!(out, "version {} ({at}): {}", info.version, info.status);
            continue;
        };
        let entries = if *format == FORMAT_VERSION {
            let _ = writeln!(out, "version {} ({at}): {}, format {format}", info.version, info.status);
            entries.clone()
        } else {
            match stored::migrate(*format, entries.clone()) {
                Ok(migrated) => {
                    let _ = writeln!(
                        out,
                        "version {} ({at}): {}, format {format} (shown as format {FORMAT_VERSION})",
                        info.version, info.status
                    );
                    migrated
                }
                Err(e) => {
                    let _ = writeln!(out, "version {} ({at}): format {format}, does not migrate: {e}", info.version);
                    entries.clone()
                }
            }
        };
        write_entries(&mut out, &entries);
    }
    Ok(out)
}

fn write_entries(out: &mut String, entries: &Entries) {
    let known = known_keys();
    for (key, bytes) in entries {
        let value = match known.get(key.as_str()) {
            Some(to_json) => match to_json(bytes) {
                Ok(json) => json.to_string(),
                Err(e) => format!("<{} bytes, does not decode: {e}>", bytes.len()),
            },
            None => format!("<{} bytes, unknown key>", bytes.len()),
        };
        let _ = writeln!(out, "  {key} = {value}");
    }
}

/// Formats milliseconds since the unix epoch as UTC `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub(crate) fn format_unix_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, day_secs) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        day_secs / 3600,
        day_secs % 3600 / 60,
        day_secs % 60,
        ms % 1000
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day), after Howard Hinnant's
/// `civil_from_days`. Unsigned because version names are never before the epoch.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shift the epoch to 0000-03-01 so leap days fall at the end of each 400-year era.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097; // day of era, [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year from March 1st, [0, 365]
    let mp = (5 * doy + 2) / 153; // month from March, [0, 11]
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}
