use std::sync::Arc;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::model::merge::{AttributeChange, ProfileChanges, Provenance};
use crate::model::update::{Op, Value};
use crate::pipeline::dead_letter::DeadReason;
use crate::pipeline::source::{Batch, BatchLimits, Lanes, Record, Source};
use crate::plugin::ErrorKind;
use crate::store::OffsetRange;

mod source;
mod updates;

pub(super) fn event(key: &str, n: usize) -> OutgoingEvent {
    OutgoingEvent {
        key: key.to_owned(),
        payload: format!("{{\"n\":{n}}}").into_bytes(),
    }
}

pub(super) fn limits(max_events: usize) -> BatchLimits {
    BatchLimits {
        max_events,
        max_users: usize::MAX,
        max_bytes: usize::MAX,
        max_wait: Duration::from_millis(20),
    }
}

/// Runs `group`'s source until it has delivered `count` records (or has
/// delivered nothing new for 2 s), stops it and returns the batches.
pub(super) fn drain(
    store: &EmbeddedStore,
    group: &str,
    count: usize,
    max_events: usize,
) -> Vec<Batch> {
    let source = store.source(group);
    let (lanes, mut receivers) = Lanes::new(1, 64);
    let receiver = receivers.remove(0);
    let stop = CancellationToken::new();
    let thread = {
        let stop = stop.clone();
        std::thread::spawn(move || source.run(&lanes, limits(max_events), &stop))
    };
    let mut batches = Vec::new();
    let mut seen = 0;
    while seen < count {
        match receiver.recv_timeout(Duration::from_secs(2)) {
            Ok(batch) => {
                seen += batch.records.len();
                batches.push(batch);
            }
            Err(RecvTimeoutError::Timeout) => break,
            Err(RecvTimeoutError::Disconnected) => panic!("the source ended early"),
        }
    }
    stop.cancel();
    let outcome = thread.join().expect("the source thread does not panic");
    outcome.expect("the source stops cleanly");
    batches
}

pub(super) fn offsets_of(batches: &[Batch]) -> Vec<i64> {
    batches
        .iter()
        .flat_map(|b| b.records.iter().map(|r| r.offset))
        .collect()
}

pub(super) fn change(op: Op, event_id: &str, event_time_ms: i64) -> AttributeChange {
    AttributeChange {
        op,
        provenance: Provenance {
            plugin: Arc::from("counter"),
            plugin_version: Arc::from("1.0.0"),
            event_id: event_id.to_owned(),
            event_time_ms,
        },
    }
}

pub(super) fn changes(entries: &[(&str, &str, AttributeChange)]) -> ProfileChanges {
    let mut changes = ProfileChanges::new();
    for (user, attribute, change) in entries {
        changes
            .entry((*user).to_owned())
            .or_default()
            .insert((*attribute).to_owned(), change.clone());
    }
    changes
}

pub(super) async fn commit(
    store: &EmbeddedStore,
    group: &str,
    changes: &ProfileChanges,
    expected: Option<i64>,
    next: i64,
) -> CommitOutcome {
    let offsets = [OffsetRange {
        partition: 0,
        expected,
        next,
    }];
    store
        .commit(Commit {
            group,
            topic: INBOX_TOPIC,
            changes,
            offsets: &offsets,
            plugins: &[],
            known: Default::default(),
            now_ms: 1_000,
            identity: None,
            suppressions: 0,
        })
        .await
        .expect("the commit reaches the store")
}

pub(super) fn inbox_offsets(store: &EmbeddedStore) -> Vec<u64> {
    let txn = store.inner.db.begin_read().expect("read transaction");
    let table = txn.open_table(INBOX).expect("inbox table");
    table
        .iter()
        .expect("iterate")
        .map(|entry| entry.expect("entry").0.value())
        .collect()
}

