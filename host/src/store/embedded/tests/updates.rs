//! The `profile-updates` log the embedded store writes with its changes.

use serde_json::{Value as Json, json};

use super::*;
use crate::activation::feed::{UpdateFeed, UpdatePage};
use crate::segment::{SegmentStore, Stored};

async fn page(store: &EmbeddedStore, after: u64) -> UpdatePage {
    store.read(after, 1_000).await.expect("the log reads")
}

/// The messages of `page`, as (sequence, profile id, JSON).
fn messages(page: &UpdatePage) -> Vec<(u64, String, Json)> {
    page.messages
        .iter()
        .map(|update| {
            let json = serde_json::from_str(&update.message).expect("a message is JSON");
            (update.sequence, update.profile_id.clone(), json)
        })
        .collect()
}

/// Defines segment `name` with `condition`, and makes the store's commits
/// evaluate it.
async fn define(store: &EmbeddedStore, name: &str, condition: &str, emit: bool) -> u32 {
    let stored = store
        .put_definition(name, &json!(condition), emit, 1_000)
        .await
        .expect("the definition is stored");
    let (Stored::Created(definition) | Stored::Changed(definition)) = stored else {
        panic!("{name} is new");
    };
    let definitions = store.definitions().await.expect("definitions read");
    store.segments().replace(&definitions);
    definition.id
}

#[tokio::test]
async fn a_commit_writes_its_messages_in_key_order_with_its_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("opens");
    store.publish_updates();
    define(&store, "fans", "views >= 3", false).await;
    let newest = store.newest();
    let first = changes(&[
        ("u-2", "views", change(Op::Increment(5), "e2", 20)),
        ("u-1", "views", change(Op::Increment(1), "e1", 10)),
    ]);
    commit(&store, "enrich", &first, None, 2).await;

    let log = page(&store, 0).await;
    assert_eq!((log.oldest, log.newest), (1, 3));
    let written = messages(&log);
    let order: Vec<(u64, &str, &str)> = written
        .iter()
        .map(|(sequence, id, json)| (*sequence, id.as_str(), json["type"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(
        order,
        [
            (1, "u-1", "profile.updated"),
            (2, "u-2", "profile.updated"),
            (3, "u-2", "segment.entered"),
        ]
    );
    let u2 = &written[1].2;
    assert_eq!(u2["revision"], 1);
    assert_eq!(u2["attributes"]["views"]["value"], 5);
    assert_eq!(u2["segments"], json!({"entered": ["fans"], "exited": []}));
    assert_eq!(written[2].2["segment"], "fans");
    assert_eq!(*newest.borrow(), 3, "readers learn of the new messages");

    // The next commit's messages follow; a reader resumes after any of them.
    let second = changes(&[("u-1", "views", change(Op::Increment(1), "e3", 30))]);
    commit(&store, "enrich", &second, Some(2), 3).await;
    let after = messages(&page(&store, 3).await);
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].0, 4);
    assert_eq!(after[0].2["revision"], 2);
    assert_eq!(after[0].2["attributes"]["views"]["value"], 2);
}

#[tokio::test]
async fn a_commit_that_changes_nothing_writes_no_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("opens");
    store.publish_updates();
    let batch = changes(&[("u-1", "views", change(Op::Increment(1), "e1", 10))]);
    commit(&store, "enrich", &batch, None, 1).await;
    assert_eq!(page(&store, 0).await.newest, 1);

    // The same batch again, after its commit: stale.
    let outcome = commit(&store, "enrich", &batch, None, 1).await;
    assert!(matches!(outcome, CommitOutcome::Stale));
    // Offsets alone (a batch whose events all went to dead letters).
    commit(&store, "enrich", &ProfileChanges::new(), Some(1), 2).await;
    let log = page(&store, 0).await;
    assert_eq!((log.oldest, log.newest, log.messages.len()), (1, 1, 1));
}

#[tokio::test]
async fn with_the_stream_off_nothing_is_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("opens");
    let batch = changes(&[("u-1", "views", change(Op::Increment(1), "e1", 10))]);
    commit(&store, "enrich", &batch, None, 1).await;
    assert_eq!(
        page(&store, 0).await,
        UpdatePage {
            oldest: 1,
            newest: 0,
            messages: Vec::new(),
        }
    );
}

