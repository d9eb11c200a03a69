//! The membership task: owns the ZooKeeper session, registers the agent, heartbeats.
//!
//! ```text
//!            +----------------------(session expired / closed, after a short backoff)----+
//!            v                                                                            |
//! connecting --(session)--> record session id --> registering --(node created)--> registered
//!     ^  (backoff+jitter)       (LocalState)          |  ^                             |  |
//!     |                                               |  +--(node deleted / replaced)--+  |
//!     |                          (live foreign owner, or ours that will not expire)       |
//!     |                                               v                                   |
//!     |                                   IdentityConflict: exit 4        (stop) --> close session
//! ```
//!
//! Registration (SPEC §3.1): create the EPHEMERAL `<root>/supervisors/<id>`. If it exists,
//! [`ownership::decide`] says whose it is: ours (keep), a leftover of ours (delete, create),
//! possibly ours (wait for it to expire, as a dead agent's session does; refuse if it does
//! not), or another live session's (refuse: exit 4).
//!
//! Architecture Invariant: the new session's id is written to LocalState BEFORE the node is
//! created under it, so a crash at any point leaves a node whose owner the next start
//! recognises as its own.
//!
//! Heartbeat: a timer every `heartbeat_secs` (and every change of the published report)
//! rebuilds SupervisorInfo; it is written when anything but `time_ms` changed, and otherwise
//! every `heartbeat_refresh_secs`. Writes carry the node version we last saw, so a node
//! replaced under us fails the write and is re-checked. Connection loss inside the session
//! changes nothing visible: the node stays; nothing is sent while disconnected; the next tick
//! retries.
//!
//! Our node is watched with a persistent watch: a deletion, a creation by someone else or a
//! write that is not ours re-checks it at once. Our own writes fire it too; those are counted
//! and passed over, so a write costs one round trip, not a write and a re-read (restart cost,
//! `docs/benchmarks.md`). A reconnect drops the watch (the server forgot it, and the crate
//! does not set it again) and checks the node, which sets it again.
//!
//! Every action runs in a `select!` with the stop signal, so a stop is honoured even while a
//! registration waits for an old session to expire.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::ownership::{self, Decision, KnownSessions};
use super::zk::{self, ConnectOptions, ErrorClass, NodeEvent, NodeWatcher, SessionState, ZkClient, ZkError};
use crate::config::Capacity;
use crate::model::{self, NodeReport, SupervisorInfo, ZkStatus};
use crate::shutdown::Shutdown;

/// What this agent is; fixed for the life of the process.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub id: String,
    pub hostname: String,
    pub slots: Vec<u16>,
    pub capacity: Capacity,
    pub labels: BTreeMap<String, String>,
    pub started_at_ms: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct MembershipConfig {
    pub connect: ConnectOptions,
    /// ZooKeeper root, e.g. `/gale`.
    pub root: String,
    pub heartbeat: Duration,
    pub heartbeat_refresh: Duration,
}

/// Session happenings the supervisor reacts to (a full sync after each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionEvent {
    /// Registered under a new session (first start or after expiry).
    Registered { session: i64 },
    /// The connection came back inside the same session (watches may have missed events).
    Reconnected,
}

/// Requests to the membership task.
#[derive(Debug)]
pub(crate) enum Command {
    /// Re-read our node and repair it if needed (the periodic sync's safety net).
    Verify(oneshot::Sender<Result<(), String>>),
    /// A config reload: new heartbeat timing and advertised labels/capacity (applied at once,
    /// or when the next session starts if there is none now).
    Reconfigure {
        heartbeat: Duration,
        heartbeat_refresh: Duration,
        labels: std::collections::BTreeMap<String, String>,
        capacity: crate::config::Capacity,
    },
}

