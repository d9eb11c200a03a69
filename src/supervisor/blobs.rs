//! Blob sync: which blob versions this host's assignments need, and getting them local.
//!
//! Runs on the `sync-supervisor` queue, after every assignment sync, when the persistent watch
//! on `<root>/blobstore` fires, on the `blob.sync_secs` timer (the safety net), and when a
//! download ends. One pass:
//!
//! 1. install the downloads that finished (a rename into the cache under its lock), record the
//!    ones that failed (retried with backoff: 2 s, doubling, at most 5 min; each attempt is
//!    itself `1 + download_retries` tries);
//! 2. for every blob key an assigned job uses, stat `/blobstore/<key>` and re-read only a node
//!    whose data changed (no remote check at all for an unchanged version: the cache is
//!    content addressed, a present entry is the verified content);
//! 3. per (key, extract, owner): the current version's content is local, downloading (one
//!    download per content and owner however many slots want it), failed, or has no usable
//!    BlobMeta. The owner is the user the job's workers run as (`links::blob_owner`): cache
//!    entries are shared only between workers of one user, and a job whose user is refused
//!    gets nothing fetched;
//! 4. reference what each slot's assignment wants, clean the cache down to `cache_target_mb`
//!    (never a referenced entry), and publish a [`BlobView`] for the process side.
//!
//! Downloads run as tasks, not on the queue: a 200 MB blob must not hold up assignment sync.
//!
//! Invariants:
//! - a version is only "ready" once its entry is in the cache: fetched, size and sha256
//!   verified, unpacked, fsynced, renamed in. Nothing else is ever published as usable;
//! - a BlobMeta that turns bad (invalid payload, node removed) keeps the last good version
//!   known to this process, so running workers and cached content stay usable.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use super::assignments::AssignmentView;
use super::bad_payloads::BadPayloads;
use super::links::blob_owner;
use crate::admin::PayloadKind;
use crate::blob::{
    BlobCache, BlobMeta, BlobStatus, BlobUse, BlobView, CacheError, CacheStats, EntryId, RefOwner, SharedCache, Staged,
};
use crate::cluster::zk::{ZkClient, ZkError};
use crate::worker::users::UserPolicy;

/// First wait before a failed download is tried again; doubles per failure.
const RETRY_FIRST: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(300);

/// Settings of the blob sync (`[blob]`).
#[derive(Debug, Clone)]
pub(crate) struct BlobSyncConfig {
    pub root: String,
    pub tmp: PathBuf,
    pub cache_target_bytes: u64,
    pub download_timeout: Duration,
    pub download_retries: u32,
    /// `worker.run_as_user` and its rules: whose cache entries each job reads.
    pub users: UserPolicy,
}

#[derive(Debug)]
struct MetaEntry {
    /// `mzxid` when last read; `None` while the node is missing.
    zxid: Option<i64>,
    good: Option<BlobMeta>,
    problem: Option<String>,
}

impl MetaEntry {
    /// The node exists and its payload cannot be used (a missing node is a problem too, but
    /// not a bad payload).
    fn bad_payload(&self) -> Option<&String> {
        self.zxid.and(self.problem.as_ref())
    }
}

#[derive(Debug)]
struct Failure {
    count: u32,
    retry_at: Instant,
    error: String,
}

#[derive(Debug)]
struct Done {
    id: EntryId,
    blob: BlobUse,
    version: u64,
    result: Result<Staged, CacheError>,
}

/// State of the blob sync; owned by the `sync-supervisor` handler.
pub(crate) struct BlobSync {
    config: BlobSyncConfig,
    cache: SharedCache,
    assignments: watch::Receiver<Option<Arc<AssignmentView>>>,
    metas: BTreeMap<String, MetaEntry>,
    /// Running downloads, one per content.
    downloads: BTreeMap<EntryId, tokio::task::JoinHandle<()>>,
    /// Failed downloads by (blob, version): a new version is tried at once.
    failures: BTreeMap<(BlobUse, u64), Failure>,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
    /// Requests another pass (a download ended, a retry is due).
    wake: Arc<dyn Fn() + Send + Sync>,
    publish: watch::Sender<Arc<BlobView>>,
    /// The wanted references of the last pass, to count each new use of a present entry as a hit.
    wanted: BTreeMap<RefOwner, BTreeSet<EntryId>>,
    /// Problems already logged, so each is logged once (again when it changes).
    reported: BTreeMap<BlobUse, String>,
    /// Reloaded config (`[blob]` applies live).
    live: Option<watch::Receiver<Arc<crate::config::Config>>>,
    /// Where the BlobMeta of this host's blobs that cannot be used are reported (this sync
    /// owns the `blob` kind; blobs no assignment here uses are not read, so not reported).
    bad: BadPayloads,
}

