//! The enrich and archive pipelines: a [`Source`] feeds lanes; each lane
//! decodes its batches, runs them through the plugin chain, sends bad events
//! to the dead letters and commits the merged profile changes together with
//! the offsets they came from.
//!
//! Exactness under at-least-once delivery rests on the store: a lane knows,
//! per partition, the next offset the store holds; it skips records below it
//! and commits its batch only if the store still holds what it expected
//! ([`CommitOutcome::Stale`](crate::store::CommitOutcome::Stale) otherwise, after which it reloads and retries).
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
//!
//! - [`source`]: the [`Source`] trait, batches and lanes.
//! - [`publish`]: the write side of the log ([`publish::EventPublisher`]).
//! - [`enrich`] and [`archive`]: the two kinds of lane, and the enrich
//!   lanes' committer; `profile_copies` keeps the profiles committed last
//!   and `link_memory` where identifiers were seen to live.
//! - [`dead_letter`]: dead letters and their sink.
//! - [`retry`]: the one backoff loop that waits out a backend.
//! - [`lag`]: the consumer-lag gauge.

pub mod archive;
pub mod dead_letter;
pub mod enrich;
pub mod lag;
mod link_memory;
mod profile_copies;
pub mod publish;
pub mod retry;
pub mod source;

use std::sync::mpsc::{self, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use crate::model::identity::Rules;
use crate::plugin::chain::Chain;
use crate::privacy::{PrivacyStore, Suppressions};
use crate::store::EventArchive;
use crate::telemetry::{Metrics, PipelineRole};
use archive::ArchiveLane;
use enrich::EnrichLane;
pub use enrich::EnrichTargets;
pub use lag::LAG_EVERY;
use link_memory::LinkMemory;
use profile_copies::ProfileCopies;

/// Keys an enrich lane remembers the profiles of ([`LinkMemory`]).
const LINK_MEMORY_KEYS: usize = 200_000;
use source::{Batch, BatchLimits, LaneReceiver, Lanes, Record, Source};

/// What every pipeline is started with, besides its source and targets.
#[derive(Clone)]
pub struct Setup {
    pub metrics: Arc<Metrics>,
    /// Lane threads (each with its own plugin instances).
    pub lanes: usize,
    pub limits: BatchLimits,
    /// Bytes of profiles the enrich lanes keep between commits, together
    /// (`pipeline.profile_cache_mib`).
    pub profile_cache_bytes: usize,
    /// The async runtime the lanes and the lag reporter use.
    pub runtime: Handle,
    /// How events resolve to profiles (`[identity]`).
    pub identity: Arc<Rules>,
    /// Where the suppressed persons are read.
    pub privacy: Arc<dyn PrivacyStore>,
}

/// A running pipeline: the source thread and its lanes.
pub struct Pipeline {
    stop: CancellationToken,
    threads: Vec<JoinHandle<()>>,
}

/// A lane's work: its batches, one at a time.
trait LaneWork: Send {
    fn process(&mut self, batch: Batch);

    /// No batch is waiting for the lane (or none will come again).
    fn idle(&mut self) {}
}

type Handler = Box<dyn LaneWork>;

impl Pipeline {
    /// Starts the enrich role: `source` read by `group` into
    /// `setup.lanes` lanes, each with its own instances of `chain`'s plugins.
    pub fn enrich(
        source: Arc<dyn Source>,
        group: &str,
        chain: &Arc<Chain>,
        targets: EnrichTargets,
        setup: Setup,
    ) -> anyhow::Result<Pipeline> {
        let stop = CancellationToken::new();
        let shared = enrich::Shared {
            targets,
            group: group.to_owned(),
            profiles: Arc::new(ProfileCopies::new(setup.profile_cache_bytes)),
            links: Arc::new(Mutex::new(LinkMemory::new(LINK_MEMORY_KEYS))),
            identity: setup.identity.clone(),
            runtime: setup.runtime.clone(),
            stop: stop.clone(),
            metrics: setup.metrics.clone(),
        };
        let (committer, inbox) = mpsc::channel();
        let mut handlers: Vec<Handler> = Vec::new();
        for lane in 0..setup.lanes.max(1) {
            handlers.push(Box::new(EnrichLane {
                lane,
                shared: shared.clone(),
                worker: chain.worker(),
                known: None,
                suppressions: None,
                privacy: setup.privacy.clone(),
                committer: committer.clone(),
                in_flight: None,
            }));
        }
        // The committer ends once every lane (and so every sender) has.
        drop(committer);
        let committer = enrich::Committer {
            shared,
            source: source.clone(),
            inbox,
        };
        let thread = std::thread::Builder::new()
            .name("enrich-committer".to_owned())
            .spawn(move || committer.run())
            .context("starting the committer thread")?;
        let mut pipeline = Self::start(PipelineRole::Enrich, stop, setup, source, handlers)?;
        pipeline.threads.push(thread);
        Ok(pipeline)
    }

    /// Starts the archive role: `source` (read by the archive group) into
    /// `archive`, idempotently by event id.
    pub fn archive(
        source: Arc<dyn Source>,
        archive: Arc<dyn EventArchive>,
        setup: Setup,
    ) -> anyhow::Result<Pipeline> {
        let stop = CancellationToken::new();
        let mut handlers: Vec<Handler> = Vec::new();
        for _ in 0..setup.lanes.max(1) {
            handlers.push(Box::new(ArchiveLane {
                archive: archive.clone(),
                identity: setup.identity.clone(),
                suppressions: None,
                privacy: setup.privacy.clone(),
                source: source.clone(),
                runtime: setup.runtime.clone(),
                stop: stop.clone(),
                metrics: setup.metrics.clone(),
            }));
        }
        Self::start(PipelineRole::Archive, stop, setup, source, handlers)
    }

    fn start(
        role: PipelineRole,
        stop: CancellationToken,
        setup: Setup,
        source: Arc<dyn Source>,
        handlers: Vec<Handler>,
    ) -> anyhow::Result<Pipeline> {
        let Setup {
            metrics,
            limits,
            runtime,
            ..
        } = setup;
        let role_name = role.as_str();
        let (lanes, receivers) = Lanes::new(handlers.len(), 2);
        let mut threads = Vec::new();
        for (index, (mut handler, receiver)) in handlers.into_iter().zip(receivers).enumerate() {
            let thread = std::thread::Builder::new()
                .name(format!("{role_name}-lane-{index}"))
                .spawn(move || run_lane(receiver, &mut *handler))
                .context("starting a lane thread")?;
            threads.push(thread);
        }
        runtime.spawn(lag::report_lag(role, source.clone(), metrics, stop.clone()));
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
        Ok(Pipeline { stop, threads })
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

/// Counts `records` as consumed, per partition.
fn count_consumed<'r>(
    metrics: &Metrics,
    role: PipelineRole,
    records: impl IntoIterator<Item = &'r Record>,
) {
    for (partition, count) in per_partition(records) {
        metrics.events_consumed(role, partition, count);
    }
}

/// How many of `records` each partition holds.
fn per_partition<'r>(records: impl IntoIterator<Item = &'r Record>) -> Vec<(i32, u64)> {
    let mut counts: Vec<(i32, u64)> = Vec::new();
    for record in records {
        match counts.iter_mut().find(|(p, _)| *p == record.partition) {
            Some((_, n)) => *n += 1,
            None => counts.push((record.partition, 1)),
        }
    }
    counts
}

/// The suppressions as of now: `held` while their generation is still the
/// store's, else read again. Retries until the pipeline stops (`None`).
/// A lane asks before each batch, so no plugin runs on the events of a
/// person suppressed before the batch began; one suppressed while it runs
/// is caught by the commit ([`crate::store::CommitOutcome::SuppressionsChanged`]).
fn current_suppressions(
    privacy: &Arc<dyn PrivacyStore>,
    held: Option<Arc<Suppressions>>,
    runtime: &Handle,
    stop: &CancellationToken,
) -> Option<Arc<Suppressions>> {
    let until = retry::Until::Stopped(stop);
    runtime
        .block_on(async {
            if let Some(held) = held {
                let generation = retry::retry(
                    "reading the generation of the suppressions",
                    retry::Backoff::LANE,
                    until,
                    || privacy.generation(),
                )
                .await?;
                if generation == held.generation {
                    return Ok(held);
                }
            }
            let loaded = retry::retry(
                "reading the suppressions",
                retry::Backoff::LANE,
                until,
                || privacy.suppressions(),
            )
            .await?;
            Ok(Arc::new(loaded))
        })
        .map_err(|_: retry::GaveUp<crate::store::StoreError>| ())
        .ok()
}

fn run_lane(receiver: LaneReceiver, work: &mut dyn LaneWork) {
    loop {
        let batch = match receiver.try_recv() {
            Ok(batch) => batch,
            Err(TryRecvError::Empty) => {
                work.idle();
                match receiver.recv() {
                    Ok(batch) => batch,
                    Err(_) => break,
                }
            }
            Err(TryRecvError::Disconnected) => break,
        };
        work.process(batch);
    }
    work.idle();
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
/// `pipeline.batch_max_users`, `pipeline.batch_max_mib`,
/// `pipeline.batch_max_wait_ms`).
pub fn batch_limits(
    max_events: usize,
    max_users: usize,
    max_mib: usize,
    max_wait_ms: u64,
) -> BatchLimits {
    BatchLimits {
        max_events: max_events.max(1),
        max_users: max_users.max(1),
        max_bytes: max_mib.saturating_mul(1 << 20).max(1),
        max_wait: Duration::from_millis(max_wait_ms),
    }
}
