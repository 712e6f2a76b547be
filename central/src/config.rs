//! The configuration file (TOML).
//!
//! ```toml
//! listen = "127.0.0.1:7443"                        # default
//! database = "sqlite:///var/lib/latch/central.db"  # default; or "postgres://user:pw@host/db"
//!
//! [[reviewers]]
//! token = "change-me"
//! subject = "alice"
//! email = "alice@example.com"
//! groups = ["dba-oncall"]
//! role = "approver"          # viewer | approver | admin
//! aliases = ["user:alice"]   # workload identities that are this person (never approve them)
//!
//! [[agents]]
//! host_id = "web-1"
//! token = "per-host-secret"
//!
//! [audit]
//! signing_key = "/var/lib/latch/audit-signing-key.pem"  # generated when absent
//! checkpoint_every = 10000                              # records
//! checkpoint_interval = "5m"
//! retention = "forever"                                 # or e.g. "400days"
//! prune_interval = "1h"
//! ```

use std::{
    collections::HashSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::auth::Role;

/// Default listen address: loopback, so a fresh install is not reachable from the network.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7443";
/// Default database: one SQLite file, created on first start.
pub const DEFAULT_DATABASE: &str = "sqlite:///var/lib/latch/central.db";

/// A refused configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("{path}: {source}")]
    Parse {
        /// File.
        path: String,
        /// Cause (with line and column).
        source: toml::de::Error,
    },
    /// The file parses but says something impossible.
    #[error("{path}: {message}")]
    Invalid {
        /// File.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// `latch-central`'s configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the gRPC server listens on (default [`DEFAULT_LISTEN`]).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Database URL: `sqlite://PATH` (created when missing) or `postgres://...`
    /// (default [`DEFAULT_DATABASE`]).
    #[serde(default = "default_database")]
    pub database: String,
    /// Database connections per replica (default 8; SQLite always uses one writer connection).
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Name of this replica in logs and audit (default: hostname and process id).
    #[serde(default)]
    pub replica_id: Option<String>,
    /// Reviewer and admin tokens.
    #[serde(default)]
    pub reviewers: Vec<ReviewerToken>,
    /// Per-host agent tokens.
    #[serde(default)]
    pub agents: Vec<AgentToken>,
    /// The audit trail.
    #[serde(default)]
    pub audit: AuditConfig,
}

/// `[audit]`: checkpoint signing and retention.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Ed25519 signing key (PEM, PKCS#8); generated when absent. Default: `audit-signing-key.pem`
    /// next to a SQLite database, else [`DEFAULT_SIGNING_KEY`].
    #[serde(default)]
    pub signing_key: Option<PathBuf>,
    /// Sign a checkpoint after this many new records (default 10000).
    #[serde(default)]
    pub checkpoint_every: Option<u64>,
    /// ... or this long after the last checkpoint (default "5m").
    #[serde(default)]
    pub checkpoint_interval: Option<String>,
    /// Keep records this long (default "forever").
    #[serde(default)]
    pub retention: Option<String>,
    /// How often to prune (default "1h").
    #[serde(default)]
    pub prune_interval: Option<String>,
}

/// Default signing key path when the database is not a SQLite file.
pub const DEFAULT_SIGNING_KEY: &str = "/var/lib/latch/audit-signing-key.pem";

fn duration(field: &str, v: &Option<String>, default: &str) -> Result<Duration, String> {
    let text = v.as_deref().unwrap_or(default);
    humantime::parse_duration(text).map_err(|e| format!("audit.{field} '{text}': {e}"))
}

impl AuditConfig {
    /// Records between checkpoints.
    pub fn checkpoint_every(&self) -> u64 {
        self.checkpoint_every.unwrap_or(10_000)
    }

    /// Time between checkpoints.
    pub fn checkpoint_interval(&self) -> Result<Duration, String> {
        duration("checkpoint_interval", &self.checkpoint_interval, "5m")
    }

