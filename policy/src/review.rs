//! A rule's review chain: who may decide its requests, in order. `policy` checks are CEL
//! expressions over the request that central evaluates when the request arrives; the first that
//! holds decides, as `policy:<rule>/<name>`. `auto` is an automatic reviewer service that central
//! calls with the masked request: it approves, denies or escalates (or, `advisory`, only
//! recommends to people). `human` is the reviewers. A chain without `human` denies a request
//! that nothing before decided (its `on_timeout` must be `deny`).
//!
//! This module owns what a check may say (its names, its expression's syntax, the variables it
//! may read); evaluating it belongs to central.

use serde::{Deserialize, Serialize};

/// A step of a rule's review chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReviewStep {
    /// The rule's policy checks.
    Policy,
    /// An automatic reviewer service (the rule's `auto`).
    Auto,
    /// People, through every review channel.
    Human,
}

/// The `auto` step of a rule: which reviewer service, and whether its verdict decides.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoStep {
    /// The reviewer's name in central's `[[auto_reviewers]]`.
    pub reviewer: String,
    /// Its verdict is only shown to people as a recommendation; it never decides.
    #[serde(default)]
    pub advisory: bool,
}

/// The chain of a rule that says nothing: people decide.
pub fn human_only() -> Vec<ReviewStep> {
    vec![ReviewStep::Human]
}

/// What a policy check decides when its expression holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Approve once.
    Approve,
    /// Deny.
    Deny,
}

/// One policy check of a rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyCheck {
    /// Name, unique in its rule; the decision is recorded as `policy:<rule>/<name>`.
    pub name: String,
    /// A CEL expression over [`VARIABLES`] that yields a bool.
    pub expression: String,
    /// What it decides when the expression is true.
    pub verdict: Verdict,
}

/// Longest check expression, in bytes.
pub const MAX_EXPRESSION: usize = 4096;
/// Most checks on one rule.
pub const MAX_CHECKS: usize = 32;

/// The variables a check may read, each with what it holds. Central fills them from the
/// request as reviewers see it (masked).
pub const VARIABLES: &[(&str, &str)] = &[
    ("op", "\"exec\" or \"connect\""),
    ("host", "{id, labels}: the host and its labels"),
    ("workload", "the workload's name"),
    ("rule", "the rule's name"),
    (
        "process",
        "{pid, uid, gid, user, group, comm, exe, argv, unit, cgroup}: the held process, argv as /proc shows it when the agent reads it",
    ),
    ("parent", "{exe, argv}: its parent (empty strings when unknown)"),
    ("ancestors", "[{exe, argv}]: its ancestors, nearest first"),
    ("exec", "{path}: the program an exec runs (empty for connects)"),
    (
        "destination",
        "{address, port, protocol}: where a connect goes (empty for execs)",
    ),
    ("env", "{NAME: value}: the workload's context_env variables, masked"),
];

/// Checks an expression's syntax and that it reads only [`VARIABLES`]; the message names what
/// is wrong.
pub fn check_expression(expression: &str) -> Result<(), String> {
    if expression.trim().is_empty() {
        return Err("the expression is empty".into());
    }
    if expression.len() > MAX_EXPRESSION {
        return Err(format!(
            "the expression is {} bytes; at most {MAX_EXPRESSION}",
            expression.len()
        ));
    }
    // The parser is another project's code: a panic in it refuses the expression.
    let program = std::panic::catch_unwind(|| cel::Program::compile(expression))
        .map_err(|_| "the expression does not parse (the parser failed on it)".to_string())?
        .map_err(|e| {
            format!(
                "the expression does not parse: {}",
                one_line(&e.to_string())
            )
        })?;
    let refs = program.references();
    let bound = macro_variables(expression);
    let mut unknown: Vec<&str> = refs
        .variables()
        .into_iter()
        .filter(|v| !VARIABLES.iter().any(|(k, _)| k == v) && !bound.contains(v))
        .collect();
    unknown.sort_unstable();
    if !unknown.is_empty() {
        return Err(format!(
            "the expression reads {}, which a check cannot see; it may read {}",
            unknown
                .iter()
                .map(|v| format!("`{v}`"))
                .collect::<Vec<_>>()
                .join(", "),
            VARIABLES
                .iter()
                .map(|(k, _)| *k)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(())
}

/// The names that macros bind (`list.exists(x, ...)`, `all`, `exists_one`, `map`, `filter`):
/// they are the macro's own, not variables of the request.
fn macro_variables(expression: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for m in [".exists(", ".all(", ".exists_one(", ".map(", ".filter("] {
        for (at, _) in expression.match_indices(m) {
            let rest = expression[at + m.len()..].trim_start();
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            if end > 0 && rest[end..].trim_start().starts_with(',') {
                out.push(&rest[..end]);
            }
        }
    }
    out
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
