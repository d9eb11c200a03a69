//! The payloads this agent read and cannot use (SPEC §3: "a payload that does not parse, or
//! has an unknown schema, is reported (log + status + metric)"): one set, fed by the three
//! readers (assignment sync, blob sync, action sync), read by `/status` (and so `gale status`)
//! and by the `gale_bad_payloads` metric.
//!
//! Each reader owns its own kind: after every pass it hands over the complete list of its bad
//! payloads ([`BadPayloads::replace`]), so an entry disappears exactly when its reader no
//! longer finds it bad (fixed, deleted, or no longer used by this host). The readers log
//! their own findings, with their own context (what is kept instead); this set is what stays
//! visible until the payload is fixed.
//!
//! Invariant: `since_ms` is when the node was first found bad, kept as long as it stays bad
//! (rewriting it with another mistake does not reset it), so an operator sees for how long
//! it has been unusable.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;

use crate::admin::{BadPayload, PayloadKind};
use crate::model::unix_ms;

/// A bad payload as a reader reports it: (path, reason).
pub(crate) type Finding = (String, String);

/// The set, shared by its three writers (all on the `sync-supervisor` queue) and its readers.
#[derive(Debug, Clone)]
pub(crate) struct BadPayloads {
    tx: Arc<watch::Sender<BTreeMap<String, BadPayload>>>,
}

impl Default for BadPayloads {
    fn default() -> BadPayloads {
        BadPayloads { tx: Arc::new(watch::channel(BTreeMap::new()).0) }
    }
}

impl BadPayloads {
    /// For `/status`: every bad payload, by path.
    pub(crate) fn subscribe(&self) -> watch::Receiver<BTreeMap<String, BadPayload>> {
        self.tx.subscribe()
    }

    /// The bad payloads of `kind` are now exactly `findings` (path, reason); the others kinds'
    /// are left alone. Only a real change notifies the readers.
    pub(crate) fn replace(&self, kind: PayloadKind, findings: impl IntoIterator<Item = Finding>) {
        self.replace_at(kind, findings, unix_ms());
    }

    fn replace_at(&self, kind: PayloadKind, findings: impl IntoIterator<Item = Finding>, now_ms: u64) {
        let findings: BTreeMap<String, String> = findings.into_iter().collect();
        self.tx.send_if_modified(|set| {
            let before = set.clone();
            set.retain(|path, bad| bad.kind != kind || findings.contains_key(path));
            for (path, reason) in findings {
                let reason = without_path(&path, &reason);
                let since_ms = set.get(&path).map_or(now_ms, |b| b.since_ms);
                let name = path.rsplit('/').next().unwrap_or_default().to_owned();
                set.insert(path.clone(), BadPayload { kind, path, name, reason, since_ms });
            }
            *set != before
        });
    }

    /// Since when `path` is reported bad, if it is.
    pub(crate) fn since_ms(&self, path: &str) -> Option<u64> {
        self.tx.borrow().get(path).map(|b| b.since_ms)
    }

    /// Whether `path` is reported with this `reason` already (so a reader logs it once).
    pub(crate) fn is_reported(&self, path: &str, reason: &str) -> bool {
        self.tx.borrow().get(path).is_some_and(|b| b.reason == without_path(path, reason))
    }
}

/// The payload errors start with the node's path (`"<path>: …"`); the status has it apart.
fn without_path(path: &str, reason: &str) -> String {
    reason.strip_prefix(path).and_then(|r| r.strip_prefix(": ")).unwrap_or(reason).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(path: &str, reason: &str) -> Finding {
        (path.to_owned(), reason.to_owned())
    }

    #[test]
    fn each_kind_is_replaced_whole_and_since_is_kept_while_a_node_stays_bad() {
        let bad = BadPayloads::default();
        let rx = bad.subscribe();
        bad.replace_at(PayloadKind::Assignment, [finding("/g/assignments/t", "/g/assignments/t: not json")], 10);
        bad.replace_at(PayloadKind::Blob, [finding("/g/blobstore/k", "unknown schema 2")], 20);
        let set = rx.borrow().clone();
        let t = &set["/g/assignments/t"];
        assert_eq!(
            (t.kind, t.name.as_str(), t.reason.as_str(), t.since_ms),
            (PayloadKind::Assignment, "t", "not json", 10)
        );
        assert_eq!(set["/g/blobstore/k"].since_ms, 20);

        // Still bad, another mistake: the same since. The blob's entry is not the assignments'.
        bad.replace_at(PayloadKind::Assignment, [finding("/g/assignments/t", "topology t: launch.command[0]: x")], 30);
        let set = rx.borrow().clone();
        assert_eq!(set["/g/assignments/t"].since_ms, 10);
        assert_eq!(set["/g/assignments/t"].reason, "topology t: launch.command[0]: x");
        assert!(bad.is_reported("/g/assignments/t", "topology t: launch.command[0]: x"));
        assert!(!bad.is_reported("/g/assignments/t", "not json"));

        // Fixed: gone; found bad again later: a new since.
        bad.replace_at(PayloadKind::Assignment, [], 40);
        assert_eq!(rx.borrow().keys().collect::<Vec<_>>(), ["/g/blobstore/k"]);
        bad.replace_at(PayloadKind::Assignment, [finding("/g/assignments/t", "not json")], 50);
        assert_eq!(rx.borrow()["/g/assignments/t"].since_ms, 50);
    }

    #[test]
    fn only_a_change_notifies() {
        let bad = BadPayloads::default();
        let mut rx = bad.subscribe();
        bad.replace_at(PayloadKind::Action, [finding("/g/actions/s/a-1", "not json")], 1);
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        bad.replace_at(PayloadKind::Action, [finding("/g/actions/s/a-1", "not json")], 2);
        bad.replace_at(PayloadKind::Blob, [], 3);
        assert!(!rx.has_changed().unwrap(), "the same findings again change nothing");
    }
}
