//! The embedded inbox as a source: order, resumption, wake-up, shutdown, the
//! lanes' threads, and both pipelines running on one store.

use super::*;

#[tokio::test]
async fn the_source_delivers_in_order_and_resumes_from_the_committed_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("opens");
    store
        .publish(&[event("u-1", 0), event("u-2", 1)])
        .await
        .expect("publishes");
    store
        .publish(&[event("u-1", 2), event("u-3", 3), event("u-1", 4)])
        .await
        .expect("publishes");

    let batches = drain(&store, "enrich", 5, 2);
    assert_eq!(offsets_of(&batches), vec![0, 1, 2, 3, 4]);
    assert!(
        batches
            .iter()
            .all(|b| b.records.len() <= 2 && &*b.topic == "inbox")
    );
    let first: &Record = &batches[0].records[0];
    assert_eq!(first.partition, 0);
    assert_eq!(first.key.as_deref(), Some(&b"u-1"[..]));
    assert_eq!(first.payload, b"{\"n\":0}");

    // The group counted the first three events; the last two were read but
    // not committed.
    let outcome = commit(&store, "enrich", &ProfileChanges::new(), None, 3).await;
    assert!(matches!(outcome, CommitOutcome::Applied(_)));
    drop(store);

    let store = EmbeddedStore::open(dir.path()).expect("reopens");
    store
        .publish(&[event("u-4", 5)])
        .await
        .expect("publishes after reopening");
    let batches = drain(&store, "enrich", 3, 100);
    assert_eq!(offsets_of(&batches), vec![3, 4, 5]);
    // The commit let go of what only "enrich" read: a group unknown until
    // now starts at the oldest entry kept.
    let batches = drain(&store, "other", 3, 100);
    assert_eq!(offsets_of(&batches), vec![3, 4, 5]);
}

#[tokio::test]
async fn a_caught_up_source_wakes_on_publish() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("opens");
    let source = store.source("enrich");
    let (lanes, mut receivers) = Lanes::new(1, 8);
    let receiver = receivers.remove(0);
    let stop = CancellationToken::new();
    let thread = {
        let stop = stop.clone();
        let limits = BatchLimits {
            max_events: 100,
            max_users: usize::MAX,
            max_bytes: usize::MAX,
            // Longer than the test waits: only the wake-up can deliver in time.
            max_wait: Duration::from_secs(60),
        };
        std::thread::spawn(move || source.run(&lanes, limits, &stop))
    };
    std::thread::sleep(Duration::from_millis(150));
    let published = Instant::now();
    store.publish(&[event("u-1", 0)]).await.expect("publishes");
    let batch = receiver
        .recv_timeout(Duration::from_secs(5))
        .expect("the publish wakes the source");
    assert_eq!(offsets_of(&[batch]), vec![0]);
    assert!(published.elapsed() < Duration::from_secs(5));

    let stopped = Instant::now();
    stop.cancel();
    thread
        .join()
        .expect("no panic")
        .expect("the source stops cleanly");
    // The stop token is checked at least every 100 ms even with a long max_wait.
    assert!(stopped.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn the_source_returns_when_the_lanes_close() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("opens");
    store.publish(&[event("u-1", 0)]).await.expect("publishes");
    let (lanes, receivers) = Lanes::new(1, 1);
    drop(receivers);
    let outcome = store
        .source("enrich")
        .run(&lanes, limits(10), &CancellationToken::new());
    outcome.expect("closed lanes end the source without an error");
}

/// The production runtime is multi-threaded and the lanes call the store
/// through `Handle::block_on` from their own threads: both paths work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_on_a_multi_thread_runtime_and_from_lane_threads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("opens");
    store.publish(&[event("u-1", 0)]).await.expect("publishes");
    let handle = Handle::current();
    let lane_store = store.clone();
    let outcome = std::thread::spawn(move || {
        let batch = changes(&[("u-1", "views", change(Op::Increment(1), "e1", 1))]);
        handle.block_on(commit(&lane_store, "enrich", &batch, None, 1))
    })
    .join()
    .expect("the lane thread does not panic");
    assert!(matches!(outcome, CommitOutcome::Applied(_)));
    let profile = store.profile("u-1").await.expect("reads").expect("exists");
    assert_eq!(profile.attributes["views"].value, Value::Integer(1));
}

