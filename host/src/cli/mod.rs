//! The commands of the `pulsehub` binary.

pub mod backfill;
pub mod dlq;
pub mod plugin;
pub mod rebuild;
pub mod reconcile;
mod redrive;
mod replaying;
pub mod run;
mod scaffold;

/// Logs go to stderr (stdout carries command output), filtered by
/// `PULSEHUB_LOG` (default `info`), as text or, with
/// `PULSEHUB_LOG_FORMAT=json`, as JSON lines.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PULSEHUB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("PULSEHUB_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// The runtime of a one-shot command (`migrate`, `rebuild`, `backfill`,
/// `reconcile`): one thread, timers and I/O.
pub fn command_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context as _;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}
