//! `pulsehub run` and `pulsehub migrate`: the service itself, over
//! [`pulsehub::app`].

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;

use pulsehub::app::{App, Role, Stopped};
use pulsehub::config::{Config, LogFormat};
use pulsehub::pipeline::publish::{EventPublisher, OutgoingEvent};
use pulsehub::store::postgres::PgStore;

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
    super::command_runtime()?.block_on(async {
        let store = PgStore::connect(url, 1)?;
        store.migrate().await?;
        tracing::info!("database migrated");
        Ok(ExitCode::SUCCESS)
    })
}

/// The configuration, with `file` and every path in it made absolute
/// against the working directory, once, here at start-up.
pub(super) fn load_config(file: Option<&Path>) -> anyhow::Result<(Config, Option<PathBuf>)> {
    let file = file
        .map(|f| {
            std::path::absolute(f)
                .with_context(|| format!("resolving the config file path {}", f.display()))
        })
        .transpose()?;
    Ok((Config::load(file.as_deref())?, file))
}

pub(super) fn init_logging(config: &Config) {
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

/// Listens, starts, ingests `--events`, then serves until SIGINT/SIGTERM.
async fn serve(config: Config, args: RunArgs) -> anyhow::Result<ExitCode> {
    let listener = tokio::net::TcpListener::bind(config.http.addr)
        .await
        .with_context(|| {
            format!(
                "listening on {} (configuration key `http.addr`, PULSEHUB_HTTP_ADDR)",
                config.http.addr
            )
        })?;
    let app = App::start(&config, args.role).await?;
    if let Some(file) = &args.events {
        let count = ingest_file(file, app.publisher().as_ref()).await?;
        tracing::info!(file = %file.display(), events = count, "ingested the events file");
    }
    Ok(match app.serve(listener, shutdown_signal()).await? {
        Stopped::Shutdown => ExitCode::SUCCESS,
        Stopped::PipelineFailed => ExitCode::FAILURE,
    })
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
