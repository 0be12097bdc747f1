//! `/metrics` after requests: each counted under its route template, method
//! and final status, never under its raw path.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};

use super::fakes::FakeLookup;
use super::{Fakes, get, send};
use crate::api::ApiLimits;

/// The value of the series `name{labels}` in the Prometheus text.
fn value(text: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
}

fn requests(text: &str, route: &str, method: &str, status: u16) -> Option<f64> {
    let labels = format!(r#"route="{route}",method="{method}",status="{status}""#);
    value(text, "pulsehub_http_requests_total", &labels)
}

#[tokio::test]
async fn requests_are_counted_by_route_template_method_and_status() {
    let app = Fakes::default().app();
    for uri in ["/api/v1/profiles/u-1", "/api/v1/profiles/u-2", "/healthz"] {
        send(&app, get(uri)).await;
    }
    send(&app, get("/no/such/page-u-3")).await;
    let post = Request::post("/healthz")
        .body(Body::empty())
        .expect("request");
    assert_eq!(
        send(&app, post).await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );

    let reply = send(&app, get("/metrics")).await;
    assert_eq!(reply.status, StatusCode::OK);
    let text = &reply.text;
    let profiles = "/api/v1/profiles/{user_id}";
    assert_eq!(requests(text, profiles, "GET", 404), Some(2.0), "{text}");
    assert_eq!(requests(text, "/healthz", "GET", 200), Some(1.0), "{text}");
    assert_eq!(requests(text, "/healthz", "POST", 405), Some(1.0), "{text}");
    assert_eq!(requests(text, "unmatched", "GET", 404), Some(1.0), "{text}");
    let durations = "pulsehub_http_request_duration_seconds_count";
    let labels = format!(r#"route="{profiles}",method="GET""#);
    assert_eq!(value(text, durations, &labels), Some(2.0), "{text}");
    for raw in ["u-1", "u-2", "u-3", "/no/such"] {
        assert!(!text.contains(raw), "the raw path {raw} leaked:\n{text}");
    }
}

#[tokio::test]
async fn a_request_that_times_out_is_counted_with_its_final_status() {
    let slow = Fakes {
        lookup: FakeLookup {
            delay: Some(Duration::from_secs(5)),
            ..FakeLookup::default()
        },
        limits: ApiLimits {
            timeout: Duration::from_millis(20),
            ..ApiLimits::default()
        },
        ..Fakes::default()
    };
    let app = slow.app();
    let reply = send(&app, get("/api/v1/profiles/u-1")).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);

    let text = send(&app, get("/metrics")).await.text;
    let profiles = "/api/v1/profiles/{user_id}";
    assert_eq!(requests(&text, profiles, "GET", 503), Some(1.0), "{text}");
}
