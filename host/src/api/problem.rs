//! Errors as RFC 9457 problem details (`application/problem+json`).
//!
//! Handlers answer every error with a [`Problem`]. The [`finish`] middleware,
//! around the whole router, fills in `instance` with the request path, and
//! turns the errors that axum and tower-http answer on their own, in plain
//! text or with no body at all (unknown method, body limit, timeout, extractor
//! rejections), into problems as well, so a client meets one error format.

use axum::extract::{Request, State};
use axum::http::header::{ALLOW, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::ApiLimits;

pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// The problem types of this API beyond what a status code says. They are tag
/// URIs (RFC 4151), which RFC 9457 suggests for types that need not resolve.
pub(super) mod types {
    pub const INVALID_USER_ID: &str = "tag:pulsehub,2026:problem:invalid-user-id";
    pub const INVALID_IDENTIFIER: &str = "tag:pulsehub,2026:problem:invalid-identifier";
    pub const PROFILE_NOT_FOUND: &str = "tag:pulsehub,2026:problem:profile-not-found";
    pub const PLUGIN_NOT_FOUND: &str = "tag:pulsehub,2026:problem:plugin-not-found";
    pub const INVALID_JSON: &str = "tag:pulsehub,2026:problem:invalid-json";
    pub const INVALID_EVENTS: &str = "tag:pulsehub,2026:problem:invalid-events";
    pub const TOO_MANY_EVENTS: &str = "tag:pulsehub,2026:problem:too-many-events";
    pub const BACKEND_UNAVAILABLE: &str = "tag:pulsehub,2026:problem:backend-unavailable";
    pub const TIMEOUT: &str = "tag:pulsehub,2026:problem:timeout";
    pub const UNAUTHORIZED: &str = "tag:pulsehub,2026:problem:unauthorized";
    pub const INVALID_UPLOAD: &str = "tag:pulsehub,2026:problem:invalid-upload";
    pub const PLUGIN_REFUSED: &str = "tag:pulsehub,2026:problem:plugin-refused";
    pub const OWNERSHIP_CLASH: &str = "tag:pulsehub,2026:problem:ownership-clash";
    pub const PLUGIN_CONFLICT: &str = "tag:pulsehub,2026:problem:plugin-conflict";
    pub const INVALID_PRIVACY_REQUEST: &str = "tag:pulsehub,2026:problem:invalid-privacy-request";
    pub const PRIVACY_REQUEST_NOT_FOUND: &str =
        "tag:pulsehub,2026:problem:privacy-request-not-found";
    pub const INVALID_SEGMENT: &str = "tag:pulsehub,2026:problem:invalid-segment";
    pub const SEGMENT_NOT_FOUND: &str = "tag:pulsehub,2026:problem:segment-not-found";
    pub const INVALID_DESTINATION: &str = "tag:pulsehub,2026:problem:invalid-destination";
    pub const DESTINATION_NOT_FOUND: &str = "tag:pulsehub,2026:problem:destination-not-found";
    pub const DEAD_LETTER_NOT_FOUND: &str = "tag:pulsehub,2026:problem:dead-letter-not-found";
    pub const DESTINATIONS_UNAVAILABLE: &str = "tag:pulsehub,2026:problem:destinations-unavailable";
    pub const DELIVERY_FAILED: &str = "tag:pulsehub,2026:problem:delivery-failed";
    pub const INVALID_STREAM_QUERY: &str = "tag:pulsehub,2026:problem:invalid-stream-query";
    pub const STREAM_UNAVAILABLE: &str = "tag:pulsehub,2026:problem:stream-unavailable";
}

/// Longest `detail` text; the rest is cut so that an error never echoes a
/// whole request body back.
const MAX_DETAIL_BYTES: usize = 300;

/// Longest `detail` of a refused plugin: compiler and linker messages are
/// long, and the operator needs them whole.
const MAX_PLUGIN_DETAIL_BYTES: usize = 2_000;

/// How long the client should wait before retrying after a 503, in seconds.
const RETRY_AFTER_SECONDS: u16 = 1;

/// An error answer (RFC 9457).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[schema(example = json!({
    "type": "tag:pulsehub,2026:problem:profile-not-found",
    "title": "Profile not found",
    "status": 404,
    "detail": "no profile for user u-42",
    "instance": "/api/v1/profiles/u-42"
}))]
pub struct Problem {
    /// A URI naming the kind of problem; `about:blank` when the status code
    /// says all there is to say.
    #[serde(rename = "type")]
    pub type_uri: &'static str,
    /// A short summary of the problem type.
    pub title: &'static str,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong with this request, on one line.
    pub detail: String,
    /// The path of the request that failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub instance: Option<String>,
    /// For `invalid-events`: the first events that were refused, by their
    /// position in the request.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<EventFailure>,
    /// For `invalid-segment`: where in the definition the fault is.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub position: Option<Box<FaultPosition>>,
    /// Sent as the `Retry-After` header.
    #[serde(skip)]
    pub retry_after_seconds: Option<u16>,
}

