//! ZooKeeper Actions (SPEC §3.4): operations a scheduler or an operator elsewhere asks of this
//! agent by creating a node under `<root>/actions/<supervisor-id>/`. The payload and its
//! decoding are [`crate::model::action`]; this is the job that applies them.
//!
//! Runs on the `sync-supervisor` queue, when the persistent watch on that directory fires and
//! on every full sync. Each node is read, applied through the same path as the control socket
//! (the executor answers), then deleted. An invalid or unknown action is reported (log,
//! metric) and deleted. Applied-then-deleted: if the delete fails, the node is remembered
//! in memory so the same node is never applied twice by this process. (A crash between
//! applying and deleting applies it again after the restart: at-least-once across crashes.)

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::admin::control::{Reply, Request, submit};
use crate::cluster::zk::{ZkClient, ZkError};
use crate::metrics::metrics;
use crate::model::action::operation;

#[derive(Debug)]
pub(crate) struct ActionSync {
    dir: String,
    ops: mpsc::UnboundedSender<Request>,
    /// Nodes applied whose delete failed, by (path, mzxid): never applied twice.
    applied: BTreeSet<(String, i64)>,
}

impl ActionSync {
    pub(crate) fn new(root: &str, supervisor_id: &str, ops: mpsc::UnboundedSender<Request>) -> ActionSync {
        ActionSync { dir: action_dir(root, supervisor_id), ops, applied: BTreeSet::new() }
    }

    /// Applies and deletes every pending action, oldest (by name: sequential nodes sort) first.
    pub(crate) async fn sync(&mut self, client: &ZkClient) -> Result<(), ZkError> {
        let mut names = match client.children(&self.dir).await {
            Ok(names) => names,
            Err(e) if e.class() == crate::cluster::zk::ErrorClass::NoNode => return Ok(()),
            Err(e) => return Err(e),
        };
        names.sort();
        let present: BTreeSet<String> = names.iter().map(|n| format!("{}/{n}", self.dir)).collect();
        self.applied.retain(|(p, _)| present.contains(p));
        for name in names {
            let path = format!("{}/{name}", self.dir);
            let Some((data, stat)) = client.get(&path).await? else { continue };
            if self.applied.contains(&(path.clone(), stat.mzxid)) {
                let _ = client.delete(&path, None).await;
                continue;
            }
            let (label, result) = match operation(&path, &data) {
                Ok(op) => {
                    let label = op.name();
                    let reply = submit(&self.ops, op, Duration::from_secs(30)).await;
                    (label, reply)
                }
                Err(e) => ("invalid", Reply::err(e)),
            };
            let outcome = if result.ok { "ok" } else { "error" };
            metrics().actions.get_or_create(&vec![("action", label.to_owned()), ("result", outcome.to_owned())]).inc();
            if result.ok {
                info!(action = %path, result = %result.message, "zookeeper action applied");
            } else {
                warn!(action = %path, problem = %result.message, "zookeeper action rejected; deleting it");
            }
            self.applied.insert((path.clone(), stat.mzxid));
            match client.delete(&path, None).await {
                Ok(()) => {
                    self.applied.remove(&(path, stat.mzxid));
                }
                Err(e) if e.class() == crate::cluster::zk::ErrorClass::NoNode => {
                    self.applied.remove(&(path, stat.mzxid));
                }
                Err(e) => warn!(action = %path, error = %e, "cannot delete an applied action; will retry"),
            }
        }
        Ok(())
    }
}

pub(crate) fn action_dir(root: &str, supervisor_id: &str) -> String {
    format!("{root}/actions/{supervisor_id}")
}
