//! Generated events, with what the profiles they make must say, computed
//! by the tests independently of PulseHub.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// Deterministic pseudo-random numbers (xorshift), so failures replay.
pub struct Rng(pub u64);

impl Rng {
    /// The next number.
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// The next number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// User-Agent strings with the `device_type` the device classifier gives
/// them.
pub const USER_AGENTS: &[(&str, &str)] = &[
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1",
        "mobile",
    ),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
        "desktop",
    ),
    (
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        "bot",
    ),
];

/// What the test expects a user's profile to say, computed from the events
/// it produced, independently of PulseHub.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Expected {
    pub page_views: i64,
    pub first_seen_ms: i64,
    pub last_active_ms: i64,
    pub device_type: String,
}

/// Events for `users` users, `per_user` each, with their expected profiles.
/// Every user has one User-Agent, at least one page view, and distinct event
/// times.
pub fn generate(
    tag: &str,
    users: usize,
    per_user: usize,
    seed: u64,
) -> (Vec<(String, String)>, BTreeMap<String, Expected>) {
    let mut rng = Rng(seed | 1);
    let mut events = Vec::new();
    let mut expected: BTreeMap<String, Expected> = BTreeMap::new();
    for u in 0..users {
        let user = format!("{tag}-u{u}");
        let (ua, device) = USER_AGENTS[u % USER_AGENTS.len()];
        let mut e = Expected {
            first_seen_ms: i64::MAX,
            last_active_ms: i64::MIN,
            device_type: device.into(),
            ..Expected::default()
        };
        for i in 0..per_user {
            let kind = if i == 0 || rng.below(3) != 0 {
                "page_view"
            } else {
                "click"
            };
            let ts = 1_795_000_000_000 + (rng.below(1_000_000) as i64) * 1_000 + i as i64;
            if kind == "page_view" {
                e.page_views += 1;
            }
            e.first_seen_ms = e.first_seen_ms.min(ts);
            e.last_active_ms = e.last_active_ms.max(ts);
            let id = format!("{user}-e{i}");
            // Half the events carry RFC 3339 text, half integer milliseconds.
            let timestamp = if i % 2 == 0 {
                json!(ts)
            } else {
                json!(rfc3339(ts))
            };
            let payload = json!({
                "event_id": id, "user_id": user, "event_type": kind, "timestamp": timestamp,
                "user_agent": ua, "url": format!("https://shop.example/p/{i}"),
                "properties": {"n": i}
            });
            events.push((user.clone(), payload.to_string()));
        }
        expected.insert(user, e);
    }
    // Interleave users, as real traffic does; per-user order is irrelevant
    // to the result (the updates commute).
    let mut shuffled = Vec::with_capacity(events.len());
    let mut rng = Rng(seed.wrapping_mul(31) | 1);
    while !events.is_empty() {
        let at = rng.below(events.len() as u64) as usize;
        shuffled.push(events.swap_remove(at));
    }
    (shuffled, expected)
}

/// Unix milliseconds as RFC 3339 text.
pub fn rfc3339(ms: i64) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .expect("in range");
    at.format(&time::format_description::well_known::Rfc3339)
        .expect("formats")
}

/// RFC 3339 text as Unix milliseconds; `None` if it is not RFC 3339.
pub fn parse_millis(text: &str) -> Option<i64> {
    let at =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok()
}

/// The expected-profile view of a profile returned by the API.
pub fn actual(profile: &Value) -> Expected {
    let attributes = &profile["attributes"];
    let millis = |name: &str| {
        attributes[name]["value"]
            .as_str()
            .and_then(parse_millis)
            .unwrap_or(-1)
    };
    Expected {
        page_views: attributes["page_views"]["value"].as_i64().unwrap_or(0),
        first_seen_ms: millis("first_seen_at"),
        last_active_ms: millis("last_active_at"),
        device_type: attributes["device_type"]["value"]
            .as_str()
            .unwrap_or("")
            .to_owned(),
    }
}

/// Per user: (page views, count events).
pub type KindCounts = BTreeMap<String, (i64, i64)>;

/// Events of kinds `page_view` (every `views_every`-th) and `count` for
/// `users` users, `per_user` each, ids tagged by `phase`; with the number of
/// each kind per user.
pub fn counted_events(
    tag: &str,
    phase: &str,
    users: usize,
    per_user: usize,
    views_every: usize,
) -> (Vec<(String, String)>, KindCounts) {
    let mut events = Vec::new();
    let mut counts = BTreeMap::new();
    for u in 0..users {
        let user = format!("{tag}-u{u}");
        let (mut views, mut counted) = (0, 0);
        for i in 0..per_user {
            // The last event of each user is a page view: a user's events
            // share a partition and commit in order, so once the page views
            // are all counted, so is everything before them.
            let kind = if i % views_every == 0 || i + 1 == per_user {
                "page_view"
            } else {
                "count"
            };
            if kind == "page_view" {
                views += 1;
            } else {
                counted += 1;
            }
            let payload = json!({
                "event_id": format!("{user}-{phase}-{i}"), "user_id": user, "event_type": kind,
                "timestamp": 1_795_000_000_000_i64 + i as i64,
                "user_agent": USER_AGENTS[0].0,
            });
            events.push((user.clone(), payload.to_string()));
        }
        counts.insert(user, (views, counted));
    }
    (events, counts)
}
