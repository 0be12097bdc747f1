//! `/healthz` and `/readyz` with backends up, down and hanging.

use std::sync::Arc;

use axum::http::StatusCode;

use super::fakes::{FakePublisher, Ping};
use super::{Fakes, get, send};

#[tokio::test]
async fn healthz_answers_ok() {
    let reply = send(&Fakes::default().app(), get("/healthz")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json(), serde_json::json!({"status": "ok"}));
}

#[tokio::test]
async fn ready_when_every_backend_answers() {
    let reply = send(&Fakes::default().app(), get("/readyz")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.json(),
        serde_json::json!({"status": "ready", "checks": {
            "store": {"ok": true}, "cache": {"ok": true}, "publisher": {"ok": true}}})
    );

    let no_cache = Fakes {
        cache: None,
        ..Fakes::default()
    };
    let reply = send(&no_cache.app(), get("/readyz")).await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = reply.json();
    assert_eq!(body["status"], "ready");
    assert!(body["checks"].get("cache").is_none(), "{body}");
}

#[tokio::test]
async fn degraded_when_the_cache_or_the_publisher_is_down() {
    let cache_down = Fakes {
        cache: Some(Ping::Down("redis: connection refused")),
        ..Fakes::default()
    };
    let reply = send(&cache_down.app(), get("/readyz")).await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = reply.json();
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["checks"]["cache"]["ok"], false);
    assert_eq!(
        body["checks"]["cache"]["error"],
        "redis: connection refused"
    );
    assert_eq!(body["checks"]["store"]["ok"], true);

    let publisher_down = Fakes {
        publisher: Arc::new(FakePublisher::pinging(Ping::Down("no broker"))),
        ..Fakes::default()
    };
    let reply = send(&publisher_down.app(), get("/readyz")).await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = reply.json();
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["checks"]["publisher"]["error"], "no broker");
}

#[tokio::test]
async fn unavailable_when_the_store_is_down_or_silent() {
    let store_down = Fakes {
        store: Ping::Down("postgres: too many connections"),
        cache: Some(Ping::Down("redis: connection refused")),
        ..Fakes::default()
    };
    let reply = send(&store_down.app(), get("/readyz")).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    // The report itself, not a problem: a probe reads which check failed.
    assert_eq!(reply.content_type(), "application/json");
    let body = reply.json();
    assert_eq!(body["status"], "unavailable", "{body}");
    assert_eq!(body["checks"]["store"]["ok"], false);
    assert_eq!(
        body["checks"]["store"]["error"],
        "postgres: too many connections"
    );
    assert_eq!(body["checks"]["cache"]["ok"], false);

    let started = std::time::Instant::now();
    let store_silent = Fakes {
        store: Ping::Hangs,
        publisher: Arc::new(FakePublisher::pinging(Ping::Hangs)),
        ..Fakes::default()
    };
    let reply = send(&store_silent.app(), get("/readyz")).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    let body = reply.json();
    assert_eq!(body["checks"]["store"]["error"], "no answer within 1000 ms");
    assert_eq!(body["checks"]["publisher"]["ok"], false);
    assert_eq!(body["checks"]["cache"]["ok"], true);
    // The checks run side by side: two silent backends cost one timeout.
    assert!(started.elapsed() < std::time::Duration::from_millis(1_900));
}
