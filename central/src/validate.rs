//! The checks of what comes from outside, written once for every channel: an agent's request, a
//! reviewer's decision (from gRPC, the console or Slack), an audit query, and the field checks
//! (ids, text, argv, labels) the gRPC services apply to the rest. Each error names the field and
//! what is wrong with it; nothing here reads storage.

use std::{net::IpAddr, time::Duration};

use latch_proto::v1::{
    ApprovalRequest, DecideRequest, DecisionKind, GrantScope, Op, QueryAuditRequest,
};
use prost::Message;

use crate::{
    approval::{DecideInput, MAX_GRANT},
    error::{Error, Result},
    store::AuditFilter,
};

/// Longest id (host, request, record, grant).
pub const MAX_ID: usize = 128;
/// Largest encoded approval request.
pub const MAX_CONTEXT_BYTES: usize = 64 * 1024;
/// Most argv entries.
pub const MAX_ARGV: usize = 256;
/// Most ancestors in a process tree.
pub const MAX_ANCESTORS: usize = 8;
/// Longest path, argument or name.
pub const MAX_TEXT: usize = 4096;
/// Longest decision or revocation reason.
pub const MAX_REASON: usize = 2048;
/// Most environment variables on a request (a workload lists at most 16).
pub const MAX_ENV: usize = 16;
/// Longest environment value, masked.
pub const MAX_ENV_VALUE: usize = 2048;
/// Longest justification a workload may give.
pub use policy::MAX_JUSTIFICATION;
/// Most labels (and selector entries).
pub const MAX_LABELS: usize = 64;
/// Most audit records per batch.
pub const MAX_BATCH: usize = 10_000;

pub fn check_id(field: &str, v: &str) -> Result<()> {
    if v.is_empty() {
        return Err(Error::InvalidArgument(format!("{field} is empty")));
    }
    if v.len() > MAX_ID {
        return Err(Error::InvalidArgument(format!(
            "{field} is {} bytes; at most {MAX_ID}",
            v.len()
        )));
    }
    if v.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(Error::InvalidArgument(format!(
            "{field} '{}' contains whitespace or control characters",
            v.escape_debug()
        )));
    }
    Ok(())
}

pub fn check_text(field: &str, v: &str, max: usize) -> Result<()> {
    if v.len() > max {
        return Err(Error::InvalidArgument(format!(
            "{field} is {} bytes; at most {max}",
            v.len()
        )));
    }
    Ok(())
}

pub fn check_argv(field: &str, argv: &[String]) -> Result<()> {
    if argv.len() > MAX_ARGV {
        return Err(Error::InvalidArgument(format!(
            "{field} has {} entries; at most {MAX_ARGV}",
            argv.len()
        )));
    }
    for (i, a) in argv.iter().enumerate() {
        check_text(&format!("{field}[{i}]"), a, MAX_TEXT)?;
    }
    Ok(())
}

pub fn check_labels<'a>(
    field: &str,
    labels: impl ExactSizeIterator<Item = (&'a String, &'a String)>,
) -> Result<()> {
    if labels.len() > MAX_LABELS {
        return Err(Error::InvalidArgument(format!(
            "{field} has {} entries; at most {MAX_LABELS}",
            labels.len()
        )));
    }
    for (k, v) in labels {
        check_id(&format!("{field} key"), k)?;
        check_text(&format!("{field}['{k}']"), v, 256)?;
    }
    Ok(())
}

/// Checks a workload's justification: its own words, shown to reviewers, so no control
/// characters but line breaks and tabs. Empty only where `may_be_empty` (a request submitted
/// before the workload said anything).
pub fn check_justification(field: &str, v: &str, may_be_empty: bool) -> Result<()> {
    if may_be_empty && v.is_empty() {
        return Ok(());
    }
    policy::check_justification(v).map_err(|e| Error::InvalidArgument(format!("{field} {e}")))
}

