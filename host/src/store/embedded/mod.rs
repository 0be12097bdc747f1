//! The embedded backend: every store of [`crate::store`] and the event log in
//! one redb file, `<data_dir>/pulsehub.redb`, so that PulseHub runs as one
//! process without Kafka, PostgreSQL or Redis and with the same pipeline.
//!
//! # Tables
//! - `inbox`: offset (u64, dense from 0) → (key, payload). The log that
//!   [`EventPublisher::publish`] appends to and [`EmbeddedSource`] reads as
//!   topic [`INBOX_TOPIC`], partition 0.
//! - `meta`: name → u64. `inbox.next` is the offset the next published event
//!   gets, kept apart so that offsets never repeat once old entries are gone.
//! - `profiles`: user id → JSON of [`Profile`].
//! - `offsets`: (group, topic, partition) → next offset to read.
//! - `dead_letters`: sequence (u64) → JSON of a [`DeadLetter`]: its fields,
//!   key and payload as text, with the exact bytes in hex only when they are
//!   not UTF-8 (the format is documented in `rows.rs`).
//! - `archive`: event id → JSON of an [`ArchivedEvent`].
//! - `profile_merges`: the merge log, (event id, what joined) → (survivor,
//!   kind, milliseconds); a profile row may be a pointer
//!   ([`Profile::merged_into`], see [`crate::model::identity`]).
//! - `privacy_requests`: request id → JSON of a
//!   [`PrivacyRequest`](crate::privacy::PrivacyRequest); `suppressions`:
//!   suppressed key → request id; the generation of the suppressions is
//!   `meta`'s `privacy.generation` (see `privacy.rs`).
//! - `profile_updates`: sequence (u64) → (profile id, message JSON): the
//!   newest messages of the `profile-updates` stream, written with the
//!   changes they describe (see `updates.rs`).
//!
//! # Durability
//! Publishing, committing, dead letters and archiving commit durably (fsync)
//! before they return, one write transaction per call. A source's own
//! progress ([`EmbeddedSource`]'s `committed`) is written without an fsync: it
//! becomes durable with the next durable commit, and losing it only replays
//! idempotent archive inserts.
//!
//! # Inbox retention
//! Each commit that moves a group's inbox offset deletes the inbox entries
//! below the lowest next offset among the groups that have committed on the
//! inbox and the groups with a source opened from this store (which count as
//! 0 until they commit). A group that never committed and has no source open
//! holds nothing back: started later, it begins at the oldest entry kept.

mod privacy;
mod rows;
mod segments;
mod source;
mod updates;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_trait::async_trait;
use redb::{
    Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, TableDefinition,
    WriteTransaction,
};
use tokio::runtime::{Handle, RuntimeFlavor};

use crate::model::identity;
use crate::model::profile::Profile;
use crate::pipeline::dead_letter::{DeadLetter, DeadLetterSink};
use crate::pipeline::publish::{EventPublisher, OutgoingEvent};
use crate::segment::{LiveSegments, MembershipChanges};
use crate::store::{
    ArchivedEvent, Commit, CommitOutcome, EventArchive, ProfileStore, StoreError, StoreResult,
    TimelineEntry,
};

pub use source::EmbeddedSource;

/// The file inside the data dir.
pub const FILE_NAME: &str = "pulsehub.redb";
/// The topic name offsets of the inbox are stored under.
pub const INBOX_TOPIC: &str = "inbox";
/// The inbox is a single partition.
pub const INBOX_PARTITION: i32 = 0;

const INBOX: TableDefinition<u64, (&str, &[u8])> = TableDefinition::new("inbox");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const PROFILES: TableDefinition<&str, &str> = TableDefinition::new("profiles");
const OFFSETS: TableDefinition<(&str, &str, i32), i64> = TableDefinition::new("offsets");
const DEAD_LETTERS: TableDefinition<u64, &str> = TableDefinition::new("dead_letters");
const ARCHIVE: TableDefinition<&str, &str> = TableDefinition::new("archive");
/// The merge log: (causing event id, what joined) to (survivor, kind,
/// wall-clock milliseconds), as PostgreSQL's `profile_merges`.
const MERGES: TableDefinition<(&str, &str), (&str, &str, i64)> =
    TableDefinition::new("profile_merges");
