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
    /// How often the whole cgroup tree is rescanned for the workload globs. Cgroups that come
    /// and go are followed at once through inotify; this rescan is only the safety net behind
    /// it. Default: `5m`.
    pub rescan_interval: String,
    /// Prometheus `/metrics` address; empty to turn it off. Default: `127.0.0.1:9464`.
    pub metrics_listen: String,
    /// Unix socket on which a held workload reads what it waits for, waits for the decision and
    /// reads who decided and why (each caller only its own process tree's requests). Every
    /// local user can connect. Empty to turn it off. Default: `/run/latch/workload.sock`.
    pub workload_socket: PathBuf,
    /// Where each watched cgroup's held requests are listed (`cgroup-<id>.json`), for root: the
    /// directory is made mode 0700, as it lists every workload's requests (`workload_socket` is
    /// how a workload reads its own). Default: empty (off).
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
    /// gRPC address, `https://host:port` (or `http://` on loopback or inside an encrypted
    /// network).
    pub address: String,
    /// File holding this host's bearer token (first line). Needed unless the host presents a
    /// client certificate (`cert_file`, `key_file`), which central then accepts instead.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// CA certificates (PEM) central's certificate must chain to, for an `https://` address.
    /// Default: the system's trust store.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// This host's client certificate (PEM, leaf first) for mutual TLS. Its DNS name (or its CN
    /// when it has no DNS name) must be this host's id. Re-read when it changes.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
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
    /// How long central may be unreachable before held operations are resolved by the fail mode
    /// (and new ones are no longer held until it is back). Default: `60s`.
    #[serde(default = "default_loss_timeout")]
    pub loss_timeout: String,
}

impl CentralConfig {
    /// The TLS files, for an `https://` address.
    pub fn tls_files(&self) -> Option<crate::tls::TlsFiles> {
        self.address
            .starts_with("https://")
            .then(|| crate::tls::TlsFiles {
                ca_file: self.ca_file.clone(),
                cert_file: self.cert_file.clone(),
                key_file: self.key_file.clone(),
            })
    }

    /// Reads and checks the TLS files (unreadable, not PEM, expired, a key that is not the
    /// certificate's), naming the key and the file in the error. Not part of [`Config::parse`]
    /// so that commands which never talk to central (`release` in the stop hook above all)
    /// work whatever state the certificates are in.
    pub fn load_tls(&self) -> Result<Option<crate::tls::ReloadingTls>, crate::tls::TlsError> {
        self.tls_files()
            .map(crate::tls::ReloadingTls::load)
            .transpose()
    }
}

fn default_rules_cache() -> PathBuf {
    PathBuf::from("/var/lib/latch/rules.cache.yaml")
}

