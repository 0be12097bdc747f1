//! Segment definitions and members in PostgreSQL (`segments`,
//! `segment_members`; migration 0013).

use anyhow::Context;
use async_trait::async_trait;
use sqlx::types::Json;

use super::PgStore;
use crate::segment::catalog::same_condition;
use crate::segment::{Definition, SegmentStore, Stored};
use crate::store::StoreResult;

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
}
