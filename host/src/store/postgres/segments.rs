//! Segment definitions and members in PostgreSQL (`segments`,
//! `segment_members`; migration 0013).

use anyhow::Context;
use async_trait::async_trait;
use sqlx::types::Json;
use sqlx::{Postgres, Transaction};

use super::{PgStore, Updated, write_members, write_outbox};
use crate::activation::update::ProfileUpdate;
use crate::model::profile::Profile;
use crate::pipeline::publish::OutgoingEvent;
use crate::segment::catalog::{DueRound, same_condition};
use crate::segment::{
    Backfill, BackfillPage, Definition, MembershipChanges, SegmentSet, SegmentStore, Stored,
};
use crate::store::{EncodedProfile, StoreResult};

type Row = (
    i32,
    String,
    Json<serde_json::Value>,
    i64,
    i64,
    Option<String>,
    i64,
    bool,
    bool,
);

const COLUMNS: &str = "id, name, condition, \
     (extract(epoch FROM created_at) * 1000)::bigint, \
     (extract(epoch FROM updated_at) * 1000)::bigint, \
     backfill_after, backfill_profiles, backfill_done, emit_backfill";

fn definition(
    (id, name, Json(condition), created_at_ms, updated_at_ms, after, profiles, done, emit): Row,
) -> Definition {
    Definition {
        // Ids come from a sequence of positive integers.
        id: id.unsigned_abs(),
        name,
        condition,
        created_at_ms,
        updated_at_ms,
        backfill: Backfill {
            emit,
            after,
            profiles: profiles.unsigned_abs(),
            done,
        },
    }
}

/// The advisory lock one process holds while it computes a page of a
/// segment's backfill (with the segment's id as the second key).
const BACKFILL_LOCK: i32 = 0x7365_6762; // "segb"

#[async_trait]
impl SegmentStore for PgStore {
    async fn definitions(&self) -> StoreResult<Vec<Definition>> {
        let rows: Vec<Row> =
            sqlx::query_as(&format!("SELECT {COLUMNS} FROM segments ORDER BY name"))
                .fetch_all(&self.pool)
                .await
                .context("reading the segment definitions")?;
        Ok(rows.into_iter().map(definition).collect())
    }

