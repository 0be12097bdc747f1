//! Where the test services are, names no other run uses, and the paths and
//! ports the tests share.
//!
//! The services come from the same variables everywhere (`cargo xtask test`
//! and `scripts/services.sh` start them at the defaults):
//! `PULSEHUB_TEST_KAFKA`, `PULSEHUB_TEST_DATABASE_URL` and
//! `PULSEHUB_TEST_REDIS_URL`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The PostgreSQL database used when `PULSEHUB_TEST_DATABASE_URL` is unset.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The repository's root (the workspace holding `host/`), where
/// `cargo xtask plugins` puts `target/plugins` and `target/test-plugins`.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

/// The Kafka-protocol broker: `PULSEHUB_TEST_KAFKA`, by default
/// `127.0.0.1:9092`.
pub fn kafka_brokers() -> String {
    std::env::var("PULSEHUB_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// A database of the PostgreSQL server the tests create their databases on:
/// `PULSEHUB_TEST_DATABASE_URL`, by default [`DEFAULT_DATABASE_URL`].
pub fn admin_database_url() -> String {
    std::env::var("PULSEHUB_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.into())
}

/// The shared Redis: `PULSEHUB_TEST_REDIS_URL`, by default
/// `redis://127.0.0.1:6379`. Tests keep to key prefixes of their own.
pub fn redis_url() -> String {
    std::env::var("PULSEHUB_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// `{prefix}_{pid}_{nanos}_{n}`: a name no other test (of this run or
/// another) uses, for topics, consumer groups, databases and key prefixes.
/// Letters, digits and `_` only besides `prefix`, so with a prefix of those
/// it is a valid SQL identifier as it is.
pub fn unique(prefix: &str) -> String {
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

/// A TCP port on 127.0.0.1 that nothing listened on a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A Redis server of the test's own (`redis-server` on `port`, nothing
/// saved), so that it can be stopped without disturbing the shared one.
/// Dropping the value stops it.
pub struct OwnRedis {
    child: Child,
    /// The port it listens on, to start it again on the same one.
    pub port: u16,
}

impl OwnRedis {
    /// Starts it and waits (up to 10 s) until it listens.
    pub fn start(port: u16) -> Self {
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

    /// Its URL, for `PULSEHUB_REDIS_URL`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
