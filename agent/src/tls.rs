//! The agent's TLS to central: which CA to trust, which client certificate to present, and
//! noticing when those files change.
//!
//! An `https://` address is verified against `central.ca_file`, or against the system's trust
//! store when no CA file is given (a central behind a certificate from a public or
//! company-wide CA needs no extra file). `central.cert_file` and `central.key_file` are this
//! host's identity for mutual TLS; central accepts the certificate for the host id it names.
//!
//! The files are read when a connection is made. [`ReloadingTls`] remembers what it read and,
//! asked on the link's periodic tick, tells whether the files changed and still load, so the link
//! can reconnect with the new identity. A replacement that does not load is reported once (naming
//! the key and the file) and the link keeps the files it has.
//!
//! This module must not connect anywhere itself; it only prepares what tonic connects with.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// A TLS file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Unreadable, not PEM, not X.509, expired, or a key that is not the certificate's.
    #[error("`{key}` = {path:?}: {reason}")]
    File {
        /// The configuration key (`central.cert_file`, ...).
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

/// The `[central]` TLS files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificates (PEM) central's certificate must chain to; system roots when `None`.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM, leaf first).
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    pub key_file: Option<PathBuf>,
}

/// What was read: the tonic configuration and the PEM it came from.
#[derive(Clone, Debug)]
pub struct LoadedTls {
    /// For `Endpoint::tls_config`.
    pub config: ClientTlsConfig,
    /// The client certificate's subject and serial number (hex), for logs.
    pub client: Option<(String, String)>,
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| file_error(key, path, format!("cannot read: {e}")))
}

fn certificates(
    key: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let mut out = Vec::new();
    for (i, c) in CertificateDer::pem_slice_iter(pem).enumerate() {
        let c = c.map_err(|e| file_error(key, path, format!("not valid PEM: {e}")))?;
        x509_parser::parse_x509_certificate(&c).map_err(|e| {
            file_error(
                key,
                path,
                format!("certificate {} is not valid X.509: {e}", i + 1),
            )
        })?;
        out.push(c);
    }
    if out.is_empty() {
        return Err(file_error(
            key,
            path,
            "no PEM CERTIFICATE block in the file",
        ));
    }
    Ok(out)
}

impl TlsFiles {
    /// Reads and checks the files.
    pub fn load(&self) -> Result<LoadedTls, TlsError> {
        let mut config = ClientTlsConfig::new();
        match &self.ca_file {
            Some(ca) => {
                let pem = read("central.ca_file", ca)?;
                let mut roots = rustls::RootCertStore::empty();
                for (i, c) in certificates("central.ca_file", ca, &pem)?
                    .into_iter()
                    .enumerate()
                {
                    roots.add(c).map_err(|e| {
                        file_error(
                            "central.ca_file",
                            ca,
                            format!("certificate {} cannot be a trust anchor: {e}", i + 1),
                        )
                    })?;
                }
                config = config.ca_certificate(Certificate::from_pem(pem));
            }
            None => config = config.with_native_roots(),
        }
        let mut client = None;
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                let cert_pem = read("central.cert_file", cert)?;
                let chain = certificates("central.cert_file", cert, &cert_pem)?;
                let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0])
                    .map_err(|e| file_error("central.cert_file", cert, e.to_string()))?;
                let not_after = leaf.validity().not_after;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0);
                if not_after.timestamp() < now {
                    return Err(file_error(
                        "central.cert_file",
                        cert,
                        format!("the certificate expired at {not_after}"),
                    ));
                }
                client = Some((leaf.subject().to_string(), leaf.raw_serial_as_string()));
                let key_pem = read("central.key_file", key)?;
                let der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
                    file_error(
                        "central.key_file",
                        key,
                        match e {
                            rustls::pki_types::pem::Error::NoItemsFound => "no PEM private key \
                                block (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY) in the file"
                                .to_string(),
                            e => format!("not a valid PEM private key: {e}"),
                        },
                    )
                })?;
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                rustls::sign::CertifiedKey::from_der(chain, der, &provider).map_err(|e| {
                    file_error(
                        "central.key_file",
                        key,
                        match e {
                            rustls::Error::InconsistentKeys(_) => format!(
                                "the private key does not belong to the certificate in \
                                 central.cert_file {}",
                                cert.display()
                            ),
                            e => format!("unusable private key: {e}"),
                        },
                    )
                })?;
                config = config.identity(Identity::from_pem(cert_pem, key_pem));
            }
            (None, None) => {}
            // The configuration refuses one without the other; be explicit all the same.
            (Some(cert), None) => {
                return Err(file_error(
                    "central.cert_file",
                    cert,
                    "needs central.key_file",
                ))
            }
            (None, Some(key)) => {
                return Err(file_error(
                    "central.key_file",
                    key,
                    "needs central.cert_file",
                ))
            }
        }
        Ok(LoadedTls { config, client })
    }

    fn stamps(&self) -> Vec<Option<Stamp>> {
        [&self.ca_file, &self.cert_file, &self.key_file]
            .into_iter()
            .flatten()
            .map(|p| stamp(p))
            .collect()
    }
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
    // Follows symlinks, so a swapped symlinked directory (a mounted secret) counts as a change.
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

/// The TLS files as the link uses them: the last set that loaded, re-read when they change.
#[derive(Clone, Debug)]
pub struct ReloadingTls {
    files: TlsFiles,
    good: Option<LoadedTls>,
    /// Stamps of the last read, whether it loaded or not.
    seen: Vec<Option<Stamp>>,
}

