//! `chaos`: a test fixture that misbehaves on demand, for the host's tests
//! and benches.
//!
//! What it does is chosen by the event's `kind`:
//!
//! | kind         | result                                                        |
//! |--------------|---------------------------------------------------------------|
//! | `count`      | `Increment(chaos_count, 1)`                                   |
//! | `echo`       | `Set(chaos_text, Text(event.properties))`                     |
//! | `fields`     | `Set(chaos_text, Text(every field of the event, as debug text))` |
//! | `trap`       | panics; with `panic = "abort"` that is a wasm trap            |
//! | `spin`       | loops forever (for timeouts / epoch interruption)             |
//! | `alloc`      | allocates 1 MiB chunks forever (for memory limits)            |
//! | `flood`      | 10 000 × `Increment(chaos_count, 1)`                          |
//! | `big`        | `Set(chaos_text, Text(1 MiB of 'x'))`                         |
//! | `undeclared` | `Set(not_declared, Integer(1))`, an attribute not in `writes` |
//! | `fail`       | `Err(InvalidEvent("chaos: fail requested"))`                  |
//! | `log`        | logs one line through the host, returns no update             |
//! | anything else| no update (the "empty plugin" of the benches)                 |
//!
//! Config keys read by `init`: `fail-init = "true"` refuses the plugin;
//! `init-alloc-mb = "N"` allocates and touches N MiB, kept for the life of
//! the instance, so a memory limit can refuse `init`; `count-step = "N"`
//! makes a `count` event add N instead of 1; `trap-on = "KIND"` makes events
//! of that kind trap too (two versions of one component that behave
//! differently, for the host's hot-swap and quarantine tests).

use pulsehub_plugin_sdk::{Config, EnrichError, Event, EventView, Plugin, Update, Updates, Value};

/// Updates returned for a `flood` event.
pub const FLOOD_UPDATES: usize = 10_000;
/// Length of the text returned for a `big` event.
pub const BIG_TEXT_BYTES: usize = 1 << 20;
/// The line a `log` event writes to the host's log.
pub const LOG_MESSAGE: &str = "chaos: hello from the plugin";

const MIB: usize = 1 << 20;
/// Touch one byte per wasm page (64 KiB) and per native page (4 KiB).
const TOUCH_STRIDE: usize = 4096;

pub struct Chaos {
    /// The `init-alloc-mb` ballast, kept alive for the life of the instance.
    ballast: Vec<u8>,
    /// What a `count` event adds.
    count_step: i64,
    /// Another kind that traps.
    trap_on: Option<String>,
}

impl Chaos {
    /// Bytes held since `init` (`init-alloc-mb` MiB).
    pub fn ballast_len(&self) -> usize {
        self.ballast.len()
    }
}

/// Allocates `bytes` and writes to every page, so the memory is really used.
fn touched(bytes: usize) -> Vec<u8> {
    let mut buf = vec![0u8; bytes];
    for i in (0..buf.len()).step_by(TOUCH_STRIDE) {
        buf[i] = 1;
    }
    core::hint::black_box(&mut buf);
    buf
}

fn spin() -> ! {
    let mut x: u64 = 0;
    loop {
        x = x.wrapping_add(1);
        core::hint::black_box(&mut x);
    }
}

fn alloc_forever() -> ! {
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    loop {
        chunks.push(touched(MIB));
        core::hint::black_box(&mut chunks);
    }
}

fn log_hello() {
    #[cfg(target_arch = "wasm32")]
    pulsehub_plugin_sdk::log(pulsehub_plugin_sdk::LogLevel::Info, LOG_MESSAGE);
}

impl Plugin for Chaos {
    fn init(config: &Config) -> Result<Self, String> {
        if config.get("fail-init") == Some("true") {
            return Err("chaos: init failed as configured".to_owned());
        }
        let mb: usize = config.parse_or("init-alloc-mb", 0)?;
        let bytes = mb
            .checked_mul(MIB)
            .ok_or_else(|| format!("config key `init-alloc-mb`: {mb} MiB is too large"))?;
        Ok(Self {
            ballast: touched(bytes),
            count_step: config.parse_or("count-step", 1)?,
            trap_on: config.get("trap-on").map(str::to_owned),
        })
    }

    fn enrich_view(
        &mut self,
        event: &EventView<'_>,
        out: &mut Updates<'_>,
    ) -> Result<(), EnrichError> {
        if self.ignores(event.kind) {
            return Ok(());
        }
        for update in self.enrich(&event.to_event())? {
            out.push(update);
        }
        Ok(())
    }

