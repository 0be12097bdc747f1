//! All the wiring: the one place that builds backends, the plugin chain and
//! its manager, the pipelines and the API server from a [`Config`].
//!
//! [`run`] is what `pulsehub run` calls, and what a test can call in-process
//! on `127.0.0.1:0`:
//!
//! ```no_run
//! # async fn example(config: pulsehub::config::Config) -> anyhow::Result<()> {
//! use pulsehub::app::{self, Role};
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let stop = tokio_util::sync::CancellationToken::new();
//! app::run(config, Role::All, listener, stop.cancelled_owned()).await?;
//! # Ok(())
//! # }
//! ```

mod backends;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AdminToken, ApiLimits, AppState};
use crate::config::Config;
use crate::model::identity::Rules;
use crate::pipeline::publish::EventPublisher;
use crate::pipeline::{EnrichTargets, Pipeline, Setup, batch_limits};
use crate::plugin::chain::Chain;
use crate::plugin::{HostLimits, QuarantinePolicy, Runtime};
use crate::plugin_ops::audit::AuditLog;
use crate::plugin_ops::registry::Registry;
use crate::plugin_ops::{ManagerConfig, PluginManager, watch};
use crate::privacy::Privacy;
use crate::replay;
use crate::store::reader::ProfileReader;
use crate::telemetry::Metrics;
use backends::{EnrichPart, Parts};

/// How soon a segment another process defined is evaluated here, and how
/// often the memberships that came due are re-evaluated.
const SEGMENT_REFRESH: Duration = Duration::from_secs(1);

/// What one process runs: everything, or one role of a scaled install.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
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
    /// Whether this role consumes, runs the plugins and commits profiles.
    pub fn enrich(self) -> bool {
        matches!(self, Role::All | Role::Enrich)
    }

    /// Whether this role archives raw events.
    pub fn archive(self) -> bool {
        matches!(self, Role::All | Role::Archive)
    }
}

/// How a running PulseHub ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Asked to stop (the shutdown future completed).
    Shutdown,
    /// A pipeline's source failed for good, which stops the process.
    PipelineFailed,
}

