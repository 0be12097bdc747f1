//! The destination routes (contract §5, docs/destinations.md), all behind
//! the admin token: define, change and delete webhooks, read their state
//! and counters, list their dead letters and send one again.
//!
//! A definition takes effect within a second in the process that delivers
//! ([`crate::activation::destination::dispatch`]).

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
use super::segments::is_name;
use super::{AppState, Problem};
use crate::activation::destination::guard::refuse;
use crate::activation::destination::sign::Secret;
use crate::activation::destination::{DeadLetter, Destination, Destinations, Outcome, Put, Target};
use crate::activation::update::{PROFILE_UPDATED, SEGMENT_ENTERED, SEGMENT_EXITED};
use crate::model::event::format_millis;
use crate::model::profile::now_ms;
use crate::store::StoreError;

/// The message types a destination may receive.
const EVENTS: [&str; 3] = [PROFILE_UPDATED, SEGMENT_ENTERED, SEGMENT_EXITED];
/// Longest URL.
const MAX_URL_LEN: usize = 2_048;
/// Most dead letters one page lists, and how many by default.
const MAX_PAGE: usize = 100;
const DEFAULT_PAGE: usize = 20;

/// A destination, as `PUT` takes it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewDestination {
    /// Where batches are posted: `https://…` (or `http://`). Loopback and
    /// private addresses only with `activation.allow_private_networks`.
    #[schema(example = "https://hooks.example.com/pulsehub")]
    url: String,
    /// The signing secret, `whsec_` and the base64 of 24 to 64 random
    /// bytes. A new one replaces the old, which goes on signing beside it
    /// for 24 hours.
    #[schema(example = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")]
    secret: String,
    /// The message types it receives: `profile.updated`,
    /// `segment.entered`, `segment.exited`.
    #[schema(example = json!(["segment.entered", "segment.exited"]))]
    events: Vec<String>,
    /// The segments whose `segment.*` messages it receives; absent: every
    /// segment.
    #[serde(default)]
    #[schema(nullable = false, example = json!(["mobile-fans"]))]
    segments: Option<Vec<String>>,
}

/// A destination: what it receives, its state and counters (never its
/// secret).
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Destination)]
pub(super) struct DestinationBody {
    name: String,
    url: String,
    events: Vec<String>,
    /// `null`: every segment.
    segments: Option<Vec<String>>,
    /// `enabled`, or `disabled` (the receiver answered `410 Gone`; the
    /// next `PUT` enables it, from where it stopped).
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    disabled_reason: Option<String>,
    /// Until when the secret before the last one signs too (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, format = DateTime)]
    previous_secret_until: Option<String>,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
    counters: CountersBody,
}

/// What became of the deliveries, over the destination's life.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = DestinationCounters)]
pub(super) struct CountersBody {
    /// Messages the receiver acknowledged.
    sent: u64,
    /// Attempts that failed.
    failed: u64,
    /// Attempts that were retries.
    retried: u64,
    /// Batches that failed every attempt.
    dead_letters: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, format = DateTime)]
    last_sent_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, format = DateTime)]
    last_error_at: Option<String>,
}

/// Every destination.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct DestinationList {
    destinations: Vec<DestinationBody>,
}

/// A batch that failed every attempt.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = DestinationDeadLetter)]
pub(super) struct DeadLetterBody {
    id: i64,
    /// The `webhook-id` every attempt carried.
    webhook_id: String,
    messages: u32,
    attempts: u32,
    last_error: String,
    #[schema(format = DateTime)]
    created_at: String,
    /// The body every attempt sent: `{"type": "changes", "timestamp": …,
    /// "data": [messages]}`.
    #[schema(value_type = Object)]
    body: serde_json::Value,
}

/// One page of dead letters, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct DeadLetterPage {
    dead_letters: Vec<DeadLetterBody>,
    /// Pass as `after` for the next page; absent on the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    next: Option<i64>,
}

/// A dead letter sent again.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Resent {
    /// The receiver acknowledged it; the dead letter is gone.
    delivered: bool,
    webhook_id: String,
}

/// Where a page of dead letters starts, and how long it is.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct PageQuery {
    /// The `next` of the page before; absent for the first page.
    #[param(minimum = 0)]
    after: Option<i64>,
    /// Dead letters per page, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<usize>,
}