impl std::fmt::Debug for BlobSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobSync").field("downloads", &self.downloads.len()).finish_non_exhaustive()
    }
}

impl Drop for BlobSync {
    fn drop(&mut self) {
        // A stop abandons downloads; their staging dirs are swept at the next start.
        for task in self.downloads.values() {
            task.abort();
        }
    }
}

impl BlobSync {
    pub(crate) fn new(
        config: BlobSyncConfig,
        cache: SharedCache,
        assignments: watch::Receiver<Option<Arc<AssignmentView>>>,
        publish: watch::Sender<Arc<BlobView>>,
        wake: Arc<dyn Fn() + Send + Sync>,
        bad: BadPayloads,
    ) -> BlobSync {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        BlobSync {
            config,
            cache,
            assignments,
            metas: BTreeMap::new(),
            downloads: BTreeMap::new(),
            failures: BTreeMap::new(),
            done_tx,
            done_rx,
            wake,
            publish,
            wanted: BTreeMap::new(),
            reported: BTreeMap::new(),
            live: None,
            bad,
        }
    }

    /// Follow config reloads: `[blob]` settings apply from the next pass.
    pub(crate) fn follow_config(&mut self, config: watch::Receiver<Arc<crate::config::Config>>) {
        self.live = Some(config);
    }

    fn dir(&self) -> String {
        format!("{}/blobstore", self.config.root)
    }

    /// One pass (module docs). Without a session (`client` None) it works from the BlobMeta
    /// already read. A ZooKeeper error is returned after the rest of the pass is done.
    pub(crate) async fn sync(&mut self, client: Option<&ZkClient>) -> Result<(), ZkError> {
        if let Some(live) = self.live.as_mut()
            && live.has_changed().unwrap_or(false)
        {
            let config = live.borrow_and_update().clone();
            self.config.cache_target_bytes = config.blob.cache_target_mb.saturating_mul(1024 * 1024);
            self.config.download_timeout = config.blob.download_timeout;
            self.config.download_retries = config.blob.download_retries;
            self.config.users = UserPolicy::from_config(&config.worker);
        }
        self.collect_done().await;
        let Some(view) = self.assignments.borrow().clone() else {
            // Before the first assignment sync nothing is known to be needed (or unneeded).
            return Ok(());
        };
        let job_uses = self.job_uses(&view);
        let uses: BTreeSet<BlobUse> = job_uses.values().flatten().cloned().collect();
        let keys: BTreeSet<String> = uses.iter().map(|u| u.key.clone()).collect();
        self.metas.retain(|k, _| keys.contains(k));
        let mut zk_result = Ok(());
        if let Some(client) = client {
            for key in &keys {
                if let Err(e) = self.read_meta(client, key).await {
                    zk_result = Err(e);
                    break;
                }
            }
        }
        self.report_bad_metas();
        let now = Instant::now();
        let mut blobs = BTreeMap::new();
        for blob in uses {
            let status = self.status(&blob, now);
            blobs.insert(blob, status);
        }
        self.failures.retain(|(blob, version), _| blobs.get(blob).is_some_and(|s| s.version == Some(*version)));
        self.report(&blobs);
        // References: each slot's assignment wants the current version of each of its blobs.
        let wanted: BTreeMap<RefOwner, BTreeSet<EntryId>> = job_uses
            .into_iter()
            .map(|(owner, uses)| {
                let ids = uses.iter().filter_map(|u| blobs.get(u)?.ready.as_ref().map(|(id, _)| id.clone()));
                (owner, ids.collect())
            })
            .collect();
        let stats = self.reference_and_clean(wanted).await;
        self.publish.send_if_modified(|current| {
            let next = BlobView { blobs, cache: stats };
            if **current == next {
                false
            } else {
                *current = Arc::new(next);
                true
            }
        });
        zk_result
    }

