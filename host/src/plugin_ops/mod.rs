//! Live plugin operations: installing, replacing, rolling back, removing and
//! quarantining plugin versions while the pipeline runs.
//!
//! [`PluginManager`] owns the [`Registry`] on disk and drives the [`Chain`]:
//!
//! - A new version (an upload, or a changed pair of files in the watched
//!   plugin directory) is compiled, instantiated, `init`-ed and run over
//!   sample events on a blocking thread, under a size cap and a time cap;
//!   only then is it swapped into the chain, which is one pointer swap
//!   between batches. A batch in flight finishes on the versions it started
//!   with. A refused version changes nothing that runs.
//! - Earlier healthy versions are kept (`keep_versions`) for rollback, and
//!   the registry's state file brings back the active set on a restart;
//!   wasmtime's cache in the registry makes that restart load machine code
//!   instead of compiling.
//! - When the chain takes a version out for its failure rate
//!   ([`crate::plugin::chain::Tripped`]), the plugin is quarantined; if the failures
//!   began with a version installed over a healthy one not long ago, the
//!   healthy one is restored at once.
//! - Every action is written to the [`AuditLog`].
//!
//! Files: `install.rs` (validate-then-swap), `lifecycle.rs` (rollback,
//! remove, resume), `quarantine.rs`, `dir.rs` (the plugin directory, read
//! and watched), [`registry`] (versions on disk), [`audit`], `samples.rs`
//! (the events a new version must get through), `tests.rs`.

pub mod audit;
mod dir;
mod install;
mod lifecycle;
mod quarantine;
pub mod registry;
mod samples;

pub use dir::watch;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;

use crate::config::PluginsConfig;
use crate::plugin::chain::Chain;
use crate::plugin::{LoadError, Plugin};
use crate::telemetry::Metrics;
use audit::AuditLog;
use registry::{PluginRecord, PluginState, Registry};

/// Settings of plugin operations (configuration section `plugins`).
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Earlier versions kept per plugin for rollback.
    pub keep_versions: usize,
    /// Largest component accepted, in bytes.
    pub max_component_bytes: usize,
    /// Longest time to compile, instantiate, `init` and try a new version.
    pub validate_timeout: Duration,
    /// A version quarantined within this time of replacing a healthy one is
    /// rolled back automatically.
    pub auto_rollback_within: Duration,
}

impl From<&PluginsConfig> for ManagerConfig {
    fn from(plugins: &PluginsConfig) -> Self {
        Self {
            keep_versions: plugins.keep_versions,
            max_component_bytes: plugins.max_component_bytes,
            validate_timeout: Duration::from_millis(plugins.validate_timeout_ms),
            auto_rollback_within: Duration::from_secs(plugins.auto_rollback_within_secs),
        }
    }
}

impl Default for ManagerConfig {
    /// The configuration's defaults.
    fn default() -> Self {
        Self::from(&PluginsConfig::default())
    }
}

/// Who asked for an action; goes to the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// An admin API call: the operator's name when given, and the address.
    Admin {
        operator: Option<String>,
        client: Option<String>,
    },
    /// The watched plugin directory.
    PluginDir,
    /// The host itself (quarantine, automatic rollback).
    Host,
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Actor::Admin { operator, client } => {
                f.write_str("admin")?;
                if let Some(operator) = operator {
                    write!(f, " {operator}")?;
                }
                if let Some(client) = client {
                    write!(f, " from {client}")?;
                }
                Ok(())
            }
            Actor::PluginDir => f.write_str("plugin-dir"),
            Actor::Host => f.write_str("host"),
        }
    }
}

/// A plugin package as received: manifest text and component bytes.
#[derive(Debug, Clone)]
pub struct Package {
    pub manifest: String,
    pub component: Vec<u8>,
}

