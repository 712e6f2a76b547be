//! The `latch-agent` daemon as a person runs it, for the suites that need the whole agent: a
//! rules file, a configuration, the admin socket and the CLI.

use std::{
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::{binary, finish, patience, TestCgroup};

/// A running `latch-agent` with its own directory, pins and metrics port.
pub struct Daemon {
    pub child: Child,
    pub metrics_port: u16,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub rules: PathBuf,
    pub pin_dir: PathBuf,
}

impl Daemon {
    /// Starts the agent and waits until it watches a cgroup.
    pub fn start(cg: &TestCgroup, rules: &str, fail_mode: &str) -> Daemon {
        let d = Self::launch(cg, rules, fail_mode, "200ms");
        d.wait_status("a watched cgroup", |v| {
            v["watched_cgroups"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
        });
        d
    }

    /// Starts the agent with a full cgroup rescan every `rescan_interval`.
    pub fn launch(cg: &TestCgroup, rules: &str, fail_mode: &str, rescan_interval: &str) -> Daemon {
        let dir = std::env::temp_dir().join(format!("{}-agent", cg.rel.trim_start_matches('/')));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(cg.rel.trim_start_matches('/'));
        let metrics_port = crate::stack::free_port();
        let rules_path = dir.join("rules.yaml");
        std::fs::write(&rules_path, rules.replace("{CG}", &cg.rel)).expect("write rules");
        let config = dir.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "rules = {rules:?}\nadmin_socket = {sock:?}\npin_dir = {pin:?}\nfail_mode = {fail_mode:?}\nrescan_interval = {rescan_interval:?}\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\nwaiting_dir = {waiting:?}\nworkload_socket = {workload:?}\njournal_dir = {journal:?}\n",
                journal = dir.join("journal").display().to_string(),
                waiting = dir.join("waiting").display().to_string(),
                workload = dir.join("workload.sock").display().to_string(),
                rules = rules_path.display().to_string(),
                sock = dir.join("agent.sock").display().to_string(),
                pin = pin_dir.display().to_string(),
            ),
        )
        .expect("write config");
        let child = Self::spawn_agent(&config, &dir);
        Daemon {
            child,
            metrics_port,
            dir,
            config,
            rules: rules_path,
            pin_dir,
        }
    }

    /// Polls `latch-agent status --json` until `ready` holds; returns that status.
    pub fn wait_status(
        &self,
        what: &str,
        ready: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + patience();
        loop {
            let out = self.cli(&["status", "--json"]);
            if out.status.success() {
                let v: serde_json::Value =
                    serde_json::from_slice(&out.stdout).expect("status json");
                if ready(&v) {
                    return v;
                }
            }
            // (Its log follows the failure: see `Drop`.)
            assert!(!self.exited(), "the agent exited before it showed {what}");
            assert!(
                Instant::now() < deadline,
                "the agent never showed {what} in {:?}: {}",
                patience(),
                text(&out)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the agent's log says `what` (its own words, e.g. a refused reload).
    pub fn wait_log(&self, what: &str) {
        let deadline = Instant::now() + patience();
        loop {
            let log = std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default();
            if log.contains(what) {
                return;
            }
            assert!(!self.exited(), "the agent exited before it logged {what:?}");
            assert!(
                Instant::now() < deadline,
                "the agent never logged {what:?} in {:?}:\n{log}",
                patience()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the agent process has ended (a zombie until it is waited for), read from
    /// `/proc` so that a shared borrow can ask.
    pub fn exited(&self) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()));
        // The state follows the command name, which is in parentheses and may hold spaces.
        stat.map_or(true, |s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
        })
    }

    /// `latch-agent run`, its log appended to a file: a pipe nobody reads would fill up and
    /// stop the agent in the middle of a write.
    pub fn spawn_agent(config: &std::path::Path, dir: &std::path::Path) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("agent.log"))
            .expect("open agent.log");
        Command::new(binary("latch-agent"))
            .arg("--config")
            .arg(config)
            .arg("run")
            .stderr(log)
            .spawn()
            .expect("start latch-agent")
    }

    /// Ends the agent with SIGKILL (no clean-up runs) and starts it again on the same
    /// configuration and pins.
    pub fn kill9_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn_agent(&self.config, &self.dir);
    }

    /// Stops the agent the way systemd does (SIGTERM, then waits) and starts it again.
    pub fn replace(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + patience();
        while self.child.try_wait().ok().flatten().is_none() {
            assert!(
                Instant::now() < deadline,
                "the agent did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill9_and_restart();
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        finish(
            Command::new(binary("latch-agent"))
                .arg("--config")
                .arg(&self.config)
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run latch-agent"),
        )
    }

    /// `latch-agent decide ID VERDICT [OPTIONS]`, which must succeed.
    pub fn decide(&self, id: &str, verdict: &[&str]) {
        let args: Vec<&str> = ["decide", id]
            .into_iter()
            .chain(verdict.iter().copied())
            .collect();
        let out = self.cli(&args);
        assert!(
            out.status.success(),
            "decide {id} {verdict:?}: {}",
            text(&out)
        );
    }

    pub fn wait_request(&self, pid: u32) -> String {
        let deadline = Instant::now() + patience();
        loop {
            let out = self.cli(&["pending", "--json"]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
            if let Some(p) = v
                .as_array()
                .and_then(|a| a.iter().find(|p| p["tgid"] == pid))
            {
                if !p["event"].is_null() {
                    return p["id"].as_str().expect("id").to_string();
                }
            }
            assert!(Instant::now() < deadline, "request of {pid} never listed");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the agent with SIGTERM and returns what it logged.
    pub fn stop(mut self) -> String {
        self.terminate();
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// Stops the agent with SIGTERM and waits for it; its directory (log, journal) stays until
    /// the fixture is dropped.
    pub fn terminate(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let child = std::mem::replace(&mut self.child, Command::new("true").spawn().expect("true"));
        finish(child);
    }

    /// Every record in the agent's journal, oldest first (the agent must be stopped: the
    /// journal is its alone while it runs).
    pub fn journal(&self) -> Vec<journal::Record> {
        let j = journal::Journal::open(
            self.dir.join("journal"),
            journal::JournalConfig::new("test-reader"),
        )
        .expect("open the agent's journal");
        j.read_from(0)
            .map(|r| r.expect("a journal record"))
            .collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            // The test failed: what the agent said is the first thing to read.
            let log = std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default();
            eprintln!("---- agent log ({}) ----\n{log}", self.dir.display());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

impl Daemon {
    /// The body of `/metrics`, after checking that it is served as the Prometheus text format.
    pub fn metrics(&self) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.metrics_port))
            .expect("connect metrics");
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .expect("request");
        let mut response = String::new();
        s.read_to_string(&mut response).expect("response");
        let (head, body) = response
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no end of headers: {response}"));
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        assert!(
            head.lines().any(|l| l
                .to_ascii_lowercase()
                .starts_with("content-type: text/plain; version=0.0.4")),
            "{head}"
        );
        body.to_string()
    }
}

pub fn rules(body: &str) -> String {
    format!("workloads:\n  - name: test\n    cgroups: [\"{{CG}}\"]\nrules:\n{body}")
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
