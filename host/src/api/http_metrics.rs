//! The middleware that counts and times every request in [`Metrics`]
//! (`pulsehub_http_requests_total`, `pulsehub_http_request_duration_seconds`).
//!
//! Requests are labelled by the route template they matched
//! (`/api/v1/profiles/{user_id}`), never by their raw path, so that the number
//! of series stays bounded; requests no route matched share `unmatched`.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::telemetry::Metrics;

/// Records the request's route, method, final status and duration.
pub(super) async fn record(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = request.method().clone();
    let response = next.run(request).await;
    metrics.http_request(
        route.as_ref().map(MatchedPath::as_str),
        &method,
        response.status(),
        started.elapsed(),
    );
    response
}
