//! The socket: bound for every local user, each connection tied to the process that made it.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};

use super::{
    board::{cgroup_of, Board, Caller},
    lineage,
    protocol::{parse_request, RequestView, Scope, WorkloadRequest, MAX_LINE},
};
use crate::admin::AdminResponse;

/// Connections one user may hold open at once: a workload that opens more cannot starve
/// another user's callers.
const PER_USER: usize = 32;
/// Connections served at once, whoever holds them: the agent's file descriptors are for its
/// own work first.
const MAX_CONNECTIONS: usize = 256;
/// A connection that sends nothing for this long is closed (a `wait` in progress is not idle).
const IDLE: Duration = Duration::from_secs(60);

/// Side channel errors.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// The socket cannot be created or reached.
    #[error("workload socket {}: {reason}", path.display())]
    Socket {
        /// Path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The agent answered with an error.
    #[error("{message}")]
    Refused {
        /// `bad-request`, `not-found`, `not-held`, `already-justified`, `unavailable`,
        /// `unknown-caller`, `busy`, `failed`.
        code: String,
        /// What it said.
        message: String,
    },
}

/// Binds the socket (replacing a stale one) so that every local user can connect: who may
/// read what is decided per caller from its credentials, not by the file's mode.
pub fn bind(path: &Path) -> Result<UnixListener, WorkloadError> {
    crate::local_socket::bind(path, 0o666).map_err(|reason| WorkloadError::Socket {
        path: path.to_path_buf(),
        reason,
    })
}

/// Who is on the other end, read once when it connects.
fn caller_of(stream: &UnixStream) -> Result<Caller, String> {
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("reading the caller's credentials: {e}"))?;
    let pid = cred
        .pid()
        .and_then(|p| u32::try_from(p).ok())
        .filter(|p| *p > 0)
        .ok_or("the caller's process is not visible from the agent's pid namespace")?;
    let (me, ppid) = lineage::stamp(pid).ok_or("the calling process is gone")?;
    Ok(Caller {
        me,
        parent: lineage::stamp(ppid).map(|(s, _)| s),
        uid: cred.uid(),
        cgroup: cgroup_of(pid),
        parent_cgroup: cgroup_of(ppid),
    })
}

fn not_found(id: &impl std::fmt::Display) -> AdminResponse {
    // The same words whether the id does not exist or belongs to another tree: a caller learns
    // nothing about requests it may not see.
    AdminResponse::err("not-found", format!("no request {id} in this process tree"))
}

