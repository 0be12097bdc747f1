//! The REST API's series: requests by route template, method and status,
//! and their time.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::{Metrics, latency_histogram};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The route template (`/api/v1/profiles/{user_id}`), or `unmatched`.
    pub route: String,
    pub method: &'static str,
    pub status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpRouteLabels {
    pub route: String,
    pub method: &'static str,
}

/// The REST API's series.
#[derive(Debug)]
pub struct HttpMetrics {
    pub requests: Family<HttpLabels, Counter>,
    pub request_duration: Family<HttpRouteLabels, Histogram, fn() -> Histogram>,
}

impl HttpMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(latency_histogram),
        };
        registry.register(
            "http_requests",
            "HTTP requests answered, by route template, method and status",
            metrics.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from a request's arrival to its response, by route template and method",
            metrics.request_duration.clone(),
        );
        metrics
    }
}

/// The route label of requests no route matched.
pub const UNMATCHED_ROUTE: &str = "unmatched";

impl Metrics {
    /// One answered request. `route` is the matched route template, or
    /// `None` for a request no route matched: never the raw path, whose
    /// values are unbounded.
    pub fn http_request(
        &self,
        route: Option<&str>,
        method: &Method,
        status: StatusCode,
        elapsed: Duration,
    ) {
        let route = route.unwrap_or(UNMATCHED_ROUTE).to_owned();
        let method = method_label(method);
        self.http
            .requests
            .get_or_create(&HttpLabels {
                route: route.clone(),
                method,
                status: status.as_u16(),
            })
            .inc();
        self.http
            .request_duration
            .get_or_create(&HttpRouteLabels { route, method })
            .observe(elapsed.as_secs_f64());
    }
}

/// The standard methods by name; anything else (clients may send any token)
/// as `other`, to keep the label's values bounded.
fn method_label(method: &Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        "CONNECT" => "CONNECT",
        "TRACE" => "TRACE",
        _ => "other",
    }
}