#[utoipa::path(
    put,
    path = "/api/v1/destinations/{name}",
    operation_id = "put_destination",
    tag = "destinations",
    params(("name" = String, Path, description = "The destination's name: 1 to 64 of `a-z`, `0-9`, `-` and `_`, starting with a letter or digit",
        min_length = 1, max_length = 64, pattern = "^[a-z0-9][a-z0-9_-]*$")),
    request_body(content = NewDestination, content_type = "application/json"),
    security(("admin_token" = [])),
    responses(
        (status = 201, description = "Defined: it receives what is published from now on", body = DestinationBody),
        (status = 200, description = "Changed (or enabled again), or the same as before; it carries on from where it was in the stream", body = DestinationBody),
        (status = 400, description = "The name or the definition is invalid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong admin token", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not `application/json`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "This process has no destinations (`destinations-unavailable`): the embedded mode, or `activation.profile_updates` off", body = Problem, content_type = "application/problem+json"),
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
    let destinations = available(&state)?;
    let name = destination_name(name)?;
    check_content_type(&headers)?;
    let asked: NewDestination = serde_json::from_slice(&body).map_err(|error| {
        Problem::invalid_destination(&format!(
            "the body is not a destination ({{\"url\": …, \"secret\": \"whsec_…\", \
             \"events\": [\"segment.entered\"]}}): {error}"
        ))
    })?;
    let target = check(asked, destinations.sender.allows_private())
        .map_err(|why| Problem::invalid_destination(&why))?;
    let put = destinations
        .store
        .put(&name, &target, now_ms())
        .await
        .map_err(unavailable)?;
    let (status, outcome) = match &put {
        Put::Created(_) => (StatusCode::CREATED, "created"),
        Put::Changed(_) => (StatusCode::OK, "changed"),
        Put::Unchanged(_) => (StatusCode::OK, "unchanged"),
    };
    tracing::info!(destination = %name, url = %target.url, outcome, "destination defined");
    Ok((status, Json(body_of(put.destination()))).into_response())
}

/// The definition, checked: a clear reason when it cannot be one.
fn check(asked: NewDestination, allow_private: bool) -> Result<Target, String> {
    if asked.url.len() > MAX_URL_LEN {
        return Err(format!("`url` is longer than {MAX_URL_LEN} bytes"));
    }
    let url =
        reqwest::Url::parse(&asked.url).map_err(|error| format!("`url` is not a URL: {error}"))?;
    if let Some(why) = refuse(&url, allow_private) {
        return Err(format!("`url`: {why}"));
    }
    Secret::parse(&asked.secret).map_err(|why| format!("`secret`: {why}"))?;
    if asked.events.is_empty() {
        return Err(format!(
            "`events` names at least one of {}",
            EVENTS.join(", ")
        ));
    }
    let mut events = BTreeSet::new();
    for event in asked.events {
        if !EVENTS.contains(&event.as_str()) {
            return Err(format!(
                "`events`: {event:?} is not one of {}",
                EVENTS.join(", ")
            ));
        }
        events.insert(event);
    }
    let segments = match asked.segments {
        None => None,
        Some(names) if names.is_empty() => {
            return Err(
                "`segments` is empty; leave it out to receive every segment's messages".into(),
            );
        }
        Some(names) => {
            if let Some(bad) = names.iter().find(|name| !is_name(name)) {
                return Err(format!("`segments`: {bad:?} is not a segment name"));
            }
            Some(
                names
                    .into_iter()
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect(),
            )
        }
    };
    Ok(Target {
        url: asked.url,
        secret: asked.secret,
        events: events.into_iter().collect(),
        segments,
    })
}

