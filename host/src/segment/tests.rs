use std::collections::BTreeMap;

use serde_json::json;

use super::*;
use crate::model::update::Value;

const DAY: i64 = 86_400_000;

fn parse(condition: serde_json::Value) -> Condition {
    Condition::parse(&condition).unwrap_or_else(|e| panic!("{condition} does not parse: {e}"))
}

fn fault(condition: serde_json::Value) -> DefinitionError {
    match Condition::parse(&condition) {
        Ok(parsed) => panic!("{condition} parsed as {parsed:?}"),
        Err(e) => e,
    }
}

fn profile(attributes: &[(&str, Value)]) -> BTreeMap<String, Value> {
    attributes
        .iter()
        .map(|(name, value)| ((*name).to_owned(), value.clone()))
        .collect()
}

fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

#[test]
fn the_expression_and_the_json_tree_become_the_same_condition() {
    let expression = parse(json!(
        "page_views >= 5 && device_type == 'mobile' && last_active_at > now - duration('168h')"
    ));
    let tree = parse(json!({"and": [
        {"gte": ["page_views", 5]},
        {"eq": ["device_type", "mobile"]},
        {"gt": ["last_active_at", {"now": "-7d"}]},
    ]}));
    assert_eq!(expression, tree);
    // `a && b && c` is one list of three, not nested pairs.
    assert!(matches!(&expression, Condition::And(terms) if terms.len() == 3));
    // What GET shows reads back as the same condition.
    assert_eq!(parse(tree.to_json()), tree);
    assert_eq!(
        tree.to_json()["and"][2],
        json!({"gt": ["last_active_at", {"now": "-7d"}]})
    );
}

#[test]
fn every_operator_reads_the_same_in_both_forms() {
    let pairs = [
        (json!("country != 'DE'"), json!({"ne": ["country", "DE"]})),
        (json!("5 <= page_views"), json!({"gte": ["page_views", 5]})),
        (json!("score < 2.5"), json!({"lt": ["score", 2.5]})),
        (
            json!("page_views <= -1"),
            json!({"lte": ["page_views", -1]}),
        ),
        (
            json!("!(subscribed)"),
            json!({"not": {"eq": ["subscribed", true]}}),
        ),
        (json!("exists(email)"), json!({"exists": "email"})),
        (
            json!("device_type in ['mobile', 'tablet']"),
            json!({"in": ["device_type", ["mobile", "tablet"]]}),
        ),
        (
            json!("email.contains('@example.com')"),
            json!({"contains": ["email", "@example.com"]}),
        ),
        (
            json!("a == 1 || b == 2 || c == 3"),
            json!({"or": [{"eq": ["a", 1]}, {"eq": ["b", 2]}, {"eq": ["c", 3]}]}),
        ),
        (
            json!("signed_up_at >= timestamp('2026-01-01T00:00:00Z')"),
            json!({"gte": ["signed_up_at", {"timestamp": "2026-01-01T00:00:00Z"}]}),
        ),
        (
            json!("trial_ends_at < now + duration('1h30m')"),
            json!({"lt": ["trial_ends_at", {"now": "+90m"}]}),
        ),
    ];
    for (expression, tree) in pairs {
        assert_eq!(
            parse(expression.clone()),
            parse(tree.clone()),
            "{expression} vs {tree}"
        );
    }
}

#[test]
fn a_profile_is_a_member_when_the_condition_holds() {
    let segment = parse(json!("page_views >= 5 && device_type == 'mobile'"));
    let member = profile(&[
        ("page_views", Value::Integer(5)),
        ("device_type", text("mobile")),
    ]);
    let too_few = profile(&[
        ("page_views", Value::Integer(4)),
        ("device_type", text("mobile")),
    ]);
    let desktop = profile(&[
        ("page_views", Value::Integer(9)),
        ("device_type", text("desktop")),
    ]);
    let unknown_device = profile(&[("page_views", Value::Integer(9))]);
    assert!(segment.matches(&member, 0));
    assert!(!segment.matches(&too_few, 0));
    assert!(!segment.matches(&desktop, 0));
    assert!(!segment.matches(&unknown_device, 0));
}

