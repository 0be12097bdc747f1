//! The `pulsehub run` child process of the end-to-end tests, and its HTTP
//! API (profiles, readiness, metrics, the admin routes).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::Mutex;

use super::prometheus::Samples;
use super::services::{free_port, kafka_brokers, workspace};
use super::workload::{Expected, actual};

/// One test at a time within a test binary: each test starts PulseHub
/// processes on two shared cores. (`cargo test` runs the test binaries one
/// after the other, so no two binaries' tests overlap either.)
pub static SERIAL: Mutex<()> = Mutex::const_new(());

/// The admin token of [`PulseHub::services_with_admin`].
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// The `pulsehub run` child process, with its variables (so that it can be
/// restarted with them), its log and an HTTP client. Dropping it kills the
/// process.
pub struct PulseHub {
    child: Option<Child>,
    env: Vec<(String, String)>,
    /// The arguments after `pulsehub run` of every [`PulseHub::start`].
    args: Vec<String>,
    /// Where its API listens.
    pub addr: SocketAddr,
    log: PathBuf,
    _dir: Arc<tempfile::TempDir>,
    /// A client for its API (10 s timeout).
    pub http: reqwest::Client,
}

impl PulseHub {
    /// A services-mode instance on `topic` (its consumer groups and Redis
    /// key prefix named after it) and `database_url`, with Redis at `redis`
    /// if given; started.
    pub fn services(topic: &str, database_url: &str, redis: Option<&str>) -> Self {
        Self::new(services_env(topic, database_url, redis))
    }

    /// Like [`PulseHub::services`], with `extra` variables, run as
    /// `pulsehub run <args>` at every start; started.
    pub fn services_with(
        topic: &str,
        database_url: &str,
        redis: Option<&str>,
        extra: &[(&str, &str)],
        args: &[&str],
    ) -> Self {
        let mut env = services_env(topic, database_url, redis);
        push_vars(&mut env, extra);
        Self::with_args(env, args)
    }

    /// A services-mode instance with the admin routes on
    /// ([`ADMIN_TOKEN`]), its plugins from `plugins`, and `extra`
    /// variables; started.
    pub fn services_with_admin(
        topic: &str,
        database_url: &str,
        plugins: &Path,
        extra: &[(&str, &str)],
    ) -> Self {
        let mut env = services_env(topic, database_url, None);
        env.push(("PULSEHUB_PLUGIN_DIR".into(), plugins.display().to_string()));
        env.push(("PULSEHUB_ADMIN_TOKEN".into(), ADMIN_TOKEN.into()));
        push_vars(&mut env, extra);
        Self::new(env)
    }

    /// An instance with the variables `env`, its API on a free port, the
    /// built-in plugins and a plugin registry of its own unless `env` says
    /// otherwise; started.
    pub fn new(env: Vec<(String, String)>) -> Self {
        Self::with_args(env, &[])
    }

