//! End-to-end tests of `pulsehub run` against the real services: the
//! Kafka-protocol broker, PostgreSQL and Redis (`cargo xtask test` starts
//! them; see scripts/services.sh). Each test makes its own database, topics,
//! consumer group and Redis key prefix, runs the real binary as a child
//! process, produces events with a Kafka client of its own, and checks the
//! profiles over REST against counts it computes itself.
//!
//! The tests share two CPU cores with the binaries they start, so they run
//! one at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use sqlx::Connection as _;
use tokio::sync::Mutex;

/// One test at a time: each starts PulseHub processes on two shared cores.
static SERIAL: Mutex<()> = Mutex::const_new(());

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

fn kafka_brokers() -> String {
    std::env::var("PULSEHUB_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

fn admin_database_url() -> String {
    std::env::var("PULSEHUB_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn redis_url() -> String {
    std::env::var("PULSEHUB_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A name no other test run uses.
fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Creates an empty database and returns its URL.
async fn create_database() -> String {
    let admin = admin_database_url();
    let name = unique("pulsehub_e2e");
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("connect to the PostgreSQL maintenance database");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create the test database");
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
    format!("{base}/{name}")
}

/// Deterministic pseudo-random numbers (xorshift), so failures replay.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const USER_AGENTS: &[(&str, &str)] = &[
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
struct Expected {
    page_views: i64,
    first_seen_ms: i64,
    last_active_ms: i64,
    device_type: String,
}

/// Events for `users` users, `per_user` each, with their expected profiles.
/// Every user has one User-Agent, at least one page view, and distinct event
/// times.
fn generate(
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

fn rfc3339(ms: i64) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .expect("in range");
    at.format(&time::format_description::well_known::Rfc3339)
        .expect("formats")
}

fn parse_millis(text: &str) -> Option<i64> {
    let at =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok()
}

/// A topic with `partitions` partitions and its dead-letter topic.
async fn topics(partitions: i32) -> String {
    let topic = unique("events");
    let brokers = kafka_brokers();
    pulsehub::kafka::ensure_topic(&brokers, &topic, partitions)
        .await
        .expect("create the topic");
    pulsehub::kafka::ensure_topic(&brokers, &format!("{topic}.dlq"), 1)
        .await
        .expect("create the dead-letter topic");
    topic
}

fn producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("message.timeout.ms", "30000")
        .set("linger.ms", "5")
        .create()
        .expect("a Kafka producer")
}

async fn produce(producer: &FutureProducer, topic: &str, events: &[(String, String)]) {
    for chunk in events.chunks(1_000) {
        let sends: Vec<_> = chunk
            .iter()
            .map(|(key, payload)| {
                producer.send(
                    FutureRecord::to(topic).key(key).payload(payload),
                    Duration::from_secs(30),
                )
            })
            .collect();
        for send in sends {
            send.await
                .map_err(|(e, _)| e)
                .expect("the broker acknowledges");
        }
    }
}

/// The `pulsehub run` child process.
struct PulseHub {
    child: Option<Child>,
    env: Vec<(String, String)>,
    addr: SocketAddr,
    log: PathBuf,
    _dir: Arc<tempfile::TempDir>,
    http: reqwest::Client,
}

impl PulseHub {
    fn services(topic: &str, database_url: &str, redis: Option<&str>) -> Self {
        Self::new(services_env(topic, database_url, redis))
    }
}

/// The variables of a services-mode instance.
fn services_env(topic: &str, database_url: &str, redis: Option<&str>) -> Vec<(String, String)> {
    let mut env = vec![
        ("PULSEHUB_KAFKA_BROKERS".into(), kafka_brokers()),
        ("PULSEHUB_KAFKA_TOPIC".into(), topic.to_owned()),
        ("PULSEHUB_KAFKA_GROUP".into(), format!("{topic}-enrich")),
        (
            "PULSEHUB_KAFKA_ARCHIVE_GROUP".into(),
            format!("{topic}-archive"),
        ),
        ("PULSEHUB_DATABASE_URL".into(), database_url.to_owned()),
        ("PULSEHUB_BATCH_MAX_WAIT_MS".into(), "20".into()),
        ("PULSEHUB_REDIS_KEY_PREFIX".into(), format!("{topic}:")),
    ];
    if let Some(url) = redis {
        env.push(("PULSEHUB_REDIS_URL".into(), url.to_owned()));
    }
    env
}

impl PulseHub {
    fn new(mut env: Vec<(String, String)>) -> Self {
        let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        env.push(("PULSEHUB_HTTP_ADDR".into(), addr.to_string()));
        if !env.iter().any(|(k, _)| k == "PULSEHUB_PLUGIN_DIR") {
            env.push((
                "PULSEHUB_PLUGIN_DIR".into(),
                workspace().join("target/plugins").display().to_string(),
            ));
        }
        if !env.iter().any(|(k, _)| k == "PULSEHUB_PLUGIN_REGISTRY_DIR") {
            env.push((
                "PULSEHUB_PLUGIN_REGISTRY_DIR".into(),
                dir.path().join("plugin-registry").display().to_string(),
            ));
        }
        env.push(("PULSEHUB_LOG".into(), "info".into()));
        let log = dir.path().join("pulsehub.log");
        let mut hub = PulseHub {
            child: None,
            env,
            addr,
            log,
            _dir: dir,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("an HTTP client"),
        };
        hub.start();
        hub
    }

    fn start(&mut self) {
        self.start_with_args(&[]);
    }

    fn start_with_args(&mut self, args: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_pulsehub"));
        command.arg("run").args(args);
        // Only the variables of this instance: the configuration refuses
        // PULSEHUB_* names it does not know, such as the tests' own.
        for (name, _) in std::env::vars() {
            if name.starts_with("PULSEHUB_") {
                command.env_remove(name);
            }
        }
        command
            .envs(self.env.iter().cloned())
            .stdout(Stdio::null())
            .stderr(log);
        self.child = Some(command.spawn().expect("start pulsehub"));
    }

    fn set_env(&mut self, name: &str, value: &str) {
        self.env.retain(|(n, _)| n != name);
        self.env.push((name.to_owned(), value.to_owned()));
    }

    /// SIGKILL: no shutdown code runs.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9");
            let _ = child.wait();
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Waits until `/readyz` answers (ready or degraded).
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(child) = &mut self.child
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("pulsehub exited ({status}):\n{}", self.log_text());
            }
            if let Ok(response) = self.http.get(self.url("/readyz")).send().await
                && response.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("pulsehub did not become ready:\n{}", self.log_text());
    }

    async fn get_json(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(self.url(path))
            .send()
            .await
            .expect("GET answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// `GET /metrics`, parsed.
    async fn metrics(&self) -> Samples {
        let response = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics answers");
        assert_eq!(response.status().as_u16(), 200, "GET /metrics");
        Samples::parse(&response.text().await.expect("the metrics text"))
    }

    async fn profile(&self, user: &str) -> Option<Value> {
        let (status, body) = self.get_json(&format!("/api/v1/profiles/{user}")).await;
        match status {
            200 => Some(body),
            404 => None,
            other => panic!("GET profile {user}: {other} {body}"),
        }
    }

    /// The users whose profile differs from what the test expects.
    async fn mismatches(&self, expected: &BTreeMap<String, Expected>) -> Vec<String> {
        let mut wrong = Vec::new();
        for (user, want) in expected {
            let got = self.profile(user).await.map(|p| actual(&p));
            if got.as_ref() != Some(want) {
                wrong.push(format!("{user}: want {want:?}, got {got:?}"));
            }
        }
        wrong
    }

    /// Waits until every profile is as expected; panics with the differences
    /// after `patience`.
    async fn wait_exact(&self, expected: &BTreeMap<String, Expected>, patience: Duration) {
        let deadline = Instant::now() + patience;
        loop {
            let wrong = self.mismatches(expected).await;
            if wrong.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{} of {} profiles differ, e.g.\n{}\nlog:\n{}",
                    wrong.len(),
                    expected.len(),
                    wrong[..wrong.len().min(5)].join("\n"),
                    tail(&self.log_text(), 60)
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

impl Drop for PulseHub {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The samples of a Prometheus text page: name, labels, value.
#[derive(Debug)]
struct Samples(Vec<(String, BTreeMap<String, String>, f64)>);

impl Samples {
    /// Enough of the text format for PulseHub's own output: label values
    /// hold no quotes or commas.
    fn parse(text: &str) -> Samples {
        let mut samples = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').expect("a sample line");
            let value: f64 = value.parse().unwrap_or_else(|e| panic!("{line}: {e}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (key, value) = pair.split_once("=\"").expect("label=\"value\"");
                    (key.to_owned(), value.trim_end_matches('"').to_owned())
                })
                .collect();
            samples.push((name.to_owned(), labels, value));
        }
        Samples(samples)
    }

    /// The samples of `name` whose labels include `labels`.
    fn matching<'s>(
        &'s self,
        name: &'s str,
        labels: &'s [(&str, &str)],
    ) -> impl Iterator<Item = (&'s BTreeMap<String, String>, f64)> + 's {
        self.0.iter().filter_map(move |(n, l, v)| {
            let wanted = n == name
                && labels
                    .iter()
                    .all(|(key, value)| l.get(*key).is_some_and(|v| v == value));
            wanted.then_some((l, *v))
        })
    }

    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|(_, v)| v).sum()
    }

    /// The values of label `key` among the samples of `name`.
    fn label_values(&self, name: &str, labels: &[(&str, &str)], key: &str) -> BTreeSet<String> {
        self.matching(name, labels)
            .filter_map(|(l, _)| l.get(key).cloned())
            .collect()
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The expected-profile view of a profile returned by the API.
fn actual(profile: &Value) -> Expected {
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

/// Reads every message of `topic` from the start until `quiet` passes with
/// nothing new.
fn read_all(topic: &str, quiet: Duration) -> Vec<(Vec<u8>, BTreeMap<String, String>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("a Kafka consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut out = Vec::new();
    let mut last = Instant::now();
    let started = Instant::now();
    while last.elapsed() < quiet || (out.is_empty() && started.elapsed() < quiet * 3) {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                let mut headers = BTreeMap::new();
                if let Some(h) = message.headers() {
                    for header in h.iter() {
                        let value = header
                            .value
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                            .unwrap_or_default();
                        headers.insert(header.key.to_owned(), value);
                    }
                }
                out.push((message.payload().unwrap_or_default().to_vec(), headers));
                last = Instant::now();
            }
            Some(Err(error)) => eprintln!("reading {topic}: {error}"),
            None => {}
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_over_rest_match_counts_computed_by_the_test() {
    let _serial = SERIAL.lock().await;
    let topic = topics(4).await;
    let database = create_database().await;
    let mut hub = PulseHub::services(&topic, &database, Some(&redis_url()));
    hub.wait_ready().await;

    let (events, expected) = generate("e2e", 300, 20, 7);
    produce(&producer(), &topic, &events).await;
    hub.wait_exact(&expected, Duration::from_secs(120)).await;

    // Provenance: each attribute names its plugin, version and event.
    let profile = hub.profile("e2e-u1").await.expect("profile exists");
    let views = &profile["attributes"]["page_views"];
    assert_eq!(views["plugin"], "page-view-counter");
    assert_eq!(views["plugin_version"], "1.0.0");
    assert!(
        views["event_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("e2e-u1-e"))
    );
    assert_eq!(
        profile["attributes"]["device_type"]["plugin"],
        "device-classifier"
    );
    assert_eq!(hub.profile("e2e-nobody").await, None);

    // The archive role stored every raw event once, text unchanged.
    let mut conn = sqlx::PgConnection::connect(&database)
        .await
        .expect("connect");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM events")
            .fetch_one(&mut conn)
            .await
            .expect("count archived events");
        if count == events.len() as i64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "archived {count} of {} events",
            events.len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (id, payload): (String, String) =
        sqlx::query_as("SELECT event_id, payload::text FROM events ORDER BY event_id LIMIT 1")
            .fetch_one(&mut conn)
            .await
            .expect("an archived event");
    let original = events
        .iter()
        .find(|(_, p)| p.contains(&format!("\"event_id\":\"{id}\"")))
        .expect("the archived event was produced");
    assert_eq!(payload, original.1);

    // /metrics tells the same story: each role consumed every event once from
    // the four partitions and caught up with them, and each plugin saw the
    // events it subscribes to.
    let sent = events.len() as f64;
    let consumed = "pulsehub_events_consumed_total";
    let lag = "pulsehub_consumer_lag";
    let deadline = Instant::now() + Duration::from_secs(60);
    let metrics = loop {
        let metrics = hub.metrics().await;
        let caught_up = ["enrich", "archive"].iter().all(|&role| {
            metrics.sum(consumed, &[("role", role)]) == sent
                && metrics
                    .label_values(lag, &[("role", role)], "partition")
                    .len()
                    == 4
                && metrics.sum(lag, &[("role", role)]) == 0.0
        });
        if caught_up {
            break metrics;
        }
        assert!(
            Instant::now() < deadline,
            "{sent} events sent; {metrics:#?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let partitions: BTreeSet<String> = (0..4).map(|p| p.to_string()).collect();
    assert_eq!(
        metrics.label_values(consumed, &[("role", "enrich")], "partition"),
        partitions
    );
    let page_views: i64 = expected.values().map(|e| e.page_views).sum();
    for (plugin, events) in [
        ("device-classifier", sent),
        ("last-active", sent),
        ("page-view-counter", page_views as f64),
    ] {
        let labels = [("plugin", plugin), ("version", "1.0.0")];
        assert_eq!(
            metrics.sum("pulsehub_plugin_events_total", &labels),
            events,
            "{plugin}"
        );
    }
    let timed = "pulsehub_store_operation_duration_seconds_count";
    for (store, operation) in [
        ("postgres", "commit"),
        ("postgres", "archive"),
        ("redis", "put"),
        ("redis", "get"),
    ] {
        let calls = metrics.sum(timed, &[("store", store), ("operation", operation)]);
        assert!(calls > 0.0, "no {store} {operation} timed: {metrics:#?}");
    }
    assert!(metrics.sum("pulsehub_commit_duration_seconds_count", &[]) > 0.0);
    assert!(metrics.sum("pulsehub_batch_events_sum", &[("role", "enrich")]) >= sent);
    for result in ["hit", "miss"] {
        let lookups = metrics.sum("pulsehub_cache_lookups_total", &[("result", result)]);
        assert!(lookups > 0.0, "no cache {result}: {metrics:#?}");
    }
    // Every profile was read at least once; the unknown one answered 404.
    let profiles = [("route", "/api/v1/profiles/{user_id}"), ("method", "GET")];
    let requests = "pulsehub_http_requests_total";
    let found = [profiles[0], profiles[1], ("status", "200")];
    assert!(metrics.sum(requests, &found) >= expected.len() as f64);
    let unknown = [profiles[0], profiles[1], ("status", "404")];
    assert!(metrics.sum(requests, &unknown) >= 1.0);
    let durations = "pulsehub_http_request_duration_seconds_count";
    assert!(metrics.sum(durations, &profiles) > expected.len() as f64);
    let routes = metrics.label_values(requests, &[], "route");
    assert!(
        routes.iter().all(|r| !r.contains("e2e-")),
        "a raw path became a label: {routes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_neither_loses_nor_double_counts() {
    let _serial = SERIAL.lock().await;
    let topic = topics(4).await;
    let database = create_database().await;
    let mut hub = PulseHub::services(&topic, &database, Some(&redis_url()));
    hub.wait_ready().await;

    let (events, expected) = generate("crash", 400, 50, 11);
    let producing = {
        let (topic, events) = (topic.clone(), events.clone());
        tokio::spawn(async move {
            let producer = producer();
            for wave in events.chunks(2_000) {
                produce(&producer, &topic, wave).await;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        })
    };
    let mut rng = Rng(5);
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(700 + rng.below(1_500))).await;
        hub.kill();
        hub.start();
        hub.wait_ready().await;
    }
    producing.await.expect("producer finished");
    hub.wait_exact(&expected, Duration::from_secs(180)).await;
    let log = hub.log_text();
    let crashes = log.matches("PulseHub is running").count();
    assert_eq!(crashes, 5, "four restarts after SIGKILL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_events_and_plugin_failures_go_to_the_dead_letters() {
    let _serial = SERIAL.lock().await;
    let topic = topics(2).await;
    let database = create_database().await;
    // The built-in plugins plus a fixture that traps on events of kind "trap".
    let plugins = tempfile::tempdir().expect("tempdir");
    for dir in ["target/plugins", "target/test-plugins"] {
        for entry in std::fs::read_dir(workspace().join(dir)).expect("plugins are built") {
            let path = entry.expect("entry").path();
            let name = path.file_name().expect("file name").to_string_lossy();
            if dir == "target/plugins" || name.starts_with("chaos.") {
                std::fs::copy(&path, plugins.path().join(&*name)).expect("copy plugin");
            }
        }
    }
    let mut hub = PulseHub::services(&topic, &database, None);
    hub.kill();
    hub.set_env("PULSEHUB_PLUGIN_DIR", &plugins.path().display().to_string());
    hub.start();
    hub.wait_ready().await;

    let (mut events, mut expected) = generate("poison", 50, 20, 3);
    let long_user = "x".repeat(300);
    let bad: Vec<(String, String, &str)> = vec![
        ("poison-u1".into(), "this is not json".into(), "bad-event"),
        (
            "poison-u2".into(),
            r#"{"event_type":"page_view","timestamp":1}"#.into(),
            "bad-event",
        ),
        (
            "poison-u3".into(),
            r#"{"user_id":"poison-u3","event_type":"page_view","timestamp":"yesterday"}"#.into(),
            "bad-event",
        ),
        (
            "poison-u4".into(),
            json!({"user_id": long_user, "event_type": "page_view", "timestamp": 1}).to_string(),
            "bad-event",
        ),
        (
            "poison-u5".into(),
            json!({"event_id": "trap-1", "user_id": "poison-u5", "event_type": "trap",
                   "timestamp": 1_795_000_000_000_i64 + 5})
            .to_string(),
            "plugin-error",
        ),
    ];
    // The trap event fails only in the chaos plugin: the others still count
    // it (first seen).
    if let Some(e) = expected.get_mut("poison-u5") {
        e.first_seen_ms = e.first_seen_ms.min(1_795_000_000_005);
    }
    let mut rng = Rng(9);
    for (key, payload, _) in &bad {
        let at = rng.below(events.len() as u64) as usize;
        events.insert(at, (key.clone(), payload.clone()));
    }
    produce(&producer(), &topic, &events).await;
    hub.wait_exact(&expected, Duration::from_secs(120)).await;

    let letters = read_all(&format!("{topic}.dlq"), Duration::from_secs(3));
    let got: BTreeSet<Vec<u8>> = letters.iter().map(|(p, _)| p.clone()).collect();
    let want: BTreeSet<Vec<u8>> = bad.iter().map(|(_, p, _)| p.as_bytes().to_vec()).collect();
    assert_eq!(got, want, "exactly the bad events are dead letters");
    assert_eq!(letters.len(), bad.len(), "each once");
    for (payload, headers) in &letters {
        let (_, _, reason) = bad
            .iter()
            .find(|(_, p, _)| p.as_bytes() == payload.as_slice())
            .expect("known");
        assert_eq!(
            headers.get("pulsehub-reason").map(String::as_str),
            Some(*reason)
        );
        assert_eq!(headers.get("pulsehub-source-topic"), Some(&topic));
        assert!(headers.contains_key("pulsehub-source-partition"));
        assert!(headers.contains_key("pulsehub-source-offset"));
        assert!(!headers["pulsehub-detail"].is_empty(), "{headers:?}");
        if *reason == "plugin-error" {
            assert_eq!(headers["pulsehub-plugin"], "chaos");
            assert_eq!(headers["pulsehub-plugin-version"], "0.1.0");
            assert_eq!(headers["pulsehub-error-kind"], "trap");
            assert_eq!(headers["pulsehub-event-id"], "trap-1");
        }
    }
    let timestamp_letter = letters
        .iter()
        .find(|(p, _)| p.as_slice() == bad[2].1.as_bytes())
        .expect("bad timestamp letter");
    assert!(
        timestamp_letter.1["pulsehub-detail"].contains("timestamp"),
        "{:?}",
        timestamp_letter.1
    );
}

/// A Redis server of the test's own, so that it can be stopped.
struct OwnRedis {
    child: Child,
    port: u16,
}

impl OwnRedis {
    fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        OwnRedis { child, port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_stopped_profiles_are_still_served_and_the_pipeline_goes_on() {
    let _serial = SERIAL.lock().await;
    let topic = topics(2).await;
    let database = create_database().await;
    let redis = OwnRedis::start(free_port());
    let mut hub = PulseHub::services(&topic, &database, Some(&redis.url()));
    hub.wait_ready().await;
    let (_, ready) = hub.get_json("/readyz").await;
    assert_eq!(ready["status"], "ready", "{ready}");

    let (first, expected_first) = generate("redis", 100, 10, 21);
    produce(&producer(), &topic, &first).await;
    hub.wait_exact(&expected_first, Duration::from_secs(60))
        .await;

    let port = redis.port;
    drop(redis);
    let (status, ready) = hub.get_json("/readyz").await;
    assert_eq!(
        (status, ready["status"].as_str()),
        (200, Some("degraded")),
        "{ready}"
    );
    // Served from PostgreSQL.
    hub.wait_exact(&expected_first, Duration::from_secs(10))
        .await;

    // The pipeline keeps going without its cache.
    let (second, expected_second) = generate("redis2", 100, 10, 22);
    produce(&producer(), &topic, &second).await;
    hub.wait_exact(&expected_second, Duration::from_secs(60))
        .await;

    // Back again: ready, and nothing stale is served.
    let _redis = OwnRedis::start(port);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, ready) = hub.get_json("/readyz").await;
        if ready["status"] == "ready" {
            break;
        }
        assert!(Instant::now() < deadline, "not ready again: {ready}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    hub.wait_exact(&expected_first, Duration::from_secs(10))
        .await;
    hub.wait_exact(&expected_second, Duration::from_secs(10))
        .await;
}

/// A TCP proxy in front of PostgreSQL that the test can cut.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    generation: Arc<AtomicU64>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let up = Arc::new(AtomicBool::new(true));
        let generation = Arc::new(AtomicU64::new(0));
        let (up2, generation2) = (up.clone(), generation.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is refused
                }
                let born = generation2.load(Ordering::SeqCst);
                let generation = generation2.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let cut = async {
                        while generation.load(Ordering::SeqCst) == born {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        () = cut => {}
                    }
                });
            }
        });
        Proxy {
            port,
            up,
            generation,
        }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_unreachable_the_pipeline_waits_then_catches_up_exactly() {
    let _serial = SERIAL.lock().await;
    let topic = topics(2).await;
    let database = create_database().await;
    let proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], 5432))).await;
    let proxied = database.replacen(":5432/", &format!(":{}/", proxy.port), 1);
    assert_ne!(proxied, database, "the database URL names port 5432");
    let mut hub = PulseHub::services(&topic, &proxied, None);
    hub.wait_ready().await;

    let (first, expected_first) = generate("pgdown", 100, 10, 31);
    produce(&producer(), &topic, &first).await;
    hub.wait_exact(&expected_first, Duration::from_secs(60))
        .await;

    proxy.cut();
    let (second, mut expected_all) = generate("pgdown", 100, 10, 32);
    produce(&producer(), &topic, &second).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (status, ready) = hub.get_json("/readyz").await;
    assert_eq!(status, 503, "store unreachable: {ready}");
    assert_eq!(ready["status"], "unavailable");

    proxy.restore();
    for (user, e) in &mut expected_all {
        let before = &expected_first[user];
        e.page_views += before.page_views;
        e.first_seen_ms = e.first_seen_ms.min(before.first_seen_ms);
        e.last_active_ms = e.last_active_ms.max(before.last_active_ms);
    }
    hub.wait_exact(&expected_all, Duration::from_secs(90)).await;
    let letters = read_all(&format!("{topic}.dlq"), Duration::from_secs(2));
    assert!(
        letters.is_empty(),
        "an outage sends nothing to the dead letters"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_mode_ingests_over_http_and_keeps_profiles_across_restarts() {
    let _serial = SERIAL.lock().await;
    let data = tempfile::tempdir().expect("tempdir");
    let mut hub = PulseHub::new(vec![(
        "PULSEHUB_DATA_DIR".into(),
        data.path().display().to_string(),
    )]);
    hub.wait_ready().await;

    let (events, expected) = generate("embedded", 50, 20, 41);
    for chunk in events.chunks(250) {
        let body = format!(
            "[{}]",
            chunk
                .iter()
                .map(|(_, p)| p.as_str())
                .collect::<Vec<_>>()
                .join(",")
        );
        let response = hub
            .http
            .post(hub.url("/api/v1/events"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("POST answers");
        assert_eq!(response.status().as_u16(), 202);
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["accepted"], chunk.len());
    }
    // A bad event is refused with a problem and nothing of its request kept.
    let response = hub
        .http
        .post(hub.url("/api/v1/events"))
        .header("content-type", "application/json")
        .body(r#"[{"user_id":"embedded-u0","event_type":"page_view","timestamp":1},{"user_id":"embedded-u0"}]"#)
        .send()
        .await
        .expect("POST answers");
    assert_eq!(response.status().as_u16(), 400);
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    hub.wait_exact(&expected, Duration::from_secs(60)).await;

    hub.kill();
    hub.start();
    hub.wait_ready().await;
    assert!(
        hub.mismatches(&expected).await.is_empty(),
        "profiles survive"
    );

    // File ingest on start-up feeds the same pipeline.
    let file = data.path().join("more.ndjson");
    let (more, expected_more) = generate("file", 20, 5, 42);
    let mut out = std::fs::File::create(&file).expect("create");
    for (_, payload) in &more {
        writeln!(out, "{payload}").expect("write");
    }
    drop(out);
    hub.kill();
    hub.start_with_args(&["--events", &file.display().to_string()]);
    hub.wait_ready().await;
    hub.wait_exact(&expected_more, Duration::from_secs(60))
        .await;
    assert!(hub.mismatches(&expected).await.is_empty());
}

// ---------------------------------------------------------------------------
// Live plugin operations: uploads, swaps, rollback, quarantine, the watched
// plugin directory, the audit log and the per-plugin metrics.
// ---------------------------------------------------------------------------

const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// A folder with the built-in plugins.
fn builtin_plugin_dir() -> tempfile::TempDir {
    let plugins = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(workspace().join("target/plugins")).expect("plugins are built") {
        let path = entry.expect("entry").path();
        let name = path.file_name().expect("file name").to_owned();
        std::fs::copy(&path, plugins.path().join(name)).expect("copy plugin");
    }
    plugins
}

/// The chaos fixture's component, and its manifest at `version` with
/// `extra` lines appended (a `[config]` table, say).
fn chaos_package(version: &str, extra: &str) -> (String, Vec<u8>) {
    let dir = workspace().join("target/test-plugins");
    let manifest = std::fs::read_to_string(dir.join("chaos.toml")).expect("chaos manifest");
    let manifest = manifest.replace("version = \"0.1.0\"", &format!("version = \"{version}\""));
    assert!(manifest.contains(version), "{manifest}");
    let component = std::fs::read(dir.join("chaos.wasm")).expect("chaos component");
    (format!("{manifest}\n{extra}\n"), component)
}

/// A reply's status and JSON body.
async fn reply(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

impl PulseHub {
    /// A services-mode instance with the admin routes on, its plugins from
    /// `plugins`, and `extra` variables.
    fn services_with_admin(
        topic: &str,
        database_url: &str,
        plugins: &Path,
        extra: &[(&str, &str)],
    ) -> Self {
        let mut env = services_env(topic, database_url, None);
        env.push(("PULSEHUB_PLUGIN_DIR".into(), plugins.display().to_string()));
        env.push(("PULSEHUB_ADMIN_TOKEN".into(), ADMIN_TOKEN.into()));
        env.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        Self::new(env)
    }

    async fn put_plugin(
        &self,
        name: &str,
        manifest: Option<&str>,
        component: Option<&[u8]>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let mut form = reqwest::multipart::Form::new();
        if let Some(manifest) = manifest {
            form = form.text("manifest", manifest.to_owned());
        }
        if let Some(component) = component {
            form = form.part(
                "component",
                reqwest::multipart::Part::bytes(component.to_vec()).file_name("plugin.wasm"),
            );
        }
        let mut request = self
            .http
            .put(self.url(&format!("/api/v1/plugins/{name}")))
            .header("x-pulsehub-operator", "e2e-test")
            .multipart(form);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        reply(request.send().await.expect("PUT answers")).await
    }

    async fn admin(&self, method: reqwest::Method, path: &str) -> (u16, Value) {
        let request = self
            .http
            .request(method, self.url(path))
            .bearer_auth(ADMIN_TOKEN);
        reply(request.send().await.expect("admin call answers")).await
    }

    async fn plugin(&self, name: &str) -> (u16, Value) {
        self.get_json(&format!("/api/v1/plugins/{name}")).await
    }

    async fn metrics_text(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics answers")
            .text()
            .await
            .expect("metrics text")
    }

    /// Waits until `check` holds for `GET /api/v1/plugins/{name}`.
    async fn wait_plugin(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(u16, &Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, body) = self.plugin(name).await;
            if check(status, &body) {
                return body;
            }
            if Instant::now() > deadline {
                panic!(
                    "plugin {name}: {what} did not happen; last {status} {body}\nlog:\n{}",
                    tail(&self.log_text(), 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The names and version ids of the installed plugins.
async fn installed(hub: &PulseHub) -> Vec<(String, String)> {
    let (status, body) = hub.get_json("/api/v1/plugins").await;
    assert_eq!(status, 200, "{body}");
    body["plugins"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_owned(),
                p["version_id"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

async fn audit_rows(database_url: &str) -> Vec<(String, String, String, String, Option<String>)> {
    let mut conn = sqlx::PgConnection::connect(database_url)
        .await
        .expect("connect to the test database");
    sqlx::query_as("SELECT actor, action, plugin, outcome, detail FROM plugin_audit ORDER BY id")
        .fetch_all(&mut conn)
        .await
        .expect("read the audit log")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_plugin_uploads_are_refused_and_change_nothing() {
    let _serial = SERIAL.lock().await;
    let topic = topics(1).await;
    let database = create_database().await;
    let plugins = builtin_plugin_dir();
    // device-classifier, the largest built-in, is about 1.3 MB.
    let extra = [("PULSEHUB_PLUGIN_MAX_COMPONENT_BYTES", "2000000")];
    let mut hub = PulseHub::services_with_admin(&topic, &database, plugins.path(), &extra);
    hub.wait_ready().await;
    let before = installed(&hub).await;
    assert_eq!(before.len(), 3, "{before:?}");

    let (manifest, component) = chaos_package("0.1.0", "");
    // No token, a wrong token. (The server answers before reading the
    // body, so these send a small one.)
    let (status, body) = hub.put_plugin("chaos", Some(&manifest), None, None).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["detail"].as_str().unwrap_or("").contains("Bearer"),
        "{body}"
    );
    let (status, body) = hub
        .put_plugin("chaos", Some(&manifest), None, Some("not-the-admin-token"))
        .await;
    assert_eq!(status, 401, "{body}");
    let (status, _) = hub
        .admin(reqwest::Method::DELETE, "/api/v1/plugins/page-view-counter")
        .await;
    assert_eq!(status, 204, "the right token is accepted");
    // Put it back for the rest of the test.
    let counter = workspace().join("target/plugins");
    let (status, body) = hub
        .put_plugin(
            "page-view-counter",
            Some(
                &std::fs::read_to_string(counter.join("page-view-counter.toml")).expect("manifest"),
            ),
            Some(&std::fs::read(counter.join("page-view-counter.wasm")).expect("component")),
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let before = installed(&hub).await;

    let failing_init = chaos_package("0.1.0", "[config]\nfail-init = \"true\"").0;
    let clash = manifest.replace(
        "writes = [\"chaos_count\", \"chaos_text\"]",
        "writes = [\"chaos_count\", \"page_views\"]",
    );
    assert_ne!(clash, manifest);
    let core_module = wat::parse_str("(module)").expect("wat");
    let empty_component = wat::parse_str("(component)").expect("wat");
    let oversized = vec![0_u8; 2_500_000];
    // (case, name in the path, manifest, component, status, detail mentions)
    type Case<'a> = (
        &'a str,
        &'a str,
        Option<&'a str>,
        Option<&'a [u8]>,
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "garbage",
            "chaos",
            Some(&manifest),
            Some(b"not wasm at all"),
            422,
            "not WebAssembly",
        ),
        (
            "core module",
            "chaos",
            Some(&manifest),
            Some(&core_module),
            422,
            "core WebAssembly module",
        ),
        (
            "wrong world",
            "chaos",
            Some(&manifest),
            Some(&empty_component),
            422,
            "does not target",
        ),
        (
            "failing init",
            "chaos",
            Some(&failing_init),
            Some(&component),
            422,
            "init failed",
        ),
        (
            "ownership clash",
            "chaos",
            Some(&clash),
            Some(&component),
            409,
            "page_views",
        ),
        (
            "bad manifest",
            "chaos",
            Some("name = 'chaos'"),
            Some(&component),
            400,
            "manifest",
        ),
        (
            "name mismatch",
            "other",
            Some(&manifest),
            Some(&component),
            400,
            "\"other\"",
        ),
        (
            "no component",
            "chaos",
            Some(&manifest),
            None,
            400,
            "`component` is missing",
        ),
        (
            "no manifest",
            "chaos",
            None,
            Some(&component),
            400,
            "`manifest` is missing",
        ),
        (
            "too large",
            "chaos",
            Some(&manifest),
            Some(&oversized),
            413,
            "plugins.max_component_bytes",
        ),
    ];
    for (case, name, manifest, component, want, detail) in &cases {
        let (status, body) = hub
            .put_plugin(name, *manifest, *component, Some(ADMIN_TOKEN))
            .await;
        assert_eq!(status, *want, "{case}: {body}");
        assert_eq!(
            body["status"],
            json!(want),
            "{case}: a problem document: {body}"
        );
        let text = body["detail"].as_str().unwrap_or_default();
        assert!(
            text.contains(detail),
            "{case}: {text:?} should mention {detail:?}"
        );
        assert_eq!(
            installed(&hub).await,
            before,
            "{case}: nothing that runs changed"
        );
    }
    // Over the upload limit itself: refused on its Content-Length, before
    // any of it is read (so only the head is sent).
    let head = format!(
        "PUT /api/v1/plugins/chaos HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {ADMIN_TOKEN}\r\n\
         content-type: multipart/form-data; boundary=x\r\ncontent-length: {}\r\n\r\n",
        hub.addr,
        4 << 20
    );
    let mut stream = tokio::net::TcpStream::connect(hub.addr)
        .await
        .expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut stream, head.as_bytes())
        .await
        .expect("send the head");
    let mut answer = vec![0_u8; 512];
    let n = tokio::io::AsyncReadExt::read(&mut stream, &mut answer)
        .await
        .expect("an answer");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");

    // A good upload goes through, and the audit log holds everything.
    let (status, body) = hub
        .put_plugin(
            "chaos",
            Some(&manifest),
            Some(&component),
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["state"], "active");
    assert_eq!(body["source"], "api");
    assert_eq!(installed(&hub).await.len(), 4);
    let rows = audit_rows(&database).await;
    let refused = rows.iter().filter(|r| r.3 == "refused").count();
    // Every refused package is audited; the two requests that were not
    // plugin packages at all (a part missing) are answered, not audited.
    assert_eq!(
        refused,
        cases.len() - 2,
        "every refusal is audited: {rows:#?}"
    );
    let last = rows.last().expect("rows");
    assert_eq!(
        (last.1.as_str(), last.2.as_str(), last.3.as_str()),
        ("install", "chaos", "ok")
    );
    assert!(
        last.0.contains("e2e-test"),
        "the operator is named: {last:?}"
    );
    assert!(
        rows.iter()
            .any(|r| r.1 == "remove" && r.2 == "page-view-counter"),
        "{rows:#?}"
    );
}

/// Sums a counter of the Prometheus text over the series whose labels
/// contain every one of `labels`.
fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// Per user: (page views, count events).
type KindCounts = BTreeMap<String, (i64, i64)>;

/// Events of kinds `page_view` (every `views_every`-th) and `count` for
/// `users` users, `per_user` each, ids tagged by `phase`; with the number of
/// each kind per user.
fn counted_events(
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

/// Waits until every user's `page_views` is what `views` says, then returns
/// each user's `chaos_count`.
async fn wait_views(hub: &PulseHub, views: &BTreeMap<String, i64>) -> BTreeMap<String, i64> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut chaos = BTreeMap::new();
        let mut wrong = Vec::new();
        for (user, want) in views {
            let profile = hub.profile(user).await.unwrap_or(Value::Null);
            let got = profile["attributes"]["page_views"]["value"]
                .as_i64()
                .unwrap_or(0);
            if got != *want {
                wrong.push(format!("{user}: {got} page views, want {want}"));
            }
            chaos.insert(
                user.clone(),
                profile["attributes"]["chaos_count"]["value"]
                    .as_i64()
                    .unwrap_or(0),
            );
        }
        if wrong.is_empty() {
            return chaos;
        }
        if Instant::now() > deadline {
            panic!(
                "{}\nlog:\n{}",
                wrong[..wrong.len().min(5)].join("\n"),
                tail(&hub.log_text(), 40)
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_swapped_under_load_counts_exactly_and_rolls_back() {
    let _serial = SERIAL.lock().await;
    let topic = topics(4).await;
    let database = create_database().await;
    let plugins = builtin_plugin_dir();
    let mut hub = PulseHub::services_with_admin(&topic, &database, plugins.path(), &[]);
    hub.wait_ready().await;
    let (v1, component) = chaos_package("0.1.0", "");
    let (v2, _) = chaos_package("0.2.0", "[config]\ncount-step = \"1000\"");
    let (status, body) = hub
        .put_plugin("chaos", Some(&v1), Some(&component), Some(ADMIN_TOKEN))
        .await;
    assert_eq!(status, 201, "{body}");
    let v1_id = body["version_id"].as_str().expect("version id").to_owned();

    // Phase 1 streams while v2 replaces v1; phase 2 is produced after the
    // swap answered, so v2 counts all of it.
    let (phase1, counts1) = counted_events("swap", "p1", 40, 100, 2);
    let (phase2, counts2) = counted_events("swap", "p2", 40, 20, 2);
    let producer = producer();
    let (half1, half2) = phase1.split_at(phase1.len() / 2);
    produce(&producer, &topic, half1).await;
    let swap = hub.put_plugin("chaos", Some(&v2), Some(&component), Some(ADMIN_TOKEN));
    let ((status, body), ()) = tokio::join!(swap, produce(&producer, &topic, half2));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], "0.2.0");
    assert_eq!(body["previous"][0]["version_id"], json!(v1_id));
    produce(&producer, &topic, &phase2).await;

    let views: BTreeMap<String, i64> = counts1
        .iter()
        .map(|(user, (v, _))| (user.clone(), v + counts2[user].0))
        .collect();
    let chaos = wait_views(&hub, &views).await;
    // Each count event was counted once, by v1 (1) or v2 (1000), and every
    // phase-2 event by v2.
    let (mut by_v1, mut by_v2) = (0, 0);
    for (user, total) in &chaos {
        let n = counts1[user].1 + counts2[user].1;
        let extra = total - n;
        assert!(
            extra >= 0 && extra % 999 == 0,
            "{user}: chaos_count {total} for {n} events"
        );
        let v2_events = extra / 999;
        assert!(
            (counts2[user].1..=n).contains(&v2_events),
            "{user}: {v2_events} events counted by v2, of {n}"
        );
        by_v1 += n - v2_events;
        by_v2 += v2_events;
    }
    assert!(by_v2 > 0, "v2 ran");
    println!("count events: {by_v1} by v1, {by_v2} by v2");

    // Rollback restores v1's behaviour.
    let (status, body) = hub
        .admin(reqwest::Method::POST, "/api/v1/plugins/chaos/rollback")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], "0.1.0");
    assert_eq!(body["version_id"], json!(v1_id));
    let (status, body) = hub
        .admin(reqwest::Method::POST, "/api/v1/plugins/chaos/rollback")
        .await;
    assert_eq!(status, 409, "nothing older is kept: {body}");
    let (phase3, counts3) = counted_events("swap", "p3", 40, 10, 2);
    produce(&producer, &topic, &phase3).await;
    let views: BTreeMap<String, i64> = views
        .iter()
        .map(|(user, v)| (user.clone(), v + counts3[user].0))
        .collect();
    let after = wait_views(&hub, &views).await;
    for (user, total) in &after {
        assert_eq!(
            *total,
            chaos[user] + counts3[user].1,
            "{user}: v1 counts by one again"
        );
    }

    // A restart brings back the uploaded version, which is not in the
    // plugin directory.
    hub.kill();
    hub.start();
    hub.wait_ready().await;
    let (status, body) = hub.plugin("chaos").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version_id"], json!(v1_id));
    assert_eq!(body["state"], "active");
    let rows = audit_rows(&database).await;
    let actions: Vec<&str> = rows
        .iter()
        .filter(|r| r.2 == "chaos")
        .map(|r| r.1.as_str())
        .collect();
    assert_eq!(
        actions,
        ["install", "install", "rollback", "rollback"],
        "{rows:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_plugin_is_quarantined_or_rolled_back_while_the_others_go_on() {
    let _serial = SERIAL.lock().await;
    let topic = topics(2).await;
    let database = create_database().await;
    let plugins = builtin_plugin_dir();
    let extra = [("PULSEHUB_QUARANTINE_MIN_EVENTS", "40")];
    let mut hub = PulseHub::services_with_admin(&topic, &database, plugins.path(), &extra);
    hub.wait_ready().await;
    let producer = producer();
    let (v1, component) = chaos_package("0.1.0", "");
    let (trapping, _) = chaos_package("0.2.0", "[config]\ntrap-on = \"count\"");
    let (status, body) = hub
        .put_plugin("chaos", Some(&v1), Some(&component), Some(ADMIN_TOKEN))
        .await;
    assert_eq!(status, 201, "{body}");

    // A new version that traps on every count event replaces a healthy
    // one: it is taken out and the healthy one comes back by itself.
    let (status, body) = hub
        .put_plugin(
            "chaos",
            Some(&trapping),
            Some(&component),
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(status, 200, "the samples do not trap it: {body}");
    let (events, counts) = counted_events("quarantine", "p1", 20, 20, 4);
    produce(&producer, &topic, &events).await;
    let views: BTreeMap<String, i64> = counts.iter().map(|(u, (v, _))| (u.clone(), *v)).collect();
    wait_views(&hub, &views).await;
    let body = hub
        .wait_plugin("chaos", "an automatic rollback", |_, b| {
            b["version"] == "0.1.0"
        })
        .await;
    assert_eq!(body["state"], "active", "{body}");
    let reason = body["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("rolled back automatically"), "{body}");
    let metrics = hub.metrics_text().await;
    assert_eq!(
        metric_sum(
            &metrics,
            "pulsehub_plugin_actions_total",
            &["plugin=\"chaos\"", "action=\"auto_rollback\""]
        ),
        1.0,
        "{metrics}"
    );
    assert!(
        metric_sum(
            &metrics,
            "pulsehub_plugin_errors_total",
            &["plugin=\"chaos\"", "version=\"0.2.0\"", "kind=\"trap\""]
        ) >= 40.0,
        "{metrics}"
    );
    let letters = read_all(&format!("{topic}.dlq"), Duration::from_secs(2));
    assert!(!letters.is_empty());
    for (_, headers) in &letters {
        assert_eq!(headers["pulsehub-plugin"], "chaos");
        assert_eq!(headers["pulsehub-plugin-version"], "0.2.0");
        assert_eq!(headers["pulsehub-error-kind"], "trap");
    }

    // With no healthy version to go back to, the plugin is quarantined;
    // the others go on.
    let (status, _) = hub
        .admin(reqwest::Method::DELETE, "/api/v1/plugins/chaos")
        .await;
    assert_eq!(status, 204);
    let (status, body) = hub
        .put_plugin(
            "chaos",
            Some(&trapping),
            Some(&component),
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (events, counts2) = counted_events("quarantine", "p2", 20, 20, 4);
    produce(&producer, &topic, &events).await;
    let body = hub
        .wait_plugin("chaos", "a quarantine", |_, b| b["state"] == "quarantined")
        .await;
    assert!(
        body["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("failed"),
        "{body}"
    );
    assert!(
        body["counters"]["failures"].as_u64().unwrap_or(0) >= 20,
        "{body}"
    );
    let views: BTreeMap<String, i64> = counts
        .iter()
        .map(|(u, (v, _))| (u.clone(), v + counts2[u].0))
        .collect();
    wait_views(&hub, &views).await;
    let metrics = hub.metrics_text().await;
    assert_eq!(
        metric_sum(
            &metrics,
            "pulsehub_plugin_state",
            &["plugin=\"chaos\"", "state=\"quarantined\""]
        ),
        1.0,
        "{metrics}"
    );
    assert!(
        metric_sum(
            &metrics,
            "pulsehub_plugin_events_total",
            &["plugin=\"page-view-counter\""]
        ) >= 200.0,
        "{metrics}"
    );
    assert!(
        metrics.contains("pulsehub_plugin_call_duration_seconds_bucket{"),
        "{metrics}"
    );

    // The quarantine survives a restart, and an operator lifts it.
    hub.kill();
    hub.start();
    hub.wait_ready().await;
    let (_, body) = hub.plugin("chaos").await;
    assert_eq!(body["state"], "quarantined", "{body}");
    let (status, body) = hub
        .admin(reqwest::Method::POST, "/api/v1/plugins/chaos/resume")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "active");
    let (status, body) = hub
        .admin(reqwest::Method::POST, "/api/v1/plugins/chaos/resume")
        .await;
    assert_eq!(status, 409, "{body}");
    let rows = audit_rows(&database).await;
    let host_actions: Vec<&str> = rows
        .iter()
        .filter(|r| r.0 == "host")
        .map(|r| r.1.as_str())
        .collect();
    assert_eq!(host_actions, ["auto_rollback", "quarantine"], "{rows:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_directory_is_watched() {
    let _serial = SERIAL.lock().await;
    let data = tempfile::tempdir().expect("tempdir");
    let plugins = builtin_plugin_dir();
    let mut hub = PulseHub::new(vec![
        (
            "PULSEHUB_DATA_DIR".into(),
            data.path().display().to_string(),
        ),
        (
            "PULSEHUB_PLUGIN_DIR".into(),
            plugins.path().display().to_string(),
        ),
    ]);
    hub.wait_ready().await;
    assert_eq!(installed(&hub).await.len(), 3);
    // Without an admin token there are no admin routes.
    let (status, _) = hub
        .put_plugin("chaos", Some("x"), Some(b"y"), Some(ADMIN_TOKEN))
        .await;
    assert_eq!(status, 405);

    let (manifest, component) = chaos_package("0.1.0", "");
    std::fs::write(plugins.path().join("chaos.wasm"), &component).expect("write");
    std::fs::write(plugins.path().join("chaos.toml"), &manifest).expect("write");
    let body = hub
        .wait_plugin("chaos", "a load from the directory", |s, _| s == 200)
        .await;
    assert_eq!(body["source"], "dir");
    assert_eq!(body["version"], "0.1.0");

    // A changed manifest is a new version.
    let (manifest2, _) = chaos_package("0.2.0", "");
    std::fs::write(plugins.path().join("chaos.toml"), &manifest2).expect("write");
    let body = hub
        .wait_plugin("chaos", "a replacement", |_, b| b["version"] == "0.2.0")
        .await;
    assert_eq!(body["previous"][0]["version"], "0.1.0", "{body}");

    // A broken pair is refused; the rest runs on.
    std::fs::write(
        plugins.path().join("broken.toml"),
        manifest.replace("\"chaos\"", "\"broken\""),
    )
    .expect("write");
    std::fs::write(plugins.path().join("broken.wasm"), b"not wasm").expect("write");
    // Removing a pair removes the plugin.
    std::fs::remove_file(plugins.path().join("chaos.wasm")).expect("remove");
    hub.wait_plugin("chaos", "a removal", |s, _| s == 404).await;
    let (status, _) = hub.plugin("broken").await;
    assert_eq!(status, 404);
    assert_eq!(installed(&hub).await.len(), 3);

    let audit = std::fs::read_to_string(data.path().join("audit.log")).expect("audit file");
    let lines: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let summary: Vec<(String, String, String)> = lines
        .iter()
        .filter(|l| {
            l["actor"] == "plugin-dir"
                && l["plugin"] != "device-classifier"
                && l["plugin"] != "last-active"
                && l["plugin"] != "page-view-counter"
        })
        .map(|l| {
            (
                l["action"].as_str().unwrap_or_default().to_owned(),
                l["plugin"].as_str().unwrap_or_default().to_owned(),
                l["outcome"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let want: Vec<(String, String, String)> = [
        ("install", "chaos", "ok"),
        ("install", "chaos", "ok"),
        ("install", "broken", "refused"),
        ("remove", "chaos", "ok"),
    ]
    .iter()
    .map(|(a, p, o)| ((*a).to_owned(), (*p).to_owned(), (*o).to_owned()))
    .collect();
    assert_eq!(summary, want, "{audit}");
}
