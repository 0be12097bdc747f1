//! `POST /api/v1/privacy/requests` and `GET /api/v1/privacy/requests/{id}`
//! (admin token): privacy requests, carried out in the background
//! ([`crate::privacy`]).

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::header::LOCATION;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::events::check_content_type;
use super::profiles::{ProfileBody, check_user_id};
use super::{AppState, Problem};
use crate::model::event::format_millis;
use crate::model::identity::Identifier;
use crate::model::profile::Profile;
use crate::plugin_ops::Actor;
use crate::privacy::{PrivacyRequest, RequestKind, Status};

/// Most identifiers one request may name.
pub const MAX_IDENTIFIERS: usize = 100;

/// A privacy request as asked.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = NewPrivacyRequest)]
pub(super) struct NewRequest {
    /// `suppress`, `unsuppress`, `delete` or `export`.
    #[serde(rename = "type")]
    kind: RequestKind,
    /// The person, by any of their identifiers (1 to 100).
    #[schema(min_items = 1, max_items = 100)]
    identifiers: Vec<NamedIdentifier>,
}

/// An identifier as a caller names it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = NamedIdentifier)]
pub(super) struct NamedIdentifier {
    /// `user_id`, `anonymous_id` or a type of `identity.types`.
    #[serde(rename = "type")]
    kind: String,
    /// As in the events (a `hashed` type's plain value).
    #[schema(min_length = 1, max_length = 256)]
    value: String,
}

/// A privacy request and where it is.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = PrivacyRequest)]
pub(super) struct RequestBody {
    id: i64,
    #[serde(rename = "type")]
    kind: RequestKind,
    identifiers: Vec<NamedIdentifier>,
    /// `pending` (not applied yet), `applied` (stored data changed, cached
    /// copies still to clear) or `done`.
    status: Status,
    /// Who asked: `admin`, the `X-PulseHub-Operator` name, the address.
    actor: String,
    /// RFC 3339, UTC.
    submitted_at: String,
    finished_at: Option<String>,
    /// What was done, once applied: `profiles` found, `keys` covered, and
    /// `suppressed`, `unsuppressed`, `removed` (by store) or `export`.
    #[schema(value_type = Option<Object>)]
    result: Option<serde_json::Value>,
}

impl From<PrivacyRequest> for RequestBody {
    fn from(request: PrivacyRequest) -> Self {
        RequestBody {
            id: request.id,
            kind: request.kind,
            identifiers: request
                .identifiers
                .into_iter()
                .map(|i| NamedIdentifier {
                    kind: i.kind,
                    value: i.value,
                })
                .collect(),
            status: request.status,
            actor: request.actor,
            submitted_at: format_millis(request.submitted_at_ms),
            finished_at: request.finished_at_ms.map(format_millis),
            result: request.result.map(public_profiles),
        }
    }
}

/// An export's profiles as the profile routes show them (contract §5),
/// not as stored.
fn public_profiles(mut result: serde_json::Value) -> serde_json::Value {
    if let Some(profiles) = result
        .get_mut("export")
        .and_then(|export| export.get_mut("profiles"))
        .and_then(serde_json::Value::as_array_mut)
    {
        for profile in profiles {
            if let Ok(stored) = serde_json::from_value::<Profile>(profile.clone())
                && let Ok(public) = serde_json::to_value(ProfileBody::from(&stored))
            {
                *profile = public;
            }
        }
    }
    result
}

#[utoipa::path(
    post,
    path = "/api/v1/privacy/requests",
    operation_id = "create_privacy_request",
    tag = "privacy",
    request_body(content = NewRequest, content_type = "application/json"),
    security(("admin_token" = [])),
    responses(
        (status = 202, description = "Stored; carried out in the background (see `Location`)", body = RequestBody,
            headers(("Location" = String, description = "The request's status"))),
        (status = 400, description = "The body is not a privacy request, or an identifier is unknown, empty, too long or blocked",
            body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong admin token", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not `application/json`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
pub(super) async fn create(
    State(state): State<AppState>,
    request_actor: Option<axum::Extension<Actor>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    check_content_type(&headers)?;
    let asked: NewRequest = serde_json::from_slice(&body).map_err(|error| {
        Problem::invalid_privacy_request(&format!(
            "the body is not a privacy request ({{\"type\": \"delete\", \"identifiers\": \
             [{{\"type\": \"user_id\", \"value\": \"u42\"}}]}}): {error}"
        ))
    })?;
    if asked.identifiers.is_empty() || asked.identifiers.len() > MAX_IDENTIFIERS {
        return Err(Problem::invalid_privacy_request(&format!(
            "a request names 1 to {MAX_IDENTIFIERS} identifiers, not {}",
            asked.identifiers.len()
        )));
    }
    let mut identifiers = Vec::with_capacity(asked.identifiers.len());
    let mut keys = Vec::with_capacity(asked.identifiers.len());
    for (index, named) in asked.identifiers.into_iter().enumerate() {
        let refuse = |reason: &str| {
            Problem::invalid_privacy_request(&format!("identifiers[{index}]: {reason}"))
        };
        check_user_id(&named.value)
            .map_err(|reason| refuse(&reason.replace("user id", "identifier value")))?;
        if state.identity.is_blocked(&named.value) {
            return Err(refuse(&format!(
                "{:?} is a blocked value: it never identifies a person",
                named.value
            )));
        }
        let key = state
            .identity
            .lookup_key(&named.kind, &named.value)
            .map_err(|reason| refuse(&reason))?;
        keys.push(key);
        identifiers.push(Identifier::new(named.kind, named.value));
    }
    let actor = super::admin::actor(request_actor);
    let request = state
        .privacy
        .submit(asked.kind, &identifiers, &keys, &actor.to_string())
        .await
        .map_err(|error| {
            tracing::warn!("storing a privacy request failed: {:#}", error.0);
            Problem::unavailable("the store did not take the privacy request; try again")
        })?;
    let location = format!("/api/v1/privacy/requests/{}", request.id);
    let mut response = (StatusCode::ACCEPTED, Json(RequestBody::from(request))).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(LOCATION, value);
    }
    Ok(response)
}

#[utoipa::path(
    get,
    path = "/api/v1/privacy/requests/{id}",
    operation_id = "get_privacy_request",
    tag = "privacy",
    params(("id" = i64, Path, description = "The id the request was accepted with", minimum = 1)),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The request, its status and, once applied, its result", body = RequestBody),
        (status = 400, description = "The id is not a number", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No request has this id", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
pub(super) async fn get_one(
    State(state): State<AppState>,
    id: Result<Path<i64>, PathRejection>,
) -> Result<Json<RequestBody>, Problem> {
    let Path(id) = id.map_err(|_| {
        Problem::invalid_privacy_request("a privacy request's id is a positive whole number")
    })?;
    let request = state.privacy.store.request(id).await.map_err(|error| {
        tracing::warn!("reading a privacy request failed: {:#}", error.0);
        Problem::unavailable("the store did not answer; try again")
    })?;
    match request {
        Some(request) => Ok(Json(RequestBody::from(request))),
        None => Err(Problem::privacy_request_not_found(id)),
    }
}
