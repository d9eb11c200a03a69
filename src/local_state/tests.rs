//! Unit tests of the local state store: round trips, versioning, retention, every torn-write
//! shape falling back to the previous values, injected write failures, and the dump.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::SystemTime;

use super::dump::{VersionStatus, format_unix_ms, versions};
use super::error::WriteStep;
use super::format::Defect;
use super::keys::known_keys;
use super::store::{KEEP_VERSIONS, next_version};
use super::*;

/// A key this build does not register, standing in for one written by a newer gale.
struct Mystery;
impl Key for Mystery {
    const NAME: &'static str = "mystery";
    type Value = u32;
    type Stored = u32;
    fn to_stored(value: &u32) -> u32 {
        *value
    }
    fn from_stored(stored: u32) -> u32 {
        stored
    }
}

fn frozen_clock() -> u64 {
    1_000
}

fn rewound_clock() -> u64 {
    500
}

fn later_clock() -> u64 {
    5_000
}

/// File name → (length, mtime): enough to notice any creation, deletion or rewrite.
fn listing(dir: &Path) -> BTreeMap<String, (u64, SystemTime)> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            (e.file_name().into_string().unwrap(), (meta.len(), meta.modified().unwrap()))
        })
        .collect()
}

fn names(dir: &Path) -> Vec<String> {
    listing(dir).into_keys().collect()
}

#[test]
fn each_key_round_trips_through_a_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let mut state = LocalState::open(tmp.path()).unwrap();
    assert_eq!(state.version(), None);
    assert_eq!(state.get::<SupervisorId>().unwrap(), None);

    state.put::<SupervisorId>(&"3f2a-host".to_owned()).unwrap();
    state.put::<LastSessionId>(&-42).unwrap();
    let last = state.put::<EarlierSessionIds>(&vec![41, 40, 39]).unwrap();

    let reopened = LocalState::open(tmp.path()).unwrap();
    assert_eq!(reopened.version(), Some(last));
    assert_eq!(reopened.get::<SupervisorId>().unwrap().as_deref(), Some("3f2a-host"));
    assert_eq!(reopened.get::<LastSessionId>().unwrap(), Some(-42));
    assert_eq!(reopened.get::<EarlierSessionIds>().unwrap(), Some(vec![41, 40, 39]));
}

#[test]
fn update_writes_several_keys_in_one_version() {
    let tmp = tempfile::tempdir().unwrap();
    let mut state = LocalState::open(tmp.path()).unwrap();
    state.put::<LastSessionId>(&1).unwrap();
    let before = versions(tmp.path()).unwrap().len();

    let version = state
        .update(|batch| {
            let previous = batch.get::<LastSessionId>()?.unwrap();
            batch.put::<EarlierSessionIds>(&vec![previous])?;
            batch.put::<LastSessionId>(&2)?;
            batch.put::<SupervisorId>(&"sup".to_owned())
        })
        .unwrap();

    let after = versions(tmp.path()).unwrap();
    assert_eq!(after.len(), before + 1, "one update, one version");
    assert_eq!(after[0].version, version);
    let reopened = LocalState::open(tmp.path()).unwrap();
    assert_eq!(reopened.get::<LastSessionId>().unwrap(), Some(2));
    assert_eq!(reopened.get::<EarlierSessionIds>().unwrap(), Some(vec![1]));
    assert_eq!(reopened.get::<SupervisorId>().unwrap().as_deref(), Some("sup"));
}

#[test]
fn failed_update_closure_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut state = LocalState::open(tmp.path()).unwrap();
    state.put::<LastSessionId>(&1).unwrap();
    let before = listing(tmp.path());
    let err = state.update(|batch| {
        batch.put::<LastSessionId>(&2)?;
        batch.get::<Mystery>()?;
        Err(StateError::EncodePayload { source: Box::new(bincode::ErrorKind::SizeLimit) })
    });
    assert!(err.is_err());
    assert_eq!(state.get::<LastSessionId>().unwrap(), Some(1));
    assert_eq!(listing(tmp.path()), before);
}

#[test]
fn only_the_newest_four_versions_are_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let mut state = LocalState::open(tmp.path()).unwrap();
    let written: Vec<u64> = (0..10).map(|n| state.put::<LastSessionId>(&n).unwrap()).collect();

    let on_disk: Vec<u64> = versions(tmp.path()).unwrap().iter().map(|v| v.version).collect();
    let newest: Vec<u64> = written.iter().rev().take(KEEP_VERSIONS).copied().collect();
    assert_eq!(on_disk, newest);
    assert_eq!(names(tmp.path()).len(), 2 * KEEP_VERSIONS, "a data file and a marker each");
    assert_eq!(LocalState::open(tmp.path()).unwrap().get::<LastSessionId>().unwrap(), Some(9));
}

