//! The segment routes (contract §5, docs/segments.md): define and delete
//! segments (admin), read their definitions, member counts and members.
//!
//! A definition takes effect at once in this process and within a second in
//! the others ([`crate::segment::Segments::watch`]); from then on every
//! commit that changes an attribute a segment reads re-evaluates it for the
//! profiles it changed.

use std::collections::BTreeSet;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::events::check_content_type;
use super::problem::FaultPosition;
use super::{AppState, Problem};
use crate::model::event::format_millis;
use crate::segment::{Condition, Definition, Position, Stored};
use crate::store::StoreError;

/// Longest segment name.
pub const MAX_NAME_LEN: usize = 64;
/// Most members one page lists, and how many when `limit` is not given.
const MAX_PAGE: usize = 1_000;
const DEFAULT_PAGE: usize = 100;

/// A segment definition, as `PUT` takes it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewSegment {
    /// A CEL expression (`"page_views >= 5 && device_type == 'mobile'"`)
    /// or the same condition as a JSON tree (`{"and": [{"gte":
    /// ["page_views", 5]}, {"eq": ["device_type", "mobile"]}]}`); see
    /// docs/segments.md.
    #[schema(value_type = Value, example = json!("page_views >= 5 && device_type == 'mobile'"))]
    condition: serde_json::Value,
    /// Whether the profiles the backfill (the condition computed over the
    /// profiles that exist) puts in the segment are announced on the
    /// stream as `segment.entered`, like those the commits put in; default
    /// `false`.
    #[serde(default)]
    emit_backfill: bool,
}

/// A segment: its definition and how many profiles are in it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Segment)]
pub(super) struct SegmentBody {
    name: String,
    /// The condition as it was defined: a CEL expression or a JSON tree.
    #[schema(value_type = Value)]
    condition: serde_json::Value,
    /// The same condition as a JSON tree, as PulseHub evaluates it (`null`
    /// for a stored condition this version cannot read).
    #[schema(value_type = Value)]
    tree: serde_json::Value,
    /// The attributes the condition reads.
    attributes: Vec<String>,
    /// Those of them no loaded plugin writes: allowed (a plugin may come
    /// later), but a typo would keep the segment empty.
    unknown_attributes: Vec<String>,
    /// How many profiles are in the segment now.
    members: u64,
    /// When the segment was first defined (RFC 3339).
    #[schema(format = DateTime)]
    created_at: String,
    /// When its condition last changed (RFC 3339).
    #[schema(format = DateTime)]
    updated_at: String,
    /// Computing the condition over the profiles that existed before it.
    backfill: BackfillBody,
}

/// How far a segment's backfill got: until it is `done`, the members are
/// the profiles committed since the definition and those the backfill has
/// computed.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = SegmentBackfill)]
pub(super) struct BackfillBody {
    /// `pending` (it starts a few seconds after the definition), `running`
    /// or `done`.
    state: &'static str,
    /// Profiles computed so far, in key order.
    profiles: u64,
    /// Whether what it finds is announced on the stream.
    emit: bool,
}

/// Every segment.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct SegmentList {
    segments: Vec<SegmentBody>,
}

/// One page of a segment's members.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct MemberPage {
    /// Profile keys (as `GET /api/v1/profiles/{user_id}` takes them),
    /// ascending bytewise.
    members: Vec<String>,
    /// Pass as `after` for the next page; absent on the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    next: Option<String>,
}

/// Where a page of members starts, and how long it is.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct PageQuery {
    /// The `next` of the page before; absent for the first page.
    after: Option<String>,
    /// Members per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

