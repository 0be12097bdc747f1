use super::*;
use crate::model::merge::{AttributeChange, Provenance};
use crate::model::update::{Op, Value};

fn id(kind: &str, value: &str) -> Identifier {
    Identifier::new(kind, value)
}

fn link(event: &str, ids: &[(&str, &str)]) -> Link {
    Link {
        event_id: event.to_owned(),
        identifiers: ids.iter().map(|(k, v)| id(k, v)).collect(),
        alias: false,
    }
}

fn event(json: &str) -> Event {
    Event::from_json(json.as_bytes(), || "e-derived".to_owned()).expect("a valid event")
}

/// A stored profile at `key` created at `created`, with `views` page views.
fn stored(key: &str, created: i64, views: i64, identifiers: &[(&str, &str)]) -> Profile {
    let mut profile = Profile::new(key, created);
    let change = AttributeChange {
        op: Op::Increment(views),
        provenance: Provenance {
            plugin: "counter".into(),
            plugin_version: "1.0.0".into(),
            event_id: format!("{key}-e"),
            event_time_ms: created,
        },
    };
    let changes = [("page_views".to_owned(), change)];
    profile.apply(changes.iter().map(|(k, v)| (k, v)), created);
    profile.identifiers = identifiers.iter().map(|(k, v)| id(k, v)).collect();
    profile
}

fn rows(profiles: Vec<Profile>) -> HashMap<String, Profile> {
    profiles
        .into_iter()
        .map(|p| (p.user_id.clone(), p))
        .collect()
}

fn views(profile: &Profile) -> Option<&Value> {
    profile.attributes.get("page_views").map(|a| &a.value)
}

#[test]
fn home_keys_keep_user_ids_and_derive_the_rest() {
    assert_eq!(home_key(USER_ID, "u42"), "u42");
    let anonymous = home_key(ANONYMOUS_ID, "a1");
    assert!(anonymous.starts_with("~anonymous_id:"), "{anonymous}");
    assert_eq!(anonymous.len(), "~anonymous_id:".len() + 32);
    assert_eq!(anonymous, home_key(ANONYMOUS_ID, "a1"), "deterministic");
    assert_ne!(anonymous, home_key(ANONYMOUS_ID, "a2"));
    assert_ne!(
        anonymous,
        home_key("email", "a1"),
        "the type is part of the key"
    );
}

