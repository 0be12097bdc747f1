//! PostgreSQL: the system of record ([`ProfileStore`]) and the raw-event
//! archive ([`EventArchive`]).
//!
//! A batch is one transaction of a handful of statements however many events
//! and users it holds: lock the batch's offset rows and check them, move the
//! offsets, read the profiles the lane has no copy of, apply the merged
//! changes in Rust with [`Profile::apply`], write every profile in one
//! multi-row statement that replaces only the revision each was computed
//! from (the few another writer changed meanwhile are read again, locked,
//! and written once more), commit. A batch with identity links plans them on
//! rows read without locks and writes the plan's rows in the same statement;
//! if one of them changed meanwhile, the batch undoes its writes (to a
//! savepoint), locks every row it reads in key order and plans again, in the
//! same transaction. The schema is in `migrations/`, embedded in the binary.

mod audit;
pub mod privacy;
pub mod redrive;
pub mod replay;
mod segments;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use async_trait::async_trait;
use sqlx::postgres::{PgArguments, PgPool, PgPoolOptions};
use sqlx::types::Json;
use sqlx::{Arguments, Postgres, Row, Transaction};

use crate::activation::handoff::Handoff;
use crate::activation::update::ProfileUpdate;
use crate::model::identity::{self, BatchIdentities, Plan, PlannedMerge};
use crate::model::merge::ProfileChanges;
use crate::model::profile::Profile;
use crate::pipeline::publish::OutgoingEvent;
use crate::segment::{LiveSegments, MembershipChanges, SegmentSet};
use crate::store::{
    ArchivedEvent, Commit, CommitOutcome, EventArchive, Identity, ProfileStore, StoreError,
    StoreResult, TimelineEntry,
};

/// How long a statement waits for a pooled connection. A database that is
/// down then shows up as an error the caller retries, not as a hang.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// The PostgreSQL store: a connection pool, cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    /// The messages this store's commits wrote to the `profile-updates`
    /// outbox, for the relay of this process; `None`: the commits write no
    /// outbox (`activation.profile_updates` off, or a tool that writes no
    /// batches).
    updates: Option<Arc<Handoff>>,
    /// Whether the writes put their `profile-updates` messages in the
    /// outbox: set with `updates`, or alone in a tool's process, whose
    /// writes the enrich role's relay publishes from the table.
    outbox: bool,
    /// The segments the commits evaluate.
    segments: LiveSegments,
}

impl PgStore {
    /// Prepares a pool of at most `max_connections` connections to `url`
    /// (`postgres://...`). Connections open on first use, so this fails only
    /// on a malformed URL; an unreachable server fails the first statement,
    /// after at most [`ACQUIRE_TIMEOUT`].
    pub fn connect(url: &str, max_connections: u32) -> anyhow::Result<PgStore> {
        if max_connections == 0 {
            bail!("database.max_connections must be at least 1");
        }
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy(url)
            .context("reading the PostgreSQL URL")?;
        Ok(PgStore {
            pool,
            updates: None,
            outbox: false,
            segments: LiveSegments::default(),
        })
    }

    /// Applies the migrations the database has not seen yet; a no-op when it
    /// is up to date. Safe to run from several processes at once (the
    /// migrator holds an advisory lock).
    pub async fn migrate(&self) -> anyhow::Result<()> {
        MIGRATOR
            .run(&self.pool)
            .await
            .context("applying the PostgreSQL migrations")
    }

    /// Makes the commits write the `profile-updates` outbox, and leave its
    /// messages in the returned handoff for this process's relay
    /// ([`crate::activation::relay`]).
    pub fn publish_updates(&mut self) -> Arc<Handoff> {
        self.outbox = true;
        self.updates.get_or_insert_default().clone()
    }

    /// Makes this store's writes put their `profile-updates` messages in
    /// the outbox, which the enrich role's relay publishes, in a process
    /// that runs no relay: a tool's (backfill, reconcile repair, rebuild,
    /// re-drive: [`PgStore::write_recomputed`], [`PgStore::write_redriven`])
    /// or a role's that carries out privacy requests.
    pub fn write_outbox(&mut self) {
        self.outbox = true;
    }

    /// Makes the segments stored now those the writes evaluate: a tool's
    /// store has no watch keeping them live.
    pub async fn refresh_segments(&self) -> StoreResult<()> {
        crate::segment::Segments {
            store: Arc::new(self.clone()),
            live: self.segments.clone(),
        }
        .refresh()
        .await?;
        Ok(())
    }

    /// Writes profiles a tool recomputed over the revisions they were
    /// computed from ([`write_profiles`]), as a commit would: each one's
    /// memberships evaluated against every live segment and stored (in
    /// `profiles` too, for the cache), and, when the store writes the
    /// outbox, a `profile.updated` naming every attribute (a tool does not
    /// track which of them its events changed) followed by a `segment.*`
    /// message per membership it changed.
    pub(crate) async fn write_rewritten(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        profiles: &mut [Profile],
    ) -> StoreResult<Written> {
        let segments = self.segments.load();
        let now = crate::model::profile::now_ms();
        let (memberships, due): (Vec<MembershipChanges>, Vec<Option<i64>>) = profiles
            .iter_mut()
            .map(|profile| {
                let changed = segments.evaluate(profile, None::<[&str; 0]>, now);
                (changed, segments.schedule(profile, now))
            })
            .unzip();
        let written = write_profiles(tx, profiles, Some(&due)).await?;
        let refused: HashSet<usize> = written.refused.iter().copied().collect();
        let updated: Vec<Updated<'_>> = (0..profiles.len())
            .filter(|i| !refused.contains(i))
            .map(|i| (&profiles[i], &[][..], &memberships[i]))
            .collect();
        write_members(tx, &updated).await?;
        if self.outbox {
            let whole: HashSet<&str> = updated.iter().map(|(p, _, _)| p.user_id.as_str()).collect();
            write_updates(tx, &updated, &ProfileChanges::default(), &whole, &segments).await?;
        }
        Ok(written)
    }

