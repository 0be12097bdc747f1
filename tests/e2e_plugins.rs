//! End-to-end tests of live plugin operations in `pulsehub run`: uploads
//! refused and accepted, a swap under load, rollback, quarantine with
//! automatic rollback, the watched plugin directory, the audit log and the
//! per-plugin metrics. Like `e2e_pipeline.rs`, each test runs the real
//! binary against the real services with a database and topics of its own;
//! the harness is in `support/`.
//!
//! The tests share two CPU cores with the binaries they start, so they run
//! one at a time.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::Connection as _;

use support::db::TestDb;
use support::hub::{ADMIN_TOKEN, PulseHub, SERIAL, tail};
use support::kafka::{produce, producer, read_all, topics};
use support::plugins::{builtin_plugin_dir, chaos_package};
use support::prometheus::metric_sum;
use support::services::workspace;
use support::workload::counted_events;

/// The names and version ids of the installed plugins.
async fn installed(hub: &PulseHub) -> Vec<(String, String)> {
    let (status, body) = hub.get_json("/api/v1/plugins").await;
    assert_eq!(status, 200, "{body}");
    body["plugins"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_owned(),
                p["version_id"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Per user, the archived `count` events whose offsets lie in a stretch of
/// the timeline where chaos 0.2.0 ran, once the archive holds `archived`
/// events.
async fn v2_counts_by_timeline(database_url: &str, archived: usize) -> BTreeMap<String, i64> {
    let mut conn = sqlx::PgConnection::connect(database_url)
        .await
        .expect("connect to the test database");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&mut conn)
            .await
            .expect("count the archive");
        if count as usize >= archived {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the archive holds {count} of {archived} events after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT e.user_id, count(*) FROM events e JOIN plugin_timeline t \
           ON t.topic = e.topic AND t.partition = e.partition \
          AND e.\"offset\" >= t.from_offset \
          AND (t.until_offset IS NULL OR e.\"offset\" < t.until_offset) \
         WHERE t.plugin = 'chaos' AND t.version = '0.2.0' AND e.event_type = 'count' \
         GROUP BY e.user_id",
    )
    .fetch_all(&mut conn)
    .await
    .expect("replay the archive through the timeline");
    rows.into_iter().collect()
}

/// The plugin audit log of the database: (actor, action, plugin, outcome,
/// detail), oldest first.
async fn audit_rows(database_url: &str) -> Vec<(String, String, String, String, Option<String>)> {
    let mut conn = sqlx::PgConnection::connect(database_url)
        .await
        .expect("connect to the test database");
    sqlx::query_as("SELECT actor, action, plugin, outcome, detail FROM plugin_audit ORDER BY id")
        .fetch_all(&mut conn)
        .await
        .expect("read the audit log")
}

/// Waits until every user's `page_views` is what `views` says, then returns
/// each user's `chaos_count`.
async fn wait_views(hub: &PulseHub, views: &BTreeMap<String, i64>) -> BTreeMap<String, i64> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut chaos = BTreeMap::new();
        let mut wrong = Vec::new();
        for (user, want) in views {
            let profile = hub.profile(user).await.unwrap_or(Value::Null);
            let got = profile["attributes"]["page_views"]["value"]
                .as_i64()
                .unwrap_or(0);
            if got != *want {
                wrong.push(format!("{user}: {got} page views, want {want}"));
            }
            chaos.insert(
                user.clone(),
                profile["attributes"]["chaos_count"]["value"]
                    .as_i64()
                    .unwrap_or(0),
            );
        }
        if wrong.is_empty() {
            return chaos;
        }
        if Instant::now() > deadline {
            panic!(
                "{}\nlog:\n{}",
                wrong[..wrong.len().min(5)].join("\n"),
                tail(&hub.log_text(), 40)
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_plugin_uploads_are_refused_and_change_nothing() {
    let _serial = SERIAL.lock().await;
    let topic = topics(1).await;
    let database = TestDb::create().await;
    let plugins = builtin_plugin_dir();
    // device-classifier, the largest built-in, is about 1.3 MB.
    let extra = [("PULSEHUB_PLUGIN_MAX_COMPONENT_BYTES", "2000000")];
    let mut hub = PulseHub::services_with_admin(&topic, database.url(), plugins.path(), &extra);
    hub.wait_ready().await;
    let before = installed(&hub).await;
    assert_eq!(before.len(), 3, "{before:?}");

    let (manifest, component) = chaos_package("0.1.0", "");
    // No token, a wrong token. (The server answers before reading the
    // body, so these send a small one.)
    let (status, body) = hub.put_plugin("chaos", Some(&manifest), None, None).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["detail"].as_str().unwrap_or("").contains("Bearer"),
        "{body}"
    );
    let (status, body) = hub
        .put_plugin("chaos", Some(&manifest), None, Some("not-the-admin-token"))
        .await;
    assert_eq!(status, 401, "{body}");
    let (status, _) = hub
        .admin(reqwest::Method::DELETE, "/api/v1/plugins/page-view-counter")
        .await;
    assert_eq!(status, 204, "the right token is accepted");
    // Put it back for the rest of the test.
    let counter = workspace().join("target/plugins");
    let (status, body) = hub
        .put_plugin(
            "page-view-counter",
            Some(
                &std::fs::read_to_string(counter.join("page-view-counter.toml")).expect("manifest"),
            ),
            Some(&std::fs::read(counter.join("page-view-counter.wasm")).expect("component")),
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let before = installed(&hub).await;

    let failing_init = chaos_package("0.1.0", "[config]\nfail-init = \"true\"").0;
    let clash = manifest.replace(
        "writes = [\"chaos_count\", \"chaos_text\"]",
        "writes = [\"chaos_count\", \"page_views\"]",
    );
    assert_ne!(clash, manifest);
    let core_module = wat::parse_str("(module)").expect("wat");
    let empty_component = wat::parse_str("(component)").expect("wat");
    let oversized = vec![0_u8; 2_500_000];
    // (case, name in the path, manifest, component, status, detail mentions)
    type Case<'a> = (
        &'a str,
        &'a str,
        Option<&'a str>,
        Option<&'a [u8]>,
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "garbage",
            "chaos",
            Some(&manifest),
            Some(b"not wasm at all"),
            422,
            "not WebAssembly",
        ),
        (
            "core module",
            "chaos",
            Some(&manifest),
            Some(&core_module),
            422,
            "core WebAssembly module",
        ),
        (
            "wrong world",
            "chaos",
            Some(&manifest),
            Some(&empty_component),
            422,
            "does not target",
        ),
        (
            "failing init",
            "chaos",
            Some(&failing_init),
            Some(&component),
            422,
            "init failed",
        ),
        (
            "ownership clash",
            "chaos",
            Some(&clash),
            Some(&component),
            409,
            "page_views",
        ),
        (
            "bad manifest",
            "chaos",
            Some("name = 'chaos'"),
            Some(&component),
            400,
            "manifest",
        ),
        (
            "name mismatch",
            "other",
            Some(&manifest),
            Some(&component),
            400,
            "\"other\"",
        ),
        (
            "no component",
            "chaos",
            Some(&manifest),
            None,
            400,
            "`component` is missing",
        ),
        (
            "no manifest",
            "chaos",
            None,
            Some(&component),
            400,
            "`manifest` is missing",
        ),
        (
            "too large",
            "chaos",
            Some(&manifest),
            Some(&oversized),
            413,
            "plugins.max_component_bytes",
        ),
    ];
    for (case, name, manifest, component, want, detail) in &cases {
        let (status, body) = hub
            .put_plugin(name, *manifest, *component, Some(ADMIN_TOKEN))
            .await;
        assert_eq!(status, *want, "{case}: {body}");
        assert_eq!(
            body["status"],
            json!(want),
            "{case}: a problem document: {body}"
        );
        let text = body["detail"].as_str().unwrap_or_default();
        assert!(
            text.contains(detail),
            "{case}: {text:?} should mention {detail:?}"
        );
        assert_eq!(
            installed(&hub).await,
            before,
            "{case}: nothing that runs changed"
        );
    }
    // Over the upload limit itself: refused on its Content-Length, before
    // any of it is read (so only the head is sent).
    let head = format!(
        "PUT /api/v1/plugins/chaos HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {ADMIN_TOKEN}\r\n\
         content-type: multipart/form-data; boundary=x\r\ncontent-length: {}\r\n\r\n",
        hub.addr,
        4 << 20
    );
    let mut stream = tokio::net::TcpStream::connect(hub.addr)
        .await
        .expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut stream, head.as_bytes())
        .await
        .expect("send the head");
    let mut answer = vec![0_u8; 512];
    let n = tokio::io::AsyncReadExt::read(&mut stream, &mut answer)
        .await
        .expect("an answer");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");

    // A good upload goes through, and the audit log holds everything.
    let (status, body) = hub
        .put_plugin(
            "chaos",
            Some(&manifest),
            Some(&component),
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["state"], "active");
    assert_eq!(body["source"], "api");
    assert_eq!(installed(&hub).await.len(), 4);
    let rows = audit_rows(database.url()).await;
    let refused = rows.iter().filter(|r| r.3 == "refused").count();
    // Every refused package is audited; the two requests that were not
    // plugin packages at all (a part missing) are answered, not audited.
    assert_eq!(
        refused,
        cases.len() - 2,
        "every refusal is audited: {rows:#?}"
    );
    let last = rows.last().expect("rows");
    assert_eq!(
        (last.1.as_str(), last.2.as_str(), last.3.as_str()),
        ("install", "chaos", "ok")
    );
    assert!(
        last.0.contains("e2e-test"),
        "the operator is named: {last:?}"
    );
    assert!(
        rows.iter()
            .any(|r| r.1 == "remove" && r.2 == "page-view-counter"),
        "{rows:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_swapped_under_load_counts_exactly_and_rolls_back() {
    let _serial = SERIAL.lock().await;
    let topic = topics(4).await;
    let database = TestDb::create().await;
    let plugins = builtin_plugin_dir();
    let mut hub = PulseHub::services_with_admin(&topic, database.url(), plugins.path(), &[]);
    hub.wait_ready().await;
    let (v1, component) = chaos_package("0.1.0", "");
    let (v2, _) = chaos_package("0.2.0", "[config]\ncount-step = \"1000\"");
    let (status, body) = hub
        .put_plugin("chaos", Some(&v1), Some(&component), Some(ADMIN_TOKEN))
        .await;
    assert_eq!(status, 201, "{body}");
    let v1_id = body["version_id"].as_str().expect("version id").to_owned();

    // Phase 1 streams while v2 replaces v1; phase 2 is produced after the
    // swap answered, so v2 counts all of it.
    let (phase1, counts1) = counted_events("swap", "p1", 40, 100, 2);
    let (phase2, counts2) = counted_events("swap", "p2", 40, 20, 2);
    let producer = producer();
    let (half1, half2) = phase1.split_at(phase1.len() / 2);
    produce(&producer, &topic, half1).await;
    let swap = hub.put_plugin("chaos", Some(&v2), Some(&component), Some(ADMIN_TOKEN));
    let ((status, body), ()) = tokio::join!(swap, produce(&producer, &topic, half2));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], "0.2.0");
    assert_eq!(body["previous"][0]["version_id"], json!(v1_id));
    produce(&producer, &topic, &phase2).await;

    let views: BTreeMap<String, i64> = counts1
        .iter()
        .map(|(user, (v, _))| (user.clone(), v + counts2[user].0))
        .collect();
    let chaos = wait_views(&hub, &views).await;
    // Each count event was counted once, by v1 (1) or v2 (1000), and every
    // phase-2 event by v2.
    let (mut by_v1, mut by_v2) = (0, 0);
    for (user, total) in &chaos {
        let n = counts1[user].1 + counts2[user].1;
        let extra = total - n;
        assert!(
            extra >= 0 && extra % 999 == 0,
            "{user}: chaos_count {total} for {n} events"
        );
        let v2_events = extra / 999;
        assert!(
            (counts2[user].1..=n).contains(&v2_events),
            "{user}: {v2_events} events counted by v2, of {n}"
        );
        by_v1 += n - v2_events;
        by_v2 += v2_events;
    }
    assert!(by_v2 > 0, "v2 ran");
    println!("count events: {by_v1} by v1, {by_v2} by v2");
    // The timeline of plugin versions says which version saw which offsets:
    // replayed over the archive, it gives exactly the split the profiles
    // show, user by user.
    let archived = phase1.len() + phase2.len();
    let by_timeline = v2_counts_by_timeline(database.url(), archived).await;
    for (user, total) in &chaos {
        let v2_events = (total - (counts1[user].1 + counts2[user].1)) / 999;
        assert_eq!(
            by_timeline.get(user).copied().unwrap_or(0),
            v2_events,
            "{user}: count events in chaos 0.2.0's stretches of the timeline"
        );
    }

    // Rollback restores v1's behaviour.
    let (status, body) = hub
        .admin(reqwest::Method::POST, "/api/v1/plugins/chaos/rollback")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], "0.1.0");
    assert_eq!(body["version_id"], json!(v1_id));
    let (status, body) = hub
        .admin(reqwest::Method::POST, "/api/v1/plugins/chaos/rollback")
        .await;
    assert_eq!(status, 409, "nothing older is kept: {body}");
    let (phase3, counts3) = counted_events("swap", "p3", 40, 10, 2);
    produce(&producer, &topic, &phase3).await;
    let views: BTreeMap<String, i64> = views
        .iter()
        .map(|(user, v)| (user.clone(), v + counts3[user].0))
        .collect();
    let after = wait_views(&hub, &views).await;
    for (user, total) in &after {
        assert_eq!(
            *total,
            chaos[user] + counts3[user].1,
            "{user}: v1 counts by one again"
        );
    }

    // A restart brings back the uploaded version, which is not in the
    // plugin directory.
    hub.kill();
    hub.start();
    hub.wait_ready().await;
    let (status, body) = hub.plugin("chaos").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version_id"], json!(v1_id));
    assert_eq!(body["state"], "active");
    let rows = audit_rows(database.url()).await;
    let actions: Vec<&str> = rows
        .iter()
        .filter(|r| r.2 == "chaos")
        .map(|r| r.1.as_str())
        .collect();
    assert_eq!(
        actions,
        ["install", "install", "rollback", "rollback"],
        "{rows:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_plugin_is_quarantined_or_rolled_back_while_the_others_go_on() {
    let _serial = SERIAL.lock().await;
    let topic = topics(2).await;
    let database = TestDb::create().await;
    let plugins = builtin_plugin_dir();
    let extra = [("PULSEHUB_QUARANTINE_MIN_EVENTS", "40")];
    let mut hub = PulseHub::services_with_admin(&topic, database.url(), plugins.path(), &extra);
    hub.wait_ready().await;
    let producer = producer();
    let (v1, component) = chaos_package("0.1.0", "");
    let (trapping, _) = chaos_package("0.2.0", "[config]\ntrap-on = \"count\"");
    let (status, body) = hub
        .put_plugin("chaos", Some(&v1), Some(&component), Some(ADMIN_TOKEN))
        .await;
    assert_eq!(status, 201, "{body}");

    // A new version that traps on every count event replaces a healthy
    // one: it is taken out and the healthy one comes back by itself.
    let (status, body) = hub
        .put_plugin(
            "chaos",
            Some(&trapping),
            Some(&component),
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(status, 200, "the samples do not trap it: {body}");
    let (events, counts) = counted_events("quarantine", "p1", 20, 20, 4);
    produce(&producer, &topic, &events).await;
    let views: BTreeMap<String, i64> = counts.iter().map(|(u, (v, _))| (u.clone(), *v)).collect();
    wait_views(&hub, &views).await;
    let body = hub
        .wait_plugin("chaos", "an automatic rollback", |_, b| {
            b["version"] == "0.1.0"
        })
        .await;
    assert_eq!(body["state"], "active", "{body}");
    let reason = body["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("rolled back automatically"), "{body}");
    let metrics = hub.metrics_text().await;
    assert_eq!(
        metric_sum(
            &metrics,
            "pulsehub_plugin_actions_total",
            &[("plugin", "chaos"), ("action", "auto_rollback")]
        ),
        1.0,
        "{metrics}"
    );
    // The rule: at least 40 events (PULSEHUB_QUARANTINE_MIN_EVENTS), at
    // least 50 % of them failed (the default). How many of the events were
    // count events, which trap, depends on how the batches fell.
    let trapping_events = metric_sum(
        &metrics,
        "pulsehub_plugin_events_total",
        &[("plugin", "chaos"), ("version", "0.2.0")],
    );
    let traps = metric_sum(
        &metrics,
        "pulsehub_plugin_errors_total",
        &[("plugin", "chaos"), ("version", "0.2.0"), ("kind", "trap")],
    );
    assert!(
        trapping_events >= 40.0 && traps * 2.0 >= trapping_events,
        "{traps} traps in {trapping_events} events: {metrics}"
    );
    let letters = read_all(&format!("{topic}.dlq"), Duration::from_secs(2));
    assert!(!letters.is_empty());
    for (_, headers) in &letters {
        assert_eq!(headers["pulsehub-plugin"], "chaos");
        assert_eq!(headers["pulsehub-plugin-version"], "0.2.0");
        assert_eq!(headers["pulsehub-error-kind"], "trap");
    }

    // With no healthy version to go back to, the plugin is quarantined;
    // the others go on.
    let (status, _) = hub
        .admin(reqwest::Method::DELETE, "/api/v1/plugins/chaos")
        .await;
    assert_eq!(status, 204);
    let (status, body) = hub
        .put_plugin(
            "chaos",
            Some(&trapping),
            Some(&component),
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (events, counts2) = counted_events("quarantine", "p2", 20, 20, 4);
    produce(&producer, &topic, &events).await;
    let body = hub
        .wait_plugin("chaos", "a quarantine", |_, b| b["state"] == "quarantined")
        .await;
    assert!(
        body["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("failed"),
        "{body}"
    );
    assert!(
        body["counters"]["failures"].as_u64().unwrap_or(0) >= 20,
        "{body}"
    );
    let views: BTreeMap<String, i64> = counts
        .iter()
        .map(|(u, (v, _))| (u.clone(), v + counts2[u].0))
        .collect();
    wait_views(&hub, &views).await;
    let metrics = hub.metrics_text().await;
    assert_eq!(
        metric_sum(
            &metrics,
            "pulsehub_plugin_state",
            &[("plugin", "chaos"), ("state", "quarantined")]
        ),
        1.0,
        "{metrics}"
    );
    assert!(
        metric_sum(
            &metrics,
            "pulsehub_plugin_events_total",
            &[("plugin", "page-view-counter")]
        ) >= 200.0,
        "{metrics}"
    );
    assert!(
        metrics.contains("pulsehub_plugin_call_duration_seconds_bucket{"),
        "{metrics}"
    );

    // The quarantine survives a restart, and an operator lifts it.
    hub.kill();
    hub.start();
    hub.wait_ready().await;
    let (_, body) = hub.plugin("chaos").await;
    assert_eq!(body["state"], "quarantined", "{body}");
    let (status, body) = hub
        .admin(reqwest::Method::POST, "/api/v1/plugins/chaos/resume")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "active");
    let (status, body) = hub
        .admin(reqwest::Method::POST, "/api/v1/plugins/chaos/resume")
        .await;
    assert_eq!(status, 409, "{body}");
    let rows = audit_rows(database.url()).await;
    let host_actions: Vec<&str> = rows
        .iter()
        .filter(|r| r.0 == "host")
        .map(|r| r.1.as_str())
        .collect();
    assert_eq!(host_actions, ["auto_rollback", "quarantine"], "{rows:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_directory_is_watched() {
    let _serial = SERIAL.lock().await;
    let data = tempfile::tempdir().expect("tempdir");
    let plugins = builtin_plugin_dir();
    let mut hub = PulseHub::new(vec![
        (
            "PULSEHUB_DATA_DIR".into(),
            data.path().display().to_string(),
        ),
        (
            "PULSEHUB_PLUGIN_DIR".into(),
            plugins.path().display().to_string(),
        ),
    ]);
    hub.wait_ready().await;
    assert_eq!(installed(&hub).await.len(), 3);
    // Without an admin token there are no admin routes.
    let (status, _) = hub
        .put_plugin("chaos", Some("x"), Some(b"y"), Some(ADMIN_TOKEN))
        .await;
    assert_eq!(status, 405);

    let (manifest, component) = chaos_package("0.1.0", "");
    std::fs::write(plugins.path().join("chaos.wasm"), &component).expect("write");
    std::fs::write(plugins.path().join("chaos.toml"), &manifest).expect("write");
    let body = hub
        .wait_plugin("chaos", "a load from the directory", |s, _| s == 200)
        .await;
    assert_eq!(body["source"], "dir");
    assert_eq!(body["version"], "0.1.0");

    // A changed manifest is a new version.
    let (manifest2, _) = chaos_package("0.2.0", "");
    std::fs::write(plugins.path().join("chaos.toml"), &manifest2).expect("write");
    let body = hub
        .wait_plugin("chaos", "a replacement", |_, b| b["version"] == "0.2.0")
        .await;
    assert_eq!(body["previous"][0]["version"], "0.1.0", "{body}");

    // A broken pair is refused; the rest runs on.
    std::fs::write(
        plugins.path().join("broken.toml"),
        manifest.replace("\"chaos\"", "\"broken\""),
    )
    .expect("write");
    std::fs::write(plugins.path().join("broken.wasm"), b"not wasm").expect("write");
    // Removing a pair removes the plugin.
    std::fs::remove_file(plugins.path().join("chaos.wasm")).expect("remove");
    hub.wait_plugin("chaos", "a removal", |s, _| s == 404).await;
    let (status, _) = hub.plugin("broken").await;
    assert_eq!(status, 404);
    assert_eq!(installed(&hub).await.len(), 3);

    let audit = std::fs::read_to_string(data.path().join("audit.log")).expect("audit file");
    let lines: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let summary: Vec<(String, String, String)> = lines
        .iter()
        .filter(|l| {
            l["actor"] == "plugin-dir"
                && l["plugin"] != "device-classifier"
                && l["plugin"] != "last-active"
                && l["plugin"] != "page-view-counter"
        })
        .map(|l| {
            (
                l["action"].as_str().unwrap_or_default().to_owned(),
                l["plugin"].as_str().unwrap_or_default().to_owned(),
                l["outcome"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let want: Vec<(String, String, String)> = [
        ("install", "chaos", "ok"),
        ("install", "chaos", "ok"),
        ("install", "broken", "refused"),
        ("remove", "chaos", "ok"),
    ]
    .iter()
    .map(|(a, p, o)| ((*a).to_owned(), (*p).to_owned(), (*o).to_owned()))
    .collect();
    assert_eq!(summary, want, "{audit}");
}
