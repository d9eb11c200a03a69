//! Tests of worker log rotation on real files in temp dirs: the shift and `keep`, what an
//! `O_APPEND` writer holding the file sees, the catch-up copy, the node quota, and symlinks.

use std::io::Write;
use std::time::Duration;

use super::*;

const BIG: u64 = u64::MAX;

fn policy(max_bytes: u64, keep: usize, node_quota_bytes: u64) -> LogPolicy {
    LogPolicy { max_bytes, keep, node_quota_bytes }
}

/// `<root>/<topology>/<port>`, created.
fn slot(root: &Path, topology: &str, port: u16) -> PathBuf {
    let dir = root.join(topology).join(port.to_string());
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// The worker's side: stdout opened the way `launch::spawn_in` opens it.
fn append_writer(path: &Path) -> File {
    OpenOptions::new().append(true).create(true).open(path).unwrap()
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap()
}

fn set_mtime(path: &Path, secs_ago: u64) {
    let file = OpenOptions::new().write(true).open(path).unwrap();
    file.set_modified(SystemTime::now() - Duration::from_secs(secs_ago)).unwrap();
}

#[test]
fn policy_from_config_is_in_mebibytes() {
    let logs = LogsConfig {
        worker_log_max_mb: 100,
        worker_log_keep: 5,
        node_quota_mb: 10_240,
        format: crate::config::LogFormat::Auto,
        level: "info".into(),
    };
    assert_eq!(LogPolicy::from_config(&logs), policy(100 << 20, 5, 10_240 << 20));
}

#[test]
fn only_canonical_numbered_files_are_rotated_files() {
    assert_eq!(rotated_index("worker.log.1"), Some(1));
    assert_eq!(rotated_index("worker.log.12"), Some(12));
    for not in ["worker.log", "worker.log.", "worker.log.0", "worker.log.01", "worker.log.+1", "worker.log.rotating"] {
        assert_eq!(rotated_index(not), None, "{not}");
    }
}

#[test]
fn a_missing_root_is_an_empty_sweep() {
    let tmp = tempfile::tempdir().unwrap();
    assert_eq!(sweep(&tmp.path().join("workers"), &policy(1, 1, 1)), SweepReport::default());
}

#[test]
fn rotation_past_the_limit_shifts_generations_and_keeps_only_keep() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = slot(tmp.path(), "wordcount", 6700);
    let active = dir.join("worker.log");
    let p = policy(10, 2, BIG);

    // Exactly at the limit is not past it.
    fs::write(&active, "0123456789").unwrap();
    let report = sweep(tmp.path(), &p);
    assert!(report.rotated.is_empty(), "{report:?}");
    assert_eq!(report.total_bytes, 10);

    let mut writer = append_writer(&active);
    for generation in ["gen1", "gen2", "gen3"] {
        writer.write_all(format!("{generation}: more than ten bytes\n").as_bytes()).unwrap();
        let report = sweep(tmp.path(), &p);
        assert_eq!(report.rotated, vec![active.clone()], "{generation}");
        assert_eq!(read(&active), "", "{generation}: the active log is emptied");
    }
    assert_eq!(read(&dir.join("worker.log.1")), "gen3: more than ten bytes\n");
    assert_eq!(read(&dir.join("worker.log.2")), "gen2: more than ten bytes\n");
    assert!(!dir.join("worker.log.3").exists(), "gen1 (with the first ten bytes) was dropped: keep = 2");
    assert!(!dir.join(ROTATING_FILE).exists());
}

#[test]
fn the_last_kept_generation_is_reported_as_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = slot(tmp.path(), "t", 1);
    fs::write(dir.join("worker.log.1"), "old-1").unwrap();
    fs::write(dir.join("worker.log.2"), "old-2").unwrap();
    fs::write(dir.join("worker.log"), "a long enough line\n").unwrap();
    let report = sweep(tmp.path(), &policy(5, 2, BIG));
    assert_eq!(report.deleted, vec![dir.join("worker.log.2")]);
    assert_eq!(read(&dir.join("worker.log.2")), "old-1");
    assert_eq!(read(&dir.join("worker.log.1")), "a long enough line\n");
}

