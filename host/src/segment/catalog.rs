//! The defined segments: stored by name ([`SegmentStore`]: PostgreSQL or
//! the embedded store), and live in every process ([`LiveSegments`]), where
//! the store's commits evaluate them.
//!
//! A definition's id changes whenever its condition does, and ids are never
//! reused: a profile's memberships (segment ids in its document) never count
//! for a condition they were not computed under.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::{Condition, Segment, SegmentSet};
use crate::store::{EncodedProfile, ProfileCache, StoreResult};

/// One stored definition.
#[derive(Debug, Clone, PartialEq)]
pub struct Definition {
    pub id: u32,
    pub name: String,
    /// As the definition gave it: a CEL expression (a JSON string) or a
    /// JSON tree.
    pub condition: serde_json::Value,
    pub created_at_ms: i64,
    /// When the condition last changed (and the id with it).
    pub updated_at_ms: i64,
    /// Computing the condition over the profiles that existed before it.
    pub backfill: Backfill,
}

/// How far a definition's backfill got: the profiles are computed in key
/// order, a page per transaction, in the background.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Backfill {
    /// Whether the memberships it finds are announced (`segment.entered`)
    /// like those of commits; by default they are not.
    pub emit: bool,
    /// The last profile key computed; `None` before the first page.
    pub after: Option<String>,
    /// How many profiles were computed.
    pub profiles: u64,
    pub done: bool,
}

/// What one page of a backfill did.
#[derive(Debug, Default)]
pub struct BackfillPage {
    /// How many profiles the page computed.
    pub profiles: usize,
    /// Those whose memberships changed, as written (for the hot cache).
    pub changed: Vec<EncodedProfile>,
    /// Whether that was the last page.
    pub done: bool,
}

/// How long after a definition changes its backfill starts: by then every
/// process evaluates it in its commits, so a profile the backfill has
/// passed cannot change under a process that does not.
pub const BACKFILL_DELAY: Duration = Duration::from_secs(3);
/// Profiles per backfill page.
const BACKFILL_PAGE: usize = 500;
/// How long one round of the scheduler spends on backfills.
const BACKFILL_ROUND: Duration = Duration::from_millis(500);

/// What storing a definition did.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored {
    Created(Definition),
    /// The condition changed: the definition has a new id, and the
    /// memberships of the old one are gone.
    Changed(Definition),
    /// The condition is the one stored (as a tree, however written): nothing
    /// changed, not even the way it is written.
    Unchanged(Definition),
}

impl Stored {
    pub fn definition(&self) -> &Definition {
        match self {
            Stored::Created(d) | Stored::Changed(d) | Stored::Unchanged(d) => d,
        }
    }
}

/// Whether two written conditions are one tree (both parse, and equal).
pub fn same_condition(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    matches!(
        (Condition::parse(a), Condition::parse(b)),
        (Ok(x), Ok(y)) if x == y
    )
}

/// The store side of segments.
#[async_trait]
pub trait SegmentStore: Send + Sync + 'static {
    /// Every definition, by name.
    async fn definitions(&self) -> StoreResult<Vec<Definition>>;

    /// Stores `condition` (already validated) under `name`. A new or changed
    /// condition takes a new id and a backfill to do (announced when
    /// `emit_backfill`); a change drops the old id's members, in the same
    /// transaction.
    async fn put_definition(
        &self,
        name: &str,
        condition: &serde_json::Value,
        emit_backfill: bool,
        now_ms: i64,
    ) -> StoreResult<Stored>;

    /// Computes the next page of segment `id`'s backfill, at `now_ms`, in
    /// one transaction that stores what changed as a commit does; `None`
    /// when there is nothing to do here (done, gone, or another process is
    /// on it).
    async fn backfill_page(
        &self,
        id: u32,
        now_ms: i64,
        limit: usize,
    ) -> StoreResult<Option<BackfillPage>>;

    /// Deletes the definition and its members; `false` when there was none.
    async fn delete_definition(&self, name: &str) -> StoreResult<bool>;

    /// Up to `limit` members of segment `id` after `after`, ascending by
    /// profile key (bytewise).
    async fn members(&self, id: u32, after: Option<&str>, limit: usize)
    -> StoreResult<Vec<String>>;

    /// How many members segment `id` has.
    async fn member_count(&self, id: u32) -> StoreResult<u64>;

    /// Re-evaluates, at `now_ms` and with no new event, the time-relative
    /// segments of up to `limit` profiles whose memberships came due by
    /// then ([`SegmentSet::due`]), in one transaction that stores what
    /// changed as a commit does (memberships, the `profile-updates`
    /// outbox, the next due time).
    async fn reevaluate_due(&self, now_ms: i64, limit: usize) -> StoreResult<DueRound>;
}

/// What one [`SegmentStore::reevaluate_due`] did.
#[derive(Debug, Default)]
pub struct DueRound {
    /// How many profiles had come due.
    pub due: usize,
    /// Those whose memberships changed, as written (for the hot cache).
    pub changed: Vec<EncodedProfile>,
}

