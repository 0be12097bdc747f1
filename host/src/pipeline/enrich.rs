//! The enrich lane: decode → plugin chain → dead letters → commit the merged
//! changes with the offsets they came from → write through to the cache.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use super::dead_letter::{DeadLetter, DeadLetterSink, DeadReason};
use super::link_memory::LinkMemory;
use super::profile_copies::ProfileCopies;
use super::retry::{Backoff, Until, retry};
use super::source::{Batch, Record, Source};
use super::{count_consumed, next_offsets};
use crate::model::event::Event;
use crate::model::identity::{BatchIdentities, LinkKind, Rules};
use crate::model::profile::now_ms;
use crate::plugin::chain::ChainWorker;
use crate::privacy::{PrivacyStore, Suppressions};
use crate::store::{
    Commit, CommitOutcome, Identity, LinkReport, OffsetRange, PluginVersion, ProfileCache,
    ProfileStore,
};
use crate::telemetry::{Metrics, PipelineRole};

/// Where the enrich role writes.
#[derive(Clone)]
pub struct EnrichTargets {
    pub store: Arc<dyn ProfileStore>,
    pub cache: Option<Arc<dyn ProfileCache>>,
    pub dead_letters: Arc<dyn DeadLetterSink>,
}

/// One enrich lane: a chain worker and what it knows of the store's offsets.
pub(super) struct EnrichLane {
    pub(super) worker: ChainWorker,
    pub(super) targets: EnrichTargets,
    pub(super) source: Arc<dyn Source>,
    pub(super) group: String,
    /// Partition → next offset the store holds, as last read or written;
    /// `None` until read. A partition missing from the map has no row.
    pub(super) known: Option<HashMap<i32, i64>>,
    /// The profiles the lanes committed last, so the next commit touching
    /// them need not read them back (shared by the lanes).
    pub(super) profiles: Arc<ProfileCopies>,
    /// How events resolve to profiles.
    pub(super) identity: Arc<Rules>,
    /// Where this lane has seen identifiers live.
    pub(super) links: LinkMemory,
    /// Turns at committing, shared by the lanes ([`CommitTurns`]).
    pub(super) turns: Arc<CommitTurns>,
    /// The suppressed persons, whose events are dropped before the
    /// plugins; `None` until read.
    pub(super) suppressions: Option<Arc<Suppressions>>,
    pub(super) privacy: Arc<dyn PrivacyStore>,
    pub(super) runtime: Handle,
    pub(super) stop: CancellationToken,
    pub(super) metrics: Arc<Metrics>,
}

/// How one attempt at a batch ended.
enum Attempt {
    Committed,
    /// Another consumer moved a partition: the offsets must be read again.
    Stale,
    /// A privacy request changed the suppressions: read them again.
    Suppressions,
    /// The pipeline stopped while a backend was away.
    Stopped,
}

