//! The audit log of plugin changes: who did what, when, to which versions.
//! In PostgreSQL (table `plugin_audit`, written by
//! [`PgStore`](crate::store::postgres::PgStore)) with the production
//! backends, in a JSON-lines file ([`FileAudit`]) in embedded mode.
//!
//! Its actions are not the `action` label values of
//! `pulsehub_plugin_actions_total` ([`crate::telemetry::PluginAction`]), and
//! both are public: the audit log records what was asked (`install`,
//! `resume`), the metric what happened to the running set (`load` or
//! `replace`, `lift`).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context as _;
use async_trait::async_trait;
use serde::Serialize;

use super::registry::VersionRecord;
use super::{Actor, ManagerError, PluginManager};
use crate::model::event::format_millis;
use crate::model::profile::now_ms;

/// One audited action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub at_ms: i64,
    /// `admin <operator> from <address>`, `plugin-dir`, `host`.
    pub actor: String,
    pub action: AuditAction,
    pub plugin: String,
    pub outcome: AuditOutcome,
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

/// What was asked of a plugin, or what the host did to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    Install,
    Rollback,
    Remove,
    Resume,
    Quarantine,
    AutoRollback,
}

impl AuditAction {
    /// The name in the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::Install => "install",
            AuditAction::Rollback => "rollback",
            AuditAction::Remove => "remove",
            AuditAction::Resume => "resume",
            AuditAction::Quarantine => "quarantine",
            AuditAction::AutoRollback => "auto_rollback",
        }
    }
}

impl std::fmt::Display for AuditAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the action was carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditOutcome {
    Ok,
    /// Refused; nothing that runs changed.
    Refused,
}

impl AuditOutcome {
    /// The name in the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditOutcome::Ok => "ok",
            AuditOutcome::Refused => "refused",
        }
    }
}

#[async_trait]
pub trait AuditLog: Send + Sync {
    async fn record(&self, entry: &AuditEntry) -> anyhow::Result<()>;
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

/// Writing the audit log; a failure to write is logged, never refuses the
/// action (which has already happened).
impl PluginManager {
    pub(super) async fn audit_ok(
        &self,
        actor: &Actor,
        action: AuditAction,
        plugin: &str,
        version: &VersionRecord,
        previous: Option<String>,
        detail: Option<String>,
    ) {
        self.write_audit(AuditEntry {
            at_ms: now_ms(),
            actor: actor.to_string(),
            action,
            plugin: plugin.to_owned(),
            outcome: AuditOutcome::Ok,
            version: Some(version.version.clone()),
            version_id: Some(version.id.clone()),
            sha256: Some(version.sha256.clone()),
            previous_version_id: previous,
            detail,
        })
        .await;
    }

    pub(super) async fn audit_refusal(
        &self,
        actor: &Actor,
        action: AuditAction,
        plugin: &str,
        error: &ManagerError,
    ) {
        self.write_audit(AuditEntry {
            at_ms: now_ms(),
            actor: actor.to_string(),
            action,
            plugin: plugin.to_owned(),
            outcome: AuditOutcome::Refused,
            version: None,
            version_id: None,
            sha256: None,
            previous_version_id: None,
            detail: Some(error.to_string()),
        })
        .await;
    }

    pub(super) async fn write_audit(&self, entry: AuditEntry) {
        if let Err(error) = self.audit.record(&entry).await {
            tracing::error!(
                action = %entry.action,
                plugin = %entry.plugin,
                at = %format_millis(entry.at_ms),
                "could not write the audit log: {error:#}"
            );
        }
    }
}