    async fn put_definition(
        &self,
        name: &str,
        condition: &serde_json::Value,
        emit_backfill: bool,
        now_ms: i64,
    ) -> StoreResult<Stored> {
        let mut tx = self
            .pool
            .begin()
            .await
            .context("starting to store a segment")?;
        let stored: Option<Row> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM segments WHERE name = $1 FOR UPDATE"
        ))
        .bind(name)
        .fetch_optional(&mut *tx)
        .await
        .with_context(|| format!("reading segment {name}"))?;
        let outcome = match stored.map(definition) {
            Some(old) if same_condition(&old.condition, condition) => Stored::Unchanged(old),
            Some(old) => {
                sqlx::query("DELETE FROM segment_members WHERE segment_id = $1")
                    .bind(old.id as i32)
                    .execute(&mut *tx)
                    .await
                    .with_context(|| format!("dropping the members of segment {name}"))?;
                let row: Row = sqlx::query_as(&format!(
                    "UPDATE segments SET id = nextval('segment_ids'), condition = $2::text::json, \
                         updated_at = to_timestamp($3 / 1000.0), backfill_after = NULL, \
                         backfill_profiles = 0, backfill_done = false, emit_backfill = $4 \
                     WHERE name = $1 RETURNING {COLUMNS}"
                ))
                .bind(name)
                .bind(condition.to_string())
                .bind(now_ms)
                .bind(emit_backfill)
                .fetch_one(&mut *tx)
                .await
                .with_context(|| format!("changing segment {name}"))?;
                Stored::Changed(definition(row))
            }
            None => {
                let row: Row = sqlx::query_as(&format!(
                    "INSERT INTO segments (name, condition, created_at, updated_at, emit_backfill) \
                     VALUES ($1, $2::text::json, to_timestamp($3 / 1000.0), \
                             to_timestamp($3 / 1000.0), $4) \
                     RETURNING {COLUMNS}"
                ))
                .bind(name)
                .bind(condition.to_string())
                .bind(now_ms)
                .bind(emit_backfill)
                .fetch_one(&mut *tx)
                .await
                .with_context(|| format!("storing segment {name}"))?;
                Stored::Created(definition(row))
            }
        };
        tx.commit()
            .await
            .with_context(|| format!("committing segment {name}"))?;
        Ok(outcome)
    }

    async fn delete_definition(&self, name: &str) -> StoreResult<bool> {
        let deleted: Option<i32> = sqlx::query_scalar(
            "WITH gone AS (DELETE FROM segments WHERE name = $1 RETURNING id), \
                  members AS (DELETE FROM segment_members \
                              WHERE segment_id = (SELECT id FROM gone)) \
             SELECT id FROM gone",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .with_context(|| format!("deleting segment {name}"))?;
        Ok(deleted.is_some())
    }

    async fn members(
        &self,
        id: u32,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        let members = sqlx::query_scalar(
            "SELECT user_id FROM segment_members \
             WHERE segment_id = $1 AND ($2::text IS NULL OR user_id > $2) \
             ORDER BY user_id LIMIT $3",
        )
        .bind(id as i32)
        .bind(after)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .with_context(|| format!("reading the members of segment {id}"))?;
        Ok(members)
    }

    async fn member_count(&self, id: u32) -> StoreResult<u64> {
        let count: i64 =
            sqlx::query_scalar("SELECT count(*) FROM segment_members WHERE segment_id = $1")
                .bind(id as i32)
                .fetch_one(&self.pool)
                .await
                .with_context(|| format!("counting the members of segment {id}"))?;
        Ok(count.unsigned_abs())
    }

    async fn backfill_page(
        &self,
        id: u32,
        now_ms: i64,
        limit: usize,
    ) -> StoreResult<Option<BackfillPage>> {
        let set = self.segments.load();
        // A segment this process does not evaluate yet (or no longer): its
        // backfill waits for the refresh.
        let Some(index) = set.index_of(id) else {
            return Ok(None);
        };
        let mut tx = self
            .pool
            .begin()
            .await
            .context("starting a page of a segment backfill")?;
        let mine: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1, $2)")
            .bind(BACKFILL_LOCK)
            .bind(id as i32)
            .fetch_one(&mut *tx)
            .await
            .context("taking the lock of a segment backfill")?;
        let state: Option<(Option<String>, bool, bool)> = if mine {
            sqlx::query_as(
                "SELECT backfill_after, backfill_done, emit_backfill FROM segments WHERE id = $1",
            )
            .bind(id as i32)
            .fetch_optional(&mut *tx)
            .await
            .with_context(|| format!("reading the backfill of segment {id}"))?
        } else {
            None
        };
        let Some((after, false, emit)) = state else {
            tx.rollback()
                .await
                .context("ending a page of a segment backfill")?;
            return Ok(None);
        };
        // Locked in key order, as commits lock them: the page waits for a
        // commit holding one of its rows, and no commit deadlocks with it.
        let rows: Vec<(String, Json<Profile>)> = sqlx::query_as(
            "SELECT user_id, profile FROM profiles \
             WHERE $1::text IS NULL OR user_id > $1 ORDER BY user_id LIMIT $2 FOR UPDATE",
        )
        .bind(&after)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await
        .with_context(|| format!("reading a page of profiles for segment {id}"))?;
        let page = rows.len();
        let last = rows.last().map(|(key, _)| key.clone());
        let mut changed: Vec<(Profile, MembershipChanges, String, Option<i64>)> = Vec::new();
        for (_, Json(mut profile)) in rows {
            if profile.merged_into.is_some() {
                continue;
            }
            let memberships =
                set.reevaluate(&[index], &profile.attributes, now_ms, &mut profile.segments);
            let due_before = profile.segments_due_ms;
            let due = set.schedule(&mut profile, now_ms);
            if memberships.is_empty() && due == due_before {
                continue;
            }
            profile.revision += 1;
            profile.updated_at_ms = now_ms;
            let document = profile
                .to_json()
                .with_context(|| format!("encoding the profile of user {}", profile.user_id))?;
            changed.push((profile, memberships, document, due));
        }
        if !changed.is_empty() {
            let keys: Vec<&str> = changed.iter().map(|(p, ..)| p.user_id.as_str()).collect();
            let documents: Vec<&str> = changed.iter().map(|(_, _, d, _)| d.as_str()).collect();
            let dues: Vec<Option<i64>> = changed.iter().map(|(.., due)| *due).collect();
            sqlx::query(
                "UPDATE profiles p SET profile = b.document::json, revision = p.revision + 1, \
                     updated_at = to_timestamp($4 / 1000.0), segments_due_ms = b.due_ms \
                 FROM UNNEST($1::text[], $2::text[], $3::bigint[]) AS b(user_id, document, due_ms) \
                 WHERE p.user_id = b.user_id",
            )
            .bind(&keys)
            .bind(&documents)
            .bind(&dues)
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .with_context(|| format!("writing a page of segment {id}'s backfill"))?;
            let updated: Vec<Updated<'_>> = changed
                .iter()
                .map(|(profile, memberships, ..)| (profile, &[][..], memberships))
                .collect();
            write_members(&mut tx, &updated).await?;
        }
        let outbox = if self.outbox && emit {
            let changes = changed.iter().map(|(profile, m, ..)| (profile, m));
            write_membership_updates(&mut tx, &set, changes).await?
        } else {
            None
        };
        let done = page < limit;
        sqlx::query(
            "UPDATE segments SET backfill_after = COALESCE($2, backfill_after), \
                 backfill_profiles = backfill_profiles + $3, backfill_done = $4 \
             WHERE id = $1",
        )
        .bind(id as i32)
        .bind(&last)
        .bind(i64::try_from(page).unwrap_or(i64::MAX))
        .bind(done)
        .execute(&mut *tx)
        .await
        .with_context(|| format!("recording the progress of segment {id}'s backfill"))?;
        tx.commit()
            .await
            .with_context(|| format!("committing a page of segment {id}'s backfill"))?;
        if let (Some(handoff), Some((outbox_id, messages))) = (&self.updates, outbox) {
            handoff.put(outbox_id, messages);
        }
        Ok(Some(BackfillPage {
            profiles: page,
            changed: changed
                .into_iter()
                .map(|(profile, _, document, _)| EncodedProfile::new(&profile, document))
                .collect(),
            done,
        }))
    }

    async fn reevaluate_due(&self, now_ms: i64, limit: usize) -> StoreResult<DueRound> {
        let set = self.segments.load();
        let mut tx = self
            .pool
            .begin()
            .await
            .context("starting to re-evaluate due segments")?;
        // Rows a commit holds are left for the next round; commits never
        // wait on this transaction for long, and it never waits on them (so
        // the rows need no lock order). By due time, which the partial
        // index gives without reading the rows that are not due.
        let rows: Vec<(String, Json<Profile>)> = sqlx::query_as(
            "SELECT user_id, profile FROM profiles WHERE segments_due_ms <= $1 \
             ORDER BY segments_due_ms LIMIT $2 FOR UPDATE SKIP LOCKED",
        )
        .bind(now_ms)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await
        .context("reading the profiles whose segments came due")?;
        let due = rows.len();
        let (mut keys, mut dues) = (Vec::with_capacity(due), Vec::with_capacity(due));
        let mut documents: Vec<(String, bool)> = Vec::with_capacity(due);
        let mut changed: Vec<(Profile, MembershipChanges)> = Vec::new();
        for (key, Json(mut profile)) in rows {
            let memberships = set.evaluate_due(&mut profile, now_ms);
            dues.push(set.schedule(&mut profile, now_ms));
            // A visit that changed no membership only moves the time on:
            // the document keeps its revision (a copy of it elsewhere, with
            // the earlier time, only brings the next visit forward).
            if !memberships.is_empty() {
                profile.revision += 1;
                profile.updated_at_ms = now_ms;
            }
            let document = profile
                .to_json()
                .with_context(|| format!("encoding the profile of user {key}"))?;
            if memberships.is_empty() {
                documents.push((document, false));
            } else {
                documents.push((document.clone(), true));
                changed.push((profile, memberships));
            }
            keys.push(key);
        }
        if due == 0 {
            tx.rollback()
                .await
                .context("ending a round of due segments")?;
            return Ok(DueRound::default());
        }
        let (texts, bumped): (Vec<&str>, Vec<bool>) = documents
            .iter()
            .map(|(text, bumped)| (text.as_str(), *bumped))
            .unzip();
        sqlx::query(
            "UPDATE profiles p SET \
                 profile = b.document::json, \
                 revision = p.revision + CASE WHEN b.bumped THEN 1 ELSE 0 END, \
                 updated_at = CASE WHEN b.bumped THEN to_timestamp($5 / 1000.0) \
                                   ELSE p.updated_at END, \
                 segments_due_ms = b.due_ms \
             FROM UNNEST($1::text[], $2::text[], $3::boolean[], $4::bigint[]) \
                  AS b(user_id, document, bumped, due_ms) \
             WHERE p.user_id = b.user_id",
        )
        .bind(&keys)
        .bind(&texts)
        .bind(&bumped)
        .bind(&dues)
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .context("writing the re-evaluated memberships")?;
        let updated: Vec<Updated<'_>> = changed
            .iter()
            .map(|(profile, memberships)| (profile, &[][..], memberships))
            .collect();
        write_members(&mut tx, &updated).await?;
        let outbox = if self.outbox {
            let changes = changed.iter().map(|(profile, m)| (profile, m));
            write_membership_updates(&mut tx, &set, changes).await?
        } else {
            None
        };
        tx.commit()
            .await
            .context("committing the re-evaluated memberships")?;
        if let (Some(handoff), Some((id, messages))) = (&self.updates, outbox) {
            handoff.put(id, messages);
        }
        let changed = changed
            .iter()
            .zip(documents.into_iter().filter(|(_, bumped)| *bumped))
            .map(|((profile, _), (document, _))| EncodedProfile::new(profile, document))
            .collect();
        Ok(DueRound { due, changed })
    }
}

/// Writes the outbox row of memberships that changed with no attribute
/// (time passing, a backfill): per profile whose memberships changed, a
/// `profile.updated` naming no attributes and its `segment.*` messages.
async fn write_membership_updates<'p>(
    tx: &mut Transaction<'_, Postgres>,
    set: &SegmentSet,
    changed: impl Iterator<Item = (&'p Profile, &'p MembershipChanges)>,
) -> StoreResult<Option<(i64, Vec<OutgoingEvent>)>> {
    let (mut ids, mut messages) = (Vec::new(), Vec::new());
    for (profile, memberships) in changed.filter(|(_, m)| !m.is_empty()) {
        let encoded = ProfileUpdate::memberships_only(profile)
            .with_segments(memberships, set)
            .with_context(|| format!("encoding the update of profile {}", profile.user_id))?;
        ids.extend(std::iter::repeat_n(profile.user_id.as_str(), encoded.len()));
        messages.extend(encoded);
    }
    write_outbox(tx, ids, messages).await
}
