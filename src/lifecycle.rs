//! Daemon lifecycle (SPEC §6): states, exit codes, the `clean-shutdown` marker's meaning,
//! and systemd notification.
//!
//! ```text
//! starting --(clean-shutdown marker present)--> running
//! starting --(marker absent: the last agent died)--> recovering --(adopted/swept)--> running
//! running <--(drain / undrain)--> draining
//! running | draining | recovering --(SIGTERM/SIGINT)--> stopping --> exit 0
//! ```
//! The agent only reports `running` once it is registered in ZooKeeper and the first sync
//! ran; that is also when systemd gets `READY=1`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The agent's lifecycle state, as reported in logs, status, SupervisorInfo and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    Starting,
    Recovering,
    Running,
    Draining,
    Stopping,
}

impl Lifecycle {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Starting => "starting",
            Lifecycle::Recovering => "recovering",
            Lifecycle::Running => "running",
            Lifecycle::Draining => "draining",
            Lifecycle::Stopping => "stopping",
        }
    }
}

impl fmt::Display for Lifecycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Process exit codes (SPEC §6). `main` maps every error to one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    Clean = 0,
    Failure = 1,
    Usage = 2,
    HealthCheck = 3,
    IdentityConflict = 4,
    Config = 78,
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(code: ExitCode) -> Self {
        std::process::ExitCode::from(code as u8)
    }
}

/// systemd notification (`Type=notify`). Every call is a no-op when `NOTIFY_SOCKET` is unset
/// (sd-notify checks), so the daemon behaves the same outside systemd.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Systemd;

impl Systemd {
    pub(crate) fn ready(self, status: &str) {
        self.notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(status)]);
    }

    pub(crate) fn status(self, status: &str) {
        self.notify(&[sd_notify::NotifyState::Status(status)]);
    }

    /// Around a config reload: `RELOADING=1` (with `MONOTONIC_USEC`, which `Type=notify-reload`
    /// requires), then [`Systemd::ready`] once the new config is in force or rejected.
    pub(crate) fn reloading(self) {
        let mut states = vec![sd_notify::NotifyState::Reloading];
        if let Ok(now) = sd_notify::NotifyState::monotonic_usec_now() {
            states.push(now);
        }
        self.notify(&states);
    }

    pub(crate) fn stopping(self) {
        self.notify(&[sd_notify::NotifyState::Stopping]);
    }

    pub(crate) fn watchdog(self) {
        self.notify(&[sd_notify::NotifyState::Watchdog]);
    }

    /// Before `READY=1`: `EXTEND_TIMEOUT_USEC`, asking systemd to wait `by` more for the start.
    /// The start waits for ZooKeeper, which may be unreachable for longer than any
    /// `TimeoutStartSec`; without this, systemd 252 kills a live agent at the start timeout and
    /// restarts it in a loop (found by the systemd VM stage, `scripts/vm/systemd.sh`). Sent
    /// from the main loop's watchdog tick, so a wedged start still times out.
    pub(crate) fn extend_start(self, by: std::time::Duration) {
        let usec = u32::try_from(by.as_micros()).unwrap_or(u32::MAX);
        self.notify(&[sd_notify::NotifyState::ExtendTimeoutUsec(usec)]);
    }

    /// Half of `WatchdogSec` when systemd asked for watchdog pings, as sd_watchdog_enabled(3)
    /// recommends.
    pub(crate) fn watchdog_interval(self) -> Option<std::time::Duration> {
        sd_notify::watchdog_enabled().filter(|d| !d.is_zero()).map(|d| d / 2)
    }

    fn notify(self, states: &[sd_notify::NotifyState<'_>]) {
        if let Err(err) = sd_notify::notify(states) {
            tracing::warn!(error = %err, "could not notify systemd");
        }
    }
}
