//! Delivery: one worker per enabled destination, each reading the
//! `profile-updates` topic with a consumer group of its own, so a slow or
//! dead receiver holds back nothing but its own destination; the pipeline
//! and the relay never wait for a webhook.
//!
//! A worker takes the messages its destination wants (by type and segment,
//! published since the destination was created) into batches and sends one
//! batch at a time, so one profile's messages arrive in the order of its
//! revisions. A batch that fails is sent again, with the same `webhook-id`,
//! after each delay of the retry schedule (with jitter, and at least the
//! receiver's `Retry-After`); after the last, it goes to the destination's
//! dead letters. The group's offsets move past a batch only once it was
//! acknowledged or kept as a dead letter: a crash sends it again (at least
//! once). A `410 Gone` disables the destination until the next `PUT`,
//! without moving its offsets, so nothing after it is skipped.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rand::Rng as _;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::catalog::{Destination, DestinationStore, Tally};
use super::deliver::{Outcome, Sender};
use crate::activation::update::{PROFILE_DELETED, PROFILE_UPDATED};
use crate::kafka::{LogContext, client_config};
use crate::model::event::format_millis;
use crate::model::profile::now_ms;
use crate::telemetry::Metrics;

/// How often the workers are matched to the stored destinations.
const REFRESH: Duration = Duration::from_secs(1);
/// How long a batch waits for more messages once it has one.
const LINGER: Duration = Duration::from_millis(100);
/// How often an idle or waiting worker updates its lag.
const TICK: Duration = Duration::from_secs(1);
/// How long a worker waits before trying again after its consumer failed,
/// or the database did not take a dead letter.
const RETRY: Duration = Duration::from_secs(1);

/// The `type` of a batch's body.
pub const BATCH_TYPE: &str = "changes";

/// Everything the workers share.
pub struct Dispatcher {
    pub store: DestinationStore,
    pub sender: Sender,
    pub brokers: String,
    /// The `profile-updates` topic.
    pub topic: String,
    /// Each destination's consumer group is `<group_prefix>.destination.<name>`.
    pub group_prefix: String,
    /// The delays before each retry; after the last, the dead letters.
    pub schedule: Vec<Duration>,
    /// Most messages in one batch.
    pub batch_max: usize,
    pub metrics: Arc<Metrics>,
}

/// A running worker, and the definition it runs.
struct Running {
    destination: Destination,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Dispatcher {
    /// Runs a worker for each enabled destination until `stop`: started,
    /// restarted with a changed definition, stopped when one is deleted or
    /// disabled.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut running: HashMap<String, Running> = HashMap::new();
        loop {
            match self.store.list().await {
                Ok(destinations) => self.reconcile(&mut running, destinations, &stop),
                Err(error) => tracing::warn!(
                    "reading the destinations failed (the workers carry on): {:#}",
                    error.0
                ),
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(REFRESH) => {}
            }
        }
        for (_, worker) in running.drain() {
            worker.stop.cancel();
            let _ = worker.task.await;
        }
    }

    fn reconcile(
        self: &Arc<Self>,
        running: &mut HashMap<String, Running>,
        destinations: Vec<Destination>,
        stop: &CancellationToken,
    ) {
        let stored: std::collections::HashSet<String> = destinations
            .iter()
            .map(|destination| destination.name.clone())
            .collect();
        let mut wanted: HashMap<String, Destination> = destinations
            .into_iter()
            .filter(|destination| destination.disabled.is_none())
            .map(|destination| (destination.name.clone(), destination))
            .collect();
        running.retain(|name, worker| {
            let keep = wanted.get(name).is_some_and(|destination| {
                same_definition(destination, &worker.destination) && !worker.task.is_finished()
            });
            if !keep {
                worker.stop.cancel();
                if !stored.contains(name) {
                    // Deleted: its series go with it.
                    self.metrics.destinations.forget(name);
                } else if !wanted.contains_key(name) {
                    // Disabled: nothing is behind any more.
                    self.metrics.destinations.lag(name, Duration::ZERO);
                }
            }
            keep
        });
        wanted.retain(|name, _| !running.contains_key(name));
        for (name, destination) in wanted {
            let worker_stop = stop.child_token();
            let worker = Worker {
                dispatcher: self.clone(),
                destination: destination.clone(),
            };
            let task = tokio::spawn(worker.run(worker_stop.clone()));
            tracing::info!(destination = %name, url = %destination.target.url, "delivering to a destination");
            running.insert(
                name,
                Running {
                    destination,
                    stop: worker_stop,
                    task,
                },
            );
        }
    }
}

