//! The backends one process runs on, built from the configuration: the
//! embedded store for everything, or PostgreSQL, Redis and Kafka.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::runtime::Handle;

use super::Role;
use crate::activation::destination::dispatch::Dispatcher;
use crate::activation::destination::{DestinationStore, Destinations, Sender, parse_schedule};
use crate::activation::relay::Relay;
use crate::api::UpdateStream;
use crate::config::{Config, Mode};
use crate::kafka::{KafkaDeadLetters, KafkaPublisher, KafkaSource, Membership};
use crate::pipeline::dead_letter::DeadLetterSink;
use crate::pipeline::publish::EventPublisher;
use crate::pipeline::retry::{Backoff, GaveUp, Until, retry};
use crate::pipeline::source::Source;
use crate::plugin_ops::audit::{AuditLog, FileAudit};
use crate::privacy::PrivacyStore;
use crate::segment::Segments;
use crate::store::embedded::EmbeddedStore;
use crate::store::instrumented;
use crate::store::postgres::PgStore;
use crate::store::redis::RedisCache;
use crate::store::{EventArchive, ProfileCache, ProfileStore};
use crate::telemetry::{Backend, Metrics};

/// The embedded inbox's consumer groups.
const EMBEDDED_ENRICH_GROUP: &str = "enrich";
const EMBEDDED_ARCHIVE_GROUP: &str = "archive";

/// How long start-up waits for the database to accept its migrations.
const MIGRATE_PATIENCE: Duration = Duration::from_secs(60);

/// The enrich role's source, consumer group and dead-letter sink.
pub(super) struct EnrichPart {
    pub(super) source: Arc<dyn Source>,
    pub(super) group: String,
    pub(super) dead_letters: Arc<dyn DeadLetterSink>,
}

/// What one process runs, wired to its backends.
pub(super) struct Parts {
    pub(super) store: Arc<dyn ProfileStore>,
    pub(super) cache: Option<Arc<dyn ProfileCache>>,
    pub(super) publisher: Arc<dyn EventPublisher>,
    pub(super) enrich: Option<EnrichPart>,
    pub(super) archive: Option<(Arc<dyn Source>, Arc<dyn EventArchive>)>,
    /// Where plugin changes are audited.
    pub(super) audit: Arc<dyn AuditLog>,
    /// Privacy requests and suppressions.
    pub(super) privacy: Arc<dyn PrivacyStore>,
    /// The segment definitions, and the live set the store's commits
    /// evaluate.
    pub(super) segments: Segments,
    /// The relay of the `profile-updates` outbox (services mode, enrich
    /// role).
    pub(super) relay: Option<Relay>,
    /// The destinations the API manages (services mode, with the
    /// `profile-updates` stream).
    pub(super) destinations: Option<Destinations>,
    /// Their delivery (services mode, enrich role, with the stream).
    pub(super) dispatcher: Option<Dispatcher>,
    /// Where the API points readers of the `profile-updates` stream.
    pub(super) updates: UpdateStream,
    pub(super) lanes: usize,
    pub(super) description: String,
}

impl Parts {
    /// The backends `config` names, for `role`, each wrapped to record its
    /// calls in `metrics`.
    pub(super) async fn build(
        config: &Config,
        role: Role,
        metrics: &Arc<Metrics>,
    ) -> anyhow::Result<Parts> {
        let parts = match config.mode() {
            Mode::Embedded => embedded(config, role)?,
            Mode::Services => services(config, role, metrics).await?,
        };
        Ok(parts.instrumented(config.mode(), metrics))
    }

    /// Every backend wrapped to record its calls in `metrics`, labelled by
    /// the backend `mode` runs it on.
    fn instrumented(mut self, mode: Mode, metrics: &Arc<Metrics>) -> Parts {
        let (database, cache, kafka) = match mode {
            Mode::Embedded => (Backend::Embedded, Backend::Embedded, Backend::Embedded),
            Mode::Services => (Backend::Postgres, Backend::Redis, Backend::Kafka),
        };
        self.store = instrumented::profile_store(self.store, database, metrics);
        self.cache = self
            .cache
            .map(|c| instrumented::profile_cache(c, cache, metrics));
        self.publisher = instrumented::event_publisher(self.publisher, kafka, metrics);
        if let Some(enrich) = &mut self.enrich {
            enrich.dead_letters =
                instrumented::dead_letter_sink(enrich.dead_letters.clone(), kafka, metrics);
        }
        if let Some((_, archive)) = &mut self.archive {
            *archive = instrumented::event_archive(archive.clone(), database, metrics);
        }
        self
    }
}

fn embedded(config: &Config, role: Role) -> anyhow::Result<Parts> {
    let dir = &config.embedded.data_dir;
    let cache_bytes = config.embedded.cache_mib.saturating_mul(1 << 20);
    let store = EmbeddedStore::open_with_cache(dir, cache_bytes)
        .with_context(|| format!("opening the embedded store in {}", dir.display()))?;
    let enrich = role.enrich().then(|| {
        let source: Arc<dyn Source> = Arc::new(store.source(EMBEDDED_ENRICH_GROUP));
        let dead_letters: Arc<dyn DeadLetterSink> = Arc::new(store.clone());
        EnrichPart {
            source,
            group: EMBEDDED_ENRICH_GROUP.to_owned(),
            dead_letters,
        }
    });
    let archive = role.archive().then(|| {
        let source: Arc<dyn Source> = Arc::new(store.source(EMBEDDED_ARCHIVE_GROUP));
        let archive: Arc<dyn EventArchive> = Arc::new(store.clone());
        (source, archive)
    });
    let segments = Segments {
        store: Arc::new(store.clone()),
        live: store.segments(),
    };
    let updates = if config.activation.profile_updates {
        store.publish_updates();
        UpdateStream::Feed(Arc::new(store.clone()))
    } else {
        UpdateStream::Off
    };
    Ok(Parts {
        store: Arc::new(store.clone()),
        cache: None,
        privacy: Arc::new(store.clone()),
        segments,
        publisher: Arc::new(store),
        enrich,
        archive,
        audit: Arc::new(FileAudit::new(&dir.join("audit.log"))),
        relay: None,
        destinations: None,
        dispatcher: None,
        updates,
        // The inbox is one partition, hence one lane.
        lanes: 1,
        description: format!("embedded, data in {}", dir.display()),
    })
}

