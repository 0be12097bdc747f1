//! The Kafka source, dead-letter sink and publisher against a real broker:
//! `PULSEHUB_TEST_KAFKA` (default `127.0.0.1:9092`; `scripts/broker.sh
//! start` runs one). Every test makes its own topics and consumer groups.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pulsehub::kafka::{KafkaDeadLetters, KafkaPublisher, KafkaSource, Membership, ensure_topic};
use pulsehub::model::profile::Profile;
use pulsehub::pipeline::dead_letter::{DeadLetter, DeadLetterSink, DeadReason};
use pulsehub::pipeline::publish::{EventPublisher, OutgoingEvent};
use pulsehub::pipeline::source::{Batch, BatchLimits, Lanes, Source};
use pulsehub::plugin::ErrorKind;
use pulsehub::store::{
    Commit, CommitOutcome, ProfileStore, StoreError, StoreResult, TimelineEntry,
};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use support::kafka::{consumer, message_headers, producer};
use support::services::{kafka_brokers, unique};

/// A dynamic member with a 10 s session, as PulseHub's default.
fn dynamic() -> Membership {
    Membership::dynamic(Duration::from_secs(10))
}

/// Runs `source` into `lanes` lanes until `expected` records arrived (or a
/// minute passed), then for `settle` more to catch extra records, and stops
/// it. Returns every batch with the lane it was sent to.
fn consume(
    source: Arc<KafkaSource>,
    lanes: usize,
    limits: BatchLimits,
    expected: usize,
    settle: Duration,
) -> Vec<(usize, Batch)> {
    let (lanes, receivers) = Lanes::new(lanes, 4);
    let stop = CancellationToken::new();
    let runner = {
        let stop = stop.clone();
        std::thread::spawn(move || source.run(&lanes, limits, &stop))
    };
    let (sender, batches) = mpsc::channel();
    let collectors: Vec<_> = receivers
        .into_iter()
        .enumerate()
        .map(|(lane, receiver)| {
            let sender = sender.clone();
            std::thread::spawn(move || {
                while let Ok(batch) = receiver.recv() {
                    if sender.send((lane, batch)).is_err() {
                        break;
                    }
                }
            })
        })
        .collect();
    drop(sender);

    let mut received = Vec::new();
    let mut count = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while count < expected {
        match batches.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok((lane, batch)) => {
                count += batch.records.len();
                received.push((lane, batch));
            }
            Err(_) => break,
        }
    }
    let settled = Instant::now() + settle;
    while let Ok(item) = batches.recv_timeout(settled.saturating_duration_since(Instant::now())) {
        received.push(item);
    }
    stop.cancel();
    runner
        .join()
        .expect("the source thread panicked")
        .expect("the source failed");
    for collector in collectors {
        collector.join().expect("a collector thread panicked");
    }
    received.extend(batches.try_iter());
    received
}

