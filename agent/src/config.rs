//! The agent's configuration file (`/etc/latch/agent.toml`).
//!
//! Every key is optional and documented with its default; the defaults work on one host. Unknown
//! keys are refused with their name, so a typo never silently falls back to a default.

use std::{path::PathBuf, time::Duration};

use agent_common::FailMode;
use serde::Deserialize;

/// Default configuration file.
pub const DEFAULT_PATH: &str = "/etc/latch/agent.toml";

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// File.
        path: String,
        /// Why.
        reason: String,
    },
    /// Not valid TOML, an unknown key or a wrong type.
    #[error("{path}: {reason}")]
    Parse {
        /// File.
        path: String,
        /// The parser's message (it names the key and line).
        reason: String,
    },
    /// A value out of range.
    #[error("{path}: `{key}` = {value}: {reason}")]
    Value {
        /// File.
        path: String,
        /// Key.
        key: &'static str,
        /// Value as written.
        value: String,
        /// Why.
        reason: String,
    },
}

/// `fail_mode` values.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FailModeName {
    /// Refuse what would have waited for a decision.
    #[default]
    Deny,
    /// Let it through and record it.
    AllowAndRecord,
}

impl From<FailModeName> for FailMode {
    fn from(f: FailModeName) -> Self {
        match f {
            FailModeName::Deny => FailMode::Deny,
            FailModeName::AllowAndRecord => FailMode::AllowAndRecord,
        }
    }
}

/// The agent's configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Local rules file, enforced until a central service is configured.
    /// Default: `/etc/latch/rules.yaml`.
    pub rules: PathBuf,
    /// Unix socket for `latch-agent pending|decide|status`. Default: `/run/latch/agent.sock`.
    pub admin_socket: PathBuf,
    /// bpffs directory for the pinned maps. Default: `/sys/fs/bpf/latch`.
    pub pin_dir: PathBuf,
    /// cgroup v2 root; found from `/proc/self/mountinfo` when unset.
    pub cgroup_root: Option<PathBuf>,
    /// What applies when nobody can decide: `deny` (default) or `allow-and-record`.
    pub fail_mode: FailModeName,
    /// Heartbeat age after which the kernel stops holding operations. Default: `10s`.
    pub heartbeat_timeout: String,
    /// How often cgroups are rescanned for new matches and timeouts checked. Default: `1s`.
    pub rescan_interval: String,
    /// Prometheus `/metrics` address; empty to turn it off. Default: `127.0.0.1:9464`.
    pub metrics_listen: String,
    /// Where each watched cgroup's held requests are listed (`cgroup-<id>.json`, world-readable)
    /// so a paused workload's supervisor can report what it waits for. Empty to turn it off.
    /// Default: `/run/latch/waiting`.
    pub waiting_dir: PathBuf,
    /// The durable local journal of every event and decision (shipped to central).
    /// Default: `/var/lib/latch/journal`.
    pub journal_dir: PathBuf,
    /// Most disk the journal may use, in MiB, after deleting what central acknowledged. When it
    /// is full the fail mode applies. Default: 512.
    pub journal_max_mib: u64,
    /// Masking of arguments before they leave the host (`[redact]`: `mask_ip`, `extra`
    /// patterns, `secret_flags`, `max_input_bytes`).
    pub redact: redact::RedactConfig,
    /// The central service; without it the agent enforces the local `rules` file and is
    /// decided through the admin socket.
    pub central: Option<CentralConfig>,
}

/// The `[central]` table.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CentralConfig {
    /// gRPC address, `http://host:port`.
    pub address: String,
    /// File holding this host's bearer token (first line).
    pub token_file: PathBuf,
    /// This host's id. Default: `/etc/machine-id`.
    #[serde(default)]
    pub host_id: Option<String>,
    /// Labels central selects rule sets by.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Where the last rule set from central is cached (enforced at boot before central
    /// answers). Default: `/var/lib/latch/rules.cache.yaml`.
    #[serde(default = "default_rules_cache")]
    pub rules_cache: PathBuf,
}

fn default_rules_cache() -> PathBuf {
    PathBuf::from("/var/lib/latch/rules.cache.yaml")
}

