//! The plugin audit log in PostgreSQL: table `plugin_audit`.

use anyhow::Context as _;
use async_trait::async_trait;

use super::PgStore;
use crate::plugin_ops::audit::{AuditEntry, AuditLog};

#[async_trait]
impl AuditLog for PgStore {
    async fn record(&self, entry: &AuditEntry) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO plugin_audit (at, actor, action, plugin, outcome, version, version_id, \
             sha256, previous_version_id, detail) \
             VALUES (to_timestamp($1::double precision / 1000), $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(entry.at_ms as f64)
        .bind(&entry.actor)
        .bind(entry.action.as_str())
        .bind(&entry.plugin)
        .bind(entry.outcome.as_str())
        .bind(&entry.version)
        .bind(&entry.version_id)
        .bind(&entry.sha256)
        .bind(&entry.previous_version_id)
        .bind(&entry.detail)
        .execute(self.pool())
        .await
        .context("writing the plugin audit log to PostgreSQL")?;
        Ok(())
    }
}