/// One refused event of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct EventFailure {
    /// Position of the event in the request (0 for a single object).
    pub index: usize,
    /// Why it was refused.
    pub detail: String,
}

/// Where in a segment definition a fault is: a line and column (from 1) of
/// a CEL expression, or the JSON pointer (RFC 6901) of a node of a JSON
/// tree, from the root of the request body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FaultPosition {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, minimum = 1)]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, minimum = 1)]
    pub column: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub pointer: Option<String>,
}

impl Problem {
    fn new(status: StatusCode, type_uri: &'static str, title: &'static str, detail: &str) -> Self {
        Self {
            type_uri,
            title,
            status: status.as_u16(),
            detail: one_line(detail),
            instance: None,
            errors: Vec::new(),
            position: None,
            retry_after_seconds: None,
        }
    }

    /// A problem the status code describes fully (`type` is `about:blank`).
    pub fn status(status: StatusCode, detail: &str) -> Self {
        let title = status.canonical_reason().unwrap_or("Error");
        Self::new(status, "about:blank", title, detail)
    }

    pub fn invalid_user_id(detail: &str) -> Self {
        let status = StatusCode::BAD_REQUEST;
        Self::new(status, types::INVALID_USER_ID, "Invalid user id", detail)
    }

    pub fn invalid_identifier(detail: &str) -> Self {
        let status = StatusCode::BAD_REQUEST;
        Self::new(
            status,
            types::INVALID_IDENTIFIER,
            "Invalid identifier",
            detail,
        )
    }

    pub fn profile_not_found(user_id: &str) -> Self {
        let detail = format!("no profile for user {user_id}");
        let status = StatusCode::NOT_FOUND;
        Self::new(
            status,
            types::PROFILE_NOT_FOUND,
            "Profile not found",
            &detail,
        )
    }

    pub fn plugin_not_found(name: &str) -> Self {
        let detail = format!("no plugin named {name} is loaded");
        let status = StatusCode::NOT_FOUND;
        Self::new(status, types::PLUGIN_NOT_FOUND, "Plugin not found", &detail)
    }

    /// The admin routes need `Authorization: Bearer <token>`.
    pub fn unauthorized(detail: &str) -> Self {
        let status = StatusCode::UNAUTHORIZED;
        Self::new(status, types::UNAUTHORIZED, "Unauthorized", detail)
    }

    /// An upload that is not a well-formed multipart plugin package.
    pub fn invalid_upload(detail: &str) -> Self {
        let status = StatusCode::BAD_REQUEST;
        Self::new(status, types::INVALID_UPLOAD, "Invalid upload", detail)
    }

    /// A plugin version the host refused, and why; nothing that runs changed.
    pub fn plugin_refused(status: StatusCode, detail: &str) -> Self {
        let mut problem = Self::new(status, types::PLUGIN_REFUSED, "Plugin refused", "");
        problem.detail = first_line(detail, MAX_PLUGIN_DETAIL_BYTES);
        problem
    }

    pub fn ownership_clash(detail: &str) -> Self {
        let status = StatusCode::CONFLICT;
        Self::new(
            status,
            types::OWNERSHIP_CLASH,
            "Attribute already owned",
            detail,
        )
    }

    /// The action does not apply to the plugin's state (no earlier version,
    /// not quarantined).
    pub fn plugin_conflict(detail: &str) -> Self {
        let status = StatusCode::CONFLICT;
        Self::new(
            status,
            types::PLUGIN_CONFLICT,
            "Plugin state conflict",
            detail,
        )
    }

    pub fn invalid_privacy_request(detail: &str) -> Self {
        let status = StatusCode::BAD_REQUEST;
        Self::new(
            status,
            types::INVALID_PRIVACY_REQUEST,
            "Invalid privacy request",
            detail,
        )
    }

