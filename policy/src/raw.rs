//! The file as written (serde) and its validation into a [`RuleSet`].

use std::collections::{HashMap, HashSet};

use serde::Deserialize;

use crate::{
    args::{self, ArgSeq, ArgsMatch},
    name_id, parse_net,
    review::{self, AutoStep, PolicyCheck, ReviewStep, Verdict},
    Action, Approvers, HostPattern, Matcher, Notify, PathPattern, PolicyError, PortRange, Problem,
    Protocol, Rule, RuleSet, Sha256, Workload, DEFAULT_TIMEOUT, MAX_NAME_LEN, MAX_PATH_LEN,
    TIMEOUT_RANGE,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    #[serde(default)]
    workloads: Vec<RawWorkload>,
    #[serde(default)]
    rules: Vec<RawRule>,
}

/// Most environment variables a workload's requests carry.
const MAX_CONTEXT_ENV: usize = 16;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkload {
    name: String,
    #[serde(default)]
    cgroups: Vec<String>,
    #[serde(default)]
    default: Option<Action>,
    #[serde(default)]
    unknown_programs: Option<Action>,
    #[serde(default)]
    known_programs: Vec<String>,
    #[serde(default)]
    context_env: Vec<String>,
    #[serde(default)]
    unresolved: Option<Action>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum On {
    Connect,
    Exec,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawPort {
    One(i64),
    Range(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApprovers {
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default = "one")]
    count: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotify {
    #[serde(default)]
    slack: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArgs {
    #[serde(default)]
    any: Vec<String>,
    #[serde(default)]
    all: Vec<String>,
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    workload: String,
    on: On,
    #[serde(default)]
    to: Vec<String>,
    #[serde(default)]
    new_names: Option<bool>,
    #[serde(default)]
    ports: Vec<RawPort>,
    #[serde(default)]
    protocol: Option<Protocol>,
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default)]
    sha256: Vec<String>,
    #[serde(default)]
    copies: Option<bool>,
    #[serde(default)]
    args: Option<RawArgs>,
    action: Action,
    #[serde(default)]
    approvers: Option<RawApprovers>,
    #[serde(default)]
    notify: Option<RawNotify>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    on_timeout: Option<Action>,
    #[serde(default)]
    review: Option<Vec<ReviewStep>>,
    #[serde(default)]
    policy: Vec<RawCheck>,
    #[serde(default)]
    auto: Option<RawAuto>,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuto {
    reviewer: String,
    #[serde(default)]
    advisory: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    name: String,
    #[serde(default)]
    approve_if: Option<String>,
    #[serde(default)]
    deny_if: Option<String>,
}

struct Collector<'a> {
    text: &'a str,
    problems: Vec<Problem>,
}

impl Collector<'_> {
    fn push(&mut self, kind: &str, name: &str, message: String) {
        self.problems.push(Problem {
            line: find_line(self.text, kind, name),
            column: None,
            subject: Some(format!("{kind} '{name}'")),
            message,
        });
    }
}

pub(crate) fn parse(source_name: &str, text: &str) -> Result<RuleSet, PolicyError> {
    let doc: Document = match serde_yaml_ng::from_str(text) {
        Ok(d) => d,
        Err(e) => {
            let loc = e.location();
            return Err(PolicyError {
                source_name: source_name.to_string(),
                problems: vec![Problem {
                    line: loc.as_ref().map(|l| l.line()),
                    column: loc.as_ref().map(|l| l.column()),
                    subject: None,
                    message: explain(&strip_location(&e.to_string())),
                }],
            });
        }
    };
    let mut c = Collector {
        text,
        problems: Vec::new(),
    };

    let mut workloads = Vec::new();
    let mut seen_workloads = HashSet::new();
    for w in &doc.workloads {
        check_name(&mut c, "workload", &w.name);
        if !seen_workloads.insert(w.name.clone()) {
            c.push("workload", &w.name, "defined more than once".into());
        }
        if w.cgroups.is_empty() {
            c.push(
                "workload",
                &w.name,
                "`cgroups` is empty: list at least one cgroup path or glob".into(),
            );
        }
        for g in &w.cgroups {
            if let Err(m) = check_cgroup_glob(g) {
                c.push("workload", &w.name, m);
            }
        }
        let mut known_programs = Vec::new();
        for (i, p) in w.known_programs.iter().enumerate() {
            match parse_path(p) {
                Ok(pp) => known_programs.push(pp),
                Err(m) => c.push("workload", &w.name, format!("`known_programs[{i}]`: {m}")),
            }
        }
        if !w.known_programs.is_empty() && w.unknown_programs.is_none() {
            c.push(
                "workload",
                &w.name,
                "`known_programs` only applies with `unknown_programs`: set \
                 `unknown_programs: allow|audit|approve|deny` or remove `known_programs`"
                    .into(),
            );
        }
        if w.context_env.len() > MAX_CONTEXT_ENV {
            c.push(
                "workload",
                &w.name,
                format!(
                    "`context_env` names {} variables; at most {MAX_CONTEXT_ENV}",
                    w.context_env.len()
                ),
            );
        }
        let mut env_seen = HashSet::new();
        for (i, v) in w.context_env.iter().enumerate() {
            if !crate::is_env_name(v) {
                c.push(
                    "workload",
                    &w.name,
                    format!(
                        "`context_env[{i}]` '{}' is not an environment variable name \
                         (letters, digits and '_', not starting with a digit, at most 128)",
                        v.escape_debug()
                    ),
                );
            } else if !env_seen.insert(v.as_str()) {
                c.push(
                    "workload",
                    &w.name,
                    format!("`context_env[{i}]` '{v}' is listed twice"),
                );
            }
        }
        let default_action = w.default.unwrap_or(Action::Allow);
        workloads.push(Workload {
            id: name_id("workload", &w.name),
            name: w.name.clone(),
            cgroups: w.cgroups.clone(),
            default_action,
            unknown_programs: w.unknown_programs,
            known_programs,
            context_env: w.context_env.clone(),
            unresolved: w.unresolved,
        });
    }
    check_ids(
        &mut c,
        "workload",
        workloads.iter().map(|w| (w.id, w.name.as_str())),
    );

    let mut rules = Vec::new();
    let mut seen_rules = HashSet::new();
    for r in &doc.rules {
        let name = r.name.as_str();
        check_name(&mut c, "rule", name);
        if !seen_rules.insert(r.name.clone()) {
            c.push(
                "rule",
                name,
                "defined more than once; rule names must be unique".into(),
            );
        }
        let workload_id = match workloads.iter().find(|w| w.name == r.workload) {
            Some(w) => w.id,
            None => {
                c.push("rule", name, format!("unknown workload '{}'", r.workload));
                0
            }
        };
        let matcher = match r.on {
            On::Connect => connect_matcher(&mut c, r),
            On::Exec => exec_matcher(&mut c, r),
        };
        let approvers = match (&r.approvers, r.action) {
            (Some(a), Action::Approve) => {
                if a.count == 0 || a.count > 10 {
                    c.push(
                        "rule",
                        name,
                        format!(
                            "`approvers.count` is {}; it must be between 1 and 10",
                            a.count
                        ),
                    );
                }
                if a.groups.iter().any(|g| g.trim().is_empty()) {
                    c.push(
                        "rule",
                        name,
                        "`approvers.groups` has an empty group name".into(),
                    );
                }
                Approvers {
                    groups: a.groups.clone(),
                    count: a.count,
                }
            }
            (Some(_), action) => {
                c.push(
                    "rule",
                    name,
                    format!("`approvers` only applies to `action: approve`, not `{action}`"),
                );
                Approvers::default()
            }
            (None, _) => Approvers {
                groups: Vec::new(),
                count: 1,
            },
        };
        let notify = match (&r.notify, r.action) {
            (Some(n), Action::Approve) => {
                if let Some(ch) = &n.slack {
                    if let Err(m) = crate::check_slack_channel(ch) {
                        c.push("rule", name, format!("`notify.slack` {m}"));
                    }
                }
                Notify {
                    slack: n.slack.clone(),
                }
            }
            (Some(_), action) => {
                c.push(
                    "rule",
                    name,
                    format!("`notify` only applies to `action: approve`, not `{action}`"),
                );
                Notify::default()
            }
            (None, _) => Notify::default(),
        };
        let timeout = match &r.timeout {
            None => DEFAULT_TIMEOUT,
            Some(t) => match humantime::parse_duration(t) {
                Ok(d) if d >= TIMEOUT_RANGE.0 && d <= TIMEOUT_RANGE.1 => d,
                Ok(_) => {
                    c.push(
                        "rule",
                        name,
                        format!("timeout '{t}' is out of range (1s to 7d)"),
                    );
                    DEFAULT_TIMEOUT
                }
                Err(e) => {
                    c.push(
                        "rule",
                        name,
                        format!("timeout '{t}' is not a duration like 90s or 10m: {e}"),
                    );
                    DEFAULT_TIMEOUT
                }
            },
        };
        if r.timeout.is_some() && r.action != Action::Approve {
            c.push(
                "rule",
                name,
                format!(
                    "`timeout` only applies to `action: approve`, not `{}`",
                    r.action
                ),
            );
        }
        let on_timeout = match r.on_timeout {
            None | Some(Action::Deny) => Action::Deny,
            Some(Action::Allow) => Action::Allow,
            Some(other) => {
                c.push(
                    "rule",
                    name,
                    format!("`on_timeout` must be `deny` or `allow`, not `{other}`"),
                );
                Action::Deny
            }
        };
        let (review, checks, auto) = review_chain(&mut c, r);
        if on_timeout == Action::Allow && !review.contains(&ReviewStep::Human) {
            c.push(
                "rule",
                name,
                "`on_timeout: allow` in a chain without `human`: what no check or reviewer decided (a check that failed, a forged or missing answer) would be let through; a chain without people ends in `deny`".into(),
            );
        }
        if let Some(m) = matcher {
            rules.push(Rule {
                id: name_id("rule", name),
                name: r.name.clone(),
                workload: r.workload.clone(),
                workload_id,
                matcher: m,
                action: r.action,
                approvers,
                notify,
                timeout,
                on_timeout,
                review,
                checks,
                auto,
                line: find_line(text, "rule", name),
            });
        }
    }
    check_ids(
        &mut c,
        "rule",
        rules.iter().map(|r| (r.id, r.name.as_str())),
    );

    if c.problems.is_empty() {
        Ok(RuleSet { workloads, rules })
    } else {
        c.problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
        Err(PolicyError {
            source_name: source_name.to_string(),
            problems: c.problems,
        })
    }
}

fn connect_matcher(c: &mut Collector<'_>, r: &RawRule) -> Option<Matcher> {
    let name = r.name.as_str();
    let mut ok = true;
    if !r.paths.is_empty() {
        c.push(
            "rule",
            name,
            "`paths` belongs to `on: exec` rules; a connect rule names `to`".into(),
        );
        ok = false;
    }
    if !r.sha256.is_empty() {
        c.push(
            "rule",
            name,
            "`sha256` belongs to `on: exec` rules; a connect rule names `to`".into(),
        );
        ok = false;
    }
    if r.copies.is_some() {
        c.push(
            "rule",
            name,
            "`copies` belongs to `on: exec` rules; a connect rule names `to`".into(),
        );
        ok = false;
    }
    if r.args.is_some() {
        c.push(
            "rule",
            name,
            "`args` belongs to `on: exec` rules; a connect rule names `to`".into(),
        );
        ok = false;
    }
    let new_names = r.new_names == Some(true);
    if new_names && !r.to.is_empty() {
        c.push(
            "rule",
            name,
            "`new_names` stands for every name the workload has not reached before; it takes no `to` (write a rule of its own for those destinations)".into(),
        );
        ok = false;
    }
    if new_names && r.action == Action::Allow {
        c.push(
            "rule",
            name,
            "`new_names` with `allow` lets through what is let through anyway: use `approve`, `deny` or `audit`".into(),
        );
        ok = false;
    }
    if r.to.is_empty() && !new_names {
        c.push(
            "rule",
            name,
            "`to` is empty: list at least one address, CIDR block or host name (or set `new_names: true`)".into(),
        );
        ok = false;
    }
    let mut to = Vec::new();
    let mut names = Vec::new();
    for (i, s) in r.to.iter().enumerate() {
        let s = s.trim();
        // An entry is a network when it has the shape of one (digits and dots with a prefix,
        // or any colon); anything else is a host name, and each says what is wrong in its
        // own terms.
        let looks_like_net = s.contains(':')
            || s.contains('/')
            || s.bytes().all(|b| b.is_ascii_digit() || b == b'.');
        if looks_like_net {
            match parse_net(s) {
                Ok(n) => to.push(n),
                Err(m) => {
                    c.push("rule", name, format!("`to[{i}]`: invalid CIDR: {m}"));
                    ok = false;
                }
            }
        } else {
            match s.parse::<HostPattern>() {
                Ok(h) => {
                    if !names.contains(&h) {
                        names.push(h);
                    }
                }
                Err(m) => {
                    c.push("rule", name, format!("`to[{i}]`: {m}"));
                    ok = false;
                }
            }
        }
    }
    let mut ports = Vec::new();
    for (i, p) in r.ports.iter().enumerate() {
        match parse_port(p) {
            Ok(pr) => ports.push(pr),
            Err(m) => {
                c.push("rule", name, format!("`ports[{i}]`: {m}"));
                ok = false;
            }
        }
    }
    ok.then(|| Matcher::Connect {
        to,
        names,
        new_names,
        ports,
        protocol: r.protocol.unwrap_or_default(),
    })
}

fn exec_matcher(c: &mut Collector<'_>, r: &RawRule) -> Option<Matcher> {
    let name = r.name.as_str();
    let mut ok = true;
    if !r.to.is_empty() || !r.ports.is_empty() || r.protocol.is_some() || r.new_names.is_some() {
        c.push("rule", name, "`to`, `new_names`, `ports` and `protocol` belong to `on: connect` rules; an exec rule names `paths` or `sha256`".into());
        ok = false;
    }
    if r.paths.is_empty() && r.sha256.is_empty() {
        c.push(
            "rule",
            name,
            "`paths` and `sha256` are both empty: name programs by path or by content".into(),
        );
        ok = false;
    }
    let mut paths = Vec::new();
    for (i, p) in r.paths.iter().enumerate() {
        match parse_path(p) {
            Ok(pp) => paths.push(pp),
            Err(m) => {
                c.push("rule", name, format!("`paths[{i}]`: {m}"));
                ok = false;
            }
        }
    }
    let mut sha256: Vec<Sha256> = Vec::new();
    for (i, d) in r.sha256.iter().enumerate() {
        match d.trim().parse::<Sha256>() {
            // A digest listed twice names the same program; keep it once.
            Ok(h) if sha256.contains(&h) => {}
            Ok(h) => sha256.push(h),
            Err(m) => {
                c.push("rule", name, format!("`sha256[{i}]`: {m}"));
                ok = false;
            }
        }
    }
    let copies = r.copies.unwrap_or(false);
    if copies {
        // Copies are found by hashing the files that exact paths name; a prefix names no file.
        if r.paths.is_empty() {
            c.push(
                "rule",
                name,
                "`copies: true` needs exact `paths`: copies are found by hashing the files \
                 exact paths name"
                    .into(),
            );
            ok = false;
        }
        for (i, p) in r.paths.iter().enumerate() {
            if p.ends_with('*') {
                c.push(
                    "rule",
                    name,
                    format!(
                        "`copies: true` with `paths[{i}]` '{p}', a prefix: copies are found \
                         by hashing the files exact paths name; list exact paths"
                    ),
                );
                ok = false;
            }
        }
    }
    let args = match &r.args {
        Some(a) => {
            let parsed = exec_args(c, name, a);
            if !r.sha256.is_empty() || copies {
                // A content verdict is cached in the kernel per file; one that depends on the
                // arguments could not be.
                c.push(
                    "rule",
                    name,
                    "`args` with `sha256` or `copies`: arguments are matched on programs named \
                     by `paths` only; write a separate rule for the content"
                        .into(),
                );
                ok = false;
            }
            if r.action == Action::Allow {
                // The strictest matching rule wins, so an allowing rule never changes a verdict.
                c.push(
                    "rule",
                    name,
                    "`args` with `action: allow` changes nothing (the strictest matching rule \
                     wins); give the invocations to hold or refuse instead"
                        .into(),
                );
                ok = false;
            }
            ok &= parsed.is_some();
            parsed
        }
        None => None,
    };
    ok.then_some(Matcher::Exec {
        paths,
        sha256,
        copies,
        args,
    })
}

fn exec_args(c: &mut Collector<'_>, name: &str, a: &RawArgs) -> Option<ArgsMatch> {
    let mut ok = true;
    if a.any.is_empty() && a.all.is_empty() {
        c.push(
            "rule",
            name,
            "`args` names no words: give `any`, `all`, or both (or drop `args` to match every \
             invocation)"
                .into(),
        );
        return None;
    }
    let mut parse = |field: &str, list: &[String]| -> Vec<ArgSeq> {
        if list.len() > args::MAX_ENTRIES {
            c.push(
                "rule",
                name,
                format!(
                    "`args.{field}` has {} entries; at most {}",
                    list.len(),
                    args::MAX_ENTRIES
                ),
            );
            ok = false;
        }
        let mut out = Vec::new();
        for (i, e) in list.iter().enumerate() {
            match e.parse::<ArgSeq>() {
                Ok(s) => out.push(s),
                Err(m) => {
                    c.push("rule", name, format!("`args.{field}[{i}]`: {m}"));
                    ok = false;
                }
            }
        }
        out
    };
    let any = parse("any", &a.any);
    let all = parse("all", &a.all);
    ok.then_some(ArgsMatch { any, all })
}

fn parse_port(p: &RawPort) -> Result<PortRange, String> {
    let one = |v: i64| -> Result<u16, String> {
        u16::try_from(v)
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("port {v} is outside 1-65535"))
    };
    match p {
        RawPort::One(v) => {
            let v = one(*v)?;
            Ok(PortRange { lo: v, hi: v })
        }
        RawPort::Range(s) => {
            let (a, b) = s
                .split_once('-')
                .ok_or_else(|| format!("'{s}' is not a port or a range like 8000-8080"))?;
            let parse = |x: &str| {
                x.trim()
                    .parse::<i64>()
                    .map_err(|_| format!("'{s}' is not a port or a range like 8000-8080"))
            };
            let (lo, hi) = (one(parse(a)?)?, one(parse(b)?)?);
            if lo > hi {
                return Err(format!(
                    "port range '{s}' is upside down (first port {lo} > last port {hi})"
                ));
            }
            Ok(PortRange { lo, hi })
        }
    }
}

