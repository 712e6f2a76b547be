//! TLS for the gRPC listener, and who an agent's client certificate says it is.
//!
//! With `[tls]` configured the listener speaks only TLS (rustls, the `ring` provider used across
//! the workspace). Its own accept loop hands finished handshakes to tonic, so the configuration
//! used for a new connection can change while the service runs: [`ServerTls`] holds the current
//! one, and [`watch_files`] re-reads the certificate, key and CA files when their metadata
//! changes. A replacement that does not load (half written, wrong key, not PEM) is refused with
//! an error naming the key and the file, and the configuration in force stays in force.
//! Connections already open keep the session they negotiated.
//!
//! Client certificates are optional at the TLS layer, because reviewers authenticate with bearer
//! tokens; when one is presented it must chain to `client_ca_file`, else the handshake fails.
//! Whether an *agent* call is allowed is decided per call by [`authorize_agent`]: with a
//! `client_ca_file`, the certificate is the agent's only credential and its identity must be the
//! host the call names. The identity is the certificate's DNS subject alternative names (any of
//! them, compared exactly, wildcards never match), or its subject CN when it has no DNS name:
//! DNS SANs are what certificate tooling and private CAs issue today, the CN keeps older
//! per-host certificates usable.
//!
//! This module must not decide anything about reviewers, nor hold per-call state.

use std::{
    net::SocketAddr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, Once},
    time::Duration,
};

use arc_swap::ArcSwap;
use rustls::{
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::WebPkiClientVerifier,
    RootCertStore, ServerConfig,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, Semaphore},
    task::JoinHandle,
};
use tokio_rustls::{server::TlsStream, TlsAcceptor};
use tokio_stream::wrappers::ReceiverStream;

use crate::{config::TlsConfig, error::Error};

/// How often the certificate, key and CA files are checked for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);
/// A client that has not finished its handshake by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; further connections wait in the kernel's accept queue.
const MAX_HANDSHAKES: usize = 256;

