//! `pulsehub reconcile`: profiles replayed from the archive through the
//! timeline of plugin versions, compared attribute by attribute with
//! PostgreSQL, and PostgreSQL with Redis; `--repair` writes what the replay
//! computes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use clap::Args;
use serde_json::json;

use super::rebuild::actor;
use super::replaying::{audited, open, progress_bar};
use super::run::{init_logging, load_config};
use pulsehub::replay::{Repair, Replay, Scope};

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
    let scope = if all {
        Scope::All
    } else {
        Scope::Sample(sample)
    };
    let total = match scope {
        Scope::All => u64::try_from(replay.store.count_profiles(None).await?).unwrap_or(0),
        Scope::Sample(n) => u64::try_from(n).unwrap_or(0),
    };
    let bar = progress_bar("profiles", total, 0);
    let report = replay.check(scope, repair, |n| bar.inc(n)).await?;
    bar.finish_and_clear();
    let by_store: Vec<serde_json::Value> = report
        .by
        .iter()
        .map(|((store, attribute), n)| json!({"store": store, "attribute": attribute, "count": n}))
        .collect();
    let summary = json!({
        "checked": report.checked,
        "events": replay.counts.events,
        "discrepancies": report.count,
        "by_attribute": by_store,
        "found": report.found,
        "repaired": report.repaired,
        "left_suppressed": report.suppressed,
        "retried": replay.counts.retried,
        "plugin_failures": replay.replayer.failures,
        "seconds": started.elapsed().as_secs_f64(),
    });
    let code = if report.count == 0 || repair == Repair::Found {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(FOUND)
    };
    Ok((summary, code))
}
