//! Configuration (contract §6): a TOML file and `PULSEHUB_*` environment
//! variables, the variables winning. With no backend configured PulseHub runs
//! embedded.
//!
//! Every key of the file has a variable; [`ENV_KEYS`] is the table, and the
//! README documents it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// How an environment variable's text is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Number,
    Flag,
}

/// Environment variable → key in the file, and how its text is read.
pub const ENV_KEYS: &[(&str, &str, Kind)] = &[
    ("PULSEHUB_HTTP_ADDR", "http.addr", Kind::Text),
    (
        "PULSEHUB_HTTP_MAX_BODY_BYTES",
        "http.max_body_bytes",
        Kind::Number,
    ),
    ("PULSEHUB_HTTP_TIMEOUT_MS", "http.timeout_ms", Kind::Number),
    ("PULSEHUB_PLUGIN_DIR", "plugins.dir", Kind::Text),
    ("PULSEHUB_PLUGIN_WATCH", "plugins.watch", Kind::Flag),
    (
        "PULSEHUB_PLUGIN_REGISTRY_DIR",
        "plugins.registry_dir",
        Kind::Text,
    ),
    (
        "PULSEHUB_PLUGIN_KEEP_VERSIONS",
        "plugins.keep_versions",
        Kind::Number,
    ),
    (
        "PULSEHUB_PLUGIN_MAX_COMPONENT_BYTES",
        "plugins.max_component_bytes",
        Kind::Number,
    ),
    (
        "PULSEHUB_PLUGIN_VALIDATE_TIMEOUT_MS",
        "plugins.validate_timeout_ms",
        Kind::Number,
    ),
    (
        "PULSEHUB_QUARANTINE_WINDOW_SECS",
        "plugins.quarantine_window_secs",
        Kind::Number,
    ),
    (
        "PULSEHUB_QUARANTINE_MIN_EVENTS",
        "plugins.quarantine_min_events",
        Kind::Number,
    ),
    (
        "PULSEHUB_QUARANTINE_FAILURE_PERCENT",
        "plugins.quarantine_failure_percent",
        Kind::Number,
    ),
    (
        "PULSEHUB_AUTO_ROLLBACK_WITHIN_SECS",
        "plugins.auto_rollback_within_secs",
        Kind::Number,
    ),
    ("PULSEHUB_KAFKA_BROKERS", "kafka.brokers", Kind::Text),
    ("PULSEHUB_KAFKA_TOPIC", "kafka.topic", Kind::Text),
    ("PULSEHUB_KAFKA_GROUP", "kafka.group", Kind::Text),
    (
        "PULSEHUB_KAFKA_ARCHIVE_GROUP",
        "kafka.archive_group",
        Kind::Text,
    ),
    ("PULSEHUB_KAFKA_DLQ_TOPIC", "kafka.dlq_topic", Kind::Text),
    ("PULSEHUB_DATABASE_URL", "database.url", Kind::Text),
    (
        "PULSEHUB_DATABASE_MAX_CONNECTIONS",
        "database.max_connections",
        Kind::Number,
    ),
    ("PULSEHUB_DATABASE_MIGRATE", "database.migrate", Kind::Flag),
    ("PULSEHUB_REDIS_URL", "redis.url", Kind::Text),
    ("PULSEHUB_REDIS_TTL_SECS", "redis.ttl_secs", Kind::Number),
    ("PULSEHUB_REDIS_KEY_PREFIX", "redis.key_prefix", Kind::Text),
    ("PULSEHUB_DATA_DIR", "embedded.data_dir", Kind::Text),
    ("PULSEHUB_PIPELINE_LANES", "pipeline.lanes", Kind::Number),
    (
        "PULSEHUB_BATCH_MAX_EVENTS",
        "pipeline.batch_max_events",
        Kind::Number,
    ),
    (
        "PULSEHUB_BATCH_MAX_WAIT_MS",
        "pipeline.batch_max_wait_ms",
        Kind::Number,
    ),
    ("PULSEHUB_ADMIN_TOKEN", "admin.token", Kind::Text),
    ("PULSEHUB_LOG", "log.filter", Kind::Text),
    ("PULSEHUB_LOG_FORMAT", "log.format", Kind::Text),
];

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub plugins: PluginsConfig,
    #[serde(default)]
    pub kafka: KafkaConfig,
    #[serde(default)]
    pub database: DatabaseConfig,
    #[serde(default)]
    pub redis: RedisConfig,
    #[serde(default)]
    pub embedded: EmbeddedConfig,
    #[serde(default)]
    pub pipeline: PipelineConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub log: LogConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub addr: SocketAddr,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Per-request time limit.
    pub timeout_ms: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 1 << 20,
            timeout_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// Folder of `NAME.wasm` + `NAME.toml` pairs loaded at start-up, and
    /// watched while running when `watch` is on.
    pub dir: PathBuf,
    pub watch: bool,
    /// Where installed versions, the active set and the compiled-code cache
    /// are kept; default `<embedded.data_dir>/plugin-registry`.
    pub registry_dir: Option<PathBuf>,
    /// Earlier versions kept per plugin for rollback.
    pub keep_versions: usize,
    /// Largest component an upload may carry.
    pub max_component_bytes: usize,
    /// Time cap on compiling, starting and trying a new version.
    pub validate_timeout_ms: u64,
    /// Quarantine: the sliding window, the events it must hold at least,
    /// and the share of them (percent) that must have failed.
    pub quarantine_window_secs: u64,
    pub quarantine_min_events: u64,
    pub quarantine_failure_percent: u64,
    /// A version quarantined within this time of replacing a healthy one
    /// is rolled back automatically.
    pub auto_rollback_within_secs: u64,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("target/plugins"),
            watch: true,
            registry_dir: None,
            keep_versions: 3,
            max_component_bytes: 32 << 20,
            validate_timeout_ms: 30_000,
            quarantine_window_secs: 60,
            quarantine_min_events: 100,
            quarantine_failure_percent: 50,
            auto_rollback_within_secs: 900,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `host:port,...`; unset means no Kafka (embedded ingest).
    pub brokers: Option<String>,
    pub topic: String,
    /// Consumer group of the enrich role.
    pub group: String,
    /// Consumer group of the archive role.
    pub archive_group: String,
    /// Dead-letter topic; default `<topic>.dlq`.
    pub dlq_topic: Option<String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: None,
            topic: "user-activity-events".into(),
            group: "pulsehub-enrich".into(),
            archive_group: "pulsehub-archive".into(),
            dlq_topic: None,
        }
    }
}