fn parse_path(p: &str) -> Result<PathPattern, String> {
    if p.is_empty() {
        return Err("empty path".into());
    }
    if p.contains('\0') {
        return Err("path contains a NUL byte".into());
    }
    if !p.starts_with('/') {
        return Err(format!(
            "'{p}' is not absolute; exec rules name programs by absolute path"
        ));
    }
    let (body, prefix) = match p.strip_suffix('*') {
        Some(b) => (b, true),
        None => (p, false),
    };
    if body.contains(['*', '?', '[', ']']) {
        return Err(format!(
            "'{p}': only a single trailing `*` is supported (like /usr/bin/ssh*)"
        ));
    }
    if body.len() > MAX_PATH_LEN {
        return Err(format!(
            "path is {} bytes long; the limit is {MAX_PATH_LEN}",
            body.len()
        ));
    }
    Ok(if prefix {
        PathPattern::Prefix(body.to_string())
    } else {
        PathPattern::Exact(body.to_string())
    })
}

fn check_cgroup_glob(g: &str) -> Result<(), String> {
    if !g.starts_with('/') {
        return Err(format!(
            "cgroup '{g}' must start with '/' (a path below the cgroup v2 root)"
        ));
    }
    if g.contains("..") || g.contains('\0') {
        return Err(format!("cgroup '{g}' may not contain '..' or NUL"));
    }
    if g.contains(['[', ']', '{', '}']) {
        return Err(format!(
            "cgroup '{g}': only `*` and `?` wildcards are supported"
        ));
    }
    Ok(())
}

