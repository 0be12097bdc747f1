//! The PostgreSQL store against a real server: each test creates its own
//! database `pulsehub_test_<unique>` (`support::db`) and drops it at the end.
//!
//! The server comes from `PULSEHUB_TEST_DATABASE_URL` (any database on it
//! serves to create the test ones), by default the local `postgres` one.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::types::Json;

use pulsehub::model::identity::{ANONYMOUS_ID, BatchIdentities, Identifier, Link, Rules, USER_ID};
use pulsehub::model::merge::{AttributeChange, ProfileChanges, Provenance};
use pulsehub::model::profile::Profile;
use pulsehub::model::update::{Op, Value};
use pulsehub::privacy::{Privacy, PrivacyStore, RequestKind, Status};
use pulsehub::store::embedded::EmbeddedStore;
use pulsehub::store::postgres::PgStore;
use pulsehub::store::{
    ArchivedEvent, Commit, CommitOutcome, EventArchive, Identity, LinkReport, OffsetRange,
    PluginVersion, ProfileStore, StoreResult, TimelineEntry,
};

use support::db::{StoreDb, database_url};
use support::services::DEFAULT_DATABASE_URL;

const GROUP: &str = "pulsehub-enrich";
const TOPIC: &str = "user-activity-events";

fn change(op: Op, event_id: &str, event_time_ms: i64) -> AttributeChange {
    AttributeChange {
        op,
        provenance: Provenance {
            plugin: Arc::from("page-view-counter"),
            plugin_version: Arc::from("1.2.0"),
            event_id: event_id.to_owned(),
            event_time_ms,
        },
    }
}

/// `(user, attribute, change)` entries as a batch's changes.
fn changes(entries: Vec<(&str, &str, AttributeChange)>) -> ProfileChanges {
    let mut changes = ProfileChanges::new();
    for (user, attribute, change) in entries {
        changes
            .entry(user.to_owned())
            .or_default()
            .insert(attribute.to_owned(), change);
    }
    changes
}

fn range(partition: i32, expected: Option<i64>, next: i64) -> OffsetRange {
    OffsetRange {
        partition,
        expected,
        next,
    }
}

async fn commit(
    store: &PgStore,
    changes: &ProfileChanges,
    offsets: &[OffsetRange],
    now_ms: i64,
) -> StoreResult<CommitOutcome> {
    commit_from(store, changes, offsets, Vec::new(), now_ms).await
}

/// A commit that hands the store the caller's copies of some profiles.
async fn commit_from(
    store: &PgStore,
    changes: &ProfileChanges,
    offsets: &[OffsetRange],
    copies: Vec<Profile>,
    now_ms: i64,
) -> StoreResult<CommitOutcome> {
    commit_with(store, changes, offsets, copies, None, now_ms).await
}

/// A commit with the caller's copies and, when given, a batch's identities.
async fn commit_with(
    store: &PgStore,
    changes: &ProfileChanges,
    offsets: &[OffsetRange],
    copies: Vec<Profile>,
    identity: Option<Identity<'_>>,
    now_ms: i64,
) -> StoreResult<CommitOutcome> {
    store
        .commit(Commit {
            group: GROUP,
            topic: TOPIC,
            changes,
            offsets,
            plugins: &[],
            known: copies
                .into_iter()
                .map(|profile| (profile.user_id.clone(), profile))
                .collect(),
            now_ms,
            identity,
            suppressions: 0,
        })
        .await
}

fn applied(outcome: CommitOutcome) -> Vec<Profile> {
    match outcome {
        CommitOutcome::Applied(profiles) => profiles,
        CommitOutcome::AppliedEncoded {
            profiles,
            documents,
        } => {
            // What the write-through stores in Redis as it is.
            let encoded: Vec<String> = profiles
                .iter()
                .map(|profile| serde_json::to_string(profile).expect("a profile encodes"))
                .collect();
            assert_eq!(
                documents, encoded,
                "the documents are the profiles, in order"
            );
            profiles
        }
        CommitOutcome::Stale => panic!("expected the commit to apply, it was stale"),
        CommitOutcome::SuppressionsChanged => {
            panic!("expected the commit to apply, the suppressions changed")
        }
    }
}

fn is_stale(outcome: &CommitOutcome) -> bool {
    matches!(outcome, CommitOutcome::Stale)
}

/// Waits until `count` statements of the test database wait for a lock.
async fn wait_for_lock_waiters(store: &PgStore, count: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(store.pool())
        .await
        .expect("read pg_stat_activity");
        if waiting >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the commits never waited for the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn migrating_twice_changes_nothing() {
    let db = StoreDb::new().await;
    db.store.migrate().await.expect("second migration run");
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_name <> '_sqlx_migrations' ORDER BY 1",
    )
    .fetch_all(db.store.pool())
    .await
    .expect("list tables");
    assert_eq!(
        tables,
        [
            "consumer_offsets",
            "dead_letter_redrives",
            "destination_dead_letters",
            "destinations",
            "events",
            "operation_audit",
            "plugin_audit",
            "plugin_backfills",
            "plugin_timeline",
            "privacy_requests",
            "privacy_state",
            "profile_merges",
            "profile_updates",
            "profiles",
            "replay_progress",
            "segment_members",
            "segments",
            "suppressions"
        ]
    );
    db.store.ping().await.expect("ping");
    assert_eq!(db.store.profile("nobody").await.expect("read"), None);
    assert!(
        db.store
            .offsets(GROUP, TOPIC)
            .await
            .expect("read")
            .is_empty()
    );
}

