//! The `profile-updates` stream as a log kept where the profiles are: the
//! embedded mode's form of the stream (contract §3a), which the REST API
//! serves as server-sent events. Each message has a sequence number, from
//! 1, that increases with every message written and is never given twice;
//! the log keeps the newest messages and drops the oldest.

use async_trait::async_trait;
use tokio::sync::watch;

use crate::store::StoreResult;

/// The kept messages of the `profile-updates` stream, readable from any
/// position.
#[async_trait]
pub trait UpdateFeed: Send + Sync {
    /// Up to `limit` messages with sequence numbers above `after`, oldest
    /// first, and the bounds of the log, read at one instant.
    async fn read(&self, after: u64, limit: usize) -> StoreResult<UpdatePage>;

    /// The sequence number of the newest message written (0 before the
    /// first), which changes after every write: a reader that has read up
    /// to it waits for it to change.
    fn newest(&self) -> watch::Receiver<u64>;
}

/// Part of the log, with its bounds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpdatePage {
    /// The sequence number of the oldest message kept; `newest + 1` when
    /// none is.
    pub oldest: u64,
    /// The sequence number of the newest message written (0 before the
    /// first).
    pub newest: u64,
    pub messages: Vec<StoredUpdate>,
}

/// One message of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredUpdate {
    pub sequence: u64,
    /// The key the message has on the topic: the profile's id.
    pub profile_id: String,
    /// The message, JSON, exactly as published to the topic.
    pub message: String,
}
