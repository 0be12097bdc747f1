//! What a loaded configuration must satisfy; every error names its key.

use std::ops::RangeInclusive;

use super::Config;

/// The session timeouts PulseHub accepts: a consumer sends a heartbeat every
/// third of it (at most every second), so below 1 s the heartbeats alone
/// load the coordinator; 1800000 is Apache Kafka's default upper bound.
const SESSION_TIMEOUT_MS: RangeInclusive<u64> = 1_000..=1_800_000;

/// A `group.instance.id` must be a valid Kafka name (at most 249 ASCII
/// letters, digits, `.`, `_` and `-`, as the Java client checks), and
/// `<instance_id>-archive` is the longest one PulseHub makes of it.
const INSTANCE_ID_MAX_LEN: usize = 249 - "-archive".len();

/// A configuration that cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Invalid(String),
    #[error("configuration key `{key}`: {reason}")]
    Key { key: &'static str, reason: String },
}

pub(super) fn key_error(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Key {
        key,
        reason: reason.into(),
    }
}

impl Config {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
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
        if self.kafka.updates_topic.is_empty() {
            return Err(key_error("kafka.updates_topic", "is empty"));
        }
        if self.kafka.updates_topic == self.kafka.topic {
            return Err(key_error(
                "kafka.updates_topic",
                "is the events topic: profile updates need a topic of their own",
            ));
        }
        if let Err(reason) =
            crate::activation::destination::parse_schedule(&self.activation.webhook_retry_schedule)
        {
            return Err(key_error("activation.webhook_retry_schedule", reason));
        }
        if !(100..=600_000).contains(&self.activation.webhook_timeout_ms) {
            return Err(key_error(
                "activation.webhook_timeout_ms",
                "must be between 100 and 600000 (milliseconds)",
            ));
        }
        if !(1..=10_000).contains(&self.activation.webhook_batch_max) {
            return Err(key_error(
                "activation.webhook_batch_max",
                "must be between 1 and 10000",
            ));
        }
        if !SESSION_TIMEOUT_MS.contains(&self.kafka.session_timeout_ms) {
            return Err(key_error(
                "kafka.session_timeout_ms",
                format!(
                    "must be between {} and {} (milliseconds)",
                    SESSION_TIMEOUT_MS.start(),
                    SESSION_TIMEOUT_MS.end()
                ),
            ));
        }
        if let Some(id) = &self.kafka.instance_id {
            check_instance_id(id)?;
        }
        if let Err(error) = crate::model::identity::Rules::new(&self.identity) {
            return Err(ConfigError::Invalid(format!("{error:#}")));
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
        if self.pipeline.batch_max_users == 0 {
            return Err(key_error("pipeline.batch_max_users", "must be at least 1"));
        }
        if self.embedded.cache_mib == 0 {
            return Err(key_error("embedded.cache_mib", "must be at least 1"));
        }
        if self.pipeline.batch_max_mib == 0 {
            return Err(key_error("pipeline.batch_max_mib", "must be at least 1"));
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
        if self.reconcile.sample < 1 {
            return Err(key_error("reconcile.sample", "must be at least 1"));
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
}

fn check_instance_id(id: &str) -> Result<(), ConfigError> {
    let key = "kafka.instance_id";
    if id.is_empty() {
        return Err(key_error(key, "is empty"));
    }
    if id.len() > INSTANCE_ID_MAX_LEN {
        return Err(key_error(
            key,
            format!("is longer than {INSTANCE_ID_MAX_LEN} characters"),
        ));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(key_error(
            key,
            format!("has {bad:?}; only ASCII letters, digits, '.', '_' and '-' are allowed"),
        ));
    }
    Ok(())
}