/// Whether a worker started on `old` still delivers `new` as asked (the
/// counters change all the time).
fn same_definition(new: &Destination, old: &Destination) -> bool {
    new.target == old.target
        && new.created_at_ms == old.created_at_ms
        && new.updated_at_ms == old.updated_at_ms
}

/// The part of a `profile-updates` message a destination filters on.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    segment: Option<Cow<'a, str>>,
}

/// Messages on their way to one destination.
#[derive(Default)]
struct Batch {
    /// The messages' JSON, in stream order.
    messages: Vec<String>,
    /// Where the first message was: `(partition, offset)`.
    first: Option<(i32, i64)>,
    /// When the oldest message was published (Unix ms).
    oldest_ms: Option<i64>,
    /// The next offset of each partition read, wanted or not.
    next: BTreeMap<i32, i64>,
}

/// How a batch was settled.
enum Settled {
    /// Acknowledged, or kept as a dead letter: move past it.
    Done,
    /// The destination was disabled, or the worker stopped: do not.
    Halted,
}

struct Worker {
    dispatcher: Arc<Dispatcher>,
    destination: Destination,
}

impl Worker {
    async fn run(self, stop: CancellationToken) {
        let name = self.destination.name.clone();
        while !stop.is_cancelled() {
            match self.deliver_all(&stop).await {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(destination = %name, "delivery stopped: {error:#}; starting again in {RETRY:?}");
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(RETRY) => {}
            }
        }
    }

    /// Reads, batches and delivers until stopped or disabled.
    async fn deliver_all(&self, stop: &CancellationToken) -> anyhow::Result<()> {
        let dispatcher = &self.dispatcher;
        let group = format!(
            "{}.destination.{}",
            dispatcher.group_prefix, self.destination.name
        );
        let consumer: StreamConsumer<LogContext> = client_config(&dispatcher.brokers)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .create_with_context(LogContext)
            .with_context(|| format!("creating the consumer of group {group}"))?;
        consumer
            .subscribe(&[dispatcher.topic.as_str()])
            .with_context(|| format!("subscribing to {}", dispatcher.topic))?;
        loop {
            let Some(batch) = self.collect(&consumer, stop).await? else {
                return Ok(());
            };
            if !batch.messages.is_empty() {
                match self.deliver(&batch, stop).await {
                    Settled::Done => {}
                    Settled::Halted => return Ok(()),
                }
            }
            let mut offsets = TopicPartitionList::new();
            for (&partition, &next) in &batch.next {
                offsets
                    .add_partition_offset(&dispatcher.topic, partition, Offset::Offset(next))
                    .context("listing the offsets to commit")?;
            }
            if offsets.count() > 0
                && let Err(error) = consumer.commit(&offsets, CommitMode::Async)
            {
                // A rebalance took the partition: its next owner sends the
                // batch again, which at least once allows.
                tracing::debug!(destination = %self.destination.name, "committing offsets: {error}");
            }
        }
    }

    /// The next batch: up to `batch_max` wanted messages, gathered for at
    /// most [`LINGER`] after the first; also returned with no wanted
    /// message once it read some, so their offsets move on. `None` when
    /// stopped.
    async fn collect(
        &self,
        consumer: &StreamConsumer<LogContext>,
        stop: &CancellationToken,
    ) -> anyhow::Result<Option<Batch>> {
        let mut batch = Batch::default();
        let mut started: Option<Instant> = None;
        loop {
            let wait = match started {
                Some(at) => LINGER.saturating_sub(at.elapsed()),
                None => TICK,
            };
            let received = tokio::select! {
                () = stop.cancelled() => return Ok(None),
                received = tokio::time::timeout(wait, consumer.recv()) => received,
            };
            let message = match received {
                Err(_elapsed) if started.is_some() => return Ok(Some(batch)),
                Err(_elapsed) => {
                    self.dispatcher
                        .metrics
                        .destinations
                        .lag(&self.destination.name, Duration::ZERO);
                    continue;
                }
                Ok(message) => message.context("reading profile-updates")?,
            };
            started.get_or_insert_with(Instant::now);
            batch.next.insert(message.partition(), message.offset() + 1);
            let published_ms = message.timestamp().to_millis().unwrap_or(i64::MAX);
            if published_ms < self.destination.created_at_ms {
                continue;
            }
            let Some(payload) = message.payload() else {
                continue;
            };
            let Ok(text) = std::str::from_utf8(payload) else {
                tracing::warn!(destination = %self.destination.name, "a profile-updates message is not UTF-8; skipped");
                continue;
            };
            if !self.wants(text) {
                continue;
            }
            batch.messages.push(text.to_owned());
            batch
                .first
                .get_or_insert((message.partition(), message.offset()));
            batch.oldest_ms = Some(
                batch
                    .oldest_ms
                    .map_or(published_ms, |ms| ms.min(published_ms)),
            );
            if batch.messages.len() >= self.dispatcher.batch_max {
                return Ok(Some(batch));
            }
        }
    }

