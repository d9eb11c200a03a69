//! The membership task's [`SessionLog`], kept in LocalState: the newest session id in
//! `last-session-id`, up to three older ones in `earlier-session-ids`, written together in
//! one version.
//!
//! Why more than one: after a session expires we record the new session before the server
//! has necessarily removed the old session's node; if we crashed right then, the next start
//! must still recognise that node as ours.

use std::sync::{Arc, Mutex};

use crate::cluster::membership::SessionLog;
use crate::local_state::{EarlierSessionIds, LastSessionId, LocalState};

const EARLIER_KEPT: usize = 3;

#[derive(Debug)]
pub struct StateSessionLog {
    state: Arc<Mutex<LocalState>>,
}

impl StateSessionLog {
    pub fn new(state: Arc<Mutex<LocalState>>) -> StateSessionLog {
        StateSessionLog { state }
    }
}

impl SessionLog for StateSessionLog {
    fn record(&self, session: i64) -> Result<Vec<i64>, String> {
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
                batch.put::<EarlierSessionIds>(&earlier)
            })
            .map_err(|e| e.to_string())?;
        let mut all = vec![session];
        all.extend(earlier);
        Ok(all)
    }
}
