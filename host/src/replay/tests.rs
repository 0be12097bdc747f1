use std::sync::Arc;

use super::*;
use crate::model::merge::Provenance;
use crate::model::update::Op;

fn stretch(partition: i32, version: &str, from: i64, until: Option<i64>) -> TimelineEntry {
    TimelineEntry {
        partition,
        plugin: "counter".into(),
        version: version.into(),
        from_offset: from,
        until_offset: until,
    }
}

fn backfill(id: i64, version: &str, until: i64) -> BackfillRecord {
    BackfillRecord {
        id,
        plugin: "counter".into(),
        version: version.into(),
        since_ms: None,
        users: None,
        until: HashMap::from([(0, until)]),
        finished: true,
        after_user: None,
        page_done: BTreeSet::new(),
    }
}

fn at(offset: i64, time_ms: i64) -> At {
    At {
        partition: 0,
        offset,
        time_ms,
    }
}

#[test]
fn the_timeline_names_the_version_that_ran_over_each_offset() {
    let history = History::new(
        vec![
            stretch(0, "1.0.0", 0, Some(10)),
            stretch(0, "2.0.0", 10, None),
        ],
        Vec::new(),
    );
    assert_eq!(
        history.version_at("counter", "u", at(9, 0), None),
        Some("1.0.0")
    );
    assert_eq!(
        history.version_at("counter", "u", at(10, 0), None),
        Some("2.0.0")
    );
    assert_eq!(history.version_at("other", "u", at(10, 0), None), None);
    assert_eq!(
        history.version_at(
            "counter",
            "u",
            At {
                partition: 1,
                ..at(3, 0)
            },
            None
        ),
        None,
        "no stretch on partition 1"
    );
    assert_eq!(
        history.running("counter"),
        HashMap::from([(0, ("2.0.0", 10))])
    );
}

#[test]
fn a_backfill_done_for_a_user_overrides_what_ran_below_its_offsets() {
    let mut partial = backfill(1, "2.0.0", 10);
    partial.finished = false;
    partial.after_user = Some("m".into());
    partial.since_ms = Some(100);
    let history = History::new(
        vec![
            stretch(0, "1.0.0", 0, Some(10)),
            stretch(0, "2.0.0", 10, None),
        ],
        vec![partial],
    );
    // Done for "b" (before "m"), not yet for "x".
    assert_eq!(
        history.version_at("counter", "b", at(5, 100), None),
        Some("2.0.0")
    );
    assert_eq!(
        history.version_at("counter", "x", at(5, 100), None),
        Some("1.0.0")
    );
    assert_eq!(
        history.version_at("counter", "x", at(5, 100), Some(1)),
        Some("2.0.0")
    );
    // Older than `since`: the backfill left it out.
    assert_eq!(history.version_at("counter", "b", at(5, 99), None), None);
    // At and above its offsets, the timeline.
    assert_eq!(
        history.version_at("counter", "b", at(10, 0), None),
        Some("2.0.0")
    );
}

#[test]
fn users_written_by_an_earlier_round_of_the_page_under_way_are_done() {
    let mut partial = backfill(1, "2.0.0", 10);
    partial.finished = false;
    partial.after_user = Some("m".into());
    partial.page_done = BTreeSet::from(["q".to_owned()]);
    let history = History::new(vec![stretch(0, "1.0.0", 0, None)], vec![partial]);
    assert_eq!(
        history.version_at("counter", "q", at(5, 0), None),
        Some("2.0.0")
    );
    assert_eq!(
        history.version_at("counter", "p", at(5, 0), None),
        Some("1.0.0"),
        "after `m`, refused in the round or not reached"
    );
}

#[test]
fn a_redriven_event_holds_the_redrive_version_until_a_backfill_recomputes_it() {
    let redriven = |offset| Redriven {
        plugin: "counter".into(),
        partition: 0,
        offset,
        version: "2.0.0".into(),
    };
    let history = History::new(vec![stretch(0, "1.0.0", 0, None)], Vec::new())
        .with_redriven(vec![redriven(3)]);
    assert_eq!(
        history.version_at("counter", "u", at(3, 0), None),
        Some("2.0.0")
    );
    assert_eq!(
        history.version_at("counter", "u", at(4, 0), None),
        Some("1.0.0"),
        "only the re-driven event"
    );
    assert_eq!(history.version_at("other", "u", at(3, 0), None), None);
    // A backfill done for the user recomputed it with its own version.
    let history = History::new(
        vec![stretch(0, "1.0.0", 0, None)],
        vec![backfill(1, "3.0.0", 10)],
    )
    .with_redriven(vec![redriven(3)]);
    assert_eq!(
        history.version_at("counter", "u", at(3, 0), None),
        Some("3.0.0")
    );
    assert!(
        history
            .backfill_at("counter", "u", at(3, 0), None)
            .is_some()
    );
    assert!(
        history
            .backfill_at("counter", "u", at(10, 0), None)
            .is_none()
    );
}