/// Offsets read per partition, in the order they arrived.
fn offsets_by_partition(batches: &[(usize, Batch)]) -> BTreeMap<i32, Vec<i64>> {
    let mut offsets: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for (_, batch) in batches {
        for record in &batch.records {
            offsets
                .entry(record.partition)
                .or_default()
                .push(record.offset);
        }
    }
    offsets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_reads_every_published_event_once_in_order_per_lane() {
    const EVENTS: usize = 10_000;
    const USERS: usize = 50;
    const MAX_EVENTS: usize = 256;
    let brokers = kafka_brokers();
    let topic = unique("events");
    let group = unique("enrich");
    ensure_topic(&brokers, &topic, 4)
        .await
        .expect("creating the topic");

    let publisher = KafkaPublisher::new(&brokers, &topic).expect("publisher");
    publisher.ping().await.expect("ping a live broker");
    let events: Vec<OutgoingEvent> = (0..EVENTS)
        .map(|i| {
            let key = format!("u-{}", i % USERS);
            let payload = format!("{key}:{i}").into_bytes();
            OutgoingEvent { key, payload }
        })
        .collect();
    for chunk in events.chunks(1_000) {
        publisher.publish(chunk).await.expect("publishing");
    }

    let source = Arc::new(
        KafkaSource::new(&brokers, &topic, &group, &dynamic(), None).expect("creating the source"),
    );
    assert_eq!(source.topic(), topic);
    let limits = BatchLimits {
        max_events: MAX_EVENTS,
        max_users: usize::MAX,
        max_bytes: usize::MAX,
        max_wait: Duration::from_millis(20),
    };
    let started = Instant::now();
    let batches = {
        let source = source.clone();
        tokio::task::spawn_blocking(move || {
            consume(source, 2, limits, EVENTS, Duration::from_millis(500))
        })
        .await
        .expect("consuming")
    };
    let records: usize = batches.iter().map(|(_, b)| b.records.len()).sum();
    eprintln!(
        "read {records} events in {} batches in {:?}",
        batches.len(),
        started.elapsed()
    );

    let route = Lanes::new(2, 1).0;
    let mut seen_by_user: HashMap<String, Vec<usize>> = HashMap::new();
    let mut partitions_of_user: HashMap<String, i32> = HashMap::new();
    for (lane, batch) in &batches {
        assert_eq!(&*batch.topic, topic);
        assert!(
            (1..=MAX_EVENTS).contains(&batch.records.len()),
            "batch of {} records, limit {MAX_EVENTS}",
            batch.records.len()
        );
        for record in &batch.records {
            assert_eq!(
                route.lane_of(record.partition),
                *lane,
                "partition {} handed to lane {lane}",
                record.partition
            );
            let payload = String::from_utf8(record.payload.clone()).expect("UTF-8 payload");
            let (user, seq) = payload.split_once(':').expect("user:seq payload");
            assert_eq!(record.key.as_deref(), Some(user.as_bytes()), "key kept");
            let seq: usize = seq.parse().expect("sequence number");
            seen_by_user.entry(user.to_owned()).or_default().push(seq);
            let partition = *partitions_of_user
                .entry(user.to_owned())
                .or_insert(record.partition);
            assert_eq!(partition, record.partition, "one partition per user");
        }
    }
    assert_eq!(records, EVENTS, "every event exactly once");
    for (user, seqs) in &seen_by_user {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{user}'s events out of order"
        );
        assert_eq!(seqs.len(), EVENTS / USERS, "{user}'s events");
    }
    let offsets = offsets_by_partition(&batches);
    assert!(offsets.len() > 1, "keys spread over partitions");
    for (partition, offsets) in &offsets {
        let expected: Vec<i64> = (0..offsets.len() as i64).collect();
        assert_eq!(
            offsets, &expected,
            "partition {partition}: every offset once, in order"
        );
    }

    // Committed offsets reach the group, where lag tools read them.
    let next: Vec<(i32, i64)> = offsets
        .iter()
        .map(|(&partition, offsets)| (partition, offsets.len() as i64))
        .collect();
    source.committed(&next);
    let group_offsets = {
        let (brokers, group, topic, next) =
            (brokers.clone(), group.clone(), topic.clone(), next.clone());
        tokio::task::spawn_blocking(move || wait_group_offsets(&brokers, &group, &topic, &next))
            .await
            .expect("reading the group's offsets")
    };
    assert_eq!(group_offsets, next, "the group's committed offsets");
}