fn data(v: &impl serde::Serialize) -> AdminResponse {
    AdminResponse::ok(serde_json::to_value(v).unwrap_or_default())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

async fn one(
    board: &Board,
    caller: &Caller,
    scope: Scope,
    id: crate::kernel::RequestId,
) -> Option<RequestView> {
    let (board, caller) = (board.clone(), caller.clone());
    blocking(move || board.one_for(&caller, scope, id))
        .await
        .flatten()
}

async fn answer(board: &Board, caller: &Caller, line: &str) -> AdminResponse {
    let req = match parse_request(line) {
        Ok(r) => r,
        Err(e) => return AdminResponse::err("bad-request", format!("bad request: {e}")),
    };
    match req {
        WorkloadRequest::Held { scope } => {
            let (b, c) = (board.clone(), caller.clone());
            let held = blocking(move || b.held_for(&c, scope))
                .await
                .unwrap_or_default();
            data(&serde_json::json!({ "held": held }))
        }
        WorkloadRequest::Justify {
            request,
            scope,
            text,
        } => {
            let (b, c) = (board.clone(), caller.clone());
            match blocking(move || b.justify(&c, scope, request, &text)).await {
                Some(Ok(v)) => data(&v),
                Some(Err(super::JustifyError::NotFound(_))) => not_found(&request),
                Some(Err(e @ super::JustifyError::NotHeld(..))) => {
                    AdminResponse::err("not-held", e.to_string())
                }
                Some(Err(e @ super::JustifyError::Already(_))) => {
                    AdminResponse::err("already-justified", e.to_string())
                }
                Some(Err(e @ super::JustifyError::NoReviewer)) => {
                    AdminResponse::err("unavailable", e.to_string())
                }
                None => AdminResponse::err("failed", "the agent is stopping".into()),
            }
        }
        WorkloadRequest::Outcome { request, scope } => {
            match one(board, caller, scope, request).await {
                Some(v) => data(&v),
                None => not_found(&request),
            }
        }
        WorkloadRequest::Wait {
            request,
            scope,
            timeout_s,
        } => {
            // Subscribed before the first look: a decision between the look and the wait
            // still wakes it.
            let mut changed = board.subscribe();
            let until = tokio::time::Instant::now() + Duration::from_secs(timeout_s);
            // Whether the caller may see it is judged once; after that, every change on the
            // host is a look at one entry, without `/proc`.
            let Some(mut v) = one(board, caller, scope, request).await else {
                return not_found(&request);
            };
            loop {
                if v.state != "held" {
                    return data(&v);
                }
                match tokio::time::timeout_at(until, changed.changed()).await {
                    Ok(Ok(())) => {}
                    // Timed out, or the agent is stopping: the request as it stands.
                    _ => return data(&v),
                }
                match board.peek(request) {
                    Some(now) => v = now,
                    // Forgotten while waited on (an hour, or a thousand decisions later).
                    None => return data(&v),
                }
            }
        }
    }
}

/// Serves callers until the listener fails.
pub async fn serve(listener: UnixListener, board: Board) {
    let open: Arc<Mutex<HashMap<u32, usize>>> = Arc::default();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::error!("workload socket accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (board, open) = (board.clone(), open.clone());
        let slot = slots.clone().try_acquire_owned();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let refuse = |code: &str, why: String| reply(AdminResponse::err(code, why));
            let Ok(_slot) = slot else {
                let why =
                    format!("the agent serves {MAX_CONNECTIONS} connections at once; try again");
                let _ = write.write_all(refuse("busy", why).as_bytes()).await;
                return;
            };
            let caller = match caller_of(write.as_ref()) {
                Ok(c) => c,
                Err(e) => {
                    // A caller that connects and exits at once is no news: not worth a warning
                    // each time.
                    tracing::debug!("workload socket: refused a caller: {e}");
                    let _ = write
                        .write_all(refuse("unknown-caller", e).as_bytes())
                        .await;
                    return;
                }
            };
            let uid = caller.uid;
            let admitted = {
                let mut open = open.lock().unwrap_or_else(|p| p.into_inner());
                let n = open.entry(uid).or_default();
                (*n < PER_USER).then(|| *n += 1).is_some()
            };
            if !admitted {
                let why =
                    format!("user {uid} has {PER_USER} connections open to this socket; close one");
                let _ = write.write_all(refuse("busy", why).as_bytes()).await;
                return;
            }
            let mut reader = BufReader::new(read);
            let mut line = Vec::new();
            loop {
                line.clear();
                // One line at a time, at most MAX_LINE bytes of it held, and not forever.
                let read = tokio::time::timeout(
                    IDLE,
                    (&mut reader)
                        .take(MAX_LINE as u64 + 1)
                        .read_until(b'\n', &mut line),
                )
                .await;
                let resp = match read {
                    Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                    Ok(Ok(_)) if line.last() != Some(&b'\n') && line.len() > MAX_LINE => {
                        let why = format!("bad request: a line is longer than {MAX_LINE} bytes");
                        let _ = write.write_all(refuse("bad-request", why).as_bytes()).await;
                        break;
                    }
                    Ok(Ok(_)) => {
                        let text = String::from_utf8_lossy(&line);
                        answer(&board, &caller, text.trim_end_matches(['\n', '\r'])).await
                    }
                };
                if write.write_all(reply(resp).as_bytes()).await.is_err() {
                    break;
                }
            }
            let mut open = open.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = open.get_mut(&uid) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    open.remove(&uid);
                }
            }
        });
    }
}

