//! What the commands that replay the archive share (`backfill`,
//! `reconcile`, `rebuild --profiles`, `dlq redrive`): their parts opened
//! from the configuration, the wait for a plugin version to run, the
//! progress bar, and the audit of each run.

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use pulsehub::config::Config;
use pulsehub::replay::{History, Replay};
use pulsehub::store::ProfileStore as _;
use pulsehub::store::postgres::PgStore;

/// How long a command waits for the enrich role to run a version on every
/// partition (its first batch there after the upload).
const RUNNING_PATIENCE: Duration = Duration::from_secs(120);

/// Records the outcome in the operation audit and prints the summary.
pub(super) async fn audited(
    store: &PgStore,
    actor: &str,
    operation: &str,
    options: serde_json::Value,
    outcome: anyhow::Result<(serde_json::Value, ExitCode)>,
) -> anyhow::Result<ExitCode> {
    match outcome {
        Ok((mut summary, code)) => {
            summary["options"] = options;
            store
                .audit_operation(actor, operation, "done", &summary)
                .await?;
            println!(
                "{}",
                serde_json::to_string_pretty(&summary).context("printing the summary")?
            );
            Ok(code)
        }
        Err(error) => {
            let detail = json!({ "options": options, "error": format!("{error:#}") });
            if let Err(audit) = store
                .audit_operation(actor, operation, "failed", &detail)
                .await
            {
                tracing::warn!("could not record the failed {operation}: {:#}", audit.0);
            }
            Err(error)
        }
    }
}

/// The parts of a replay, from the configuration of the services mode.
pub(super) async fn open(config: &Config, command: &str) -> anyhow::Result<Replay> {
    let replay = Replay::open(config, command).await?;
    if config.database.migrate {
        replay.store.migrate().await?;
    }
    Ok(replay)
}

/// Waits until the enrich role runs `version` of `plugin` on every
/// partition it has committed, and returns where each such stretch began.
pub(super) async fn wait_until_running(
    replay: &Replay,
    plugin: &str,
    version: &str,
) -> anyhow::Result<std::collections::HashMap<i32, i64>> {
    let started = Instant::now();
    let mut told = false;
    loop {
        let offsets = replay.store.offsets(&replay.group, &replay.topic).await?;
        let timeline = replay.store.timeline(&replay.group, &replay.topic).await?;
        let history = History::new(timeline, Vec::new());
        let running = history.running(plugin);
        let mut waiting: Vec<i32> = offsets
            .keys()
            .filter(|p| running.get(p).is_none_or(|(v, _)| *v != version))
            .copied()
            .collect();
        if waiting.is_empty() {
            return Ok(running
                .into_iter()
                .map(|(partition, (_, from))| (partition, from))
                .collect());
        }
        waiting.sort_unstable();
        if started.elapsed() > RUNNING_PATIENCE {
            bail!(
                "the enrich role has not run {plugin} {version} on partitions {waiting:?} \
                 after {} s; it starts with the first batch of each partition after the \
                 upload (is the enrich role running, and is {plugin} active?)",
                RUNNING_PATIENCE.as_secs()
            );
        }
        if !told {
            tracing::info!(
                "waiting for the enrich role to run {plugin} {version} on partitions {waiting:?}"
            );
            told = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A bar on stderr when it is a terminal (hidden otherwise): `unit`s done
/// of `total`, the message (events replayed), the rate and the time left.
pub(super) fn progress_bar(unit: &str, total: u64, done: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total.max(done));
    let template = format!("{{bar:40}} {{pos}}/{{len}} {unit} {{msg}}, {{per_sec}}, {{eta}} left");
    bar.set_style(
        ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(done);
    bar
}