    /// Whether the destination receives this message.
    fn wants(&self, text: &str) -> bool {
        let Ok(head) = serde_json::from_str::<Head>(text) else {
            tracing::warn!(destination = %self.destination.name, "a profile-updates message does not parse; skipped");
            return false;
        };
        if head.kind == PROFILE_DELETED {
            // Whoever holds copies of a profile must hear it is gone.
            return true;
        }
        let target = &self.destination.target;
        if !target.events.iter().any(|kind| *kind == head.kind) {
            return false;
        }
        if head.kind == PROFILE_UPDATED {
            return true;
        }
        match (&target.segments, &head.segment) {
            (None, _) => true,
            (Some(segments), Some(segment)) => segments.iter().any(|s| *s == **segment),
            (Some(_), None) => false,
        }
    }

    /// Sends `batch` until it is acknowledged, dead-lettered, or the
    /// destination is disabled or the worker stopped.
    async fn deliver(&self, batch: &Batch, stop: &CancellationToken) -> Settled {
        let dispatcher = &self.dispatcher;
        let name = self.destination.name.as_str();
        let metrics = &dispatcher.metrics.destinations;
        let id = webhook_id(&self.destination, batch);
        let body = body(&batch.messages, now_ms());
        let count = u64::try_from(batch.messages.len()).unwrap_or(u64::MAX);
        let mut attempt: usize = 0;
        loop {
            self.show_lag(batch);
            let secrets = self.destination.signing_secrets(now_ms());
            let (outcome, took) = dispatcher
                .sender
                .send(&self.destination.target.url, &secrets, &id, &body)
                .await;
            metrics.latency(name, took);
            let retried = u64::from(attempt > 0);
            let reason = match outcome {
                Outcome::Delivered => {
                    metrics.sent(name, count);
                    self.count(Tally {
                        sent: count,
                        retried,
                        ..Tally::default()
                    })
                    .await;
                    return Settled::Done;
                }
                Outcome::Gone => {
                    metrics.failed(name);
                    let reason = "the receiver answered 410 Gone".to_owned();
                    tracing::warn!(destination = %name, "{reason}: destination disabled until it is put again");
                    self.count(Tally {
                        failed: 1,
                        retried,
                        last_error: Some(reason.clone()),
                        ..Tally::default()
                    })
                    .await;
                    if let Err(error) = dispatcher.store.disable(name, &reason, now_ms()).await {
                        // Not recorded: the next attempt meets the 410 again.
                        tracing::warn!(destination = %name, "recording the 410 failed: {:#}", error.0);
                    }
                    return Settled::Halted;
                }
                Outcome::Failed {
                    reason,
                    retry_after,
                } => {
                    metrics.failed(name);
                    let Some(&delay) = dispatcher.schedule.get(attempt) else {
                        self.count(Tally {
                            failed: 1,
                            retried,
                            dead_lettered: 1,
                            last_error: Some(reason.clone()),
                            ..Tally::default()
                        })
                        .await;
                        return self
                            .bury(&id, &body, batch, attempt + 1, &reason, stop)
                            .await;
                    };
                    self.count(Tally {
                        failed: 1,
                        retried,
                        last_error: Some(reason.clone()),
                        ..Tally::default()
                    })
                    .await;
                    let delay = jittered(delay).max(retry_after.unwrap_or_default());
                    tracing::info!(destination = %name, webhook_id = %id, attempt = attempt + 1, "delivery failed ({reason}); next attempt in {delay:?}");
                    delay
                }
            };
            attempt += 1;
            metrics.retried(name);
            if !self.wait(reason, batch, stop).await {
                return Settled::Halted;
            }
        }
    }

