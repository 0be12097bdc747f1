//! The OpenAPI 3.1 document of the API, served at `/api/v1/openapi.json`.

use axum::Json;
use utoipa::OpenApi;

use super::{events, health, plugins, problem, profiles};

/// The OpenAPI document: every route, the problem schema, and the shapes of
/// profiles, events and plugins.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "PulseHub",
        description = "Real-time customer profiles enriched by sandboxed WebAssembly plugins. \
                       Every error is an RFC 9457 problem (`application/problem+json`). \
                       Besides the answers listed per operation, any request may be answered \
                       404 (unknown path), 405 (unknown method, with `Allow`), 413 (body over \
                       the size limit) or 503 (time limit exceeded, with `Retry-After`)."
    ),
    paths(
        profiles::get_profile,
        events::ingest,
        plugins::list,
        plugins::get_one,
        health::healthz,
        health::readyz,
        health::metrics,
        document,
    ),
    components(schemas(problem::Problem, problem::EventFailure, events::WireEvent)),
    tags(
        (name = "profiles", description = "Enriched user profiles"),
        (name = "events", description = "Event ingestion (contract §3)"),
        (name = "plugins", description = "The loaded enrichment plugins"),
        (name = "health", description = "Liveness and readiness"),
        (name = "meta", description = "This document"),
    )
)]
pub struct ApiDoc;

#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    operation_id = "openapi_document",
    tag = "meta",
    responses((status = 200, description = "This OpenAPI document", content_type = "application/json"))
)]
pub(super) async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