impl EnrichLane {
    pub(super) fn process(&mut self, batch: Batch) {
        self.metrics
            .batch_received(PipelineRole::Enrich, batch.records.len());
        loop {
            if self.known.is_none() {
                let (store, group, topic) = (&self.targets.store, &self.group, &*batch.topic);
                let loaded = self.runtime.block_on(retry(
                    "loading consumer offsets",
                    Backoff::LANE,
                    Until::Stopped(&self.stop),
                    || store.offsets(group, topic),
                ));
                match loaded {
                    Ok(offsets) => self.known = Some(offsets),
                    Err(_) => return,
                }
            }
            let held = self.suppressions.take();
            let before = held.as_ref().map(|s| s.generation);
            match super::current_suppressions(&self.privacy, held, &self.runtime, &self.stop) {
                Some(suppressions) => {
                    if before.is_some_and(|g| g != suppressions.generation) {
                        // The copies may hold a person deleted meanwhile.
                        self.profiles.clear();
                        self.links.clear();
                    }
                    self.suppressions = Some(suppressions);
                }
                None => return,
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
            if records.is_empty() {
                return;
            }
            match self.enrich_and_commit(&batch.topic, &records) {
                Attempt::Committed => {
                    count_consumed(&self.metrics, PipelineRole::Enrich, records);
                    return;
                }
                // Learn where the partitions are now, go again. Profiles of
                // a partition that moved may have moved on too.
                Attempt::Stale => {
                    self.known = None;
                    self.profiles.clear();
                }
                // Read them again; the copies may hold a person deleted
                // meanwhile.
                Attempt::Suppressions => {
                    self.suppressions = None;
                    self.profiles.clear();
                    self.links.clear();
                }
                Attempt::Stopped => return,
            }
        }
    }

    fn enrich_and_commit(&mut self, topic: &str, records: &[&Record]) -> Attempt {
        let mut events = Vec::with_capacity(records.len());
        let mut origin = Vec::with_capacity(records.len());
        let mut letters = Vec::new();
        let suppressions = self.suppressions.clone().unwrap_or_default();
        let mut suppressed = 0;
        for record in records {
            let fallback = || format!("{topic}-{}-{}", record.partition, record.offset);
            match Event::from_json(&record.payload, fallback) {
                Ok(event) if suppressions.drops(&self.identity, &event) => suppressed += 1,
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
        // Each event's profile key, and what it links, before the plugins
        // run: the updates merge under the key. A key this lane has seen
        // lead to another profile goes there directly, and a link it has
        // seen made is left out.
        let mut identities = BatchIdentities::default();
        let mut blocked = 0;
        for event in &mut events {
            let keyed = self.identity.key_event(event);
            blocked += keyed.blocked;
            let key = event.profile_key();
            let known = self.links.resolve(key);
            if known != key {
                event.profile_key = Some(known.to_owned());
            } else if let Some(identifier) = keyed.key_identifier {
                identities.keys.insert(key.to_owned(), identifier);
            }
            if let Some(link) = keyed.link
                && !self.links.joins(&link)
            {
                identities.links.push(link);
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
                    kind: error.kind,
                    detail: error.message,
                },
            ));
        }
        let (runtime, until) = (&self.runtime, Until::Stopped(&self.stop));
        if !letters.is_empty() {
            let sink = &self.targets.dead_letters;
            let sent =
                runtime.block_on(retry("writing dead letters", Backoff::LANE, until, || {
                    sink.send(&letters)
                }));
            if sent.is_err() {
                return Attempt::Stopped;
            }
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
        let plugins: Vec<PluginVersion> = self
            .worker
            .plugins()
            .iter()
            .map(|plugin| PluginVersion {
                plugin: plugin.name().to_owned(),
                version: plugin.version.clone(),
            })
            .collect();
        let plugins = &plugins;
        let store = &self.targets.store;
        let group = self.group.as_str();
        let changes = &outcome.changes;
        let generation = suppressions.generation;
        let metrics = &self.metrics;
        let offsets = &offsets;
        let report = LinkReport::default();
        let identity = (!identities.is_empty()).then(|| Identity {
            batch: &identities,
            rules: &self.identity,
            report: &report,
        });
        // The first attempt starts from the lanes' copies, taken in turn so
        // that a sibling lane's commit cannot overtake them (a copy this
        // commit holds is missing for the others, which read the store); a
        // failed attempt loses them, and the retry reads the store.
        let turn = self.turns.take(!identities.links.is_empty());
        let mut copies = Some(self.profiles.take(changes));
        let failed = &Cell::new(false);
        let committed = runtime.block_on(retry("committing a batch", Backoff::LANE, until, || {
            let known = copies.take().unwrap_or_default();
            async move {
                let commit = Commit {
                    group,
                    topic,
                    changes,
                    offsets,
                    plugins,
                    known,
                    now_ms: now_ms(),
                    identity,
                    suppressions: generation,
                };
                let started = Instant::now();
                let result = store.commit(commit).await;
                metrics.commit_attempt(started.elapsed());
                failed.set(failed.get() || result.is_err());
                result
            }
        }));
        drop(turn);
        if failed.get() {
            // Whatever made a commit fail may have made other copies stale.
            self.profiles.clear();
        }
        let (profiles, documents) = match committed {
            Ok(CommitOutcome::Applied(profiles)) => (profiles, None),
            Ok(CommitOutcome::AppliedEncoded {
                profiles,
                documents,
            }) => (profiles, Some(documents)),
            Ok(CommitOutcome::Stale) => return Attempt::Stale,
            Ok(CommitOutcome::SuppressionsChanged) => return Attempt::Suppressions,
            Err(_) => return Attempt::Stopped,
        };
        if let Some(known) = &mut self.known {
            known.extend(next.iter().copied());
        }
        self.count_links(blocked, report);
        self.metrics
            .identity
            .suppressed(PipelineRole::Enrich, suppressed);
        if let Some(cache) = &self.targets.cache
            && !profiles.is_empty()
            && let Err(error) = runtime.block_on(async {
                match &documents {
                    Some(documents) => cache.put_encoded(&profiles, documents).await,
                    None => cache.put(&profiles).await,
                }
            })
        {
            // The cache forgets these keys and refills them from the store.
            tracing::warn!("profile cache write-through failed: {:#}", error.0);
        }
        self.links.learn(&profiles);
        self.profiles.keep(profiles);
        self.source.committed(&next);
        Attempt::Committed
    }
}

impl EnrichLane {
    /// Counts and logs what a committed batch's links did.
    fn count_links(&self, blocked: usize, report: LinkReport) {
        let metrics = &self.metrics.identity;
        metrics.refused("blocked", blocked as u64);
        let (merges, refused) = report.take();
        for merge in merges.iter().filter(|m| m.kind == LinkKind::Merge) {
            metrics.merges.inc();
            tracing::debug!(
                survivor = %merge.survivor,
                merged = %merge.merged,
                event_id = %merge.event_id,
                "merged two profiles of one person"
            );
        }
        for refusal in &refused {
            metrics.refused(refusal.reason.as_str(), 1);
            tracing::info!(
                reason = refusal.reason.as_str(),
                event_id = %refusal.event_id,
                identifier_type = %refusal.identifier.kind,
                profile = %refusal.profile,
                "refused to link an identifier to a profile"
            );
        }
    }
}

/// Turns at committing, shared by the enrich lanes of a process.
///
/// A batch with identity links plans them on rows read early in its
/// transaction, and a sibling lane committing one of those rows before the
/// plan is written makes the store undo the writes and plan again under
/// lock, the batch's whole write paid twice. The sibling lanes' batches
/// overlap in time and in persons (a person's anonymous and known events sit
/// on partitions of different lanes), so while persons' first links come
/// in, this would happen to most batches. So a commit with links waits
/// until no other lane commits and keeps the others out while it runs;
/// commits without links run side by side. The store stays the guard
/// against writers of other processes.
#[derive(Default)]
pub(super) struct CommitTurns(RwLock<()>);

/// A lane's turn at committing, held until dropped.
pub(super) struct Turn<'t> {
    _alone: Option<RwLockWriteGuard<'t, ()>>,
    _shared: Option<RwLockReadGuard<'t, ()>>,
}

impl CommitTurns {
    /// Waits for a turn: alone for a batch that links identities.
    pub(super) fn take(&self, links: bool) -> Turn<'_> {
        // The lock guards nothing but the turn: a panicked holder left
        // nothing half-done to see.
        if links {
            Turn {
                _alone: Some(self.0.write().unwrap_or_else(PoisonError::into_inner)),
                _shared: None,
            }
        } else {
            Turn {
                _alone: None,
                _shared: Some(self.0.read().unwrap_or_else(PoisonError::into_inner)),
            }
        }
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
