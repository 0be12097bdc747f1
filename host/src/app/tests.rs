//! PulseHub run in-process, the way a test or an embedding program runs it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{Role, Stopped, run};
use crate::config::Config;

/// The built-in plugins, built by `cargo xtask plugins`.
fn builtin_plugins() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/plugins")
}

/// Embedded mode on a free port: events posted over HTTP become a profile,
/// and completing the shutdown future stops everything cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_in_process_on_a_free_port_until_shut_down() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut config = Config::default();
    config.embedded.data_dir = data.path().to_owned();
    config.plugins.dir = builtin_plugins();
    assert!(
        config.plugins.dir.join("page-view-counter.wasm").exists(),
        "the built-in plugins are not built: run `cargo xtask plugins`"
    );
    config.plugins.watch = false;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port");
    let api = format!(
        "http://{}/api/v1",
        listener.local_addr().expect("an address")
    );
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(run(
        config,
        Role::All,
        listener,
        shutdown.clone().cancelled_owned(),
    ));

    let client = reqwest::Client::new();
    let events = serde_json::json!([
        {"event_id": "e-1", "user_id": "u-1", "event_type": "page_view",
         "timestamp": "2026-11-29T22:00:00Z"},
        {"event_id": "e-2", "user_id": "u-1", "event_type": "page_view",
         "timestamp": "2026-11-29T22:01:00Z"},
    ]);
    let posted = client
        .post(format!("{api}/events"))
        .json(&events)
        .send()
        .await
        .expect("the API answers");
    assert_eq!(posted.status(), 202, "{:?}", posted.text().await);

    let deadline = Instant::now() + Duration::from_secs(30);
    let profile = loop {
        let reply = client
            .get(format!("{api}/profiles/u-1"))
            .send()
            .await
            .expect("the API answers");
        if reply.status() == 200 {
            let profile: serde_json::Value = reply.json().await.expect("JSON");
            if profile["attributes"]["page_views"]["value"] == 2 {
                break profile;
            }
        }
        assert!(Instant::now() < deadline, "no profile with 2 page views");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        profile["attributes"]["last_active_at"]["value"],
        "2026-11-29T22:01:00.000Z"
    );

    // The commits wrote the profile-updates stream, served from the first
    // message kept.
    let updates = client
        .get(format!("{api}/profile-updates?after=0&follow=false"))
        .send()
        .await
        .expect("the API answers");
    assert_eq!(updates.status(), 200);
    let body = updates.text().await.expect("the stream ends");
    assert!(body.contains("event: profile.updated"), "{body}");
    assert!(body.contains(r#""profile_id":"u-1""#), "{body}");
    // A reader left waiting for new messages does not hold the shutdown up.
    let mut waiting = client
        .get(format!("{api}/profile-updates"))
        .send()
        .await
        .expect("the API answers");
    assert_eq!(waiting.status(), 200);

    shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("stops within 30 s")
        .expect("the task does not panic")
        .expect("runs without error");
    assert_eq!(stopped, Stopped::Shutdown);
    let end = waiting.chunk().await;
    assert!(matches!(end, Ok(None)), "the waiting stream ended: {end:?}");
}
