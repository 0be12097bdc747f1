//! The consumer's context: what librdkafka calls back on a partition
//! assignment (resume from the store's offsets, note moved partitions), the
//! positions the lanes committed, and the lending of the stop token to the
//! callbacks while a run lasts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use crate::pipeline::retry::{Backoff, Until, retry};
use crate::store::ProfileStore;

/// Lends the run's stop token to the rebalance callback for as long as the
/// run lasts.
pub(super) struct Running<'a>(&'a SourceContext);

impl<'a> Running<'a> {
    pub(super) fn start(context: &'a SourceContext, stop: &CancellationToken) -> Running<'a> {
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

pub(super) fn stopped() -> CancellationToken {
    let token = CancellationToken::new();
    token.cancel();
    token
}

/// The consumer's callbacks: librdkafka calls them from inside `poll`, on the
/// source's thread.
pub(super) struct SourceContext {
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
    /// The context of `group`'s consumer of `topic`; with `offsets`, each
    /// assignment resumes where that store says.
    pub(super) fn new(
        group: &str,
        topic: &str,
        offsets: Option<(Arc<dyn ProfileStore>, Handle)>,
    ) -> SourceContext {
        SourceContext {
            group: group.to_owned(),
            topic: topic.to_owned(),
            offsets,
            stop: Mutex::new(stopped()),
            moved: Mutex::new(Vec::new()),
            rebalanced: AtomicBool::new(false),
            positions: Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn set_stop(&self, stop: CancellationToken) {
        *self.stop.lock().unwrap_or_else(PoisonError::into_inner) = stop;
    }

    pub(super) fn stop(&self) -> CancellationToken {
        self.stop
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(super) fn note_moved(&self, list: &TopicPartitionList) {
        let mut moved = self.moved.lock().unwrap_or_else(PoisonError::into_inner);
        moved.extend(list.elements().iter().map(|e| e.partition()));
        self.rebalanced.store(true, Ordering::Release);
    }

    pub(super) fn note_positions(&self, offsets: &[(i32, i64)]) {
        let mut positions = self
            .positions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        positions.extend(offsets.iter().copied());
    }

    pub(super) fn positions(&self) -> HashMap<i32, i64> {
        self.positions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The partitions of `list` start where it says; those it leaves to the
    /// group's offsets (or `released`) are forgotten.
    pub(super) fn reset_positions(&self, list: &TopicPartitionList, released: bool) {
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

    pub(super) fn take_moved(&self) -> Option<Vec<i32>> {
        if !self.rebalanced.swap(false, Ordering::Acquire) {
            return None;
        }
        let mut moved = self.moved.lock().unwrap_or_else(PoisonError::into_inner);
        Some(std::mem::take(&mut *moved))
    }

    /// The store's next offsets for the group, retried with backoff while
    /// the store fails. `None` when there is no store or the source stopped.
    pub(super) fn stored_offsets(&self) -> Option<HashMap<i32, i64>> {
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
                || store.offsets(&self.group, &self.topic),
            ))
            .ok()
    }

    /// Sets each partition of `list` to its stored next offset; the others
    /// keep "the group's committed offset". `false`: the source stopped
    /// before the store answered.
    pub(super) fn start_at_stored(&self, list: &mut TopicPartitionList) -> bool {
        // A cooperative rebalance that gives this consumer nothing new still
        // ends in an (empty) assignment: no need to ask the store.
        if self.offsets.is_none() || list.count() == 0 {
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

    pub(super) fn assign(&self, consumer: &BaseConsumer<Self>, list: &mut TopicPartitionList) {
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

    pub(super) fn revoke(&self, consumer: &BaseConsumer<Self>, list: &TopicPartitionList) {
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

    /// Gives up the whole assignment: with a cooperative assignor only
    /// incremental changes are allowed, so the current partitions are named.
    fn release_all(&self, consumer: &BaseConsumer<Self>) {
        let result = if cooperative(consumer) {
            consumer.assignment().and_then(|assigned| {
                self.note_moved(&assigned);
                self.reset_positions(&assigned, true);
                consumer.incremental_unassign(&assigned)
            })
        } else {
            consumer.unassign()
        };
        if let Err(error) = result {
            tracing::error!(group = %self.group, "releasing the partitions failed: {error}");
        }
    }
}

pub(super) fn cooperative(consumer: &BaseConsumer<SourceContext>) -> bool {
    matches!(
        consumer.rebalance_protocol(),
        RebalanceProtocol::Cooperative
    )
}

/// `partition → start offset` for the log (raw: negative means "the group's").
pub(super) fn partition_offsets(list: &TopicPartitionList) -> Vec<(i32, i64)> {
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
                self.release_all(consumer);
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
pub(super) struct ErrorLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl ErrorLog {
    const EVERY: Duration = Duration::from_secs(10);

    pub(super) fn log(&mut self, topic: &str, error: &KafkaError) {
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
