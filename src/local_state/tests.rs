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

#[test]
fn unknown_format_version_is_skipped() {
    newest_damaged_falls_back(|data, _| {
        let mut bytes = fs::read(data).unwrap();
        bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
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
        WriteStep::SyncDirAfterRename,
        WriteStep::CreateMarker,
        WriteStep::SyncDirAfterMarker,
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
         version {b} (1970-01-01T00:00:01.001Z): ok\n\
         \x20 earlier-session-ids = [76,75]\n\
         \x20 last-session-id = 77\n\
         \x20 mystery = <4 bytes, unknown key>\n\
         \x20 supervisor-id = \"sup-1\"\n\
         version {a} (1970-01-01T00:00:01.000Z): ok\n\
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
