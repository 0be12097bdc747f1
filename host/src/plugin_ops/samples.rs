//! The sample events a new plugin version must get through before it may
//! replace anything that runs.

use crate::model::event::Event;
use crate::plugin::{ErrorKind, Manifest, Subscription};

/// (kind, user agent, url, properties): varied enough to reach the usual
/// code paths of a plugin: browsers, a bot, no user agent, odd properties.
const TEMPLATES: &[(&str, Option<&str>, Option<&str>, &str)] = &[
    (
        "page_view",
        Some(
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1",
        ),
        Some("https://shop.example/products/7"),
        r#"{"referrer":"https://search.example/"}"#,
    ),
    (
        "page_view",
        Some(
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
        ),
        Some("https://shop.example/"),
        "{}",
    ),
    (
        "click",
        Some("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"),
        None,
        r#"{"element":"buy","price":19.99,"tags":["a","b"],"nested":{"x":null}}"#,
    ),
    ("signup", None, None, "{}"),
    (
        "purchase",
        Some(""),
        Some("not a url"),
        r#"{"amount":-1,"currency":"","note":"\u00e9\u6f22\ud83d\ude00"}"#,
    ),
];

/// The samples for a plugin: every template, once per kind it subscribes
/// to (with its own kinds, so a plugin of `purchase` events is tried too).
pub fn for_manifest(manifest: &Manifest) -> Vec<Event> {
    let kinds: Vec<Option<&str>> = match &manifest.events {
        Subscription::All => vec![None],
        Subscription::Kinds(kinds) => kinds.iter().take(8).map(|k| Some(k.as_str())).collect(),
    };
    let mut events = Vec::new();
    for kind in kinds {
        for (n, (template_kind, user_agent, url, properties)) in TEMPLATES.iter().enumerate() {
            events.push(Event {
                id: format!("pulsehub-sample-{}", events.len()),
                user_id: format!("pulsehub-sample-user-{n}"),
                anonymous_id: None,
                previous_id: None,
                known_user: true,
                profile_key: None,
                kind: kind.unwrap_or(template_kind).to_owned(),
                timestamp_ms: 1_764_453_600_000 + n as i64 * 1_000,
                user_agent: user_agent.map(str::to_owned),
                url: url.map(str::to_owned),
                properties: (*properties).to_owned(),
            });
        }
    }
    events
}

/// Whether a failure on a sample event refuses the version: anything but
/// the plugin's own verdict that the event is invalid for it.
pub fn refuses(kind: ErrorKind) -> bool {
    !matches!(kind, ErrorKind::InvalidEvent)
}
