//! The ZooKeeper session as the rest of the agent sees it: what the membership task publishes
//! for the status document, `/ready` and the metrics. Plain data, so that its readers (admin,
//! the executor) need nothing of the ZooKeeper module.

/// The ZooKeeper side as others see it (status, readiness, metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZkStatus {
    /// `connecting` until a session exists, then the session state.
    pub state: &'static str,
    pub session_id: Option<String>,
    pub registered: bool,
    /// Registrations done by this process (1 + re-registrations).
    pub registrations: u64,
    pub sessions: u64,
}
