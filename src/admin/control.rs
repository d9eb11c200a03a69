//! The control socket `<local_dir>/control.sock` (mode 0600): the way to CHANGE something on a
//! running agent from this host (`gale worker restart`, `gale drain`, …). Only root and the
//! agent's user can connect; the HTTP endpoint stays read only.
//!
//! Protocol: one JSON [`Operation`] per connection, one line; one JSON [`Reply`] line back.
//! The same operations arrive as ZooKeeper Actions (SPEC §3.4), hence their home in
//! [`crate::model::action`]. Each is handed to its owner
//! (the `sync-processes` executor) through a channel and answered from there, so no state is
//! touched from the socket's task.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::metrics::metrics;
use crate::model::action::Operation;
use crate::shutdown::Shutdown;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Reply {
    pub ok: bool,
    pub message: String,
}

impl Reply {
    pub(crate) fn ok(message: impl Into<String>) -> Reply {
        Reply { ok: true, message: message.into() }
    }

    pub(crate) fn err(message: impl Into<String>) -> Reply {
        Reply { ok: false, message: message.into() }
    }
}

/// An operation on its way to the executor, with where to send the answer.
pub(crate) type Request = (Operation, oneshot::Sender<Reply>);

/// Sends `op` to the executor and waits for its answer (at most `timeout`).
pub(crate) async fn submit(ops: &mpsc::UnboundedSender<Request>, op: Operation, timeout: Duration) -> Reply {
    let (tx, rx) = oneshot::channel();
    if ops.send((op, tx)).is_err() {
        return Reply::err("the agent is stopping");
    }
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(_)) => Reply::err("the agent dropped the request (stopping?)"),
        Err(_) => Reply::err(format!("no answer within {}s", timeout.as_secs())),
    }
}

/// Binds the socket (replacing a stale one: the local dir lock proves no other agent uses it),
/// mode 0600, and returns the serving future; it ends when `stop` turns true.
pub(crate) fn bind(
    path: &Path,
    ops: mpsc::UnboundedSender<Request>,
    mut stop: Shutdown,
) -> std::io::Result<impl std::future::Future<Output = ()> + Send + use<>> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // Bound under a temporary name, made private, then renamed into place: the socket is
    // never reachable at its real path with the umask's permissions.
    let temp = path.with_extension(format!("sock.{}", std::process::id()));
    let _ = std::fs::remove_file(&temp);
    let listener = UnixListener::bind(&temp)?;
    std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&temp, path))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&temp);
        })?;
    let path: PathBuf = path.to_owned();
    Ok(async move {
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        tokio::spawn(serve(stream, ops.clone()));
                    }
                    Err(e) => {
                        warn!(error = %e, "control socket accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                _ = async { let _ = stop.wait().await; } => break,
            }
        }
        let _ = std::fs::remove_file(&path);
    })
}

/// Bound on how long one request may wait for the executor (a `drain --wait` waits for the
/// workers' grace periods).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(600);

async fn serve(stream: UnixStream, ops: mpsc::UnboundedSender<Request>) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(64 * 1024));
    let reply = match reader.read_line(&mut line).await {
        Ok(_) => match serde_json::from_str::<Operation>(line.trim()) {
            Ok(op) => {
                let name = op.name();
                debug!(op = name, "control request");
                let reply = submit(&ops, op, ANSWER_TIMEOUT).await;
                let result = if reply.ok { "ok" } else { "error" };
                metrics()
                    .control_requests
                    .get_or_create(&vec![("op", name.to_owned()), ("result", result.into())])
                    .inc();
                reply
            }
            Err(e) => {
                metrics()
                    .control_requests
                    .get_or_create(&vec![("op", "invalid".to_owned()), ("result", "error".into())])
                    .inc();
                Reply::err(format!("invalid request: {e}"))
            }
        },
        Err(e) => Reply::err(format!("cannot read the request: {e}")),
    };
    let mut out = serde_json::to_vec(&reply).expect("a reply serializes");
    out.push(b'\n');
    let _ = write.write_all(&out).await;
}

/// The client side (`gale worker …`, `gale drain`): one request, one reply.
pub(crate) async fn request(path: &Path, op: &Operation) -> std::io::Result<Reply> {
    let mut stream = UnixStream::connect(path).await?;
    let mut line = serde_json::to_vec(op).expect("an operation serializes");
    line.push(b'\n');
    stream.write_all(&line).await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    serde_json::from_str(answer.trim())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad reply `{answer}`: {e}")))
}
