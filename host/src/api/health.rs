//! `GET /healthz` (the process answers) and `GET /readyz` (its backends do).

use std::future::Future;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::problem::one_line;
use crate::store::StoreResult;

/// How long `/readyz` waits for each backend.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Health {
    /// Always `ok`.
    #[schema(example = "ok")]
    pub status: &'static str,
}

#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "health",
    responses((status = 200, description = "The process is alive", body = Health))
)]
pub(super) async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// What `/readyz` found.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Readiness {
    pub status: ReadyStatus,
    pub checks: Checks,
}

/// `ready`: every backend answered. `degraded`: the store answered, the cache
/// or the event publisher did not (profiles are still served). `unavailable`:
/// the store did not answer.
#[derive(Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum ReadyStatus {
    Ready,
    Degraded,
    Unavailable,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Checks {
    pub store: Check,
    /// Absent when no cache is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub cache: Option<Check>,
    pub publisher: Check,
}

/// One backend's answer.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Check {
    pub ok: bool,
    /// Why the check failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub error: Option<String>,
}

#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "health",
    responses(
        (status = 200, description = "Ready, or degraded (the cache or the event publisher is down)", body = Readiness),
        (status = 503, description = "The profile store is down", body = Readiness),
    )
)]
pub(super) async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let cache = async {
        match &state.cache {
            Some(cache) => Some(check(cache.ping()).await),
            None => None,
        }
    };
    let (store, cache, publisher) = tokio::join!(
        check(state.store.ping()),
        cache,
        check(state.publisher.ping())
    );
    let (code, status) = if !store.ok {
        (StatusCode::SERVICE_UNAVAILABLE, ReadyStatus::Unavailable)
    } else if !publisher.ok || cache.as_ref().is_some_and(|c| !c.ok) {
        (StatusCode::OK, ReadyStatus::Degraded)
    } else {
        (StatusCode::OK, ReadyStatus::Ready)
    };
    let checks = Checks {
        store,
        cache,
        publisher,
    };
    (code, Json(Readiness { status, checks }))
}

async fn check(ping: impl Future<Output = StoreResult<()>>) -> Check {
    let error = match tokio::time::timeout(CHECK_TIMEOUT, ping).await {
        Ok(Ok(())) => None,
        Ok(Err(error)) => Some(one_line(&error.to_string())),
        Err(_) => Some(format!("no answer within {} ms", CHECK_TIMEOUT.as_millis())),
    };
    Check {
        ok: error.is_none(),
        error,
    }
}

/// prometheus-client writes OpenMetrics text (counter families typed without
/// their `_total` suffix, a closing `# EOF`); Prometheus reads it as such.
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    responses((status = 200, description = "Every metric, in the Prometheus text format", content_type = "application/openmetrics-text"))
)]
pub(super) async fn metrics(State(state): State<AppState>) -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        state.metrics.render(),
    )
}
