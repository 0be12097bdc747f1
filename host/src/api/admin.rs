//! The admin routes (contract §5): install or replace a plugin version, roll
//! back, remove, and lift a quarantine. They exist only when an admin token
//! is configured and this process runs plugins; every request carries
//! `Authorization: Bearer <token>`, compared in constant time.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, Multipart, Path, Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::plugins::PluginInfo;
use super::{AppState, Problem};
use crate::plugin::LoadError;
use crate::plugin_ops::{Actor, Installed, ManagerError, Package, PluginManager};

/// The admin bearer token, kept as its SHA-256 so that every comparison
/// takes the same time whatever the length of the candidate.
#[derive(Clone)]
pub struct AdminToken(Arc<[u8; 32]>);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    pub fn new(token: &str) -> Self {
        Self(Arc::new(Sha256::digest(token.as_bytes()).into()))
    }

    fn matches(&self, candidate: &str) -> bool {
        let candidate: [u8; 32] = Sha256::digest(candidate.as_bytes()).into();
        self.0.ct_eq(&candidate).into()
    }
}

/// An operator may name themself for the audit log.
const OPERATOR_HEADER: &str = "x-pulsehub-operator";

/// Middleware of the admin routes: 401 without the right bearer token; with
/// it, the request carries the [`Actor`] for the audit log.
pub(super) async fn require_token(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(token) = &state.admin_token else {
        return Problem::unauthorized("the admin routes are disabled").into_response();
    };
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    let refusal = match presented {
        None => Some("this route needs the header `Authorization: Bearer <admin token>`"),
        Some(candidate) if !token.matches(candidate.trim()) => {
            Some("the bearer token is not the admin token")
        }
        Some(_) => None,
    };
    if let Some(detail) = refusal {
        tracing::warn!(path = %request.uri().path(), "admin request refused: {detail}");
        let mut response = Problem::unauthorized(detail).into_response();
        response.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Bearer realm="pulsehub-admin""#),
        );
        return response;
    }
    let operator = request
        .headers()
        .get(OPERATOR_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.chars()
                .filter(|c| !c.is_control())
                .take(64)
                .collect::<String>()
        })
        .filter(|v| !v.is_empty());
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(address)| address.to_string());
    request
        .extensions_mut()
        .insert(Actor::Admin { operator, client });
    next.run(request).await
}

fn manager(state: &AppState) -> Result<&Arc<PluginManager>, Problem> {
    state.manager.as_ref().ok_or_else(|| {
        Problem::status(
            StatusCode::NOT_FOUND,
            "this process runs no plugins (role api); send plugin changes to an enrich process",
        )
    })
}

/// The caller the admin middleware named (an anonymous admin without it).
pub(super) fn actor(request_actor: Option<axum::Extension<Actor>>) -> Actor {
    request_actor.map_or(
        Actor::Admin {
            operator: None,
            client: None,
        },
        |axum::Extension(actor)| actor,
    )
}

impl From<ManagerError> for Problem {
    fn from(error: ManagerError) -> Self {
        let detail = error.to_string();
        match error {
            ManagerError::Load(LoadError::OwnershipClash { .. }) => {
                Problem::ownership_clash(&detail)
            }
            ManagerError::Load(LoadError::Manifest(_)) | ManagerError::NameMismatch { .. } => {
                Problem::plugin_refused(StatusCode::BAD_REQUEST, &detail)
            }
            ManagerError::Load(_) | ManagerError::Timeout { .. } | ManagerError::Sample { .. } => {
                Problem::plugin_refused(StatusCode::UNPROCESSABLE_ENTITY, &detail)
            }
            ManagerError::TooLarge { .. } => {
                Problem::plugin_refused(StatusCode::PAYLOAD_TOO_LARGE, &detail)
            }
            ManagerError::NotFound(name) => Problem::plugin_not_found(&name),
            ManagerError::NoPrevious(_) | ManagerError::NotQuarantined(_) => {
                Problem::plugin_conflict(&detail)
            }
            ManagerError::Internal(_) => {
                tracing::error!("plugin change failed: {detail}");
                Problem::status(StatusCode::INTERNAL_SERVER_ERROR, &detail)
            }
        }
    }
}

/// Reads the two parts of an upload.
async fn package(mut multipart: Multipart) -> Result<Package, Problem> {
    let mut manifest = None;
    let mut component = None;
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(error) => {
                return Err(Problem::invalid_upload(&format!(
                    "the multipart body cannot be read: {error}"
                )));
            }
        };
        let name = field.name().unwrap_or_default().to_owned();
        let bytes = field.bytes().await.map_err(|error| {
            Problem::invalid_upload(&format!("part `{name}` cannot be read: {error}"))
        })?;
        match name.as_str() {
            "manifest" => {
                let text = String::from_utf8(bytes.to_vec()).map_err(|_| {
                    Problem::invalid_upload("part `manifest` is not UTF-8 text (TOML)")
                })?;
                manifest = Some(text);
            }
            "component" => component = Some(bytes.to_vec()),
            other => {
                return Err(Problem::invalid_upload(&format!(
                    "unknown part `{other}`; an upload has the parts `manifest` (TOML) and \
                     `component` (the .wasm file)"
                )));
            }
        }
    }
    match (manifest, component) {
        (Some(manifest), Some(component)) => Ok(Package {
            manifest,
            component,
        }),
        (None, _) => Err(Problem::invalid_upload(
            "part `manifest` is missing (multipart/form-data with `manifest` and `component`)",
        )),
        (_, None) => Err(Problem::invalid_upload(
            "part `component` is missing (multipart/form-data with `manifest` and `component`)",
        )),
    }
}

