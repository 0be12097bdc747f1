//! The write side of the log: where `POST /api/v1/events` and `pulsehub run
//! --events` put events (the topic, or the embedded inbox), for a
//! [`Source`](super::source::Source) to read.

use async_trait::async_trait;

use crate::store::StoreResult;

/// One event for the ingest path: the message key (user id) and its JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingEvent {
    pub key: String,
    pub payload: Vec<u8>,
}

/// An error is infrastructure trouble: nothing was accepted for certain, and
/// the caller may send again.
#[async_trait]
pub trait EventPublisher: Send + Sync + 'static {
    /// Returns once every event is durably accepted, in order per key.
    async fn publish(&self, events: &[OutgoingEvent]) -> StoreResult<()>;
    async fn ping(&self) -> StoreResult<()>;
}
