//! Latch's rules language.
//!
//! The central team keeps rules as YAML in git; this crate owns what a rules file may say and
//! turns it into a validated [`RuleSet`], or refuses it with every problem found, each naming the
//! file, the line, the rule and the reason. Both the central service (which validates, versions
//! and pushes rule sets) and the agent (which compiles them into kernel maps) use it.
//!
//! It must not know about kernel maps, storage or transport: it is the language, nothing else.
//!
//! ```yaml
//! workloads:
//!   - name: ai-agents
//!     cgroups: ["/ai.slice/*", "/system.slice/llm-runner.service"]
//! rules:
//!   - name: prod-db-needs-a-human
//!     workload: ai-agents
//!     on: connect
//!     to: ["10.20.0.0/16"]
//!     ports: [5432]
//!     action: approve
//!     approvers: { groups: ["dba-oncall"], count: 1 }
//!     notify: { slack: "#dba-oncall" }
//!     timeout: 10m
//! ```

use std::{collections::HashMap, fmt, net::IpAddr, str::FromStr, time::Duration};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub mod args;
pub mod names;
mod raw;
pub mod review;

pub use args::{ArgSeq, ArgsMatch};
pub use names::HostPattern;
pub use review::{AutoStep, PolicyCheck, ReviewStep, Verdict};

/// An environment variable name as shells and `getenv` callers write them (at most 128 bytes):
/// what a workload's `context_env` may list, and what central takes from an agent.
pub fn is_env_name(v: &str) -> bool {
    let mut chars = v.chars();
    v.len() <= 128
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A name a rule gives to one of its parts or to a service (a policy check, an automatic
/// reviewer): 1 to [`MAX_NAME_LEN`] ASCII letters, digits, `-` or `_`.
pub fn is_plain_name(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= MAX_NAME_LEN
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Longest justification a workload may give for a held request, in bytes.
pub const MAX_JUSTIFICATION: usize = 2000;

/// Why a workload's justification is refused; reads after the field's name ("text is empty").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JustificationError {
    /// Nothing but white space.
    #[error("is empty: say what the operation is for")]
    Empty,
    /// Longer than [`MAX_JUSTIFICATION`].
    #[error("is {0} bytes; at most {MAX_JUSTIFICATION}")]
    TooLong(usize),
    /// A control character other than newline and tab.
    #[error("has a control character ({}) at byte {at}", c.escape_unicode())]
    Control {
        /// Byte offset.
        at: usize,
        /// The character.
        c: char,
    },
}

/// What a justification may be, checked alike by the agent (so that the workload hears why at
/// once) and by central (which trusts no agent): some words, at most [`MAX_JUSTIFICATION`]
/// bytes, no control characters but newline and tab.
pub fn check_justification(text: &str) -> Result<(), JustificationError> {
    if text.trim().is_empty() {
        return Err(JustificationError::Empty);
    }
    if text.len() > MAX_JUSTIFICATION {
        return Err(JustificationError::TooLong(text.len()));
    }
    match text
        .char_indices()
        .find(|(_, c)| c.is_control() && *c != '\n' && *c != '\t')
    {
        Some((at, c)) => Err(JustificationError::Control { at, c }),
        None => Ok(()),
    }
}

/// Longest executable path a rule may name, in bytes (the kernel keys hold 248 with the NUL).
pub const MAX_PATH_LEN: usize = 247;
/// Longest rule or workload name.
pub const MAX_NAME_LEN: usize = 63;
/// Shortest and longest approval timeout.
pub const TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(7 * 24 * 3600));
/// Timeout of an `approve` rule that names none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// What to do with a matching operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Let it through.
    Allow,
    /// Let it through and record it.
    Audit,
    /// Hold it until a reviewer (or the timeout) decides.
    Approve,
    /// Refuse it.
    Deny,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "allow",
            Action::Audit => "audit",
            Action::Approve => "approve",
            Action::Deny => "deny",
        })
    }
}

/// Transport protocol a connect rule applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP and UDP alike.
    #[default]
    Any,
    /// TCP only.
    Tcp,
    /// UDP only.
    Udp,
}

