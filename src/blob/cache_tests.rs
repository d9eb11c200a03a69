//! Tests of the blob cache end to end: real `file://` blobs fetched, verified, extracted and
//! installed in a temp dir, then hit, referenced, cleaned up and reopened.

use sha2::{Digest, Sha256};

use super::*;

const TIMEOUT: Duration = Duration::from_secs(10);

fn sha(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

struct Fixture {
    _dir: tempfile::TempDir,
    src: PathBuf,
    root: PathBuf,
    tmp: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("srv");
        std::fs::create_dir(&src).unwrap();
        Fixture { src, root: dir.path().join("blobs"), tmp: dir.path().join("tmp"), _dir: dir }
    }

    fn open(&self) -> BlobCache {
        BlobCache::open(&self.root, &self.tmp).unwrap()
    }

    /// Publishes `content` as blob `key` in the source dir and returns its meta.
    fn blob(&self, key: &str, content: &[u8], archive: Option<&str>) -> BlobMeta {
        let path = self.src.join(key);
        std::fs::write(&path, content).unwrap();
        BlobMeta {
            schema: 1,
            key: key.into(),
            version: 1,
            sha256: sha(content),
            size: content.len() as u64,
            url: format!("file://{}", path.display()),
            archive: archive.map(str::to_owned),
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        names
    }
}

fn id(meta: &BlobMeta, extracted: bool) -> EntryId {
    EntryId { sha256: meta.sha256.clone(), extracted, owner: Owner::Agent }
}

/// A tar.gz holding `files` (path, content), in memory.
fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(gz);
    for &(name, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, name, data).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

#[tokio::test]
async fn miss_then_hit_does_not_read_the_source_again() {
    let fx = Fixture::new();
    let mut cache = fx.open();
    let meta = fx.blob("code", b"hello blob", None);
    let first = cache.ensure(&meta, false, TIMEOUT, 0).await.unwrap();
    assert_eq!(std::fs::read(&first).unwrap(), b"hello blob");
    assert_eq!(first, fx.root.join(&meta.sha256).join("file"));
    // The source is gone: only a hit can succeed now.
    std::fs::remove_file(fx.src.join("code")).unwrap();
    let second = cache.ensure(&meta, false, TIMEOUT, 0).await.unwrap();
    assert_eq!(second, first);
    assert_eq!(cache.stats(), CacheStats { entries: 1, bytes: 10, hits: 1, misses: 1, referenced: 0 });
    assert!(Fixture::names(&fx.tmp).is_empty(), "the download was moved, not copied");
}

#[tokio::test]
async fn extracted_tar_gz_entry_is_a_directory_with_the_files() {
    let fx = Fixture::new();
    let mut cache = fx.open();
    let archive = tar_gz(&[("d/a.txt", b"alpha"), ("b.txt", b"beta!")]);
    let meta = fx.blob("code.tar.gz", &archive, Some("tar.gz"));
    let dir = cache.ensure(&meta, true, TIMEOUT, 0).await.unwrap();
    assert_eq!(dir, fx.root.join(format!("{}.x", meta.sha256)));
    assert!(dir.is_dir());
    assert_eq!(std::fs::read(dir.join("d/a.txt")).unwrap(), b"alpha");
    assert_eq!(std::fs::read(dir.join("b.txt")).unwrap(), b"beta!");
    assert_eq!(cache.total_bytes(), 10, "size of the extracted files, not of the archive");
    // The same content wanted as a plain file is a separate entry.
    let plain = cache.ensure(&meta, false, TIMEOUT, 0).await.unwrap();
    assert_eq!(std::fs::read(plain).unwrap(), archive);
    assert_eq!(cache.stats().entries, 2);
    assert!(Fixture::names(&fx.tmp).is_empty());
}

#[tokio::test]
async fn mismatched_sha256_leaves_no_entry_and_no_temp_files() {
    let fx = Fixture::new();
    let mut cache = fx.open();
    let mut meta = fx.blob("code", b"real content", None);
    meta.sha256 = sha(b"other content");
    let err = cache.ensure(&meta, false, TIMEOUT, 0).await.unwrap_err();
    assert!(matches!(err, CacheError::Blob(BlobError::Fetch { .. })), "{err}");
    assert!(err.to_string().contains("sha256 mismatch"), "{err}");
    assert_eq!(cache.stats(), CacheStats { entries: 0, bytes: 0, hits: 0, misses: 1, referenced: 0 });
    assert!(Fixture::names(&fx.root).is_empty());
    assert!(Fixture::names(&fx.tmp).is_empty());
}

#[tokio::test]
async fn bad_archive_leaves_no_entry_and_no_temp_files() {
    let fx = Fixture::new();
    let mut cache = fx.open();
    let meta = fx.blob("code.tar.gz", b"not gzip at all", Some("tar.gz"));
    let err = cache.ensure(&meta, true, TIMEOUT, 0).await.unwrap_err();
    assert!(matches!(err, CacheError::Blob(BlobError::Extract { .. })), "{err}");
    assert!(Fixture::names(&fx.root).is_empty());
    assert!(Fixture::names(&fx.tmp).is_empty());
}

#[tokio::test]
async fn refuses_extract_without_archive_and_a_digest_that_is_not_a_name() {
    let fx = Fixture::new();
    let mut cache = fx.open();
    let meta = fx.blob("code", b"plain", None);
    let err = cache.ensure(&meta, true, TIMEOUT, 0).await.unwrap_err();
    assert!(matches!(err, CacheError::NotAnArchive { .. }), "{err}");
    let mut evil = meta.clone();
    evil.sha256 = "../../etc".into();
    let err = cache.ensure(&evil, false, TIMEOUT, 0).await.unwrap_err();
    assert!(matches!(err, CacheError::BadDigest { .. }), "{err}");
    assert!(Fixture::names(&fx.root).is_empty());
}

#[tokio::test]
async fn cleanup_removes_lru_unreferenced_first_and_never_a_referenced_one() {
    let fx = Fixture::new();
    let mut cache = fx.open();
    let a = fx.blob("a", b"aaaa", None);
    let b = fx.blob("b", b"bbbb", None);
    let c = fx.blob("c", b"cccc", None);
    let d = fx.blob("d", b"dddd", None);
    for meta in [&a, &b, &c, &d] {
        cache.ensure(meta, false, TIMEOUT, 0).await.unwrap();
    }
    // Use order now: b, c (referenced), d, a.
    cache.ensure(&a, false, TIMEOUT, 0).await.unwrap();
    assert!(cache.add_ref(&id(&c, false), (6700, "topo-1".into())));
    assert!(!cache.add_ref(&id(&c, true), (6700, "topo-1".into())), "no such entry");
    assert_eq!(cache.total_bytes(), 16);

    // 16 -> 8: b goes, c is skipped although older, d goes.
    assert_eq!(cache.cleanup(8, |_| true), vec![id(&b, false), id(&d, false)]);
    assert_eq!(cache.total_bytes(), 8);
    assert!(!fx.root.join(&b.sha256).exists());
    assert!(cache.path(&id(&c, false)).is_some_and(Path::exists));

    // Below any target, only the unreferenced one can go.
    assert_eq!(cache.cleanup(0, |_| true), vec![id(&a, false)]);
    assert_eq!(cache.stats(), CacheStats { entries: 1, bytes: 4, hits: 1, misses: 4, referenced: 1 });
    assert_eq!(Fixture::names(&fx.root), vec![c.sha256.clone()]);
    assert!(Fixture::names(&fx.tmp).is_empty(), "removed entries are deleted, not parked");
}

#[tokio::test]
async fn release_makes_an_entry_collectable() {
    let fx = Fixture::new();
    let mut cache = fx.open();
    let meta = fx.blob("code", b"shared", None);
    cache.ensure(&meta, false, TIMEOUT, 0).await.unwrap();
    let (slot1, slot2) = ((6700, "topo-1".to_owned()), (6701, "topo-1".to_owned()));
    cache.add_ref(&id(&meta, false), slot1.clone());
    cache.add_ref(&id(&meta, false), slot2.clone());
    cache.release(&slot1);
    assert!(cache.cleanup(0, |_| true).is_empty(), "slot2 still holds it");
    assert_eq!(cache.stats().referenced, 1);
    cache.release(&slot2);
    assert_eq!(cache.cleanup(0, |_| true), vec![id(&meta, false)]);
    assert_eq!(cache.stats().entries, 0);
}

#[tokio::test]
async fn open_rebuilds_entries_from_disk_and_removes_leftovers() {
    let fx = Fixture::new();
    let plain = fx.blob("plain", b"plain bytes", None);
    let archive = fx.blob("code.tar.gz", &tar_gz(&[("x/y.txt", b"why")]), Some("tar.gz"));
    let older = fx.blob("older", b"older", None);
    let mut cache = fx.open();
    for (meta, extract) in [(&older, false), (&plain, false), (&archive, true)] {
        cache.ensure(meta, extract, TIMEOUT, 0).await.unwrap();
    }
    // `older` was used long ago, as its mtime will say after the restart.
    let long_ago = SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::open(fx.root.join(&older.sha256)).unwrap().set_modified(long_ago).unwrap();
    let before = cache.total_bytes();
    drop(cache);

    // What a crash can leave: a plain entry without its file, a stray name, a staging dir.
    let incomplete = sha(b"incomplete");
    std::fs::create_dir(fx.root.join(&incomplete)).unwrap();
    std::fs::write(fx.root.join("stray.part"), b"x").unwrap();
    std::fs::create_dir_all(fx.tmp.join("cache-1234/d")).unwrap();
    std::fs::write(fx.tmp.join("unrelated"), b"not ours").unwrap();

    let mut cache = fx.open();
    assert_eq!(cache.stats(), CacheStats { entries: 3, bytes: before, hits: 0, misses: 0, referenced: 0 });
    assert_eq!(cache.total_bytes(), 11 + 3 + 5);
    assert_eq!(cache.path(&id(&archive, true)), Some(fx.root.join(format!("{}.x", archive.sha256)).as_path()));
    assert!(!fx.root.join(&incomplete).exists());
    assert!(!fx.root.join("stray.part").exists());
    assert_eq!(Fixture::names(&fx.tmp), vec!["unrelated".to_owned()], "only the cache's leftovers go");

    // Rebuilt entries are hits, and the mtime order is the LRU order.
    std::fs::remove_file(fx.src.join("plain")).unwrap();
    let path = cache.ensure(&plain, false, TIMEOUT, 0).await.unwrap();
    assert_eq!(std::fs::read(path).unwrap(), b"plain bytes");
    assert_eq!(cache.cleanup(before - 1, |_| true), vec![id(&older, false)]);
}

/// Stages and installs `meta` for `owner` (what the blob sync does for a user's job).
async fn install_for(cache: &mut BlobCache, fx: &Fixture, meta: &BlobMeta, extract: bool, owner: Owner) -> PathBuf {
    let staged = BlobCache::stage(meta, extract, owner, &fx.tmp, TIMEOUT, 0).await.unwrap();
    cache.install(staged).unwrap()
}

#[tokio::test]
async fn entries_are_kept_per_owner_each_user_in_a_directory_of_its_own() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // Our own uid as "the user", so that this runs without root; the integration test
    // (`tests/blobs.rs`) proves the same with two real users and a worker of each.
    let me = nix::unistd::getuid().as_raw();
    let fx = Fixture::new();
    let code = fx.blob("code.tar.gz", &tar_gz(&[("run.sh", b"echo hi")]), Some("tar.gz"));
    let mut cache = fx.open();
    let shared = cache.ensure(&code, true, TIMEOUT, 0).await.unwrap();
    let mine = install_for(&mut cache, &fx, &code, true, Owner::User(me)).await;

    // The same content twice: the agent's entry in the root, the user's under `u<uid>`.
    let user_dir = fx.root.join(format!("u{me}"));
    assert_eq!(shared, fx.root.join(format!("{}.x", code.sha256)));
    assert_eq!(mine, user_dir.join(format!("{}.x", code.sha256)));
    assert_eq!(std::fs::read(mine.join("run.sh")).unwrap(), b"echo hi");
    let owned = |p: &Path| std::fs::metadata(p).map(|m| (m.uid(), m.mode() & 0o7777)).unwrap();
    assert_eq!(owned(&fx.root), (me, 0o711), "the root can be passed through, not listed");
    assert_eq!(owned(&user_dir), (me, 0o500), "only its user may enter, and not change it");
    let user_id = EntryId { owner: Owner::User(me), ..id(&code, true) };
    assert_eq!(cache.entry_of(&mine), Some(user_id.clone()));
    assert_eq!(cache.entry_of(&shared.join("run.sh")), Some(id(&code, true)));
    assert!(user_id.same_content(&id(&code, true)) && user_id != id(&code, true));
    assert_eq!(cache.stats().entries, 2);
    drop(cache);

    // A user who opened its directory, and left something in it, has both undone at open; an
    // older release's entry in the root is the agent's.
    std::fs::set_permissions(&user_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(user_dir.join("planted"), b"x").unwrap();
    let mut cache = fx.open();
    assert_eq!(owned(&user_dir), (me, 0o500));
    assert!(!user_dir.join("planted").exists());
    assert_eq!(cache.path(&user_id), Some(mine.as_path()));
    assert_eq!(cache.path(&id(&code, true)), Some(shared.as_path()));
    // Under run_as_user an unreferenced entry of the agent goes whatever the size (no worker
    // can be given it any more: an older release's shared entry, after an upgrade); a user's
    // stays while there is room. The other way round without run_as_user, references kept.
    assert_eq!(cache.cleanup(u64::MAX, |o| o.usable(true)), vec![id(&code, true)]);
    assert!(!shared.exists() && mine.exists());
    cache.add_ref(&user_id, (6700, "t".into()));
    assert_eq!(cache.cleanup(u64::MAX, |o| o.usable(false)), vec![]);
    cache.release(&(6700, "t".into()));
    assert_eq!(cache.cleanup(u64::MAX, |o| o.usable(false)), vec![user_id]);
    assert!(!mine.exists() && user_dir.is_dir());
}

#[tokio::test]
async fn a_users_entry_is_readable_whatever_modes_the_archive_had() {
    use std::os::unix::fs::PermissionsExt;
    let me = nix::unistd::getuid().as_raw();
    let fx = Fixture::new();
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(gz);
    for (name, mode) in [("secret.conf", 0o600), ("bin/run", 0o700), ("locked/inner", 0o000)] {
        let mut header = tar::Header::new_gnu();
        header.set_size(1);
        header.set_mode(mode);
        header.set_cksum();
        builder.append_data(&mut header, name, &b"x"[..]).unwrap();
    }
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_mode(0o700);
    header.set_size(0);
    header.set_cksum();
    builder.append_data(&mut header, "locked", &[][..]).unwrap();
    let archive = builder.into_inner().unwrap().finish().unwrap();
    let code = fx.blob("modes.tar.gz", &archive, Some("tar.gz"));
    let mut cache = fx.open();
    let mode = |p: PathBuf| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
    // The agent's own entry keeps the archive's modes (its workers run as the agent's user).
    let shared = cache.ensure(&code, true, TIMEOUT, 0).await.unwrap();
    assert_eq!((mode(shared.join("secret.conf")), mode(shared.join("bin/run"))), (0o600, 0o700));
    // A user's: readable, runnable where the archive said so, never writable by others.
    let mine = install_for(&mut cache, &fx, &code, true, Owner::User(me)).await;
    assert_eq!(mode(mine.join("secret.conf")), 0o644);
    assert_eq!(mode(mine.join("bin/run")), 0o755);
    assert_eq!((mode(mine.join("locked")), mode(mine.join("locked/inner"))), (0o755, 0o444));
    assert_eq!(mode(mine.clone()) & 0o555, 0o555);
}