#[test]
fn an_append_writer_keeps_writing_to_the_active_file_from_offset_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = slot(tmp.path(), "wordcount", 6700);
    let active = dir.join("worker.log");
    let mut worker = append_writer(&active);
    worker.write_all(&[b'x'; 4096]).unwrap();
    worker.write_all(b"last line before rotation\n").unwrap();

    let report = sweep(tmp.path(), &policy(1024, 3, BIG));
    assert_eq!(report.rotated, vec![active.clone()]);
    worker.write_all(b"first line after rotation\n").unwrap();

    // Same file (not a renamed one), only the new bytes, no hole at the start.
    let bytes = fs::read(&active).unwrap();
    assert_eq!(bytes, b"first line after rotation\n");
    assert!(!bytes.contains(&0), "no NUL bytes in the active log");
    let rotated = fs::read(dir.join("worker.log.1")).unwrap();
    assert_eq!(rotated.len(), 4096 + 26);
    assert!(rotated.ends_with(b"last line before rotation\n"));

    // Why O_APPEND matters: a writer that keeps its own offset leaves a hole of zeros, which is
    // what the assertion above would catch.
    let other = dir.join("other.log");
    let mut positioned = OpenOptions::new().write(true).create(true).truncate(true).open(&other).unwrap();
    positioned.write_all(b"0123456789").unwrap();
    OpenOptions::new().write(true).open(&other).unwrap().set_len(0).unwrap();
    positioned.write_all(b"new").unwrap();
    assert!(fs::read(&other).unwrap().starts_with(&[0; 10]), "a non-append writer writes past a hole");
}

#[test]
fn bytes_written_during_the_bulk_copy_go_to_the_rotated_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = slot(tmp.path(), "t", 1);
    let active = dir.join("worker.log");
    let mut worker = append_writer(&active);
    worker.write_all(b"before the copy\n").unwrap();
    let mut report = SweepReport::default();
    let mut during = || worker.write_all(b"written while the copy was fsynced\n").unwrap();
    sweep_slot(&dir, &policy(1, 1, BIG), &mut report, &mut during);
    assert_eq!(read(&dir.join("worker.log.1")), "before the copy\nwritten while the copy was fsynced\n");
    assert_eq!(read(&active), "");
    worker.write_all(b"after\n").unwrap();
    assert_eq!(read(&active), "after\n");
}

#[test]
fn keep_zero_only_truncates_and_drops_earlier_rotations() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = slot(tmp.path(), "t", 1);
    let active = dir.join("worker.log");
    fs::write(dir.join("worker.log.1"), "from when keep was 2").unwrap();
    let mut worker = append_writer(&active);
    worker.write_all(b"too long for the limit\n").unwrap();

    let report = sweep(tmp.path(), &policy(5, 0, BIG));
    assert_eq!(report.rotated, vec![active.clone()]);
    assert_eq!(report.deleted, vec![dir.join("worker.log.1")]);
    assert!(!dir.join("worker.log.1").exists());
    assert_eq!(read(&active), "");
    worker.write_all(b"next\n").unwrap();
    assert_eq!(read(&active), "next\n");
    assert_eq!(report.total_bytes, 0);
}

#[test]
fn lowering_keep_deletes_the_excess_without_a_rotation() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = slot(tmp.path(), "t", 1);
    for n in 1..=4 {
        fs::write(dir.join(format!("worker.log.{n}")), "x").unwrap();
    }
    fs::write(dir.join("worker.log"), "small").unwrap();
    let report = sweep(tmp.path(), &policy(100, 2, BIG));
    assert!(report.rotated.is_empty());
    let mut deleted = report.deleted.clone();
    deleted.sort();
    assert_eq!(deleted, vec![dir.join("worker.log.3"), dir.join("worker.log.4")]);
    assert!(dir.join("worker.log.2").exists());
}

