//! `GET /api/v1/profiles/{user_id}`: one user's profile.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use utoipa::ToSchema;

use super::{AppState, Problem};
use crate::model::event::MAX_ID_BYTES;

#[utoipa::path(
    get,
    path = "/api/v1/profiles/{user_id}",
    operation_id = "get_profile",
    tag = "profiles",
    params(("user_id" = String, Path, description = "The user id, as in the events (1 to 256 bytes of UTF-8, no NUL)",
        min_length = 1, max_length = 256, pattern = "^[^\\u0000]+$")),
    responses(
        (status = 200, description = "The profile", body = ProfileBody),
        (status = 400, description = "The user id is empty, too long or holds a NUL", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No profile for this user", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The profile store is unavailable", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
pub(super) async fn get_profile(
    State(state): State<AppState>,
    user_id: Result<Path<String>, PathRejection>,
) -> Result<Json<serde_json::Value>, Problem> {
    // The only way the path segment fails to extract is bad percent-encoding.
    let Path(user_id) = user_id.map_err(|e| Problem::invalid_user_id(&e.body_text()))?;
    check_user_id(&user_id).map_err(Problem::invalid_user_id)?;
    match state.profiles.lookup(&user_id).await {
        Ok(Some(profile)) => Ok(Json(profile.to_api_json())),
        Ok(None) => Err(Problem::profile_not_found(&user_id)),
        Err(error) => {
            tracing::warn!(
                user_id,
                error = format!("{error:#}"),
                "profile lookup failed"
            );
            Err(Problem::unavailable(
                "the profile store did not answer; retry shortly",
            ))
        }
    }
}

/// `GET /api/v1/profiles/`: the user id is empty.
pub(super) async fn empty_user_id() -> Problem {
    Problem::invalid_user_id("the user id must not be empty")
}

/// The rules of contract §3 for `user_id`.
fn check_user_id(user_id: &str) -> Result<(), &'static str> {
    if user_id.is_empty() {
        Err("the user id must not be empty")
    } else if user_id.len() > MAX_ID_BYTES {
        Err("the user id is longer than 256 bytes")
    } else if user_id.contains('\0') {
        Err("the user id must not contain a NUL character")
    } else {
        Ok(())
    }
}

/// A profile (contract §5), as `Profile::to_api_json` renders it.
#[derive(ToSchema)]
#[expect(dead_code, reason = "describes the JSON `Profile::to_api_json` builds")]
#[schema(as = Profile)]
pub(super) struct ProfileBody {
    user_id: String,
    /// The attributes by name.
    attributes: BTreeMap<String, AttributeBody>,
    /// When the first commit created the profile (RFC 3339).
    #[schema(format = DateTime)]
    created_at: String,
    /// When the latest commit changed the profile (RFC 3339).
    #[schema(format = DateTime)]
    updated_at: String,
}

/// One attribute with its provenance: who last changed it, and from which
/// event.
#[derive(ToSchema)]
#[expect(dead_code, reason = "describes the JSON `Profile::to_api_json` builds")]
#[schema(as = Attribute)]
pub(super) struct AttributeBody {
    value: AttributeValue,
    /// The plugin that last changed the attribute.
    plugin: String,
    plugin_version: String,
    /// The event that decided the value.
    event_id: String,
    /// The time of that event (RFC 3339).
    #[schema(format = DateTime)]
    updated_at: String,
}

/// A string, a number (counters are integers) or a boolean; timestamps are
/// RFC 3339 text. One variant per JSON type, so a value matches exactly one.
#[derive(ToSchema)]
#[expect(dead_code, reason = "describes the JSON `Profile::to_api_json` builds")]
#[serde(untagged)]
pub(super) enum AttributeValue {
    Text(String),
    Number(f64),
    Boolean(bool),
}
