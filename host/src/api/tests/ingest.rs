//! `POST /api/v1/events`: all or nothing, the exact text, in order.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::header::CONTENT_TYPE;
use axum::http::{Request, StatusCode};

use super::fakes::FakePublisher;
use super::{Fakes, post_json, send};
use crate::api::ApiLimits;
use crate::api::problem::types;

const EVENTS: &str = "/api/v1/events";

fn event(user: &str, id: &str) -> String {
    format!(
        r#"{{"event_id": "{id}", "user_id": "{user}", "event_type": "page_view", "timestamp": "2026-11-29T22:00:00.123Z"}}"#
    )
}

fn with_publisher() -> (Fakes, Arc<FakePublisher>) {
    let fakes = Fakes::default();
    let publisher = fakes.publisher.clone();
    (fakes, publisher)
}

#[tokio::test]
async fn one_event_is_published_as_sent() {
    let (fakes, publisher) = with_publisher();
    let app = fakes.app();
    // Odd spacing and an unknown member: the payload is the client's text.
    let text =
        r#"{ "user_id":"u-42",  "event_type":"click", "timestamp":1700000000000, "x":[1, 2] }"#;
    let reply = send(&app, post_json(EVENTS, format!("\n {text}\n"))).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    assert_eq!(reply.json(), serde_json::json!({"accepted": 1}));
    let published = publisher.published();
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].key, "u-42");
    assert_eq!(published[0].payload, text.as_bytes());
}

#[tokio::test]
async fn an_array_is_published_in_request_order() {
    let (fakes, publisher) = with_publisher();
    let app = fakes.app();
    let events = [event("u-2", "e1"), event("u-1", "e2"), event("u-2", "e3")];
    let body = format!("[{}]", events.join(",\n  "));
    let reply = send(&app, post_json(EVENTS, body)).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    assert_eq!(reply.json()["accepted"], 3);
    let published = publisher.published();
    let keys: Vec<&str> = published.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["u-2", "u-1", "u-2"]);
    for (sent, out) in events.iter().zip(&published) {
        assert_eq!(out.payload, sent.as_bytes());
    }
}

#[tokio::test]
async fn one_bad_event_refuses_the_whole_batch() {
    let (fakes, publisher) = with_publisher();
    let app = fakes.app();
    let body = format!(
        "[{}, {}, {}, {}]",
        event("u-1", "e1"),
        r#"{"event_type":"click","timestamp":1}"#,
        event("u-1", "e3"),
        r#"{"user_id":"u-1","event_type":"click","timestamp":"yesterday"}"#,
    );
    let reply = send(&app, post_json(EVENTS, body)).await;
    let problem = reply.problem(StatusCode::BAD_REQUEST, types::INVALID_EVENTS, EVENTS);
    let errors = problem["errors"].as_array().expect("errors listed");
    let indexes: Vec<u64> = errors.iter().filter_map(|e| e["index"].as_u64()).collect();
    assert_eq!(indexes, [1, 3], "{problem}");
    assert!(
        errors[0]["detail"]
            .as_str()
            .unwrap_or("")
            .contains("user_id"),
        "{problem}"
    );
    assert!(
        errors[1]["detail"]
            .as_str()
            .unwrap_or("")
            .contains("timestamp"),
        "{problem}"
    );
    assert!(
        problem["detail"].as_str().unwrap_or("").contains("2 of 4"),
        "{problem}"
    );
    assert!(publisher.published().is_empty(), "nothing may be published");
}

#[tokio::test]
async fn at_most_twenty_failures_are_listed() {
    let (fakes, publisher) = with_publisher();
    let app = fakes.app();
    let bad = vec![r#"{"user_id":"u"}"#; 25];
    let reply = send(&app, post_json(EVENTS, format!("[{}]", bad.join(",")))).await;
    let problem = reply.problem(StatusCode::BAD_REQUEST, types::INVALID_EVENTS, EVENTS);
    let errors = problem["errors"].as_array().expect("errors listed");
    assert_eq!(errors.len(), 20);
    assert_eq!(errors[19]["index"], 19);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or("")
            .contains("25 of 25"),
        "{problem}"
    );
    assert!(publisher.published().is_empty());
}

