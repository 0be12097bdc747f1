//! Kafka behind the pipeline's traits: the [`KafkaSource`] the enrich and
//! archive roles read from, the [`KafkaDeadLetters`] sink for bad events, the
//! [`KafkaPublisher`] behind `POST /api/v1/events`, and [`ensure_topic`].
//!
//! Everything speaks the plain Kafka protocol through librdkafka (bundled
//! with the `rdkafka` crate), so Apache Kafka, Redpanda and the development
//! broker (`scripts/broker.sh`) are interchangeable.
//!
//! # Layout
//! - `source`: the consumer and its partition assignment from the store's
//!   offsets; `batches`: its pending batches per lane.
//! - `producer`: the dead-letter sink and the publisher, which share "send
//!   all, then wait for every acknowledgement"; `letters`: the dead letters
//!   read back.

mod batches;
mod context;
mod letters;
mod producer;
mod source;

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::{ClientConfig, FromClientConfigAndContext, RDKafkaLogLevel};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

pub use letters::{group_offsets, read_dead_letters};
pub use producer::{KafkaDeadLetters, KafkaPublisher};
pub use source::{KafkaSource, Membership};

/// How long [`ensure_topic`] waits for the broker to create the topic and
/// for it to show up in the metadata.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Creates `topic` with `partitions` partitions (and the broker's default
/// replication factor) unless it exists, and returns once the broker lists it.
/// An existing topic is left as it is, whatever its partition count.
pub async fn ensure_topic(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<LogContext> =
        AdminClient::from_config_and_context(&client_config(brokers), LogContext)
            .with_context(|| format!("creating a Kafka admin client for {brokers}"))?;
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1));
    let options = AdminOptions::new()
        .request_timeout(Some(ADMIN_TIMEOUT))
        .operation_timeout(Some(ADMIN_TIMEOUT));
    let results = admin
        .create_topics([&new_topic], &options)
        .await
        .with_context(|| format!("creating Kafka topic {topic} on {brokers}"))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => bail!("creating Kafka topic {name} on {brokers}: {code}"),
        }
    }
    let deadline = Instant::now() + ADMIN_TIMEOUT;
    let topic_name = topic.to_owned();
    tokio::task::spawn_blocking(move || wait_listed(&admin, &topic_name, deadline))
        .await
        .context("waiting for the topic metadata")?
        .with_context(|| format!("Kafka topic {topic} on {brokers}"))
}

/// Polls the metadata until `topic` is listed with its partitions: a
/// consumer subscribing right after creation then sees them at once.
fn wait_listed(
    admin: &AdminClient<LogContext>,
    topic: &str,
    deadline: Instant,
) -> anyhow::Result<()> {
    loop {
        let listed = admin
            .inner()
            .fetch_metadata(Some(topic), Duration::from_secs(1))
            .map_err(anyhow::Error::from)
            .and_then(|metadata| match metadata.topics().first() {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(()),
                Some(t) => bail!("not listed yet ({:?})", t.error()),
                None => bail!("not listed yet"),
            });
        match listed {
            Ok(()) => return Ok(()),
            Err(error) if Instant::now() >= deadline => {
                return Err(error.context("created, but the broker does not list it"));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Settings every client shares.
pub(crate) fn client_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("client.id", "pulsehub");
    config
}

/// Client context that sends librdkafka's log lines and errors to `tracing`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LogContext;

impl ClientContext for LogContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        log_line(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        log_error(&error, reason);
    }
}

/// For the plain consumer that reads the dead letters back (no group).
impl rdkafka::consumer::ConsumerContext for LogContext {}

fn log_line(level: RDKafkaLogLevel, facility: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", facility, "{message}"),
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", facility, "{message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", facility, "{message}");
        }
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", facility, "{message}"),
    }
}

/// Client-wide errors are mostly a broker going away and coming back, which
/// librdkafka rides out itself: worth a warning, not an error.
fn log_error(error: &KafkaError, reason: &str) {
    tracing::warn!(target: "librdkafka", "Kafka client: {error}: {reason}");
}
