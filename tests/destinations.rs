//! Destinations end to end, against the real broker and PostgreSQL and
//! real HTTP receivers on the loopback: webhooks defined through the admin
//! API receive the `profile-updates` messages they asked for, batched and
//! signed so that the Standard Webhooks library accepts them; a failing
//! receiver gets the same `webhook-id` until it answers; a hanging one
//! holds back no other; `410` disables; dead letters are listed and sent
//! again.
//!
//! The tests share two CPU cores with the binaries they start, so they run
//! one at a time.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};
use reqwest::Method;
use serde_json::{Value, json};

use pulsehub::activation::destination::sign::Secret;

use support::db::TestDb;
use support::hub::{ADMIN_TOKEN, PulseHub, SERIAL};
use support::kafka::{produce, producer, topics};
use support::receiver::{Answer, Delivery, Receiver, secret};
use support::services::kafka_brokers;
use support::workload::generate;

/// A topic, its updates topic, a database, and PulseHub on them with the
/// admin routes, loopback destinations allowed and a retry schedule of
/// two short delays: `(topic, database, PulseHub)`.
async fn start(partitions: i32) -> (String, TestDb, PulseHub) {
    let topic = topics(partitions).await;
    let updates = format!("{topic}.updates");
    pulsehub::kafka::ensure_topic(&kafka_brokers(), &updates, 3)
        .await
        .expect("create the updates topic");
    let database = TestDb::create().await;
    let env = [
        ("PULSEHUB_KAFKA_UPDATES_TOPIC", updates.as_str()),
        ("PULSEHUB_ADMIN_TOKEN", ADMIN_TOKEN),
        ("PULSEHUB_ACTIVATION_ALLOW_PRIVATE_NETWORKS", "true"),
        ("PULSEHUB_ACTIVATION_WEBHOOK_RETRY_SCHEDULE", "100ms,100ms"),
        ("PULSEHUB_ACTIVATION_WEBHOOK_TIMEOUT_MS", "60000"),
        ("PULSEHUB_ACTIVATION_WEBHOOK_BATCH_MAX", "50"),
    ];
    let hub = PulseHub::services_with(&topic, database.url(), None, &env, &[]);
    (topic, database, hub)
}

async fn define_segment(hub: &PulseHub, name: &str, condition: &str) {
    let path = format!("/api/v1/segments/{name}");
    let (status, body) = hub
        .admin_json(Method::PUT, &path, &json!({ "condition": condition }))
        .await;
    assert_eq!(status, 201, "PUT {path}: {body}");
}

/// Puts destination `name`; asserts the status; returns the body.
async fn put_destination(hub: &PulseHub, name: &str, body: Value, status: u16) -> Value {
    let path = format!("/api/v1/destinations/{name}");
    let (got, answer) = hub.admin_json(Method::PUT, &path, &body).await;
    assert_eq!(got, status, "PUT {path}: {answer}");
    answer
}

