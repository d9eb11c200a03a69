//! The membership task: owns the ZooKeeper session, registers the agent, heartbeats.
//!
//! ```text
//!            +--------------------------(session expired / closed)-------------------+
//!            v                                                                        |
//! connecting --(session)--> record session id --> registering --(node created)--> registered
//!     ^  (backoff+jitter)       (LocalState)          |  ^                             |  |
//!     |                                               |  +--(node deleted under us)----+  |
//!     |                                  (live foreign owner)                             |
//!     |                                               v                                   |
//!     |                                   IdentityConflict: exit 4        (stop) --> close session
//! ```
//!
//! Registration (SPEC §3.1): create the EPHEMERAL `<root>/supervisors/<id>`. If it exists:
//! owned by a session this agent had (the ids are kept in LocalState), delete it and create
//! ours; owned by any other live session, another process uses this id: refuse (exit 4).
//!
//! Architecture Invariant: the new session's id is written to LocalState BEFORE the node is
//! created under it, so a crash at any point leaves a node whose owner the next start
//! recognises as its own.
//!
//! Heartbeat: a timer every `heartbeat_secs` (and every change of the published report)
//! rebuilds SupervisorInfo; it is written when anything but `time_ms` changed, and otherwise
//! every `heartbeat_refresh_secs`. Connection loss inside the session changes nothing visible:
//! the node stays, writes that failed are retried at the next tick.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::model::{self, Health, SupervisorInfo, WorkerInfo};
use super::zk::{self, ConnectOptions, ErrorClass, NodeEvent, SessionState, ZkClient, ZkError};
use crate::config::Capacity;
use crate::lifecycle::Lifecycle;

/// What this agent is; fixed for the life of the process.
#[derive(Debug, Clone)]
pub struct Identity {
    pub id: String,
    pub hostname: String,
    pub slots: Vec<u16>,
    pub capacity: Capacity,
    pub labels: BTreeMap<String, String>,
    pub started_at_ms: u64,
}

/// What the rest of the agent publishes for SupervisorInfo; changes trigger a rewrite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeReport {
    pub lifecycle: Lifecycle,
    pub health: Health,
    pub workers: Vec<WorkerInfo>,
}

#[derive(Debug, Clone)]
pub struct MembershipConfig {
    pub connect: ConnectOptions,
    /// ZooKeeper root, e.g. `/gale`.
    pub root: String,
    pub heartbeat: Duration,
    pub heartbeat_refresh: Duration,
}

/// The ZooKeeper side as others see it (status, readiness, metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZkStatus {
    /// `connecting` until the first session, then the session state.
    pub state: &'static str,
    pub session_id: Option<String>,
    pub registered: bool,
    /// Registrations done by this process (1 + re-registrations).
    pub registrations: u64,
    pub sessions: u64,
}

/// Session happenings the supervisor reacts to (a full sync after each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEvent {
    /// Registered under a new session (first start or after expiry).
    Registered { session: i64 },
    /// The connection came back inside the same session (watches may have missed events).
    Reconnected,
}

/// Requests to the membership task.
#[derive(Debug)]
pub enum Command {
    /// Re-read our node and repair it if needed (the periodic sync's safety net).
    Verify(oneshot::Sender<Result<(), String>>),
}

/// Persists the session ids this agent has had; returns all ids known to be its own.
pub trait SessionLog: Send + Sync + 'static {
    fn record(&self, session: i64) -> Result<Vec<i64>, String>;
}

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error(
        "supervisor id {id} is already registered at {path} by another live zookeeper session ({owner}{host}); \
         another agent uses this id, likely a cloned disk or a copied local dir: give this host its own id \
         (move its local_dir state away, or set supervisor.id) and start again"
    )]
    IdentityConflict { id: String, path: String, owner: String, host: String },
    #[error("{path} exists as a persistent node; delete it (it should be an agent's ephemeral node) and start again")]
    PersistentNodeInTheWay { path: String },
    #[error("cannot record the zookeeper session id in the local state: {0}")]
    SessionLog(String),
}

/// A one-shot watch on our node, as a future (polled at most until it completes once).
type WatchFuture = std::pin::Pin<Box<dyn std::future::Future<Output = NodeEvent> + Send>>;

enum Wake {
    Stop,
    State(SessionState),
    Watch(NodeEvent),
    Tick,
    Command(Command),
}

enum SessionEnd {
    Stop,
    Lost,
}

enum RegisterError {
    Fatal(MembershipError),
    Zk(ZkError),
}

impl From<ZkError> for RegisterError {
    fn from(e: ZkError) -> Self {
        RegisterError::Zk(e)
    }
}