/// Commits a batch of no changes over `offsets` that `plugins`
/// (`name@version`) ran, and tells whether it applied.
async fn commit_run_by(
    store: &dyn ProfileStore,
    plugins: &[&str],
    offsets: &[OffsetRange],
) -> bool {
    let plugins: Vec<PluginVersion> = plugins
        .iter()
        .map(|p| {
            let (plugin, version) = p.split_once('@').expect("name@version");
            PluginVersion {
                plugin: plugin.to_owned(),
                version: version.to_owned(),
            }
        })
        .collect();
    let outcome = store
        .commit(Commit {
            group: GROUP,
            topic: TOPIC,
            changes: &ProfileChanges::new(),
            offsets,
            plugins: &plugins,
            known: Default::default(),
            now_ms: 1_700_000_000_000,
            identity: None,
            suppressions: 0,
        })
        .await
        .expect("the commit reaches the store");
    !is_stale(&outcome)
}

/// The timeline as `partition name@version [from, until)` lines.
async fn timeline(store: &dyn ProfileStore) -> Vec<String> {
    let entries: Vec<TimelineEntry> = store.timeline(GROUP, TOPIC).await.expect("timeline");
    entries
        .iter()
        .map(|e| {
            let until = e.until_offset.map_or("..".to_owned(), |u| u.to_string());
            format!(
                "{} {}@{} [{}, {until})",
                e.partition, e.plugin, e.version, e.from_offset
            )
        })
        .collect()
}

/// What both stores must record: stretches open where a version first
/// runs over a partition, close where it stops, and nothing changes while
/// the set stays or when a commit is stale.
async fn the_timeline_follows_the_plugin_sets(store: &dyn ProfileStore) {
    assert!(
        commit_run_by(
            store,
            &["a@1", "b@1"],
            &[range(0, None, 10), range(1, None, 5)]
        )
        .await
    );
    let first = [
        "0 a@1 [0, ..)",
        "0 b@1 [0, ..)",
        "1 a@1 [0, ..)",
        "1 b@1 [0, ..)",
    ];
    assert_eq!(timeline(store).await, first);
    assert!(commit_run_by(store, &["a@1", "b@1"], &[range(0, Some(10), 20)]).await);
    assert_eq!(timeline(store).await, first, "the same set writes nothing");
    // a@2 replaces a@1 on partition 0 only: partition 1 has not run it yet.
    assert!(commit_run_by(store, &["a@2", "b@1"], &[range(0, Some(20), 30)]).await);
    let replaced = [
        "0 a@1 [0, 20)",
        "0 a@2 [20, ..)",
        "0 b@1 [0, ..)",
        "1 a@1 [0, ..)",
        "1 b@1 [0, ..)",
    ];
    assert_eq!(timeline(store).await, replaced);
    // A stale batch (partition 0 is at 30, not 10) records nothing.
    assert!(!commit_run_by(store, &["c@1"], &[range(0, Some(10), 40)]).await);
    assert_eq!(
        timeline(store).await,
        replaced,
        "a stale commit changes nothing"
    );
    // Every plugin gone from partition 1 at 5.
    assert!(commit_run_by(store, &[], &[range(1, Some(5), 8)]).await);
    assert_eq!(
        timeline(store).await,
        [
            "0 a@1 [0, 20)",
            "0 a@2 [20, ..)",
            "0 b@1 [0, ..)",
            "1 a@1 [0, 5)",
            "1 b@1 [0, 5)",
        ]
    );
    // a@1 back on partition 1: a second stretch of the same version.
    assert!(commit_run_by(store, &["a@1"], &[range(1, Some(8), 9)]).await);
    assert_eq!(
        timeline(store).await[3..],
        ["1 a@1 [0, 5)", "1 a@1 [8, ..)", "1 b@1 [0, 5)"]
    );
}

/// A commit and an archive insert filtered with an older generation of
/// the suppressions write nothing; with the current one they write.
async fn writes_wait_for_the_suppressions<S>(store: &S)
where
    S: ProfileStore + EventArchive + PrivacyStore,
{
    assert_eq!(store.generation().await.expect("reads"), 0);
    let identifiers = [Identifier::new("user_id", "u-gone")];
    let request = store
        .submit(
            RequestKind::Suppress,
            &identifiers,
            &["u-gone".to_owned()],
            "test",
            5,
        )
        .await
        .expect("stored");
    assert_eq!(request.status, Status::Pending);
    assert_eq!(store.unfinished().await.expect("reads"), vec![request.id]);
    let applied = store
        .apply(request.id, 6)
        .await
        .expect("applies")
        .expect("pending");
    assert_eq!(applied.result["suppressed"], 1, "{}", applied.result);
    assert!(
        applied.cache_keys.is_empty(),
        "a suppression removes nothing"
    );
    assert_eq!(
        store.apply(request.id, 7).await.expect("reads"),
        None,
        "done once"
    );
    let suppressions = store.suppressions().await.expect("reads");
    assert_eq!(suppressions.generation, 1);
    assert!(suppressions.keys.contains("u-gone"));
    let done = store
        .request(request.id)
        .await
        .expect("reads")
        .expect("kept");
    assert_eq!(done.status, Status::Done);
    assert_eq!(done.finished_at_ms, Some(6));
    assert!(store.unfinished().await.expect("reads").is_empty());

    let views = changes(vec![("u-1", "views", change(Op::Increment(1), "e1", 10))]);
    let offsets = [range(0, None, 1)];
    let stale = |suppressions| Commit {
        group: GROUP,
        topic: TOPIC,
        changes: &views,
        offsets: &offsets,
        plugins: &[],
        known: Default::default(),
        now_ms: 10,
        identity: None,
        suppressions,
    };
    let outcome = store.commit(stale(0)).await.expect("answers");
    assert!(
        matches!(outcome, CommitOutcome::SuppressionsChanged),
        "{outcome:?}"
    );
    assert_eq!(store.profile("u-1").await.expect("reads"), None);
    assert!(store.offsets(GROUP, TOPIC).await.expect("reads").is_empty());
    applied_to(store.commit(stale(1)).await.expect("commits"));
    assert!(store.profile("u-1").await.expect("reads").is_some());

    let events = [archived("e1", 0, "{}")];
    assert!(!store.archive(&events, 0).await.expect("answers"));
    assert!(store.archive(&events, 1).await.expect("archives"));
}

