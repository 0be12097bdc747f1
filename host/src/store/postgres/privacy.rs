//! Privacy requests in PostgreSQL (migration 0011): `privacy_requests`,
//! `suppressions` and the generation in `privacy_state`, moved under
//! [`PRIVACY_LOCK`] held exclusively; batch commits and archive inserts
//! hold it shared ([`fence`]).

use std::collections::BTreeSet;

use anyhow::{Context as _, anyhow};
use async_trait::async_trait;
use serde_json::{Value, json};
use sqlx::types::Json;
use sqlx::{Postgres, Row, Transaction};

use super::{PgStore, write_outbox};
use crate::activation::update::ProfileDeleted;
use crate::model::event::format_millis;
use crate::model::identity::Identifier;
use crate::model::profile::Profile;
use crate::privacy::{
    Applied, Done, ExportedEvent, ExportedMerge, PrivacyRequest, PrivacyStore, Removed,
    RequestKind, Status, Suppressions, outcome, person_keys,
};
use crate::store::{StoreError, StoreResult};

/// The advisory lock between privacy requests (exclusive) and the writes
/// of the lanes (shared): "PulseHub" in ASCII.
pub const PRIVACY_LOCK: i64 = 0x5075_6c73_6548_7562;

/// Waits for any privacy request being applied, then holds it off until
/// the transaction ends, and tells whether the suppressions are still at
/// `generation`, the one the caller filtered its events with.
pub(super) async fn fence(
    tx: &mut Transaction<'_, Postgres>,
    generation: i64,
) -> StoreResult<bool> {
    // Two statements: a statement's snapshot is taken before it waits for
    // the lock, so the generation is read by the next one.
    sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
        .bind(PRIVACY_LOCK)
        .execute(&mut **tx)
        .await
        .context("waiting for the privacy requests being applied")?;
    let stored: i64 = sqlx::query_scalar("SELECT generation FROM privacy_state")
        .fetch_one(&mut **tx)
        .await
        .context("reading the generation of the suppressions")?;
    Ok(stored == generation)
}

/// For a replay's write (backfill, repair, rebuild, re-drive): holds off
/// privacy requests until the transaction ends, and returns the keys of
/// `profiles` that are suppressed (none may be written).
pub(super) async fn suppressed_among(
    tx: &mut Transaction<'_, Postgres>,
    profiles: &[Profile],
) -> StoreResult<BTreeSet<String>> {
    sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
        .bind(PRIVACY_LOCK)
        .execute(&mut **tx)
        .await
        .context("waiting for the privacy requests being applied")?;
    let keys: Vec<&str> = profiles.iter().map(|p| p.user_id.as_str()).collect();
    let suppressed: Vec<String> =
        sqlx::query_scalar("SELECT key FROM suppressions WHERE key = ANY($1)")
            .bind(&keys)
            .fetch_all(&mut **tx)
            .await
            .context("reading the suppressions")?;
    Ok(suppressed.into_iter().collect())
}

const COLUMNS: &str = "id, kind, identifiers::text, keys, status, actor, \
     (extract(epoch FROM submitted_at) * 1000)::bigint, \
     (extract(epoch FROM finished_at) * 1000)::bigint, result::text";

fn request_from(row: &sqlx::postgres::PgRow) -> StoreResult<PrivacyRequest> {
    let id: i64 = row.try_get(0).context("reading a privacy request")?;
    let context = || format!("decoding privacy request {id}");
    let kind: String = row.try_get(1).with_context(context)?;
    let identifiers: String = row.try_get(2).with_context(context)?;
    let status: String = row.try_get(4).with_context(context)?;
    let result: Option<String> = row.try_get(8).with_context(context)?;
    Ok(PrivacyRequest {
        id,
        kind: RequestKind::parse(&kind).ok_or_else(|| anyhow!("unknown kind {kind:?}"))?,
        identifiers: serde_json::from_str(&identifiers).with_context(context)?,
        keys: row.try_get(3).with_context(context)?,
        status: Status::parse(&status).ok_or_else(|| anyhow!("unknown status {status:?}"))?,
        actor: row.try_get(5).with_context(context)?,
        submitted_at_ms: row.try_get(6).with_context(context)?,
        finished_at_ms: row.try_get(7).with_context(context)?,
        result: result
            .map(|text| serde_json::from_str(&text))
            .transpose()
            .with_context(context)?,
    })
}

