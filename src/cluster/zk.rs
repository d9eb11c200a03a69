//! The ONLY module that uses the `zookeeper-client` crate.
//!
//! What it adds over the crate:
//! - [`connect`]: our own connect loop. Each attempt uses `with_fail_eagerly()` so a dead
//!   ensemble fails the attempt after one pass over the servers instead of blocking for the
//!   whole session timeout; between attempts we back off exponentially with jitter, so a
//!   fleet of agents does not reconnect in lock step after an ensemble restart.
//! - [`ZkError`]: the crate's errors classified where they arrive into what the agent does
//!   about them ([`ErrorClass`]): expected outcomes (node exists, no node, bad version),
//!   transient (connection loss: retry on the same session), session-terminal (expired,
//!   closed: start a new session) and the rest.
//! - [`ZkClient::close`]: the crate has no `close()`. Dropping every clone of the client makes
//!   its session task send `CloseSession` (so our ephemeral nodes vanish at once); we then
//!   wait for the state watcher to report `Closed`, bounded by a timeout.
//!
//! Client behaviour relied on (read in the crate's source, 0.11): a request is sent (queued)
//! when its future is created, not when polled; requests in flight when a connection drops
//! fail with the error that ended the connection (`ConnectionLoss`, or an I/O error classed
//! `Other` here; callers retry both alike); requests made while disconnected wait in the
//! client until it reconnects or the session ends, and one abandoned by our timeout is not
//! cancelled (it may still run after a reconnect, in order; every write the agent makes is
//! safe to repeat or to land late); the client reconnects by itself inside the session and
//! reports `Disconnected` then `SyncConnected`; it declares the session `Expired` on its own
//! when it cannot reconnect in time (~1.4× the negotiated timeout), after which every request
//! fails and a new client is needed; one-shot watches are re-set on the server after a
//! reconnect and see only terminal session events.

use std::time::Duration;

use crate::shutdown::Shutdown;
use zookeeper_client as zk;

/// Bound on every request. The client queues requests made while it is disconnected until it
/// reconnects or the session expires (up to ~1.4× the session timeout); the agent must not
/// hang that long in one call (it would stop noticing shutdown and session events), so a
/// request that takes longer is reported as a connection loss and retried by the caller.
pub(crate) const OP_TIMEOUT: Duration = Duration::from_secs(5);

/// Awaits a request with [`OP_TIMEOUT`]. While the client is disconnected nothing is sent:
/// the request would only wait in the client's queue; the caller retries later.
///
/// `request` is a closure because the client sends (queues) a request when its future is
/// created, not when it is polled: checking the state first must come before that.
async fn bounded<T, F>(
    client: &zk::Client,
    op: &'static str,
    path: &str,
    request: impl FnOnce() -> F,
) -> Result<T, ZkError>
where
    F: std::future::Future<Output = Result<T, zk::Error>>,
{
    if client.state() == zk::SessionState::Disconnected {
        crate::metrics::metrics().zk_op(op, "not_sent");
        return Err(ZkError::new(op, path, zk::Error::ConnectionLoss));
    }
    let result = match tokio::time::timeout(OP_TIMEOUT, request()).await {
        Ok(result) => result.map_err(|e| ZkError::new(op, path, e)),
        Err(_) => Err(ZkError::new(op, path, zk::Error::Timeout)),
    };
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => match e.class() {
            ErrorClass::NoNode => "no_node",
            ErrorClass::NodeExists => "node_exists",
            ErrorClass::BadVersion => "bad_version",
            ErrorClass::NotEmpty => "not_empty",
            ErrorClass::ConnectionLoss => "connection_loss",
            ErrorClass::SessionGone => "session_gone",
            ErrorClass::NoAuth => "no_auth",
            ErrorClass::Other => "error",
        },
    };
    crate::metrics::metrics().zk_op(op, outcome);
    result
}

/// What the caller should do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorClass {
    NoNode,
    NodeExists,
    BadVersion,
    NotEmpty,
    /// The connection dropped; the session may still be alive: retry later on the same client.
    ConnectionLoss,
    /// The session is over (expired, closed, auth failed): a new session is needed.
    SessionGone,
    NoAuth,
    Other,
}

#[derive(Debug, thiserror::Error)]
#[error("zookeeper {op} {path}: {source}")]
pub(crate) struct ZkError {
    pub op: &'static str,
    pub path: String,
    #[source]
    pub source: zk::Error,
}