    /// How long records are kept (`None`: for ever).
    pub fn retention(&self) -> Result<Option<Duration>, String> {
        match self.retention.as_deref() {
            None | Some("forever") => Ok(None),
            Some(_) => duration("retention", &self.retention, "").map(Some),
        }
    }

    /// Time between prunes.
    pub fn prune_interval(&self) -> Result<Duration, String> {
        duration("prune_interval", &self.prune_interval, "1h")
    }

    fn validate(&self) -> Result<(), String> {
        if self.checkpoint_every() == 0 {
            return Err("audit.checkpoint_every must be at least 1".into());
        }
        if self.checkpoint_interval()?.is_zero() || self.prune_interval()?.is_zero() {
            return Err(
                "audit.checkpoint_interval and audit.prune_interval must be above 0".into(),
            );
        }
        if let Some(r) = self.retention()? {
            if r < Duration::from_secs(24 * 3600) {
                return Err(format!(
                    "audit.retention '{}' is shorter than a day",
                    self.retention.as_deref().unwrap_or_default()
                ));
            }
        }
        Ok(())
    }
}

/// A static reviewer token and the identity it stands for.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewerToken {
    /// The bearer token.
    pub token: String,
    /// Stable subject (user name).
    pub subject: String,
    /// E-mail address.
    #[serde(default)]
    pub email: String,
    /// Groups, for rules that name approver groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Role.
    pub role: Role,
    /// Workload identities (requester strings such as `user:alice`) that are this person.
    #[serde(default)]
    pub aliases: Vec<String>,
}

/// A per-host agent token.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentToken {
    /// The host the token belongs to.
    pub host_id: String,
    /// The bearer token.
    pub token: String,
}