/// An inclusive port range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortRange {
    /// First port.
    pub lo: u16,
    /// Last port.
    pub hi: u16,
}

impl PortRange {
    /// Every port.
    pub const ALL: PortRange = PortRange {
        lo: 0,
        hi: u16::MAX,
    };
}

/// How an exec rule names programs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathPattern {
    /// This path exactly.
    Exact(String),
    /// Every path that starts with this (written with a trailing `*`).
    Prefix(String),
}

/// What a rule matches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "on", rename_all = "lowercase")]
pub enum Matcher {
    /// Outbound `connect()` and UDP `sendmsg()` to these destinations.
    Connect {
        /// Destination networks.
        to: Vec<IpNet>,
        /// Destination host names: the addresses a watched workload resolved them to, learned
        /// from its own DNS answers.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        names: Vec<HostPattern>,
        /// Every host name the workload has not reached before: a name no approval of a rule
        /// like this one has made known for the workload (central remembers the names, for
        /// every host of the workload). Such a rule names no `to`.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        new_names: bool,
        /// Destination ports; empty means every port.
        ports: Vec<PortRange>,
        /// Transport protocol.
        protocol: Protocol,
    },
    /// Execution of these programs.
    Exec {
        /// Program paths.
        paths: Vec<PathPattern>,
        /// Programs named by the SHA-256 of their content: any file with this content matches,
        /// whatever its name — a renamed file, a copy, a memfd copy. A path alone is evaded by
        /// copying the program elsewhere; its content is not.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        sha256: Vec<Sha256>,
        /// Also match every file whose content equals a file the exact `paths` name now (hashed
        /// when the rules are applied), so that copying `/usr/bin/curl` to `/tmp/x` does not
        /// escape a rule written for `/usr/bin/curl` without anyone having to list its digest.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        copies: bool,
        /// Only invocations with these arguments: the kernel holds every exec of the program
        /// after the new image is in place, and the agent reads the arguments the program
        /// received before anything of it runs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        args: Option<ArgsMatch>,
    },
}

/// The SHA-256 digest of a program's content; written as 64 hexadecimal characters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256(pub [u8; 32]);

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl FromStr for Sha256 {
    type Err = String;

    /// Exactly 64 hexadecimal characters, upper- or lower-case.
    fn from_str(s: &str) -> Result<Sha256, String> {
        let bad = || format!("'{s}' is not a SHA-256 digest (64 hexadecimal characters)");
        let bytes = s.as_bytes();
        if bytes.len() != 64 || !bytes.iter().all(u8::is_ascii_hexdigit) {
            return Err(bad());
        }
        let nibble = |c: u8| match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => c - b'A' + 10,
        };
        let mut out = [0u8; 32];
        for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            *o = (nibble(pair[0]) << 4) | nibble(pair[1]);
        }
        Ok(Sha256(out))
    }
}

impl Serialize for Sha256 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Sha256 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Sha256, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Who must approve an `approve` rule's requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Approvers {
    /// Groups (from the identity provider) whose members may approve; empty means any approver.
    pub groups: Vec<String>,
    /// Distinct approvers needed.
    pub count: u32,
}

/// Where an `approve` rule's requests are announced, instead of the service's default channels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Notify {
    /// Slack channel: `#name` or a channel id such as `C0123456789`.
    #[serde(default)]
    pub slack: Option<String>,
}

/// A validated workload: a named set of cgroups.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    /// Stable id derived from the name; the kernel maps key rules by it.
    pub id: u32,
    /// Name.
    pub name: String,
    /// cgroup v2 path globs, relative to the cgroup v2 root (`/ai.slice/*`).
    pub cgroups: Vec<String>,
    /// Action for operations no rule matches.
    pub default_action: Action,
    /// What to do when the workload executes a program that is not known: neither installed by
    /// the package manager nor under `known_programs`. A downloaded, built or copied program is
    /// a new file and so unknown, which a list of paths cannot catch. `None`: not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown_programs: Option<Action>,
    /// Programs to treat as known besides the package manager's, by exact path or path prefix
    /// (the workload's own tools, installed outside the package manager).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub known_programs: Vec<PathPattern>,
    /// Environment variables read from a held process and carried with its request (masked):
    /// the AI agent's session id, tool-call id and the like, so that a held operation can be
    /// tied to the session and tool call that caused it. `TRACEPARENT` is read whether listed
    /// or not, and shown as OpenTelemetry trace context.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub context_env: Vec<String>,
    /// What a connection gets to an address that no rule's network covers and that the
    /// workload never resolved from a name (a hard-coded address, DNS over HTTPS, a resolver
    /// the agent does not see). `None`: the workload's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unresolved: Option<Action>,
}