/// The timeline of plugin versions: `(group, topic, partition, plugin,
/// version, from_offset)` to `until_offset` (`None` while open), as
/// PostgreSQL's `plugin_timeline`.
const TIMELINE: TableDefinition<TimelineKey, Option<i64>> = TableDefinition::new("plugin_timeline");
type TimelineKey = (
    &'static str,
    &'static str,
    i32,
    &'static str,
    &'static str,
    i64,
);

const INBOX_NEXT: &str = "inbox.next";

/// The page cache of [`EmbeddedStore::open`]: the default of
/// `embedded.cache_mib` (redb's own default is 1 GiB).
pub const DEFAULT_CACHE_BYTES: usize = 256 << 20;

/// The embedded store: profile store, event publisher (the inbox), dead-letter
/// sink and event archive in one redb database. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    path: PathBuf,
    /// Counts publishes; a caught-up source waits for it to change.
    published: Mutex<u64>,
    wake: Condvar,
    /// Groups with a source opened from this store. They hold inbox entries
    /// back even before their first commit.
    readers: Mutex<BTreeSet<String>>,
    /// The segments the commits evaluate.
    segments: LiveSegments,
    /// The `profile-updates` log: whether it is written, and its readers'
    /// wake-up.
    updates: updates::Updates,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens (creating it and the folder when missing) the store in
    /// `data_dir`. Fails with a message saying the data dir is in use when
    /// another process (or another store in this one) has it open.
    pub fn open(data_dir: &Path) -> anyhow::Result<EmbeddedStore> {
        Self::open_with_cache(data_dir, DEFAULT_CACHE_BYTES)
    }

    /// [`EmbeddedStore::open`], keeping up to `cache_bytes` of the file's
    /// pages in memory (`embedded.cache_mib`).
    pub fn open_with_cache(data_dir: &Path, cache_bytes: usize) -> anyhow::Result<EmbeddedStore> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating the data dir {}", data_dir.display()))?;
        let path = data_dir.join(FILE_NAME);
        let db = match Database::builder()
            .set_cache_size(cache_bytes)
            .create(&path)
        {
            Ok(db) => db,
            Err(DatabaseError::DatabaseAlreadyOpen) => bail!(
                "the data dir {} is in use: another PulseHub process has {} open \
                 (stop it, or give this one another data dir)",
                data_dir.display(),
                path.display()
            ),
            Err(error) => {
                return Err(anyhow::Error::new(error)
                    .context(format!("opening the embedded store {}", path.display())));
            }
        };
        // Every table exists from here on, so readers never meet a missing one.
        let create_tables = || -> anyhow::Result<u64> {
            let txn = db.begin_write()?;
            txn.open_table(INBOX)?;
            txn.open_table(META)?;
            txn.open_table(PROFILES)?;
            txn.open_table(OFFSETS)?;
            txn.open_table(DEAD_LETTERS)?;
            txn.open_table(ARCHIVE)?;
            txn.open_table(TIMELINE)?;
            txn.open_table(MERGES)?;
            txn.open_table(privacy::REQUESTS)?;
            txn.open_table(privacy::SUPPRESSIONS)?;
            txn.open_table(updates::UPDATES)?;
            let newest = updates::stored_newest(&txn)?;
            txn.commit()?;
            Ok(newest)
        };
        let newest_update = create_tables()
            .with_context(|| format!("creating the tables of {}", path.display()))?;
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                db,
                path,
                published: Mutex::new(0),
                wake: Condvar::new(),
                readers: Mutex::new(BTreeSet::new()),
                segments: LiveSegments::default(),
                updates: updates::Updates::new(newest_update),
            }),
        })
    }

    /// The database file.
    /// The segments this store's commits evaluate, to keep live.
    pub fn segments(&self) -> LiveSegments {
        self.inner.segments.clone()
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The inbox as read by consumer group `group`.
    pub fn source(&self, group: &str) -> EmbeddedSource {
        lock(&self.inner.readers).insert(group.to_owned());
        EmbeddedSource::new(self.inner.clone(), group)
    }

    /// Every dead letter stored, oldest first.
    pub fn dead_letters(&self) -> anyhow::Result<Vec<DeadLetter>> {
        let txn = self.inner.db.begin_read()?;
        let table = txn.open_table(DEAD_LETTERS)?;
        let mut letters = Vec::new();
        for entry in table.iter()? {
            let (sequence, json) = entry?;
            let letter = rows::LetterRow::parse(json.value())
                .and_then(rows::LetterRow::into_letter)
                .with_context(|| format!("dead letter {} is unreadable", sequence.value()))?;
            letters.push(letter);
        }
        Ok(letters)
    }

    /// Runs `work` (redb calls, which may wait for the disk) for an async
    /// trait method, with `what` as the error's context.
    fn run<T>(
        &self,
        what: &'static str,
        work: impl FnOnce(&Inner) -> anyhow::Result<T>,
    ) -> StoreResult<T> {
        blocking(|| work(&self.inner)).map_err(|error| StoreError(error.context(what)))
    }
}

