//! Segment definitions and members in PostgreSQL (`segments`,
//! `segment_members`; migration 0013).

use anyhow::Context;
use async_trait::async_trait;
use sqlx::types::Json;

use super::{PgStore, Updated, write_members, write_outbox};
use crate::activation::update::ProfileUpdate;
use crate::model::merge::ProfileChanges;
use crate::model::profile::Profile;
use crate::segment::catalog::{DueRound, same_condition};
use crate::segment::{Definition, MembershipChanges, SegmentStore, Stored};
use crate::store::{EncodedProfile, StoreResult};

type Row = (i32, String, Json<serde_json::Value>, i64, i64);

const COLUMNS: &str = "id, name, condition, \
     (extract(epoch FROM created_at) * 1000)::bigint, \
     (extract(epoch FROM updated_at) * 1000)::bigint";

fn definition((id, name, Json(condition), created_at_ms, updated_at_ms): Row) -> Definition {
    Definition {
        // Ids come from a sequence of positive integers.
        id: id.unsigned_abs(),
        name,
        condition,
        created_at_ms,
        updated_at_ms,
    }
}

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
                         updated_at = to_timestamp($3 / 1000.0) \
                     WHERE name = $1 RETURNING {COLUMNS}"
                ))
                .bind(name)
                .bind(condition.to_string())
                .bind(now_ms)
                .fetch_one(&mut *tx)
                .await
                .with_context(|| format!("changing segment {name}"))?;
                Stored::Changed(definition(row))
            }
            None => {
                let row: Row = sqlx::query_as(&format!(
                    "INSERT INTO segments (name, condition, created_at, updated_at) \
                     VALUES ($1, $2::text::json, to_timestamp($3 / 1000.0), \
                             to_timestamp($3 / 1000.0)) \
                     RETURNING {COLUMNS}"
                ))
                .bind(name)
                .bind(condition.to_string())
                .bind(now_ms)
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
        let no_changes = ProfileChanges::new();
        let updated: Vec<Updated<'_>> = changed
            .iter()
            .map(|(profile, memberships)| (profile, &[][..], memberships))
            .collect();
        write_members(&mut tx, &updated).await?;
        let outbox = match &self.updates {
            Some(_) => {
                let (mut ids, mut messages) = (Vec::new(), Vec::new());
                for (profile, memberships) in &changed {
                    // Only the memberships changed: the message names no
                    // attributes.
                    let mut update = ProfileUpdate::new(profile, &[], &no_changes, false);
                    update.attributes.clear();
                    let encoded = update.with_segments(memberships, &set).with_context(|| {
                        format!("encoding the update of profile {}", profile.user_id)
                    })?;
                    ids.extend(std::iter::repeat_n(profile.user_id.as_str(), encoded.len()));
                    messages.extend(encoded);
                }
                write_outbox(&mut tx, ids, messages).await?
            }
            None => None,
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
