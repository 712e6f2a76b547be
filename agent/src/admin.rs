//! The local admin socket: how a person (or a script) on the host lists and decides held
//! operations while no central service is configured, and reads the agent's status.
//!
//! The protocol is one JSON object per line each way. The socket is created mode 0600 (root
//! only): whoever can write to it can approve operations.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::UnixListener,
};

use crate::{
    engine_task::EngineHandle,
    kernel::{Decision, EngineError, RequestId},
};

/// Longest request line accepted.
pub const MAX_LINE: usize = 64 * 1024;

/// A request on the admin socket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase", deny_unknown_fields)]
pub enum AdminRequest {
    // Empty struct variants, not unit ones: serde ignores unknown fields of unit variants in
    // an internally tagged enum, and a typo must not pass silently.
    /// List held operations.
    Pending {},
    /// The agent's status.
    Status {},
    /// Decide a held operation.
    Decide {
        /// Which.
        id: RequestId,
        /// What.
        decision: Decision,
    },
}

/// A reply on the admin socket.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AdminResponse {
    /// Whether the request succeeded.
    pub ok: bool,
    /// What went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Kind of error, for scripts: `bad-request`, `not-found`, `failed`, `unavailable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

impl AdminResponse {
    pub(crate) fn ok(data: serde_json::Value) -> Self {
        Self {
            ok: true,
            error: None,
            code: None,
            data: Some(data),
        }
    }

    /// The reply's data, or its error code and message.
    pub(crate) fn into_data(self) -> Result<serde_json::Value, (String, String)> {
        if self.ok {
            Ok(self.data.unwrap_or(serde_json::Value::Null))
        } else {
            Err((
                self.code.unwrap_or_default(),
                self.error.unwrap_or_else(|| "refused".into()),
            ))
        }
    }

    pub(crate) fn err(code: &str, error: String) -> Self {
        Self {
            ok: false,
            error: Some(error),
            code: Some(code.into()),
            data: None,
        }
    }
}

/// Admin socket errors.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// A request line that is not a valid request.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The socket cannot be created or reached.
    #[error("admin socket {}: {reason}", path.display())]
    Socket {
        /// Path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The agent answered with an error.
    #[error("{0}")]
    Refused(String),
}

/// Parses one request line.
pub fn parse_request(line: &str) -> Result<AdminRequest, AdminError> {
    if line.len() > MAX_LINE {
        return Err(AdminError::BadRequest(format!(
            "request is {} bytes; the limit is {MAX_LINE}",
            line.len()
        )));
    }
    serde_json::from_str(line).map_err(|e| AdminError::BadRequest(e.to_string()))
}

async fn answer(engine: &EngineHandle, line: &str) -> AdminResponse {
    let req = match parse_request(line) {
        Ok(r) => r,
        Err(e) => return AdminResponse::err("bad-request", e.to_string()),
    };
    let unavailable = || AdminResponse::err("unavailable", "the kernel engine has stopped".into());
    match req {
        AdminRequest::Pending {} => match engine.pending().await {
            Ok(Ok(v)) => AdminResponse::ok(serde_json::to_value(v).unwrap_or_default()),
            Ok(Err(e)) => AdminResponse::err("failed", e),
            Err(_) => unavailable(),
        },
        AdminRequest::Status {} => match engine.status().await {
            Ok(Ok(s)) => AdminResponse::ok(serde_json::to_value(s).unwrap_or_default()),
            Ok(Err(e)) => AdminResponse::err("failed", e),
            Err(_) => unavailable(),
        },
        AdminRequest::Decide { id, decision } => match engine.decide(id, decision).await {
            Ok(Ok(_)) => {
                AdminResponse::ok(serde_json::json!({ "id": id.to_string(), "decision": decision }))
            }
            Ok(Err(e @ EngineError::NotPending(_))) => {
                AdminResponse::err("not-found", e.to_string())
            }
            Ok(Err(e)) => AdminResponse::err("failed", e.to_string()),
            Err(_) => unavailable(),
        },
    }
}

/// Binds the admin socket (replacing a stale one) with mode 0600.
pub fn bind(path: &Path) -> Result<UnixListener, AdminError> {
    crate::local_socket::bind(path, 0o600).map_err(|reason| AdminError::Socket {
        path: path.to_path_buf(),
        reason,
    })
}

/// Serves admin requests until the listener fails.
pub async fn serve(listener: UnixListener, engine: EngineHandle) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("admin socket accept failed: {e}");
                continue;
            }
        };
        let engine = engine.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read.take(MAX_LINE as u64 * 16)).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let resp = answer(&engine, &line).await;
                let mut text =
                    serde_json::to_string(&resp).unwrap_or_else(|_| "{\"ok\":false}".into());
                text.push('\n');
                if write.write_all(text.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// Sends one request and returns the reply's data (or the agent's error).
pub async fn call(path: &Path, req: &AdminRequest) -> Result<serde_json::Value, AdminError> {
    let resp: AdminResponse =
        crate::local_socket::call(path, req, "is latch-agent running, and are you root?")
            .await
            .map_err(|reason| AdminError::Socket {
                path: path.to_path_buf(),
                reason,
            })?;
    resp.into_data()
        .map_err(|(_, message)| AdminError::Refused(message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::Scope;
    use std::time::Duration;

    #[test]
    fn parses_each_request() {
        assert_eq!(
            parse_request(r#"{"cmd":"pending"}"#).expect("valid"),
            AdminRequest::Pending {}
        );
        let d = parse_request(r#"{"cmd":"decide","id":"42.1000","decision":{"verdict":"grant","scope":"workload","ttl":900,"uses":null}}"#)
            .expect("valid");
        assert_eq!(
            d,
            AdminRequest::Decide {
                id: RequestId {
                    tid: 42,
                    created_ns: 1000
                },
                decision: Decision::Grant {
                    scope: Scope::Workload,
                    ttl: Duration::from_secs(900),
                    uses: None
                },
            }
        );
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let cases = [
            ("not json", "expected"),
            (r#"{"cmd":"reboot"}"#, "unknown variant `reboot`"),
            (
                r#"{"cmd":"decide","id":"x","decision":{"verdict":"allow"}}"#,
                "'x' is not a request id",
            ),
            (
                r#"{"cmd":"decide","id":"1.2","decision":{"verdict":"maybe"}}"#,
                "unknown variant `maybe`",
            ),
            (
                r#"{"cmd":"decide","id":"1.2","decision":{"verdict":"grant","scope":"planet","ttl":1,"uses":null}}"#,
                "unknown variant `planet`",
            ),
            (
                r#"{"cmd":"decide","id":"1.2","decision":{"verdict":"grant","scope":"host","ttl":-5,"uses":null}}"#,
                "negative",
            ),
            (r#"{"cmd":"pending","extra":1}"#, "unknown field `extra`"),
        ];
        for (line, want) in cases {
            let e = parse_request(line).expect_err(line).to_string();
            assert!(e.contains(want), "{line}: {e}");
        }
        let huge = format!("{{\"cmd\":\"pending\",\"x\":\"{}\"}}", "a".repeat(MAX_LINE));
        assert!(parse_request(&huge)
            .expect_err("too long")
            .to_string()
            .contains("limit"));
    }
}
