//! The Kafka [`Source`]: one consumer of a group, reading one topic into the
//! pipeline's lanes.
//!
//! The enrich role keeps its offsets in the profile store, committed in the
//! same transaction as the profile changes; so on every partition assignment
//! the consumer asks the store where to resume, and Kafka's own group offsets
//! are only written afterwards, for lag dashboards. The archive role has no
//! such store and resumes from the group's committed offsets.
//!
//! The consumer lag ([`Source::lag`]) is the broker's high watermark minus
//! the next offset the lanes committed (or the partition started at), asked
//! of the broker only when the pipeline asks, every few seconds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message as _;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use super::batches::Batcher;
use super::client_config;
use crate::pipeline::retry::{Backoff, Until, retry};
use crate::pipeline::source::{Batch, BatchLimits, Closed, Lanes, Record, Source};
use crate::store::ProfileStore;

/// Longest a poll blocks, so that `stop` and batch deadlines are honoured.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// How long [`Source::lag`] waits for each answer of the broker.
const LAG_TIMEOUT: Duration = Duration::from_secs(2);

/// One consumer of `group` on `topic`.
pub struct KafkaSource {
    /// Shared by the thread that runs the source and the lanes that call
    /// [`Source::committed`]; librdkafka clients are thread-safe.
    consumer: BaseConsumer<SourceContext>,
    topic: Arc<str>,
}

impl KafkaSource {
    /// A consumer of `group` subscribed to `topic`. With `offsets`, every
    /// assigned partition starts at the next offset `store.offsets(group,
    /// topic)` holds for it (read on the source's thread through `handle`);
    /// partitions the store does not know, and every partition without
    /// `offsets`, start at the group's committed offset, else the earliest.
    pub fn new(
        brokers: &str,
        topic: &str,
        group: &str,
        offsets: Option<(Arc<dyn ProfileStore>, Handle)>,
    ) -> anyhow::Result<KafkaSource> {
        let context = SourceContext {
            group: group.to_owned(),
            topic: topic.to_owned(),
            offsets,
            stop: Mutex::new(stopped()),
            moved: Mutex::new(Vec::new()),
            rebalanced: AtomicBool::new(false),
            positions: Mutex::new(HashMap::new()),
        };
        let consumer: BaseConsumer<SourceContext> = client_config(brokers)
            .set("group.id", group)
            // Offsets are the store's business; Kafka's are written by
            // `committed` once a batch is durable.
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            // Fetch in large chunks and keep plenty prefetched: the pipeline
            // wants tens of thousands of small events per second, and a fetch
            // never waits long for them to accumulate.
            .set("fetch.min.bytes", "65536")
            .set("fetch.wait.max.ms", "50")
            .set("queued.min.messages", "200000")
            .create_with_context(context)
            .with_context(|| format!("creating a Kafka consumer for {brokers}"))?;
        consumer
            .subscribe(&[topic])
            .with_context(|| format!("subscribing to Kafka topic {topic}"))?;
        Ok(KafkaSource {
            consumer,
            topic: Arc::from(topic),
        })
    }

    /// Sends a batch to `lane`; `Err` when the pipeline has stopped.
    fn hand_over(&self, lanes: &Lanes, lane: usize, records: Vec<Record>) -> Result<(), Closed> {
        let batch = Batch {
            topic: self.topic.clone(),
            records,
        };
        lanes.send(lane, batch)
    }
}

impl Source for KafkaSource {
    fn topic(&self) -> &str {
        &self.topic
    }

