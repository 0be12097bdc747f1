//! The Redis hot cache: one hash per profile, `{prefix}profile:{user_id}`
//! with the fields `rev` ([`Profile::revision`]) and `body` (the JSON of
//! [`Profile`]), and a TTL.
//!
//! Every write goes through one Lua script that keeps the copy with the higher
//! revision, so a slow refill never overwrites a newer write-through, and
//! replays are harmless (values are absolute, never `INCR`).
//!
//! Redis is allowed to be down: connections are lazy with short timeouts, so
//! a dead Redis costs a request a second or two at most instead of hanging it.
//! A failed [`ProfileCache::put`] would leave the previous copy behind, which
//! is now stale, so the ids of the failed put are remembered and served as
//! misses until a background task has repaired their keys. The repair writes
//! a tombstone (`rev` of the failed write, empty `body`) rather than deleting
//! the key: a refill that read the store before the failed commit then still
//! cannot bring the stale copy back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisResult, ServerErrorKind};

use super::{EncodedProfile, ProfileCache, StoreError, StoreResult};
use crate::model::profile::Profile;

/// How long one connection attempt and one reply may take.
const TIMEOUT: Duration = Duration::from_secs(1);
/// How often the repair task looks for keys to repair.
const REPAIR_INTERVAL: Duration = Duration::from_millis(500);
/// Beyond this many remembered ids, everything under the prefix is flushed.
const MAX_PENDING_IDS: usize = 100_000;
/// Keys per `SCAN` step when flushing the prefix.
const SCAN_COUNT: usize = 1_000;

/// Profiles per call of [`WRITE_SCRIPT`]: a few hundred keys cost one
/// script call instead of one each, and no call runs long enough to keep
/// readers waiting (Redis runs one script at a time).
const KEYS_PER_SCRIPT: usize = 256;

/// Profiles per round trip: a batch that changed 80,000 profiles sent in one
/// pipeline took Redis longer than [`TIMEOUT`] to answer (measured with
/// `scripts/diagnose-pipeline.sh` at 1,000,000 users), so large writes go
/// in several round trips, each well within it.
const KEYS_PER_ROUND_TRIP: usize = 4_096;

/// For each key `KEYS[i]`, writes `rev` `ARGV[2i]` and `body` `ARGV[2i+1]`
/// unless the stored copy has a higher revision, and refreshes the TTL
/// `ARGV[1]`. A key of another type (not ours) is replaced. Returns how many
/// keys were written (the others kept a newer copy).
const WRITE_SCRIPT: &str = r"
local written = 0
for i, key in ipairs(KEYS) do
  local rev = ARGV[2 * i]
  -- Three commands a key: HGET (a wrong type answers an error, not a
  -- value), HSET, EXPIRE.
  local stored = redis.pcall('HGET', key, 'rev')
  if type(stored) == 'table' and stored['err'] then
    redis.call('DEL', key)
    stored = false
  end
  stored = tonumber(stored)
  if not (stored and stored > tonumber(rev)) then
    redis.call('HSET', key, 'rev', rev, 'body', ARGV[2 * i + 1])
    redis.call('EXPIRE', key, ARGV[1])
    written = written + 1
  end
end
return written
";

/// For each key `KEYS[i]`: replaces whatever is there by a tombstone (an
/// empty body) at revision `ARGV[2]`, higher than any real one, that
/// expires after `ARGV[1]` seconds: a write-through or a refill in flight
/// that lands after it cannot bring the profile back, and nothing of it is
/// left once it expires. Returns how many keys held a profile.
const FORGET_SCRIPT: &str = r"
local held = 0
for _, key in ipairs(KEYS) do
  local body = redis.pcall('HGET', key, 'body')
  if type(body) == 'string' and body ~= '' then
    held = held + 1
  end
  redis.call('DEL', key)
  redis.call('HSET', key, 'rev', ARGV[2], 'body', '')
  redis.call('EXPIRE', key, ARGV[1])
end
return held
";

/// How long a forgotten key's tombstone stays: far longer than a write in
/// flight takes (each waits at most [`TIMEOUT`]).
const FORGET_TOMBSTONE_SECS: u64 = 30;

