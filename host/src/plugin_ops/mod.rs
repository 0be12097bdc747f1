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

pub mod audit;
pub mod disk;
mod samples;
pub mod watch;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;

use crate::model::event::format_millis;
use crate::model::profile::now_ms;
use crate::plugin::chain::{Chain, Tripped, Trips};
use crate::plugin::{LoadError, Manifest, Plugin};
use crate::telemetry::Metrics;
use audit::{AuditEntry, AuditLog};
use disk::{PluginRecord, PluginState, Registry, VersionRecord, version_id};

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

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            keep_versions: 3,
            max_component_bytes: 32 << 20,
            validate_timeout: Duration::from_secs(30),
            auto_rollback_within: Duration::from_secs(15 * 60),
        }
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
                self.audit_refusal(actor, "install", &name, &error).await;
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
                    "install",
                    &name,
                    &view.record.current,
                    previous,
                    None,
                )
                .await;
            }
            Err(error) => self.audit_refusal(actor, "install", &name, error).await,
        }
        result
    }

    async fn install_checked(
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
            Installed::Replaced => ("replace", "replaced"),
            _ => ("load", "loaded"),
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

    fn undo_insert(&self, name: &str, replaced: Option<Arc<Plugin>>) {
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
    async fn validate(&self, package: &Package) -> Result<Arc<Plugin>, ManagerError> {
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
    async fn load_stored(&self, version: &VersionRecord) -> anyhow::Result<Arc<Plugin>> {
        let (manifest, component) = self.registry.get_version(&version.id)?;
        let runtime = self.chain.runtime().clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<Arc<Plugin>> {
            let manifest: Manifest = manifest.parse()?;
            Ok(runtime.load(manifest, &component)?)
        })
        .await
        .context("loading a stored plugin version")?
    }

    /// Makes the newest earlier version of `name` the running one again.
    pub async fn rollback(&self, name: &str, actor: &Actor) -> Result<PluginView, ManagerError> {
        let result = self.rollback_to_previous(name, None).await;
        match &result {
            Ok((view, from)) => {
                self.audit_ok(
                    actor,
                    "rollback",
                    name,
                    &view.record.current,
                    Some(from.clone()),
                    None,
                )
                .await;
            }
            Err(error) => self.audit_refusal(actor, "rollback", name, error).await,
        }
        result.map(|(view, _)| view)
    }

    /// Rolls `name` back; `reason` is kept in its record. Returns the view
    /// and the version id rolled back from.
    async fn rollback_to_previous(
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
        self.metrics.plugin_action(name, "rollback");
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
                self.audit_ok(actor, "remove", name, &record.current, None, None)
                    .await;
            }
            Err(error) => self.audit_refusal(actor, "remove", name, error).await,
        }
        result.map(|_| ())
    }

    async fn remove_checked(&self, name: &str) -> Result<PluginRecord, ManagerError> {
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
        self.metrics.plugin_action(name, "remove");
        tracing::info!(plugin = %name, "plugin removed");
        Ok(record)
    }

    /// Lifts the quarantine of `name`: its version runs again.
    pub async fn resume(&self, name: &str, actor: &Actor) -> Result<PluginView, ManagerError> {
        let result = self.resume_checked(name).await;
        match &result {
            Ok(view) => {
                self.audit_ok(actor, "resume", name, &view.record.current, None, None)
                    .await;
            }
            Err(error) => self.audit_refusal(actor, "resume", name, error).await,
        }
        result
    }

    async fn resume_checked(&self, name: &str) -> Result<PluginView, ManagerError> {
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
        self.metrics.plugin_action(name, "lift");
        self.get(name)
            .ok_or_else(|| ManagerError::NotFound(name.to_owned()))
    }

    /// The chain took `tripped` out: quarantine it, or roll back if it was
    /// a recent replacement of a healthy version.
    async fn quarantine(&self, tripped: Tripped) -> anyhow::Result<()> {
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
                    self.metrics.plugin_action(&name, "auto_rollback");
                    tracing::warn!(plugin = %name, version = %view.plugin.version, "{reason}; rolled back automatically");
                    self.audit_ok(
                        &Actor::Host,
                        "auto_rollback",
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
            "quarantine",
            &name,
            &record.current,
            None,
            Some(reason),
        )
        .await;
        saved
    }

    /// Reads the plugin directory once: pairs that are new or changed since
    /// last seen are installed, names whose pair is gone are removed (when
    /// the directory's version is the one running). With `strict`, the first
    /// refused pair is an error (start-up); otherwise it is logged, audited
    /// and not tried again until its files change.
    pub async fn scan_dir(&self, dir: &Path, strict: bool) -> anyhow::Result<()> {
        let entries = std::fs::read_dir(dir).with_context(|| {
            format!(
                "reading the plugin directory {} (configuration key `plugins.dir`, \
                 PULSEHUB_PLUGIN_DIR); build the built-in plugins with `cargo xtask plugins`",
                dir.display()
            )
        })?;
        let mut components: Vec<PathBuf> = entries
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "wasm"))
            .collect();
        components.sort();
        let mut present = Vec::new();
        for component_path in &components {
            let Some(stem) = component_path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let manifest_path = component_path.with_extension("toml");
            let (Ok(manifest), Ok(component)) = (
                std::fs::read_to_string(&manifest_path),
                std::fs::read(component_path),
            ) else {
                // Half of a pair (or one being written): wait for the other.
                continue;
            };
            present.push(stem.to_owned());
            let id = version_id(&manifest, &component);
            {
                let inner = self.lock();
                let seen = inner
                    .records
                    .get(stem)
                    .is_some_and(|r| r.dir_id.as_deref() == Some(&id));
                if seen || inner.dir_refused.get(stem) == Some(&id) {
                    continue;
                }
            }
            let package = Package {
                manifest,
                component,
            };
            match self
                .install(package, Some(stem), "dir", &Actor::PluginDir)
                .await
            {
                Ok(_) => {
                    let mut inner = self.lock();
                    inner.dir_refused.remove(stem);
                    if let Some(record) = inner.records.get_mut(stem) {
                        record.dir_id = Some(id);
                    }
                    self.save(&inner)?;
                }
                Err(error) if strict => {
                    return Err(anyhow::Error::new(error)
                        .context(format!("loading plugin {}", component_path.display())));
                }
                Err(error) => {
                    tracing::error!(
                        plugin = %stem,
                        path = %component_path.display(),
                        "plugin directory: refused: {error}"
                    );
                    self.lock().dir_refused.insert(stem.to_owned(), id);
                }
            }
        }
        // Pairs gone from the directory.
        let gone: Vec<(String, bool)> = {
            let inner = self.lock();
            inner
                .records
                .iter()
                .filter(|(name, r)| r.dir_id.is_some() && !present.contains(name))
                .map(|(name, r)| (name.clone(), r.dir_id.as_deref() == Some(&r.current.id)))
                .collect()
        };
        for (name, running) in gone {
            if running {
                if let Err(error) = self.remove(&name, &Actor::PluginDir).await {
                    tracing::error!(plugin = %name, "plugin directory: removing: {error}");
                }
            } else {
                let mut inner = self.lock();
                if let Some(record) = inner.records.get_mut(&name) {
                    record.dir_id = None;
                }
                self.save(&inner)?;
            }
        }
        Ok(())
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

    async fn audit_ok(
        &self,
        actor: &Actor,
        action: &str,
        plugin: &str,
        version: &VersionRecord,
        previous: Option<String>,
        detail: Option<String>,
    ) {
        self.write_audit(AuditEntry {
            at_ms: now_ms(),
            actor: actor.to_string(),
            action: action.to_owned(),
            plugin: plugin.to_owned(),
            outcome: "ok".to_owned(),
            version: Some(version.version.clone()),
            version_id: Some(version.id.clone()),
            sha256: Some(version.sha256.clone()),
            previous_version_id: previous,
            detail,
        })
        .await;
    }

    async fn audit_refusal(&self, actor: &Actor, action: &str, plugin: &str, error: &ManagerError) {
        self.write_audit(AuditEntry {
            at_ms: now_ms(),
            actor: actor.to_string(),
            action: action.to_owned(),
            plugin: plugin.to_owned(),
            outcome: "refused".to_owned(),
            version: None,
            version_id: None,
            sha256: None,
            previous_version_id: None,
            detail: Some(error.to_string()),
        })
        .await;
    }

    async fn write_audit(&self, entry: AuditEntry) {
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

fn view(inner: &Inner, name: &str, record: &PluginRecord) -> Option<PluginView> {
    let plugin = inner.loaded.get(name)?.clone();
    Some(PluginView {
        plugin,
        record: record.clone(),
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::tests::routes::{QUIET_MANIFEST, QUIET_PLUGIN};
    use crate::plugin::{HostLimits, Runtime};

    fn package(version: &str) -> Package {
        Package {
            manifest: QUIET_MANIFEST.replace("1.2.3", version),
            component: wat::parse_str(QUIET_PLUGIN).expect("the test component assembles"),
        }
    }

    async fn manager(dir: &Path) -> (Arc<Chain>, Arc<PluginManager>) {
        let registry = Registry::open(&dir.join("registry")).expect("registry");
        let runtime =
            Runtime::with_cache(HostLimits::default(), &registry.compiled_dir()).expect("runtime");
        let metrics = Arc::new(Metrics::new());
        let chain = Chain::with_metrics(runtime, metrics.clone());
        let audit = Arc::new(audit::FileAudit::new(&dir.join("audit.log")));
        let manager = PluginManager::start(
            chain.clone(),
            registry,
            ManagerConfig::default(),
            audit,
            metrics,
        )
        .await
        .expect("manager starts");
        (chain, manager)
    }

    fn running(chain: &Chain) -> Vec<(String, String)> {
        chain
            .plugins()
            .iter()
            .map(|p| (p.name().to_owned(), p.version.clone()))
            .collect()
    }

    const ADMIN: Actor = Actor::Admin {
        operator: None,
        client: None,
    };

    #[tokio::test]
    async fn install_replace_rollback_restart_and_remove() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (chain, manager) = manager(dir.path()).await;
        let (installed, view) = manager
            .install(package("1.2.3"), Some("quiet"), "api", &ADMIN)
            .await
            .expect("installs");
        assert_eq!(installed, Installed::New);
        assert_eq!(view.record.state, PluginState::Active);
        let (installed, _) = manager
            .install(package("1.2.3"), Some("quiet"), "api", &ADMIN)
            .await
            .expect("installs");
        assert_eq!(installed, Installed::Unchanged);
        let (installed, view) = manager
            .install(package("1.2.4"), None, "api", &ADMIN)
            .await
            .expect("replaces");
        assert_eq!(installed, Installed::Replaced);
        assert_eq!(view.record.previous[0].version, "1.2.3");
        assert_eq!(running(&chain), [("quiet".to_owned(), "1.2.4".to_owned())]);

        let view = manager.rollback("quiet", &ADMIN).await.expect("rolls back");
        assert_eq!(view.record.current.version, "1.2.3");
        assert!(view.record.previous.is_empty());
        assert_eq!(running(&chain), [("quiet".to_owned(), "1.2.3".to_owned())]);
        assert!(matches!(
            manager.rollback("quiet", &ADMIN).await,
            Err(ManagerError::NoPrevious(_))
        ));
        assert!(matches!(
            manager.resume("quiet", &ADMIN).await,
            Err(ManagerError::NotQuarantined(_))
        ));
        assert!(matches!(
            manager
                .install(package("1.2.5"), Some("loud"), "api", &ADMIN)
                .await,
            Err(ManagerError::NameMismatch { .. })
        ));
        drop(manager);

        // A restart brings back what ran.
        let (chain, manager) = self::manager(dir.path()).await;
        assert_eq!(running(&chain), [("quiet".to_owned(), "1.2.3".to_owned())]);
        manager.remove("quiet", &ADMIN).await.expect("removes");
        assert!(running(&chain).is_empty());
        assert!(manager.list().is_empty());
        let versions = std::fs::read_dir(dir.path().join("registry/versions"))
            .expect("versions")
            .count();
        assert_eq!(versions, 0, "versions nobody refers to are deleted");

        let audit = std::fs::read_to_string(dir.path().join("audit.log")).expect("audit");
        let actions: Vec<(String, String)> = audit
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON line"))
            .map(|l| {
                (
                    l["action"].as_str().unwrap_or_default().to_owned(),
                    l["outcome"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        let want = [
            ("install", "ok"),
            ("install", "ok"),
            ("rollback", "ok"),
            ("rollback", "refused"),
            ("resume", "refused"),
            ("install", "refused"),
            ("remove", "ok"),
        ]
        .map(|(a, o)| (a.to_owned(), o.to_owned()));
        assert_eq!(actions, want);
    }

    #[tokio::test]
    async fn an_oversized_or_broken_version_changes_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (chain, manager) = manager(dir.path()).await;
        manager
            .install(package("1.0.0"), None, "api", &ADMIN)
            .await
            .expect("installs");
        let broken = Package {
            manifest: QUIET_MANIFEST.replace("1.2.3", "2.0.0"),
            component: b"\0asm\x0d\0\x01\0garbage".to_vec(),
        };
        let error = manager
            .install(broken, None, "api", &ADMIN)
            .await
            .expect_err("refused");
        assert!(
            matches!(error, ManagerError::Load(LoadError::Component { .. })),
            "{error}"
        );
        assert_eq!(running(&chain), [("quiet".to_owned(), "1.0.0".to_owned())]);
        assert_eq!(
            manager.get("quiet").expect("kept").record.current.version,
            "1.0.0"
        );
    }
}
