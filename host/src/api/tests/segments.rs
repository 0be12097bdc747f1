//! The segment routes: definitions and their faults, on the embedded store,
//! whose commits keep the members the routes list.

use std::collections::BTreeMap;

use super::*;
use crate::api::problem::types;
use crate::model::merge::{AttributeChange, ProfileChanges, Provenance};
use crate::model::update::Op;
use crate::segment::Segments;
use crate::store::embedded::EmbeddedStore;
use crate::store::{Commit, OffsetRange, ProfileStore};

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

/// The router on an embedded store in a new directory.
fn app() -> (Router, EmbeddedStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = EmbeddedStore::open(dir.path()).expect("the store opens");
    let fakes = Fakes {
        admin_token: Some(AdminToken::new(TOKEN)),
        segments: Segments {
            store: Arc::new(store.clone()),
            live: store.segments(),
        },
        ..Fakes::default()
    };
    (fakes.app(), store, dir)
}

async fn put(app: &Router, name: &str, body: &str) -> Reply {
    let uri = format!("/api/v1/segments/{name}");
    send(app, call("PUT", &uri, body, Some(TOKEN))).await
}

/// Commits `page_views` += `views` for each user, as a batch of the
/// inbox would.
async fn view(store: &EmbeddedStore, users: &[&str], views: i64, next: i64) {
    let mut changes = ProfileChanges::new();
    for user in users {
        let change = AttributeChange {
            op: Op::Increment(views),
            provenance: Provenance {
                plugin: Arc::from("page-views"),
                plugin_version: Arc::from("1.0.0"),
                event_id: format!("{user}-{next}"),
                event_time_ms: next,
            },
        };
        changes.insert(
            (*user).to_owned(),
            BTreeMap::from([("page_views".to_owned(), change)]),
        );
    }
    let offsets = [OffsetRange {
        partition: 0,
        expected: (next > 1).then_some(next - 1),
        next,
    }];
    store
        .commit(Commit {
            group: "enrich",
            topic: crate::store::embedded::INBOX_TOPIC,
            changes: &changes,
            offsets: &offsets,
            plugins: &[],
            known: Default::default(),
            now_ms: 1_000,
            identity: None,
            suppressions: 0,
        })
        .await
        .expect("the commit reaches the store");
}

