//! Property tests of the local state reader against damaged state directories.
//!
//! Each case writes a directory of 1 to 5 versions, oldest first, each one of: a valid data
//! file; a torn one (truncated, bytes appended, or a burst of at most 32 bits flipped inside
//! the header or inside the payload: damage the format must always detect); one damaged
//! arbitrarily; a correct header and CRC around random bytes; random bytes; no data file; a
//! directory where the data file should be. Each has its marker or not, and maybe a leftover
//! `.tmp`; foreign files lie beside them.
//!
//! What it proves:
//! - `read_only`, `open`, `versions` and `dump` return (within the deadline) and never panic;
//! - a torn data file never decodes (checked on the bytes, not through the store);
//! - both readers pick the newest version that has a marker and decodes, and read exactly its
//!   keys; with one good version anywhere, they never fail and never come up empty, unless a
//!   marked version's header names a newer format: then both refuse (a downgrade);
//! - with markers but nothing readable, both fail, and `open` leaves the directory as found;
//! - after a successful `open`, only torn leftovers are gone, and the next write becomes the
//!   newest version, read back by the next `open` together with the keys it kept.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::sample::Index;

use super::dump::versions;
use super::format::{self, Entries, HEADER_LEN};
use super::scan::{data_path, marker_path, temp_path};
use super::stored::FORMAT_VERSION;
use super::*;
use crate::proptest_support::{bounded, cases};

/// How one version's data file is laid down.
#[derive(Debug, Clone)]
enum Data {
    Valid(Entries),
    Torn(Entries, Tear),
    Damaged(Entries, Vec<(Index, Hit)>),
    /// Correct magic, format, length and CRC around random bytes: only bincode stands between
    /// these and the store.
    Resealed(Vec<u8>),
    Noise(Vec<u8>),
    Missing,
    Directory,
}

/// Damage the format guarantees to detect: the length check catches a truncation or an
/// addition, and CRC-32 every burst of at most 32 bits inside the payload. A burst is kept on
/// one side of the header/payload boundary: straddling it, a changed CRC field could (in
/// theory) match a changed payload.
#[derive(Debug, Clone)]
enum Tear {
    Truncate(Index),
    Append(Vec<u8>),
    HeaderBurst(Index, [u8; 4]),
    PayloadBurst(Index, [u8; 4]),
}

#[derive(Debug, Clone)]
enum Hit {
    Set(u8),
    Insert(u8),
    Remove,
    Truncate,
    Splice(Vec<u8>),
}

#[derive(Debug, Clone)]
struct VersionSpec {
    gap: u64,
    data: Data,
    marker: bool,
    temp: Option<Vec<u8>>,
}

const FOREIGN: &[&str] = &["lock", "0123", "+17", "17.bak", ".version", "abc.version", "99999999999999999999", "1.2"];

const KNOWN: &[&str] = &[SupervisorId::NAME, LastSessionId::NAME, EarlierSessionIds::NAME, Drained::NAME];

fn entries() -> impl Strategy<Value = Entries> {
    (
        prop::option::of(any::<String>()),
        prop::option::of(any::<i64>()),
        prop::option::of(prop::collection::vec(any::<i64>(), 0..4)),
        prop::option::of(any::<bool>()),
        // Other keys: unknown ones, or known ones holding bytes that are not their type.
        prop::collection::btree_map(
            prop_oneof![
                3 => "x-[a-z-]{1,10}",
                1 => prop::sample::select(KNOWN).prop_map(str::to_owned),
            ],
            prop::collection::vec(any::<u8>(), 0..24),
            0..3,
        ),
    )
        .prop_map(|(id, last, earlier, drained, extra)| {
            let mut e = Entries::new();
            let mut put = |name: &str, bytes: Vec<u8>| e.insert(name.to_owned(), bytes);
            if let Some(id) = id {
                put(SupervisorId::NAME, bincode::serialize(&id).unwrap());
            }
            if let Some(last) = last {
                put(LastSessionId::NAME, bincode::serialize(&last).unwrap());
            }
            if let Some(earlier) = earlier {
                put(EarlierSessionIds::NAME, bincode::serialize(&earlier).unwrap());
            }
            if let Some(drained) = drained {
                put(Drained::NAME, bincode::serialize(&drained).unwrap());
            }
            for (k, v) in extra {
                e.entry(k).or_insert(v);
            }
            e
        })
}

fn burst() -> impl Strategy<Value = [u8; 4]> {
    (1u8..=255, any::<[u8; 3]>()).prop_map(|(first, rest)| [first, rest[0], rest[1], rest[2]])
}

