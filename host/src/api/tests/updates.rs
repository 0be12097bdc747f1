//! `GET /api/v1/profile-updates` over a log in memory.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use futures::StreamExt;
use tokio::sync::watch;
use tower::ServiceExt;

use super::{Fakes, get, send};
use crate::activation::feed::{StoredUpdate, UpdateFeed, UpdatePage};
use crate::api::{UpdateStream, router};
use crate::store::StoreResult;

/// A log as the embedded store keeps it: numbered from 1, the oldest
/// trimmed away on demand.
struct FakeFeed {
    log: Mutex<BTreeMap<u64, StoredUpdate>>,
    newest: watch::Sender<u64>,
}

impl FakeFeed {
    fn new() -> Arc<Self> {
        Arc::new(FakeFeed {
            log: Mutex::default(),
            newest: watch::Sender::new(0),
        })
    }

    /// Appends a message of `kind` about `profile_id`.
    fn push(&self, kind: &str, profile_id: &str) {
        let mut log = self.log.lock().expect("not poisoned");
        let sequence = *self.newest.borrow() + 1;
        let message = format!(r#"{{"type":"{kind}","profile_id":"{profile_id}","revision":1}}"#);
        log.insert(
            sequence,
            StoredUpdate {
                sequence,
                profile_id: profile_id.to_owned(),
                message,
            },
        );
        self.newest.send_replace(sequence);
    }

    /// Drops the messages before `oldest`.
    fn trim(&self, oldest: u64) {
        self.log
            .lock()
            .expect("not poisoned")
            .retain(|&sequence, _| sequence >= oldest);
    }
}

#[async_trait]
impl UpdateFeed for FakeFeed {
    async fn read(&self, after: u64, limit: usize) -> StoreResult<UpdatePage> {
        let log = self.log.lock().expect("not poisoned");
        let newest = *self.newest.borrow();
        Ok(UpdatePage {
            oldest: log.keys().next().copied().unwrap_or(newest + 1),
            newest,
            messages: log
                .range(after + 1..)
                .take(limit)
                .map(|(_, m)| m.clone())
                .collect(),
        })
    }

