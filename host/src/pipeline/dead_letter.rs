//! Dead letters: events the enrich lane could not use, with where they came
//! from and why, kept byte for byte in `<topic>.dlq` (or the embedded
//! store's dead-letter table) before the offsets move past them.

use async_trait::async_trait;

use crate::plugin::ErrorKind;
use crate::store::StoreResult;

/// Why an event could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadReason {
    /// The event broke the wire format (contract §3).
    BadEvent { detail: String },
    /// A plugin failed on this event.
    PluginError {
        plugin: String,
        plugin_version: String,
        kind: ErrorKind,
        detail: String,
    },
}

impl DeadReason {
    /// `bad-event` or `plugin-error`: the `pulsehub-reason` header.
    pub fn code(&self) -> &'static str {
        match self {
            DeadReason::BadEvent { .. } => "bad-event",
            DeadReason::PluginError { .. } => "plugin-error",
        }
    }

    pub fn detail(&self) -> &str {
        match self {
            DeadReason::BadEvent { detail } | DeadReason::PluginError { detail, .. } => detail,
        }
    }
}

/// A bad event with where it came from and why it was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    /// The original message value, byte for byte.
    pub payload: Vec<u8>,
    /// The event id when the event could be decoded.
    pub event_id: Option<String>,
    pub reason: DeadReason,
}

/// Where dead letters go: the `<topic>.dlq` topic, or the embedded store.
/// An error is infrastructure trouble: the lane retries and moves no offset.
#[async_trait]
pub trait DeadLetterSink: Send + Sync + 'static {
    /// Returns once every letter is durably stored (acknowledged).
    async fn send(&self, letters: &[DeadLetter]) -> StoreResult<()>;
}
