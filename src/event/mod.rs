//! The two event managers and the timers that feed them.
//!
//! gale runs its periodic and event-driven work on two serial queues, as Storm's supervisor
//! does: `sync-supervisor` (assignments, blobs, actions: everything read from ZooKeeper) and
//! `sync-processes` (watching and restarting workers). Each queue is one task that runs one
//! job at a time, so a job never races another job of the same queue, and each queue
//! coalesces: asking for a job that is already pending is a no-op (STYLE habit 3). A source
//! — a timer, a ZooKeeper watch, a worker exit — only needs a cloned [`QueueHandle`] and a
//! call to [`QueueHandle::request`], which is what makes adding one trivial.
//!
//! Architecture Invariant: the ZooKeeper heartbeat is not a job on either queue. It runs on
//! its own timer inside the membership task, so a slow sync never delays it.

mod queue;
mod timer;

#[cfg(test)]
pub(crate) use queue::spawn_queue;
pub(crate) use queue::{Job, JobError, JobHandler, QueueHandle, new_queue, run_queue};
pub(crate) use timer::{Phase, Ticks, spawn_timer_with};
