//! Tests of `extract` on archives built here with the same crates, including hand-forged
//! headers that the builders would refuse to write.

use std::io::Write;

use tar::EntryType;

use super::*;

/// One tar entry: raw name, type, raw link name, content.
type TarEntry<'a> = (&'a str, EntryType, &'a str, &'a [u8]);

fn tar_gz(path: &Path, entries: &[TarEntry<'_>]) {
    let gz = flate2::write::GzEncoder::new(File::create(path).unwrap(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(gz);
    for &(name, ty, link, data) in entries {
        let mut header = tar::Header::new_gnu();
        // Raw bytes: `set_path` refuses `..` and absolute names, which is what we need to forge.
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        header.set_entry_type(ty);
        header.set_mode(if ty == EntryType::Directory { 0o755 } else { 0o644 });
        header.set_size(data.len() as u64);
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap();
}

#[derive(Clone, Copy)]
enum ZipEntry<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
}

fn zip(path: &Path, entries: &[ZipEntry<'_>]) {
    let mut writer = zip::ZipWriter::new(File::create(path).unwrap());
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .unix_permissions(0o755);
    for entry in entries {
        match *entry {
            ZipEntry::Dir(name) => writer.add_directory(name, opts).unwrap(),
            ZipEntry::File(name, data) => {
                writer.start_file(name, opts).unwrap();
                writer.write_all(data).unwrap();
            }
            ZipEntry::Symlink(name, target) => writer.add_symlink(name, target, opts).unwrap(),
        }
    }
    writer.finish().unwrap();
}

#[test]
fn tar_gz_unpacks_files_dirs_and_inside_links() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("a.tar.gz");
    tar_gz(
        &archive,
        &[
            ("./", EntryType::Directory, "", b""),
            ("d/", EntryType::Directory, "", b""),
            ("d/a.txt", EntryType::Regular, "", b"hello"),
            ("d/link", EntryType::Symlink, "a.txt", b""),
            ("top", EntryType::Symlink, "d/../d/a.txt", b""),
            ("hard", EntryType::Link, "d/a.txt", b""),
        ],
    );
    let dest = dir.path().join("out");
    extract(&archive, Archive::TarGz, &dest).unwrap();
    assert_eq!(std::fs::read(dest.join("d/a.txt")).unwrap(), b"hello");
    assert_eq!(std::fs::read(dest.join("d/link")).unwrap(), b"hello");
    assert_eq!(std::fs::read(dest.join("top")).unwrap(), b"hello");
    assert_eq!(std::fs::read(dest.join("hard")).unwrap(), b"hello");
    assert_eq!(std::fs::read_link(dest.join("d/link")).unwrap(), Path::new("a.txt"));
}

#[test]
fn zip_unpacks_files_dirs_and_inside_links() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("a.zip");
    zip(
        &archive,
        &[
            ZipEntry::Dir("bin/"),
            ZipEntry::File("bin/run.sh", b"#!/bin/sh\n"),
            ZipEntry::File("lib/x/y.jar", b"jar"),
            ZipEntry::Symlink("bin/lib", "../lib/x"),
        ],
    );
    let dest = dir.path().join("nested/out");
    extract(&archive, Archive::Zip, &dest).unwrap();
    assert_eq!(std::fs::read(dest.join("bin/run.sh")).unwrap(), b"#!/bin/sh\n");
    assert_eq!(std::fs::read(dest.join("bin/lib/y.jar")).unwrap(), b"jar");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(dest.join("bin/run.sh")).unwrap().permissions().mode() & 0o777, 0o755);
}

/// Asserts the archive is refused naming `entry`, and that no `dest` is left behind.
fn assert_refused(archive: &Path, kind: Archive, entry: &str) {
    let dest = archive.with_extension("out");
    let err = extract(archive, kind, &dest).unwrap_err();
    match &err {
        BlobError::UnsafeEntry { entry: got, .. } => assert_eq!(got, entry, "{err}"),
        other => panic!("{entry}: expected an unsafe entry error, got {other}"),
    }
    assert!(!dest.exists(), "{entry}: {} left behind", dest.display());
}

#[test]
fn tar_gz_refuses_entries_that_escape() {
    let dir = tempfile::tempdir().unwrap();
    let ok: TarEntry<'_> = ("first.txt", EntryType::Regular, "", b"written before the bad entry");
    let cases: &[(&str, TarEntry<'_>)] = &[
        ("dotdot", ("../x", EntryType::Regular, "", b"x")),
        ("deep-dotdot", ("a/../../x", EntryType::Regular, "", b"x")),
        ("abs", ("/abs", EntryType::Regular, "", b"x")),
        ("link-abs", ("l", EntryType::Symlink, "/etc/passwd", b"")),
        ("link-up", ("a/l", EntryType::Symlink, "../../x", b"")),
        ("hard-abs", ("h", EntryType::Link, "/etc/passwd", b"")),
        ("hard-missing", ("h", EntryType::Link, "nope", b"")),
        ("fifo", ("f", EntryType::Fifo, "", b"")),
        ("char", ("c", EntryType::Char, "", b"")),
    ];
    for (i, (label, bad)) in cases.iter().enumerate() {
        let archive = dir.path().join(format!("{i}-{label}.tar.gz"));
        tar_gz(&archive, &[ok, *bad]);
        assert_refused(&archive, Archive::TarGz, bad.0);
    }
    // A link that stays inside, then an entry written through it: refused, since links followed
    // at another depth are how lexical checks get fooled.
    let archive = dir.path().join("through.tar.gz");
    tar_gz(
        &archive,
        &[
            ("sub/", EntryType::Directory, "", b""),
            ("l", EntryType::Symlink, "sub", b""),
            ("l/x", EntryType::Regular, "", b"x"),
        ],
    );
    assert_refused(&archive, Archive::TarGz, "l/x");
    // A hard link to an inside symlink would re-home its relative target.
    let archive = dir.path().join("hard-to-link.tar.gz");
    tar_gz(
        &archive,
        &[
            ("a/b/", EntryType::Directory, "", b""),
            ("a/b/l", EntryType::Symlink, "../x", b""),
            ("h", EntryType::Link, "a/b/l", b""),
        ],
    );
    assert_refused(&archive, Archive::TarGz, "h");
}

#[test]
fn zip_refuses_entries_that_escape() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, ZipEntry<'_>)] = &[
        ("../x", ZipEntry::File("../x", b"x")),
        ("/abs", ZipEntry::File("/abs", b"x")),
        ("l", ZipEntry::Symlink("l", "/etc/passwd")),
        ("a/l", ZipEntry::Symlink("a/l", "../../x")),
    ];
    for (i, (name, bad)) in cases.iter().enumerate() {
        let archive = dir.path().join(format!("{i}.zip"));
        zip(&archive, &[ZipEntry::File("first.txt", b"ok"), ZipEntry::Dir("a/"), *bad]);
        assert_refused(&archive, Archive::Zip, name);
    }
}

#[test]
fn existing_dest_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("a.tar.gz");
    tar_gz(&archive, &[("x", EntryType::Regular, "", b"x")]);
    let dest = dir.path().join("out");
    std::fs::create_dir(&dest).unwrap();
    std::fs::write(dest.join("keep"), b"mine").unwrap();
    let err = extract(&archive, Archive::TarGz, &dest).unwrap_err();
    assert!(matches!(err, BlobError::DestExists { .. }), "{err}");
    assert_eq!(std::fs::read(dest.join("keep")).unwrap(), b"mine");
}

#[test]
fn corrupt_archive_fails_and_leaves_no_dest() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("junk");
    std::fs::write(&archive, b"not an archive at all").unwrap();
    for kind in [Archive::TarGz, Archive::Zip] {
        let dest = dir.path().join("out");
        let err = extract(&archive, kind, &dest).unwrap_err();
        assert!(matches!(err, BlobError::Extract { .. }), "{err}");
        assert!(!dest.exists());
    }
}