fn tear() -> impl Strategy<Value = Tear> {
    prop_oneof![
        any::<Index>().prop_map(Tear::Truncate),
        prop::collection::vec(any::<u8>(), 1..16).prop_map(Tear::Append),
        (any::<Index>(), burst()).prop_map(|(i, m)| Tear::HeaderBurst(i, m)),
        (any::<Index>(), burst()).prop_map(|(i, m)| Tear::PayloadBurst(i, m)),
    ]
}

fn hit() -> impl Strategy<Value = Hit> {
    prop_oneof![
        any::<u8>().prop_map(Hit::Set),
        any::<u8>().prop_map(Hit::Insert),
        Just(Hit::Remove),
        Just(Hit::Truncate),
        prop::collection::vec(any::<u8>(), 1..32).prop_map(Hit::Splice),
    ]
}

fn data() -> impl Strategy<Value = Data> {
    prop_oneof![
        5 => entries().prop_map(Data::Valid),
        4 => (entries(), tear()).prop_map(|(e, t)| Data::Torn(e, t)),
        3 => (entries(), prop::collection::vec((any::<Index>(), hit()), 1..4)).prop_map(|(e, h)| Data::Damaged(e, h)),
        2 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Data::Resealed),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Data::Noise),
        1 => Just(Data::Missing),
        1 => Just(Data::Directory),
    ]
}

fn version_spec() -> impl Strategy<Value = VersionSpec> {
    (
        prop_oneof![3 => 1u64..3, 1 => 3u64..100_000],
        data(),
        prop::bool::weighted(0.85),
        prop::option::weighted(0.15, prop::collection::vec(any::<u8>(), 0..32)),
    )
        .prop_map(|(gap, data, marker, temp)| VersionSpec { gap, data, marker, temp })
}

/// A header with the right length and CRC around `payload`.
fn seal(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(format::MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    let crc = format::checksum(FORMAT_VERSION, &out, payload);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

fn xor_burst(bytes: &mut [u8], range: std::ops::Range<usize>, at: &Index, mask: &[u8; 4]) {
    let start = range.start + at.index(range.len());
    for (b, m) in bytes[start..range.end.min(start + 4)].iter_mut().zip(mask) {
        *b ^= m;
    }
}

/// The bytes of the data file, `None` when there is none (or a directory instead).
fn data_bytes(data: &Data) -> Option<Vec<u8>> {
    Some(match data {
        Data::Valid(e) => format::encode(e).unwrap(),
        Data::Torn(e, tear) => {
            let mut bytes = format::encode(e).unwrap();
            let len = bytes.len();
            match tear {
                Tear::Truncate(at) => bytes.truncate(at.index(len)),
                Tear::Append(extra) => bytes.extend_from_slice(extra),
                Tear::HeaderBurst(at, mask) => xor_burst(&mut bytes, 0..HEADER_LEN, at, mask),
                Tear::PayloadBurst(at, mask) => xor_burst(&mut bytes, HEADER_LEN..len, at, mask),
            }
            bytes
        }
        Data::Damaged(e, hits) => {
            let mut bytes = format::encode(e).unwrap();
            for (at, hit) in hits {
                let i = at.index(bytes.len().max(1)).min(bytes.len());
                match hit {
                    Hit::Set(b) if i < bytes.len() => bytes[i] = *b,
                    Hit::Insert(b) => bytes.insert(i, *b),
                    Hit::Remove if i < bytes.len() => {
                        bytes.remove(i);
                    }
                    Hit::Truncate => bytes.truncate(i),
                    Hit::Splice(s) => {
                        bytes.splice(i..i, s.iter().copied());
                    }
                    _ => {}
                }
            }
            bytes
        }
        Data::Resealed(payload) => seal(payload),
        Data::Noise(bytes) => bytes.clone(),
        Data::Missing | Data::Directory => return None,
    })
}

/// Lays the versions down; returns each version's name, spec and data file bytes.
fn lay_down(
    dir: &Path,
    specs: &[VersionSpec],
    foreign: &[(usize, Vec<u8>)],
) -> Vec<(u64, VersionSpec, Option<Vec<u8>>)> {
    let mut version = 1_700_000_000_000u64;
    let mut laid = Vec::new();
    for spec in specs {
        version += spec.gap;
        let bytes = data_bytes(&spec.data);
        match (&spec.data, &bytes) {
            (Data::Directory, _) => fs::create_dir(data_path(dir, version)).unwrap(),
            (_, Some(bytes)) => fs::write(data_path(dir, version), bytes).unwrap(),
            (_, None) => {}
        }
        if spec.marker {
            fs::write(marker_path(dir, version), b"").unwrap();
        }
        if let Some(temp) = &spec.temp {
            fs::write(temp_path(dir, version), temp).unwrap();
        }
        laid.push((version, spec.clone(), bytes));
    }
    for (which, content) in foreign {
        fs::write(dir.join(FOREIGN[which % FOREIGN.len()]), content).unwrap();
    }
    laid
}

/// File name → (length, is a directory).
fn listing(dir: &Path) -> BTreeMap<String, (u64, bool)> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            (e.file_name().into_string().unwrap(), (meta.len(), meta.is_dir()))
        })
        .collect()
}

