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
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use super::batches::Batcher;
use super::client_config;
use super::context::{ErrorLog, Running, SourceContext};
use crate::pipeline::source::{Batch, BatchLimits, Closed, Lanes, Record, Source};
use crate::store::ProfileStore;

/// Longest a poll blocks, so that `stop` and batch deadlines are honoured.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// How long [`Source::lag`] waits for each answer of the broker.
pub(super) const LAG_TIMEOUT: Duration = Duration::from_secs(2);

/// How a consumer takes part in its group. Every PulseHub consumer uses the
/// cooperative-sticky assignor: a rebalance moves only the partitions that
/// change owner, and the others are read on throughout it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// Without a heartbeat for this long, the coordinator takes the consumer
    /// out of the group and its partitions go to the others.
    pub session_timeout: Duration,
    /// `group.instance.id` (static membership): a consumer restarted with
    /// the same id within the session timeout takes its partitions back
    /// without a rebalance. `None`: a dynamic member.
    pub instance_id: Option<String>,
}

impl Membership {
    /// A dynamic member with `session_timeout`.
    pub fn dynamic(session_timeout: Duration) -> Membership {
        Membership {
            session_timeout,
            instance_id: None,
        }
    }

    /// A third of the session timeout, at most librdkafka's default of 3 s:
    /// a session then survives two lost heartbeats.
    fn heartbeat_interval(&self) -> Duration {
        (self.session_timeout / 3).min(Duration::from_secs(3))
    }
}

/// One consumer of `group` on `topic`.
pub struct KafkaSource {
    /// Shared by the thread that runs the source and the lanes that call
    /// [`Source::committed`]; librdkafka clients are thread-safe.
    consumer: BaseConsumer<SourceContext>,
    topic: Arc<str>,
}

impl KafkaSource {
    /// A consumer of `group` subscribed to `topic`, a member of the group as
    /// `membership` says. With `offsets`, every assigned partition starts at
    /// the next offset `store.offsets(group, topic)` holds for it (read on
    /// the source's thread through `handle`); partitions the store does not
    /// know, and every partition without `offsets`, start at the group's
    /// committed offset, else the earliest.
    pub fn new(
        brokers: &str,
        topic: &str,
        group: &str,
        membership: &Membership,
        offsets: Option<(Arc<dyn ProfileStore>, Handle)>,
    ) -> anyhow::Result<KafkaSource> {
        let context = SourceContext::new(group, topic, offsets);
        let mut config = client_config(brokers);
        config
            .set("group.id", group)
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set(
                "session.timeout.ms",
                membership.session_timeout.as_millis().to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                membership.heartbeat_interval().as_millis().to_string(),
            )
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
            .set("queued.min.messages", "200000");
        if let Some(instance) = &membership.instance_id {
            config.set("group.instance.id", instance);
        }
        let consumer: BaseConsumer<SourceContext> = config
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
            let polled = self.consumer.poll(timeout);
            // A rebalance runs inside `poll`, so whatever `poll` returned
            // comes after it: forget the moved partitions' records first.
            if let Some(moved) = context.take_moved() {
                // Kept, their records would be handed over twice.
                batcher.forget(&moved);
            }
            match polled {
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
                Some(Err(error)) => {
                    if let Some((code, reason)) = self.consumer.client().fatal_error() {
                        // E.g. another process joined with this process's
                        // `group.instance.id`: this consumer never reads
                        // again, so the process should stop and say why.
                        bail!(
                            "the Kafka consumer of topic {} failed for good ({code}): {reason}",
                            self.topic
                        );
                    }
                    errors.log(&self.topic, &error);
                }
                None => {}
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