#[test]
fn a_marker_is_a_link_to_its_data_file_and_an_empty_marker_still_counts() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let mut state = LocalState::open(tmp.path()).unwrap();
    let v = state.put::<LastSessionId>(&1).unwrap();
    let (data, marker) = (tmp.path().join(v.to_string()), tmp.path().join(format!("{v}.version")));
    let ino = |p: &std::path::Path| fs::metadata(p).unwrap().ino();
    assert_eq!(ino(&marker), ino(&data), "no inode of its own");

    // An earlier release's marker: an empty file of its own.
    let w = state.put::<LastSessionId>(&2).unwrap();
    let old_marker = tmp.path().join(format!("{w}.version"));
    fs::remove_file(&old_marker).unwrap();
    fs::write(&old_marker, "").unwrap();
    assert_eq!(LocalState::open(tmp.path()).unwrap().get::<LastSessionId>().unwrap(), Some(2));
}

#[test]
fn version_is_bumped_when_the_clock_does_not_move_forward() {
    let tmp = tempfile::tempdir().unwrap();
    let mut state = LocalState::open_with_clock(tmp.path(), frozen_clock).unwrap();
    assert_eq!(state.put::<LastSessionId>(&1).unwrap(), 1_000);
    assert_eq!(state.put::<LastSessionId>(&2).unwrap(), 1_001, "clock did not move");
    state.set_clock(rewound_clock);
    assert_eq!(state.put::<LastSessionId>(&3).unwrap(), 1_002, "clock went backwards");
    state.set_clock(later_clock);
    assert_eq!(state.put::<LastSessionId>(&4).unwrap(), 5_000, "clock moved on");

    // A reopened store continues past what is on disk, not from its own clock.
    let mut reopened = LocalState::open_with_clock(tmp.path(), rewound_clock).unwrap();
    assert_eq!(reopened.put::<LastSessionId>(&5).unwrap(), 5_001);

    assert_eq!(next_version(None, 7), 7);
    assert_eq!(next_version(Some(6), 7), 7);
    assert_eq!(next_version(Some(7), 7), 8);
    assert_eq!(next_version(Some(9), 7), 10);
}

/// Writes version A (`last-session-id` 1) then B (2, plus a supervisor id), damages B with
/// `damage`, and checks that open falls back to A's values and that the next write goes past B.
fn newest_damaged_falls_back(damage: impl FnOnce(&Path, &Path)) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut state = LocalState::open(dir).unwrap();
    let a = state.put::<LastSessionId>(&1).unwrap();
    let b = state
        .update(|batch| {
            batch.put::<LastSessionId>(&2)?;
            batch.put::<SupervisorId>(&"b".to_owned())
        })
        .unwrap();
    drop(state);
    damage(&dir.join(b.to_string()), &dir.join(format!("{b}.version")));

    let mut reopened = LocalState::open(dir).unwrap();
    assert_eq!(reopened.version(), Some(a));
    assert_eq!(reopened.get::<LastSessionId>().unwrap(), Some(1));
    assert_eq!(reopened.get::<SupervisorId>().unwrap(), None);

    let c = reopened.put::<LastSessionId>(&3).unwrap();
    assert!(c > b, "a new write must become the newest version");
    assert_eq!(LocalState::open(dir).unwrap().get::<LastSessionId>().unwrap(), Some(3));
}

#[test]
fn truncated_newest_falls_back_to_previous() {
    newest_damaged_falls_back(|data, _| {
        let bytes = fs::read(data).unwrap();
        fs::write(data, &bytes[..bytes.len() - 3]).unwrap();
    });
}

#[test]
fn truncated_header_falls_back_to_previous() {
    newest_damaged_falls_back(|data, _| {
        let bytes = fs::read(data).unwrap();
        fs::write(data, &bytes[..10]).unwrap();
    });
}

#[test]
fn flipped_payload_byte_falls_back_to_previous() {
    newest_damaged_falls_back(|data, _| {
        let mut bytes = fs::read(data).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        fs::write(data, &bytes).unwrap();
    });
}