/// The two parts of a plugin upload.
#[derive(utoipa::ToSchema)]
#[expect(dead_code, reason = "describes the multipart body `package` reads")]
#[schema(as = PluginUpload)]
pub(super) struct PluginUpload {
    /// The plugin's manifest (`plugin.toml`), UTF-8 TOML text.
    manifest: String,
    /// The WebAssembly component (`.wasm`).
    #[schema(value_type = String, format = Binary)]
    component: Vec<u8>,
}

#[utoipa::path(
    put,
    path = "/api/v1/plugins/{name}",
    operation_id = "put_plugin",
    tag = "plugins",
    params(("name" = String, Path, description = "The plugin's name; must match the manifest")),
    request_body(content = PluginUpload, content_type = "multipart/form-data",
        description = "Parts `manifest` (the TOML manifest) and `component` (the .wasm component)"),
    security(("admin_token" = [])),
    responses(
        (status = 201, description = "A new plugin is running", body = PluginInfo),
        (status = 200, description = "The new version replaced the running one (or was already running)", body = PluginInfo),
        (status = 400, description = "Not a plugin package, a bad manifest, or a name that does not match", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "This process runs no plugins (role api)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Another plugin writes one of its attributes", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The component is over the size limit", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The component does not compile, target the world, pass init or get through the sample events in time", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn put_plugin(
    State(state): State<AppState>,
    Path(name): Path<String>,
    request_actor: Option<axum::Extension<Actor>>,
    multipart: Multipart,
) -> Result<Response, Problem> {
    let manager = manager(&state)?;
    let package = package(multipart).await?;
    let (installed, view) = manager
        .install(package, Some(&name), "api", &actor(request_actor))
        .await?;
    let status = match installed {
        Installed::New => StatusCode::CREATED,
        Installed::Replaced | Installed::Unchanged => StatusCode::OK,
    };
    Ok((status, Json(PluginInfo::from(&view))).into_response())
}

#[utoipa::path(
    post,
    path = "/api/v1/plugins/{name}/rollback",
    operation_id = "rollback_plugin",
    tag = "plugins",
    params(("name" = String, Path, description = "The plugin's name")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The newest earlier version runs again", body = PluginInfo),
        (status = 401, description = "Missing or wrong admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such plugin, or this process runs no plugins (role api)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "No earlier version is kept", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn rollback(
    State(state): State<AppState>,
    Path(name): Path<String>,
    request_actor: Option<axum::Extension<Actor>>,
) -> Result<Json<PluginInfo>, Problem> {
    let view = manager(&state)?
        .rollback(&name, &actor(request_actor))
        .await?;
    Ok(Json(PluginInfo::from(&view)))
}

#[utoipa::path(
    post,
    path = "/api/v1/plugins/{name}/resume",
    operation_id = "resume_plugin",
    tag = "plugins",
    params(("name" = String, Path, description = "The plugin's name")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The quarantine is lifted: the version runs again", body = PluginInfo),
        (status = 401, description = "Missing or wrong admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such plugin, or this process runs no plugins (role api)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The plugin is not quarantined", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn resume(
    State(state): State<AppState>,
    Path(name): Path<String>,
    request_actor: Option<axum::Extension<Actor>>,
) -> Result<Json<PluginInfo>, Problem> {
    let view = manager(&state)?
        .resume(&name, &actor(request_actor))
        .await?;
    Ok(Json(PluginInfo::from(&view)))
}

#[utoipa::path(
    delete,
    path = "/api/v1/plugins/{name}",
    operation_id = "delete_plugin",
    tag = "plugins",
    params(("name" = String, Path, description = "The plugin's name")),
    security(("admin_token" = [])),
    responses(
        (status = 204, description = "The plugin no longer runs; its versions are forgotten"),
        (status = 401, description = "Missing or wrong admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such plugin, or this process runs no plugins (role api)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn delete_plugin(
    State(state): State<AppState>,
    Path(name): Path<String>,
    request_actor: Option<axum::Extension<Actor>>,
) -> Result<StatusCode, Problem> {
    manager(&state)?
        .remove(&name, &actor(request_actor))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::AdminToken;

    #[test]
    fn the_token_matches_only_itself() {
        let token = AdminToken::new("0123456789abcdef-secret");
        assert!(token.matches("0123456789abcdef-secret"));
        assert!(!token.matches("0123456789abcdef-secreT"));
        assert!(!token.matches("0123456789abcdef-secret "));
        assert!(!token.matches(""));
    }
}
