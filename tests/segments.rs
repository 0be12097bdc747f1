//! Segments end to end, against the real broker and PostgreSQL: defined
//! through the admin API, evaluated by the commits as the stream flows,
//! their memberships stored with the profiles and announced once on
//! `profile-updates` (`segment.entered` / `segment.exited`), through
//! SIGKILLs that make batches run again.
//!
//! The tests share two CPU cores with the binaries they start, so they run
//! one at a time.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use pulsehub::model::merge::{AttributeChange, ProfileChanges, Provenance};
use pulsehub::model::update::{Op, Value as AttributeValue};
use pulsehub::segment::Segments;
use pulsehub::store::embedded::EmbeddedStore;
use pulsehub::store::postgres::PgStore;
use pulsehub::store::{Commit, OffsetRange, ProfileStore};

use support::db::{StoreDb, TestDb};
use support::hub::{ADMIN_TOKEN, PulseHub, SERIAL};
use support::kafka::{produce, producer, read_records, topics};
use support::services::kafka_brokers;
use support::workload::{Rng, USER_AGENTS, generate, rfc3339};

/// A topic of `partitions` partitions, its updates topic, a database, and
/// PulseHub on them with the admin routes: `(topic, updates topic,
/// database, PulseHub)`.
async fn start(partitions: i32) -> (String, String, TestDb, PulseHub) {
    let topic = topics(partitions).await;
    let updates = format!("{topic}.updates");
    pulsehub::kafka::ensure_topic(&kafka_brokers(), &updates, 3)
        .await
        .expect("create the updates topic");
    let database = TestDb::create().await;
    let env = [
        ("PULSEHUB_KAFKA_UPDATES_TOPIC", updates.as_str()),
        ("PULSEHUB_ADMIN_TOKEN", ADMIN_TOKEN),
    ];
    let hub = PulseHub::services_with(&topic, database.url(), None, &env, &[]);
    (topic, updates, database, hub)
}

/// Defines segment `name` by `condition`; asserts the status.
async fn define(hub: &PulseHub, name: &str, condition: Value, status: u16) -> Value {
    let path = format!("/api/v1/segments/{name}");
    let (got, body) = hub
        .admin_json(Method::PUT, &path, &json!({ "condition": condition }))
        .await;
    assert_eq!(got, status, "PUT {path}: {body}");
    body
}

/// Every member of segment `name`, paging `limit` at a time.
async fn members(hub: &PulseHub, name: &str, limit: usize) -> BTreeSet<String> {
    let mut all = BTreeSet::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = format!("/api/v1/segments/{name}/members?limit={limit}");
        if let Some(after) = &after {
            path.push_str(&format!("&after={after}"));
        }
        let (status, page) = hub.get_json(&path).await;
        assert_eq!(status, 200, "{path}: {page}");
        let listed = page["members"].as_array().expect("members");
        assert!(listed.len() <= limit, "{page}");
        for member in listed {
            let member = member.as_str().expect("a profile key").to_owned();
            assert!(all.insert(member), "listed twice: {page}");
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return all,
        }
    }
}