#[test]
fn the_latest_backfill_wins_and_user_lists_limit_it() {
    let mut listed = backfill(2, "3.0.0", 10);
    listed.users = Some(BTreeSet::from(["a".to_owned()]));
    let history = History::new(
        vec![stretch(0, "1.0.0", 0, None)],
        vec![backfill(1, "2.0.0", 10), listed],
    );
    assert_eq!(
        history.version_at("counter", "a", at(3, 0), None),
        Some("3.0.0")
    );
    assert_eq!(
        history.version_at("counter", "b", at(3, 0), None),
        Some("2.0.0")
    );
}

fn change(op: Op, plugin: &str) -> AttributeChange {
    AttributeChange {
        op,
        provenance: Provenance {
            plugin: Arc::from(plugin),
            plugin_version: Arc::from("2.0.0"),
            event_id: "e1".into(),
            event_time_ms: 5,
        },
    }
}

#[test]
fn a_recomputed_profile_replaces_only_the_named_attributes_and_only_when_values_change() {
    let mut stored = Profile::new("u", 1);
    let changes = BTreeMap::from([
        ("views".to_owned(), change(Op::Increment(3), "counter")),
        (
            "device".to_owned(),
            change(Op::Set(Value::Text("mobile".into())), "ua"),
        ),
    ]);
    stored.apply(&changes, 1);
    let counter_only = |name: &str, _: &crate::model::profile::Attribute| name == "views";

    let fresh = BTreeMap::from([("views".to_owned(), change(Op::Increment(7), "counter"))]);
    let profile = recomputed(
        Some(&stored),
        || unreachable!(),
        counter_only,
        Some(&fresh),
        9,
    )
    .expect("the count changed");
    assert_eq!(profile.attributes["views"].value, Value::Integer(7));
    assert_eq!(profile.attributes["device"], stored.attributes["device"]);
    assert_eq!(profile.revision, stored.revision + 1);
    assert_eq!(profile.updated_at_ms, 9);

    let same = BTreeMap::from([("views".to_owned(), change(Op::Increment(3), "counter"))]);
    assert_eq!(
        recomputed(
            Some(&stored),
            || unreachable!(),
            counter_only,
            Some(&same),
            9
        ),
        None,
        "equal values are left as stored"
    );
    let gone =
        recomputed(Some(&stored), || unreachable!(), counter_only, None, 9).expect("views removed");
    assert!(!gone.attributes.contains_key("views"));
    assert_eq!(
        recomputed(None, || Profile::new("new", 9), counter_only, None, 9),
        None
    );
}

#[test]
fn a_version_uploaded_after_the_registry_was_read_is_found() {
    use crate::plugin_ops::registry::{
        PluginRecord, PluginState, Registry, VersionRecord, version_id,
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let registry = Registry::open(dir.path()).expect("opens");
    let mut versions = Versions::open(registry.clone()).expect("reads an empty registry");
    let missing = versions.get("p", "1.0.0").err().map(|e| format!("{e:#}"));
    assert!(
        missing
            .as_deref()
            .is_some_and(|e| e.contains("not in the plugin registry")),
        "{missing:?}"
    );

    // The enrich role takes 1.0.0 of `p` meanwhile.
    let id = version_id("not a manifest", b"not a component");
    registry
        .put_version(&id, "not a manifest", b"not a component")
        .expect("stores");
    let record = PluginRecord {
        state: PluginState::Active,
        since_ms: 1,
        reason: None,
        current: VersionRecord {
            id,
            version: "1.0.0".into(),
            sha256: "c".into(),
            installed_at_ms: 1,
            source: "api".into(),
        },
        previous: Vec::new(),
        activated_at_ms: 1,
        dir_id: None,
    };
    registry
        .save(&std::collections::BTreeMap::from([(
            "p".to_owned(),
            record,
        )]))
        .expect("saves");
    // Found now: loading it fails on what was stored, not on its absence.
    let error = versions.get("p", "1.0.0").err().map(|e| format!("{e:#}"));
    assert!(
        error
            .as_deref()
            .is_some_and(|e| e.contains("the stored manifest of p 1.0.0")),
        "{error:?}"
    );
    assert_eq!(versions.current("p"), Some("1.0.0"));
}

#[test]
fn a_new_profile_at_an_identifiers_home_records_that_identifier() {
    use crate::model::identity::{ANONYMOUS_ID, Identifier, home_key};
    let rules = Rules::default();
    let decode = |json: &str| Event::from_json(json.as_bytes(), || "e".into()).expect("an event");
    let anonymous = decode(r#"{"anonymous_id": "a1", "event_type": "view", "timestamp": 1}"#);
    let known = decode(r#"{"user_id": "u1", "event_type": "view", "timestamp": 1}"#);
    let home = home_key(ANONYMOUS_ID, "a1");
    let page = Page {
        events: vec![known, anonymous],
        at: vec![at(0, 1), at(1, 1)],
        keys: vec!["u1".into(), home.clone()],
        undecodable: 0,
    };
    let fresh = page.new_profile(&home, &rules, 5);
    assert_eq!(fresh.user_id, home);
    assert_eq!(fresh.identifiers, vec![Identifier::new(ANONYMOUS_ID, "a1")]);
    // A user id's profile needs none: its key is the identifier.
    assert!(page.new_profile("u1", &rules, 5).identifiers.is_empty());
    // No event filed there: nothing to take one from.
    assert!(page.new_profile("~other", &rules, 5).identifiers.is_empty());
}
