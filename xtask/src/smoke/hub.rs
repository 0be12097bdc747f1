//! The README's run command as a running process: started with `bash -c`,
//! its output echoed and watched for the "API on" line, asked over HTTP,
//! checked by schemathesis, and stopped with SIGTERM.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use super::{SCHEMATHESIS_CONFIG, USER, comparable};

/// The first start may build the release binary.
const START_TIMEOUT: Duration = Duration::from_secs(45 * 60);
/// Time for the example events to reach the profile.
const PROFILE_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a restarted PulseHub must keep the profile as it was; its
/// pipeline handles the example events within milliseconds.
const UNCHANGED_FOR: Duration = Duration::from_secs(3);

/// A running `bash -c COMMAND`, its output echoed and watched.
pub(super) struct Hub {
    child: Child,
    lines: Receiver<String>,
    /// `http://ADDR`, from the "API on" line.
    base: String,
}

impl Hub {
    pub(super) fn start(root: &Path, command: &str, env: &[(&str, &str)]) -> Result<Hub> {
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

    pub(super) fn profile(&self) -> Result<serde_json::Value> {
        let path = format!("/api/v1/profiles/{USER}");
        let (status, body) = self.get(&path)?;
        ensure!(status == 200, "GET {path} answered {status}: {body}");
        serde_json::from_str(&body).with_context(|| format!("GET {path}: not JSON: {body}"))
    }

    /// The profile, read for [`UNCHANGED_FOR`] after start-up, is `first`
    /// every time: a start that replayed the inbox, or lost a commit, would
    /// change it within that time.
    pub(super) fn profile_stays(&self, first: &serde_json::Value) -> Result<()> {
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
    pub(super) fn wait_for_profile(
        &self,
        promised: &serde_json::Value,
    ) -> Result<serde_json::Value> {
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

    pub(super) fn check_ready(&self) -> Result<()> {
        let (status, body) = self.get("/readyz")?;
        ensure!(status == 200, "/readyz answered {status}: {body}");
        Ok(())
    }

    pub(super) fn schemathesis(&self, root: &Path, program: &Path, token: &str) -> Result<()> {
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
        command.args(["--header", &format!("Authorization: Bearer {token}")]);
        // Its example database and reports go under target/, beside it.
        if let Some(venv) = program.parent().and_then(Path::parent) {
            command.current_dir(venv);
        }
        println!("smoke: schemathesis against {document}, with the admin token");
        let status = command
            .status()
            .with_context(|| format!("cannot run {}", program.display()))?;
        ensure!(
            status.success(),
            "schemathesis found the served document and the server disagreeing ({status})"
        );
        Ok(())
    }

    /// SIGTERM to the PulseHub process; the command must then end with
    /// status 0.
    pub(super) fn stop(mut self) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_address_in_the_start_line() {
        let line = "INFO pulsehub: PulseHub is running (embedded, data in /x); API on \
                    http://127.0.0.1:8080/api/v1 (try: curl http://127.0.0.1:8080/api/v1/profiles/u-42)";
        assert_eq!(api_address(line), Some("127.0.0.1:8080"));
        assert_eq!(api_address("REST API listening"), None);
    }
}
