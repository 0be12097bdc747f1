//! Profiles, plugins, the OpenAPI document, unknown routes and methods,
//! timeouts, and serving on a socket.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use tokio_util::sync::CancellationToken;

use super::fakes::FakeLookup;
use super::{Fakes, get, send};
use crate::api::plugins::PluginInfo;
use crate::api::problem::types;
use crate::api::{AdminToken, ApiLimits, serve};
use crate::model::profile::{Attribute, Profile};
use crate::model::update::Value;
use crate::plugin::chain::Chain;
use crate::plugin::fixtures::{QUIET_MANIFEST, QUIET_PLUGIN};
use crate::plugin::{HostLimits, Manifest, PluginLimits, Runtime};

fn profile() -> Profile {
    let mut profile = Profile::new("u-42", 1_795_989_000_000);
    profile.updated_at_ms = 1_795_989_600_500;
    profile.attributes.insert(
        "page_views".into(),
        Attribute {
            value: Value::Integer(17),
            plugin: "page-view-counter".into(),
            plugin_version: "1.0.0".into(),
            event_id: "e-9".into(),
            event_time_ms: 1_795_989_600_123,
            op: None,
        },
    );
    profile
}

pub(super) fn with_profile() -> Fakes {
    let mut lookup = FakeLookup::default();
    lookup.profiles.insert("u-42".into(), profile());
    Fakes {
        lookup,
        ..Fakes::default()
    }
}

#[tokio::test]
async fn an_identifier_answers_with_the_profile_it_resolves_to() {
    let mut fakes = with_profile();
    let home = crate::model::identity::home_key("anonymous_id", "a1");
    let mut pointer = Profile::new(home.as_str(), 0);
    pointer.merged_into = Some("u-42".into());
    fakes.lookup.profiles.insert(home, pointer);
    let app = fakes.app();

    let reply = send(&app, get("/api/v1/profiles/by/anonymous_id/a1")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let body = reply.json();
    assert_eq!(body["user_id"], "u-42");
    assert_eq!(body["attributes"]["page_views"]["value"], 17);
    assert_eq!(
        body["resolved_from"],
        serde_json::json!({"type": "anonymous_id", "value": "a1"})
    );

    let reply = send(&app, get("/api/v1/profiles/by/user_id/u-42")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert!(
        reply.json().get("resolved_from").is_none(),
        "{}",
        reply.text
    );

    let reply = send(&app, get("/api/v1/profiles/by/anonymous_id/a2")).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.text);
    let reply = send(&app, get("/api/v1/profiles/by/shoe_size/42")).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text);
    assert!(
        reply.text.contains("unknown identifier type"),
        "{}",
        reply.text
    );
}

#[tokio::test]
async fn a_profile_is_served_in_the_contract_shape() {
    let reply = send(&with_profile().app(), get("/api/v1/profiles/u-42")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.content_type(), "application/json");
    let body = reply.json();
    assert_eq!(
        body,
        serde_json::json!({
            "user_id": "u-42",
            "attributes": {"page_views": {
                "value": 17, "plugin": "page-view-counter", "plugin_version": "1.0.0",
                "event_id": "e-9", "updated_at": "2026-11-29T22:00:00.123Z"}},
            "profile_key": "u-42",
            "identifiers": [{"type": "user_id", "value": "u-42"}],
            "merges": [],
            "segments": [],
            "created_at": "2026-11-29T21:50:00.000Z",
            "updated_at": "2026-11-29T22:00:00.500Z"
        })
    );
    assert_eq!(body["attributes"]["page_views"]["value"], 17);
    assert_eq!(
        body["attributes"]["page_views"]["plugin"],
        "page-view-counter"
    );
    assert_eq!(
        body["attributes"]["page_views"]["updated_at"],
        "2026-11-29T22:00:00.123Z"
    );
    assert_eq!(body["updated_at"], "2026-11-29T22:00:00.500Z");
}

#[tokio::test]
async fn an_unknown_profile_is_404() {
    let path = "/api/v1/profiles/u-7";
    let reply = send(&with_profile().app(), get(path)).await;
    let problem = reply.problem(StatusCode::NOT_FOUND, types::PROFILE_NOT_FOUND, path);
    assert!(
        problem["detail"].as_str().unwrap_or("").contains("u-7"),
        "{problem}"
    );
}