fn reply(r: AdminResponse) -> String {
    let mut text = serde_json::to_string(&r).unwrap_or_else(|_| "{\"ok\":false}".into());
    text.push('\n');
    text
}

/// Sends one request and returns the reply's data (or the agent's error).
pub async fn call(path: &Path, req: &WorkloadRequest) -> Result<serde_json::Value, WorkloadError> {
    let resp: AdminResponse = crate::local_socket::call(path, req, "is latch-agent running here?")
        .await
        .map_err(|reason| WorkloadError::Socket {
            path: path.to_path_buf(),
            reason,
        })?;
    resp.into_data()
        .map_err(|(code, message)| WorkloadError::Refused { code, message })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn ask(stream: &mut BufReader<UnixStream>, line: &str) -> AdminResponse {
        stream
            .get_mut()
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write");
        let mut reply = String::new();
        stream.read_line(&mut reply).await.expect("read");
        serde_json::from_str(&reply).expect("a reply line")
    }

    /// Over the real socket: a bad line is refused by name and the connection goes on; one
    /// user's connections beyond the limit are refused, and a closed one frees its place.
    #[tokio::test]
    async fn bad_lines_are_named_and_one_user_cannot_take_every_connection() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("w.sock");
        let listener = bind(&path).expect("bind");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).expect("stat").permissions(),
        );
        assert_eq!(mode & 0o777, 0o666);
        tokio::spawn(serve(listener, Board::new()));
        let mut open = Vec::new();
        for _ in 0..PER_USER {
            let mut s = BufReader::new(UnixStream::connect(&path).await.expect("connect"));
            let r = ask(&mut s, r#"{"cmd":"held"}"#).await;
            assert!(r.ok, "{:?}", r.error);
            open.push(s);
        }
        let r = ask(&mut open[0], r#"{"cmd":"held","scope":"everyone"}"#).await;
        assert_eq!(r.code.as_deref(), Some("bad-request"));
        assert!(
            r.error
                .as_deref()
                .is_some_and(|e| e.contains("unknown variant `everyone`")),
            "{:?}",
            r.error
        );
        let r = ask(&mut open[0], r#"{"cmd":"outcome","request":"7.7"}"#).await;
        assert_eq!(r.code.as_deref(), Some("not-found"));

        let mut extra = BufReader::new(UnixStream::connect(&path).await.expect("connect"));
        let mut reply = String::new();
        extra.read_line(&mut reply).await.expect("read");
        let r: AdminResponse = serde_json::from_str(&reply).expect("reply");
        assert_eq!(r.code.as_deref(), Some("busy"), "{reply}");
        drop(open.pop());
        // The closed connection's place is freed once the server sees it close.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let mut s = BufReader::new(UnixStream::connect(&path).await.expect("connect"));
            s.get_mut()
                .write_all(b"{\"cmd\":\"held\"}\n")
                .await
                .expect("write");
            let mut reply = String::new();
            s.read_line(&mut reply).await.expect("read");
            if reply.contains("\"ok\":true") {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{reply}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A line longer than the limit is refused without being held whole, and the
        // connection ends.
        let long = format!(
            "{{\"cmd\":\"held\",\"x\":\"{}\"}}",
            "a".repeat(MAX_LINE * 4)
        );
        let r = ask(&mut open[0], &long).await;
        assert_eq!(r.code.as_deref(), Some("bad-request"));
        assert!(
            r.error
                .as_deref()
                .is_some_and(|e| e.contains("longer than 4096 bytes")),
            "{:?}",
            r.error
        );
        // A second agent on the same path is refused; a stale file is replaced.
        let e = bind(&path).expect_err("in use").to_string();
        assert!(e.contains("already listening"), "{e}");
    }
}