/// The enrich and archive pipelines on one embedded store: every event is
/// counted once by each group, the bad one becomes a dead letter, and the
/// inbox is emptied once both groups are past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipelines_run_on_the_embedded_store() {
    use crate::pipeline::{EnrichTargets, Pipeline, Setup, batch_limits};
    use crate::plugin::chain::Chain;
    use crate::plugin::{HostLimits, Runtime};
    use crate::telemetry::Metrics;

    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("opens");
    let enrich_source = Arc::new(store.source("enrich"));
    let archive_source = Arc::new(store.source("archive"));
    let good = |n: usize| OutgoingEvent {
        key: format!("u-{}", n % 7),
        payload: format!(
            r#"{{"event_id":"e-{n}","user_id":"u-{}","event_type":"page_view","timestamp":{n}}}"#,
            n % 7
        )
        .into_bytes(),
    };
    let mut events: Vec<OutgoingEvent> = (0..40).map(good).collect();
    events.insert(
        17,
        OutgoingEvent {
            key: "u-1".into(),
            payload: b"not json".to_vec(),
        },
    );
    store.publish(&events[..20]).await.expect("publishes");

    let metrics = Arc::new(Metrics::new());
    let chain = Chain::with_metrics(
        Runtime::new(HostLimits::default()).expect("plugin runtime"),
        metrics.clone(),
    );
    let targets = EnrichTargets {
        store: Arc::new(store.clone()),
        cache: None,
        dead_letters: Arc::new(store.clone()),
    };
    let setup = |lanes| Setup {
        metrics: metrics.clone(),
        lanes,
        limits: batch_limits(8, 8, 1, 10),
        profile_cache_bytes: 1 << 20,
        runtime: Handle::current(),
        identity: Default::default(),
        privacy: Arc::new(store.clone()),
    };
    let enrich = Pipeline::enrich(enrich_source, "enrich", &chain, targets, setup(2))
        .expect("enrich starts");
    let archive = Pipeline::archive(archive_source, Arc::new(store.clone()), setup(1))
        .expect("archive starts");
    store.publish(&events[20..]).await.expect("publishes");

    let total = i64::try_from(events.len()).expect("small");
    let done = HashMap::from([(0, total)]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let enriched = store.offsets("enrich", INBOX_TOPIC).await.expect("reads");
        let archived = store.offsets("archive", INBOX_TOPIC).await.expect("reads");
        if enriched == done && archived == done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "enrich at {enriched:?}, archive at {archived:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::task::block_in_place(|| {
        enrich.shutdown();
        archive.shutdown();
    });

    let letters = store.dead_letters().expect("reads");
    assert_eq!(letters.len(), 1);
    assert_eq!(
        (letters[0].offset, letters[0].reason.code()),
        (17, "bad-event")
    );
    assert_eq!(letters[0].payload, b"not json");
    let txn = store.inner.db.begin_read().expect("read");
    assert_eq!(
        txn.open_table(ARCHIVE)
            .expect("table")
            .len()
            .expect("counts"),
        40
    );
    drop(txn);
    assert!(inbox_offsets(&store).is_empty());

    // Every record counted once per role, the bad one as a dead letter.
    let text = metrics.render();
    let series = |name: &str, labels: &str| -> Option<f64> {
        let prefix = format!("{name}{{{labels}}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|v| v.parse().ok())
    };
    let consumed = "pulsehub_events_consumed_total";
    let all = Some(total as f64);
    assert_eq!(
        series(consumed, r#"role="enrich",partition="0""#),
        all,
        "{text}"
    );
    assert_eq!(
        series(consumed, r#"role="archive",partition="0""#),
        all,
        "{text}"
    );
    let letters = r#"reason="bad_event""#;
    assert_eq!(
        series("pulsehub_dead_letters_total", letters),
        Some(1.0),
        "{text}"
    );
    for role in ["enrich", "archive"] {
        let received = series("pulsehub_batch_events_sum", &format!(r#"role="{role}""#));
        assert!(
            received >= all,
            "{role}: {received:?} events in batches\n{text}"
        );
    }
    assert!(
        text.lines().any(
            |line| line.starts_with("pulsehub_commit_duration_seconds_count ")
                && line != "pulsehub_commit_duration_seconds_count 0"
        ),
        "{text}"
    );
}
