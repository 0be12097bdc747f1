//! The test's own Kafka clients against the broker of `PULSEHUB_TEST_KAFKA`:
//! topics, a producer, consumers, and reading a topic back.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::services::{kafka_brokers, unique};

/// A fresh topic `events_…` with `partitions` partitions, and its
/// dead-letter topic `<topic>.dlq` (one partition); returns the topic.
pub async fn topics(partitions: i32) -> String {
    let topic = unique("events");
    let brokers = kafka_brokers();
    pulsehub::kafka::ensure_topic(&brokers, &topic, partitions)
        .await
        .expect("create the topic");
    pulsehub::kafka::ensure_topic(&brokers, &format!("{topic}.dlq"), 1)
        .await
        .expect("create the dead-letter topic");
    topic
}

/// A producer that gives a message 30 s to be acknowledged.
pub fn producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("message.timeout.ms", "30000")
        .set("linger.ms", "5")
        .create()
        .expect("a Kafka producer")
}

/// Produces `(key, payload)` events to `topic`, 1,000 in flight at a time,
/// and waits until the broker acknowledged every one.
pub async fn produce(producer: &FutureProducer, topic: &str, events: &[(String, String)]) {
    for chunk in events.chunks(1_000) {
        let sends: Vec<_> = chunk
            .iter()
            .map(|(key, payload)| {
                producer.send(
                    FutureRecord::to(topic).key(key).payload(payload),
                    Duration::from_secs(30),
                )
            })
            .collect();
        for send in sends {
            send.await
                .map_err(|(e, _)| e)
                .expect("the broker acknowledges");
        }
    }
}

/// Produces `(key, payload)` events to `topic` with all of them in flight at
/// once, and waits until the broker acknowledged every one. ([`produce`]
/// awaits each send before it makes the next, so it sends one event at a
/// time: about 165 events/s on nisshi.)
pub async fn produce_in_flight(
    producer: &FutureProducer,
    topic: &str,
    events: &[(String, String)],
) {
    let sends = events.iter().map(|(key, payload)| {
        producer.send(
            FutureRecord::to(topic).key(key).payload(payload),
            Duration::from_secs(30),
        )
    });
    for sent in futures::future::join_all(sends).await {
        sent.map_err(|(e, _)| e).expect("the broker acknowledges");
    }
}

/// A consumer in `group` that commits only when told to.
pub fn consumer(brokers: &str, group: &str) -> BaseConsumer {
    consumer_config(brokers, group)
        .create()
        .expect("creating a test consumer")
}

/// The settings of [`consumer`], to add more before creating it.
fn consumer_config(brokers: &str, group: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false");
    config
}

/// A message's headers, values as (lossy) UTF-8 text, a null value as "".
pub fn message_headers(message: &BorrowedMessage<'_>) -> BTreeMap<String, String> {
    message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| {
                    let value = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                    (h.key.to_owned(), value.unwrap_or_default())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Reads every message of `topic` from the start until `quiet` passes with
/// nothing new (or, while nothing came at all, three times `quiet`): the
/// payloads with their headers.
pub fn read_all(topic: &str, quiet: Duration) -> Vec<(Vec<u8>, BTreeMap<String, String>)> {
    read_each(topic, quiet, |message| {
        (
            message.payload().unwrap_or_default().to_vec(),
            message_headers(message),
        )
    })
}

/// Reads `topic` as [`read_all`] says, keeping what `keep` takes of each
/// message.
fn read_each<T>(
    topic: &str,
    quiet: Duration,
    mut keep: impl FnMut(&BorrowedMessage<'_>) -> T,
) -> Vec<T> {
    let consumer: BaseConsumer = consumer_config(&kafka_brokers(), &unique("reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("a Kafka consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut out = Vec::new();
    let mut last = Instant::now();
    let started = Instant::now();
    while last.elapsed() < quiet || (out.is_empty() && started.elapsed() < quiet * 3) {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                out.push(keep(&message));
                last = Instant::now();
            }
            Some(Err(error)) => eprintln!("reading {topic}: {error}"),
            None => {}
        }
    }
    out
}

/// One record read back: its key, value and partition.
pub struct Record {
    pub key: String,
    pub payload: Vec<u8>,
    pub partition: i32,
}

/// Like [`read_all`], keeping each record's key and partition.
pub fn read_records(topic: &str, quiet: Duration) -> Vec<Record> {
    read_each(topic, quiet, |message| Record {
        key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
        payload: message.payload().unwrap_or_default().to_vec(),
        partition: message.partition(),
    })
}
