//! Versions the chain took out for their failure rate: quarantined, or
//! rolled back at once when they replaced a healthy version not long ago.

use std::sync::Arc;

use super::audit::AuditAction;
use super::registry::PluginState;
use super::{Actor, PluginManager};
use crate::model::profile::now_ms;
use crate::plugin::chain::{Tripped, Trips};
use crate::telemetry::PluginAction;

impl PluginManager {
    /// Quarantines (or rolls back) the versions the chain takes out, until
    /// the chain is dropped.
    pub fn handle_trips(self: &Arc<Self>, mut trips: Trips) {
        let manager = self.clone();
        tokio::spawn(async move {
            while let Some(tripped) = trips.recv().await {
                if let Err(error) = manager.quarantine(tripped).await {
                    tracing::error!("quarantining a plugin: {error:#}");
                }
            }
        });
    }

    /// The chain took `tripped` out: quarantine it, or roll back if it was
    /// a recent replacement of a healthy version.
    pub(super) async fn quarantine(&self, tripped: Tripped) -> anyhow::Result<()> {
        let name = tripped.plugin.name().to_owned();
        let reason = format!(
            "quarantined: version {} {}",
            tripped.plugin.version, tripped.trip
        );
        let roll_back = {
            let inner = self.lock();
            let Some(record) = inner.records.get(&name) else {
                return Ok(());
            };
            let running = inner
                .loaded
                .get(&name)
                .is_some_and(|p| Arc::ptr_eq(p, &tripped.plugin));
            if !running {
                return Ok(());
            }
            let recent = now_ms() - record.activated_at_ms
                < self.config.auto_rollback_within.as_millis() as i64;
            recent && !record.previous.is_empty()
        };
        if roll_back {
            match self
                .rollback_to_previous(&name, Some(format!("{reason}; rolled back automatically")))
                .await
            {
                Ok((view, from)) => {
                    self.metrics
                        .plugin_action(&name, PluginAction::AutoRollback);
                    tracing::warn!(plugin = %name, version = %view.plugin.version, "{reason}; rolled back automatically");
                    self.audit_ok(
                        &Actor::Host,
                        AuditAction::AutoRollback,
                        &name,
                        &view.record.current,
                        Some(from),
                        Some(reason),
                    )
                    .await;
                    return Ok(());
                }
                Err(error) => {
                    tracing::error!(plugin = %name, "automatic rollback failed: {error}");
                }
            }
        }
        let _op = self.ops.lock().await;
        let (record, saved) = {
            let mut inner = self.lock();
            let Some(record) = inner.records.get_mut(&name) else {
                return Ok(());
            };
            record.state = PluginState::Quarantined;
            record.since_ms = now_ms();
            record.reason = Some(reason.clone());
            let record = record.clone();
            (record, self.save(&inner))
        };
        self.audit_ok(
            &Actor::Host,
            AuditAction::Quarantine,
            &name,
            &record.current,
            None,
            Some(reason),
        )
        .await;
        saved
    }
}
