//! Destination definitions, counters and dead letters in PostgreSQL
//! (`destinations`, `destination_dead_letters`; migration 0014).

use anyhow::Context as _;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row as _};

use super::sign::Secret;
use crate::store::StoreResult;

/// How long the secret a `PUT` replaced keeps signing beside the new one,
/// so receivers can switch over.
pub const ROTATION_GRACE_MS: i64 = 24 * 3600 * 1000;

/// What a destination receives, and where: a `PUT`'s body, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub url: String,
    /// `whsec_…`, as given.
    pub secret: String,
    /// Message types, sorted, without repeats.
    pub events: Vec<String>,
    /// Segment names, sorted, without repeats; `None`: every segment.
    pub segments: Option<Vec<String>>,
}

/// A stored destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub name: String,
    pub target: Target,
    /// The secret before the last rotation, and until when it signs too.
    pub previous_secret: Option<(String, i64)>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// Why deliveries stopped (a `410 Gone`), and when; `None` while
    /// enabled.
    pub disabled: Option<(String, i64)>,
    pub counters: Counters,
}

impl Destination {
    /// The secrets that sign at `now_ms`: the current one, and the one
    /// before it during its grace.
    pub fn signing_secrets(&self, now_ms: i64) -> Vec<Secret> {
        let mut texts = vec![self.target.secret.as_str()];
        if let Some((previous, until)) = &self.previous_secret
            && now_ms < *until
        {
            texts.push(previous);
        }
        // Stored secrets were checked when they were put.
        texts
            .into_iter()
            .filter_map(|text| Secret::parse(text).ok())
            .collect()
    }
}

/// What became of a destination's deliveries, over its whole life.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Messages acknowledged.
    pub sent: u64,
    /// Attempts that failed.
    pub failed: u64,
    /// Attempts that were retries.
    pub retried: u64,
    /// Batches that went to the dead letters.
    pub dead_lettered: u64,
    pub last_sent_at_ms: Option<i64>,
    /// The last failure, and when.
    pub last_error: Option<(String, i64)>,
}

/// What one delivery added to the counters.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    pub sent: u64,
    pub failed: u64,
    pub retried: u64,
    pub dead_lettered: u64,
    pub last_error: Option<String>,
}

/// The outcome of a `PUT`.
#[derive(Debug)]
pub enum Put {
    Created(Destination),
    /// Changed, or enabled again after a `410`.
    Changed(Destination),
    Unchanged(Destination),
}

impl Put {
    pub fn destination(&self) -> &Destination {
        match self {
            Put::Created(d) | Put::Changed(d) | Put::Unchanged(d) => d,
        }
    }
}

/// A batch that failed every attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub id: i64,
    pub webhook_id: String,
    /// The body every attempt sent (JSON).
    pub body: String,
    pub messages: u32,
    pub attempts: u32,
    pub last_error: String,
    pub created_at_ms: i64,
}

const COLUMNS: &str = "name, url, secret, previous_secret, \
     (extract(epoch FROM previous_until) * 1000)::bigint AS previous_until, \
     events, segments, \
     (extract(epoch FROM created_at) * 1000)::bigint AS created_at, \
     (extract(epoch FROM updated_at) * 1000)::bigint AS updated_at, \
     disabled_reason, (extract(epoch FROM disabled_at) * 1000)::bigint AS disabled_at, \
     sent, failed, retried, dead_lettered, \
     (extract(epoch FROM last_sent_at) * 1000)::bigint AS last_sent_at, \
     last_error, (extract(epoch FROM last_error_at) * 1000)::bigint AS last_error_at";

fn destination(row: &PgRow) -> sqlx::Result<Destination> {
    let count =
        |column: &str| -> sqlx::Result<u64> { Ok(row.try_get::<i64, _>(column)?.unsigned_abs()) };
    let previous: Option<String> = row.try_get("previous_secret")?;
    let previous_until: Option<i64> = row.try_get("previous_until")?;
    let reason: Option<String> = row.try_get("disabled_reason")?;
    let disabled_at: Option<i64> = row.try_get("disabled_at")?;
    let last_error: Option<String> = row.try_get("last_error")?;
    let last_error_at: Option<i64> = row.try_get("last_error_at")?;
    Ok(Destination {
        name: row.try_get("name")?,
        target: Target {
            url: row.try_get("url")?,
            secret: row.try_get("secret")?,
            events: row.try_get("events")?,
            segments: row.try_get("segments")?,
        },
        previous_secret: previous.zip(previous_until),
        created_at_ms: row.try_get("created_at")?,
        updated_at_ms: row.try_get("updated_at")?,
        disabled: reason.map(|reason| (reason, disabled_at.unwrap_or_default())),
        counters: Counters {
            sent: count("sent")?,
            failed: count("failed")?,
            retried: count("retried")?,
            dead_lettered: count("dead_lettered")?,
            last_sent_at_ms: row.try_get("last_sent_at")?,
            last_error: last_error.map(|error| (error, last_error_at.unwrap_or_default())),
        },
    })
}

