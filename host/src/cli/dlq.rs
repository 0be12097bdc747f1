//! `pulsehub dlq list`: the dead letters counted by why they died, with
//! samples, from `<topic>.dlq` (or the embedded store's dead-letter table
//! when no broker is configured). With PostgreSQL configured, letters
//! `dlq redrive` applied are counted apart (`redriven`) and those that
//! failed again are shown with their latest error. `dlq redrive` is in
//! `redrive.rs`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand, ValueEnum};
use pulsehub::kafka::read_dead_letters;
use pulsehub::pipeline::dead_letter::{DeadLetter, DeadReason, LetterSummary};
use pulsehub::store::embedded::{self, EmbeddedStore};
use pulsehub::store::postgres::PgStore;
use pulsehub::store::postgres::redrive::RedriveOutcome;

use super::run::{init_logging, load_config};

#[derive(Subcommand)]
pub enum DlqCommand {
    /// Count the dead letters by reason, plugin version and error kind, with
    /// the first few of each (where they came from, why): JSON on stdout.
    List(ListArgs),
    /// Run the plugin's current version over the events it was
    /// dead-lettered on and add its output to the profiles, exactly once;
    /// letters that fail again stay, with the new error. Needs PostgreSQL
    /// and the broker. JSON summary on stdout.
    Redrive(super::redrive::RedriveArgs),
}

#[derive(Args)]
pub struct ListArgs {
    /// Only letters of this reason.
    #[arg(long, value_enum)]
    reason: Option<Reason>,
    /// Only the failures of this plugin (any version).
    #[arg(long, value_name = "NAME")]
    plugin: Option<String>,
    /// Letters shown per group.
    #[arg(long, default_value_t = 3)]
    samples: usize,
    /// Configuration file (TOML); the PULSEHUB_* variables override it.
    #[arg(long, env = "PULSEHUB_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Reason {
    /// The event broke the wire format (never re-driven).
    BadEvent,
    /// A plugin failed on it.
    PluginError,
}

pub fn run(command: DlqCommand) -> anyhow::Result<ExitCode> {
    match command {
        DlqCommand::List(args) => list(args),
        DlqCommand::Redrive(args) => super::redrive::redrive(args),
    }
}

fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let (config, _) = load_config(args.config.as_deref())?;
    init_logging(&config);
    let mut summary = LetterSummary::new(args.samples);
    let wanted = |letter: &DeadLetter| {
        let reason = match &letter.reason {
            DeadReason::BadEvent { .. } => Reason::BadEvent,
            DeadReason::PluginError { .. } => Reason::PluginError,
        };
        let plugin = letter.reason.plugin_failure().map(|(plugin, _, _)| plugin);
        args.reason.is_none_or(|wanted| wanted == reason)
            && args
                .plugin
                .as_deref()
                .is_none_or(|wanted| plugin == Some(wanted))
    };
    let source = match config.kafka.brokers.as_deref() {
        Some(brokers) => {
            let topic = config.kafka.dlq_topic();
            let redriven = redrive_outcomes(&config)?;
            read_dead_letters(brokers, &topic, |letter| match letter {
                Ok(mut letter) if wanted(&letter) => {
                    let key = letter
                        .reason
                        .plugin_failure()
                        .map(|(plugin, _, _)| (plugin.to_owned(), letter.partition, letter.offset));
                    match key.and_then(|key| redriven.get(&key)) {
                        Some(outcome) => match &outcome.error {
                            None => summary.add_redriven(),
                            Some((kind, detail)) => {
                                // Failed again: shown with its new error.
                                if let DeadReason::PluginError {
                                    plugin_version,
                                    kind: old_kind,
                                    detail: old_detail,
                                    ..
                                } = &mut letter.reason
                                {
                                    plugin_version.clone_from(&outcome.version);
                                    *old_kind = kind.parse().unwrap_or(*old_kind);
                                    old_detail.clone_from(detail);
                                }
                                summary.add(letter);
                            }
                        },
                        None => summary.add(letter),
                    }
                }
                Ok(_) => {}
                // Filtered reads leave out what they cannot classify.
                Err(why) if args.reason.is_none() && args.plugin.is_none() => {
                    tracing::warn!("a message of {topic} is not a PulseHub dead letter: {why}");
                    summary.add_unreadable();
                }
                Err(_) => {}
            })?;
            topic
        }
        None => {
            let file = config.embedded.data_dir.join(embedded::FILE_NAME);
            if !file.exists() {
                bail!(
                    "no broker is configured (kafka.brokers, PULSEHUB_KAFKA_BROKERS) and there \
                     is no embedded store at {} (embedded.data_dir, PULSEHUB_DATA_DIR)",
                    file.display()
                );
            }
            let cache_bytes = config.embedded.cache_mib.saturating_mul(1 << 20);
            let store = EmbeddedStore::open_with_cache(&config.embedded.data_dir, cache_bytes)?;
            let letters = store
                .dead_letters()
                .context("reading the embedded store's dead letters")?;
            for letter in letters.into_iter().filter(|letter| wanted(letter)) {
                summary.add(letter);
            }
            config.embedded.data_dir.display().to_string()
        }
    };
    let mut report = summary.to_json();
    report["source"] = source.into();
    println!(
        "{}",
        serde_json::to_string_pretty(&report).context("printing the summary")?
    );
    Ok(ExitCode::SUCCESS)
}

/// What `dlq redrive` recorded of each letter it ran, when PostgreSQL is
/// configured (none otherwise).
fn redrive_outcomes(
    config: &pulsehub::config::Config,
) -> anyhow::Result<HashMap<(String, i32, i64), RedriveOutcome>> {
    let Some(url) = config.database.url.as_deref() else {
        return Ok(HashMap::new());
    };
    super::command_runtime()?.block_on(async {
        let store = PgStore::connect(url, 1)?;
        if config.database.migrate {
            store.migrate().await?;
        }
        let outcomes = store
            .redrive_outcomes(&config.kafka.group, &config.kafka.topic)
            .await?;
        Ok(outcomes)
    })
}
