//! The privacy routes: the token, what a request must hold, and its status.

use super::*;
use crate::api::problem::types;

const TOKEN: &str = "0123456789abcdef-token";

fn call(method: &str, uri: &str, body: &str, token: Option<&str>) -> Request<Body> {
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header(CONTENT_TYPE, "application/json");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    request
        .body(Body::from(body.to_owned()))
        .expect("a request")
}

fn app() -> (Router, Arc<fakes::FakePrivacy>) {
    let fakes = Fakes {
        admin_token: Some(AdminToken::new(TOKEN)),
        ..Fakes::default()
    };
    let privacy = fakes.privacy.clone();
    (fakes.app(), privacy)
}

#[tokio::test]
async fn a_request_is_accepted_with_its_id_and_read_back() {
    let (app, privacy) = app();
    let body = r#"{"type": "delete", "identifiers": [
        {"type": "user_id", "value": "u42"}, {"type": "anonymous_id", "value": "a1"}]}"#;
    let reply = send(
        &app,
        call("POST", "/api/v1/privacy/requests", body, Some(TOKEN)),
    )
    .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    let accepted = reply.json();
    assert_eq!(accepted["id"], 1);
    assert_eq!(accepted["type"], "delete");
    assert_eq!(accepted["status"], "pending");
    assert_eq!(accepted["actor"], "admin");
    assert_eq!(accepted["identifiers"][1]["value"], "a1");
    assert_eq!(reply.headers["location"], "/api/v1/privacy/requests/1");
    // The store got the home keys.
    let stored = privacy.0.lock().expect("unpoisoned")[0].clone();
    assert_eq!(
        stored.keys,
        vec![
            "u42".to_owned(),
            crate::model::identity::home_key("anonymous_id", "a1")
        ]
    );

    let reply = send(
        &app,
        call("GET", "/api/v1/privacy/requests/1", "", Some(TOKEN)),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.json()["type"], "delete");
    let reply = send(
        &app,
        call("GET", "/api/v1/privacy/requests/7", "", Some(TOKEN)),
    )
    .await;
    reply.problem(
        StatusCode::NOT_FOUND,
        types::PRIVACY_REQUEST_NOT_FOUND,
        "/api/v1/privacy/requests/7",
    );
    let reply = send(
        &app,
        call("GET", "/api/v1/privacy/requests/x", "", Some(TOKEN)),
    )
    .await;
    reply.problem(
        StatusCode::BAD_REQUEST,
        types::INVALID_PRIVACY_REQUEST,
        "/api/v1/privacy/requests/x",
    );
}

#[tokio::test]
async fn bad_requests_are_refused_and_nothing_is_stored() {
    let (app, privacy) = app();
    for (body, says) in [
        ("{", "not a privacy request"),
        (
            r#"{"type": "erase", "identifiers": [{"type": "user_id", "value": "u1"}]}"#,
            "erase",
        ),
        (r#"{"type": "delete", "identifiers": []}"#, "1 to 100"),
        (r#"{"type": "delete"}"#, "identifiers"),
        (
            r#"{"type": "delete", "identifiers": [{"type": "email", "value": "x"}]}"#,
            "unknown identifier type",
        ),
        (
            r#"{"type": "delete", "identifiers": [{"type": "user_id", "value": ""}]}"#,
            "must not be empty",
        ),
        (
            r#"{"type": "delete", "identifiers": [{"type": "user_id", "value": "undefined"}]}"#,
            "blocked",
        ),
        (
            r#"{"type": "delete", "identifiers": [{"type": "user_id", "value": "u1", "x": 1}]}"#,
            "unknown field",
        ),
    ] {
        let reply = send(
            &app,
            call("POST", "/api/v1/privacy/requests", body, Some(TOKEN)),
        )
        .await;
        let problem = reply.problem(
            StatusCode::BAD_REQUEST,
            types::INVALID_PRIVACY_REQUEST,
            "/api/v1/privacy/requests",
        );
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(says), "{body}: {detail}");
    }
    let many: Vec<String> = (0..101)
        .map(|i| format!(r#"{{"type": "user_id", "value": "u{i}"}}"#))
        .collect();
    let body = format!(
        r#"{{"type": "export", "identifiers": [{}]}}"#,
        many.join(",")
    );
    let reply = send(
        &app,
        call("POST", "/api/v1/privacy/requests", &body, Some(TOKEN)),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(privacy.0.lock().expect("unpoisoned").is_empty());
}

#[tokio::test]
async fn privacy_routes_need_the_admin_token() {
    let (app, privacy) = app();
    let body = r#"{"type": "suppress", "identifiers": [{"type": "user_id", "value": "u1"}]}"#;
    for token in [None, Some("wrong-token-0123456789")] {
        let reply = send(&app, call("POST", "/api/v1/privacy/requests", body, token)).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        let reply = send(&app, call("GET", "/api/v1/privacy/requests/1", "", token)).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    }
    assert!(privacy.0.lock().expect("unpoisoned").is_empty());
    // Without an admin token there are no privacy routes.
    let app = Fakes::default().app();
    let reply = send(
        &app,
        call("POST", "/api/v1/privacy/requests", body, Some(TOKEN)),
    )
    .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
}
