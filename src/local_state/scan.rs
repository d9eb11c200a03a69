//! Listing a state directory: which versions have a data file, a marker, a temp file.
//!
//! Only canonical names are ours (`123`, `123.version`, `123.tmp`, digits without leading zeros
//! or sign); anything else in the directory is ignored, never deleted.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

/// The files present for one version.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Files {
    pub data: bool,
    pub marker: bool,
    pub temp: bool,
}

/// Every version that has at least one file, oldest first.
pub(crate) type Listing = BTreeMap<u64, Files>;

const MARKER_SUFFIX: &str = ".version";
const TEMP_SUFFIX: &str = ".tmp";

pub(crate) fn data_path(dir: &Path, version: u64) -> PathBuf {
    dir.join(version.to_string())
}

pub(crate) fn marker_path(dir: &Path, version: u64) -> PathBuf {
    dir.join(format!("{version}{MARKER_SUFFIX}"))
}

pub(crate) fn temp_path(dir: &Path, version: u64) -> PathBuf {
    dir.join(format!("{version}{TEMP_SUFFIX}"))
}

/// Lists the directory. Entries that vanish while listing are simply not seen.
pub(crate) fn scan(dir: &Path) -> io::Result<Listing> {
    let mut listing = Listing::new();
    for entry in std::fs::read_dir(dir)? {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some((version, kind)) = parse_name(name) else {
            continue;
        };
        let files = listing.entry(version).or_default();
        match kind {
            Kind::Data => files.data = true,
            Kind::Marker => files.marker = true,
            Kind::Temp => files.temp = true,
        }
    }
    Ok(listing)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Data,
    Marker,
    Temp,
}

fn parse_name(name: &str) -> Option<(u64, Kind)> {
    let (digits, kind) = if let Some(d) = name.strip_suffix(MARKER_SUFFIX) {
        (d, Kind::Marker)
    } else if let Some(d) = name.strip_suffix(TEMP_SUFFIX) {
        (d, Kind::Temp)
    } else {
        (name, Kind::Data)
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let version: u64 = digits.parse().ok()?;
    // "0123" is not a name we would write; treating it as version 123 would make us delete or
    // read a different file than the one listed.
    (version.to_string() == digits).then_some((version, kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_canonical_names_are_versions() {
        assert_eq!(parse_name("17"), Some((17, Kind::Data)));
        assert_eq!(parse_name("17.version"), Some((17, Kind::Marker)));
        assert_eq!(parse_name("17.tmp"), Some((17, Kind::Temp)));
        for other in ["", ".version", "+17", "017", "17.bak", "lock", "99999999999999999999"] {
            assert_eq!(parse_name(other), None, "{other:?}");
        }
    }
}