/// The known keys as read (`Err` for bytes that are not the key's type), for comparing two
/// reads, or a read with what was written.
type Typed =
    (Option<Result<String, ()>>, Option<Result<i64, ()>>, Option<Result<Vec<i64>, ()>>, Option<Result<bool, ()>>);

fn typed_from(entries: &Entries) -> Typed {
    fn get<K: Key>(e: &Entries) -> Option<Result<K::Value, ()>> {
        e.get(K::NAME).map(|b| stored::decode::<K::Stored>(b).map(K::from_stored).map_err(drop))
    }
    (
        get::<SupervisorId>(entries),
        get::<LastSessionId>(entries),
        get::<EarlierSessionIds>(entries),
        get::<Drained>(entries),
    )
}

fn typed(state: &LocalState) -> Typed {
    fn get<K: Key>(state: &LocalState) -> Option<Result<K::Value, ()>> {
        state.get::<K>().transpose().map(|r| r.map_err(drop))
    }
    (get::<SupervisorId>(state), get::<LastSessionId>(state), get::<EarlierSessionIds>(state), get::<Drained>(state))
}

fn read_only(dir: &Path) -> Result<Option<LocalState>, StateError> {
    let dir = dir.to_owned();
    bounded("LocalState::read_only", move || LocalState::read_only(&dir))
}

fn open(dir: &Path) -> Result<LocalState, StateError> {
    let dir = dir.to_owned();
    bounded("LocalState::open", move || LocalState::open(&dir))
}

/// What a read of `laid` must find: the newest version with a marker whose data decodes, `None`
/// for a fresh store, `Err` when markers exist but none is readable, or when any marked version's
/// header names a format newer than this build's (a downgrade is refused, never read around).
fn expected(laid: &[(u64, VersionSpec, Option<Vec<u8>>)]) -> Result<Option<(u64, Entries)>, ()> {
    let marked: Vec<_> = laid.iter().rev().filter(|(_, spec, _)| spec.marker).collect();
    if marked.iter().any(|(_, _, bytes)| bytes.as_deref().is_some_and(names_a_newer_format)) {
        return Err(());
    }
    for (version, _, bytes) in &marked {
        if let Some(decoded) = bytes.as_deref().and_then(|b| format::decode(b).ok()) {
            return Ok(Some((*version, decoded.entries)));
        }
    }
    if marked.is_empty() { Ok(None) } else { Err(()) }
}

/// Our magic followed by a format past [`FORMAT_VERSION`], whatever the rest holds.
fn names_a_newer_format(bytes: &[u8]) -> bool {
    bytes.len() >= 12
        && &bytes[..8] == format::MAGIC
        && u32::from_le_bytes(bytes[8..12].try_into().unwrap()) > FORMAT_VERSION
}