    fn enrich(&mut self, event: &Event) -> Result<Vec<Update>, EnrichError> {
        if self.trap_on.as_deref() == Some(event.kind.as_str()) {
            panic!("chaos: trap-on {} requested", event.kind);
        }
        Ok(match event.kind.as_str() {
            "count" => vec![Update::Increment((
                "chaos_count".to_owned(),
                self.count_step,
            ))],
            "echo" => vec![Update::Set((
                "chaos_text".to_owned(),
                Value::Text(event.properties.clone()),
            ))],
            "fields" => vec![Update::Set((
                "chaos_text".to_owned(),
                Value::Text(format!(
                    "{:?} {:?} {:?} {} {:?} {:?} {:?}",
                    event.id,
                    event.user_id,
                    event.kind,
                    event.timestamp_ms,
                    event.user_agent,
                    event.url,
                    event.properties
                )),
            ))],
            "trap" => panic!("chaos: trap requested"),
            "spin" => spin(),
            "alloc" => alloc_forever(),
            "flood" => (0..FLOOD_UPDATES)
                .map(|_| Update::Increment(("chaos_count".to_owned(), 1)))
                .collect(),
            "big" => vec![Update::Set((
                "chaos_text".to_owned(),
                Value::Text("x".repeat(BIG_TEXT_BYTES)),
            ))],
            "undeclared" => vec![Update::Set(("not_declared".to_owned(), Value::Integer(1)))],
            "fail" => {
                return Err(EnrichError::InvalidEvent(
                    "chaos: fail requested".to_owned(),
                ));
            }
            "log" => {
                log_hello();
                Vec::new()
            }
            _ => Vec::new(),
        })
    }
}

/// The kinds chaos does something for.
const KINDS: [&str; 11] = [
    "count",
    "echo",
    "fields",
    "trap",
    "spin",
    "alloc",
    "flood",
    "big",
    "undeclared",
    "fail",
    "log",
];

impl Chaos {
    /// Under world 0.2: an event of a kind chaos ignores is not copied out
    /// of the batch, so the benches' empty plugin measures the boundary.
    fn ignores(&self, kind: &str) -> bool {
        !KINDS.contains(&kind) && self.trap_on.as_deref() != Some(kind)
    }
}

pulsehub_plugin_sdk::plugin!(Chaos);

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str) -> Event {
        Event {
            properties: r#"{"a":1}"#.into(),
            ..pulsehub_plugin_sdk::test_event(kind)
        }
    }

    fn config(entries: &[(&str, &str)]) -> Config {
        Config::new(
            entries
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    fn chaos() -> Chaos {
        Chaos::init(&Config::default()).expect("init")
    }

    #[test]
    fn init_fails_when_configured() {
        let err = Chaos::init(&config(&[("fail-init", "true")])).err();
        assert_eq!(err.as_deref(), Some("chaos: init failed as configured"));
        assert!(Chaos::init(&config(&[("fail-init", "false")])).is_ok());
    }

    #[test]
    fn count_step_and_trap_on_come_from_the_config() {
        let mut plugin = Chaos::init(&config(&[("count-step", "1000")])).expect("init");
        let updates = plugin.enrich(&event("count")).expect("counts");
        assert!(
            matches!(&updates[..], [Update::Increment((name, 1000))] if name == "chaos_count"),
            "{updates:?}"
        );
        assert!(Chaos::init(&config(&[("count-step", "many")])).is_err());
        let mut trapping = Chaos::init(&config(&[("trap-on", "count")])).expect("init");
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            trapping.enrich(&event("count"))
        }));
        assert!(outcome.is_err(), "a count event traps");
    }

    #[test]
    fn init_allocates_ballast() {
        let plugin = Chaos::init(&config(&[("init-alloc-mb", "3")])).expect("init");
        assert_eq!(plugin.ballast_len(), 3 * MIB);
        assert_eq!(chaos().ballast_len(), 0);
        assert!(Chaos::init(&config(&[("init-alloc-mb", "lots")])).is_err());
    }

    #[test]
    fn count() {
        let out = chaos().enrich(&event("count")).expect("count");
        assert!(matches!(&out[..], [Update::Increment((name, 1))] if name == "chaos_count"));
    }

    #[test]
    fn echo() {
        let out = chaos().enrich(&event("echo")).expect("echo");
        assert!(matches!(
            &out[..],
            [Update::Set((name, Value::Text(text)))] if name == "chaos_text" && text == r#"{"a":1}"#
        ));
    }

    #[test]
    fn flood() {
        let out = chaos().enrich(&event("flood")).expect("flood");
        assert_eq!(out.len(), FLOOD_UPDATES);
        assert!(
            out.iter()
                .all(|u| matches!(u, Update::Increment((name, 1)) if name == "chaos_count"))
        );
    }

    #[test]
    fn big() {
        let out = chaos().enrich(&event("big")).expect("big");
        assert!(matches!(
            &out[..],
            [Update::Set((name, Value::Text(text)))]
                if name == "chaos_text" && text.len() == BIG_TEXT_BYTES && text.bytes().all(|b| b == b'x')
        ));
    }

    #[test]
    fn undeclared() {
        let out = chaos().enrich(&event("undeclared")).expect("undeclared");
        assert!(
            matches!(&out[..], [Update::Set((name, Value::Integer(1)))] if name == "not_declared")
        );
    }

    #[test]
    fn fail() {
        let err = chaos().enrich(&event("fail")).err();
        assert!(
            matches!(err, Some(EnrichError::InvalidEvent(msg)) if msg == "chaos: fail requested")
        );
    }

    #[test]
    fn log_and_unknown_kinds_return_nothing() {
        let mut plugin = chaos();
        for kind in ["log", "page_view", "", "COUNT"] {
            assert!(
                plugin.enrich(&event(kind)).expect(kind).is_empty(),
                "{kind}"
            );
        }
    }

    #[test]
    #[should_panic(expected = "chaos: trap requested")]
    fn trap_panics() {
        let _ = chaos().enrich(&event("trap"));
    }
}
