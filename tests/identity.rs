//! Identity (docs/identity.md) against the real broker, PostgreSQL and
//! Redis, and in the embedded mode: anonymous and known ids of one person
//! make one profile whatever order their events come in, merges are exact
//! and recorded once, the guards refuse blob profiles, and crashes lose or
//! repeat nothing.
//!
//! The built-in plugins compute the attributes: `page_views` (increment),
//! `first_seen` (min), `last_active` (max) and `device_type` (set), so the
//! joins of every operation are checked.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::Connection as _;

use support::db::TestDb;
use support::hub::{PulseHub, SERIAL};
use support::kafka::{produce, producer, read_records, topics};
use support::services::{kafka_brokers, redis_url};
use support::workload::{Rng, USER_AGENTS};

const T0: i64 = 1_795_000_000_000;

/// One event's JSON, keyed as PulseHub's own producers key it (by
/// `user_id`, else `anonymous_id`), unless `key` says otherwise.
fn event(id: &str, ids: &[(&str, &str)], kind: &str, at: i64) -> (String, String) {
    let mut body = json!({
        "event_id": id,
        "event_type": kind,
        "timestamp": at,
        "user_agent": USER_AGENTS[0].0,
    });
    for (field, value) in ids {
        body[*field] = json!(value);
    }
    let key = ids
        .iter()
        .find(|(f, _)| *f == "user_id")
        .or_else(|| ids.iter().find(|(f, _)| *f == "anonymous_id"))
        .map(|(_, v)| (*v).to_owned())
        .unwrap_or_default();
    (key, body.to_string())
}

/// A person's events: 10 anonymous page views, the identify, 10 known ones.
struct Person {
    user: String,
    anonymous: String,
    groups: [Vec<(String, String)>; 3],
}

impl Person {
    fn new(tag: &str) -> Person {
        let (user, anonymous) = (format!("{tag}-u"), format!("{tag}-a"));
        let views = |who: &[(&str, &str)], from: usize| -> Vec<(String, String)> {
            (from..from + 10)
                .map(|i| {
                    event(
                        &format!("{tag}-e{i}"),
                        who,
                        "page_view",
                        T0 + i as i64 * 1_000,
                    )
                })
                .collect()
        };
        let anonymous_views = views(&[("anonymous_id", &anonymous)], 0);
        let identify = vec![event(
            &format!("{tag}-identify"),
            &[("user_id", &user), ("anonymous_id", &anonymous)],
            "identify",
            T0 + 10_500,
        )];
        let known_views = views(&[("user_id", &user)], 11);
        Person {
            user,
            anonymous,
            groups: [anonymous_views, identify, known_views],
        }
    }
}

/// The profile an identifier resolves to (`None`: 404).
async fn by(hub: &PulseHub, kind: &str, value: &str) -> Option<Value> {
    let (status, body) = hub
        .get_json(&format!("/api/v1/profiles/by/{kind}/{value}"))
        .await;
    match status {
        200 => Some(body),
        404 => None,
        other => panic!("GET by {kind} {value}: {other} {body}"),
    }
}

fn views(profile: &Value) -> i64 {
    profile["attributes"]["page_views"]["value"]
        .as_i64()
        .unwrap_or(0)
}

/// Waits until `check` holds, or fails naming `what`.
async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(120);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the enrich role has consumed `count` records.
async fn wait_consumed(hub: &PulseHub, count: usize) {
    wait_consumed_by(&[hub], count).await;
}

/// Waits until the enrich roles of `processes` have consumed `count`
/// records between them.
async fn wait_consumed_by(processes: &[&PulseHub], count: usize) {
    wait_for(&format!("{count} records consumed"), || async {
        let mut total = 0.0;
        for process in processes {
            let samples = process.metrics().await;
            total += samples.sum("pulsehub_events_consumed_total", &[("role", "enrich")]);
        }
        total >= count as f64
    })
    .await;
}

