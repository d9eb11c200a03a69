//! Blob links: how a worker sees its blobs, and which cache entries each slot holds.
//!
//! A worker finds blob `NAME` at `<worker_dir>/blobs/NAME` (`$GALE_BLOB_DIR/NAME`; `{blob:NAME}`
//! expands to the same path): a symlink into the cache, to the plain file or to the unpacked
//! directory. Because workers only ever go through the link, a new version of a blob without
//! `restart_on_update` reaches a running worker by replacing the link (a new symlink renamed
//! over the old one: atomic, the worker sees the old or the new target, never neither), and the
//! cache can keep every version content addressed.
//!
//! Each slot holds the entries its latest worker links to, as the cache reference of its
//! (port, topology) ([`crate::blob::BlobCache::set_linked`]), until the slot leaves that
//! assignment. A relaunch after a crash so can always fall back to the version the previous
//! worker had while a newer one is still downloading or failed.
//!
//! Privacy between users: every lookup names the [`Owner`] of the entries a worker may read,
//! the user it runs as ([`blob_owner`], the launch's own rule), so a worker is only linked to
//! entries in its own user's cache directory (`crate::blob` owner module). The one exception is
//! an older release's shared entry that this slot's adopted worker already used, readable by
//! anyone: a relaunch may fall back to it, as before, rather than wait for a download.
//!
//! The executor owns this; every call runs on the `sync-processes` queue.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::watch;
use tracing::{info, warn};

use crate::blob::{BlobUse, BlobView, EntryId, Owner, SharedCache};
use crate::slot::SlotJob;
use crate::worker::users::UserPolicy;

/// What one slot's latest worker links to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    topology: String,
    /// Blob name → what its link points at.
    links: BTreeMap<String, Linked>,
}

/// One blob link: the content, and the BlobMeta version it was linked as. A new version is
/// an update even when its bytes are the same (SPEC §3.3: a new version restarts); the
/// version of an adopted worker's link is unknown (`None`), and then only the content counts.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Linked {
    id: EntryId,
    version: Option<u64>,
}

impl Linked {
    /// Whether the current `version` of content `id` differs from this link. The same content in
    /// another owner's entry (an adopted worker's shared entry from an older release) is no update.
    fn outdated_by(&self, id: &EntryId, version: Option<u64>) -> bool {
        !self.id.same_content(id) || (self.version.is_some() && version.is_some() && self.version != version)
    }

    /// Whether a worker of `owner` may be linked to this entry again: one of its own user's, or
    /// an older release's shared one (readable by anyone, [`Owner::Agent`]).
    fn readable_by(&self, owner: Owner) -> bool {
        self.id.owner == owner || self.id.owner == Owner::Agent
    }
}

/// Whose cache entries a worker of `topology` asking for `user` reads: the user it runs as under
/// `users` (SPEC §7), [`Owner::Agent`] when workers run as the agent's user. The launch's rule
/// itself ([`UserPolicy::resolve`]); an `Err` is why such a worker is refused.
pub(crate) fn blob_owner(users: &UserPolicy, topology: &str, user: Option<&str>) -> Result<Owner, String> {
    Ok(Owner::of_uid(users.resolve(topology, user)?.map(|run_as| run_as.uid)))
}

/// The result of checking a running worker's links against the current blob versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct LinkCheck {
    /// A blob with `restart_on_update` has a newer local version than the worker's.
    pub restart: bool,
}

pub(crate) struct BlobLinks {
    cache: SharedCache,
    view: watch::Receiver<Arc<BlobView>>,
    held: BTreeMap<u16, Held>,
}

impl std::fmt::Debug for BlobLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobLinks").field("held", &self.held).finish_non_exhaustive()
    }
}

/// `<worker_dir>/blobs`: `$GALE_BLOB_DIR`.
pub(crate) fn blob_dir(worker_dir: &Path) -> PathBuf {
    worker_dir.join("blobs")
}

impl BlobLinks {
    pub(crate) fn new(cache: SharedCache, view: watch::Receiver<Arc<BlobView>>) -> BlobLinks {
        BlobLinks { cache, view, held: BTreeMap::new() }
    }

    /// The blob view last published by the blob sync.
    pub(crate) fn view(&self) -> Arc<BlobView> {
        self.view.borrow().clone()
    }