fn check_dir(laid: &[(u64, VersionSpec, Option<Vec<u8>>)], dir: &Path) -> Result<(), TestCaseError> {
    for (version, spec, bytes) in laid {
        if let (Data::Torn(..), Some(bytes)) = (&spec.data, bytes) {
            let decoded = format::decode(bytes);
            prop_assert!(decoded.is_err(), "torn version {} decodes: {:?}", version, decoded);
        }
    }
    let want = expected(laid);
    let refused = laid.iter().any(|(_, spec, b)| spec.marker && b.as_deref().is_some_and(names_a_newer_format));
    let any_good = laid.iter().any(|(_, spec, _)| spec.marker && matches!(spec.data, Data::Valid(_))) && !refused;
    let check = |what: &str, got: Option<(Option<u64>, Typed)>| -> Result<(), TestCaseError> {
        match (&want, got) {
            (Ok(Some((version, entries))), Some(got)) => {
                prop_assert_eq!(got, (Some(*version), typed_from(entries)), "{}", what);
            }
            (Ok(None), Some(got)) => prop_assert_eq!(got, (None, (None, None, None, None)), "{}", what),
            (Err(()), None) => prop_assert!(!any_good, "{} failed though a good version exists", what),
            (want, got) => prop_assert!(false, "{}: expected {:?}, got {:?}", what, want, got),
        }
        Ok(())
    };

    let before = listing(dir);
    let ro = read_only(dir);
    check("read_only", ro.as_ref().ok().map(|s| s.as_ref().unwrap()).map(|s| (s.version(), typed(s))))?;
    prop_assert_eq!(&listing(dir), &before, "read_only changed the directory");
    let dir_owned = dir.to_owned();
    let _ = bounded("versions", move || versions(&dir_owned).map(|v| v.len()));
    let dir_owned = dir.to_owned();
    let _ = bounded("dump", move || dump(&dir_owned).map(|s| s.len()));

    let opened = open(dir);
    check("open", opened.as_ref().ok().map(|s| (s.version(), typed(s))))?;
    let after = listing(dir);
    let Ok(mut state) = opened else {
        prop_assert_eq!(&after, &before, "a refused open changed the directory");
        return Ok(());
    };
    // Only torn leftovers are gone: temp files, and data files (not directories) without a marker.
    let mut left = before.clone();
    for (version, spec, _) in laid {
        left.remove(&format!("{version}.tmp"));
        if !spec.marker && !matches!(spec.data, Data::Directory) {
            left.remove(&version.to_string());
        }
    }
    prop_assert_eq!(&after, &left, "open removed more or less than torn leftovers");

    let kept = typed(&state);
    let highest = laid.iter().map(|(v, ..)| *v).max().unwrap_or(0);
    let written = state.put::<Drained>(&true).unwrap();
    prop_assert!(written > highest, "new version {} is not past {}", written, highest);
    let again = open(dir).unwrap();
    prop_assert_eq!(again.version(), Some(written));
    prop_assert_eq!(typed(&again), (kept.0, kept.1, kept.2, Some(Ok(true))));
    Ok(())
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn damaged_directories_read_the_newest_good_version_or_refuse(
        specs in prop::collection::vec(version_spec(), 1..6),
        foreign in prop::collection::vec((any::<usize>(), prop::collection::vec(any::<u8>(), 0..8)), 0..2),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let laid = lay_down(tmp.path(), &specs, &foreign);
        check_dir(&laid, tmp.path())?;
    }

    /// A torn newest version over a good one: the good one is read, never an empty store (a
    /// marked one whose header names a newer format is refused: never read around).
    #[test]
    fn a_torn_newest_version_falls_back_to_the_good_one(
        good in entries(),
        torn in (entries(), tear()).prop_map(|(e, t)| Data::Torn(e, t)),
        marker in any::<bool>(),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let specs = [
            VersionSpec { gap: 1, data: Data::Valid(good.clone()), marker: true, temp: None },
            VersionSpec { gap: 1, data: torn, marker, temp: None },
        ];
        let laid = lay_down(tmp.path(), &specs, &[]);
        if marker && laid[1].2.as_deref().is_some_and(names_a_newer_format) {
            // The burst hit the format field: a marked version of a newer format is refused.
            let refused = matches!(read_only(tmp.path()), Err(StateError::NewerFormat { .. }));
            prop_assert!(refused, "a marked version of a newer format must be refused");
            return Ok(());
        }
        let state = read_only(tmp.path()).unwrap().unwrap();
        prop_assert_eq!(state.version(), Some(laid[0].0));
        prop_assert_eq!(typed(&state), typed_from(&good));
        check_dir(&laid, tmp.path())?;
    }
}

/// The state directory itself replaced by a file, or missing: an error or "fresh", no panic.
#[test]
fn a_state_dir_that_is_not_a_directory_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("state");
    fs::write(&file, b"x").unwrap();
    assert!(open(&file).is_err());
    assert!(read_only(&file).is_err());
    let missing: PathBuf = tmp.path().join("missing");
    assert!(read_only(&missing).unwrap().is_none());
}

/// Found while extending these tests past plain files: a FIFO under a version's name made both
/// readers block forever (the deadline caught it), and a link to a device read without end.
/// Neither is a regular file, so each is a defect that is skipped.
#[test]
fn a_version_that_is_not_a_regular_file_is_skipped_not_waited_on() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let good: Entries = BTreeMap::from([(Drained::NAME.to_owned(), bincode::serialize(&true).unwrap())]);
    fs::write(data_path(dir, 1), format::encode(&good).unwrap()).unwrap();
    fs::write(marker_path(dir, 1), b"").unwrap();
    nix::unistd::mkfifo(&data_path(dir, 2), nix::sys::stat::Mode::S_IRWXU).unwrap();
    fs::write(marker_path(dir, 2), b"").unwrap();
    std::os::unix::fs::symlink("/dev/zero", data_path(dir, 3)).unwrap();
    fs::write(marker_path(dir, 3), b"").unwrap();
    for version in [2, 3] {
        let path = data_path(dir, version);
        let reason = bounded("read_version", move || format::read_version(&path)).unwrap_err();
        assert!(reason.to_string().contains("not a regular file"), "{reason}");
    }
    let state = read_only(dir).unwrap().unwrap();
    assert_eq!((state.version(), state.get::<Drained>().unwrap()), (Some(1), Some(true)));
    let state = open(dir).unwrap();
    assert_eq!((state.version(), state.get::<Drained>().unwrap()), (Some(1), Some(true)));
}