    /// The segments this store's commits evaluate, to keep live.
    pub fn segments(&self) -> LiveSegments {
        self.segments.clone()
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Up to `limit` stored profiles with user ids after `after`, in user
    /// order, each with its JSON document as stored; with `since_ms`, only
    /// those updated at or after it. Pages through `profiles` by key.
    pub async fn profiles_after(
        &self,
        after: Option<&str>,
        since_ms: Option<i64>,
        limit: i64,
    ) -> StoreResult<Vec<(Profile, String)>> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT user_id, profile::text FROM profiles \
             WHERE ($1::text IS NULL OR user_id > $1) \
               AND ($2::bigint IS NULL OR updated_at >= to_timestamp($2 / 1000.0)) \
             ORDER BY user_id LIMIT $3",
        )
        .bind(after)
        .bind(since_ms)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .context("reading a page of profiles")?;
        rows.into_iter()
            .map(|(user_id, document)| {
                let profile = serde_json::from_str(&document).with_context(|| {
                    format!("the stored profile of user {user_id} is unreadable")
                })?;
                Ok((profile, document))
            })
            .collect()
    }

    /// How many profiles [`PgStore::profiles_after`] would page through
    /// from the start.
    pub async fn count_profiles(&self, since_ms: Option<i64>) -> StoreResult<i64> {
        let count = sqlx::query_scalar(
            "SELECT count(*) FROM profiles \
             WHERE $1::bigint IS NULL OR updated_at >= to_timestamp($1 / 1000.0)",
        )
        .bind(since_ms)
        .fetch_one(&self.pool)
        .await
        .context("counting the profiles")?;
        Ok(count)
    }

    /// Records an operation on the profiles in `operation_audit`.
    pub async fn audit_operation(
        &self,
        actor: &str,
        operation: &str,
        outcome: &str,
        detail: &serde_json::Value,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO operation_audit (at, actor, operation, outcome, detail) \
             VALUES (now(), $1, $2, $3, $4::text::json)",
        )
        .bind(actor)
        .bind(operation)
        .bind(outcome)
        .bind(detail.to_string())
        .execute(&self.pool)
        .await
        .with_context(|| format!("recording {operation} in the operation audit"))?;
        Ok(())
    }
}

#[async_trait]
impl ProfileStore for PgStore {
    async fn commit(&self, commit: Commit<'_>) -> StoreResult<CommitOutcome> {
        if commit.changes.is_empty() && commit.offsets.is_empty() {
            return Ok(CommitOutcome::Applied(Vec::new()));
        }
        let mut tx = self
            .pool
            .begin()
            .await
            .context("starting the batch transaction")?;
        if !privacy::fence(&mut tx, commit.suppressions).await? {
            tx.rollback().await.context("rolling back a batch")?;
            return Ok(CommitOutcome::SuppressionsChanged);
        }
        if !offsets_are_expected(&mut tx, &commit).await? {
            tx.rollback().await.context("rolling back a stale batch")?;
            return Ok(CommitOutcome::Stale);
        }
        // Offsets move before profiles are touched: two consumers of one
        // partition then meet on its offset row, and the second one is
        // stale, whoever wrote the first row.
        if !write_offsets(&mut tx, &commit).await? {
            tx.rollback().await.context("rolling back a stale batch")?;
            return Ok(CommitOutcome::Stale);
        }
        write_timeline(&mut tx, &commit).await?;
        let batch = commit.identity.map(|identity| identity.batch);
        let links = commit
            .identity
            .filter(|identity| !identity.batch.links.is_empty());
        if links.is_some() {
            sqlx::query("SAVEPOINT links")
                .execute(&mut *tx)
                .await
                .context("marking where a batch's links start")?;
        }
        let segments = self.segments.load();
        let mut known = commit.known;
        let mut locked = false;
        let Rows {
            profiles,
            sources,
            memberships,
            written,
            merges,
        } = loop {
            let rows = write_changes(
                &mut tx,
                commit.changes,
                (links, batch),
                known,
                (&segments, commit.now_ms),
            )
            .await?;
            if let Some(rows) = rows {
                break rows;
            }
            if locked {
                return Err(StoreError(anyhow!(
                    "a row a batch's links lead to changed under the batch's row locks; \
                     the batch is rolled back and retried"
                )));
            }
            // The links were planned on rows read without locks, and one
            // of them changed meanwhile, which may change the plan. Undo
            // the writes, lock every row the batch reads, in key order as
            // every writer does, and plan again on them.
            sqlx::query("ROLLBACK TO SAVEPOINT links")
                .execute(&mut *tx)
                .await
                .context("undoing a batch's writes to plan its links again")?;
            known = lock_rows(&mut tx, commit.changes, links).await?;
            locked = true;
        };
        write_merge_log(&mut tx, &merges, commit.now_ms).await?;
        let mut again = Vec::new();
        let mut again_sources: Vec<Vec<&String>> = Vec::new();
        let mut again_memberships = Vec::new();
        let mut again_documents = Vec::new();
        if !written.refused.is_empty() {
            // Another writer (a backfill, a reconcile repair, another lane
            // holding the same user, a link that made a row a pointer)
            // changed these profiles since the copy or the read they were
            // computed from. The upsert locked their rows all the same, so
            // they are read again, as they are now, and the batch's changes
            // applied to them once more.
            let again_changes: ProfileChanges = written
                .refused
                .iter()
                .flat_map(|&i| sources[i].iter())
                .map(|&key| (key.clone(), commit.changes[key].clone()))
                .collect();
            let rows = apply_changes(
                &mut tx,
                &again_changes,
                HashMap::new(),
                batch,
                commit.now_ms,
                &HashSet::new(),
            )
            .await?;
            // The keys of `again_changes` are `commit.changes`' own.
            again_sources = rows
                .iter()
                .map(|(_, keys)| {
                    keys.iter()
                        .filter_map(|key| commit.changes.get_key_value(*key).map(|(k, _)| k))
                        .collect()
                })
                .collect();
            again = rows.into_iter().map(|(profile, _)| profile).collect();
            let (memberships, due) = evaluate_segments(
                &segments,
                again
                    .iter_mut()
                    .zip(again_sources.iter().map(Vec::as_slice)),
                commit.changes,
                &HashSet::new(),
                commit.now_ms,
            );
            again_memberships = memberships;
            let second = write_profiles(&mut tx, &again, Some(&due)).await?;
            if !second.refused.is_empty() {
                return Err(StoreError(anyhow!(
                    "{} of the batch's profiles changed under their row locks; \
                     the batch is rolled back and must be retried",
                    second.refused.len()
                )));
            }
            again_documents = second.documents;
        }
        let refused: HashSet<usize> = written.refused.iter().copied().collect();
        let updated: Vec<Updated<'_>> = (0..profiles.len())
            .filter(|i| !refused.contains(i))
            .map(|i| (&profiles[i], sources[i].as_slice(), &memberships[i]))
            .chain(
                again
                    .iter()
                    .zip(again_sources.iter().map(Vec::as_slice))
                    .zip(&again_memberships)
                    .map(|((profile, sources), changed)| (profile, sources, changed)),
            )
            .collect();
        write_members(&mut tx, &updated).await?;
        let outbox = if self.outbox {
            let survivors: HashSet<&str> = merges.iter().map(|m| m.survivor.as_str()).collect();
            write_updates(&mut tx, &updated, commit.changes, &survivors, &segments).await?
        } else {
            None
        };
        tx.commit().await.context("committing the batch")?;
        if let (Some(handoff), Some((id, messages))) = (&self.updates, outbox) {
            handoff.put(id, messages);
        }
        if written.refused.is_empty() {
            return Ok(CommitOutcome::AppliedEncoded {
                profiles,
                documents: written.documents,
            });
        }
        let first = profiles
            .into_iter()
            .zip(written.documents)
            .enumerate()
            .filter(|(i, _)| !refused.contains(i))
            .map(|(_, row)| row);
        // A key written again after a refusal comes last, and the cache
        // keeps its higher revision.
        let (profiles, documents) = first.chain(again.into_iter().zip(again_documents)).unzip();
        Ok(CommitOutcome::AppliedEncoded {
            profiles,
            documents,
        })
    }

