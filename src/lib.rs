//! gale: a Storm-style node supervisor agent.
//!
//! One daemon per worker host. It keeps a crash-safe local state (its identity, what it
//! runs), registers and heartbeats in ZooKeeper under an ephemeral node, runs its periodic
//! and event-driven work on two serial coalescing queues, and stops cleanly without ever
//! touching the workers it supervises. The external contract (CLI, config, ZooKeeper layout,
//! local dir, exit codes) is SPEC.md; ARCHITECTURE.md maps the code.
//!
//! Entry point for the daemon: `run` (`supervisor/mod.rs`). The binary (`src/main.rs`) only
//! parses the command line and hands it to [`cli::main`]; `gale run` (`cli/daemon.rs`) loads
//! the config, sets up logging and the runtime, calls `run` and maps its error to an exit code.
//!
//! Visibility: everything is `pub(crate)` except what code outside this library uses, so that
//! the compiler reports dead code. That outside code is the binary ([`cli::Args`],
//! [`cli::main`]), the integration tests (the wire model and its decoders in [`model`], the
//! config parser, [`local_state::LocalState`] and its keys, the worker records in
//! [`supervisor::records`], [`proc_identity::ProcessIdentity`], [`worker::signal_group`]), the
//! `blobs` bench ([`blob::BlobCache`], [`blob::fetch`]) and the `state_writer` example. The
//! modules they reach into are `pub mod`; inside them, only those items are `pub`.

mod admin;
pub mod blob;
pub mod cli;
mod cluster;
pub mod config;
mod diagnostics;
mod event;
mod group_child;
mod health;
mod ident;
mod isolation;
pub mod lifecycle;
mod local_dir;
pub mod local_state;
mod logging;
mod metrics;
pub mod model;
pub mod proc_identity;
#[cfg(test)]
mod proptest_support;
mod shutdown;
mod slot;
pub mod supervisor;
mod sys;
pub mod worker;

pub(crate) use supervisor::{RunError, run};