/// A TLS file that cannot be used, or a configuration rustls refuses.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate, key or CA file: unreadable, not PEM, not X.509, expired, mismatched.
    #[error("{key} {path}: {reason}")]
    File {
        /// The configuration key that names the file (`tls.cert_file`, ...).
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

fn file_error(key: &'static str, path: &Path, reason: impl Into<String>) -> TlsError {
    TlsError::File {
        key,
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The crypto provider every TLS configuration here is built with.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes `ring` the process-wide default provider, so code that builds rustls configurations
/// without naming one (tonic's client) agrees with this module. Idempotent.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means another part of the process installed one first; it stays.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn read_file(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| file_error(key, path, format!("cannot read: {e}")))
}

/// Reads every certificate of a PEM file, each checked to be X.509 DER.
pub fn read_certificates(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(key, path)?;
    let mut certs = Vec::new();
    for (i, c) in CertificateDer::pem_slice_iter(&pem).enumerate() {
        let c = c.map_err(|e| file_error(key, path, format!("not valid PEM: {e}")))?;
        x509_parser::parse_x509_certificate(&c).map_err(|e| {
            file_error(
                key,
                path,
                format!("certificate {} is not valid X.509: {e}", i + 1),
            )
        })?;
        certs.push(c);
    }
    if certs.is_empty() {
        return Err(file_error(
            key,
            path,
            "no PEM CERTIFICATE block in the file",
        ));
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub fn read_private_key(
    key: &'static str,
    path: &Path,
) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file(key, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => file_error(
            key,
            path,
            "no PEM private key block (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY) in the file",
        ),
        e => file_error(key, path, format!("not a valid PEM private key: {e}")),
    })
}

/// Reads a PEM file of CA certificates into a root store.
pub fn read_roots(key: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for (i, c) in read_certificates(key, path)?.into_iter().enumerate() {
        roots.add(c).map_err(|e| {
            file_error(
                key,
                path,
                format!("certificate {} cannot be a trust anchor: {e}", i + 1),
            )
        })?;
    }
    Ok(roots)
}

/// Refuses a leaf certificate that has expired: peers would refuse it anyway, with a less
/// helpful message, and a reload must not replace a good certificate with a dead one.
fn check_not_expired(key: &'static str, path: &Path, cert: &[u8]) -> Result<(), TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| file_error(key, path, format!("not valid X.509: {e}")))?;
    let not_after = parsed.validity().not_after;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if not_after.timestamp() < now {
        return Err(file_error(
            key,
            path,
            format!("the certificate expired at {not_after}"),
        ));
    }
    Ok(())
}

/// Builds the server configuration from the files, checking each.
pub fn server_config(files: &TlsConfig) -> Result<ServerConfig, TlsError> {
    let provider = crypto_provider();
    let certs = read_certificates("tls.cert_file", &files.cert_file)?;
    check_not_expired("tls.cert_file", &files.cert_file, &certs[0])?;
    let key = read_private_key("tls.key_file", &files.key_file)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| file_error("tls.cert_file", &files.cert_file, e.to_string()))?;
    let builder = match &files.client_ca_file {
        Some(ca) => {
            let roots = read_roots("tls.client_ca_file", ca)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                // Reviewers connect without a certificate; agent calls check for one.
                .allow_unauthenticated()
                .build()
                .map_err(|e| file_error("tls.client_ca_file", ca, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        let reason = match e {
            rustls::Error::InconsistentKeys(_) => format!(
                "the private key does not belong to the certificate in tls.cert_file {}",
                files.cert_file.display()
            ),
            e => format!("unusable private key: {e}"),
        };
        file_error("tls.key_file", &files.key_file, reason)
    })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// What identifies a version of a file without reading it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

fn stamp(path: &Path) -> Option<Stamp> {
    // Follows symlinks, so a secret volume that swaps a symlinked directory counts as a change.
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

fn stamps(files: &TlsConfig) -> Vec<Option<Stamp>> {
    [
        Some(&files.cert_file),
        Some(&files.key_file),
        files.client_ca_file.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| stamp(p))
    .collect()
}

/// The listener's TLS configuration in force, replaced as its files change.
pub struct ServerTls {
    files: TlsConfig,
    current: ArcSwap<ServerConfig>,
    /// The files' stamps when they were last read, loaded or not: a bad replacement is
    /// reported once, and tried again when it changes again.
    seen: Mutex<Vec<Option<Stamp>>>,
}

impl ServerTls {
    /// Loads the files; fails when any of them cannot be used.
    pub fn load(files: &TlsConfig) -> Result<ServerTls, TlsError> {
        install_crypto_provider();
        // Stamp before reading: a change in between is then seen as a change.
        let seen = stamps(files);
        let config = server_config(files)?;
        Ok(ServerTls {
            files: files.clone(),
            current: ArcSwap::from_pointee(config),
            seen: Mutex::new(seen),
        })
    }

    /// Whether client certificates are verified (a `client_ca_file` is configured), in which
    /// case agents must present one.
    pub fn verifies_clients(&self) -> bool {
        self.files.client_ca_file.is_some()
    }

    /// An acceptor with the configuration in force.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }

    /// Re-reads the files when one of them changed since it was last read. Returns `Ok(true)`
    /// when a new configuration is in force, `Ok(false)` when nothing changed, and the error
    /// (the old configuration staying in force) when the new files cannot be used.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamps(&self.files);
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == now {
                return Ok(false);
            }
            *seen = now;
        }
        let config = server_config(&self.files)?;
        self.current.store(Arc::new(config));
        Ok(true)
    }
}

/// Checks the files every [`RELOAD_INTERVAL`] and swaps in what changed, for ever.
pub async fn watch_files(tls: Arc<ServerTls>) {
    let mut tick = tokio::time::interval(RELOAD_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match tls.reload_if_changed() {
            Ok(true) => tracing::info!(
                cert_file = %tls.files.cert_file.display(),
                "TLS files changed: new connections use the new certificate, key and CA"
            ),
            Ok(false) => {}
            Err(e) => tracing::error!(
                "TLS files changed but cannot be used ({e}); the previous certificate, key and CA stay in force"
            ),
        }
    }
}

/// Accepts TCP connections on `listener` and yields each once its TLS handshake has finished,
/// for `serve_with_incoming`. The task ends when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ServerTls>,
) -> (
    ReceiverStream<std::io::Result<TlsStream<TcpStream>>>,
    JoinHandle<()>,
) {
    let (tx, rx) = mpsc::channel(64);
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let task = tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                p = handshakes.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
                _ = tx.closed() => return,
            };
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of descriptors and the like: pause rather than spin.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = tls.acceptor();
            let tx = tx.clone();
            tokio::spawn(async move {
                let _permit = permit;
                if let Some(s) = handshake(acceptor, tcp, peer).await {
                    let _ = tx.send(Ok(s)).await;
                }
            });
        }
    });
    (ReceiverStream::new(rx), task)
}

