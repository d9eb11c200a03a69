//! Assignment sync: what ZooKeeper says this host's ports should run.
//!
//! Runs as a job of the `sync-supervisor` queue. What a pass reads depends on what is known to
//! have changed, so that its cost does not grow with the number of topologies in the cluster
//! (T: every agent reads every topology's node, SPEC §3.2):
//!
//! - **Full pass** (list the topologies with the parent's stat; stat each; re-read only those
//!   whose node changed): before the first successful pass of this process, in every new
//!   session, and after every reconnect or new watch ([`AssignmentChanges::resync`]), because
//!   a persistent watch misses the events of a disconnection (ZOOKEEPER-4698). 1 + T reads.
//! - **A watch event** (`NodeCreated` / `NodeDataChanged` / `NodeDeleted` of
//!   `<root>/assignments/<topology>`, delivered by the persistent recursive watch of
//!   [`crate::cluster::watch::watch_dir`] and queued in [`AssignmentChanges`]): one get of that node, nothing else.
//! - **The `sync_secs` timer** (the safety net): one stat of `<root>/assignments`; only if its
//!   `pzxid` moved (a topology was created or deleted since the last list) the children are
//!   listed again and the new ones read. Data changes of existing topologies are left to the
//!   watch: while the session is connected it delivers every one, and every gap in it (a
//!   reconnect, a new session, a watch set again) is followed by a full pass. So the timer
//!   costs 1 read per period whatever T is (it used to be 1 + T).
//!
//! Per topology, the last version that was valid is kept. A topology whose new payload is
//! broken is reported (log; `/status` and the `gale_bad_payloads` metric through
//! [`BadPayloads`]) and keeps its last good version, so its running workers are left as they
//! are; other topologies are not affected. Then the placements for this supervisor become the
//! per-port jobs, which are persisted (`local-assignments`) and published to the process side,
//! with the slots a broken payload places a worker on ([`AssignmentView::unrunnable`]: the
//! slot's `error` in SupervisorInfo and status, SPEC §3.1).
//!
//! Invariant: nothing is published before the first successful (full) pass, so a start with
//! ZooKeeper unreachable never reads as "nothing assigned" and never stops a worker.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::bad_payloads::BadPayloads;
use super::records::{LocalAssignments, PortJob};
use crate::admin::PayloadKind;
use crate::cluster::zk::{NodeStat, ZkClient, ZkError};
use crate::local_state::{LocalAssignmentsKey, LocalState};
use crate::model::assignment::{Assignment, placements_of_invalid};
use crate::model::unix_ms;
use crate::slot::Unrunnable;

