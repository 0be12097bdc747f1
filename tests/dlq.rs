//! `pulsehub dlq list` as an operator runs it: over a dead-letter topic of
//! the real broker written by PulseHub's own sink, and over the embedded
//! store.

mod support;

use std::process::{Command, Output};

use pulsehub::kafka::{KafkaDeadLetters, ensure_topic};
use pulsehub::pipeline::dead_letter::{DeadLetter, DeadLetterSink, DeadReason};
use pulsehub::plugin::ErrorKind;
use pulsehub::store::embedded::EmbeddedStore;
use serde_json::{Value, json};

use support::kafka::{produce, producer};
use support::services::{kafka_brokers, unique};

fn letter(offset: i64, reason: DeadReason) -> DeadLetter {
    DeadLetter {
        topic: "events".into(),
        partition: (offset % 3) as i32,
        offset,
        key: Some(format!("u{offset}").into_bytes()),
        payload: format!("{{\"n\":{offset}}}").into_bytes(),
        event_id: Some(format!("e{offset}")),
        reason,
    }
}

fn failed(plugin: &str, version: &str) -> DeadReason {
    DeadReason::PluginError {
        plugin: plugin.into(),
        plugin_version: version.into(),
        kind: ErrorKind::Trap,
        detail: format!("{plugin} {version} trapped"),
    }
}

fn bad() -> DeadReason {
    DeadReason::BadEvent {
        detail: "not a JSON object".into(),
    }
}

/// 4 failures of chaos 0.1.0, 1 of chaos 0.2.0, 2 bad events.
fn letters() -> Vec<DeadLetter> {
    vec![
        letter(1, failed("chaos", "0.1.0")),
        letter(2, bad()),
        letter(3, failed("chaos", "0.1.0")),
        letter(4, failed("chaos", "0.2.0")),
        letter(5, failed("chaos", "0.1.0")),
        letter(6, bad()),
        letter(7, failed("chaos", "0.1.0")),
    ]
}

fn dlq_list(env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pulsehub"))
        .args(["dlq", "list"])
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .expect("run pulsehub dlq list")
}

fn report(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "dlq list failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("a JSON report on stdout")
}

/// `(reason, plugin version, count, sample offsets)` of each group.
fn groups(report: &Value) -> Vec<(String, String, u64, Vec<i64>)> {
    report["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| {
            let version = match (g["plugin"].as_str(), g["plugin_version"].as_str()) {
                (Some(plugin), Some(version)) => format!("{plugin}@{version}"),
                _ => String::new(),
            };
            let samples = g["samples"]
                .as_array()
                .expect("samples")
                .iter()
                .map(|s| s["offset"].as_i64().expect("offset"))
                .collect();
            (
                g["reason"].as_str().expect("reason").to_owned(),
                version,
                g["count"].as_u64().expect("count"),
                samples,
            )
        })
        .collect()
}

#[tokio::test]
async fn the_dead_letter_topic_is_counted_by_reason_and_plugin_version_with_samples() {
    let brokers = kafka_brokers();
    let topic = unique("dlq_list");
    let dlq = format!("{topic}.dlq");
    ensure_topic(&brokers, &dlq, 2).await.expect("dlq topic");
    let sink = KafkaDeadLetters::new(&brokers, &dlq).expect("sink");
    sink.send(&letters()).await.expect("dead letters written");
    // Something else wrote to the topic too.
    produce(&producer(), &dlq, &[("k".to_owned(), "hello".to_owned())]).await;
    let env = [
        ("PULSEHUB_KAFKA_BROKERS", brokers.as_str()),
        ("PULSEHUB_KAFKA_TOPIC", topic.as_str()),
    ];

    let all = report(&dlq_list(&env, &["--samples", "2"]));
    assert_eq!(all["source"], dlq.as_str());
    assert_eq!(all["total"], 8, "{all:#}");
    assert_eq!(all["unreadable"], 1);
    let mut found = groups(&all);
    // Partitions are read side by side: samples are the first of each
    // partition's letters, in no fixed order across partitions.
    for group in &mut found {
        group.3.sort_unstable();
    }
    assert_eq!(found[0].0, "bad-event");
    assert_eq!((found[0].2, found[0].3.len()), (2, 2));
    assert_eq!(
        (found[1].0.as_str(), found[1].1.as_str(), found[1].2),
        ("plugin-error", "chaos@0.1.0", 4)
    );
    assert_eq!(found[1].3.len(), 2);
    assert_eq!(
        found[2],
        (
            "plugin-error".to_owned(),
            "chaos@0.2.0".to_owned(),
            1,
            vec![4]
        )
    );
    let sample = all["groups"][2]["samples"][0].clone();
    assert_eq!(
        sample,
        json!({"topic": "events", "partition": 1, "offset": 4, "event_id": "e4",
               "detail": "chaos 0.2.0 trapped"})
    );

    let bad_only = report(&dlq_list(&env, &["--reason", "bad-event"]));
    assert_eq!(bad_only["total"], 2, "{bad_only:#}");
    assert_eq!(groups(&bad_only).len(), 1);
    let chaos = report(&dlq_list(&env, &["--plugin", "chaos", "--samples", "0"]));
    assert_eq!(chaos["total"], 5, "{chaos:#}");
    assert_eq!(
        groups(&chaos),
        [
            (
                "plugin-error".to_owned(),
                "chaos@0.1.0".to_owned(),
                4,
                vec![]
            ),
            (
                "plugin-error".to_owned(),
                "chaos@0.2.0".to_owned(),
                1,
                vec![]
            ),
        ]
    );

    let missing = dlq_list(
        &[
            ("PULSEHUB_KAFKA_BROKERS", brokers.as_str()),
            ("PULSEHUB_KAFKA_DLQ_TOPIC", "no_such_topic_anywhere.dlq"),
        ],
        &[],
    );
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("does not exist"), "{stderr}");
}

#[tokio::test]
async fn the_embedded_store_s_dead_letters_are_listed_the_same_way() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = EmbeddedStore::open(dir.path()).expect("embedded store");
        store.send(&letters()).await.expect("dead letters stored");
    }
    let data_dir = dir.path().display().to_string();
    let listed = report(&dlq_list(
        &[("PULSEHUB_DATA_DIR", data_dir.as_str())],
        &["--samples", "1"],
    ));
    assert_eq!(listed["total"], 7, "{listed:#}");
    let nowhere = dlq_list(&[("PULSEHUB_DATA_DIR", "/nonexistent/pulsehub-data")], &[]);
    assert!(!nowhere.status.success());
    let stderr = String::from_utf8_lossy(&nowhere.stderr);
    assert!(stderr.contains("no embedded store at"), "{stderr}");
    assert_eq!(
        groups(&listed),
        [
            ("bad-event".to_owned(), String::new(), 2, vec![2]),
            (
                "plugin-error".to_owned(),
                "chaos@0.1.0".to_owned(),
                4,
                vec![1]
            ),
            (
                "plugin-error".to_owned(),
                "chaos@0.2.0".to_owned(),
                1,
                vec![4]
            ),
        ]
    );
}