#[tokio::test]
async fn bad_user_ids_are_400() {
    let app = with_profile().app();
    let too_long = format!("/api/v1/profiles/{}", "x".repeat(257));
    for path in [
        "/api/v1/profiles/",
        "/api/v1/profiles/a%00b",
        "/api/v1/profiles/%FF",
        &too_long,
    ] {
        let reply = send(&app, get(path)).await;
        reply.problem(StatusCode::BAD_REQUEST, types::INVALID_USER_ID, path);
    }
    // 256 bytes is allowed (and unknown); an encoded slash is part of the id.
    let longest = format!("/api/v1/profiles/{}", "x".repeat(256));
    let reply = send(&app, get(&longest)).await;
    reply.problem(StatusCode::NOT_FOUND, types::PROFILE_NOT_FOUND, &longest);
    let reply = send(&app, get("/api/v1/profiles/a%2Fb")).await;
    let problem = reply.problem(
        StatusCode::NOT_FOUND,
        types::PROFILE_NOT_FOUND,
        "/api/v1/profiles/a%2Fb",
    );
    assert!(
        problem["detail"].as_str().unwrap_or("").ends_with("a/b"),
        "{problem}"
    );
}

#[tokio::test]
async fn a_failing_store_is_503_with_retry_after_and_no_internals() {
    let fakes = Fakes {
        lookup: FakeLookup {
            fails_with: Some("pool timed out: postgres://pulsehub:hunter2@db/pulsehub"),
            ..FakeLookup::default()
        },
        ..Fakes::default()
    };
    let path = "/api/v1/profiles/u-42";
    let reply = send(&fakes.app(), get(path)).await;
    let problem = reply.problem(
        StatusCode::SERVICE_UNAVAILABLE,
        types::BACKEND_UNAVAILABLE,
        path,
    );
    assert_eq!(reply.headers["retry-after"], "1");
    assert!(!reply.text.contains("hunter2"), "{problem}");
}

#[tokio::test]
async fn a_slow_request_times_out_as_a_problem() {
    let fakes = Fakes {
        lookup: FakeLookup {
            delay: Some(Duration::from_secs(30)),
            ..FakeLookup::default()
        },
        limits: ApiLimits {
            timeout: Duration::from_millis(50),
            ..ApiLimits::default()
        },
        ..Fakes::default()
    };
    let path = "/api/v1/profiles/u-42";
    let reply = send(&fakes.app(), get(path)).await;
    let problem = reply.problem(StatusCode::SERVICE_UNAVAILABLE, types::TIMEOUT, path);
    assert!(
        problem["detail"].as_str().unwrap_or("").contains("50 ms"),
        "{problem}"
    );
    assert_eq!(reply.headers["retry-after"], "1");
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems() {
    let app = Fakes::default().app();
    let reply = send(&app, get("/api/v2/nothing")).await;
    reply.problem(StatusCode::NOT_FOUND, "about:blank", "/api/v2/nothing");

    let delete = Request::delete("/api/v1/events")
        .body(Body::empty())
        .expect("request");
    let reply = send(&app, delete).await;
    let problem = reply.problem(
        StatusCode::METHOD_NOT_ALLOWED,
        "about:blank",
        "/api/v1/events",
    );
    assert_eq!(reply.headers["allow"], "POST");
    assert!(
        problem["detail"].as_str().unwrap_or("").contains("DELETE"),
        "{problem}"
    );
}

fn chain_with_quiet_plugin() -> std::sync::Arc<Chain> {
    let runtime = Runtime::new(HostLimits::default()).expect("plugin runtime starts");
    let component = wat::parse_str(QUIET_PLUGIN).expect("the test component assembles");
    let manifest: Manifest = QUIET_MANIFEST.parse().expect("the test manifest is valid");
    let plugin = runtime
        .load(manifest, &component)
        .expect("the test plugin loads");
    let chain = Chain::new(runtime);
    chain.insert(plugin).expect("no other plugin");
    chain
}

#[test]
fn plugin_info_shows_the_effective_limits() {
    let manifest: Manifest = QUIET_MANIFEST.parse().expect("valid");
    let limits = PluginLimits::new(&HostLimits::default(), &manifest);
    let info = serde_json::to_value(PluginInfo::new(&manifest, &limits, "ab12")).expect("JSON");
    assert_eq!(
        info,
        serde_json::json!({
            "name": "quiet", "version": "1.2.3", "description": "Says nothing.",
            "sha256": "ab12", "events": ["click", "page_view"], "writes": ["quiet_count"],
            // The manifest asks for 4096 MiB; the host caps it.
            "limits": {"memory_mb": 256, "timeout_ms": 5},
            "state": "active",
            "counters": {"calls": 0, "events": 0, "failures": 0},
            "previous": []
        })
    );
}

#[tokio::test]
async fn loaded_plugins_are_listed_and_shown() {
    let chain = chain_with_quiet_plugin();
    let sha256 = chain.plugins()[0].sha256.clone();
    let app = Fakes {
        chain: Some(chain),
        ..Fakes::default()
    }
    .app();
    let reply = send(&app, get("/api/v1/plugins")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let list = reply.json();
    let plugins = list["plugins"].as_array().expect("a list");
    assert_eq!(plugins.len(), 1, "{list}");
    assert_eq!(plugins[0]["name"], "quiet");
    assert_eq!(plugins[0]["version"], "1.2.3");
    assert_eq!(plugins[0]["sha256"], sha256.as_str());
    assert_eq!(sha256.len(), 64);
    assert_eq!(plugins[0]["state"], "active");

    let reply = send(&app, get("/api/v1/plugins/quiet")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.json(), plugins[0]);

    let reply = send(&app, get("/api/v1/plugins/loud")).await;
    reply.problem(
        StatusCode::NOT_FOUND,
        types::PLUGIN_NOT_FOUND,
        "/api/v1/plugins/loud",
    );
}

#[tokio::test]
async fn no_plugins_is_an_empty_list() {
    let reply = send(&Fakes::default().app(), get("/api/v1/plugins")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json(), serde_json::json!({"plugins": []}));
}

#[tokio::test]
async fn serves_on_a_socket_until_shut_down() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port");
    let address = listener.local_addr().expect("bound");
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve(listener, with_profile().state(), shutdown.clone()));
    let client = reqwest::Client::new();
    let profile: serde_json::Value = client
        .get(format!("http://{address}/api/v1/profiles/u-42"))
        .send()
        .await
        .expect("the server answers")
        .json()
        .await
        .expect("JSON");
    assert_eq!(profile["user_id"], "u-42");

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("stops soon after the shutdown signal")
        .expect("the task did not panic")
        .expect("serve returns Ok");
    assert!(
        client
            .get(format!("http://{address}/healthz"))
            .send()
            .await
            .is_err()
    );
}

