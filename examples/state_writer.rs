//! Crash-test helper for the local state: writes `last-session-id` = n, n+1, … forever.
//!
//! Usage: `state_writer <dir>`. It continues from the value already stored (so values only grow
//! across restarts) and prints each n on stdout, flushed, only AFTER `put` returned: a printed n
//! is one the store has promised to keep. `tests/local_state.rs` SIGKILLs it at random moments.

use std::io::Write;
use std::path::PathBuf;

use gale::local_state::{LastSessionId, LocalState};

fn main() -> anyhow::Result<()> {
    let dir: PathBuf = std::env::args_os().nth(1).ok_or_else(|| anyhow::anyhow!("usage: state_writer <dir>"))?.into();
    let mut state = LocalState::open(&dir)?;
    let mut n = state.get::<LastSessionId>()?.unwrap_or(0);
    let mut stdout = std::io::stdout().lock();
    loop {
        n += 1;
        state.put::<LastSessionId>(&n)?;
        writeln!(stdout, "{n}")?;
        stdout.flush()?;
    }
}