impl ZkError {
    fn new(op: &'static str, path: &str, source: zk::Error) -> ZkError {
        ZkError { op, path: path.to_owned(), source }
    }

    pub(crate) fn class(&self) -> ErrorClass {
        match self.source {
            zk::Error::NoNode => ErrorClass::NoNode,
            zk::Error::NodeExists => ErrorClass::NodeExists,
            zk::Error::BadVersion => ErrorClass::BadVersion,
            zk::Error::NotEmpty => ErrorClass::NotEmpty,
            zk::Error::ConnectionLoss | zk::Error::Timeout => ErrorClass::ConnectionLoss,
            zk::Error::SessionExpired | zk::Error::SessionMoved | zk::Error::ClientClosed | zk::Error::AuthFailed => {
                ErrorClass::SessionGone
            }
            zk::Error::NoAuth => ErrorClass::NoAuth,
            _ => ErrorClass::Other,
        }
    }
}

/// Session state as the agent sees it (reported in logs, status and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionState {
    Connected,
    ConnectedReadOnly,
    Disconnected,
    Expired,
    AuthFailed,
    Closed,
}

impl SessionState {
    fn from_client(state: zk::SessionState) -> SessionState {
        match state {
            zk::SessionState::SyncConnected => SessionState::Connected,
            zk::SessionState::ConnectedReadOnly => SessionState::ConnectedReadOnly,
            zk::SessionState::Disconnected => SessionState::Disconnected,
            zk::SessionState::Expired => SessionState::Expired,
            zk::SessionState::AuthFailed => SessionState::AuthFailed,
            zk::SessionState::Closed => SessionState::Closed,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SessionState::Connected => "connected",
            SessionState::ConnectedReadOnly => "connected_read_only",
            SessionState::Disconnected => "disconnected",
            SessionState::Expired => "expired",
            SessionState::AuthFailed => "auth_failed",
            SessionState::Closed => "closed",
        }
    }

    /// The session cannot come back; only a new session helps.
    pub(crate) fn is_terminal(self) -> bool {
        matches!(self, SessionState::Expired | SessionState::AuthFailed | SessionState::Closed)
    }
}

/// The parts of a node's `Stat` the agent uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NodeStat {
    pub version: i32,
    /// Session id owning an ephemeral node; 0 for a persistent one.
    pub ephemeral_owner: i64,
    pub mtime_ms: i64,
    /// zxid of the last change of the node's data.
    pub mzxid: i64,
    /// zxid of the last creation or deletion of one of the node's children.
    pub pzxid: i64,
}

impl From<&zk::Stat> for NodeStat {
    fn from(stat: &zk::Stat) -> NodeStat {
        NodeStat {
            version: stat.version,
            ephemeral_owner: stat.ephemeral_owner,
            mtime_ms: stat.mtime,
            mzxid: stat.mzxid,
            pzxid: stat.pzxid,
        }
    }
}

/// What a one-shot node watch saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NodeEvent {
    Created,
    Deleted,
    DataChanged,
    ChildrenChanged,
    /// The session ended (terminal state); the watch will not fire again.
    Session(SessionState),
}

/// A one-shot watch on one node.
#[derive(Debug)]
pub(crate) struct NodeWatch(zk::OneshotWatcher);

impl NodeWatch {
    pub(crate) async fn changed(self) -> NodeEvent {
        NodeEvent::of(&self.0.changed().await)
    }
}

impl NodeEvent {
    fn of(event: &zk::WatchedEvent) -> NodeEvent {
        match event.event_type {
            zk::EventType::NodeCreated => NodeEvent::Created,
            zk::EventType::NodeDeleted => NodeEvent::Deleted,
            zk::EventType::NodeDataChanged => NodeEvent::DataChanged,
            zk::EventType::NodeChildrenChanged => NodeEvent::ChildrenChanged,
            zk::EventType::Session => NodeEvent::Session(SessionState::from_client(event.session_state)),
        }
    }
}

/// A persistent watch on one node (ZooKeeper ≥ 3.6): every change of it, not only the next.
/// Like [`TreeWatch`] it is dead on the server after a reconnect (the crate does not set it
/// again) and misses the events of a disconnection: set it again after reconnecting.
#[derive(Debug)]
pub(crate) struct NodeWatcher {
    watcher: zk::PersistentWatcher,
    ended: bool,
}

