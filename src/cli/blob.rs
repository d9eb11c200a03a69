//! `gale blob put|list|rm` (SPEC §1, §3.3): publish a blob where agents can fetch it and point
//! `/blobstore/<key>` at it.
//!
//! `put` stores the file first and writes the meta last, so the node never names a copy that
//! is not complete: a shared directory gets a temp file, fsync and rename; an HTTP store gets
//! a PUT that must answer 2xx. The digest is computed before the store and again while
//! storing; if the file changed in between, nothing is published.
//!
//! `rm` deletes the meta only. The stored copy stays: agents that already run the blob keep
//! using (and may re-fetch) it, and a shared dir or HTTP store is the operator's to clean.
//!
//! Exit codes: 0 done; 1 ZooKeeper unreachable or failing, a missing blob, an unreadable FILE,
//! a failed store; 2 a malformed KEY or `--store`; 78 a bad agent config or credentials file.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::{CliError, client_runtime, connect, failure, load_config, read_all};
use crate::cluster::zk::{ErrorClass, ZkClient};
use crate::config::Config;
use crate::ident;
use crate::lifecycle::ExitCode;
use crate::model::SCHEMA;
use crate::model::blob_meta::{Archive, BlobMeta, is_supported_url};

/// How long to wait for ZooKeeper to confirm the session's close before exiting anyway.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// A store that does not accept a connection in this long is down, not slow.
const HTTP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where `put` copies the file.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Store {
    /// A shared directory (NFS and the like) every agent mounts at the same path.
    Dir(PathBuf),
    /// An HTTP base URL, without a trailing `/`, that accepts PUT.
    Http(String),
}

impl Store {
    fn parse(s: &str) -> Result<Store, String> {
        if s.starts_with("http://") || s.starts_with("https://") {
            let base = s.trim_end_matches('/');
            if !is_supported_url(&format!("{base}/k")) {
                return Err(format!("--store {s}: not a usable http(s) URL"));
            }
            return Ok(Store::Http(base.to_owned()));
        }
        let path = Path::new(s);
        // Agents open `file://` URLs as they are: a relative path or `..` means nothing there.
        if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
            return Err(format!("--store {s}: must be an absolute directory path or an http(s):// URL"));
        }
        Ok(Store::Dir(path.to_path_buf()))
    }

    /// Where version `version` of `key` lives once stored.
    fn url(&self, key: &str, version: u64) -> String {
        match self {
            Store::Dir(dir) => format!("file://{}/{key}/{version}", dir.display()),
            Store::Http(base) => format!("{base}/{key}/{version}"),
        }
    }
}

/// A file's content digest, as BlobMeta carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Digested {
    sha256: String,
    size: u64,
}

/// Passes reads through while hashing and counting them.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    size: u64,
}

impl<R: Read> Hashing<R> {
    fn new(inner: R) -> Hashing<R> {
        Hashing { inner, hasher: Sha256::new(), size: 0 }
    }

