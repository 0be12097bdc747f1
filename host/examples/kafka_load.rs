//! Load generator and raw-consume meter for `scripts/bench-pipeline.sh`.
//!
//! - `kafka_load produce BROKERS TOPIC EVENTS USERS [round-robin|uniform] [FIRST]`:
//!   produces EVENTS events of the wire format (contract §3), keyed by user
//!   id, a third of them page views, and prints the rate. Events are
//!   numbered from FIRST (default 0), which gives their ids and times: a
//!   second batch to the same topic starts where the first ended, so the
//!   archive (idempotent by event id) keeps both. The users take
//!   turns (`round-robin`, the default, which the README's figures used), or
//!   each event's user is drawn uniformly at random from USERS (`uniform`,
//!   with a fixed seed so runs repeat), as real traffic spreads;
//!   `uniform-identify` draws users as `uniform` and gives every tenth
//!   event an anonymous id of its user (`bench-a<N>`): every twentieth
//!   event carries it alone, the others of the tenth are `identify` events
//!   carrying it with the user id, which link the two (a merge the first
//!   time, when both have a profile by then).
//! - `kafka_load consume BROKERS TOPIC EVENTS`: reads EVENTS messages from the
//!   start of TOPIC with a fresh consumer group, doing nothing with them, and
//!   prints `consumed N in S s: R events/s`: the broker's raw consume rate
//!   on this machine, the ceiling for the pipeline.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

const USER_AGENTS: &[&str] = &[
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.144 Mobile Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_2) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 Safari/605.1.15",
];

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize| -> anyhow::Result<u64> {
        args.get(i)
            .context("missing argument")?
            .parse()
            .with_context(|| format!("argument {} is not a number", i + 1))
    };
    match args.first().map(String::as_str) {
        Some("produce") if (5..=7).contains(&args.len()) => {
            let spread = match args.get(5).map(String::as_str) {
                None | Some("round-robin") => Spread::RoundRobin,
                Some("uniform") => Spread::Uniform,
                Some("uniform-identify") => Spread::UniformIdentify,
                Some(other) => {
                    bail!("unknown spread `{other}`: round-robin, uniform or uniform-identify")
                }
            };
            let first = if args.len() == 7 { number(6)? } else { 0 };
            produce(&args[1], &args[2], first, number(3)?, number(4)?, spread)
        }
        Some("consume") if args.len() == 4 => consume(&args[1], &args[2], number(3)?),
        _ => bail!(
            "usage: kafka_load produce BROKERS TOPIC EVENTS USERS \
             [round-robin|uniform|uniform-identify] [FIRST] \
             | consume BROKERS TOPIC EVENTS"
        ),
    }
}

/// How the events are spread over the users.
#[derive(Clone, Copy)]
enum Spread {
    RoundRobin,
    Uniform,
    UniformIdentify,
}

fn produce(
    brokers: &str,
    topic: &str,
    first: u64,
    events: u64,
    users: u64,
    spread: Spread,
) -> anyhow::Result<()> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("compression.type", "none")
        .create()
        .context("creating the producer")?;
    let started = Instant::now();
    let base_ms: i64 = 1_795_000_000_000;
    let mut rng = SplitMix64(0x005e_ed0f_b37c_2a91);
    for i in first..first + events {
        let u = match spread {
            Spread::RoundRobin => i % users.max(1),
            Spread::Uniform | Spread::UniformIdentify => rng.below(users.max(1)),
        };
        let user = format!("bench-u{u}");
        let mut kind = if i % 3 == 0 { "page_view" } else { "click" };
        let (mut key, mut ids) = (user.clone(), format!(r#""user_id":"{user}""#));
        if matches!(spread, Spread::UniformIdentify) && i % 10 == 0 {
            let anonymous = format!("bench-a{u}");
            if i % 20 == 0 {
                ids = format!(r#""anonymous_id":"{anonymous}""#);
                key = anonymous;
            } else {
                ids = format!(r#""user_id":"{user}","anonymous_id":"{anonymous}""#);
                kind = "identify";
            }
        }
        let payload = format!(
            r#"{{"event_id":"bench-{i}",{ids},"event_type":"{kind}","timestamp":{},"user_agent":"{}","url":"https://shop.example/p/{}","properties":{{"n":{i}}}}}"#,
            base_ms + i as i64,
            USER_AGENTS[u as usize % USER_AGENTS.len()],
            i % 97
        );
        let mut record = BaseRecord::to(topic).key(&key).payload(&payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((error, returned)) => {
                    if error.rdkafka_error_code()
                        != Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                    {
                        bail!("producing: {error}");
                    }
                    record = returned;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
    producer
        .flush(Duration::from_secs(120))
        .context("flushing the producer")?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "produced {events} in {seconds:.2} s: {:.0} events/s",
        events as f64 / seconds
    );
    Ok(())
}

fn consume(brokers: &str, topic: &str, events: u64) -> anyhow::Result<()> {
    let group = format!("raw-consume-{}", std::process::id());
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", &group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.min.bytes", "65536")
        .set("queued.min.messages", "200000")
        .create()
        .context("creating the consumer")?;
    consumer.subscribe(&[topic]).context("subscribing")?;
    let mut seen = 0u64;
    let mut started = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    while seen < events {
        if Instant::now() > deadline {
            bail!("only {seen} of {events} messages arrived within 5 minutes");
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                // Time from the first message, as the pipeline's figure is
                // taken from its first commit: both exclude group joining.
                started.get_or_insert_with(Instant::now);
                std::hint::black_box(rdkafka::Message::payload(&message));
                seen += 1;
            }
            Some(Err(error)) => eprintln!("consume error: {error}"),
            None => {}
        }
    }
    let seconds = started.map_or(0.0, |s: Instant| s.elapsed().as_secs_f64());
    println!(
        "consumed {seen} in {seconds:.2} s: {:.0} events/s",
        seen as f64 / seconds
    );
    Ok(())
}

/// SplitMix64: a small, fast generator, good enough to spread users.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (the modulo bias is below 2^-40 for n < 2^24).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
