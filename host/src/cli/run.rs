//! `pulsehub run` and `pulsehub migrate`: the service itself.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use pulsehub::api::{self, AdminToken, ApiLimits, AppState};
use pulsehub::config::{Config, LogFormat, Mode};
use pulsehub::kafka::{KafkaDeadLetters, KafkaPublisher, KafkaSource};
use pulsehub::pipeline::source::Source;
use pulsehub::pipeline::{EnrichTargets, Pipeline, batch_limits};
use pulsehub::plugin::chain::Chain;
use pulsehub::plugin::{HostLimits, QuarantinePolicy, Runtime};
use pulsehub::plugin_ops::audit::{AuditLog, FileAudit};
use pulsehub::plugin_ops::disk::Registry;
use pulsehub::plugin_ops::{ManagerConfig, PluginManager, watch};
use pulsehub::store::embedded::EmbeddedStore;
use pulsehub::store::instrumented;
use pulsehub::store::postgres::PgStore;
use pulsehub::store::reader::ProfileReader;
use pulsehub::store::redis::RedisCache;
use pulsehub::store::{
    DeadLetterSink, EventArchive, EventPublisher, OutgoingEvent, ProfileCache, ProfileStore,
};
use pulsehub::telemetry::{Backend, Metrics};

/// The embedded inbox's consumer groups.
const EMBEDDED_ENRICH_GROUP: &str = "enrich";
const EMBEDDED_ARCHIVE_GROUP: &str = "archive";

#[derive(Args)]
pub struct RunArgs {
    /// What this process runs: everything, or one role of a scaled install.
    #[arg(long, value_enum, default_value_t = Role::All)]
    role: Role,
    /// Configuration file (TOML); the PULSEHUB_* variables override it.
    #[arg(long, env = "PULSEHUB_CONFIG")]
    config: Option<PathBuf>,
    /// Ingest the events of this NDJSON file (one event per line) at start-up.
    #[arg(long)]
    events: Option<PathBuf>,
}

#[derive(Args)]
pub struct MigrateArgs {
    /// Configuration file (TOML); the PULSEHUB_* variables override it.
    #[arg(long, env = "PULSEHUB_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Role {
    /// Every role in one process.
    All,
    /// Consume events, run the plugins, commit profiles.
    Enrich,
    /// Archive raw events in PostgreSQL.
    Archive,
    /// Serve the REST API only (every role serves it, with `/healthz` and
    /// `/readyz` for orchestrators; this one runs nothing else).
    Api,
}

impl Role {
    fn enrich(self) -> bool {
        matches!(self, Role::All | Role::Enrich)
    }
    fn archive(self) -> bool {
        matches!(self, Role::All | Role::Archive)
    }
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let (config, file) = load_config(args.config.as_deref())?;
    config.check_backends()?;
    init_logging(&config);
    tracing::info!(
        config = %file.as_deref().map_or("none (defaults and PULSEHUB_* variables)".into(), |f| f.display().to_string()),
        data_dir = %config.embedded.data_dir.display(),
        plugins_dir = %config.plugins.dir.display(),
        registry_dir = %config.registry_dir().display(),
        "paths"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("pulsehub-io")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(config, args))
}

pub fn migrate(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let (config, _) = load_config(args.config.as_deref())?;
    init_logging(&config);
    let Some(url) = config.database.url.as_deref() else {
        bail!(
            "configuration key `database.url` (PULSEHUB_DATABASE_URL) is not set: nothing to migrate"
        );
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let store = PgStore::connect(url, 1)?;
        store.migrate().await?;
        tracing::info!("database migrated");
        Ok(ExitCode::SUCCESS)
    })
}