fn check_name(c: &mut Collector<'_>, kind: &str, name: &str) {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !valid {
        c.push(
            kind,
            name,
            format!("names are 1-{MAX_NAME_LEN} characters of letters, digits, '-', '_' and '.'"),
        );
    }
}

fn check_ids<'a>(c: &mut Collector<'_>, kind: &str, ids: impl Iterator<Item = (u32, &'a str)>) {
    let mut by_id: HashMap<u32, &str> = HashMap::new();
    for (id, name) in ids {
        if let Some(other) = by_id.insert(id, name) {
            if other != name {
                c.push(
                    kind,
                    name,
                    format!("its id collides with {kind} '{other}'; rename one of them"),
                );
            }
        }
    }
}

/// The line of `- name: X` inside the `rules:` or `workloads:` section, for messages.
fn find_line(text: &str, kind: &str, name: &str) -> Option<usize> {
    let section = if kind == "rule" {
        "rules:"
    } else {
        "workloads:"
    };
    let mut inside = false;
    for (i, line) in text.lines().enumerate() {
        if !line.starts_with(' ') && !line.starts_with('-') && line.contains(':') {
            inside = line.trim_end().starts_with(section);
            continue;
        }
        if !inside {
            continue;
        }
        let t = line.trim_start().trim_start_matches('-').trim_start();
        if let Some(v) = t.strip_prefix("name:") {
            let v = v.trim().trim_matches(|ch| ch == '"' || ch == '\'');
            if v == name {
                return Some(i + 1);
            }
        }
    }
    None
}

