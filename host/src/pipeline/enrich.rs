//! The enrich role: lanes and their committer.
//!
//! A lane decodes its batches, runs them through the plugin chain and sends
//! bad events to the dead letters; it hands the changes, with the offsets
//! they came from, to the process's one committer and goes on with its next
//! batch while they commit. The committer commits what the lanes handed it,
//! all at once when several are waiting (one transaction, one write-through
//! to the cache): a person's anonymous and known events sit on partitions of
//! different lanes, and together their changes to one profile are one row
//! written, not one per lane, and never two writers of the process at odds
//! over a row.
//!
//! A lane has at most one batch with the committer, and waits for it before
//! handing over the next one. One that did not commit (another consumer
//! moved a partition, the suppressions changed) is run again, and the batch
//! prepared meanwhile after it.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::mpsc::{Receiver, Sender, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::dead_letter::{DeadLetter, DeadLetterSink, DeadReason};
use super::link_memory::LinkMemory;
use super::profile_copies::ProfileCopies;
use super::retry::{Backoff, Until, retry};
use super::source::{Batch, Record, Source};
use super::{LaneWork, next_offsets, per_partition};
use crate::model::event::Event;
use crate::model::identity::{self, BatchIdentities, LinkKind, Rules};
use crate::model::merge::{ProfileChanges, fold_later};
use crate::model::profile::now_ms;
use crate::plugin::chain::ChainWorker;
use crate::privacy::{PrivacyStore, Suppressions};
use crate::store::{
    Commit, CommitOutcome, EncodedProfile, Identity, LinkReport, OffsetRange, PluginVersion,
    ProfileCache, ProfileStore,
};
use crate::telemetry::{Metrics, PipelineRole};

/// Where the enrich role writes.
#[derive(Clone)]
pub struct EnrichTargets {
    pub store: Arc<dyn ProfileStore>,
    pub cache: Option<Arc<dyn ProfileCache>>,
    pub dead_letters: Arc<dyn DeadLetterSink>,
}

/// What the lanes and the committer of a process share.
#[derive(Clone)]
pub(super) struct Shared {
    pub(super) targets: EnrichTargets,
    pub(super) group: String,
    /// The profiles committed last, so the next commit touching them need
    /// not read them back.
    pub(super) profiles: Arc<ProfileCopies>,
    /// Where identifiers have been seen to live.
    pub(super) links: Arc<Mutex<LinkMemory>>,
    /// How events resolve to profiles.
    pub(super) identity: Arc<Rules>,
    pub(super) runtime: Handle,
    pub(super) stop: CancellationToken,
    pub(super) metrics: Arc<Metrics>,
}

impl Shared {
    /// The link memory, whatever a panicking holder left (it is only ever
    /// a guess the store checks).
    fn links(&self) -> MutexGuard<'_, LinkMemory> {
        self.links.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One enrich lane: a chain worker and what it knows of the store's offsets.
pub(super) struct EnrichLane {
    /// Its number, from 0.
    pub(super) lane: usize,
    pub(super) shared: Shared,
    pub(super) worker: ChainWorker,
    /// Partition → next offset the store holds, as last read or handed to
    /// the committer; `None` until read. A partition missing from the map
    /// has no row.
    pub(super) known: Option<HashMap<i32, i64>>,
    /// The suppressed persons, whose events are dropped before the
    /// plugins; `None` until read.
    pub(super) suppressions: Option<Arc<Suppressions>>,
    pub(super) privacy: Arc<dyn PrivacyStore>,
    pub(super) committer: Sender<Handed>,
    /// The batch with the committer, if any.
    pub(super) in_flight: Option<InFlight>,
}

/// A batch handed to the committer, and where its outcome comes back.
pub(super) struct InFlight {
    batch: Batch,
    outcome: Receiver<Attempt>,
}

/// How the committer's attempt at a batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Attempt {
    Committed,
    /// Another consumer moved a partition: the offsets must be read again.
    Stale,
    /// A privacy request changed the suppressions: read them again.
    Suppressions,
    /// The pipeline stopped while a backend was away.
    Stopped,
}

/// What a lane made of a batch.
enum Prepared {
    Ready(Box<Ready>),
    /// Every record was committed before, or dropped.
    Nothing,
    /// The pipeline stopped while a backend was away.
    Stopped,
}