#[tokio::test]
async fn a_segment_is_defined_listed_and_its_members_paged() {
    let (app, store, _dir) = app();
    let reply = put(&app, "fans", r#"{"condition": "page_views >= 2"}"#).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    let defined = reply.json();
    assert_eq!(defined["name"], "fans");
    assert_eq!(defined["condition"], "page_views >= 2");
    assert_eq!(
        defined["tree"],
        serde_json::json!({"gte": ["page_views", 2]})
    );
    assert_eq!(defined["attributes"], serde_json::json!(["page_views"]));
    // No plugin is loaded here, so nothing writes `page_views`.
    assert_eq!(
        defined["unknown_attributes"],
        serde_json::json!(["page_views"])
    );
    assert_eq!(defined["members"], 0);

    // The commits evaluate it: two views put a profile in.
    view(&store, &["u1", "u2", "u3", "u4", "u5"], 1, 1).await;
    view(&store, &["u1", "u3", "u4", "u5"], 1, 2).await;
    let reply = send(&app, get("/api/v1/segments/fans")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.json()["members"], 4);
    let profile = store.profile("u3").await.expect("read").expect("u3");
    assert_eq!(profile.segments, vec![1]);

    let reply = send(&app, get("/api/v1/segments/fans/members?limit=3")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let first = reply.json();
    assert_eq!(first["members"], serde_json::json!(["u1", "u3", "u4"]));
    assert_eq!(first["next"], "u4");
    let reply = send(&app, get("/api/v1/segments/fans/members?limit=3&after=u4")).await;
    let last = reply.json();
    assert_eq!(last["members"], serde_json::json!(["u5"]));
    assert!(last.get("next").is_none(), "{last}");

    let reply = send(&app, get("/api/v1/segments")).await;
    let list = reply.json();
    assert_eq!(list["segments"].as_array().map(Vec::len), Some(1));
    assert_eq!(list["segments"][0]["name"], "fans");
}

#[tokio::test]
async fn a_new_condition_starts_the_members_over_and_the_same_one_changes_nothing() {
    let (app, store, _dir) = app();
    put(&app, "fans", r#"{"condition": "page_views >= 1"}"#).await;
    view(&store, &["u1"], 1, 1).await;
    // The same condition, as a tree: nothing changes.
    let same = put(&app, "fans", r#"{"condition": {"gte": ["page_views", 1]}}"#).await;
    assert_eq!(same.status, StatusCode::OK, "{}", same.text);
    assert_eq!(same.json()["members"], 1);
    assert_eq!(same.json()["condition"], "page_views >= 1");

    let changed = put(&app, "fans", r#"{"condition": "page_views >= 2"}"#).await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.text);
    assert_eq!(changed.json()["members"], 0);
    // The next commit of the profile evaluates the new condition.
    view(&store, &["u1"], 1, 2).await;
    let reply = send(&app, get("/api/v1/segments/fans/members")).await;
    assert_eq!(reply.json()["members"], serde_json::json!(["u1"]));
    let profile = store.profile("u1").await.expect("read").expect("u1");
    assert_eq!(profile.segments, vec![1, 2], "the old id lingers, unread");

    let reply = send(
        &app,
        call("DELETE", "/api/v1/segments/fans", "", Some(TOKEN)),
    )
    .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text);
    let reply = send(&app, get("/api/v1/segments/fans")).await;
    reply.problem(
        StatusCode::NOT_FOUND,
        types::SEGMENT_NOT_FOUND,
        "/api/v1/segments/fans",
    );
    let reply = send(
        &app,
        call("DELETE", "/api/v1/segments/fans", "", Some(TOKEN)),
    )
    .await;
    reply.problem(
        StatusCode::NOT_FOUND,
        types::SEGMENT_NOT_FOUND,
        "/api/v1/segments/fans",
    );
    // A profile's next commit evaluates nothing for it.
    view(&store, &["u1"], 1, 3).await;
    let reply = send(&app, get("/api/v1/segments")).await;
    assert_eq!(reply.json(), serde_json::json!({"segments": []}));
}

#[tokio::test]
async fn a_faulty_definition_is_refused_with_where_the_fault_is() {
    let (app, _store, _dir) = app();
    let reply = put(&app, "fans", r#"{"condition": "page_views >= "}"#).await;
    let problem = reply.problem(
        StatusCode::BAD_REQUEST,
        types::INVALID_SEGMENT,
        "/api/v1/segments/fans",
    );
    assert_eq!(problem["position"]["line"], 1, "{problem}");
    assert!(
        problem["position"]["column"].as_u64().is_some(),
        "{problem}"
    );

    let tree = r#"{"condition": {"and": [{"gte": ["page_views", 5]}, {"eq": ["device_type"]}]}}"#;
    let reply = put(&app, "fans", tree).await;
    let problem = reply.problem(
        StatusCode::BAD_REQUEST,
        types::INVALID_SEGMENT,
        "/api/v1/segments/fans",
    );
    assert_eq!(
        problem["position"],
        serde_json::json!({"pointer": "/condition/and/1/eq"}),
        "{problem}"
    );

    for (name, body, fault) in [
        ("Fans", r#"{"condition": "x > 1"}"#, "not a segment name"),
        (
            "fans",
            r#"{"condition": "x > 1", "extra": 1}"#,
            "unknown field",
        ),
        ("fans", r#"{}"#, "missing field"),
        ("fans", r#"not json"#, "not a segment definition"),
    ] {
        let reply = put(&app, name, body).await;
        let problem = reply.problem(
            StatusCode::BAD_REQUEST,
            types::INVALID_SEGMENT,
            &format!("/api/v1/segments/{name}"),
        );
        let detail = problem["detail"].as_str().unwrap_or("");
        assert!(detail.contains(fault), "{body}: {problem}");
    }
    let reply = send(&app, get("/api/v1/segments/fans/members?limit=0")).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text);

    // Nothing was stored; the admin token is needed.
    let reply = send(&app, get("/api/v1/segments")).await;
    assert_eq!(reply.json(), serde_json::json!({"segments": []}));
    let reply = send(
        &app,
        call(
            "PUT",
            "/api/v1/segments/fans",
            r#"{"condition": "x > 1"}"#,
            None,
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text);
}

#[tokio::test]
async fn a_new_segment_is_computed_over_the_profiles_that_exist() {
    let (app, store, _dir) = app();
    view(&store, &["u1", "u2", "u3"], 2, 1).await;
    view(&store, &["u4"], 1, 2).await;
    let segments = Segments {
        store: Arc::new(store.clone()),
        live: store.segments(),
    };
    let defined = put(&app, "fans", r#"{"condition": "page_views >= 2"}"#).await;
    assert_eq!(defined.json()["backfill"]["state"], "pending");
    let updated_at = crate::segment::catalog::BACKFILL_DELAY.as_millis() as i64;
    let now = crate::model::profile::now_ms();
    // Not before every process evaluates it.
    let computed = segments
        .backfill(now, std::time::Duration::from_secs(5), None)
        .await
        .expect("a round");
    assert_eq!(computed, 0);
    let computed = segments
        .backfill(now + updated_at, std::time::Duration::from_secs(5), None)
        .await
        .expect("a round");
    assert_eq!(computed, 4);
    let reply = send(&app, get("/api/v1/segments/fans")).await;
    let body = reply.json();
    assert_eq!(body["members"], 3, "{body}");
    assert_eq!(body["backfill"]["state"], "done", "{body}");
    assert_eq!(body["backfill"]["profiles"], 4, "{body}");
    let profile = store.profile("u2").await.expect("read").expect("u2");
    assert_eq!(profile.segments, vec![1]);
    // Done: nothing more to compute.
    let again = segments
        .backfill(now + updated_at, std::time::Duration::from_secs(5), None)
        .await
        .expect("a round");
    assert_eq!(again, 0);
}
