//! The small traits the pipeline and the API work against, so that the
//! production backends (PostgreSQL, Redis, Kafka) and the embedded one are the
//! same program with different parts.
//!
//! - [`ProfileStore`]: the system of record. Commits a batch's profile
//!   changes together with the consumer offsets they came from, atomically.
//! - [`ProfileCache`]: the hot copy (Redis), written through after commits.
//! - [`EventArchive`]: the raw-event archive, idempotent by event id.
//!
//! The pipeline's own traits, [`DeadLetterSink`](crate::pipeline::dead_letter::DeadLetterSink)
//! and [`EventPublisher`](crate::pipeline::publish::EventPublisher), report
//! the same [`StoreError`].
//!
//! Every error of these traits is infrastructure trouble: the caller retries
//! with backoff and moves no offset. Bad data never reaches them.
//!
//! [`instrumented`] wraps any of them to time its calls and count failures.

pub mod embedded;
pub mod instrumented;
pub mod postgres;
pub mod reader;
pub mod redis;

use std::collections::HashMap;

use anyhow::Context as _;
use async_trait::async_trait;

use crate::model::identity::{BatchIdentities, PlannedMerge, Refusal, Rules};
use crate::model::merge::ProfileChanges;
use crate::model::profile::Profile;

/// A backend failed (unreachable, timed out, refused the statement). Always
/// retryable from the pipeline's point of view.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct StoreError(#[from] pub anyhow::Error);

pub type StoreResult<T> = Result<T, StoreError>;

/// The offsets one batch consumed from one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetRange {
    pub partition: i32,
    /// The next offset the store held when the batch was read (`None`: the
    /// store had no row for this partition). The commit is refused as
    /// [`CommitOutcome::Stale`] when the store holds anything else, because
    /// then another consumer has moved the partition meanwhile.
    pub expected: Option<i64>,
    /// The offset after the batch's last record: the next one to read.
    pub next: i64,
}

/// A plugin version, as the timeline records it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PluginVersion {
    pub plugin: String,
    pub version: String,
}

/// One stretch of the timeline of plugin versions: `version` of `plugin` ran
/// over the records of `partition` from `from_offset` until `until_offset`
/// (exclusive; `None` while it still runs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineEntry {
    pub partition: i32,
    pub plugin: String,
    pub version: String,
    pub from_offset: i64,
    pub until_offset: Option<i64>,
}

/// One batch's result, written in one transaction.
#[derive(Debug)]
pub struct Commit<'a> {
    /// Consumer group and topic the offsets belong to.
    pub group: &'a str,
    pub topic: &'a str,
    pub changes: &'a ProfileChanges,
    pub offsets: &'a [OffsetRange],
    /// The plugin versions that ran over the batch. Where they differ from
    /// the timeline's open stretches of a partition, the commit closes and
    /// opens stretches at the partition's `expected` offset (0 when `None`).
    pub plugins: &'a [PluginVersion],
    /// The caller's copies of some of the changed profiles, as they were
    /// last committed. A store may start from these instead of reading them;
    /// a copy that is not the stored revision is never written over: the
    /// store applies the changes to the stored profile instead (PostgreSQL,
    /// under the row lock), or fails the commit (a [`StoreError`], retried
    /// without copies).
    pub known: HashMap<String, Profile>,
    /// Wall-clock time of the commit, for `created_at`/`updated_at`.
    pub now_ms: i64,
    /// The batch's identifiers and links; `None`: every change's key is a
    /// `user_id` and nothing links.
    pub identity: Option<Identity<'a>>,
    /// The generation of the suppressions the batch's events were filtered
    /// with ([`crate::privacy::Suppressions`]): the commit is refused as
    /// [`CommitOutcome::SuppressionsChanged`] under any other.
    pub suppressions: i64,
}

/// A batch's identities, for [`Commit::identity`].
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    pub batch: &'a BatchIdentities,
    pub rules: &'a Rules,
    /// Where the store reports the links it made and refused.
    pub report: &'a LinkReport,
}

/// What a commit did with a batch's links (the last attempt's, for a
/// commit that was retried).
#[derive(Debug, Default)]
pub struct LinkReport(std::sync::Mutex<(Vec<PlannedMerge>, Vec<Refusal>)>);

