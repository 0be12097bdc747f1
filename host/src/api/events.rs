//! `POST /api/v1/events`: ingest one event, or an array of them, all or
//! nothing.
//!
//! Every event is checked against the wire format (contract §3) before any is
//! published, so a request is either refused whole, with the reasons, or
//! handed whole to the publisher, each event as the exact JSON text the
//! client sent.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use serde::Serialize;
use serde_json::value::RawValue;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{
    AllOfBuilder, AnyOfBuilder, ArrayBuilder, ObjectBuilder, OneOfBuilder, Ref, Schema, Type,
};
use utoipa::{PartialSchema, ToSchema};

use super::{ApiLimits, AppState, EventFailure, Problem};
use crate::model::event::Event;
use crate::pipeline::publish::OutgoingEvent;

/// Most refused events listed in one problem.
const MAX_LISTED_FAILURES: usize = 20;

/// The answer to an accepted request.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Accepted {
    /// How many events were accepted.
    pub accepted: usize,
}

#[utoipa::path(
    post,
    path = "/api/v1/events",
    operation_id = "ingest_events",
    tag = "events",
    request_body(content = EventsBody, content_type = "application/json",
        description = "One event, or an array of events"),
    responses(
        (status = 202, description = "Every event was accepted, in request order", body = Accepted),
        (status = 400, description = "The body is not JSON, holds no events, or some events break the wire format (then nothing is accepted)",
            body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body or the number of events is over the limit", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not `application/json`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The event log is unavailable", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
pub(super) async fn ingest(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Accepted>), Problem> {
    check_content_type(&headers)?;
    let elements = split(&body)?;
    if elements.is_empty() {
        return Err(Problem::invalid_events(
            "the request holds no events",
            Vec::new(),
        ));
    }
    let max = state.limits.max_events_per_request;
    if elements.len() > max {
        return Err(Problem::too_many_events(elements.len(), max));
    }
    let events = validate(&elements)?;
    if let Err(error) = state.publisher.publish(&events).await {
        tracing::warn!(
            events = events.len(),
            error = format!("{error:#}"),
            "publishing ingested events failed"
        );
        return Err(Problem::unavailable(
            "the event log did not acknowledge the events; retry shortly",
        ));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            accepted: events.len(),
        }),
    ))
}

/// `application/json`, or a `+json` type; parameters (`charset`) aside.
pub(super) fn check_content_type(headers: &HeaderMap) -> Result<(), Problem> {
    let unsupported = |detail: &str| Problem::status(StatusCode::UNSUPPORTED_MEDIA_TYPE, detail);
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return Err(unsupported(
            "the body must be application/json; the request has no Content-Type",
        ));
    };
    let essence = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
    {
        Ok(())
    } else {
        Err(unsupported(&format!(
            "the body must be application/json, not {}",
            value.to_str().unwrap_or("an unreadable Content-Type")
        )))
    }
}

/// The body's events as their JSON texts: the elements of an array, or the
/// whole body when it is anything else.
fn split(body: &[u8]) -> Result<Vec<Box<RawValue>>, Problem> {
    let is_array = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    let parsed = if is_array {
        serde_json::from_slice::<Vec<Box<RawValue>>>(body)
    } else {
        serde_json::from_slice::<Box<RawValue>>(body).map(|one| vec![one])
    };
    parsed.map_err(|e| Problem::invalid_json(&format!("the body is not valid JSON: {e}")))
}

/// Checks every element; the events to publish, or a problem listing the
/// first refused ones.
fn validate(elements: &[Box<RawValue>]) -> Result<Vec<OutgoingEvent>, Problem> {
    let mut events = Vec::with_capacity(elements.len());
    let mut failures = Vec::new();
    let mut refused = 0;
    for (index, element) in elements.iter().enumerate() {
        let text = element.get();
        // The id a producer left out is derived where the event is consumed
        // (from its log position); here only the other rules matter.
        match Event::from_json(text.as_bytes(), String::new) {
            Ok(event) => events.push(OutgoingEvent {
                key: event.user_id,
                payload: text.as_bytes().to_vec(),
            }),
            Err(error) => {
                refused += 1;
                if failures.len() < MAX_LISTED_FAILURES {
                    failures.push(EventFailure {
                        index,
                        detail: error.to_string(),
                    });
                }
            }
        }
    }
    if refused == 0 {
        return Ok(events);
    }
    let detail = format!(
        "{refused} of {} events break the wire format; none was accepted",
        elements.len()
    );
    Err(Problem::invalid_events(&detail, failures))
}