/// Whether the batch handed over before committed.
enum Settled {
    Committed,
    /// It committed, but only after being run again: what was prepared
    /// meanwhile must be prepared again.
    Again,
    Stopped,
}

impl LaneWork for EnrichLane {
    fn process(&mut self, batch: Batch) {
        let metrics = &self.shared.metrics;
        metrics.batch_received(PipelineRole::Enrich, batch.records.len());
        loop {
            let prepared = self.prepare(&batch);
            match self.settle() {
                Settled::Committed => {}
                Settled::Again => continue,
                Settled::Stopped => return,
            }
            if let Prepared::Ready(ready) = prepared {
                self.hand_over(ready, batch);
            }
            return;
        }
    }

    /// Nothing is waiting: see the batch handed over through, so that one
    /// that must run again does not wait for the next batch.
    fn idle(&mut self) {
        self.settle();
    }
}

impl EnrichLane {
    fn hand_over(&mut self, ready: Box<Ready>, batch: Batch) {
        let (sender, outcome) = sync_channel(1);
        if let Some(known) = &mut self.known {
            known.extend(ready.next.iter().copied());
        }
        let handed = Handed {
            lane: self.lane,
            ready,
            outcome: sender,
        };
        // The committer ends only after every lane: a failed send means the
        // pipeline is going away, and the batch is read again next time.
        if self.committer.send(handed).is_ok() {
            self.in_flight = Some(InFlight { batch, outcome });
        }
    }

    /// Waits for the batch with the committer; one that did not commit is
    /// prepared and handed over again, until it commits or the pipeline
    /// stops.
    fn settle(&mut self) -> Settled {
        let mut again = false;
        while let Some(flight) = self.in_flight.take() {
            match flight.outcome.recv().unwrap_or(Attempt::Stopped) {
                Attempt::Committed => continue,
                // Learn where the partitions are now, go again. Profiles of
                // a partition that moved may have moved on too.
                Attempt::Stale => {
                    self.known = None;
                    self.shared.profiles.clear();
                }
                // Read them again; the copies may hold a person deleted
                // meanwhile.
                Attempt::Suppressions => {
                    self.suppressions = None;
                    self.shared.profiles.clear();
                    self.shared.links().clear();
                }
                Attempt::Stopped => return Settled::Stopped,
            }
            again = true;
            match self.prepare(&flight.batch) {
                Prepared::Ready(ready) => self.hand_over(ready, flight.batch),
                Prepared::Nothing => {}
                Prepared::Stopped => return Settled::Stopped,
            }
        }
        if again {
            Settled::Again
        } else {
            Settled::Committed
        }
    }

    /// Runs the records of `batch` the store has not counted yet: decoded,
    /// keyed to their profiles, through the plugins, bad ones to the dead
    /// letters.
    fn prepare(&mut self, batch: &Batch) -> Prepared {
        let (runtime, stop) = (&self.shared.runtime, &self.shared.stop);
        if self.known.is_none() {
            let (store, group, topic) = (
                &self.shared.targets.store,
                &self.shared.group,
                &*batch.topic,
            );
            let loaded = runtime.block_on(retry(
                "loading consumer offsets",
                Backoff::LANE,
                Until::Stopped(stop),
                || store.offsets(group, topic),
            ));
            match loaded {
                Ok(offsets) => self.known = Some(offsets),
                Err(_) => return Prepared::Stopped,
            }
        }
        let held = self.suppressions.take();
        let before = held.as_ref().map(|s| s.generation);
        match super::current_suppressions(&self.privacy, held, runtime, stop) {
            Some(suppressions) => {
                if before.is_some_and(|g| g != suppressions.generation) {
                    // The copies may hold a person deleted meanwhile.
                    self.shared.profiles.clear();
                    self.shared.links().clear();
                }
                self.suppressions = Some(suppressions);
            }
            None => return Prepared::Stopped,
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
            return Prepared::Nothing;
        }
        self.run(&batch.topic, &records)
    }