#[tokio::test]
async fn a_long_bad_value_is_not_echoed_whole() {
    let app = Fakes::default().app();
    let long = "y".repeat(10_000);
    let body = format!(r#"{{"user_id":"u","event_type":"c","timestamp":"{long}"}}"#);
    let reply = send(&app, post_json(EVENTS, body)).await;
    let problem = reply.problem(StatusCode::BAD_REQUEST, types::INVALID_EVENTS, EVENTS);
    let detail = problem["errors"][0]["detail"].as_str().unwrap_or("");
    assert!(detail.starts_with("field `timestamp`"), "{detail}");
    assert!(detail.len() < 400, "{} bytes", detail.len());
}

#[tokio::test]
async fn empty_batches_and_bad_json_are_refused() {
    let (fakes, publisher) = with_publisher();
    let app = fakes.app();
    let reply = send(&app, post_json(EVENTS, " [ ] ")).await;
    reply.problem(StatusCode::BAD_REQUEST, types::INVALID_EVENTS, EVENTS);

    for body in ["", "{\"user_id\": ", "[{}] trailing", "[1,]"] {
        let reply = send(&app, post_json(EVENTS, body)).await;
        let problem = reply.problem(StatusCode::BAD_REQUEST, types::INVALID_JSON, EVENTS);
        assert!(
            problem["detail"]
                .as_str()
                .unwrap_or("")
                .contains("not valid JSON"),
            "{body:?}: {problem}"
        );
    }
    // Valid JSON that is no event object: refused as a bad event.
    let reply = send(&app, post_json(EVENTS, "42")).await;
    let problem = reply.problem(StatusCode::BAD_REQUEST, types::INVALID_EVENTS, EVENTS);
    assert_eq!(problem["errors"][0]["index"], 0);
    assert!(publisher.published().is_empty());
}

#[tokio::test]
async fn more_events_than_allowed_is_413() {
    let (mut fakes, publisher) = with_publisher();
    fakes.limits = ApiLimits {
        max_events_per_request: 3,
        ..ApiLimits::default()
    };
    let app = fakes.app();
    let four: Vec<String> = (0..4).map(|i| event("u", &format!("e{i}"))).collect();
    let reply = send(&app, post_json(EVENTS, format!("[{}]", four.join(",")))).await;
    let problem = reply.problem(
        StatusCode::PAYLOAD_TOO_LARGE,
        types::TOO_MANY_EVENTS,
        EVENTS,
    );
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or("")
            .contains("at most 3"),
        "{problem}"
    );
    assert!(publisher.published().is_empty());

    let reply = send(
        &app,
        post_json(EVENTS, format!("[{}]", four[..3].join(","))),
    )
    .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    assert_eq!(publisher.published().len(), 3);
}

#[tokio::test]
async fn only_json_bodies_are_taken() {
    let (fakes, publisher) = with_publisher();
    let app = fakes.app();
    let with_type = |content_type: Option<&str>| {
        let mut request = Request::post(EVENTS);
        if let Some(content_type) = content_type {
            request = request.header(CONTENT_TYPE, content_type);
        }
        request.body(Body::from(event("u", "e"))).expect("request")
    };
    for refused in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let reply = send(&app, with_type(refused)).await;
        reply.problem(StatusCode::UNSUPPORTED_MEDIA_TYPE, "about:blank", EVENTS);
    }
    assert!(publisher.published().is_empty());
    for taken in [
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/cloudevents+json",
    ] {
        let reply = send(&app, with_type(Some(taken))).await;
        assert_eq!(
            reply.status,
            StatusCode::ACCEPTED,
            "{taken}: {}",
            reply.text
        );
    }
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_whether_announced_or_streamed() {
    let (mut fakes, publisher) = with_publisher();
    fakes.limits = ApiLimits {
        max_body_bytes: 150,
        ..ApiLimits::default()
    };
    let app = fakes.app();
    let events: Vec<String> = (0..5).map(|i| event("u", &format!("e{i}"))).collect();
    let body = format!("[{}]", events.join(","));
    assert!(body.len() > 150);

    let reply = send(&app, post_json(EVENTS, body.clone())).await;
    let problem = reply.problem(StatusCode::PAYLOAD_TOO_LARGE, "about:blank", EVENTS);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or("")
            .contains("150 bytes"),
        "{problem}"
    );

    // No Content-Length: the limit bites while the body streams in.
    let chunks: Vec<Result<Bytes, std::io::Error>> = body
        .as_bytes()
        .chunks(40)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let request = Request::post(EVENTS)
        .header(CONTENT_TYPE, "application/json")
        .body(Body::from_stream(futures::stream::iter(chunks)))
        .expect("request");
    let reply = send(&app, request).await;
    reply.problem(StatusCode::PAYLOAD_TOO_LARGE, "about:blank", EVENTS);
    assert!(publisher.published().is_empty());

    let reply = send(&app, post_json(EVENTS, event("u", "e"))).await;
    assert!(event("u", "e").len() <= 150);
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
}

#[tokio::test]
async fn a_publisher_failure_is_503_without_its_details() {
    let fakes = Fakes {
        publisher: Arc::new(FakePublisher::failing()),
        ..Fakes::default()
    };
    let app = fakes.app();
    let reply = send(&app, post_json(EVENTS, event("u", "e"))).await;
    let problem = reply.problem(
        StatusCode::SERVICE_UNAVAILABLE,
        types::BACKEND_UNAVAILABLE,
        EVENTS,
    );
    assert_eq!(reply.headers["retry-after"], "1");
    assert!(!problem.to_string().contains("10.1.2.3"), "{problem}");
}