#[test]
fn a_missing_attribute_or_another_type_makes_a_comparison_false() {
    let empty = profile(&[]);
    for condition in [
        "x == 1",
        "x != 1",
        "x > 1",
        "x in [1]",
        "x.contains('a')",
        "exists(x)",
    ] {
        assert!(!parse(json!(condition)).matches(&empty, 0), "{condition}");
    }
    assert!(parse(json!("!(x == 1)")).matches(&empty, 0));
    let texty = profile(&[("x", text("1"))]);
    assert!(!parse(json!("x == 1")).matches(&texty, 0));
    assert!(!parse(json!("x > 0")).matches(&texty, 0));
    assert!(parse(json!("x != 1")).matches(&texty, 0));
    // Integers and floats compare as numbers.
    let float = profile(&[("x", Value::Float(5.0))]);
    assert!(parse(json!("x == 5")).matches(&float, 0));
    assert!(parse(json!("x in [4, 5]")).matches(&float, 0));
    assert!(parse(json!({"contains": ["x", "a"]})).matches(&profile(&[("x", text("cat"))]), 0));
}

#[test]
fn a_time_relative_condition_changes_with_the_clock_and_says_when() {
    let active = parse(json!("last_active_at > now - duration('7d')"));
    let seen = 100 * DAY;
    let attributes = profile(&[("last_active_at", Value::Timestamp(seen))]);
    assert!(active.is_time_relative());
    assert!(active.matches(&attributes, seen + 6 * DAY));
    assert!(!active.matches(&attributes, seen + 8 * DAY));
    // It flips exactly when it says it comes due, and not a millisecond before.
    let due = active.due_after(&attributes, seen).expect("comes due");
    assert_eq!(due, seen + 7 * DAY);
    assert!(active.matches(&attributes, due - 1));
    assert!(!active.matches(&attributes, due));
    assert_eq!(
        active.due_after(&attributes, due),
        None,
        "nothing changes after it left"
    );

    let inclusive = parse(json!("last_active_at >= now - duration('7d')"));
    let due = inclusive.due_after(&attributes, seen).expect("comes due");
    assert!(inclusive.matches(&attributes, due - 1));
    assert!(!inclusive.matches(&attributes, due));

    // The opposite side enters when the other leaves.
    let lapsed = parse(json!("last_active_at <= now - duration('7d')"));
    assert_eq!(lapsed.due_after(&attributes, seen), Some(seen + 7 * DAY));
    assert!(!lapsed.matches(&attributes, seen + 7 * DAY - 1));
    assert!(lapsed.matches(&attributes, seen + 7 * DAY));

    // Without the attribute, or without `now`, nothing comes due.
    assert_eq!(active.due_after(&profile(&[]), seen), None);
    let fixed = parse(json!("page_views > 3"));
    assert!(!fixed.is_time_relative());
    assert_eq!(fixed.due_after(&attributes, seen), None);
}

#[test]
fn a_condition_names_the_attributes_it_reads() {
    let segment = parse(json!(
        "(page_views >= 5 || exists(email)) && !(device_type in ['bot']) && city.contains('ber')"
    ));
    let read: Vec<&str> = segment
        .attributes()
        .into_iter()
        .map(String::as_str)
        .collect();
    assert_eq!(read, ["city", "device_type", "email", "page_views"]);
}

#[test]
fn a_syntax_error_says_where() {
    let e = fault(json!("page_views >= && device_type == 'mobile'"));
    assert_eq!(
        e.at,
        Position::Text {
            line: 1,
            column: 15
        },
        "{e}"
    );
    let e = fault(json!("page_views >= 5 &&\n  device_type = 'mobile'"));
    assert!(matches!(e.at, Position::Text { line: 2, .. }), "{e}");
    // Input the parser panics on is refused all the same, at its end.
    for (input, column) in [("page_views >= ", 15), ("1 +", 4), (".", 2), ("(", 2)] {
        let e = fault(json!(input));
        assert_eq!(e.at, Position::Text { line: 1, column }, "{input}: {e}");
    }
}

