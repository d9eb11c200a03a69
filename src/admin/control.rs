//! The control socket `<local_dir>/control.sock` (mode 0600): the way to CHANGE something on a
//! running agent from this host (`gale worker restart`, `gale drain`, …). Only root and the
//! agent's user can connect; the HTTP endpoint stays read only.
//!
//! Protocol: one JSON [`Operation`] per connection, one line; one JSON [`Reply`] line back.
//! The same operations arrive as ZooKeeper Actions (SPEC §3.4), hence their home in
//! [`crate::model::action`]. Each is handed to its owner
//! (the `sync-processes` executor) through a channel and answered from there, so no state is
//! touched from the socket's task.
//!
//! A Unix socket address holds at most 107 bytes of path, and `local_dir` may be longer. The
//! socket still lives at `<local_dir>/control.sock` (SPEC §5): a path that does not fit is
//! reached through the directory's file descriptor, `/proc/self/fd/<fd>/<name>`
//! ([`short_path`]), on both sides.

use std::os::fd::{AsRawFd, OwnedFd};
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
    let listener = UnixListener::bind(short_path(&temp)?.path())?;
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

/// The longest path a Unix socket address holds: `sun_path` is 108 bytes, its NUL included.
const SUN_PATH_MAX: usize = 107;

/// A path that `bind` and `connect` accept for a socket file, and what keeps it valid.
pub(crate) struct ShortPath {
    path: PathBuf,
    /// The socket's directory, when `path` goes through `/proc/self/fd`: open until the
    /// `bind` or `connect` is done (the socket then holds the file itself, not this path).
    _dir: Option<OwnedFd>,
}

impl ShortPath {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// `path` itself when it fits a socket address; else the same file through its directory's
/// descriptor, `/proc/self/fd/<fd>/<name>` (Linux resolves it as the directory itself, for
/// `bind` as for `connect`), whatever the length of the directory's path. The descriptor is
/// `O_PATH`: only search permission on the directory is needed, as for the path itself.
pub(crate) fn short_path(path: &Path) -> std::io::Result<ShortPath> {
    use std::os::unix::ffi::OsStrExt;
    if path.as_os_str().as_bytes().len() <= SUN_PATH_MAX {
        return Ok(ShortPath { path: path.to_owned(), _dir: None });
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{} names no file", path.display())));
    };
    use nix::fcntl::OFlag;
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let dir = nix::fcntl::open(dir, flags, nix::sys::stat::Mode::empty())?;
    let short = Path::new("/proc/self/fd").join(dir.as_raw_fd().to_string()).join(name);
    Ok(ShortPath { path: short, _dir: Some(dir) })
}

/// Bound on how long one request may wait for the executor (a `drain --wait` waits for the
/// workers' grace periods; `gale worker diag` for its run, at most
/// `diagnostics.timeout_secs` ≤ 600 s plus the kill grace and the copy of `{out}`).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(660);

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
    let mut stream = UnixStream::connect(short_path(path)?.path()).await?;
    let mut line = serde_json::to_vec(op).expect("an operation serializes");
    line.push(b'\n');
    stream.write_all(&line).await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    serde_json::from_str(answer.trim())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad reply `{answer}`: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    /// A directory whose path is longer than any socket address.
    fn long_dir(tmp: &tempfile::TempDir) -> PathBuf {
        let dir = tmp.path().join("d".repeat(60)).join("e".repeat(60));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(dir.join("control.sock").as_os_str().len() > 108);
        dir
    }

    #[test]
    fn a_path_that_fits_is_used_as_it_is() {
        let path = Path::new("/var/lib/gale/control.sock");
        assert_eq!(short_path(path).unwrap().path(), path);
        let edge = PathBuf::from(format!("/{}", "a".repeat(SUN_PATH_MAX - 1)));
        assert_eq!(short_path(&edge).unwrap().path(), edge);
    }

    #[test]
    fn a_long_path_goes_through_the_directory_descriptor_for_bind_and_connect() {
        let tmp = tempfile::tempdir().unwrap();
        let path = long_dir(&tmp).join("control.sock");
        // What `bind` says without the helper: the failure this helper exists for.
        assert!(std::os::unix::net::UnixListener::bind(&path).is_err());

        let short = short_path(&path).unwrap();
        let text = short.path().as_os_str().as_bytes();
        assert!(text.starts_with(b"/proc/self/fd/") && text.ends_with(b"/control.sock"), "{:?}", short.path());
        assert!(text.len() <= SUN_PATH_MAX);
        let listener = std::os::unix::net::UnixListener::bind(short.path()).unwrap();
        drop(short);
        // The socket is the documented file, and a client reaches it by its own descriptor.
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::metadata(&path).unwrap().file_type().is_socket());
        let _client = std::os::unix::net::UnixStream::connect(short_path(&path).unwrap().path()).unwrap();
        listener.accept().unwrap();
    }

    #[test]
    fn a_missing_directory_is_an_error_not_a_panic() {
        let path = Path::new("/nonexistent").join("x".repeat(120)).join("control.sock");
        assert_eq!(short_path(&path).err().unwrap().kind(), std::io::ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn bind_and_request_work_under_a_long_local_dir_and_keep_the_socket_private() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let path = long_dir(&tmp).join("control.sock");
        std::fs::write(&path, b"stale").unwrap();
        let (ops, mut executor) = mpsc::unbounded_channel::<Request>();
        let (stopper, shutdown) = crate::shutdown::Stopper::new();
        let serving = tokio::spawn(bind(&path, ops, shutdown).unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        tokio::spawn(async move {
            while let Some((op, answer)) = executor.recv().await {
                let _ = answer.send(Reply::ok(format!("did {}", op.name())));
            }
        });
        let reply = request(&path, &Operation::Undrain).await.unwrap();
        assert_eq!(reply, Reply::ok("did undrain"));
        stopper.stop();
        serving.await.unwrap();
        assert!(!path.exists(), "removed at stop");
    }
}