async fn destination(hub: &PulseHub, name: &str) -> Value {
    let (status, body) = hub
        .admin(Method::GET, &format!("/api/v1/destinations/{name}"))
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Every message of `deliveries`, in the order received, each repeat
/// (same profile, revision, type and segment) after its first dropped, as
/// a consumer drops them.
fn distinct_messages(deliveries: &[Delivery]) -> Vec<Value> {
    let mut seen = BTreeSet::new();
    let mut messages = Vec::new();
    for delivery in deliveries {
        if !matches!(delivery.answer, Answer::Status(200)) {
            continue;
        }
        for message in delivery.messages() {
            let key = (
                message["profile_id"]
                    .as_str()
                    .expect("a profile id")
                    .to_owned(),
                message["revision"].as_i64().expect("a revision"),
                message["type"].as_str().expect("a type").to_owned(),
                message["segment"].as_str().unwrap_or_default().to_owned(),
            );
            if seen.insert(key) {
                messages.push(message);
            }
        }
    }
    messages
}

/// The profiles `segment.entered` named for `segment`, each with how many
/// distinct revisions entered it.
fn entries(messages: &[Value], segment: &str) -> BTreeMap<String, usize> {
    let mut entered: BTreeMap<String, usize> = BTreeMap::new();
    for message in messages {
        if message["type"] == "segment.entered" && message["segment"] == segment {
            *entered
                .entry(message["profile_id"].as_str().expect("id").to_owned())
                .or_default() += 1;
        }
    }
    entered
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_entry_reaches_the_webhook_once_signed_and_in_order() {
    let _serial = SERIAL.lock().await;
    let (topic, _database, mut hub) = start(4).await;
    hub.wait_ready().await;
    define_segment(
        &hub,
        "mobile-fans",
        "page_views >= 5 && device_type == 'mobile'",
    )
    .await;
    define_segment(&hub, "desktop", "device_type == 'desktop'").await;
    let fans_secret = secret(1);
    let fans = Receiver::start(&fans_secret, &[], Answer::Status(200)).await;
    let all = Receiver::start(&secret(2), &[], Answer::Status(200)).await;
    let defined = put_destination(
        &hub,
        "fans",
        json!({"url": fans.url, "secret": fans_secret, "events": ["segment.exited", "segment.entered"],
               "segments": ["mobile-fans"]}),
        201,
    )
    .await;
    assert_eq!(defined["state"], "enabled", "{defined}");
    assert_eq!(
        defined["events"],
        json!(["segment.entered", "segment.exited"])
    );
    assert!(
        defined.get("secret").is_none(),
        "the secret is never shown: {defined}"
    );
    put_destination(
        &hub,
        "all",
        json!({"url": all.url, "secret": secret(2), "events": ["profile.updated", "segment.entered"]}),
        201,
    )
    .await;
    // The same definition again changes nothing.
    let same = put_destination(
        &hub,
        "fans",
        json!({"url": fans.url, "secret": fans_secret, "events": ["segment.entered", "segment.exited"],
               "segments": ["mobile-fans"]}),
        200,
    )
    .await;
    assert_eq!(same["updated_at"], defined["updated_at"]);

    let (events, expected) = generate("dst", 160, 9, 43);
    let producing = {
        let (topic, events) = (topic.clone(), events.clone());
        tokio::spawn(async move {
            let producer = producer();
            for wave in events.chunks(240) {
                produce(&producer, &topic, wave).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    // A SIGKILL mid-stream: whatever a worker had sent but not committed
    // is sent again after the restart, never skipped.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    hub.kill();
    hub.start();
    hub.wait_ready().await;
    producing.await.expect("producer finished");
    hub.wait_exact(&expected, Duration::from_secs(180)).await;

    let qualifying: BTreeSet<String> = expected
        .iter()
        .filter(|(_, e)| e.page_views >= 5 && e.device_type == "mobile")
        .map(|(user, _)| user.clone())
        .collect();
    assert!(!qualifying.is_empty() && qualifying.len() < expected.len() / 3);
    let deliveries = fans
        .wait_for("an entry for every qualifying profile", |deliveries| {
            entries(&distinct_messages(deliveries), "mobile-fans").len() >= qualifying.len()
        })
        .await;
    let messages = distinct_messages(&deliveries);
    let entered = entries(&messages, "mobile-fans");
    assert_eq!(entered.keys().cloned().collect::<BTreeSet<_>>(), qualifying);
    assert!(
        entered.values().all(|&revisions| revisions == 1),
        "each profile entered at one revision: {entered:?}"
    );
    assert!(
        messages.iter().all(|m| m["segment"] == "mobile-fans"),
        "only the segment asked for"
    );
    // Every delivery carried a signature the library accepts, a batch
    // body, and at most the batch limit.
    for delivery in &deliveries {
        assert_eq!(delivery.verified, Ok(()), "delivery {}", delivery.id);
        let body = delivery.json();
        assert_eq!(body["type"], "changes", "{body}");
        assert!(!delivery.messages().is_empty() && delivery.messages().len() <= 50);
    }

    // A receiver rejects a tampered body, and a signature made long ago.
    let genuine = &deliveries[0];
    let mut tampered = genuine.body.to_vec();
    let last = tampered.len() - 2;
    tampered[last] ^= 1;
    assert!(fans.verify(&tampered, &genuine.headers).is_err());
    let key = Secret::parse(&fans_secret).expect("secret");
    let signed_at = |timestamp: i64| {
        let mut headers = HeaderMap::new();
        let value = |text: String| HeaderValue::from_str(&text).expect("header");
        headers.insert("webhook-id", value(genuine.id.clone()));
        headers.insert("webhook-timestamp", value(timestamp.to_string()));
        headers.insert(
            "webhook-signature",
            value(key.sign(&genuine.id, timestamp, &genuine.body)),
        );
        headers
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert_eq!(fans.verify(&genuine.body, &signed_at(now)), Ok(()));
    let stale = fans.verify(&genuine.body, &signed_at(now - 600));
    assert!(stale.is_err(), "a timestamp ten minutes old is refused");

    // `all` gets every profile's updates, in revision order per profile.
    let deliveries = all
        .wait_for("every profile's last page view", |deliveries| {
            let mut views: BTreeMap<String, i64> = BTreeMap::new();
            for m in distinct_messages(deliveries) {
                if let Some(n) = m["attributes"]["page_views"]["value"].as_i64() {
                    let user = m["profile_id"].as_str().expect("id").to_owned();
                    let seen = views.entry(user).or_default();
                    *seen = (*seen).max(n);
                }
            }
            expected
                .iter()
                .all(|(user, e)| views.get(user) == Some(&e.page_views))
        })
        .await;
    let mut revisions: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for message in distinct_messages(&deliveries) {
        if message["type"] == "profile.updated" {
            revisions
                .entry(message["profile_id"].as_str().expect("id").to_owned())
                .or_default()
                .push(message["revision"].as_i64().expect("revision"));
        }
    }
    for (profile, seen) in &revisions {
        assert!(
            seen.windows(2).all(|pair| pair[0] < pair[1]),
            "{profile}: revisions out of order: {seen:?}"
        );
    }
    let segments_seen: BTreeSet<String> = distinct_messages(&deliveries)
        .iter()
        .filter(|m| m["type"] == "segment.entered")
        .map(|m| m["segment"].as_str().expect("segment").to_owned())
        .collect();
    assert_eq!(
        segments_seen,
        BTreeSet::from(["desktop".to_owned(), "mobile-fans".to_owned()]),
        "without `segments`, every segment"
    );

    // The counters say what was sent.
    let fans_state = destination(&hub, "fans").await;
    assert!(
        fans_state["counters"]["sent"].as_u64().expect("sent") >= qualifying.len() as u64,
        "{fans_state}"
    );
    let metrics = hub.metrics().await;
    assert!(
        metrics.sum(
            "pulsehub_destination_messages_sent_total",
            &[("destination", "fans")]
        ) > 0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_gets_the_same_id_and_a_hanging_one_holds_back_no_other() {
    let _serial = SERIAL.lock().await;
    let (_topic, _database, mut hub) = start(2).await;
    hub.wait_ready().await;
    let flaky = Receiver::start(
        &secret(3),
        &[Answer::Status(500), Answer::Status(500)],
        Answer::Status(200),
    )
    .await;
    let stuck = Receiver::start(&secret(4), &[], Answer::Hang).await;
    let healthy = Receiver::start(&secret(5), &[], Answer::Status(200)).await;
    for (name, receiver, seed) in [
        ("flaky", &flaky, 3),
        ("stuck", &stuck, 4),
        ("healthy", &healthy, 5),
    ] {
        put_destination(
            &hub,
            name,
            json!({"url": receiver.url, "secret": secret(seed), "events": ["profile.updated"]}),
            201,
        )
        .await;
    }
    let event = |n: usize| {
        json!({
            "event_id": format!("h{n}"), "user_id": format!("hang-u{}", n % 10),
            "event_type": "page_view", "timestamp": "2026-11-20T10:00:00Z",
            "url": "https://shop.example/"
        })
        .to_string()
    };
    // The first batch, then more once the stuck receiver holds a request.
    let first: Vec<String> = (0..10).map(event).collect();
    hub.post_events(&first.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    stuck
        .wait_for("a request to hold", |deliveries| !deliveries.is_empty())
        .await;
    let more: Vec<String> = (10..40).map(event).collect();
    hub.post_events(&more.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    // Every profile's fourth page view reaches the healthy receiver while
    // the stuck one still holds its first request.
    let fourth = |deliveries: &[Delivery]| {
        let done: BTreeSet<String> = distinct_messages(deliveries)
            .iter()
            .filter(|m| m["attributes"]["page_views"]["value"] == 4)
            .map(|m| m["profile_id"].as_str().expect("id").to_owned())
            .collect();
        done.len() == 10
    };
    healthy
        .wait_for("every profile's fourth page view", fourth)
        .await;
    assert_eq!(stuck.deliveries().len(), 1, "one request at a time");
    assert_eq!(stuck.answered(), 0, "still holding it");

    // The flaky receiver got its first batch three times under one id,
    // then the rest.
    let deliveries = flaky
        .wait_for("every profile's fourth page view", fourth)
        .await;
    assert!(deliveries.len() >= 4, "{} deliveries", deliveries.len());
    let first_three: Vec<&Delivery> = deliveries.iter().take(3).collect();
    assert_eq!(
        first_three.iter().map(|d| d.answer).collect::<Vec<_>>(),
        [
            Answer::Status(500),
            Answer::Status(500),
            Answer::Status(200)
        ]
    );
    assert!(
        first_three
            .iter()
            .all(|d| d.id == first_three[0].id && d.body == first_three[0].body)
    );
    assert_ne!(deliveries[3].id, first_three[0].id, "a new batch, a new id");
    for delivery in &deliveries {
        assert_eq!(delivery.verified, Ok(()), "delivery {}", delivery.id);
    }
    let state = destination(&hub, "flaky").await;
    assert_eq!(state["counters"]["failed"], 2, "{state}");
    assert_eq!(state["counters"]["retried"], 2, "{state}");
    assert_eq!(
        state["counters"]["last_error"],
        "the receiver answered 500 Internal Server Error"
    );
    let metrics = hub.metrics().await;
    assert_eq!(
        metrics.sum(
            "pulsehub_destination_attempts_retried_total",
            &[("destination", "flaky")]
        ),
        2.0
    );
    hub.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_disables_and_dead_letters_are_sent_again() {
    let _serial = SERIAL.lock().await;
    let (_topic, _database, mut hub) = start(2).await;
    hub.wait_ready().await;
    let gone = Receiver::start(&secret(6), &[Answer::Status(410)], Answer::Status(200)).await;
    let doomed = Receiver::start(&secret(7), &[], Answer::Status(503)).await;
    let body = |receiver: &Receiver, seed: u8| json!({"url": receiver.url, "secret": secret(seed), "events": ["profile.updated"]});
    put_destination(&hub, "gone", body(&gone, 6), 201).await;
    put_destination(&hub, "doomed", body(&doomed, 7), 201).await;
    let event = json!({
        "event_id": "g1", "user_id": "gone-u1", "event_type": "page_view",
        "timestamp": "2026-11-20T10:00:00Z", "url": "https://shop.example/"
    })
    .to_string();
    hub.post_events(&[&event]).await;

    // 410: disabled, and told why.
    gone.wait_for("the first request", |d| !d.is_empty()).await;
    let disabled = wait_for_state(&hub, "gone", "disabled").await;
    assert_eq!(
        disabled["disabled_reason"],
        "the receiver answered 410 Gone"
    );
    // A PUT enables it again, from where it stopped: the same message
    // arrives.
    put_destination(&hub, "gone", body(&gone, 6), 200).await;
    let deliveries = gone.wait_for("the message again", |d| d.len() >= 2).await;
    assert_eq!(deliveries[1].answer, Answer::Status(200));
    assert_eq!(deliveries[1].messages(), deliveries[0].messages());
    assert_eq!(destination(&hub, "gone").await["state"], "enabled");

    // Three attempts (the schedule has two delays), then a dead letter.
    let attempts = doomed.wait_for("three attempts", |d| d.len() >= 3).await;
    let letters = wait_for_dead_letters(&hub, "doomed").await;
    let letter = &letters[0];
    assert_eq!(letter["attempts"], 3, "{letter}");
    assert_eq!(letter["messages"], 1);
    assert_eq!(letter["webhook_id"], attempts[0].id.as_str());
    assert_eq!(
        letter["last_error"],
        "the receiver answered 503 Service Unavailable"
    );
    assert_eq!(letter["body"]["data"][0]["profile_id"], "gone-u1");
    let id = letter["id"].as_i64().expect("id");
    let resend = format!("/api/v1/destinations/doomed/dead-letters/{id}/resend");
    // Still failing: kept.
    let (status, problem) = hub.admin(Method::POST, &resend).await;
    assert_eq!(status, 502, "{problem}");
    assert_eq!(wait_for_dead_letters(&hub, "doomed").await.len(), 1);
    doomed.answer_from_now(Answer::Status(200));
    let (status, resent) = hub.admin(Method::POST, &resend).await;
    assert_eq!(status, 200, "{resent}");
    assert_eq!(resent["webhook_id"], attempts[0].id.as_str());
    let last = doomed.deliveries().pop().expect("the resend");
    assert_eq!(last.id, attempts[0].id);
    assert_eq!(last.verified, Ok(()));
    let (status, page) = hub
        .admin(Method::GET, "/api/v1/destinations/doomed/dead-letters")
        .await;
    assert_eq!(status, 200);
    assert_eq!(page["dead_letters"], json!([]), "{page}");
    let (status, _) = hub.admin(Method::POST, &resend).await;
    assert_eq!(status, 404);

    // Deleting stops it; a second delete finds nothing.
    let (status, _) = hub
        .admin(Method::DELETE, "/api/v1/destinations/doomed")
        .await;
    assert_eq!(status, 204);
    let (status, problem) = hub
        .admin(Method::DELETE, "/api/v1/destinations/doomed")
        .await;
    assert_eq!(status, 404, "{problem}");
    let (status, list) = hub.admin(Method::GET, "/api/v1/destinations").await;
    assert_eq!(status, 200);
    assert_eq!(
        list["destinations"].as_array().map(Vec::len),
        Some(1),
        "{list}"
    );
    hub.kill();
}

async fn wait_for_state(hub: &PulseHub, name: &str, state: &str) -> Value {
    for _ in 0..600 {
        let body = destination(hub, name).await;
        if body["state"] == state {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("destination {name} never became {state}");
}

async fn wait_for_dead_letters(hub: &PulseHub, name: &str) -> Vec<Value> {
    let path = format!("/api/v1/destinations/{name}/dead-letters");
    for _ in 0..600 {
        let (status, page) = hub.admin(Method::GET, &path).await;
        assert_eq!(status, 200, "{page}");
        let letters = page["dead_letters"].as_array().cloned().unwrap_or_default();
        if !letters.is_empty() {
            return letters;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("destination {name} kept no dead letter");
}