    fn run(&mut self, topic: &Arc<str>, records: &[&Record]) -> Prepared {
        let mut events = Vec::with_capacity(records.len());
        let mut origin = Vec::with_capacity(records.len());
        let mut letters = Vec::new();
        let suppressions = self.suppressions.clone().unwrap_or_default();
        let mut suppressed = 0;
        for record in records {
            let fallback = || format!("{topic}-{}-{}", record.partition, record.offset);
            match Event::from_json(&record.payload, fallback) {
                Ok(event) if suppressions.drops(&self.shared.identity, &event) => suppressed += 1,
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
        // run: the updates merge under the key. A key seen to lead to
        // another profile goes there directly, and a link seen made is left
        // out.
        let mut identities = BatchIdentities::default();
        let mut blocked = 0;
        {
            let memory = self.shared.links();
            for event in &mut events {
                let keyed = self.shared.identity.key_event(event);
                blocked += keyed.blocked;
                let key = event.profile_key();
                let known = memory.resolve(key);
                if known != key {
                    event.profile_key = Some(known.to_owned());
                } else if let Some(identifier) = keyed.key_identifier {
                    identities.keys.insert(key.to_owned(), identifier);
                }
                if let Some(link) = keyed.link
                    && !memory.joins(&link)
                {
                    identities.links.push(link);
                }
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
        let shared = &self.shared;
        if !letters.is_empty() {
            let sink = &shared.targets.dead_letters;
            let until = Until::Stopped(&shared.stop);
            let sent = shared.runtime.block_on(retry(
                "writing dead letters",
                Backoff::LANE,
                until,
                || sink.send(&letters),
            ));
            if sent.is_err() {
                return Prepared::Stopped;
            }
            shared
                .metrics
                .dead_letters(letters.iter().map(|letter| &letter.reason));
        }

        let next = next_offsets(records.iter().copied());
        let offsets = next
            .iter()
            .map(|&(partition, next)| OffsetRange {
                partition,
                expected: self.known.as_ref().and_then(|k| k.get(&partition).copied()),
                next,
            })
            .collect();
        let plugins = self
            .worker
            .plugins()
            .iter()
            .map(|plugin| PluginVersion {
                plugin: plugin.name().to_owned(),
                version: plugin.version.clone(),
            })
            .collect();
        let consumed = per_partition(records.iter().copied());
        Prepared::Ready(Box::new(Ready {
            topic: topic.clone(),
            changes: outcome.changes,
            offsets,
            next,
            consumed,
            plugins,
            identities,
            generation: suppressions.generation,
            blocked,
            suppressed,
        }))
    }
}

/// A lane's batch, ready to commit: its changes and what they came from.
pub(super) struct Ready {
    topic: Arc<str>,
    changes: ProfileChanges,
    offsets: Vec<OffsetRange>,
    /// The next offset per partition once committed.
    next: Vec<(i32, i64)>,
    /// Records per partition the batch counts as consumed.
    consumed: Vec<(i32, u64)>,
    plugins: Vec<PluginVersion>,
    identities: BatchIdentities,
    /// The suppressions' generation the events were filtered by.
    generation: i64,
    /// Identifiers refused as blocked values.
    blocked: usize,
    /// Events of suppressed persons, dropped.
    suppressed: u64,
}

impl Ready {
    /// Takes in `other` (another lane's batch, of other partitions), so
    /// that both commit as one; gives it back when they cannot: another
    /// topic, another set of plugin versions (the timeline records one set
    /// per commit), other suppressions, or changes that do not fold.
    fn join(&mut self, mut other: Box<Ready>) -> Result<(), Box<Ready>> {
        if self.topic != other.topic
            || self.plugins != other.plugins
            || self.generation != other.generation
        {
            return Err(other);
        }
        let changes = std::mem::take(&mut other.changes);
        if let Err(changes) = fold_later(&mut self.changes, changes) {
            other.changes = changes;
            return Err(other);
        }
        self.offsets.extend(other.offsets);
        self.next.extend(other.next);
        self.consumed.extend(other.consumed);
        self.identities.keys.extend(other.identities.keys);
        self.identities.links.extend(other.identities.links);
        self.blocked += other.blocked;
        self.suppressed += other.suppressed;
        Ok(())
    }
}

/// A batch handed to the committer.
pub(super) struct Handed {
    lane: usize,
    ready: Box<Ready>,
    outcome: SyncSender<Attempt>,
}

/// The committer of a process's enrich lanes: commits what they hand it,
/// several lanes' batches as one when they wait together.
pub(super) struct Committer {
    pub(super) shared: Shared,
    pub(super) source: Arc<dyn Source>,
    pub(super) inbox: Receiver<Handed>,
}

impl Committer {
    /// Commits until every lane has gone.
    ///
    /// Lanes committed together are answered together and start their
    /// next batches together, so they are ready again at about the same
    /// time: when the first batch arrives, the committer waits up to
    /// [`LINGER`] for the other lanes of the last commit, whose batches
    /// then join it instead of making a commit of their own.
    pub(super) fn run(self) {
        let mut writing = None;
        let mut last: Vec<usize> = Vec::new();
        while let Ok(first) = self.inbox.recv() {
            let mut handed = vec![first];
            let until = Instant::now() + LINGER;
            loop {
                handed.extend(self.inbox.try_iter());
                let missing = last
                    .iter()
                    .any(|lane| handed.iter().all(|h| h.lane != *lane));
                let left = until.saturating_duration_since(Instant::now());
                if !missing || left.is_zero() {
                    break;
                }
                match self.inbox.recv_timeout(left) {
                    Ok(more) => handed.push(more),
                    Err(_) => break,
                }
            }
            last = handed.iter().map(|h| h.lane).collect();
            for (ready, outcomes) in gather(handed) {
                let attempt = self.commit(ready, &mut writing);
                for outcome in outcomes {
                    // A lane that went away needs no answer.
                    let _ = outcome.send(attempt);
                }
            }
        }
        self.written(writing.take());
    }

    /// Waits for a write-through to end.
    fn written(&self, writing: Option<JoinHandle<()>>) {
        if let Some(writing) = writing
            && let Err(error) = self.shared.runtime.block_on(writing)
        {
            tracing::warn!("profile cache write-through failed: {error}");
        }
    }

    /// Commits `ready`; then writes the profiles through to the cache while
    /// the next commit runs (`writing`, one write-through at a time, in
    /// commit order).
    fn commit(&self, ready: Box<Ready>, writing: &mut Option<JoinHandle<()>>) -> Attempt {
        let shared = &self.shared;
        let (runtime, until) = (&shared.runtime, Until::Stopped(&shared.stop));
        let store = &shared.targets.store;
        let metrics = &shared.metrics;
        let report = LinkReport::default();
        let identity = (!ready.identities.is_empty()).then(|| Identity {
            batch: &ready.identities,
            rules: &shared.identity,
            report: &report,
        });
        let (group, topic, changes) = (shared.group.as_str(), &*ready.topic, &ready.changes);
        let (offsets, plugins, generation) = (&ready.offsets, &ready.plugins, ready.generation);
        // The first attempt starts from the copies of the rows the batch
        // changes and of its links' identifiers; a failed attempt loses
        // them, and the retry reads the store.
        let homes = identity::homes(&ready.identities.links);
        let mut copies = Some(shared.profiles.take(changes.keys().chain(&homes)));
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
        if failed.get() {
            // Whatever made a commit fail may have made other copies stale.
            shared.profiles.clear();
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
        for &(partition, count) in &ready.consumed {
            metrics.events_consumed(PipelineRole::Enrich, partition, count);
        }
        self.count_links(ready.blocked, report);
        metrics
            .identity
            .suppressed(PipelineRole::Enrich, ready.suppressed);
        if let Some(cache) = &shared.targets.cache
            && !profiles.is_empty()
        {
            let encoded: anyhow::Result<Vec<EncodedProfile>> = match documents {
                Some(documents) => Ok(profiles
                    .iter()
                    .zip(documents)
                    .map(|(profile, document)| EncodedProfile::new(profile, document))
                    .collect()),
                None => profiles.iter().map(EncodedProfile::encode).collect(),
            };
            self.written(writing.take());
            let cache = cache.clone();
            *writing = Some(runtime.spawn(async move {
                let written = match encoded {
                    Ok(encoded) => cache.put_encoded(&encoded).await,
                    Err(error) => Err(error.into()),
                };
                if let Err(error) = written {
                    // The cache forgets these keys and refills them from
                    // the store.
                    tracing::warn!("profile cache write-through failed: {:#}", error.0);
                }
            }));
        }
        shared.links().learn(&profiles);
        shared.profiles.keep(profiles);
        self.source.committed(&ready.next);
        Attempt::Committed
    }

    /// Counts and logs what a committed batch's links did.
    fn count_links(&self, blocked: usize, report: LinkReport) {
        let metrics = &self.shared.metrics.identity;
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

/// How long the committer waits, once a batch has come, for the batches
/// of the other lanes it last committed with.
const LINGER: Duration = Duration::from_millis(100);

/// The batches handed over together, as the commits to make, in order:
/// each joins the commit before it when it can.
fn gather(handed: Vec<Handed>) -> Vec<(Box<Ready>, Vec<SyncSender<Attempt>>)> {
    let mut commits: Vec<(Box<Ready>, Vec<SyncSender<Attempt>>)> = Vec::new();
    for Handed { ready, outcome, .. } in handed {
        let ready = match commits.last_mut() {
            Some((last, outcomes)) => match last.join(ready) {
                Ok(()) => {
                    outcomes.push(outcome);
                    continue;
                }
                Err(ready) => ready,
            },
            None => ready,
        };
        commits.push((ready, vec![outcome]));
    }
    commits
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::merge::{AttributeChange, Provenance};
    use crate::model::update::Op;

    /// A lane's batch over `partition`: `delta` page views for each user.
    fn ready(partition: i32, users: &[(&str, i64)], version: &str) -> Box<Ready> {
        let changes = users
            .iter()
            .map(|&(user, delta)| {
                let change = AttributeChange {
                    op: Op::Increment(delta),
                    provenance: Provenance {
                        plugin: "page-views".into(),
                        plugin_version: version.into(),
                        event_id: format!("{user}-{partition}"),
                        event_time_ms: 1,
                    },
                };
                (user.to_owned(), [("page_views".to_owned(), change)].into())
            })
            .collect();
        Box::new(Ready {
            topic: "events".into(),
            changes,
            offsets: vec![OffsetRange {
                partition,
                expected: Some(10),
                next: 20,
            }],
            next: vec![(partition, 20)],
            consumed: vec![(partition, 10)],
            plugins: vec![PluginVersion {
                plugin: "page-views".to_owned(),
                version: version.to_owned(),
            }],
            identities: BatchIdentities::default(),
            generation: 0,
            blocked: 1,
            suppressed: 2,
        })
    }

    fn handed(ready: Box<Ready>) -> (Handed, Receiver<Attempt>) {
        let (outcome, receiver) = sync_channel(1);
        let lane = ready.offsets[0].partition as usize;
        (
            Handed {
                lane,
                ready,
                outcome,
            },
            receiver,
        )
    }

    #[test]
    fn batches_waiting_together_commit_as_one_with_one_row_per_profile() {
        let (a, _) = handed(ready(0, &[("u1", 2), ("u2", 1)], "1.0.0"));
        let (b, _) = handed(ready(1, &[("u1", 3)], "1.0.0"));
        // Another plugin version: the timeline records one set per commit.
        let (c, _) = handed(ready(2, &[("u3", 1)], "1.1.0"));
        let commits = gather(vec![a, b, c]);
        assert_eq!(commits.len(), 2);
        let (joined, outcomes) = &commits[0];
        assert_eq!(outcomes.len(), 2);
        assert_eq!(joined.changes.len(), 2, "u1 once, u2");
        assert_eq!(joined.changes["u1"]["page_views"].op, Op::Increment(5));
        let partitions: Vec<i32> = joined.offsets.iter().map(|o| o.partition).collect();
        assert_eq!(partitions, [0, 1]);
        assert_eq!(joined.next, [(0, 20), (1, 20)]);
        assert_eq!(joined.consumed, [(0, 10), (1, 10)]);
        assert_eq!((joined.blocked, joined.suppressed), (2, 4));
        let (alone, outcomes) = &commits[1];
        assert_eq!((alone.offsets[0].partition, outcomes.len()), (2, 1));
    }

    #[test]
    fn batches_with_other_suppressions_or_clashing_operations_commit_apart() {
        let mut later = ready(1, &[("u9", 1)], "1.0.0");
        later.generation = 1;
        let mut first = ready(0, &[("u1", 1)], "1.0.0");
        assert!(first.join(later).is_err());
        let mut clash = ready(1, &[("u1", 1)], "1.0.0");
        let set = clash
            .changes
            .get_mut("u1")
            .and_then(|a| a.get_mut("page_views"));
        set.expect("the change").op = Op::Set(crate::model::update::Value::Integer(0));
        let back = first.join(clash).expect_err("set after increment");
        assert_eq!(back.offsets[0].partition, 1);
        assert_eq!(first.offsets.len(), 1, "unchanged");
        assert_eq!(first.changes["u1"]["page_views"].op, Op::Increment(1));
    }
}
