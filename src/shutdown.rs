//! The stop signal of the agent's long-running tasks (mini-redis's `Shutdown`).
//!
//! A [`Stopper`] is held by whoever decides when a group of tasks stops (the supervisor's
//! stop sequence); each task holds a [`Shutdown`] and selects on [`Shutdown::wait`] beside
//! its work. Two groups exist: the timers, watches and servers (stopped first), and the
//! membership task (stopped last, after the queues finished, so the session closes once
//! nothing needs it).
//!
//! A dropped `Stopper` counts as a stop: a task never outlives the code that owned its stop
//! signal by accident.

use tokio::sync::watch;

/// Fires the stop of every [`Shutdown`] made from it.
#[derive(Debug)]
pub(crate) struct Stopper(watch::Sender<bool>);

/// One task's view of the stop signal; clone it for each task.
#[derive(Debug, Clone)]
pub(crate) struct Shutdown(watch::Receiver<bool>);

impl Stopper {
    /// A stopper and the first receiver of its signal.
    pub(crate) fn new() -> (Stopper, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (Stopper(tx), Shutdown(rx))
    }

    /// Tells every task holding a [`Shutdown`] of this stopper to stop.
    pub(crate) fn stop(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// Completes once the stop was asked for (at once if it already was, or if the
    /// [`Stopper`] is gone). Cancel-safe: use it as a `select!` branch.
    pub(crate) async fn wait(&mut self) {
        let _ = self.0.wait_for(|stopped| *stopped).await;
    }

    /// Whether the stop was asked for (or the [`Stopper`] is gone). Tests only: the daemon
    /// waits with [`wait`](Self::wait).
    #[cfg(test)]
    pub(crate) fn is_stopped(&self) -> bool {
        *self.0.borrow() || self.0.has_changed().is_err()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_returns_once_stopped_and_for_every_clone() {
        let (stopper, mut a) = Stopper::new();
        let mut b = a.clone();
        assert!(!a.is_stopped());
        let waiting = tokio::spawn(async move { b.wait().await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        stopper.stop();
        waiting.await.unwrap();
        a.wait().await;
        assert!(a.is_stopped());
    }

    #[tokio::test]
    async fn a_dropped_stopper_is_a_stop() {
        let (stopper, mut shutdown) = Stopper::new();
        drop(stopper);
        assert!(shutdown.is_stopped());
        shutdown.wait().await;
    }
}