impl LinkReport {
    pub fn set(&self, merges: Vec<PlannedMerge>, refused: Vec<Refusal>) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = (merges, refused);
    }

    pub fn take(&self) -> (Vec<PlannedMerge>, Vec<Refusal>) {
        std::mem::take(
            &mut *self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

#[derive(Debug)]
pub enum CommitOutcome {
    /// Written. The profiles the batch changed, as they are now (absolute
    /// values, for the write-through to the cache).
    Applied(Vec<Profile>),
    /// Written, as [`CommitOutcome::Applied`], by a store that encoded the
    /// profiles as JSON on the way: `documents[i]` is `profiles[i]` as
    /// `serde_json::to_string` writes it, so the cache need not encode them
    /// again ([`ProfileCache::put_encoded`]).
    AppliedEncoded {
        profiles: Vec<Profile>,
        documents: Vec<String>,
    },
    /// Nothing written: the stored offsets are not the `expected` ones.
    /// The caller reloads them and drops the records already applied.
    Stale,
    /// Nothing written: a privacy request changed the suppressions since
    /// the batch was filtered. The caller reloads them and runs the batch
    /// again.
    SuppressionsChanged,
}

#[async_trait]
pub trait ProfileStore: Send + Sync + 'static {
    /// Applies `commit.changes` to the stored profiles with
    /// [`Profile::apply`] and moves the offsets, all or nothing.
    async fn commit(&self, commit: Commit<'_>) -> StoreResult<CommitOutcome>;

    /// The next offset to read for each partition of `topic` that `group`
    /// has committed.
    async fn offsets(&self, group: &str, topic: &str) -> StoreResult<HashMap<i32, i64>>;

    async fn profile(&self, user_id: &str) -> StoreResult<Option<Profile>>;

    /// The timeline of plugin versions `group` ran over `topic`, by
    /// partition, plugin, then `from_offset`.
    async fn timeline(&self, group: &str, topic: &str) -> StoreResult<Vec<TimelineEntry>>;

    /// Cheap reachability check for `/readyz`.
    async fn ping(&self) -> StoreResult<()>;
}

#[async_trait]
pub trait ProfileCache: Send + Sync + 'static {
    /// Stores absolute profiles; a cached copy with a higher
    /// [`Profile::revision`] is kept instead.
    async fn put(&self, profiles: &[Profile]) -> StoreResult<()>;

    /// [`ProfileCache::put`] for profiles the caller holds as JSON. A cache
    /// that stores JSON stores the documents as they are; the others
    /// decode them.
    async fn put_encoded(&self, profiles: &[EncodedProfile]) -> StoreResult<()> {
        let decoded = profiles
            .iter()
            .map(|p| {
                serde_json::from_str(&p.document)
                    .with_context(|| format!("decoding the profile of user {}", p.user_id))
            })
            .collect::<anyhow::Result<Vec<Profile>>>()?;
        self.put(&decoded).await
    }
    async fn get(&self, user_id: &str) -> StoreResult<Option<Profile>>;
    async fn ping(&self) -> StoreResult<()>;

    /// Removes the copies at `keys` for good (a deleted person's): no
    /// write in flight may bring one back. Returns how many keys held one.
    async fn forget(&self, keys: &[String]) -> StoreResult<u64>;
}

/// A profile as JSON, for a cache: its key, its revision and the document
/// (`serde_json::to_string` of the profile).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedProfile {
    pub user_id: String,
    pub revision: i64,
    pub document: String,
}

impl EncodedProfile {
    /// `profile` with `document`, its JSON.
    pub fn new(profile: &Profile, document: String) -> Self {
        Self {
            user_id: profile.user_id.clone(),
            revision: profile.revision,
            document,
        }
    }

    /// `profile`, encoded here.
    pub fn encode(profile: &Profile) -> anyhow::Result<Self> {
        let document = profile
            .to_json()
            .with_context(|| format!("encoding the profile of user {}", profile.user_id))?;
        Ok(Self::new(profile, document))
    }
}

/// A decoded event for the archive, with its origin.
#[derive(Debug, Clone, PartialEq)]
pub struct ArchivedEvent {
    pub event_id: String,
    pub user_id: String,
    pub event_type: String,
    pub event_time_ms: i64,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The original JSON text.
    pub payload: String,
}

#[async_trait]
pub trait EventArchive: Send + Sync + 'static {
    /// Inserts the events; an event id already archived is skipped. Only
    /// while the suppressions are at generation `suppressions`, the one
    /// the events were filtered with: `Ok(false)`, nothing written,
    /// otherwise.
    async fn archive(&self, events: &[ArchivedEvent], suppressions: i64) -> StoreResult<bool>;
}

/// Reads a profile for the API: the hot copy when there is one, else the
/// store ([`reader::ProfileReader`]).
#[async_trait]
pub trait ProfileLookup: Send + Sync + 'static {
    /// The row at `key`: a profile, or a pointer ([`Profile::merged_into`]).
    async fn lookup(&self, key: &str) -> StoreResult<Option<Profile>>;

    /// The profile `key` resolves to, following pointers; with the key it
    /// was found under when that is not `key`.
    async fn resolve(&self, key: &str) -> StoreResult<Option<(Profile, Option<String>)>> {
        let mut at = key.to_owned();
        for _ in 0..crate::model::identity::MAX_POINTER_STEPS {
            let Some(row) = self.lookup(&at).await? else {
                return Ok(None);
            };
            match &row.merged_into {
                Some(next) => at = next.clone(),
                None => {
                    let moved = (at != key).then_some(at);
                    return Ok(Some((row, moved)));
                }
            }
        }
        Err(StoreError(anyhow::anyhow!(
            "the pointers from {key} lead on past {} rows",
            crate::model::identity::MAX_POINTER_STEPS
        )))
    }
}
