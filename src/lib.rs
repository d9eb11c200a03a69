//! gale: a Storm-style node supervisor agent.
//!
//! One daemon per worker host. It keeps a crash-safe local state (its identity, what it
//! runs), registers and heartbeats in ZooKeeper under an ephemeral node, runs its periodic
//! and event-driven work on two serial coalescing queues, and stops cleanly without ever
//! touching the workers it supervises. The external contract (CLI, config, ZooKeeper layout,
//! local dir, exit codes) is SPEC.md; ARCHITECTURE.md maps the code.
//!
//! Entry point for the daemon: [`run`]. The binary (`src/main.rs`) only parses the command
//! line and hands it to [`cli::main`]; `gale run` (`cli/daemon.rs`) loads the config, sets up
//! logging and the runtime, calls [`run`] and maps its error to an exit code.

pub mod admin;
pub mod blob;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod event;
pub mod health;
pub mod ident;
pub mod isolation;
pub mod lifecycle;
pub mod local_dir;
pub mod local_state;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod proc_identity;
#[cfg(test)]
mod proptest_support;
pub mod shutdown;
pub mod slot;
pub mod supervisor;
mod sys;
pub mod worker;

pub use supervisor::{RunError, run};