    async fn offsets(&self, group: &str, topic: &str) -> StoreResult<HashMap<i32, i64>> {
        let rows: Vec<(i32, i64)> = sqlx::query_as(
            "SELECT partition, next_offset FROM consumer_offsets \
             WHERE group_id = $1 AND topic = $2",
        )
        .bind(group)
        .bind(topic)
        .fetch_all(&self.pool)
        .await
        .with_context(|| format!("reading the offsets of group {group} on topic {topic}"))?;
        Ok(rows.into_iter().collect())
    }

    async fn profile(&self, user_id: &str) -> StoreResult<Option<Profile>> {
        let row: Option<(Json<Profile>,)> =
            sqlx::query_as("SELECT profile FROM profiles WHERE user_id = $1")
                .bind(user_id)
                .fetch_optional(&self.pool)
                .await
                .with_context(|| format!("reading the profile of user {user_id}"))?;
        Ok(row.map(|(Json(profile),)| profile))
    }

    async fn timeline(&self, group: &str, topic: &str) -> StoreResult<Vec<TimelineEntry>> {
        let rows: Vec<(i32, String, String, i64, Option<i64>)> = sqlx::query_as(
            "SELECT partition, plugin, version, from_offset, until_offset FROM plugin_timeline \
             WHERE group_id = $1 AND topic = $2 \
             ORDER BY partition, plugin, from_offset, version",
        )
        .bind(group)
        .bind(topic)
        .fetch_all(&self.pool)
        .await
        .with_context(|| {
            format!("reading the timeline of plugin versions of {group} on {topic}")
        })?;
        Ok(rows
            .into_iter()
            .map(
                |(partition, plugin, version, from_offset, until_offset)| TimelineEntry {
                    partition,
                    plugin,
                    version,
                    from_offset,
                    until_offset,
                },
            )
            .collect())
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .context("pinging PostgreSQL")?;
        Ok(())
    }
}

/// A batch's rows as first written ([`write_changes`]).
struct Rows<'c> {
    profiles: Vec<Profile>,
    /// The keys of the changes applied to each profile.
    sources: Vec<Vec<&'c String>>,
    /// The segments each profile entered and left.
    memberships: Vec<MembershipChanges>,
    written: Written,
    merges: Vec<PlannedMerge>,
}

/// Plans `links` (when the batch has any), applies `changes` over `known`
/// (the caller's copies, or the batch's rows as [`lock_rows`] locked them)
/// and the rows read, and writes every row they change in one upsert, in
/// key order. `None`: a row the links were planned on changed after it was
/// copied or read; the caller undoes the writes and plans again.
async fn write_changes<'c>(
    tx: &mut Transaction<'_, Postgres>,
    changes: &'c ProfileChanges,
    (links, batch): (Option<Identity<'_>>, Option<&BatchIdentities>),
    mut known: HashMap<String, Profile>,
    (segments, now_ms): (&SegmentSet, i64),
) -> StoreResult<Option<Rows<'c>>> {
    // The rows the links change, at the revision they will be written
    // with, and the merges to record.
    let mut linked: Vec<Profile> = Vec::new();
    let mut merges: Vec<PlannedMerge> = Vec::new();
    if let Some(identity) = links {
        let plan = plan_links(tx, identity, &known, now_ms).await?;
        linked = plan.writes;
        identity.report.set(plan.merges.clone(), plan.refused);
        merges = plan.merges;
        for row in &linked {
            known.insert(row.user_id.clone(), row.clone());
        }
    }
    let raised: HashSet<String> = linked.iter().map(|row| row.user_id.clone()).collect();
    let mut rows = apply_changes(tx, changes, known, batch, now_ms, &raised).await?;
    if !linked.is_empty() {
        // The rows the links changed and no event did are written too,
        // all in one statement, in key order (`rows` is in key order).
        let unchanged: Vec<(Profile, Vec<&String>)> = linked
            .into_iter()
            .filter(|row| {
                rows.binary_search_by(|(p, _)| p.user_id.cmp(&row.user_id))
                    .is_err()
            })
            .map(|row| (row, Vec::new()))
            .collect();
        rows.extend(unchanged);
        rows.sort_by(|(a, _), (b, _)| a.user_id.cmp(&b.user_id));
    }
    let (mut profiles, sources): (Vec<Profile>, Vec<Vec<&String>>) = rows.into_iter().unzip();
    let survivors: HashSet<&str> = merges.iter().map(|m| m.survivor.as_str()).collect();
    let (memberships, due) = evaluate_segments(
        segments,
        profiles.iter_mut().zip(sources.iter().map(Vec::as_slice)),
        changes,
        &survivors,
        now_ms,
    );
    let written = write_profiles(tx, &profiles, Some(&due)).await?;
    if written
        .refused
        .iter()
        .any(|&i| raised.contains(&profiles[i].user_id))
    {
        return Ok(None);
    }
    Ok(Some(Rows {
        profiles,
        sources,
        memberships,
        written,
        merges,
    }))
}