impl NodeWatcher {
    /// The next event; `Session` for a change of the connection. After a terminal session
    /// event it never returns (the crate panics if polled after one).
    pub(crate) async fn changed(&mut self) -> NodeEvent {
        if self.ended {
            return std::future::pending().await;
        }
        let event = NodeEvent::of(&self.watcher.changed().await);
        self.ended = matches!(event, NodeEvent::Session(s) if s.is_terminal());
        event
    }
}

/// A persistent recursive watch on a subtree (ZooKeeper ≥ 3.6). It sees every change below
/// its path but may miss some during a reconnect (ZOOKEEPER-4698): re-read after reconnecting.
#[derive(Debug)]
pub(crate) struct TreeWatch {
    watcher: zk::PersistentWatcher,
    ended: bool,
    /// The last session event was a reconnect: the watch must be set again (see `changed`).
    reconnected: bool,
}

impl TreeWatch {
    /// The next event: `Some(path)` of a changed node (created, data changed, deleted),
    /// `Some("")` for a change of the connection (disconnected, reconnected: events may have
    /// been missed), or `None` once the session ended (then the watch is dead and never
    /// returns again).
    pub(crate) async fn changed(&mut self) -> Option<String> {
        if self.ended {
            return std::future::pending().await;
        }
        let event = self.watcher.changed().await;
        match event.event_type {
            zk::EventType::Session if event.session_state.is_terminated() => {
                // The crate panics if polled after a terminal event.
                self.ended = true;
                None
            }
            zk::EventType::Session => {
                self.reconnected = event.session_state == zk::SessionState::SyncConnected;
                Some(String::new())
            }
            _ => Some(event.path),
        }
    }

    /// Whether the last event was a reconnect. The watch is then DEAD on the server and must be
    /// set again: zookeeper-client 0.11.2 re-sends one-shot watches after a reconnect but not
    /// persistent ones (`WatchManager::resend_watches` computes `index.max(index)` where it
    /// means `index.max(i)`, so the SetWatches2 lists of persistent watches are never sent).
    /// Found by the ensemble scenario of `tests/faults.rs`: after a leader failover an agent
    /// saw no assignment change again.
    pub(crate) fn reconnected(&self) -> bool {
        self.reconnected
    }
}

/// Session-state changes of one client.
#[derive(Debug)]
pub(crate) struct StateWatcher(zk::StateWatcher);

impl StateWatcher {
    /// The next state change. After a terminal state this never returns.
    pub(crate) async fn changed(&mut self) -> SessionState {
        SessionState::from_client(self.0.changed().await)
    }
}

/// How to reach the ensemble.
#[derive(Debug, Clone)]
pub(crate) struct ConnectOptions {
    /// `host:port` list.
    pub servers: Vec<String>,
    pub session_timeout: Duration,
    pub connect_timeout: Duration,
    /// Digest credentials (`user:password`), added to the session at connect time.
    pub digest: Option<String>,
}

/// The digest credentials file could not be used.
#[derive(Debug, thiserror::Error)]
#[error("cannot read zookeeper credentials {path}: {reason}")]
pub(crate) struct CredentialsError {
    pub path: String,
    pub reason: String,
}

impl ConnectOptions {
    /// From `[zookeeper]`, reading `auth.credentials_file` (one line `user:password`, not
    /// readable by group or others) when digest auth is configured. Used by the daemon and by
    /// every CLI command that talks to ZooKeeper, so they authenticate alike.
    pub(crate) fn from_config(config: &crate::config::Config) -> Result<ConnectOptions, CredentialsError> {
        Ok(ConnectOptions {
            servers: config.zookeeper.servers.clone(),
            session_timeout: config.zookeeper.session_timeout,
            connect_timeout: config.zookeeper.connect_timeout,
            digest: read_digest(config)?,
        })
    }
}

