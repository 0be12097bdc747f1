//! Writing to Kafka: the dead-letter sink and the event publisher.
//!
//! Both hand every message to librdkafka first (so it can batch them) and
//! then wait for every acknowledgement, with `acks=all` and a bounded
//! delivery time: a call returns `Ok` only once the whole slice is durable,
//! and an unreachable broker turns into an error within [`DELIVERY_TIMEOUT`]
//! instead of a hang. The callers retry errors, so a retried slice may be
//! written twice (at-least-once); the archive and the enrich store are
//! idempotent for that reason.

use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use async_trait::async_trait;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use rdkafka::types::RDKafkaErrorCode;

use super::{LogContext, client_config};
use crate::pipeline::dead_letter::{DeadLetter, DeadLetterSink, DeadReason};
use crate::pipeline::publish::{EventPublisher, OutgoingEvent};
use crate::store::{StoreError, StoreResult};

/// How long a message may take from the call to its acknowledgement,
/// retries included (`message.timeout.ms`).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`KafkaPublisher::ping`] waits for the broker's metadata.
const PING_TIMEOUT: Duration = Duration::from_secs(1);

/// A producer that waits for every in-sync replica.
fn producer(brokers: &str) -> anyhow::Result<FutureProducer<LogContext>> {
    client_config(brokers)
        .set("acks", "all")
        // Retries then keep the order per partition and write no duplicates.
        .set("enable.idempotence", "true")
        .set(
            "message.timeout.ms",
            DELIVERY_TIMEOUT.as_millis().to_string(),
        )
        .set("linger.ms", "5")
        // The Java client's partitioner: a user id lands on the same
        // partition whichever client produced it, so its events stay in order.
        .set("partitioner", "murmur2_random")
        .create_with_context(LogContext)
        .with_context(|| format!("creating a Kafka producer for {brokers}"))
}

/// Queues every record in order, then waits for all acknowledgements.
/// On failure returns how many records are not acknowledged, and the first
/// error.
async fn produce_all<'a>(
    producer: &FutureProducer<LogContext>,
    records: impl ExactSizeIterator<Item = FutureRecord<'a, [u8], [u8]>>,
) -> Result<(), (usize, KafkaError)> {
    let deadline = Instant::now() + DELIVERY_TIMEOUT;
    let total = records.len();
    let mut deliveries: Vec<DeliveryFuture> = Vec::with_capacity(total);
    for record in records {
        // Those already queued are not waited for: the caller retries the
        // whole slice, so none of it counts as acknowledged.
        let delivery = enqueue(producer, record, deadline)
            .await
            .map_err(|error| (total, error))?;
        deliveries.push(delivery);
    }
    let mut failed = 0;
    let mut first = None;
    for delivery in deliveries {
        let error = match delivery.await {
            Ok(Ok(_)) => continue,
            Ok(Err((error, _message))) => error,
            Err(_canceled) => KafkaError::Canceled,
        };
        failed += 1;
        first.get_or_insert(error);
    }
    match first {
        None => Ok(()),
        Some(error) => Err((failed, error)),
    }
}

