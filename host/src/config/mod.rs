//! Configuration (contract §6): a TOML file and `PULSEHUB_*` environment
//! variables, the variables winning. With no backend configured PulseHub runs
//! embedded.
//!
//! Every key of the file has a variable; [`ENV_KEYS`] is the table, and the
//! README documents it.
//!
//! - `env.rs`: [`ENV_KEYS`], the variable table.
//! - `sections.rs`: one struct per section of the file, every key
//!   documented, with its default next to it ([`defaults`]).
//! - `validate.rs`: the checks a loaded configuration must pass, whose
//!   errors name the key.

mod env;
mod sections;
#[cfg(test)]
mod tests;
mod validate;

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::model::identity::IdentityConfig;
use env::env_value;
pub use env::{ENV_KEYS, Kind};
pub use sections::{
    ActivationConfig, AdminConfig, DatabaseConfig, EmbeddedConfig, HttpConfig, KafkaConfig,
    LogConfig, LogFormat, PipelineConfig, PluginsConfig, ReconcileConfig, RedisConfig, defaults,
};
pub use validate::ConfigError;
use validate::key_error;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The REST API.
    #[serde(default)]
    pub http: HttpConfig,
    /// The plugin directory, the registry and live plugin operations.
    #[serde(default)]
    pub plugins: PluginsConfig,
    /// The broker, topic and consumer groups (services mode).
    #[serde(default)]
    pub kafka: KafkaConfig,
    /// PostgreSQL, the system of record (services mode).
    #[serde(default)]
    pub database: DatabaseConfig,
    /// The hot profile cache (optional).
    #[serde(default)]
    pub redis: RedisConfig,
    /// The single-file store used when no services are set.
    #[serde(default)]
    pub embedded: EmbeddedConfig,
    /// Lanes and batch bounds.
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// The archive role's scheduled reconcile.
    #[serde(default)]
    pub reconcile: ReconcileConfig,
    /// Identifier types and the guards on links (docs/identity.md).
    #[serde(default)]
    pub identity: IdentityConfig,
    /// What leaves PulseHub when profiles change.
    #[serde(default)]
    pub activation: ActivationConfig,
    /// The token of the admin routes.
    #[serde(default)]
    pub admin: AdminConfig,
    /// What is logged, and how.
    #[serde(default)]
    pub log: LogConfig,
}

/// Which backends the configuration selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Nothing configured: one process, embedded store and inbox.
    Embedded,
    /// Kafka + PostgreSQL (+ Redis when set).
    Services,
}

impl Config {
    /// Defaults, then `file` (when given), then the process environment;
    /// relative paths, in the file or the environment, are taken from the
    /// working directory (see [`Config::resolve_paths`]).
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let cwd = std::env::current_dir()
            .map_err(|e| ConfigError::Invalid(format!("cannot read the working directory: {e}")))?;
        let mut config = Self::load_from(file, std::env::vars())?;
        config.resolve_paths(&cwd);
        Ok(config)
    }

    /// Makes every configured path absolute, joined to `base` (the working
    /// directory at start-up) when relative, once, so that nothing later
    /// depends on the working directory (wasmtime's compiled-code cache, for
    /// one, refuses a relative directory).
    pub fn resolve_paths(&mut self, base: &Path) {
        let resolve = |path: &mut PathBuf| *path = absolute_from(base, path);
        resolve(&mut self.embedded.data_dir);
        resolve(&mut self.plugins.dir);
        if let Some(dir) = &mut self.plugins.registry_dir {
            resolve(dir);
        }
    }

    /// As [`Config::load`], with the environment given (for tests).
    pub fn load_from(
        file: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.is_file() {
                return Err(ConfigError::Invalid(format!(
                    "config file {} does not exist",
                    file.display()
                )));
            }
            figment = figment.merge(Toml::file(file));
        }
        let vars: Vec<(String, String)> = vars
            .into_iter()
            .filter(|(name, _)| name.starts_with("PULSEHUB_"))
            .collect();
        for (name, _) in &vars {
            if name != "PULSEHUB_CONFIG" && !ENV_KEYS.iter().any(|(known, ..)| known == name) {
                return Err(ConfigError::Invalid(format!(
                    "unknown environment variable {name}; known: {}",
                    ENV_KEYS
                        .iter()
                        .map(|(n, ..)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        for &(name, key, kind) in ENV_KEYS {
            if let Some((_, value)) = vars.iter().find(|(n, _)| n == name) {
                // Empty means not set: the file's value, or the default, applies.
                if value.is_empty() {
                    continue;
                }
                let data = Serialized::default(key, env_value(value, kind));
                figment = figment.merge(data);
            }
        }
        let config: Config = figment.extract().map_err(|e| {
            let key = e.path.join(".");
            let reason = e.kind.to_string();
            if key.is_empty() {
                ConfigError::Invalid(reason)
            } else {
                ConfigError::Invalid(format!("key `{key}`: {reason}"))
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Where the plugin registry lives.
    pub fn registry_dir(&self) -> PathBuf {
        self.plugins
            .registry_dir
            .clone()
            .unwrap_or_else(|| self.embedded.data_dir.join("plugin-registry"))
    }

    /// Whether the backends make a whole: Kafka needs PostgreSQL (it holds
    /// the offsets), PostgreSQL alone is not a mode, and Redis caches only
    /// PostgreSQL. `pulsehub run` checks this; `pulsehub migrate` needs only
    /// `database.url`.
    pub fn check_backends(&self) -> Result<(), ConfigError> {
        match (self.kafka.brokers.is_some(), self.database.url.is_some()) {
            (true, false) => Err(key_error(
                "database.url",
                "is required with kafka.brokers: PostgreSQL holds the consumer offsets",
            )),
            (false, true) => Err(key_error(
                "kafka.brokers",
                "is required with database.url: without Kafka, PulseHub runs embedded",
            )),
            (false, false) if self.redis.url.is_some() => Err(key_error(
                "redis.url",
                "needs kafka.brokers and database.url; the embedded mode has no cache",
            )),
            _ => Ok(()),
        }
    }

    pub fn mode(&self) -> Mode {
        if self.kafka.brokers.is_some() {
            Mode::Services
        } else {
            Mode::Embedded
        }
    }

    /// Lanes to run: the configured count, or one per CPU.
    pub fn lanes(&self) -> usize {
        match self.pipeline.lanes {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

/// `path` joined to `base` when relative, without `.` components.
fn absolute_from(base: &Path, path: &Path) -> PathBuf {
    base.join(path).components().collect()
}
