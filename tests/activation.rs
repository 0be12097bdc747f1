//! The `profile-updates` stream end to end, against the real broker and
//! PostgreSQL: every committed profile change reaches the topic at least
//! once, keyed by the profile, in revision order per profile, through
//! SIGKILLs of the process that commits and relays (contract §3a).
//!
//! The tests share two CPU cores with the binaries they start, so they run
//! one at a time.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;
use sqlx::Connection as _;

use support::db::TestDb;
use support::hub::{PulseHub, SERIAL};
use support::kafka::{produce, producer, read_records, topics};
use support::services::kafka_brokers;
use support::workload::{Rng, generate};

/// A topic of `partitions` partitions, its updates topic, a database, and
/// PulseHub on them with the `extra` variables: `(topic, updates topic,
/// database, PulseHub)`.
async fn start(partitions: i32, extra: &[(&str, &str)]) -> (String, String, TestDb, PulseHub) {
    let topic = topics(partitions).await;
    let updates = format!("{topic}.updates");
    pulsehub::kafka::ensure_topic(&kafka_brokers(), &updates, 3)
        .await
        .expect("create the updates topic");
    let database = TestDb::create().await;
    let mut env = vec![("PULSEHUB_KAFKA_UPDATES_TOPIC", updates.as_str())];
    env.extend_from_slice(extra);
    let hub = PulseHub::services_with(&topic, database.url(), None, &env, &[]);
    (topic, updates, database, hub)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_committed_change_reaches_profile_updates_in_order_through_sigkills() {
    let _serial = SERIAL.lock().await;
    let (topic, updates, database, mut hub) = start(4, &[]).await;
    hub.wait_ready().await;

    let (events, expected) = generate("updates", 300, 40, 23);
    let producing = {
        let (topic, events) = (topic.clone(), events.clone());
        tokio::spawn(async move {
            let producer = producer();
            for wave in events.chunks(1_500) {
                produce(&producer, &topic, wave).await;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        })
    };
    let mut rng = Rng(9);
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(600 + rng.below(1_200))).await;
        hub.kill();
        hub.start();
        hub.wait_ready().await;
    }
    producing.await.expect("producer finished");
    hub.wait_exact(&expected, Duration::from_secs(180)).await;

    // What the database says was committed last, per profile.
    let mut connection = sqlx::PgConnection::connect(database.url())
        .await
        .expect("connect");
    let stored: BTreeMap<String, i64> =
        sqlx::query_as::<_, (String, i64)>("SELECT user_id, revision FROM profiles")
            .fetch_all(&mut connection)
            .await
            .expect("read the revisions")
            .into_iter()
            .collect();
    assert_eq!(stored.len(), expected.len());

    // The relay catches up; then every message is read back.
    let records = read_records(&updates, Duration::from_secs(5));
    let mut revisions: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut partitions: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
    // Each profile's attributes, folded from the messages in the order a
    // consumer dropping repeats by (profile id, revision) applies them.
    let mut folded: BTreeMap<String, BTreeMap<String, Value>> = BTreeMap::new();
    for record in &records {
        let message: Value = serde_json::from_slice(&record.payload).expect("a JSON message");
        assert_eq!(message["type"], "profile.updated", "{message}");
        let profile = message["profile_id"]
            .as_str()
            .expect("a profile id")
            .to_owned();
        assert_eq!(record.key, profile, "keyed by the profile id");
        let revision = message["revision"].as_i64().expect("a revision");
        partitions
            .entry(profile.clone())
            .or_default()
            .insert(record.partition);
        let seen = revisions.entry(profile.clone()).or_default();
        if seen.contains(&revision) {
            continue;
        }
        if let Some(last) = seen.last() {
            assert!(
                revision > *last,
                "profile {profile}: revision {revision} after {last} (seen {seen:?})"
            );
        }
        seen.push(revision);
        let attributes = folded.entry(profile).or_default();
        for (name, attribute) in message["attributes"].as_object().expect("attributes") {
            attributes.insert(name.clone(), attribute["value"].clone());
        }
    }
    for (profile, last) in &stored {
        let seen = revisions.get(profile).map_or(&[][..], Vec::as_slice);
        let every: Vec<i64> = (1..=*last).collect();
        assert_eq!(
            seen, every,
            "profile {profile}: every committed revision, in order"
        );
        assert_eq!(partitions[profile].len(), 1, "one partition per profile");
    }
    // The changed attributes, applied in order, are the profile.
    for (user, expected) in &expected {
        let attributes = &folded[user];
        assert_eq!(attributes["page_views"], expected.page_views, "{user}");
        assert_eq!(
            attributes["device_type"],
            expected.device_type.as_str(),
            "{user}"
        );
    }
    assert_eq!(hub.log_text().matches("PulseHub is running").count(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_profile_updates_off_nothing_is_written_or_published() {
    let _serial = SERIAL.lock().await;
    let (topic, updates, database, mut hub) =
        start(2, &[("PULSEHUB_ACTIVATION_PROFILE_UPDATES", "false")]).await;
    hub.wait_ready().await;
    let (events, expected) = generate("quiet", 50, 4, 3);
    produce(&producer(), &topic, &events).await;
    hub.wait_exact(&expected, Duration::from_secs(60)).await;

    let mut connection = sqlx::PgConnection::connect(database.url())
        .await
        .expect("connect");
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM profile_updates")
        .fetch_one(&mut connection)
        .await
        .expect("count the outbox");
    assert_eq!(outbox, 0);
    assert!(read_records(&updates, Duration::from_secs(2)).is_empty());
}