    /// Sleeps `delay`, showing the lag as it grows; false when stopped.
    async fn wait(&self, delay: Duration, batch: &Batch, stop: &CancellationToken) -> bool {
        let until = Instant::now() + delay;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            tokio::select! {
                () = stop.cancelled() => return false,
                () = tokio::time::sleep(left.min(TICK)) => self.show_lag(batch),
            }
        }
    }

    /// Keeps a batch that failed every attempt, trying until the database
    /// takes it (or the worker stops, and the batch is sent again).
    async fn bury(
        &self,
        id: &str,
        body: &str,
        batch: &Batch,
        attempts: usize,
        reason: &str,
        stop: &CancellationToken,
    ) -> Settled {
        let name = self.destination.name.as_str();
        let messages = u32::try_from(batch.messages.len()).unwrap_or(u32::MAX);
        let attempts = u32::try_from(attempts).unwrap_or(u32::MAX);
        loop {
            match self
                .dispatcher
                .store
                .dead_letter(name, id, body, messages, attempts, reason)
                .await
            {
                Ok(()) => {
                    self.dispatcher.metrics.destinations.dead_lettered(name);
                    tracing::warn!(destination = %name, webhook_id = %id, "every attempt failed ({reason}); the batch is kept as a dead letter");
                    return Settled::Done;
                }
                Err(error) => {
                    tracing::warn!(destination = %name, "keeping a dead letter failed: {:#}", error.0);
                }
            }
            tokio::select! {
                () = stop.cancelled() => return Settled::Halted,
                () = tokio::time::sleep(RETRY) => {}
            }
        }
    }

    fn show_lag(&self, batch: &Batch) {
        let lag_ms = batch
            .oldest_ms
            .map_or(0, |oldest| now_ms().saturating_sub(oldest));
        self.dispatcher.metrics.destinations.lag(
            &self.destination.name,
            Duration::from_millis(lag_ms.unsigned_abs()),
        );
    }

    /// Adds to the stored counters; a failure costs only the count.
    async fn count(&self, tally: Tally) {
        if let Err(error) = self
            .dispatcher
            .store
            .count(&self.destination.name, &tally, now_ms())
            .await
        {
            tracing::debug!(destination = %self.destination.name, "counting a delivery: {:#}", error.0);
        }
    }
}

/// The body of a batch (contract §5): `{"type": "changes", "timestamp":
/// …, "data": [messages]}`, the messages as they are on the stream.
pub fn body(messages: &[String], now_ms: i64) -> String {
    let mut body = format!(
        "{{\"type\":\"{BATCH_TYPE}\",\"timestamp\":\"{}\",\"data\":[",
        format_millis(now_ms)
    );
    for (i, message) in messages.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(message);
    }
    body.push_str("]}");
    body
}

/// A batch's `webhook-id`: the same for every attempt, and for the same
/// batch read again after a restart.
fn webhook_id(destination: &Destination, batch: &Batch) -> String {
    let (partition, offset) = batch.first.unwrap_or_default();
    let digest = Sha256::digest(format!(
        "{}\n{}\n{partition}\n{offset}\n{}",
        destination.name,
        destination.created_at_ms,
        batch.messages.len()
    ));
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("msg_{hex}")
}

/// `delay`, give or take a fifth, so that destinations failing together
/// do not retry together.
fn jittered(delay: Duration) -> Duration {
    delay.mul_f64(rand::thread_rng().gen_range(0.8..1.2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_holds_the_messages_as_they_are() {
        let messages = vec![
            r#"{"type":"segment.entered","segment":"a"}"#.to_owned(),
            r#"{"type":"profile.updated"}"#.to_owned(),
        ];
        let body = body(&messages, 0);
        let parsed: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(parsed["type"], BATCH_TYPE);
        assert_eq!(parsed["timestamp"], "1970-01-01T00:00:00.000Z");
        assert_eq!(parsed["data"][0]["segment"], "a");
        assert_eq!(parsed["data"][1]["type"], "profile.updated");
    }

    #[test]
    fn jitter_stays_within_a_fifth() {
        for _ in 0..1000 {
            let delay = jittered(Duration::from_secs(10));
            assert!(
                delay >= Duration::from_secs(8) && delay < Duration::from_secs(12),
                "{delay:?}"
            );
        }
    }
}