/// Brings the memberships of a batch's profiles, each with the keys of the
/// changes applied to it, up to date ([`SegmentSet::evaluate`]): only the
/// segments that read an attribute the changes name, or every segment for
/// a merge survivor (`whole`) and a row only links changed. Returns what
/// each profile entered and left, and when its memberships next change with
/// time alone.
fn evaluate_segments<'p, 'c: 'p>(
    segments: &SegmentSet,
    rows: impl Iterator<Item = (&'p mut Profile, &'p [&'c String])>,
    changes: &'c ProfileChanges,
    whole: &HashSet<&str>,
    now_ms: i64,
) -> (Vec<MembershipChanges>, Vec<Option<i64>>) {
    rows.map(|(profile, sources)| {
        let changed =
            (!sources.is_empty() && !whole.contains(profile.user_id.as_str())).then(|| {
                sources
                    .iter()
                    .filter_map(|key| changes.get(*key))
                    .flat_map(|attributes| attributes.keys().map(String::as_str))
            });
        let memberships = segments.evaluate(profile, changed, now_ms);
        (memberships, segments.schedule(profile, now_ms))
    })
    .unzip()
}

/// A profile a commit wrote: with the keys of the changes applied to it
/// and the memberships it changed.
type Updated<'p> = (&'p Profile, &'p [&'p String], &'p MembershipChanges);