#[tokio::test]
async fn a_commit_applies_changes_and_offsets_together() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("opens");
    let first = changes(&[
        ("u-1", "views", change(Op::Increment(2), "e1", 10)),
        (
            "u-2",
            "device",
            change(Op::Set(Value::Text("mobile".into())), "e2", 11),
        ),
    ]);
    let CommitOutcome::Applied(profiles) = commit(&store, "enrich", &first, None, 10).await else {
        panic!("a first commit with no stored offset applies");
    };
    assert_eq!(profiles.len(), 2);
    assert_eq!(profiles[0].user_id, "u-1");
    assert_eq!(profiles[0].created_at_ms, 1_000);
    assert_eq!(
        store.offsets("enrich", INBOX_TOPIC).await.expect("reads"),
        HashMap::from([(0, 10)])
    );

    let second = changes(&[("u-1", "views", change(Op::Increment(3), "e9", 20))]);
    let CommitOutcome::Applied(profiles) = commit(&store, "enrich", &second, Some(10), 12).await
    else {
        panic!("a commit expecting the stored offset applies");
    };
    assert_eq!(profiles.len(), 1);
    let stored = store
        .profile("u-1")
        .await
        .expect("reads")
        .expect("u-1 exists");
    assert_eq!(profiles[0], stored);
    assert_eq!(stored.attributes["views"].value, Value::Integer(5));
    assert_eq!(stored.attributes["views"].event_id, "e9");
    assert_eq!(stored.revision, 2);
    let device = store.profile("u-2").await.expect("reads").expect("exists");
    assert_eq!(
        device.attributes["device"].value,
        Value::Text("mobile".into())
    );
    assert_eq!(
        store.offsets("enrich", INBOX_TOPIC).await.expect("reads"),
        HashMap::from([(0, 12)])
    );
    assert!(
        store
            .offsets("archive", INBOX_TOPIC)
            .await
            .expect("reads")
            .is_empty()
    );
    assert!(store.profile("nobody").await.expect("reads").is_none());
}

#[tokio::test]
async fn a_stale_commit_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("opens");
    let first = changes(&[("u-1", "views", change(Op::Increment(1), "e1", 1))]);
    commit(&store, "enrich", &first, None, 10).await;
    let before = store.profile("u-1").await.expect("reads");

    let more = changes(&[
        ("u-1", "views", change(Op::Increment(100), "e2", 2)),
        ("u-new", "views", change(Op::Increment(1), "e3", 3)),
    ]);
    for expected in [None, Some(5), Some(11)] {
        let outcome = commit(&store, "enrich", &more, expected, 20).await;
        assert!(
            matches!(outcome, CommitOutcome::Stale),
            "expected {expected:?} against stored 10"
        );
    }
    // Expecting an offset for a partition nobody committed is stale too.
    let outcome = commit(&store, "fresh", &more, Some(0), 1).await;
    assert!(matches!(outcome, CommitOutcome::Stale));

    assert_eq!(store.profile("u-1").await.expect("reads"), before);
    assert!(store.profile("u-new").await.expect("reads").is_none());
    assert_eq!(
        store.offsets("enrich", INBOX_TOPIC).await.expect("reads"),
        HashMap::from([(0, 10)])
    );
    assert!(
        store
            .offsets("fresh", INBOX_TOPIC)
            .await
            .expect("reads")
            .is_empty()
    );
}

#[tokio::test]
async fn profiles_and_offsets_survive_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let written = {
        let store = EmbeddedStore::open(dir.path()).expect("opens");
        let batch = changes(&[(
            "u-1",
            "last_seen",
            change(Op::Max(Value::Timestamp(77)), "e1", 77),
        )]);
        let CommitOutcome::Applied(profiles) = commit(&store, "enrich", &batch, None, 4).await
        else {
            panic!("applies");
        };
        profiles
    };
    let store = EmbeddedStore::open(dir.path()).expect("reopens");
    assert_eq!(
        store.profile("u-1").await.expect("reads").as_ref(),
        written.first()
    );
    assert_eq!(
        store.offsets("enrich", INBOX_TOPIC).await.expect("reads"),
        HashMap::from([(0, 4)])
    );
}

