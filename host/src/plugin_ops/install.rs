//! Installing a version: validate (size, name, compile, `init`, the sample
//! events, all under a time cap), then swap it into the chain and record it.

use std::sync::Arc;

use anyhow::Context as _;

use super::audit::AuditAction;
use super::registry::{PluginRecord, PluginState, VersionRecord, version_id};
use super::{Actor, Installed, ManagerError, Package, PluginManager, PluginView, samples, view};
use crate::model::profile::now_ms;
use crate::plugin::chain::Chain;
use crate::plugin::{LoadError, Manifest, Plugin};
use crate::telemetry::PluginAction;

impl PluginManager {
    /// Validates `package` and, if it passes, makes it the running version
    /// of its plugin. `expected` is the name it was sent as, if any.
    pub async fn install(
        &self,
        package: Package,
        expected: Option<&str>,
        source: &str,
        actor: &Actor,
    ) -> Result<(Installed, PluginView), ManagerError> {
        let name = match package.manifest.parse::<Manifest>() {
            Ok(manifest) => manifest.name,
            Err(error) => {
                let name = expected.unwrap_or("?").to_owned();
                let error = ManagerError::Load(error.into());
                self.audit_refusal(actor, AuditAction::Install, &name, &error)
                    .await;
                return Err(error);
            }
        };
        let result = self.install_checked(package, &name, expected, source).await;
        match &result {
            Ok((Installed::Unchanged, _)) => {}
            Ok((_, view)) => {
                let previous = view.record.previous.first().map(|v| v.id.clone());
                self.audit_ok(
                    actor,
                    AuditAction::Install,
                    &name,
                    &view.record.current,
                    previous,
                    None,
                )
                .await;
            }
            Err(error) => {
                self.audit_refusal(actor, AuditAction::Install, &name, error)
                    .await
            }
        }
        result
    }

    pub(super) async fn install_checked(
        &self,
        package: Package,
        name: &str,
        expected: Option<&str>,
        source: &str,
    ) -> Result<(Installed, PluginView), ManagerError> {
        if let Some(expected) = expected
            && expected != name
        {
            return Err(ManagerError::NameMismatch {
                manifest: name.to_owned(),
                expected: expected.to_owned(),
            });
        }
        if package.component.len() > self.config.max_component_bytes {
            return Err(ManagerError::TooLarge {
                size: package.component.len(),
                max: self.config.max_component_bytes,
            });
        }
        let id = version_id(&package.manifest, &package.component);
        let _op = self.ops.lock().await;
        {
            let inner = self.lock();
            if let Some(record) = inner.records.get(name)
                && record.current.id == id
                && record.state == PluginState::Active
                && let Some(view) = view(&inner, name, record)
            {
                return Ok((Installed::Unchanged, view));
            }
        }
        let plugin = self.validate(&package).await?;
        self.registry
            .put_version(&id, &package.manifest, &package.component)
            .map_err(ManagerError::Internal)?;
        let replaced = self.chain.insert(plugin.clone())?;
        let now = now_ms();
        let version = VersionRecord {
            id,
            version: plugin.version.clone(),
            sha256: plugin.sha256.clone(),
            installed_at_ms: now,
            source: source.to_owned(),
        };
        let (installed, saved) = {
            let mut inner = self.lock();
            let mut previous = Vec::new();
            let mut dir_id = None;
            if let Some(old) = inner.records.remove(name) {
                dir_id = old.dir_id;
                // A quarantined version is not one to go back to.
                if old.state == PluginState::Active {
                    previous.push(old.current);
                }
                previous.extend(old.previous);
                previous.truncate(self.config.keep_versions);
            }
            let installed = if replaced.is_some() {
                Installed::Replaced
            } else {
                Installed::New
            };
            inner.records.insert(
                name.to_owned(),
                PluginRecord {
                    state: PluginState::Active,
                    since_ms: now,
                    reason: None,
                    current: version,
                    previous,
                    activated_at_ms: now,
                    dir_id,
                },
            );
            inner.loaded.insert(name.to_owned(), plugin.clone());
            (installed, self.save(&inner))
        };
        if let Err(error) = saved {
            // Keep what runs and what the registry says the same.
            self.undo_insert(name, replaced);
            return Err(ManagerError::Internal(error));
        }
        self.show_state(name, &plugin, PluginState::Active);
        let (action, done) = match installed {
            Installed::Replaced => (PluginAction::Replace, "replaced"),
            _ => (PluginAction::Load, "loaded"),
        };
        self.metrics.plugin_action(name, action);
        tracing::info!(
            plugin = %name,
            version = %plugin.version,
            sha256 = %plugin.sha256,
            source,
            "plugin {done}"
        );
        let view = self.get(name).ok_or_else(|| {
            ManagerError::Internal(anyhow::anyhow!("plugin {name} vanished while installed"))
        })?;
        Ok((installed, view))
    }