/// The Redis implementation of [`ProfileCache`].
pub struct RedisCache {
    inner: Arc<Inner>,
}

struct Inner {
    connection: ConnectionManager,
    prefix: String,
    ttl_secs: u64,
    script: redis::Script,
    /// Ids whose cached copy may be stale. A `std` mutex: it is never held
    /// across an await.
    pending: Mutex<Pending>,
}

impl RedisCache {
    /// Prepares the cache and starts its repair task. Does not fail when
    /// Redis is down (the cache starts degraded and connects on use); fails on
    /// a malformed URL or a TTL under one second.
    pub async fn connect(url: &str, key_prefix: &str, ttl: Duration) -> anyhow::Result<RedisCache> {
        let ttl_secs = ttl.as_secs();
        anyhow::ensure!(ttl_secs >= 1, "the Redis TTL must be at least one second");
        let client = redis::Client::open(url).context("invalid Redis URL")?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            // One attempt per request; the next request tries again.
            .set_number_of_retries(0);
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .context("creating the Redis connection manager")?;
        let inner = Arc::new(Inner {
            connection,
            prefix: key_prefix.to_owned(),
            ttl_secs,
            script: redis::Script::new(WRITE_SCRIPT),
            pending: Mutex::new(Pending::new(MAX_PENDING_IDS)),
        });
        tokio::spawn(repair_loop(Arc::downgrade(&inner)));
        let cache = RedisCache { inner };
        if let Err(error) = cache.ping().await {
            tracing::warn!(
                "Redis is not answering; the profile cache starts degraded: {:#}",
                error.0
            );
        }
        Ok(cache)
    }
}

impl RedisCache {
    /// Treats every cached profile under the prefix as stale: reads miss
    /// until the repair task has deleted them all. The enrich role calls this
    /// at start-up, because a crash between a commit and its write-through
    /// leaves older copies in Redis that no later write may replace.
    pub fn invalidate_all(&self) {
        self.inner.pending().suspect_all();
    }

    /// Hides the cached copies of `profiles` behind tombstones at the
    /// revisions they are about to be committed with. A command writing
    /// PostgreSQL outside the enrich role (backfill, repair, rebuild) calls
    /// this first: killed between its commit and the write-through, it then
    /// leaves misses, which reads answer from PostgreSQL, instead of older
    /// copies that no later write would replace. The write-through replaces
    /// the tombstones (same revision), as does a refill that read the commit;
    /// a refill that read before it cannot.
    pub async fn retire(&self, profiles: &[Profile]) -> StoreResult<()> {
        let entries: Vec<_> = profiles
            .iter()
            .map(|profile| (self.inner.key(&profile.user_id), profile.revision, ""))
            .collect();
        for chunk in entries.chunks(KEYS_PER_ROUND_TRIP) {
            self.inner
                .run_script(chunk)
                .await
                .context("hiding cached profiles before writing them")?;
        }
        Ok(())
    }

    /// Deletes every cached profile under the prefix.
    pub async fn flush(&self) -> StoreResult<()> {
        Ok(self.inner.flush_prefix().await?)
    }

    /// The note `pulsehub rebuild --cache` keeps of how far it got, if a
    /// run stopped before the end.
    pub async fn rebuild_state(&self) -> StoreResult<Option<String>> {
        let mut connection = self.inner.connection.clone();
        let state = redis::cmd("GET")
            .arg(self.inner.rebuild_key())
            .query_async(&mut connection)
            .await
            .context("reading the cache rebuild's progress from Redis")?;
        Ok(state)
    }

    /// Replaces that note; `None` deletes it (the rebuild is done).
    pub async fn set_rebuild_state(&self, state: Option<&str>) -> StoreResult<()> {
        let mut connection = self.inner.connection.clone();
        let key = self.inner.rebuild_key();
        let written = match state {
            Some(state) => {
                redis::cmd("SET")
                    .arg(key)
                    .arg(state)
                    .exec_async(&mut connection)
                    .await
            }
            None => redis::cmd("DEL").arg(key).exec_async(&mut connection).await,
        };
        written.context("writing the cache rebuild's progress to Redis")?;
        Ok(())
    }

