//! The enrich and archive pipelines: a [`Source`] feeds lanes; each lane
//! decodes its batches, runs them through the plugin chain, sends bad events
//! to the dead letters and commits the merged profile changes together with
//! the offsets they came from.
//!
//! Exactness under at-least-once delivery rests on the store: a lane knows,
//! per partition, the next offset the store holds; it skips records below it
//! and commits its batch only if the store still holds what it expected
//! ([`CommitOutcome::Stale`] otherwise, after which it reloads and retries).
//! A crash at any point therefore replays at most the uncommitted batch,
//! whose records the store has not counted.
//!
//! Infrastructure failures (store, cache, dead-letter sink) are retried with
//! backoff while the lane waits; nothing moves until they succeed. The cache
//! is the exception: a failed write-through is logged and the cache repairs
//! itself, since PostgreSQL remains the truth.
//!
//! Each pipeline records its records per partition, batch sizes, commit
//! attempts and dead letters in [`Metrics`], and asks its source for the
//! consumer lag every [`LAG_EVERY`].

pub mod source;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use crate::model::event::Event;
use crate::model::profile::now_ms;
use crate::pipeline::source::{Batch, BatchLimits, LaneReceiver, Lanes, Record, Source};
use crate::plugin::chain::{Chain, ChainWorker};
use crate::store::{
    ArchivedEvent, Commit, CommitOutcome, DeadLetter, DeadLetterSink, DeadReason, EventArchive,
    OffsetRange, ProfileCache, ProfileStore, StoreResult,
};
use crate::telemetry::{Metrics, PipelineRole};

/// How often a pipeline asks its source how far behind it is.
pub const LAG_EVERY: Duration = Duration::from_secs(5);

/// Counters of one pipeline, shared by its lanes.
#[derive(Debug, Default)]
pub struct PipelineStats {
    /// Records taken from the source and handled (committed or archived).
    pub records: AtomicU64,
    /// Records skipped because the store had already counted them.
    pub replayed: AtomicU64,
    pub dead_letters: AtomicU64,
    pub batches: AtomicU64,
    /// Commits refused because another consumer moved a partition.
    pub stale_commits: AtomicU64,
    /// Failed attempts against a backend, retried.
    pub retries: AtomicU64,
}

/// Where the enrich role writes.
#[derive(Clone)]
pub struct EnrichTargets {
    pub store: Arc<dyn ProfileStore>,
    pub cache: Option<Arc<dyn ProfileCache>>,
    pub dead_letters: Arc<dyn DeadLetterSink>,
}

/// A running pipeline: the source thread and its lanes.
pub struct Pipeline {
    stop: CancellationToken,
    threads: Vec<JoinHandle<()>>,
    pub stats: Arc<PipelineStats>,
}

impl Pipeline {
    /// Starts the enrich role: `source` read by `group` into `lanes` lanes,
    /// each with its own instances of `chain`'s plugins. Records into the
    /// chain's metrics.
    pub fn enrich(
        source: Arc<dyn Source>,
        group: &str,
        chain: &Arc<Chain>,
        targets: EnrichTargets,
        lanes: usize,
        limits: BatchLimits,
        runtime: Handle,
    ) -> anyhow::Result<Pipeline> {
        let stats = Arc::new(PipelineStats::default());
        let stop = CancellationToken::new();
        let metrics = chain.metrics().clone();
        let mut handlers: Vec<Box<dyn FnMut(Batch) + Send>> = Vec::new();
        for _ in 0..lanes.max(1) {
            let mut lane = EnrichLane {
                worker: chain.worker(),
                targets: targets.clone(),
                source: source.clone(),
                group: group.to_owned(),
                known: None,
                runtime: runtime.clone(),
                stop: stop.clone(),
                stats: stats.clone(),
                metrics: metrics.clone(),
            };
            handlers.push(Box::new(move |batch| lane.process(batch)));
        }
        let running = Running {
            role: PipelineRole::Enrich,
            stop,
            stats,
            metrics,
            runtime,
        };
        Self::start(running, source, handlers, limits)
    }

