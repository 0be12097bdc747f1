//! Reading `<topic>.dlq` back: every message from the start of each
//! partition up to its end when the read began, decoded from the
//! `pulsehub-*` headers the dead-letter sink wrote.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{BorrowedMessage, Headers as _, Message as _};
use rdkafka::{Offset, TopicPartitionList};

use super::{LogContext, client_config};
use crate::pipeline::dead_letter::{DeadLetter, DeadReason};

/// How long the broker may take to answer a metadata or watermark request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the read may go without a message before it gives up.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Calls `visit` with every message of `topic` that was in it when the read
/// began: `Ok` for a dead letter, `Err` (why) for a message PulseHub did not
/// write. Blocking.
pub fn read_dead_letters(
    brokers: &str,
    topic: &str,
    mut visit: impl FnMut(Result<DeadLetter, String>),
) -> anyhow::Result<()> {
    let consumer: BaseConsumer<LogContext> = client_config(brokers)
        .set("group.id", "pulsehub-dlq-reader")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .create_with_context(LogContext)
        .with_context(|| format!("creating a Kafka consumer for {brokers}"))?;
    let metadata = consumer
        .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
        .with_context(|| format!("reading the metadata of {topic} from {brokers}"))?;
    let partitions: Vec<i32> = match metadata.topics().first() {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
            t.partitions().iter().map(|p| p.id()).collect()
        }
        _ => bail!("the dead-letter topic {topic} does not exist on {brokers}"),
    };
    // The end of each partition now: letters written later are left for
    // the next read.
    let mut assignment = TopicPartitionList::new();
    let mut ends: HashMap<i32, i64> = HashMap::new();
    for partition in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, REQUEST_TIMEOUT)
            .with_context(|| format!("reading the offsets of {topic} partition {partition}"))?;
        if high > low {
            assignment.add_partition_offset(topic, partition, Offset::Offset(low))?;
            ends.insert(partition, high);
        }
    }
    if ends.is_empty() {
        return Ok(());
    }
    consumer
        .assign(&assignment)
        .with_context(|| format!("reading {topic}"))?;
    let mut last_message = Instant::now();
    while !ends.is_empty() {
        let Some(polled) = consumer.poll(Duration::from_millis(500)) else {
            if last_message.elapsed() > STALL_TIMEOUT {
                bail!(
                    "no message from {topic} for {} s with partitions {:?} unread to their end",
                    STALL_TIMEOUT.as_secs(),
                    ends.keys().collect::<Vec<_>>()
                );
            }
            continue;
        };
        let message = polled.with_context(|| format!("reading {topic}"))?;
        last_message = Instant::now();
        let partition = message.partition();
        let Some(&end) = ends.get(&partition) else {
            continue;
        };
        if message.offset() < end {
            visit(decode(&message));
        }
        if message.offset() + 1 >= end {
            ends.remove(&partition);
        }
    }
    Ok(())
}

/// A dead letter from the headers [`super::producer`] writes.
fn decode(message: &BorrowedMessage<'_>) -> Result<DeadLetter, String> {
    let mut headers: HashMap<&str, &str> = HashMap::new();
    if let Some(list) = message.headers() {
        for header in list.iter() {
            if let Some(value) = header.value.and_then(|v| std::str::from_utf8(v).ok()) {
                headers.insert(header.key, value);
            }
        }
    }
    let get = |name: &str| {
        headers
            .get(name)
            .map(|value| (*value).to_owned())
            .ok_or_else(|| format!("no {name} header"))
    };
    let number = |name: &str| -> Result<i64, String> {
        get(name)?
            .parse()
            .map_err(|_| format!("{name} is not a number"))
    };
    let detail = get("pulsehub-detail")?;
    let reason = match get("pulsehub-reason")?.as_str() {
        "bad-event" => DeadReason::BadEvent { detail },
        "plugin-error" => DeadReason::PluginError {
            plugin: get("pulsehub-plugin")?,
            plugin_version: get("pulsehub-plugin-version")?,
            kind: get("pulsehub-error-kind")?
                .parse()
                .map_err(|error| format!("pulsehub-error-kind: {error}"))?,
            detail,
        },
        other => return Err(format!("unknown pulsehub-reason {other:?}")),
    };
    let partition = number("pulsehub-source-partition")?;
    Ok(DeadLetter {
        topic: get("pulsehub-source-topic")?,
        partition: i32::try_from(partition)
            .map_err(|_| "pulsehub-source-partition is out of range".to_owned())?,
        offset: number("pulsehub-source-offset")?,
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        event_id: headers.get("pulsehub-event-id").map(|id| (*id).to_owned()),
        reason,
    })
}

/// The offsets consumer group `group` committed on each partition of
/// `topic` (partitions it never committed are absent). Asks the group's
/// coordinator without joining the group. Blocking.
pub fn group_offsets(brokers: &str, group: &str, topic: &str) -> anyhow::Result<HashMap<i32, i64>> {
    let consumer: BaseConsumer<LogContext> = client_config(brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create_with_context(LogContext)
        .with_context(|| format!("creating a Kafka consumer for {brokers}"))?;
    let metadata = consumer
        .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
        .with_context(|| format!("reading the metadata of {topic} from {brokers}"))?;
    let mut partitions = TopicPartitionList::new();
    match metadata.topics().first() {
        Some(t) if t.error().is_none() => {
            for partition in t.partitions() {
                partitions.add_partition(topic, partition.id());
            }
        }
        _ => bail!("topic {topic} does not exist on {brokers}"),
    }
    let committed = consumer
        .committed_offsets(partitions, REQUEST_TIMEOUT)
        .with_context(|| format!("reading the offsets group {group} committed on {topic}"))?;
    Ok(committed
        .elements()
        .iter()
        .filter_map(|element| match element.offset() {
            Offset::Offset(next) => Some((element.partition(), next)),
            _ => None,
        })
        .collect())
}
