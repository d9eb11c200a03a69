//! Assignment sync: what ZooKeeper says this host's ports should run.
//!
//! Runs as a job of the `sync-supervisor` queue, triggered by a persistent recursive watch on
//! `<root>/assignments` (see [`watch_dir`]), by every new session or reconnect (a
//! watch may miss events across a reconnect), and by the `sync_secs` timer as a safety net.
//!
//! One pass: list the topologies; stat each; re-read (get + decode + validate) only those
//! whose node changed since the last pass; keep, per topology, the last version that was
//! valid. A topology whose new payload is broken is reported (log, status) and keeps its last
//! good version, so its running workers are left as they are; other topologies are not
//! affected. Then the placements for this supervisor become the per-port jobs, which are
//! persisted (`local-assignments`) and published to the process side.
//!
//! Invariant: nothing is published before the first successful pass, so a start with
//! ZooKeeper unreachable never reads as "nothing assigned" and never stops a worker.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tracing::{info, warn};

use super::records::{LocalAssignments, PortJob};
use crate::cluster::assignment::Assignment;
use crate::cluster::zk::{ZkClient, ZkError};
use crate::local_state::{LocalAssignmentsKey, LocalState};

/// The result of a successful pass, as the process side sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AssignmentView {
    /// Counts successful syncs of this process: a view is "newer than" a moment when its
    /// generation is (the stop_workers policy waits for a view read after the session is back).
    pub generation: u64,
    /// port -> job, only ports in `supervisor.slots`.
    pub jobs: LocalAssignments,
    /// Problems to report: topology id (or node name) -> what is wrong.
    pub problems: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("no zookeeper session")]
    NoSession,
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
}

/// State of the assignment sync; owned by the `sync-supervisor` handler.
#[derive(Debug)]
pub struct AssignmentSync {
    root: String,
    supervisor_id: String,
    slots: BTreeSet<u16>,
    cache: BTreeMap<String, Cached>,
    state: Arc<Mutex<LocalState>>,
    persisted: Option<LocalAssignments>,
    publish: watch::Sender<Option<Arc<AssignmentView>>>,
    /// Problems already logged, so each is logged once (again when it changes).
    reported: BTreeMap<String, String>,
    /// Successful syncs so far (see [`AssignmentView::generation`]).
    generation: u64,
    /// The session in which `<root>/assignments` was last made sure to exist (once per
    /// session is enough; every sync would be two needless reads).
    ensured_in: Option<i64>,
}

impl AssignmentSync {
    /// `persisted`: the `local-assignments` of the previous run, the fallback for topologies
    /// whose payload is broken when this process first reads them.
    pub fn new(
        root: &str,
        supervisor_id: &str,
        slots: &[u16],
        state: Arc<Mutex<LocalState>>,
        persisted: LocalAssignments,
        publish: watch::Sender<Option<Arc<AssignmentView>>>,
    ) -> AssignmentSync {
        AssignmentSync {
            root: root.to_owned(),
            supervisor_id: supervisor_id.to_owned(),
            slots: slots.iter().copied().collect(),
            cache: BTreeMap::new(),
            state,
            persisted: Some(persisted),
            publish,
            reported: BTreeMap::new(),
            ensured_in: None,
            generation: 0,
        }
    }

    fn dir(&self) -> String {
        format!("{}/assignments", self.root)
    }

    /// One full pass (see the module docs).
    pub async fn sync(&mut self, client: &ZkClient) -> Result<(), SyncError> {
        let dir = self.dir();
        if self.ensured_in != Some(client.session_id()) {
            client.ensure_path(&dir).await?;
            self.ensured_in = Some(client.session_id());
        }
        let names = client.children(&dir).await?;
        let present: BTreeSet<String> = names.iter().cloned().collect();
        self.cache.retain(|name, _| present.contains(name));
        for name in names {
            let path = format!("{dir}/{name}");
            let Some(stat) = client.stat(&path).await? else {
                self.cache.remove(&name);
                continue;
            };
            if self.cache.get(&name).is_some_and(|c| c.zxid == stat.mzxid) {
                continue;
            }
            let Some((data, stat)) = client.get(&path).await? else {
                self.cache.remove(&name);
                continue;
            };
            let previous = self.cache.get(&name).and_then(|c| c.good.clone());
            let entry = match Assignment::decode(&path, &data).and_then(|a| a.validate().map(|()| a)) {
                Ok(assignment) => {
                    if previous.is_some() {
                        info!(topology = %name, zxid = stat.mzxid, "assignment changed");
                    }
                    Cached { zxid: stat.mzxid, good: Some(Arc::new(assignment)), problem: None }
                }
                Err(e) => {
                    warn!(topology = %name, error = %e, kept_previous = previous.is_some(),
                        "ignoring an invalid assignment; its workers are left as they are");
                    Cached { zxid: stat.mzxid, good: previous, problem: Some(e.to_string()) }
                }
            };
            self.cache.insert(name, entry);
        }
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
        self.generation += 1;
        let view = Arc::new(AssignmentView { generation: self.generation, ..view });
        self.publish.send_replace(Some(view));
        Ok(())
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
        view
    }
}

/// Keeps a persistent recursive watch on `dir` (`<root>/assignments`, `<root>/blobstore`) for
/// every session and calls `on_change` on each change, and once per new watch (events may have
/// been missed in between). Ends when `stop` turns true.
pub async fn watch_dir(
    dir: String,
    mut client: watch::Receiver<Option<ZkClient>>,
    mut stop: watch::Receiver<bool>,
    on_change: impl Fn() + Send + 'static,
) {
    loop {
        // Wait for a session; hold the client only while setting the watch up.
        let setup = async {
            let current = client.wait_for(Option::is_some).await.ok()?.clone()?;
            current.ensure_path(&dir).await.ok()?;
            current.watch_tree(&dir).await.ok()
        };
        let mut watch = tokio::select! {
            w = setup => w,
            _ = stop.wait_for(|s| *s) => return,
        };
        let Some(tree) = watch.as_mut() else {
            // Setting the watch failed (connection loss); the periodic sync covers the gap.
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                _ = stop.wait_for(|s| *s) => return,
            }
        };
        on_change();
        loop {
            tokio::select! {
                event = tree.changed() => match event {
                    Some(_) => on_change(),
                    None => break, // session over; wait for the next one
                },
                _ = stop.wait_for(|s| *s) => return,
            }
        }
        // Do not spin on the ended session's client: wait until it is replaced or cleared.
        let _ = client.changed().await;
    }
}
