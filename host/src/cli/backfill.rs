//! `pulsehub backfill`: one plugin version run over the archive, so that its
//! attributes are what they would be had it seen every event from the
//! start; and the parts `reconcile` and `rebuild --profiles` share.
//!
//! The backfill recomputes, user by user, the plugin's attributes from the
//! user's archived events (see `pulsehub::replay`), while the pipeline
//! runs: a new plugin gets its history added, a replaced version's history
//! is recomputed, and counting nothing twice follows from recomputing
//! rather than adding. Its progress (the last user done, in byte order)
//! moves in the transaction of each page's profiles, so a backfill stopped
//! anywhere, even by SIGKILL, goes on from its last page when run again.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use serde_json::json;

use super::rebuild::{actor, parse_time};
use super::replaying::{audited, open, progress_bar, wait_until_running};
use super::run::{init_logging, load_config};
use pulsehub::replay::{BackfillRecord, PAGE_USERS, Replay};

#[derive(Args)]
pub struct BackfillArgs {
    /// The plugin whose running version is backfilled.
    #[arg(long, value_name = "NAME")]
    plugin: String,
    /// Refuse unless this is the version that runs (a check that the
    /// backfill runs what the operator means).
    #[arg(long, value_name = "VERSION")]
    version: Option<String>,
    /// Only events at or after this time (RFC 3339) count towards the
    /// history; the plugin's output for older ones is dropped.
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Only these users: a file of user ids, one per line.
    #[arg(long, value_name = "FILE")]
    users: Option<PathBuf>,
    /// Events replayed per second at most, so the live pipeline keeps its
    /// share of the machine and the database.
    #[arg(long, value_name = "EVENTS")]
    max_rate: Option<u64>,
    /// Start again from the first user instead of going on from where an
    /// interrupted backfill with the same options stopped.
    #[arg(long)]
    restart: bool,
    /// Configuration file (TOML); the PULSEHUB_* variables override it.
    #[arg(long, env = "PULSEHUB_CONFIG")]
    config: Option<PathBuf>,
}

pub fn backfill(args: BackfillArgs) -> anyhow::Result<ExitCode> {
    let since_ms = args.since.as_deref().map(parse_time).transpose()?;
    if args.max_rate == Some(0) {
        bail!("--max-rate must be at least 1 event per second");
    }
    let users = args.users.as_deref().map(read_users).transpose()?;
    let (config, _) = load_config(args.config.as_deref())?;
    init_logging(&config);
    super::command_runtime()?.block_on(async {
        let mut replay = open(&config, "backfill").await?;
        let actor = actor();
        let options = json!({
            "plugin": args.plugin,
            "version": args.version,
            "since": args.since,
            "users": args.users.as_ref().map(|p| p.display().to_string()),
            "max_rate": args.max_rate,
            "restart": args.restart,
        });
        let outcome = run_backfill(&mut replay, &args, since_ms, users, &actor).await;
        let store = replay.store.clone();
        audited(&store, &actor, "backfill", options, outcome).await
    })
}

async fn run_backfill(
    replay: &mut Replay,
    args: &BackfillArgs,
    since_ms: Option<i64>,
    users: Option<BTreeSet<String>>,
    actor: &str,
) -> anyhow::Result<(serde_json::Value, ExitCode)> {
    let started = Instant::now();
    let plugin = args.plugin.as_str();
    let version = replay.replayer.versions().installed(plugin)?;
    if let Some(wanted) = &args.version
        && *wanted != version
    {
        bail!("--version {wanted}: plugin {plugin} runs version {version}");
    }
    let writes = replay
        .replayer
        .versions()
        .get(plugin, &version)?
        .manifest
        .writes
        .clone();
    let until = wait_until_running(replay, plugin, &version).await?;

    let earlier = replay.store.backfills(&replay.group, &replay.topic).await?;
    let resumable = earlier.into_iter().rev().find(|b| {
        let r = &b.record;
        r.plugin == plugin && r.version == version && !r.finished
    });
    let (record, resumed) = match resumable {
        Some(b) if !args.restart && b.record.since_ms == since_ms && b.record.users == users => {
            (b.record, Some(b.users_done))
        }
        Some(b) if !args.restart => bail!(
            "backfill {} of {plugin} {version} stopped after user {:?} with other options \
             (--since, --users): run it again with those to finish it, or add --restart",
            b.record.id,
            b.record.after_user.unwrap_or_default()
        ),
        _ => {
            let mut record = BackfillRecord {
                id: 0,
                plugin: plugin.to_owned(),
                version: version.clone(),
                since_ms,
                users: users.clone(),
                until,
                finished: false,
                after_user: None,
                page_done: BTreeSet::new(),
            };
            record.id = replay
                .store
                .start_backfill(&replay.group, &replay.topic, &record, actor)
                .await?;
            (record, None)
        }
    };
    let total = match &record.users {
        Some(users) => users.len() as u64,
        None => u64::try_from(replay.store.count_archive_users(&replay.topic).await?).unwrap_or(0),
    };
    let bar = progress_bar("users", total, resumed.map_or(0, |done| done as u64));
    let mut after = record.after_user.clone();
    // The rate counts from the first page, not from the wait before it.
    let paced_from = Instant::now();
    let mut replayed: u64 = 0;
    loop {
        let page: Vec<String> = match &record.users {
            Some(users) => {
                let from = after.as_ref().map_or(std::ops::Bound::Unbounded, |a| {
                    std::ops::Bound::Excluded(a.clone())
                });
                users
                    .range((from, std::ops::Bound::Unbounded))
                    .take(PAGE_USERS as usize)
                    .cloned()
                    .collect()
            }
            None => {
                replay
                    .store
                    .archive_users_after(&replay.topic, after.as_deref(), PAGE_USERS)
                    .await?
            }
        };
        let Some(last) = page.last().cloned() else {
            break;
        };
        let before = replay.counts.events;
        replay.backfill_page(&record, &writes, &page).await?;
        replayed += replay.counts.events - before;
        bar.inc(page.len() as u64);
        bar.set_message(format!("({} events)", replay.counts.events));
        after = Some(last);
        if let Some(rate) = args.max_rate {
            let due = Duration::from_secs_f64(replayed as f64 / rate as f64);
            if let Some(early) = due.checked_sub(paced_from.elapsed()) {
                tokio::time::sleep(early).await;
            }
        }
    }
    replay.store.finish_backfill(record.id).await?;
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let counts = &replay.counts;
    let summary = json!({
        "backfill": record.id,
        "plugin": plugin,
        "version": version,
        "resumed": resumed.is_some(),
        "users": counts.users,
        "events": counts.events,
        "changed": counts.changed,
        "retried": counts.retried,
        "plugin_failures": replay.replayer.failures,
        "seconds": seconds,
        "events_per_second": if seconds > 0.0 { counts.events as f64 / seconds } else { 0.0 },
    });
    Ok((summary, ExitCode::SUCCESS))
}

/// The user ids of a file, one per line (blank lines skipped).
fn read_users(path: &Path) -> anyhow::Result<BTreeSet<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the users of --users {}", path.display()))?;
    let users: BTreeSet<String> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect();
    if users.is_empty() {
        bail!("--users {} names no user", path.display());
    }
    Ok(users)
}