impl KafkaConfig {
    pub fn dlq_topic(&self) -> String {
        self.dlq_topic
            .clone()
            .unwrap_or_else(|| format!("{}.dlq", self.topic))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `postgres://...`; unset means the embedded store.
    pub url: Option<String>,
    pub max_connections: u32,
    /// Apply pending migrations at start-up.
    pub migrate: bool,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: 8,
            migrate: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://...`; unset means no hot cache.
    pub url: Option<String>,
    /// Lifetime of a cached profile.
    pub ttl_secs: u64,
    /// Prefix of every key, e.g. `pulsehub:` gives `pulsehub:profile:{id}`.
    pub key_prefix: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: None,
            ttl_secs: 86_400,
            key_prefix: "pulsehub:".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedConfig {
    /// Where the embedded store keeps its file.
    pub data_dir: PathBuf,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("pulsehub-data"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Parallel lanes (each owns a share of the partitions); 0 = one per CPU.
    pub lanes: usize,
    pub batch_max_events: usize,
    pub batch_max_wait_ms: u64,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            lanes: 0,
            batch_max_events: 2_000,
            batch_max_wait_ms: 50,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Bearer token of the admin routes; unset disables them.
    pub token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub filter: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            filter: "info".into(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Which backends the configuration selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Nothing configured: one process, embedded store and inbox.
    Embedded,
    /// Kafka + PostgreSQL (+ Redis when set).
    Services,
}

/// A configuration that cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Invalid(String),
    #[error("configuration key `{key}`: {reason}")]
    Key { key: &'static str, reason: String },
}

fn key_error(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Key {
        key,
        reason: reason.into(),
    }
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

    fn validate(&self) -> Result<(), ConfigError> {
        let empty = |v: &Option<String>| v.as_deref().is_some_and(|s| s.trim().is_empty());
        if empty(&self.kafka.brokers) {
            return Err(key_error("kafka.brokers", "is empty"));
        }
        if self.kafka.topic.is_empty() {
            return Err(key_error("kafka.topic", "is empty"));
        }
        if self.kafka.group.is_empty() {
            return Err(key_error("kafka.group", "is empty"));
        }
        if let Some(url) = &self.database.url
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            return Err(key_error(
                "database.url",
                "must start with postgres:// or postgresql://",
            ));
        }
        if let Some(url) = &self.redis.url
            && !(url.starts_with("redis://") || url.starts_with("rediss://"))
        {
            return Err(key_error(
                "redis.url",
                "must start with redis:// or rediss://",
            ));
        }
        if self.database.max_connections == 0 {
            return Err(key_error("database.max_connections", "must be at least 1"));
        }
        if self.redis.ttl_secs == 0 {
            return Err(key_error("redis.ttl_secs", "must be at least 1"));
        }
        if self.pipeline.batch_max_events == 0 {
            return Err(key_error("pipeline.batch_max_events", "must be at least 1"));
        }
        if self.http.max_body_bytes == 0 {
            return Err(key_error("http.max_body_bytes", "must be at least 1"));
        }
        if self.http.timeout_ms == 0 {
            return Err(key_error("http.timeout_ms", "must be at least 1"));
        }
        if self.plugins.max_component_bytes == 0 {
            return Err(key_error(
                "plugins.max_component_bytes",
                "must be at least 1",
            ));
        }
        if self.plugins.validate_timeout_ms == 0 {
            return Err(key_error(
                "plugins.validate_timeout_ms",
                "must be at least 1",
            ));
        }
        if self.plugins.quarantine_window_secs == 0 {
            return Err(key_error(
                "plugins.quarantine_window_secs",
                "must be at least 1",
            ));
        }
        if !(1..=100).contains(&self.plugins.quarantine_failure_percent) {
            return Err(key_error(
                "plugins.quarantine_failure_percent",
                "must be between 1 and 100",
            ));
        }
        if let Some(token) = &self.admin.token
            && token.len() < 16
        {
            return Err(key_error(
                "admin.token",
                "must be at least 16 characters long",
            ));
        }
        Ok(())
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

/// Environment values are text; numbers and flags are passed typed so that
/// `PULSEHUB_REDIS_TTL_SECS=60` fills a number, and a text key keeps digits
/// as text (an all-digit token stays a token). Text that does not read as
/// its kind is passed on as text, and extraction names the key.
fn env_value(value: &str, kind: Kind) -> figment::value::Value {
    use figment::value::Value;
    match kind {
        Kind::Number => value
            .parse::<u64>()
            .map_or_else(|_| Value::from(value.to_owned()), Value::from),
        Kind::Flag => value
            .parse::<bool>()
            .map_or_else(|_| Value::from(value.to_owned()), Value::from),
        Kind::Text => Value::from(value.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_run_embedded() {
        let config = Config::load_from(None, vars(&[])).expect("defaults are valid");
        config
            .check_backends()
            .expect("nothing configured is embedded");
        assert_eq!(config.mode(), Mode::Embedded);
        assert_eq!(config.http.addr.to_string(), "127.0.0.1:8080");
        assert_eq!(config.kafka.dlq_topic(), "user-activity-events.dlq");
    }

    #[test]
    fn relative_paths_are_taken_from_the_base() {
        let mut config = Config::load_from(
            None,
            vars(&[
                ("PULSEHUB_PLUGIN_DIR", "./plugins/../built"),
                ("PULSEHUB_PLUGIN_REGISTRY_DIR", "registry"),
            ]),
        )
        .expect("valid");
        config.resolve_paths(Path::new("/srv/pulsehub"));
        assert_eq!(
            config.embedded.data_dir,
            Path::new("/srv/pulsehub/pulsehub-data")
        );
        assert_eq!(
            config.plugins.dir,
            Path::new("/srv/pulsehub/plugins/../built")
        );
        assert_eq!(config.registry_dir(), Path::new("/srv/pulsehub/registry"));

        // Absolute paths stay as they are, and the registry's default
        // follows the data directory.
        let mut config =
            Config::load_from(None, vars(&[("PULSEHUB_DATA_DIR", "/var/lib/ph")])).expect("valid");
        config.resolve_paths(Path::new("/elsewhere"));
        assert_eq!(config.embedded.data_dir, Path::new("/var/lib/ph"));
        assert_eq!(
            config.registry_dir(),
            Path::new("/var/lib/ph/plugin-registry")
        );
        assert!(config.plugins.dir.is_absolute());
    }

    /// The variable tables of the README and of docs/contract.md §6: one
    /// row per variable, in the order of [`ENV_KEYS`], each with its file key
    /// and the default the code has.
    #[test]
    fn the_documented_variable_tables_match_the_code() {
        let defaults = serde_json::to_value(Config::default()).expect("defaults serialize");
        for doc in ["README.md", "docs/contract.md"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(doc);
            let text = std::fs::read_to_string(&path).expect("the document is readable");
            let rows: Vec<Vec<&str>> = text
                .lines()
                .map(|line| line.split('|').map(str::trim).collect::<Vec<_>>())
                .filter(|cells| cells.len() >= 5 && cells[1].starts_with("`PULSEHUB_"))
                .collect();
            let documented: Vec<(&str, &str)> = rows
                .iter()
                .map(|cells| (cells[1].trim_matches('`'), cells[2].trim_matches('`')))
                .collect();
            let known: Vec<(&str, &str)> = ENV_KEYS.iter().map(|(n, k, _)| (*n, *k)).collect();
            assert_eq!(documented, known, "the variables of {doc}");
            for cells in &rows {
                let (key, default) = (cells[2].trim_matches('`'), cells[3]);
                let value = key.split('.').fold(&defaults, |value, part| &value[part]);
                let shown = match value {
                    serde_json::Value::Null => None,
                    serde_json::Value::String(text) => Some(text.clone()),
                    other => Some(other.to_string()),
                };
                match shown {
                    // No value of its own: unset, or derived from another key.
                    None => assert!(
                        default.starts_with("unset") || default.starts_with("`<"),
                        "{doc}: `{key}` has no default, the table says {default}"
                    ),
                    Some(shown) => assert!(
                        default.starts_with(&format!("`{shown}`")),
                        "{doc}: `{key}` defaults to {shown}, the table says {default}"
                    ),
                }
            }
        }
    }

    #[test]
    fn environment_wins_over_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("pulsehub.toml");
        std::fs::write(
            &file,
            "[kafka]\nbrokers = \"a:9092\"\ntopic = \"from-file\"\n[database]\nurl = \"postgres://x/y\"\n[redis]\nttl_secs = 5\n",
        )
        .expect("write");
        let config = Config::load_from(
            Some(&file),
            vars(&[
                ("PULSEHUB_KAFKA_TOPIC", "from-env"),
                ("PULSEHUB_REDIS_TTL_SECS", "60"),
                ("PULSEHUB_KAFKA_GROUP", "12345"),
            ]),
        )
        .expect("valid");
        config.check_backends().expect("a whole");
        assert_eq!(config.kafka.topic, "from-env");
        assert_eq!(config.redis.ttl_secs, 60);
        assert_eq!(
            config.kafka.group, "12345",
            "digits stay text for a text key"
        );
        assert_eq!(config.kafka.brokers.as_deref(), Some("a:9092"));
        assert_eq!(config.mode(), Mode::Services);
    }

    #[test]
    fn errors_name_the_key() {
        let error = |pairs: &[(&str, &str)]| {
            Config::load_from(None, vars(pairs))
                .and_then(|config| config.check_backends())
                .expect_err("must be refused")
                .to_string()
        };
        assert!(error(&[("PULSEHUB_HTTP_ADDR", "nowhere")]).contains("http.addr"));
        assert!(error(&[("PULSEHUB_REDIS_TTL_SECS", "soon")]).contains("redis.ttl_secs"));
        assert!(error(&[("PULSEHUB_KAFKA_BROKERS", "k:9092")]).contains("database.url"));
        assert!(
            error(&[
                ("PULSEHUB_KAFKA_BROKERS", "k:9092"),
                ("PULSEHUB_DATABASE_URL", "mysql://x")
            ])
            .contains("database.url")
        );
        assert!(error(&[("PULSEHUB_KAFKA_BROKER", "k:9092")]).contains("PULSEHUB_KAFKA_BROKER"));
        // Migrating needs the database only.
        let migrate_only = vars(&[("PULSEHUB_DATABASE_URL", "postgres://x/y")]);
        let config = Config::load_from(None, migrate_only).expect("loads");
        assert!(config.check_backends().is_err());
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "[http]\nadress = \"x\"\n").expect("write");
        let message = Config::load_from(Some(&file), vars(&[]))
            .expect_err("unknown key")
            .to_string();
        assert!(message.contains("adress"), "{message}");
    }
}