#[utoipa::path(
    delete,
    path = "/api/v1/destinations/{name}",
    operation_id = "delete_destination",
    tag = "destinations",
    params(("name" = String, Path, description = "The destination's name",
        min_length = 1, max_length = 64, pattern = "^[a-z0-9][a-z0-9_-]*$")),
    security(("admin_token" = [])),
    responses(
        (status = 204, description = "Deleted, with its dead letters; deliveries stop within a second"),
        (status = 400, description = "The name is not a destination name", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No destination has this name, or this process has none (`destinations-unavailable`: the embedded mode, or the stream off)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
pub(super) async fn delete(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, Problem> {
    let destinations = available(&state)?;
    let name = destination_name(name)?;
    if !destinations
        .store
        .delete(&name)
        .await
        .map_err(unavailable)?
    {
        return Err(Problem::destination_not_found(&name));
    }
    state.metrics.destinations.forget(&name);
    tracing::info!(destination = %name, "destination deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/api/v1/destinations",
    operation_id = "list_destinations",
    tag = "destinations",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Every destination, by name", body = DestinationList),
        (status = 401, description = "Missing or wrong admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "This process has no destinations (`destinations-unavailable`): the embedded mode, or `activation.profile_updates` off", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
pub(super) async fn list(State(state): State<AppState>) -> Result<Json<DestinationList>, Problem> {
    let destinations = available(&state)?;
    let all = destinations.store.list().await.map_err(unavailable)?;
    Ok(Json(DestinationList {
        destinations: all.iter().map(body_of).collect(),
    }))
}

#[utoipa::path(
    get,
    path = "/api/v1/destinations/{name}",
    operation_id = "get_destination",
    tag = "destinations",
    params(("name" = String, Path, description = "The destination's name",
        min_length = 1, max_length = 64, pattern = "^[a-z0-9][a-z0-9_-]*$")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The destination: what it receives, its state and counters", body = DestinationBody),
        (status = 400, description = "The name is not a destination name", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No destination has this name, or this process has none (`destinations-unavailable`: the embedded mode, or the stream off)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
pub(super) async fn get_one(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<DestinationBody>, Problem> {
    let destinations = available(&state)?;
    let name = destination_name(name)?;
    let destination = find(destinations, &name).await?;
    Ok(Json(body_of(&destination)))
}

#[utoipa::path(
    get,
    path = "/api/v1/destinations/{name}/dead-letters",
    operation_id = "list_dead_letters",
    tag = "destinations",
    params(("name" = String, Path, description = "The destination's name",
        min_length = 1, max_length = 64, pattern = "^[a-z0-9][a-z0-9_-]*$"), PageQuery),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "One page of dead letters, oldest first", body = DeadLetterPage),
        (status = 400, description = "The name or the query is invalid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No destination has this name, or this process has none (`destinations-unavailable`: the embedded mode, or the stream off)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
pub(super) async fn dead_letters(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<DeadLetterPage>, Problem> {
    let destinations = available(&state)?;
    let name = destination_name(name)?;
    let Query(page) = query.map_err(|error| {
        Problem::invalid_destination(&format!(
            "the query takes `after` and `limit`: {}",
            error.body_text()
        ))
    })?;
    let limit = page.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(Problem::invalid_destination(&format!(
            "`limit` is 1 to {MAX_PAGE}, not {limit}"
        )));
    }
    find(destinations, &name).await?;
    let mut letters = destinations
        .store
        .dead_letters(&name, page.after.unwrap_or(0), limit + 1)
        .await
        .map_err(unavailable)?;
    let next = (letters.len() > limit).then(|| {
        letters.truncate(limit);
        letters.last().map_or(0, |letter| letter.id)
    });
    Ok(Json(DeadLetterPage {
        dead_letters: letters.into_iter().map(letter_of).collect(),
        next,
    }))
}

#[utoipa::path(
    post,
    path = "/api/v1/destinations/{name}/dead-letters/{id}/resend",
    operation_id = "resend_dead_letter",
    tag = "destinations",
    params(("name" = String, Path, description = "The destination's name",
        min_length = 1, max_length = 64, pattern = "^[a-z0-9][a-z0-9_-]*$"),
        ("id" = i64, Path, description = "The dead letter's id", minimum = 1)),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Sent (once, signed anew, same `webhook-id`) and acknowledged; the dead letter is gone", body = Resent),
        (status = 400, description = "The name or the id is invalid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such destination or dead letter, or this process has no destinations (`destinations-unavailable`)", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The receiver did not acknowledge it; the dead letter is kept", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
pub(super) async fn resend(
    State(state): State<AppState>,
    path: Result<Path<(String, i64)>, PathRejection>,
) -> Result<Json<Resent>, Problem> {
    let destinations = available(&state)?;
    let Path((name, id)) =
        path.map_err(|error| Problem::invalid_destination(&error.body_text()))?;
    if !is_name(&name) {
        return Err(not_a_name(&name));
    }
    let destination = find(destinations, &name).await?;
    let letter = destinations
        .store
        .dead_letter_by_id(&name, id)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| Problem::dead_letter_not_found(&name, id))?;
    let (outcome, took) = destinations
        .sender
        .send(
            &destination.target.url,
            &destination.signing_secrets(now_ms()),
            &letter.webhook_id,
            &letter.body,
        )
        .await;
    state.metrics.destinations.latency(&name, took);
    match outcome {
        Outcome::Delivered => {
            state
                .metrics
                .destinations
                .sent(&name, u64::from(letter.messages));
            destinations
                .store
                .forget_dead_letter(&name, id)
                .await
                .map_err(unavailable)?;
            tracing::info!(destination = %name, dead_letter = id, "dead letter sent again and acknowledged");
            Ok(Json(Resent {
                delivered: true,
                webhook_id: letter.webhook_id,
            }))
        }
        Outcome::Gone => Err(Problem::delivery_failed(
            "the receiver answered 410 Gone; the dead letter is kept",
        )),
        Outcome::Failed { reason, .. } => Err(Problem::delivery_failed(&format!(
            "{reason}; the dead letter is kept"
        ))),
    }
}

fn available(state: &AppState) -> Result<&Destinations, Problem> {
    state
        .destinations
        .as_ref()
        .ok_or_else(Problem::destinations_unavailable)
}

async fn find(destinations: &Destinations, name: &str) -> Result<Destination, Problem> {
    destinations
        .store
        .get(name)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| Problem::destination_not_found(name))
}

fn destination_name(name: Result<Path<String>, PathRejection>) -> Result<String, Problem> {
    let Path(name) = name.map_err(|error| Problem::invalid_destination(&error.body_text()))?;
    if !is_name(&name) {
        return Err(not_a_name(&name));
    }
    Ok(name)
}

fn not_a_name(name: &str) -> Problem {
    Problem::invalid_destination(&format!(
        "{name:?} is not a destination name: 1 to 64 of a-z, 0-9, - and _, starting with a \
         letter or digit"
    ))
}

fn body_of(destination: &Destination) -> DestinationBody {
    let counters = &destination.counters;
    let now = now_ms();
    DestinationBody {
        name: destination.name.clone(),
        url: destination.target.url.clone(),
        events: destination.target.events.clone(),
        segments: destination.target.segments.clone(),
        state: if destination.disabled.is_some() {
            "disabled"
        } else {
            "enabled"
        },
        disabled_reason: destination
            .disabled
            .as_ref()
            .map(|(reason, _)| reason.clone()),
        previous_secret_until: destination
            .previous_secret
            .as_ref()
            .filter(|(_, until)| *until > now)
            .map(|(_, until)| format_millis(*until)),
        created_at: format_millis(destination.created_at_ms),
        updated_at: format_millis(destination.updated_at_ms),
        counters: CountersBody {
            sent: counters.sent,
            failed: counters.failed,
            retried: counters.retried,
            dead_letters: counters.dead_lettered,
            last_sent_at: counters.last_sent_at_ms.map(format_millis),
            last_error: counters.last_error.as_ref().map(|(error, _)| error.clone()),
            last_error_at: counters
                .last_error
                .as_ref()
                .map(|(_, at)| format_millis(*at)),
        },
    }
}

fn letter_of(letter: DeadLetter) -> DeadLetterBody {
    DeadLetterBody {
        id: letter.id,
        body: serde_json::from_str(&letter.body).unwrap_or(serde_json::Value::String(letter.body)),
        webhook_id: letter.webhook_id,
        messages: letter.messages,
        attempts: letter.attempts,
        last_error: letter.last_error,
        created_at: format_millis(letter.created_at_ms),
    }
}

fn unavailable(error: StoreError) -> Problem {
    tracing::warn!("a destination route's store call failed: {:#}", error.0);
    Problem::unavailable("the store did not answer; try again")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(
        url: &str,
        secret: &str,
        events: &[&str],
        segments: Option<&[&str]>,
    ) -> NewDestination {
        NewDestination {
            url: url.to_owned(),
            secret: secret.to_owned(),
            events: events.iter().map(|e| (*e).to_owned()).collect(),
            segments: segments.map(|s| s.iter().map(|n| (*n).to_owned()).collect()),
        }
    }

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn a_definition_is_normalised() {
        let target = check(
            asked(
                "https://hooks.example.com/in",
                SECRET,
                &[SEGMENT_EXITED, SEGMENT_ENTERED, SEGMENT_EXITED],
                Some(&["b", "a", "b"]),
            ),
            false,
        )
        .expect("valid");
        assert_eq!(target.events, [SEGMENT_ENTERED, SEGMENT_EXITED]);
        assert_eq!(target.segments, Some(vec!["a".to_owned(), "b".to_owned()]));
    }

    #[test]
    fn each_fault_is_named() {
        let https = "https://hooks.example.com/in";
        for (definition, says) in [
            (
                asked("not a url", SECRET, &[PROFILE_UPDATED], None),
                "`url` is not a URL",
            ),
            (
                asked("http://10.0.0.8/in", SECRET, &[PROFILE_UPDATED], None),
                "allow_private_networks",
            ),
            (
                asked("http://localhost:8080/in", SECRET, &[PROFILE_UPDATED], None),
                "allow_private_networks",
            ),
            (
                asked("file:///etc/passwd", SECRET, &[PROFILE_UPDATED], None),
                "http or https",
            ),
            (
                asked(https, "hunter2", &[PROFILE_UPDATED], None),
                "`secret`",
            ),
            (asked(https, SECRET, &[], None), "at least one"),
            (
                asked(https, SECRET, &["profile.deleted"], None),
                "not one of",
            ),
            (
                asked(https, SECRET, &[SEGMENT_ENTERED], Some(&[])),
                "leave it out",
            ),
            (
                asked(https, SECRET, &[SEGMENT_ENTERED], Some(&["Bad Name"])),
                "not a segment name",
            ),
        ] {
            let error = check(definition, false).expect_err(says);
            assert!(error.contains(says), "{says}: {error}");
        }
        let loopback = asked("http://127.0.0.1:9000/in", SECRET, &[PROFILE_UPDATED], None);
        assert!(check(loopback, true).is_ok(), "allowed by configuration");
    }
}