#[test]
fn blocked_values_never_become_identifiers() {
    let rules = Rules::default();
    for value in [
        "",
        "null",
        "undefined",
        "anonymous",
        "0",
        "-1",
        "0000",
        "00000000-0000-0000-0000-000000000000",
    ] {
        assert!(rules.is_blocked(value), "{value:?}");
    }
    for value in ["u42", "10", "a0", "-", "null2"] {
        assert!(!rules.is_blocked(value), "{value:?}");
    }
    let mut e =
        event(r#"{"user_id":"0","anonymous_id":"a1","event_type":"identify","timestamp":1}"#);
    let keyed = rules.key_event(&mut e);
    assert_eq!(keyed.blocked, 1);
    assert!(keyed.link.is_none(), "one identifier left: nothing to link");
    assert_eq!(e.profile_key(), home_key(ANONYMOUS_ID, "a1"));
    assert_eq!(e.user_id, "0", "the plugins see the event as sent");
}

#[test]
fn events_key_by_their_first_identifier_and_link_the_rest() {
    let rules = Rules::default();
    let mut plain = event(r#"{"user_id":"u42","event_type":"page_view","timestamp":1}"#);
    let keyed = rules.key_event(&mut plain);
    assert!(keyed.link.is_none() && keyed.key_identifier.is_none());
    assert_eq!(plain.profile_key(), "u42");

    let mut anonymous = event(r#"{"anonymous_id":"a1","event_type":"page_view","timestamp":1}"#);
    let keyed = rules.key_event(&mut anonymous);
    assert_eq!(anonymous.user_id, "a1");
    assert_eq!(anonymous.profile_key(), home_key(ANONYMOUS_ID, "a1"));
    assert_eq!(keyed.key_identifier, Some(id(ANONYMOUS_ID, "a1")));

    let mut identify =
        event(r#"{"user_id":"u42","anonymous_id":"a1","event_type":"identify","timestamp":1}"#);
    let keyed = rules.key_event(&mut identify);
    assert_eq!(identify.profile_key(), "u42");
    assert_eq!(
        keyed.link.map(|l| l.identifiers),
        Some(vec![id(USER_ID, "u42"), id(ANONYMOUS_ID, "a1")])
    );

    let mut alias =
        event(r#"{"user_id":"u42","previous_id":"u41","event_type":"alias","timestamp":1}"#);
    let keyed = rules.key_event(&mut alias);
    assert_eq!(
        keyed.link.map(|l| l.identifiers),
        Some(vec![id(USER_ID, "u42"), id(USER_ID, "u41")])
    );
}

#[test]
fn configured_types_come_from_properties_hashed_or_not() {
    let mut config = IdentityConfig::default();
    config.types.insert(
        "email".to_owned(),
        IdentifierType {
            property: Some("email".to_owned()),
            hashed: true,
            limit: 5,
            unique: false,
        },
    );
    let rules = Rules::new(&config).expect("valid");
    let mut e = event(
        r#"{"user_id":"u42","event_type":"signup","timestamp":1,"properties":{"email":"a@example.com"}}"#,
    );
    let keyed = rules.key_event(&mut e);
    assert_eq!(
        keyed.link.map(|l| l.identifiers),
        Some(vec![
            id(USER_ID, "u42"),
            id("email", &hash_value("a@example.com"))
        ])
    );

    let mut bad = IdentityConfig::default();
    bad.types.insert(
        "email".to_owned(),
        IdentifierType {
            property: None,
            hashed: false,
            limit: 1,
            unique: false,
        },
    );
    let error = Rules::new(&bad).expect_err("a property is needed");
    assert!(
        error.to_string().contains("identity.types.email.property"),
        "{error}"
    );
}

#[test]
fn a_new_identifier_joins_the_profile_it_is_seen_with() {
    let a1 = home_key(ANONYMOUS_ID, "a1");
    let known = rows(vec![stored(&a1, 10, 10, &[(ANONYMOUS_ID, "a1")])]);
    let plan = plan(
        &[link(
            "identify-1",
            &[(USER_ID, "u42"), (ANONYMOUS_ID, "a1")],
        )],
        known.clone(),
        &Rules::default(),
        100,
    );
    assert!(plan.refused.is_empty());
    assert_eq!(
        plan.merges,
        vec![PlannedMerge {
            survivor: a1.clone(),
            merged: "u42".to_owned(),
            event_id: "identify-1".to_owned(),
            kind: LinkKind::Attach,
        }]
    );
    let keys: Vec<&str> = plan.writes.iter().map(|p| p.user_id.as_str()).collect();
    assert_eq!(keys, vec!["u42", a1.as_str()]);
    assert_eq!(plan.writes[0].merged_into.as_deref(), Some(a1.as_str()));
    assert_eq!(plan.writes[0].revision, 1, "a new row");
    let profile = &plan.writes[1];
    assert_eq!(profile.revision, 2, "one more than stored");
    assert_eq!(
        profile.identifiers,
        vec![id(ANONYMOUS_ID, "a1"), id(USER_ID, "u42")]
    );
}

#[test]
fn two_profiles_merge_into_the_older_whichever_way_they_are_linked() {
    let a1 = home_key(ANONYMOUS_ID, "a1");
    let known = rows(vec![
        stored(&a1, 10, 10, &[(ANONYMOUS_ID, "a1")]),
        stored("u42", 20, 7, &[]),
    ]);
    for ids in [
        [(USER_ID, "u42"), (ANONYMOUS_ID, "a1")],
        [(ANONYMOUS_ID, "a1"), (USER_ID, "u42")],
    ] {
        let plan = plan(
            &[link("identify-1", &ids)],
            known.clone(),
            &Rules::default(),
            100,
        );
        assert_eq!(
            plan.merges,
            vec![PlannedMerge {
                survivor: a1.clone(),
                merged: "u42".to_owned(),
                event_id: "identify-1".to_owned(),
                kind: LinkKind::Merge,
            }]
        );
        let survivor = plan
            .writes
            .iter()
            .find(|p| p.user_id == a1)
            .expect("written");
        assert_eq!(views(survivor), Some(&Value::Integer(17)));
        assert_eq!(survivor.merges.len(), 1);
        assert_eq!(survivor.revision, 2);
        let pointer = plan
            .writes
            .iter()
            .find(|p| p.user_id == "u42")
            .expect("written");
        assert_eq!(pointer.merged_into.as_deref(), Some(a1.as_str()));
        assert!(pointer.attributes.is_empty());
        assert_eq!(pointer.revision, 2);
    }
}

#[test]
fn a_replayed_link_changes_nothing() {
    let a1 = home_key(ANONYMOUS_ID, "a1");
    let known = rows(vec![
        stored(&a1, 10, 10, &[(ANONYMOUS_ID, "a1")]),
        stored("u42", 20, 7, &[]),
    ]);
    let links = [link(
        "identify-1",
        &[(USER_ID, "u42"), (ANONYMOUS_ID, "a1")],
    )];
    let first = plan(&links, known, &Rules::default(), 100);
    let after = rows(first.writes);
    let again = plan(&links, after, &Rules::default(), 200);
    assert!(again.writes.is_empty() && again.merges.is_empty() && again.refused.is_empty());
}

#[test]
fn unique_types_limits_and_the_merge_cap_refuse_links() {
    let a1 = home_key(ANONYMOUS_ID, "a1");
    // a1 already belongs to u1; u2 is new: user_id is unique.
    let mut u1 = stored("u1", 10, 1, &[(ANONYMOUS_ID, "a1"), (USER_ID, "u1")]);
    u1.identifiers.sort();
    let mut pointer = Profile::new(a1.as_str(), 10);
    pointer.merged_into = Some("u1".to_owned());
    let known = rows(vec![u1.clone(), pointer.clone()]);
    let plan_new = plan(
        &[link("e2", &[(USER_ID, "u2"), (ANONYMOUS_ID, "a1")])],
        known.clone(),
        &Rules::default(),
        100,
    );
    assert!(plan_new.writes.is_empty() && plan_new.merges.is_empty());
    // The limit test below: two anonymous ids join, the third is refused.
    assert_eq!(plan_new.refused.len(), 1);
    assert_eq!(plan_new.refused[0].reason, RefusalReason::Unique);
    assert_eq!(plan_new.refused[0].identifier, id(USER_ID, "u2"));

    // u2 has its own profile: merging would put two user ids together.
    let known = rows(vec![u1, pointer, stored("u2", 20, 1, &[])]);
    let refused = plan(
        &[link("e3", &[(USER_ID, "u2"), (ANONYMOUS_ID, "a1")])],
        known.clone(),
        &Rules::default(),
        100,
    );
    assert!(refused.merges.is_empty());
    assert_eq!(refused.refused[0].reason, RefusalReason::Unique);

    // A limit of 2 anonymous ids per profile.
    let mut config = IdentityConfig::default();
    config.types.insert(
        ANONYMOUS_ID.to_owned(),
        IdentifierType {
            property: None,
            hashed: false,
            limit: 2,
            unique: false,
        },
    );
    let rules = Rules::new(&config).expect("valid");
    let links: Vec<Link> = ["a1", "a2", "a3"]
        .iter()
        .map(|a| link(&format!("e-{a}"), &[(USER_ID, "u9"), (ANONYMOUS_ID, a)]))
        .collect();
    let limited = plan(&links, HashMap::new(), &rules, 100);
    assert_eq!(limited.refused.len(), 1);
    assert_eq!(limited.refused[0].reason, RefusalReason::Limit);
    assert_eq!(limited.refused[0].identifier, id(ANONYMOUS_ID, "a3"));

    // At most one merge per profile.
    config.types.clear();
    config.max_merges = 1;
    let rules = Rules::new(&config).expect("valid");
    let known = rows(vec![
        stored(&home_key(ANONYMOUS_ID, "x"), 1, 1, &[(ANONYMOUS_ID, "x")]),
        stored(&home_key(ANONYMOUS_ID, "y"), 2, 1, &[(ANONYMOUS_ID, "y")]),
        stored(&home_key(ANONYMOUS_ID, "z"), 3, 1, &[(ANONYMOUS_ID, "z")]),
    ]);
    let capped = plan(
        &[
            link("m1", &[(ANONYMOUS_ID, "x"), (ANONYMOUS_ID, "y")]),
            link("m2", &[(ANONYMOUS_ID, "x"), (ANONYMOUS_ID, "z")]),
        ],
        known.clone(),
        &rules,
        100,
    );
    assert_eq!(
        capped
            .merges
            .iter()
            .filter(|m| m.kind == LinkKind::Merge)
            .count(),
        1
    );
    assert_eq!(capped.refused[0].reason, RefusalReason::MergeCap);
}

#[test]
fn pointers_resolve_to_their_end() {
    let mut a = Profile::new("a", 1);
    a.merged_into = Some("b".to_owned());
    let mut b = Profile::new("b", 1);
    b.merged_into = Some("c".to_owned());
    let c = Profile::new("c", 1);
    let mut known = rows(vec![a, b]);
    assert_eq!(resolve(&known, "a"), Err("c"));
    known.insert("c".to_owned(), c);
    assert_eq!(resolve(&known, "a"), Ok(Some("c")));
    assert_eq!(resolve(&known, "nobody"), Ok(None));
}

#[test]
fn an_alias_links_two_user_ids_despite_their_uniqueness() {
    let rules = Rules::default();
    let mut alias =
        event(r#"{"user_id":"u42","previous_id":"u41","event_type":"alias","timestamp":1}"#);
    let link = rules.key_event(&mut alias).link.expect("a link");
    assert!(link.alias);
    // u41 has a profile; u42 is new: it joins u41's.
    let known = rows(vec![stored("u41", 10, 3, &[])]);
    let joined = plan(std::slice::from_ref(&link), known.clone(), &rules, 100);
    assert!(joined.refused.is_empty(), "{:?}", joined.refused);
    let profile = joined
        .writes
        .iter()
        .find(|p| p.user_id == "u41")
        .expect("written");
    assert_eq!(
        profile.identifiers,
        vec![id(USER_ID, "u41"), id(USER_ID, "u42")]
    );
    // Both have profiles: they merge.
    let known = rows(vec![stored("u41", 10, 3, &[]), stored("u42", 20, 4, &[])]);
    let merged = plan(std::slice::from_ref(&link), known.clone(), &rules, 100);
    assert_eq!(merged.merges.len(), 1);
    let survivor = merged
        .writes
        .iter()
        .find(|p| p.user_id == "u41")
        .expect("written");
    assert_eq!(views(survivor), Some(&Value::Integer(7)));
    // The same two ids seen on an ordinary event do not link.
    let plain = Link {
        alias: false,
        ..link
    };
    let refused = plan(&[plain], known.clone(), &rules, 100);
    assert_eq!(refused.refused[0].reason, RefusalReason::Unique);
}
