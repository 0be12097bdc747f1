//! The sections of the configuration file, one struct each. Every key is
//! documented here and has its default in [`defaults`], the one place a
//! default is written: the plugin operations, the quarantine policy and the
//! API take theirs from there too.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Every default of the configuration, once.
pub mod defaults {
    use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

    pub const HTTP_ADDR: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080));
    pub const HTTP_MAX_BODY_BYTES: usize = 1 << 20;
    pub const HTTP_TIMEOUT_MS: u64 = 10_000;

    pub const PLUGINS_DIR: &str = "target/plugins";
    pub const PLUGINS_WATCH: bool = true;
    pub const KEEP_VERSIONS: usize = 3;
    pub const MAX_COMPONENT_BYTES: usize = 32 << 20;
    pub const VALIDATE_TIMEOUT_MS: u64 = 30_000;
    pub const QUARANTINE_WINDOW_SECS: u64 = 60;
    pub const QUARANTINE_MIN_EVENTS: u64 = 100;
    pub const QUARANTINE_FAILURE_PERCENT: u64 = 50;
    pub const AUTO_ROLLBACK_WITHIN_SECS: u64 = 15 * 60;

    pub const KAFKA_TOPIC: &str = "user-activity-events";
    pub const KAFKA_UPDATES_TOPIC: &str = "profile-updates";
    pub const KAFKA_GROUP: &str = "pulsehub-enrich";
    pub const KAFKA_ARCHIVE_GROUP: &str = "pulsehub-archive";
    pub const KAFKA_SESSION_TIMEOUT_MS: u64 = 10_000;

    pub const DATABASE_MAX_CONNECTIONS: u32 = 8;
    pub const DATABASE_MIGRATE: bool = true;

    pub const REDIS_TTL_SECS: u64 = 86_400;
    pub const REDIS_KEY_PREFIX: &str = "pulsehub:";

    pub const DATA_DIR: &str = "pulsehub-data";
    pub const EMBEDDED_CACHE_MIB: usize = 256;

    /// 0: one lane per CPU.
    pub const LANES: usize = 0;
    pub const BATCH_MAX_EVENTS: usize = 50_000;
    pub const BATCH_MAX_USERS: usize = 25_000;
    pub const BATCH_MAX_MIB: usize = 32;
    pub const BATCH_MAX_WAIT_MS: u64 = 1_000;
    pub const PROFILE_CACHE_MIB: usize = 64;

    /// 0: the archive role runs no scheduled reconcile.
    pub const RECONCILE_INTERVAL_SECS: u64 = 0;
    pub const RECONCILE_SAMPLE: i64 = 1_000;
    pub const WEBHOOK_TIMEOUT_MS: u64 = 10_000;
    /// Eight attempts over about 28 hours.
    pub const WEBHOOK_RETRY_SCHEDULE: &str = "5s,5m,30m,2h,5h,10h,10h";
    pub const WEBHOOK_BATCH_MAX: u64 = 100;

    pub const LOG_FILTER: &str = "info";
}

/// `[http]`: the REST API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Where the API listens (`host:port`).
    pub addr: SocketAddr,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Per-request time limit.
    pub timeout_ms: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            addr: defaults::HTTP_ADDR,
            max_body_bytes: defaults::HTTP_MAX_BODY_BYTES,
            timeout_ms: defaults::HTTP_TIMEOUT_MS,
        }
    }
}