/// Stores the memberships a commit changed in `segment_members`: one
/// statement for those left, one for those entered, each skipped when
/// there are none. Rows go in key order, so that consecutive ones land on
/// the same index pages (a batch of new profiles enters tens of thousands
/// of memberships; in random order each insert searches the index from
/// afar).
async fn write_members(
    tx: &mut Transaction<'_, Postgres>,
    updated: &[Updated<'_>],
) -> StoreResult<()> {
    let (mut entered, mut exited) = (Vec::new(), Vec::new());
    for (profile, _, changed) in updated {
        let user = profile.user_id.as_str();
        entered.extend(changed.entered.iter().map(|&id| (id as i32, user)));
        exited.extend(changed.exited.iter().map(|&id| (id as i32, user)));
    }
    if !exited.is_empty() {
        remove_members(tx, exited)
            .await
            .context("removing the segment memberships the batch's profiles left")?;
    }
    if !entered.is_empty() {
        insert_members(tx, entered)
            .await
            .context("writing the segment memberships the batch's profiles entered")?;
    }
    Ok(())
}

/// Inserts these `segment_members` rows, in key order. A row can exist
/// already only when a segment's backfill stored it first, which is rare:
/// the plain insert is tried first, under a savepoint, and only when it
/// meets an existing row is it rolled back and done again with `ON CONFLICT
/// DO NOTHING`. That clause makes PostgreSQL insert each row speculatively
/// and confirm it (an index search and a WAL record more per row), which
/// cost about 60 % more than the plain insert for 650,000 sorted rows.
async fn insert_members(
    tx: &mut Transaction<'_, Postgres>,
    keys: Vec<(i32, &str)>,
) -> Result<(), sqlx::Error> {
    const INSERT: &str = "INSERT INTO segment_members (segment_id, user_id) \
                          SELECT * FROM UNNEST($1::integer[], $2::text[])";
    let (ids, users) = key_order(keys);
    let mut savepoint = sqlx::Connection::begin(&mut **tx).await?;
    let plain = sqlx::query(INSERT)
        .bind(&ids)
        .bind(&users)
        .execute(&mut *savepoint)
        .await;
    match plain {
        Ok(_) => savepoint.commit().await,
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            savepoint.rollback().await?;
            sqlx::query(&format!("{INSERT} ON CONFLICT DO NOTHING"))
                .bind(&ids)
                .bind(&users)
                .execute(&mut **tx)
                .await?;
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Deletes these `segment_members` rows (segment id, user id), in key order.
pub(super) async fn remove_members(
    tx: &mut Transaction<'_, Postgres>,
    keys: Vec<(i32, &str)>,
) -> Result<(), sqlx::Error> {
    let (ids, users) = key_order(keys);
    sqlx::query(
        "DELETE FROM segment_members m \
         USING UNNEST($1::integer[], $2::text[]) AS x(segment_id, user_id) \
         WHERE m.segment_id = x.segment_id AND m.user_id = x.user_id",
    )
    .bind(&ids)
    .bind(&users)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// `segment_members` keys sorted as its primary key orders them (user ids
/// compare bytewise: the column's collation is "C"), as two arrays to bind.
fn key_order(mut keys: Vec<(i32, &str)>) -> (Vec<i32>, Vec<&str>) {
    keys.sort_unstable();
    keys.into_iter().unzip()
}

/// Locks the rows of `changes`' keys and of `links`' identifiers, in key
/// order, and returns them as they are now.
async fn lock_rows(
    tx: &mut Transaction<'_, Postgres>,
    changes: &ProfileChanges,
    links: Option<Identity<'_>>,
) -> StoreResult<HashMap<String, Profile>> {
    let mut keys: BTreeSet<String> = changes.keys().cloned().collect();
    if let Some(identity) = links {
        keys.extend(identity::homes(&identity.batch.links));
    }
    let keys: Vec<String> = keys.into_iter().collect();
    let rows: Vec<(String, Json<Profile>)> = sqlx::query_as(
        "SELECT user_id, profile FROM profiles WHERE user_id = ANY($1) \
         ORDER BY user_id FOR UPDATE",
    )
    .bind(&keys)
    .fetch_all(&mut **tx)
    .await
    .context("locking the rows of a batch with identity links")?;
    Ok(rows
        .into_iter()
        .map(|(key, Json(profile))| (key, profile))
        .collect())
}

/// Locks the batch's offset rows and tells whether each holds the offset the
/// batch was read from (no row where `expected` is `None`).
async fn offsets_are_expected(
    tx: &mut Transaction<'_, Postgres>,
    commit: &Commit<'_>,
) -> StoreResult<bool> {
    if commit.offsets.is_empty() {
        return Ok(true);
    }
    let partitions: Vec<i32> = commit.offsets.iter().map(|o| o.partition).collect();
    // ORDER BY makes the rows lock in partition order, so two commits over
    // overlapping partitions cannot deadlock.
    let rows: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT partition, next_offset FROM consumer_offsets \
         WHERE group_id = $1 AND topic = $2 AND partition = ANY($3) \
         ORDER BY partition FOR UPDATE",
    )
    .bind(commit.group)
    .bind(commit.topic)
    .bind(&partitions)
    .fetch_all(&mut **tx)
    .await
    .context("locking the batch's consumer offsets")?;
    let stored: HashMap<i32, i64> = rows.into_iter().collect();
    Ok(commit
        .offsets
        .iter()
        .all(|range| stored.get(&range.partition).copied() == range.expected))
}

/// Applies `changes` to the profiles they touch, as they are now, and
/// returns each profile with the keys of the changes applied to it, in key
/// order. A change's key may hold a pointer (an identifier's row, a profile
/// merged away): its changes go to the profile the pointers lead to. A row
/// comes from `known` when the caller holds a copy, else it is read, without
/// a lock: [`write_profiles`] replaces only the revision a profile was
/// computed from, so a copy or a read that another writer has overtaken is
/// never written over: the commit reads it again under the row lock and
/// applies the changes once more. A new profile records its key's
/// identifier from `batch`.
async fn apply_changes<'c>(
    tx: &mut Transaction<'_, Postgres>,
    changes: &'c ProfileChanges,
    mut known: HashMap<String, Profile>,
    batch: Option<&BatchIdentities>,
    now_ms: i64,
    raised: &HashSet<String>,
) -> StoreResult<Vec<(Profile, Vec<&'c String>)>> {
    if changes.is_empty() {
        return Ok(Vec::new());
    }
    // Each key's profile: its row, or the end of its pointers. The rows
    // not held are read, keys first, then the targets of pointers (held or
    // read) until every key resolves; a key with no row starts a profile.
    let mut asked: HashSet<String> = HashSet::new();
    let mut steps = 0;
    let groups = loop {
        let mut groups: BTreeMap<String, Vec<&'c String>> = BTreeMap::new();
        let mut missing: BTreeSet<&str> = BTreeSet::new();
        for key in changes.keys() {
            match identity::resolve(&known, key) {
                Ok(Some(canonical)) => groups.entry(canonical.to_owned()).or_default().push(key),
                Ok(None) if asked.contains(key) => groups.entry(key.clone()).or_default().push(key),
                Ok(None) => {
                    missing.insert(key);
                }
                Err(target) if asked.contains(target) => {
                    return Err(StoreError(anyhow!(
                        "the pointer from {key} leads to {target}, which has no row"
                    )));
                }
                Err(target) => {
                    missing.insert(target);
                }
            }
        }
        if missing.is_empty() {
            break groups;
        }
        steps += 1;
        if steps > identity::MAX_POINTER_STEPS + 1 {
            return Err(StoreError(anyhow!(
                "the batch's pointers lead on past {} rows",
                identity::MAX_POINTER_STEPS
            )));
        }
        let missing: Vec<String> = missing.into_iter().map(str::to_owned).collect();
        let rows = sqlx::query("SELECT user_id, profile FROM profiles WHERE user_id = ANY($1)")
            .bind(&missing)
            .fetch_all(&mut **tx)
            .await
            .context("reading the batch's profiles")?;
        asked.extend(missing);
        known.reserve(rows.len());
        for row in rows {
            let key: String = row.try_get("user_id").context("reading a profile row")?;
            let Json(profile): Json<Profile> = row
                .try_get("profile")
                .with_context(|| format!("decoding the stored profile of {key}"))?;
            known.insert(key, profile);
        }
    };
    let profiles = groups
        .into_iter()
        .map(|(canonical, keys)| {
            let mut profile = known.remove(&canonical).unwrap_or_else(|| match batch {
                Some(batch) => batch.new_profile(&canonical, now_ms),
                None => Profile::new(canonical.as_str(), now_ms),
            });
            // A row the batch's links changed is at its new revision already.
            let revision = if raised.contains(&canonical) {
                profile.revision
            } else {
                profile.revision + 1
            };
            for key in &keys {
                profile.apply(&changes[*key], now_ms);
            }
            profile.revision = revision;
            (profile, keys)
        })
        .collect();
    Ok(profiles)
}

/// Reads the rows `identity`'s links resolve through (their identifiers'
/// home rows, then the rows their pointers lead to), taking those `held`
/// has from it (the caller's copies, or the rows [`lock_rows`] locked) and
/// reading the others without locks, and plans the links over them.
///
/// The plan's rows are written with the batch's other rows in one upsert,
/// in key order, each only over the revision it was planned from (a new
/// one only where no row exists): a batch that links locks its rows as a
/// batch without links does, so two batches that share rows wait for each
/// other instead of deadlocking. A copy or a read that another writer has
/// overtaken makes the commit lock its rows and plan again ([`lock_rows`]):
/// a plan changes a profile only by writing it, over its revision, and a
/// row it reads and leaves alone cannot mislead it, as pointers never
/// change and a profile's identifiers only grow until it is deleted (which
/// changes the suppressions, and the commit is refused).
async fn plan_links(
    tx: &mut Transaction<'_, Postgres>,
    identity: Identity<'_>,
    held: &HashMap<String, Profile>,
    now_ms: i64,
) -> StoreResult<Plan> {
    let links = &identity.batch.links;
    let mut wanted = identity::homes(links);
    let mut rows: HashMap<String, Profile> = HashMap::new();
    let mut asked: HashSet<String> = HashSet::new();
    for _ in 0..=identity::MAX_POINTER_STEPS {
        if wanted.is_empty() {
            break;
        }
        let mut unread: Vec<&str> = Vec::new();
        for key in &wanted {
            match held.get(key) {
                Some(row) => {
                    rows.insert(key.clone(), row.clone());
                }
                None => unread.push(key.as_str()),
            }
        }
        if !unread.is_empty() {
            let read: Vec<(String, Json<Profile>)> =
                sqlx::query_as("SELECT user_id, profile FROM profiles WHERE user_id = ANY($1)")
                    .bind(&unread)
                    .fetch_all(&mut **tx)
                    .await
                    .context("reading the rows of the batch's linked identifiers")?;
            for (key, Json(profile)) in read {
                rows.insert(key, profile);
            }
        }
        asked.extend(wanted);
        // Pointers whose targets are not read yet.
        wanted = rows
            .values()
            .filter_map(|row| row.merged_into.as_ref())
            .filter(|target| !asked.contains(*target) && !rows.contains_key(*target))
            .cloned()
            .collect();
    }
    Ok(identity::plan(links, rows, identity.rules, now_ms))
}

/// Records `merges` in the merge log; a merge already recorded (the same
/// event, the same profile merged away) is kept as it is.
async fn write_merge_log(
    tx: &mut Transaction<'_, Postgres>,
    merges: &[PlannedMerge],
    now_ms: i64,
) -> StoreResult<()> {
    if merges.is_empty() {
        return Ok(());
    }
    let events: Vec<&str> = merges.iter().map(|m| m.event_id.as_str()).collect();
    let merged: Vec<&str> = merges.iter().map(|m| m.merged.as_str()).collect();
    let survivors: Vec<&str> = merges.iter().map(|m| m.survivor.as_str()).collect();
    let kinds: Vec<&str> = merges.iter().map(|m| m.kind.as_str()).collect();
    sqlx::query(
        "INSERT INTO profile_merges (event_id, merged, survivor, kind, merged_at) \
         SELECT e, m, s, k, to_timestamp($5 / 1000.0) \
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[]) AS batch(e, m, s, k) \
         ON CONFLICT (event_id, merged) DO NOTHING",
    )
    .bind(&events)
    .bind(&merged)
    .bind(&survivors)
    .bind(&kinds)
    .bind(now_ms)
    .execute(&mut **tx)
    .await
    .context("recording the batch's merges")?;
    Ok(())
}

/// What [`write_profiles`] did.
pub(crate) struct Written {
    /// The profiles as the JSON documents written (or refused), in order.
    pub(crate) documents: Vec<String>,
    /// Positions of the profiles not written: the stored row's revision was
    /// not the one each was computed from. Their rows are locked all the
    /// same, until the transaction ends.
    pub(crate) refused: Vec<usize>,
}

impl Written {
    /// The users of the refused profiles of `profiles` (as written).
    pub(crate) fn refused_users(&self, profiles: &[Profile]) -> std::collections::BTreeSet<String> {
        self.refused
            .iter()
            .map(|&i| profiles[i].user_id.clone())
            .collect()
    }
}

/// Writes `profiles` in one statement, with when each one's memberships
/// next change with time alone (`due`, in the same order) for a writer that
/// evaluated the segments; a writer that did not (`None`) leaves those as
/// they are.
///
/// Each profile replaces only the revision it was computed from (a new one
/// only a row that does not exist). When another writer has changed one of
/// them since it was read or cached (the same user arriving through two
/// partitions at once, a partition that moved away and back, a backfill or
/// a repair), it is not overwritten: it is reported in
/// [`Written::refused`], its row locked, for the caller to compute again.
///
/// The rows are written, and so locked, in user order, the order of every
/// commit, so commits that share users wait for each other instead of
/// deadlocking.
pub(crate) async fn write_profiles(
    tx: &mut Transaction<'_, Postgres>,
    profiles: &[Profile],
    due: Option<&[Option<i64>]>,
) -> StoreResult<Written> {
    if profiles.is_empty() {
        return Ok(Written {
            documents: Vec::new(),
            refused: Vec::new(),
        });
    }
    let mut user_ids = Vec::with_capacity(profiles.len());
    let mut documents = Vec::with_capacity(profiles.len());
    let mut revisions = Vec::with_capacity(profiles.len());
    let mut created = Vec::with_capacity(profiles.len());
    let mut updated = Vec::with_capacity(profiles.len());
    let mut pointers = Vec::with_capacity(profiles.len());
    for profile in profiles {
        pointers.push(profile.merged_into.as_deref());
        user_ids.push(profile.user_id.as_str());
        documents.push(
            profile
                .to_json()
                .with_context(|| format!("encoding the profile of user {}", profile.user_id))?,
        );
        revisions.push(profile.revision);
        created.push(profile.created_at_ms);
        updated.push(profile.updated_at_ms);
    }
    // The statement's parameters, in a buffer sized for them at once: the
    // documents are most of a commit's bytes, and a buffer doubling its
    // way up to them copied each byte about twice more.
    let bytes: usize = profiles
        .iter()
        .zip(&documents)
        .map(|(profile, document)| document.len() + 2 * profile.user_id.len() + 64)
        .sum();
    let mut parameters = PgArguments::default();
    parameters.reserve(8, bytes + 256);
    let encoding = |error| anyhow!("encoding the batch's profiles for PostgreSQL: {error}");
    parameters.add(&user_ids).map_err(encoding)?;
    parameters.add(&documents).map_err(encoding)?;
    parameters.add(&revisions).map_err(encoding)?;
    parameters.add(&created).map_err(encoding)?;
    parameters.add(&updated).map_err(encoding)?;
    parameters.add(&pointers).map_err(encoding)?;
    // Without `due`, the writer evaluated no segments: the due times stay.
    // (UNNEST pads the empty array with NULLs.)
    let sets_due = due.is_some();
    let due = due.unwrap_or_default();
    parameters.add(sets_due).map_err(encoding)?;
    parameters.add(due).map_err(encoding)?;
    let written: Vec<String> = sqlx::query_scalar_with(
        "INSERT INTO profiles \
             (user_id, profile, revision, created_at, updated_at, merged_into, segments_due_ms) \
         SELECT user_id, profile, revision, \
                to_timestamp(created_ms / 1000.0), to_timestamp(updated_ms / 1000.0), merged_into, \
                CASE WHEN $7 THEN due_ms END \
         FROM UNNEST($1::text[], $2::text[]::json[], $3::bigint[], $4::bigint[], $5::bigint[], \
                     $6::text[], $8::bigint[]) \
              AS batch(user_id, profile, revision, created_ms, updated_ms, merged_into, due_ms) \
         ON CONFLICT (user_id) DO UPDATE SET \
              profile = EXCLUDED.profile, \
              revision = EXCLUDED.revision, \
              updated_at = EXCLUDED.updated_at, \
              merged_into = EXCLUDED.merged_into, \
              segments_due_ms = CASE WHEN $7 THEN EXCLUDED.segments_due_ms \
                                     ELSE profiles.segments_due_ms END \
         WHERE profiles.revision = EXCLUDED.revision - 1 \
         RETURNING user_id",
        parameters,
    )
    .fetch_all(&mut **tx)
    .await
    .context("writing the batch's profiles")?;
    let mut refused = Vec::new();
    if written.len() != profiles.len() {
        // The rows not written hold another writer's revision.
        let written: HashSet<&str> = written.iter().map(String::as_str).collect();
        refused = (0..profiles.len())
            .filter(|&i| !written.contains(user_ids[i]))
            .collect();
    }
    Ok(Written { documents, refused })
}

/// Writes the `profile-updates` outbox row of the profiles a commit wrote
/// (the relay publishes it, `activation::relay`): one `profile.updated` per
/// profile, with the attributes the changes of its `sources` keys changed,
/// or all of them for a profile a merge joined another into, followed by a
/// `segment.entered` / `segment.exited` per membership it changed.
async fn write_updates(
    tx: &mut Transaction<'_, Postgres>,
    updated: &[Updated<'_>],
    changes: &ProfileChanges,
    whole: &HashSet<&str>,
    segments: &SegmentSet,
) -> StoreResult<Option<(i64, Vec<OutgoingEvent>)>> {
    let (mut ids, mut messages) = (Vec::new(), Vec::new());
    for &(profile, sources, memberships) in updated {
        let whole = whole.contains(profile.user_id.as_str());
        let update = ProfileUpdate::new(profile, sources, changes, whole);
        if memberships.is_empty() {
            let message = update
                .to_json()
                .with_context(|| format!("encoding the update of profile {}", profile.user_id))?;
            ids.push(profile.user_id.as_str());
            messages.push(message);
        } else {
            let encoded = update
                .with_segments(memberships, segments)
                .with_context(|| format!("encoding the update of profile {}", profile.user_id))?;
            ids.extend(std::iter::repeat_n(profile.user_id.as_str(), encoded.len()));
            messages.extend(encoded);
        }
    }
    write_outbox(tx, ids, messages).await
}

/// Writes one `profile-updates` outbox row of `messages`, each keyed by the
/// profile id at the same index; `None` when there are none.
pub(super) async fn write_outbox(
    tx: &mut Transaction<'_, Postgres>,
    ids: Vec<&str>,
    messages: Vec<String>,
) -> StoreResult<Option<(i64, Vec<OutgoingEvent>)>> {
    if ids.is_empty() {
        return Ok(None);
    }
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO profile_updates (profile_ids, messages) VALUES ($1, $2) RETURNING id",
    )
    .bind(&ids)
    .bind(&messages)
    .fetch_one(&mut **tx)
    .await
    .context("writing the batch's profile updates")?;
    let messages = ids
        .into_iter()
        .zip(messages)
        .map(|(key, message)| OutgoingEvent {
            key: key.to_owned(),
            payload: message.into_bytes(),
        })
        .collect();
    Ok(Some((id, messages)))
}

/// Brings the timeline of plugin versions of the batch's partitions up to
/// the set that ran it, in one statement: on each partition, the open
/// stretches of versions that left the set end at the partition's start
/// (`expected`, 0 for a partition the group never committed), and versions
/// that joined it open there. A set that did not change writes nothing.
/// The partitions' offset rows, locked or inserted by now, keep two commits
/// from doing this to one partition at once.
async fn write_timeline(
    tx: &mut Transaction<'_, Postgres>,
    commit: &Commit<'_>,
) -> StoreResult<()> {
    if commit.offsets.is_empty() {
        return Ok(());
    }
    let partitions: Vec<i32> = commit.offsets.iter().map(|o| o.partition).collect();
    let starts: Vec<i64> = commit
        .offsets
        .iter()
        .map(|o| o.expected.unwrap_or(0))
        .collect();
    let plugins: Vec<&str> = commit.plugins.iter().map(|p| p.plugin.as_str()).collect();
    let versions: Vec<&str> = commit.plugins.iter().map(|p| p.version.as_str()).collect();
    sqlx::query(
        "WITH batch AS ( \
             SELECT * FROM UNNEST($3::integer[], $4::bigint[]) AS b(partition, start) \
         ), running AS ( \
             SELECT * FROM UNNEST($5::text[], $6::text[]) AS r(plugin, version) \
         ), closed AS ( \
             UPDATE plugin_timeline t \
             SET until_offset = batch.start, closed_at = to_timestamp($7 / 1000.0) \
             FROM batch \
             WHERE t.group_id = $1 AND t.topic = $2 AND t.partition = batch.partition \
               AND t.until_offset IS NULL \
               AND NOT EXISTS (SELECT 1 FROM running r \
                               WHERE r.plugin = t.plugin AND r.version = t.version) \
         ) \
         INSERT INTO plugin_timeline \
             (group_id, topic, partition, plugin, version, from_offset, opened_at) \
         SELECT $1, $2, batch.partition, r.plugin, r.version, batch.start, \
                to_timestamp($7 / 1000.0) \
         FROM batch CROSS JOIN running r \
         WHERE NOT EXISTS (SELECT 1 FROM plugin_timeline t \
                           WHERE t.group_id = $1 AND t.topic = $2 \
                             AND t.partition = batch.partition AND t.until_offset IS NULL \
                             AND t.plugin = r.plugin AND t.version = r.version)",
    )
    .bind(commit.group)
    .bind(commit.topic)
    .bind(&partitions)
    .bind(&starts)
    .bind(&plugins)
    .bind(&versions)
    .bind(commit.now_ms)
    .execute(&mut **tx)
    .await
    .context("moving the timeline of plugin versions")?;
    Ok(())
}

/// Moves the batch's offsets in one statement: updates the rows locked by
/// [`offsets_are_expected`] and inserts the partitions that had none.
/// Returns `false` when another commit inserted one of those meanwhile (a
/// unique violation), which makes this batch stale.
async fn write_offsets(
    tx: &mut Transaction<'_, Postgres>,
    commit: &Commit<'_>,
) -> StoreResult<bool> {
    if commit.offsets.is_empty() {
        return Ok(true);
    }
    let partitions: Vec<i32> = commit.offsets.iter().map(|o| o.partition).collect();
    let next: Vec<i64> = commit.offsets.iter().map(|o| o.next).collect();
    let existed: Vec<bool> = commit
        .offsets
        .iter()
        .map(|o| o.expected.is_some())
        .collect();
    // Not an upsert: ON CONFLICT DO UPDATE would wait for a concurrent first
    // insert and then overwrite it, applying the same records twice. A plain
    // INSERT fails on it instead.
    let result = sqlx::query_scalar::<_, i64>(
        "WITH batch AS ( \
             SELECT * FROM UNNEST($3::integer[], $4::bigint[], $5::boolean[]) \
                 AS b(partition, next_offset, existed) \
         ), moved AS ( \
             UPDATE consumer_offsets o \
             SET next_offset = batch.next_offset, updated_at = to_timestamp($6 / 1000.0) \
             FROM batch \
             WHERE batch.existed AND o.group_id = $1 AND o.topic = $2 \
               AND o.partition = batch.partition \
             RETURNING 1 \
         ), added AS ( \
             INSERT INTO consumer_offsets (group_id, topic, partition, next_offset, updated_at) \
             SELECT $1, $2, partition, next_offset, to_timestamp($6 / 1000.0) \
             FROM batch WHERE NOT existed \
             RETURNING 1 \
         ) \
         SELECT (SELECT count(*) FROM moved) + (SELECT count(*) FROM added)",
    )
    .bind(commit.group)
    .bind(commit.topic)
    .bind(&partitions)
    .bind(&next)
    .bind(&existed)
    .bind(commit.now_ms)
    .fetch_one(&mut **tx)
    .await;
    match result {
        Ok(written) if written == commit.offsets.len() as i64 => Ok(true),
        Ok(written) => Err(StoreError(anyhow!(
            "moved {written} of the batch's {} consumer offsets; \
             the batch is rolled back and must be retried",
            commit.offsets.len()
        ))),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(false),
        Err(e) => Err(StoreError(
            anyhow::Error::new(e).context("moving the batch's consumer offsets"),
        )),
    }
}

#[async_trait]
impl EventArchive for PgStore {
    async fn archive(&self, events: &[ArchivedEvent], suppressions: i64) -> StoreResult<bool> {
        if events.is_empty() {
            return Ok(true);
        }
        let mut ids = Vec::with_capacity(events.len());
        let mut users = Vec::with_capacity(events.len());
        let mut types = Vec::with_capacity(events.len());
        let mut times = Vec::with_capacity(events.len());
        let mut topics = Vec::with_capacity(events.len());
        let mut partitions = Vec::with_capacity(events.len());
        let mut offsets = Vec::with_capacity(events.len());
        let mut payloads = Vec::with_capacity(events.len());
        for event in events {
            ids.push(event.event_id.as_str());
            users.push(event.user_id.as_str());
            types.push(event.event_type.as_str());
            times.push(event.event_time_ms);
            topics.push(event.topic.as_str());
            partitions.push(event.partition);
            offsets.push(event.offset);
            payloads.push(event.payload.as_str());
        }
        let mut tx = self
            .pool
            .begin()
            .await
            .context("starting to archive events")?;
        if !privacy::fence(&mut tx, suppressions).await? {
            return Ok(false);
        }
        // The payload travels as text and is cast to json, which checks it
        // and keeps it as written.
        sqlx::query(
            "INSERT INTO events \
                 (event_id, user_id, event_type, event_time_ms, topic, partition, \"offset\", payload) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], \
                                  $5::text[], $6::integer[], $7::bigint[], $8::text[]::json[]) \
             ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(&ids)
        .bind(&users)
        .bind(&types)
        .bind(&times)
        .bind(&topics)
        .bind(&partitions)
        .bind(&offsets)
        .bind(&payloads)
        .execute(&mut *tx)
        .await
        .with_context(|| format!("archiving {} events", events.len()))?;
        tx.commit().await.context("committing archived events")?;
        Ok(true)
    }
}

/// Every key of `keys` and every key whose pointers lead to the same
/// profile, to the key of that profile (itself for a profile or a key
/// without a row): pointers followed up from `keys`, then down from the
/// profiles they reach, at most [`identity::MAX_POINTER_STEPS`] each way.
pub(super) async fn owners(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    keys: &[String],
) -> anyhow::Result<HashMap<String, String>> {
    let steps = identity::MAX_POINTER_STEPS as i32;
    let rows: Vec<(String, String)> = sqlx::query_as(
        "WITH RECURSIVE up(key, at, steps) AS ( \
             SELECT k COLLATE \"C\", k COLLATE \"C\", 0 FROM unnest($1::text[]) AS k \
           UNION ALL \
             SELECT up.key, p.merged_into, up.steps + 1 \
             FROM up JOIN profiles p ON p.user_id = up.at \
             WHERE p.merged_into IS NOT NULL AND up.steps < $2 \
         ), \
         roots AS ( \
             SELECT DISTINCT ON (key) key, at AS root FROM up ORDER BY key, steps DESC \
         ), \
         down(key, root, steps) AS ( \
             SELECT DISTINCT root, root, 0 FROM roots \
           UNION ALL \
             SELECT p.user_id, down.root, down.steps + 1 \
             FROM down JOIN profiles p ON p.merged_into = down.key \
             WHERE down.steps < $2 \
         ) \
         SELECT key, root FROM roots UNION SELECT key, root FROM down",
    )
    .bind(keys)
    .bind(steps)
    .fetch_all(&mut **tx)
    .await
    .context("following the pointers of a page")?;
    Ok(rows.into_iter().collect())
}
