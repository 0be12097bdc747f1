//! End-to-end tests of `pulsehub run` against the real services: the
//! Kafka-protocol broker, PostgreSQL and Redis (`cargo xtask test` starts
//! them; see scripts/services.sh): exact counts, SIGKILL crashes, dead
//! letters, Redis stopped, PostgreSQL unreachable, and the embedded mode.
//! Each test makes its own database, topics, consumer group and Redis key
//! prefix, runs the real binary as a child process, produces events with a
//! Kafka client of its own, and checks the profiles over REST against counts
//! it computes itself. The harness is in `support/`.
//!
//! The tests share two CPU cores with the binaries they start, so they run
//! one at a time.

mod support;

use std::collections::BTreeSet;
use std::io::Write as _;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::Connection as _;

use support::db::TestDb;
use support::hub::{PulseHub, SERIAL};
use support::kafka::{produce, producer, read_all, topics};
use support::proxy::Proxy;
use support::services::{OwnRedis, free_port, redis_url, workspace};
use support::workload::{Rng, generate};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_over_rest_match_counts_computed_by_the_test() {
    let _serial = SERIAL.lock().await;
    let topic = topics(4).await;
    let database = TestDb::create().await;
    let mut hub = PulseHub::services(&topic, database.url(), Some(&redis_url()));
    hub.wait_ready().await;

    let (events, expected) = generate("e2e", 300, 20, 7);
    produce(&producer(), &topic, &events).await;
    hub.wait_exact(&expected, Duration::from_secs(120)).await;

    // Provenance: each attribute names its plugin, version and event.
    let profile = hub.profile("e2e-u1").await.expect("profile exists");
    let views = &profile["attributes"]["page_views"];
    assert_eq!(views["plugin"], "page-view-counter");
    assert_eq!(views["plugin_version"], "1.0.0");
    assert!(
        views["event_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("e2e-u1-e"))
    );
    assert_eq!(
        profile["attributes"]["device_type"]["plugin"],
        "device-classifier"
    );
    assert_eq!(hub.profile("e2e-nobody").await, None);

    // The archive role stored every raw event once, text unchanged.
    let mut conn = sqlx::PgConnection::connect(database.url())
        .await
        .expect("connect");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM events")
            .fetch_one(&mut conn)
            .await
            .expect("count archived events");
        if count == events.len() as i64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "archived {count} of {} events",
            events.len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (id, payload): (String, String) =
        sqlx::query_as("SELECT event_id, payload::text FROM events ORDER BY event_id LIMIT 1")
            .fetch_one(&mut conn)
            .await
            .expect("an archived event");
    let original = events
        .iter()
        .find(|(_, p)| p.contains(&format!("\"event_id\":\"{id}\"")))
        .expect("the archived event was produced");
    assert_eq!(payload, original.1);

    // /metrics tells the same story: each role consumed every event once from
    // the four partitions and caught up with them, and each plugin saw the
    // events it subscribes to.
    let sent = events.len() as f64;
    let consumed = "pulsehub_events_consumed_total";
    let lag = "pulsehub_consumer_lag";
    let deadline = Instant::now() + Duration::from_secs(60);
    let metrics = loop {
        let metrics = hub.metrics().await;
        let caught_up = ["enrich", "archive"].iter().all(|&role| {
            metrics.sum(consumed, &[("role", role)]) == sent
                && metrics
                    .label_values(lag, &[("role", role)], "partition")
                    .len()
                    == 4
                && metrics.sum(lag, &[("role", role)]) == 0.0
        });
        if caught_up {
            break metrics;
        }
        assert!(
            Instant::now() < deadline,
            "{sent} events sent; {metrics:#?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let partitions: BTreeSet<String> = (0..4).map(|p| p.to_string()).collect();
    assert_eq!(
        metrics.label_values(consumed, &[("role", "enrich")], "partition"),
        partitions
    );
    let page_views: i64 = expected.values().map(|e| e.page_views).sum();
    for (plugin, events) in [
        ("device-classifier", sent),
        ("last-active", sent),
        ("page-view-counter", page_views as f64),
    ] {
        let labels = [("plugin", plugin), ("version", "1.0.0")];
        assert_eq!(
            metrics.sum("pulsehub_plugin_events_total", &labels),
            events,
            "{plugin}"
        );
    }
    let timed = "pulsehub_store_operation_duration_seconds_count";
    for (store, operation) in [
        ("postgres", "commit"),
        ("postgres", "archive"),
        ("redis", "put"),
        ("redis", "get"),
    ] {
        let calls = metrics.sum(timed, &[("store", store), ("operation", operation)]);
        assert!(calls > 0.0, "no {store} {operation} timed: {metrics:#?}");
    }
    assert!(metrics.sum("pulsehub_commit_duration_seconds_count", &[]) > 0.0);
    assert!(metrics.sum("pulsehub_batch_events_sum", &[("role", "enrich")]) >= sent);
    for result in ["hit", "miss"] {
        let lookups = metrics.sum("pulsehub_cache_lookups_total", &[("result", result)]);
        assert!(lookups > 0.0, "no cache {result}: {metrics:#?}");
    }
    // Every profile was read at least once; the unknown one answered 404.
    let profiles = [("route", "/api/v1/profiles/{user_id}"), ("method", "GET")];
    let requests = "pulsehub_http_requests_total";
    let found = [profiles[0], profiles[1], ("status", "200")];
    assert!(metrics.sum(requests, &found) >= expected.len() as f64);
    let unknown = [profiles[0], profiles[1], ("status", "404")];
    assert!(metrics.sum(requests, &unknown) >= 1.0);
    let durations = "pulsehub_http_request_duration_seconds_count";
    assert!(metrics.sum(durations, &profiles) > expected.len() as f64);
    let routes = metrics.label_values(requests, &[], "route");
    assert!(
        routes.iter().all(|r| !r.contains("e2e-")),
        "a raw path became a label: {routes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_neither_loses_nor_double_counts() {
    let _serial = SERIAL.lock().await;
    let topic = topics(4).await;
    let database = TestDb::create().await;
    let mut hub = PulseHub::services(&topic, database.url(), Some(&redis_url()));
    hub.wait_ready().await;

    let (events, expected) = generate("crash", 400, 50, 11);
    let producing = {
        let (topic, events) = (topic.clone(), events.clone());
        tokio::spawn(async move {
            let producer = producer();
            for wave in events.chunks(2_000) {
                produce(&producer, &topic, wave).await;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        })
    };
    let mut rng = Rng(5);
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(700 + rng.below(1_500))).await;
        hub.kill();
        hub.start();
        hub.wait_ready().await;
    }
    producing.await.expect("producer finished");
    hub.wait_exact(&expected, Duration::from_secs(180)).await;
    let log = hub.log_text();
    let crashes = log.matches("PulseHub is running").count();
    assert_eq!(crashes, 5, "four restarts after SIGKILL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_events_and_plugin_failures_go_to_the_dead_letters() {
    let _serial = SERIAL.lock().await;
    let topic = topics(2).await;
    let database = TestDb::create().await;
    // The built-in plugins plus a fixture that traps on events of kind "trap".
    let plugins = tempfile::tempdir().expect("tempdir");
    for dir in ["target/plugins", "target/test-plugins"] {
        for entry in std::fs::read_dir(workspace().join(dir)).expect("plugins are built") {
            let path = entry.expect("entry").path();
            let name = path.file_name().expect("file name").to_string_lossy();
            if dir == "target/plugins" || name.starts_with("chaos.") {
                std::fs::copy(&path, plugins.path().join(&*name)).expect("copy plugin");
            }
        }
    }
    let mut hub = PulseHub::services(&topic, database.url(), None);
    hub.kill();
    hub.set_env("PULSEHUB_PLUGIN_DIR", &plugins.path().display().to_string());
    hub.start();
    hub.wait_ready().await;

    let (mut events, mut expected) = generate("poison", 50, 20, 3);
    let long_user = "x".repeat(300);
    let bad: Vec<(String, String, &str)> = vec![
        ("poison-u1".into(), "this is not json".into(), "bad-event"),
        (
            "poison-u2".into(),
            r#"{"event_type":"page_view","timestamp":1}"#.into(),
            "bad-event",
        ),
        (
            "poison-u3".into(),
            r#"{"user_id":"poison-u3","event_type":"page_view","timestamp":"yesterday"}"#.into(),
            "bad-event",
        ),
        (
            "poison-u4".into(),
            json!({"user_id": long_user, "event_type": "page_view", "timestamp": 1}).to_string(),
            "bad-event",
        ),
        (
            "poison-u5".into(),
            json!({"event_id": "trap-1", "user_id": "poison-u5", "event_type": "trap",
                   "timestamp": 1_795_000_000_000_i64 + 5})
            .to_string(),
            "plugin-error",
        ),
    ];
    // The trap event fails only in the chaos plugin: the others still count
    // it (first seen).
    if let Some(e) = expected.get_mut("poison-u5") {
        e.first_seen_ms = e.first_seen_ms.min(1_795_000_000_005);
    }
    let mut rng = Rng(9);
    for (key, payload, _) in &bad {
        let at = rng.below(events.len() as u64) as usize;
        events.insert(at, (key.clone(), payload.clone()));
    }
    produce(&producer(), &topic, &events).await;
    hub.wait_exact(&expected, Duration::from_secs(120)).await;

    let letters = read_all(&format!("{topic}.dlq"), Duration::from_secs(3));
    let got: BTreeSet<Vec<u8>> = letters.iter().map(|(p, _)| p.clone()).collect();
    let want: BTreeSet<Vec<u8>> = bad.iter().map(|(_, p, _)| p.as_bytes().to_vec()).collect();
    assert_eq!(got, want, "exactly the bad events are dead letters");
    assert_eq!(letters.len(), bad.len(), "each once");
    for (payload, headers) in &letters {
        let (_, _, reason) = bad
            .iter()
            .find(|(_, p, _)| p.as_bytes() == payload.as_slice())
            .expect("known");
        assert_eq!(
            headers.get("pulsehub-reason").map(String::as_str),
            Some(*reason)
        );
        assert_eq!(headers.get("pulsehub-source-topic"), Some(&topic));
        assert!(headers.contains_key("pulsehub-source-partition"));
        assert!(headers.contains_key("pulsehub-source-offset"));
        assert!(!headers["pulsehub-detail"].is_empty(), "{headers:?}");
        if *reason == "plugin-error" {
            assert_eq!(headers["pulsehub-plugin"], "chaos");
            assert_eq!(headers["pulsehub-plugin-version"], "0.1.0");
            assert_eq!(headers["pulsehub-error-kind"], "trap");
            assert_eq!(headers["pulsehub-event-id"], "trap-1");
        }
    }
    let timestamp_letter = letters
        .iter()
        .find(|(p, _)| p.as_slice() == bad[2].1.as_bytes())
        .expect("bad timestamp letter");
    assert!(
        timestamp_letter.1["pulsehub-detail"].contains("timestamp"),
        "{:?}",
        timestamp_letter.1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_stopped_profiles_are_still_served_and_the_pipeline_goes_on() {
    let _serial = SERIAL.lock().await;
    let topic = topics(2).await;
    let database = TestDb::create().await;
    let redis = OwnRedis::start(free_port());
    let mut hub = PulseHub::services(&topic, database.url(), Some(&redis.url()));
    hub.wait_ready().await;
    let (_, ready) = hub.get_json("/readyz").await;
    assert_eq!(ready["status"], "ready", "{ready}");

    let (first, expected_first) = generate("redis", 100, 10, 21);
    produce(&producer(), &topic, &first).await;
    hub.wait_exact(&expected_first, Duration::from_secs(60))
        .await;

    let port = redis.port;
    drop(redis);
    let (status, ready) = hub.get_json("/readyz").await;
    assert_eq!(
        (status, ready["status"].as_str()),
        (200, Some("degraded")),
        "{ready}"
    );
    // Served from PostgreSQL.
    hub.wait_exact(&expected_first, Duration::from_secs(10))
        .await;

    // The pipeline keeps going without its cache.
    let (second, expected_second) = generate("redis2", 100, 10, 22);
    produce(&producer(), &topic, &second).await;
    hub.wait_exact(&expected_second, Duration::from_secs(60))
        .await;

    // Back again: ready, and nothing stale is served.
    let _redis = OwnRedis::start(port);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, ready) = hub.get_json("/readyz").await;
        if ready["status"] == "ready" {
            break;
        }
        assert!(Instant::now() < deadline, "not ready again: {ready}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    hub.wait_exact(&expected_first, Duration::from_secs(10))
        .await;
    hub.wait_exact(&expected_second, Duration::from_secs(10))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_unreachable_the_pipeline_waits_then_catches_up_exactly() {
    let _serial = SERIAL.lock().await;
    let topic = topics(2).await;
    let database = TestDb::create().await;
    let proxy = Proxy::start("127.0.0.1:5432".to_owned()).await;
    let proxied = database
        .url()
        .replacen(":5432/", &format!(":{}/", proxy.port()), 1);
    assert_ne!(proxied, database.url(), "the database URL names port 5432");
    let mut hub = PulseHub::services(&topic, &proxied, None);
    hub.wait_ready().await;

    let (first, expected_first) = generate("pgdown", 100, 10, 31);
    produce(&producer(), &topic, &first).await;
    hub.wait_exact(&expected_first, Duration::from_secs(60))
        .await;

    proxy.cut();
    let (second, mut expected_all) = generate("pgdown", 100, 10, 32);
    produce(&producer(), &topic, &second).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (status, ready) = hub.get_json("/readyz").await;
    assert_eq!(status, 503, "store unreachable: {ready}");
    assert_eq!(ready["status"], "unavailable");

    proxy.restore();
    for (user, e) in &mut expected_all {
        let before = &expected_first[user];
        e.page_views += before.page_views;
        e.first_seen_ms = e.first_seen_ms.min(before.first_seen_ms);
        e.last_active_ms = e.last_active_ms.max(before.last_active_ms);
    }
    hub.wait_exact(&expected_all, Duration::from_secs(90)).await;
    let letters = read_all(&format!("{topic}.dlq"), Duration::from_secs(2));
    assert!(
        letters.is_empty(),
        "an outage sends nothing to the dead letters"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_mode_ingests_over_http_and_keeps_profiles_across_restarts() {
    let _serial = SERIAL.lock().await;
    let data = tempfile::tempdir().expect("tempdir");
    let mut hub = PulseHub::new(vec![(
        "PULSEHUB_DATA_DIR".into(),
        data.path().display().to_string(),
    )]);
    hub.wait_ready().await;

    let (events, expected) = generate("embedded", 50, 20, 41);
    for chunk in events.chunks(250) {
        let body = format!(
            "[{}]",
            chunk
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
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["accepted"], chunk.len());
    }
    // A bad event is refused with a problem and nothing of its request kept.
    let response = hub
        .http
        .post(hub.url("/api/v1/events"))
        .header("content-type", "application/json")
        .body(r#"[{"user_id":"embedded-u0","event_type":"page_view","timestamp":1},{"user_id":"embedded-u0"}]"#)
        .send()
        .await
        .expect("POST answers");
    assert_eq!(response.status().as_u16(), 400);
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    hub.wait_exact(&expected, Duration::from_secs(60)).await;

    hub.kill();
    hub.start();
    hub.wait_ready().await;
    assert!(
        hub.mismatches(&expected).await.is_empty(),
        "profiles survive"
    );

    // File ingest on start-up feeds the same pipeline.
    let file = data.path().join("more.ndjson");
    let (more, expected_more) = generate("file", 20, 5, 42);
    let mut out = std::fs::File::create(&file).expect("create");
    for (_, payload) in &more {
        writeln!(out, "{payload}").expect("write");
    }
    drop(out);
    hub.kill();
    hub.start_with_args(&["--events", &file.display().to_string()]);
    hub.wait_ready().await;
    hub.wait_exact(&expected_more, Duration::from_secs(60))
        .await;
    assert!(hub.mismatches(&expected).await.is_empty());
}