    /// Writes `(user id, revision, JSON document)` entries and records the
    /// outcome for the reads.
    async fn put_bodies<B: AsRef<str> + Sync>(
        &self,
        entries: &[(&str, i64, B)],
    ) -> StoreResult<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let result = self.inner.write(entries).await;
        let mut pending = self.inner.pending();
        match result {
            Ok(()) => {
                for &(user_id, revision, _) in entries {
                    pending.written(user_id, revision);
                }
                Ok(())
            }
            Err(error) => {
                for &(user_id, revision, _) in entries {
                    pending.failed(user_id, revision);
                }
                Err(StoreError(error.context(format!(
                    "writing {} profile(s) to Redis; their keys are repaired later",
                    entries.len()
                ))))
            }
        }
    }
}

#[async_trait]
impl ProfileCache for RedisCache {
    async fn put(&self, profiles: &[Profile]) -> StoreResult<()> {
        let entries = profiles
            .iter()
            .map(|profile| {
                let body = profile
                    .to_json()
                    .with_context(|| format!("serialising profile {:?}", profile.user_id))?;
                Ok((profile.user_id.as_str(), profile.revision, body))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        self.put_bodies(&entries).await
    }

    async fn put_encoded(&self, profiles: &[EncodedProfile]) -> StoreResult<()> {
        let entries: Vec<(&str, i64, &str)> = profiles
            .iter()
            .map(|p| (p.user_id.as_str(), p.revision, p.document.as_str()))
            .collect();
        self.put_bodies(&entries).await
    }

    async fn get(&self, user_id: &str) -> StoreResult<Option<Profile>> {
        if self.inner.pending().covers(user_id) {
            return Ok(None);
        }
        let key = self.inner.key(user_id);
        let mut connection = self.inner.connection.clone();
        let body: Option<String> = redis::cmd("HGET")
            .arg(&key)
            .arg("body")
            .query_async(&mut connection)
            .await
            .context("reading a profile from Redis")?;
        // An empty body is a tombstone left by a repair.
        let Some(body) = body.filter(|body| !body.is_empty()) else {
            return Ok(None);
        };
        match serde_json::from_str::<Profile>(&body) {
            Ok(profile) if profile.user_id == user_id => Ok(Some(profile)),
            parsed => {
                let reason = match parsed {
                    Ok(profile) => format!("it holds user {:?}", profile.user_id),
                    Err(error) => error.to_string(),
                };
                tracing::warn!("dropping the unreadable cached profile {key:?}: {reason}");
                let deleted: RedisResult<()> = redis::cmd("DEL")
                    .arg(&key)
                    .query_async(&mut connection)
                    .await;
                if let Err(error) = deleted {
                    tracing::warn!("deleting {key:?} from Redis failed: {error}");
                }
                Ok(None)
            }
        }
    }

    async fn forget(&self, keys: &[String]) -> StoreResult<u64> {
        let mut held = 0;
        let script = redis::Script::new(FORGET_SCRIPT);
        let mut connection = self.inner.connection.clone();
        for chunk in keys.chunks(KEYS_PER_SCRIPT) {
            let mut call = script.prepare_invoke();
            for key in chunk {
                call.key(self.inner.key(key));
            }
            call.arg(FORGET_TOMBSTONE_SECS).arg(i64::MAX);
            let count: u64 = call
                .invoke_async(&mut connection)
                .await
                .context("removing cached profiles from Redis")?;
            held += count;
        }
        Ok(held)
    }

    async fn ping(&self) -> StoreResult<()> {
        let mut connection = self.inner.connection.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await
            .context("pinging Redis")?;
        Ok(())
    }
}

impl Inner {
    fn key(&self, user_id: &str) -> String {
        format!("{}profile:{user_id}", self.prefix)
    }

    /// Outside `profile:*`, so a flush leaves it.
    fn rebuild_key(&self) -> String {
        format!("{}rebuild:cache", self.prefix)
    }

    fn pending(&self) -> MutexGuard<'_, Pending> {
        // The bookkeeping stays consistent even if a holder panicked.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `documents`, when given, holds each profile's JSON document.
    async fn write<B: AsRef<str> + Sync>(&self, entries: &[(&str, i64, B)]) -> anyhow::Result<()> {
        for chunk in entries.chunks(KEYS_PER_ROUND_TRIP) {
            let keyed: Vec<(String, i64, &str)> = chunk
                .iter()
                .map(|(user_id, revision, body)| (self.key(user_id), *revision, body.as_ref()))
                .collect();
            self.run_script(&keyed).await?;
        }
        Ok(())
    }

    /// Runs the write script over the `(key, revision, body)` entries,
    /// [`KEYS_PER_SCRIPT`] a call, all in one round trip, loading the script
    /// first if Redis does not know it.
    async fn run_script<B: AsRef<str> + Sync>(
        &self,
        entries: &[(String, i64, B)],
    ) -> anyhow::Result<()> {
        let mut pipe = redis::pipe();
        for chunk in entries.chunks(KEYS_PER_SCRIPT) {
            let call = pipe
                .cmd("EVALSHA")
                .arg(self.script.get_hash())
                .arg(chunk.len());
            for (key, _, _) in chunk {
                call.arg(key);
            }
            call.arg(self.ttl_secs);
            for (_, revision, body) in chunk {
                call.arg(revision).arg(body.as_ref());
            }
            call.ignore();
        }
        let mut connection = self.connection.clone();
        match pipe.exec_async(&mut connection).await {
            Err(error) if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.script
                    .load_async(&mut connection)
                    .await
                    .context("loading the cache script into Redis")?;
                // Writes are absolute and revision-guarded: running the
                // pipeline again is harmless.
                pipe.exec_async(&mut connection)
                    .await
                    .context("writing to Redis")
            }
            result => result.context("writing to Redis"),
        }
    }

    /// Repairs what [`Pending`] remembers. Returns `Ok(false)` when there was
    /// nothing to do.
    async fn repair(&self) -> anyhow::Result<bool> {
        let Some(work) = self.pending().work() else {
            return Ok(false);
        };
        match &work {
            Work::Flush(_) => self.flush_prefix().await?,
            Work::Ids(ids) => {
                let entries: Vec<_> = ids
                    .iter()
                    .map(|(id, revision)| (self.key(id), *revision, ""))
                    .collect();
                for chunk in entries.chunks(KEYS_PER_ROUND_TRIP) {
                    self.run_script(chunk).await?;
                }
            }
        }
        self.pending().repaired(work);
        Ok(true)
    }

    /// Deletes every profile key under the prefix.
    async fn flush_prefix(&self) -> anyhow::Result<()> {
        let pattern = format!("{}profile:*", glob_escape(&self.prefix));
        let mut connection = self.connection.clone();
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .query_async(&mut connection)
                .await
                .context("scanning the cache keys in Redis")?;
            if !keys.is_empty() {
                redis::cmd("UNLINK")
                    .arg(&keys)
                    .exec_async(&mut connection)
                    .await
                    .context("deleting cache keys in Redis")?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }
}

/// Every [`REPAIR_INTERVAL`], repairs the keys of failed writes once Redis
/// answers. Ends when the cache is dropped.
async fn repair_loop(cache: Weak<Inner>) {
    let mut interval = tokio::time::interval(REPAIR_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        interval.tick().await;
        let Some(cache) = cache.upgrade() else {
            return;
        };
        match cache.repair().await {
            Ok(repaired) => {
                if repaired && failing {
                    tracing::info!("Redis answers again; stale cached profiles repaired");
                }
                failing = false;
            }
            Err(error) => {
                if !failing {
                    tracing::warn!(
                        "repairing cached profiles failed, retrying every {} ms: {error:#}",
                        REPAIR_INTERVAL.as_millis()
                    );
                }
                failing = true;
            }
        }
    }
}

/// Escapes the glob characters of `SCAN MATCH`.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// The ids whose cached copy may be stale, each with the highest revision
/// that failed to reach Redis; or, past `capacity` ids, "everything".
#[derive(Debug)]
struct Pending {
    capacity: usize,
    ids: HashMap<String, i64>,
    /// Set when `ids` overflowed: every key under the prefix is suspect.
    /// The number of the latest failure since, so that a flush only clears
    /// the failures that happened before it started.
    flush: Option<u64>,
    flushes: u64,
}

/// One repair to attempt: a snapshot of [`Pending`].
#[derive(Debug, PartialEq)]
enum Work {
    Flush(u64),
    Ids(Vec<(String, i64)>),
}

impl Pending {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            ids: HashMap::new(),
            flush: None,
            flushes: 0,
        }
    }

