//! The side channel's wire format: one JSON object per line each way, the replies shaped as the
//! admin socket's (`ok`, `error`, `code`, `data`), so one client reads both.

use serde::{Deserialize, Serialize};

use crate::kernel::RequestId;

/// Longest request line accepted.
pub const MAX_LINE: usize = 4096;

/// Longest justification, in bytes (central takes no more).
pub use policy::MAX_JUSTIFICATION;

/// Longest single wait a caller may ask for; a caller that wants longer asks again.
pub const MAX_WAIT_S: u64 = 3600;

fn default_wait() -> u64 {
    300
}

/// Whose process tree a caller asks about.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The caller and its descendants.
    #[default]
    Process,
    /// The caller's parent and its descendants: how a helper program the workload runs (such
    /// as `latch-agent whyheld`) asks on behalf of the shell or agent framework that ran it.
    Parent,
}

/// A request on the workload socket.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "cmd", rename_all = "lowercase", deny_unknown_fields)]
pub enum WorkloadRequest {
    /// The held requests of the caller's tree.
    Held {
        /// Whose tree.
        #[serde(default)]
        scope: Scope,
    },
    /// One request as it stands now: held, or decided with who decided and why.
    Outcome {
        /// Which (as `held` lists it).
        request: RequestId,
        /// Whose tree it must be in.
        #[serde(default)]
        scope: Scope,
    },
    /// Says what the held operation is for: the workload's own words, masked like its
    /// arguments, shown to reviewers as unverified. Once per request, while it is held.
    Justify {
        /// Which.
        request: RequestId,
        /// Whose tree it must be in.
        #[serde(default)]
        scope: Scope,
        /// At most 2,000 bytes; no control characters but newline and tab.
        text: String,
    },
    /// Waits until the request is decided (or `timeout_s` passes), then answers as `outcome`.
    Wait {
        /// Which.
        request: RequestId,
        /// Whose tree it must be in.
        #[serde(default)]
        scope: Scope,
        /// Seconds to wait at most (1 to 3600; default 300).
        #[serde(default = "default_wait")]
        timeout_s: u64,
    },
}

/// What is held and by which rule, as the engine task knows it when the kernel holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// `exec` or `connect`, as the kernel names the operation.
    pub op: String,
    /// The program or destination.
    pub target: String,
    /// The rule that holds it.
    pub rule: String,
    /// The workload it was held in.
    pub workload: String,
    /// When it was held.
    pub held_since_unix_ms: i64,
    /// When the rule's timeout decides it, if nobody has (central's deadline once it has the
    /// request).
    pub deadline_unix_ms: i64,
    /// What the rule decides at the deadline: `deny` or `allow`.
    pub on_timeout: String,
    /// Distinct approvers the rule needs.
    pub approvers_needed: u32,
    /// Groups an approver must be in (empty: any approver).
    pub approver_groups: Vec<String>,
}

/// A request as its workload may see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestView {
    /// The agent's id of the request.
    pub request: String,
    /// Central's id (what reviewers see), once central has accepted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
    /// `held`, `allowed`, `denied`, or `ended` (the process went away undecided).
    pub state: String,
    /// The held process.
    pub pid: u32,
    /// What is held, and by which rule.
    #[serde(flatten)]
    pub hold: Hold,
    /// What the workload said it needs this for (as it gave it; reviewers see it masked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub justification: Option<String>,
    /// Who decided: a reviewer, `timeout`, `fail-mode` or `local-admin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    /// The reviewer's reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When it was decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at_unix_ms: Option<i64>,
}

/// Parses one request line, naming what is wrong with a bad one.
pub fn parse_request(line: &str) -> Result<WorkloadRequest, String> {
    if line.len() > MAX_LINE {
        return Err(format!(
            "request is {} bytes; the limit is {MAX_LINE}",
            line.len()
        ));
    }
    let req: WorkloadRequest = serde_json::from_str(line).map_err(|e| e.to_string())?;
    req.check()?;
    Ok(req)
}

