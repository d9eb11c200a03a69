//! Shared by the property tests inside the crate (`local_state/prop_tests.rs`, the Action
//! decoder's in `supervisor/actions.rs`); `tests/decoders_prop.rs` has the same two helpers.

use std::sync::mpsc;
use std::time::Duration;

use proptest::test_runner::Config;

/// How long one call under test may take: far above what the largest generated input needs,
/// even on a loaded machine, so a call past it is a hang.
pub(crate) const LIMIT: Duration = Duration::from_secs(10);

/// 256 cases per test unless `PROPTEST_CASES` says otherwise. No failure files: a failure is
/// reported with its minimal input and becomes a named unit test beside the code it broke.
pub(crate) fn cases() -> Config {
    let mut config = Config { failure_persistence: None, ..Config::default() };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 256;
    }
    config
}

/// Runs `f` on a thread of its own and returns what it returns; fails the case if `f` panics
/// or has not returned within [`LIMIT`] (the stuck thread is left behind: the test fails anyway).
pub(crate) fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(LIMIT) {
        Ok(value) => {
            thread.join().unwrap();
            value
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what} did not return within {LIMIT:?}"),
        Err(mpsc::RecvTimeoutError::Disconnected) => match thread.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the thread sends before it ends"),
        },
    }
}