/// The membership task's state. Run with [`Membership::run`].
pub struct Membership {
    config: MembershipConfig,
    identity: Identity,
    session_log: Arc<dyn SessionLog>,
    report: watch::Receiver<NodeReport>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::UnboundedSender<SessionEvent>,
    status: watch::Sender<ZkStatus>,
    stop: watch::Receiver<bool>,
    own_sessions: Vec<i64>,
    /// Last payload written and when; `None` forces the next write.
    last_written: Option<(SupervisorInfo, Instant)>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership").field("id", &self.identity.id).finish_non_exhaustive()
    }
}

/// Handles the supervisor keeps.
#[derive(Debug)]
pub struct MembershipHandles {
    pub commands: mpsc::Sender<Command>,
    pub events: mpsc::UnboundedReceiver<SessionEvent>,
    pub status: watch::Receiver<ZkStatus>,
}

impl Membership {
    pub fn new(
        config: MembershipConfig,
        identity: Identity,
        session_log: Arc<dyn SessionLog>,
        report: watch::Receiver<NodeReport>,
        stop: watch::Receiver<bool>,
    ) -> (Membership, MembershipHandles) {
        let (cmd_tx, cmd_rx) = mpsc::channel(16);
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let (st_tx, st_rx) = watch::channel(ZkStatus {
            state: "connecting",
            session_id: None,
            registered: false,
            registrations: 0,
            sessions: 0,
        });
        let membership = Membership {
            config,
            identity,
            session_log,
            report,
            commands: cmd_rx,
            events: ev_tx,
            status: st_tx,
            stop,
            own_sessions: Vec::new(),
            last_written: None,
        };
        (membership, MembershipHandles { commands: cmd_tx, events: ev_rx, status: st_rx })
    }

    fn node_path(&self) -> String {
        format!("{}/supervisors/{}", self.config.root, self.identity.id)
    }