#[test]
fn an_unsupported_construct_is_placed_at_its_name() {
    let e = fault(json!("page_views >= 5 && size(device_type) > 2"));
    assert_eq!(
        e.at,
        Position::Text {
            line: 1,
            column: 20
        },
        "{e}"
    );
    assert!(e.message.contains("`size` is not supported"), "{e}");
    let e = fault(json!("page_views >= 5 && profile.city == 'Berlin'"));
    assert!(e.message.contains("named directly (`city`)"), "{e}");
    let e = fault(json!("last_active_at == now - duration('7d')"));
    assert!(e.message.contains("not == or !="), "{e}");
    let e = fault(json!("last_active_at > now - duration('7 days')"));
    assert!(e.message.contains("not a duration"), "{e}");
    let e = fault(json!("page_views >= page_views_yesterday"));
    assert!(e.message.contains("expected a value"), "{e}");
}

#[test]
fn a_json_fault_names_its_pointer() {
    let cases = [
        (
            json!({"and": [{"gte": ["page_views", 5]}, {"eq": ["device_type", null]}]}),
            "/and/1/eq/1",
        ),
        (
            json!({"or": [{"exists": "email"}, {"between": ["a", 1]}]}),
            "/or/1/between",
        ),
        (json!({"not": {"gte": ["2fast", 1]}}), "/not/gte/0"),
        (json!({"in": ["country", ["DE", ["FR"]]]}), "/in/1/1"),
        (json!({"gt": ["seen", {"now": "-7 days"}]}), "/gt/1/now"),
        (
            json!({"gt": ["seen", {"timestamp": "yesterday"}]}),
            "/gt/1/timestamp",
        ),
        (json!({"eq": ["seen", {"now": "-7d"}]}), "/eq"),
        (json!({"and": []}), "/and"),
        (json!({"eq": ["a", 1], "ne": ["b", 2]}), ""),
        (json!(17), ""),
    ];
    for (tree, pointer) in cases {
        let e = fault(tree.clone());
        assert_eq!(
            e.at,
            Position::Json {
                pointer: pointer.to_owned()
            },
            "{tree}: {e}"
        );
    }
}

#[test]
fn durations_read_as_cel_writes_them() {
    for (text, ms) in [
        ("168h", 7 * DAY),
        ("7d", 7 * DAY),
        ("-7d", -7 * DAY),
        ("+1h30m", 5_400_000),
        ("1.5s", 1_500),
        ("250ms", 250),
        ("1500us", 1),
        ("0s", 0),
    ] {
        assert_eq!(duration::parse(text), Ok(ms), "{text}");
    }
    for bad in ["", "7", "h", "7x", "1..5s", "-"] {
        assert!(duration::parse(bad).is_err(), "{bad:?}");
    }
    for ms in [7 * DAY, -7 * DAY, 5_400_000, 1_500, 0, 60_000] {
        assert_eq!(duration::parse(&duration::format(ms)), Ok(ms), "{ms}");
    }
    assert_eq!(duration::format(-7 * DAY), "-7d");
    assert_eq!(duration::format(5_400_000), "90m");
}

fn segment(id: u32, name: &str, condition: &str) -> Segment {
    Segment {
        id,
        name: name.to_owned(),
        condition: parse(json!(condition)),
    }
}