#[test]
fn the_quota_deletes_the_oldest_rotated_files_across_slots_and_never_an_active_log() {
    let tmp = tempfile::tempdir().unwrap();
    let a = slot(tmp.path(), "alpha", 6700);
    let b = slot(tmp.path(), "beta", 6701);
    // 100 bytes each; ages in seconds.
    for (path, age) in [
        (a.join("worker.log"), 1000),
        (a.join("worker.log.1"), 300),
        (a.join("worker.log.2"), 500),
        (b.join("worker.log"), 2000),
        (b.join("worker.log.1"), 400),
        (b.join("worker.log.2"), 600),
    ] {
        fs::write(&path, [b'.'; 100]).unwrap();
        set_mtime(&path, age);
    }
    // Nothing to rotate; 600 bytes against a quota of 400: the two oldest rotated files go,
    // although the active logs are older still.
    let report = sweep(tmp.path(), &policy(BIG, 5, 400));
    assert_eq!(report.deleted, vec![b.join("worker.log.2"), a.join("worker.log.2")]);
    assert_eq!((report.total_bytes, report.over_quota), (400, false));

    // A quota below what the active logs alone hold: every rotated file goes, actives stay.
    let report = sweep(tmp.path(), &policy(BIG, 5, 150));
    assert_eq!(report.deleted, vec![b.join("worker.log.1"), a.join("worker.log.1")]);
    assert_eq!((report.total_bytes, report.over_quota), (200, true));
    assert_eq!(fs::read(a.join("worker.log")).unwrap().len(), 100);
    assert_eq!(fs::read(b.join("worker.log")).unwrap().len(), 100);
}

#[test]
fn diagnostics_files_count_towards_the_quota_and_go_oldest_first_with_rotated_logs() {
    let tmp = tempfile::tempdir().unwrap();
    let a = slot(tmp.path(), "alpha", 6700);
    let diag = a.join("diag");
    fs::create_dir_all(&diag).unwrap();
    let outside = tmp.path().join("outside");
    fs::write(&outside, [b'o'; 1000]).unwrap();
    std::os::unix::fs::symlink(&outside, diag.join("20261207T000000.000Z-link.txt")).unwrap();
    // 100 bytes each; ages in seconds.
    let old_run = diag.join("20261207T181500.123Z-jstack.txt");
    let heap = diag.join("20261207T181500.123Z-heap.out");
    let new_run = diag.join("20261207T191500.000Z-jstack.txt");
    for (path, age) in [
        (a.join("worker.log"), 10),
        (a.join("worker.log.1"), 500),
        (old_run.clone(), 700),
        (heap.clone(), 400),
        (new_run.clone(), 5),
    ] {
        fs::write(&path, [b'.'; 100]).unwrap();
        set_mtime(&path, age);
    }
    let report = sweep(tmp.path(), &policy(BIG, 5, BIG));
    assert_eq!(report.total_bytes, 500, "the symlink is not counted");
    let report = sweep(tmp.path(), &policy(BIG, 5, 250));
    assert_eq!(report.deleted, vec![old_run, a.join("worker.log.1"), heap]);
    assert_eq!((report.total_bytes, report.over_quota), (200, false));
    assert!(new_run.exists());
    assert_eq!(fs::read(&outside).unwrap().len(), 1000);
}

#[test]
fn symlinks_are_never_followed_counted_or_touched() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("workers");
    let outside = tmp.path().join("outside");
    let precious = outside.join("t/1/worker.log");
    fs::create_dir_all(precious.parent().unwrap()).unwrap();
    fs::write(&precious, [b'p'; 1000]).unwrap();
    fs::write(outside.join("old"), [b'o'; 1000]).unwrap();

    fs::create_dir_all(&root).unwrap();
    // A linked topology dir, a linked active log and a linked "rotated" file.
    std::os::unix::fs::symlink(outside.join("t"), root.join("linked-topology")).unwrap();
    let dir = slot(&root, "real", 6700);
    std::os::unix::fs::symlink(&precious, dir.join("worker.log")).unwrap();
    std::os::unix::fs::symlink(outside.join("old"), dir.join("worker.log.1")).unwrap();

    let report = sweep(&root, &policy(10, 3, 1));
    assert_eq!(report, SweepReport { total_bytes: 0, ..SweepReport::default() });
    assert_eq!(fs::read(&precious).unwrap().len(), 1000, "the link's target was not truncated");
    assert_eq!(fs::read(outside.join("old")).unwrap().len(), 1000);
    assert!(fs::symlink_metadata(dir.join("worker.log.1")).is_ok(), "the link itself was left alone");
    assert!(!outside.join("t/1/worker.log.1").exists(), "no rotation through the linked dir");
}

#[test]
fn an_interrupted_rotations_copy_is_cleaned_up() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = slot(tmp.path(), "t", 1);
    fs::write(dir.join(ROTATING_FILE), "half a copy").unwrap();
    fs::write(dir.join("worker.log"), "small").unwrap();
    sweep(tmp.path(), &policy(100, 2, BIG));
    assert!(!dir.join(ROTATING_FILE).exists());
    assert_eq!(read(&dir.join("worker.log")), "small");
}
