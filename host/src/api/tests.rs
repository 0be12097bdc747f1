//! The router driven through `oneshot`, with fakes of the store traits.

mod fakes;
mod health;
mod ingest;
mod metrics;
mod openapi;
mod privacy;
mod routes;
mod segments;
mod updates;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, Request, StatusCode};
use tower::ServiceExt;

use super::{AdminToken, ApiLimits, AppState, PROBLEM_CONTENT_TYPE, router};
use crate::plugin::chain::Chain;
use crate::plugin::{HostLimits, Runtime};
use crate::telemetry::Metrics;
use fakes::{FakeCache, FakeLookup, FakePublisher, FakeStore, Ping};

/// The backends of one test, and the limits it runs under.
struct Fakes {
    lookup: FakeLookup,
    store: Ping,
    cache: Option<Ping>,
    publisher: Arc<FakePublisher>,
    chain: Option<Arc<Chain>>,
    metrics: Arc<Metrics>,
    admin_token: Option<AdminToken>,
    limits: ApiLimits,
    privacy: Arc<fakes::FakePrivacy>,
    segments: crate::segment::Segments,
    updates: super::UpdateStream,
}

impl Default for Fakes {
    fn default() -> Self {
        Self {
            lookup: FakeLookup::default(),
            store: Ping::Up,
            cache: Some(Ping::Up),
            publisher: Arc::new(FakePublisher::default()),
            chain: None,
            metrics: Arc::new(Metrics::new()),
            admin_token: None,
            limits: ApiLimits::default(),
            privacy: Arc::default(),
            segments: crate::segment::Segments {
                store: Arc::new(fakes::FakeSegments::default()),
                live: Default::default(),
            },
            updates: super::UpdateStream::Off,
        }
    }
}

impl Fakes {
    fn app(self) -> Router {
        router(self.state())
    }

    fn state(self) -> AppState {
        let metrics = self.metrics;
        let chain = self.chain.unwrap_or_else(|| {
            let runtime = Runtime::new(HostLimits::default()).expect("plugin runtime starts");
            Chain::with_metrics(runtime, metrics.clone())
        });
        AppState {
            profiles: Arc::new(self.lookup),
            store: Arc::new(FakeStore(self.store)),
            cache: self
                .cache
                .map(|ping| Arc::new(FakeCache(ping)) as Arc<dyn crate::store::ProfileCache>),
            publisher: self.publisher,
            metrics,
            manager: None,
            admin_token: self.admin_token,
            chain,
            limits: self.limits,
            identity: Default::default(),
            privacy: crate::privacy::Privacy {
                store: self.privacy,
                cache: None,
            },
            segments: self.segments,
            destinations: None,
            updates: self.updates,
            shutdown: Default::default(),
        }
    }
}

/// A response, its body read.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("the body is not JSON ({e}): {}", self.text))
    }

    fn content_type(&self) -> &str {
        self.headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// Asserts an RFC 9457 problem with this status, type and instance, and
    /// returns its body.
    fn problem(&self, status: StatusCode, type_uri: &str, instance: &str) -> serde_json::Value {
        assert_eq!(self.status, status, "{}", self.text);
        assert_eq!(self.content_type(), PROBLEM_CONTENT_TYPE, "{}", self.text);
        let body = self.json();
        assert_eq!(body["status"], status.as_u16(), "{body}");
        assert_eq!(body["type"], type_uri, "{body}");
        assert_eq!(body["instance"], instance, "{body}");
        for member in ["title", "detail"] {
            let text = body[member].as_str().unwrap_or("");
            assert!(!text.is_empty(), "no {member}: {body}");
        }
        body
    }
}

async fn send(app: &Router, request: Request<Body>) -> Reply {
    let response = app
        .clone()
        .oneshot(request)
        .await
        .expect("the router never fails");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("the body reads");
    Reply {
        status,
        headers,
        text: String::from_utf8(bytes.to_vec()).expect("the body is UTF-8"),
    }
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).expect("request")
}

fn post_json(uri: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(uri)
        .header(CONTENT_TYPE, "application/json")
        .body(body.into())
        .expect("request")
}