    /// What each slot's job reads: per (port, topology), every blob as the user its workers run
    /// as uses it. A job whose user the rules refuse reads nothing: its launch is refused with
    /// the reason, and nothing is fetched into a directory of that user.
    fn job_uses(&self, view: &AssignmentView) -> BTreeMap<RefOwner, Vec<BlobUse>> {
        let users = &self.config.users;
        view.jobs
            .iter()
            .filter_map(|(port, job)| {
                let owner = blob_owner(users, &job.topology_id, job.launch.user.as_deref()).ok()?;
                let uses = job.blobs.iter().map(|b| BlobUse::of(b, owner)).collect();
                Some(((*port, job.topology_id.clone()), uses))
            })
            .collect()
    }

    /// Sets the wanted references (counting each new use of a present entry as a hit) and
    /// cleans the cache down to its target, under the cache lock off the async threads.
    async fn reference_and_clean(&mut self, wanted: BTreeMap<RefOwner, BTreeSet<EntryId>>) -> CacheStats {
        let (target, run_as_user) = (self.config.cache_target_bytes, self.config.users.enabled);
        let cache = self.cache.clone();
        let previous = std::mem::take(&mut self.wanted);
        let (wanted, stats) = tokio::task::spawn_blocking(move || {
            let mut cache = cache.lock().unwrap();
            for (owner, ids) in &wanted {
                for id in ids {
                    if !previous.get(owner).is_some_and(|p| p.contains(id)) {
                        // A slot and assignment starting to use content already here.
                        cache.hit(id);
                    }
                }
            }
            cache.set_wanted(&wanted);
            // Also every unused entry no worker can be given any more: after an upgrade, the
            // older release's shared entries (readable by every user) once nothing links to them.
            cache.cleanup(target, |owner| owner.usable(run_as_user));
            (wanted, cache.stats())
        })
        .await
        .expect("blob cache task panicked");
        self.wanted = wanted;
        stats
    }

    /// Hands the BlobMeta read and found unusable (this sync's kind) to [`BadPayloads`].
    fn report_bad_metas(&self) {
        let dir = self.dir();
        let bad = self.metas.iter().filter_map(|(key, m)| Some((format!("{dir}/{key}"), m.bad_payload()?.clone())));
        self.bad.replace(PayloadKind::Blob, bad);
    }

    /// Re-reads `/blobstore/<key>` if its data changed since the last read.
    async fn read_meta(&mut self, client: &ZkClient, key: &str) -> Result<(), ZkError> {
        let path = format!("{}/{key}", self.dir());
        let entry = self.metas.entry(key.to_owned()).or_insert(MetaEntry { zxid: None, good: None, problem: None });
        let Some(stat) = client.stat(&path).await? else {
            entry.zxid = None;
            entry.problem = Some(format!("no BlobMeta at {path}"));
            return Ok(());
        };
        if entry.zxid == Some(stat.mzxid) {
            return Ok(());
        }
        let Some((data, stat)) = client.get(&path).await? else {
            entry.zxid = None;
            entry.problem = Some(format!("no BlobMeta at {path}"));
            return Ok(());
        };
        entry.zxid = Some(stat.mzxid);
        match BlobMeta::decode(&path, &data) {
            Ok(meta) => {
                if entry.good.as_ref().is_some_and(|g| g.version != meta.version) {
                    info!(key, version = meta.version, "new blob version");
                }
                entry.good = Some(meta);
                entry.problem = None;
            }
            Err(e) => {
                warn!(key, error = %e, kept_version = entry.good.as_ref().map(|g| g.version),
                    "ignoring an invalid BlobMeta; the last good version stays in use");
                entry.problem = Some(e.to_string());
            }
        }
        Ok(())
    }