#[test]
fn a_change_reevaluates_only_the_segments_that_read_it() {
    let set = SegmentSet::new([
        segment(
            1,
            "mobile-fans",
            "page_views >= 5 && device_type == 'mobile'",
        ),
        segment(2, "active", "last_active_at > now - duration('7d')"),
        segment(3, "berliners", "city == 'Berlin'"),
    ]);
    let names = |indices: Vec<usize>| -> Vec<&str> {
        indices
            .into_iter()
            .filter_map(|i| set.get(i).map(|segment| segment.name.as_str()))
            .collect()
    };
    assert_eq!(names(set.affected(["page_views"])), ["mobile-fans"]);
    assert_eq!(
        names(set.affected(["last_active_at", "device_type", "page_views"])),
        ["mobile-fans", "active"]
    );
    assert!(set.affected(["browser_family"]).is_empty());

    let mut attributes = profile(&[
        ("page_views", Value::Integer(5)),
        ("device_type", text("mobile")),
        ("city", text("Berlin")),
    ]);
    // Memberships the change cannot affect stay, even of a deleted segment.
    let mut members_of = vec![3, 9];
    let affected = set.affected(["page_views"]);
    let changes = set.reevaluate(&affected, &attributes, 0, &mut members_of);
    assert_eq!(changes.entered, [1]);
    assert!(changes.exited.is_empty());
    assert_eq!(members_of, [1, 3, 9]);
    // The same state again changes nothing: a replay emits nothing new.
    assert!(
        set.reevaluate(&affected, &attributes, 0, &mut members_of)
            .is_empty()
    );

    attributes.insert("device_type".to_owned(), text("desktop"));
    let changes = set.reevaluate(
        &set.affected(["device_type"]),
        &attributes,
        0,
        &mut members_of,
    );
    assert_eq!(changes.exited, [1]);
    assert_eq!(members_of, [3, 9]);
    assert_eq!(set.by_id(3).map(|s| s.name.as_str()), Some("berliners"));
    assert_eq!(set.by_id(9), None);
}

#[test]
fn many_segments_are_indexed_past_one_word() {
    let set = SegmentSet::new(
        (0..150).map(|i| segment(i, &format!("s{i}"), &format!("a{} == 1", i % 3))),
    );
    let affected = set.affected(["a1"]);
    assert_eq!(affected.len(), 50);
    assert!(
        affected
            .iter()
            .all(|&i| set.get(i).is_some_and(|s| s.id % 3 == 1))
    );
    let mut members_of = Vec::new();
    let changes = set.reevaluate(
        &set.all(),
        &profile(&[("a2", Value::Integer(1))]),
        0,
        &mut members_of,
    );
    assert_eq!(changes.entered.len(), 50);
    assert!(members_of.iter().all(|id| id % 3 == 2));
}

#[test]
fn the_set_says_when_a_profile_next_comes_due() {
    let set = SegmentSet::new([
        segment(1, "active-7d", "last_active_at > now - duration('7d')"),
        segment(2, "active-1d", "last_active_at > now - duration('1d')"),
        segment(3, "heavy", "page_views > 100"),
    ]);
    assert_eq!(set.time_relative(), [0, 1]);
    let seen = 100 * DAY;
    let attributes = profile(&[("last_active_at", Value::Timestamp(seen))]);
    assert_eq!(set.due_after(&attributes, seen), Some(seen + DAY));
    assert_eq!(set.due_after(&attributes, seen + DAY), Some(seen + 7 * DAY));
    assert_eq!(set.due_after(&attributes, seen + 7 * DAY), None);
}

/// A stored profile with these integer and text attributes, at revision
/// `revision`.
fn stored(revision: i64, attributes: &[(&str, Value)]) -> crate::model::profile::Profile {
    let mut profile = crate::model::profile::Profile::new("u-1", 0);
    for (name, value) in attributes {
        let attribute = crate::model::profile::Attribute {
            value: value.clone(),
            plugin: "p".into(),
            plugin_version: "1.0.0".into(),
            event_id: "e".into(),
            event_time_ms: 0,
            op: None,
        };
        profile.attributes.insert((*name).to_owned(), attribute);
    }
    profile.revision = revision;
    profile
}