#[async_trait]
impl PrivacyStore for PgStore {
    async fn submit(
        &self,
        kind: RequestKind,
        identifiers: &[Identifier],
        keys: &[String],
        actor: &str,
        now_ms: i64,
    ) -> StoreResult<PrivacyRequest> {
        let identifiers = serde_json::to_string(identifiers).context("encoding identifiers")?;
        let row = sqlx::query(&format!(
            "INSERT INTO privacy_requests (kind, identifiers, keys, status, actor, submitted_at) \
             VALUES ($1, $2::json, $3, 'pending', $4, to_timestamp($5 / 1000.0)) \
             RETURNING {COLUMNS}"
        ))
        .bind(kind.as_str())
        .bind(identifiers)
        .bind(keys)
        .bind(actor)
        .bind(now_ms)
        .fetch_one(self.pool())
        .await
        .context("storing a privacy request")?;
        request_from(&row)
    }

    async fn request(&self, id: i64) -> StoreResult<Option<PrivacyRequest>> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM privacy_requests WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await
        .with_context(|| format!("reading privacy request {id}"))?;
        row.as_ref().map(request_from).transpose()
    }

    async fn apply(&self, id: i64, now_ms: i64) -> StoreResult<Option<Applied>> {
        let mut tx = self
            .pool()
            .begin()
            .await
            .context("starting a privacy request's transaction")?;
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS}, cache_keys FROM privacy_requests WHERE id = $1 FOR UPDATE"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .with_context(|| format!("locking privacy request {id}"))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let request = request_from(&row)?;
        match request.status {
            Status::Done => return Ok(None),
            Status::Applied => {
                let cache_keys: Option<Vec<String>> =
                    row.try_get(9).context("reading a request's cache keys")?;
                return Ok(Some(Applied {
                    result: request.result.unwrap_or(Value::Null),
                    cache_keys: cache_keys.unwrap_or_default(),
                }));
            }
            Status::Pending => {}
        }
        if request.kind.suppresses() {
            // Waits for the batches being committed; holds the next ones
            // until this commits, and they find the generation moved.
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(PRIVACY_LOCK)
                .execute(&mut *tx)
                .await
                .context("waiting for the batches being committed")?;
            sqlx::query("UPDATE privacy_state SET generation = generation + 1")
                .execute(&mut *tx)
                .await
                .context("moving the generation of the suppressions")?;
        }
        let (profiles, keys) = person(&mut tx, &request.keys).await?;
        let found = profiles.len();
        let mut cache_keys = Vec::new();
        let mut outbox = None;
        let done = match request.kind {
            RequestKind::Suppress => Done::Suppressed(suppress(&mut tx, &keys, id, now_ms).await?),
            RequestKind::Unsuppress => Done::Unsuppressed(unsuppress(&mut tx, &keys).await?),
            RequestKind::Delete => {
                let suppressed = suppress(&mut tx, &keys, id, now_ms).await?;
                let (removed, deleted) = delete(&mut tx, &keys, now_ms).await?;
                if self.outbox {
                    let (ids, messages): (Vec<&str>, Vec<String>) = deleted
                        .iter()
                        .map(|(id, message)| (id.as_str(), message.clone()))
                        .unzip();
                    outbox = write_outbox(&mut tx, ids, messages).await?;
                }
                cache_keys = keys.iter().cloned().collect();
                Done::Deleted {
                    suppressed,
                    store: "postgres",
                    removed,
                }
            }
            RequestKind::Export => export(&mut tx, profiles, &keys).await?,
        };
        let result = outcome(found, keys.len(), done);
        let status = if cache_keys.is_empty() {
            Status::Done
        } else {
            Status::Applied
        };
        sqlx::query(
            "UPDATE privacy_requests SET status = $2, result = $3::text::json, cache_keys = $4, \
                 finished_at = CASE WHEN $2 = 'done' THEN to_timestamp($5 / 1000.0) END \
             WHERE id = $1",
        )
        .bind(id)
        .bind(status.as_str())
        .bind(result.to_string())
        .bind(if cache_keys.is_empty() {
            None
        } else {
            Some(&cache_keys)
        })
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .with_context(|| format!("recording what privacy request {id} did"))?;
        // The audit names the request, not the person: the identifiers are
        // in the request itself.
        let detail =
            json!({ "request": id, "identifiers": request.keys.len(), "result": summary(&result) });
        sqlx::query(
            "INSERT INTO operation_audit (at, actor, operation, outcome, detail) \
             VALUES (to_timestamp($1 / 1000.0), $2, $3, 'done', $4::text::json)",
        )
        .bind(now_ms)
        .bind(&request.actor)
        .bind(format!("privacy-{}", request.kind.as_str()))
        .bind(detail.to_string())
        .execute(&mut *tx)
        .await
        .context("auditing a privacy request")?;
        tx.commit()
            .await
            .with_context(|| format!("committing privacy request {id}"))?;
        if let (Some(handoff), Some((row, messages))) = (&self.updates, outbox) {
            handoff.put(row, messages);
        }
        Ok(Some(Applied { result, cache_keys }))
    }

    async fn finish(&self, id: i64, result: &Value, now_ms: i64) -> StoreResult<()> {
        sqlx::query(
            "UPDATE privacy_requests SET status = 'done', result = $2::text::json, \
                 cache_keys = NULL, finished_at = to_timestamp($3 / 1000.0) \
             WHERE id = $1 AND status = 'applied'",
        )
        .bind(id)
        .bind(result.to_string())
        .bind(now_ms)
        .execute(self.pool())
        .await
        .with_context(|| format!("finishing privacy request {id}"))?;
        Ok(())
    }

    async fn unfinished(&self) -> StoreResult<Vec<i64>> {
        let ids = sqlx::query_scalar(
            "SELECT id FROM privacy_requests WHERE status <> 'done' ORDER BY id",
        )
        .fetch_all(self.pool())
        .await
        .context("reading the unfinished privacy requests")?;
        Ok(ids)
    }

    async fn generation(&self) -> StoreResult<i64> {
        let generation = sqlx::query_scalar("SELECT generation FROM privacy_state")
            .fetch_one(self.pool())
            .await
            .context("reading the generation of the suppressions")?;
        Ok(generation)
    }

    async fn suppressions(&self) -> StoreResult<Suppressions> {
        let mut tx = self
            .pool()
            .begin()
            .await
            .context("starting to read the suppressions")?;
        // Under the shared lock: the keys and the generation of one state.
        sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
            .bind(PRIVACY_LOCK)
            .execute(&mut *tx)
            .await
            .context("waiting for the privacy requests being applied")?;
        let generation: i64 = sqlx::query_scalar("SELECT generation FROM privacy_state")
            .fetch_one(&mut *tx)
            .await
            .context("reading the generation of the suppressions")?;
        let keys: Vec<String> = sqlx::query_scalar("SELECT key FROM suppressions")
            .fetch_all(&mut *tx)
            .await
            .context("reading the suppressions")?;
        tx.commit().await.context("reading the suppressions")?;
        Ok(Suppressions {
            generation,
            keys: keys.into_iter().collect(),
        })
    }
}

