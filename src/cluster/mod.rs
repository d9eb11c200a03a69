//! Everything gale exchanges with ZooKeeper.
//!
//! - [`model`]: the JSON payloads of SPEC §3 (`schema: 1`), decoded leniently (unknown fields
//!   ignored) and checked strictly (schema, identifiers).
//! - [`zk`]: the ONLY code that talks to the `zookeeper-client` crate: connecting with backoff,
//!   error classification, node operations used by the agent.
//! - [`membership`]: the task that owns the session: registration of the ephemeral
//!   `/supervisors/<id>` node, the heartbeat, reconnects and session expiry.
//! - [`ownership`]: the pure decision of whose an existing registration node is.
//!
//! Architecture Invariant: one task ([`membership::Membership`]) owns the ZooKeeper session.
//! Other code asks it for things or reads what it publishes; nobody else holds a client.

pub mod assignment;
pub mod blob_meta;
pub mod membership;
pub mod model;
pub mod ownership;
pub mod zk;
