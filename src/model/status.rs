//! The ZooKeeper session as the rest of the agent sees it: what the membership task publishes
//! for the status document, `/ready` and the metrics. Plain data, so that its readers (admin,
//! the executor) need nothing of the ZooKeeper module.

/// The ZooKeeper side as others see it (status, readiness, metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ZkStatus {
    /// `connecting` until a session exists, then the session state.
    pub state: &'static str,
    pub session_id: Option<String>,
    pub registered: bool,
    /// Registrations done by this process (1 + re-registrations).
    pub registrations: u64,
    pub sessions: u64,
}

impl ZkStatus {
    /// The one rule for "the agent has a ZooKeeper session it may act on": connected and
    /// registered. Syncs run only then, `/ready` needs it, `stop_workers` counts from its
    /// loss, and systemd's `STATUS=` says `zk connected` only then.
    pub(crate) fn usable(&self) -> bool {
        self.registered && self.state == "connected"
    }
}

#[cfg(test)]
mod tests {
    use super::ZkStatus;

    #[test]
    fn usable_needs_both_a_connection_and_the_registration() {
        let status =
            |state, registered| ZkStatus { state, session_id: None, registered, registrations: 0, sessions: 0 };
        assert!(status("connected", true).usable());
        assert!(!status("connected", false).usable(), "connected but not (yet) registered");
        assert!(!status("disconnected", true).usable(), "registered in a session that is not connected now");
        assert!(!status("connecting", false).usable());
    }
}
