//! The cost of a stored profile's JSON, which the commit path pays for every
//! profile a batch changes: decoding it (PostgreSQL hands the stored
//! document back) and encoding it (written back, and again for Redis).
//! A profile of the built-in plugins' six attributes, as the README shows.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};

use pulsehub::model::profile::{Attribute, Profile};
use pulsehub::model::update::{OpKind, Value};

fn profile() -> Profile {
    let attribute = |value: Value, plugin: &str, event: &str, at: i64, op| Attribute {
        op: Some(op),
        value,
        plugin: plugin.to_owned(),
        plugin_version: "1.0.0".to_owned(),
        event_id: event.to_owned(),
        event_time_ms: at,
    };
    let (first, second) = (
        "0b9e2c56-8f7d-4c1e-9a43-2f1c7d3e5a10",
        "5d1f0a3e-1c2b-4e8f-9d6a-7b3c2e1f0a94",
    );
    let (t1, t2) = (1_795_989_600_123, 1_795_989_660_000);
    let text = |s: &str| Value::Text(s.to_owned());
    let attributes = BTreeMap::from([
        (
            "browser_family".to_owned(),
            attribute(text("Chrome"), "device-classifier", second, t2, OpKind::Set),
        ),
        (
            "device_type".to_owned(),
            attribute(
                text("desktop"),
                "device-classifier",
                second,
                t2,
                OpKind::Set,
            ),
        ),
        (
            "first_seen_at".to_owned(),
            attribute(Value::Timestamp(t1), "last-active", first, t1, OpKind::Min),
        ),
        (
            "last_active_at".to_owned(),
            attribute(Value::Timestamp(t2), "last-active", second, t2, OpKind::Max),
        ),
        (
            "os_family".to_owned(),
            attribute(
                text("Windows"),
                "device-classifier",
                second,
                t2,
                OpKind::Set,
            ),
        ),
        (
            "page_views".to_owned(),
            attribute(
                Value::Integer(17),
                "page-view-counter",
                first,
                t1,
                OpKind::Increment,
            ),
        ),
    ]);
    let mut profile = Profile::new("u-42", t1);
    profile.attributes = attributes;
    profile.updated_at_ms = t2;
    profile.revision = 9;
    profile
}

fn benches(c: &mut Criterion) {
    let profile = profile();
    let json = serde_json::to_vec(&profile).expect("encodes");
    let mut group = c.benchmark_group("profile_json");
    group.bench_function("decode", |b| {
        b.iter(|| serde_json::from_slice::<Profile>(black_box(&json)).expect("decodes"))
    });
    group.bench_function("encode", |b| {
        b.iter(|| serde_json::to_vec(black_box(&profile)).expect("encodes"))
    });
    group.finish();
}

criterion_group!(profile_json, benches);
criterion_main!(profile_json);