/// Queues one record, waiting while librdkafka's local queue is full.
async fn enqueue<'a>(
    producer: &FutureProducer<LogContext>,
    mut record: FutureRecord<'a, [u8], [u8]>,
    deadline: Instant,
) -> Result<DeliveryFuture, KafkaError> {
    loop {
        match producer.send_result(record) {
            Ok(delivery) => return Ok(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                if Instant::now() < deadline =>
            {
                record = back;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((error, _)) => return Err(error),
        }
    }
}

/// The dead-letter topic: each bad event with its original key and payload,
/// and headers saying where it came from and why it was refused.
pub struct KafkaDeadLetters {
    producer: FutureProducer<LogContext>,
    topic: String,
}

impl KafkaDeadLetters {
    pub fn new(brokers: &str, dlq_topic: &str) -> anyhow::Result<KafkaDeadLetters> {
        Ok(KafkaDeadLetters {
            producer: producer(brokers)?,
            topic: dlq_topic.to_owned(),
        })
    }
}

/// The `pulsehub-*` headers of a dead letter.
fn letter_headers(letter: &DeadLetter) -> OwnedHeaders {
    let header = |headers: OwnedHeaders, key: &str, value: &str| {
        headers.insert(Header {
            key,
            value: Some(value),
        })
    };
    let mut headers = OwnedHeaders::new_with_capacity(9);
    headers = header(headers, "pulsehub-reason", letter.reason.code());
    headers = header(headers, "pulsehub-detail", letter.reason.detail());
    headers = header(headers, "pulsehub-source-topic", &letter.topic);
    headers = header(
        headers,
        "pulsehub-source-partition",
        &letter.partition.to_string(),
    );
    headers = header(
        headers,
        "pulsehub-source-offset",
        &letter.offset.to_string(),
    );
    if let Some(event_id) = &letter.event_id {
        headers = header(headers, "pulsehub-event-id", event_id);
    }
    if let DeadReason::PluginError {
        plugin,
        plugin_version,
        kind,
        ..
    } = &letter.reason
    {
        headers = header(headers, "pulsehub-plugin", plugin);
        headers = header(headers, "pulsehub-plugin-version", plugin_version);
        headers = header(headers, "pulsehub-error-kind", kind.as_str());
    }
    headers
}

#[async_trait]
impl DeadLetterSink for KafkaDeadLetters {
    async fn send(&self, letters: &[DeadLetter]) -> StoreResult<()> {
        let records = letters.iter().map(|letter| {
            let record = FutureRecord::to(&self.topic)
                .payload(letter.payload.as_slice())
                .headers(letter_headers(letter));
            match &letter.key {
                Some(key) => record.key(key.as_slice()),
                None => record,
            }
        });
        produce_all(&self.producer, records)
            .await
            .map_err(|(failed, error)| {
                StoreError(anyhow!(
                    "dead-letter topic {}: {failed} of {} letters not acknowledged: {error}",
                    self.topic,
                    letters.len()
                ))
            })
    }
}

/// The ingest topic: events keyed by user id, so each user's events share a
/// partition and keep their order.
pub struct KafkaPublisher {
    producer: FutureProducer<LogContext>,
    topic: String,
}

impl KafkaPublisher {
    pub fn new(brokers: &str, topic: &str) -> anyhow::Result<KafkaPublisher> {
        Ok(KafkaPublisher {
            producer: producer(brokers)?,
            topic: topic.to_owned(),
        })
    }
}

#[async_trait]
impl EventPublisher for KafkaPublisher {
    async fn publish(&self, events: &[OutgoingEvent]) -> StoreResult<()> {
        let records = events.iter().map(|event| {
            FutureRecord::to(&self.topic)
                .key(event.key.as_bytes())
                .payload(event.payload.as_slice())
        });
        produce_all(&self.producer, records)
            .await
            .map_err(|(failed, error)| {
                StoreError(anyhow!(
                    "topic {}: {failed} of {} events not acknowledged: {error}",
                    self.topic,
                    events.len()
                ))
            })
    }

    /// The broker answers with the topic's metadata within a second.
    async fn ping(&self) -> StoreResult<()> {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        let metadata = tokio::task::spawn_blocking(move || {
            producer.client().fetch_metadata(Some(&topic), PING_TIMEOUT)
        })
        .await
        .map_err(|error| StoreError(anyhow!("Kafka metadata request: {error}")))?
        .map_err(|error| StoreError(anyhow!("Kafka metadata for {}: {error}", self.topic)))?;
        match metadata.topics().first().and_then(|topic| topic.error()) {
            None => Ok(()),
            Some(error) => Err(StoreError(anyhow!(
                "Kafka topic {}: {}",
                self.topic,
                RDKafkaErrorCode::from(error)
            ))),
        }
    }
}