async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Option<TlsStream<TcpStream>> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            tracing::warn!(%peer, error = %e, "TLS handshake refused");
            None
        }
        Err(_) => {
            tracing::warn!(%peer, "TLS handshake did not finish in time");
            None
        }
    }
}

/// Who a client certificate names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertIdentity {
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// Subject common name.
    pub common_name: Option<String>,
}

impl CertIdentity {
    /// Parses a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<CertIdentity, String> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| format!("not X.509: {e}"))?;
        let mut dns_names = Vec::new();
        if let Some(san) = cert
            .subject_alternative_name()
            .map_err(|e| format!("bad subjectAltName: {e}"))?
        {
            for n in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                    dns_names.push(d.to_string());
                }
            }
        }
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string);
        Ok(CertIdentity {
            dns_names,
            common_name,
        })
    }

    /// The names that count as hosts: the DNS names, or the CN when there is none.
    pub fn hosts(&self) -> Vec<&str> {
        if self.dns_names.is_empty() {
            self.common_name.iter().map(String::as_str).collect()
        } else {
            self.dns_names.iter().map(String::as_str).collect()
        }
    }

    /// Whether the certificate stands for `host_id`.
    pub fn is_host(&self, host_id: &str) -> bool {
        self.hosts().contains(&host_id)
    }
}

