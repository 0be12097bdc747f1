//! What `/metrics` shows after each kind of recording.

use std::time::Duration;

use axum::http::{Method, StatusCode};

use super::{Backend, Metrics, PipelineRole};
use crate::pipeline::dead_letter::DeadReason;
use crate::plugin::ErrorKind;

/// The value of the series `name{labels}` in `text`, labels written as
/// rendered (`role="enrich",partition="3"`).
fn value(text: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map(|v| v.parse().unwrap_or_else(|e| panic!("{v}: {e}")))
}

#[test]
fn pipeline_series_carry_role_and_partition() {
    let metrics = Metrics::new();
    metrics.events_consumed(PipelineRole::Enrich, 3, 5);
    metrics.events_consumed(PipelineRole::Enrich, 3, 2);
    metrics.events_consumed(PipelineRole::Archive, 0, 1);
    metrics.batch_received(PipelineRole::Enrich, 7);
    metrics.commit_attempt(Duration::from_millis(3));
    metrics.dead_letters(&[
        DeadReason::BadEvent {
            detail: "not JSON".into(),
        },
        DeadReason::PluginError {
            plugin: "p".into(),
            plugin_version: "1.0.0".into(),
            kind: ErrorKind::Trap,
            detail: "unreachable".into(),
        },
        DeadReason::BadEvent {
            detail: "no user_id".into(),
        },
    ]);
    let text = metrics.render();
    let consumed = "pulsehub_events_consumed_total";
    assert_eq!(
        value(&text, consumed, r#"role="enrich",partition="3""#),
        Some(7.0),
        "{text}"
    );
    assert_eq!(
        value(&text, consumed, r#"role="archive",partition="0""#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "pulsehub_batch_events_count", r#"role="enrich""#),
        Some(1.0)
    );
    assert_eq!(
        value(&text, "pulsehub_batch_events_sum", r#"role="enrich""#),
        Some(7.0)
    );
    assert_eq!(
        value(
            &text,
            "pulsehub_batch_events_bucket",
            r#"le="4.0",role="enrich""#
        ),
        Some(0.0)
    );
    assert_eq!(
        value(
            &text,
            "pulsehub_batch_events_bucket",
            r#"le="8.0",role="enrich""#
        ),
        Some(1.0)
    );
    assert!(
        text.contains("pulsehub_commit_duration_seconds_count 1\n"),
        "{text}"
    );
    let letters = "pulsehub_dead_letters_total";
    assert_eq!(
        value(&text, letters, r#"reason="bad_event""#),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        value(&text, letters, r#"reason="plugin_error""#),
        Some(1.0),
        "{text}"
    );
}

#[test]
fn a_released_partition_loses_its_lag_series() {
    let metrics = Metrics::new();
    metrics.consumer_lag(PipelineRole::Enrich, 0, 12);
    metrics.consumer_lag(PipelineRole::Enrich, 1, 4);
    metrics.consumer_lag(PipelineRole::Enrich, 1, 0);
    let text = metrics.render();
    let lag = "pulsehub_consumer_lag";
    assert_eq!(
        value(&text, lag, r#"role="enrich",partition="0""#),
        Some(12.0),
        "{text}"
    );
    assert_eq!(
        value(&text, lag, r#"role="enrich",partition="1""#),
        Some(0.0),
        "{text}"
    );

    metrics.partition_released(PipelineRole::Enrich, 0);
    let text = metrics.render();
    assert_eq!(
        value(&text, lag, r#"role="enrich",partition="0""#),
        None,
        "{text}"
    );
    assert_eq!(
        value(&text, lag, r#"role="enrich",partition="1""#),
        Some(0.0),
        "{text}"
    );
}

#[test]
fn store_errors_are_counted_apart_from_every_call_timed() {
    let metrics = Metrics::new();
    let fast = Duration::from_micros(200);
    metrics.store_operation(Backend::Postgres, "commit", fast, true);
    metrics.store_operation(Backend::Postgres, "commit", fast, false);
    metrics.store_operation(Backend::Redis, "get", fast, true);
    metrics.cache_lookup(true);
    metrics.cache_lookup(true);
    metrics.cache_lookup(false);
    let text = metrics.render();
    let calls = "pulsehub_store_operation_duration_seconds_count";
    assert_eq!(
        value(&text, calls, r#"store="postgres",operation="commit""#),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        value(&text, calls, r#"store="redis",operation="get""#),
        Some(1.0),
        "{text}"
    );
    let errors = "pulsehub_store_errors_total";
    assert_eq!(
        value(&text, errors, r#"store="postgres",operation="commit""#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&text, errors, r#"store="redis",operation="get""#),
        None,
        "{text}"
    );
    let lookups = "pulsehub_cache_lookups_total";
    assert_eq!(
        value(&text, lookups, r#"result="hit""#),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        value(&text, lookups, r#"result="miss""#),
        Some(1.0),
        "{text}"
    );
}

#[test]
fn http_series_use_the_route_template_and_bounded_methods() {
    let metrics = Metrics::new();
    let route = Some("/api/v1/profiles/{user_id}");
    let took = Duration::from_millis(2);
    metrics.http_request(route, &Method::GET, StatusCode::OK, took);
    metrics.http_request(route, &Method::GET, StatusCode::NOT_FOUND, took);
    metrics.http_request(None, &Method::GET, StatusCode::NOT_FOUND, took);
    let odd = Method::from_bytes(b"FROB").expect("a valid token");
    metrics.http_request(None, &odd, StatusCode::NOT_FOUND, took);
    let text = metrics.render();
    let requests = "pulsehub_http_requests_total";
    let labels = |route: &str, method: &str, status: u16| {
        format!(r#"route="{route}",method="{method}",status="{status}""#)
    };
    let profiles = "/api/v1/profiles/{user_id}";
    assert_eq!(
        value(&text, requests, &labels(profiles, "GET", 200)),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&text, requests, &labels(profiles, "GET", 404)),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&text, requests, &labels("unmatched", "GET", 404)),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&text, requests, &labels("unmatched", "other", 404)),
        Some(1.0),
        "{text}"
    );
    let durations = "pulsehub_http_request_duration_seconds_count";
    assert_eq!(
        value(
            &text,
            durations,
            &format!(r#"route="{profiles}",method="GET""#)
        ),
        Some(2.0),
        "{text}"
    );
}

#[test]
fn a_reconcile_run_replaces_what_the_last_one_found() {
    let metrics = Metrics::new();
    let found = std::collections::BTreeMap::from([
        (("postgres".to_owned(), "page_views".to_owned()), 3),
        (("redis".to_owned(), "device_type".to_owned()), 1),
    ]);
    metrics.reconcile.finished(1_000, &found, 1_800_000_000.5);
    let text = metrics.render();
    let discrepancies = "pulsehub_reconcile_discrepancies";
    assert_eq!(
        value(
            &text,
            discrepancies,
            r#"store="postgres",attribute="page_views""#
        ),
        Some(3.0)
    );
    assert_eq!(
        value(
            &text,
            discrepancies,
            r#"store="redis",attribute="device_type""#
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&text, "pulsehub_reconcile_last_run_timestamp_seconds", ""),
        None,
        "unlabelled series render without braces"
    );
    assert!(
        text.contains("pulsehub_reconcile_last_run_timestamp_seconds 1800000000.5"),
        "{text}"
    );
    assert!(
        text.contains("pulsehub_reconcile_checked_profiles 1000"),
        "{text}"
    );

    // A healthy run: nothing found, so no series at all; a failed one
    // leaves the figures of the last finished run.
    metrics
        .reconcile
        .finished(1_000, &std::collections::BTreeMap::new(), 1_800_000_060.0);
    metrics.reconcile.failed();
    let text = metrics.render();
    assert!(
        !text.contains("pulsehub_reconcile_discrepancies{"),
        "{text}"
    );
    assert_eq!(
        value(&text, "pulsehub_reconcile_runs_total", r#"outcome="done""#),
        Some(2.0)
    );
    assert_eq!(
        value(
            &text,
            "pulsehub_reconcile_runs_total",
            r#"outcome="failed""#
        ),
        Some(1.0)
    );
}
