//! `pulsehub reconcile`: profiles replayed from the archive through the
//! timeline of plugin versions, compared attribute by attribute with
//! PostgreSQL, and PostgreSQL with Redis; `--repair` writes what the replay
//! computes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use clap::Args;
use serde_json::json;

use super::backfill::{audited, open, progress_bar};
use super::rebuild::actor;
use super::run::{init_logging, load_config};
use pulsehub::replay::{Discrepancy, PAGE_USERS, Repair, Replay};

/// Discrepancies listed in the report; the counts cover all of them.
const LISTED: usize = 1_000;

/// The exit status of a check that found discrepancies and left them.
const FOUND: u8 = 3;

#[derive(Args)]
pub struct ReconcileArgs {
    /// Check this many profiles, picked at random.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1_000,
        conflicts_with = "all"
    )]
    sample: i64,
    /// Check every profile.
    #[arg(long)]
    all: bool,
    /// Write the recomputed values of what is found wrong (PostgreSQL, then
    /// Redis), and audit it.
    #[arg(long)]
    repair: bool,
    /// Configuration file (TOML); the PULSEHUB_* variables override it.
    #[arg(long, env = "PULSEHUB_CONFIG")]
    config: Option<PathBuf>,
}

pub fn reconcile(args: ReconcileArgs) -> anyhow::Result<ExitCode> {
    if !args.all && args.sample < 1 {
        anyhow::bail!("--sample must be at least 1");
    }
    let (config, _) = load_config(args.config.as_deref())?;
    init_logging(&config);
    super::command_runtime()?.block_on(async {
        let mut replay = open(&config, "reconcile").await?;
        let repair = if args.repair {
            Repair::Found
        } else {
            Repair::No
        };
        let outcome = check(&mut replay, args.all, args.sample, repair).await;
        if !args.repair {
            let (report, code) = outcome?;
            println!(
                "{}",
                serde_json::to_string_pretty(&report).context("printing the report")?
            );
            return Ok(code);
        }
        let options = json!({ "all": args.all, "sample": (!args.all).then_some(args.sample) });
        let store = replay.store.clone();
        audited(&store, &actor(), "reconcile-repair", options, outcome).await
    })
}

/// Checks every profile (`all`) or a sample; returns the report and the
/// exit status: success when nothing wrong is left.
async fn check(
    replay: &mut Replay,
    all: bool,
    sample: i64,
    repair: Repair,
) -> anyhow::Result<(serde_json::Value, ExitCode)> {
    let started = Instant::now();
    let mut found: Vec<Discrepancy> = Vec::new();
    let mut checked = 0;
    let mut repaired = 0;
    let mut by: BTreeMap<(String, String), u64> = BTreeMap::new();
    // A sample is drawn at once and split into pages; `--all` pages
    // through `profiles` by key.
    let mut sampled = match all {
        true => Vec::new(),
        false => replay.store.sample_users(sample).await?,
    }
    .into_iter();
    let total = match all {
        true => u64::try_from(replay.store.count_profiles(None).await?).unwrap_or(0),
        false => sampled.len() as u64,
    };
    let bar = progress_bar("profiles", total, 0);
    let mut after: Option<String> = None;
    loop {
        let page: Vec<String> = match all {
            true => {
                replay
                    .store
                    .profile_users_after(after.as_deref(), PAGE_USERS)
                    .await?
            }
            false => sampled.by_ref().take(PAGE_USERS as usize).collect(),
        };
        let Some(last) = page.last().cloned() else {
            break;
        };
        let report = replay.check_page(&page, repair, false).await?;
        checked += report.checked;
        repaired += report.repaired;
        for d in report.discrepancies {
            *by.entry((d.store.to_owned(), d.attribute.clone()))
                .or_default() += 1;
            found.push(d);
        }
        bar.inc(page.len() as u64);
        after = Some(last);
    }
    bar.finish_and_clear();
    let count = found.len();
    let by_store: Vec<serde_json::Value> = by
        .into_iter()
        .map(|((store, attribute), n)| json!({"store": store, "attribute": attribute, "count": n}))
        .collect();
    found.truncate(LISTED);
    let report = json!({
        "checked": checked,
        "events": replay.counts.events,
        "discrepancies": count,
        "by_attribute": by_store,
        "found": found,
        "repaired": repaired,
        "retried": replay.counts.retried,
        "plugin_failures": replay.replayer.failures,
        "seconds": started.elapsed().as_secs_f64(),
    });
    let code = if count == 0 || repair == Repair::Found {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(FOUND)
    };
    Ok((report, code))
}