#[utoipa::path(
    put,
    path = "/api/v1/segments/{name}",
    operation_id = "put_segment",
    tag = "segments",
    params(("name" = String, Path, description = "The segment's name: 1 to 64 of `a-z`, `0-9`, `-` and `_`, starting with a letter or digit",
        min_length = 1, max_length = 64, pattern = "^[a-z0-9][a-z0-9_-]*$")),
    request_body(content = NewSegment, content_type = "application/json"),
    security(("admin_token" = [])),
    responses(
        (status = 201, description = "Defined; profiles join as commits change what it reads", body = SegmentBody),
        (status = 200, description = "Redefined (its members start over), or the same condition as before (nothing changed)", body = SegmentBody),
        (status = 400, description = "The name or the definition is invalid; `position` says where in the condition", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong admin token", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not `application/json`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
pub(super) async fn put(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let name = segment_name(name)?;
    check_content_type(&headers)?;
    let asked: NewSegment = serde_json::from_slice(&body).map_err(|error| {
        Problem::invalid_segment(
            &format!(
                "the body is not a segment definition ({{\"condition\": \"page_views >= 5\"}}): \
                 {error}"
            ),
            None,
        )
    })?;
    let condition = Condition::parse(&asked.condition).map_err(|error| {
        let position = match &error.at {
            Position::Text { line, column } => FaultPosition {
                line: Some(*line),
                column: Some(*column),
                pointer: None,
            },
            Position::Json { pointer } => FaultPosition {
                line: None,
                column: None,
                pointer: Some(format!("/condition{pointer}")),
            },
        };
        Problem::invalid_segment(&error.to_string(), Some(position))
    })?;
    let stored = state
        .segments
        .store
        .put_definition(
            &name,
            &asked.condition,
            asked.emit_backfill,
            crate::model::profile::now_ms(),
        )
        .await
        .map_err(unavailable)?;
    refresh(&state).await;
    let status = match stored {
        Stored::Created(_) => StatusCode::CREATED,
        Stored::Changed(_) | Stored::Unchanged(_) => StatusCode::OK,
    };
    let definition = stored.definition();
    tracing::info!(
        segment = %name,
        id = definition.id,
        outcome = match stored {
            Stored::Created(_) => "created",
            Stored::Changed(_) => "changed",
            Stored::Unchanged(_) => "unchanged",
        },
        "segment defined"
    );
    let body = body_of(&state, &written(&state), definition, Some(condition)).await?;
    Ok((status, Json(body)).into_response())
}

#[utoipa::path(
    delete,
    path = "/api/v1/segments/{name}",
    operation_id = "delete_segment",
    tag = "segments",
    params(("name" = String, Path, description = "The segment's name",
        min_length = 1, max_length = 64, pattern = "^[a-z0-9][a-z0-9_-]*$")),
    security(("admin_token" = [])),
    responses(
        (status = 204, description = "Deleted, with its members"),
        (status = 400, description = "The name is not a segment name", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No segment has this name", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
pub(super) async fn delete(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, Problem> {
    let name = segment_name(name)?;
    let deleted = state
        .segments
        .store
        .delete_definition(&name)
        .await
        .map_err(unavailable)?;
    if !deleted {
        return Err(Problem::segment_not_found(&name));
    }
    refresh(&state).await;
    tracing::info!(segment = %name, "segment deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/api/v1/segments",
    operation_id = "list_segments",
    tag = "segments",
    responses(
        (status = 200, description = "Every segment, by name", body = SegmentList),
        (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
pub(super) async fn list(State(state): State<AppState>) -> Result<Json<SegmentList>, Problem> {
    let definitions = state
        .segments
        .store
        .definitions()
        .await
        .map_err(unavailable)?;
    let known = written(&state);
    let mut segments = Vec::with_capacity(definitions.len());
    for definition in &definitions {
        segments.push(body_of(&state, &known, definition, None).await?);
    }
    Ok(Json(SegmentList { segments }))
}

#[utoipa::path(
    get,
    path = "/api/v1/segments/{name}",
    operation_id = "get_segment",
    tag = "segments",
    params(("name" = String, Path, description = "The segment's name",
        min_length = 1, max_length = 64, pattern = "^[a-z0-9][a-z0-9_-]*$")),
    responses(
        (status = 200, description = "The segment: its definition and member count", body = SegmentBody),
        (status = 400, description = "The name is not a segment name", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No segment has this name", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
pub(super) async fn get_one(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<SegmentBody>, Problem> {
    let name = segment_name(name)?;
    let definition = find(&state, &name).await?;
    Ok(Json(
        body_of(&state, &written(&state), &definition, None).await?,
    ))
}

#[utoipa::path(
    get,
    path = "/api/v1/segments/{name}/members",
    operation_id = "list_segment_members",
    tag = "segments",
    params(("name" = String, Path, description = "The segment's name",
        min_length = 1, max_length = 64, pattern = "^[a-z0-9][a-z0-9_-]*$"), PageQuery),
    responses(
        (status = 200, description = "One page of members", body = MemberPage),
        (status = 400, description = "The name or the query is invalid", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No segment has this name", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
pub(super) async fn members(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<MemberPage>, Problem> {
    let name = segment_name(name)?;
    let Query(page) = query.map_err(|error| {
        Problem::invalid_segment(
            &format!("the query takes `after` and `limit`: {}", error.body_text()),
            None,
        )
    })?;
    let limit = page.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(Problem::invalid_segment(
            &format!("`limit` is 1 to {MAX_PAGE}, not {limit}"),
            None,
        ));
    }
    let definition = find(&state, &name).await?;
    let members = state
        .segments
        .store
        .members(definition.id, page.after.as_deref(), limit)
        .await
        .map_err(unavailable)?;
    let next = (members.len() == limit)
        .then(|| members.last().cloned())
        .flatten();
    Ok(Json(MemberPage { members, next }))
}

/// The names of the live segments `ids` holds, for a profile's body.
pub(super) fn names_of(state: &AppState, ids: &[u32]) -> Vec<String> {
    let set = state.segments.live.load();
    let mut names: Vec<String> = ids
        .iter()
        .filter_map(|&id| set.by_id(id))
        .map(|segment| segment.name.clone())
        .collect();
    names.sort();
    names
}

async fn find(state: &AppState, name: &str) -> Result<Definition, Problem> {
    let definitions = state
        .segments
        .store
        .definitions()
        .await
        .map_err(unavailable)?;
    definitions
        .into_iter()
        .find(|definition| definition.name == name)
        .ok_or_else(|| Problem::segment_not_found(name))
}

/// The attributes the loaded plugins write.
fn written(state: &AppState) -> BTreeSet<String> {
    super::plugins::all(state)
        .into_iter()
        .flat_map(|plugin| plugin.writes)
        .collect()
}

/// The body of `definition`; `condition` when the caller parsed it already,
/// `known` the attributes the loaded plugins write ([`written`]).
async fn body_of(
    state: &AppState,
    known: &BTreeSet<String>,
    definition: &Definition,
    condition: Option<Condition>,
) -> Result<SegmentBody, Problem> {
    let condition = match condition {
        Some(condition) => Some(condition),
        None => Condition::parse(&definition.condition).ok(),
    };
    let (tree, attributes) = match &condition {
        Some(condition) => (
            condition.to_json(),
            condition
                .attributes()
                .into_iter()
                .cloned()
                .collect::<Vec<_>>(),
        ),
        // Stored by a version that read more: shown as stored.
        None => (serde_json::Value::Null, Vec::new()),
    };
    let unknown_attributes = attributes
        .iter()
        .filter(|name| !known.contains(*name))
        .cloned()
        .collect();
    let members = state
        .segments
        .store
        .member_count(definition.id)
        .await
        .map_err(unavailable)?;
    Ok(SegmentBody {
        name: definition.name.clone(),
        condition: definition.condition.clone(),
        tree,
        attributes,
        unknown_attributes,
        members,
        created_at: format_millis(definition.created_at_ms),
        updated_at: format_millis(definition.updated_at_ms),
        backfill: BackfillBody {
            state: match &definition.backfill {
                backfill if backfill.done => "done",
                backfill if backfill.after.is_some() => "running",
                _ => "pending",
            },
            profiles: definition.backfill.profiles,
            emit: definition.backfill.emit,
        },
    })
}

/// The name in the path, if it is a segment name.
fn segment_name(name: Result<Path<String>, PathRejection>) -> Result<String, Problem> {
    let Path(name) = name.map_err(|error| Problem::invalid_segment(&error.body_text(), None))?;
    if !is_name(&name) {
        return Err(Problem::invalid_segment(
            &format!(
                "{name:?} is not a segment name: 1 to {MAX_NAME_LEN} of a-z, 0-9, - and _, \
                 starting with a letter or digit"
            ),
            None,
        ));
    }
    Ok(name)
}

/// Whether `name` may name a segment (or a destination): 1 to 64 of
/// `a-z`, `0-9`, `-` and `_`, starting with a letter or digit.
pub(super) fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= MAX_NAME_LEN
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// Makes the stored definitions live in this process now, rather than at
/// the next refresh.
async fn refresh(state: &AppState) {
    if let Err(error) = state.segments.refresh().await {
        tracing::warn!(
            "reading the segment definitions back failed (the next refresh retries): {:#}",
            error.0
        );
    }
}

fn unavailable(error: StoreError) -> Problem {
    tracing::warn!("a segment route's store call failed: {:#}", error.0);
    Problem::unavailable("the store did not answer; try again")
}