/// The `segment.*` messages on `updates`, per (type, segment, profile): the
/// revisions they name, each once (a consumer drops repeats by them).
fn segment_messages(updates: &str) -> BTreeMap<(String, String, String), BTreeSet<i64>> {
    let mut seen: BTreeMap<(String, String, String), BTreeSet<i64>> = BTreeMap::new();
    for record in read_records(updates, Duration::from_secs(5)) {
        let message: Value = serde_json::from_slice(&record.payload).expect("a JSON message");
        let kind = message["type"].as_str().expect("a type");
        if !kind.starts_with("segment.") {
            continue;
        }
        let profile = message["profile_id"].as_str().expect("a profile id");
        assert_eq!(record.key, profile, "keyed by the profile id");
        let segment = message["segment"].as_str().expect("a segment name");
        let revision = message["revision"].as_i64().expect("a revision");
        seen.entry((kind.to_owned(), segment.to_owned(), profile.to_owned()))
            .or_default()
            .insert(revision);
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_profile_that_qualifies_enters_once_through_sigkills() {
    let _serial = SERIAL.lock().await;
    let (topic, updates, _database, mut hub) = start(4).await;
    hub.wait_ready().await;
    let defined = define(
        &hub,
        "mobile-fans",
        json!("page_views >= 5 && device_type == 'mobile'"),
        201,
    )
    .await;
    assert_eq!(defined["members"], 0);
    assert_eq!(defined["unknown_attributes"], json!([]), "{defined}");
    // The same condition as a tree: nothing changes.
    let tree = json!({"and": [{"gte": ["page_views", 5]}, {"eq": ["device_type", "mobile"]}]});
    let same = define(&hub, "mobile-fans", tree, 200).await;
    assert_eq!(same["updated_at"], defined["updated_at"], "{same}");
    let typo = define(&hub, "typo", json!({"gte": ["page_veiws", 1]}), 201).await;
    assert_eq!(typo["unknown_attributes"], json!(["page_veiws"]), "{typo}");

    let (events, expected) = generate("seg", 240, 9, 41);
    let producing = {
        let (topic, events) = (topic.clone(), events.clone());
        tokio::spawn(async move {
            let producer = producer();
            for wave in events.chunks(300) {
                produce(&producer, &topic, wave).await;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        })
    };
    // Batches in flight at a kill run again after the restart: what they
    // committed before must not enter anyone twice.
    let mut rng = Rng(5);
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(500 + rng.below(1_000))).await;
        hub.kill();
        hub.start();
        hub.wait_ready().await;
    }
    producing.await.expect("producer finished");
    hub.wait_exact(&expected, Duration::from_secs(180)).await;

    // The members, as the test computes them from the events it sent.
    let qualifying: BTreeSet<String> = expected
        .iter()
        .filter(|(_, e)| e.page_views >= 5 && e.device_type == "mobile")
        .map(|(user, _)| user.clone())
        .collect();
    assert!(
        !qualifying.is_empty() && qualifying.len() < expected.len() / 3,
        "the workload puts some profiles in the segment, not all: {}",
        qualifying.len()
    );
    assert_eq!(members(&hub, "mobile-fans", 7).await, qualifying);
    let (status, segment) = hub.get_json("/api/v1/segments/mobile-fans").await;
    assert_eq!(status, 200);
    assert_eq!(segment["members"], qualifying.len(), "{segment}");
    assert_eq!(members(&hub, "typo", 100).await, BTreeSet::new());

    // Each profile lists its segments.
    let member = qualifying.first().expect("a member");
    let outsider = expected
        .keys()
        .find(|user| !qualifying.contains(*user))
        .expect("an outsider");
    let profile = hub.profile(member).await.expect("the member's profile");
    assert_eq!(profile["segments"], json!(["mobile-fans"]), "{profile}");
    let profile = hub.profile(outsider).await.expect("the outsider's profile");
    assert_eq!(profile["segments"], json!([]), "{profile}");

    // One `segment.entered` per member, whatever ran twice; no exits
    // (page views only grow, each user keeps one device).
    let messages = segment_messages(&updates);
    let entered: BTreeSet<String> = messages
        .iter()
        .filter(|((kind, segment, _), _)| kind == "segment.entered" && segment == "mobile-fans")
        .map(|((_, _, profile), revisions)| {
            assert_eq!(revisions.len(), 1, "{profile} entered at {revisions:?}");
            profile.clone()
        })
        .collect();
    assert_eq!(entered, qualifying);
    assert!(
        messages
            .keys()
            .all(|(kind, segment, _)| kind == "segment.entered" && segment == "mobile-fans"),
        "only entries into mobile-fans: {:?}",
        messages
            .keys()
            .filter(|(kind, _, _)| kind != "segment.entered")
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_falling_out_of_the_condition_exits_once() {
    let _serial = SERIAL.lock().await;
    let (_topic, updates, _database, mut hub) = start(2).await;
    hub.wait_ready().await;
    define(
        &hub,
        "mobile-fans",
        json!("page_views >= 2 && device_type == 'mobile'"),
        201,
    )
    .await;
    let (mobile, desktop) = (USER_AGENTS[0].0, USER_AGENTS[1].0);
    let event = |id: &str, ua: &str, at_ms: i64| {
        json!({
            "event_id": id, "user_id": "switcher", "event_type": "page_view",
            "timestamp": rfc3339(at_ms), "user_agent": ua, "url": "https://shop.example/"
        })
        .to_string()
    };
    let at = 1_795_000_000_000;
    hub.post_events(&[&event("s1", mobile, at), &event("s2", mobile, at + 1_000)])
        .await;
    let entered = hub
        .wait_for_profile("switcher", |p| p["segments"] == json!(["mobile-fans"]))
        .await;
    assert_eq!(entered["attributes"]["page_views"]["value"], 2);

    // A later event from a desktop: the device changes, the profile leaves.
    hub.post_events(&[&event("s3", desktop, at + 2_000)]).await;
    let left = hub
        .wait_for_profile("switcher", |p| {
            p["attributes"]["device_type"]["value"] == "desktop"
        })
        .await;
    assert_eq!(left["segments"], json!([]), "{left}");
    // An older mobile event counts a view but does not change the device.
    hub.post_events(&[&event("s0", mobile, at - 1_000)]).await;
    let older = hub
        .wait_for_profile("switcher", |p| p["attributes"]["page_views"]["value"] == 4)
        .await;
    assert_eq!(older["segments"], json!([]), "{older}");
    assert_eq!(members(&hub, "mobile-fans", 10).await, BTreeSet::new());

    let messages = segment_messages(&updates);
    let key = |kind: &str| {
        (
            kind.to_owned(),
            "mobile-fans".to_owned(),
            "switcher".to_owned(),
        )
    };
    assert_eq!(messages.len(), 2, "{messages:?}");
    let entered = &messages[&key("segment.entered")];
    let exited = &messages[&key("segment.exited")];
    assert_eq!((entered.len(), exited.len()), (1, 1), "{messages:?}");
    assert!(entered.first() < exited.first(), "{messages:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redefined_segment_starts_over_and_a_deleted_one_is_gone() {
    let _serial = SERIAL.lock().await;
    let (topic, _updates, _database, mut hub) = start(2).await;
    hub.wait_ready().await;
    define(&hub, "viewers", json!("page_views >= 1"), 201).await;
    let (events, expected) = generate("redef", 30, 3, 7);
    produce(&producer(), &topic, &events).await;
    hub.wait_exact(&expected, Duration::from_secs(60)).await;
    let all: BTreeSet<String> = expected.keys().cloned().collect();
    assert_eq!(members(&hub, "viewers", 100).await, all);

    // A new condition: the old members are dropped; profiles join again as
    // their next commit evaluates it.
    let changed = define(&hub, "viewers", json!("page_views >= 100"), 200).await;
    assert_eq!(changed["members"], 0, "{changed}");
    let (status, body) = hub.admin(Method::DELETE, "/api/v1/segments/viewers").await;
    assert_eq!(status, 204, "{body}");
    let (status, body) = hub.get_json("/api/v1/segments/viewers").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["type"], "tag:pulsehub,2026:problem:segment-not-found");
    let (_, list) = hub.get_json("/api/v1/segments").await;
    assert_eq!(list, json!({"segments": []}));
    let user = all.first().expect("a user");
    let profile = hub.profile(user).await.expect("a profile");
    assert_eq!(profile["segments"], json!([]), "{profile}");
}

const DAY: i64 = 86_400_000;

/// Commits `last_active_at` = `active_ms` for `user`, as the batch of
/// offsets `offset`..`offset + 1`, at wall-clock `now_ms`.
async fn active(store: &dyn ProfileStore, user: &str, active_ms: i64, offset: i64, now_ms: i64) {
    let change = AttributeChange {
        op: Op::Max(AttributeValue::Timestamp(active_ms)),
        provenance: Provenance {
            plugin: Arc::from("last-active"),
            plugin_version: Arc::from("1.0.0"),
            event_id: format!("{user}-{offset}"),
            event_time_ms: active_ms,
        },
    };
    let mut changes = ProfileChanges::new();
    changes.insert(
        user.to_owned(),
        BTreeMap::from([("last_active_at".to_owned(), change)]),
    );
    let offsets = [OffsetRange {
        partition: 0,
        expected: (offset > 0).then_some(offset),
        next: offset + 1,
    }];
    store
        .commit(Commit {
            group: "enrich",
            topic: "events",
            changes: &changes,
            offsets: &offsets,
            plugins: &[],
            known: Default::default(),
            now_ms,
            identity: None,
            suppressions: 0,
        })
        .await
        .expect("the commit applies");
}

/// The members of the segment named `name`, from the store.
async fn stored_members(segments: &Segments, name: &str) -> Vec<String> {
    let definitions = segments.store.definitions().await.expect("definitions");
    let id = definitions
        .iter()
        .find(|d| d.name == name)
        .expect("the segment is defined")
        .id;
    segments
        .store
        .members(id, None, 100)
        .await
        .expect("members")
}

/// Defines "active in the last 7 days" at `t0` and loads it.
async fn define_active_week(segments: &Segments, t0: i64) {
    segments
        .store
        .put_definition(
            "active-week",
            &json!("last_active_at > now - duration('7d')"),
            false,
            t0,
        )
        .await
        .expect("the segment is stored");
    segments.refresh().await.expect("the definitions load");
}

/// "Active in the last 7 days", on a clock the test moves: a profile
/// leaves once its last activity is 7 days old, with no new event, and
/// enters again with the next one.
async fn the_clock_moves_profiles_out(store: &dyn ProfileStore, segments: &Segments) -> i64 {
    let t0 = 1_795_000_000_000;
    define_active_week(segments, t0).await;
    active(store, "early", t0, 0, t0 + 3_600_000).await;
    active(store, "late", t0 + 3 * DAY, 1, t0 + 3 * DAY).await;
    assert_eq!(
        stored_members(segments, "active-week").await,
        ["early", "late"]
    );

    // Nothing is due before a week has passed since `early`'s activity;
    // at a week, `last_active_at > now - 7d` no longer holds.
    let changed = segments.reevaluate_due(t0 + 7 * DAY - 1, None).await;
    assert_eq!(changed.expect("a round"), 0);
    let changed = segments.reevaluate_due(t0 + 7 * DAY, None).await;
    assert_eq!(changed.expect("a round"), 1);
    assert_eq!(stored_members(segments, "active-week").await, ["late"]);
    let early = store.profile("early").await.expect("read").expect("early");
    assert!(early.segments.is_empty(), "{early:?}");
    assert_eq!(early.revision, 2, "leaving is a change of the profile");
    // Rounds at the same time change nothing more.
    let again = segments.reevaluate_due(t0 + 7 * DAY, None).await;
    assert_eq!(again.expect("a round"), 0);

    let changed = segments.reevaluate_due(t0 + 20 * DAY, None).await;
    assert_eq!(changed.expect("a round"), 1);
    assert!(stored_members(segments, "active-week").await.is_empty());

    // A new event brings `early` back, and it comes due again a week on.
    active(store, "early", t0 + 21 * DAY, 2, t0 + 21 * DAY).await;
    assert_eq!(stored_members(segments, "active-week").await, ["early"]);
    let changed = segments.reevaluate_due(t0 + 28 * DAY + 1, None).await;
    assert_eq!(changed.expect("a round"), 1);
    assert!(stored_members(segments, "active-week").await.is_empty());
    t0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_time_relative_segment_is_left_when_the_clock_passes_in_postgresql() {
    let db = StoreDb::new().await;
    let mut store: PgStore = db.store.clone();
    let _handoff = store.publish_updates();
    let segments = Segments {
        store: Arc::new(store.clone()),
        live: store.segments(),
    };
    the_clock_moves_profiles_out(&store, &segments).await;

    // Every change is in the outbox: `early` entered twice and left twice,
    // `late` entered and left once, each at a revision of its own.
    let messages: Vec<String> =
        sqlx::query_scalar("SELECT unnest(messages) FROM profile_updates ORDER BY 1")
            .fetch_all(store.pool())
            .await
            .expect("read the outbox");
    let mut seen: BTreeMap<(String, String), Vec<i64>> = BTreeMap::new();
    for message in &messages {
        let message: Value = serde_json::from_str(message).expect("JSON");
        if message["type"] == "profile.updated" {
            continue;
        }
        assert_eq!(message["segment"], "active-week", "{message}");
        let key = (
            message["profile_id"].as_str().expect("an id").to_owned(),
            message["type"].as_str().expect("a type").to_owned(),
        );
        seen.entry(key)
            .or_default()
            .push(message["revision"].as_i64().expect("a revision"));
    }
    let count = |profile: &str, kind: &str| {
        seen.get(&(profile.to_owned(), kind.to_owned()))
            .map_or(0, Vec::len)
    };
    assert_eq!(count("early", "segment.entered"), 2, "{seen:?}");
    assert_eq!(count("early", "segment.exited"), 2, "{seen:?}");
    assert_eq!(count("late", "segment.entered"), 1, "{seen:?}");
    assert_eq!(count("late", "segment.exited"), 1, "{seen:?}");
}

/// A membership row a segment's backfill stored before the commit that
/// makes the profile enter: the commit still applies (its insert meets the
/// row, and is done again without failing on it), and the members are
/// whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_entering_a_member_the_backfill_stored_first_applies() {
    let db = StoreDb::new().await;
    let store: PgStore = db.store.clone();
    let segments = Segments {
        store: Arc::new(store.clone()),
        live: store.segments(),
    };
    let t0 = 1_795_000_000_000;
    define_active_week(&segments, t0).await;
    let definitions = segments.store.definitions().await.expect("definitions");
    let id = definitions.first().expect("the segment").id;
    sqlx::query("INSERT INTO segment_members (segment_id, user_id) VALUES ($1, 'ahead')")
        .bind(i32::try_from(id).expect("an integer id"))
        .execute(store.pool())
        .await
        .expect("the backfill's row");

    active(&store, "ahead", t0, 0, t0).await;
    active(&store, "after", t0, 1, t0).await;
    assert_eq!(
        stored_members(&segments, "active-week").await,
        ["after", "ahead"]
    );
    let ahead = store.profile("ahead").await.expect("read").expect("ahead");
    assert_eq!(ahead.segments.len(), 1, "{ahead:?}");
}

#[tokio::test]
async fn a_time_relative_segment_is_left_when_the_clock_passes_in_the_embedded_store() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = EmbeddedStore::open(dir.path()).expect("the store opens");
    let segments = Segments {
        store: Arc::new(store.clone()),
        live: store.segments(),
    };
    the_clock_moves_profiles_out(&store, &segments).await;
}

/// Waits (up to 120 s) until segment `name`'s backfill is done; its body.
async fn backfilled(hub: &PulseHub, name: &str) -> Value {
    let path = format!("/api/v1/segments/{name}");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (status, body) = hub.get_json(&path).await;
        assert_eq!(status, 200, "{path}: {body}");
        if body["backfill"]["state"] == "done" {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the backfill of {name} never finished: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_segment_is_computed_over_the_existing_profiles() {
    let _serial = SERIAL.lock().await;
    let (topic, updates, _database, mut hub) = start(4).await;
    hub.wait_ready().await;
    let (events, expected) = generate("bf", 10_000, 1, 77);
    produce(&producer(), &topic, &events).await;
    hub.wait_exact(&expected, Duration::from_secs(120)).await;
    let count = |device: &str| {
        expected
            .values()
            .filter(|e| e.device_type == device)
            .count()
    };

    // Quietly: the members are counted, and nobody is announced.
    let defined = define(&hub, "mobile", json!("device_type == 'mobile'"), 201).await;
    assert_eq!(defined["backfill"]["state"], "pending", "{defined}");
    let done = backfilled(&hub, "mobile").await;
    assert_eq!(done["members"], count("mobile"), "{done}");
    assert!(
        done["backfill"]["profiles"].as_u64() >= Some(10_000),
        "{done}"
    );
    // Announced: one `segment.entered` per member.
    let (status, body) = hub
        .admin_json(
            Method::PUT,
            "/api/v1/segments/bots",
            &json!({"condition": "device_type == 'bot'", "emit_backfill": true}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let done = backfilled(&hub, "bots").await;
    assert_eq!(done["members"], count("bot"), "{done}");
    assert_eq!(members(&hub, "bots", 1_000).await.len(), count("bot"));

    let messages = segment_messages(&updates);
    let entered = |segment: &str| {
        messages
            .keys()
            .filter(|(kind, s, _)| kind == "segment.entered" && s == segment)
            .count()
    };
    assert_eq!(entered("mobile"), 0);
    assert_eq!(entered("bots"), count("bot"));
    let bot = expected
        .iter()
        .find(|(_, e)| e.device_type == "bot")
        .map(|(user, _)| user)
        .expect("a bot");
    let profile = hub.profile(bot).await.expect("a profile");
    assert_eq!(profile["segments"], json!(["bots"]), "{profile}");
}