    /// Runs until `stop` turns true (Ok, session closed) or a fatal identity problem.
    pub async fn run(mut self) -> Result<(), MembershipError> {
        let mut record_backoff = zk::Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        loop {
            self.status.send_modify(|s| {
                s.state = "connecting";
                s.registered = false;
            });
            let Some(client) = zk::connect(&self.config.connect, &mut self.stop).await else {
                return Ok(());
            };
            let session = client.session_id();
            self.status.send_modify(|s| {
                s.state = client.state().as_str();
                s.session_id = Some(client.session_hex());
                s.sessions += 1;
            });
            // Invariant: recorded before any node exists under this session. If it cannot be
            // recorded (disk full, read-only fs) we do not register at all: a node we could not
            // later recognise as ours would make our own next start exit 4. Retry instead.
            let log = self.session_log.clone();
            let recorded = tokio::task::spawn_blocking(move || log.record(session))
                .await
                .unwrap_or_else(|e| Err(format!("session log task failed: {e}")));
            let known = match recorded {
                Ok(known) => known,
                Err(e) => {
                    let delay = record_backoff.next_delay();
                    error!(error = %MembershipError::SessionLog(e), retry_in_ms = delay.as_millis() as u64,
                        "not registering until the session id can be recorded");
                    client.close(Duration::from_secs(2)).await;
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => continue,
                        _ = self.stop.wait_for(|s| *s) => return Ok(()),
                    }
                }
            };
            record_backoff = zk::Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
            for s in known {
                if !self.own_sessions.contains(&s) {
                    self.own_sessions.push(s);
                }
            }
            match self.serve_session(&client).await {
                Ok(SessionEnd::Stop) => {
                    client.close(Duration::from_secs(5)).await;
                    self.status.send_modify(|s| {
                        s.state = "closed";
                        s.registered = false;
                    });
                    return Ok(());
                }
                Ok(SessionEnd::Lost) => {
                    warn!(session = %client.session_hex(), "zookeeper session lost; starting a new one");
                    drop(client);
                }
                Err(fatal) => {
                    client.close(Duration::from_secs(5)).await;
                    return Err(fatal);
                }
            }
        }
    }

    async fn serve_session(&mut self, client: &ZkClient) -> Result<SessionEnd, MembershipError> {
        let mut states = client.state_watcher();
        // Register, retrying transient errors on this session until it works or ends.
        let mut backoff = zk::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let mut watch = loop {
            match self.register(client).await {
                Ok(watch) => break watch,
                Err(RegisterError::Fatal(e)) => return Err(e),
                Err(RegisterError::Zk(e)) if e.class() == ErrorClass::SessionGone => return Ok(SessionEnd::Lost),
                Err(RegisterError::Zk(e)) => {
                    let delay = backoff.next_delay();
                    warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "registration failed");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        state = states.changed() => if state.is_terminal() { return Ok(SessionEnd::Lost) },
                        _ = self.stop.wait_for(|s| *s) => return Ok(SessionEnd::Stop),
                    }
                }
            }
        };
        let _ = self.events.send(SessionEvent::Registered { session: client.session_id() });

        let mut heartbeat = tokio::time::interval(self.config.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Wait for one thing, then act on it below, where `watch` can be borrowed freely.
            let wake = tokio::select! {
                _ = self.stop.wait_for(|s| *s) => Wake::Stop,
                state = states.changed() => Wake::State(state),
                event = async { watch.as_mut().expect("armed").await }, if watch.is_some() => Wake::Watch(event),
                _ = heartbeat.tick() => Wake::Tick,
                changed = self.report.changed() => if changed.is_ok() { Wake::Tick } else { Wake::Stop },
                Some(cmd) = self.commands.recv() => Wake::Command(cmd),
            };
            match wake {
                Wake::Stop => return Ok(SessionEnd::Stop),
                Wake::State(state) => {
                    self.status.send_modify(|s| s.state = state.as_str());
                    match state {
                        SessionState::Disconnected => warn!(
                            session = %client.session_hex(),
                            "connection to zookeeper lost; reconnecting inside the session, registration is kept"
                        ),
                        SessionState::Connected | SessionState::ConnectedReadOnly => {
                            info!(session = %client.session_hex(), "reconnected to zookeeper");
                            let _ = self.events.send(SessionEvent::Reconnected);
                            // Re-read: the node may have been deleted while we were away.
                            match self.verify(client, &mut watch).await {
                                Ok(()) => {}
                                Err(RegisterError::Fatal(e)) => return Err(e),
                                Err(RegisterError::Zk(e)) => {
                                    warn!(error = %e, "cannot verify the registration after reconnecting")
                                }
                            }
                        }
                        SessionState::Expired | SessionState::Closed | SessionState::AuthFailed => {
                            self.status.send_modify(|s| s.registered = false);
                            if state == SessionState::AuthFailed {
                                error!("zookeeper authentication failed; check zookeeper.auth credentials");
                            }
                            return Ok(SessionEnd::Lost);
                        }
                    }
                }
                Wake::Watch(event) => {
                    // A one-shot watch future is spent once it fired.
                    watch = None;
                    match event {
                        NodeEvent::Session(state) if state.is_terminal() => return Ok(SessionEnd::Lost),
                        NodeEvent::Deleted => {
                            warn!(path = %self.node_path(), "our registration was deleted; registering again");
                            if let Err(e) = self.verify(client, &mut watch).await {
                                match e {
                                    RegisterError::Fatal(e) => return Err(e),
                                    RegisterError::Zk(e) => {
                                        warn!(error = %e, "re-registration failed; retrying at the next heartbeat")
                                    }
                                }
                            }
                        }
                        _ => watch = self.arm(client).await,
                    }
                }
                Wake::Tick => {
                    let result = if watch.is_none() {
                        // The watch could not be armed: check the node the slow way.
                        self.verify(client, &mut watch).await
                    } else {
                        self.heartbeat(client, &mut watch).await
                    };
                    match result {
                        Ok(()) => {}
                        Err(RegisterError::Fatal(e)) => return Err(e),
                        Err(RegisterError::Zk(e)) => {
                            warn!(error = %e, "heartbeat write failed; retrying at the next tick")
                        }
                    }
                }
                Wake::Command(Command::Verify(reply)) => match self.verify(client, &mut watch).await {
                    Ok(()) => {
                        let _ = reply.send(Ok(()));
                    }
                    Err(RegisterError::Zk(e)) => {
                        let _ = reply.send(Err(e.to_string()));
                    }
                    Err(RegisterError::Fatal(e)) => {
                        let _ = reply.send(Err(e.to_string()));
                        return Err(e);
                    }
                },
            }
        }
    }

    fn build_info(&self) -> SupervisorInfo {
        let report = self.report.borrow();
        let mut used_slots: Vec<u16> = report.workers.iter().map(|w| w.port).collect();
        used_slots.sort_unstable();
        used_slots.dedup();
        SupervisorInfo {
            schema: model::SCHEMA,
            id: self.identity.id.clone(),
            hostname: self.identity.hostname.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            state: report.lifecycle,
            health: report.health,
            started_at_ms: self.identity.started_at_ms,
            time_ms: model::unix_ms(),
            slots: self.identity.slots.clone(),
            used_slots,
            capacity: self.identity.capacity,
            labels: self.identity.labels.clone(),
            workers: report.workers.clone(),
        }
    }

    /// Creates our ephemeral node, clearing one left by an earlier session of ours.
    async fn register(&mut self, client: &ZkClient) -> Result<Option<WatchFuture>, RegisterError> {
        let path = self.node_path();
        client.ensure_path(&format!("{}/supervisors", self.config.root)).await?;
        let ours = client.session_id();
        for _ in 0..10 {
            let info = self.build_info();
            match client.create_ephemeral(&path, &info.to_json()).await {
                Ok(_) => {
                    self.last_written = Some((info, Instant::now()));
                    self.status.send_modify(|s| {
                        s.registered = true;
                        s.registrations += 1;
                    });
                    info!(path = %path, session = %client.session_hex(), state = %self.report.borrow().lifecycle, "registered in zookeeper");
                    return Ok(self.arm(client).await);
                }
                Err(e) if e.class() == ErrorClass::NodeExists => {}
                Err(e) => return Err(e.into()),
            }
            let Some((data, stat)) = client.get(&path).await? else { continue };
            if stat.ephemeral_owner == ours {
                // A create that succeeded before a connection loss: it is ours already.
                let info = self.build_info();
                client.set(&path, &info.to_json(), None).await?;
                self.last_written = Some((info, Instant::now()));
                self.status.send_modify(|s| {
                    s.registered = true;
                    s.registrations += 1;
                });
                return Ok(self.arm(client).await);
            }
            if stat.ephemeral_owner == 0 {
                return Err(RegisterError::Fatal(MembershipError::PersistentNodeInTheWay { path }));
            }
            if self.own_sessions.contains(&stat.ephemeral_owner) {
                info!(path = %path, old_session = %format!("{:#x}", stat.ephemeral_owner),
                    "removing the registration left by this agent's previous session");
                match client.delete(&path, Some(stat.version)).await {
                    Ok(()) => continue,
                    Err(e) if matches!(e.class(), ErrorClass::NoNode | ErrorClass::BadVersion) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            let host = model::decode::<SupervisorInfo>(&path, &data)
                .map(|i| format!(", host {}", i.hostname))
                .unwrap_or_default();
            return Err(RegisterError::Fatal(MembershipError::IdentityConflict {
                id: self.identity.id.clone(),
                path,
                owner: format!("session {:#x}", stat.ephemeral_owner),
                host,
            }));
        }
        Err(RegisterError::Zk(ZkError {
            op: "register",
            path,
            source: zookeeper_client::Error::UnexpectedError("the node kept changing under us".into()),
        }))
    }

    async fn arm(&self, client: &ZkClient) -> Option<WatchFuture> {
        match client.watch_node(&self.node_path()).await {
            Ok((_, w)) => Some(Box::pin(w.changed())),
            Err(e) => {
                debug!(error = %e, "cannot watch our registration; the heartbeat will notice a deletion");
                None
            }
        }
    }

    /// Writes SupervisorInfo when its content changed or the refresh interval passed.
    async fn heartbeat(&mut self, client: &ZkClient, watch: &mut Option<WatchFuture>) -> Result<(), RegisterError> {
        let info = self.build_info();
        let due = match &self.last_written {
            None => true,
            // Half a heartbeat of slack: the ticks fall where they fall, and without it an
            // unchanged node would be rewritten every refresh + one heartbeat.
            Some((last, at)) => {
                !last.same_content(&info) || at.elapsed() + self.config.heartbeat / 2 >= self.config.heartbeat_refresh
            }
        };
        if !due {
            return Ok(());
        }
        let path = self.node_path();
        match client.set(&path, &info.to_json(), None).await {
            Ok(_) => {
                debug!(path = %path, "supervisor info written");
                self.last_written = Some((info, Instant::now()));
                Ok(())
            }
            Err(e) if e.class() == ErrorClass::NoNode => {
                warn!(path = %path, "our registration is gone; registering again");
                *watch = self.register(client).await?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The safety net: our node exists, is owned by this session, and is up to date.
    async fn verify(&mut self, client: &ZkClient, watch: &mut Option<WatchFuture>) -> Result<(), RegisterError> {
        let path = self.node_path();
        match client.stat(&path).await? {
            Some(stat) if stat.ephemeral_owner == client.session_id() => self.heartbeat(client, watch).await,
            _ => {
                self.last_written = None;
                *watch = self.register(client).await?;
                Ok(())
            }
        }
    }
}