fn applied_to(outcome: CommitOutcome) {
    assert!(
        matches!(
            outcome,
            CommitOutcome::Applied(_) | CommitOutcome::AppliedEncoded { .. }
        ),
        "{outcome:?}"
    );
}

/// Requests a stop left stored but not carried out are carried out by
/// `Privacy::resume`, the delete's with its cache part (none here).
async fn unfinished_requests_are_carried_out_at_the_next_start<S: PrivacyStore + Clone>(store: &S) {
    let named = |user: &str| [Identifier::new("user_id", user)];
    let export = store
        .submit(
            RequestKind::Export,
            &named("u-7"),
            &["u-7".to_owned()],
            "test",
            1,
        )
        .await
        .expect("stored");
    let delete = store
        .submit(
            RequestKind::Delete,
            &named("u-8"),
            &["u-8".to_owned()],
            "test",
            2,
        )
        .await
        .expect("stored");
    assert_eq!(
        store.unfinished().await.expect("reads"),
        vec![export.id, delete.id]
    );
    let privacy = Privacy {
        store: Arc::new(store.clone()),
        cache: None,
    };
    privacy.resume().await;
    assert!(store.unfinished().await.expect("reads").is_empty());
    for id in [export.id, delete.id] {
        let done = store.request(id).await.expect("reads").expect("kept");
        assert_eq!(done.status, Status::Done, "{done:?}");
        assert!(done.result.is_some(), "{done:?}");
    }
    let suppressions = store.suppressions().await.expect("reads");
    assert!(suppressions.keys.contains("u-8"), "a delete suppresses");
    assert!(!suppressions.keys.contains("u-7"), "an export does not");
}

#[tokio::test]
async fn unfinished_requests_resume_in_postgresql() {
    let db = StoreDb::new().await;
    unfinished_requests_are_carried_out_at_the_next_start(&db.store).await;
}

#[tokio::test]
async fn unfinished_requests_resume_in_the_embedded_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("the embedded store opens");
    unfinished_requests_are_carried_out_at_the_next_start(&store).await;
}

#[tokio::test]
async fn a_write_filtered_under_older_suppressions_writes_nothing() {
    let db = StoreDb::new().await;
    writes_wait_for_the_suppressions(&db.store).await;
}

#[tokio::test]
async fn the_embedded_store_fences_writes_with_the_suppressions_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("the embedded store opens");
    writes_wait_for_the_suppressions(&store).await;
}

#[tokio::test]
async fn the_timeline_records_where_each_plugin_version_began_and_ended() {
    let db = StoreDb::new().await;
    the_timeline_follows_the_plugin_sets(&db.store).await;
}

#[tokio::test]
async fn the_embedded_store_keeps_the_same_timeline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("the embedded store opens");
    the_timeline_follows_the_plugin_sets(&store).await;
}

#[tokio::test]
async fn commits_apply_every_operation_across_batches() {
    let db = StoreDb::new().await;
    let (t1, t2) = (1_700_000_000_123, 1_700_000_060_456);
    let first = changes(vec![
        ("alice", "page_views", change(Op::Increment(2), "e1", 100)),
        (
            "alice",
            "device",
            change(Op::Set(Value::Text("mobile".into())), "e2", 200),
        ),
        (
            "alice",
            "last_seen",
            change(Op::Max(Value::Timestamp(200)), "e2", 200),
        ),
        (
            "alice",
            "first_seen",
            change(Op::Min(Value::Timestamp(100)), "e1", 100),
        ),
        ("bob", "page_views", change(Op::Increment(1), "e3", 150)),
    ]);
    let profiles = applied(
        commit(&db.store, &first, &[range(0, None, 3)], t1)
            .await
            .expect("first commit"),
    );
    assert_eq!(
        profiles
            .iter()
            .map(|p| p.user_id.as_str())
            .collect::<Vec<_>>(),
        ["alice", "bob"]
    );
    assert_eq!(profiles[0].revision, 1);

    let second = changes(vec![
        ("alice", "page_views", change(Op::Increment(3), "e4", 90)),
        // An older event's set and smaller max/larger min change nothing.
        (
            "alice",
            "device",
            change(Op::Set(Value::Text("desktop".into())), "e4", 90),
        ),
        (
            "alice",
            "last_seen",
            change(Op::Max(Value::Timestamp(90)), "e4", 90),
        ),
        (
            "alice",
            "first_seen",
            change(Op::Min(Value::Timestamp(90)), "e4", 90),
        ),
        ("carol", "page_views", change(Op::Increment(7), "e5", 300)),
    ]);
    let profiles = applied(
        commit(&db.store, &second, &[range(0, Some(3), 5)], t2)
            .await
            .expect("second commit"),
    );
    assert_eq!(
        profiles
            .iter()
            .map(|p| p.user_id.as_str())
            .collect::<Vec<_>>(),
        ["alice", "carol"]
    );
    let alice = &profiles[0];
    assert_eq!(alice.attributes["page_views"].value, Value::Integer(5));
    assert_eq!(alice.attributes["page_views"].event_id, "e4");
    assert_eq!(
        alice.attributes["device"].value,
        Value::Text("mobile".into())
    );
    assert_eq!(alice.attributes["device"].event_id, "e2");
    assert_eq!(alice.attributes["device"].event_time_ms, 200);
    assert_eq!(alice.attributes["device"].plugin, "page-view-counter");
    assert_eq!(alice.attributes["device"].plugin_version, "1.2.0");
    assert_eq!(alice.attributes["last_seen"].value, Value::Timestamp(200));
    assert_eq!(alice.attributes["first_seen"].value, Value::Timestamp(90));
    assert_eq!(alice.attributes["first_seen"].event_id, "e4");
    assert_eq!(alice.revision, 2);
    assert_eq!((alice.created_at_ms, alice.updated_at_ms), (t1, t2));

    let stored = db.store.profile("alice").await.expect("read alice");
    assert_eq!(stored.as_ref(), Some(alice));
    let bob = db.store.profile("bob").await.expect("read bob");
    assert_eq!(bob.map(|b| b.revision), Some(1), "bob untouched by batch 2");

    let (revision, created, updated): (i64, i64, i64) = sqlx::query_as(
        "SELECT revision, (extract(epoch FROM created_at) * 1000)::bigint, \
                (extract(epoch FROM updated_at) * 1000)::bigint \
         FROM profiles WHERE user_id = 'alice'",
    )
    .fetch_one(db.store.pool())
    .await
    .expect("read columns");
    assert_eq!((revision, created, updated), (2, t1, t2));
}