fn read_digest(config: &crate::config::Config) -> Result<Option<String>, CredentialsError> {
    use std::os::unix::fs::PermissionsExt;
    let Some(auth) = &config.zookeeper.auth else { return Ok(None) };
    let err = |reason: String| CredentialsError { path: auth.credentials_file.display().to_string(), reason };
    if auth.scheme != "digest" {
        return Err(err(format!("scheme `{}` is not supported; use \"digest\"", auth.scheme)));
    }
    let meta = std::fs::metadata(&auth.credentials_file).map_err(|e| err(e.to_string()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(err(format!(
            "mode {:o} lets other users read it; chmod 600 it",
            meta.permissions().mode() & 0o777
        )));
    }
    let text = std::fs::read_to_string(&auth.credentials_file).map_err(|e| err(e.to_string()))?;
    let cred = text.trim();
    if !cred.contains(':') || cred.lines().count() != 1 {
        return Err(err("expected one line `user:password`".into()));
    }
    Ok(Some(cred.to_owned()))
}

/// A connected session. Clones share the session; it is closed when the last clone is
/// dropped (see [`ZkClient::close`]), so clones handed out by the membership task must be
/// short-lived (held for one job, not stored).
#[derive(Debug, Clone)]
pub(crate) struct ZkClient {
    client: zk::Client,
    /// Digest auth is in force: create nodes with [`CREATOR_ALL_WORLD_READ`].
    secured: bool,
}

/// One connection attempt: every server tried once (fail eagerly), bounded by
/// `connect_timeout`.
pub(crate) async fn connect_once(opts: &ConnectOptions) -> Result<ZkClient, ZkError> {
    let servers = opts.servers.join(",");
    // `connect_timeout` bounds establishing a session (below). It is not the crate's
    // "connection timeout", which is the idle time after which a live connection counts as
    // lost and also sets the ping interval (3/8 of it): left at the crate's default (2/5 of the
    // session timeout), an idle agent pings every `session_timeout / 20 * 3` (3 s at 20 s).
    let mut connector = zk::Client::connector().with_session_timeout(opts.session_timeout).with_fail_eagerly();
    if let Some(digest) = &opts.digest {
        connector = connector.with_auth("digest", digest.as_bytes());
    }
    match tokio::time::timeout(opts.connect_timeout, connector.connect(&servers)).await {
        Ok(Ok(client)) => Ok(ZkClient { client, secured: opts.digest.is_some() }),
        Ok(Err(err)) => Err(ZkError::new("connect", &servers, err)),
        Err(_) => Err(ZkError::new("connect", &servers, zk::Error::Timeout)),
    }
}

/// Backoff between connection attempts: 250 ms doubling to 10 s, each delay drawn uniformly
/// from its upper half (jitter).
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff { next: initial, max }
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = base / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

/// Connects, retrying with backoff until it works or `stop` turns true (then `None`).
pub(crate) async fn connect(opts: &ConnectOptions, stop: &mut Shutdown) -> Option<ZkClient> {
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(10));
    let mut attempt = 1u32;
    loop {
        let result = tokio::select! {
            r = connect_once(opts) => r,
            _ = stop.wait() => return None,
        };
        match result {
            Ok(client) => {
                tracing::info!(
                    session = %client.session_hex(),
                    timeout_ms = client.session_timeout().as_millis() as u64,
                    attempt,
                    "zookeeper session established"
                );
                return Some(client);
            }
            Err(err) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %err, attempt, retry_in_ms = delay.as_millis() as u64, "cannot connect to zookeeper");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.wait() => return None,
                }
                attempt += 1;
            }
        }
    }
}

/// SPEC §7: with digest auth, nodes the agent creates are creator-all plus world-read, so
/// anyone can see the cluster but only this identity can change its nodes.
static CREATOR_ALL_WORLD_READ: [zk::Acl; 2] =
    [zk::Acl::new_const(zk::Permission::ALL, "auth", ""), zk::Acl::new_const(zk::Permission::READ, "world", "anyone")];