/// A validated rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// Stable id derived from the name; events and grants refer to it.
    pub id: u32,
    /// Name.
    pub name: String,
    /// Workload name.
    pub workload: String,
    /// Workload id.
    pub workload_id: u32,
    /// What it matches.
    pub matcher: Matcher,
    /// What it does.
    pub action: Action,
    /// Who approves (for `approve`).
    pub approvers: Approvers,
    /// Where requests are announced (for `approve`).
    #[serde(default)]
    pub notify: Notify,
    /// How long a request may wait for a decision.
    #[serde(with = "humantime_serde_secs")]
    pub timeout: Duration,
    /// What happens when nobody decides in time: `deny` or `allow`.
    pub on_timeout: Action,
    /// Who may decide, in order (for `approve`); people alone unless the rule says otherwise.
    #[serde(default = "review::human_only")]
    pub review: Vec<ReviewStep>,
    /// The `policy` step's checks, in order.
    #[serde(default)]
    pub checks: Vec<PolicyCheck>,
    /// The `auto` step's reviewer, when the chain has one.
    #[serde(default)]
    pub auto: Option<AutoStep>,
    /// Line of the rule in its file, for messages.
    pub line: Option<usize>,
}

impl Rule {
    /// Whether this is a connect rule that names `name` (as [`names::normalize`] returns it)
    /// among its hosts: a connection it held to an address learned under that name was held
    /// for the name, so a grant on it covers the name, not only the address.
    pub fn names_host(&self, name: &str) -> bool {
        match &self.matcher {
            Matcher::Connect { names, .. } => names.iter().any(|p| p.matches(name)),
            Matcher::Exec { .. } => false,
        }
    }

    /// Whether this is a connect rule whose networks cover `addr` on `port`, over TCP (`tcp`)
    /// or UDP. A v4-mapped IPv6 address is the IPv4 address it reaches.
    pub fn covers_address(&self, addr: std::net::IpAddr, port: u16, tcp: bool) -> bool {
        let Matcher::Connect {
            to,
            ports,
            protocol,
            ..
        } = &self.matcher
        else {
            return false;
        };
        let addr = match addr {
            std::net::IpAddr::V6(a) => a.to_ipv4_mapped().map_or(addr, std::net::IpAddr::V4),
            v4 => v4,
        };
        let proto = match protocol {
            Protocol::Any => true,
            Protocol::Tcp => tcp,
            Protocol::Udp => !tcp,
        };
        proto
            && (ports.is_empty() || ports.iter().any(|r| r.lo <= port && port <= r.hi))
            && to.iter().any(|net| net.contains(&addr))
    }
}

/// A validated rules file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleSet {
    /// Workloads, in file order.
    pub workloads: Vec<Workload>,
    /// Rules, in file order.
    pub rules: Vec<Rule>,
}

/// One thing wrong with a rules file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// The rule or workload concerned, as `rule 'name'` or `workload 'name'`.
    pub subject: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// A refused rules file: every problem found, none applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub struct PolicyError {
    /// The file (or other source) name.
    pub source_name: String,
    /// Every problem, in file order.
    pub problems: Vec<Problem>,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.source_name)?;
            if let Some(l) = p.line {
                write!(f, ":{l}")?;
                if let Some(c) = p.column {
                    write!(f, ":{c}")?;
                }
            }
            write!(f, ": ")?;
            if let Some(s) = &p.subject {
                write!(f, "{s}: ")?;
            }
            write!(f, "{}", p.message)?;
        }
        Ok(())
    }
}

