//! Whose is an existing `/supervisors/<id>` node? A pure decision, so every case is a table row.
//!
//! SPEC §3.1: a node owned by this agent's previous session may be replaced; one owned by any
//! other live session means another process uses this id (exit 4). "Previous session" needs
//! care: a copied local dir (cloned disk) carries the session ids of the agent it was copied
//! from, which may be alive elsewhere. So a recorded session counts as ours to delete only when
//! its owner is provably dead (same boot, process gone) or it belongs to this very process;
//! otherwise we wait for the session to expire, as a dead agent's would, and refuse if it
//! does not.

use crate::proc_identity::Liveness;

/// The sessions this agent knows to be its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct KnownSessions {
    /// Sessions this process opened (certainly ours, certainly abandoned when not current).
    pub this_process: Vec<i64>,
    /// Sessions recorded in the local state by earlier agent processes.
    pub recorded: Vec<i64>,
    /// Whether the agent process that recorded them still runs.
    pub recorded_owner: Liveness,
}

/// What to do about an existing node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Owned by the current session: it is our registration already.
    Ours,
    /// A leftover of ours: delete it and register.
    Replace(&'static str),
    /// Possibly a leftover of ours, possibly a copy's live registration: wait for it to expire.
    WaitForExpiry,
    /// A persistent node at our path: an operator must remove it.
    Persistent,
    /// Another live session uses this id.
    Conflict,
}

pub(crate) fn decide(owner: i64, current: i64, known: &KnownSessions) -> Decision {
    if owner == current {
        Decision::Ours
    } else if owner == 0 {
        Decision::Persistent
    } else if known.this_process.contains(&owner) {
        Decision::Replace("left by an earlier session of this agent process")
    } else if known.recorded.contains(&owner) {
        match known.recorded_owner {
            Liveness::Dead => Decision::Replace("left by the previous agent on this host, which is no longer running"),
            // Alive: the recorded agent runs on this host right now (a copied local dir).
            Liveness::Alive => Decision::Conflict,
            Liveness::Unknown => Decision::WaitForExpiry,
        }
    } else {
        Decision::Conflict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_case() {
        let known =
            |recorded_owner| KnownSessions { this_process: vec![10, 11], recorded: vec![20, 21], recorded_owner };
        let rows: &[(i64, Liveness, Decision)] = &[
            (12, Liveness::Dead, Decision::Ours),
            (0, Liveness::Dead, Decision::Persistent),
            (10, Liveness::Unknown, Decision::Replace("left by an earlier session of this agent process")),
            (
                21,
                Liveness::Dead,
                Decision::Replace("left by the previous agent on this host, which is no longer running"),
            ),
            (20, Liveness::Unknown, Decision::WaitForExpiry),
            (20, Liveness::Alive, Decision::Conflict),
            (99, Liveness::Dead, Decision::Conflict),
            (99, Liveness::Unknown, Decision::Conflict),
        ];
        for (owner, liveness, want) in rows {
            assert_eq!(decide(*owner, 12, &known(*liveness)), *want, "owner {owner}, recorded owner {liveness:?}");
        }
    }
}
