//! The membership task's [`SessionLog`], kept in LocalState: the newest session id in
//! `last-session-id`, older ones in `earlier-session-ids`, and the identity of the agent
//! process that opened them in `session-owner`, written together in one version.
//!
//! Why keep several: after a session expires we record the new session before the server has
//! necessarily removed the old session's node; if we crashed right then, the next start must
//! still recognise that node as ours. Why the process identity: a copied local dir carries
//! these ids too, and only a provably dead owner's registration may be replaced at once
//! (see `cluster::ownership`).

use std::sync::{Arc, Mutex};

use crate::cluster::membership::SessionLog;
use crate::cluster::ownership::KnownSessions;
use crate::local_state::{EarlierSessionIds, LastSessionId, LocalState, SessionOwner, StateError};
use crate::proc_identity::{Liveness, ProcessIdentity};

const EARLIER_KEPT: usize = 15;

#[derive(Debug)]
pub(crate) struct StateSessionLog {
    state: Arc<Mutex<LocalState>>,
    me: ProcessIdentity,
}

impl StateSessionLog {
    pub(crate) fn new(state: Arc<Mutex<LocalState>>, me: ProcessIdentity) -> StateSessionLog {
        StateSessionLog { state, me }
    }
}

/// What earlier agent processes recorded; read at start, before this process records anything.
pub(crate) fn previous_sessions(state: &LocalState) -> Result<KnownSessions, StateError> {
    let mut recorded: Vec<i64> = state.get::<LastSessionId>()?.into_iter().collect();
    recorded.extend(state.get::<EarlierSessionIds>()?.unwrap_or_default());
    let recorded_owner = match state.get::<SessionOwner>()? {
        Some(owner) => owner.liveness(),
        // Written by nothing yet, or by a build that did not record owners: unprovable.
        None => Liveness::Unknown,
    };
    Ok(KnownSessions { this_process: Vec::new(), recorded, recorded_owner })
}

impl SessionLog for StateSessionLog {
    fn record(&self, session: i64) -> Result<(), String> {
        let mut state = self.state.lock().unwrap();
        let last = state.get::<LastSessionId>().map_err(|e| e.to_string())?;
        let mut earlier = state.get::<EarlierSessionIds>().map_err(|e| e.to_string())?.unwrap_or_default();
        if let Some(last) = last.filter(|l| *l != session) {
            earlier.retain(|s| *s != last && *s != session);
            earlier.insert(0, last);
            earlier.truncate(EARLIER_KEPT);
        }
        state
            .update(|batch| {
                batch.put::<LastSessionId>(&session)?;
                batch.put::<EarlierSessionIds>(&earlier)?;
                batch.put::<SessionOwner>(&self.me)
            })
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_newest_first_and_reports_a_dead_owner_as_dead() {
        let tmp = tempfile::tempdir().unwrap();
        let state = Arc::new(Mutex::new(LocalState::open(tmp.path()).unwrap()));
        let me = ProcessIdentity::current().unwrap();
        let log = StateSessionLog::new(state.clone(), me.clone());
        for s in 1..=20 {
            log.record(s).unwrap();
        }
        log.record(20).unwrap();
        let known = previous_sessions(&state.lock().unwrap()).unwrap();
        assert_eq!(known.recorded, (5..=20).rev().collect::<Vec<_>>(), "newest first, 1 + {EARLIER_KEPT} kept");
        assert_eq!(known.recorded_owner, Liveness::Alive, "recorded by this (running) process");

        // The same store as seen by a later agent after this one died.
        let dead = ProcessIdentity { start_ticks: me.start_ticks + 1, ..me };
        state.lock().unwrap().put::<SessionOwner>(&dead).unwrap();
        assert_eq!(previous_sessions(&state.lock().unwrap()).unwrap().recorded_owner, Liveness::Dead);
    }
}
