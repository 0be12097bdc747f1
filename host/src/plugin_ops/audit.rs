//! The audit log of plugin changes: who did what, when, to which versions.
//! In PostgreSQL (table `plugin_audit`) with the production backends, in a
//! JSON-lines file in embedded mode.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context as _;
use async_trait::async_trait;
use serde::Serialize;

use crate::model::event::format_millis;
use crate::store::postgres::PgStore;

/// One audited action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub at_ms: i64,
    /// `admin <operator> from <address>`, `plugin-dir`, `host`.
    pub actor: String,
    /// `install`, `rollback`, `remove`, `resume`, `quarantine`, `auto_rollback`.
    pub action: String,
    pub plugin: String,
    /// `ok` or `refused`.
    pub outcome: String,
    /// The version that runs after the action, if any.
    pub version: Option<String>,
    pub version_id: Option<String>,
    /// SHA-256 of that version's component.
    pub sha256: Option<String>,
    /// The version id that ran before the action, if any.
    pub previous_version_id: Option<String>,
    /// Why it was refused, or what the host saw.
    pub detail: Option<String>,
}

#[async_trait]
pub trait AuditLog: Send + Sync {
    async fn record(&self, entry: &AuditEntry) -> anyhow::Result<()>;
}

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
        .bind(&entry.action)
        .bind(&entry.plugin)
        .bind(&entry.outcome)
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

/// The audit log as a file of JSON lines, one per action, synced on write.
#[derive(Debug)]
pub struct FileAudit {
    path: PathBuf,
    lock: Mutex<()>,
}

impl FileAudit {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            lock: Mutex::new(()),
        }
    }
}

#[derive(Serialize)]
struct FileLine<'a> {
    at: String,
    #[serde(flatten)]
    entry: &'a AuditEntry,
}

#[async_trait]
impl AuditLog for FileAudit {
    async fn record(&self, entry: &AuditEntry) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(&FileLine {
            at: format_millis(entry.at_ms),
            entry,
        })
        .context("encoding an audit entry")?;
        line.push(b'\n');
        let _guard = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .with_context(|| format!("opening the audit log {}", self.path.display()))?;
        file.write_all(&line)
            .and_then(|()| file.sync_data())
            .with_context(|| format!("writing the audit log {}", self.path.display()))
    }
}