#[tokio::test]
async fn the_log_keeps_the_newest_messages_and_never_reuses_a_number() {
    let dir = tempfile::tempdir().expect("tempdir");
    let message = |n: usize| (format!("u-{n}"), format!("{{\"n\":{n}}}"));
    {
        let store = EmbeddedStore::open(dir.path()).expect("opens");
        for batch in [0..4, 4..5] {
            let txn = store.inner.db.begin_write().expect("write transaction");
            let written: Vec<(String, String)> = batch.map(message).collect();
            super::super::updates::append(&txn, &written, 3).expect("appends");
            txn.commit().expect("commits");
        }
        let log = page(&store, 0).await;
        assert_eq!((log.oldest, log.newest), (3, 5));
        let kept: Vec<u64> = log.messages.iter().map(|m| m.sequence).collect();
        assert_eq!(kept, [3, 4, 5]);
        assert_eq!(log.messages[2].profile_id, "u-4");
        assert_eq!(log.messages[2].message, "{\"n\":4}");
    }
    // After a restart, readers start from the stored end and new messages
    // get new numbers.
    let store = EmbeddedStore::open(dir.path()).expect("reopens");
    store.publish_updates();
    assert_eq!(*store.newest().borrow(), 5);
    let batch = changes(&[("u-9", "views", change(Op::Increment(1), "e1", 10))]);
    commit(&store, "enrich", &batch, None, 1).await;
    let log = page(&store, 5).await;
    assert_eq!(log.messages.len(), 1);
    assert_eq!(log.messages[0].sequence, 6);
    assert_eq!(log.messages[0].profile_id, "u-9");
}

#[tokio::test]
async fn memberships_time_and_backfills_change_are_written_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("opens");
    store.publish_updates();
    define(&store, "recent", "last_seen > now - duration('1s')", false).await;
    let batch = changes(&[
        (
            "u-1",
            "last_seen",
            change(Op::Max(Value::Timestamp(900)), "e1", 900),
        ),
        ("u-1", "views", change(Op::Increment(1), "e1", 900)),
    ]);
    commit(&store, "enrich", &batch, None, 1).await;
    let entered = page(&store, 0).await.newest;
    assert_eq!(entered, 2, "profile.updated and segment.entered");

    // Time alone takes u-1 out of `recent`.
    let round = store.reevaluate_due(2_000, 10).await.expect("re-evaluates");
    assert_eq!(round.changed.len(), 1);
    let exited = messages(&page(&store, entered).await);
    let kinds: Vec<&str> = exited
        .iter()
        .map(|m| m.2["type"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(kinds, ["profile.updated", "segment.exited"]);
    assert_eq!(
        exited[0].2["attributes"],
        json!({}),
        "time changed no attribute"
    );
    assert_eq!(exited[0].2["revision"], 2);
    assert_eq!(exited[1].2["segment"], "recent");

    // A segment defined later: its backfill is written when it emits.
    let quiet = define(&store, "quiet", "views > 0", false).await;
    let page_of_quiet = store
        .backfill_page(quiet, 3_000, 10)
        .await
        .expect("backfills");
    assert_eq!(page_of_quiet.map(|page| page.changed.len()), Some(1));
    assert_eq!(
        page(&store, 0).await.newest,
        4,
        "a backfill that does not emit"
    );
    let loud = define(&store, "loud", "views > 0", true).await;
    store
        .backfill_page(loud, 3_000, 10)
        .await
        .expect("backfills");
    let backfilled = messages(&page(&store, 4).await);
    let kinds: Vec<(&str, &str)> = backfilled
        .iter()
        .map(|m| (m.2["type"].as_str().unwrap_or(""), m.1.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [("profile.updated", "u-1"), ("segment.entered", "u-1")]
    );
    assert_eq!(backfilled[1].2["segment"], "loud");
}

#[tokio::test]
async fn a_deletion_leaves_nothing_of_the_person_but_that_they_were_deleted() {
    use crate::model::identity::Identifier;
    use crate::privacy::{PrivacyStore, RequestKind};

    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("opens");
    store.publish_updates();
    let fans = define(&store, "fans", "views >= 1", false).await;
    let batch = changes(&[
        ("u-1", "views", change(Op::Increment(1), "e1", 10)),
        ("u-2", "views", change(Op::Increment(2), "e2", 20)),
    ]);
    commit(&store, "enrich", &batch, None, 2).await;
    let members = store.members(fans, None, 10).await.expect("members");
    assert_eq!(members, ["u-1", "u-2"]);

    let request = store
        .submit(
            RequestKind::Delete,
            &[Identifier::new("user_id", "u-1")],
            &["u-1".to_owned()],
            "test",
            5_000,
        )
        .await
        .expect("submitted");
    store
        .apply(request.id, 5_000)
        .await
        .expect("applied")
        .expect("pending until now");

    // Out of the segment, with no exit announced...
    assert_eq!(
        store.members(fans, None, 10).await.expect("members"),
        ["u-2"]
    );
    assert_eq!(store.member_count(fans).await.expect("count"), 1);
    // ...and the log holds only that u-1 was deleted, after u-2's messages.
    let log = messages(&page(&store, 0).await);
    let about_u1: Vec<&Json> = log
        .iter()
        .filter(|(_, id, _)| id == "u-1")
        .map(|(_, _, json)| json)
        .collect();
    assert_eq!(
        about_u1,
        [
            &json!({"type": "profile.deleted", "profile_id": "u-1", "revision": 2,
                 "at": "1970-01-01T00:00:05.000Z"})
        ]
    );
    assert_eq!(
        log.iter().filter(|(_, id, _)| id == "u-2").count(),
        2,
        "u-2's profile.updated and segment.entered stay"
    );
}
