//! `pulsehub rebuild --cache`: the Redis profile cache, rebuilt from
//! PostgreSQL.
//!
//! Redis is derived (it holds absolute profiles with their revision, and a
//! newer revision always wins), so it can be flushed and refilled at any
//! time, the pipeline running: a write-through that lands during the
//! rebuild is either flushed (a miss, refilled by the next read) or newer
//! than the copy the rebuild writes (kept). The refill pages through
//! `profiles` in user order and notes in Redis, after each page, the last
//! user written; an interrupted rebuild run again with the same options
//! goes on from there.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use serde::{Deserialize, Serialize};
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::replaying::progress_bar;
use super::run::{init_logging, load_config};
use pulsehub::replay::{PAGE_USERS, Repair, Replay};
use pulsehub::store::postgres::PgStore;
use pulsehub::store::redis::RedisCache;
use pulsehub::store::{EncodedProfile, ProfileCache as _};

/// Profiles read and written per round.
const PAGE: i64 = 1_000;

#[derive(Args)]
pub struct RebuildArgs {
    /// Rebuild the Redis profile cache from PostgreSQL: delete every cached
    /// profile under the key prefix, then write the stored ones.
    #[arg(
        long,
        required_unless_present = "profiles",
        conflicts_with = "profiles"
    )]
    cache: bool,
    /// Recompute the profiles in PostgreSQL from the archive and the
    /// timeline of plugin versions (after a restore from an old backup, or
    /// damage), then refresh Redis with them; the pipeline may run.
    #[arg(long)]
    profiles: bool,
    /// Write back only the profiles updated at or after this time (RFC 3339,
    /// e.g. 2026-12-01T00:00:00Z): the hot ones; reads refill the others.
    #[arg(long, value_name = "TIME", conflicts_with_all = ["lazy", "profiles"])]
    since: Option<String>,
    /// Write nothing back: reads refill what they miss.
    #[arg(long, conflicts_with = "profiles")]
    lazy: bool,
    /// Start from the flush again, dropping what an interrupted rebuild
    /// noted of its progress.
    #[arg(long)]
    restart: bool,
    /// Configuration file (TOML); the PULSEHUB_* variables override it.
    #[arg(long, env = "PULSEHUB_CONFIG")]
    config: Option<PathBuf>,
}

/// What the refill notes in Redis after each page.
#[derive(Debug, Serialize, Deserialize)]
struct Progress {
    since_ms: Option<i64>,
    /// The last user written; `None` before the first page.
    after: Option<String>,
    written: u64,
}

pub fn rebuild(args: RebuildArgs) -> anyhow::Result<ExitCode> {
    if args.profiles {
        return rebuild_profiles(&args);
    }
    let since_ms = args.since.as_deref().map(parse_time).transpose()?;
    let (config, _) = load_config(args.config.as_deref())?;
    init_logging(&config);
    let Some(database_url) = config.database.url.as_deref() else {
        bail!(
            "configuration key `database.url` (PULSEHUB_DATABASE_URL) is not set: the profiles to rebuild from are in PostgreSQL"
        );
    };
    let Some(redis_url) = config.redis.url.as_deref() else {
        bail!(
            "configuration key `redis.url` (PULSEHUB_REDIS_URL) is not set: there is no cache to rebuild"
        );
    };
    super::command_runtime()?.block_on(async {
        let store = PgStore::connect(database_url, 2)?;
        if config.database.migrate {
            store.migrate().await?;
        }
        let ttl = Duration::from_secs(config.redis.ttl_secs);
        let cache = RedisCache::connect(redis_url, &config.redis.key_prefix, ttl).await?;
        let options = json!({
            "key_prefix": config.redis.key_prefix,
            "since": args.since,
            "lazy": args.lazy,
            "restart": args.restart,
        });
        let actor = actor();
        match rebuild_cache(&store, &cache, &args, since_ms).await {
            Ok(mut summary) => {
                summary["options"] = options;
                store
                    .audit_operation(&actor, "rebuild-cache", "done", &summary)
                    .await?;
                println!("{summary}");
                Ok(ExitCode::SUCCESS)
            }
            Err(error) => {
                let detail = json!({ "options": options, "error": format!("{error:#}") });
                if let Err(audit) = store
                    .audit_operation(&actor, "rebuild-cache", "failed", &detail)
                    .await
                {
                    tracing::warn!("could not record the failed rebuild: {:#}", audit.0);
                }
                Err(error)
            }
        }
    })
}