/// The destinations of one database.
#[derive(Debug, Clone)]
pub struct DestinationStore {
    pool: PgPool,
}

impl DestinationStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Every destination, by name.
    pub async fn list(&self) -> StoreResult<Vec<Destination>> {
        let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM destinations ORDER BY name"))
            .fetch_all(&self.pool)
            .await
            .context("reading the destinations")?;
        Ok(rows
            .iter()
            .map(destination)
            .collect::<sqlx::Result<_>>()
            .context("reading the destinations")?)
    }

    pub async fn get(&self, name: &str) -> StoreResult<Option<Destination>> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM destinations WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .with_context(|| format!("reading destination {name}"))?;
        Ok(row
            .as_ref()
            .map(destination)
            .transpose()
            .with_context(|| format!("reading destination {name}"))?)
    }

    /// Defines `name`, or changes it: a new secret keeps the old one
    /// signing for [`ROTATION_GRACE_MS`]; any `PUT` enables a destination
    /// a `410` disabled. Where the destination is in the stream is kept.
    pub async fn put(&self, name: &str, target: &Target, now_ms: i64) -> StoreResult<Put> {
        let mut tx = self
            .pool
            .begin()
            .await
            .context("starting to store a destination")?;
        let old = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM destinations WHERE name = $1 FOR UPDATE"
        ))
        .bind(name)
        .fetch_optional(&mut *tx)
        .await
        .with_context(|| format!("reading destination {name}"))?
        .as_ref()
        .map(destination)
        .transpose()
        .with_context(|| format!("reading destination {name}"))?;
        let put = match old {
            Some(old) if old.target == *target && old.disabled.is_none() => Put::Unchanged(old),
            Some(old) => {
                let rotated = old.target.secret != target.secret;
                let row = sqlx::query(&format!(
                    "UPDATE destinations SET url = $2, secret = $3, events = $4, segments = $5, \
                         updated_at = to_timestamp($6 / 1000.0), \
                         previous_secret = CASE WHEN $7 THEN secret ELSE previous_secret END, \
                         previous_until = CASE WHEN $7 THEN to_timestamp(($6 + $8) / 1000.0) \
                                          ELSE previous_until END, \
                         disabled_reason = NULL, disabled_at = NULL \
                     WHERE name = $1 RETURNING {COLUMNS}"
                ))
                .bind(name)
                .bind(&target.url)
                .bind(&target.secret)
                .bind(&target.events)
                .bind(&target.segments)
                .bind(now_ms)
                .bind(rotated)
                .bind(ROTATION_GRACE_MS)
                .fetch_one(&mut *tx)
                .await
                .with_context(|| format!("changing destination {name}"))?;
                Put::Changed(destination(&row).context("reading the changed destination")?)
            }
            None => {
                let row = sqlx::query(&format!(
                    "INSERT INTO destinations \
                         (name, url, secret, events, segments, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, to_timestamp($6 / 1000.0), \
                             to_timestamp($6 / 1000.0)) \
                     RETURNING {COLUMNS}"
                ))
                .bind(name)
                .bind(&target.url)
                .bind(&target.secret)
                .bind(&target.events)
                .bind(&target.segments)
                .bind(now_ms)
                .fetch_one(&mut *tx)
                .await
                .with_context(|| format!("storing destination {name}"))?;
                Put::Created(destination(&row).context("reading the new destination")?)
            }
        };
        tx.commit()
            .await
            .with_context(|| format!("committing destination {name}"))?;
        Ok(put)
    }

    /// Deletes `name` and its dead letters; whether it existed.
    pub async fn delete(&self, name: &str) -> StoreResult<bool> {
        let deleted = sqlx::query("DELETE FROM destinations WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await
            .with_context(|| format!("deleting destination {name}"))?;
        Ok(deleted.rows_affected() > 0)
    }

    /// Stops deliveries to `name` until the next `PUT`.
    pub async fn disable(&self, name: &str, reason: &str, now_ms: i64) -> StoreResult<()> {
        sqlx::query(
            "UPDATE destinations SET disabled_reason = $2, disabled_at = to_timestamp($3 / 1000.0) \
             WHERE name = $1",
        )
        .bind(name)
        .bind(reason)
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .with_context(|| format!("disabling destination {name}"))?;
        Ok(())
    }

    /// Adds one delivery's outcome to `name`'s counters.
    pub async fn count(&self, name: &str, tally: &Tally, now_ms: i64) -> StoreResult<()> {
        let to_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        sqlx::query(
            "UPDATE destinations SET sent = sent + $2, failed = failed + $3, \
                 retried = retried + $4, dead_lettered = dead_lettered + $5, \
                 last_sent_at = CASE WHEN $2 > 0 THEN to_timestamp($7 / 1000.0) \
                                ELSE last_sent_at END, \
                 last_error = coalesce($6, last_error), \
                 last_error_at = CASE WHEN $6 IS NULL THEN last_error_at \
                                 ELSE to_timestamp($7 / 1000.0) END \
             WHERE name = $1",
        )
        .bind(name)
        .bind(to_i64(tally.sent))
        .bind(to_i64(tally.failed))
        .bind(to_i64(tally.retried))
        .bind(to_i64(tally.dead_lettered))
        .bind(&tally.last_error)
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .with_context(|| format!("counting the deliveries to destination {name}"))?;
        Ok(())
    }

    /// Keeps a batch that failed every attempt.
    pub async fn dead_letter(
        &self,
        name: &str,
        webhook_id: &str,
        body: &str,
        messages: u32,
        attempts: u32,
        last_error: &str,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO destination_dead_letters \
                 (destination, webhook_id, body, messages, attempts, last_error) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(name)
        .bind(webhook_id)
        .bind(body)
        .bind(i32::try_from(messages).unwrap_or(i32::MAX))
        .bind(i32::try_from(attempts).unwrap_or(i32::MAX))
        .bind(last_error)
        .execute(&self.pool)
        .await
        .with_context(|| format!("keeping a dead letter of destination {name}"))?;
        Ok(())
    }

    /// `name`'s dead letters after id `after`, oldest first.
    pub async fn dead_letters(
        &self,
        name: &str,
        after: i64,
        limit: usize,
    ) -> StoreResult<Vec<DeadLetter>> {
        let rows = sqlx::query(
            "SELECT id, webhook_id, body, messages, attempts, last_error, \
                    (extract(epoch FROM created_at) * 1000)::bigint AS created_at \
             FROM destination_dead_letters WHERE destination = $1 AND id > $2 \
             ORDER BY id LIMIT $3",
        )
        .bind(name)
        .bind(after)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .with_context(|| format!("reading the dead letters of destination {name}"))?;
        let letter = |row: &PgRow| -> sqlx::Result<DeadLetter> {
            Ok(DeadLetter {
                id: row.try_get("id")?,
                webhook_id: row.try_get("webhook_id")?,
                body: row.try_get("body")?,
                messages: row.try_get::<i32, _>("messages")?.unsigned_abs(),
                attempts: row.try_get::<i32, _>("attempts")?.unsigned_abs(),
                last_error: row.try_get("last_error")?,
                created_at_ms: row.try_get("created_at")?,
            })
        };
        Ok(rows
            .iter()
            .map(letter)
            .collect::<sqlx::Result<_>>()
            .context("reading dead letters")?)
    }

    /// One dead letter of `name`.
    pub async fn dead_letter_by_id(&self, name: &str, id: i64) -> StoreResult<Option<DeadLetter>> {
        let mut found = self.dead_letters(name, id - 1, 1).await?;
        Ok(found.pop().filter(|letter| letter.id == id))
    }

    /// Forgets a dead letter (sent again, or given up on); whether it was
    /// there.
    pub async fn forget_dead_letter(&self, name: &str, id: i64) -> StoreResult<bool> {
        let deleted =
            sqlx::query("DELETE FROM destination_dead_letters WHERE destination = $1 AND id = $2")
                .bind(name)
                .bind(id)
                .execute(&self.pool)
                .await
                .with_context(|| format!("deleting dead letter {id} of destination {name}"))?;
        Ok(deleted.rows_affected() > 0)
    }
}
