//! The OpenAPI 3.1 document of the API, served at `/api/v1/openapi.json`.

use axum::Json;
use axum::extract::State;
use utoipa::OpenApi;
use utoipa::openapi::path::{Operation, PathItem};

use super::{
    AppState, admin, destinations, events, health, plugins, privacy, problem, profiles, segments,
    updates,
};

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
        profiles::get_profile_by,
        events::ingest,
        plugins::list,
        plugins::get_one,
        admin::put_plugin,
        admin::rollback,
        admin::resume,
        admin::delete_plugin,
        privacy::create,
        privacy::get_one,
        segments::list,
        segments::get_one,
        segments::members,
        segments::put,
        segments::delete,
        destinations::list,
        destinations::get_one,
        destinations::put,
        destinations::delete,
        destinations::dead_letters,
        destinations::resend,
        updates::stream,
        health::healthz,
        health::readyz,
        health::metrics,
        document,
    ),
    modifiers(&AdminSecurity),
    components(schemas(problem::Problem, problem::EventFailure, events::WireEvent)),
    tags(
        (name = "profiles", description = "Enriched user profiles"),
        (name = "events", description = "Event ingestion (contract §3)"),
        (name = "plugins", description = "The enrichment plugins; changes need the admin bearer token"),
        (name = "segments", description = "Live audiences: profiles matching a condition over their attributes; changes need the admin bearer token"),
        (name = "destinations", description = "Webhooks that receive chosen profile-updates messages, batched and signed (Standard Webhooks); need the admin bearer token"),
        (name = "updates", description = "The profile-updates stream (contract §3a) as server-sent events, where this process keeps it (the embedded mode)"),
        (name = "privacy", description = "Privacy requests: suppress, unsuppress, delete or export a person; need the admin bearer token"),
        (name = "health", description = "Liveness and readiness"),
        (name = "meta", description = "This document"),
    )
)]
pub struct ApiDoc;

impl ApiDoc {
    /// The document of a process: the admin operations (those that need the
    /// bearer token) are in it only when that process has them, that is
    /// when it has an admin token.
    pub fn for_process(admin_routes: bool) -> utoipa::openapi::OpenApi {
        let mut doc = Self::openapi();
        if !admin_routes {
            for item in doc.paths.paths.values_mut() {
                for operation in operations(item) {
                    if operation.as_ref().is_some_and(|o| o.security.is_some()) {
                        *operation = None;
                    }
                }
            }
            doc.paths
                .paths
                .retain(|_, item| operations(item).iter().any(|o| o.is_some()));
            if let Some(components) = &mut doc.components {
                components.security_schemes.clear();
            }
        }
        doc
    }
}

/// Every operation slot of a path.
fn operations(item: &mut PathItem) -> [&mut Option<Operation>; 8] {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
}

/// The admin routes' bearer token (`PULSEHUB_ADMIN_TOKEN`).
struct AdminSecurity;

impl utoipa::Modify for AdminSecurity {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    operation_id = "openapi_document",
    tag = "meta",
    responses((status = 200, description = "This OpenAPI document", content_type = "application/json"))
)]
pub(super) async fn document(State(state): State<AppState>) -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::for_process(state.admin_token.is_some()))
}
