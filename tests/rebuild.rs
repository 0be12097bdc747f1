//! `pulsehub rebuild --cache` against a real PostgreSQL and Redis: the
//! binary, run as an operator runs it, over a database and a key prefix of
//! the test's own.

mod support;

use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::sync::Arc;

use pulsehub::model::merge::{AttributeChange, ProfileChanges, Provenance};
use pulsehub::model::update::Op;
use pulsehub::store::postgres::PgStore;
use pulsehub::store::{Commit, CommitOutcome, OffsetRange, ProfileStore};
use redis::aio::MultiplexedConnection;
use serde_json::Value as Json;

use support::db::TestDb;
use support::services::{redis_url, unique};

const USERS: usize = 2_500;

/// A database whose profiles of [`USERS`] users were committed at
/// `1_700_000_000_000` ms, and those of `u0`..`u9` again an hour later.
async fn database() -> (TestDb, PgStore) {
    let db = TestDb::create().await;
    let store = PgStore::connect(db.url(), 2).expect("valid URL");
    store.migrate().await.expect("migrations apply");
    let everyone: Vec<String> = (0..USERS).map(|i| format!("u{i}")).collect();
    commit(&store, &everyone, None, 1, 1_700_000_000_000).await;
    let hot: Vec<String> = (0..10).map(|i| format!("u{i}")).collect();
    commit(&store, &hot, Some(1), 2, 1_700_003_600_000).await;
    (db, store)
}

async fn commit(store: &PgStore, users: &[String], expected: Option<i64>, next: i64, now_ms: i64) {
    let mut changes = ProfileChanges::new();
    for user in users {
        let change = AttributeChange {
            op: Op::Increment(1),
            provenance: Provenance {
                plugin: Arc::from("page-view-counter"),
                plugin_version: Arc::from("1.0.0"),
                event_id: format!("{user}-{next}"),
                event_time_ms: now_ms,
            },
        };
        changes
            .entry(user.clone())
            .or_default()
            .insert("page_views".to_owned(), change);
    }
    let outcome = store
        .commit(Commit {
            group: "enrich",
            topic: "events",
            changes: &changes,
            offsets: &[OffsetRange {
                partition: 0,
                expected,
                next,
            }],
            plugins: &[],
            known: Default::default(),
            now_ms,
            identity: None,
            suppressions: 0,
        })
        .await
        .expect("commit");
    assert!(matches!(outcome, CommitOutcome::AppliedEncoded { .. }));
}

fn rebuild(db: &TestDb, prefix: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pulsehub"))
        .arg("rebuild")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("USER", "operator")
        .env("PULSEHUB_DATABASE_URL", db.url())
        .env("PULSEHUB_REDIS_URL", redis_url())
        .env("PULSEHUB_REDIS_KEY_PREFIX", prefix)
        .output()
        .expect("run pulsehub rebuild")
}

/// The JSON summary a successful run prints.
fn summary(output: &Output) -> Json {
    assert!(
        output.status.success(),
        "rebuild failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("a JSON summary on stdout")
}

async fn redis() -> MultiplexedConnection {
    redis::Client::open(redis_url())
        .expect("valid test Redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("the test Redis answers")
}

/// Every profile key under `prefix`, to `(rev, body)`.
async fn cached(prefix: &str) -> BTreeMap<String, (Option<String>, Option<String>)> {
    let mut redis = redis().await;
    let keys = keys(&format!("{prefix}profile:*")).await;
    let mut cached = BTreeMap::new();
    for key in keys {
        let fields: (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(&key)
            .arg("rev")
            .arg("body")
            .query_async(&mut redis)
            .await
            .expect("HMGET");
        let user = key
            .trim_start_matches(&format!("{prefix}profile:"))
            .to_owned();
        cached.insert(user, fields);
    }
    cached
}

/// What PostgreSQL holds, as the cache should: user to `(rev, body)`.
async fn stored(store: &PgStore) -> BTreeMap<String, (Option<String>, Option<String>)> {
    let rows: Vec<(String, i64, String)> =
        sqlx::query_as("SELECT user_id, revision, profile::text FROM profiles")
            .fetch_all(store.pool())
            .await
            .expect("read the profiles");
    rows.into_iter()
        .map(|(user, revision, body)| (user, (Some(revision.to_string()), Some(body))))
        .collect()
}

/// The keys matching `pattern` (the test's own prefix: few keys).
async fn keys(pattern: &str) -> Vec<String> {
    redis::cmd("KEYS")
        .arg(pattern)
        .query_async(&mut redis().await)
        .await
        .expect("KEYS")
}

async fn cleanup(prefix: &str) {
    let mut redis = redis().await;
    let keys = keys(&format!("{prefix}*")).await;
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut redis)
            .await
            .expect("DEL");
    }
}

async fn set(key: &str, fields: &[(&str, &str)]) {
    let mut command = redis::cmd("HSET");
    command.arg(key);
    for (field, value) in fields {
        command.arg(*field).arg(*value);
    }
    let _: () = command.query_async(&mut redis().await).await.expect("HSET");
}

/// Leaves `noted` where a rebuild notes its progress.
async fn note_progress(prefix: &str, noted: &str) {
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}rebuild:cache"))
        .arg(noted)
        .query_async(&mut redis().await)
        .await
        .expect("SET");
}

