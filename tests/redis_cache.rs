//! The Redis hot cache and the read-through reader, against a real Redis
//! (`PULSEHUB_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`). Each test
//! works under a key prefix of its own and deletes its keys.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pulsehub::model::profile::{Attribute, Profile};
use pulsehub::model::update::Value;
use pulsehub::store::reader::{ProfileReader, ReaderStats};
use pulsehub::store::redis::RedisCache;
use pulsehub::store::{
    Commit, CommitOutcome, EncodedProfile, ProfileCache, ProfileLookup, ProfileStore, StoreError,
    StoreResult, TimelineEntry,
};
use redis::aio::MultiplexedConnection;

use support::proxy::Proxy;
use support::services::{redis_url, unique};

const TTL: Duration = Duration::from_secs(60);

/// `pulsehub_test_<unique>:`, the key prefix of one test.
fn unique_prefix() -> String {
    format!("{}:", unique("pulsehub_test"))
}

fn key(prefix: &str, user_id: &str) -> String {
    format!("{prefix}profile:{user_id}")
}

fn profile(user_id: &str, revision: i64, visits: i64) -> Profile {
    let mut profile = Profile::new(user_id, 1_700_000_000_000);
    profile.attributes = BTreeMap::from([(
        "visits".to_owned(),
        Attribute {
            value: Value::Integer(visits),
            plugin: "page-view-counter".into(),
            plugin_version: "1.0.0".into(),
            event_id: format!("e-{revision}"),
            event_time_ms: 1_700_000_000_000 + revision,
            op: None,
        },
    )]);
    profile.updated_at_ms += revision;
    profile.revision = revision;
    profile
}