#[tokio::test]
async fn offsets_are_kept_and_a_stale_commit_writes_nothing() {
    let db = StoreDb::new().await;
    let batch = changes(vec![("u", "n", change(Op::Increment(1), "e1", 1))]);
    applied(
        commit(
            &db.store,
            &batch,
            &[range(0, None, 10), range(3, None, 4)],
            1,
        )
        .await
        .expect("commit"),
    );
    let offsets = db.store.offsets(GROUP, TOPIC).await.expect("offsets");
    assert_eq!(offsets, [(0, 10), (3, 4)].into_iter().collect());
    assert!(
        db.store
            .offsets("other-group", TOPIC)
            .await
            .expect("offsets")
            .is_empty()
    );
    let before = db.store.profile("u").await.expect("read");

    let refused = [
        // Another consumer moved partition 0 to 10, not 7.
        vec![range(0, Some(7), 12)],
        // A row exists where the batch expected none.
        vec![range(0, None, 12)],
        // No row where the batch expected one.
        vec![range(5, Some(2), 12)],
        // One good partition does not save a stale one.
        vec![range(3, Some(4), 6), range(0, Some(9), 12)],
    ];
    for offsets in refused {
        let outcome = commit(&db.store, &batch, &offsets, 2)
            .await
            .expect("commit");
        assert!(is_stale(&outcome), "{offsets:?} should be stale");
    }
    assert_eq!(db.store.profile("u").await.expect("read"), before);
    assert_eq!(
        db.store.offsets(GROUP, TOPIC).await.expect("offsets"),
        [(0, 10), (3, 4)].into_iter().collect()
    );

    applied(
        commit(&db.store, &batch, &[range(0, Some(10), 11)], 3)
            .await
            .expect("commit"),
    );
    assert_eq!(
        db.store.offsets(GROUP, TOPIC).await.expect("offsets")[&0],
        11
    );
}

#[tokio::test]
async fn concurrent_commits_of_one_partition_apply_once() {
    let db = StoreDb::new().await;
    let batch = changes(vec![("u", "n", change(Op::Increment(5), "e1", 1))]);
    let commit_twice = |expected: Option<i64>, next: i64| {
        let spawn = || {
            let (store, batch) = (db.store.clone(), batch.clone());
            tokio::spawn(
                async move { commit(&store, &batch, &[range(0, expected, next)], 1).await },
            )
        };
        (spawn(), spawn())
    };
    let one_applied = |a: StoreResult<CommitOutcome>, b: StoreResult<CommitOutcome>| {
        let outcomes = [a.expect("commit a"), b.expect("commit b")];
        assert_eq!(
            outcomes.iter().filter(|o| is_stale(o)).count(),
            1,
            "{outcomes:?}"
        );
    };

    // No row yet: both find none, the offset insert decides.
    let (a, b) = commit_twice(None, 20);
    one_applied(a.await.expect("task a"), b.await.expect("task b"));

    // A row: both read 20 unless they wait for each other. Holding the row
    // makes sure both are under way before either can go on.
    let mut holder = db.store.pool().begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM consumer_offsets WHERE partition = 0 FOR UPDATE")
        .execute(&mut *holder)
        .await
        .expect("lock the offset row");
    let (a, b) = commit_twice(Some(20), 40);
    wait_for_lock_waiters(&db.store, 2).await;
    holder.rollback().await.expect("release the offset row");
    one_applied(a.await.expect("task a"), b.await.expect("task b"));

    // Two rounds, each counted once.
    let profile = db.store.profile("u").await.expect("read").expect("exists");
    assert_eq!(profile.attributes["n"].value, Value::Integer(10));
    assert_eq!(profile.revision, 2);
    assert_eq!(db.store.offsets(GROUP, TOPIC).await.expect("read")[&0], 40);
}

/// The same user through two partitions at once: both commits read
/// revision 1; the first to write wins, and the other, finding the row
/// changed under its upsert, reads it again and applies its batch on top:
/// both count, once each, with no retry.
#[tokio::test]
async fn concurrent_commits_of_one_user_from_two_partitions_both_count() {
    let db = StoreDb::new().await;
    let first = changes(vec![("u", "n", change(Op::Increment(1), "e0", 1))]);
    applied(
        commit(&db.store, &first, &[range(0, None, 1)], 1)
            .await
            .expect("create the profile"),
    );
    // Hold the profile so that both commits are under way before either
    // can finish.
    let mut holder = db.store.pool().begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM profiles WHERE user_id = 'u' FOR UPDATE")
        .execute(&mut *holder)
        .await
        .expect("lock the profile");
    let batch = |delta: i64| changes(vec![("u", "n", change(Op::Increment(delta), "e", 2))]);
    let spawn = |partition: i32, expected: Option<i64>, delta: i64| {
        let store = db.store.clone();
        tokio::spawn(async move {
            commit(&store, &batch(delta), &[range(partition, expected, 2)], 2).await
        })
    };
    let (a, b) = (spawn(0, Some(1), 10), spawn(1, None, 100));
    wait_for_lock_waiters(&db.store, 2).await;
    holder.rollback().await.expect("release the profile");

    let a = applied(a.await.expect("task a").expect("commit a applies"));
    let b = applied(b.await.expect("task b").expect("commit b applies"));
    let mut revisions = [a[0].revision, b[0].revision];
    revisions.sort_unstable();
    assert_eq!(revisions, [2, 3], "one after the other");
    let profile = db.store.profile("u").await.expect("read").expect("exists");
    assert_eq!(profile.attributes["n"].value, Value::Integer(111));
    assert_eq!(profile.revision, 3);
    let offsets = db.store.offsets(GROUP, TOPIC).await.expect("read");
    assert_eq!((offsets[&0], offsets[&1]), (2, 2));
}