/// Why an action was refused. Nothing that runs changed.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(
        "the component is {size} bytes; the largest accepted is {max} bytes \
         (configuration key `plugins.max_component_bytes`)"
    )]
    TooLarge { size: usize, max: usize },
    #[error("the manifest names plugin {manifest:?}, but it was sent as {expected:?}")]
    NameMismatch { manifest: String, expected: String },
    #[error(
        "plugin {plugin}: compiling, starting and trying it took longer than {secs} s \
         (configuration key `plugins.validate_timeout_ms`)"
    )]
    Timeout { plugin: String, secs: u64 },
    #[error(
        "plugin {plugin} {version} failed on sample event {event_id} ({kind}): {message}; \
         a version must get through the host's sample events before it may run"
    )]
    Sample {
        plugin: String,
        version: String,
        event_id: String,
        kind: String,
        message: String,
    },
    #[error("no plugin named {0:?} is installed")]
    NotFound(String),
    #[error("plugin {0} has no earlier version to roll back to")]
    NoPrevious(String),
    #[error("plugin {0} is not quarantined")]
    NotQuarantined(String),
    #[error("{0:#}")]
    Internal(anyhow::Error),
}

/// What an install did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Installed {
    /// A plugin of a new name.
    New,
    /// A new version over a running one.
    Replaced,
    /// The same version already ran: nothing changed.
    Unchanged,
}

/// One plugin as the API shows it.
#[derive(Debug, Clone)]
pub struct PluginView {
    pub plugin: Arc<Plugin>,
    pub record: PluginRecord,
}

/// The live plugin operations of one process.
pub struct PluginManager {
    chain: Arc<Chain>,
    registry: Registry,
    config: ManagerConfig,
    audit: Arc<dyn AuditLog>,
    /// Where plugin actions and states are counted.
    metrics: Arc<Metrics>,
    inner: Mutex<Inner>,
    /// Serialises changes: one at a time, validation included.
    ops: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Inner {
    records: BTreeMap<String, PluginRecord>,
    /// The loaded version of every installed plugin, running or quarantined.
    loaded: HashMap<String, Arc<Plugin>>,
    /// Plugin-directory pairs that were refused (name → version id), not
    /// tried again until they change.
    dir_refused: HashMap<String, String>,
}

impl std::fmt::Debug for PluginManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginManager")
            .field("registry", &self.registry)
            .finish()
    }
}

impl PluginManager {
    /// Opens the registry and brings back the plugins that were active when
    /// the process last stopped (quarantined ones stay out).
    pub async fn start(
        chain: Arc<Chain>,
        registry: Registry,
        config: ManagerConfig,
        audit: Arc<dyn AuditLog>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<Self>> {
        let records = registry.load()?;
        let manager = Arc::new(Self {
            chain,
            registry,
            config,
            audit,
            metrics,
            inner: Mutex::new(Inner::default()),
            ops: tokio::sync::Mutex::new(()),
        });
        for (name, record) in records {
            let plugin = manager
                .load_stored(&record.current)
                .await
                .with_context(|| format!("restoring plugin {name} from the registry"))?;
            if record.state == PluginState::Active {
                manager
                    .chain
                    .insert(plugin.clone())
                    .with_context(|| format!("restoring plugin {name}"))?;
            }
            manager.show_state(&name, &plugin, record.state);
            tracing::info!(
                plugin = %name,
                version = %plugin.version,
                state = record.state.as_str(),
                "plugin restored from the registry"
            );
            let mut inner = manager.lock();
            inner.loaded.insert(name.clone(), plugin);
            inner.records.insert(name, record);
        }
        Ok(manager)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn config(&self) -> &ManagerConfig {
        &self.config
    }

    /// Every installed plugin, by name.
    pub fn list(&self) -> Vec<PluginView> {
        let inner = self.lock();
        inner
            .records
            .iter()
            .filter_map(|(name, record)| view(&inner, name, record))
            .collect()
    }

    pub fn get(&self, name: &str) -> Option<PluginView> {
        let inner = self.lock();
        let record = inner.records.get(name)?;
        view(&inner, name, record)
    }

    fn save(&self, inner: &Inner) -> anyhow::Result<()> {
        self.registry.save(&inner.records)?;
        if let Err(error) = self.registry.collect_garbage(&inner.records) {
            tracing::warn!("cleaning the plugin registry: {error:#}");
        }
        Ok(())
    }

    fn show_state(&self, name: &str, plugin: &Plugin, state: PluginState) {
        self.metrics
            .plugin_state(name, Some((&plugin.version, state.as_str())));
    }
}

fn view(inner: &Inner, name: &str, record: &PluginRecord) -> Option<PluginView> {
    let plugin = inner.loaded.get(name)?.clone();
    Some(PluginView {
        plugin,
        record: record.clone(),
    })
}

#[cfg(test)]
mod tests;