    fn newest(&self) -> watch::Receiver<u64> {
        self.newest.subscribe()
    }
}

/// A feed with five messages: u-1 updated and entered a segment, u-2
/// updated, u-1 updated and left it.
fn five() -> Arc<FakeFeed> {
    let feed = FakeFeed::new();
    for (kind, profile) in [
        ("profile.updated", "u-1"),
        ("segment.entered", "u-1"),
        ("profile.updated", "u-2"),
        ("profile.updated", "u-1"),
        ("segment.exited", "u-1"),
    ] {
        feed.push(kind, profile);
    }
    feed
}

fn app(feed: &Arc<FakeFeed>) -> axum::Router {
    Fakes {
        updates: UpdateStream::Feed(feed.clone()),
        ..Fakes::default()
    }
    .app()
}

/// One event of a body: its fields, in order, as (name, value).
type Fields = Vec<(String, String)>;

/// The events of an SSE body, comments left out.
fn events(body: &str) -> Vec<Fields> {
    body.split("\n\n")
        .map(|block| {
            block
                .lines()
                .filter(|line| !line.starts_with(':'))
                .filter_map(|line| line.split_once(": ").or_else(|| line.split_once(':')))
                .map(|(name, value)| (name.to_owned(), value.to_owned()))
                .collect::<Fields>()
        })
        .filter(|fields| !fields.is_empty())
        .collect()
}

/// The ids of `events`, `gap` for a gap event.
fn ids(events: &[Fields]) -> Vec<String> {
    events
        .iter()
        .map(|fields| {
            let field = |name: &str| fields.iter().find(|(n, _)| n == name).map(|(_, v)| v);
            match field("id") {
                Some(id) => id.clone(),
                None => field("event").cloned().unwrap_or_default(),
            }
        })
        .collect()
}

fn resume(uri: &str, last_event_id: &str) -> Request<Body> {
    Request::get(uri)
        .header("Last-Event-ID", last_event_id)
        .body(Body::empty())
        .expect("request")
}

#[tokio::test]
async fn last_event_id_resumes_with_exactly_the_messages_after_it() {
    let feed = five();
    let app = app(&feed);
    // `Last-Event-ID` wins over `after`, as a browser reconnecting sends it
    // to the URL it first opened.
    let reply = send(
        &app,
        resume("/api/v1/profile-updates?after=0&follow=false", "2"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.content_type(), "text/event-stream");
    let read = events(&reply.text);
    assert_eq!(ids(&read), ["3", "4", "5"], "{}", reply.text);
    let message = feed.log.lock().expect("not poisoned")[&3].message.clone();
    assert_eq!(
        read[0],
        [
            ("id".to_owned(), "3".to_owned()),
            ("event".to_owned(), "profile.updated".to_owned()),
            ("data".to_owned(), message),
        ]
    );
    assert_eq!(read[2][1].1, "segment.exited");

    let reply = send(&app, get("/api/v1/profile-updates?after=4&follow=false")).await;
    assert_eq!(ids(&events(&reply.text)), ["5"]);
    let reply = send(&app, get("/api/v1/profile-updates?after=5&follow=false")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(events(&reply.text).is_empty(), "{}", reply.text);
}

#[tokio::test]
async fn a_position_no_longer_kept_is_announced_as_a_gap() {
    let feed = five();
    feed.trim(3);
    let app = app(&feed);
    // 0 asks for the oldest kept: no gap.
    let reply = send(&app, get("/api/v1/profile-updates?after=0&follow=false")).await;
    assert_eq!(ids(&events(&reply.text)), ["3", "4", "5"]);
    // After 1, message 2 is missing.
    let reply = send(&app, get("/api/v1/profile-updates?after=1&follow=false")).await;
    let read = events(&reply.text);
    assert_eq!(ids(&read), ["gap", "3", "4", "5"], "{}", reply.text);
    assert_eq!(
        read[0][1],
        ("data".to_owned(), r#"{"oldest":3}"#.to_owned())
    );
    // After 2, nothing is missing.
    let reply = send(&app, get("/api/v1/profile-updates?after=2&follow=false")).await;
    assert_eq!(ids(&events(&reply.text)), ["3", "4", "5"]);
    // A position past the newest message (the data dir was replaced): the
    // stream starts over from the oldest kept.
    let reply = send(&app, resume("/api/v1/profile-updates?follow=false", "40")).await;
    assert_eq!(ids(&events(&reply.text)), ["gap", "3", "4", "5"]);
}

#[tokio::test]
async fn without_a_position_the_stream_sends_new_messages_until_the_server_stops() {
    let feed = five();
    let mut state = Fakes {
        updates: UpdateStream::Feed(feed.clone()),
        ..Fakes::default()
    }
    .state();
    let shutdown = tokio_util::sync::CancellationToken::new();
    state.shutdown = shutdown.clone();
    let response = router(state)
        .oneshot(super::get("/api/v1/profile-updates"))
        .await
        .expect("the router never fails");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body().into_data_stream();

    feed.push("profile.updated", "u-3");
    let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
        .await
        .expect("the new message arrives")
        .expect("the stream goes on")
        .expect("the body reads");
    let text = String::from_utf8(chunk.to_vec()).expect("UTF-8");
    assert_eq!(ids(&events(&text)), ["6"], "only what came after: {text}");

    shutdown.cancel();
    let end = tokio::time::timeout(Duration::from_secs(5), body.next())
        .await
        .expect("the stream ends when the server stops");
    assert!(end.is_none(), "{end:?}");
}

#[tokio::test]
async fn a_bad_position_or_option_is_a_problem() {
    let app = app(&five());
    let invalid = "tag:pulsehub,2026:problem:invalid-stream-query";
    for uri in [
        "/api/v1/profile-updates?after=-1",
        "/api/v1/profile-updates?after=x",
        "/api/v1/profile-updates?follow=maybe",
        "/api/v1/profile-updates?from=3",
        "/api/v1/profile-updates?after=9223372036854775808",
    ] {
        let reply = send(&app, get(uri)).await;
        reply.problem(StatusCode::BAD_REQUEST, invalid, "/api/v1/profile-updates");
    }
    for id in ["e-7", "+3", "1234567890123456789", ""] {
        let reply = send(&app, resume("/api/v1/profile-updates", id)).await;
        reply.problem(StatusCode::BAD_REQUEST, invalid, "/api/v1/profile-updates");
    }
}

#[tokio::test]
async fn with_kafka_the_route_points_at_the_topic() {
    let unavailable = "tag:pulsehub,2026:problem:stream-unavailable";
    let app = Fakes {
        updates: UpdateStream::Topic("profile-updates".to_owned()),
        ..Fakes::default()
    }
    .app();
    let reply = send(&app, get("/api/v1/profile-updates")).await;
    let body = reply.problem(
        StatusCode::NOT_IMPLEMENTED,
        unavailable,
        "/api/v1/profile-updates",
    );
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or("")
            .contains("Kafka topic profile-updates"),
        "{body}"
    );
    let off = Fakes::default().app();
    let reply = send(&off, get("/api/v1/profile-updates")).await;
    let body = reply.problem(
        StatusCode::NOT_IMPLEMENTED,
        unavailable,
        "/api/v1/profile-updates",
    );
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or("")
            .contains("activation.profile_updates"),
        "{body}"
    );
}