fn is_hex(v: &str, len: usize) -> bool {
    v.len() == len
        && v.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Checks the environment variables and trace context an agent read from a held process.
fn check_env(r: &ApprovalRequest) -> Result<()> {
    if r.env.len() > MAX_ENV {
        return Err(Error::InvalidArgument(format!(
            "env has {} entries; at most {MAX_ENV}",
            r.env.len()
        )));
    }
    for (i, v) in r.env.iter().enumerate() {
        if !policy::is_env_name(&v.name) {
            return Err(Error::InvalidArgument(format!(
                "env[{i}].name '{}' is not an environment variable name",
                v.name.escape_debug()
            )));
        }
        check_text(&format!("env[{i}].value"), &v.value, MAX_ENV_VALUE)?;
        if v.value.chars().any(char::is_control) {
            return Err(Error::InvalidArgument(format!(
                "env[{i}].value ({}) has a control character",
                v.name
            )));
        }
    }
    if let Some(t) = &r.trace {
        if !is_hex(&t.trace_id, 32) || !is_hex(&t.parent_id, 16) {
            return Err(Error::InvalidArgument(format!(
                "trace '{}'/'{}' is not a trace id (32 hex digits) and span id (16)",
                t.trace_id.escape_debug(),
                t.parent_id.escape_debug()
            )));
        }
    }
    Ok(())
}

/// Checks an agent's approval request.
pub fn validate_request(r: &ApprovalRequest) -> Result<()> {
    check_id("request_id", &r.request_id)?;
    check_id("host_id", &r.host_id)?;
    let len = r.encoded_len();
    if len > MAX_CONTEXT_BYTES {
        return Err(Error::InvalidArgument(format!(
            "request '{}' is {len} bytes; at most {MAX_CONTEXT_BYTES} (redact or truncate argv)",
            r.request_id
        )));
    }
    let op = Op::try_from(r.op)
        .map_err(|_| Error::InvalidArgument(format!("op {} is unknown", r.op)))?;
    match op {
        Op::Unspecified => return Err(Error::InvalidArgument("op is unspecified".into())),
        Op::Exec => {
            if r.exec_path.is_empty() {
                return Err(Error::InvalidArgument(
                    "exec request without exec_path".into(),
                ));
            }
        }
        Op::Connect | Op::Sendmsg => {
            let d = r.destination.as_ref().ok_or_else(|| {
                Error::InvalidArgument(format!("{} request without destination", op.as_str_name()))
            })?;
            d.address.parse::<IpAddr>().map_err(|_| {
                Error::InvalidArgument(format!(
                    "destination.address '{}' is not an IP address",
                    d.address.escape_debug()
                ))
            })?;
            if !d.host_name.is_empty() {
                match policy::names::normalize(&d.host_name) {
                    Ok(n) if n == d.host_name => {}
                    Ok(_) => {
                        return Err(Error::InvalidArgument(format!(
                            "destination.host_name '{}' is not lower case without a trailing dot",
                            d.host_name.escape_debug()
                        )))
                    }
                    Err(why) => {
                        return Err(Error::InvalidArgument(format!(
                            "destination.host_name '{}' is not a host name: {why}",
                            d.host_name.escape_debug()
                        )))
                    }
                }
            }
            if d.port > u16::MAX as u32 {
                return Err(Error::InvalidArgument(format!(
                    "destination.port {} is above 65535",
                    d.port
                )));
            }
        }
    }
    if r.requester.trim().is_empty() {
        return Err(Error::InvalidArgument("requester is empty".into()));
    }
    for (f, v) in [
        ("requester", &r.requester),
        ("user", &r.user),
        ("group", &r.group),
        ("cgroup_path", &r.cgroup_path),
        ("unit", &r.unit),
        ("comm", &r.comm),
        ("exe", &r.exe),
        ("exec_path", &r.exec_path),
        ("rule_name", &r.rule_name),
        ("workload", &r.workload),
    ] {
        check_text(f, v, MAX_TEXT)?;
    }
    check_argv("argv", &r.argv)?;
    check_justification("justification", &r.justification, true)?;
    check_env(r)?;
    if r.ancestors.len() > MAX_ANCESTORS {
        return Err(Error::InvalidArgument(format!(
            "ancestors has {} entries; at most {MAX_ANCESTORS}",
            r.ancestors.len()
        )));
    }
    for (i, a) in r.ancestors.iter().enumerate() {
        check_text(&format!("ancestors[{i}].exe"), &a.exe, MAX_TEXT)?;
        check_argv(&format!("ancestors[{i}].argv"), &a.argv)?;
    }
    Ok(())
}

/// Checks a reviewer's decision and turns it into the engine's input.
pub fn validate_decide(r: &DecideRequest) -> Result<DecideInput> {
    check_id("approval_id", &r.approval_id)?;
    let kind = DecisionKind::try_from(r.kind)
        .map_err(|_| Error::InvalidArgument(format!("kind {} is unknown", r.kind)))?;
    let scope = GrantScope::try_from(r.scope)
        .map_err(|_| Error::InvalidArgument(format!("scope {} is unknown", r.scope)))?;
    if r.reason.trim().is_empty() {
        return Err(Error::InvalidArgument("reason is mandatory".into()));
    }
    check_text("reason", &r.reason, MAX_REASON)?;
    let mut duration = Duration::ZERO;
    match kind {
        DecisionKind::Unspecified => {
            return Err(Error::InvalidArgument(
                "kind is unspecified (approve once, approve for a duration, or deny)".into(),
            ))
        }
        DecisionKind::ApproveFor => {
            if r.duration_seconds == 0 || r.duration_seconds > MAX_GRANT.as_secs() {
                return Err(Error::InvalidArgument(format!(
                    "duration_seconds {} is out of range: 1 to {} ({})",
                    r.duration_seconds,
                    MAX_GRANT.as_secs(),
                    humantime::format_duration(MAX_GRANT)
                )));
            }
            if scope == GrantScope::Unspecified {
                return Err(Error::InvalidArgument(
                    "scope is unspecified (process, workload or host)".into(),
                ));
            }
            duration = Duration::from_secs(r.duration_seconds);
        }
        DecisionKind::ApproveOnce | DecisionKind::Deny => {
            if r.duration_seconds != 0 || scope != GrantScope::Unspecified {
                return Err(Error::InvalidArgument(format!(
                    "{} takes no duration or scope (got {} s, {})",
                    kind.as_str_name(),
                    r.duration_seconds,
                    scope.as_str_name()
                )));
            }
        }
    }
    Ok(DecideInput {
        approval_id: r.approval_id.clone(),
        kind,
        duration,
        scope,
        reason: r.reason.trim().to_string(),
    })
}

/// The store's filter for a query, checked.
pub fn audit_filter(r: &QueryAuditRequest) -> Result<AuditFilter> {
    for (f, v, max) in [
        ("kind", &r.kind, 128),
        ("host_id", &r.host_id, MAX_ID),
        ("workload", &r.workload, 256),
        ("rule_name", &r.rule_name, 256),
        ("actor", &r.actor, 256),
        ("outcome", &r.outcome, 32),
        ("request_id", &r.request_id, MAX_ID),
    ] {
        check_text(f, v, max)?;
    }
    if r.after_seq < 0 {
        return Err(Error::InvalidArgument(format!(
            "after_seq {} is negative",
            r.after_seq
        )));
    }
    if r.since_unix_ms < 0 || r.until_unix_ms < 0 {
        return Err(Error::InvalidArgument(
            "since_unix_ms and until_unix_ms must not be negative".into(),
        ));
    }
    Ok(AuditFilter {
        after_seq: r.after_seq,
        until_seq: 0,
        kind: r.kind.clone(),
        host_id: r.host_id.clone(),
        since_ms: r.since_unix_ms,
        until_ms: r.until_unix_ms,
        workload: r.workload.clone(),
        rule_name: r.rule_name.clone(),
        actor: r.actor.clone(),
        action: r.outcome.clone(),
        request_id: r.request_id.clone(),
    })
}

#[cfg(test)]
mod tests {
    use latch_proto::v1::{Ancestor, Destination};

    use super::*;

    fn connect() -> ApprovalRequest {
        ApprovalRequest {
            request_id: "r1".into(),
            host_id: "h1".into(),
            op: Op::Connect as i32,
            requester: "user:alice".into(),
            destination: Some(Destination {
                address: "10.0.0.1".into(),
                port: 5432,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn message(r: Result<impl std::fmt::Debug>) -> String {
        match r {
            Ok(v) => panic!("accepted: {v:?}"),
            Err(Error::InvalidArgument(m)) => m,
            Err(e) => panic!("not an invalid argument: {e}"),
        }
    }

    #[test]
    fn a_bad_request_is_refused_naming_the_field() {
        assert!(validate_request(&connect()).is_ok());
        let justified = ApprovalRequest {
            justification: "nightly export\n\tstep 3 of 5".into(),
            env: vec![latch_proto::v1::EnvVar {
                name: "AGENT_SESSION_ID".into(),
                value: "s-42 [SECRET]".into(),
            }],
            trace: Some(latch_proto::v1::TraceContext {
                trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                parent_id: "00f067aa0ba902b7".into(),
                sampled: true,
            }),
            ..connect()
        };
        assert!(validate_request(&justified).is_ok());
        let mut named = connect();
        named.destination.as_mut().expect("set").host_name = "db.internal.example".into();
        assert!(validate_request(&named).is_ok());
        type Edit = fn(&mut ApprovalRequest);
        let cases: &[(&str, Edit, &str)] = &[
            ("empty id", |r| r.request_id.clear(), "request_id is empty"),
            (
                "id with a space",
                |r| r.host_id = "h 1".into(),
                "host_id 'h 1' contains whitespace",
            ),
            (
                "id too long",
                |r| r.host_id = "h".repeat(MAX_ID + 1),
                "host_id is 129 bytes; at most 128",
            ),
            ("unknown op", |r| r.op = 99, "op 99 is unknown"),
            (
                "no op",
                |r| r.op = Op::Unspecified as i32,
                "op is unspecified",
            ),
            (
                "exec without path",
                |r| r.op = Op::Exec as i32,
                "exec request without exec_path",
            ),
            (
                "connect without destination",
                |r| r.destination = None,
                "OP_CONNECT request without destination",
            ),
            (
                "address that is no address",
                |r| r.destination.as_mut().expect("set").address = "db.internal".into(),
                "destination.address 'db.internal' is not an IP address",
            ),
            (
                "host name that is no host name",
                |r| r.destination.as_mut().expect("set").host_name = "db..internal".into(),
                "destination.host_name 'db..internal' is not a host name: it has an empty label",
            ),
            (
                "host name not as rules compare names",
                |r| r.destination.as_mut().expect("set").host_name = "DB.internal.".into(),
                "destination.host_name 'DB.internal.' is not lower case without a trailing dot",
            ),
            (
                "port above 65535",
                |r| r.destination.as_mut().expect("set").port = 70_000,
                "destination.port 70000 is above 65535",
            ),
            (
                "blank requester",
                |r| r.requester = "  ".into(),
                "requester is empty",
            ),
            (
                "long comm",
                |r| r.comm = "c".repeat(MAX_TEXT + 1),
                "comm is 4097 bytes; at most 4096",
            ),
            (
                "too many args",
                |r| r.argv = vec!["a".into(); MAX_ARGV + 1],
                "argv has 257 entries; at most 256",
            ),
            (
                "long arg",
                |r| r.argv = vec!["a".into(), "b".repeat(MAX_TEXT + 1)],
                "argv[1] is 4097 bytes",
            ),
            (
                "too many ancestors",
                |r| r.ancestors = vec![Ancestor::default(); MAX_ANCESTORS + 1],
                "ancestors has 9 entries; at most 8",
            ),
            (
                "long ancestor argument",
                |r| {
                    r.ancestors = vec![Ancestor {
                        argv: vec!["x".repeat(MAX_TEXT + 1)],
                        ..Default::default()
                    }]
                },
                "ancestors[0].argv[0] is 4097 bytes",
            ),
            (
                "request too large",
                |r| r.argv = vec!["a".repeat(MAX_TEXT); MAX_ARGV],
                "bytes; at most 65536 (redact or truncate argv)",
            ),
            (
                "too many environment variables",
                |r| {
                    r.env = (0..17)
                        .map(|i| latch_proto::v1::EnvVar {
                            name: format!("V{i}"),
                            value: String::new(),
                        })
                        .collect()
                },
                "env has 17 entries; at most 16",
            ),
            (
                "an environment name that is no name",
                |r| {
                    r.env = vec![latch_proto::v1::EnvVar {
                        name: "A=B".into(),
                        value: String::new(),
                    }]
                },
                "env[0].name 'A=B' is not an environment variable name",
            ),
            (
                "an environment value with a control character",
                |r| {
                    r.env = vec![latch_proto::v1::EnvVar {
                        name: "SESSION".into(),
                        value: "s\u{1b}[2J".into(),
                    }]
                },
                "env[0].value (SESSION) has a control character",
            ),
            (
                "an environment value too long",
                |r| {
                    r.env = vec![latch_proto::v1::EnvVar {
                        name: "SESSION".into(),
                        value: "x".repeat(MAX_ENV_VALUE + 1),
                    }]
                },
                "env[0].value is 2049 bytes; at most 2048",
            ),
            (
                "a trace id that is no trace id",
                |r| {
                    r.trace = Some(latch_proto::v1::TraceContext {
                        trace_id: "4BF92F3577B34DA6A3CE929D0E0E4736".into(),
                        parent_id: "00f067aa0ba902b7".into(),
                        sampled: true,
                    })
                },
                "trace '4BF92F3577B34DA6A3CE929D0E0E4736'/'00f067aa0ba902b7' is not a trace id",
            ),
            (
                "justification too long",
                |r| r.justification = "x".repeat(MAX_JUSTIFICATION + 1),
                "justification is 2001 bytes; at most 2000",
            ),
            (
                "justification of blanks",
                |r| r.justification = " \n ".into(),
                "justification is empty",
            ),
            (
                "justification with an escape sequence",
                |r| r.justification = "ok\u{1b}[2J".into(),
                "justification has a control character (\\u{1b}) at byte 2",
            ),
        ];
        for (what, edit, want) in cases {
            let mut r = connect();
            edit(&mut r);
            let got = message(validate_request(&r));
            assert!(got.contains(want), "{what}: {got:?} does not say {want:?}");
        }
    }

    fn decision(kind: DecisionKind, secs: u64, scope: GrantScope) -> DecideRequest {
        DecideRequest {
            approval_id: "a1".into(),
            kind: kind as i32,
            duration_seconds: secs,
            scope: scope as i32,
            reason: " change window ".into(),
        }
    }

    #[test]
    fn a_decision_is_checked_the_same_for_every_channel() {
        let ok = validate_decide(&decision(
            DecisionKind::ApproveFor,
            3600,
            GrantScope::Workload,
        ))
        .expect("a grant for an hour");
        assert_eq!(ok.duration, Duration::from_secs(3600));
        assert_eq!(ok.reason, "change window", "the reason is trimmed");
        assert!(validate_decide(&decision(DecisionKind::Deny, 0, GrantScope::Unspecified)).is_ok());
        let never = MAX_GRANT.as_secs() + 1;
        let cases: &[(&str, DecideRequest, &str)] = &[
            (
                "no kind",
                decision(DecisionKind::Unspecified, 0, GrantScope::Unspecified),
                "kind is unspecified",
            ),
            (
                "unknown kind",
                DecideRequest {
                    kind: 42,
                    ..decision(DecisionKind::Deny, 0, GrantScope::Unspecified)
                },
                "kind 42 is unknown",
            ),
            (
                "unknown scope",
                DecideRequest {
                    scope: 42,
                    ..decision(DecisionKind::ApproveFor, 60, GrantScope::Process)
                },
                "scope 42 is unknown",
            ),
            (
                "blank reason",
                DecideRequest {
                    reason: " ".into(),
                    ..decision(DecisionKind::Deny, 0, GrantScope::Unspecified)
                },
                "reason is mandatory",
            ),
            (
                "reason too long",
                DecideRequest {
                    reason: "r".repeat(MAX_REASON + 1),
                    ..decision(DecisionKind::Deny, 0, GrantScope::Unspecified)
                },
                "reason is 2049 bytes; at most 2048",
            ),
            (
                "grant of no time",
                decision(DecisionKind::ApproveFor, 0, GrantScope::Workload),
                "duration_seconds 0 is out of range",
            ),
            (
                "grant too long",
                decision(DecisionKind::ApproveFor, never, GrantScope::Workload),
                "is out of range: 1 to 2592000",
            ),
            (
                "grant without scope",
                decision(DecisionKind::ApproveFor, 60, GrantScope::Unspecified),
                "scope is unspecified",
            ),
            (
                "once with a duration",
                decision(DecisionKind::ApproveOnce, 60, GrantScope::Unspecified),
                "takes no duration or scope",
            ),
            (
                "deny with a scope",
                decision(DecisionKind::Deny, 0, GrantScope::Process),
                "takes no duration or scope",
            ),
            (
                "bad request id",
                DecideRequest {
                    approval_id: "a\n1".into(),
                    ..decision(DecisionKind::Deny, 0, GrantScope::Unspecified)
                },
                "approval_id 'a\\n1' contains whitespace or control characters",
            ),
        ];
        for (what, d, want) in cases {
            let got = message(validate_decide(d));
            assert!(got.contains(want), "{what}: {got:?} does not say {want:?}");
        }
    }

    #[test]
    fn an_audit_query_is_checked_before_it_reaches_the_store() {
        let q = QueryAuditRequest {
            host_id: "h1".into(),
            since_unix_ms: 5,
            ..Default::default()
        };
        let f = audit_filter(&q).expect("a plain query");
        assert_eq!((f.host_id.as_str(), f.since_ms), ("h1", 5));
        let cases: &[(&str, QueryAuditRequest, &str)] = &[
            (
                "negative cursor",
                QueryAuditRequest {
                    after_seq: -1,
                    ..Default::default()
                },
                "after_seq -1 is negative",
            ),
            (
                "negative time",
                QueryAuditRequest {
                    until_unix_ms: -1,
                    ..Default::default()
                },
                "must not be negative",
            ),
            (
                "long kind",
                QueryAuditRequest {
                    kind: "k".repeat(129),
                    ..Default::default()
                },
                "kind is 129 bytes; at most 128",
            ),
        ];
        for (what, q, want) in cases {
            let got = message(audit_filter(q));
            assert!(got.contains(want), "{what}: {got:?} does not say {want:?}");
        }
    }
}