    pub fn privacy_request_not_found(id: i64) -> Self {
        let detail = format!("no privacy request has id {id}");
        let status = StatusCode::NOT_FOUND;
        Self::new(
            status,
            types::PRIVACY_REQUEST_NOT_FOUND,
            "Privacy request not found",
            &detail,
        )
    }

    /// A segment definition that is not one, with where the fault is when
    /// it is in the condition.
    pub fn invalid_segment(detail: &str, position: Option<FaultPosition>) -> Self {
        let status = StatusCode::BAD_REQUEST;
        let mut problem = Self::new(status, types::INVALID_SEGMENT, "Invalid segment", detail);
        problem.position = position.map(Box::new);
        problem
    }

    pub fn segment_not_found(name: &str) -> Self {
        let detail = format!("no segment is named {name}");
        let status = StatusCode::NOT_FOUND;
        Self::new(
            status,
            types::SEGMENT_NOT_FOUND,
            "Segment not found",
            &detail,
        )
    }

    pub fn invalid_destination(detail: &str) -> Self {
        let status = StatusCode::BAD_REQUEST;
        Self::new(
            status,
            types::INVALID_DESTINATION,
            "Invalid destination",
            detail,
        )
    }

    /// A position or option of `GET /api/v1/profile-updates` that is not one.
    pub fn invalid_stream_query(detail: &str) -> Self {
        let status = StatusCode::BAD_REQUEST;
        Self::new(
            status,
            types::INVALID_STREAM_QUERY,
            "Invalid stream query",
            detail,
        )
    }

    pub fn destination_not_found(name: &str) -> Self {
        let detail = format!("no destination is named {name}");
        let status = StatusCode::NOT_FOUND;
        Self::new(
            status,
            types::DESTINATION_NOT_FOUND,
            "Destination not found",
            &detail,
        )
    }

    pub fn dead_letter_not_found(name: &str, id: i64) -> Self {
        let detail = format!("destination {name} has no dead letter {id}");
        let status = StatusCode::NOT_FOUND;
        Self::new(
            status,
            types::DEAD_LETTER_NOT_FOUND,
            "Dead letter not found",
            &detail,
        )
    }

    pub fn destinations_unavailable() -> Self {
        // Not found rather than 501: in this process there are no
        // destinations to find.
        let status = StatusCode::NOT_FOUND;
        Self::new(
            status,
            types::DESTINATIONS_UNAVAILABLE,
            "Destinations unavailable",
            "destinations receive the profile-updates stream, which needs the services mode \
             (PostgreSQL and Kafka) with `activation.profile_updates` on",
        )
    }

    pub fn delivery_failed(detail: &str) -> Self {
        let status = StatusCode::BAD_GATEWAY;
        Self::new(status, types::DELIVERY_FAILED, "Delivery failed", detail)
    }

    /// This process does not serve the `profile-updates` stream; `detail`
    /// says where it is, if anywhere.
    pub fn stream_unavailable(detail: &str) -> Self {
        let status = StatusCode::NOT_IMPLEMENTED;
        Self::new(
            status,
            types::STREAM_UNAVAILABLE,
            "Stream not served here",
            detail,
        )
    }

    pub fn invalid_json(detail: &str) -> Self {
        let status = StatusCode::BAD_REQUEST;
        Self::new(status, types::INVALID_JSON, "Invalid JSON", detail)
    }

    /// Some events of a request broke the wire format; `errors` lists them.
    pub fn invalid_events(detail: &str, errors: Vec<EventFailure>) -> Self {
        let status = StatusCode::BAD_REQUEST;
        let mut problem = Self::new(status, types::INVALID_EVENTS, "Invalid events", detail);
        problem.errors = errors
            .into_iter()
            .map(|e| EventFailure {
                index: e.index,
                detail: one_line(&e.detail),
            })
            .collect();
        problem
    }

    pub fn too_many_events(count: usize, max: usize) -> Self {
        let detail = format!("the request holds {count} events; at most {max} are accepted");
        let status = StatusCode::PAYLOAD_TOO_LARGE;
        Self::new(status, types::TOO_MANY_EVENTS, "Too many events", &detail)
    }

    /// A backend the request needs did not answer; worth retrying shortly.
    pub fn unavailable(detail: &str) -> Self {
        let status = StatusCode::SERVICE_UNAVAILABLE;
        let mut problem = Self::new(
            status,
            types::BACKEND_UNAVAILABLE,
            "Backend unavailable",
            detail,
        );
        problem.retry_after_seconds = Some(RETRY_AFTER_SECONDS);
        problem
    }

