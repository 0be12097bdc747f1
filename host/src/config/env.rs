//! The `PULSEHUB_*` variables: each names one key of the file.

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
    (
        "PULSEHUB_KAFKA_UPDATES_TOPIC",
        "kafka.updates_topic",
        Kind::Text,
    ),
    (
        "PULSEHUB_KAFKA_SESSION_TIMEOUT_MS",
        "kafka.session_timeout_ms",
        Kind::Number,
    ),
    (
        "PULSEHUB_KAFKA_INSTANCE_ID",
        "kafka.instance_id",
        Kind::Text,
    ),
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
    (
        "PULSEHUB_EMBEDDED_CACHE_MIB",
        "embedded.cache_mib",
        Kind::Number,
    ),
    ("PULSEHUB_PIPELINE_LANES", "pipeline.lanes", Kind::Number),
    (
        "PULSEHUB_BATCH_MAX_EVENTS",
        "pipeline.batch_max_events",
        Kind::Number,
    ),
    (
        "PULSEHUB_BATCH_MAX_USERS",
        "pipeline.batch_max_users",
        Kind::Number,
    ),
    (
        "PULSEHUB_BATCH_MAX_MIB",
        "pipeline.batch_max_mib",
        Kind::Number,
    ),
    (
        "PULSEHUB_BATCH_MAX_WAIT_MS",
        "pipeline.batch_max_wait_ms",
        Kind::Number,
    ),
    (
        "PULSEHUB_PROFILE_CACHE_MIB",
        "pipeline.profile_cache_mib",
        Kind::Number,
    ),
    (
        "PULSEHUB_RECONCILE_INTERVAL_SECS",
        "reconcile.interval_secs",
        Kind::Number,
    ),
    (
        "PULSEHUB_RECONCILE_SAMPLE",
        "reconcile.sample",
        Kind::Number,
    ),
    ("PULSEHUB_ADMIN_TOKEN", "admin.token", Kind::Text),
    (
        "PULSEHUB_ACTIVATION_PROFILE_UPDATES",
        "activation.profile_updates",
        Kind::Flag,
    ),
    (
        "PULSEHUB_ACTIVATION_ALLOW_PRIVATE_NETWORKS",
        "activation.allow_private_networks",
        Kind::Flag,
    ),
    (
        "PULSEHUB_ACTIVATION_WEBHOOK_TIMEOUT_MS",
        "activation.webhook_timeout_ms",
        Kind::Number,
    ),
    (
        "PULSEHUB_ACTIVATION_WEBHOOK_RETRY_SCHEDULE",
        "activation.webhook_retry_schedule",
        Kind::Text,
    ),
    (
        "PULSEHUB_ACTIVATION_WEBHOOK_BATCH_MAX",
        "activation.webhook_batch_max",
        Kind::Number,
    ),
    ("PULSEHUB_LOG", "log.filter", Kind::Text),
    ("PULSEHUB_LOG_FORMAT", "log.format", Kind::Text),
];

/// Environment values are text; numbers and flags are passed typed so that
/// `PULSEHUB_REDIS_TTL_SECS=60` fills a number, and a text key keeps digits
/// as text (an all-digit token stays a token). Text that does not read as
/// its kind is passed on as text, and extraction names the key.
pub(super) fn env_value(value: &str, kind: Kind) -> figment::value::Value {
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