    /// Where each blob of `job` on `port` comes from for a launch of a worker of `owner` now: the
    /// current version if local, else the version this slot's previous worker of the same
    /// topology linked to (if that worker's user may read it).
    fn resolve(
        &self,
        port: u16,
        job: &SlotJob,
        owner: Owner,
    ) -> Result<BTreeMap<String, (Linked, PathBuf)>, Option<String>> {
        let view = self.view.borrow().clone();
        let cache = self.cache.lock().unwrap();
        let held = self.held.get(&port).filter(|h| h.topology == job.topology_id);
        let mut out = BTreeMap::new();
        for blob in &job.blobs {
            let status = view.blobs.get(&BlobUse::of(blob, owner));
            let current = status.and_then(|s| {
                let (id, path) = s.ready.as_ref().filter(|(id, _)| cache.contains(id))?;
                Some((Linked { id: id.clone(), version: s.version }, path.clone()))
            });
            let fallback = || {
                let linked = held?.links.get(&blob.name).filter(|l| l.readable_by(owner))?;
                Some((linked.clone(), cache.path(&linked.id)?.to_owned()))
            };
            match current.or_else(fallback) {
                Some(found) => {
                    out.insert(blob.name.clone(), found);
                }
                None => return Err(status.and_then(|s| s.error.clone())),
            }
        }
        Ok(out)
    }

    /// `Ok` when every blob of `job` can be linked now for a worker of `owner`; else the error to
    /// show on the slot (`None`: nothing wrong, a download is simply running).
    pub(crate) fn ready(&self, port: u16, job: &SlotJob, owner: Owner) -> Result<(), Option<String>> {
        self.resolve(port, job, owner).map(drop)
    }