/// Runs blocking work without stalling other tasks. On a multi-thread
/// runtime it goes through `block_in_place`: a worker thread first hands its
/// queued tasks to another one, and a lane thread inside `Handle::block_on`
/// (how the pipeline calls the store) has nothing to hand over and just runs
/// it. Without a runtime, or on a current-thread one (tests), it runs in
/// place. Unlike `spawn_blocking`, the work can borrow the caller's data (a
/// commit's changes) instead of copying it.
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

/// Locks `mutex`; its data stays consistent even if a holder panicked
/// (counters and a set of names), so poisoning is ignored.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inner {
    fn append(&self, events: &[OutgoingEvent]) -> anyhow::Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let mut inbox = txn.open_table(INBOX)?;
            let mut next = meta.get(INBOX_NEXT)?.map_or(0, |v| v.value());
            for event in events {
                inbox.insert(next, (event.key.as_str(), event.payload.as_slice()))?;
                next += 1;
            }
            meta.insert(INBOX_NEXT, next)?;
        }
        txn.commit()?;
        *lock(&self.published) += 1;
        self.wake.notify_all();
        Ok(())
    }

    /// The publish count, to pass to [`Inner::wait_for_publish`] after reading.
    fn publications(&self) -> u64 {
        *lock(&self.published)
    }

    /// Waits until a publish after `seen` or until `timeout` passes.
    fn wait_for_publish(&self, seen: u64, timeout: Duration) {
        let guard = lock(&self.published);
        let _unused = self
            .wake
            .wait_timeout_while(guard, timeout, |count| *count == seen)
            .unwrap_or_else(PoisonError::into_inner);
    }

    fn commit(&self, commit: &Commit<'_>) -> anyhow::Result<CommitOutcome> {
        let txn = self.db.begin_write()?;
        if privacy::generation(&txn)? != commit.suppressions {
            txn.abort()?;
            return Ok(CommitOutcome::SuppressionsChanged);
        }
        let stale = {
            let offsets = txn.open_table(OFFSETS)?;
            let mut stale = false;
            for range in commit.offsets {
                let key = (commit.group, commit.topic, range.partition);
                let stored = offsets.get(key)?.map(|v| v.value());
                stale |= stored != range.expected;
            }
            stale
        };
        if stale {
            txn.abort()?;
            return Ok(CommitOutcome::Stale);
        }
        let set = self.segments.load();
        let mut out: BTreeMap<String, Profile> = BTreeMap::new();
        // Per profile written: the keys of the changes applied to it and
        // the memberships it changed; the survivors of merges.
        let mut written: HashMap<String, (Vec<&String>, MembershipChanges)> = HashMap::new();
        let mut survivors: HashSet<String> = HashSet::new();
        {
            let mut table = txn.open_table(PROFILES)?;
            let mut memberships = segments::Memberships::open(&txn)?;
            let batch = commit.identity.map(|identity| identity.batch);
            if let Some(identity) = commit.identity
                && !identity.batch.links.is_empty()
            {
                let mut rows = HashMap::new();
                for home in identity::homes(&identity.batch.links) {
                    read_chain(&table, &home, &mut rows)?;
                }
                let plan =
                    identity::plan(&identity.batch.links, rows, identity.rules, commit.now_ms);
                for mut profile in plan.writes {
                    // A link changes which attributes a profile holds, or
                    // makes it a pointer: every segment may change.
                    let changed = set.evaluate(&mut profile, None::<[&str; 0]>, commit.now_ms);
                    memberships.record(&set, &mut profile, &changed, commit.now_ms)?;
                    let json = profile.to_json()?;
                    table.insert(profile.user_id.as_str(), json.as_str())?;
                    written.insert(profile.user_id.clone(), (Vec::new(), changed));
                    out.insert(profile.user_id.clone(), profile);
                }
                survivors.extend(plan.merges.iter().map(|merge| merge.survivor.clone()));
                let mut merges = txn.open_table(MERGES)?;
                for merge in &plan.merges {
                    let key = (merge.event_id.as_str(), merge.merged.as_str());
                    if merges.get(key)?.is_none() {
                        merges.insert(
                            key,
                            (merge.survivor.as_str(), merge.kind.as_str(), commit.now_ms),
                        )?;
                    }
                }
                identity.report.set(plan.merges, plan.refused);
            }
            // Each change's key resolved to its profile: the row itself, or
            // where its pointers lead.
            let mut rows = HashMap::new();
            let mut groups: BTreeMap<String, Vec<&String>> = BTreeMap::new();
            for key in commit.changes.keys() {
                read_chain(&table, key, &mut rows)?;
                let canonical = match identity::resolve(&rows, key) {
                    Ok(Some(canonical)) => canonical.to_owned(),
                    Ok(None) => key.clone(),
                    Err(broken) => {
                        bail!("the pointer from {key} leads to {broken}, which has no row")
                    }
                };
                groups.entry(canonical).or_default().push(key);
            }
            for (canonical, keys) in groups {
                let mut profile = rows.remove(&canonical).unwrap_or_else(|| match batch {
                    Some(batch) => batch.new_profile(&canonical, commit.now_ms),
                    None => Profile::new(canonical.as_str(), commit.now_ms),
                });
                // A row the batch's links wrote is at its new revision
                // already, as in PostgreSQL's `apply_changes`.
                let revision = if written.contains_key(&canonical) {
                    profile.revision
                } else {
                    profile.revision + 1
                };
                for key in &keys {
                    profile.apply(&commit.changes[*key], commit.now_ms);
                }
                profile.revision = revision;
                let names = keys
                    .iter()
                    .flat_map(|key| commit.changes[*key].keys().map(String::as_str));
                let changed = set.evaluate(&mut profile, Some(names), commit.now_ms);
                memberships.record(&set, &mut profile, &changed, commit.now_ms)?;
                let json = profile.to_json()?;
                table.insert(canonical.as_str(), json.as_str())?;
                let changed = match written.remove(&canonical) {
                    Some((_, linked)) => linked.then(&changed),
                    None => changed,
                };
                written.insert(canonical.clone(), (keys, changed));
                out.insert(canonical, profile);
            }
            let mut offsets = txn.open_table(OFFSETS)?;
            for range in commit.offsets {
                offsets.insert((commit.group, commit.topic, range.partition), range.next)?;
            }
        }
        let newest_update = if self.updates.is_on() {
            // In key order, as PostgreSQL's `write_updates` writes them.
            let mut messages = Vec::new();
            for (key, profile) in &out {
                let (sources, changed) = &written[key];
                let whole = survivors.contains(key);
                let encoded =
                    updates::encode(profile, (sources, commit.changes, whole), changed, &set)?;
                messages.extend(encoded.into_iter().map(|m| (key.clone(), m)));
            }
            updates::append(&txn, &messages, updates::KEEP)?
        } else {
            None
        };
        advance_timeline(&txn, commit)?;
        if commit.topic == INBOX_TOPIC {
            self.trim_inbox(&txn)?;
        }
        txn.commit()?;
        self.updates.written(newest_update);
        Ok(CommitOutcome::Applied(out.into_values().collect()))
    }

    fn timeline(&self, group: &str, topic: &str) -> anyhow::Result<Vec<TimelineEntry>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TIMELINE)?;
        let mut entries = Vec::new();
        for entry in table.iter()? {
            let (key, until) = entry?;
            let (stored_group, stored_topic, partition, plugin, version, from) = key.value();
            if (stored_group, stored_topic) == (group, topic) {
                entries.push(TimelineEntry {
                    partition,
                    plugin: plugin.to_owned(),
                    version: version.to_owned(),
                    from_offset: from,
                    until_offset: until.value(),
                });
            }
        }
        // The order of PostgreSQL's `timeline`.
        entries.sort_by(|a, b| {
            (a.partition, &a.plugin, a.from_offset, &a.version).cmp(&(
                b.partition,
                &b.plugin,
                b.from_offset,
                &b.version,
            ))
        });
        Ok(entries)
    }

    fn offsets(&self, group: &str, topic: &str) -> anyhow::Result<HashMap<i32, i64>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(OFFSETS)?;
        let mut offsets = HashMap::new();
        for entry in table.range((group, topic, i32::MIN)..=(group, topic, i32::MAX))? {
            let (key, next) = entry?;
            offsets.insert(key.value().2, next.value());
        }
        Ok(offsets)
    }

    fn profile(&self, user_id: &str) -> anyhow::Result<Option<Profile>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(PROFILES)?;
        let Some(json) = table.get(user_id)? else {
            return Ok(None);
        };
        let profile = serde_json::from_str(json.value())
            .with_context(|| format!("the stored profile of {user_id} is unreadable"))?;
        Ok(Some(profile))
    }

    /// Deletes the inbox entries every reader is past (module doc, "Inbox
    /// retention"), inside the caller's transaction.
    fn trim_inbox(&self, txn: &WriteTransaction) -> anyhow::Result<()> {
        let mut waiting: BTreeSet<String> = lock(&self.readers).clone();
        let mut lowest: Option<i64> = None;
        {
            let offsets = txn.open_table(OFFSETS)?;
            for entry in offsets.iter()? {
                let (key, next) = entry?;
                let (group, topic, partition) = key.value();
                if topic == INBOX_TOPIC && partition == INBOX_PARTITION {
                    waiting.remove(group);
                    let next = next.value();
                    lowest = Some(lowest.map_or(next, |low| low.min(next)));
                }
            }
        }
        // A source that has not committed yet still needs everything.
        let Some(lowest) = lowest.filter(|_| waiting.is_empty()) else {
            return Ok(());
        };
        let lowest = u64::try_from(lowest).unwrap_or(0);
        let mut inbox = txn.open_table(INBOX)?;
        let oldest = inbox.first()?.map(|(offset, _)| offset.value());
        if oldest.is_some_and(|oldest| oldest < lowest) {
            inbox.retain_in(..lowest, |_, _| false)?;
        }
        Ok(())
    }

    /// Stores `group`'s next offsets on the inbox where they move forward;
    /// writes nothing when none does.
    fn advance(&self, group: &str, offsets: &[(i32, i64)]) -> anyhow::Result<()> {
        let moves = {
            let txn = self.db.begin_read()?;
            let table = txn.open_table(OFFSETS)?;
            let mut moves = false;
            for &(partition, next) in offsets {
                let stored = table
                    .get((group, INBOX_TOPIC, partition))?
                    .map(|v| v.value());
                moves |= stored.is_none_or(|stored| next > stored);
            }
            moves
        };
        if !moves {
            return Ok(());
        }
        let mut txn = self.db.begin_write()?;
        // Progress may be lost in a crash: the group then replays idempotent
        // work. Skipping the fsync keeps it off the archive's critical path.
        txn.set_durability(Durability::None)?;
        {
            let mut table = txn.open_table(OFFSETS)?;
            for &(partition, next) in offsets {
                let key = (group, INBOX_TOPIC, partition);
                let stored = table.get(key)?.map(|v| v.value());
                if stored.is_none_or(|stored| next > stored) {
                    table.insert(key, next)?;
                }
            }
        }
        self.trim_inbox(&txn)?;
        txn.commit()?;
        Ok(())
    }

    fn store_letters(&self, letters: &[DeadLetter]) -> anyhow::Result<()> {
        let rows: Vec<String> = letters
            .iter()
            .map(|letter| serde_json::to_string(&rows::LetterRow::from_letter(letter)))
            .collect::<Result<_, _>>()?;
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(DEAD_LETTERS)?;
            let first = table.last()?.map_or(0, |(last, _)| last.value() + 1);
            for (sequence, row) in (first..).zip(&rows) {
                table.insert(sequence, row.as_str())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    fn archive(&self, events: &[ArchivedEvent], suppressions: i64) -> anyhow::Result<bool> {
        let txn = self.db.begin_write()?;
        if privacy::generation(&txn)? != suppressions {
            txn.abort()?;
            return Ok(false);
        }
        {
            let mut table = txn.open_table(ARCHIVE)?;
            for event in events {
                if table.get(event.event_id.as_str())?.is_some() {
                    continue;
                }
                let row = serde_json::to_string(&rows::EventRow::from(event))?;
                table.insert(event.event_id.as_str(), row.as_str())?;
            }
        }
        txn.commit()?;
        Ok(true)
    }
}

/// Brings the timeline of the commit's partitions up to the plugin set that
/// ran its batch, as PostgreSQL's `write_timeline` does: versions that left
/// the set close at the partition's start (`expected`, 0 when `None`),
/// versions that joined it open there.
/// Reads the row at `key` into `rows`, and the rows its pointers lead to.
fn read_chain(
    table: &redb::Table<'_, &'static str, &'static str>,
    key: &str,
    rows: &mut HashMap<String, Profile>,
) -> anyhow::Result<()> {
    let mut at = key.to_owned();
    for _ in 0..identity::MAX_POINTER_STEPS {
        let row = match rows.get(&at) {
            Some(row) => row,
            None => {
                let Some(json) = table.get(at.as_str())? else {
                    return Ok(());
                };
                let profile: Profile = serde_json::from_str(json.value())
                    .with_context(|| format!("the stored profile of {at} is unreadable"))?;
                rows.entry(at.clone()).or_insert(profile)
            }
        };
        match &row.merged_into {
            Some(next) => at = next.clone(),
            None => return Ok(()),
        }
    }
    Ok(())
}

fn advance_timeline(txn: &WriteTransaction, commit: &Commit<'_>) -> anyhow::Result<()> {
    let mut table = txn.open_table(TIMELINE)?;
    for range in commit.offsets {
        let start = range.expected.unwrap_or(0);
        let mut open: Vec<(String, String, i64)> = Vec::new();
        for entry in table.iter()? {
            let (key, until) = entry?;
            let (group, topic, partition, plugin, version, from) = key.value();
            if (group, topic, partition) == (commit.group, commit.topic, range.partition)
                && until.value().is_none()
            {
                open.push((plugin.to_owned(), version.to_owned(), from));
            }
        }
        let runs = |plugin: &str, version: &str| {
            commit
                .plugins
                .iter()
                .any(|p| p.plugin == plugin && p.version == version)
        };
        let key = |plugin, version, from| {
            (
                commit.group,
                commit.topic,
                range.partition,
                plugin,
                version,
                from,
            )
        };
        for (plugin, version, from) in &open {
            if !runs(plugin, version) {
                table.insert(key(plugin.as_str(), version.as_str(), *from), Some(start))?;
            }
        }
        for running in commit.plugins {
            let is_open = open.iter().any(|(plugin, version, _)| {
                *plugin == running.plugin && *version == running.version
            });
            if !is_open {
                table.insert(key(&running.plugin, &running.version, start), None)?;
            }
        }
    }
    Ok(())
}

#[async_trait]
impl ProfileStore for EmbeddedStore {
    async fn commit(&self, commit: Commit<'_>) -> StoreResult<CommitOutcome> {
        self.run("committing a batch to the embedded store", |inner| {
            inner.commit(&commit)
        })
    }

    async fn offsets(&self, group: &str, topic: &str) -> StoreResult<HashMap<i32, i64>> {
        self.run("reading offsets from the embedded store", |inner| {
            inner.offsets(group, topic)
        })
    }

    async fn profile(&self, user_id: &str) -> StoreResult<Option<Profile>> {
        self.run("reading a profile from the embedded store", |inner| {
            inner.profile(user_id)
        })
    }

    async fn timeline(&self, group: &str, topic: &str) -> StoreResult<Vec<TimelineEntry>> {
        self.run("reading the timeline of plugin versions", |inner| {
            inner.timeline(group, topic)
        })
    }

    async fn ping(&self) -> StoreResult<()> {
        self.run("reaching the embedded store", |inner| {
            inner.db.begin_read()?;
            Ok(())
        })
    }
}

#[async_trait]
impl EventPublisher for EmbeddedStore {
    async fn publish(&self, events: &[OutgoingEvent]) -> StoreResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        self.run("appending events to the embedded inbox", |inner| {
            inner.append(events)
        })
    }

    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }
}

#[async_trait]
impl DeadLetterSink for EmbeddedStore {
    async fn send(&self, letters: &[DeadLetter]) -> StoreResult<()> {
        if letters.is_empty() {
            return Ok(());
        }
        self.run("storing dead letters in the embedded store", |inner| {
            inner.store_letters(letters)
        })
    }
}

#[async_trait]
impl EventArchive for EmbeddedStore {
    async fn archive(&self, events: &[ArchivedEvent], suppressions: i64) -> StoreResult<bool> {
        if events.is_empty() {
            return Ok(true);
        }
        self.run("archiving events in the embedded store", |inner| {
            inner.archive(events, suppressions)
        })
    }
}