/// Persists the session ids this agent opens (with the identity of this process).
pub(crate) trait SessionLog: Send + Sync + 'static {
    fn record(&self, session: i64) -> Result<(), String>;
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum MembershipError {
    #[error(
        "supervisor id {id} is already registered at {path} by another live zookeeper session ({owner}{host}){detail}; \
         another agent uses this id, likely a cloned disk or a copied local dir: give this host its own id \
         (stop it, run `gale state reset-id --id <new id>`, set supervisor.id to it if set) and start again"
    )]
    IdentityConflict { id: String, path: String, owner: String, host: String, detail: String },
    #[error("{path} exists as a persistent node; delete it (it should be an agent's ephemeral node) and start again")]
    PersistentNodeInTheWay { path: String },
    #[error("cannot record the zookeeper session id in the local state: {0}")]
    SessionLog(String),
}

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
pub(crate) struct Membership {
    config: MembershipConfig,
    identity: Identity,
    session_log: Arc<dyn SessionLog>,
    report: watch::Receiver<NodeReport>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::UnboundedSender<SessionEvent>,
    status: watch::Sender<ZkStatus>,
    client: watch::Sender<Option<ZkClient>>,
    stop: Shutdown,
    known: KnownSessions,
    /// Last payload written, when, and the node version it produced; `None` forces a write.
    last_written: Option<(SupervisorInfo, Instant, i32)>,
    /// The persistent watch on our node, when armed.
    watch: Option<NodeWatcher>,
    /// `DataChanged` events of that watch that our own writes since it was armed will still
    /// cause: passed over, not re-checked.
    own_writes: u32,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership").field("id", &self.identity.id).finish_non_exhaustive()
    }
}

/// Handles the supervisor keeps.
#[derive(Debug)]
pub(crate) struct MembershipHandles {
    pub commands: mpsc::Sender<Command>,
    pub events: mpsc::UnboundedReceiver<SessionEvent>,
    pub status: watch::Receiver<ZkStatus>,
    /// The session, while registered, for readers (assignment sync). Take a clone for one
    /// job and drop it: the session closes only when every clone is gone.
    pub client: watch::Receiver<Option<ZkClient>>,
}

impl Membership {
    /// `previous`: the sessions earlier agent processes recorded, and whether their process
    /// still runs, read from LocalState before this process recorded anything.
    pub(crate) fn new(
        config: MembershipConfig,
        identity: Identity,
        session_log: Arc<dyn SessionLog>,
        previous: KnownSessions,
        report: watch::Receiver<NodeReport>,
        stop: Shutdown,
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
        let (client_tx, client_rx) = watch::channel(None);
        let membership = Membership {
            config,
            identity,
            session_log,
            report,
            commands: cmd_rx,
            events: ev_tx,
            status: st_tx,
            client: client_tx,
            stop,
            known: KnownSessions { this_process: Vec::new(), ..previous },
            last_written: None,
            watch: None,
            own_writes: 0,
        };
        (membership, MembershipHandles { commands: cmd_tx, events: ev_rx, status: st_rx, client: client_rx })
    }

    fn node_path(&self) -> String {
        format!("{}/supervisors/{}", self.config.root, self.identity.id)
    }