    fn timeout(limit: std::time::Duration) -> Self {
        let detail = format!(
            "the request did not complete within {} ms",
            limit.as_millis()
        );
        let status = StatusCode::SERVICE_UNAVAILABLE;
        let mut problem = Self::new(status, types::TIMEOUT, "Request timed out", &detail);
        problem.retry_after_seconds = Some(RETRY_AFTER_SECONDS);
        problem
    }

    fn http_status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = match serde_json::to_vec(&self) {
            Ok(body) => body,
            // Cannot happen for this plain struct; still answer the status.
            Err(_) => format!(r#"{{"type":"about:blank","status":{}}}"#, self.status).into_bytes(),
        };
        let mut response = (self.http_status(), body).into_response();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_CONTENT_TYPE));
        if let Some(seconds) = self.retry_after_seconds {
            headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        // Kept so that `finish` can add the request path.
        response.extensions_mut().insert(self);
        response
    }
}

/// The fallback for paths no route matches.
pub(super) async fn route_not_found(method: Method, uri: axum::http::Uri) -> Problem {
    Problem::status(
        StatusCode::NOT_FOUND,
        &format!("no resource at {method} {}", uri.path()),
    )
}

/// Middleware: every error leaves as a problem naming the request path.
pub(super) async fn finish(
    State(limits): State<ApiLimits>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    let mut response = next.run(request).await;
    if let Some(mut problem) = response.extensions_mut().remove::<Problem>() {
        problem.instance = Some(path);
        let challenge = response.headers().get(WWW_AUTHENTICATE).cloned();
        let mut response = problem.into_response();
        if let Some(challenge) = challenge {
            response.headers_mut().insert(WWW_AUTHENTICATE, challenge);
        }
        return response;
    }
    if !is_plain_error(&response) {
        return response;
    }
    let (parts, body) = response.into_parts();
    // Plain-text rejections are one short sentence; anything longer than a
    // few KiB is not one, and gives way to the status's reason phrase.
    let text = axum::body::to_bytes(body, 4 * 1024)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
        .unwrap_or_default();
    let allow = parts.headers.get(ALLOW).cloned();
    // Plugin changes have their own, larger limits.
    let admin = method != Method::GET && path.starts_with("/api/v1/plugins/");
    let mut problem = match parts.status {
        StatusCode::METHOD_NOT_ALLOWED => {
            let allowed = allow
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
                .unwrap_or("none");
            let detail = format!("{method} is not allowed on {path}; allowed: {allowed}");
            Problem::status(parts.status, &detail)
        }
        StatusCode::PAYLOAD_TOO_LARGE => {
            let limit = if admin {
                limits.max_upload_bytes
            } else {
                limits.max_body_bytes
            };
            let detail = format!("the request body is larger than the limit of {limit} bytes");
            Problem::status(parts.status, &detail)
        }
        // Every 503 of the handlers is a problem already: a bare one comes
        // from the timeout layer.
        StatusCode::SERVICE_UNAVAILABLE if text.is_empty() => Problem::timeout(if admin {
            limits.admin_timeout
        } else {
            limits.timeout
        }),
        status if text.is_empty() => {
            Problem::status(status, status.canonical_reason().unwrap_or("error"))
        }
        status => Problem::status(status, &text),
    };
    problem.instance = Some(path);
    let mut response = problem.into_response();
    if let Some(allow) = allow {
        response.headers_mut().insert(ALLOW, allow);
    }
    response
}

/// An error answer in plain text or without a body, which axum and tower-http
/// produce on their own. JSON answers (a problem, the `/readyz` report) pass.
fn is_plain_error(response: &Response) -> bool {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return false;
    }
    match response.headers().get(CONTENT_TYPE) {
        None => true,
        Some(value) => value
            .to_str()
            .map(|v| v.starts_with("text/plain"))
            .unwrap_or(true),
    }
}

/// The first line of `text`, at most [`MAX_DETAIL_BYTES`] long: error
/// messages are shown whole, chains and echoed input are not.
pub(super) fn one_line(text: &str) -> String {
    first_line(text, MAX_DETAIL_BYTES)
}

fn first_line(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or("").trim_end();
    if line.len() <= max && line.len() == text.trim_end().len() {
        return line.to_owned();
    }
    let mut cut = line.len().min(max);
    while !line.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &line[..cut])
}