impl WorkloadRequest {
    /// The checks beyond the request's shape: a wait's bounds, a justification's text. The
    /// agent runs them on every line; `whyheld` before it sends one.
    pub fn check(&self) -> Result<(), String> {
        match self {
            WorkloadRequest::Wait { timeout_s, .. } if !(1..=MAX_WAIT_S).contains(timeout_s) => {
                Err(format!(
                    "timeout_s {timeout_s} is out of range: wait 1 to {MAX_WAIT_S} seconds, and ask again to wait longer"
                ))
            }
            WorkloadRequest::Justify { text, .. } => check_justification(text),
            _ => Ok(()),
        }
    }
}

/// What central will take as a justification, said here first so that the workload hears why.
pub fn check_justification(text: &str) -> Result<(), String> {
    policy::check_justification(text).map_err(|e| format!("text {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_request_with_its_defaults() {
        let id: RequestId = "42.1000".parse().expect("id");
        let cases = [
            (
                r#"{"cmd":"held"}"#,
                WorkloadRequest::Held {
                    scope: Scope::Process,
                },
            ),
            (
                r#"{"cmd":"held","scope":"parent"}"#,
                WorkloadRequest::Held {
                    scope: Scope::Parent,
                },
            ),
            (
                r#"{"cmd":"outcome","request":"42.1000"}"#,
                WorkloadRequest::Outcome {
                    request: id,
                    scope: Scope::Process,
                },
            ),
            (
                r#"{"cmd":"wait","request":"42.1000","scope":"parent"}"#,
                WorkloadRequest::Wait {
                    request: id,
                    scope: Scope::Parent,
                    timeout_s: 300,
                },
            ),
            (
                r#"{"cmd":"justify","request":"42.1000","text":"nightly export\nstep 2"}"#,
                WorkloadRequest::Justify {
                    request: id,
                    scope: Scope::Process,
                    text: "nightly export\nstep 2".into(),
                },
            ),
            (
                r#"{"cmd":"wait","request":"42.1000","timeout_s":3600}"#,
                WorkloadRequest::Wait {
                    request: id,
                    scope: Scope::Process,
                    timeout_s: 3600,
                },
            ),
        ];
        for (line, want) in cases {
            assert_eq!(parse_request(line).expect(line), want, "{line}");
        }
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let cases = [
            ("", "EOF"),
            ("held", "expected"),
            (
                r#"{"cmd":"decide","request":"1.2"}"#,
                "unknown variant `decide`",
            ),
            (r#"{"cmd":"held","scope":"host"}"#, "unknown variant `host`"),
            (r#"{"cmd":"held","all":true}"#, "unknown field `all`"),
            (r#"{"cmd":"outcome"}"#, "missing field `request`"),
            (
                r#"{"cmd":"outcome","request":"x"}"#,
                "'x' is not a request id",
            ),
            (
                r#"{"cmd":"wait","request":"1.2","timeout_s":0}"#,
                "timeout_s 0 is out of range",
            ),
            (
                r#"{"cmd":"wait","request":"1.2","timeout_s":3601}"#,
                "timeout_s 3601 is out of range",
            ),
            (
                r#"{"cmd":"wait","request":"1.2","timeout_s":-1}"#,
                "invalid value",
            ),
            (
                r#"{"cmd":"justify","request":"1.2"}"#,
                "missing field `text`",
            ),
            (
                r#"{"cmd":"justify","request":"1.2","text":" \n "}"#,
                "text is empty",
            ),
            (
                r#"{"cmd":"justify","request":"1.2","text":"a\u001b[2J"}"#,
                "text has a control character (\\u{1b}) at byte 1",
            ),
            (
                &format!(
                    r#"{{"cmd":"justify","request":"1.2","text":"{}"}}"#,
                    "x".repeat(2001)
                ),
                "text is 2001 bytes; at most 2000",
            ),
        ];
        for (line, want) in cases {
            let e = parse_request(line).expect_err(line);
            assert!(e.contains(want), "{line}: {e}");
        }
        let huge = format!(r#"{{"cmd":"held","x":"{}"}}"#, "a".repeat(MAX_LINE));
        assert!(parse_request(&huge).expect_err("long").contains("limit"));
    }
}