    fn failed(&mut self, user_id: &str, revision: i64) {
        if self.flush.is_none() {
            if let Some(known) = self.ids.get_mut(user_id) {
                *known = (*known).max(revision);
                return;
            }
            if self.ids.len() < self.capacity {
                self.ids.insert(user_id.to_owned(), revision);
                return;
            }
            self.ids = HashMap::new();
        }
        self.flushes += 1;
        self.flush = Some(self.flushes);
    }

    /// Every key under the prefix is suspect, whatever was remembered.
    fn suspect_all(&mut self) {
        self.ids = HashMap::new();
        self.flushes += 1;
        self.flush = Some(self.flushes);
    }

    /// A write of `revision` reached Redis: the cached copy is at least as
    /// new as any failed one at or below it.
    fn written(&mut self, user_id: &str, revision: i64) {
        if self
            .ids
            .get(user_id)
            .is_some_and(|&failed| failed <= revision)
        {
            self.ids.remove(user_id);
        }
    }

    fn covers(&self, user_id: &str) -> bool {
        self.flush.is_some() || self.ids.contains_key(user_id)
    }

    fn work(&self) -> Option<Work> {
        if let Some(flush) = self.flush {
            return Some(Work::Flush(flush));
        }
        if self.ids.is_empty() {
            return None;
        }
        Some(Work::Ids(
            self.ids
                .iter()
                .map(|(id, rev)| (id.clone(), *rev))
                .collect(),
        ))
    }

