use super::*;
use crate::model::identity::{
    ANONYMOUS_ID, IdentifierType, IdentityConfig, MergeRecord, USER_ID, home_key,
};

fn event(json: &str) -> Event {
    Event::from_json(json.as_bytes(), || "e-derived".to_owned()).expect("a valid event")
}

fn email_rules() -> Rules {
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
    Rules::new(&config).expect("valid")
}

#[test]
fn a_person_is_the_profile_its_identifiers_and_what_merged_into_it() {
    let mut profile = Profile::new("u42", 1);
    profile.identifiers = vec![Identifier::new(ANONYMOUS_ID, "a1")];
    profile.merges = vec![MergeRecord {
        merged: home_key(ANONYMOUS_ID, "a9"),
        event_id: "e7".to_owned(),
        at_ms: 2,
    }];
    let keys = person_keys(Some(&profile), &[home_key(ANONYMOUS_ID, "a1")]);
    let expected: BTreeSet<String> = [
        "u42".to_owned(),
        home_key(ANONYMOUS_ID, "a1"),
        home_key(ANONYMOUS_ID, "a9"),
    ]
    .into();
    assert_eq!(keys, expected);
    // Nobody found: only the keys named.
    let named = [home_key(USER_ID, "u7")];
    assert_eq!(person_keys(None, &named), BTreeSet::from(["u7".to_owned()]));
}

#[test]
fn suppressions_drop_events_carrying_any_identifier_of_the_person() {
    let rules = email_rules();
    let suppressions = Suppressions {
        generation: 3,
        keys: [
            "u42".to_owned(),
            home_key(ANONYMOUS_ID, "a1"),
            rules.lookup_key("email", "x@example.com").expect("a type"),
        ]
        .into(),
    };
    for carried in [
        r#"{"user_id":"u42","event_type":"page_view","timestamp":1}"#,
        r#"{"anonymous_id":"a1","event_type":"page_view","timestamp":1}"#,
        r#"{"user_id":"u9","anonymous_id":"a1","event_type":"identify","timestamp":1}"#,
        r#"{"user_id":"u9","previous_id":"u42","event_type":"alias","timestamp":1}"#,
        r#"{"user_id":"u9","event_type":"signup","timestamp":1,"properties":{"email":"x@example.com"}}"#,
    ] {
        assert!(suppressions.drops(&rules, &event(carried)), "{carried}");
    }
    for free in [
        r#"{"user_id":"u9","event_type":"page_view","timestamp":1}"#,
        // The plain anonymous id "a1" is not the user id "a1"'s home.
        r#"{"user_id":"a1","event_type":"page_view","timestamp":1}"#,
        r#"{"anonymous_id":"u42","event_type":"page_view","timestamp":1}"#,
    ] {
        assert!(!suppressions.drops(&rules, &event(free)), "{free}");
    }
    assert!(!Suppressions::default().drops(
        &rules,
        &event(r#"{"user_id":"u42","event_type":"x","timestamp":1}"#)
    ));
}

#[test]
fn kinds_and_statuses_read_back_what_they_write() {
    for kind in [
        RequestKind::Suppress,
        RequestKind::Unsuppress,
        RequestKind::Delete,
        RequestKind::Export,
    ] {
        assert_eq!(RequestKind::parse(kind.as_str()), Some(kind));
        let json = serde_json::to_string(&kind).expect("serialises");
        assert_eq!(json, format!("\"{}\"", kind.as_str()));
    }
    assert_eq!(RequestKind::parse("erase"), None);
    for status in [Status::Pending, Status::Applied, Status::Done] {
        assert_eq!(Status::parse(status.as_str()), Some(status));
    }
    assert!(!RequestKind::Export.suppresses());
    assert!(RequestKind::Delete.suppresses());
}
