//! The REST API (contract §5), on axum.
//!
//! - [`router`] builds the whole application from an [`AppState`], so tests
//!   drive it with `oneshot` and no socket; [`serve`] runs it on a listener
//!   until a shutdown token fires.
//! - `profiles`, `events`, `plugins`, `privacy`, `segments`,
//!   `destinations`, `updates` (the `profile-updates` stream) and `health`:
//!   one module per resource.
//! - [`Problem`]: every error answer, as RFC 9457 problem details, including
//!   the ones axum and tower-http produce on their own (unknown route or
//!   method, body limit, timeout).
//! - `openapi`: the OpenAPI 3.1 document of all of the above, served at
//!   `/api/v1/openapi.json`.
//! - `http_metrics`: every request counted and timed by route template.

mod admin;
mod destinations;
mod events;
mod health;
mod http_metrics;
mod openapi;
mod plugins;
mod privacy;
mod problem;
mod profiles;
mod segments;
mod updates;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use tokio_util::sync::CancellationToken;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::config::{HttpConfig, PluginsConfig};
use crate::pipeline::publish::EventPublisher;
use crate::plugin::chain::Chain;
use crate::plugin_ops::PluginManager;
use crate::store::{ProfileCache, ProfileLookup, ProfileStore};
use crate::telemetry::Metrics;

pub use admin::AdminToken;
pub use openapi::ApiDoc;
pub use problem::{EventFailure, PROBLEM_CONTENT_TYPE, Problem};
pub use updates::UpdateStream;

/// What one request may cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiLimits {
    /// Largest request body, in bytes; larger ones are answered 413.
    pub max_body_bytes: usize,
    /// Time for one whole request; past it the answer is a 503 problem.
    pub timeout: Duration,
    /// Most events one `POST /api/v1/events` may carry; more are answered 413.
    pub max_events_per_request: usize,
    /// Largest plugin upload (`PUT /api/v1/plugins/{name}`), in bytes.
    pub max_upload_bytes: usize,
    /// Time for one plugin change (an upload is compiled and tried).
    pub admin_timeout: Duration,
}

impl ApiLimits {
    pub const DEFAULT_MAX_EVENTS_PER_REQUEST: usize = 10_000;
}

impl ApiLimits {
    /// The limits the `http` and `plugins` sections set: an upload may
    /// carry the largest component accepted plus 1 MiB (its manifest and
    /// the multipart framing), and a plugin change may take its validation
    /// time plus 30 s.
    pub fn new(http: &HttpConfig, plugins: &PluginsConfig) -> Self {
        Self {
            max_body_bytes: http.max_body_bytes,
            timeout: Duration::from_millis(http.timeout_ms),
            max_events_per_request: Self::DEFAULT_MAX_EVENTS_PER_REQUEST,
            max_upload_bytes: plugins.max_component_bytes + (1 << 20),
            admin_timeout: Duration::from_millis(plugins.validate_timeout_ms)
                + Duration::from_secs(30),
        }
    }
}

impl Default for ApiLimits {
    /// The configuration's defaults.
    fn default() -> Self {
        Self::new(&HttpConfig::default(), &PluginsConfig::default())
    }
}

/// Everything the handlers work with.
#[derive(Clone)]
pub struct AppState {
    /// Reads profiles: the hot copy when there is one, else the store.
    pub profiles: Arc<dyn ProfileLookup>,
    /// The system of record, pinged by `/readyz`.
    pub store: Arc<dyn ProfileStore>,
    /// The hot copy, pinged by `/readyz` when there is one.
    pub cache: Option<Arc<dyn ProfileCache>>,
    /// Where `POST /api/v1/events` puts events.
    pub publisher: Arc<dyn EventPublisher>,
    /// The loaded plugins, listed by `GET /api/v1/plugins`.
    pub chain: Arc<Chain>,
    /// Served at `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Plugin operations, where this process runs plugins.
    pub manager: Option<Arc<PluginManager>>,
    /// The admin routes exist only when this is set.
    pub admin_token: Option<AdminToken>,
    pub limits: ApiLimits,
    /// The identifier types profiles are looked up by.
    pub identity: Arc<crate::model::identity::Rules>,
    /// Carries out privacy requests (admin routes).
    pub privacy: crate::privacy::Privacy,
    /// The defined segments.
    pub segments: crate::segment::Segments,
    /// The webhooks (services mode with the `profile-updates` stream).
    pub destinations: Option<crate::activation::destination::Destinations>,
    /// Where the `profile-updates` stream is read.
    pub updates: UpdateStream,
    /// Cancelled when the server stops: the update streams it serves end
    /// then, so that its graceful shutdown does not wait for them.
    pub shutdown: CancellationToken,
}

