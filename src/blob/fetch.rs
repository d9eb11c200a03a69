//! Downloads a blob's content into `tmp/`, verifying it on the way.
//!
//! Each attempt streams into a fresh, uniquely named temp file while hashing and counting, under
//! one timeout for the whole transfer (not per read: a server trickling a byte a minute must not
//! hold a slot forever). A size or digest mismatch, an HTTP status other than 200, a refused
//! connection or a short body all fail the attempt; its temp file is deleted and the next
//! attempt waits an exponential backoff. The caller gets a path only for a fully verified,
//! fsynced file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::BlobError;
use super::meta::{BlobMeta, Source, source};

/// Backoff between attempts; tests shrink it to stay fast.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    pub(crate) first: Duration,
    pub(crate) cap: Duration,
}

impl Backoff {
    pub(crate) const DEFAULT: Backoff = Backoff { first: Duration::from_millis(500), cap: Duration::from_secs(30) };

    fn delay(self, failed_attempts: u32) -> Duration {
        let factor = 1u32.checked_shl(failed_attempts.saturating_sub(1)).unwrap_or(u32::MAX);
        self.first.saturating_mul(factor).min(self.cap)
    }
}

/// Fetches `meta`'s content into a new file in `tmp_dir`, trying `1 + retries` times.
///
/// Returns the path of a file whose size and sha256 match `meta`, fsynced. Moving it into the
/// cache is the caller's job.
pub async fn fetch(meta: &BlobMeta, tmp_dir: &Path, timeout: Duration, retries: u32) -> Result<PathBuf, BlobError> {
    fetch_with(meta, tmp_dir, timeout, retries, Backoff::DEFAULT).await
}

pub(crate) async fn fetch_with(
    meta: &BlobMeta,
    tmp_dir: &Path,
    timeout: Duration,
    retries: u32,
    backoff: Backoff,
) -> Result<PathBuf, BlobError> {
    let attempts = retries.saturating_add(1);
    let fail = |reason: String, attempts| BlobError::Fetch {
        key: meta.key.clone(),
        version: meta.version,
        url: meta.url.clone(),
        attempts,
        reason,
    };
    // A bad url cannot get better by retrying.
    let source = source(meta).map_err(|reason| fail(reason, 0))?;
    tokio::fs::create_dir_all(tmp_dir)
        .await
        .map_err(|source| BlobError::TmpDir { path: tmp_dir.to_owned(), source })?;
    // One client for all attempts: it owns the connection pool and the TLS roots.
    let client = match source {
        Source::Http(_) => Some(
            reqwest::Client::builder()
                .connect_timeout(timeout)
                .build()
                .map_err(|e| fail(format!("cannot build http client: {e}"), 0))?,
        ),
        Source::File(_) => None,
    };
    let mut last = String::new();
    for attempt in 1..=attempts {
        if attempt > 1 {
            tokio::time::sleep(backoff.delay(attempt - 1)).await;
        }
        let temp = TempFile::new(tmp_dir.join(format!("{}-{}.{}.part", meta.key, meta.version, uuid::Uuid::new_v4())));
        let result = match tokio::time::timeout(timeout, attempt_once(meta, &source, client.as_ref(), &temp.path)).await
        {
            Ok(result) => result,
            Err(_) => Err(format!("timed out after {timeout:?}")),
        };
        match result {
            Ok(()) => return Ok(temp.keep()),
            Err(reason) => {
                tracing::warn!(key = %meta.key, version = meta.version, url = %meta.url, attempt, attempts,
                    %reason, "blob download failed");
                last = reason;
            }
        }
        // `temp` is dropped here, deleting the partial file before we wait.
    }
    Err(fail(last, attempts))
}

/// One attempt: stream into `path`, then check size and digest and fsync.
async fn attempt_once(
    meta: &BlobMeta,
    source: &Source,
    client: Option<&reqwest::Client>,
    path: &Path,
) -> Result<(), String> {
    let mut out = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .await
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let mut sink = Sink { meta, out: &mut out, hasher: Sha256::new(), len: 0 };
    match (source, client) {
        (Source::File(from), _) => {
            let mut input =
                tokio::fs::File::open(from).await.map_err(|e| format!("cannot open {}: {e}", from.display()))?;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = input.read(&mut buf).await.map_err(|e| format!("cannot read {}: {e}", from.display()))?;
                if n == 0 {
                    break;
                }
                sink.write(&buf[..n]).await?;
            }
        }
        (Source::Http(url), Some(client)) => {
            let mut response = client.get(url.clone()).send().await.map_err(|e| format!("request failed: {e:#}"))?;
            if response.status() != reqwest::StatusCode::OK {
                return Err(format!("http {}", response.status().as_u16()));
            }
            // A body shorter than its Content-Length surfaces here as an error from hyper.
            while let Some(chunk) = response.chunk().await.map_err(|e| format!("transfer failed: {e:#}"))? {
                sink.write(&chunk).await?;
            }
        }
        (Source::Http(_), None) => unreachable!("fetch_with builds a client for every http source"),
    }
    let Sink { hasher, len, .. } = sink;
    if len != meta.size {
        return Err(format!("size mismatch: expected {} bytes, got {len}", meta.size));
    }
    let got = hex(&hasher.finalize());
    if got != meta.sha256 {
        return Err(format!("sha256 mismatch: expected {}, got {got}", meta.sha256));
    }
    let io = |e| format!("cannot write {}: {e}", path.display());
    out.flush().await.map_err(io)?;
    out.sync_all().await.map_err(io)?;
    Ok(())
}

/// Writes, hashes and counts; stops as soon as the content is longer than announced, so a
/// bad source cannot fill the disk.
struct Sink<'a> {
    meta: &'a BlobMeta,
    out: &'a mut tokio::fs::File,
    hasher: Sha256,
    len: u64,
}

impl Sink<'_> {
    async fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.len += bytes.len() as u64;
        if self.len > self.meta.size {
            return Err(format!("size mismatch: expected {} bytes, got more", self.meta.size));
        }
        self.hasher.update(bytes);
        self.out.write_all(bytes).await.map_err(|e| format!("cannot write temp file: {e}"))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A temp file deleted on drop unless kept: covers failed attempts and a fetch future dropped
/// mid-transfer (cancellation), which no error path would see.
struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl TempFile {
    fn new(path: PathBuf) -> TempFile {
        TempFile { path, keep: false }
    }

    fn keep(mut self) -> PathBuf {
        self.keep = true;
        std::mem::take(&mut self.path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            // NotFound is normal (the attempt failed before creating it); anything else leaves a
            // file that the `tmp/` sweep at the next start removes.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
#[path = "fetch_tests.rs"]
mod tests;
