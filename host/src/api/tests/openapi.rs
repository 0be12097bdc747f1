//! The OpenAPI document against the router: every documented operation is
//! routed, admin operations only with a token, schemas match the bodies.

use std::collections::BTreeSet;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};

use super::routes::with_profile;
use super::{Fakes, get, send};
use crate::api::AdminToken;

#[tokio::test]
async fn the_openapi_document_covers_every_route() {
    let app = Fakes {
        admin_token: Some(AdminToken::new("0123456789abcdef-token")),
        ..with_profile()
    }
    .app();
    let reply = send(&app, get("/api/v1/openapi.json")).await;
    assert_eq!(reply.status, StatusCode::OK);
    let doc = reply.json();
    assert!(
        doc["openapi"].as_str().unwrap_or("").starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let paths: BTreeSet<&str> = doc["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .map(String::as_str)
        .collect();
    let routes = BTreeSet::from([
        "/api/v1/profiles/{user_id}",
        "/api/v1/profiles/by/{type}/{value}",
        "/api/v1/events",
        "/api/v1/plugins",
        "/api/v1/plugins/{name}",
        "/api/v1/plugins/{name}/rollback",
        "/api/v1/plugins/{name}/resume",
        "/api/v1/privacy/requests",
        "/api/v1/privacy/requests/{id}",
        "/api/v1/segments",
        "/api/v1/segments/{name}",
        "/api/v1/segments/{name}/members",
        "/api/v1/destinations",
        "/api/v1/destinations/{name}",
        "/api/v1/destinations/{name}/dead-letters",
        "/api/v1/destinations/{name}/dead-letters/{id}/resend",
        "/api/v1/profile-updates",
        "/api/v1/openapi.json",
        "/healthz",
        "/readyz",
        "/metrics",
    ]);
    assert_eq!(paths, routes);
    assert_every_operation_is_routed(&app, &doc).await;
    let upload = resolve(
        &doc,
        &doc["paths"]["/api/v1/plugins/{name}"]["put"]["requestBody"]["content"]["multipart/form-data"]
            ["schema"],
    );
    assert_eq!(
        upload["required"],
        serde_json::json!(["manifest", "component"]),
        "{upload}"
    );
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    for schema in [
        "Problem",
        "EventFailure",
        "Profile",
        "Attribute",
        "Event",
        "Plugin",
        "Readiness",
        "PrivacyRequest",
        "NewPrivacyRequest",
        "Segment",
        "NewSegment",
        "FaultPosition",
        "Destination",
        "NewDestination",
        "DestinationCounters",
        "DestinationDeadLetter",
    ] {
        assert!(
            schemas.contains_key(schema),
            "no {schema} schema: {:?}",
            schemas.keys()
        );
    }
    let stream = &doc["paths"]["/api/v1/profile-updates"]["get"];
    assert!(
        stream["responses"]["200"]["content"]
            .get("text/event-stream")
            .is_some(),
        "{stream}"
    );
    let parameters: Vec<&str> = stream["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .map(|p| p["name"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(parameters, ["after", "follow", "Last-Event-ID"]);
    let problem = &doc["paths"]["/api/v1/events"]["post"]["responses"]["400"]["content"];
    assert!(
        problem.get("application/problem+json").is_some(),
        "{problem}"
    );
}

/// Sends each documented operation (method and path) to `app`: none may be
/// answered as an unknown route (404 `about:blank`) or an unknown method (405).
async fn assert_every_operation_is_routed(app: &Router, doc: &serde_json::Value) {
    for (path, item) in doc["paths"].as_object().expect("paths") {
        let uri = path.replace("{user_id}", "u-42").replace("{name}", "quiet");
        for method in item.as_object().expect("a path item").keys() {
            let request = Request::builder()
                .method(method.to_uppercase().as_str())
                .uri(&uri)
                .body(Body::empty())
                .expect("request");
            let reply = send(app, request).await;
            let unknown = reply.status == StatusCode::NOT_FOUND
                && reply.content_type() == crate::api::PROBLEM_CONTENT_TYPE
                && reply.json()["type"] == "about:blank";
            assert!(!unknown, "{method} {path} is documented but not routed");
            assert_ne!(
                reply.status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path} is documented but not served"
            );
        }
    }
}

#[tokio::test]
async fn without_an_admin_token_the_document_has_no_admin_operations() {
    let app = with_profile().app();
    let doc = send(&app, get("/api/v1/openapi.json")).await.json();
    let paths = doc["paths"].as_object().expect("paths");
    assert!(!paths.contains_key("/api/v1/plugins/{name}/rollback"));
    assert!(!paths.contains_key("/api/v1/plugins/{name}/resume"));
    let methods: Vec<&String> = paths["/api/v1/plugins/{name}"]
        .as_object()
        .expect("a path item")
        .keys()
        .collect();
    assert_eq!(methods, ["get"], "only reading a plugin is served");
    assert!(
        doc["components"].get("securitySchemes").is_none(),
        "{}",
        doc["components"]
    );
    assert!(!doc.to_string().contains("admin_token"));
    assert_every_operation_is_routed(&app, &doc).await;
    // And the admin routes are indeed absent: 405 with only GET allowed.
    let request = Request::put("/api/v1/plugins/quiet")
        .body(Body::empty())
        .expect("request");
    assert_eq!(
        send(&app, request).await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

#[tokio::test]
async fn the_schemas_describe_what_is_sent_and_answered() {
    let doc = send(&with_profile().app(), get("/api/v1/openapi.json"))
        .await
        .json();
    let schemas = &doc["components"]["schemas"];
    // A value is of exactly one JSON type: `25` must not match two variants.
    let value = resolve(&doc, &schemas["Attribute"]["properties"]["value"]);
    let types: Vec<&str> = value["oneOf"]
        .as_array()
        .unwrap_or_else(|| panic!("oneOf: {value}"))
        .iter()
        .map(|v| v["type"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(types, ["string", "number", "boolean"]);
    // The events body: an event, or a non-empty array of them.
    let body = resolve(
        &doc,
        &doc["paths"]["/api/v1/events"]["post"]["requestBody"]["content"]["application/json"]["schema"],
    );
    let array = body["oneOf"]
        .as_array()
        .and_then(|variants| variants.iter().find(|v| v["type"] == "array"))
        .unwrap_or_else(|| panic!("no array variant: {body}"));
    assert_eq!(array["minItems"], 1, "{array}");
}

/// `schema` itself, or the component schema its `$ref` names.
fn resolve<'a>(doc: &'a serde_json::Value, schema: &'a serde_json::Value) -> &'a serde_json::Value {
    match schema.get("$ref").and_then(|r| r.as_str()) {
        Some(reference) => {
            &doc["components"]["schemas"][reference.trim_start_matches("#/components/schemas/")]
        }
        None => schema,
    }
}