    pub(super) fn undo_insert(&self, name: &str, replaced: Option<Arc<Plugin>>) {
        match replaced {
            Some(old) => {
                let _ = self.chain.insert(old);
            }
            None => {
                self.chain.remove(name);
            }
        }
        // Reload the records as saved.
        if let Ok(records) = self.registry.load() {
            self.lock().records = records;
        }
    }

    /// Compiles, instantiates, `init`s and tries `package` off the hot path.
    pub(super) async fn validate(&self, package: &Package) -> Result<Arc<Plugin>, ManagerError> {
        let manifest = package
            .manifest
            .parse::<Manifest>()
            .map_err(LoadError::from)?;
        let name = manifest.name.clone();
        let runtime = self.chain.runtime().clone();
        let component = package.component.clone();
        let task = tokio::task::spawn_blocking(move || -> Result<Arc<Plugin>, ManagerError> {
            let plugin = runtime.load(manifest, &component)?;
            try_samples(&runtime, &plugin)?;
            Ok(plugin)
        });
        match tokio::time::timeout(self.config.validate_timeout, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(ManagerError::Internal(anyhow::anyhow!(
                "validating plugin {name} failed: {join}"
            ))),
            // The blocking thread finishes on its own; its result is dropped.
            Err(_) => Err(ManagerError::Timeout {
                plugin: name,
                secs: self.config.validate_timeout.as_secs(),
            }),
        }
    }

    /// Loads a version from the registry (compiled code from the cache).
    pub(super) async fn load_stored(&self, version: &VersionRecord) -> anyhow::Result<Arc<Plugin>> {
        let (manifest, component) = self.registry.get_version(&version.id)?;
        let runtime = self.chain.runtime().clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<Arc<Plugin>> {
            let manifest: Manifest = manifest.parse()?;
            Ok(runtime.load(manifest, &component)?)
        })
        .await
        .context("loading a stored plugin version")?
    }
}

/// Runs `plugin` over the sample events the way the chain would (its own
/// instance, the host's checks of its output); any failure but the plugin's
/// own "invalid event" verdict refuses it.
fn try_samples(runtime: &crate::plugin::Runtime, plugin: &Arc<Plugin>) -> Result<(), ManagerError> {
    let events = samples::for_manifest(&plugin.manifest);
    let trial = Chain::new(runtime.clone());
    // A chain of one plugin: no ownership clash is possible.
    trial.insert(plugin.clone())?;
    let outcome = trial.worker().run(&events);
    // The samples do not count as the version's work.
    plugin.health.clear();
    if let Some((_, error)) = outcome
        .errors
        .into_iter()
        .find(|(_, e)| samples::refuses(e.kind))
    {
        return Err(ManagerError::Sample {
            plugin: error.plugin,
            version: error.version,
            event_id: error.event_id,
            kind: error.kind.as_str().to_owned(),
            message: error.message,
        });
    }
    Ok(())
}