/// The export and delete results without the exported data, for the audit.
fn summary(result: &Value) -> Value {
    match result.get("export") {
        Some(_) => json!({ "exported": true }),
        None => result.clone(),
    }
}

/// The profiles `named` resolve to (pointers followed), and the keys of the
/// person: [`person_keys`] and every pointer row that leads to them.
async fn person(
    tx: &mut Transaction<'_, Postgres>,
    named: &[String],
) -> StoreResult<(Vec<Profile>, BTreeSet<String>)> {
    let owners = super::owners(tx, named).await?;
    let roots: BTreeSet<&String> = owners.values().collect();
    let rows: Vec<(Json<Profile>,)> = sqlx::query_as(
        "SELECT profile FROM profiles \
         WHERE user_id = ANY($1) AND merged_into IS NULL ORDER BY user_id",
    )
    .bind(roots.into_iter().collect::<Vec<_>>())
    .fetch_all(&mut **tx)
    .await
    .context("reading a person's profiles")?;
    let profiles: Vec<Profile> = rows.into_iter().map(|(Json(p),)| p).collect();
    let mut keys: BTreeSet<String> = owners.into_keys().collect();
    for profile in &profiles {
        keys.extend(person_keys(Some(profile), &[]));
    }
    Ok((profiles, keys))
}

async fn suppress(
    tx: &mut Transaction<'_, Postgres>,
    keys: &BTreeSet<String>,
    request: i64,
    now_ms: i64,
) -> StoreResult<u64> {
    let keys: Vec<&String> = keys.iter().collect();
    let done = sqlx::query(
        "INSERT INTO suppressions (key, request_id, since) \
         SELECT key, $2, to_timestamp($3 / 1000.0) FROM UNNEST($1::text[]) AS k(key) \
         ON CONFLICT (key) DO NOTHING",
    )
    .bind(&keys)
    .bind(request)
    .bind(now_ms)
    .execute(&mut **tx)
    .await
    .context("suppressing a person")?;
    Ok(done.rows_affected())
}

/// Lifts the suppression of `keys` and of every key suppressed with them
/// (by the same request): a person deleted is unsuppressed whole.
async fn unsuppress(
    tx: &mut Transaction<'_, Postgres>,
    keys: &BTreeSet<String>,
) -> StoreResult<u64> {
    let keys: Vec<&String> = keys.iter().collect();
    let done = sqlx::query(
        "DELETE FROM suppressions WHERE key = ANY($1) OR request_id IN \
             (SELECT request_id FROM suppressions WHERE key = ANY($1))",
    )
    .bind(&keys)
    .execute(&mut **tx)
    .await
    .context("lifting a suppression")?;
    Ok(done.rows_affected())
}

