//! The connection to latch-central: server address, bearer token, TLS files, and what a
//! failure means as an exit code.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use latch_proto::v1::reviewer_service_client::ReviewerServiceClient;
use tonic::{
    metadata::MetadataValue,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
    Code, Request,
};

/// Exit codes (documented in the crate docs and `latchctl --help`).
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// Any other failure.
    pub const ERROR: u8 = 1;
    /// Bad input: usage, arguments, files.
    pub const USAGE: u8 = 2;
    /// No such request, grant, rules version.
    pub const NOT_FOUND: u8 = 3;
    /// Central unreachable or unavailable.
    pub const UNAVAILABLE: u8 = 4;
    /// Not authenticated, or not allowed.
    pub const DENIED: u8 = 5;
    /// Conflict: already decided, revoked, or another precondition failed.
    pub const CONFLICT: u8 = 6;
    /// The audit trail does not verify.
    pub const TAMPERED: u8 = 7;
}

/// Why a command failed. Each variant says what failed, with which input.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad arguments or input files.
    #[error("{0}")]
    Usage(String),
    /// Central could not be reached.
    #[error("cannot reach latch-central at {server}: {message}")]
    Unreachable {
        /// Address.
        server: String,
        /// Cause.
        message: String,
    },
    /// Central refused or failed the call.
    #[error("{}", latch_central::text::term_safe(.0.message()))]
    Status(#[from] tonic::Status),
    /// A local file.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// An export file that does not parse.
    #[error(transparent)]
    Export(#[from] latch_central::chain::ExportError),
    /// A key file.
    #[error(transparent)]
    Key(#[from] latch_central::chain::KeyError),
    /// The audit trail does not verify.
    #[error("the audit trail does not verify: {0} problem(s) found")]
    Tampered(usize),
    /// The stored identity-provider login has expired.
    #[error("your login expired at {at}; run `latchctl login --oidc --issuer {issuer} --client-id ...` again")]
    LoginExpired {
        /// When.
        at: String,
        /// The provider.
        issuer: String,
    },
    /// The identity provider could not be reached or answered nonsense.
    #[error("identity provider {0}")]
    Provider(String),
    /// The identity provider refused the login (denied, expired, unknown client).
    #[error("the identity provider refused the login: {0}")]
    LoginRefused(String),
}

impl CliError {
    /// The process exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) | CliError::Export(_) | CliError::Key(_) => exit::USAGE,
            CliError::Unreachable { .. } => exit::UNAVAILABLE,
            CliError::Io { .. } => exit::ERROR,
            CliError::Tampered(_) => exit::TAMPERED,
            CliError::LoginExpired { .. } | CliError::LoginRefused(_) => exit::DENIED,
            CliError::Provider(_) => exit::UNAVAILABLE,
            CliError::Status(s) => match s.code() {
                Code::InvalidArgument | Code::OutOfRange => exit::USAGE,
                Code::NotFound => exit::NOT_FOUND,
                Code::Unavailable | Code::DeadlineExceeded => exit::UNAVAILABLE,
                Code::Unauthenticated | Code::PermissionDenied => exit::DENIED,
                Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted => exit::CONFLICT,
                _ => exit::ERROR,
            },
        }
    }
}

/// Wraps an I/O error with its path.
pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CliError + '_ {
    move |source| CliError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// TLS files for an `https://` server: `--ca-file` (else `LATCH_CA_FILE`, else the system's trust
/// store), and `--cert-file`/`--key-file` (else `LATCH_CERT_FILE`/`LATCH_KEY_FILE`) for a server
/// that asks for a client certificate.
#[derive(Clone, Debug, Default)]
pub struct TlsFiles {
    /// CA certificates (PEM) the server's certificate must chain to.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM).
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    pub key_file: Option<PathBuf>,
}

impl TlsFiles {
    /// The flags, each falling back to its environment variable.
    pub fn or_env(self) -> TlsFiles {
        let env = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        TlsFiles {
            ca_file: self.ca_file.or_else(|| env("LATCH_CA_FILE")),
            cert_file: self.cert_file.or_else(|| env("LATCH_CERT_FILE")),
            key_file: self.key_file.or_else(|| env("LATCH_KEY_FILE")),
        }
    }

    /// The TLS configuration for `server`, the files checked first so that a bad one is named
    /// here rather than surfacing as a failed handshake.
    fn config(&self, server: &str) -> Result<Option<ClientTlsConfig>, CliError> {
        use latch_central::tls::{read_certificates, read_private_key};
        let usage = |e: latch_central::tls::TlsError| CliError::Usage(e.to_string());
        if !server.starts_with("https://") {
            if self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some() {
                return Err(CliError::Usage(format!(
                    "--ca-file, --cert-file and --key-file need an https:// --server, not '{server}'"
                )));
            }
            return Ok(None);
        }
        let mut config = ClientTlsConfig::new();
        config = match &self.ca_file {
            Some(p) => {
                read_certificates("--ca-file", p).map_err(usage)?;
                config.ca_certificate(Certificate::from_pem(std::fs::read(p).map_err(io(p))?))
            }
            None => config.with_native_roots(),
        };
        match (&self.cert_file, &self.key_file) {
            (Some(c), Some(k)) => {
                read_certificates("--cert-file", c).map_err(usage)?;
                read_private_key("--key-file", k).map_err(usage)?;
                config = config.identity(Identity::from_pem(
                    std::fs::read(c).map_err(io(c))?,
                    std::fs::read(k).map_err(io(k))?,
                ));
            }
            (None, None) => {}
            _ => {
                return Err(CliError::Usage(
                    "--cert-file and --key-file go together".into(),
                ))
            }
        }
        Ok(Some(config))
    }
}

/// A reviewer-service client that sends the bearer token on every call.
pub struct Client {
    /// The generated client.
    pub inner: ReviewerServiceClient<Channel>,
    auth: MetadataValue<tonic::metadata::Ascii>,
    /// The server address, for messages.
    pub server: String,
}

impl Client {
    /// Connects to `server` (`http://host:port`, or `https://host:port` with these TLS files).
    pub async fn connect_with(
        server: &str,
        token: &str,
        tls: &TlsFiles,
    ) -> Result<Client, CliError> {
        let auth: MetadataValue<_> = format!("Bearer {token}").parse().map_err(|_| {
            CliError::Usage("the token contains characters a header cannot carry".into())
        })?;
        let mut endpoint = Endpoint::from_shared(server.to_string())
            .map_err(|e| CliError::Usage(format!("--server '{server}': {e}")))?
            .connect_timeout(Duration::from_secs(10));
        if let Some(config) = tls.config(server)? {
            endpoint = endpoint
                .tls_config(config)
                .map_err(|e| CliError::Usage(format!("TLS for '{server}': {}", error_chain(&e))))?;
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| CliError::Unreachable {
                server: server.to_string(),
                message: error_chain(&e),
            })?;
        Ok(Client {
            inner: ReviewerServiceClient::new(channel).max_decoding_message_size(64 << 20),
            auth,
            server: server.to_string(),
        })
    }

    /// A call's request with the token.
    pub fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.metadata_mut().insert("authorization", self.auth.clone());
        r
    }
}

/// `e` and its sources, one after the other.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}
