//! The stored types cannot change unnoticed, and every released format still reads.
//!
//! - Golden bytes: a fixed sample of every key, encoded with the current format's types,
//!   must equal `golden/format-<FORMAT_VERSION>.hex` byte for byte; format 1's sample must
//!   equal `golden/format-1.hex` (and decode from it). A reordered, removed, added or retyped
//!   field of a stored type fails here.
//! - Migration: format 1's golden values migrate to the current types.
//! - The releases' fixtures (`tests/fixtures/<release>/*/local/state`, written by the real
//!   binaries) read through the store, without ZooKeeper.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{FORMAT_VERSION, decode, encode, migrate, v1, v2};
use crate::local_state::format::Entries;
use crate::local_state::keys::{Key, Workers, known_keys};

const BUMP: &str = "a stored type's encoding changed: bump FORMAT_VERSION, freeze the old types as vN, add a \
                    migration (see src/local_state/stored/mod.rs); never edit the golden file of a released format";

fn golden(format: u32) -> BTreeMap<String, String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("src/local_state/stored/golden/format-{format}.hex"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (key, hex) = l.split_once(' ').unwrap_or_else(|| panic!("bad golden line {l:?}"));
            (key.to_owned(), hex.trim().to_owned())
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
}

fn launch_v1() -> v1::Launch {
    v1::Launch {
        command: vec!["/bin/sleep".into(), "{port}".into()],
        env: BTreeMap::from([("A".into(), "b".into())]),
        liveness: v1::LivenessMode::Heartbeat,
        start_timeout_secs: Some(30),
        heartbeat_timeout_secs: Some(10),
        memory_mb: Some(64),
        cpu_percent: Some(50),
        user: Some("nobody".into()),
    }
}

fn port_job_v1() -> v1::PortJob {
    v1::PortJob {
        topology_id: "t-1".into(),
        zxid: 17,
        launch: launch_v1(),
        blobs: vec![v1::BlobRef { key: "k".into(), name: "n".into(), extract: true, restart_on_update: false }],
    }
}

fn identity_v1() -> v1::ProcessIdentity {
    v1::ProcessIdentity { pid: 4242, start_ticks: 987_654, boot_id: "b00t".into() }
}

/// Format 1's sample of every key, encoded.
fn sample_v1() -> BTreeMap<String, Vec<u8>> {
    let record = v1::WorkerRecord {
        worker_id: "w-1".into(),
        port: 6700,
        topology_id: "t-1".into(),
        process: identity_v1(),
        launched_at_ms: 1_700_000_000_000,
        job: port_job_v1(),
    };
    BTreeMap::from([
        ("supervisor-id".into(), encode(&"sup-1".to_owned()).unwrap()),
        ("last-session-id".into(), encode(&0x0123_4567_89ab_cdef_i64).unwrap()),
        ("earlier-session-ids".into(), encode(&vec![2_i64, -1]).unwrap()),
        ("session-owner".into(), encode(&identity_v1()).unwrap()),
        ("local-assignments".into(), encode(&v1::LocalAssignments::from([(6700, port_job_v1())])).unwrap()),
        ("workers".into(), encode(&v1::WorkerRecords::from([("w-1".into(), record)])).unwrap()),
        ("drained".into(), encode(&true).unwrap()),
    ])
}

fn worker_v2(launched_by: Option<&str>) -> v2::WorkerRecord {
    v2::WorkerRecord {
        worker_id: "w-1".into(),
        port: 6700,
        topology_id: "t-1".into(),
        process: identity_v1(),
        launched_at_ms: 1_700_000_000_000,
        launched_by: launched_by.map(str::to_owned),
        job: port_job_v1(),
    }
}

/// The current format's sample of every key, encoded with the keys' own stored types.
fn sample_current() -> BTreeMap<String, Vec<u8>> {
    let mut sample = sample_v1();
    let workers = v2::WorkerRecords::from([("w-1".into(), worker_v2(Some("0.2.0")))]);
    sample.insert(Workers::NAME.into(), encode::<<Workers as Key>::Stored>(&workers).unwrap());
    sample
}

fn compare(format: u32, sample: &BTreeMap<String, Vec<u8>>) {
    let golden = golden(format);
    let actual: BTreeMap<String, String> = sample.iter().map(|(k, v)| (k.clone(), hex(v))).collect();
    let listing: String = actual.iter().map(|(k, v)| format!("{k} {v}\n")).collect();
    for (key, want) in &golden {
        let got = actual.get(key).map(String::as_str).unwrap_or("<no sample>");
        assert_eq!(got, want, "format {format}, key {key:?}: {BUMP}\nthe encoding now:\n{listing}");
    }
    let extra: Vec<&String> = actual.keys().filter(|k| !golden.contains_key(*k)).collect();
    assert!(
        extra.is_empty(),
        "format {format}: keys {extra:?} have no golden bytes: {BUMP}\nthe encoding now:\n{listing}"
    );
}

#[test]
fn the_current_formats_encoding_is_its_golden_bytes() {
    let sample = sample_current();
    let keys: Vec<&str> = known_keys().into_keys().collect();
    assert_eq!(sample.keys().map(String::as_str).collect::<Vec<_>>(), keys, "every key has a sample");
    compare(FORMAT_VERSION, &sample);
}

