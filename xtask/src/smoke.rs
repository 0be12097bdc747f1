//! The smoke step of `cargo xtask test`: the README's run command, typed as a
//! newcomer types it, from the repository's root, with the defaults.
//!
//! The command and the profile the README promises for `u-42` are read out
//! of the README itself (its section "The two commands"), so the README and
//! this step cannot drift apart. The step:
//!
//! 1. starts the command, waits for the "API on http://ADDR/api/v1" line,
//!    checks that `GET /api/v1/profiles/u-42` answers the README's profile
//!    and that `/readyz` is ready, stops it with SIGTERM and checks that it
//!    exits with status 0;
//! 2. starts it again without `--events` (the README: "start without it to
//!    keep the counts as they are") and checks that the profile stays
//!    unchanged for a few seconds, then runs schemathesis (`--checks all`, every phase)
//!    against the document that process serves;
//! 3. starts it once more with an admin token and runs schemathesis with the
//!    token, so the admin routes are checked as well.
//!
//! The run uses the default data directory, `pulsehub-data/` at the root; one
//! left there by a developer is moved aside for the step and put back after.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

/// The README's section holding the two commands.
const SECTION: &str = "## The two commands";
/// The README's data directory, relative to the root.
const DATA_DIR: &str = "pulsehub-data";
/// The user whose profile the README shows.
const USER: &str = "u-42";
/// schemathesis, pinned: a newer one may check more, and that is a change
/// to make on purpose.
const SCHEMATHESIS: &str = "schemathesis==4.32.5";
/// Its configuration: which answers each check accepts.
const SCHEMATHESIS_CONFIG: &str = "scripts/schemathesis.toml";
/// The first start may build the release binary.
const START_TIMEOUT: Duration = Duration::from_secs(45 * 60);
/// Time for the example events to reach the profile.
const PROFILE_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a restarted PulseHub must keep the profile as it was; its
/// pipeline handles the example events within milliseconds.
const UNCHANGED_FOR: Duration = Duration::from_secs(3);

/// What the README promises a newcomer.
#[derive(Debug)]
struct Promise {
    /// The run command, one line of shell.
    command: String,
    /// The profile `curl .../profiles/u-42` answers.
    profile: serde_json::Value,
}

pub fn run(root: &Path) -> Result<()> {
    let readme = std::fs::read_to_string(root.join("README.md")).context("reading README.md")?;
    let promise = promise(&readme)?;
    println!("smoke: the README's run command: {}", promise.command);
    let _data = SetAside::new(&root.join(DATA_DIR))?;

    // 1. As written: the events file is published, the profile follows.
    let hub = Hub::start(root, &promise.command, &[])?;
    let first = hub.wait_for_profile(&promise.profile)?;
    hub.check_ready()?;
    hub.stop()?;
    println!("smoke: first start served the README's profile of {USER} and stopped cleanly");

    // 2. Without --events: nothing new is published, nothing changes.
    let again = without_events(&promise.command);
    let hub = Hub::start(root, &again, &[])?;
    hub.check_ready()?;
    hub.profile_stays(&first)?;
    println!("smoke: second start ({again}) found the profile unchanged");
    let schemathesis = schemathesis(root)?;
    hub.schemathesis(root, &schemathesis, None)?;
    hub.stop()?;

    // 3. With an admin token: the admin routes are served and documented.
    let token = format!("smoke-{:032x}", random());
    let hub = Hub::start(root, &again, &[("PULSEHUB_ADMIN_TOKEN", &token)])?;
    hub.schemathesis(root, &schemathesis, Some(&token))?;
    hub.stop()?;
    println!("smoke: passed");
    Ok(())
}

