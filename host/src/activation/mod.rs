//! Activation: what leaves PulseHub when profiles change.
//!
//! - [`update`]: the message of the `profile-updates` stream, one per
//!   committed profile change, written by the commit to an outbox in the
//!   same transaction as the change.
//! - [`handoff`]: the messages a process committed, kept in memory for its
//!   relay, so the relay reads them from the outbox only when it must.
//! - [`relay`]: publishes the outbox to the `profile-updates` topic, in
//!   order, and deletes what the broker acknowledged.
//! - [`destination`]: webhooks that receive chosen messages of the stream,
//!   signed, batched and retried.
//! - [`feed`]: the embedded mode's form of the stream, a bounded log beside
//!   the profiles that the REST API serves as server-sent events.

pub mod destination;
pub mod feed;
pub mod handoff;
pub mod relay;
pub mod update;