/// `[plugins]`: the plugin directory, the registry and live plugin operations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// Folder of `NAME.wasm` + `NAME.toml` pairs loaded at start-up, and
    /// watched while running when `watch` is on.
    pub dir: PathBuf,
    /// Watch `dir` while running, and load, replace or remove plugins as
    /// their files change.
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
    /// Quarantine: the sliding window over which failures are counted.
    pub quarantine_window_secs: u64,
    /// Quarantine: the events the window must hold at least.
    pub quarantine_min_events: u64,
    /// Quarantine: the share of them (percent) that must have failed.
    pub quarantine_failure_percent: u64,
    /// A version quarantined within this time of replacing a healthy one
    /// is rolled back automatically.
    pub auto_rollback_within_secs: u64,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from(defaults::PLUGINS_DIR),
            watch: defaults::PLUGINS_WATCH,
            registry_dir: None,
            keep_versions: defaults::KEEP_VERSIONS,
            max_component_bytes: defaults::MAX_COMPONENT_BYTES,
            validate_timeout_ms: defaults::VALIDATE_TIMEOUT_MS,
            quarantine_window_secs: defaults::QUARANTINE_WINDOW_SECS,
            quarantine_min_events: defaults::QUARANTINE_MIN_EVENTS,
            quarantine_failure_percent: defaults::QUARANTINE_FAILURE_PERCENT,
            auto_rollback_within_secs: defaults::AUTO_ROLLBACK_WITHIN_SECS,
        }
    }
}

/// `[kafka]`: the broker, topic and consumer groups (services mode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `host:port,...`; unset means no Kafka (embedded ingest).
    pub brokers: Option<String>,
    /// The topic events are read from and published to.
    pub topic: String,
    /// Consumer group of the enrich role.
    pub group: String,
    /// Consumer group of the archive role.
    pub archive_group: String,
    /// Dead-letter topic; default `<topic>.dlq`.
    pub dlq_topic: Option<String>,
    /// The topic every committed profile change is published to (contract
    /// §3a), by the enrich role's relay; keyed by the profile id.
    pub updates_topic: String,
    /// How long a consumer may go without a heartbeat before the group
    /// coordinator takes it out of the group and hands its partitions to the
    /// others: after a crash, the longest its partitions wait for a
    /// rebalance. Shorter fails over sooner but evicts a consumer that is
    /// only cut off briefly. The broker bounds it (Apache Kafka by default
    /// 6000 to 1800000: `group.min`/`group.max.session.timeout.ms`).
    pub session_timeout_ms: u64,
    /// Static group membership: each consumer of this process joins as
    /// `group.instance.id = <instance_id>-<role>` (`-enrich`, `-archive`),
    /// so that a restart within `session_timeout_ms` takes its partitions
    /// back without a rebalance. Must be unique per process and stable
    /// across its restarts (e.g. a StatefulSet pod name); a second process
    /// with the same id fences the first out of the group, which then
    /// stops. Unset: dynamic membership.
    pub instance_id: Option<String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: None,
            topic: defaults::KAFKA_TOPIC.into(),
            group: defaults::KAFKA_GROUP.into(),
            archive_group: defaults::KAFKA_ARCHIVE_GROUP.into(),
            dlq_topic: None,
            updates_topic: defaults::KAFKA_UPDATES_TOPIC.into(),
            session_timeout_ms: defaults::KAFKA_SESSION_TIMEOUT_MS,
            instance_id: None,
        }
    }
}

impl KafkaConfig {
    /// The dead-letter topic: `dlq_topic`, or `<topic>.dlq`.
    pub fn dlq_topic(&self) -> String {
        self.dlq_topic
            .clone()
            .unwrap_or_else(|| format!("{}.dlq", self.topic))
    }

    /// The `group.instance.id` of this process's consumer for `role`
    /// (`enrich` or `archive`); `None` without `instance_id`.
    pub fn group_instance_id(&self, role: &str) -> Option<String> {
        self.instance_id
            .as_deref()
            .map(|instance| format!("{instance}-{role}"))
    }
}

/// `[database]`: PostgreSQL, the system of record (services mode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `postgres://...`; unset means the embedded store.
    pub url: Option<String>,
    /// Size of the connection pool.
    pub max_connections: u32,
    /// Apply pending migrations at start-up.
    pub migrate: bool,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: defaults::DATABASE_MAX_CONNECTIONS,
            migrate: defaults::DATABASE_MIGRATE,
        }
    }
}

/// `[redis]`: the hot profile cache (optional).
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
            ttl_secs: defaults::REDIS_TTL_SECS,
            key_prefix: defaults::REDIS_KEY_PREFIX.into(),
        }
    }
}