#[test]
fn bad_magic_falls_back_to_previous() {
    newest_damaged_falls_back(|data, _| {
        let mut bytes = fs::read(data).unwrap();
        bytes[0] = b'X';
        fs::write(data, &bytes).unwrap();
    });
}

#[test]
fn zero_length_newest_falls_back_to_previous() {
    newest_damaged_falls_back(|data, _| fs::write(data, b"").unwrap());
}

#[test]
fn marker_without_data_falls_back_to_previous() {
    newest_damaged_falls_back(|data, _| fs::remove_file(data).unwrap());
}

/// A format below the oldest this build reads is a defect (skipped); a newer one refuses the
/// whole directory instead (`a_newer_format_anywhere_in_the_directory_is_refused…`).
#[test]
fn unknown_format_version_is_skipped() {
    newest_damaged_falls_back(|data, _| {
        let mut bytes = fs::read(data).unwrap();
        bytes[8..12].copy_from_slice(&0u32.to_le_bytes());
        fs::write(data, &bytes).unwrap();
    });
}

#[test]
fn data_without_marker_is_ignored_and_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut state = LocalState::open(dir).unwrap();
    let a = state.put::<LastSessionId>(&1).unwrap();
    let b = state.put::<LastSessionId>(&2).unwrap();
    fs::remove_file(dir.join(format!("{b}.version"))).unwrap();
    fs::write(dir.join(format!("{}.tmp", b + 1)), b"partial").unwrap();
    fs::write(dir.join("not-ours"), b"x").unwrap();

    let reopened = LocalState::open(dir).unwrap();
    assert_eq!(reopened.version(), Some(a));
    assert_eq!(reopened.get::<LastSessionId>().unwrap(), Some(1));
    let expected = vec![a.to_string(), format!("{a}.version"), "not-ours".to_owned()];
    assert_eq!(names(dir), expected, "torn leftovers removed, foreign files kept");
}

#[test]
fn all_versions_corrupt_is_an_error_not_an_empty_store() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut state = LocalState::open(dir).unwrap();
    state.put::<SupervisorId>(&"me".to_owned()).unwrap();
    let b = state.put::<LastSessionId>(&2).unwrap();
    for info in versions(dir).unwrap() {
        fs::write(dir.join(info.version.to_string()), b"").unwrap();
    }
    fs::write(dir.join(format!("{}.tmp", b + 1)), b"partial").unwrap();
    let before = listing(dir);

    let err = LocalState::open(dir).unwrap_err();
    assert!(matches!(err, StateError::NoReadableVersion { count: 2, newest, .. } if newest == b));
    let message = err.to_string();
    assert!(message.contains("move the directory away"), "{message}");
    assert_eq!(listing(dir), before, "a directory we refuse must be left as found");
}

#[test]
fn empty_directory_is_a_fresh_store_and_is_created_0700() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let state = LocalState::open(&dir).unwrap();
    assert_eq!(state.version(), None);
    assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
}

#[test]
fn failed_write_at_any_step_keeps_memory_and_disk_as_before() {
    let steps = [
        WriteStep::CreateTemp,
        WriteStep::WriteTemp,
        WriteStep::SyncTemp,
        WriteStep::Rename,
        WriteStep::CreateMarker,
        WriteStep::SyncDir,
    ];
    for step in steps {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut state = LocalState::open(dir).unwrap();
        let a = state.put::<LastSessionId>(&1).unwrap();
        let before = listing(dir);

        state.fail_at = Some(step);
        let err = state.put::<LastSessionId>(&2).unwrap_err();
        assert!(matches!(err, StateError::Write { step: s, .. } if s == step), "{step:?}: {err}");
        assert_eq!(state.get::<LastSessionId>().unwrap(), Some(1), "{step:?}");
        assert_eq!(state.version(), Some(a), "{step:?}");
        assert_eq!(listing(dir), before, "{step:?}: partial files removed");
        assert_eq!(LocalState::open(dir).unwrap().get::<LastSessionId>().unwrap(), Some(1));

        state.fail_at = None;
        state.put::<LastSessionId>(&3).unwrap();
        assert_eq!(LocalState::open(dir).unwrap().get::<LastSessionId>().unwrap(), Some(3));
    }
}

