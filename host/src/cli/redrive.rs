//! `pulsehub dlq redrive --plugin NAME [--since TIME]`: the plugin's
//! current version run over the events it was dead-lettered on, its output
//! added to the profiles exactly once (see `pulsehub::replay::Letter`).
//! Letters that fail again stay, with their new error; undecodable events
//! (`bad-event`) are counted and never re-driven.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use clap::Args;
use serde_json::json;

use super::rebuild::{actor, parse_time};
use super::replaying::{audited, open, progress_bar, wait_until_running};
use super::run::{init_logging, load_config};
use pulsehub::kafka::read_dead_letters;
use pulsehub::model::event::Event;
use pulsehub::pipeline::dead_letter::{DeadLetter, DeadReason};
use pulsehub::replay::{At, Letter, PAGE_USERS, Replay};

/// Letters shown in the summary's `failed_again` sample.
const FAILED_SAMPLES: usize = 3;

#[derive(Args)]
pub struct RedriveArgs {
    /// The plugin whose dead letters are re-driven, with the version that
    /// runs now.
    #[arg(long, value_name = "NAME")]
    plugin: String,
    /// Only letters of events at or after this time (RFC 3339, the event's
    /// own `timestamp`).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Configuration file (TOML); the PULSEHUB_* variables override it.
    #[arg(long, env = "PULSEHUB_CONFIG")]
    config: Option<PathBuf>,
}

pub fn redrive(args: RedriveArgs) -> anyhow::Result<ExitCode> {
    let since_ms = args.since.as_deref().map(parse_time).transpose()?;
    let (config, _) = load_config(args.config.as_deref())?;
    init_logging(&config);
    super::command_runtime()?.block_on(async {
        let mut replay = open(&config, "dlq redrive").await?;
        let options = json!({ "plugin": args.plugin, "since": args.since });
        let dlq_topic = config.kafka.dlq_topic();
        let outcome = run_redrive(&mut replay, &args.plugin, since_ms, &dlq_topic).await;
        let store = replay.store.clone();
        audited(&store, &actor(), "dlq-redrive", options, outcome).await
    })
}

/// The dead letters of one plugin on the pipeline's topic, as read.
#[derive(Default)]
struct Mail {
    /// User to the letters to run, one per event.
    letters: BTreeMap<String, Vec<Letter>>,
    /// Letters of the plugin read (duplicates of one event included).
    read: u64,
    /// Events applied by an earlier re-drive.
    already: u64,
    /// Letters of events older than `--since`.
    older: u64,
    /// `bad-event` letters of the topic: listed by `dlq list`, never
    /// re-driven.
    bad_events: u64,
    /// Letters whose event no longer decodes.
    undecodable: u64,
}