#[test]
fn format_1_is_frozen_and_decodes_from_its_golden_bytes() {
    compare(1, &sample_v1());
    let golden = golden(1);
    let records: v1::WorkerRecords = decode(&unhex(&golden["workers"])).unwrap();
    assert_eq!(records["w-1"].job, port_job_v1());
    let owner: v1::ProcessIdentity = decode(&unhex(&golden["session-owner"])).unwrap();
    assert_eq!(owner, identity_v1());
}

#[test]
fn format_1_migrates_to_the_current_types() {
    let entries: Entries = golden(1).into_iter().map(|(k, v)| (k, unhex(&v))).collect();
    let migrated = migrate(1, entries.clone()).unwrap();
    let records: v2::WorkerRecords = decode(&migrated[Workers::NAME]).unwrap();
    assert_eq!(records, v2::WorkerRecords::from([("w-1".into(), worker_v2(None))]));
    for (key, bytes) in &entries {
        if key != Workers::NAME {
            assert_eq!(&migrated[key], bytes, "{key} is the same type in formats 1 and 2");
        }
    }
    // Each current-format value decodes as its key's stored type, and JSON renders it.
    for (key, to_json) in known_keys() {
        to_json(&migrated[key]).unwrap_or_else(|e| panic!("{key}: {e}"));
    }
}

#[test]
fn a_value_that_leaves_bytes_unread_does_not_decode() {
    let mut bytes = encode(&worker_v2(None)).unwrap();
    assert!(decode::<v1::WorkerRecord>(&bytes).is_err(), "a format 2 record is no format 1 record");
    bytes.push(0);
    assert!(decode::<v2::WorkerRecord>(&bytes).is_err(), "trailing bytes are refused");
}

#[test]
fn migrating_a_format_1_record_that_does_not_decode_names_the_key() {
    let entries = Entries::from([(Workers::NAME.to_owned(), vec![1, 2, 3])]);
    let err = migrate(1, entries).unwrap_err();
    assert_eq!((err.key, err.format), (Workers::NAME, 1), "{err}");
}

// ------------------------------------------------------------------------------------------
// The releases' fixtures

fn fixture_releases() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut releases: Vec<PathBuf> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    releases.sort();
    assert!(releases.iter().any(|r| r.ends_with("v0.1.0")), "the v0.1.0 fixtures are committed: {releases:?}");
    releases
}

/// The format of the newest version in `dir`.
fn newest_format(dir: &Path) -> u32 {
    let newest = crate::local_state::dump::versions(dir).unwrap().into_iter().next().unwrap();
    newest.decoded.unwrap_or_else(|| panic!("{}: newest version {:?}", dir.display(), newest.status)).format
}

#[test]
fn every_releases_fixtures_read_through_the_store_without_zookeeper() {
    use crate::local_state::{Drained, EarlierSessionIds, LastSessionId, LocalAssignmentsKey, LocalState};
    use crate::local_state::{SessionOwner, SupervisorId};
    use crate::model::assignment::LivenessMode;

    for release in fixture_releases() {
        let name = release.file_name().unwrap().to_string_lossy().into_owned();
        for case in ["running", "drained"] {
            let dir = release.join(case).join("local/state");
            let format = newest_format(&dir);
            assert!(format <= FORMAT_VERSION, "{name}/{case}: format {format}");
            if name == "v0.1.0" {
                assert_eq!(format, 1, "{name}/{case}: gale 0.1.0 wrote format 1");
            }
            let state = LocalState::read_only(&dir).unwrap().unwrap();
            let at = format!("{name}/{case}");
            assert_eq!(state.get::<SupervisorId>().unwrap(), Some(format!("fixture-{case}")), "{at}");
            assert!(state.get::<LastSessionId>().unwrap().is_some(), "{at}");
            assert!(!state.get::<EarlierSessionIds>().unwrap().unwrap_or_default().is_empty(), "{at}");
            assert!(state.get::<SessionOwner>().unwrap().is_some(), "{at}");
            let jobs = state.get::<LocalAssignmentsKey>().unwrap().unwrap();
            let topologies: Vec<&str> = jobs.values().map(|j| j.topology_id.as_str()).collect();
            assert_eq!(topologies, ["t-sleep", "t-beat"], "{at}: ports 6700, 6701");
            assert_eq!(jobs[&6700].launch.env.get("FIXTURE").map(String::as_str), Some("1"), "{at}");
            assert_eq!(jobs[&6701].launch.liveness, LivenessMode::Heartbeat, "{at}");
            let workers = state.get::<Workers>().unwrap().unwrap_or_default();
            if case == "drained" {
                assert_eq!(state.get::<Drained>().unwrap(), Some(true), "{at}");
                assert!(workers.is_empty(), "{at}: {workers:?}");
                continue;
            }
            assert_ne!(state.get::<Drained>().unwrap(), Some(true), "{at}");
            let ports: Vec<u16> = workers.values().map(|w| w.port).collect();
            assert_eq!(ports.len(), 2, "{at}: {workers:?}");
            for w in workers.values() {
                assert_eq!(w.job.launch, jobs[&w.port].launch, "{at}: launched with the job its port has");
                if format == 1 {
                    assert_eq!(w.launched_by, None, "{at}: migrated from format 1");
                } else {
                    assert!(w.launched_by.is_some(), "{at}");
                }
            }
        }
    }
}