/// serde's wording for a wrong top level is about Rust types; say it in the file's terms.
fn explain(msg: &str) -> String {
    if msg.contains("expected struct Document") {
        format!("{msg}: a rules file is a mapping with `workloads:` and `rules:` lists")
    } else {
        msg.to_string()
    }
}

fn strip_location(msg: &str) -> String {
    // The location is reported separately; keep the message itself.
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// A rule's review chain, its policy checks and its automatic reviewer, with a problem for each
/// thing wrong.
fn review_chain(
    c: &mut Collector,
    r: &RawRule,
) -> (Vec<ReviewStep>, Vec<PolicyCheck>, Option<AutoStep>) {
    let name = r.name.as_str();
    let Some(steps) = &r.review else {
        if !r.policy.is_empty() {
            c.push(
                "rule",
                name,
                "`policy` checks need `review: [policy, human]` (or `[policy]`) to take part"
                    .into(),
            );
        }
        if r.auto.is_some() {
            c.push(
                "rule",
                name,
                "`auto` needs `review: [auto, human]` (or another chain with `auto`) to take part"
                    .into(),
            );
        }
        return (review::human_only(), Vec::new(), None);
    };
    if r.action != Action::Approve {
        c.push(
            "rule",
            name,
            format!(
                "`review` only applies to `action: approve`, not `{}`",
                r.action
            ),
        );
    }
    let mut seen = HashSet::new();
    for s in steps {
        if !seen.insert(*s) {
            c.push(
                "rule",
                name,
                format!("`review` names `{}` twice", step_name(*s)),
            );
        }
    }
    if steps.is_empty() {
        c.push(
            "rule",
            name,
            "`review` is empty: name `human`, `policy`, `auto` or several, in that order".into(),
        );
    }
    let order = |s: &ReviewStep| match s {
        ReviewStep::Policy => 0,
        ReviewStep::Auto => 1,
        ReviewStep::Human => 2,
    };
    if steps.windows(2).any(|w| order(&w[0]) > order(&w[1])) {
        c.push(
            "rule",
            name,
            "`review` is out of order: `policy`, then `auto`, then `human` (people have the last word, so `human` comes last)".into(),
        );
    }
    let with_auto = steps.contains(&ReviewStep::Auto);
    let auto = match (&r.auto, with_auto) {
        (Some(a), true) => {
            if !crate::is_plain_name(&a.reviewer) {
                c.push(
                    "rule",
                    name,
                    format!(
                        "`auto.reviewer` '{}' is not a reviewer name (1 to {MAX_NAME_LEN} letters, digits, `-` or `_`)",
                        a.reviewer
                    ),
                );
            }
            let count = r.approvers.as_ref().map_or(1, |x| x.count);
            if !a.advisory && count > 1 {
                c.push(
                    "rule",
                    name,
                    format!(
                        "`auto` may decide alone, but `approvers.count` is {count}: an automatic reviewer never stands in for several people (make it `advisory: true`)"
                    ),
                );
            }
            if a.advisory && !steps.contains(&ReviewStep::Human) {
                c.push(
                    "rule",
                    name,
                    "`auto.advisory` recommends to people, but `review` has no `human` step".into(),
                );
            }
            Some(AutoStep {
                reviewer: a.reviewer.clone(),
                advisory: a.advisory,
            })
        }
        (None, true) => {
            c.push(
                "rule",
                name,
                "`review` has `auto` but the rule names no `auto.reviewer`".into(),
            );
            None
        }
        (Some(_), false) => {
            c.push(
                "rule",
                name,
                "the rule has `auto` but `review` has no `auto` step".into(),
            );
            None
        }
        (None, false) => None,
    };
    let with_policy = steps.contains(&ReviewStep::Policy);
    if with_policy && r.policy.is_empty() {
        c.push(
            "rule",
            name,
            "`review` has `policy` but the rule has no `policy` checks".into(),
        );
    }
    if !with_policy && !r.policy.is_empty() {
        c.push(
            "rule",
            name,
            "the rule has `policy` checks but `review` has no `policy` step".into(),
        );
    }
    if r.policy.len() > review::MAX_CHECKS {
        c.push(
            "rule",
            name,
            format!(
                "`policy` has {} checks; at most {}",
                r.policy.len(),
                review::MAX_CHECKS
            ),
        );
    }
    let mut names = HashSet::new();
    let mut checks = Vec::new();
    for (i, k) in r.policy.iter().enumerate() {
        let what = format!("`policy[{i}]` ('{}')", k.name);
        if !crate::is_plain_name(&k.name) {
            c.push(
                "rule",
                name,
                format!(
                    "{what}: a check's name is 1 to {MAX_NAME_LEN} letters, digits, `-` or `_`"
                ),
            );
        }
        if !names.insert(k.name.as_str()) {
            c.push("rule", name, format!("{what}: the name is used twice"));
        }
        if k.approve_if.is_some() && r.approvers.as_ref().is_some_and(|x| x.count > 1) {
            c.push(
                "rule",
                name,
                format!(
                    "{what}: `approve_if` would approve alone, but `approvers.count` is above 1: a check never stands in for several people"
                ),
            );
        }
        let (expression, verdict) = match (&k.approve_if, &k.deny_if) {
            (Some(e), None) => (e, Verdict::Approve),
            (None, Some(e)) => (e, Verdict::Deny),
            _ => {
                c.push(
                    "rule",
                    name,
                    format!("{what}: give exactly one of `approve_if` and `deny_if`"),
                );
                continue;
            }
        };
        if let Err(e) = review::check_expression(expression) {
            c.push("rule", name, format!("{what}: {e}"));
            continue;
        }
        checks.push(PolicyCheck {
            name: k.name.clone(),
            expression: expression.clone(),
            verdict,
        });
    }
    (steps.clone(), checks, auto)
}

fn step_name(s: ReviewStep) -> &'static str {
    match s {
        ReviewStep::Policy => "policy",
        ReviewStep::Auto => "auto",
        ReviewStep::Human => "human",
    }
}
