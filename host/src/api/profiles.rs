//! `GET /api/v1/profiles/{user_id}` and
//! `GET /api/v1/profiles/by/{type}/{value}`: the profile of one person.
//!
//! Both read the row at the identifier's home key and follow its pointers
//! (docs/identity.md), so an id whose profile was merged into another one
//! answers with the surviving profile, and says so (`resolved_from`).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};

use super::{AppState, Problem};
use crate::model::event::{MAX_ID_BYTES, format_millis};
use crate::model::identity::{Identifier, USER_ID};
use crate::model::profile::Profile;
use crate::model::update::Value;

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
) -> Result<Json<ProfileBody>, Problem> {
    // The only way the path segment fails to extract is bad percent-encoding.
    let Path(user_id) = user_id.map_err(|e| Problem::invalid_user_id(&e.body_text()))?;
    check_user_id(&user_id).map_err(Problem::invalid_user_id)?;
    let requested = Identifier::new(USER_ID, user_id.as_str());
    respond(&state, &user_id, requested).await
}

#[utoipa::path(
    get,
    path = "/api/v1/profiles/by/{type}/{value}",
    operation_id = "get_profile_by_identifier",
    tag = "profiles",
    params(
        ("type" = String, Path, description = "An identifier type: `user_id`, `anonymous_id` or one of `identity.types`"),
        ("value" = String, Path, description = "The identifier's value, as in the events (a `hashed` type's plain value: PulseHub hashes it)",
            min_length = 1, max_length = 256, pattern = "^[^\\u0000]+$"),
    ),
    responses(
        (status = 200, description = "The profile", body = ProfileBody),
        (status = 400, description = "The type is unknown, or the value is empty, too long or holds a NUL", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No profile has this identifier", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The profile store is unavailable", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
pub(super) async fn get_profile_by(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<ProfileBody>, Problem> {
    let Path((kind, value)) = path.map_err(|e| Problem::invalid_identifier(&e.body_text()))?;
    check_user_id(&value).map_err(|reason| {
        Problem::invalid_identifier(&reason.replace("user id", "identifier value"))
    })?;
    let key = state
        .identity
        .lookup_key(&kind, &value)
        .map_err(|reason| Problem::invalid_identifier(&reason))?;
    respond(&state, &key, Identifier::new(kind, value)).await
}

/// The profile the row at `key` resolves to, for `requested`.
async fn respond(
    state: &AppState,
    key: &str,
    requested: Identifier,
) -> Result<Json<ProfileBody>, Problem> {
    match state.profiles.resolve(key).await {
        Ok(Some((profile, moved))) => {
            let mut body = ProfileBody::from(&profile);
            body.segments = super::segments::names_of(state, &profile.segments);
            if moved.is_some() {
                body.resolved_from = Some(requested.into());
            }
            Ok(Json(body))
        }
        Ok(None) if requested.kind == USER_ID => Err(Problem::profile_not_found(&requested.value)),
        Ok(None) => Err(Problem::profile_not_found(&format!(
            "{} {}",
            requested.kind, requested.value
        ))),
        Err(error) => {
            tracing::warn!(key, error = format!("{error:#}"), "profile lookup failed");
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
pub(super) fn check_user_id(user_id: &str) -> Result<(), &'static str> {
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

/// A profile (contract §5): the REST shape of a [`Profile`].
#[derive(Debug, Serialize, ToSchema)]
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
    /// The key the profile is stored under: its `user_id`, or for a
    /// profile first seen by another identifier, a key derived from it.
    profile_key: String,
    /// Every identifier of the person, sorted by type and value.
    identifiers: Vec<IdentifierBody>,
    /// The profiles merged into this one, oldest first.
    merges: Vec<MergeBody>,
    /// The segments the profile is in, by name, sorted.
    segments: Vec<String>,
    /// Present when the identifier asked for was merged into (or joined)
    /// this profile: the identifier asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    resolved_from: Option<IdentifierBody>,
}

/// One identifier of a person.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Identifier)]
pub(super) struct IdentifierBody {
    /// `user_id`, `anonymous_id` or a configured type.
    #[serde(rename = "type")]
    kind: String,
    /// The value (a `hashed` type's SHA-256, in hex).
    value: String,
}

impl From<Identifier> for IdentifierBody {
    fn from(identifier: Identifier) -> Self {
        IdentifierBody {
            kind: identifier.kind,
            value: identifier.value,
        }
    }
}

/// A merge the profile took in.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Merge)]
pub(super) struct MergeBody {
    /// The key of the profile merged in.
    merged_profile_key: String,
    /// The event whose identifiers linked the two.
    event_id: String,
    /// When (RFC 3339).
    #[schema(format = DateTime)]
    merged_at: String,
}

/// One attribute with its provenance: who last changed it, and from which
/// event.
#[derive(Debug, Serialize, ToSchema)]
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

/// An attribute's value: a string, a number (counters are integers) or a
/// boolean; timestamps are RFC 3339 text.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(super) enum AttributeValue {
    Text(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
}

/// One schema per JSON type, so that a value matches exactly one (the
/// derive would give integers two, `integer` and `number`).
impl utoipa::PartialSchema for AttributeValue {
    fn schema() -> RefOr<Schema> {
        let of = |kind: Type| ObjectBuilder::new().schema_type(kind);
        OneOfBuilder::new()
            .item(of(Type::String))
            .item(of(Type::Number))
            .item(of(Type::Boolean))
            .description(Some(
                "A string, a number (counters are integers) or a boolean; timestamps are \
                 RFC 3339 text. One variant per JSON type, so a value matches exactly one.",
            ))
            .into()
    }
}

impl ToSchema for AttributeValue {}

impl From<&Value> for AttributeValue {
    fn from(value: &Value) -> Self {
        match value {
            Value::Text(text) => AttributeValue::Text(text.clone()),
            Value::Integer(n) => AttributeValue::Integer(*n),
            Value::Float(x) => AttributeValue::Float(*x),
            Value::Boolean(b) => AttributeValue::Boolean(*b),
            Value::Timestamp(ms) => AttributeValue::Text(format_millis(*ms)),
        }
    }
}

impl From<&Profile> for ProfileBody {
    fn from(profile: &Profile) -> Self {
        let attributes = profile
            .attributes
            .iter()
            .map(|(name, attribute)| {
                let body = AttributeBody {
                    value: AttributeValue::from(&attribute.value),
                    plugin: attribute.plugin.clone(),
                    plugin_version: attribute.plugin_version.clone(),
                    event_id: attribute.event_id.clone(),
                    updated_at: format_millis(attribute.event_time_ms),
                };
                (name.clone(), body)
            })
            .collect();
        let identifiers = profile.identifiers().into_owned();
        // The person's user id when they have one; else the key, as before.
        let user_id = identifiers
            .iter()
            .find(|i| i.kind == USER_ID)
            .map_or_else(|| profile.user_id.clone(), |i| i.value.clone());
        ProfileBody {
            user_id,
            attributes,
            created_at: format_millis(profile.created_at_ms),
            updated_at: format_millis(profile.updated_at_ms),
            profile_key: profile.user_id.clone(),
            identifiers: identifiers.into_iter().map(IdentifierBody::from).collect(),
            merges: profile
                .merges
                .iter()
                .map(|m| MergeBody {
                    merged_profile_key: m.merged.clone(),
                    event_id: m.event_id.clone(),
                    merged_at: format_millis(m.at_ms),
                })
                .collect(),
            segments: Vec::new(),
            resolved_from: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::profile::Attribute;

    fn attribute(value: Value, event_id: &str, event_time_ms: i64) -> Attribute {
        Attribute {
            value,
            plugin: "p".into(),
            plugin_version: "1.0.0".into(),
            event_id: event_id.into(),
            event_time_ms,
            op: None,
        }
    }

    /// Timestamps become RFC 3339 text; numbers stay numbers.
    #[test]
    fn a_profile_renders_in_the_api_shape() {
        let mut p = Profile::new("u-1", 0);
        let seen = attribute(Value::Timestamp(1_000), "e1", 1_000);
        p.attributes.insert("seen".into(), seen);
        p.attributes
            .insert("f".into(), attribute(Value::Float(1.5), "e2", 1));
        let api = serde_json::to_value(ProfileBody::from(&p)).expect("serialises");
        assert_eq!(
            api["attributes"]["seen"]["value"],
            "1970-01-01T00:00:01.000Z"
        );
        assert_eq!(api["attributes"]["seen"]["event_id"], "e1");
        assert_eq!(api["attributes"]["f"]["value"], 1.5);
        assert_eq!(api["user_id"], "u-1");
    }
}