/// The run command and the promised profile, from the README's section
/// [`SECTION`]: its first `sh` block (one line) and its first `json` block.
fn promise(readme: &str) -> Result<Promise> {
    let start = readme
        .find(SECTION)
        .with_context(|| format!("README.md has no section `{SECTION}`"))?;
    let section = &readme[start + SECTION.len()..];
    let section = section.find("\n## ").map_or(section, |end| &section[..end]);
    let block = |language: &str| -> Result<&str> {
        let fence = format!("```{language}\n");
        let begin = section
            .find(&fence)
            .with_context(|| format!("`{SECTION}` has no ```{language} block"))?
            + fence.len();
        let end = section[begin..]
            .find("```")
            .with_context(|| format!("`{SECTION}`: a ```{language} block is not closed"))?;
        Ok(&section[begin..begin + end])
    };
    let lines: Vec<&str> = block("sh")?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let [command] = lines.as_slice() else {
        bail!("`{SECTION}`: the run command must be one line, found {lines:?}");
    };
    let profile = serde_json::from_str(block("json")?).with_context(|| {
        format!("`{SECTION}`: the ```json block (the profile of {USER}) is not JSON")
    })?;
    Ok(Promise {
        command: (*command).to_owned(),
        profile,
    })
}

/// The command without `--events FILE` (or `--events=FILE`).
fn without_events(command: &str) -> String {
    let mut words = command.split_whitespace();
    let mut kept = Vec::new();
    while let Some(word) = words.next() {
        if word == "--events" {
            words.next();
        } else if !word.starts_with("--events=") {
            kept.push(word);
        }
    }
    kept.join(" ")
}

/// A profile as compared: the commit times (`created_at`, `updated_at`) are
/// those of the run, so they are left out.
fn comparable(profile: &serde_json::Value) -> serde_json::Value {
    let mut profile = profile.clone();
    if let Some(object) = profile.as_object_mut() {
        object.remove("created_at");
        object.remove("updated_at");
    }
    profile
}

/// A running `bash -c COMMAND`, its output echoed and watched.
struct Hub {
    child: Child,
    lines: Receiver<String>,
    /// `http://ADDR`, from the "API on" line.
    base: String,
}

