//! Where events come from: a partitioned log (a Kafka topic, or the embedded
//! inbox), read in batches and handed to lanes.
//!
//! A [`Source`] runs on its own thread and pushes [`Batch`]es into [`Lanes`].
//! Every partition maps to one lane, so a partition's records stay in order
//! and its offsets are committed by one lane only; lanes run in parallel.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// One message of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

/// Records of one topic for one lane, in offset order per partition.
#[derive(Debug, Clone)]
pub struct Batch {
    pub topic: Arc<str>,
    pub records: Vec<Record>,
}

/// Size and time bounds of a batch: a batch is handed over when it holds
/// `max_events` records, records of `max_users` distinct keys (the Kafka
/// source; keys are user ids), or `max_bytes` of keys and payloads, or its
/// first record has waited `max_wait`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    pub max_events: usize,
    pub max_users: usize,
    pub max_bytes: usize,
    pub max_wait: Duration,
}

/// The lanes' inboxes. Sending blocks while a lane is busy (backpressure).
#[derive(Debug, Clone)]
pub struct Lanes {
    senders: Vec<SyncSender<Batch>>,
}

/// A lane's side: receives its batches.
pub type LaneReceiver = Receiver<Batch>;

/// The channel closed: the pipeline is shutting down.
#[derive(Debug, thiserror::Error)]
#[error("the pipeline has stopped")]
pub struct Closed;

impl Lanes {
    /// `count` lanes, each buffering up to `depth` batches.
    pub fn new(count: usize, depth: usize) -> (Lanes, Vec<LaneReceiver>) {
        let (senders, receivers) = (0..count.max(1)).map(|_| sync_channel(depth)).unzip();
        (Lanes { senders }, receivers)
    }

    pub fn count(&self) -> usize {
        self.senders.len()
    }

    /// The lane that owns `partition`.
    pub fn lane_of(&self, partition: i32) -> usize {
        partition.unsigned_abs() as usize % self.senders.len()
    }

    /// Hands `batch` to `lane`, waiting while the lane is full.
    pub fn send(&self, lane: usize, batch: Batch) -> Result<(), Closed> {
        self.senders[lane].send(batch).map_err(|_| Closed)
    }
}

/// A partitioned log read by one consumer group.
pub trait Source: Send + Sync + 'static {
    /// The topic (or log name) offsets are stored under.
    fn topic(&self) -> &str;

    /// Reads until `stop` is cancelled, sending batches within `limits` to
    /// `lanes` (every record of a batch belongs to partitions of that lane).
    /// Blocking: the caller gives it a thread. Returns an error only for a
    /// failure it cannot wait out.
    fn run(
        &self,
        lanes: &Lanes,
        limits: BatchLimits,
        stop: &CancellationToken,
    ) -> anyhow::Result<()>;

    /// Called once a lane has durably committed a batch: `next` is the next
    /// offset to read per partition. Kafka commits it to the group (so lag is
    /// visible); the group's truth stays in the store.
    fn committed(&self, _offsets: &[(i32, i64)]) {}

    /// How far this consumer is behind: for each partition it reads now,
    /// the records between the last one committed and the end of the
    /// partition. Called every few seconds from a blocking thread, while
    /// [`Source::run`] runs on its own; it may ask the broker.
    fn lag(&self) -> anyhow::Result<Vec<(i32, i64)>>;
}