/// A commit may start from the caller's copy of a profile instead of the
/// stored row, and a copy that is not the stored revision writes nothing.
#[tokio::test]
async fn a_commit_starts_from_the_callers_copy_only_at_the_stored_revision() {
    let db = StoreDb::new().await;
    let one =
        |event: &str, time: i64| changes(vec![("u", "n", change(Op::Increment(1), event, time))]);
    let mut current = applied(
        commit(&db.store, &one("e1", 1), &[range(0, None, 1)], 1)
            .await
            .expect("create"),
    )
    .remove(0);
    // The copy is used as it is: a value only the copy holds shows through.
    current.attributes.get_mut("n").expect("n").value = Value::Integer(40);
    let copy = vec![current.clone()];
    let outcome = commit_from(&db.store, &one("e2", 2), &[range(0, Some(1), 2)], copy, 2)
        .await
        .expect("commit from the copy");
    let written = applied(outcome).remove(0);
    assert_eq!(written.attributes["n"].value, Value::Integer(41));
    assert_eq!(written.revision, 2);

    // `current` is revision 1 now, one behind the store (as a lane's copy
    // is after a backfill wrote the profile): the stored profile is read
    // again, under the row lock, and the batch applied to it, not to the
    // copy.
    let outcome = commit_from(
        &db.store,
        &one("e3", 3),
        &[range(0, Some(2), 3)],
        vec![current],
        3,
    )
    .await
    .expect("a stale copy is read again");
    let again = applied(outcome).remove(0);
    assert_eq!(again.attributes["n"].value, Value::Integer(42));
    assert_eq!(again.revision, 3);
    assert_eq!(db.store.profile("u").await.expect("read"), Some(again));
    assert_eq!(db.store.offsets(GROUP, TOPIC).await.expect("read")[&0], 3);
}

#[tokio::test]
async fn a_concurrent_first_offset_insert_makes_the_commit_stale() {
    let db = StoreDb::new().await;
    let mut other = db.store.pool().begin().await.expect("begin");
    sqlx::query(
        "INSERT INTO consumer_offsets (group_id, topic, partition, next_offset, updated_at) \
         VALUES ($1, $2, 0, 8, now())",
    )
    .bind(GROUP)
    .bind(TOPIC)
    .execute(&mut *other)
    .await
    .expect("insert the other consumer's offset");

    // The batch finds no row (the insert is not committed yet), then waits
    // on that insert while adding its own.
    let store = db.store.clone();
    let batch = tokio::spawn(async move {
        let changes = changes(vec![("u", "n", change(Op::Increment(1), "e1", 1))]);
        commit(&store, &changes, &[range(0, None, 8)], 1).await
    });
    wait_for_lock_waiters(&db.store, 1).await;
    other.commit().await.expect("commit the other consumer");

    let outcome = batch.await.expect("task").expect("commit");
    assert!(is_stale(&outcome), "{outcome:?}");
    assert_eq!(db.store.profile("u").await.expect("read"), None);
    assert_eq!(db.store.offsets(GROUP, TOPIC).await.expect("read")[&0], 8);
}

/// `profiles.profile` is `json`: a text value holding U+0000, which
/// `jsonb` refuses, commits and reads back as it was.
#[tokio::test]
async fn a_text_value_holding_nul_commits_and_reads_back() {
    let db = StoreDb::new().await;
    let text = Value::Text("before\u{0}after".to_owned());
    let batch = changes(vec![("u", "note", change(Op::Set(text.clone()), "e1", 1))]);
    commit(&db.store, &batch, &[range(0, None, 1)], 1)
        .await
        .expect("the batch commits");
    let profile = db.store.profile("u").await.expect("read").expect("stored");
    assert_eq!(profile.attributes["note"].value, text);
}

#[tokio::test]
async fn a_profile_created_meanwhile_is_not_overwritten_but_updated() {
    let db = StoreDb::new().await;
    // Another commit creates user u's profile and holds it uncommitted.
    let mut theirs = Profile::new("u", 1);
    theirs.apply(
        &changes(vec![("u", "n", change(Op::Increment(2), "e1", 1))])["u"],
        1,
    );
    let mut other = db.store.pool().begin().await.expect("begin");
    sqlx::query(
        "INSERT INTO profiles (user_id, profile, revision, created_at, updated_at) \
         VALUES ('u', $1, 1, now(), now())",
    )
    .bind(sqlx::types::Json(&theirs))
    .execute(&mut *other)
    .await
    .expect("insert the other profile");

    let store = db.store.clone();
    let batch = changes(vec![("u", "n", change(Op::Increment(3), "e2", 2))]);
    let ours = batch.clone();
    let task = tokio::spawn(async move { commit(&store, &ours, &[range(1, None, 1)], 2).await });
    wait_for_lock_waiters(&db.store, 1).await;
    other.commit().await.expect("commit the other profile");

    // The batch waited for the other insert, did not overwrite it, and was
    // applied to it instead.
    let profiles = applied(task.await.expect("task").expect("the batch applies"));
    assert_eq!(profiles[0].attributes["n"].value, Value::Integer(5));
    assert_eq!(profiles[0].revision, 2);
    assert_eq!(
        db.store.profile("u").await.expect("read"),
        Some(profiles[0].clone())
    );
    assert_eq!(db.store.offsets(GROUP, TOPIC).await.expect("read")[&1], 1);
}