impl Default for Config {
    fn default() -> Self {
        Self {
            rules: PathBuf::from("/etc/latch/rules.yaml"),
            admin_socket: PathBuf::from("/run/latch/agent.sock"),
            pin_dir: PathBuf::from("/sys/fs/bpf/latch"),
            cgroup_root: None,
            fail_mode: FailModeName::Deny,
            heartbeat_timeout: "10s".into(),
            rescan_interval: "1s".into(),
            metrics_listen: "127.0.0.1:9464".into(),
            waiting_dir: PathBuf::from("/run/latch/waiting"),
            central: None,
            redact: redact::RedactConfig::default(),
            journal_dir: PathBuf::from("/var/lib/latch/journal"),
            journal_max_mib: 512,
        }
    }
}

/// A checked configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    /// As written.
    pub config: Config,
    /// `heartbeat_timeout`, parsed.
    pub heartbeat_timeout: Duration,
    /// `rescan_interval`, parsed.
    pub rescan_interval: Duration,
}

impl Config {
    /// Reads and checks a configuration file. `None` reads nothing and uses the defaults.
    pub fn load(path: Option<&std::path::Path>) -> Result<Settings, ConfigError> {
        let (name, text) = match path {
            Some(p) => (
                p.display().to_string(),
                std::fs::read_to_string(p).map_err(|e| ConfigError::Read {
                    path: p.display().to_string(),
                    reason: e.to_string(),
                })?,
            ),
            None => ("(defaults)".to_string(), String::new()),
        };
        Self::parse(&name, &text)
    }