    /// Like [`PulseHub::new`], run as `pulsehub run <args>` at every start.
    pub fn with_args(mut env: Vec<(String, String)>, args: &[&str]) -> Self {
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
            args: args.iter().map(|&a| a.to_owned()).collect(),
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

    /// Starts the process (again), with the arguments it was made with.
    pub fn start(&mut self) {
        let args = self.args.clone();
        self.start_with_args(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }

    /// Starts the process (again) as `pulsehub run <args>`; its stderr is
    /// appended to the log.
    pub fn start_with_args(&mut self, args: &[&str]) {
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

    /// Sets a variable for the next start.
    pub fn set_env(&mut self, name: &str, value: &str) {
        self.env.retain(|(n, _)| n != name);
        self.env.push((name.to_owned(), value.to_owned()));
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9");
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits (up to 30 s) for the process to exit; panics
    /// unless it exits 0.
    pub fn terminate(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill -TERM runs");
        assert!(sent.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("waiting for pulsehub") {
                assert!(status.success(), "pulsehub exited {status} on SIGTERM");
                return;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "pulsehub did not exit within 30 s of SIGTERM:\n{}",
                    tail(&self.log_text(), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything the process (all its starts) logged.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The partitions of consumer group `group` the process holds now, by
    /// its log since its latest start: the "partitions assigned" and
    /// "partitions revoked" lines. Needs `PULSEHUB_LOG_FORMAT=json`.
    pub fn assignment(&self, group: &str) -> BTreeSet<i32> {
        let mut held = BTreeSet::new();
        for line in self.log_text().lines() {
            let Ok(entry) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let fields = &entry["fields"];
            let message = fields["message"].as_str().unwrap_or_default();
            if message == "paths" {
                // Logged first at every start.
                held.clear();
            }
            if fields["group"].as_str() != Some(group) {
                continue;
            }
            let listed = partitions_listed(fields["partitions"].as_str().unwrap_or_default());
            match message {
                "partitions assigned" => held.extend(listed),
                "partitions revoked" => held.retain(|p| !listed.contains(p)),
                _ => {}
            }
        }
        held
    }

    /// The URL of `path` on its API.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Waits until `/readyz` answers (ready or degraded).
    pub async fn wait_ready(&mut self) {
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

    /// `GET path`: the status and the JSON body (null if it is not JSON).
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        reply(
            self.http
                .get(self.url(path))
                .send()
                .await
                .expect("GET answers"),
        )
        .await
    }

    /// `GET /metrics`, parsed.
    pub async fn metrics(&self) -> Samples {
        let response = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics answers");
        assert_eq!(response.status().as_u16(), 200, "GET /metrics");
        Samples::parse(&response.text().await.expect("the metrics text"))
    }

    /// `GET /metrics`, as text.
    pub async fn metrics_text(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics answers")
            .text()
            .await
            .expect("metrics text")
    }

    /// The profile of `user`, `None` if there is none (404).
    pub async fn profile(&self, user: &str) -> Option<Value> {
        let (status, body) = self.get_json(&format!("/api/v1/profiles/{user}")).await;
        match status {
            200 => Some(body),
            404 => None,
            other => panic!("GET profile {user}: {other} {body}"),
        }
    }

    /// The users whose profile differs from what the test expects.
    pub async fn mismatches(&self, expected: &BTreeMap<String, Expected>) -> Vec<String> {
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
    pub async fn wait_exact(&self, expected: &BTreeMap<String, Expected>, patience: Duration) {
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

    /// `PUT /api/v1/plugins/{name}` with the parts given, as operator
    /// `e2e-test`, with `token` as the bearer token if given.
    pub async fn put_plugin(
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

    /// An admin call (`method path`, no body) with [`ADMIN_TOKEN`].
    pub async fn admin(&self, method: reqwest::Method, path: &str) -> (u16, Value) {
        let request = self
            .http
            .request(method, self.url(path))
            .bearer_auth(ADMIN_TOKEN);
        reply(request.send().await.expect("admin call answers")).await
    }

    /// Waits (up to 60 s) until the profile of `user` exists and `check`
    /// holds for it; returns it.
    pub async fn wait_for_profile(&self, user: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let profile = self.profile(user).await;
            if let Some(profile) = profile.as_ref().filter(|p| check(p)) {
                return profile.clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the profile of {user} never got there: {profile:?}\n{}",
                tail(&self.log_text(), 30)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// An admin call (`method path`) with [`ADMIN_TOKEN`] and `body` as
    /// JSON.
    pub async fn admin_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &Value,
    ) -> (u16, Value) {
        let request = self
            .http
            .request(method, self.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .json(body);
        reply(request.send().await.expect("admin call answers")).await
    }

    /// `POST /api/v1/events` with `events` (their JSON texts) as one array;
    /// asserts they were accepted.
    pub async fn post_events(&self, events: &[&str]) {
        let response = self
            .http
            .post(self.url("/api/v1/events"))
            .header("content-type", "application/json")
            .body(format!("[{}]", events.join(",")))
            .send()
            .await
            .expect("POST answers");
        assert_eq!(response.status().as_u16(), 202, "POST /api/v1/events");
    }

    /// A privacy request (`kind` of the person named by `identifiers`, as
    /// `(type, value)`), waited for until done (up to 60 s); its final body.
    pub async fn privacy(&self, kind: &str, identifiers: &[(&str, &str)]) -> Value {
        let identifiers: Vec<Value> = identifiers
            .iter()
            .map(|(kind, value)| serde_json::json!({"type": kind, "value": value}))
            .collect();
        let request = self
            .http
            .post(self.url("/api/v1/privacy/requests"))
            .bearer_auth(ADMIN_TOKEN)
            .header("x-pulsehub-operator", "e2e-test")
            .json(&serde_json::json!({"type": kind, "identifiers": identifiers}));
        let (status, accepted) = reply(request.send().await.expect("POST answers")).await;
        assert_eq!(status, 202, "{kind} request: {accepted}");
        let path = format!("/api/v1/privacy/requests/{}", accepted["id"]);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (status, body) = self.admin(reqwest::Method::GET, &path).await;
            assert_eq!(status, 200, "{path}: {body}");
            if body["status"] == "done" {
                return body;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{kind} request not done: {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `GET /api/v1/plugins/{name}`.
    pub async fn plugin(&self, name: &str) -> (u16, Value) {
        self.get_json(&format!("/api/v1/plugins/{name}")).await
    }

    /// Waits (up to 60 s) until `check` holds for
    /// `GET /api/v1/plugins/{name}`, and returns that body; panics naming
    /// `what` did not happen.
    pub async fn wait_plugin(
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

impl Drop for PulseHub {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
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

/// The partitions of a logged `[(partition, offset), ...]` list.
fn partitions_listed(text: &str) -> Vec<i32> {
    text.split('(')
        .skip(1)
        .filter_map(|pair| pair.split(',').next()?.trim().parse().ok())
        .collect()
}

/// Appends `extra` to `env`.
fn push_vars(env: &mut Vec<(String, String)>, extra: &[(&str, &str)]) {
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
}

/// A reply's status and JSON body (null if it is not JSON).
async fn reply(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The last `lines` lines of `text`, for failure messages.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
