//! The cost of a stored profile's JSON, which the commit path pays for every
//! profile a batch changes: decoding it (PostgreSQL hands the stored
//! document back) and encoding it (written back, and again for Redis).
//! A profile of the built-in plugins' six attributes, as the README shows,
//! and the same profile after a merge (`identified`): its identifiers and
//! its merge history, which every write of a merged profile encodes too.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};

use pulsehub::model::identity::{ANONYMOUS_ID, Identifier, MergeRecord, USER_ID, home_key};
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

/// [`profile`] after its user's anonymous id linked to it and the
/// anonymous id's own profile merged in.
fn identified() -> Profile {
    let mut profile = profile();
    profile.identifiers = vec![
        Identifier::new(ANONYMOUS_ID, "a-3e9d1c70"),
        Identifier::new(USER_ID, "u-42"),
    ];
    profile.merges = vec![MergeRecord {
        merged: home_key(ANONYMOUS_ID, "a-3e9d1c70"),
        event_id: "7a4e9b21-6c3d-4f80-b1e2-9d5c8a7f3b06".to_owned(),
        at_ms: 1_795_989_630_000,
    }];
    profile
}

fn benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("profile_json");
    for (name, profile) in [("", profile()), ("_identified", identified())] {
        let json = serde_json::to_vec(&profile).expect("encodes");
        group.bench_function(format!("decode{name}"), |b| {
            b.iter(|| serde_json::from_slice::<Profile>(black_box(&json)).expect("decodes"))
        });
        group.bench_function(format!("encode{name}"), |b| {
            b.iter(|| black_box(&profile).to_json().expect("encodes"))
        });
    }
    group.finish();
}

criterion_group!(profile_json, benches);
criterion_main!(profile_json);