#[tokio::test]
async fn dead_letters_round_trip_byte_for_byte() {
    let dir = tempfile::tempdir().expect("tempdir");
    let letters = vec![
        DeadLetter {
            topic: INBOX_TOPIC.into(),
            partition: 0,
            offset: 3,
            key: None,
            payload: vec![0xff, b'{', 0x00, 0xc3],
            event_id: None,
            reason: DeadReason::BadEvent {
                detail: "not JSON".into(),
            },
        },
        DeadLetter {
            topic: INBOX_TOPIC.into(),
            partition: 0,
            offset: 4,
            key: Some(b"u-\xe9".to_vec()),
            payload: br#"{"id":"e-4","user_id":"u-1"}"#.to_vec(),
            event_id: Some("e-4".into()),
            reason: DeadReason::PluginError {
                plugin: "device-classifier".into(),
                plugin_version: "1.2.0".into(),
                kind: ErrorKind::Trap,
                detail: "unreachable executed".into(),
            },
        },
    ];
    {
        let store = EmbeddedStore::open(dir.path()).expect("opens");
        store.send(&letters[..1]).await.expect("stores");
        store.send(&letters[1..]).await.expect("stores");
        assert_eq!(store.dead_letters().expect("reads"), letters);
    }
    let store = EmbeddedStore::open(dir.path()).expect("reopens");
    assert_eq!(store.dead_letters().expect("reads"), letters);

    // The stored JSON is readable as text.
    let txn = store.inner.db.begin_read().expect("read");
    let table = txn.open_table(DEAD_LETTERS).expect("table");
    let row = table.get(1).expect("reads").expect("second letter");
    let json: serde_json::Value = serde_json::from_str(row.value()).expect("JSON");
    assert_eq!(json["payload"], r#"{"id":"e-4","user_id":"u-1"}"#);
    assert!(json.get("payload_hex").is_none());
    assert_eq!(json["key_hex"], "752de9");
    assert_eq!(json["reason"], "plugin-error");
    assert_eq!(json["plugin"], "device-classifier");
    assert_eq!(json["error_kind"], "trap");
}

#[tokio::test]
async fn archiving_keeps_the_first_copy_of_an_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("opens");
    let archived = |id: &str, offset: i64, payload: &str| ArchivedEvent {
        event_id: id.into(),
        user_id: "u-1".into(),
        event_type: "page_view".into(),
        event_time_ms: 5,
        topic: INBOX_TOPIC.into(),
        partition: 0,
        offset,
        payload: payload.into(),
    };
    store
        .archive(&[archived("e1", 0, "first"), archived("e2", 1, "two")], 0)
        .await
        .expect("archives");
    store
        .archive(
            &[archived("e1", 7, "replayed"), archived("e3", 2, "three")],
            0,
        )
        .await
        .expect("archives again");

    let txn = store.inner.db.begin_read().expect("read");
    let table = txn.open_table(ARCHIVE).expect("table");
    assert_eq!(table.len().expect("counts"), 3);
    let row = table.get("e1").expect("reads").expect("e1 archived");
    let json: serde_json::Value = serde_json::from_str(row.value()).expect("JSON");
    assert_eq!(json["payload"], "first");
    assert_eq!(json["offset"], 0);
    assert_eq!(json["event_type"], "page_view");
    assert_eq!(json["user_id"], "u-1");
}

#[tokio::test]
async fn committed_moves_a_group_forward_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("opens");
    let source = store.source("archive");
    source.committed(&[(0, 5)]);
    source.committed(&[(0, 3)]);
    assert_eq!(
        store.offsets("archive", INBOX_TOPIC).await.expect("reads"),
        HashMap::from([(0, 5)])
    );
    source.committed(&[(0, 8)]);
    assert_eq!(
        store.offsets("archive", INBOX_TOPIC).await.expect("reads"),
        HashMap::from([(0, 8)])
    );
}

