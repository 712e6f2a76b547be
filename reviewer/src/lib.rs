//! The reference automatic reviewer: an HTTP service that speaks the protocol of central's
//! `auto` review step (`latch_central::auto_protocol`) and decides by fixed rules, with no
//! model, so that what it answers can be predicted and tested:
//!
//! - **deny** when a word of `deny_words` appears in the held process's command line, in the
//!   program it runs or in the workload's justification (case-insensitive);
//! - **approve** a connect to a port of `approve_ports`, or an exec of a program of
//!   `approve_programs`;
//! - **escalate** everything else, saying why.
//!
//! It verifies central's signature and signs its answer with the same secret. It owns the
//! reviewer's side of the protocol; it must not reach into central beyond that module.
//!
//! A model goes behind the same interface the same way: verify the signature, give the model
//! the request (it is already masked) and the workload's justification as untrusted text, map
//! its output to approve / deny / escalate with a rationale and a confidence, sign the answer.

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
    Router,
};
use latch_central::auto_protocol::{self as protocol, ReviewAnswer, ReviewRequest, Verdict};
use serde::Deserialize;

/// What the reviewer decides by.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// Ports whose connects it approves.
    #[serde(default)]
    pub approve_ports: Vec<u32>,
    /// Programs whose execs it approves (exact paths).
    #[serde(default)]
    pub approve_programs: Vec<String>,
    /// Words that make it deny.
    #[serde(default)]
    pub deny_words: Vec<String>,
}

impl Rules {
    /// The verdict on one request, with its rationale and confidence. Pure.
    pub fn decide(&self, r: &ReviewRequest) -> (Verdict, String, f64) {
        let req = &r.request;
        let words = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_lowercase))
                        .collect()
                })
                .unwrap_or_default()
        };
        // The command line as one text, so that a listed phrase ("rm -rf") matches across words.
        let mut said = vec![words(&req["argv"]).join(" ")];
        said.push(req["exec_path"].as_str().unwrap_or_default().to_lowercase());
        said.push(r.justification.to_lowercase());
        for w in &self.deny_words {
            let w = w.to_lowercase();
            if !w.is_empty() && said.iter().any(|s| s.contains(&w)) {
                return (
                    Verdict::Deny,
                    format!("the request mentions '{w}', which this reviewer denies"),
                    1.0,
                );
            }
        }
        match req["op"].as_str().unwrap_or_default() {
            "OP_CONNECT" | "OP_SENDMSG" => {
                let port = req["destination"]["port"].as_u64().unwrap_or(0);
                if self.approve_ports.iter().any(|p| u64::from(*p) == port) {
                    return (
                        Verdict::Approve,
                        format!("port {port} is on this reviewer's list"),
                        0.8,
                    );
                }
                (
                    Verdict::Escalate,
                    format!("port {port} is not on this reviewer's list: a person decides"),
                    0.0,
                )
            }
            "OP_EXEC" => {
                let path = req["exec_path"].as_str().unwrap_or_default();
                if self.approve_programs.iter().any(|p| p == path) {
                    return (
                        Verdict::Approve,
                        format!("{path} is on this reviewer's list"),
                        0.8,
                    );
                }
                (
                    Verdict::Escalate,
                    format!("{path} is not on this reviewer's list: a person decides"),
                    0.0,
                )
            }
            other => (
                Verdict::Escalate,
                format!("an operation this reviewer does not know ({other}): a person decides"),
                0.0,
            ),
        }
    }
}

struct Service {
    secret: Vec<u8>,
    rules: Rules,
}

/// The reviewer's routes: `POST /review`.
pub fn router(secret: Vec<u8>, rules: Rules) -> Router {
    Router::new()
        .route("/review", post(review))
        .with_state(Arc::new(Service { secret, rules }))
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

async fn review(State(s): State<Arc<Service>>, headers: HeaderMap, body: Bytes) -> Response {
    let header = |h: &str| headers.get(h).and_then(|v| v.to_str().ok());
    if let Err(e) = protocol::verify(
        &s.secret,
        header(protocol::TIMESTAMP_HEADER),
        header(protocol::SIGNATURE_HEADER),
        &body,
        now_s(),
    ) {
        tracing::warn!(error = %e, "refused a request whose signature does not verify");
        return (StatusCode::UNAUTHORIZED, e.to_string()).into_response();
    }
    let req: ReviewRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("not a review request: {e}"),
            )
                .into_response()
        }
    };
    let (verdict, rationale, confidence) = s.rules.decide(&req);
    tracing::info!(approval_id = %req.approval_id, verdict = verdict.as_str(), %rationale, "reviewed");
    signed(
        &s.secret,
        &ReviewAnswer {
            approval_id: req.approval_id,
            reviewer: req.reviewer,
            verdict,
            rationale,
            confidence,
        },
    )
}

/// An answer with its signature headers.
pub fn signed(secret: &[u8], answer: &ReviewAnswer) -> Response {
    let body = serde_json::to_vec(answer).unwrap_or_default();
    let ts = now_s();
    let mut resp = (StatusCode::OK, body.clone()).into_response();
    let h = resp.headers_mut();
    h.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(&ts.to_string()) {
        h.insert(protocol::TIMESTAMP_HEADER, v);
    }
    if let Ok(v) = HeaderValue::from_str(&protocol::sign(secret, ts, &body)) {
        h.insert(protocol::SIGNATURE_HEADER, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(
        op: &str,
        port: u64,
        exec: &str,
        argv: &[&str],
        justification: &str,
    ) -> ReviewRequest {
        ReviewRequest {
            version: 1,
            approval_id: "a".into(),
            reviewer: "ref".into(),
            host_id: "h".into(),
            rule: "r".into(),
            workload: "w".into(),
            deadline_unix_ms: 0,
            request: serde_json::json!({"op": op, "destination": {"port": port},
                "exec_path": exec, "argv": argv}),
            justification: justification.into(),
        }
    }

    #[test]
    fn deny_words_then_lists_then_a_person() {
        let rules = Rules {
            approve_ports: vec![443],
            approve_programs: vec!["/usr/bin/git".into()],
            deny_words: vec!["DROP".into(), "rm -rf".into()],
        };
        let cases = [
            (
                request("OP_CONNECT", 443, "", &["curl"], ""),
                Verdict::Approve,
            ),
            (
                request("OP_CONNECT", 5432, "", &["psql"], ""),
                Verdict::Escalate,
            ),
            (
                request("OP_CONNECT", 443, "", &["psql", "-c", "drop table x"], ""),
                Verdict::Deny,
            ),
            (
                request("OP_CONNECT", 443, "", &["curl"], "then DROP it"),
                Verdict::Deny,
            ),
            (
                request("OP_EXEC", 0, "/usr/bin/git", &["sh"], ""),
                Verdict::Approve,
            ),
            (
                request("OP_EXEC", 0, "/usr/bin/rm", &["sh"], ""),
                Verdict::Escalate,
            ),
            (request("OP_UNSPECIFIED", 0, "", &[], ""), Verdict::Escalate),
            (
                request("OP_EXEC", 0, "/usr/bin/git", &["rm", "-rf", "/"], ""),
                Verdict::Deny,
            ),
        ];
        for (r, want) in cases {
            let (v, why, _) = rules.decide(&r);
            assert_eq!(v, want, "{r:?}: {why}");
            assert!(!why.is_empty());
        }
    }
}