impl ReloadingTls {
    /// Loads the files once; fails when they cannot be used.
    pub fn load(files: TlsFiles) -> Result<ReloadingTls, TlsError> {
        let seen = files.stamps();
        let good = files.load()?;
        Ok(ReloadingTls {
            files,
            good: Some(good),
            seen,
        })
    }

    /// The configuration to connect with: the files as they are now when they load, else the
    /// last set that did (the failure is logged).
    pub fn current(&mut self) -> Result<LoadedTls, TlsError> {
        self.changed();
        match &self.good {
            Some(g) => Ok(g.clone()),
            None => self.files.load(),
        }
    }

    /// Whether the files changed since they were last read and the new ones load: the link
    /// then reconnects to present them. A change that does not load is logged once and
    /// answers `false`.
    pub fn changed(&mut self) -> bool {
        let now = self.files.stamps();
        if now == self.seen {
            return false;
        }
        self.seen = now;
        match self.files.load() {
            Ok(l) => {
                let (subject, serial) = l.client.clone().unwrap_or_default();
                tracing::info!(
                    %subject,
                    %serial,
                    "central TLS files changed; reconnecting with them"
                );
                self.good = Some(l);
                true
            }
            Err(e) => {
                tracing::error!(
                    "central TLS files changed but cannot be used ({e}); keeping the previous ones"
                );
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pki {
        dir: tempfile::TempDir,
        ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    }

    impl Pki {
        fn new() -> Pki {
            let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let ca =
                rcgen::CertifiedIssuer::self_signed(p, rcgen::KeyPair::generate().expect("key"))
                    .expect("ca");
            Pki {
                dir: tempfile::tempdir().expect("dir"),
                ca,
            }
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let p = self.dir.path().join(name);
            std::fs::write(&p, text).expect("write");
            p
        }

        fn client(&self, host: &str, prefix: &str) -> (PathBuf, PathBuf) {
            let key = rcgen::KeyPair::generate().expect("key");
            let cert = rcgen::CertificateParams::new(vec![host.to_string()])
                .expect("params")
                .signed_by(&key, &*self.ca)
                .expect("sign");
            (
                self.write(&format!("{prefix}.pem"), &cert.pem()),
                self.write(&format!("{prefix}.key"), &key.serialize_pem()),
            )
        }

        fn files(&self, cert: &Path, key: &Path) -> TlsFiles {
            TlsFiles {
                ca_file: Some(self.write("ca.pem", &self.ca.pem())),
                cert_file: Some(cert.to_path_buf()),
                key_file: Some(key.to_path_buf()),
            }
        }
    }

    #[test]
    fn good_files_load() {
        let pki = Pki::new();
        let (c, k) = pki.client("host-a", "a");
        let l = pki.files(&c, &k).load().expect("load");
        let (subject, serial) = l.client.expect("client certificate");
        assert!(subject.contains("CN="), "{subject}");
        assert!(!serial.is_empty());
    }

    #[test]
    fn bad_files_name_key_and_path() {
        let pki = Pki::new();
        let (c, k) = pki.client("host-a", "a");
        let (_, other_key) = pki.client("host-b", "b");
        let garbage = pki.write("garbage.pem", "not pem\n");
        let dir = pki.dir.path().to_path_buf();
        let missing = dir.join("missing.pem");
        let mut cases = Vec::new();
        let mut f = pki.files(&c, &k);
        f.cert_file = Some(missing.clone());
        cases.push((f, "central.cert_file", missing.clone(), "cannot read"));
        let mut f = pki.files(&c, &k);
        f.cert_file = Some(dir.clone());
        cases.push((f, "central.cert_file", dir.clone(), "cannot read"));
        let mut f = pki.files(&c, &k);
        f.cert_file = Some(garbage.clone());
        cases.push((
            f,
            "central.cert_file",
            garbage.clone(),
            "no PEM CERTIFICATE",
        ));
        let mut f = pki.files(&c, &k);
        f.key_file = Some(garbage.clone());
        cases.push((f, "central.key_file", garbage.clone(), "no PEM private key"));
        let mut f = pki.files(&c, &k);
        f.key_file = Some(other_key.clone());
        cases.push((f, "central.key_file", other_key.clone(), "does not belong"));
        let mut f = pki.files(&c, &k);
        f.ca_file = Some(missing.clone());
        cases.push((f, "central.ca_file", missing.clone(), "cannot read"));
        for (files, key, path, needle) in cases {
            let e = files.load().expect_err(needle).to_string();
            assert!(
                e.starts_with(&format!("`{key}` = {path:?}: ")) && e.contains(needle),
                "{e}"
            );
        }
    }

    #[test]
    fn reload_notices_changes_and_keeps_the_last_good_files() {
        let pki = Pki::new();
        let (c, k) = pki.client("host-a", "a");
        let files = pki.files(&c, &k);
        let mut tls = ReloadingTls::load(files).expect("load");
        assert!(!tls.changed(), "nothing changed yet");
        let first = tls.current().expect("current").client;

        // A corrupt replacement: not taken, reported once, the old set stays usable.
        std::fs::write(
            &c,
            "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
        )
        .expect("corrupt");
        assert!(!tls.changed());
        assert!(tls.current().is_ok());

        // A good replacement (new key and certificate) is taken.
        let (c2, k2) = pki.client("host-a", "a2");
        std::fs::copy(&k2, &k).expect("key");
        std::fs::copy(&c2, &c).expect("cert");
        assert!(tls.changed());
        assert!(!tls.changed());
        assert_ne!(tls.current().expect("current").client, first);
    }
}
