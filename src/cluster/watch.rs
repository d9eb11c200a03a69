//! A persistent recursive watch on a ZooKeeper directory that survives the session.
//!
//! zookeeper-client 0.11.2 does not re-send persistent watches after a reconnect (only
//! one-shot ones; see `docs/faults.md`), and a persistent watch misses the events of a
//! disconnection (ZOOKEEPER-4698). [`watch_dir`] hides both: it sets the watch again after
//! every reconnect and in every new session, and says "events may have been missed" (`None`)
//! whenever that can be so, which its users answer with a full read.

use tokio::sync::watch;

use super::zk::ZkClient;
use crate::shutdown::Shutdown;

/// Keeps a persistent recursive watch on `dir` (`<root>/assignments`, `<root>/blobstore`,
/// `<root>/actions/<id>`) for every session and calls `on_change` with the path of each node
/// that changed, and with `None` when events may have been missed: once per new watch (the
/// time before it was set), and on each change of the connection (a persistent watch misses
/// the events of a disconnection, ZOOKEEPER-4698). Ends when `stop` fires, wherever it is waiting.
pub(crate) async fn watch_dir(
    dir: String,
    mut client: watch::Receiver<Option<ZkClient>>,
    mut stop: Shutdown,
    on_change: impl Fn(Option<&str>) + Send + 'static,
) {
    loop {
        // Wait for a session; hold the client only while setting the watch up.
        let setup = async {
            let current = client.wait_for(Option::is_some).await.ok()?.clone()?;
            current.ensure_path(&dir).await.ok()?;
            current.watch_tree(&dir).await.ok()
        };
        let mut watch = tokio::select! {
            w = setup => w,
            () = stop.wait() => return,
        };
        let Some(tree) = watch.as_mut() else {
            // Setting the watch failed (connection loss); the periodic sync covers the gap.
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                () = stop.wait() => return,
            }
        };
        on_change(None);
        let rearm = loop {
            tokio::select! {
                event = tree.changed() => match event {
                    // Reconnected: the server lost the persistent watch (the client does not set
                    // it again, see `TreeWatch::reconnected`): set it again, then a full pass.
                    Some(path) if path.is_empty() && tree.reconnected() => break true,
                    // Disconnected: events may be missed until the reconnect.
                    Some(path) if path.is_empty() => on_change(None),
                    Some(path) => on_change(Some(&path)),
                    None => break false, // session over; wait for the next one
                },
                () = stop.wait() => return,
            }
        };
        if rearm {
            continue;
        }
        // Do not spin on the ended session's client: wait until it is replaced or cleared.
        tokio::select! {
            _ = client.changed() => {}
            () = stop.wait() => return,
        }
    }
}