/// Removes the person's rows, merge log entries and archived events.
async fn delete(
    tx: &mut Transaction<'_, Postgres>,
    keys: &BTreeSet<String>,
    now_ms: i64,
) -> StoreResult<(Removed, Vec<(String, String)>)> {
    let keys: Vec<&String> = keys.iter().collect();
    let rows = sqlx::query(
        "DELETE FROM profiles WHERE user_id = ANY($1) \
         RETURNING user_id, revision, merged_into IS NULL AS canonical, \
                   coalesce(profile->'segments', '[]')::text AS segments",
    )
    .bind(&keys)
    .fetch_all(&mut **tx)
    .await
    .context("deleting a person's profile rows")?;
    // One `profile.deleted` message per row: (profile id, JSON).
    let mut deleted = Vec::with_capacity(rows.len());
    let mut canonical = 0;
    let mut members: Vec<(i32, String)> = Vec::new();
    for row in &rows {
        let user: String = row.try_get("user_id").context("a deleted row's key")?;
        let revision: i64 = row
            .try_get("revision")
            .context("a deleted row's revision")?;
        if row.try_get("canonical").context("a deleted row's kind")? {
            canonical += 1;
        }
        let segments: String = row
            .try_get("segments")
            .context("a deleted row's segments")?;
        let ids: Vec<i32> = serde_json::from_str(&segments)
            .with_context(|| format!("the segments of profile {user} are unreadable"))?;
        members.extend(ids.into_iter().map(|id| (id, user.clone())));
        let message = ProfileDeleted::encode(&user, revision, now_ms)
            .context("encoding a profile.deleted message")?;
        deleted.push((user, message));
    }
    // The person leaves every segment's member list with the rows.
    let keys_of_members = members
        .iter()
        .map(|(id, user)| (*id, user.as_str()))
        .collect();
    super::remove_members(tx, keys_of_members)
        .await
        .context("deleting a person's segment memberships")?;
    let merges =
        sqlx::query("DELETE FROM profile_merges WHERE survivor = ANY($1) OR merged = ANY($1)")
            .bind(&keys)
            .execute(&mut **tx)
            .await
            .context("deleting a person's merge log")?
            .rows_affected();
    let events = sqlx::query("DELETE FROM events WHERE user_id = ANY($1)")
        .bind(&keys)
        .execute(&mut **tx)
        .await
        .context("deleting a person's archived events")?
        .rows_affected();
    let profiles = canonical as u64;
    Ok((
        Removed {
            profiles,
            pointers: rows.len() as u64 - profiles,
            merges,
            archived_events: events,
        },
        deleted,
    ))
}

/// Everything stored about the person.
async fn export(
    tx: &mut Transaction<'_, Postgres>,
    profiles: Vec<Profile>,
    keys: &BTreeSet<String>,
) -> StoreResult<Done> {
    let keys: Vec<&String> = keys.iter().collect();
    let merges: Vec<(String, String, String, String, i64)> = sqlx::query_as(
        "SELECT event_id, merged, survivor, kind, (extract(epoch FROM merged_at) * 1000)::bigint \
         FROM profile_merges WHERE survivor = ANY($1) OR merged = ANY($1) \
         ORDER BY merged_at, event_id, merged",
    )
    .bind(&keys)
    .fetch_all(&mut **tx)
    .await
    .context("exporting a person's merge log")?;
    let events: Vec<(String, String, String, i64, String)> = sqlx::query_as(
        "SELECT event_id, user_id, event_type, event_time_ms, payload::text FROM events \
         WHERE user_id = ANY($1) ORDER BY event_time_ms, event_id",
    )
    .bind(&keys)
    .fetch_all(&mut **tx)
    .await
    .context("exporting a person's archived events")?;
    let suppressed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM suppressions WHERE key = ANY($1)")
            .bind(&keys)
            .fetch_one(&mut **tx)
            .await
            .context("reading a person's suppression")?;
    let merges = merges
        .into_iter()
        .map(|(event_id, merged, survivor, kind, at_ms)| ExportedMerge {
            event_id,
            merged,
            survivor,
            kind,
            merged_at: format_millis(at_ms),
        })
        .collect();
    let archived_events = events
        .into_iter()
        .map(
            |(event_id, profile_key, event_type, event_time_ms, payload)| {
                let payload: Value = serde_json::from_str(&payload).map_err(|e| {
                    StoreError(anyhow!("archived event {event_id} is unreadable: {e}"))
                })?;
                Ok(ExportedEvent {
                    event_id,
                    profile_key,
                    event_type,
                    event_time: format_millis(event_time_ms),
                    payload,
                })
            },
        )
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(Done::Exported {
        profiles,
        merges,
        archived_events,
        suppressed: suppressed > 0,
    })
}