    fn finish(self) -> Digested {
        let sha256 = self.hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
        Digested { sha256, size: self.size }
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

fn digest_file(file: &Path) -> io::Result<Digested> {
    let mut reader = Hashing::new(File::open(file)?);
    io::copy(&mut reader, &mut io::sink())?;
    Ok(reader.finish())
}

pub(crate) fn put(
    config_path: &Path,
    key: &str,
    file: &Path,
    store: &str,
    archive: Option<&str>,
) -> Result<ExitCode, CliError> {
    check_key(key)?;
    let store = Store::parse(store).map_err(|m| CliError::new(ExitCode::Usage, m))?;
    let archive = match archive {
        // clap restricts the values; this only maps the name.
        Some(a) => Archive::parse(a),
        None => file.file_name().and_then(|n| n.to_str()).and_then(Archive::guess),
    };
    // The file before the config and ZooKeeper: a typo in FILE is the commonest mistake.
    let shown = file.display().to_string();
    let digest =
        digest_file(file).map_err(|e| CliError::new(ExitCode::Failure, format!("cannot read {shown}: {e}")))?;
    let config = load_config(config_path)?;
    let path = config.zk_path(&format!("/blobstore/{key}"));
    client_runtime()?.block_on(async {
        let client = connect(&config).await?;
        let result = put_on(&client, &config, &path, key, file, &store, archive, &digest).await;
        client.close(CLOSE_TIMEOUT).await;
        let meta = result?;
        println!("published blob {} version {} ({path})", meta.key, meta.version);
        println!("  sha256  {}", meta.sha256);
        println!("  size    {}", meta.size);
        println!("  url     {}", meta.url);
        println!("  archive {}", meta.archive.as_deref().unwrap_or("none"));
        Ok(ExitCode::Clean)
    })
}

#[allow(clippy::too_many_arguments)]
async fn put_on(
    client: &ZkClient,
    config: &Config,
    path: &str,
    key: &str,
    file: &Path,
    store: &Store,
    archive: Option<Archive>,
    digest: &Digested,
) -> Result<BlobMeta, CliError> {
    let current = client.get(path).await.map_err(failure)?;
    let (version, node_version) = match &current {
        None => (1, None),
        Some((data, stat)) => (current_version(path, data)? + 1, Some(stat.version)),
    };
    let meta = BlobMeta {
        schema: SCHEMA,
        key: key.to_owned(),
        version,
        sha256: digest.sha256.clone(),
        size: digest.size,
        url: store.url(key, version),
        archive: archive.map(|a| a.as_str().to_owned()),
    };
    meta.validate(path).map_err(|e| CliError::new(ExitCode::Failure, e.to_string()))?;
    // Blocking I/O off the runtime's thread, so the ZooKeeper session keeps its pings going
    // during a long copy or upload.
    let (owned_file, owned_store, owned_key) = (file.to_path_buf(), store.clone(), key.to_owned());
    let stored = tokio::task::spawn_blocking(move || store_file(&owned_file, &owned_store, &owned_key, version))
        .await
        .map_err(|e| CliError::new(ExitCode::Failure, format!("storing the blob: {e}")))??;
    if stored != *digest {
        return Err(CliError::new(
            ExitCode::Failure,
            format!("{} changed while it was being stored; nothing was published, run put again", file_shown(file)),
        ));
    }
    let data = meta.to_json();
    match node_version {
        // Compare-and-set: two concurrent puts of one key must not both publish version N.
        Some(v) => client.set(path, &data, Some(v)).await.map_err(|e| match e.class() {
            ErrorClass::BadVersion => CliError::new(
                ExitCode::Failure,
                format!("{path} changed while this put ran (another put?); run put again"),
            ),
            _ => failure(e),
        })?,
        None => {
            client.ensure_path(&config.zk_path("/blobstore")).await.map_err(failure)?;
            client.put_persistent(path, &data).await.map_err(failure)?
        }
    };
    Ok(meta)
}

fn file_shown(file: &Path) -> String {
    file.display().to_string()
}

/// The version in an existing node. Lenient: a node agents reject (bad url, say) still has a
/// version, and the next one must be above it, or an agent could take the new blob for old.
fn current_version(path: &str, data: &[u8]) -> Result<u64, CliError> {
    if let Ok(meta) = BlobMeta::decode(path, data) {
        return Ok(meta.version);
    }
    serde_json::from_slice::<serde_json::Value>(data).ok().and_then(|v| v.get("version")?.as_u64()).ok_or_else(|| {
        CliError::new(
            ExitCode::Failure,
            format!("{path}: existing node has no readable version; `gale blob rm` it first"),
        )
    })
}

/// Copies `file` into the store and returns the digest of what was sent.
fn store_file(file: &Path, store: &Store, key: &str, version: u64) -> Result<Digested, CliError> {
    let shown = file_shown(file);
    let fail = |m: String| CliError::new(ExitCode::Failure, m);
    let reader = File::open(file).map_err(|e| fail(format!("cannot read {shown}: {e}")))?;
    let mut reader = Hashing::new(reader);
    match store {
        Store::Dir(dir) => copy_to_dir(&mut reader, dir, key, version, &shown)?,
        Store::Http(_) => {
            let url = store.url(key, version);
            let size = file.metadata().map_err(|e| fail(format!("cannot read {shown}: {e}")))?.len();
            let agent: ureq::Agent =
                ureq::Agent::config_builder().timeout_connect(Some(HTTP_CONNECT_TIMEOUT)).build().into();
            // An explicit length: plain servers (python's http.server among them) do not
            // decode chunked request bodies.
            agent
                .put(&url)
                .header("content-length", size.to_string())
                .header("content-type", "application/octet-stream")
                .send(ureq::SendBody::from_reader(&mut reader))
                .map_err(|e| fail(format!("uploading {shown} to {url}: {e}")))?;
        }
    }
    Ok(reader.finish())
}

/// `<dir>/<key>/<version>` via a temp file in the same directory, fsync, rename, fsync of the
/// directory: an agent never sees a partial file under the final name, even after a crash.
fn copy_to_dir(reader: &mut impl Read, dir: &Path, key: &str, version: u64, shown: &str) -> Result<(), CliError> {
    let fail = |m: String| CliError::new(ExitCode::Failure, m);
    // The store must exist already: a typo'd mount point must not become a local directory
    // that only this host can see.
    if !dir.is_dir() {
        return Err(fail(format!("store directory {} does not exist or is not a directory", dir.display())));
    }
    let key_dir = dir.join(key);
    std::fs::create_dir_all(&key_dir).map_err(|e| fail(format!("cannot create {}: {e}", key_dir.display())))?;
    let target = key_dir.join(version.to_string());
    let temp = key_dir.join(format!(".{version}.tmp-{}", std::process::id()));
    let result = (|| -> io::Result<()> {
        let mut out = File::create(&temp)?;
        io::copy(reader, &mut out)?;
        out.flush()?;
        out.sync_all()?;
        std::fs::rename(&temp, &target)?;
        File::open(&key_dir)?.sync_all()
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        fail(format!("copying {shown} to {}: {e}", target.display()))
    })
}

pub(crate) fn list(config_path: &Path) -> Result<ExitCode, CliError> {
    let config = load_config(config_path)?;
    let dir = config.zk_path("/blobstore");
    client_runtime()?.block_on(async {
        let client = connect(&config).await?;
        let result = read_all(&client, &dir).await;
        client.close(CLOSE_TIMEOUT).await;
        let rows = result?;
        println!("{:<32} {:>7} {:>12}  {:<12}  URL", "KEY", "VERSION", "SIZE", "SHA256");
        for (name, path, data) in &rows {
            // One node at a time: a bad payload is a row, never the end of the list.
            match BlobMeta::decode(path, data) {
                Ok(m) => println!("{:<32} {:>7} {:>12}  {:<12}  {}", m.key, m.version, m.size, &m.sha256[..12], m.url),
                Err(e) => println!("{name:<32} {:>7} {:>12}  {:<12}  (unreadable) {e}", "?", "?", "?"),
            }
        }
        if rows.is_empty() {
            println!("(no blobs)");
        }
        Ok(ExitCode::Clean)
    })
}

pub(crate) fn rm(config_path: &Path, key: &str) -> Result<ExitCode, CliError> {
    check_key(key)?;
    let config = load_config(config_path)?;
    let path = config.zk_path(&format!("/blobstore/{key}"));
    client_runtime()?.block_on(async {
        let client = connect(&config).await?;
        let result = rm_on(&client, &path).await;
        client.close(CLOSE_TIMEOUT).await;
        match result? {
            None => Err(CliError::new(ExitCode::Failure, format!("no blob {key} (no node {path})"))),
            Some(url) => {
                println!("removed blob {key} (deleted {path})");
                let url = url.unwrap_or_else(|| "(unknown: the node was unreadable)".to_owned());
                println!("  the stored copy is left in place, agents may still use it: {url}");
                Ok(ExitCode::Clean)
            }
        }
    })
}

/// Deletes the node; `None` if it did not exist, else the URL it named if readable.
async fn rm_on(client: &ZkClient, path: &str) -> Result<Option<Option<String>>, CliError> {
    let Some((data, _)) = client.get(path).await.map_err(failure)? else {
        return Ok(None);
    };
    match client.delete(path, None).await {
        Ok(()) => {}
        Err(e) if e.class() == ErrorClass::NoNode => return Ok(None),
        Err(e) => return Err(failure(e)),
    }
    let url =
        serde_json::from_slice::<serde_json::Value>(&data).ok().and_then(|v| Some(v.get("url")?.as_str()?.to_owned()));
    Ok(Some(url))
}

fn check_key(key: &str) -> Result<(), CliError> {
    ident::validate("blob key", key).map_err(|e| CliError::new(ExitCode::Usage, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_parsing() {
        assert_eq!(Store::parse("/srv/blobs/"), Ok(Store::Dir("/srv/blobs/".into())));
        assert_eq!(Store::parse("http://h:81/b/"), Ok(Store::Http("http://h:81/b".into())));
        for bad in ["relative/dir", "/srv/../etc", "ftp://h", "http://"] {
            assert!(Store::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Store::Dir("/srv/b".into()).url("k", 2), "file:///srv/b/k/2");
        assert_eq!(Store::Http("https://h/b".into()).url("k", 2), "https://h/b/k/2");
    }

    #[test]
    fn digest_and_directory_copy() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        std::fs::write(&file, b"test").unwrap();
        let d = digest_file(&file).unwrap();
        assert_eq!(d.sha256, "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08");
        assert_eq!(d.size, 4);
        let store = tmp.path().join("store");
        assert!(store_file(&file, &Store::Dir(store.clone()), "k", 1).is_err(), "the store dir must exist");
        std::fs::create_dir(&store).unwrap();
        assert_eq!(store_file(&file, &Store::Dir(store.clone()), "k", 1).unwrap(), d);
        assert_eq!(std::fs::read(store.join("k/1")).unwrap(), b"test");
        let names: Vec<_> = std::fs::read_dir(store.join("k")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["1"], "no temp file left behind");
    }

    #[test]
    fn next_version_reads_even_a_rejected_node() {
        let bad = br#"{"schema":1,"key":"k","version":7,"sha256":"x","size":1,"url":"ftp://h"}"#;
        assert_eq!(current_version("/g/blobstore/k", bad).unwrap(), 7);
        assert!(current_version("/g/blobstore/k", b"{nope").is_err());
    }
}