#[test]
fn decode_error_names_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let mut state = LocalState::open(tmp.path()).unwrap();
    // A u32 is too short to be a String's length prefix plus bytes.
    state.put::<Mystery>(&7).unwrap();
    struct SameNameAsString;
    impl Key for SameNameAsString {
        const NAME: &'static str = "mystery";
        type Value = String;
        type Stored = String;
        fn to_stored(value: &String) -> String {
            value.clone()
        }
        fn from_stored(stored: String) -> String {
            stored
        }
    }
    let err = state.get::<SameNameAsString>().unwrap_err();
    assert!(err.to_string().contains("\"mystery\""), "{err}");
}

#[test]
fn dump_lists_versions_statuses_and_values_without_touching_the_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut state = LocalState::open_with_clock(dir, frozen_clock).unwrap();
    let a = state.put::<SupervisorId>(&"sup-1".to_owned()).unwrap();
    let b = state
        .update(|batch| {
            batch.put::<LastSessionId>(&77)?;
            batch.put::<EarlierSessionIds>(&vec![76, 75])?;
            batch.put::<Mystery>(&9)
        })
        .unwrap();
    let c = state.put::<LastSessionId>(&78).unwrap();
    fs::write(dir.join(c.to_string()), b"").unwrap();
    fs::write(dir.join(format!("{}", c + 1)), b"torn").unwrap();
    let before = listing(dir);

    let text = dump(dir).unwrap();
    assert_eq!(listing(dir), before, "dump must not modify the directory");

    let expected = format!(
        "local state in {dir}: 4 versions, newest first\n\
         version 1003 (1970-01-01T00:00:01.003Z): no marker (torn write)\n\
         version {c} (1970-01-01T00:00:01.002Z): zero-length data file\n\
         version {b} (1970-01-01T00:00:01.001Z): ok, format 2\n\
         \x20 earlier-session-ids = [76,75]\n\
         \x20 last-session-id = 77\n\
         \x20 mystery = <4 bytes, unknown key>\n\
         \x20 supervisor-id = \"sup-1\"\n\
         version {a} (1970-01-01T00:00:01.000Z): ok, format 2\n\
         \x20 supervisor-id = \"sup-1\"\n",
        dir = dir.display()
    );
    assert_eq!(text, expected);

    let infos = versions(dir).unwrap();
    assert_eq!(infos[0].status, VersionStatus::NoMarker);
    assert_eq!(infos[1].status, VersionStatus::Unreadable(Defect::Empty));
}

#[test]
fn dump_of_a_missing_directory_fails_without_creating_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("absent");
    assert!(matches!(dump(&dir), Err(StateError::ReadDir { .. })));
    assert!(!dir.exists());
    fs::create_dir(&dir).unwrap();
    assert!(dump(&dir).unwrap().contains("no versions"));
}

