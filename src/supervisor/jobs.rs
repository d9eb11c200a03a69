//! The jobs of the two event queues and their handlers.
//!
//! `sync-supervisor` runs everything that reads the cluster's intent from ZooKeeper. In this
//! version that is the registration safety net ([`SupervisorJob::Sync`] asks the membership
//! task to re-read and repair our node); assignment, blob and action sync join it as more
//! variants. `sync-processes` watches what runs on this host; in this version that is the
//! integrity of the local directory the agent depends on (its lock and state store).

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use crate::cluster::membership::{Command, ZkStatus};
use crate::event::{Job, JobError, JobHandler};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SupervisorJob {
    /// Full sync of what this agent reads from and shows in ZooKeeper.
    Sync,
}

impl Job for SupervisorJob {
    fn name(&self) -> &'static str {
        match self {
            SupervisorJob::Sync => "sync-supervisor",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProcessJob {
    /// Check what runs on this host against what should.
    Monitor,
}

impl Job for ProcessJob {
    fn name(&self) -> &'static str {
        match self {
            ProcessJob::Monitor => "sync-processes",
        }
    }
}

/// Runs `sync-supervisor` jobs.
#[derive(Debug)]
pub struct SupervisorSync {
    pub membership: mpsc::Sender<Command>,
    /// To fail at once, not after `timeout`, while there is no session.
    pub zk_status: watch::Receiver<ZkStatus>,
    /// Counts completed syncs; the daemon waits for the first before it reports `running`.
    pub completed: watch::Sender<u64>,
    /// How long one sync may wait for the ZooKeeper session.
    pub timeout: Duration,
}

impl JobHandler<SupervisorJob> for SupervisorSync {
    async fn run(&mut self, job: SupervisorJob) -> Result<(), JobError> {
        match job {
            SupervisorJob::Sync => {
                {
                    let zk = self.zk_status.borrow();
                    if !zk.registered || zk.state != "connected" {
                        // A full sync is requested again once the session is back.
                        return Err(format!("no usable zookeeper session (state {})", zk.state).into());
                    }
                }
                let (tx, rx) = oneshot::channel();
                let ask = async {
                    self.membership.send(Command::Verify(tx)).await.map_err(|_| "membership task has stopped")?;
                    rx.await.map_err(|_| "membership task dropped the request")?.map_err(JobError::from)
                };
                tokio::time::timeout(self.timeout, ask)
                    .await
                    .map_err(|_| format!("no zookeeper session within {}s", self.timeout.as_secs()))??;
                self.completed.send_modify(|n| *n += 1);
                Ok(())
            }
        }
    }
}

/// Runs `sync-processes` jobs.
#[derive(Debug)]
pub struct ProcessSync {
    /// `<local_dir>/lock` and the inode we hold the flock on: if the file at that path is
    /// another inode (the dir was removed or replaced under us), a second agent could start.
    pub lock_path: PathBuf,
    pub lock_inode: u64,
    pub state_dir: PathBuf,
}

impl JobHandler<ProcessJob> for ProcessSync {
    async fn run(&mut self, job: ProcessJob) -> Result<(), JobError> {
        match job {
            ProcessJob::Monitor => {
                let lock = tokio::fs::metadata(&self.lock_path)
                    .await
                    .map_err(|e| format!("local dir lock {} is gone: {e}", self.lock_path.display()))?;
                if lock.ino() != self.lock_inode {
                    return Err(format!(
                        "local dir lock {} was replaced under the running agent; another agent could start on this dir",
                        self.lock_path.display()
                    )
                    .into());
                }
                tokio::fs::metadata(&self.state_dir)
                    .await
                    .map_err(|e| format!("state dir {} is gone: {e}", self.state_dir.display()))?;
                Ok(())
            }
        }
    }
}