    fn run(
        &self,
        lanes: &Lanes,
        limits: BatchLimits,
        stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        let context = self.consumer.context();
        let _running = Running::start(context, stop);
        let mut batcher = Batcher::new(lanes.count(), limits);
        let mut errors = ErrorLog::default();
        while !stop.is_cancelled() {
            let timeout = batcher.next_due().map_or(POLL_INTERVAL, |due| {
                due.saturating_duration_since(Instant::now())
                    .min(POLL_INTERVAL)
            });
            match self.consumer.poll(timeout) {
                Some(Ok(message)) => {
                    let lane = lanes.lane_of(message.partition());
                    let record = Record {
                        partition: message.partition(),
                        offset: message.offset(),
                        key: message.key().map(<[u8]>::to_vec),
                        // No value is a bad event for the pipeline to report,
                        // not a message to drop here.
                        payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                    };
                    if let Some(full) = batcher.push(lane, record, Instant::now())
                        && self.hand_over(lanes, lane, full).is_err()
                    {
                        return Ok(());
                    }
                }
                Some(Err(error)) => errors.log(&self.topic, &error),
                None => {}
            }
            if let Some(moved) = context.take_moved() {
                // Kept, their records would be handed over twice.
                batcher.forget(&moved);
            }
            let now = Instant::now();
            while let Some((lane, due)) = batcher.take_due(now) {
                if self.hand_over(lanes, lane, due).is_err() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Commits asynchronously: these offsets only make the group's lag
    /// visible, the store holds the truth.
    fn committed(&self, offsets: &[(i32, i64)]) {
        self.consumer.context().note_positions(offsets);
        let mut list = TopicPartitionList::with_capacity(offsets.len());
        for &(partition, next) in offsets {
            if let Err(error) =
                list.add_partition_offset(&self.topic, partition, Offset::Offset(next))
            {
                tracing::debug!(topic = %self.topic, partition, "offset {next} not committed to the group: {error}");
                return;
            }
        }
        if let Err(error) = self.consumer.commit(&list, CommitMode::Async) {
            tracing::debug!(topic = %self.topic, "offsets not committed to the group: {error}");
        }
    }

    /// One watermark request per assigned partition (a network round trip
    /// each, on the caller's thread): the caller asks every few seconds.
    fn lag(&self) -> anyhow::Result<Vec<(i32, i64)>> {
        self.lag_of_assigned()
            .with_context(|| format!("consumer lag on Kafka topic {}", self.topic))
    }
}

impl KafkaSource {
    /// The next offset to read of each partition in `partitions`: what the
    /// lanes last committed or the assignment started at, else the group's
    /// committed offset (asked of the broker); absent when there is none.
    fn next_offsets(&self, partitions: &[i32]) -> anyhow::Result<HashMap<i32, i64>> {
        let mut next = self.consumer.context().positions();
        next.retain(|partition, _| partitions.contains(partition));
        let mut unknown = TopicPartitionList::new();
        for &partition in partitions {
            if !next.contains_key(&partition) {
                unknown.add_partition(&self.topic, partition);
            }
        }
        if unknown.count() > 0 {
            let committed = self
                .consumer
                .committed_offsets(unknown, LAG_TIMEOUT)
                .context("reading the group's committed offsets")?;
            for element in committed.elements() {
                if let Offset::Offset(offset) = element.offset() {
                    next.insert(element.partition(), offset);
                }
            }
        }
        Ok(next)
    }

    fn lag_of_assigned(&self) -> anyhow::Result<Vec<(i32, i64)>> {
        let assigned = self
            .consumer
            .assignment()
            .context("reading the partition assignment")?;
        let partitions: Vec<i32> = assigned
            .elements()
            .iter()
            .filter(|element| element.topic() == &*self.topic)
            .map(|element| element.partition())
            .collect();
        let next = self.next_offsets(&partitions)?;
        let mut lag = Vec::with_capacity(partitions.len());
        for partition in partitions {
            let (low, high) = self
                .consumer
                .fetch_watermarks(&self.topic, partition, LAG_TIMEOUT)
                .with_context(|| format!("reading the watermarks of partition {partition}"))?;
            // Without an offset the consumer starts at the earliest record
            // (`auto.offset.reset`), as it does below a trimmed log's start.
            let from = next.get(&partition).copied().unwrap_or(low).max(low);
            lag.push((partition, (high - from).max(0)));
        }
        Ok(lag)
    }
}

/// Lends the run's stop token to the rebalance callback for as long as the
/// run lasts.
struct Running<'a>(&'a SourceContext);

impl<'a> Running<'a> {
    fn start(context: &'a SourceContext, stop: &CancellationToken) -> Running<'a> {
        context.set_stop(stop.clone());
        Running(context)
    }
}

impl Drop for Running<'_> {
    /// An assignment that arrives after the run (while the consumer closes)
    /// must not wait on the store.
    fn drop(&mut self) {
        self.0.set_stop(stopped());
    }
}

fn stopped() -> CancellationToken {
    let token = CancellationToken::new();
    token.cancel();
    token
}

/// The consumer's callbacks: librdkafka calls them from inside `poll`, on the
/// source's thread.
struct SourceContext {
    group: String,
    topic: String,
    offsets: Option<(Arc<dyn ProfileStore>, Handle)>,
    /// The running source's stop token; cancelled when no run is going on.
    stop: Mutex<CancellationToken>,
    /// Partitions assigned or revoked since the run loop last looked.
    moved: Mutex<Vec<i32>>,
    /// Whether `moved` has anything, so the loop checks without locking.
    rebalanced: AtomicBool,
    /// Partition → next offset to read, as the lanes last committed it or
    /// the assignment started it (for the lag). Partitions taken away are
    /// dropped; a lane finishing a batch of one afterwards may put it back,
    /// which is harmless since the lag only looks at assigned partitions.
    positions: Mutex<HashMap<i32, i64>>,
}

impl SourceContext {
    fn set_stop(&self, stop: CancellationToken) {
        *self.stop.lock().unwrap_or_else(PoisonError::into_inner) = stop;
    }

    fn stop(&self) -> CancellationToken {
        self.stop
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn note_moved(&self, list: &TopicPartitionList) {
        let mut moved = self.moved.lock().unwrap_or_else(PoisonError::into_inner);
        moved.extend(list.elements().iter().map(|e| e.partition()));
        self.rebalanced.store(true, Ordering::Release);
    }

    fn note_positions(&self, offsets: &[(i32, i64)]) {
        let mut positions = self
            .positions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        positions.extend(offsets.iter().copied());
    }

    fn positions(&self) -> HashMap<i32, i64> {
        self.positions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The partitions of `list` start where it says; those it leaves to the
    /// group's offsets (or `released`) are forgotten.
    fn reset_positions(&self, list: &TopicPartitionList, released: bool) {
        let mut positions = self
            .positions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for element in list.elements() {
            if element.topic() != self.topic {
                continue;
            }
            match element.offset() {
                Offset::Offset(start) if !released => {
                    positions.insert(element.partition(), start);
                }
                _ => {
                    positions.remove(&element.partition());
                }
            }
        }
    }

    fn take_moved(&self) -> Option<Vec<i32>> {
        if !self.rebalanced.swap(false, Ordering::Acquire) {
            return None;
        }
        let mut moved = self.moved.lock().unwrap_or_else(PoisonError::into_inner);
        Some(std::mem::take(&mut *moved))
    }

    /// The store's next offsets for the group, retried with backoff while
    /// the store fails. `None` when there is no store or the source stopped.
    fn stored_offsets(&self) -> Option<HashMap<i32, i64>> {
        let (store, handle) = self.offsets.as_ref()?;
        let stop = self.stop();
        let what = format!(
            "reading the stored offsets of group {} on {} for a partition assignment",
            self.group, self.topic
        );
        handle
            .block_on(retry(
                &what,
                Backoff::ASSIGNMENT,
                Until::Stopped(&stop),
                async || store.offsets(&self.group, &self.topic).await,
            ))
            .ok()
    }

    /// Sets each partition of `list` to its stored next offset; the others
    /// keep "the group's committed offset". `false`: the source stopped
    /// before the store answered.
    fn start_at_stored(&self, list: &mut TopicPartitionList) -> bool {
        if self.offsets.is_none() {
            return true;
        }
        let Some(stored) = self.stored_offsets() else {
            return false;
        };
        let partitions: Vec<(String, i32)> = list
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        for (topic, partition) in partitions {
            let Some(&next) = stored.get(&partition).filter(|_| topic == self.topic) else {
                continue;
            };
            if let Err(error) = list.set_partition_offset(&topic, partition, Offset::Offset(next)) {
                tracing::error!(
                    topic,
                    partition,
                    "cannot start at stored offset {next}: {error}"
                );
            }
        }
        true
    }

    fn assign(&self, consumer: &BaseConsumer<Self>, list: &mut TopicPartitionList) {
        self.note_moved(list);
        if !self.start_at_stored(list) {
            // Stopping: take no partitions; they are read from the store's
            // offsets by whoever gets them next.
            return;
        }
        tracing::info!(group = %self.group, topic = %self.topic, partitions = ?partition_offsets(list), "partitions assigned");
        self.reset_positions(list, false);
        let result = if cooperative(consumer) {
            consumer.incremental_assign(list)
        } else {
            consumer.assign(list)
        };
        if let Err(error) = result {
            tracing::error!(group = %self.group, topic = %self.topic, "taking the assigned partitions failed: {error}");
        }
    }

    fn revoke(&self, consumer: &BaseConsumer<Self>, list: &TopicPartitionList) {
        self.note_moved(list);
        tracing::info!(group = %self.group, topic = %self.topic, partitions = ?partition_offsets(list), "partitions revoked");
        self.reset_positions(list, true);
        let result = if cooperative(consumer) {
            consumer.incremental_unassign(list)
        } else {
            consumer.unassign()
        };
        if let Err(error) = result {
            tracing::error!(group = %self.group, topic = %self.topic, "releasing the revoked partitions failed: {error}");
        }
    }
}

fn cooperative(consumer: &BaseConsumer<SourceContext>) -> bool {
    matches!(
        consumer.rebalance_protocol(),
        RebalanceProtocol::Cooperative
    )
}

/// `partition → start offset` for the log (raw: negative means "the group's").
fn partition_offsets(list: &TopicPartitionList) -> Vec<(i32, i64)> {
    list.elements()
        .iter()
        .map(|e| (e.partition(), e.offset().to_raw().unwrap_or(-1)))
        .collect()
}

impl ClientContext for SourceContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        super::log_line(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        super::log_error(&error, reason);
    }
}

impl ConsumerContext for SourceContext {
    /// Replaces the default rebalance so that an assignment starts where the
    /// store says, not where the group's offsets say.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        list: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.assign(consumer, list),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.revoke(consumer, list),
            other => {
                tracing::error!(group = %self.group, topic = %self.topic, "rebalance failed: {:?}; releasing every partition", other);
                self.note_moved(list);
                if let Err(error) = consumer.unassign() {
                    tracing::error!(group = %self.group, "releasing the partitions failed: {error}");
                }
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(error) = result {
            tracing::debug!(group = %self.group, topic = %self.topic, "committing offsets to the group failed: {error}");
        }
    }
}

/// Consumer errors (broker unreachable, topic missing) repeat on every poll
/// while they last: logs the first, then at most one line every 10 s.
#[derive(Default)]
struct ErrorLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl ErrorLog {
    const EVERY: Duration = Duration::from_secs(10);

    fn log(&mut self, topic: &str, error: &KafkaError) {
        if self.last.is_some_and(|last| last.elapsed() < Self::EVERY) {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(
            topic,
            suppressed = self.suppressed,
            "Kafka consumer error, still polling: {error}"
        );
        self.last = Some(Instant::now());
        self.suppressed = 0;
    }
}