fn archived(id: &str, offset: i64, payload: &str) -> ArchivedEvent {
    ArchivedEvent {
        event_id: id.to_owned(),
        user_id: "u-1".to_owned(),
        event_type: "page_view".to_owned(),
        event_time_ms: 1_700_000_000_000 + offset,
        topic: TOPIC.to_owned(),
        partition: 2,
        offset,
        payload: payload.to_owned(),
    }
}

#[tokio::test]
async fn archiving_is_idempotent_and_keeps_the_payload_text() {
    let db = StoreDb::new().await;
    // Spacing, key order, duplicate keys, escapes and a \u0000 that jsonb
    // would refuse: all kept as sent.
    let odd = r#"{ "type":"page_view",  "user_id" : "u-1", "p": {"b":1,"a":"x\u0000y"}, "p": 1.50e1 , "s":"caf\u00e9 ü"}"#;
    let events = vec![
        archived("e1", 10, odd),
        archived("e2", 11, r#"{"id":"e2"}"#),
        // Redelivered within the same call.
        archived("e1", 10, odd),
    ];
    db.store.archive(&events, 0).await.expect("archive");
    db.store.archive(&events, 0).await.expect("archive again");
    db.store.archive(&[], 0).await.expect("archive nothing");
    db.store
        .archive(&[archived("e3", 12, "[]")], 0)
        .await
        .expect("archive a later call");

    let rows: Vec<(String, String, i32, i64, i64, String)> = sqlx::query_as(
        "SELECT event_id, topic, partition, \"offset\", event_time_ms, payload::text \
         FROM events ORDER BY event_id",
    )
    .fetch_all(db.store.pool())
    .await
    .expect("read events");
    let ids: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(ids, ["e1", "e2", "e3"]);
    assert_eq!(rows[0].5, odd);
    assert_eq!(
        (rows[0].1.as_str(), rows[0].2, rows[0].3, rows[0].4),
        (TOPIC, 2, 10, 1_700_000_000_010)
    );
    let by_user: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE user_id = 'u-1'")
        .fetch_one(db.store.pool())
        .await
        .expect("count");
    assert_eq!(by_user, 3);
}

#[tokio::test]
async fn a_batch_of_five_thousand_users_commits() {
    let db = StoreDb::new().await;
    let users: Vec<String> = (0..5_000).map(|i| format!("user-{i:05}")).collect();
    let batch = |round: i64| {
        let mut changes = ProfileChanges::new();
        for (i, user) in users.iter().enumerate() {
            let at = round * 1_000 + i as i64;
            let event = format!("e-{round}-{i}");
            changes.insert(
                user.clone(),
                BTreeMap::from([
                    (
                        "page_views".to_owned(),
                        change(Op::Increment(3), &event, at),
                    ),
                    (
                        "last_seen".to_owned(),
                        change(Op::Max(Value::Timestamp(at)), &event, at),
                    ),
                    (
                        "device".to_owned(),
                        change(Op::Set(Value::Text("mobile".into())), &event, at),
                    ),
                ]),
            );
        }
        changes
    };
    let first = batch(1);
    let started = Instant::now();
    let profiles = applied(
        commit(&db.store, &first, &[range(0, None, 5_000)], 1)
            .await
            .expect("insert 5,000 profiles"),
    );
    println!("5,000 new profiles committed in {:?}", started.elapsed());
    assert_eq!(profiles.len(), 5_000);

    let second = batch(2);
    let started = Instant::now();
    applied(
        commit(&db.store, &second, &[range(0, Some(5_000), 10_000)], 2)
            .await
            .expect("update 5,000 profiles"),
    );
    println!(
        "5,000 existing profiles committed in {:?}",
        started.elapsed()
    );

    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM profiles WHERE revision = 2")
        .fetch_one(db.store.pool())
        .await
        .expect("count");
    assert_eq!(count, 5_000);
    let last = db
        .store
        .profile("user-04999")
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(last.attributes["page_views"].value, Value::Integer(6));
    assert_eq!(last.attributes["last_seen"].value, Value::Timestamp(6_999));
}

#[tokio::test]
async fn an_unreachable_database_fails_instead_of_hanging() {
    assert!(PgStore::connect(DEFAULT_DATABASE_URL, 0).is_err());
    assert!(PgStore::connect("not a url", 1).is_err());
    // Nothing listens on port 1.
    let store = PgStore::connect("postgres://postgres@127.0.0.1:1/postgres", 1).expect("valid URL");
    let ping = tokio::time::timeout(Duration::from_secs(30), store.ping())
        .await
        .expect("ping gives up within the acquire timeout");
    assert!(ping.is_err());
    let migrate = tokio::time::timeout(Duration::from_secs(30), store.migrate())
        .await
        .expect("migrate gives up within the acquire timeout");
    let message = format!("{:#}", migrate.expect_err("no database"));
    assert!(message.contains("migrations"), "{message}");
}

#[test]
fn database_url_replaces_only_the_database() {
    assert_eq!(
        database_url("postgres://u@h:5432/postgres?sslmode=disable", "t"),
        "postgres://u@h:5432/t?sslmode=disable"
    );
    assert_eq!(database_url("postgres://h", "t"), "postgres://h/t");
}

/// Commits `changes` with a batch's identities (no copies).
async fn commit_linking(
    store: &PgStore,
    changes: &ProfileChanges,
    offsets: &[OffsetRange],
    batch: &BatchIdentities,
    report: &LinkReport,
    now_ms: i64,
) -> StoreResult<CommitOutcome> {
    let rules = Rules::default();
    let identity = Identity {
        batch,
        rules: &rules,
        report,
    };
    commit_with(store, changes, offsets, Vec::new(), Some(identity), now_ms).await
}

/// Commits u1's profile (1 view, partition 0), then, later, so that u1's
/// is the older profile, the own profile of `anonymous` (2 views,
/// partition 1): two profiles of one person, not linked yet.
async fn u1_then_a1(store: &PgStore, anonymous: &Identifier) {
    let views = |n, event: &str| change(Op::Increment(n), event, 1);
    applied(
        commit(
            store,
            &changes(vec![("u1", "page_views", views(1, "e1"))]),
            &[range(0, None, 1)],
            1_000,
        )
        .await
        .expect("u1 commits"),
    );
    let home = anonymous.home_key();
    let mut keyed = BatchIdentities::default();
    keyed.keys.insert(home.clone(), anonymous.clone());
    applied(
        commit_linking(
            store,
            &changes(vec![(home.as_str(), "page_views", views(2, "e2"))]),
            &[range(1, None, 1)],
            &keyed,
            &LinkReport::default(),
            2_000,
        )
        .await
        .expect("the anonymous id's profile commits"),
    );
}

#[tokio::test]
async fn a_link_planned_on_a_row_another_writer_changes_meanwhile_is_planned_again_under_lock() {
    let db = StoreDb::new().await;
    let anonymous = Identifier::new(ANONYMOUS_ID, "a1");
    let a1 = anonymous.home_key();
    let views = |n, event: &str| change(Op::Increment(n), event, 1);
    u1_then_a1(&db.store, &anonymous).await;

    // Another writer holds a1's row...
    let mut other = db.store.pool().begin().await.expect("begin");
    let (Json(mut row),): (Json<Profile>,) =
        sqlx::query_as("SELECT profile FROM profiles WHERE user_id = $1 FOR UPDATE")
            .bind(&a1)
            .fetch_one(&mut *other)
            .await
            .expect("lock a1's row");
    // ...while a batch links u1 and a1: it plans on a1's row as read,
    // without waiting, and its write then waits for the row lock.
    let mut linking = BatchIdentities::default();
    linking.links.push(Link {
        event_id: "e-identify".to_owned(),
        identifiers: vec![Identifier::new(USER_ID, "u1"), anonymous.clone()],
        alias: false,
    });
    let batch = changes(vec![("u1", "page_views", views(1, "e-identify"))]);
    let store = db.store.clone();
    let linker = tokio::spawn(async move {
        let report = LinkReport::default();
        let outcome = commit_linking(
            &store,
            &batch,
            &[range(0, Some(1), 2)],
            &linking,
            &report,
            3_000,
        )
        .await;
        (outcome, report.take().0.len())
    });
    let waiting = Instant::now();
    loop {
        let blocked: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(db.store.pool())
        .await
        .expect("pg_stat_activity");
        if blocked == 1 {
            break;
        }
        assert!(
            waiting.elapsed() < Duration::from_secs(20),
            "the linking batch never waited for a1's row"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The other writer counts 5 more views on a1 and commits: the row the
    // link was planned on is no longer the one it read.
    // (apply moves the revision on by one.)
    row.apply(
        &changes(vec![("x", "page_views", views(5, "e3"))])["x"],
        2_500,
    );
    sqlx::query("UPDATE profiles SET profile = $2::json, revision = $3 WHERE user_id = $1")
        .bind(&a1)
        .bind(serde_json::to_string(&row).expect("encode"))
        .bind(row.revision)
        .execute(&mut *other)
        .await
        .expect("update a1");
    other.commit().await.expect("commit the other writer");

    let (outcome, merges) = linker.await.expect("the linking batch ran");
    applied(outcome.expect("planned again under lock, in the same commit"));
    assert_eq!(merges, 1, "one merge reported");
    let u1 = db.store.profile("u1").await.expect("read").expect("u1");
    assert_eq!(
        u1.attributes["page_views"].value,
        Value::Integer(1 + 1 + 2 + 5),
        "the merge took a1 as the other writer left it"
    );
    assert_eq!(
        u1.identifiers,
        vec![anonymous, Identifier::new(USER_ID, "u1")]
    );
    assert_merged_away(&db, &a1, "u1", 1).await;
}

/// The row at `key` is a pointer to `survivor`, and the merge log holds
/// `recorded` rows.
async fn assert_merged_away(db: &StoreDb, key: &str, survivor: &str, recorded: i64) {
    let pointer = db
        .store
        .profile(key)
        .await
        .expect("read")
        .expect("the merged-away row");
    assert_eq!(pointer.merged_into.as_deref(), Some(survivor));
    let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM profile_merges")
        .fetch_one(db.store.pool())
        .await
        .expect("count merges");
    assert_eq!(logged, recorded);
}

/// A batch's links are planned over the caller's copies, and a copy
/// another writer has overtaken is planned again from the stored row,
/// under lock, in the same commit.
#[tokio::test]
async fn links_are_planned_over_the_callers_copies_and_an_overtaken_copy_again_under_lock() {
    let db = StoreDb::new().await;
    let views = |n, event: &str| change(Op::Increment(n), event, 1);
    // A person's user id `user` on partition `p`, then (later, so the
    // user's is the older profile) the anonymous id's own profile on
    // partition p + 1: the committer's copies of both.
    let person = |user: &'static str, anonymous: &'static str, p: i32, at: i64| {
        let store = db.store.clone();
        async move {
            let anonymous = Identifier::new(ANONYMOUS_ID, anonymous);
            let home = anonymous.home_key();
            let user_copy = applied(
                commit(
                    &store,
                    &changes(vec![(user, "page_views", views(1, &format!("{user}-1")))]),
                    &[range(p, None, 1)],
                    at,
                )
                .await
                .expect("the user's profile commits"),
            )
            .remove(0);
            let mut keyed = BatchIdentities::default();
            keyed.keys.insert(home.clone(), anonymous.clone());
            let anonymous_copy = applied(
                commit_linking(
                    &store,
                    &changes(vec![(
                        home.as_str(),
                        "page_views",
                        views(2, &format!("{user}-2")),
                    )]),
                    &[range(p + 1, None, 1)],
                    &keyed,
                    &LinkReport::default(),
                    at + 1_000,
                )
                .await
                .expect("the anonymous profile commits"),
            )
            .remove(0);
            (anonymous, user_copy, anonymous_copy)
        }
    };
    // Links `user` and `anonymous` from partition `p`, the copies given;
    // returns the merges reported and the user's page views after.
    let link = |user: &'static str, anonymous: Identifier, p: i32, copies: Vec<Profile>| {
        let store = db.store.clone();
        async move {
            let mut linking = BatchIdentities::default();
            linking.links.push(Link {
                event_id: format!("{user}-identify"),
                identifiers: vec![Identifier::new(USER_ID, user), anonymous],
                alias: false,
            });
            let rules = Rules::default();
            let report = LinkReport::default();
            let identity = Identity {
                batch: &linking,
                rules: &rules,
                report: &report,
            };
            let batch = changes(vec![(user, "page_views", views(1, &format!("{user}-3")))]);
            let outcome = commit_with(
                &store,
                &batch,
                &[range(p, Some(1), 2)],
                copies,
                Some(identity),
                9_000,
            )
            .await
            .expect("the link commits");
            applied(outcome);
            let profile = store.profile(user).await.expect("read").expect("the user");
            (report.take().0.len(), profile)
        }
    };

    // The copies are the stored revisions: the plan takes them as they
    // are, so a value only the user's copy holds shows through.
    let (anonymous, mut u1, a1) = person("u1", "a1", 0, 1_000).await;
    u1.attributes.get_mut("page_views").expect("views").value = Value::Integer(40);
    let (merges, u1) = link("u1", anonymous.clone(), 0, vec![u1, a1]).await;
    assert_eq!(merges, 1);
    assert_eq!(
        u1.attributes["page_views"].value,
        Value::Integer(40 + 2 + 1)
    );
    assert_eq!(
        u1.identifiers,
        vec![anonymous, Identifier::new(USER_ID, "u1")]
    );

    // Another writer counts 5 more views on a2's profile after the copy
    // was taken: the plan over the copies is refused, and the batch is
    // planned again over the rows as stored, under lock.
    let (anonymous, mut u2, mut a2) = person("u2", "a2", 2, 3_000).await;
    applied(
        commit(
            &db.store,
            &changes(vec![(
                a2.user_id.as_str(),
                "page_views",
                views(5, "u2-other"),
            )]),
            &[range(4, None, 1)],
            4_500,
        )
        .await
        .expect("the other writer commits"),
    );
    u2.attributes.get_mut("page_views").expect("views").value = Value::Integer(40);
    a2.attributes.get_mut("page_views").expect("views").value = Value::Integer(900);
    let home = a2.user_id.clone();
    let (merges, u2) = link("u2", anonymous.clone(), 2, vec![u2, a2]).await;
    assert_eq!(merges, 1, "one merge reported");
    assert_eq!(
        u2.attributes["page_views"].value,
        Value::Integer(1 + 2 + 5 + 1),
        "both profiles as stored, and the batch's view"
    );
    assert_eq!(
        u2.identifiers,
        vec![anonymous, Identifier::new(USER_ID, "u2")]
    );
    assert_merged_away(&db, &home, "u2", 2).await;
}

/// A change keyed by a pointer the caller holds a copy of, without a copy
/// of the profile it leads to (a lane that keyed an event before it learnt
/// of the merge): the commit reads that profile and applies the change
/// there, in one attempt.
#[tokio::test]
async fn a_change_at_a_held_pointer_goes_to_the_profile_it_leads_to() {
    let db = StoreDb::new().await;
    let views = |n, event: &str| change(Op::Increment(n), event, 1);
    let anonymous = Identifier::new(ANONYMOUS_ID, "a1");
    let home = anonymous.home_key();
    u1_then_a1(&db.store, &anonymous).await;
    let mut linking = BatchIdentities::default();
    linking.links.push(Link {
        event_id: "e3".to_owned(),
        identifiers: vec![Identifier::new(USER_ID, "u1"), anonymous],
        alias: false,
    });
    let written = applied(
        commit_linking(
            &db.store,
            &changes(vec![("u1", "page_views", views(1, "e3"))]),
            &[range(0, Some(1), 2)],
            &linking,
            &LinkReport::default(),
            3_000,
        )
        .await
        .expect("the link commits"),
    );
    let pointer = written
        .into_iter()
        .find(|row| row.user_id == home)
        .expect("the anonymous profile, now a pointer, is written");
    assert_eq!(pointer.merged_into.as_deref(), Some("u1"));

    let written = applied(
        commit_from(
            &db.store,
            &changes(vec![(home.as_str(), "page_views", views(5, "e4"))]),
            &[range(1, Some(1), 2)],
            vec![pointer],
            4_000,
        )
        .await
        .expect("a change at a held pointer commits at the first attempt"),
    );
    assert_eq!(written.len(), 1, "only the profile is written: {written:?}");
    assert_eq!(written[0].user_id, "u1");
    assert_eq!(
        written[0].attributes["page_views"].value,
        Value::Integer(1 + 2 + 1 + 5)
    );
}
