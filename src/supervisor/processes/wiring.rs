//! What the executor is built from: the host state it keeps, the channels it reads and the
//! channels it publishes on (see [`super::Processes::new`]).

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::blob::BlobView;
use crate::blob::SharedCache;
use crate::local_state::LocalState;
use crate::model::{NodeReport, ZkStatus};
use crate::supervisor::assignments::AssignmentView;

use super::LocalDirCheck;

/// What the executor keeps on this host.
#[derive(Debug)]
pub(crate) struct ProcessLocal {
    pub state: Arc<Mutex<LocalState>>,
    pub cache: SharedCache,
    pub dir_check: LocalDirCheck,
    /// `drained` as persisted by the previous run.
    pub drained: bool,
}

/// The channels the executor reads.
#[derive(Debug)]
pub(crate) struct ProcessInputs {
    /// The assignments of this host, as the last sync read them.
    pub desired: watch::Receiver<Option<Arc<AssignmentView>>>,
    pub zk_status: watch::Receiver<ZkStatus>,
    /// Where the blobs are (blob sync).
    pub blob_view: watch::Receiver<Arc<BlobView>>,
    /// Operator operations (control socket, ZooKeeper actions).
    pub requests: mpsc::UnboundedReceiver<crate::admin::control::Request>,
    pub health: watch::Receiver<crate::health::HealthReport>,
    /// Reloaded config: `[worker]`, `[restart]` and the session-loss policy apply live.
    pub config: watch::Receiver<Arc<crate::config::Config>>,
}

/// The channels the executor publishes on.
#[derive(Debug)]
pub(crate) struct ProcessOutputs {
    /// Its workers, for SupervisorInfo.
    pub report: Arc<watch::Sender<NodeReport>>,
    /// The earliest slot deadline ([`deadline_timer`] requests a job then).
    pub deadline: watch::Sender<Option<Instant>>,
    /// Heartbeat-file hints (inotify), by worker id.
    pub hints: mpsc::Sender<String>,
    /// Every slot, for `gale status`.
    pub slots: watch::Sender<Vec<crate::admin::SlotStatus>>,
    pub drained: watch::Sender<bool>,
}

/// [`ProcessInputs`] once the blob view went to the links.
#[derive(Debug)]
pub(super) struct Inputs {
    pub(super) desired: watch::Receiver<Option<Arc<AssignmentView>>>,
    pub(super) zk_status: watch::Receiver<ZkStatus>,
    pub(super) requests: mpsc::UnboundedReceiver<crate::admin::control::Request>,
    pub(super) health: watch::Receiver<crate::health::HealthReport>,
    pub(super) config: watch::Receiver<Arc<crate::config::Config>>,
}