    /// Starts the archive role: `source` (read by the archive group) into
    /// `archive`, idempotently by event id, recording into `metrics`.
    pub fn archive(
        source: Arc<dyn Source>,
        archive: Arc<dyn EventArchive>,
        metrics: Arc<Metrics>,
        lanes: usize,
        limits: BatchLimits,
        runtime: Handle,
    ) -> anyhow::Result<Pipeline> {
        let stats = Arc::new(PipelineStats::default());
        let stop = CancellationToken::new();
        let mut handlers: Vec<Box<dyn FnMut(Batch) + Send>> = Vec::new();
        for _ in 0..lanes.max(1) {
            let lane = ArchiveLane {
                archive: archive.clone(),
                source: source.clone(),
                runtime: runtime.clone(),
                stop: stop.clone(),
                stats: stats.clone(),
                metrics: metrics.clone(),
            };
            handlers.push(Box::new(move |batch| lane.process(batch)));
        }
        let running = Running {
            role: PipelineRole::Archive,
            stop,
            stats,
            metrics,
            runtime,
        };
        Self::start(running, source, handlers, limits)
    }

    fn start(
        running: Running,
        source: Arc<dyn Source>,
        handlers: Vec<Box<dyn FnMut(Batch) + Send>>,
        limits: BatchLimits,
    ) -> anyhow::Result<Pipeline> {
        let Running {
            role,
            stop,
            stats,
            metrics,
            runtime,
        } = running;
        let role_name = role.as_str();
        let (lanes, receivers) = Lanes::new(handlers.len(), 2);
        let mut threads = Vec::new();
        for (index, (mut handler, receiver)) in handlers.into_iter().zip(receivers).enumerate() {
            let thread = std::thread::Builder::new()
                .name(format!("{role_name}-lane-{index}"))
                .spawn(move || run_lane(receiver, &mut handler))
                .context("starting a lane thread")?;
            threads.push(thread);
        }
        runtime.spawn(report_lag(role, source.clone(), metrics, stop.clone()));
        let source_stop = stop.clone();
        let name = format!("{role_name}-source");
        let thread = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                // Lanes end when `lanes` is dropped at the end of this thread.
                if let Err(error) = source.run(&lanes, limits, &source_stop) {
                    tracing::error!(source = %name, "source failed: {error:#}");
                    source_stop.cancel();
                }
            })
            .context("starting the source thread")?;
        threads.push(thread);
        Ok(Pipeline {
            stop,
            threads,
            stats,
        })
    }

    /// A token that stops the pipeline when cancelled (and is cancelled when
    /// the source fails).
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Stops reading, lets the lanes finish what they hold (a lane stuck on
    /// an unreachable backend gives up: its batch was not committed and will
    /// be read again), and waits for every thread.
    pub fn shutdown(self) {
        self.stop.cancel();
        self.join();
    }

    /// Waits for every thread (after [`Pipeline::stop_token`] was cancelled).
    pub fn join(self) {
        for thread in self.threads {
            if thread.join().is_err() {
                tracing::error!("a pipeline thread panicked");
            }
        }
    }
}

/// What [`Pipeline::start`] needs besides the source and the lanes.
struct Running {
    role: PipelineRole,
    stop: CancellationToken,
    stats: Arc<PipelineStats>,
    metrics: Arc<Metrics>,
    runtime: Handle,
}

/// Sets `pulsehub_consumer_lag` from [`Source::lag`] every [`LAG_EVERY`]
/// until `stop`, and removes the series of partitions the source no longer
/// reads. When the source cannot tell (the broker is away), the last values
/// stay.
async fn report_lag(
    role: PipelineRole,
    source: Arc<dyn Source>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut shown: Vec<i32> = Vec::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(LAG_EVERY) => {}
        }
        // The source may ask the broker: off the async workers.
        let asked = source.clone();
        let lag = match tokio::task::spawn_blocking(move || asked.lag()).await {
            Ok(Ok(lag)) => lag,
            Ok(Err(error)) => {
                tracing::debug!(role = role.as_str(), "consumer lag unknown: {error:#}");
                continue;
            }
            Err(error) => {
                tracing::warn!(
                    role = role.as_str(),
                    "reading the consumer lag failed: {error}"
                );
                continue;
            }
        };
        for &partition in &shown {
            if !lag.iter().any(|&(p, _)| p == partition) {
                metrics.partition_released(role, partition);
            }
        }
        for &(partition, behind) in &lag {
            metrics.consumer_lag(role, partition, behind);
        }
        shown = lag.into_iter().map(|(partition, _)| partition).collect();
    }
    for partition in shown {
        metrics.partition_released(role, partition);
    }
}

/// Counts `records` as consumed, per partition.
fn count_consumed<'r>(
    metrics: &Metrics,
    role: PipelineRole,
    records: impl IntoIterator<Item = &'r Record>,
) {
    let mut counts: Vec<(i32, u64)> = Vec::new();
    for record in records {
        match counts.iter_mut().find(|(p, _)| *p == record.partition) {
            Some((_, n)) => *n += 1,
            None => counts.push((record.partition, 1)),
        }
    }
    for (partition, count) in counts {
        metrics.events_consumed(role, partition, count);
    }
}