/// A direct connection to the test Redis, to look at what the cache wrote.
async fn direct() -> MultiplexedConnection {
    redis::Client::open(redis_url())
        .expect("valid test Redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("the test Redis answers")
}

/// `(rev, body)` of a cached profile as stored.
async fn stored(prefix: &str, user_id: &str) -> (Option<String>, Option<String>) {
    redis::cmd("HMGET")
        .arg(key(prefix, user_id))
        .arg("rev")
        .arg("body")
        .query_async(&mut direct().await)
        .await
        .expect("HMGET")
}

/// Deletes every key under `prefix`.
async fn cleanup(prefix: &str) {
    let mut connection = direct().await;
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut connection)
            .await
            .expect("SCAN");
        if !keys.is_empty() {
            redis::cmd("DEL")
                .arg(&keys)
                .exec_async(&mut connection)
                .await
                .expect("DEL");
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
}

async fn cache(prefix: &str) -> Arc<RedisCache> {
    Arc::new(
        RedisCache::connect(&redis_url(), prefix, TTL)
            .await
            .expect("cache connects"),
    )
}

/// A store of our own that counts reads and takes its time, like a database
/// under load would.
struct FakeStore {
    profiles: Mutex<HashMap<String, Profile>>,
    reads: AtomicUsize,
    delay: Duration,
    broken: bool,
}

impl FakeStore {
    fn new(profiles: impl IntoIterator<Item = Profile>, delay: Duration) -> Arc<Self> {
        let profiles = profiles
            .into_iter()
            .map(|p| (p.user_id.clone(), p))
            .collect();
        Arc::new(Self {
            profiles: Mutex::new(profiles),
            reads: AtomicUsize::new(0),
            delay,
            broken: false,
        })
    }

    fn broken() -> Arc<Self> {
        Arc::new(Self {
            profiles: Mutex::new(HashMap::new()),
            reads: AtomicUsize::new(0),
            delay: Duration::ZERO,
            broken: true,
        })
    }

    fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl ProfileStore for FakeStore {
    async fn commit(&self, _commit: Commit<'_>) -> StoreResult<CommitOutcome> {
        Err(StoreError(anyhow::anyhow!(
            "the fake store takes no commits"
        )))
    }

    async fn offsets(&self, _group: &str, _topic: &str) -> StoreResult<HashMap<i32, i64>> {
        Ok(HashMap::new())
    }

    async fn profile(&self, user_id: &str) -> StoreResult<Option<Profile>> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        if self.broken {
            return Err(StoreError(anyhow::anyhow!("database unreachable")));
        }
        let profiles = self.profiles.lock().expect("fake store lock");
        Ok(profiles.get(user_id).cloned())
    }

    async fn timeline(&self, _group: &str, _topic: &str) -> StoreResult<Vec<TimelineEntry>> {
        Ok(Vec::new())
    }

    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_put_profile_reads_back_and_unknown_ids_miss() {
    let prefix = unique_prefix();
    let cache = cache(&prefix).await;
    cache.ping().await.expect("ping");
    let alice = profile("alice", 3, 7);
    let bob = profile("bob", 1, 1);
    cache
        .put(&[alice.clone(), bob.clone()])
        .await
        .expect("put two profiles");
    assert_eq!(cache.get("alice").await.expect("get"), Some(alice));
    assert_eq!(cache.get("bob").await.expect("get"), Some(bob));
    assert_eq!(cache.get("carol").await.expect("get"), None);
    let (rev, _) = stored(&prefix, "alice").await;
    assert_eq!(rev.as_deref(), Some("3"));
    cleanup(&prefix).await;
}

#[tokio::test]
async fn an_older_revision_never_replaces_a_newer_one() {
    let prefix = unique_prefix();
    let cache = cache(&prefix).await;
    let newer = profile("u", 5, 50);
    cache
        .put(std::slice::from_ref(&newer))
        .await
        .expect("put v5");
    cache
        .put(&[profile("u", 4, 40)])
        .await
        .expect("put v4 is accepted and ignored");
    assert_eq!(cache.get("u").await.expect("get"), Some(newer));
    // Within one put as well.
    let newest = profile("u", 7, 70);
    cache
        .put(&[newest.clone(), profile("u", 6, 60)])
        .await
        .expect("put v7 and v6");
    assert_eq!(cache.get("u").await.expect("get"), Some(newest));
    // An equal revision is the same commit: it may be written again.
    cache.put(&[profile("u", 7, 70)]).await.expect("put v7");
    assert_eq!(stored(&prefix, "u").await.0.as_deref(), Some("7"));
    cleanup(&prefix).await;
}

/// What a backfill or repair does around its PostgreSQL commit: the cached
/// copy is hidden at the coming revision first, so a command killed before
/// its write-through leaves a miss, and no older copy comes back.
#[tokio::test]
async fn a_retired_profile_misses_until_its_new_revision_is_written() {
    let prefix = unique_prefix();
    let cache = cache(&prefix).await;
    cache.put(&[profile("u", 4, 40)]).await.expect("put v4");
    let coming = profile("u", 5, 50);
    cache
        .retire(std::slice::from_ref(&coming))
        .await
        .expect("retire at v5");
    assert_eq!(cache.get("u").await.expect("get"), None);
    // A refill that read PostgreSQL before the commit.
    cache.put(&[profile("u", 4, 40)]).await.expect("put v4");
    assert_eq!(cache.get("u").await.expect("get"), None);
    assert_eq!(
        stored(&prefix, "u").await,
        (Some("5".into()), Some(String::new()))
    );
    // The write-through after the commit, or a refill that read it.
    cache
        .put(std::slice::from_ref(&coming))
        .await
        .expect("put v5");
    assert_eq!(cache.get("u").await.expect("get"), Some(coming));
    // A user never cached misses before and after.
    cache
        .retire(&[profile("new", 1, 1)])
        .await
        .expect("retire an uncached user");
    assert_eq!(cache.get("new").await.expect("get"), None);
    cleanup(&prefix).await;
}

/// A put of more profiles than one script call takes: every key is
/// decided on its own revision, across the calls.
#[tokio::test]
async fn a_large_put_keeps_every_newer_revision_across_script_calls() {
    let prefix = unique_prefix();
    let cache = cache(&prefix).await;
    let users: Vec<String> = (0..700).map(|i| format!("u{i}")).collect();
    // Every third user already holds revision 10.
    let newer: Vec<Profile> = users
        .iter()
        .step_by(3)
        .map(|u| profile(u, 10, 100))
        .collect();
    cache.put(&newer).await.expect("put the newer copies");
    let batch: Vec<Profile> = users.iter().map(|u| profile(u, 5, 50)).collect();
    cache
        .put(&batch)
        .await
        .expect("put 700 profiles at revision 5");
    for (i, user) in users.iter().enumerate() {
        let expected = if i % 3 == 0 { "10" } else { "5" };
        assert_eq!(
            stored(&prefix, user).await.0.as_deref(),
            Some(expected),
            "user {user}"
        );
    }
    let last = cache.get("u698").await.expect("get").expect("cached");
    assert_eq!(last, batch[698], "u698 takes revision 5");
    cleanup(&prefix).await;
}

#[tokio::test]
async fn encoded_profiles_are_stored_as_given_across_round_trips() {
    let prefix = unique_prefix();
    let cache = cache(&prefix).await;
    // More than one round trip's worth (4,096 keys), so the documents of
    // the second one must line up with its profiles too.
    let batch: Vec<Profile> = (0..4_500)
        .map(|i| profile(&format!("u{i}"), 3, i))
        .collect();
    let encoded: Vec<EncodedProfile> = batch
        .iter()
        .map(|p| EncodedProfile::encode(p).expect("a profile encodes"))
        .collect();
    cache
        .put_encoded(&encoded)
        .await
        .expect("put 4,500 encoded profiles");
    for i in [0, 4_095, 4_096, 4_499] {
        let user = format!("u{i}");
        assert_eq!(
            stored(&prefix, &user).await,
            (Some("3".to_owned()), Some(encoded[i].document.clone())),
            "user {user}"
        );
    }
    cleanup(&prefix).await;
}

#[tokio::test]
async fn cached_profiles_expire() {
    let prefix = unique_prefix();
    let cache = cache(&prefix).await;
    cache.put(&[profile("u", 1, 1)]).await.expect("put");
    let ttl: i64 = redis::cmd("TTL")
        .arg(key(&prefix, "u"))
        .query_async(&mut direct().await)
        .await
        .expect("TTL");
    assert!(
        ttl > 0 && ttl <= 60,
        "expected a TTL of at most 60 s, got {ttl}"
    );
    cleanup(&prefix).await;
}

#[tokio::test]
async fn an_unreadable_cached_body_is_a_miss_and_is_deleted() {
    let prefix = unique_prefix();
    let cache = cache(&prefix).await;
    redis::cmd("HSET")
        .arg(key(&prefix, "u"))
        .arg("rev")
        .arg(1)
        .arg("body")
        .arg("{not json")
        .exec_async(&mut direct().await)
        .await
        .expect("HSET");
    assert_eq!(cache.get("u").await.expect("a miss, not an error"), None);
    assert_eq!(stored(&prefix, "u").await, (None, None));
    cleanup(&prefix).await;
}

#[tokio::test]
async fn a_key_of_another_type_is_replaced_by_the_put() {
    let prefix = unique_prefix();
    let cache = cache(&prefix).await;
    let mut connection = direct().await;
    redis::cmd("SET")
        .arg(key(&prefix, "s"))
        .arg("not a profile")
        .exec_async(&mut connection)
        .await
        .expect("SET");
    redis::cmd("RPUSH")
        .arg(key(&prefix, "l"))
        .arg("not a profile")
        .exec_async(&mut connection)
        .await
        .expect("RPUSH");
    let profiles = [profile("s", 3, 1), profile("l", 4, 2)];
    cache.put(&profiles).await.expect("put");
    for expected in profiles {
        let user_id = expected.user_id.clone();
        let revision = expected.revision.to_string();
        assert_eq!(stored(&prefix, &user_id).await.0, Some(revision));
        assert_eq!(cache.get(&user_id).await.expect("get"), Some(expected));
    }
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_lookups_of_a_cold_profile_read_the_store_once() {
    let prefix = unique_prefix();
    let cache = cache(&prefix).await;
    let cold = profile("cold", 2, 9);
    let store = FakeStore::new([cold.clone()], Duration::from_millis(200));
    let reader = Arc::new(ProfileReader::new(store.clone(), Some(cache.clone())));
    let lookups: Vec<_> = (0..50)
        .map(|_| {
            let reader = reader.clone();
            tokio::spawn(async move { reader.lookup("cold").await })
        })
        .collect();
    for lookup in lookups {
        let found = lookup.await.expect("lookup task").expect("lookup");
        assert_eq!(found.as_ref(), Some(&cold));
    }
    assert_eq!(store.reads(), 1, "one store read for 50 concurrent lookups");
    // The load refilled the cache: the next lookup is a hit.
    assert_eq!(cache.get("cold").await.expect("get"), Some(cold.clone()));
    assert_eq!(reader.lookup("cold").await.expect("lookup"), Some(cold));
    assert_eq!(store.reads(), 1);
    let stats = reader.stats();
    assert_eq!(
        (stats.hits, stats.misses, stats.cache_errors, stats.loads),
        (1, 50, 0, 1)
    );
    // A later miss loads again (loads leave the map when done).
    assert_eq!(reader.lookup("nobody").await.expect("lookup"), None);
    assert_eq!(reader.lookup("nobody").await.expect("lookup"), None);
    assert_eq!(store.reads(), 3);
    cleanup(&prefix).await;
}

#[tokio::test]
async fn store_errors_reach_the_caller() {
    let prefix = unique_prefix();
    let cache = cache(&prefix).await;
    let reader = ProfileReader::new(FakeStore::broken(), Some(cache));
    let error = reader.lookup("u").await.expect_err("the store is broken");
    assert!(
        format!("{:#}", error.0).contains("database unreachable"),
        "unexpected error: {:#}",
        error.0
    );
    cleanup(&prefix).await;
}

#[tokio::test]
async fn lookups_answer_from_the_store_quickly_when_redis_is_down() {
    let started = Instant::now();
    let dead = RedisCache::connect("redis://127.0.0.1:1", "dead:", TTL)
        .await
        .expect("a dead Redis does not stop the start");
    let dead = Arc::new(dead);
    let stored = profile("u", 1, 1);
    let store = FakeStore::new([stored.clone()], Duration::ZERO);
    let reader = ProfileReader::new(store.clone(), Some(dead.clone()));
    for _ in 0..20 {
        assert_eq!(
            reader.lookup("u").await.expect("answered"),
            Some(stored.clone())
        );
    }
    assert_eq!(reader.lookup("other").await.expect("answered"), None);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(store.reads(), 21);
    assert_eq!(
        reader.stats(),
        ReaderStats {
            hits: 0,
            misses: 0,
            cache_errors: 21,
            loads: 21
        }
    );
    assert!(dead.ping().await.is_err());
    assert!(dead.put(&[profile("u", 2, 2)]).await.is_err());
}

/// `host:port` of the test Redis, for a [`Proxy`] in front of it: Redis
/// failing and recovering, without disturbing the server other tests use.
fn upstream_address(url: &str) -> String {
    let client = redis::Client::open(url).expect("valid test Redis URL");
    match client.get_connection_info().addr() {
        redis::ConnectionAddr::Tcp(host, port) => format!("{host}:{port}"),
        other => panic!("the test Redis must be plain TCP, not {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_put_is_a_miss_until_the_repair_task_replaces_the_stale_copy() {
    let prefix = unique_prefix();
    let proxy = Proxy::start(upstream_address(&redis_url())).await;
    let cache = Arc::new(
        RedisCache::connect(&proxy.url(&redis_url()), &prefix, TTL)
            .await
            .expect("cache connects through the proxy"),
    );
    let v1 = profile("u", 1, 1);
    let v2 = profile("u", 2, 2);
    cache.put(std::slice::from_ref(&v1)).await.expect("put v1");
    assert_eq!(cache.get("u").await.expect("get"), Some(v1.clone()));

    // Redis goes away; the store commits v2 and the write-through fails.
    proxy.cut();
    cache
        .put(std::slice::from_ref(&v2))
        .await
        .expect_err("Redis is unreachable");
    let v1_body = serde_json::to_string(&v1).expect("serialises");
    assert_eq!(
        stored(&prefix, "u").await,
        (Some("1".into()), Some(v1_body.clone())),
        "Redis still holds the stale v1"
    );
    assert_eq!(cache.get("u").await.expect("a miss, not v1"), None);
    let store = FakeStore::new([v2.clone()], Duration::ZERO);
    let reader = ProfileReader::new(store, Some(cache.clone()));
    assert_eq!(reader.lookup("u").await.expect("lookup"), Some(v2.clone()));

    // Redis answers again: the repair task replaces v1 with a tombstone.
    // Until it has, the cache never serves v1 although Redis still holds it.
    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(cached) = cache.get("u").await {
            assert_eq!(cached, None, "the stale v1 was served");
        }
        let (rev, body) = stored(&prefix, "u").await;
        if body.as_deref() != Some(v1_body.as_str()) {
            assert_eq!(
                (rev.as_deref(), body.as_deref()),
                (Some("2"), Some("")),
                "a tombstone at the failed revision"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the stale v1 was never repaired");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(cache.get("u").await.expect("get"), None);
    // A late refill with the old copy cannot bring it back ...
    cache.put(&[v1]).await.expect("put v1");
    assert_eq!(cache.get("u").await.expect("get"), None);
    // ... and the next lookup refills the cache with v2.
    assert_eq!(reader.lookup("u").await.expect("lookup"), Some(v2.clone()));
    assert_eq!(cache.get("u").await.expect("get"), Some(v2));
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_failed_ids_flush_every_cached_profile_under_the_prefix() {
    let prefix = unique_prefix();
    let proxy = Proxy::start(upstream_address(&redis_url())).await;
    let cache = RedisCache::connect(&proxy.url(&redis_url()), &prefix, TTL)
        .await
        .expect("cache connects through the proxy");
    cache
        .put(&[profile("u", 1, 1), profile("w", 1, 1)])
        .await
        .expect("put");
    let unrelated = format!("{prefix}other");
    redis::cmd("SET")
        .arg(&unrelated)
        .arg("kept")
        .exec_async(&mut direct().await)
        .await
        .expect("SET");

    // More failed ids than the cache remembers one by one (100 000).
    proxy.cut();
    let bulk: Vec<Profile> = (0..=100_000)
        .map(|i| {
            let mut p = Profile::new(format!("bulk-{i}"), 0);
            p.revision = 1;
            p
        })
        .collect();
    cache.put(&bulk).await.expect_err("Redis is unreachable");
    assert_eq!(stored(&prefix, "w").await.0.as_deref(), Some("1"));
    assert_eq!(
        cache.get("w").await.expect("get"),
        None,
        "every cached profile is suspect"
    );

    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(10);
    while stored(&prefix, "u").await != (None, None) || stored(&prefix, "w").await != (None, None) {
        assert!(Instant::now() < deadline, "the prefix was never flushed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let kept: Option<String> = redis::cmd("GET")
        .arg(&unrelated)
        .query_async(&mut direct().await)
        .await
        .expect("GET");
    assert_eq!(
        kept.as_deref(),
        Some("kept"),
        "only profile keys are flushed"
    );
    // Once the flush is done, the cache serves again.
    let w2 = profile("w", 2, 2);
    cache.put(std::slice::from_ref(&w2)).await.expect("put");
    while cache.get("w").await.expect("get") != Some(w2.clone()) {
        assert!(Instant::now() < deadline, "the cache never served again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cleanup(&prefix).await;
}