/// The segments one process evaluates, shared by its store's commits and
/// its API; replaced whole when the definitions change.
#[derive(Debug, Clone, Default)]
pub struct LiveSegments(Arc<ArcSwap<SegmentSet>>);

impl LiveSegments {
    pub fn load(&self) -> Arc<SegmentSet> {
        self.0.load_full()
    }

    /// Makes `definitions` the live set. One that no longer parses (stored
    /// by a version that read more) is left out, with an error logged.
    pub fn replace(&self, definitions: &[Definition]) {
        let segments = definitions.iter().filter_map(|definition| {
            match Condition::parse(&definition.condition) {
                Ok(condition) => Some(Segment {
                    id: definition.id,
                    name: definition.name.clone(),
                    condition,
                }),
                Err(error) => {
                    tracing::error!(
                        segment = %definition.name,
                        "the stored condition does not parse, so the segment is not evaluated: {error}"
                    );
                    None
                }
            }
        });
        self.0.store(Arc::new(SegmentSet::new(segments)));
    }

    /// Whether the live set is exactly these definitions' ids.
    fn holds(&self, definitions: &[Definition]) -> bool {
        let set = self.load();
        set.len() == definitions.len()
            && definitions
                .iter()
                .all(|definition| set.by_id(definition.id).is_some())
    }
}

/// How many due profiles one transaction re-evaluates.
const DUE_PAGE: usize = 500;

/// The defined segments: where they are stored, and the live set.
#[derive(Clone)]
pub struct Segments {
    pub store: Arc<dyn SegmentStore>,
    pub live: LiveSegments,
}

impl Segments {
    /// Reads the definitions and makes them live when they differ from
    /// the live set; returns them.
    pub async fn refresh(&self) -> StoreResult<Vec<Definition>> {
        let definitions = self.store.definitions().await?;
        if !self.live.holds(&definitions) {
            self.live.replace(&definitions);
        }
        Ok(definitions)
    }

    /// Re-evaluates every profile that came due by `now_ms`, a page at a
    /// time, and refreshes `cache` with those that changed; returns how many
    /// changed.
    pub async fn reevaluate_due(
        &self,
        now_ms: i64,
        cache: Option<&dyn ProfileCache>,
    ) -> StoreResult<usize> {
        let mut changed = 0;
        loop {
            let round = self.store.reevaluate_due(now_ms, DUE_PAGE).await?;
            if let Some(cache) = cache
                && !round.changed.is_empty()
            {
                cache.put_encoded(&round.changed).await?;
            }
            changed += round.changed.len();
            if round.due < DUE_PAGE {
                return Ok(changed);
            }
        }
    }

    /// Works on the backfills that are due by `now_ms`, for up to
    /// `budget`, and refreshes `cache` with the profiles that changed;
    /// returns how many profiles it computed.
    pub async fn backfill(
        &self,
        now_ms: i64,
        budget: Duration,
        cache: Option<&dyn ProfileCache>,
    ) -> StoreResult<u64> {
        let started = std::time::Instant::now();
        let delay = i64::try_from(BACKFILL_DELAY.as_millis()).unwrap_or(i64::MAX);
        let mut computed = 0;
        for definition in self.store.definitions().await? {
            if definition.backfill.done || definition.updated_at_ms + delay > now_ms {
                continue;
            }
            while started.elapsed() < budget {
                let page = self
                    .store
                    .backfill_page(definition.id, now_ms, BACKFILL_PAGE)
                    .await?;
                let Some(page) = page else { break };
                if let Some(cache) = cache
                    && !page.changed.is_empty()
                {
                    cache.put_encoded(&page.changed).await?;
                }
                computed += page.profiles as u64;
                if page.done {
                    tracing::info!(segment = %definition.name, "segment backfill done");
                    break;
                }
            }
        }
        Ok(computed)
    }

    /// Re-evaluates what comes due ([`Segments::reevaluate_due`]) and works
    /// on the backfills ([`Segments::backfill`]) every `every`, at the time
    /// `clock` says, until `stop`.
    pub async fn schedule(
        self,
        cache: Option<std::sync::Arc<dyn ProfileCache>>,
        clock: fn() -> i64,
        every: Duration,
        stop: CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            if let Err(error) = self
                .backfill(clock(), BACKFILL_ROUND, cache.as_deref())
                .await
            {
                tracing::warn!(
                    "computing a segment over the existing profiles failed (retried next round): {:#}",
                    error.0
                );
            }
            if self.live.load().time_relative().is_empty() {
                continue;
            }
            match self.reevaluate_due(clock(), cache.as_deref()).await {
                Ok(0) => {}
                Ok(changed) => {
                    tracing::debug!(changed, "time-relative segments re-evaluated");
                }
                Err(error) => {
                    tracing::warn!(
                        "re-evaluating the time-relative segments failed (retried next round): {:#}",
                        error.0
                    );
                }
            }
        }
    }

    /// Refreshes the live set every `every` until `stop`, so a definition
    /// another process stored is evaluated here within about that long.
    pub async fn watch(self, every: Duration, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            if let Err(error) = self.refresh().await {
                tracing::warn!("reading the segment definitions failed: {:#}", error.0);
            }
        }
    }
}
