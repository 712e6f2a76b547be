//! `latch-agent whyheld`: the workload's side of a hold, in words a person or an AI agent can
//! act on ("held: … waiting for 1 approver from dba-oncall, deadline …", "denied by alice: …").

use std::{io::Write, path::Path, process::ExitCode};

use latch_agent::workload::{self, RequestView, Scope, WorkloadError, WorkloadRequest};

use crate::terminal::{clean, safe_json};

fn when(unix_ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// One line saying where a request stands.
pub fn describe(v: &RequestView) -> String {
    let h = &v.hold;
    let what = format!(
        "{} {} ({} {}, rule {})",
        clean(&v.request),
        v.approval_id
            .as_deref()
            .map(|a| format!("[{}]", clean(a)))
            .unwrap_or_default(),
        clean(&h.op),
        clean(&h.target),
        clean(&h.rule)
    )
    .replace("  ", " ");
    match v.state.as_str() {
        "held" => {
            let who = if h.approver_groups.is_empty() {
                format!(
                    "{} approver{}",
                    h.approvers_needed,
                    if h.approvers_needed == 1 { "" } else { "s" }
                )
            } else {
                format!(
                    "{} approver{} from {}",
                    h.approvers_needed,
                    if h.approvers_needed == 1 { "" } else { "s" },
                    clean(&h.approver_groups.join(" or "))
                )
            };
            format!(
                "held: {what}, waiting for {who}; at {} it is {}",
                when(h.deadline_unix_ms),
                if h.on_timeout == "allow" {
                    "allowed"
                } else {
                    "denied"
                }
            )
        }
        "ended" => format!("ended: {what}: its process went away before a decision"),
        state => {
            let by = v.decided_by.as_deref().map(clean).unwrap_or_default();
            match v.reason.as_deref() {
                Some(r) => format!("{state} by {by}: {} — {what}", clean(r)),
                None => format!("{state} by {by} — {what}"),
            }
        }
    }
}

fn exit_of(v: &RequestView) -> ExitCode {
    ExitCode::from(match v.state.as_str() {
        "allowed" => 0,
        "denied" => 5,
        "held" => 6,
        _ => 7,
    })
}

/// What is asked about one request.
pub enum Ask {
    /// Where it stands.
    Outcome,
    /// Its decision, waiting this many seconds at most.
    Wait(u64),
    /// Give this justification.
    Justify(String),
}

/// Runs the command; the exit code says where the request stands (see the binary's doc).
pub fn run(socket: &Path, request: Option<String>, ask: Ask, scope: Scope, json: bool) -> ExitCode {
    let req = match request.as_deref().map(str::parse) {
        None => WorkloadRequest::Held { scope },
        Some(Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
        Some(Ok(request)) => match ask {
            Ask::Outcome => WorkloadRequest::Outcome { request, scope },
            Ask::Wait(timeout_s) => WorkloadRequest::Wait {
                request,
                scope,
                timeout_s,
            },
            Ask::Justify(text) => WorkloadRequest::Justify {
                request,
                scope,
                text,
            },
        },
    };
    if let Err(e) = req.check() {
        let flag = match req {
            WorkloadRequest::Justify { .. } => "--justify",
            _ => "--timeout",
        };
        eprintln!("error: {flag}: {e}");
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let data = match rt.block_on(workload::call(socket, &req)) {
        Ok(d) => d,
        Err(WorkloadError::Refused { code, message }) => {
            eprintln!("error: {message}");
            return ExitCode::from(match code.as_str() {
                "not-found" => 3,
                "not-held" => 7,
                "bad-request" => 2,
                _ => 1,
            });
        }
        Err(e @ WorkloadError::Socket { .. }) => {
            eprintln!("error: {e}");
            return ExitCode::from(4);
        }
    };
    // A closed pipe (`| head`) ends the output quietly.
    let mut out = std::io::stdout().lock();
    if json {
        let _ = writeln!(out, "{}", safe_json(&data));
    }
    if let WorkloadRequest::Held { .. } = req {
        let held: Vec<RequestView> =
            serde_json::from_value(data["held"].clone()).unwrap_or_default();
        if !json {
            if held.is_empty() {
                let _ = writeln!(out, "nothing of this process tree is held");
            }
            for v in &held {
                let _ = writeln!(out, "{}", describe(v));
            }
        }
        return ExitCode::SUCCESS;
    }
    match serde_json::from_value::<RequestView>(data) {
        Ok(v) => {
            let justified = matches!(req, WorkloadRequest::Justify { .. });
            if !json {
                let _ = writeln!(out, "{}", describe(&v));
            }
            if justified {
                ExitCode::SUCCESS
            } else {
                exit_of(&v)
            }
        }
        Err(e) => {
            eprintln!("error: unreadable reply: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::terminal::deceptive;
    use latch_agent::workload::Hold;

    fn view(state: &str) -> RequestView {
        RequestView {
            request: "42.1000".into(),
            approval_id: Some("9f3c".into()),
            state: state.into(),
            pid: 42,
            hold: Hold {
                op: "connect".into(),
                target: "10.0.0.5:5432".into(),
                rule: "prod-db".into(),
                workload: "agents".into(),
                held_since_unix_ms: 0,
                deadline_unix_ms: 60_000,
                on_timeout: "deny".into(),
                approvers_needed: 2,
                approver_groups: vec!["dba-oncall".into()],
            },
            justification: None,
            decided_by: None,
            reason: None,
            decided_at_unix_ms: None,
        }
    }

    #[test]
    fn each_state_reads_as_a_sentence_with_its_exit_code() {
        let held = view("held");
        assert_eq!(
            describe(&held),
            "held: 42.1000 [9f3c] (connect 10.0.0.5:5432, rule prod-db), waiting for 2 approvers \
             from dba-oncall; at 1970-01-01T00:01:00Z it is denied"
        );
        assert_eq!(exit_of(&held), ExitCode::from(6));
        let denied = RequestView {
            decided_by: Some("alice".into()),
            reason: Some("use the read replica\u{1b}[2J".into()),
            ..view("denied")
        };
        assert_eq!(
            describe(&denied),
            "denied by alice: use the read replica?[2J — 42.1000 [9f3c] (connect 10.0.0.5:5432, rule prod-db)"
        );
        assert_eq!(exit_of(&denied), ExitCode::from(5));
        let allowed = RequestView {
            decided_by: Some("timeout".into()),
            approval_id: None,
            ..view("allowed")
        };
        assert_eq!(
            describe(&allowed),
            "allowed by timeout — 42.1000 (connect 10.0.0.5:5432, rule prod-db)"
        );
        assert_eq!(exit_of(&allowed), ExitCode::SUCCESS);
        assert_eq!(exit_of(&view("ended")), ExitCode::from(7));
        let base = view("denied");
        let spoof = RequestView {
            hold: Hold {
                target: "/tmp/\u{202e}txt.exe".into(),
                ..base.hold.clone()
            },
            reason: Some("ok\u{9b}31m".into()),
            decided_by: Some("alice".into()),
            ..base
        };
        let said = describe(&spoof);
        assert!(!said.chars().any(deceptive), "{said:?}");
        let json = safe_json(&serde_json::to_value(&spoof).expect("json"));
        assert!(!json.chars().any(|c| deceptive(c) && c != '\n'), "{json}");
        assert!(
            json.contains("\\u202e") && json.contains("\\u009b"),
            "{json}"
        );
        let back: RequestView = serde_json::from_str(&json).expect("still JSON");
        assert_eq!(back, spoof);
        assert!(describe(&view("ended")).starts_with("ended: 42.1000"));
    }
}