/// The request body: one event, or an array of 1 to
/// [`ApiLimits::DEFAULT_MAX_EVENTS_PER_REQUEST`] events (written by hand:
/// the derive cannot bound the items of a variant).
pub(super) struct EventsBody;

impl utoipa::PartialSchema for EventsBody {
    fn schema() -> RefOr<Schema> {
        let event = || Ref::from_schema_name(WireEvent::name());
        OneOfBuilder::new()
            .item(event())
            .item(
                ArrayBuilder::new()
                    .items(event())
                    .min_items(Some(1))
                    .max_items(Some(ApiLimits::DEFAULT_MAX_EVENTS_PER_REQUEST)),
            )
            .description(Some(format!(
                "One event, or an array of 1 to {} events",
                ApiLimits::DEFAULT_MAX_EVENTS_PER_REQUEST
            )))
            .into()
    }
}

impl ToSchema for EventsBody {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        // An event needs a `user_id` or an `anonymous_id`, or both.
        // (Present and a string: `null` counts as absent.)
        let needs = |field: &str| {
            ObjectBuilder::new()
                .property(field, ObjectBuilder::new().schema_type(Type::String))
                .required(field)
        };
        let event = AllOfBuilder::new().item(WireEvent::schema()).item(
            AnyOfBuilder::new()
                .item(needs("user_id"))
                .item(needs("anonymous_id")),
        );
        schemas.push((WireEvent::name().into(), event.into()));
        WireEvent::schemas(schemas);
    }
}

/// One event on the wire (contract §3).
#[derive(ToSchema)]
#[expect(dead_code, reason = "describes the JSON `ingest` reads as raw text")]
#[schema(as = Event, example = json!({
    "event_id": "0b9e2c56-8f7d-4c1e-9a43-2f1c7d3e5a10",
    "user_id": "u-42",
    "event_type": "page_view",
    "timestamp": "2026-11-29T22:00:00.123Z",
    "user_agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)",
    "url": "https://shop.example/products/7",
    "properties": {"referrer": "https://search.example/"}
}))]
pub(super) struct WireEvent {
    /// Unique id of the event; strongly recommended. When missing, the host
    /// derives a stable one from the event's position in the log. At most
    /// 256 bytes of UTF-8, no NUL.
    #[schema(min_length = 1, max_length = 256, pattern = "^[^\\u0000]+$")]
    event_id: Option<String>,
    /// The known user the event belongs to; becomes the message key. At
    /// most 256 bytes of UTF-8, no NUL. An event needs a `user_id`, an
    /// `anonymous_id`, or both (which links them: docs/identity.md).
    #[schema(min_length = 1, max_length = 256, pattern = "^[^\\u0000]+$")]
    user_id: Option<String>,
    /// The device or session before the user is known; the message key when
    /// there is no `user_id`. The same rules as `user_id`.
    #[schema(min_length = 1, max_length = 256, pattern = "^[^\\u0000]+$")]
    anonymous_id: Option<String>,
    /// An earlier `user_id` of the same person (an `alias` event): linked
    /// to this event's profile. The same rules as `user_id`.
    #[schema(min_length = 1, max_length = 256, pattern = "^[^\\u0000]+$")]
    previous_id: Option<String>,
    /// What happened: `page_view`, `click`, `purchase`, ... At most 256
    /// bytes of UTF-8, no NUL.
    #[schema(min_length = 1, max_length = 256, pattern = "^[^\\u0000]+$")]
    event_type: String,
    timestamp: EventTime,
    user_agent: Option<String>,
    url: Option<String>,
    /// Any other properties of the event.
    #[schema(value_type = Option<Object>)]
    properties: Option<serde_json::Value>,
}

/// When the event happened: RFC 3339 text or integer milliseconds since the
/// Unix epoch.
#[derive(ToSchema)]
#[expect(dead_code, reason = "describes the JSON `ingest` reads as raw text")]
#[serde(untagged)]
pub(super) enum EventTime {
    #[schema(format = DateTime)]
    Text(String),
    Millis(i64),
}