#[test]
fn a_profile_keeps_its_memberships_and_a_commit_updates_them() {
    let set = SegmentSet::new([
        segment(1, "fans", "page_views >= 5"),
        segment(2, "anonymous", "!exists(email)"),
        segment(3, "mobile", "device_type == 'mobile'"),
    ]);
    // A new profile is evaluated against every segment, including one
    // that holds for it without reading a changed attribute.
    let mut profile = stored(1, &[("page_views", Value::Integer(5))]);
    let changes = set.evaluate(&mut profile, Some(["page_views"]), 0);
    assert_eq!(changes.entered, vec![1, 2]);
    assert_eq!(profile.segments, vec![1, 2]);

    // Later commits evaluate only what their changes read; evaluating the
    // same state again changes nothing.
    profile.revision = 2;
    let again = set.evaluate(&mut profile, Some(["page_views"]), 0);
    assert!(again.is_empty(), "{again:?}");
    profile.attributes.insert(
        "email".into(),
        stored(1, &[("email", text("a@b"))]).attributes["email"].clone(),
    );
    // `email` changed, but the commit named only `device_type`: the
    // `anonymous` membership is left as it was.
    let unrelated = set.evaluate(&mut profile, Some(["device_type"]), 0);
    assert!(unrelated.is_empty(), "{unrelated:?}");
    let left = set.evaluate(&mut profile, Some(["email"]), 0);
    assert_eq!((left.entered, left.exited), (vec![], vec![2]));
    assert_eq!(profile.segments, vec![1]);

    // A merge (every attribute may change) evaluates everything.
    profile.attributes.insert(
        "device_type".into(),
        stored(1, &[("device_type", text("mobile"))]).attributes["device_type"].clone(),
    );
    let merged = set.evaluate(&mut profile, None::<[&str; 0]>, 0);
    assert_eq!(merged.entered, vec![3]);
    assert_eq!(profile.segments, vec![1, 3]);

    // Ids of segments the set no longer defines stay until they are
    // re-evaluated (readers keep the live ones); a pointer leaves all.
    profile.segments.insert(0, 0);
    let unchanged = set.evaluate(&mut profile, Some(["page_views"]), 0);
    assert!(unchanged.is_empty());
    assert_eq!(profile.segments, vec![0, 1, 3]);
    profile.merged_into = Some("u-2".into());
    let gone = set.evaluate(&mut profile, Some(["page_views"]), 0);
    assert_eq!(gone.exited, vec![0, 1, 3]);
    assert!(profile.segments.is_empty());
}

#[test]
fn the_scheduled_time_moves_only_when_it_must_come_earlier() {
    let set = SegmentSet::new([segment(1, "week", "last_active_at > now - duration('7d')")]);
    let mut profile = stored(2, &[("last_active_at", Value::Timestamp(10 * DAY))]);
    assert_eq!(set.schedule(&mut profile, 10 * DAY), Some(17 * DAY));
    assert_eq!(profile.segments_due_ms, Some(17 * DAY));
    // Later activity: the true time moves on, the stored one stays (a visit
    // at day 17 finds nothing and moves it then).
    profile.attributes.insert(
        "last_active_at".into(),
        stored(1, &[("last_active_at", Value::Timestamp(12 * DAY))]).attributes["last_active_at"]
            .clone(),
    );
    assert_eq!(set.schedule(&mut profile, 12 * DAY), Some(17 * DAY));
    // At the visit, the true time.
    assert_eq!(set.schedule(&mut profile, 17 * DAY), Some(19 * DAY));
    // An earlier true time (the value was set back) wins.
    profile.attributes.insert(
        "last_active_at".into(),
        stored(1, &[("last_active_at", Value::Timestamp(11 * DAY))]).attributes["last_active_at"]
            .clone(),
    );
    assert_eq!(set.schedule(&mut profile, 17 * DAY + 1), Some(18 * DAY));
    // Nothing time-relative left: the stored time stays until it comes.
    let none = SegmentSet::new([segment(2, "fans", "page_views >= 1")]);
    assert_eq!(none.schedule(&mut profile, 17 * DAY + 2), Some(18 * DAY));
    assert_eq!(none.schedule(&mut profile, 18 * DAY), None);
}

#[test]
fn changes_in_a_row_add_up_to_what_changed_in_all() {
    let first = MembershipChanges {
        entered: vec![1, 2],
        exited: vec![3, 4],
    };
    let next = MembershipChanges {
        entered: vec![3, 5],
        exited: vec![1, 6],
    };
    // 1 entered and left, 3 left and came back: neither changed.
    assert_eq!(
        first.then(&next),
        MembershipChanges {
            entered: vec![2, 5],
            exited: vec![4, 6],
        }
    );
    assert_eq!(MembershipChanges::default().then(&next), next);
}