    /// Parses and checks configuration text.
    pub fn parse(name: &str, text: &str) -> Result<Settings, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: name.to_string(),
            reason: e.to_string(),
        })?;
        let duration = |key: &'static str, v: &str, min: Duration, max: Duration| {
            let d = humantime::parse_duration(v).map_err(|e| ConfigError::Value {
                path: name.to_string(),
                key,
                value: format!("{v:?}"),
                reason: e.to_string(),
            })?;
            if d < min || d > max {
                return Err(ConfigError::Value {
                    path: name.to_string(),
                    key,
                    value: format!("{v:?}"),
                    reason: format!(
                        "must be between {} and {}",
                        humantime::format_duration(min),
                        humantime::format_duration(max)
                    ),
                });
            }
            Ok(d)
        };
        let heartbeat_timeout = duration(
            "heartbeat_timeout",
            &config.heartbeat_timeout,
            Duration::from_secs(1),
            Duration::from_secs(3600),
        )?;
        let rescan_interval = duration(
            "rescan_interval",
            &config.rescan_interval,
            Duration::from_millis(100),
            Duration::from_secs(60),
        )?;
        if rescan_interval >= heartbeat_timeout {
            return Err(ConfigError::Value {
                path: name.to_string(),
                key: "rescan_interval",
                value: format!("{:?}", config.rescan_interval),
                reason: format!(
                    "must be shorter than heartbeat_timeout ({}), which it refreshes",
                    config.heartbeat_timeout
                ),
            });
        }
        if !config.pin_dir.is_absolute() {
            return Err(ConfigError::Value {
                path: name.to_string(),
                key: "pin_dir",
                value: format!("{:?}", config.pin_dir.display().to_string()),
                reason: "must be an absolute path on a bpffs".into(),
            });
        }
        if !config.metrics_listen.is_empty()
            && config
                .metrics_listen
                .parse::<std::net::SocketAddr>()
                .is_err()
        {
            return Err(ConfigError::Value {
                path: name.to_string(),
                key: "metrics_listen",
                value: format!("{:?}", config.metrics_listen),
                reason: "not an address like 127.0.0.1:9464 (or empty to turn metrics off)".into(),
            });
        }
        if !(32..=1 << 20).contains(&config.journal_max_mib) {
            return Err(ConfigError::Value {
                path: name.to_string(),
                key: "journal_max_mib",
                value: config.journal_max_mib.to_string(),
                reason: "must be between 32 and 1048576".into(),
            });
        }
        if let Err(e) = redact::Redactor::new(&config.redact) {
            return Err(ConfigError::Value {
                path: name.to_string(),
                key: "redact",
                value: String::new(),
                reason: e.to_string(),
            });
        }
        if let Some(c) = &config.central {
            let bad = |reason: &str| ConfigError::Value {
                path: name.to_string(),
                key: "central.address",
                value: format!("{:?}", c.address),
                reason: reason.to_string(),
            };
            let uri: http::Uri = c
                .address
                .parse()
                .map_err(|_| bad("not a URL like http://central:7443"))?;
            if !matches!(uri.scheme_str(), Some("http") | Some("https")) || uri.host().is_none() {
                return Err(bad("not a URL like http://central:7443"));
            }
            if let Some(h) = &c.host_id {
                if h.trim().is_empty() || h.len() > 128 {
                    return Err(ConfigError::Value {
                        path: name.to_string(),
                        key: "central.host_id",
                        value: format!("{h:?}"),
                        reason: "must be 1-128 characters".into(),
                    });
                }
            }
        }
        Ok(Settings {
            config,
            heartbeat_timeout,
            rescan_interval,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_working_defaults() {
        let s = Config::parse("agent.toml", "").expect("defaults are valid");
        assert_eq!(s.heartbeat_timeout, Duration::from_secs(10));
        assert_eq!(s.config.pin_dir, PathBuf::from("/sys/fs/bpf/latch"));
        assert_eq!(s.config.fail_mode, FailModeName::Deny);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::parse("agent.toml", "fail_mod = \"deny\"\n").expect_err("refused");
        let m = e.to_string();
        assert!(m.contains("agent.toml") && m.contains("fail_mod"), "{m}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = Config::parse("a.toml", "fail_mode = \"maybe\"\n").expect_err("refused");
        assert!(e.to_string().contains("maybe"), "{e}");
        let e = Config::parse("a.toml", "heartbeat_timeout = \"soon\"\n").expect_err("refused");
        assert!(
            e.to_string().contains("`heartbeat_timeout` = \"soon\""),
            "{e}"
        );
        let e = Config::parse("a.toml", "heartbeat_timeout = \"2h\"\n").expect_err("refused");
        assert!(e.to_string().contains("must be between"), "{e}");
        let e = Config::parse("a.toml", "rescan_interval = \"20s\"\n").expect_err("refused");
        assert!(
            e.to_string().contains("shorter than heartbeat_timeout"),
            "{e}"
        );
        let e = Config::parse("a.toml", "pin_dir = \"latch\"\n").expect_err("refused");
        assert!(e.to_string().contains("`pin_dir`"), "{e}");
    }

    #[test]
    fn central_table_is_checked() {
        let ok = "[central]\naddress = \"http://central:7443\"\ntoken_file = \"/etc/latch/agent.token\"\nlabels = { env = \"prod\" }\n";
        let s = Config::parse("a.toml", ok).expect("valid");
        let c = s.config.central.expect("central");
        assert_eq!(c.labels.get("env").map(String::as_str), Some("prod"));
        assert_eq!(
            c.rules_cache,
            PathBuf::from("/var/lib/latch/rules.cache.yaml")
        );
        let e = Config::parse("a.toml", &ok.replace("http://central:7443", "central"))
            .expect_err("refused");
        assert!(e.to_string().contains("`central.address`"), "{e}");
        let e = Config::parse("a.toml", &format!("{ok}adress = 1\n")).expect_err("refused");
        assert!(e.to_string().contains("adress"), "{e}");
        let e =
            Config::parse("a.toml", "[central]\naddress = \"http://c:1\"\n").expect_err("refused");
        assert!(e.to_string().contains("token_file"), "{e}");
    }

    #[test]
    fn metrics_address_is_checked() {
        let e = Config::parse("a.toml", "metrics_listen = \"localhost\"\n").expect_err("refused");
        assert!(e.to_string().contains("`metrics_listen`"), "{e}");
        Config::parse("a.toml", "metrics_listen = \"\"\n").expect("empty turns it off");
    }

    #[test]
    fn a_bad_redaction_pattern_is_named() {
        let text = "[redact]\nextra = [{ name = \"ticket\", regex = \"TICKET-(\", replacement = \"[TICKET]\" }]\n";
        let e = Config::parse("a.toml", text).expect_err("refused");
        let m = e.to_string();
        assert!(m.contains("`redact`") && m.contains("ticket"), "{m}");
    }

    #[test]
    fn allow_and_record_parses() {
        let s = Config::parse("a.toml", "fail_mode = \"allow-and-record\"\n").expect("valid");
        assert_eq!(FailMode::from(s.config.fail_mode), FailMode::AllowAndRecord);
    }
}