async fn services(config: &Config, role: Role, metrics: &Arc<Metrics>) -> anyhow::Result<Parts> {
    let (Some(brokers), Some(url)) = (&config.kafka.brokers, &config.database.url) else {
        bail!("services mode needs `kafka.brokers` and `database.url`");
    };
    let mut store = PgStore::connect(url, config.database.max_connections)?;
    if config.activation.profile_updates {
        // Every role's writes (a privacy request's too) go to the outbox;
        // the enrich role's relay publishes them.
        store.write_outbox();
    }
    let updates =
        (role.enrich() && config.activation.profile_updates).then(|| store.publish_updates());
    if config.database.migrate {
        // PulseHub may start before its database does.
        let migrated = retry(
            "migrating the database",
            Backoff::START_UP,
            Until::Elapsed(MIGRATE_PATIENCE),
            || store.migrate(),
        )
        .await;
        match migrated {
            Ok(()) => {}
            Err(GaveUp::TimedOut(error)) => {
                return Err(error.context(format!(
                    "migrating the database (gave up after {} s)",
                    MIGRATE_PATIENCE.as_secs()
                )));
            }
            // Start-up has no stop token: only the time runs out.
            Err(GaveUp::Stopped) => bail!("migrating the database was stopped"),
        }
    }
    let store: Arc<PgStore> = Arc::new(store);
    let segments = Segments {
        store: store.clone(),
        live: store.segments(),
    };
    let audit_log: Arc<dyn AuditLog> = store.clone();
    let privacy: Arc<dyn PrivacyStore> = store.clone();
    let cache: Option<Arc<dyn ProfileCache>> = match &config.redis.url {
        Some(url) => {
            let cache = RedisCache::connect(
                url,
                &config.redis.key_prefix,
                Duration::from_secs(config.redis.ttl_secs),
            )
            .await?;
            if role.enrich() {
                cache.invalidate_all();
            }
            Some(Arc::new(cache))
        }
        None => None,
    };
    let kafka = &config.kafka;
    let membership = |role: &str| Membership {
        session_timeout: Duration::from_millis(kafka.session_timeout_ms),
        instance_id: kafka.group_instance_id(role),
    };
    let enrich = if role.enrich() {
        let offsets: Arc<dyn ProfileStore> = store.clone();
        let source: Arc<dyn Source> = Arc::new(KafkaSource::new(
            brokers,
            &kafka.topic,
            &kafka.group,
            &membership("enrich"),
            Some((offsets, Handle::current())),
        )?);
        let dead_letters: Arc<dyn DeadLetterSink> =
            Arc::new(KafkaDeadLetters::new(brokers, &kafka.dlq_topic())?);
        Some(EnrichPart {
            source,
            group: kafka.group.clone(),
            dead_letters,
        })
    } else {
        None
    };
    let archive = if role.archive() {
        let source: Arc<dyn Source> = Arc::new(KafkaSource::new(
            brokers,
            &kafka.topic,
            &kafka.archive_group,
            &membership("archive"),
            None,
        )?);
        let archive: Arc<dyn EventArchive> = store.clone();
        Some((source, archive))
    } else {
        None
    };
    let relay = match updates {
        Some(handoff) => Some(Relay {
            pool: store.pool().clone(),
            publisher: Arc::new(KafkaPublisher::new(brokers, &kafka.updates_topic)?),
            handoff,
        }),
        None => None,
    };
    let activation = &config.activation;
    let destinations = if activation.profile_updates {
        Some(Destinations {
            store: DestinationStore::new(store.pool().clone()),
            sender: Sender::new(
                Duration::from_millis(activation.webhook_timeout_ms),
                activation.allow_private_networks,
            )
            .context("building the webhook client")?,
        })
    } else {
        None
    };
    let dispatcher = match &destinations {
        Some(destinations) if role.enrich() => Some(Dispatcher {
            store: destinations.store.clone(),
            sender: destinations.sender.clone(),
            brokers: brokers.clone(),
            topic: kafka.updates_topic.clone(),
            group_prefix: kafka.group.clone(),
            schedule: parse_schedule(&activation.webhook_retry_schedule)
                .map_err(anyhow::Error::msg)
                .context("configuration key `activation.webhook_retry_schedule`")?,
            batch_max: usize::try_from(activation.webhook_batch_max).unwrap_or(usize::MAX),
            metrics: metrics.clone(),
        }),
        _ => None,
    };
    let updates = if config.activation.profile_updates {
        UpdateStream::Topic(kafka.updates_topic.clone())
    } else {
        UpdateStream::Off
    };
    Ok(Parts {
        store,
        cache,
        updates,
        publisher: Arc::new(KafkaPublisher::new(brokers, &kafka.topic)?),
        relay,
        destinations,
        dispatcher,
        enrich,
        archive,
        audit: audit_log,
        privacy,
        segments,
        lanes: config.lanes(),
        description: format!("topic {} on {brokers}, group {}", kafka.topic, kafka.group),
    })
}