/// `[embedded]`: the single-file store used when no services are set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedConfig {
    /// Where the embedded store keeps its file.
    pub data_dir: PathBuf,
    /// MiB of the store file's pages kept in memory (redb's page cache).
    pub cache_mib: usize,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(defaults::DATA_DIR),
            cache_mib: defaults::EMBEDDED_CACHE_MIB,
        }
    }
}

/// `[pipeline]`: lanes and batch bounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Parallel lanes (each owns a share of the partitions); 0 = one per CPU.
    pub lanes: usize,
    /// A batch is handed to a lane when it holds this many events...
    pub batch_max_events: usize,
    /// ...or events of this many users (distinct Kafka message keys; a
    /// record without a key counts as one more user), which bounds the
    /// profiles one commit reads, changes and writes...
    pub batch_max_users: usize,
    /// ...or this many MiB of event payloads (and keys)...
    pub batch_max_mib: usize,
    /// ...or its first event has waited this long.
    pub batch_max_wait_ms: u64,
    /// MiB of profiles the enrich role keeps after committing them, so that
    /// the next commit of the same users reads nothing back (one set per
    /// process; 0 = none). A bound on an estimate, not on RSS.
    pub profile_cache_mib: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            lanes: defaults::LANES,
            batch_max_events: defaults::BATCH_MAX_EVENTS,
            batch_max_users: defaults::BATCH_MAX_USERS,
            batch_max_mib: defaults::BATCH_MAX_MIB,
            batch_max_wait_ms: defaults::BATCH_MAX_WAIT_MS,
            profile_cache_mib: defaults::PROFILE_CACHE_MIB,
        }
    }
}

/// `[reconcile]`: the archive role's scheduled check of the profiles
/// against the archive (what `pulsehub reconcile --sample N` does, without
/// repairing), exported as metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileConfig {
    /// Seconds between two runs; 0 = none. It needs the enrich role's
    /// plugin registry (`plugins.registry_dir`) to replay the versions.
    pub interval_secs: u64,
    /// Profiles checked each run, picked at random.
    pub sample: i64,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        Self {
            interval_secs: defaults::RECONCILE_INTERVAL_SECS,
            sample: defaults::RECONCILE_SAMPLE,
        }
    }
}

/// `[activation]`: what leaves PulseHub when profiles change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActivationConfig {
    /// Publish every committed profile change to `kafka.updates_topic`
    /// (contract §3a; in the embedded mode, keep it for `GET
    /// /api/v1/profile-updates`). Off, the commits write no outbox (no
    /// embedded log) and no relay runs: the pipeline is faster, and nothing
    /// downstream hears of changes but by polling.
    pub profile_updates: bool,
    /// Let destinations (webhooks) reach loopback and private addresses.
    /// Off, a destination whose host is or resolves to one is refused:
    /// an admin cannot point PulseHub at the network it runs in.
    pub allow_private_networks: bool,
    /// How long a destination's receiver has to answer one delivery.
    pub webhook_timeout_ms: u64,
    /// The delays before each new attempt of a failed delivery (each with
    /// a fifth of jitter), comma-separated with units `ms`, `s`, `m`, `h`;
    /// after the last, the batch goes to the destination's dead letters.
    pub webhook_retry_schedule: String,
    /// Most messages in one delivery.
    pub webhook_batch_max: u64,
}

impl Default for ActivationConfig {
    fn default() -> Self {
        Self {
            profile_updates: true,
            allow_private_networks: false,
            webhook_timeout_ms: defaults::WEBHOOK_TIMEOUT_MS,
            webhook_retry_schedule: defaults::WEBHOOK_RETRY_SCHEDULE.into(),
            webhook_batch_max: defaults::WEBHOOK_BATCH_MAX,
        }
    }
}

/// `[admin]`: the token of the admin routes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Bearer token of the admin routes; unset disables them.
    pub token: Option<String>,
}

/// `[log]`: what is logged, and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter, e.g. `info` or `pulsehub=debug,info`.
    pub filter: String,
    /// `text` or `json` (one object per line).
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            filter: defaults::LOG_FILTER.into(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}
