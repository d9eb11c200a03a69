//! The `sync-supervisor` queue: its jobs and their handler.
//!
//! `sync-supervisor` runs everything that reads the cluster's intent from ZooKeeper:
//! [`SupervisorJob::Sync`] (the `sync_secs` timer, every new session and reconnect: check our
//! registration, then the assignments, the blobs and the actions) and
//! [`SupervisorJob::Assignments`] (a watch saw a change under `/assignments`; followed by the
//! blob sync when this host's jobs changed), and [`SupervisorJob::Blobs`] (the `/blobstore`
//! watch, the `blob.sync_secs` timer, a download that ended). How much of `/assignments` a
//! pass reads (everything, or only what changed) is decided in `assignments.rs`. The
//! `sync-processes` queue's jobs live with their handler in `processes/mod.rs`.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::actions::ActionSync;
use super::assignments::AssignmentSync;
use super::blobs::BlobSync;
use crate::cluster::membership::Command;
use crate::cluster::zk::ZkClient;
use crate::event::{Job, JobError, JobHandler};
use crate::model::ZkStatus;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum SupervisorJob {
    /// Registration safety net, then assignments (a full pass after a new session or a
    /// reconnect, else the cheap periodic check), blobs and actions.
    Sync,
    /// Only the assignments the watch reported, then the blobs they use.
    Assignments,
    /// Only the blobs (see `blobs.rs`); also runs without a session, from what was read.
    Blobs,
    /// Pending ZooKeeper actions under `/actions/<id>` (see `actions.rs`).
    Actions,
}

impl Job for SupervisorJob {
    fn name(&self) -> &'static str {
        match self {
            SupervisorJob::Sync => "sync-supervisor",
            SupervisorJob::Assignments => "sync-assignments",
            SupervisorJob::Blobs => "sync-blobs",
            SupervisorJob::Actions => "sync-actions",
        }
    }

    /// A full sync does everything; an assignments sync is followed by the blob sync.
    fn covers(&self, other: &Self) -> bool {
        match self {
            SupervisorJob::Sync => true,
            SupervisorJob::Assignments => matches!(other, SupervisorJob::Assignments | SupervisorJob::Blobs),
            _ => self == other,
        }
    }
}

/// Runs `sync-supervisor` jobs.
#[derive(Debug)]
pub(crate) struct SupervisorSync {
    pub membership: mpsc::Sender<Command>,
    /// To fail at once, not after `timeout`, while there is no session.
    pub zk_status: watch::Receiver<ZkStatus>,
    /// The session for reading, handed out by the membership task while registered.
    pub client: watch::Receiver<Option<ZkClient>>,
    pub assignments: AssignmentSync,
    pub blobs: BlobSync,
    pub actions: ActionSync,
    /// Counts completed full syncs; the daemon waits for the first before it reports `running`.
    pub completed: watch::Sender<u64>,
    /// How long the registration check may wait for the membership task.
    pub timeout: Duration,
}

impl SupervisorSync {
    fn usable_session(&self) -> Result<ZkClient, JobError> {
        let zk = self.zk_status.borrow();
        let client = self.client.borrow().clone();
        match client {
            Some(client) if zk.usable() => Ok(client),
            // A full sync is requested again once the session is back.
            _ => Err(format!("no usable zookeeper session (state {})", zk.state).into()),
        }
    }

    async fn verify_registration(&mut self) -> Result<(), JobError> {
        let (tx, rx) = oneshot::channel();
        let ask = async {
            self.membership.send(Command::Verify(tx)).await.map_err(|_| "membership task has stopped")?;
            rx.await.map_err(|_| "membership task dropped the request")?.map_err(JobError::from)
        };
        tokio::time::timeout(self.timeout, ask)
            .await
            .map_err(|_| format!("no answer from the membership task within {}s", self.timeout.as_secs()))?
    }
}

impl JobHandler<SupervisorJob> for SupervisorSync {
    async fn run(&mut self, job: SupervisorJob) -> Result<(), JobError> {
        if job == SupervisorJob::Blobs {
            // Finished downloads are installed and published with or without a session.
            let client = self.usable_session().ok();
            return Ok(self.blobs.sync(client.as_ref()).await?);
        }
        // The client clone lives for this job only (the session closes when all are dropped).
        let client = self.usable_session()?;
        if job == SupervisorJob::Actions {
            return Ok(self.actions.sync(&client).await?);
        }
        if job == SupervisorJob::Sync {
            self.verify_registration().await?;
        }
        let jobs_changed = self.assignments.sync(&client, job == SupervisorJob::Sync).await?;
        // The blobs to read are those of this host's jobs: a watch event about another host's
        // topology needs no blob read (the `/blobstore` watch and both timers cover the rest).
        // A blob problem must not hold back the readiness that assignments give.
        let blobs =
            if job == SupervisorJob::Sync || jobs_changed { self.blobs.sync(Some(&client)).await } else { Ok(()) };
        if job == SupervisorJob::Sync {
            self.completed.send_modify(|n| *n += 1);
            // The watch may have missed actions across a reconnect.
            self.actions.sync(&client).await?;
        }
        Ok(blobs?)
    }
}
