//! Rollback to the previous version, removal, and resuming a quarantined
//! plugin.

use super::audit::AuditAction;
use super::registry::{PluginRecord, PluginState};
use super::{Actor, ManagerError, PluginManager, PluginView};
use crate::model::profile::now_ms;
use crate::telemetry::PluginAction;

impl PluginManager {
    /// Makes the newest earlier version of `name` the running one again.
    pub async fn rollback(&self, name: &str, actor: &Actor) -> Result<PluginView, ManagerError> {
        let result = self.rollback_to_previous(name, None).await;
        match &result {
            Ok((view, from)) => {
                self.audit_ok(
                    actor,
                    AuditAction::Rollback,
                    name,
                    &view.record.current,
                    Some(from.clone()),
                    None,
                )
                .await;
            }
            Err(error) => {
                self.audit_refusal(actor, AuditAction::Rollback, name, error)
                    .await
            }
        }
        result.map(|(view, _)| view)
    }

    /// Rolls `name` back; `reason` is kept in its record. Returns the view
    /// and the version id rolled back from.
    pub(super) async fn rollback_to_previous(
        &self,
        name: &str,
        reason: Option<String>,
    ) -> Result<(PluginView, String), ManagerError> {
        let _op = self.ops.lock().await;
        let target = {
            let inner = self.lock();
            let record = inner
                .records
                .get(name)
                .ok_or_else(|| ManagerError::NotFound(name.to_owned()))?;
            record
                .previous
                .first()
                .cloned()
                .ok_or_else(|| ManagerError::NoPrevious(name.to_owned()))?
        };
        let plugin = self
            .load_stored(&target)
            .await
            .map_err(ManagerError::Internal)?;
        let replaced = self.chain.insert(plugin.clone())?;
        let now = now_ms();
        let (from, saved) = {
            let mut inner = self.lock();
            let Some(record) = inner.records.get_mut(name) else {
                return Err(ManagerError::NotFound(name.to_owned()));
            };
            let from = std::mem::replace(&mut record.current, target);
            record.previous.remove(0);
            record.state = PluginState::Active;
            record.since_ms = now;
            record.activated_at_ms = now;
            record.reason = Some(reason.unwrap_or_else(|| {
                format!("rolled back from version {} ({})", from.version, from.id)
            }));
            inner.loaded.insert(name.to_owned(), plugin.clone());
            (from.id, self.save(&inner))
        };
        if let Err(error) = saved {
            self.undo_insert(name, replaced);
            return Err(ManagerError::Internal(error));
        }
        self.show_state(name, &plugin, PluginState::Active);
        self.metrics.plugin_action(name, PluginAction::Rollback);
        tracing::info!(plugin = %name, version = %plugin.version, "plugin rolled back");
        let view = self
            .get(name)
            .ok_or_else(|| ManagerError::NotFound(name.to_owned()))?;
        Ok((view, from))
    }

    /// Takes `name` out of the chain and forgets it (the audit log keeps its
    /// history).
    pub async fn remove(&self, name: &str, actor: &Actor) -> Result<(), ManagerError> {
        let result = self.remove_checked(name).await;
        match &result {
            Ok(record) => {
                self.audit_ok(
                    actor,
                    AuditAction::Remove,
                    name,
                    &record.current,
                    None,
                    None,
                )
                .await;
            }
            Err(error) => {
                self.audit_refusal(actor, AuditAction::Remove, name, error)
                    .await
            }
        }
        result.map(|_| ())
    }

    pub(super) async fn remove_checked(&self, name: &str) -> Result<PluginRecord, ManagerError> {
        let _op = self.ops.lock().await;
        let mut inner = self.lock();
        let record = inner
            .records
            .remove(name)
            .ok_or_else(|| ManagerError::NotFound(name.to_owned()))?;
        let removed = self.chain.remove(name);
        if let Err(error) = self.save(&inner) {
            inner.records.insert(name.to_owned(), record);
            if let Some(plugin) = removed {
                let _ = self.chain.insert(plugin);
            }
            return Err(ManagerError::Internal(error));
        }
        inner.loaded.remove(name);
        if let Err(error) = self.registry.collect_garbage(&inner.records) {
            tracing::warn!("cleaning the plugin registry: {error:#}");
        }
        self.metrics.plugin_state(name, None);
        self.metrics.plugin_action(name, PluginAction::Remove);
        tracing::info!(plugin = %name, "plugin removed");
        Ok(record)
    }

    /// Lifts the quarantine of `name`: its version runs again.
    pub async fn resume(&self, name: &str, actor: &Actor) -> Result<PluginView, ManagerError> {
        let result = self.resume_checked(name).await;
        match &result {
            Ok(view) => {
                self.audit_ok(
                    actor,
                    AuditAction::Resume,
                    name,
                    &view.record.current,
                    None,
                    None,
                )
                .await;
            }
            Err(error) => {
                self.audit_refusal(actor, AuditAction::Resume, name, error)
                    .await
            }
        }
        result
    }

    pub(super) async fn resume_checked(&self, name: &str) -> Result<PluginView, ManagerError> {
        let _op = self.ops.lock().await;
        let plugin = {
            let inner = self.lock();
            let record = inner
                .records
                .get(name)
                .ok_or_else(|| ManagerError::NotFound(name.to_owned()))?;
            if record.state != PluginState::Quarantined {
                return Err(ManagerError::NotQuarantined(name.to_owned()));
            }
            inner
                .loaded
                .get(name)
                .cloned()
                .ok_or_else(|| ManagerError::NotFound(name.to_owned()))?
        };
        plugin.health.reset();
        self.chain.insert(plugin.clone())?;
        let saved = {
            let mut inner = self.lock();
            if let Some(record) = inner.records.get_mut(name) {
                record.state = PluginState::Active;
                record.since_ms = now_ms();
                record.reason = Some("quarantine lifted by an operator".to_owned());
            }
            self.save(&inner)
        };
        if let Err(error) = saved {
            self.chain.remove(name);
            return Err(ManagerError::Internal(error));
        }
        self.show_state(name, &plugin, PluginState::Active);
        self.metrics.plugin_action(name, PluginAction::Lift);
        self.get(name)
            .ok_or_else(|| ManagerError::NotFound(name.to_owned()))
    }
}