/// The group's committed offsets for the partitions of `want`, polled until
/// they equal `want` or 10 s passed.
fn wait_group_offsets(
    brokers: &str,
    group: &str,
    topic: &str,
    want: &[(i32, i64)],
) -> Vec<(i32, i64)> {
    let consumer = consumer(brokers, group);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut list = TopicPartitionList::new();
        for &(partition, _) in want {
            list.add_partition(topic, partition);
        }
        let got: Vec<(i32, i64)> = consumer
            .committed_offsets(list, Duration::from_secs(5))
            .map(|list| {
                list.elements()
                    .iter()
                    .map(|e| (e.partition(), e.offset().to_raw().unwrap_or(-1)))
                    .collect()
            })
            .unwrap_or_default();
        if got == want || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A store that only knows offsets: fails the first `failures` reads, then
/// returns `offsets`.
struct OffsetStore {
    offsets: HashMap<i32, i64>,
    failures: usize,
    reads: AtomicUsize,
}

#[async_trait]
impl ProfileStore for OffsetStore {
    async fn commit(&self, _commit: Commit<'_>) -> StoreResult<CommitOutcome> {
        Err(StoreError(anyhow::anyhow!("this store only holds offsets")))
    }

    async fn offsets(&self, _group: &str, _topic: &str) -> StoreResult<HashMap<i32, i64>> {
        if self.reads.fetch_add(1, Ordering::SeqCst) < self.failures {
            return Err(StoreError(anyhow::anyhow!("store unreachable (test)")));
        }
        Ok(self.offsets.clone())
    }

    async fn profile(&self, _user_id: &str) -> StoreResult<Option<Profile>> {
        Ok(None)
    }

    async fn timeline(&self, _group: &str, _topic: &str) -> StoreResult<Vec<TimelineEntry>> {
        Ok(Vec::new())
    }

    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }
}

const PER_PARTITION: i64 = 20;

/// A 4-partition topic with [`PER_PARTITION`] records in each partition, and
/// a group that has committed partition 1 at 3 and partition 3 at 7.
async fn topic_with_group_offsets(group: &str) -> String {
    let brokers = kafka_brokers();
    let topic = unique("resume");
    ensure_topic(&brokers, &topic, 4)
        .await
        .expect("creating the topic");
    let producer = producer();
    for partition in 0..4 {
        for i in 0..PER_PARTITION {
            let payload = format!("p{partition}-{i}");
            producer
                .send(
                    FutureRecord::<[u8], _>::to(&topic)
                        .partition(partition)
                        .payload(&payload),
                    Duration::from_secs(5),
                )
                .await
                .expect("producing to an explicit partition");
        }
    }
    let (group, name) = (group.to_owned(), topic.clone());
    tokio::task::spawn_blocking(move || {
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&name, 1, Offset::Offset(3))
            .expect("offset");
        list.add_partition_offset(&name, 3, Offset::Offset(7))
            .expect("offset");
        consumer(&brokers, &group)
            .commit(&list, CommitMode::Sync)
            .expect("committing the group's offsets");
    })
    .await
    .expect("committing");
    topic
}