fn default_listen() -> SocketAddr {
    DEFAULT_LISTEN.parse().expect("constant address")
}
fn default_database() -> String {
    DEFAULT_DATABASE.to_string()
}
fn default_max_connections() -> u32 {
    8
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: default_listen(),
            database: default_database(),
            max_connections: default_max_connections(),
            replica_id: None,
            reviewers: Vec::new(),
            agents: Vec::new(),
            audit: AuditConfig::default(),
        }
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: p.clone(),
            source,
        })?;
        Config::parse(&p, &text)
    }

    /// Parses and validates configuration text; `path` names it in messages.
    pub fn parse(path: &str, text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_string(),
            source,
        })?;
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_string(),
            message,
        })?;
        Ok(config)
    }

    /// The audit signing key's path.
    pub fn signing_key_path(&self) -> PathBuf {
        if let Some(p) = &self.audit.signing_key {
            return p.clone();
        }
        if let Some(rest) = self.database.strip_prefix("sqlite:") {
            let path = rest
                .trim_start_matches("//")
                .split('?')
                .next()
                .unwrap_or("");
            if let Some(dir) = Path::new(path).parent() {
                if !path.is_empty() && path != ":memory:" {
                    return dir.join("audit-signing-key.pem");
                }
            }
        }
        PathBuf::from(DEFAULT_SIGNING_KEY)
    }

    /// Checks what the schema cannot.
    pub fn validate(&self) -> Result<(), String> {
        self.audit.validate()?;
        if !(self.database.starts_with("sqlite:")
            || self.database.starts_with("postgres://")
            || self.database.starts_with("postgresql://"))
        {
            return Err(format!(
                "database '{}' must start with sqlite:, postgres:// or postgresql://",
                crate::store::redact_url(&self.database)
            ));
        }
        if self.max_connections == 0 || self.max_connections > 1000 {
            return Err(format!(
                "max_connections {} must be between 1 and 1000",
                self.max_connections
            ));
        }
        let mut tokens = HashSet::new();
        for (i, r) in self.reviewers.iter().enumerate() {
            if r.token.len() < 8 {
                return Err(format!(
                    "reviewers[{i}] ('{}'): token must be at least 8 characters",
                    r.subject
                ));
            }
            if r.subject.trim().is_empty() {
                return Err(format!("reviewers[{i}]: subject is empty"));
            }
            if !tokens.insert(r.token.as_str()) {
                return Err(format!(
                    "reviewers[{i}] ('{}'): token is used twice",
                    r.subject
                ));
            }
        }
        let mut hosts = HashSet::new();
        for (i, a) in self.agents.iter().enumerate() {
            if a.token.len() < 8 {
                return Err(format!(
                    "agents[{i}] ('{}'): token must be at least 8 characters",
                    a.host_id
                ));
            }
            if a.host_id.trim().is_empty() {
                return Err(format!("agents[{i}]: host_id is empty"));
            }
            if !tokens.insert(a.token.as_str()) {
                return Err(format!(
                    "agents[{i}] ('{}'): token is used twice",
                    a.host_id
                ));
            }
            if !hosts.insert(a.host_id.as_str()) {
                return Err(format!("agents[{i}]: host '{}' is listed twice", a.host_id));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_work_on_one_host() {
        let c = Config::parse("c.toml", "").expect("empty config");
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.database, DEFAULT_DATABASE);
        assert!(c.listen.ip().is_loopback());
    }

    #[test]
    fn example_is_valid() {
        let text = include_str!("../central.example.toml");
        let c = Config::parse("central.example.toml", text).expect("example");
        assert_eq!(c.reviewers.len(), 2);
        assert_eq!(c.agents[0].host_id, "web-1");
        assert_eq!(c.audit.retention(), Ok(None));
        assert_eq!(c.signing_key_path(), PathBuf::from(DEFAULT_SIGNING_KEY));
    }

    #[test]
    fn signing_key_defaults_next_to_sqlite() {
        let c = Config::parse("c.toml", "database = \"sqlite:///srv/latch/c.db\"").expect("c");
        assert_eq!(
            c.signing_key_path(),
            PathBuf::from("/srv/latch/audit-signing-key.pem")
        );
        let c = Config::parse("c.toml", "[audit]\nretention = \"400days\"").expect("c");
        assert_eq!(
            c.audit.retention(),
            Ok(Some(Duration::from_secs(400 * 86_400)))
        );
    }

    #[test]
    fn unknown_fields_are_refused_with_their_place() {
        let e = Config::parse("c.toml", "listen = \"127.0.0.1:1\"\nlisen = 3\n").expect_err("typo");
        let m = e.to_string();
        assert!(m.starts_with("c.toml:") && m.contains("lisen"), "{m}");
        let e = Config::parse(
            "c.toml",
            "[[reviewers]]\ntoken = \"12345678\"\nsubject = \"a\"\nrole = \"boss\"\n",
        )
        .expect_err("role");
        assert!(e.to_string().contains("boss"), "{e}");
    }

    #[test]
    fn impossible_settings_are_refused() {
        for (text, needle) in [
            ("database = \"mysql://x\"", "must start with"),
            ("[audit]\nretention = \"1h\"", "shorter than a day"),
            ("[audit]\nretention = \"soon\"", "audit.retention 'soon'"),
            ("[audit]\ncheckpoint_every = 0", "at least 1"),
            ("[[reviewers]]\ntoken = \"short\"\nsubject = \"a\"\nrole = \"viewer\"", "at least 8"),
            (
                "[[agents]]\nhost_id = \"h\"\ntoken = \"12345678\"\n[[agents]]\nhost_id = \"h\"\ntoken = \"abcdefgh\"",
                "listed twice",
            ),
            (
                "[[agents]]\nhost_id = \"h\"\ntoken = \"12345678\"\n[[reviewers]]\ntoken = \"12345678\"\nsubject = \"a\"\nrole = \"admin\"",
                "used twice",
            ),
        ] {
            let e = Config::parse("c.toml", text).expect_err(text);
            assert!(e.to_string().contains(needle), "{text}: {e}");
        }
    }
}
