//! The cost of segments per changed profile: with 100 segments defined over
//! the built-in plugins' attributes, the commit finds the segments a page
//! view's changes can affect (`page_views`, `last_active_at`) and
//! re-evaluates them against the profile (`page_view_changed`); for scale,
//! every segment re-evaluated (`all_100`), and a definition parsed from its
//! CEL expression (paid once per `PUT`, not per event).

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};

use pulsehub::model::profile::Attribute;
use pulsehub::model::update::{OpKind, Value};
use pulsehub::segment::{Condition, Segment, SegmentSet};

const NOW: i64 = 1_795_989_660_000;

/// 100 definitions of one to three comparisons each, over the six
/// attributes of the built-in plugins.
fn definitions() -> Vec<String> {
    let devices = ["mobile", "desktop", "tablet"];
    (0..100)
        .map(|i| match i % 5 {
            0 => format!("page_views >= {i}"),
            1 => format!("device_type == '{}' && page_views >= {}", devices[i % 3], i % 20),
            2 => format!("last_active_at > now - duration('{}d')", i % 30 + 1),
            3 => format!(
                "os_family in ['Windows', 'iOS'] && browser_family != 'Chrome' && first_seen_at < now - duration('{}h')",
                i
            ),
            _ => format!(
                "page_views >= {} && last_active_at > now - duration('{}d') && device_type == 'mobile'",
                i % 10,
                i % 30 + 1
            ),
        })
        .collect()
}

fn attributes() -> BTreeMap<String, Attribute> {
    let attribute = |value: Value, op| Attribute {
        op: Some(op),
        value,
        plugin: "bench".to_owned(),
        plugin_version: "1.0.0".to_owned(),
        event_id: "5d1f0a3e-1c2b-4e8f-9d6a-7b3c2e1f0a94".to_owned(),
        event_time_ms: NOW,
    };
    let text = |s: &str| Value::Text(s.to_owned());
    BTreeMap::from([
        (
            "browser_family".to_owned(),
            attribute(text("Safari"), OpKind::Set),
        ),
        (
            "device_type".to_owned(),
            attribute(text("mobile"), OpKind::Set),
        ),
        (
            "first_seen_at".to_owned(),
            attribute(Value::Timestamp(NOW - 86_400_000), OpKind::Min),
        ),
        (
            "last_active_at".to_owned(),
            attribute(Value::Timestamp(NOW), OpKind::Max),
        ),
        ("os_family".to_owned(), attribute(text("iOS"), OpKind::Set)),
        (
            "page_views".to_owned(),
            attribute(Value::Integer(17), OpKind::Increment),
        ),
    ])
}

fn segments(c: &mut Criterion) {
    let definitions = definitions();
    let set = SegmentSet::new(
        definitions
            .iter()
            .enumerate()
            .map(|(i, definition)| Segment {
                id: u32::try_from(i).expect("a hundred"),
                name: format!("segment-{i:03}"),
                condition: Condition::parse(&serde_json::Value::String(definition.clone()))
                    .expect("parses"),
            }),
    );
    let attributes = attributes();
    // The memberships the profile already holds, so a run measures the
    // steady state (nothing entered or left), as most commits see it.
    let mut members_of = Vec::new();
    let all = set.all();
    set.reevaluate(&all, &attributes, NOW, &mut members_of);

    let mut group = c.benchmark_group("segments_100");
    group.bench_function("page_view_changed", |b| {
        b.iter(|| {
            let affected = set.affected(black_box(["page_views", "last_active_at"]));
            set.reevaluate(&affected, black_box(&attributes), NOW, &mut members_of)
        })
    });
    group.bench_function("all_100", |b| {
        b.iter(|| set.reevaluate(&all, black_box(&attributes), NOW, &mut members_of))
    });
    group.bench_function("parse_cel", |b| {
        let definition = serde_json::Value::String(definitions[4].clone());
        b.iter(|| Condition::parse(black_box(&definition)).expect("parses"))
    });
    group.finish();
}

criterion_group!(benches, segments);
criterion_main!(benches);