fn ranges(spec: &[(i32, i64)]) -> BTreeMap<i32, Vec<i64>> {
    spec.iter()
        .filter(|&&(_, from)| from < PER_PARTITION)
        .map(|&(partition, from)| (partition, (from..PER_PARTITION).collect()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignment_starts_at_the_stored_offsets() {
    let brokers = kafka_brokers();
    let group = unique("enrich");
    let topic = topic_with_group_offsets(&group).await;
    let store = Arc::new(OffsetStore {
        // Partition 2 is read to the end; partition 3 is unknown to the store.
        offsets: HashMap::from([(0, 5), (1, 12), (2, PER_PARTITION)]),
        failures: 2,
        reads: AtomicUsize::new(0),
    });
    let source = KafkaSource::new(
        &brokers,
        &topic,
        &group,
        &dynamic(),
        Some((store.clone(), Handle::current())),
    )
    .expect("creating the source");
    let limits = BatchLimits {
        max_events: 10,
        max_users: usize::MAX,
        max_bytes: usize::MAX,
        max_wait: Duration::from_millis(20),
    };
    let want = ranges(&[(0, 5), (1, 12), (3, 7)]);
    let expected = want.values().map(Vec::len).sum();
    let batches = tokio::task::spawn_blocking(move || {
        consume(
            Arc::new(source),
            2,
            limits,
            expected,
            Duration::from_secs(1),
        )
    })
    .await
    .expect("consuming");
    assert_eq!(
        offsets_by_partition(&batches),
        want,
        "stored offsets win over the group's; the group's fill the gaps"
    );
    assert!(
        store.reads.load(Ordering::SeqCst) >= 3,
        "a failing store is retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_store_the_group_offsets_are_used() {
    let brokers = kafka_brokers();
    let group = unique("archive");
    let topic = topic_with_group_offsets(&group).await;
    let source =
        KafkaSource::new(&brokers, &topic, &group, &dynamic(), None).expect("creating the source");
    let limits = BatchLimits {
        max_events: 10,
        max_users: usize::MAX,
        max_bytes: usize::MAX,
        max_wait: Duration::from_millis(20),
    };
    let want = ranges(&[(0, 0), (1, 3), (2, 0), (3, 7)]);
    let expected = want.values().map(Vec::len).sum();
    let batches = tokio::task::spawn_blocking(move || {
        consume(
            Arc::new(source),
            3,
            limits,
            expected,
            Duration::from_secs(1),
        )
    })
    .await
    .expect("consuming");
    assert_eq!(offsets_by_partition(&batches), want);
}

/// Runs `source` on a thread of its own until `stop`; the receivers are
/// returned so that its lanes stay open.
fn run_source(
    source: Arc<KafkaSource>,
    stop: CancellationToken,
) -> (
    tokio::task::JoinHandle<anyhow::Result<()>>,
    Vec<mpsc::Receiver<Batch>>,
) {
    let (lanes, receivers) = Lanes::new(1, 4);
    let limits = BatchLimits {
        max_events: 10,
        max_users: usize::MAX,
        max_bytes: usize::MAX,
        max_wait: Duration::from_millis(20),
    };
    let run = tokio::task::spawn_blocking(move || source.run(&lanes, limits, &stop));
    (run, receivers)
}

/// Waits (up to 30 s) until `source` is assigned `partitions` partitions.
async fn wait_assigned(source: &Arc<KafkaSource>, partitions: usize, who: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let source = source.clone();
        let lag = tokio::task::spawn_blocking(move || source.lag())
            .await
            .expect("asking the lag");
        if lag.as_ref().is_ok_and(|lag| lag.len() == partitions) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{who} was not assigned {partitions} partitions: {lag:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_consumer_with_the_same_instance_id_stops_the_first() {
    let brokers = kafka_brokers();
    let topic = unique("events");
    let group = unique("enrich");
    ensure_topic(&brokers, &topic, 2)
        .await
        .expect("creating the topic");
    let membership = Membership {
        session_timeout: Duration::from_secs(10),
        instance_id: Some(unique("pod")),
    };
    let source = || {
        Arc::new(
            KafkaSource::new(&brokers, &topic, &group, &membership, None)
                .expect("creating the source"),
        )
    };
    let stop = CancellationToken::new();
    let first = source();
    let (first_run, _first_lanes) = run_source(first.clone(), stop.clone());
    wait_assigned(&first, 2, "the first consumer").await;

    // A second process with the same id takes the first one's place (a
    // static member's restart); the first is fenced and stops for good
    // instead of idling outside the group.
    let second = source();
    let (second_run, _second_lanes) = run_source(second.clone(), stop.clone());
    let ended = tokio::time::timeout(Duration::from_secs(30), first_run)
        .await
        .expect("the fenced consumer stops within 30 s")
        .expect("the source thread panicked");
    let error = format!("{:#}", ended.expect_err("a fenced consumer fails"));
    assert!(
        error.contains(&topic) && error.to_lowercase().contains("fenced"),
        "{error}"
    );
    wait_assigned(&second, 2, "the second consumer").await;
    stop.cancel();
    second_run
        .await
        .expect("the source thread panicked")
        .expect("the second consumer stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_carry_payload_key_and_reason_headers() {
    let brokers = kafka_brokers();
    let dlq = unique("dlq");
    ensure_topic(&brokers, &dlq, 1)
        .await
        .expect("creating the topic");
    let letters = vec![
        DeadLetter {
            topic: "user-activity-events".into(),
            partition: 3,
            offset: 41,
            key: Some(b"u-7".to_vec()),
            // Not even UTF-8: kept byte for byte.
            payload: b"\xff{not json".to_vec(),
            event_id: None,
            reason: DeadReason::BadEvent {
                detail: "expected value at line 1 column 1".into(),
            },
        },
        DeadLetter {
            topic: "user-activity-events".into(),
            partition: 0,
            offset: 9,
            key: None,
            payload: br#"{"event_id":"e-17"}"#.to_vec(),
            event_id: Some("e-17".into()),
            reason: DeadReason::PluginError {
                plugin: "device-classifier".into(),
                plugin_version: "1.2.0".into(),
                kind: ErrorKind::Trap,
                detail: "wasm trap: unreachable".into(),
            },
        },
    ];
    KafkaDeadLetters::new(&brokers, &dlq)
        .expect("dead-letter sink")
        .send(&letters)
        .await
        .expect("sending dead letters");

    let read = {
        let (brokers, dlq) = (brokers.clone(), dlq.clone());
        tokio::task::spawn_blocking(move || read_topic(&brokers, &dlq, 2))
            .await
            .expect("reading the dead-letter topic")
    };
    let headers = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    assert_eq!(
        read,
        vec![
            (
                Some(b"u-7".to_vec()),
                b"\xff{not json".to_vec(),
                headers(&[
                    ("pulsehub-reason", "bad-event"),
                    ("pulsehub-detail", "expected value at line 1 column 1"),
                    ("pulsehub-source-topic", "user-activity-events"),
                    ("pulsehub-source-partition", "3"),
                    ("pulsehub-source-offset", "41"),
                ]),
            ),
            (
                None,
                br#"{"event_id":"e-17"}"#.to_vec(),
                headers(&[
                    ("pulsehub-reason", "plugin-error"),
                    ("pulsehub-detail", "wasm trap: unreachable"),
                    ("pulsehub-source-topic", "user-activity-events"),
                    ("pulsehub-source-partition", "0"),
                    ("pulsehub-source-offset", "9"),
                    ("pulsehub-event-id", "e-17"),
                    ("pulsehub-plugin", "device-classifier"),
                    ("pulsehub-plugin-version", "1.2.0"),
                    ("pulsehub-error-kind", "trap"),
                ]),
            ),
        ]
    );
}

type ReadMessage = (Option<Vec<u8>>, Vec<u8>, BTreeMap<String, String>);

/// The first `count` messages of partition 0 of `topic` (or fewer after 30 s).
fn read_topic(brokers: &str, topic: &str, count: usize) -> Vec<ReadMessage> {
    let consumer = consumer(brokers, &unique("reader"));
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, 0, Offset::Beginning)
        .expect("offset");
    consumer.assign(&list).expect("assigning partition 0");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut read = Vec::new();
    while read.len() < count && Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.expect("reading the topic");
        let headers = message_headers(&message);
        read.push((
            message.key().map(<[u8]>::to_vec),
            message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            headers,
        ));
    }
    read
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_is_an_error_not_a_hang() {
    // Nothing listens on port 1.
    let dead = "127.0.0.1:1";
    let publisher = KafkaPublisher::new(dead, "events").expect("publisher");
    let dead_letters = KafkaDeadLetters::new(dead, "events.dlq").expect("dead-letter sink");
    let event = OutgoingEvent {
        key: "u-1".into(),
        payload: b"{}".to_vec(),
    };
    let letter = DeadLetter {
        topic: "events".into(),
        partition: 0,
        offset: 0,
        key: None,
        payload: b"{}".to_vec(),
        event_id: None,
        reason: DeadReason::BadEvent {
            detail: "test".into(),
        },
    };
    let started = Instant::now();
    let (published, sent, pinged) = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(
            publisher.publish(std::slice::from_ref(&event)),
            dead_letters.send(std::slice::from_ref(&letter)),
            publisher.ping(),
        )
    })
    .await
    .expect("a dead broker made a call hang");
    assert!(published.is_err(), "publish to a dead broker succeeded");
    assert!(sent.is_err(), "dead letters to a dead broker succeeded");
    assert!(pinged.is_err(), "ping of a dead broker succeeded");
    eprintln!(
        "errors after {:?}: {:#} / {:#} / {:#}",
        started.elapsed(),
        published.expect_err("checked").0,
        sent.expect_err("checked").0,
        pinged.expect_err("checked").0,
    );
}