#[test]
fn timestamps_render_as_utc() {
    assert_eq!(format_unix_ms(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(format_unix_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
    assert_eq!(format_unix_ms(1_709_251_199_999), "2024-02-29T23:59:59.999Z");
    assert_eq!(format_unix_ms(4_102_444_800_123), "2100-01-01T00:00:00.123Z");
}

#[test]
fn known_keys_decode_to_json() {
    let keys = known_keys();
    assert_eq!(
        keys.keys().copied().collect::<Vec<_>>(),
        [
            "drained",
            "earlier-session-ids",
            "last-session-id",
            "local-assignments",
            "session-owner",
            "supervisor-id",
            "workers"
        ]
    );
    let bytes = bincode::serialize(&vec![3i64, 2]).unwrap();
    assert_eq!(keys["earlier-session-ids"](&bytes).unwrap(), serde_json::json!([3, 2]));
    assert!(keys["supervisor-id"](&[1]).is_err());
}

/// Writes a data file of `format` by hand (the container of that format around `entries`).
fn write_format(dir: &Path, version: u64, format: u32, entries: &super::format::Entries) {
    let payload = bincode::serialize(entries).unwrap();
    let mut bytes = Vec::new();
    bytes.extend_from_slice(super::format::MAGIC);
    bytes.extend_from_slice(&format.to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    let crc = super::format::checksum(format, &bytes, &payload);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes.extend_from_slice(&payload);
    fs::write(dir.join(version.to_string()), bytes).unwrap();
    fs::write(dir.join(format!("{version}.version")), b"").unwrap();
}

#[test]
fn a_newer_format_anywhere_in_the_directory_is_refused_and_nothing_is_touched() {
    let good = super::format::Entries::from([(Drained::NAME.to_owned(), bincode::serialize(&true).unwrap())]);
    // Newest version newer, then an older version newer beside a readable newest one.
    for (newer_version, other_version) in [(20, 10), (10, 20)] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        write_format(dir, other_version, stored::FORMAT_VERSION, &good);
        write_format(dir, newer_version, stored::FORMAT_VERSION + 1, &good);
        fs::write(dir.join("30.tmp"), b"torn").unwrap();
        let before = listing(dir);
        for err in [LocalState::open(dir).unwrap_err(), LocalState::read_only(dir).unwrap_err()] {
            assert!(
                matches!(err, StateError::NewerFormat { found, .. } if found == stored::FORMAT_VERSION + 1),
                "{err}"
            );
            let text = err.to_string();
            assert!(!text.contains('\n'), "one line: {text}");
            assert!(
                text.contains(&format!("{}", dir.display()))
                    && text.contains("newer gale (format 3; this gale reads formats 1-2)"),
                "{text}"
            );
        }
        assert_eq!(listing(dir), before, "a refused directory is left as found");
        assert!(dump(dir).unwrap().contains("written by a newer gale (format 3"), "dump still shows it");
    }
}

#[test]
fn an_unknown_older_format_is_a_skipped_defect() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let entries = |v: bool| super::format::Entries::from([(Drained::NAME.to_owned(), bincode::serialize(&v).unwrap())]);
    write_format(dir, 10, stored::FORMAT_VERSION, &entries(true));
    write_format(dir, 20, 0, &entries(false));
    let state = LocalState::open(dir).unwrap();
    assert_eq!((state.version(), state.get::<Drained>().unwrap()), (Some(10), Some(true)));
    assert_eq!(versions(dir).unwrap()[0].status, VersionStatus::Unreadable(Defect::UnknownFormat(0)));
}

#[test]
fn a_format_1_state_is_read_migrated_and_written_back_as_the_current_format() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let record = stored::v1::WorkerRecord {
        worker_id: "w-1".into(),
        port: 6700,
        topology_id: "t-1".into(),
        process: stored::v1::ProcessIdentity { pid: 1, start_ticks: 2, boot_id: "b".into() },
        launched_at_ms: 3,
        job: stored::v1::PortJob {
            topology_id: "t-1".into(),
            zxid: 4,
            launch: stored::v1::Launch {
                command: vec!["/bin/true".into()],
                env: BTreeMap::new(),
                liveness: stored::v1::LivenessMode::Process,
                start_timeout_secs: None,
                heartbeat_timeout_secs: None,
                memory_mb: None,
                cpu_percent: None,
                user: None,
            },
            blobs: vec![],
        },
    };
    let records = stored::v1::WorkerRecords::from([("w-1".to_owned(), record)]);
    let entries = super::format::Entries::from([
        (Workers::NAME.to_owned(), bincode::serialize(&records).unwrap()),
        (SupervisorId::NAME.to_owned(), bincode::serialize("sup-old").unwrap()),
    ]);
    write_format(dir, 10, 1, &entries);

    let mut state = LocalState::open(dir).unwrap();
    let workers = state.get::<Workers>().unwrap().unwrap();
    assert_eq!((workers["w-1"].launched_by.as_deref(), workers["w-1"].job.zxid), (None, 4));
    assert_eq!(state.get::<SupervisorId>().unwrap().as_deref(), Some("sup-old"));
    assert!(dump(dir).unwrap().contains("ok, format 1 (shown as format 2)"), "{}", dump(dir).unwrap());

    let written = state.put::<Drained>(&true).unwrap();
    let bytes = fs::read(dir.join(written.to_string())).unwrap();
    assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), stored::FORMAT_VERSION);
    let reread = LocalState::open(dir).unwrap();
    assert_eq!(reread.get::<Workers>().unwrap(), Some(workers), "the migrated records, now stored as format 2");
    assert_eq!(reread.get::<SupervisorId>().unwrap().as_deref(), Some("sup-old"));
}

#[test]
fn a_damaged_format_field_does_not_pass_for_format_1() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut state = LocalState::open(dir).unwrap();
    let a = state.put::<LastSessionId>(&1).unwrap();
    let b = state.put::<LastSessionId>(&2).unwrap();
    let path = dir.join(b.to_string());
    let mut bytes = fs::read(&path).unwrap();
    bytes[8] = 1;
    fs::write(&path, bytes).unwrap();
    let reopened = LocalState::open(dir).unwrap();
    assert_eq!(reopened.version(), Some(a), "the CRC covers the format field from format 2 on");
}