impl Hub {
    fn start(root: &Path, command: &str, env: &[(&str, &str)]) -> Result<Hub> {
        println!("smoke: starting `{command}`");
        let mut bash = Command::new("bash");
        // What cargo sets for the running xtask is not a newcomer's.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name == "CARGO"
                || [
                    "CARGO_PKG_",
                    "CARGO_MANIFEST_",
                    "CARGO_BIN_",
                    "CARGO_CRATE_",
                    "CARGO_PRIMARY_",
                ]
                .iter()
                .any(|prefix| name.starts_with(prefix))
            {
                bash.env_remove(name.as_ref());
            }
        }
        let mut child = bash
            .args(["-c", command])
            .current_dir(root)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start `{command}`"))?;
        let (send, lines) = channel();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let send = send.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    println!("  | {line}");
                    let _ = send.send(line);
                }
            });
        }
        let mut hub = Hub {
            child,
            lines,
            base: String::new(),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match hub.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(address) = api_address(&line) {
                        hub.base = format!("http://{address}");
                        return Ok(hub);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    bail!("no \"API on\" line within {START_TIMEOUT:?} of starting `{command}`")
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = hub.child.wait().context("waiting for the command")?;
                    bail!("`{command}` ended ({status}) before logging \"API on\"");
                }
            }
        }
    }

    fn get(&self, path: &str) -> Result<(u16, String)> {
        let url = format!("{}{path}", self.base);
        let mut response = ureq::get(&url)
            .config()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .call()
            .with_context(|| format!("GET {url}"))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .read_to_string()
            .with_context(|| format!("reading the answer to GET {url}"))?;
        Ok((status, body))
    }

    fn profile(&self) -> Result<serde_json::Value> {
        let path = format!("/api/v1/profiles/{USER}");
        let (status, body) = self.get(&path)?;
        ensure!(status == 200, "GET {path} answered {status}: {body}");
        serde_json::from_str(&body).with_context(|| format!("GET {path}: not JSON: {body}"))
    }

    /// The profile, read for [`UNCHANGED_FOR`] after start-up, is `first`
    /// every time: a start that replayed the inbox, or lost a commit, would
    /// change it within that time.
    fn profile_stays(&self, first: &serde_json::Value) -> Result<()> {
        let until = Instant::now() + UNCHANGED_FOR;
        loop {
            let now = self.profile()?;
            ensure!(
                now == *first,
                "the profile of {USER} changed across a restart:\nbefore: {first}\nafter:  {now}"
            );
            if Instant::now() >= until {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Polls until the profile has the README's attributes; returns it whole.
    fn wait_for_profile(&self, promised: &serde_json::Value) -> Result<serde_json::Value> {
        let deadline = Instant::now() + PROFILE_TIMEOUT;
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            match self.profile() {
                Ok(profile) if comparable(&profile) == comparable(promised) => return Ok(profile),
                Ok(profile) => last = profile.to_string(),
                Err(error) => last = format!("{error:#}"),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!(
            "GET /api/v1/profiles/{USER} never answered the README's profile within \
             {PROFILE_TIMEOUT:?}\nREADME: {promised}\nlast:   {last}"
        )
    }

    fn check_ready(&self) -> Result<()> {
        let (status, body) = self.get("/readyz")?;
        ensure!(status == 200, "/readyz answered {status}: {body}");
        Ok(())
    }

    fn schemathesis(&self, root: &Path, program: &Path, token: Option<&str>) -> Result<()> {
        let document = format!("{}/api/v1/openapi.json", self.base);
        let mut command = Command::new(program);
        command
            .arg("--config-file")
            .arg(root.join(SCHEMATHESIS_CONFIG));
        command.args([
            "run",
            &document,
            "--checks",
            "all",
            "--phases",
            "examples,coverage,fuzzing,stateful",
        ]);
        if let Some(token) = token {
            command.args(["--header", &format!("Authorization: Bearer {token}")]);
        }
        // Its example database and reports go under target/, beside it.
        if let Some(venv) = program.parent().and_then(Path::parent) {
            command.current_dir(venv);
        }
        let shown = if token.is_some() { "with" } else { "without" };
        println!("smoke: schemathesis against {document}, {shown} the admin token");
        let status = command
            .status()
            .with_context(|| format!("cannot run {}", program.display()))?;
        ensure!(
            status.success(),
            "schemathesis found the served document and the server disagreeing ({status}, \
             {shown} the admin token)"
        );
        Ok(())
    }

    /// SIGTERM to the PulseHub process; the command must then end with
    /// status 0.
    fn stop(mut self) -> Result<()> {
        let pids = descendants_named(self.child.id(), "pulsehub")?;
        ensure!(!pids.is_empty(), "no `pulsehub` process under the command");
        for pid in &pids {
            let status = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .context("cannot run kill")?;
            ensure!(status.success(), "kill -TERM {pid} failed");
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().context("waiting for PulseHub")? {
                ensure!(
                    status.success(),
                    "PulseHub did not exit cleanly on SIGTERM: {status}"
                );
                // Let the echo threads print the last lines.
                while self.lines.recv_timeout(Duration::from_millis(100)).is_ok() {}
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("PulseHub did not exit within {STOP_TIMEOUT:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        // On an error path: leave nothing running.
        if matches!(self.child.try_wait(), Ok(None)) {
            if let Ok(pids) = descendants_named(self.child.id(), "pulsehub") {
                for pid in pids {
                    let _ = Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status();
                }
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `127.0.0.1:8080` out of PulseHub's start-up line "... API on
/// http://127.0.0.1:8080/api/v1 ...".
fn api_address(line: &str) -> Option<&str> {
    let rest = &line[line.find("API on http://")? + "API on http://".len()..];
    let end = rest.find('/')?;
    Some(&rest[..end])
}

/// The processes named `name` among `root` and those under it (children,
/// their children, ...), read from /proc.
fn descendants_named(root: u32, name: &str) -> Result<Vec<u32>> {
    let mut parent_of = HashMap::new();
    let mut name_of = HashMap::new();
    for entry in std::fs::read_dir("/proc").context("reading /proc")? {
        let entry = entry?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // "PID (COMM) STATE PPID ...": COMM may hold spaces and parentheses.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let ppid = stat[close + 1..]
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parent_of.insert(pid, ppid);
            name_of.insert(pid, stat[open + 1..close].to_owned());
        }
    }
    let under_root = |mut pid: u32| {
        if pid == root {
            // bash and `cargo run` may each exec the next program in place.
            return true;
        }
        while let Some(&parent) = parent_of.get(&pid) {
            if parent == root {
                return true;
            }
            pid = parent;
        }
        false
    };
    Ok(name_of
        .iter()
        .filter(|(pid, comm)| comm.as_str() == name && under_root(**pid))
        .map(|(pid, _)| *pid)
        .collect())
}

/// schemathesis in a virtual environment under `target/`, installed with pip
/// the first time.
fn schemathesis(root: &Path) -> Result<PathBuf> {
    let venv = root.join("target").join("schemathesis");
    let program = venv.join("bin").join("schemathesis");
    let marker = venv.join(SCHEMATHESIS);
    if program.is_file() && marker.is_file() {
        return Ok(program);
    }
    println!("smoke: installing {SCHEMATHESIS} into {}", venv.display());
    let status = Command::new("python3")
        .args(["-m", "venv", "--clear"])
        .arg(&venv)
        .status()
        .context("cannot run python3 -m venv (python3 is needed for schemathesis)")?;
    ensure!(status.success(), "python3 -m venv failed ({status})");
    let status = Command::new(venv.join("bin").join("pip"))
        .args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            SCHEMATHESIS,
        ])
        .status()
        .context("cannot run pip")?;
    ensure!(
        status.success(),
        "pip install {SCHEMATHESIS} failed ({status})"
    );
    std::fs::write(&marker, b"").context("marking the schemathesis install")?;
    Ok(program)
}

/// A number that differs from run to run (std's randomly keyed hasher); it
/// makes the token of a test server that lives a few minutes on the loopback.
fn random() -> u128 {
    use std::hash::{BuildHasher, RandomState};
    let high = RandomState::new().hash_one(std::process::id());
    let low = RandomState::new().hash_one(high);
    u128::from(high) << 64 | u128::from(low)
}

/// A developer's own data directory, moved aside while the step runs on a
/// fresh one, and put back afterwards (the step's own is removed).
struct SetAside {
    dir: PathBuf,
    saved: Option<PathBuf>,
}

impl SetAside {
    fn new(dir: &Path) -> Result<SetAside> {
        let saved = if dir.exists() {
            let saved = dir.with_file_name(format!("{DATA_DIR}.before-smoke"));
            ensure!(
                !saved.exists(),
                "{} exists: a smoke run was interrupted; put back or remove what you keep of \
                 {} and {}",
                saved.display(),
                dir.display(),
                saved.display()
            );
            std::fs::rename(dir, &saved)
                .with_context(|| format!("moving {} aside", dir.display()))?;
            println!(
                "smoke: {} is kept in {} meanwhile",
                dir.display(),
                saved.display()
            );
            Some(saved)
        } else {
            None
        };
        Ok(SetAside {
            dir: dir.to_owned(),
            saved,
        })
    }
}

impl Drop for SetAside {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(saved) = &self.saved
            && let Err(error) = std::fs::rename(saved, &self.dir)
        {
            eprintln!(
                "smoke: cannot put {} back as {}: {error}",
                saved.display(),
                self.dir.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_promise_from_the_readme() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
            .expect("README.md");
        let promise = promise(&readme).expect("the README holds the promise");
        assert!(promise.command.contains("run"), "{}", promise.command);
        assert_eq!(promise.profile["user_id"], USER);
        assert!(promise.profile["attributes"].is_object());
    }

    #[test]
    fn the_second_start_drops_only_the_events_file() {
        assert_eq!(
            without_events("cargo xtask plugins && cargo run --release -- run --events a.ndjson"),
            "cargo xtask plugins && cargo run --release -- run"
        );
        assert_eq!(
            without_events("pulsehub run --events=a.ndjson --role all"),
            "pulsehub run --role all"
        );
    }

    #[test]
    fn finds_the_address_in_the_start_line() {
        let line = "INFO pulsehub: PulseHub is running (embedded, data in /x); API on \
                    http://127.0.0.1:8080/api/v1 (try: curl http://127.0.0.1:8080/api/v1/profiles/u-42)";
        assert_eq!(api_address(line), Some("127.0.0.1:8080"));
        assert_eq!(api_address("REST API listening"), None);
    }
}