fn run_lane(receiver: LaneReceiver, handler: &mut (dyn FnMut(Batch) + Send)) {
    while let Ok(batch) = receiver.recv() {
        handler(batch);
    }
}

/// Retries `attempt` with exponential backoff (50 ms up to 5 s) until it
/// succeeds or `stop` is cancelled (`None`).
fn retry<T>(
    runtime: &Handle,
    stop: &CancellationToken,
    stats: &PipelineStats,
    what: &str,
    mut attempt: impl AsyncFnMut() -> StoreResult<T>,
) -> Option<T> {
    runtime.block_on(async {
        let mut delay = Duration::from_millis(50);
        loop {
            match attempt().await {
                Ok(value) => return Some(value),
                Err(error) => {
                    stats.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        retry_in_ms = delay.as_millis() as u64,
                        "{what} failed, retrying: {:#}",
                        error.0
                    );
                    tokio::select! {
                        () = stop.cancelled() => return None,
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    })
}

/// One enrich lane: a chain worker and what it knows of the store's offsets.
struct EnrichLane {
    worker: ChainWorker,
    targets: EnrichTargets,
    source: Arc<dyn Source>,
    group: String,
    /// Partition → next offset the store holds, as last read or written;
    /// `None` until read. A partition missing from the map has no row.
    known: Option<HashMap<i32, i64>>,
    runtime: Handle,
    stop: CancellationToken,
    stats: Arc<PipelineStats>,
    metrics: Arc<Metrics>,
}

impl EnrichLane {
    fn process(&mut self, batch: Batch) {
        self.metrics
            .batch_received(PipelineRole::Enrich, batch.records.len());
        loop {
            if self.known.is_none() {
                let (store, group, topic) = (&self.targets.store, &self.group, &*batch.topic);
                let loaded = retry(
                    &self.runtime,
                    &self.stop,
                    &self.stats,
                    "loading consumer offsets",
                    async || store.offsets(group, topic).await,
                );
                match loaded {
                    Some(offsets) => self.known = Some(offsets),
                    None => return,
                }
            }
            let known = self.known.as_ref();
            let records: Vec<&Record> = batch
                .records
                .iter()
                .filter(|r| {
                    known
                        .and_then(|k| k.get(&r.partition))
                        .is_none_or(|&next| r.offset >= next)
                })
                .collect();
            let skipped = batch.records.len() - records.len();
            self.stats
                .replayed
                .fetch_add(skipped as u64, Ordering::Relaxed);
            if records.is_empty() {
                return;
            }
            match self.enrich_and_commit(&batch.topic, &records) {
                Some(true) => {
                    self.stats.batches.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .records
                        .fetch_add(records.len() as u64, Ordering::Relaxed);
                    count_consumed(&self.metrics, PipelineRole::Enrich, records);
                    return;
                }
                // Another consumer moved a partition: learn where, go again.
                Some(false) => {
                    self.stats.stale_commits.fetch_add(1, Ordering::Relaxed);
                    self.known = None;
                }
                None => return,
            }
        }
    }

    /// Some(true): committed; Some(false): stale offsets; None: stopped.
    fn enrich_and_commit(&mut self, topic: &str, records: &[&Record]) -> Option<bool> {
        let mut events = Vec::with_capacity(records.len());
        let mut origin = Vec::with_capacity(records.len());
        let mut letters = Vec::new();
        for record in records {
            let fallback = || format!("{topic}-{}-{}", record.partition, record.offset);
            match Event::from_json(&record.payload, fallback) {
                Ok(event) => {
                    events.push(event);
                    origin.push(*record);
                }
                Err(error) => letters.push(letter(
                    topic,
                    record,
                    None,
                    DeadReason::BadEvent {
                        detail: error.to_string(),
                    },
                )),
            }
        }
        let outcome = self.worker.run(&events);
        for (index, error) in outcome.errors {
            tracing::debug!(
                plugin = %error.plugin,
                version = %error.version,
                event_id = %error.event_id,
                partition = origin[index].partition,
                "plugin failed on an event: {}",
                error.message
            );
            letters.push(letter(
                topic,
                origin[index],
                Some(error.event_id),
                DeadReason::PluginError {
                    plugin: error.plugin,
                    plugin_version: error.version,
                    kind: error.kind.as_str().to_owned(),
                    detail: error.message,
                },
            ));
        }
        let (runtime, stop, stats) = (&self.runtime, &self.stop, &self.stats);
        if !letters.is_empty() {
            let sink = &self.targets.dead_letters;
            retry(runtime, stop, stats, "writing dead letters", async || {
                sink.send(&letters).await
            })?;
            stats
                .dead_letters
                .fetch_add(letters.len() as u64, Ordering::Relaxed);
            self.metrics
                .dead_letters(letters.iter().map(|letter| &letter.reason));
        }

        let next = next_offsets(records.iter().copied());
        let offsets: Vec<OffsetRange> = next
            .iter()
            .map(|&(partition, next)| OffsetRange {
                partition,
                expected: self.known.as_ref().and_then(|k| k.get(&partition).copied()),
                next,
            })
            .collect();
        let store = &self.targets.store;
        let group = self.group.as_str();
        let changes = &outcome.changes;
        let metrics = &self.metrics;
        let committed = retry(runtime, stop, stats, "committing a batch", async || {
            let commit = Commit {
                group,
                topic,
                changes,
                offsets: &offsets,
                now_ms: now_ms(),
            };
            let started = Instant::now();
            let result = store.commit(commit).await;
            metrics.commit_attempt(started.elapsed());
            result
        })?;
        let profiles = match committed {
            CommitOutcome::Applied(profiles) => profiles,
            CommitOutcome::Stale => return Some(false),
        };
        if let Some(known) = &mut self.known {
            known.extend(next.iter().copied());
        }
        if let Some(cache) = &self.targets.cache
            && !profiles.is_empty()
            && let Err(error) = runtime.block_on(cache.put(&profiles))
        {
            // The cache forgets these keys and refills them from the store.
            tracing::warn!("profile cache write-through failed: {:#}", error.0);
        }
        self.source.committed(&next);
        Some(true)
    }
}

fn letter(
    topic: &str,
    record: &Record,
    event_id: Option<String>,
    reason: DeadReason,
) -> DeadLetter {
    DeadLetter {
        topic: topic.to_owned(),
        partition: record.partition,
        offset: record.offset,
        key: record.key.clone(),
        payload: record.payload.clone(),
        event_id,
        reason,
    }
}

/// One archive lane: decodes and inserts raw events; bad events are left to
/// the enrich role's dead letters.
struct ArchiveLane {
    archive: Arc<dyn EventArchive>,
    source: Arc<dyn Source>,
    runtime: Handle,
    stop: CancellationToken,
    stats: Arc<PipelineStats>,
    metrics: Arc<Metrics>,
}

impl ArchiveLane {
    fn process(&self, batch: Batch) {
        self.metrics
            .batch_received(PipelineRole::Archive, batch.records.len());
        let topic = &*batch.topic;
        let mut events = Vec::with_capacity(batch.records.len());
        let next = next_offsets(&batch.records);
        for record in &batch.records {
            let fallback = || format!("{topic}-{}-{}", record.partition, record.offset);
            let Ok(event) = Event::from_json(&record.payload, fallback) else {
                continue;
            };
            let Ok(payload) = String::from_utf8(record.payload.clone()) else {
                continue;
            };
            events.push(ArchivedEvent {
                event_id: event.id,
                user_id: event.user_id,
                event_type: event.kind,
                event_time_ms: event.timestamp_ms,
                topic: topic.to_owned(),
                partition: record.partition,
                offset: record.offset,
                payload,
            });
        }
        if !events.is_empty() {
            let archive = &self.archive;
            let done = retry(
                &self.runtime,
                &self.stop,
                &self.stats,
                "archiving events",
                async || archive.archive(&events).await,
            );
            if done.is_none() {
                return;
            }
        }
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats
            .records
            .fetch_add(batch.records.len() as u64, Ordering::Relaxed);
        count_consumed(&self.metrics, PipelineRole::Archive, &batch.records);
        self.source.committed(&next);
    }
}

/// The next offset to read per partition after `records`.
fn next_offsets<'r>(records: impl IntoIterator<Item = &'r Record>) -> Vec<(i32, i64)> {
    let mut next: Vec<(i32, i64)> = Vec::new();
    for record in records {
        match next.iter_mut().find(|(p, _)| *p == record.partition) {
            Some((_, n)) => *n = (*n).max(record.offset + 1),
            None => next.push((record.partition, record.offset + 1)),
        }
    }
    next
}

/// Batch bounds from the configuration (`pipeline.batch_max_events`,
/// `pipeline.batch_max_wait_ms`).
pub fn batch_limits(max_events: usize, max_wait_ms: u64) -> BatchLimits {
    BatchLimits {
        max_events: max_events.max(1),
        max_wait: Duration::from_millis(max_wait_ms),
    }
}