fn admin_call(method: &str, uri: &str, token: Option<&str>) -> Request<Body> {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    request.body(Body::empty()).expect("a request")
}

#[tokio::test]
async fn admin_routes_need_the_token_and_exist_only_with_one() {
    const TOKEN: &str = "0123456789abcdef-token";
    let app = Fakes {
        admin_token: Some(AdminToken::new(TOKEN)),
        ..Fakes::default()
    }
    .app();
    for (method, uri) in [
        ("PUT", "/api/v1/plugins/quiet"),
        ("DELETE", "/api/v1/plugins/quiet"),
        ("POST", "/api/v1/plugins/quiet/rollback"),
        ("POST", "/api/v1/plugins/quiet/resume"),
    ] {
        for token in [None, Some("0123456789abcdef-tokem"), Some("")] {
            let reply = send(&app, admin_call(method, uri, token)).await;
            assert_eq!(
                reply.status,
                StatusCode::UNAUTHORIZED,
                "{method} {uri} {token:?}"
            );
            assert_eq!(reply.json()["type"], types::UNAUTHORIZED);
            assert_eq!(
                reply.headers["www-authenticate"],
                r#"Bearer realm="pulsehub-admin""#
            );
        }
        // The right token gets through; this process runs no plugins.
        let reply = send(&app, admin_call(method, uri, Some(TOKEN))).await;
        assert_ne!(reply.status, StatusCode::UNAUTHORIZED, "{method} {uri}");
    }
    let reply = send(
        &app,
        admin_call("DELETE", "/api/v1/plugins/quiet", Some(TOKEN)),
    )
    .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let detail = reply.json()["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(detail.contains("runs no plugins"), "{detail}");
    // GET stays public.
    let reply = send(&app, get("/api/v1/plugins")).await;
    assert_eq!(reply.status, StatusCode::OK);

    // Without a token the admin routes do not exist.
    let app = Fakes::default().app();
    let reply = send(
        &app,
        admin_call("PUT", "/api/v1/plugins/quiet", Some(TOKEN)),
    )
    .await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    let reply = send(
        &app,
        admin_call("POST", "/api/v1/plugins/quiet/rollback", Some(TOKEN)),
    )
    .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
}
