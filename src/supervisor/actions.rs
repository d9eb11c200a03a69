//! ZooKeeper Actions (SPEC §3.4): operations a scheduler or an operator elsewhere asks of this
//! agent by creating a node under `<root>/actions/<supervisor-id>/`. The payload and its
//! decoding are [`crate::model::action`]; this is the job that applies them.
//!
//! Runs on the `sync-supervisor` queue, when the persistent watch on that directory fires and
//! on every full sync. Each node is read, applied through the same path as the control socket
//! (the executor answers), then deleted. A well-formed action that cannot be done (unknown
//! action, missing field) is reported (log, metric) and deleted (§3.4). A payload that does
//! not parse or has an unknown schema is not an action this agent understands: it is left in
//! place and reported (log once, `/status` and `gale_bad_payloads` through [`BadPayloads`])
//! until it is fixed (then applied) or deleted (§3). Applied-then-deleted: if the delete
//! fails, the node is remembered in memory so the same node is never applied twice by this
//! process. (A crash between applying and deleting applies it again after the restart:
//! at-least-once across crashes.)

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::bad_payloads::{BadPayloads, Finding};
use crate::admin::PayloadKind;
use crate::admin::control::{Reply, Request, submit};
use crate::cluster::zk::{ErrorClass, ZkClient, ZkError};
use crate::metrics::metrics;
use crate::model::action::{ActionError, operation};

#[derive(Debug)]
pub(crate) struct ActionSync {
    dir: String,
    ops: mpsc::UnboundedSender<Request>,
    /// Nodes applied whose delete failed, by (path, mzxid): never applied twice.
    applied: BTreeSet<(String, i64)>,
    /// Where the nodes left in place are reported (this sync owns the `action` kind).
    bad: BadPayloads,
}

impl ActionSync {
    pub(crate) fn new(
        root: &str,
        supervisor_id: &str,
        ops: mpsc::UnboundedSender<Request>,
        bad: BadPayloads,
    ) -> ActionSync {
        ActionSync { dir: action_dir(root, supervisor_id), ops, applied: BTreeSet::new(), bad }
    }

    /// Applies and deletes every pending action, oldest (by name: sequential nodes sort) first.
    pub(crate) async fn sync(&mut self, client: &ZkClient) -> Result<(), ZkError> {
        let names = match client.children(&self.dir).await {
            Ok(names) => names,
            Err(e) if e.class() == ErrorClass::NoNode => Vec::new(),
            Err(e) => return Err(e),
        };
        // Sorted: sequential nodes are applied in the order they were made.
        let present: BTreeSet<String> = names.iter().map(|n| format!("{}/{n}", self.dir)).collect();
        self.applied.retain(|(p, _)| present.contains(p));
        let mut bad = Vec::new();
        for path in present {
            bad.extend(self.apply(client, path).await?);
        }
        self.bad.replace(PayloadKind::Action, bad);
        Ok(())
    }

    /// Applies the action at `path` and deletes it; a bad payload is left and returned.
    async fn apply(&mut self, client: &ZkClient, path: String) -> Result<Option<Finding>, ZkError> {
        let Some((data, stat)) = client.get(&path).await? else { return Ok(None) };
        if self.applied.contains(&(path.clone(), stat.mzxid)) {
            let _ = client.delete(&path, None).await;
            return Ok(None);
        }
        let (label, result) = match operation(&path, &data) {
            Ok(op) => {
                let label = op.name();
                let reply = submit(&self.ops, op, Duration::from_secs(30)).await;
                (label, reply)
            }
            Err(ActionError::Payload(e)) => {
                let reason = e.to_string();
                if !self.bad.is_reported(&path, &reason) {
                    warn!(action = %path, problem = %reason,
                        "ignoring an action this agent cannot read; it stays until it is fixed or deleted");
                }
                return Ok(Some((path, reason)));
            }
            Err(e @ ActionError::Invalid(_)) => ("invalid", Reply::err(e.to_string())),
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
            Err(e) if e.class() == ErrorClass::NoNode => {
                self.applied.remove(&(path, stat.mzxid));
            }
            Err(e) => warn!(action = %path, error = %e, "cannot delete an applied action; will retry"),
        }
        Ok(None)
    }
}

pub(crate) fn action_dir(root: &str, supervisor_id: &str) -> String {
    format!("{root}/actions/{supervisor_id}")
}