/// The result of a successful pass, as the process side sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct AssignmentView {
    /// Counts successful syncs of this process: a view is "newer than" a moment when its
    /// generation is (the stop_workers policy waits for a view read after the session is back).
    pub generation: u64,
    /// port -> job, only ports in `supervisor.slots`.
    pub jobs: LocalAssignments,
    /// Problems to report: topology id (or node name) -> what is wrong.
    pub problems: BTreeMap<String, String>,
    /// Ports of this host where an assigned worker cannot run because its assignment's
    /// payload is broken (see [`AssignmentSync::unrunnable`]).
    pub unrunnable: BTreeMap<u16, Unrunnable>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum SyncError {
    #[error(transparent)]
    Zk(#[from] ZkError),
    #[error("cannot persist local assignments: {0}")]
    Persist(String),
}

/// One topology as last read.
#[derive(Debug, Clone)]
struct Cached {
    /// `mzxid` of the node when read.
    zxid: i64,
    /// The last valid payload (kept when a newer one is broken).
    good: Option<Arc<Assignment>>,
    /// Why the current payload is not used, if it is not.
    problem: Option<String>,
    /// This host's slots the unusable payload places a worker on, as far as it can be read.
    placed: Vec<u16>,
}

/// What the watch reported since the last pass.
#[derive(Debug, Default)]
struct Pending {
    /// Requests for a full pass so far (a counter, so a request that arrives while a full pass
    /// runs is not taken as done by it).
    resyncs: u64,
    /// Topologies whose node was created, changed or deleted.
    names: BTreeSet<String>,
}

/// The mailbox between the `/assignments` watch (and the session events) and the
/// [`AssignmentSync`] that owns the cache: senders note what changed, the next pass takes it.
/// Bounded by the number of topologies (a set), however many events arrive.
#[derive(Debug, Clone)]
pub(crate) struct AssignmentChanges {
    dir: String,
    pending: Arc<Mutex<Pending>>,
}

impl AssignmentChanges {
    /// Everything may have changed (a new session, a reconnect, a watch set again): the next
    /// pass is a full one.
    pub(crate) fn resync(&self) {
        self.pending.lock().unwrap().resyncs += 1;
    }

    /// An event of the persistent watch on `<root>/assignments` ([`watch_dir`]): `Some` path of
    /// a changed node, `None` when events may have been missed.
    pub(crate) fn note(&self, path: Option<&str>) {
        let Some(path) = path else { return self.resync() };
        match path.strip_prefix(&self.dir).and_then(|rest| rest.strip_prefix('/')) {
            // `<root>/assignments/<topology>`: that topology only.
            Some(name) if !name.is_empty() && !name.contains('/') => {
                self.pending.lock().unwrap().names.insert(name.to_owned());
            }
            // Below a topology's node: not an assignment (SPEC §3.2), nothing to read.
            Some(_) => {}
            // The directory itself (created, deleted) or anything unexpected: read it all.
            None => self.resync(),
        }
    }

    fn take(&self) -> (u64, BTreeSet<String>) {
        let mut pending = self.pending.lock().unwrap();
        (pending.resyncs, std::mem::take(&mut pending.names))
    }

    /// Puts back the names of a pass that failed: they are read by the next one.
    fn restore(&self, names: BTreeSet<String>) {
        self.pending.lock().unwrap().names.extend(names);
    }
}

/// State of the assignment sync; owned by the `sync-supervisor` handler.
#[derive(Debug)]
pub(crate) struct AssignmentSync {
    root: String,
    supervisor_id: String,
    slots: BTreeSet<u16>,
    cache: BTreeMap<String, Cached>,
    state: Arc<Mutex<LocalState>>,
    persisted: Option<LocalAssignments>,
    publish: watch::Sender<Option<Arc<AssignmentView>>>,
    /// Where the broken payloads are reported (this sync owns the `assignment` kind).
    bad: BadPayloads,
    /// Problems already logged, so each is logged once (again when it changes).
    reported: BTreeMap<String, String>,
    /// Successful syncs so far (see [`AssignmentView::generation`]).
    generation: u64,
    /// The session in which `<root>/assignments` was last made sure to exist (once per
    /// session is enough; every sync would be two needless reads).
    ensured_in: Option<i64>,
    /// What the watch and the session events reported.
    changes: AssignmentChanges,
    /// The session of the last successful full pass, and the resync requests it covered.
    full_in: Option<i64>,
    resyncs_done: u64,
    /// `pzxid` of `<root>/assignments` when its children were last listed (`None`: missing).
    listed_pzxid: Option<i64>,
    /// The cache changed since the last successful publish (a persist failed after the reads).
    unpublished: bool,
}

/// Reads of one pass, for the debug log.
#[derive(Debug, Default)]
struct Reads {
    full: bool,
    listed: bool,
    stats: usize,
    gets: usize,
}

impl AssignmentSync {
    /// `persisted`: the `local-assignments` of the previous run, the fallback for topologies
    /// whose payload is broken when this process first reads them.
    pub(crate) fn new(
        root: &str,
        supervisor_id: &str,
        slots: &[u16],
        state: Arc<Mutex<LocalState>>,
        persisted: LocalAssignments,
        publish: watch::Sender<Option<Arc<AssignmentView>>>,
        bad: BadPayloads,
    ) -> AssignmentSync {
        let changes =
            AssignmentChanges { dir: format!("{root}/assignments"), pending: Arc::new(Mutex::new(Pending::default())) };
        AssignmentSync {
            root: root.to_owned(),
            supervisor_id: supervisor_id.to_owned(),
            slots: slots.iter().copied().collect(),
            cache: BTreeMap::new(),
            state,
            persisted: Some(persisted),
            publish,
            bad,
            reported: BTreeMap::new(),
            ensured_in: None,
            generation: 0,
            changes,
            full_in: None,
            resyncs_done: 0,
            listed_pzxid: None,
            unpublished: false,
        }
    }

    /// The handle the `/assignments` watch and the session events report changes through.
    pub(crate) fn changes(&self) -> AssignmentChanges {
        self.changes.clone()
    }

    fn dir(&self) -> String {
        format!("{}/assignments", self.root)
    }

    /// One pass (see the module docs): a full one when one is due, else the topologies the
    /// watch reported and, if `periodic` (the `sync_secs` timer), the check of the parent.
    /// Returns whether this supervisor's jobs changed (the blob pass need not follow if not).
    pub(crate) async fn sync(&mut self, client: &ZkClient, periodic: bool) -> Result<bool, SyncError> {
        let session = client.session_id();
        let (resyncs, names) = self.changes.take();
        let full = self.generation == 0 || self.full_in != Some(session) || resyncs > self.resyncs_done;
        if !full && !periodic && names.is_empty() && !self.unpublished {
            // A watch event already handled by an earlier pass: nothing to read or publish.
            return Ok(false);
        }
        let mut reads = Reads { full, ..Reads::default() };
        let result = if full {
            self.read_all(client, &mut reads).await
        } else {
            self.read_some(client, &names, periodic, &mut reads).await
        };
        if let Err(e) = result {
            self.changes.restore(names);
            return Err(e.into());
        }
        if full {
            self.full_in = Some(session);
            self.resyncs_done = resyncs;
        }
        debug!(
            full = reads.full,
            listed = reads.listed,
            stats = reads.stats,
            gets = reads.gets,
            topologies = self.cache.len(),
            "assignments read"
        );
        self.unpublished = true;
        let changed = self.publish_view().await?;
        self.unpublished = false;
        Ok(changed)
    }

    /// The full pass: list (with the parent's stat), stat every topology, get the changed ones.
    async fn read_all(&mut self, client: &ZkClient, reads: &mut Reads) -> Result<(), ZkError> {
        let dir = self.dir();
        if self.ensured_in != Some(client.session_id()) {
            client.ensure_path(&dir).await?;
            self.ensured_in = Some(client.session_id());
        }
        let (names, parent) = client.children_with_stat(&dir).await?.unzip();
        reads.listed = true;
        self.listed_pzxid = parent.map(|p| p.pzxid);
        let names = names.unwrap_or_default();
        let present: BTreeSet<String> = names.iter().cloned().collect();
        self.cache.retain(|name, _| present.contains(name));
        for name in names {
            let path = format!("{dir}/{name}");
            reads.stats += 1;
            let Some(stat) = client.stat(&path).await? else {
                self.cache.remove(&name);
                continue;
            };
            if self.cache.get(&name).is_some_and(|c| c.zxid == stat.mzxid) {
                continue;
            }
            self.read_one(client, &name, reads).await?;
        }
        Ok(())
    }

    /// Between full passes: one get per topology the watch reported; on the timer, one stat of
    /// the parent, and a list only when a topology was created or deleted since the last one.
    async fn read_some(
        &mut self,
        client: &ZkClient,
        names: &BTreeSet<String>,
        periodic: bool,
        reads: &mut Reads,
    ) -> Result<(), ZkError> {
        for name in names {
            self.read_one(client, name, reads).await?;
        }
        if !periodic {
            return Ok(());
        }
        let dir = self.dir();
        reads.stats += 1;
        let pzxid = client.stat(&dir).await?.map(|s| s.pzxid);
        if pzxid.is_some() && pzxid == self.listed_pzxid {
            return Ok(());
        }
        // Creates or deletes since the last list. The watch has normally read them already;
        // this catches any it did not deliver.
        let (listed, parent) = client.children_with_stat(&dir).await?.unzip();
        reads.listed = true;
        self.listed_pzxid = parent.map(|p| p.pzxid);
        let listed: BTreeSet<String> = listed.unwrap_or_default().into_iter().collect();
        self.cache.retain(|name, _| listed.contains(name));
        for name in listed.iter().filter(|n| !self.cache.contains_key(*n)).cloned().collect::<Vec<_>>() {
            self.read_one(client, &name, reads).await?;
        }
        Ok(())
    }

    /// Gets `<root>/assignments/<name>` and caches what it holds (gone: forgotten).
    async fn read_one(&mut self, client: &ZkClient, name: &str, reads: &mut Reads) -> Result<(), ZkError> {
        let path = format!("{}/{name}", self.dir());
        reads.gets += 1;
        match client.get(&path).await? {
            Some((data, stat)) => self.store(name, &path, &data, &stat),
            None => {
                self.cache.remove(name);
            }
        }
        Ok(())
    }

    /// Decodes and validates a payload just read; a broken one keeps the last good version.
    fn store(&mut self, name: &str, path: &str, data: &[u8], stat: &NodeStat) {
        if self.cache.get(name).is_some_and(|c| c.zxid == stat.mzxid) {
            return; // a repeated event: this version is the one cached
        }
        let previous = self.cache.get(name).and_then(|c| c.good.clone());
        let entry = match Assignment::decode(path, data).and_then(|a| a.validate().map(|()| a)) {
            Ok(assignment) => {
                if previous.is_some() {
                    info!(topology = %name, zxid = stat.mzxid, "assignment changed");
                }
                Cached { zxid: stat.mzxid, good: Some(Arc::new(assignment)), problem: None, placed: Vec::new() }
            }
            Err(e) => {
                warn!(topology = %name, error = %e, kept_previous = previous.is_some(),
                    "ignoring an invalid assignment; its workers are left as they are");
                let placed = placements_of_invalid(data)
                    .into_iter()
                    .filter(|w| w.supervisor_id == self.supervisor_id && self.slots.contains(&w.port))
                    .map(|w| w.port)
                    .collect();
                Cached { zxid: stat.mzxid, good: previous, problem: Some(e.to_string()), placed }
            }
        };
        self.cache.insert(name.to_owned(), entry);
    }

    /// Reports problems, persists and publishes the jobs of the cached topologies. Returns
    /// whether the jobs differ from the last published ones.
    async fn publish_view(&mut self) -> Result<bool, SyncError> {
        let dir = self.dir();
        let bad = self.cache.iter().filter_map(|(name, c)| Some((format!("{dir}/{name}"), c.problem.clone()?)));
        self.bad.replace(PayloadKind::Assignment, bad);
        let view = self.view();
        for (topology, problem) in &view.problems {
            if self.reported.get(topology) != Some(problem) {
                warn!(topology = %topology, problem = %problem, "assignment problem");
            }
        }
        for topology in self.reported.keys().filter(|t| !view.problems.contains_key(*t)) {
            info!(topology = %topology, "assignment problem resolved");
        }
        self.reported = view.problems.clone();
        if self.persisted.as_ref() != Some(&view.jobs) {
            let jobs = view.jobs.clone();
            let state = self.state.clone();
            tokio::task::spawn_blocking(move || state.lock().unwrap().put::<LocalAssignmentsKey>(&jobs).map(drop))
                .await
                .map_err(|e| SyncError::Persist(e.to_string()))?
                .map_err(|e| SyncError::Persist(e.to_string()))?;
            self.persisted = Some(view.jobs.clone());
        }
        let changed = self.publish.borrow().as_ref().is_none_or(|published| published.jobs != view.jobs);
        self.generation += 1;
        let view = Arc::new(AssignmentView { generation: self.generation, ..view });
        self.publish.send_replace(Some(view));
        Ok(changed)
    }

    /// The per-port jobs of this supervisor from the cached topologies.
    ///
    /// - A topology whose payload is broken and that has no good version in this process (the
    ///   agent restarted since) keeps the jobs persisted for it: its adopted workers stay.
    /// - Two topologies on one port: the one that held the port before keeps it (a healthy
    ///   worker is not stopped for a newcomer); between newcomers, the smaller id.
    fn view(&self) -> AssignmentView {
        let mut view = AssignmentView::default();
        let previous = self.persisted.as_ref();
        let mut candidates: Vec<(bool, String, u16, PortJob)> = Vec::new();
        for (name, cached) in &self.cache {
            if let Some(problem) = &cached.problem {
                view.problems.insert(name.clone(), problem.clone());
            }
            let Some(assignment) = &cached.good else {
                for (port, job) in previous.into_iter().flatten().filter(|(_, j)| &j.topology_id == name) {
                    candidates.push((true, name.clone(), *port, job.clone()));
                }
                continue;
            };
            for placement in assignment.workers.iter().filter(|w| w.supervisor_id == self.supervisor_id) {
                let port = placement.port;
                if !self.slots.contains(&port) {
                    view.problems.insert(
                        name.clone(),
                        format!("placed on port {port}, which is not one of this supervisor's slots"),
                    );
                    continue;
                }
                let incumbent = previous.and_then(|p| p.get(&port)).is_some_and(|j| &j.topology_id == name);
                let job = PortJob {
                    topology_id: assignment.topology_id.clone(),
                    zxid: cached.zxid,
                    launch: assignment.launch.clone(),
                    blobs: assignment.blobs.clone(),
                };
                candidates.push((incumbent, name.clone(), port, job));
            }
        }
        // Incumbents first, then by topology id.
        candidates.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        for (_, name, port, job) in candidates {
            if let Some(other) = view.jobs.get(&port) {
                view.problems
                    .insert(name, format!("port {port} is already assigned to topology {}", other.topology_id));
                continue;
            }
            view.jobs.insert(port, job);
        }
        view.unrunnable = self.unrunnable(&view.jobs);
        view
    }

    /// The slots whose assignment cannot run, and why (SPEC §3.1 `error`): a port that runs
    /// the last good version of a topology whose payload turned bad, and a port that only
    /// broken payloads place a worker on (the smallest topology id's reason).
    fn unrunnable(&self, jobs: &LocalAssignments) -> BTreeMap<u16, Unrunnable> {
        let since = |name: &str| self.bad.since_ms(&format!("{}/{name}", self.dir())).unwrap_or_else(unix_ms);
        let mut out = BTreeMap::new();
        for (port, job) in jobs {
            if let Some(problem) = self.cache.get(&job.topology_id).and_then(|c| c.problem.as_ref()) {
                let error = format!("new assignment not used, the previous one stays: {problem}");
                let since_ms = since(&job.topology_id);
                out.insert(*port, Unrunnable { topology_id: job.topology_id.clone(), error, since_ms });
            }
        }
        for (name, cached) in &self.cache {
            let Some(problem) = &cached.problem else { continue };
            for port in cached.placed.iter().filter(|p| !jobs.contains_key(p)) {
                out.entry(*port).or_insert_with(|| Unrunnable {
                    topology_id: name.clone(),
                    error: problem.clone(),
                    since_ms: since(name),
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes() -> AssignmentChanges {
        AssignmentChanges { dir: "/g/assignments".into(), pending: Arc::default() }
    }

    #[test]
    fn a_watch_event_names_one_topology_and_anything_else_asks_for_a_full_pass() {
        let c = changes();
        c.note(Some("/g/assignments/wc"));
        c.note(Some("/g/assignments/wc")); // repeated: still one read
        c.note(Some("/g/assignments/other"));
        c.note(Some("/g/assignments/wc/child")); // below a topology: not an assignment
        assert_eq!(c.take(), (0, ["other".to_owned(), "wc".to_owned()].into()));
        assert_eq!(c.take(), (0, BTreeSet::new()), "taken once");

        c.note(None); // a session event or a new watch
        c.note(Some("/g/assignments")); // the directory itself
        c.note(Some("/g/assignmentsx/wc"));
        assert_eq!(c.take(), (3, BTreeSet::new()));
        c.resync();
        assert_eq!(c.take().0, 4, "a counter: a request during a full pass is not lost");
    }

    #[test]
    fn the_names_of_a_failed_pass_are_read_by_the_next() {
        let c = changes();
        c.note(Some("/g/assignments/a"));
        let (_, taken) = c.take();
        c.note(Some("/g/assignments/b"));
        c.restore(taken);
        assert_eq!(c.take().1, ["a".to_owned(), "b".to_owned()].into());
    }
}