/// The whole REST API.
pub fn router(state: AppState) -> Router {
    let limits = state.limits.clone();
    let metrics = state.metrics.clone();
    let mut router = Router::new()
        .route("/api/v1/profiles/{user_id}", get(profiles::get_profile))
        // `{user_id}` never matches an empty segment; answer that as the bad
        // id it is rather than as an unknown route.
        .route("/api/v1/profiles/", get(profiles::empty_user_id))
        .route(
            "/api/v1/profiles/by/{type}/{value}",
            get(profiles::get_profile_by),
        )
        .route("/api/v1/events", post(events::ingest))
        .route("/api/v1/plugins", get(plugins::list))
        .route("/api/v1/plugins/{name}", get(plugins::get_one))
        .route("/api/v1/segments", get(segments::list))
        .route("/api/v1/segments/{name}", get(segments::get_one))
        .route("/api/v1/segments/{name}/members", get(segments::members))
        .route("/api/v1/profile-updates", get(updates::stream))
        .route("/api/v1/openapi.json", get(openapi::document))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        // One limit for every route so far, enforced before the body is
        // read when `Content-Length` tells, and while streaming otherwise.
        .layer(RequestBodyLimitLayer::new(limits.max_body_bytes))
        // Answers 503 with an empty body; `problem::finish` turns it into a
        // problem saying which limit was hit.
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            limits.timeout,
        ));
    if state.admin_token.is_some() {
        // Added after the layers above: plugin changes have their own
        // limits, and the token is checked before the body is read.
        let admin = tower::ServiceBuilder::new()
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                admin::require_token,
            ))
            .layer(RequestBodyLimitLayer::new(limits.max_upload_bytes))
            .layer(TimeoutLayer::with_status_code(
                StatusCode::SERVICE_UNAVAILABLE,
                limits.admin_timeout,
            ));
        router = router
            .route(
                "/api/v1/plugins/{name}",
                put(admin::put_plugin)
                    .delete(admin::delete_plugin)
                    .layer(admin.clone()),
            )
            .route(
                "/api/v1/plugins/{name}/rollback",
                post(admin::rollback).layer(admin.clone()),
            )
            .route(
                "/api/v1/plugins/{name}/resume",
                post(admin::resume).layer(admin.clone()),
            )
            .route(
                "/api/v1/privacy/requests",
                post(privacy::create).layer(admin.clone()),
            )
            .route(
                "/api/v1/privacy/requests/{id}",
                get(privacy::get_one).layer(admin.clone()),
            )
            .route(
                "/api/v1/segments/{name}",
                put(segments::put)
                    .delete(segments::delete)
                    .layer(admin.clone()),
            )
            .route(
                "/api/v1/destinations",
                get(destinations::list).layer(admin.clone()),
            )
            .route(
                "/api/v1/destinations/{name}",
                put(destinations::put)
                    .get(destinations::get_one)
                    .delete(destinations::delete)
                    .layer(admin.clone()),
            )
            .route(
                "/api/v1/destinations/{name}/dead-letters",
                get(destinations::dead_letters).layer(admin.clone()),
            )
            .route(
                "/api/v1/destinations/{name}/dead-letters/{id}/resend",
                post(destinations::resend).layer(admin),
            );
    }
    router
        .fallback(problem::route_not_found)
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(
            limits,
            problem::finish,
        ))
        .layer(TraceLayer::new_for_http())
        // Outermost: sees the final status (problems included) and the
        // whole time. Route layers run after routing, so the matched route
        // template is known.
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            http_metrics::record,
        ))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` is cancelled, then lets the
/// requests in flight finish (each is bounded by [`ApiLimits::timeout`];
/// the update streams end with [`AppState::shutdown`], which should be
/// `shutdown` or cancelled with it).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let address = listener
        .local_addr()
        .context("the REST API listener has no local address")?;
    tracing::info!(%address, "REST API listening");
    let app = router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .with_context(|| format!("the REST API server on {address} failed"))?;
    tracing::info!(%address, "REST API stopped");
    Ok(())
}