    /// Links every blob of `job` into `<worker_dir>/blobs` for a new worker of `owner`,
    /// referencing the entries for this slot first (so cleanup cannot take one in between).
    /// Returns blob name → link path, for `{blob:NAME}`.
    pub(crate) fn link(
        &mut self,
        port: u16,
        job: &SlotJob,
        owner: Owner,
        worker_dir: &Path,
    ) -> Result<BTreeMap<String, PathBuf>, String> {
        let resolved = self.resolve(port, job, owner).map_err(|e| {
            let names: Vec<&str> = job.blobs.iter().map(|b| b.name.as_str()).collect();
            e.unwrap_or_else(|| format!("blobs {} are not local yet", names.join(", ")))
        })?;
        let ids: BTreeSet<EntryId> = resolved.values().map(|(l, _)| l.id.clone()).collect();
        let owner = (port, job.topology_id.clone());
        if let Err(missing) = self.cache.lock().unwrap().set_linked(&owner, &ids) {
            return Err(format!("blob cache entry {} vanished before the launch", missing.sha256));
        }
        let dir = blob_dir(worker_dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut paths = BTreeMap::new();
        let mut links = BTreeMap::new();
        for (name, (linked, target)) in resolved {
            let link = dir.join(&name);
            replace_link(&dir, &name, &target)
                .map_err(|e| format!("cannot link blob `{name}` at {}: {e}", link.display()))?;
            paths.insert(name.clone(), link);
            links.insert(name, linked);
        }
        self.held.insert(port, Held { topology: job.topology_id.clone(), links });
        Ok(paths)
    }

    /// After an agent restart: what the adopted worker in `worker_dir` links to (read from its
    /// links on disk) becomes this slot's reference.
    pub(crate) fn adopt(&mut self, port: u16, job: &SlotJob, worker_dir: &Path) {
        let dir = blob_dir(worker_dir);
        let mut cache = self.cache.lock().unwrap();
        let mut links = BTreeMap::new();
        for blob in &job.blobs {
            let Ok(target) = std::fs::read_link(dir.join(&blob.name)) else { continue };
            match cache.entry_of(&target).filter(|id| cache.contains(id)) {
                Some(id) => {
                    links.insert(blob.name.clone(), Linked { id, version: None });
                }
                None => warn!(port, blob = %blob.name, target = %target.display(),
                    "an adopted worker's blob link points at nothing in the cache; it will be relinked"),
            }
        }
        let ids = links.values().map(|l| l.id.clone()).collect();
        let owner = (port, job.topology_id.clone());
        cache.set_linked(&owner, &ids).expect("only present entries");
        self.held.insert(port, Held { topology: job.topology_id.clone(), links });
    }

    /// For a live worker of `job` (running as `owner`) in `worker_dir`: switches the link of
    /// every blob without `restart_on_update` whose current version is newer than the linked
    /// one, and tells whether a blob with `restart_on_update` needs the worker restarted.
    pub(crate) fn check(&mut self, port: u16, job: &SlotJob, owner: Owner, worker_dir: &Path) -> LinkCheck {
        let view = self.view.borrow().clone();
        let mut result = LinkCheck::default();
        let Some(held) = self.held.get(&port).filter(|h| h.topology == job.topology_id).cloned() else {
            return result;
        };
        let mut links = held.links.clone();
        for blob in &job.blobs {
            let Some(status) = view.blobs.get(&BlobUse::of(blob, owner)) else { continue };
            let Some((id, target)) = status.ready.clone() else { continue };
            if links.get(&blob.name).is_some_and(|l| !l.outdated_by(&id, status.version)) {
                continue;
            }
            if blob.restart_on_update {
                result.restart = true;
                continue;
            }
            let dir = blob_dir(worker_dir);
            let mut wanted: BTreeSet<EntryId> = links.values().map(|l| l.id.clone()).collect();
            wanted.insert(id.clone());
            // Reference the new entry before the worker can see it.
            if self.cache.lock().unwrap().set_linked(&(port, job.topology_id.clone()), &wanted).is_err() {
                continue;
            }
            match replace_link(&dir, &blob.name, &target) {
                Ok(()) => {
                    info!(port, blob = %blob.name, key = %blob.key, sha256 = %id.sha256,
                        "switched a running worker's blob link to the new version");
                    links.insert(blob.name.clone(), Linked { id, version: status.version });
                }
                Err(e) => warn!(port, blob = %blob.name, error = %e, "cannot switch a blob link; will retry"),
            }
        }
        if links != held.links {
            let ids = links.values().map(|l| l.id.clone()).collect();
            let _ = self.cache.lock().unwrap().set_linked(&(port, job.topology_id.clone()), &ids);
            self.held.insert(port, Held { topology: job.topology_id.clone(), links });
        }
        result
    }

    /// Drops the references of slots that left the assignment they were held for. `current`:
    /// port → (topology of the slot's job, whether a worker still runs there).
    pub(crate) fn release_unused(&mut self, current: &BTreeMap<u16, (Option<String>, bool)>) {
        let mut cache = self.cache.lock().unwrap();
        self.held.retain(|port, held| {
            let keep = current
                .get(port)
                .is_some_and(|(topology, running)| *running || topology.as_deref() == Some(held.topology.as_str()));
            if !keep {
                cache.release(&(*port, held.topology.clone()));
            }
            keep
        });
    }
}

/// Points `<dir>/<name>` at `target` atomically: a new symlink renamed over the old one. Blob
/// names cannot start with `.`, so the temporary name never collides with a blob.
fn replace_link(dir: &Path, name: &str, target: &Path) -> std::io::Result<()> {
    let temp = dir.join(format!(".{name}.{}", uuid::Uuid::new_v4()));
    std::os::unix::fs::symlink(target, &temp)?;
    std::fs::rename(&temp, dir.join(name)).inspect_err(|_| {
        let _ = std::fs::remove_file(&temp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linked(sha: char, owner: Owner, version: Option<u64>) -> Linked {
        Linked { id: EntryId { sha256: sha.to_string().repeat(64), extracted: false, owner }, version }
    }

    #[test]
    fn a_worker_is_linked_again_only_to_its_own_users_entries_or_an_old_shared_one() {
        let (a, b) = (Owner::User(1001), Owner::User(1002));
        assert!(linked('1', a, Some(1)).readable_by(a));
        assert!(!linked('1', a, Some(1)).readable_by(b), "never another user's entry");
        assert!(!linked('1', a, Some(1)).readable_by(Owner::Agent), "nor a user's for the agent's workers");
        assert!(linked('1', Owner::Agent, None).readable_by(b), "an older release's shared entry");
    }

    #[test]
    fn the_same_content_in_another_owners_entry_is_no_update() {
        // An adopted worker on an older release's shared entry, and its user's own copy now.
        let old = linked('1', Owner::Agent, None);
        assert!(!old.outdated_by(&linked('1', Owner::User(1001), Some(1)).id, Some(1)));
        assert!(old.outdated_by(&linked('2', Owner::User(1001), Some(2)).id, Some(2)), "other content");
        let mine = linked('1', Owner::User(1001), Some(1));
        assert!(mine.outdated_by(&mine.id, Some(2)), "a new version of the same bytes");
        assert!(!mine.outdated_by(&mine.id, Some(1)));
    }
}