#[tokio::test]
async fn the_cache_is_rebuilt_exactly_from_postgresql_and_audited() {
    let (db, store) = database().await;
    let prefix = format!("{}:", unique("rebuild"));
    // Behind PulseHub's back: a profile nobody has, and a wrong copy.
    set(
        &format!("{prefix}profile:ghost"),
        &[("rev", "7"), ("body", "{}")],
    )
    .await;
    set(
        &format!("{prefix}profile:u5"),
        &[("rev", "1"), ("body", "{\"stale\":1}")],
    )
    .await;

    let done = summary(&rebuild(&db, &prefix, &["--cache"]));
    assert_eq!(done["written"], USERS, "{done}");
    assert_eq!(done["flushed"], true);
    assert_eq!(cached(&prefix).await, stored(&store).await);

    let audit: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT actor, operation, outcome, detail::text FROM operation_audit ORDER BY id",
    )
    .fetch_all(store.pool())
    .await
    .expect("read the operation audit");
    assert_eq!(audit.len(), 1, "{audit:?}");
    let (actor, operation, outcome, detail) = &audit[0];
    assert_eq!(
        (actor.as_str(), operation.as_str(), outcome.as_str()),
        ("cli:operator", "rebuild-cache", "done")
    );
    let detail: Json = serde_json::from_str(detail).expect("JSON detail");
    assert_eq!(detail["written"], USERS);
    assert_eq!(detail["options"]["key_prefix"], prefix.as_str());
    cleanup(&prefix).await;
}

#[tokio::test]
async fn an_interrupted_rebuild_goes_on_after_the_last_user_it_noted() {
    let (db, store) = database().await;
    let prefix = format!("{}:", unique("rebuild"));
    // As a run killed after its first page (user ids sort as text) leaves it.
    let noted = r#"{"since_ms":null,"after":"u1897","written":1000}"#;
    note_progress(&prefix, noted).await;
    set(
        &format!("{prefix}profile:ghost"),
        &[("rev", "7"), ("body", "{}")],
    )
    .await;

    let done = summary(&rebuild(&db, &prefix, &["--cache"]));
    assert_eq!(done["resumed_after"], "u1897", "{done}");
    assert_eq!(done["flushed"], false, "a resumed run does not flush again");
    let after: BTreeMap<_, _> = stored(&store)
        .await
        .into_iter()
        .filter(|(user, _)| user.as_str() > "u1897")
        .collect();
    assert_eq!(done["written"], 1_000 + after.len(), "{done}");
    let mut expected = after;
    expected.insert(
        "ghost".to_owned(),
        (Some("7".to_owned()), Some("{}".to_owned())),
    );
    assert_eq!(
        cached(&prefix).await,
        expected,
        "only the users after u1897"
    );

    // Finished: the note is gone, and the next run starts from the flush.
    let done = summary(&rebuild(&db, &prefix, &["--cache"]));
    assert_eq!(done["flushed"], true, "{done}");
    assert_eq!(cached(&prefix).await, stored(&store).await);

    // A note of other options is not resumed by accident.
    note_progress(&prefix, noted).await;
    let refused = rebuild(
        &db,
        &prefix,
        &["--cache", "--since", "2023-11-14T23:00:00Z"],
    );
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--restart"), "{stderr}");
    let done = summary(&rebuild(&db, &prefix, &["--cache", "--restart"]));
    assert_eq!(done["written"], USERS, "{done}");
    cleanup(&prefix).await;
}

#[tokio::test]
async fn since_refills_the_hot_profiles_and_lazy_none() {
    let (db, store) = database().await;
    let prefix = format!("{}:", unique("rebuild"));
    // u0..u9 were updated at 1_700_003_600_000 (2023-11-14T23:13:20Z), the
    // others an hour before.
    let done = summary(&rebuild(
        &db,
        &prefix,
        &["--cache", "--since", "2023-11-14T23:00:00Z"],
    ));
    assert_eq!(done["written"], 10, "{done}");
    let hot: BTreeMap<_, _> = stored(&store)
        .await
        .into_iter()
        .filter(|(user, _)| user.len() == 2)
        .collect();
    assert_eq!(cached(&prefix).await, hot);

    let done = summary(&rebuild(&db, &prefix, &["--cache", "--lazy"]));
    assert_eq!(done["written"], 0, "{done}");
    assert!(
        cached(&prefix).await.is_empty(),
        "lazy: flushed, nothing written"
    );

    let bad = rebuild(&db, &prefix, &["--cache", "--since", "yesterday"]);
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("RFC 3339"), "{stderr}");
    cleanup(&prefix).await;
}