fn default_loss_timeout() -> String {
    "60s".into()
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
            rescan_interval: "5m".into(),
            metrics_listen: "127.0.0.1:9464".into(),
            workload_socket: PathBuf::from("/run/latch/workload.sock"),
            waiting_dir: PathBuf::new(),
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
    /// How often the heartbeat is refreshed and timeouts checked: a quarter of
    /// `heartbeat_timeout`, at most one second.
    pub tick: Duration,
    /// `central.loss_timeout`, parsed (`None` without central).
    pub central_loss_timeout: Option<Duration>,
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
            Duration::from_secs(86_400),
        )?;
        let central_loss_timeout = config
            .central
            .as_ref()
            .map(|c| {
                duration(
                    "central.loss_timeout",
                    &c.loss_timeout,
                    Duration::from_secs(1),
                    Duration::from_secs(86_400),
                )
            })
            .transpose()?;
        if !config.pin_dir.is_absolute() {
            return Err(ConfigError::Value {
                path: name.to_string(),
                key: "pin_dir",
                value: format!("{:?}", config.pin_dir.display().to_string()),
                reason: "must be an absolute path on a bpffs".into(),
            });
        }
        let sock = &config.workload_socket;
        if !sock.as_os_str().is_empty() && (!sock.is_absolute() || *sock == config.admin_socket) {
            return Err(ConfigError::Value {
                path: name.to_string(),
                key: "workload_socket",
                value: format!("{:?}", sock.display().to_string()),
                reason: "must be an absolute path other than admin_socket's (or empty: off)".into(),
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
            let value_error = |key: &'static str, value: String, reason: &str| ConfigError::Value {
                path: name.to_string(),
                key,
                value,
                reason: reason.to_string(),
            };
            let https = uri.scheme_str() == Some("https");
            for (key, file) in [
                ("central.ca_file", &c.ca_file),
                ("central.cert_file", &c.cert_file),
                ("central.key_file", &c.key_file),
            ] {
                if let (Some(f), false) = (file, https) {
                    return Err(value_error(
                        key,
                        format!("{:?}", f.display().to_string()),
                        "TLS files need an https:// central.address",
                    ));
                }
            }
            match (&c.cert_file, &c.key_file) {
                (Some(f), None) => {
                    return Err(value_error(
                        "central.cert_file",
                        format!("{:?}", f.display().to_string()),
                        "needs central.key_file, the certificate's private key",
                    ))
                }
                (None, Some(f)) => {
                    return Err(value_error(
                        "central.key_file",
                        format!("{:?}", f.display().to_string()),
                        "needs central.cert_file, the certificate it belongs to",
                    ))
                }
                (None, None) if c.token_file.is_none() => {
                    return Err(value_error(
                        "central.token_file",
                        "(unset)".into(),
                        "the host needs a token_file, or a client certificate (cert_file and \
                         key_file) with an https:// address",
                    ))
                }
                _ => {}
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
            tick: (heartbeat_timeout / 4).min(Duration::from_secs(1)),
            central_loss_timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn empty_file_gives_working_defaults() {
        let s = Config::parse("agent.toml", "").expect("defaults are valid");
        assert_eq!(s.heartbeat_timeout, Duration::from_secs(10));
        assert_eq!(s.config.pin_dir, PathBuf::from("/sys/fs/bpf/latch"));
        assert_eq!(s.config.fail_mode, FailModeName::Deny);
    }

    /// The example shipped beside the unit says it lists the defaults: it must.
    #[test]
    fn the_shipped_example_is_the_defaults() {
        let shipped = Config::parse(
            "systemd/agent.toml",
            include_str!("../../systemd/agent.toml"),
        )
        .expect("the shipped example is valid");
        assert_eq!(
            format!("{:?}", shipped.config),
            format!("{:?}", Config::default())
        );
    }

    /// The shipped unit runs the agent on a read-only file system: what the defaults write must
    /// lie in the directories it grants, and every command must read the default file.
    #[test]
    fn the_unit_and_the_defaults_agree() {
        let unit = include_str!("../../systemd/latch-agent.service");
        let values = |key: &str| -> Vec<String> {
            unit.lines()
                .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .flat_map(|v| v.split_whitespace().map(str::to_string))
                .collect()
        };
        assert!(
            values("ProtectSystem").contains(&"strict".to_string()),
            "the rest of this test holds for ProtectSystem=strict"
        );
        let mut writable: Vec<PathBuf> =
            values("ReadWritePaths").iter().map(PathBuf::from).collect();
        writable.extend(
            values("RuntimeDirectory")
                .iter()
                .map(|d| Path::new("/run").join(d)),
        );
        writable.extend(
            values("StateDirectory")
                .iter()
                .map(|d| Path::new("/var/lib").join(d)),
        );
        let d = Config::default();
        for (what, path) in [
            ("admin_socket", &d.admin_socket),
            ("workload_socket", &d.workload_socket),
            ("journal_dir", &d.journal_dir),
            ("pin_dir", &d.pin_dir),
            ("rules cache", &default_rules_cache()),
        ] {
            assert!(
                writable.iter().any(|w| path.starts_with(w)),
                "{what} ({}) is outside what the unit lets the agent write: {writable:?}",
                path.display()
            );
        }
        for command in ["ExecStartPre", "ExecStart", "ExecStopPost"] {
            let lines: Vec<&str> = unit
                .lines()
                .filter(|l| l.strip_prefix(command).is_some_and(|r| r.starts_with('=')))
                .collect();
            assert_eq!(lines.len(), 1, "one {command}= in the unit");
            assert!(
                lines[0].contains(&format!("--config {DEFAULT_PATH} ")),
                "{command} reads the default file: {}",
                lines[0]
            );
        }
    }

    /// Rule paths are resolved to files in the agent's own view of the file system: the unit
    /// must not give it a view other than the workloads' (a private /tmp, an empty /home).
    #[test]
    fn the_unit_shows_the_agent_the_file_system_the_workloads_see() {
        let unit = include_str!("../../systemd/latch-agent.service");
        let setting = |key: &str| {
            unit.lines()
                .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .next_back()
                .map(str::trim)
        };
        assert!(
            matches!(setting("ProtectHome"), None | Some("no" | "read-only")),
            "ProtectHome={:?} hides /home, /root and /run/user",
            setting("ProtectHome")
        );
        for hiding in [
            "PrivateTmp",
            "TemporaryFileSystem",
            "InaccessiblePaths",
            "BindPaths",
            "BindReadOnlyPaths",
            "RootDirectory",
            "RootImage",
            "MountImages",
            "DynamicUser",
        ] {
            assert!(
                matches!(setting(hiding), None | Some("no")),
                "{hiding}= gives the agent another view of the file system than the workloads'"
            );
        }
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
        let e = Config::parse("a.toml", "rescan_interval = \"2d\"\n").expect_err("refused");
        assert!(
            e.to_string().contains("`rescan_interval`") && e.to_string().contains("between"),
            "{e}"
        );
        let e = Config::parse("a.toml", "pin_dir = \"latch\"\n").expect_err("refused");
        assert!(e.to_string().contains("`pin_dir`"), "{e}");
        for bad in ["run/w.sock", "/run/latch/agent.sock"] {
            let e = Config::parse("a.toml", &format!("workload_socket = {bad:?}\n"))
                .expect_err(bad)
                .to_string();
            assert!(e.contains("`workload_socket`") && e.contains(bad), "{e}");
        }
        let off = Config::parse("a.toml", "workload_socket = \"\"\n").expect("off is valid");
        assert!(off.config.workload_socket.as_os_str().is_empty());
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
        assert_eq!(s.central_loss_timeout, Some(Duration::from_secs(60)));
        let e = Config::parse("a.toml", &format!("{ok}loss_timeout = \"soon\"\n"))
            .expect_err("refused");
        assert!(e.to_string().contains("`central.loss_timeout`"), "{e}");
        let s = Config::parse("a.toml", &format!("{ok}loss_timeout = \"5s\"\n")).expect("valid");
        assert_eq!(s.central_loss_timeout, Some(Duration::from_secs(5)));
    }

    #[test]
    fn central_tls_keys_are_checked() {
        let base = "[central]\naddress = \"https://central:7443\"\n";
        let s = Config::parse(
            "a.toml",
            &format!(
                "{base}ca_file = \"/ca.pem\"\ncert_file = \"/c.pem\"\nkey_file = \"/k.pem\"\n"
            ),
        )
        .expect("certificate without a token");
        let c = s.config.central.expect("central");
        assert!(c.token_file.is_none());
        assert_eq!(
            c.tls_files().expect("https").cert_file,
            Some(PathBuf::from("/c.pem"))
        );
        for (text, needle) in [
            (
                format!("{base}cert_file = \"/c.pem\"\n"),
                "`central.cert_file` = \"/c.pem\": needs central.key_file",
            ),
            (
                format!("{base}key_file = \"/k.pem\"\ntoken_file = \"/t\"\n"),
                "`central.key_file` = \"/k.pem\": needs central.cert_file",
            ),
            (base.to_string(), "`central.token_file` = (unset)"),
            (
                "[central]\naddress = \"http://c:1\"\ntoken_file = \"/t\"\nca_file = \"/ca.pem\"\n"
                    .to_string(),
                "`central.ca_file` = \"/ca.pem\": TLS files need an https://",
            ),
        ] {
            let e = Config::parse("a.toml", &text)
                .expect_err(needle)
                .to_string();
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn an_unreadable_certificate_is_named_with_its_key() {
        let dir = tempfile::tempdir().expect("dir");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["web-1".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let ca = dir.path().join("ca.pem");
        let good_cert = dir.path().join("web-1.pem");
        let key_file = dir.path().join("web-1.key");
        std::fs::write(&ca, cert.pem()).expect("ca");
        std::fs::write(&good_cert, cert.pem()).expect("cert");
        std::fs::write(&key_file, key.serialize_pem()).expect("key");
        let text = |cert: &std::path::Path| {
            format!(
                "[central]\naddress = \"https://central:7443\"\nca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\n",
                ca.display().to_string(),
                cert.display().to_string(),
                key_file.display().to_string()
            )
        };
        let s = Config::parse("a.toml", &text(&good_cert)).expect("valid");
        assert!(s
            .config
            .central
            .expect("central")
            .load_tls()
            .expect("loads")
            .is_some());

        // Missing, a directory (unreadable even for root), not a certificate.
        let missing = dir.path().join("missing.pem");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nbm9wZQ==\n-----END CERTIFICATE-----\n",
        )
        .expect("garbage");
        for (path, needle) in [
            (missing.clone(), "cannot read"),
            (dir.path().to_path_buf(), "cannot read"),
            (garbage.clone(), "not valid X.509"),
        ] {
            let s = Config::parse("a.toml", &text(&path)).expect("parses: files are read later");
            let e = s
                .config
                .central
                .expect("central")
                .load_tls()
                .expect_err("refused")
                .to_string();
            let start = format!("`central.cert_file` = {:?}: ", path);
            assert!(e.starts_with(&start) && e.contains(needle), "{e}");
        }
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