/// Rows of the merge log caused by `event_id`.
async fn merge_rows(database: &TestDb, event_id: &str) -> Vec<(String, String)> {
    let mut conn = sqlx::PgConnection::connect(database.url())
        .await
        .expect("connect");
    sqlx::query_as("SELECT merged, kind FROM profile_merges WHERE event_id = $1")
        .bind(event_id)
        .fetch_all(&mut conn)
        .await
        .expect("merge log")
}

async fn count_merges(database: &TestDb, kind: &str) -> i64 {
    let mut conn = sqlx::PgConnection::connect(database.url())
        .await
        .expect("connect");
    sqlx::query_scalar("SELECT count(*) FROM profile_merges WHERE kind = $1")
        .bind(kind)
        .fetch_one(&mut conn)
        .await
        .expect("merge log")
}

/// Checks that `person` is one profile with `page_views` views, found by
/// both ids; returns it.
async fn assert_one_profile(hub: &PulseHub, person: &Person, page_views: i64) -> Value {
    let known = by(hub, "user_id", &person.user)
        .await
        .expect("found by user id");
    let anonymous = by(hub, "anonymous_id", &person.anonymous)
        .await
        .expect("found by anonymous id");
    let legacy = hub
        .profile(&person.user)
        .await
        .expect("found by /profiles/{user_id}");
    for profile in [&anonymous, &legacy] {
        assert_eq!(profile["profile_key"], known["profile_key"], "{profile}");
        assert_eq!(profile["attributes"], known["attributes"], "{profile}");
    }
    assert_eq!(views(&known), page_views, "{known}");
    assert_eq!(known["user_id"], person.user.as_str(), "{known}");
    let identifiers = known["identifiers"].as_array().expect("identifiers");
    for (kind, value) in [
        ("user_id", &person.user),
        ("anonymous_id", &person.anonymous),
    ] {
        assert!(
            identifiers.contains(&json!({"type": kind, "value": value})),
            "{known}"
        );
    }
    known
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_then_identify_then_known_is_one_profile_and_a_replay_links_nothing_new() {
    let _serial = SERIAL.lock().await;
    let topic = topics(2).await;
    let database = TestDb::create().await;
    let redis = redis_url();
    let mut hub = PulseHub::services(&topic, database.url(), Some(&redis));
    hub.wait_ready().await;
    let person = Person::new("one");
    let producer = producer();
    let mut produced = 0;
    for group in &person.groups {
        produce(&producer, &topic, group).await;
        produced += group.len();
        wait_consumed(&hub, produced).await;
    }
    let profile = assert_one_profile(&hub, &person, 20).await;
    // The anonymous profile came first: the user id joined it, and says so.
    let (_, through_user) = hub
        .get_json(&format!("/api/v1/profiles/{}", person.user))
        .await;
    assert_eq!(
        through_user["resolved_from"],
        json!({"type": "user_id", "value": person.user}),
        "{through_user}"
    );
    let key = profile["profile_key"].as_str().expect("key").to_owned();
    assert!(key.starts_with("~anonymous_id:"), "{key}");
    assert_eq!(
        merge_rows(&database, "one-identify").await,
        vec![(person.user.clone(), "attach".to_owned())]
    );
    // PostgreSQL: the user id's row points at the profile.
    let mut conn = sqlx::PgConnection::connect(database.url())
        .await
        .expect("connect");
    let pointer: Option<String> =
        sqlx::query_scalar("SELECT merged_into FROM profiles WHERE user_id = $1")
            .bind(&person.user)
            .fetch_one(&mut conn)
            .await
            .expect("the user id has a row");
    assert_eq!(pointer.as_deref(), Some(key.as_str()));
    // Redis: the same pointer.
    let client = redis::Client::open(redis.as_str()).expect("redis url");
    let mut redis_conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let cached: Option<String> = redis::cmd("HGET")
        .arg(format!("{topic}:profile:{}", person.user))
        .arg("body")
        .query_async(&mut redis_conn)
        .await
        .expect("HGET");
    let cached: Value = serde_json::from_str(&cached.expect("a cached pointer")).expect("json");
    assert_eq!(cached["merged_into"], key.as_str(), "{cached}");

    // Every event again, same ids, new offsets: counted again (contract §3:
    // events are not deduplicated by id), but nothing links anew.
    let all: Vec<(String, String)> = person.groups.concat();
    produce(&producer, &topic, &all).await;
    produced += all.len();
    wait_consumed(&hub, produced).await;
    let again = assert_one_profile(&hub, &person, 40).await;
    assert_eq!(again["profile_key"], profile["profile_key"]);
    assert_eq!(again["identifiers"], profile["identifiers"]);
    assert_eq!(merge_rows(&database, "one-identify").await.len(), 1);
    let samples = hub.metrics().await;
    assert_eq!(samples.sum("pulsehub_identity_merges_total", &[]), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_order_over_two_partitions_gives_the_same_profile_and_one_merge_record() {
    let _serial = SERIAL.lock().await;
    let topic = topics(2).await;
    let database = TestDb::create().await;
    let mut hub = PulseHub::services(&topic, database.url(), Some(&redis_url()));
    hub.wait_ready().await;
    // Each person's three groups of events in one of the six orders, sent
    // wave by wave: a wave is consumed before the next is sent.
    let orders = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    let people: Vec<Person> = (0..orders.len())
        .map(|n| Person::new(&format!("order{n}")))
        .collect();
    let producer = producer();
    let mut produced = 0;
    for wave in 0..3 {
        let events: Vec<(String, String)> = people
            .iter()
            .zip(&orders)
            .flat_map(|(person, order)| person.groups[order[wave]].clone())
            .collect();
        produce(&producer, &topic, &events).await;
        produced += events.len();
        wait_consumed(&hub, produced).await;
    }
    let mut attributes = Vec::new();
    for (person, order) in people.iter().zip(&orders) {
        let profile = assert_one_profile(&hub, person, 20).await;
        let identify = format!("order{}-identify", attributes.len());
        let rows = merge_rows(&database, &identify).await;
        assert_eq!(rows.len(), 1, "order {order:?}: {rows:?}");
        // Without provenance, which names each person's own event ids.
        let values: BTreeMap<String, Value> = profile["attributes"]
            .as_object()
            .expect("attributes")
            .iter()
            .map(|(name, a)| (name.clone(), a["value"].clone()))
            .collect();
        attributes.push((order, values));
    }
    for (order, values) in &attributes[1..] {
        assert_eq!(
            values, &attributes[0].1,
            "order {order:?} against {:?}",
            attributes[0].0
        );
    }
    // Two of the orders send both sides' views before the link: those merge.
    assert_eq!(count_merges(&database, "merge").await, 2);
    let samples = hub.metrics().await;
    assert_eq!(samples.sum("pulsehub_identity_merges_total", &[]), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_values_and_unique_user_ids_refuse_links_and_every_event_counts_once() {
    let _serial = SERIAL.lock().await;
    let topic = topics(2).await;
    let database = TestDb::create().await;
    let mut hub = PulseHub::services(&topic, database.url(), None);
    hub.wait_ready().await;
    let producer = producer();
    let blocked: Vec<(String, String)> = (0..1_000)
        .map(|n| {
            event(
                &format!("blocked-e{n}"),
                &[("user_id", "0"), ("anonymous_id", &format!("blocked-a{n}"))],
                "page_view",
                T0 + n,
            )
        })
        .collect();
    produce(&producer, &topic, &blocked).await;
    // a1 with u1, then a1 with u2: user ids are unique.
    let first = [event(
        "unique-e1",
        &[("user_id", "unique-u1"), ("anonymous_id", "unique-a1")],
        "page_view",
        T0,
    )];
    produce(&producer, &topic, &first).await;
    wait_consumed(&hub, 1_001).await;
    let second = [event(
        "unique-e2",
        &[("user_id", "unique-u2"), ("anonymous_id", "unique-a1")],
        "page_view",
        T0 + 1,
    )];
    produce(&producer, &topic, &second).await;
    wait_consumed(&hub, 1_002).await;

    for n in 0..1_000 {
        let profile = by(&hub, "anonymous_id", &format!("blocked-a{n}"))
            .await
            .expect("each anonymous id has its profile");
        assert_eq!(views(&profile), 1, "{profile}");
        assert_eq!(
            profile["identifiers"],
            json!([{"type": "anonymous_id", "value": format!("blocked-a{n}")}])
        );
    }
    assert_eq!(hub.profile("0").await, None, "a blocked id is no profile");
    assert_eq!(count_merges(&database, "merge").await, 0);

    let u1 = hub.profile("unique-u1").await.expect("u1");
    let u2 = hub.profile("unique-u2").await.expect("u2");
    assert_ne!(u1["profile_key"], u2["profile_key"]);
    assert_eq!((views(&u1), views(&u2)), (1, 1));
    let a1 = by(&hub, "anonymous_id", "unique-a1").await.expect("a1");
    assert_eq!(a1["profile_key"], u1["profile_key"]);
    let samples = hub.metrics().await;
    let refused = |reason| {
        samples.sum(
            "pulsehub_identity_links_refused_total",
            &[("reason", reason)],
        )
    };
    assert_eq!(refused("blocked"), 1_000.0);
    assert_eq!(refused("unique"), 1.0);
    assert!(hub.log_text().contains("refused to link an identifier"));
}

/// Two lanes linking the same pair at once. The lanes of one process commit
/// through one committer (`pipeline/enrich.rs`), so the lanes here are in
/// two processes, one lane and one partition each, where only the store's
/// locks and revision checks keep the links apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_lanes_linking_the_same_pair_at_once_merge_it_once() {
    let _serial = SERIAL.lock().await;
    let topic = topics(2).await;
    let group = format!("{topic}-enrich");
    let database = TestDb::create().await;
    let start = || {
        PulseHub::services_with(
            &topic,
            database.url(),
            Some(&redis_url()),
            &[
                ("PULSEHUB_PIPELINE_LANES", "1"),
                ("PULSEHUB_LOG_FORMAT", "json"),
            ],
            &[],
        )
    };
    let (mut hub, mut other) = (start(), start());
    hub.wait_ready().await;
    other.wait_ready().await;
    wait_for("the two processes to hold a partition each", || async {
        let (a, b) = (hub.assignment(&group), other.assignment(&group));
        a.len() == 1 && b.len() == 1 && a != b
    })
    .await;
    let producer = producer();
    let pairs = 300;
    let mut views_first = Vec::new();
    let mut links = Vec::new();
    for n in 0..pairs {
        let (user, anonymous) = (format!("pair{n}-u"), format!("pair{n}-a"));
        views_first.push(event(
            &format!("pair{n}-v1"),
            &[("user_id", &user)],
            "page_view",
            T0,
        ));
        views_first.push(event(
            &format!("pair{n}-v2"),
            &[("anonymous_id", &anonymous)],
            "page_view",
            T0 + 1,
        ));
        // The same link twice, keyed by each id: two partitions, two lanes.
        for (copy, key) in [(1, &user), (2, &anonymous)] {
            let (_, body) = event(
                &format!("pair{n}-link{copy}"),
                &[("user_id", &user), ("anonymous_id", &anonymous)],
                "identify",
                T0 + 2,
            );
            links.push((key.clone(), body));
        }
    }
    produce(&producer, &topic, &views_first).await;
    wait_consumed_by(&[&hub, &other], views_first.len()).await;
    produce(&producer, &topic, &links).await;
    wait_consumed_by(&[&hub, &other], views_first.len() + links.len()).await;
    for n in 0..pairs {
        let person = Person {
            user: format!("pair{n}-u"),
            anonymous: format!("pair{n}-a"),
            groups: Default::default(),
        };
        assert_one_profile(&hub, &person, 2).await;
        let made = merge_rows(&database, &format!("pair{n}-link1")).await.len()
            + merge_rows(&database, &format!("pair{n}-link2")).await.len();
        assert_eq!(made, 1, "pair {n}");
    }
    assert_eq!(count_merges(&database, "merge").await, pairs as i64);
    for process in [&hub, &other] {
        assert!(
            !process.log_text().contains("deadlock"),
            "{}",
            process.log_text()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_stream_with_merges_leaves_every_profile_exact() {
    let _serial = SERIAL.lock().await;
    let topic = topics(4).await;
    let database = TestDb::create().await;
    let mut hub = PulseHub::services(&topic, database.url(), Some(&redis_url()));
    hub.wait_ready().await;
    // 200 people, each: views on both ids, the link, more views; shuffled
    // across people (a person's order varies too: any order is exact).
    let people: Vec<Person> = (0..200)
        .map(|n| Person::new(&format!("crash{n}")))
        .collect();
    let mut events: Vec<(String, String)> = people.iter().flat_map(|p| p.groups.concat()).collect();
    let mut rng = Rng(17);
    for i in (1..events.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        events.swap(i, j);
    }
    let producing = {
        let (topic, events) = (topic.clone(), events.clone());
        tokio::spawn(async move {
            let producer = producer();
            for wave in events.chunks(400) {
                produce(&producer, &topic, wave).await;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        })
    };
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700 + rng.below(1_500))).await;
        hub.kill();
        hub.start();
        hub.wait_ready().await;
    }
    producing.await.expect("producer finished");
    let total_views = 20 * people.len() as i64;
    wait_for("every view counted", || async {
        let mut sum = 0;
        for person in &people {
            sum += by(&hub, "user_id", &person.user)
                .await
                .map_or(0, |p| views(&p));
        }
        sum >= total_views
    })
    .await;
    for person in &people {
        assert_one_profile(&hub, person, 20).await;
        let identify = format!("{}-identify", person.user.trim_end_matches("-u"));
        assert_eq!(
            merge_rows(&database, &identify).await.len(),
            1,
            "{identify}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_mode_links_identifiers_too() {
    let _serial = SERIAL.lock().await;
    let data = tempfile::tempdir().expect("tempdir");
    let mut hub = PulseHub::new(vec![(
        "PULSEHUB_DATA_DIR".into(),
        data.path().display().to_string(),
    )]);
    hub.wait_ready().await;
    // The known user's views first this time, then the anonymous ones, each
    // group seen before the next is sent: the link merges two profiles.
    let person = Person::new("embedded");
    let groups = [
        (&person.groups[2], "user_id", &person.user, 10),
        (&person.groups[0], "anonymous_id", &person.anonymous, 10),
        (&person.groups[1], "anonymous_id", &person.anonymous, 20),
    ];
    for (group, kind, value, want) in groups {
        let body = format!(
            "[{}]",
            group
                .iter()
                .map(|(_, p)| p.as_str())
                .collect::<Vec<_>>()
                .join(",")
        );
        let response = hub
            .http
            .post(hub.url("/api/v1/events"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("POST answers");
        assert_eq!(response.status().as_u16(), 202);
        wait_for(&format!("{value} at {want} views"), || async {
            by(&hub, kind, value)
                .await
                .is_some_and(|p| views(&p) == want)
        })
        .await;
    }
    let profile = assert_one_profile(&hub, &person, 20).await;
    assert_eq!(profile["profile_key"], person.user.as_str(), "{profile}");
    assert_eq!(
        profile["merges"].as_array().map(Vec::len),
        Some(1),
        "{profile}"
    );
    assert_eq!(profile["merges"][0]["event_id"], "embedded-identify");
    // An event with neither id is refused before it is published.
    let response = hub
        .http
        .post(hub.url("/api/v1/events"))
        .header("content-type", "application/json")
        .body(r#"{"event_type":"page_view","timestamp":1}"#)
        .send()
        .await
        .expect("POST answers");
    assert_eq!(response.status().as_u16(), 400);
}

/// Waits until the archive role has consumed `count` records.
async fn wait_archived(hub: &PulseHub, count: usize) {
    wait_for(&format!("{count} records archived"), || async {
        let samples = hub.metrics().await;
        samples.sum("pulsehub_events_consumed_total", &[("role", "archive")]) >= count as f64
    })
    .await;
}

/// Every cached copy under `prefix` of a profile whose key or body
/// mentions `tag` (a forgotten key's tombstone has an empty body).
async fn cached_mentions(redis: &str, prefix: &str, tag: &str) -> Vec<String> {
    let client = redis::Client::open(redis).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    let mut found = Vec::new();
    for key in keys {
        let body: Option<String> = redis::cmd("HGET")
            .arg(&key)
            .arg("body")
            .query_async(&mut conn)
            .await
            .unwrap_or(None);
        if body.is_some_and(|b| !b.is_empty() && (key.contains(tag) || b.contains(tag))) {
            found.push(key);
        }
    }
    found
}

/// Neither of `person`'s identifiers finds a profile.
async fn assert_forgotten(hub: &PulseHub, person: &Person) {
    assert_eq!(by(hub, "user_id", &person.user).await, None);
    assert_eq!(by(hub, "anonymous_id", &person.anonymous).await, None);
    assert_eq!(hub.profile(&person.user).await, None);
}

/// The number `sql` counts in the database at `url`.
async fn scalar(url: &str, sql: &'static str) -> i64 {
    let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
    sqlx::query_scalar(sql)
        .fetch_one(&mut conn)
        .await
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_forgets_a_merged_person_everywhere_and_suppress_drops_events_before_plugins() {
    let _serial = SERIAL.lock().await;
    let topic = topics(2).await;
    let updates = format!("{topic}.updates");
    pulsehub::kafka::ensure_topic(&kafka_brokers(), &updates, 2)
        .await
        .expect("create the updates topic");
    let database = TestDb::create().await;
    let redis = redis_url();
    let token = support::hub::ADMIN_TOKEN;
    let mut hub = PulseHub::services_with(
        &topic,
        database.url(),
        Some(&redis),
        &[
            ("PULSEHUB_ADMIN_TOKEN", token),
            ("PULSEHUB_KAFKA_UPDATES_TOPIC", updates.as_str()),
        ],
        &[],
    );
    hub.wait_ready().await;
    // Both persons join a segment; the deleted one must leave its members.
    let (status, segment) = hub
        .admin_json(
            reqwest::Method::PUT,
            "/api/v1/segments/viewers",
            &json!({"condition": "page_views >= 1"}),
        )
        .await;
    assert_eq!(status, 201, "{segment}");
    let (gone, stays) = (Person::new("gone"), Person::new("stays"));
    let producer = producer();
    let mut produced = 0;
    for group in gone.groups.iter().chain(&stays.groups) {
        produce(&producer, &topic, group).await;
        produced += group.len();
        wait_consumed(&hub, produced).await;
    }
    wait_archived(&hub, produced).await;
    assert_one_profile(&hub, &gone, 20).await;
    assert_one_profile(&hub, &stays, 20).await;
    let later_views = |from: usize| -> Vec<(String, String)> {
        (from..from + 5)
            .map(|i| {
                let id = format!("stays-later-{i}");
                event(&id, &[("user_id", &stays.user)], "page_view", T0 + 60_000)
            })
            .collect()
    };

    // Suppress, by the anonymous id: the known id's events are dropped
    // before any plugin runs, and not archived.
    let suppressed = hub
        .privacy("suppress", &[("anonymous_id", &stays.anonymous)])
        .await;
    assert_eq!(suppressed["result"]["profiles"], 1, "{suppressed}");
    let actor = suppressed["actor"].as_str().unwrap_or_default();
    assert!(
        actor.starts_with("admin e2e-test from 127.0.0.1:"),
        "{suppressed}"
    );
    let calls_before = hub.metrics().await.sum("pulsehub_plugin_calls_total", &[]);
    produce(&producer, &topic, &later_views(0)).await;
    produced += 5;
    wait_consumed(&hub, produced).await;
    wait_archived(&hub, produced).await;
    let samples = hub.metrics().await;
    for role in ["enrich", "archive"] {
        assert_eq!(
            samples.sum(
                "pulsehub_privacy_suppressed_events_total",
                &[("role", role)]
            ),
            5.0,
            "{role}"
        );
    }
    assert_eq!(
        samples.sum("pulsehub_plugin_calls_total", &[]),
        calls_before,
        "no plugin ran on a suppressed person's events"
    );
    assert_one_profile(&hub, &stays, 20).await;

    // Unsuppress, by the user id: their events count again.
    let lifted = hub.privacy("unsuppress", &[("user_id", &stays.user)]).await;
    assert!(
        lifted["result"]["unsuppressed"].as_u64() >= Some(2),
        "{lifted}"
    );
    produce(&producer, &topic, &later_views(5)).await;
    produced += 5;
    wait_consumed(&hub, produced).await;
    wait_archived(&hub, produced).await;
    assert_one_profile(&hub, &stays, 25).await;

    // Delete the merged person, by the user id.
    let members = || scalar(database.url(), "SELECT count(*) FROM segment_members");
    assert_eq!(members().await, 2, "both persons are in the segment");
    let deleted = hub.privacy("delete", &[("user_id", &gone.user)]).await;
    let removed = &deleted["result"]["removed"];
    assert_eq!(removed["postgres"]["profiles"], 1, "{deleted}");
    assert!(
        removed["postgres"]["pointers"].as_u64() >= Some(1),
        "{deleted}"
    );
    assert_eq!(removed["postgres"]["merges"], 1, "{deleted}");
    assert_eq!(removed["postgres"]["archived_events"], 21, "{deleted}");
    assert!(removed["redis"]["keys"].as_u64() >= Some(1), "{deleted}");
    assert_forgotten(&hub, &gone).await;
    let count = |sql: &'static str| scalar(database.url(), sql);
    assert_eq!(
        count("SELECT count(*) FROM events WHERE payload::text LIKE '%gone-%'").await,
        0
    );
    assert_eq!(
        count("SELECT count(*) FROM profiles WHERE profile::text LIKE '%gone-%'").await,
        0
    );
    assert_eq!(
        count("SELECT count(*) FROM profile_merges WHERE event_id LIKE 'gone-%'").await,
        0
    );
    // The stream says so, for whoever kept copies.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let deleted: Vec<Value> = read_records(&updates, Duration::from_secs(2))
            .iter()
            .map(|record| serde_json::from_slice(&record.payload).expect("JSON"))
            .filter(|message: &Value| message["type"] == "profile.deleted")
            .collect();
        if !deleted.is_empty() {
            // One per row removed: the profile and each identifier's pointer.
            let rows = removed["postgres"]["profiles"].as_u64().unwrap_or(0)
                + removed["postgres"]["pointers"].as_u64().unwrap_or(0);
            assert_eq!(deleted.len() as u64, rows, "{deleted:?}");
            assert!(
                deleted
                    .iter()
                    .any(|m| m["profile_id"] == gone.user.as_str()),
                "{deleted:?}"
            );
            assert!(
                !deleted
                    .iter()
                    .any(|m| m["profile_id"] == stays.user.as_str()),
                "{deleted:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no profile.deleted on {updates}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The other person is whole.
    assert_eq!(members().await, 1, "the deleted person left the segment");
    assert_eq!(
        count("SELECT count(*) FROM events WHERE payload::text LIKE '%stays-%'").await,
        26
    );
    assert_eq!(
        cached_mentions(&redis, &format!("{topic}:"), "gone-").await,
        Vec::<String>::new()
    );

    // Replaying every event of the deleted person brings nothing back.
    let all: Vec<(String, String)> = gone.groups.concat();
    produce(&producer, &topic, &all).await;
    produced += all.len();
    wait_consumed(&hub, produced).await;
    wait_archived(&hub, produced).await;
    assert_forgotten(&hub, &gone).await;
    assert_eq!(
        count("SELECT count(*) FROM events WHERE payload::text LIKE '%gone-%'").await,
        0
    );
    assert_eq!(
        count("SELECT count(*) FROM profiles WHERE profile::text LIKE '%gone-%'").await,
        0
    );
    assert_eq!(
        cached_mentions(&redis, &format!("{topic}:"), "gone-").await,
        Vec::<String>::new()
    );

    // Export: what is stored about the other person.
    let exported = hub
        .privacy("export", &[("anonymous_id", &stays.anonymous)])
        .await;
    let export = &exported["result"]["export"];
    assert_eq!(
        export["profiles"][0]["attributes"]["page_views"]["value"], 25,
        "{exported}"
    );
    assert_eq!(
        export["merges"].as_array().map(Vec::len),
        Some(1),
        "{exported}"
    );
    assert_eq!(
        export["archived_events"].as_array().map(Vec::len),
        Some(26),
        "{exported}"
    );
    assert_eq!(export["suppressed"], false);
    // Every request is audited.
    let mut conn = sqlx::PgConnection::connect(database.url())
        .await
        .expect("connect");
    let audited: Vec<String> = sqlx::query_scalar(
        "SELECT operation FROM operation_audit WHERE operation LIKE 'privacy-%' ORDER BY id",
    )
    .fetch_all(&mut conn)
    .await
    .expect("audit");
    assert_eq!(
        audited,
        [
            "privacy-suppress",
            "privacy-unsuppress",
            "privacy-delete",
            "privacy-export"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_mode_deletes_and_suppresses_too() {
    let _serial = SERIAL.lock().await;
    let data = tempfile::tempdir().expect("tempdir");
    let mut hub = PulseHub::new(vec![
        (
            "PULSEHUB_DATA_DIR".into(),
            data.path().display().to_string(),
        ),
        (
            "PULSEHUB_ADMIN_TOKEN".into(),
            support::hub::ADMIN_TOKEN.into(),
        ),
    ]);
    hub.wait_ready().await;
    let person = Person::new("local");
    let all: Vec<(String, String)> = person.groups.concat();
    let payloads: Vec<&str> = all.iter().map(|(_, p)| p.as_str()).collect();
    hub.post_events(&payloads).await;
    wait_for("one profile of 20 views", || async {
        by(&hub, "anonymous_id", &person.anonymous)
            .await
            .is_some_and(|p| views(&p) == 20)
    })
    .await;
    assert_one_profile(&hub, &person, 20).await;

    let deleted = hub
        .privacy("delete", &[("anonymous_id", &person.anonymous)])
        .await;
    let removed = &deleted["result"]["removed"]["embedded"];
    assert_eq!(removed["profiles"], 1, "{deleted}");
    assert_eq!(removed["merges"], 1, "{deleted}");
    assert_eq!(removed["archived_events"], 21, "{deleted}");
    assert_eq!(by(&hub, "user_id", &person.user).await, None);
    assert_eq!(by(&hub, "anonymous_id", &person.anonymous).await, None);

    // Sent again: dropped before the plugins, by both lanes.
    hub.post_events(&payloads).await;
    wait_for("the events again, dropped", || async {
        let samples = hub.metrics().await;
        samples.sum(
            "pulsehub_privacy_suppressed_events_total",
            &[("role", "enrich")],
        ) >= 21.0
            && samples.sum(
                "pulsehub_privacy_suppressed_events_total",
                &[("role", "archive")],
            ) >= 21.0
    })
    .await;
    assert_eq!(by(&hub, "user_id", &person.user).await, None);
    let exported = hub.privacy("export", &[("user_id", &person.user)]).await;
    let export = &exported["result"]["export"];
    assert_eq!(export["profiles"], json!([]), "{exported}");
    assert_eq!(export["archived_events"], json!([]), "{exported}");
    assert_eq!(export["suppressed"], true, "{exported}");

    // Unsuppressed: the person's next events count from scratch.
    hub.privacy("unsuppress", &[("user_id", &person.user)])
        .await;
    hub.post_events(&payloads[11..]).await;
    wait_for("the known views again", || async {
        by(&hub, "user_id", &person.user)
            .await
            .is_some_and(|p| views(&p) == 10)
    })
    .await;
}