    /// `work` succeeded. Failures recorded meanwhile stay remembered.
    fn repaired(&mut self, work: Work) {
        match work {
            Work::Flush(flush) => {
                if self.flush == Some(flush) {
                    self.flush = None;
                }
            }
            Work::Ids(ids) => {
                for (id, revision) in ids {
                    if self.ids.get(&id) == Some(&revision) {
                        self.ids.remove(&id);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_ids_are_covered_until_repaired_and_keep_the_highest_revision() {
        let mut pending = Pending::new(10);
        pending.failed("a", 3);
        pending.failed("a", 2);
        assert!(pending.covers("a"));
        assert!(!pending.covers("b"));
        let work = pending.work().expect("work to do");
        assert_eq!(work, Work::Ids(vec![("a".into(), 3)]));
        // A newer failure while the repair runs survives the repair.
        pending.failed("a", 4);
        pending.repaired(work);
        assert!(pending.covers("a"));
        let work = pending.work().expect("work to do");
        pending.repaired(work);
        assert!(!pending.covers("a"));
        assert_eq!(pending.work(), None);
    }

    #[test]
    fn a_later_successful_write_clears_an_id() {
        let mut pending = Pending::new(10);
        pending.failed("a", 5);
        pending.written("a", 4);
        assert!(pending.covers("a"), "an older write does not repair it");
        pending.written("a", 5);
        assert!(!pending.covers("a"));
    }

    #[test]
    fn overflow_turns_into_a_flush_of_everything() {
        let mut pending = Pending::new(2);
        pending.failed("a", 1);
        pending.failed("b", 1);
        pending.failed("c", 1);
        assert!(pending.covers("z"));
        let work = pending.work().expect("work to do");
        assert_eq!(work, Work::Flush(1));
        // A failure while the flush runs needs another flush.
        pending.failed("d", 1);
        pending.repaired(work);
        assert!(pending.covers("z"));
        let work = pending.work().expect("work to do");
        assert_eq!(work, Work::Flush(2));
        pending.repaired(work);
        assert!(!pending.covers("z"));
        assert_eq!(pending.work(), None);
        pending.failed("e", 1);
        assert_eq!(pending.work(), Some(Work::Ids(vec![("e".into(), 1)])));
    }

    #[test]
    fn glob_characters_of_the_prefix_are_escaped() {
        assert_eq!(glob_escape("a*b?[c]\\:"), "a\\*b\\?\\[c\\]\\\\:");
    }
}