    /// The status of one blob use, starting its download if it is due.
    fn status(&mut self, blob: &BlobUse, now: Instant) -> BlobStatus {
        let meta_entry = self.metas.get(&blob.key);
        let Some(meta) = meta_entry.and_then(|m| m.good.clone()) else {
            let error = meta_entry
                .and_then(|m| m.problem.clone())
                .unwrap_or_else(|| format!("BlobMeta of `{}` not read yet", blob.key));
            return BlobStatus { version: None, ready: None, error: Some(error), downloading: false };
        };
        let version = Some(meta.version);
        let id = match EntryId::of(&meta, blob.extract, blob.owner) {
            Ok(id) => id,
            Err(e) => return BlobStatus { version, ready: None, error: Some(e.to_string()), downloading: false },
        };
        if let Some(path) = self.cache.lock().unwrap().path(&id) {
            return BlobStatus { version, ready: Some((id, path.to_owned())), error: None, downloading: false };
        }
        // While a retry runs, the slot keeps showing why the last attempt failed.
        let failure = self.failures.get(&(blob.clone(), meta.version));
        let error = failure.map(|f| format!("{} (failed {} times, retrying with backoff)", f.error, f.count));
        if self.downloads.contains_key(&id) {
            return BlobStatus { version, ready: None, error, downloading: true };
        }
        if failure.is_some_and(|f| f.retry_at > now) {
            return BlobStatus { version, ready: None, error, downloading: false };
        }
        self.start_download(blob.clone(), meta, id);
        BlobStatus { version, ready: None, error, downloading: true }
    }

    fn start_download(&mut self, blob: BlobUse, meta: BlobMeta, id: EntryId) {
        info!(key = %meta.key, version = meta.version, extract = blob.extract, owner = ?blob.owner, url = %meta.url,
            "downloading blob");
        self.cache.lock().unwrap().count_miss();
        let (tmp, timeout, retries) =
            (self.config.tmp.clone(), self.config.download_timeout, self.config.download_retries);
        let (tx, wake) = (self.done_tx.clone(), self.wake.clone());
        let task_id = id.clone();
        let task = tokio::spawn(async move {
            let result = BlobCache::stage(&meta, blob.extract, blob.owner, &tmp, timeout, retries).await;
            let _ = tx.send(Done { id: task_id, blob, version: meta.version, result });
            wake();
        });
        self.downloads.insert(id, task);
    }

    /// Installs finished downloads and records failed ones.
    async fn collect_done(&mut self) {
        while let Ok(done) = self.done_rx.try_recv() {
            let Done { id, blob, version, result } = done;
            self.downloads.remove(&id);
            let mut bytes = 0;
            let result = match result {
                Ok(staged) => {
                    bytes = staged.bytes();
                    let cache = self.cache.clone();
                    tokio::task::spawn_blocking(move || cache.lock().unwrap().install(staged).map(drop))
                        .await
                        .expect("blob install task panicked")
                }
                Err(e) => Err(e),
            };
            let m = crate::metrics::metrics();
            match result {
                Ok(()) => {
                    m.blob_downloads.get_or_create(&vec![("result", "ok".to_owned())]).inc();
                    m.blob_download_bytes.inc_by(bytes);
                    self.failures.remove(&(blob, version));
                }
                Err(e) => {
                    m.blob_downloads.get_or_create(&vec![("result", "failed".to_owned())]).inc();
                    let key = (blob, version);
                    let count = self.failures.get(&key).map_or(1, |f| f.count + 1);
                    let delay = RETRY_FIRST.saturating_mul(1 << (count - 1).min(10)).min(RETRY_MAX);
                    warn!(key = %key.0.key, version, error = %e, attempt = count, retry_in_s = delay.as_secs(),
                        "blob download failed; nothing of it is used");
                    let retry_at = Instant::now() + delay;
                    self.failures.insert(key, Failure { count, retry_at, error: e.to_string() });
                    let wake = self.wake.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep_until(retry_at).await;
                        wake();
                    });
                }
            }
        }
    }

    fn report(&mut self, blobs: &BTreeMap<BlobUse, BlobStatus>) {
        for (blob, status) in blobs {
            match &status.error {
                Some(error) if self.reported.get(blob) != Some(error) => {
                    // Failures are logged where they happen; this names what waits on them.
                    info!(key = %blob.key, extract = blob.extract, owner = ?blob.owner, problem = %error,
                        "blob not available");
                    self.reported.insert(blob.clone(), error.clone());
                }
                None if self.reported.remove(blob).is_some() => {
                    info!(key = %blob.key, extract = blob.extract, owner = ?blob.owner, version = status.version,
                        "blob available again");
                }
                _ => {}
            }
        }
        self.reported.retain(|b, _| blobs.contains_key(b));
    }
}