impl RuleSet {
    /// Parses and validates a rules file. `source_name` names it in messages.
    pub fn parse(source_name: &str, text: &str) -> Result<RuleSet, PolicyError> {
        raw::parse(source_name, text)
    }

    /// The workload with this name.
    pub fn workload(&self, name: &str) -> Option<&Workload> {
        self.workloads.iter().find(|w| w.name == name)
    }

    /// The rule with this id.
    pub fn rule(&self, id: u32) -> Option<&Rule> {
        self.rules.iter().find(|r| r.id == id)
    }

    /// Whether the workload with this id has exec decisions that depend on a program's content:
    /// it sets `unknown_programs`, or one of its exec rules names `sha256` digests or sets
    /// `copies`. The kernel must then hold every exec of a file whose content verdict it has not
    /// cached, so that the agent can hash the file before it runs.
    pub fn decides_content(&self, workload_id: u32) -> bool {
        self.workloads
            .iter()
            .any(|w| w.id == workload_id && w.unknown_programs.is_some())
            || self.rules.iter().any(|r| {
                r.workload_id == workload_id
                    && matches!(&r.matcher, Matcher::Exec { sha256, copies, .. }
                        if !sha256.is_empty() || *copies)
            })
    }

    /// Whether `rule_id` is a rule of new names ([`Matcher::Connect`]'s `new_names`).
    pub fn is_new_names(&self, rule_id: u32) -> bool {
        self.rule(rule_id).is_some_and(|r| {
            matches!(
                r.matcher,
                Matcher::Connect {
                    new_names: true,
                    ..
                }
            )
        })
    }

    /// Whether the workload with this id has connect rules that name hosts, or says what
    /// unresolved destinations get: its DNS traffic then goes through the agent, which learns
    /// the addresses its names resolve to.
    pub fn decides_names(&self, workload_id: u32) -> bool {
        self.workloads
            .iter()
            .any(|w| w.id == workload_id && w.unresolved.is_some())
            || self.rules.iter().any(|r| {
                r.workload_id == workload_id
                    && matches!(&r.matcher, Matcher::Connect { names, new_names, .. }
                        if !names.is_empty() || *new_names)
            })
    }

    /// Rule ids by name, for reports.
    pub fn ids(&self) -> HashMap<u32, &str> {
        self.rules.iter().map(|r| (r.id, r.name.as_str())).collect()
    }
}

/// Stable non-zero 32-bit id of a name (FNV-1a), shared by agent and central.
pub fn name_id(kind: &str, name: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in kind.bytes().chain([0u8]).chain(name.bytes()) {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    if h == 0 {
        1
    } else {
        h
    }
}

/// A Slack channel as a rule may name it: `#name` (Slack's channel name rules: up to 80
/// lowercase letters, digits, `-`, `_`, `.`) or a channel id (`C…`/`G…`, upper-case letters and
/// digits).
pub fn check_slack_channel(ch: &str) -> Result<(), String> {
    let valid = match ch.strip_prefix('#') {
        Some(n) => {
            !n.is_empty()
                && n.len() <= 80
                && n.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
                })
        }
        None => {
            (9..=21).contains(&ch.len())
                && ch.starts_with(['C', 'G'])
                && ch
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        }
    };
    if valid {
        Ok(())
    } else {
        Err(format!(
            "'{ch}' is not a Slack channel: write `#name` (lower-case letters, \
             digits, '-', '_', '.'; at most 80) or a channel id like C0123456789"
        ))
    }
}

/// Parses `10.0.0.0/8`, `fd00::/8` or a bare address (a host route).
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    if let Ok(n) = s.parse::<IpNet>() {
        if n.trunc() != n {
            return Err(format!(
                "'{s}' has host bits set; did you mean '{}'?",
                n.trunc()
            ));
        }
        return Ok(n);
    }
    if let Ok(a) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(a));
    }
    Err(format!("'{s}' is not an IPv4/IPv6 address or CIDR block"))
}

mod humantime_serde_secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_secs(u64::deserialize(d)?))
    }
}
