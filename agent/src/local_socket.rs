//! The agent's local Unix sockets (admin and workload): binding one in place of a stale file,
//! and one request line each way as a client.
//!
//! Owns: the file, its mode, the line exchange. Must not: know what the lines mean.

use std::{os::unix::fs::PermissionsExt, path::Path};

use serde::{de::DeserializeOwned, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};

/// Binds `path` with `mode`, creating its directory; a file left by an agent that died is
/// replaced, a live agent's is not.
pub fn bind(path: &Path, mode: u32) -> Result<UnixListener, String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    if path.exists() {
        // A live agent answers; a stale file from a crash does not.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err("another agent is already listening here".into());
        }
        std::fs::remove_file(path).map_err(|e| e.to_string())?;
    }
    let listener = UnixListener::bind(path).map_err(|e| e.to_string())?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| e.to_string())?;
    Ok(listener)
}

/// Sends `req` as one line to the socket at `path` and reads one line back. `hint` is added
/// to a failure to connect (who can reach this socket).
pub async fn call<Q: Serialize, A: DeserializeOwned>(
    path: &Path,
    req: &Q,
    hint: &str,
) -> Result<A, String> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|e| format!("{e} ({hint})"))?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_string(req).map_err(|e| e.to_string())?;
    line.push('\n');
    write
        .write_all(line.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let reply = BufReader::new(read)
        .lines()
        .next_line()
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the agent closed the connection without answering")?;
    serde_json::from_str(&reply).map_err(|e| format!("unreadable reply: {e}"))
}