#[tokio::test]
async fn the_lag_is_the_inbox_end_minus_the_group_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("opens");
    let enrich = store.source("enrich");
    let archive = store.source("archive");
    assert_eq!(enrich.lag().expect("reads"), vec![(0, 0)], "empty inbox");

    let events: Vec<OutgoingEvent> = (0..10).map(|n| event("u-1", n)).collect();
    store.publish(&events).await.expect("publishes");
    commit(&store, "enrich", &ProfileChanges::new(), None, 6).await;
    archive.committed(&[(0, 9)]);
    assert_eq!(enrich.lag().expect("reads"), vec![(0, 4)]);
    assert_eq!(archive.lag().expect("reads"), vec![(0, 1)]);

    // Trimmed entries do not count: the end is the next offset to publish.
    commit(&store, "enrich", &ProfileChanges::new(), Some(6), 10).await;
    archive.committed(&[(0, 10)]);
    assert!(inbox_offsets(&store).is_empty());
    store.publish(&[event("u-2", 10)]).await.expect("publishes");
    assert_eq!(enrich.lag().expect("reads"), vec![(0, 1)]);
}

#[tokio::test]
async fn the_inbox_keeps_what_the_slowest_reader_needs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("opens");
    let events: Vec<OutgoingEvent> = (0..10).map(|n| event("u-1", n)).collect();
    store.publish(&events).await.expect("publishes");
    let archive = store.source("archive");

    // The archive group has a source but no commit yet: nothing goes.
    commit(&store, "enrich", &ProfileChanges::new(), None, 6).await;
    assert_eq!(inbox_offsets(&store), (0..10).collect::<Vec<_>>());

    archive.committed(&[(0, 4)]);
    assert_eq!(inbox_offsets(&store), (4..10).collect::<Vec<_>>());

    commit(&store, "enrich", &ProfileChanges::new(), Some(6), 10).await;
    archive.committed(&[(0, 10)]);
    assert!(inbox_offsets(&store).is_empty());

    // Offsets carry on after the inbox emptied, also across a reopen.
    drop(archive);
    drop(store);
    let store = EmbeddedStore::open(dir.path()).expect("reopens");
    store.publish(&[event("u-2", 10)]).await.expect("publishes");
    assert_eq!(inbox_offsets(&store), vec![10]);
    let batches = drain(&store, "enrich", 1, 10);
    assert_eq!(offsets_of(&batches), vec![10]);
}

#[test]
fn a_second_open_of_the_data_dir_fails_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("nested").join("data");
    let store = EmbeddedStore::open(&data_dir).expect("creates the folders and opens");
    let error = EmbeddedStore::open(&data_dir).expect_err("the file is held");
    let message = format!("{error:#}");
    assert!(message.contains("in use"), "{message}");
    assert!(
        message.contains(&data_dir.display().to_string()),
        "{message}"
    );
    drop(store);
    EmbeddedStore::open(&data_dir).expect("opens once released");
}

/// Where [`a_second_process_is_refused_while_the_store_is_open`] tells its
/// child process to open the store.
const CHILD_DATA_DIR: &str = "PULSEHUB_EMBEDDED_TEST_DATA_DIR";

#[test]
fn a_second_process_is_refused_while_the_store_is_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _store = EmbeddedStore::open(dir.path()).expect("opens");
    let output = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "store::embedded::tests::child_opens_a_store_in_use",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_DATA_DIR, dir.path())
        .output()
        .expect("runs the child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("1 passed"), "{stdout}");
}

/// Run by [`a_second_process_is_refused_while_the_store_is_open`] in a child
/// process: passes when opening the store it names fails as in use.
#[test]
#[ignore = "run as a child process by a_second_process_is_refused_while_the_store_is_open"]
fn child_opens_a_store_in_use() {
    let dir = std::env::var_os(CHILD_DATA_DIR).expect("the parent names the data dir");
    let error = EmbeddedStore::open(std::path::Path::new(&dir)).expect_err("the parent holds it");
    let message = format!("{error:#}");
    println!("child: {message}");
    assert!(message.contains("is in use"), "{message}");
}