/// Flushes (unless resuming) and refills; returns the summary.
async fn rebuild_cache(
    store: &PgStore,
    cache: &RedisCache,
    args: &RebuildArgs,
    since_ms: Option<i64>,
) -> anyhow::Result<serde_json::Value> {
    let started = Instant::now();
    let saved = match args.restart {
        true => None,
        false => cache.rebuild_state().await?,
    };
    let saved: Option<Progress> = saved
        .map(|text| serde_json::from_str(&text))
        .transpose()
        .context(
            "the progress an interrupted rebuild noted in Redis is unreadable; run with --restart",
        )?;
    if args.lazy {
        cache.flush().await?;
        cache.set_rebuild_state(None).await?;
        return Ok(
            json!({ "flushed": true, "written": 0, "resumed_after": null,
                          "seconds": started.elapsed().as_secs_f64() }),
        );
    }
    let mut progress = match saved {
        Some(saved) if saved.since_ms == since_ms => saved,
        Some(saved) => bail!(
            "an interrupted rebuild {} stopped {}: run it again with that option to finish \
             it, or add --restart",
            saved
                .since_ms
                .map_or("without --since".to_owned(), |ms| format!(
                    "with --since {}",
                    format_time(ms)
                )),
            saved
                .after
                .map_or("before writing a profile".to_owned(), |user| format!(
                    "after user {user:?}"
                )),
        ),
        None => Progress {
            since_ms,
            after: None,
            written: 0,
        },
    };
    let resumed_after = progress.after.clone();
    // Until the first page is written the flush may not have finished: it
    // runs (again). The note comes first, so a run stopped during the flush
    // is resumed with another flush.
    let flushed = resumed_after.is_none();
    if flushed {
        cache
            .set_rebuild_state(Some(&serde_json::to_string(&progress)?))
            .await?;
        cache.flush().await?;
    }
    let total = store.count_profiles(since_ms).await?;
    let bar = progress_bar(
        "profiles",
        u64::try_from(total).unwrap_or(0),
        progress.written,
    );
    loop {
        let page = store
            .profiles_after(progress.after.as_deref(), since_ms, PAGE)
            .await?;
        let Some((last, _)) = page.last() else {
            break;
        };
        let last = last.user_id.clone();
        let count = page.len() as u64;
        let profiles: Vec<EncodedProfile> = page
            .into_iter()
            .map(|(profile, document)| EncodedProfile::new(&profile, document))
            .collect();
        cache.put_encoded(&profiles).await?;
        progress.after = Some(last);
        progress.written += count;
        cache
            .set_rebuild_state(Some(&serde_json::to_string(&progress)?))
            .await?;
        bar.set_position(progress.written);
    }
    cache.set_rebuild_state(None).await?;
    bar.finish_and_clear();
    Ok(json!({
        "flushed": flushed,
        "written": progress.written,
        "resumed_after": resumed_after,
        "seconds": started.elapsed().as_secs_f64(),
    }))
}

pub(super) fn parse_time(text: &str) -> anyhow::Result<i64> {
    let time = OffsetDateTime::parse(text, &Rfc3339).with_context(|| {
        format!("--since {text:?} is not an RFC 3339 time such as 2026-12-01T00:00:00Z")
    })?;
    Ok(i64::try_from(time.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX))
}

fn format_time(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|time| time.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// `cli:<user>`, the operating-system user who ran the command.
pub(super) fn actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".to_owned());
    format!("cli:{user}")
}

/// `rebuild --profiles`: every user of the archive replayed and written
/// where a value differs, page by page, the page's progress written with
/// its profiles.
fn rebuild_profiles(args: &RebuildArgs) -> anyhow::Result<ExitCode> {
    let (config, _) = load_config(args.config.as_deref())?;
    init_logging(&config);
    super::command_runtime()?.block_on(async {
        let mut replay = super::replaying::open(&config, "rebuild --profiles").await?;
        let options = json!({ "restart": args.restart });
        let outcome = replay_profiles(&mut replay, args.restart).await;
        let store = replay.store.clone();
        super::replaying::audited(&store, &actor(), "rebuild-profiles", options, outcome).await
    })
}

async fn replay_profiles(
    replay: &mut Replay,
    restart: bool,
) -> anyhow::Result<(serde_json::Value, ExitCode)> {
    const OPERATION: &str = "rebuild-profiles";
    let started = Instant::now();
    if restart {
        replay.store.clear_replay_progress(OPERATION).await?;
    }
    let resumed_after = replay.store.replay_progress(OPERATION).await?;
    let total = replay.store.count_archive_users(&replay.topic).await?;
    let bar = progress_bar("users", u64::try_from(total).unwrap_or(0), 0);
    let mut after = resumed_after.clone();
    let (mut rewritten, mut users, mut suppressed) = (0, 0, 0);
    loop {
        let page = replay
            .store
            .archive_users_after(&replay.topic, after.as_deref(), PAGE_USERS)
            .await?;
        let Some(last) = page.last().cloned() else {
            break;
        };
        let report = replay.check_page(&page, Repair::Found, true).await?;
        rewritten += report.repaired;
        suppressed += report.suppressed;
        users += report.checked;
        bar.inc(page.len() as u64);
        after = Some(last);
    }
    replay.store.clear_replay_progress(OPERATION).await?;
    bar.finish_and_clear();
    let summary = json!({
        "users": users,
        "events": replay.counts.events,
        "rewritten": rewritten,
        "left_suppressed": suppressed,
        "retried": replay.counts.retried,
        "plugin_failures": replay.replayer.failures,
        "resumed_after": resumed_after,
        "seconds": started.elapsed().as_secs_f64(),
    });
    Ok((summary, ExitCode::SUCCESS))
}
