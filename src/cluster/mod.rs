//! Everything gale does through the ZooKeeper client. The payloads themselves (what is
//! written and read, decoded and checked) are plain data in [`crate::model`].
//!
//! - [`zk`]: the ONLY code that talks to the `zookeeper-client` crate: connecting with backoff,
//!   error classification, node operations used by the agent.
//! - [`membership`]: the task that owns the session: registration of the ephemeral
//!   `/supervisors/<id>` node, the heartbeat, reconnects and session expiry.
//! - [`ownership`]: the pure decision of whose an existing registration node is.
//! - [`watch`]: a persistent watch on a directory, set again after every reconnect and session.
//!
//! Architecture Invariant: one task ([`membership::Membership`]) owns the ZooKeeper session.
//! Other code asks it for things or reads what it publishes (the session state, and a clone
//! of its client while registered, which the sync jobs use); nobody else opens a session.

pub(crate) mod membership;
pub(crate) mod ownership;
pub(crate) mod watch;
pub(crate) mod zk;