/// Starts PulseHub for `role` on `config`'s backends, serves the API on
/// `listener`, and runs until `shutdown` completes or a pipeline fails.
pub async fn run(
    config: Config,
    role: Role,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<Stopped> {
    App::start(&config, role)
        .await?
        .serve(listener, shutdown)
        .await
}

/// A started PulseHub: backends connected, plugins loaded, pipelines
/// running; the API not yet served.
pub struct App {
    state: AppState,
    pipelines: Vec<Pipeline>,
    /// Cancelled when a pipeline fails, and at shutdown.
    stop: CancellationToken,
    description: String,
}

impl App {
    /// Connects the backends, restores and loads the plugins, and starts
    /// the pipelines `role` runs.
    pub async fn start(config: &Config, role: Role) -> anyhow::Result<App> {
        let reconciles = role.archive() && config.reconcile.interval_secs > 0;
        if reconciles && (config.database.url.is_none() || config.kafka.brokers.is_none()) {
            anyhow::bail!(
                "configuration key `reconcile.interval_secs` (PULSEHUB_RECONCILE_INTERVAL_SECS) \
                 is set, but the scheduled reconcile replays the archive the archive role keeps \
                 in PostgreSQL: it needs `database.url` and `kafka.brokers` (the embedded mode \
                 keeps no archive)"
            );
        }
        let metrics = Arc::new(Metrics::new());
        let parts = Parts::build(config, role, &metrics).await?;
        // The commits evaluate the segments from the first batch on.
        parts
            .segments
            .refresh()
            .await
            .map_err(|error| error.0.context("reading the segment definitions"))?;
        let stop = CancellationToken::new();
        let (chain, manager) = plugins(config, role, &metrics, parts.audit.clone(), &stop).await?;
        let identity = Arc::new(Rules::new(&config.identity)?);
        let setup = Setup {
            metrics: metrics.clone(),
            lanes: parts.lanes,
            limits: batch_limits(
                config.pipeline.batch_max_events,
                config.pipeline.batch_max_users,
                config.pipeline.batch_max_mib,
                config.pipeline.batch_max_wait_ms,
            ),
            profile_cache_bytes: config.pipeline.profile_cache_mib.saturating_mul(1 << 20),
            runtime: Handle::current(),
            identity: identity.clone(),
            privacy: parts.privacy.clone(),
        };
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
            pipelines.push(Pipeline::enrich(
                source,
                &group,
                &chain,
                targets,
                setup.clone(),
            )?);
        }
        if let Some((source, archive)) = parts.archive {
            pipelines.push(Pipeline::archive(source, archive, setup)?);
        }
        tokio::spawn(parts.segments.clone().watch(SEGMENT_REFRESH, stop.clone()));
        if role.enrich() {
            // Time-relative segments change with no event: re-evaluated
            // where profiles are committed (PostgreSQL shares the work
            // among the enrich processes, row by row).
            tokio::spawn(parts.segments.clone().schedule(
                parts.cache.clone(),
                crate::model::profile::now_ms,
                SEGMENT_REFRESH,
                stop.clone(),
            ));
        }
        if let Some(relay) = parts.relay {
            tokio::spawn(relay.run(stop.clone()));
        }
        if let Some(dispatcher) = parts.dispatcher {
            tokio::spawn(Arc::new(dispatcher).run(stop.clone()));
        }
        if reconciles {
            tokio::spawn(replay::run_scheduled(
                config.clone(),
                metrics.clone(),
                stop.clone(),
            ));
        }
        // A pipeline whose source fails stops the process.
        for pipeline in &pipelines {
            let (failed, stop) = (pipeline.stop_token(), stop.clone());
            tokio::spawn(async move {
                failed.cancelled().await;
                stop.cancel();
            });
        }
        let state = AppState {
            profiles: Arc::new(
                ProfileReader::new(parts.store.clone(), parts.cache.clone())
                    .with_metrics(metrics.clone()),
            ),
            store: parts.store,
            cache: parts.cache.clone(),
            publisher: parts.publisher,
            chain,
            metrics,
            manager,
            admin_token: config.admin.token.as_deref().map(AdminToken::new),
            limits: ApiLimits::new(&config.http, &config.plugins),
            identity,
            privacy: Privacy {
                store: parts.privacy,
                cache: parts.cache,
            },
            segments: parts.segments,
            destinations: parts.destinations,
            updates: parts.updates,
            shutdown: stop.clone(),
        };
        Ok(App {
            state,
            pipelines,
            stop,
            description: parts.description,
        })
    }

    /// Where events are published: the topic, or the embedded inbox.
    pub fn publisher(&self) -> &Arc<dyn EventPublisher> {
        &self.state.publisher
    }

    /// Serves the API on `listener` until `shutdown` completes or a pipeline
    /// fails, then stops the server and the pipelines (each lane finishes
    /// its batch).
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<Stopped> {
        let App {
            state,
            pipelines,
            stop,
            description,
        } = self;
        let address = listener.local_addr()?;
        tracing::info!(
            "PulseHub is running ({description}); API on http://{address}/api/v1 \
             (try: curl http://{address}/api/v1/profiles/u-42)"
        );
        // Privacy requests a stop left unfinished.
        let privacy = state.privacy.clone();
        tokio::spawn(async move { privacy.resume().await });
        // Every role serves HTTP: orchestrators probe /healthz and /readyz.
        let api_task = tokio::spawn(api::serve(listener, state, stop.clone()));
        tokio::select! {
            () = shutdown => tracing::info!("shutting down"),
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
            .map_err(|error| anyhow::anyhow!("stopping the pipelines: {error}"))?;
        Ok(if failed {
            Stopped::PipelineFailed
        } else {
            Stopped::Shutdown
        })
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
    let policy = QuarantinePolicy::from(settings);
    if !role.enrich() {
        // Plugins do not run here: the chain only answers the API's listing.
        let (chain, _) = Chain::configure(
            Runtime::new(HostLimits::default())?,
            metrics.clone(),
            policy,
        );
        return Ok((chain, None));
    }
    let registry = Registry::open(&config.registry_dir())?;
    let runtime = Runtime::with_cache(HostLimits::default(), &registry.compiled_dir())?;
    let (chain, tripped) = Chain::configure(runtime, metrics.clone(), policy);
    let manager_config = ManagerConfig::from(settings);
    let started = Instant::now();
    let manager = PluginManager::start(
        chain.clone(),
        registry,
        manager_config,
        audit,
        metrics.clone(),
    )
    .await?;
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
        watch(manager.clone(), &settings.dir, stop.clone())?;
    }
    Ok((chain, Some(manager)))
}
