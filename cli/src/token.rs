//! Where latchctl keeps a reviewer's token between calls (`~/.config/latch/token`, 0600) and the
//! provider session a login stored beside it (`login.json`), and which token a call uses.
//!
//! It owns those two files; it must not talk to central or to the identity provider (`login`
//! does, then stores here).

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{
    client::{io, CliError},
    out::time,
};

/// `$XDG_CONFIG_HOME/latch/token`, else `~/.config/latch/token`.
pub fn token_path() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(x) if !x.is_empty() => PathBuf::from(x),
        _ => PathBuf::from(std::env::var_os("HOME")?).join(".config"),
    };
    Some(base.join("latch").join("token"))
}

/// Reads a token file (first line, trimmed).
pub fn read_token(path: &Path) -> Result<String, CliError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let t = text.lines().next().unwrap_or("").trim().to_string();
    if t.is_empty() {
        return Err(CliError::Usage(format!(
            "{}: no token in the file",
            path.display()
        )));
    }
    Ok(t)
}

/// The token: `--token-file`, else `LATCH_TOKEN`, else the stored one (`latchctl login`).
pub fn resolve_token(token_file: Option<&Path>) -> Result<String, CliError> {
    if let Some(p) = token_file {
        return read_token(p);
    }
    if let Ok(t) = std::env::var("LATCH_TOKEN") {
        if !t.trim().is_empty() {
            return Ok(t.trim().to_string());
        }
    }
    match token_path() {
        Some(p) if p.exists() => {
            let token = read_token(&p)?;
            check_not_expired(&token)?;
            Ok(token)
        }
        _ => Err(CliError::Usage(
            "no token: pass --token-file FILE, set LATCH_TOKEN, or run `latchctl login --token-file FILE`"
                .into(),
        )),
    }
}

/// Stores a token for later calls, readable by its owner only.
pub fn store_token(token: &str) -> Result<PathBuf, CliError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let path = token_path()
        .ok_or_else(|| CliError::Usage("neither XDG_CONFIG_HOME nor HOME is set".into()))?;
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(io(&path))?;
    // An existing file keeps its mode on open: make sure.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io(&path))?;
    writeln!(f, "{token}").map_err(io(&path))?;
    Ok(path)
}

/// What a provider login stored beside the token.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Session {
    /// Issuer URL.
    pub issuer: String,
    /// Client id.
    pub client_id: String,
    /// Central it was checked with.
    pub server: String,
    /// Who central says it is.
    pub subject: String,
    /// Their e-mail.
    pub email: String,
    /// When the token expires (Unix ms); 0 when unknown.
    pub expires_at_unix_ms: i64,
    /// Hex SHA-256 of the stored token: the session describes that token only.
    pub token_sha256: String,
}

/// `login.json` beside the stored token.
pub fn session_path() -> Option<PathBuf> {
    token_path().map(|p| p.with_file_name("login.json"))
}

pub(crate) fn fingerprint(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The provider session of `token`, when it was stored by `latchctl login --oidc`.
pub fn session_of(token: &str) -> Option<Session> {
    let path = session_path()?;
    let text = std::fs::read_to_string(path).ok()?;
    let s: Session = serde_json::from_str(&text).ok()?;
    (s.token_sha256 == fingerprint(token)).then_some(s)
}

/// Refuses a stored provider token that has expired, before central is asked.
pub fn check_not_expired(token: &str) -> Result<(), CliError> {
    match session_of(token) {
        Some(s)
            if s.expires_at_unix_ms > 0
                && s.expires_at_unix_ms <= latch_central::clock::now_ms() =>
        {
            Err(CliError::LoginExpired {
                at: time(s.expires_at_unix_ms),
                issuer: s.issuer,
            })
        }
        _ => Ok(()),
    }
}