impl ZkClient {
    fn acls(&self) -> zk::Acls<'static> {
        if self.secured { zk::Acls::new(&CREATOR_ALL_WORLD_READ) } else { zk::Acls::anyone_all() }
    }

    pub(crate) fn session_id(&self) -> i64 {
        self.client.session_id().0
    }

    /// `0x…`, as ZooKeeper's own logs print session ids.
    pub(crate) fn session_hex(&self) -> String {
        format!("{:#x}", self.session_id())
    }

    pub(crate) fn session_timeout(&self) -> Duration {
        self.client.session_timeout()
    }

    pub(crate) fn state(&self) -> SessionState {
        SessionState::from_client(self.client.state())
    }

    pub(crate) fn state_watcher(&self) -> StateWatcher {
        StateWatcher(self.client.state_watcher())
    }

    /// Creates `path` and its missing ancestors as persistent nodes; existing ones are fine.
    pub(crate) async fn ensure_path(&self, path: &str) -> Result<(), ZkError> {
        let mut prefix = String::new();
        for segment in path.split('/').filter(|s| !s.is_empty()) {
            prefix.push('/');
            prefix.push_str(segment);
            // Look before creating: with auth, another agent's parent node may deny us CREATE,
            // and ZooKeeper checks that before it would answer "node exists".
            if self.stat(&prefix).await?.is_some() {
                continue;
            }
            let options = zk::CreateMode::Persistent.with_acls(self.acls());
            match bounded(&self.client, "create", &prefix, || self.client.create(&prefix, &[], &options)).await {
                Ok(_) => {}
                Err(err) if err.class() == ErrorClass::NodeExists => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    pub(crate) async fn create_ephemeral(&self, path: &str, data: &[u8]) -> Result<NodeStat, ZkError> {
        let options = zk::CreateMode::Ephemeral.with_acls(self.acls());
        let (stat, _) = bounded(&self.client, "create", path, || self.client.create(path, data, &options)).await?;
        Ok(NodeStat::from(&stat))
    }

    pub(crate) async fn stat(&self, path: &str) -> Result<Option<NodeStat>, ZkError> {
        let stat = bounded(&self.client, "stat", path, || self.client.check_stat(path)).await?;
        Ok(stat.as_ref().map(NodeStat::from))
    }

    pub(crate) async fn get(&self, path: &str) -> Result<Option<(Vec<u8>, NodeStat)>, ZkError> {
        match bounded(&self.client, "get", path, || self.client.get_data(path)).await {
            Ok((data, stat)) => Ok(Some((data, NodeStat::from(&stat)))),
            Err(err) if err.class() == ErrorClass::NoNode => Ok(None),
            Err(err) => Err(err),
        }
    }

    pub(crate) async fn set(&self, path: &str, data: &[u8], version: Option<i32>) -> Result<NodeStat, ZkError> {
        let stat = bounded(&self.client, "set", path, || self.client.set_data(path, data, version)).await?;
        Ok(NodeStat::from(&stat))
    }

    pub(crate) async fn delete(&self, path: &str, version: Option<i32>) -> Result<(), ZkError> {
        bounded(&self.client, "delete", path, || self.client.delete(path, version)).await
    }

    /// Children names of `path`; a missing `path` has none.
    pub(crate) async fn children(&self, path: &str) -> Result<Vec<String>, ZkError> {
        match bounded(&self.client, "list", path, || self.client.list_children(path)).await {
            Ok(children) => Ok(children),
            Err(err) if err.class() == ErrorClass::NoNode => Ok(Vec::new()),
            Err(err) => Err(err),
        }
    }

    /// Children names of `path` and its stat (one request), `None` if `path` does not exist.
    pub(crate) async fn children_with_stat(&self, path: &str) -> Result<Option<(Vec<String>, NodeStat)>, ZkError> {
        match bounded(&self.client, "list", path, || self.client.get_children(path)).await {
            Ok((children, stat)) => Ok(Some((children, NodeStat::from(&stat)))),
            Err(err) if err.class() == ErrorClass::NoNode => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Creates or overwrites a persistent node (parents must exist).
    pub(crate) async fn put_persistent(&self, path: &str, data: &[u8]) -> Result<NodeStat, ZkError> {
        let options = zk::CreateMode::Persistent.with_acls(self.acls());
        match bounded(&self.client, "create", path, || self.client.create(path, data, &options)).await {
            Ok((stat, _)) => Ok(NodeStat::from(&stat)),
            Err(e) if e.class() == ErrorClass::NodeExists => self.set(path, data, None).await,
            Err(e) => Err(e),
        }
    }

    /// A persistent recursive watch on `path` and everything below it.
    pub(crate) async fn watch_tree(&self, path: &str) -> Result<TreeWatch, ZkError> {
        let watcher =
            bounded(&self.client, "watch", path, || self.client.watch(path, zk::AddWatchMode::PersistentRecursive))
                .await?;
        Ok(TreeWatch { watcher, ended: false, reconnected: false })
    }

    /// Stat of `path` (if it exists) and a one-shot watch for its next change.
    pub(crate) async fn watch_node(&self, path: &str) -> Result<(Option<NodeStat>, NodeWatch), ZkError> {
        let (stat, watcher) = bounded(&self.client, "watch", path, || self.client.check_and_watch_stat(path)).await?;
        Ok((stat.as_ref().map(NodeStat::from), NodeWatch(watcher)))
    }

    /// A persistent watch on `path`, then its stat (the watch first: no change between the two
    /// goes unseen).
    pub(crate) async fn watch_node_persistently(&self, path: &str) -> Result<(Option<NodeStat>, NodeWatcher), ZkError> {
        let watcher =
            bounded(&self.client, "watch", path, || self.client.watch(path, zk::AddWatchMode::Persistent)).await?;
        let stat = self.stat(path).await?;
        Ok((stat, NodeWatcher { watcher, ended: false }))
    }

    /// Closes the session: its ephemeral nodes go at once. Waits up to `timeout` for the
    /// client to confirm; returns whether it did.
    pub(crate) async fn close(self, timeout: Duration) -> bool {
        let mut states = self.client.state_watcher();
        let session = self.session_hex();
        match states.state() {
            s if s.is_terminated() => return true,
            zk::SessionState::Disconnected => {
                // CloseSession can only be sent once reconnected, which may never happen;
                // do not wait for it. The server expires the session on its own.
                drop(self);
                tracing::info!(session = %session, "zookeeper unreachable: leaving the session to expire");
                return false;
            }
            _ => {}
        }
        // Dropping the last clone closes the request channel; the session task then sends
        // CloseSession and reports Closed.
        drop(self);
        let closed = tokio::time::timeout(timeout, async {
            loop {
                if states.changed().await.is_terminated() {
                    break;
                }
            }
        })
        .await
        .is_ok();
        if closed {
            tracing::info!(session = %session, "zookeeper session closed");
        } else {
            tracing::warn!(session = %session, "zookeeper session did not confirm close; the server will expire it");
        }
        closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(250), Duration::from_secs(10));
        let delays: Vec<_> = (0..10).map(|_| b.next_delay()).collect();
        let mut base = Duration::from_millis(250);
        for d in delays {
            assert!(d >= base / 2 && d <= base, "{d:?} not in [{:?}, {base:?}]", base / 2);
            base = (base * 2).min(Duration::from_secs(10));
        }
    }

    #[test]
    fn credentials_must_be_one_line_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let cred = tmp.path().join("zk.cred");
        let text = format!(
            "[zookeeper]\nservers = [\"127.0.0.1:2181\"]\nauth = {{ scheme = \"digest\", credentials_file = \"{}\" }}\n",
            cred.display()
        );
        let config = crate::config::parse(&text, std::path::Path::new("/t/gale.toml")).unwrap();
        let with = |content: &str, mode: u32| {
            std::fs::write(&cred, content).unwrap();
            std::fs::set_permissions(&cred, std::fs::Permissions::from_mode(mode)).unwrap();
            ConnectOptions::from_config(&config).map(|o| o.digest)
        };
        assert_eq!(with("gale:secret\n", 0o600).unwrap(), Some("gale:secret".to_owned()));
        let err = with("gale:secret\n", 0o644).unwrap_err().to_string();
        assert!(err.contains("chmod 600") && err.contains("zk.cred"), "{err}");
        assert!(with("no-colon\n", 0o600).is_err());
        assert!(with("a:b\nc:d\n", 0o600).is_err());
        std::fs::remove_file(&cred).unwrap();
        assert!(ConnectOptions::from_config(&config).unwrap_err().to_string().contains("zk.cred"));
    }

    #[test]
    fn errors_are_classified() {
        let class = |e| ZkError::new("op", "/p", e).class();
        assert_eq!(class(zk::Error::NodeExists), ErrorClass::NodeExists);
        assert_eq!(class(zk::Error::ConnectionLoss), ErrorClass::ConnectionLoss);
        assert_eq!(class(zk::Error::SessionExpired), ErrorClass::SessionGone);
        assert_eq!(class(zk::Error::ClientClosed), ErrorClass::SessionGone);
        assert_eq!(class(zk::Error::NoAuth), ErrorClass::NoAuth);
    }
}