    /// Runs until `stop` turns true (Ok, session closed) or a fatal identity problem.
    pub(crate) async fn run(mut self) -> Result<(), MembershipError> {
        // After a lost session, or when the session id cannot be recorded, wait a little
        // before the next session, so a persistent failure is not a tight loop of sessions.
        let mut retry = zk::Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let mut first = true;
        loop {
            if !first {
                let delay = retry.next_delay();
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = self.stop.wait() => return Ok(()),
                }
            }
            first = false;
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
            if let Err(e) = recorded {
                error!(error = %MembershipError::SessionLog(e), "not registering until the session id can be recorded");
                client.close(Duration::from_secs(2)).await;
                continue;
            }
            self.known.this_process.push(session);
            let mut stop = self.stop.clone();
            let end = tokio::select! {
                end = self.serve_session(&client) => end,
                _ = stop.wait() => Ok(SessionEnd::Stop),
            };
            self.watch = None;
            self.last_written = None;
            // Take back the clone handed out, so that dropping ours closes the session.
            self.client.send_replace(None);
            match end {
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
                    self.status.send_modify(|s| s.registered = false);
                    drop(client);
                }
                Err(fatal) => {
                    client.close(Duration::from_secs(5)).await;
                    return Err(fatal);
                }
            }
        }
    }

    /// Registers, then serves heartbeats, watch events and commands until the session ends.
    /// The caller races this against the stop signal.
    async fn serve_session(&mut self, client: &ZkClient) -> Result<SessionEnd, MembershipError> {
        let mut states = client.state_watcher();
        let mut backoff = zk::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            match self.register(client).await {
                Ok(()) => break,
                Err(RegisterError::Fatal(e)) => return Err(e),
                Err(RegisterError::Zk(e)) if e.class() == ErrorClass::SessionGone => return Ok(SessionEnd::Lost),
                Err(RegisterError::Zk(e)) => {
                    let delay = backoff.next_delay();
                    warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "registration failed");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        state = states.changed() => if state.is_terminal() { return Ok(SessionEnd::Lost) },
                    }
                }
            }
        }
        self.client.send_replace(Some(client.clone()));
        let _ = self.events.send(SessionEvent::Registered { session: client.session_id() });

        let mut heartbeat = tokio::time::interval(self.config.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Wait for one thing, then act on it below, where `self` can be borrowed freely.
            let watch = &mut self.watch;
            let wake = tokio::select! {
                _ = self.stop.wait() => Wake::Stop,
                state = states.changed() => Wake::State(state),
                event = async { watch.as_mut().expect("armed").changed().await }, if watch.is_some() => Wake::Watch(event),
                _ = heartbeat.tick() => Wake::Tick,
                changed = self.report.changed() => if changed.is_ok() { Wake::Tick } else { Wake::Stop },
                Some(cmd) = self.commands.recv() => Wake::Command(cmd),
            };
            let result = match wake {
                Wake::Stop => return Ok(SessionEnd::Stop),
                Wake::State(state) => {
                    self.status.send_modify(|s| s.state = state.as_str());
                    match state {
                        SessionState::Disconnected => {
                            warn!(
                                session = %client.session_hex(),
                                "connection to zookeeper lost; reconnecting inside the session, registration is kept"
                            );
                            Ok(())
                        }
                        SessionState::Connected | SessionState::ConnectedReadOnly => {
                            info!(session = %client.session_hex(), "reconnected to zookeeper");
                            let _ = self.events.send(SessionEvent::Reconnected);
                            // The server forgot the persistent watch: `verify` sets it again.
                            self.watch = None;
                            // Re-read: the node may have been deleted while we were away.
                            self.verify(client).await
                        }
                        SessionState::Expired | SessionState::Closed | SessionState::AuthFailed => {
                            if state == SessionState::AuthFailed {
                                error!("zookeeper authentication failed; check zookeeper.auth credentials");
                            }
                            return Ok(SessionEnd::Lost);
                        }
                    }
                }
                Wake::Watch(NodeEvent::Session(state)) if state.is_terminal() => return Ok(SessionEnd::Lost),
                Wake::Watch(event) => self.on_node_event(client, event).await,
                Wake::Tick => {
                    if self.watch.is_none() {
                        // The watch could not be armed: check the node the slow way.
                        self.verify(client).await
                    } else {
                        self.heartbeat(client).await
                    }
                }
                Wake::Command(Command::Reconfigure { heartbeat: every, heartbeat_refresh, labels, capacity }) => {
                    if every != self.config.heartbeat {
                        heartbeat = tokio::time::interval(every);
                        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    }
                    info!(
                        heartbeat_s = every.as_secs(),
                        refresh_s = heartbeat_refresh.as_secs(),
                        "heartbeat reconfigured"
                    );
                    self.config.heartbeat = every;
                    self.config.heartbeat_refresh = heartbeat_refresh;
                    self.identity.labels = labels;
                    self.identity.capacity = capacity;
                    self.heartbeat(client).await
                }
                Wake::Command(Command::Verify(reply)) => {
                    let result = self.verify(client).await;
                    let _ = reply.send(match &result {
                        Ok(()) => Ok(()),
                        Err(RegisterError::Zk(e)) => Err(e.to_string()),
                        Err(RegisterError::Fatal(e)) => Err(e.to_string()),
                    });
                    result
                }
            };
            match result {
                Ok(()) => {}
                Err(RegisterError::Fatal(e)) => return Err(e),
                Err(RegisterError::Zk(e)) if e.class() == ErrorClass::SessionGone => return Ok(SessionEnd::Lost),
                Err(RegisterError::Zk(e)) => warn!(error = %e, "zookeeper request failed; retrying at the next tick"),
            }
        }
    }

    fn build_info(&self) -> SupervisorInfo {
        let report = self.report.borrow();
        let (workers, used) = report.workers_with_usage();
        // An entry of an empty slot only says why an assignment cannot run there (SPEC §3.1
        // `error`): nothing uses that slot.
        let mut used_slots: Vec<u16> =
            report.workers.iter().filter(|w| w.state != model::SlotStateName::Empty).map(|w| w.port).collect();
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
            workers,
            used: Some(used),
        }
    }

    fn registered(&mut self, client: &ZkClient, info: SupervisorInfo, version: i32, how: &str) {
        self.last_written = Some((info, Instant::now(), version));
        self.status.send_modify(|s| {
            s.registered = true;
            s.registrations += 1;
        });
        info!(path = %self.node_path(), session = %client.session_hex(), state = %self.report.borrow().lifecycle, how,
            "registered in zookeeper");
    }

    /// Creates our ephemeral node (handling one that exists, see [`ownership::decide`]) and
    /// arms the watch on it.
    async fn register(&mut self, client: &ZkClient) -> Result<(), RegisterError> {
        let path = self.node_path();
        client.ensure_path(&format!("{}/supervisors", self.config.root)).await?;
        let current = client.session_id();
        let mut waited = false;
        for _ in 0..10 {
            let info = self.build_info();
            match client.create_ephemeral(&path, &info.to_json()).await {
                Ok(stat) => {
                    self.registered(client, info, stat.version, "created");
                    return self.arm(client).await;
                }
                Err(e) if e.class() == ErrorClass::NodeExists => {}
                Err(e) => return Err(e.into()),
            }
            let Some((data, stat)) = client.get(&path).await? else { continue };
            let owner = format!("{:#x}", stat.ephemeral_owner);
            match ownership::decide(stat.ephemeral_owner, current, &self.known) {
                Decision::Ours => {
                    // A create that went through before a connection loss: ours already.
                    let stat = client.set(&path, &info.to_json(), Some(stat.version)).await?;
                    self.registered(client, info, stat.version, "found ours");
                    return self.arm(client).await;
                }
                Decision::Replace(why) => {
                    info!(path = %path, old_session = %owner, why, "replacing a leftover registration");
                    match client.delete(&path, Some(stat.version)).await {
                        Ok(()) => continue,
                        Err(e) if matches!(e.class(), ErrorClass::NoNode | ErrorClass::BadVersion) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                Decision::WaitForExpiry if !waited => {
                    waited = true;
                    // 1.4x is when a client gives up; the server expires within the timeout.
                    let limit = client.session_timeout().mul_f64(1.5) + Duration::from_secs(2);
                    warn!(path = %path, old_session = %owner, wait_s = limit.as_secs(),
                        "a registration under a session this local state recorded still exists, and its \
                         agent cannot be proven dead (other boot or host): waiting for that session to expire");
                    if Self::wait_gone(client, &path, stat.version, limit).await? {
                        continue;
                    }
                    return Err(self.conflict(
                        &path,
                        &data,
                        owner,
                        format!(", still alive after {}s", limit.as_secs()),
                    ));
                }
                Decision::WaitForExpiry | Decision::Conflict => {
                    return Err(self.conflict(&path, &data, owner, String::new()));
                }
                Decision::Persistent => {
                    return Err(RegisterError::Fatal(MembershipError::PersistentNodeInTheWay { path }));
                }
            }
        }
        Err(RegisterError::Zk(ZkError {
            op: "register",
            path,
            source: zookeeper_client::Error::UnexpectedError("the node kept changing under us".into()),
        }))
    }

    fn conflict(&self, path: &str, data: &[u8], owner: String, detail: String) -> RegisterError {
        let host =
            model::decode::<SupervisorInfo>(path, data).map(|i| format!(", host {}", i.hostname)).unwrap_or_default();
        RegisterError::Fatal(MembershipError::IdentityConflict {
            id: self.identity.id.clone(),
            path: path.to_owned(),
            owner: format!("session {owner}"),
            host,
            detail,
        })
    }

    /// Waits up to `limit` for the node at `path` to go. A write to it (its owner is alive and
    /// heartbeating) ends the wait at once: it will not expire.
    async fn wait_gone(client: &ZkClient, path: &str, version: i32, limit: Duration) -> Result<bool, ZkError> {
        let deadline = Instant::now() + limit;
        loop {
            let (stat, watch) = client.watch_node(path).await?;
            match stat {
                None => return Ok(true),
                Some(s) if s.version != version => return Ok(false),
                Some(_) => {}
            }
            match tokio::time::timeout_at(deadline, watch.changed()).await {
                Err(_) => return Ok(client.stat(path).await?.is_none()),
                Ok(NodeEvent::Deleted) => return Ok(true),
                Ok(NodeEvent::DataChanged) => return Ok(false),
                Ok(NodeEvent::Session(s)) if s.is_terminal() => {
                    return Err(ZkError {
                        op: "watch",
                        path: path.to_owned(),
                        source: zookeeper_client::Error::SessionExpired,
                    });
                }
                Ok(_) => {}
            }
        }
    }

    /// An event of the watch on our node (a terminal session state ends the session first).
    async fn on_node_event(&mut self, client: &ZkClient, event: NodeEvent) -> Result<(), RegisterError> {
        match event {
            // The connection's ups and downs: the state watcher acts on them (a reconnect checks
            // the node and sets the watch again).
            NodeEvent::Session(_) => Ok(()),
            NodeEvent::DataChanged if self.own_writes > 0 => {
                self.own_writes -= 1;
                Ok(())
            }
            NodeEvent::Deleted => {
                warn!(path = %self.node_path(), "our registration was deleted; registering again");
                self.verify(client).await
            }
            // Someone else made our path, or wrote it: check the owner, write ours.
            _ => self.verify(client).await,
        }
    }

    /// Sets the watch on our node (again) and reads it; none of our writes is pending on it.
    async fn watch_ours(&mut self, client: &ZkClient) -> Result<Option<zk::NodeStat>, RegisterError> {
        let (stat, watcher) = client.watch_node_persistently(&self.node_path()).await?;
        // The new watch is set before the old one goes: the node is never left unwatched.
        self.watch = Some(watcher);
        self.own_writes = 0;
        Ok(stat)
    }

    /// Arms the watch on our node and checks it is still ours.
    async fn arm(&mut self, client: &ZkClient) -> Result<(), RegisterError> {
        match self.watch_ours(client).await? {
            Some(s) if s.ephemeral_owner == client.session_id() => Ok(()),
            // Gone or replaced between our write and the watch, which reports only what
            // happens after it was set: act now.
            _ => Box::pin(self.register(client)).await,
        }
    }

    /// Writes SupervisorInfo when its content changed or the refresh interval passed.
    async fn heartbeat(&mut self, client: &ZkClient) -> Result<(), RegisterError> {
        let info = self.build_info();
        let (due, version) = match &self.last_written {
            None => (true, None),
            // Half a heartbeat of slack: the ticks fall where they fall, and without it an
            // unchanged node would be rewritten every refresh + one heartbeat.
            Some((last, at, version)) => (
                !last.same_content(&info) || at.elapsed() + self.config.heartbeat / 2 >= self.config.heartbeat_refresh,
                Some(*version),
            ),
        };
        if !due {
            return Ok(());
        }
        let path = self.node_path();
        match client.set(&path, &info.to_json(), version).await {
            Ok(stat) => {
                debug!(path = %path, version = stat.version, "supervisor info written");
                self.last_written = Some((info, Instant::now(), stat.version));
                self.own_writes += 1;
                Ok(())
            }
            Err(e) if matches!(e.class(), ErrorClass::NoNode | ErrorClass::BadVersion) => {
                // Deleted, or written by someone else: find out whose it is now.
                warn!(path = %path, error = %e, "our registration changed under us; checking it");
                self.verify(client).await
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The safety net: our node exists, is owned by this session, is watched and up to date.
    async fn verify(&mut self, client: &ZkClient) -> Result<(), RegisterError> {
        let stat = match self.watch {
            Some(_) => client.stat(&self.node_path()).await?,
            None => self.watch_ours(client).await?,
        };
        match stat {
            Some(stat) if stat.ephemeral_owner == client.session_id() => {
                if let Some((_, _, version)) = &mut self.last_written {
                    *version = stat.version;
                }
                Box::pin(self.heartbeat(client)).await
            }
            _ => {
                self.last_written = None;
                Box::pin(self.register(client)).await
            }
        }
    }
}