async fn run_redrive(
    replay: &mut Replay,
    plugin: &str,
    since_ms: Option<i64>,
    dlq_topic: &str,
) -> anyhow::Result<(serde_json::Value, ExitCode)> {
    let started = Instant::now();
    let version = replay.replayer.versions().installed(plugin)?;
    wait_until_running(replay, plugin, &version).await?;
    let mail = read_mail(replay, plugin, since_ms, dlq_topic).await?;
    let total: u64 = mail.letters.values().map(|l| l.len() as u64).sum();
    let bar = progress_bar("letters", total, 0);
    let (mut applied, mut covered, mut uncommitted, mut changed) = (0, 0, 0, 0);
    let mut suppressed = 0;
    let mut failed = Vec::new();
    let users: Vec<&String> = mail.letters.keys().collect();
    for page in users.chunks(PAGE_USERS as usize) {
        let letters: Vec<Letter> = page
            .iter()
            .flat_map(|user| mail.letters[*user].iter().cloned())
            .collect();
        let report = replay.redrive_page(plugin, &version, &letters).await?;
        applied += report.applied;
        covered += report.covered;
        uncommitted += report.uncommitted;
        suppressed += report.suppressed;
        changed += report.changed;
        failed.extend(report.failed);
        bar.inc(letters.len() as u64);
    }
    bar.finish_and_clear();
    let samples: Vec<serde_json::Value> = failed
        .iter()
        .take(FAILED_SAMPLES)
        .map(|outcome| {
            let (kind, detail) = outcome.error.clone().unwrap_or_default();
            json!({
                "partition": outcome.partition,
                "offset": outcome.offset,
                "user": outcome.user_id,
                "error_kind": kind,
                "detail": detail,
            })
        })
        .collect();
    let summary = json!({
        "plugin": plugin,
        "version": version,
        "dead_letter_topic": dlq_topic,
        "letters": mail.read,
        "events": total,
        "applied": applied,
        "failed_again": failed.len(),
        "already_applied": mail.already,
        "covered_by_backfill": covered,
        "not_yet_committed": uncommitted,
        "left_suppressed": suppressed,
        "older_than_since": mail.older,
        "undecodable": mail.undecodable,
        "bad_events": mail.bad_events,
        "changed": changed,
        "retried": replay.counts.retried,
        "failed_samples": samples,
        "seconds": started.elapsed().as_secs_f64(),
    });
    Ok((summary, ExitCode::SUCCESS))
}

/// Reads the dead-letter topic to its end and keeps the letters of
/// `plugin` on the pipeline's topic not applied before, one per event.
async fn read_mail(
    replay: &Replay,
    plugin: &str,
    since_ms: Option<i64>,
    dlq_topic: &str,
) -> anyhow::Result<Mail> {
    let brokers = replay.archive.brokers.clone();
    let (topic, wanted_plugin) = (replay.topic.clone(), plugin.to_owned());
    let dlq = dlq_topic.to_owned();
    let letters: Vec<DeadLetter> = tokio::task::spawn_blocking(move || {
        let mut kept = Vec::new();
        read_dead_letters(&brokers, &dlq, |letter| {
            // Messages PulseHub did not write are `dlq list`'s to report.
            if let Ok(letter) = letter
                && letter.topic == topic
                && match &letter.reason {
                    DeadReason::BadEvent { .. } => true,
                    DeadReason::PluginError { plugin, .. } => *plugin == wanted_plugin,
                }
            {
                kept.push(letter);
            }
        })
        .map(|()| kept)
    })
    .await
    .context("reading the dead letters")??;
    let done = replay
        .store
        .redrive_outcomes(&replay.group, &replay.topic)
        .await?;
    let mut mail = Mail::default();
    let mut seen = HashSet::new();
    for letter in letters {
        if matches!(letter.reason, DeadReason::BadEvent { .. }) {
            mail.bad_events += 1;
            continue;
        }
        mail.read += 1;
        // A batch that ran again after a crash dead-letters its events
        // again: one event, one re-drive.
        if !seen.insert((letter.partition, letter.offset)) {
            continue;
        }
        let applied = done
            .get(&(plugin.to_owned(), letter.partition, letter.offset))
            .is_some_and(|outcome| outcome.error.is_none());
        if applied {
            mail.already += 1;
            continue;
        }
        let fallback = || format!("{}-{}-{}", letter.topic, letter.partition, letter.offset);
        let event = match Event::from_json(&letter.payload, fallback) {
            Ok(event) => event,
            Err(error) => {
                tracing::warn!(
                    partition = letter.partition,
                    offset = letter.offset,
                    "a dead letter of {plugin} does not decode as an event: {error}"
                );
                mail.undecodable += 1;
                continue;
            }
        };
        if since_ms.is_some_and(|since| event.timestamp_ms < since) {
            mail.older += 1;
            continue;
        }
        let at = At {
            partition: letter.partition,
            offset: letter.offset,
            time_ms: event.timestamp_ms,
        };
        mail.letters
            .entry(event.user_id.clone())
            .or_default()
            .push(Letter { event, at });
    }
    Ok(mail)
}