/// Decides whether a verified client certificate chain may act for `host_id`.
pub fn authorize_agent(certs: &[CertificateDer<'_>], host_id: &str) -> Result<(), Error> {
    let leaf = certs.first().ok_or_else(|| {
        Error::Unauthenticated("the TLS session carries no client certificate".into())
    })?;
    let id = CertIdentity::from_der(leaf)
        .map_err(|e| Error::Unauthenticated(format!("the client certificate: {e}")))?;
    if id.is_host(host_id) {
        return Ok(());
    }
    let names = id.hosts();
    Err(Error::PermissionDenied(if names.is_empty() {
        format!("the client certificate names no host (no DNS name, no CN); the call is for host '{host_id}'")
    } else {
        format!(
            "the client certificate is for host '{}', not '{host_id}'",
            names.join("', '")
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(sans: &[&str], cn: Option<&str>) -> CertificateDer<'static> {
        let mut p =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        p.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        }
        let key = rcgen::KeyPair::generate().expect("key");
        p.self_signed(&key).expect("sign").der().clone()
    }

    #[test]
    fn dns_names_win_over_the_common_name() {
        let c = cert(&["host-a", "host-a.example"], Some("host-z"));
        assert!(authorize_agent(std::slice::from_ref(&c), "host-a").is_ok());
        assert!(authorize_agent(std::slice::from_ref(&c), "host-a.example").is_ok());
        let e = authorize_agent(std::slice::from_ref(&c), "host-z").expect_err("CN ignored");
        assert!(matches!(e, Error::PermissionDenied(_)), "{e}");
        assert!(e.to_string().contains("'host-a', 'host-a.example'"), "{e}");
        assert!(e.to_string().contains("not 'host-z'"), "{e}");
    }

    #[test]
    fn common_name_counts_without_dns_names() {
        let c = cert(&[], Some("host-c"));
        assert!(authorize_agent(std::slice::from_ref(&c), "host-c").is_ok());
        let e = authorize_agent(std::slice::from_ref(&c), "Host-C").expect_err("exact");
        assert!(
            e.to_string().contains("for host 'host-c', not 'Host-C'"),
            "{e}"
        );
        let c = cert(&[], None);
        let e = authorize_agent(std::slice::from_ref(&c), "host-c").expect_err("nameless");
        assert!(e.to_string().contains("names no host"), "{e}");
    }

    #[test]
    fn wildcards_never_match() {
        let c = cert(&["*.example"], None);
        let e = authorize_agent(std::slice::from_ref(&c), "a.example").expect_err("wildcard");
        assert!(matches!(e, Error::PermissionDenied(_)), "{e}");
    }

    #[test]
    fn no_certificate_is_unauthenticated() {
        let e = authorize_agent(&[], "h").expect_err("none");
        assert!(matches!(e, Error::Unauthenticated(_)), "{e}");
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p
    }

    #[test]
    fn bad_files_are_named_with_their_key() {
        let dir = tempfile::tempdir().expect("dir");
        let key = rcgen::KeyPair::generate().expect("key");
        let c = rcgen::CertificateParams::new(vec!["central".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("sign");
        let other = rcgen::KeyPair::generate().expect("key");
        let good_cert = write(dir.path(), "c.pem", &c.pem());
        let good_key = write(dir.path(), "k.pem", &key.serialize_pem());
        let files = |cert: &Path, key: &Path, ca: Option<&Path>| TlsConfig {
            cert_file: cert.to_path_buf(),
            key_file: key.to_path_buf(),
            client_ca_file: ca.map(Path::to_path_buf),
        };
        server_config(&files(&good_cert, &good_key, Some(&good_cert))).expect("good files");

        let missing = dir.path().join("missing.pem");
        let garbage = write(dir.path(), "g.pem", "hello\n");
        let bad_der = write(
            dir.path(),
            "bad.pem",
            "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
        );
        let wrong_key = write(dir.path(), "w.pem", &other.serialize_pem());
        for (f, key_name, path, needle) in [
            (
                files(&missing, &good_key, None),
                "tls.cert_file",
                &missing,
                "cannot read",
            ),
            (
                files(dir.path(), &good_key, None),
                "tls.cert_file",
                &dir.path().to_path_buf(),
                "cannot read",
            ),
            (
                files(&garbage, &good_key, None),
                "tls.cert_file",
                &garbage,
                "no PEM CERTIFICATE",
            ),
            (
                files(&bad_der, &good_key, None),
                "tls.cert_file",
                &bad_der,
                "not valid X.509",
            ),
            (
                files(&good_cert, &garbage, None),
                "tls.key_file",
                &garbage,
                "no PEM private key",
            ),
            (
                files(&good_cert, &wrong_key, None),
                "tls.key_file",
                &wrong_key,
                "does not belong",
            ),
            (
                files(&good_cert, &good_key, Some(&garbage)),
                "tls.client_ca_file",
                &garbage,
                "no PEM CERTIFICATE",
            ),
        ] {
            let e = server_config(&f).expect_err(needle).to_string();
            assert!(
                e.starts_with(&format!("{key_name} {}: ", path.display())) && e.contains(needle),
                "{e}"
            );
        }
    }

    #[test]
    fn an_expired_certificate_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(vec!["central".to_string()]).expect("params");
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let c = p.self_signed(&key).expect("sign");
        let files = TlsConfig {
            cert_file: write(dir.path(), "c.pem", &c.pem()),
            key_file: write(dir.path(), "k.pem", &key.serialize_pem()),
            client_ca_file: None,
        };
        let e = server_config(&files).expect_err("expired").to_string();
        assert!(
            e.contains("tls.cert_file") && e.contains("expired at"),
            "{e}"
        );
    }
}