/// The configuration, with `file` and every path in it made absolute
/// against the working directory, once, here at start-up.
fn load_config(file: Option<&Path>) -> anyhow::Result<(Config, Option<PathBuf>)> {
    let file = file
        .map(|f| {
            std::path::absolute(f)
                .with_context(|| format!("resolving the config file path {}", f.display()))
        })
        .transpose()?;
    Ok((Config::load(file.as_deref())?, file))
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match config.log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// The enrich role's source, consumer group and dead-letter sink.
struct EnrichPart {
    source: Arc<dyn Source>,
    group: String,
    dead_letters: Arc<dyn DeadLetterSink>,
}

/// What one process runs, wired to its backends.
struct Parts {
    store: Arc<dyn ProfileStore>,
    cache: Option<Arc<dyn ProfileCache>>,
    publisher: Arc<dyn EventPublisher>,
    enrich: Option<EnrichPart>,
    archive: Option<(Arc<dyn Source>, Arc<dyn EventArchive>)>,
    /// Where plugin changes are audited.
    audit: Arc<dyn AuditLog>,
    lanes: usize,
    description: String,
}

impl Parts {
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

async fn serve(config: Config, args: RunArgs) -> anyhow::Result<ExitCode> {
    let role = args.role;
    let metrics = Arc::new(Metrics::new());
    let parts = match config.mode() {
        Mode::Embedded => embedded(&config, role)?,
        Mode::Services => services(&config, role).await?,
    }
    .instrumented(config.mode(), &metrics);
    let stop = CancellationToken::new();
    let (chain, manager) = plugins(&config, role, &metrics, parts.audit.clone(), &stop).await?;
    let limits = batch_limits(
        config.pipeline.batch_max_events,
        config.pipeline.batch_max_wait_ms,
    );
    let mut pipelines = Vec::new();
    if let Some(EnrichPart {
        source,
        group,
        dead_letters,
    }) = parts.enrich
    {
        let targets = EnrichTargets {
            store: parts.store.clone(),
            cache: parts.cache.clone(),
            dead_letters,
        };
        let pipeline = Pipeline::enrich(
            source,
            &group,
            &chain,
            targets,
            parts.lanes,
            limits,
            Handle::current(),
        )?;
        pipelines.push(pipeline);
    }
    if let Some((source, archive)) = parts.archive {
        pipelines.push(Pipeline::archive(
            source,
            archive,
            metrics.clone(),
            parts.lanes,
            limits,
            Handle::current(),
        )?);
    }
    // A pipeline whose source fails stops the process.
    for pipeline in &pipelines {
        let (failed, stop) = (pipeline.stop_token(), stop.clone());
        tokio::spawn(async move {
            failed.cancelled().await;
            stop.cancel();
        });
    }

    if let Some(file) = &args.events {
        let count = ingest_file(file, parts.publisher.as_ref()).await?;
        tracing::info!(file = %file.display(), events = count, "ingested the events file");
    }

    // Every role serves HTTP: orchestrators probe /healthz and /readyz.
    let api_task = {
        let listener = tokio::net::TcpListener::bind(config.http.addr)
            .await
            .with_context(|| {
                format!(
                    "listening on {} (configuration key `http.addr`, PULSEHUB_HTTP_ADDR)",
                    config.http.addr
                )
            })?;
        let address = listener.local_addr()?;
        let state = AppState {
            profiles: Arc::new(
                ProfileReader::new(parts.store.clone(), parts.cache.clone())
                    .with_metrics(metrics.clone()),
            ),
            store: parts.store.clone(),
            cache: parts.cache.clone(),
            publisher: parts.publisher.clone(),
            chain: chain.clone(),
            metrics: metrics.clone(),
            manager,
            admin_token: config.admin.token.as_deref().map(AdminToken::new),
            limits: ApiLimits {
                max_upload_bytes: config.plugins.max_component_bytes + (1 << 20),
                admin_timeout: Duration::from_millis(config.plugins.validate_timeout_ms)
                    + Duration::from_secs(30),
                ..ApiLimits::from(&config.http)
            },
        };
        tracing::info!(
            "PulseHub is running ({}); API on http://{address}/api/v1 \
             (try: curl http://{address}/api/v1/profiles/u-42)",
            parts.description
        );
        tokio::spawn(api::serve(listener, state, stop.clone()))
    };

    tokio::select! {
        () = shutdown_signal() => tracing::info!("shutting down"),
        () = stop.cancelled() => tracing::error!("a pipeline stopped; shutting down"),
    }
    let failed = stop.is_cancelled();
    stop.cancel();
    match api_task.await {
        Ok(Err(error)) => tracing::error!("API server: {error:#}"),
        Err(error) => tracing::error!("API server task: {error}"),
        Ok(Ok(())) => {}
    }
    tokio::task::spawn_blocking(move || pipelines.into_iter().for_each(Pipeline::shutdown))
        .await
        .context("stopping the pipelines")?;
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn embedded(config: &Config, role: Role) -> anyhow::Result<Parts> {
    let dir = &config.embedded.data_dir;
    let store = EmbeddedStore::open(dir)
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
    Ok(Parts {
        store: Arc::new(store.clone()),
        cache: None,
        publisher: Arc::new(store),
        enrich,
        archive,
        audit: Arc::new(FileAudit::new(&dir.join("audit.log"))),
        // The inbox is one partition, hence one lane.
        lanes: 1,
        description: format!("embedded, data in {}", dir.display()),
    })
}

async fn services(config: &Config, role: Role) -> anyhow::Result<Parts> {
    let (Some(brokers), Some(url)) = (&config.kafka.brokers, &config.database.url) else {
        bail!("services mode needs `kafka.brokers` and `database.url`");
    };
    let store = PgStore::connect(url, config.database.max_connections)?;
    if config.database.migrate {
        with_patience("migrating the database", || store.migrate()).await?;
    }
    let store: Arc<PgStore> = Arc::new(store);
    let audit_log: Arc<dyn AuditLog> = store.clone();
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
    let enrich = if role.enrich() {
        let offsets: Arc<dyn ProfileStore> = store.clone();
        let source: Arc<dyn Source> = Arc::new(KafkaSource::new(
            brokers,
            &kafka.topic,
            &kafka.group,
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
            None,
        )?);
        let archive: Arc<dyn EventArchive> = store.clone();
        Some((source, archive))
    } else {
        None
    };
    Ok(Parts {
        store,
        cache,
        publisher: Arc::new(KafkaPublisher::new(brokers, &kafka.topic)?),
        enrich,
        archive,
        audit: audit_log,
        lanes: config.lanes(),
        description: format!("topic {} on {brokers}, group {}", kafka.topic, kafka.group),
    })
}

/// Retries a start-up step for up to a minute, so that PulseHub may start
/// before its database does.
async fn with_patience<F, Fut>(what: &str, mut step: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let started = Instant::now();
    loop {
        match step().await {
            Ok(()) => return Ok(()),
            Err(error) if started.elapsed() < Duration::from_secs(60) => {
                tracing::warn!("{what} failed, retrying: {error:#}");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(error) => return Err(error.context(format!("{what} (gave up after 60 s)"))),
        }
    }
}

/// The plugin chain and, where this process runs plugins, the manager of
/// their live changes: the registry's active set restored, the plugin
/// directory read (a refused pair stops the start) and watched, and
/// quarantines handled.
async fn plugins(
    config: &Config,
    role: Role,
    metrics: &Arc<Metrics>,
    audit: Arc<dyn AuditLog>,
    stop: &CancellationToken,
) -> anyhow::Result<(Arc<Chain>, Option<Arc<PluginManager>>)> {
    let settings = &config.plugins;
    let policy = QuarantinePolicy {
        window: Duration::from_secs(settings.quarantine_window_secs),
        min_events: settings.quarantine_min_events,
        max_failure_ratio: settings.quarantine_failure_percent as f64 / 100.0,
    };
    if !role.enrich() {
        let chain = Chain::configure(
            Runtime::new(HostLimits::default())?,
            metrics.clone(),
            policy,
        );
        return Ok((chain, None));
    }
    let registry = Registry::open(&config.registry_dir())?;
    let runtime = Runtime::with_cache(HostLimits::default(), &registry.compiled_dir())?;
    let chain = Chain::configure(runtime, metrics.clone(), policy);
    let (trips, tripped) = tokio::sync::mpsc::unbounded_channel();
    chain.on_trip(trips);
    let manager_config = ManagerConfig {
        keep_versions: settings.keep_versions,
        max_component_bytes: settings.max_component_bytes,
        validate_timeout: Duration::from_millis(settings.validate_timeout_ms),
        auto_rollback_within: Duration::from_secs(settings.auto_rollback_within_secs),
    };
    let started = Instant::now();
    let manager = PluginManager::start(chain.clone(), registry, manager_config, audit).await?;
    manager.handle_trips(tripped);
    manager.scan_dir(&settings.dir, true).await?;
    let active = chain.plugins();
    tracing::info!(
        plugins = active.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "plugins ready"
    );
    if active.is_empty() {
        tracing::warn!(
            dir = %settings.dir.display(),
            "no plugins found: profiles will stay empty (build them with `cargo xtask plugins`)"
        );
    }
    if settings.watch {
        watch::watch(manager.clone(), &settings.dir, stop.clone())?;
    }
    Ok((chain, Some(manager)))
}

/// Publishes every non-empty line of an NDJSON file, in chunks. Lines that
/// are not valid events are published too: the pipeline sends them to the
/// dead letters with the reason, as it would for any producer.
async fn ingest_file(file: &Path, publisher: &dyn EventPublisher) -> anyhow::Result<usize> {
    let text = tokio::fs::read(file)
        .await
        .with_context(|| format!("reading events file {}", file.display()))?;
    let mut count = 0;
    let mut chunk = Vec::new();
    for line in text.split(|&b| b == b'\n') {
        let line = line.trim_ascii();
        if line.is_empty() {
            continue;
        }
        let key = serde_json::from_slice::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get("user_id")?.as_str().map(str::to_owned))
            .unwrap_or_default();
        chunk.push(OutgoingEvent {
            key,
            payload: line.to_vec(),
        });
        if chunk.len() == 1_000 {
            count += chunk.len();
            publisher.publish(&std::mem::take(&mut chunk)).await?;
        }
    }
    if !chunk.is_empty() {
        count += chunk.len();
        publisher.publish(&chunk).await?;
    }
    Ok(count)
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
