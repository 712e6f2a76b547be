//! The real `latchctl` binary against an in-process latch-central serving TLS on 127.0.0.1:0,
//! with a CA and certificates made by the test: `--ca-file`, `LATCH_CA_FILE`, client
//! certificates, and the errors for files that cannot be used.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use latch_central::{
    config::{Config, TlsConfig},
    Server,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, SanType,
};

const BIN: &str = env!("CARGO_BIN_EXE_latchctl");
const ALICE: &str = "tok-alice-0001";

struct Env {
    dir: tempfile::TempDir,
    server: Server,
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

impl Env {
    async fn start() -> Env {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, "latchctl test CA");
        let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().expect("key")).expect("ca");
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        p.subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("key");
        let cert = p.signed_by(&key, &*ca).expect("server cert");
        let mut p = CertificateParams::new(vec!["alice-laptop".to_string()]).expect("params");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_key = KeyPair::generate().expect("key");
        let client = p.signed_by(&client_key, &*ca).expect("client cert");
        let d = dir.path();
        write(d, "ca.pem", &ca.pem());
        write(d, "client.pem", &client.pem());
        write(d, "client.key", &client_key.serialize_pem());
        write(d, "alice", &format!("{ALICE}\n"));
        let text = format!(
            "listen = \"127.0.0.1:0\"\ndatabase = \"sqlite://{db}\"\n[audit]\nsigning_key = \"{key}\"\n\
             [[reviewers]]\ntoken = \"{ALICE}\"\nsubject = \"alice\"\nrole = \"approver\"\n",
            db = d.join("central.db").display(),
            key = d.join("audit.pem").display(),
        );
        let mut config = Config::parse("test.toml", &text).expect("config");
        config.tls = Some(TlsConfig {
            cert_file: write(d, "server.pem", &cert.pem()),
            key_file: write(d, "server.key", &key.serialize_pem()),
            client_ca_file: Some(d.join("ca.pem")),
        });
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let server = latch_central::start(&config, Some(l))
            .await
            .expect("start central");
        Env { dir, server }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// Runs `latchctl --server URL --token-file alice ARGS whoami` with `env` set.
    async fn whoami(&self, scheme: &str, args: &[&str], env: &[(&str, String)]) -> Output {
        let mut c = Command::new(BIN);
        c.arg("--server")
            .arg(format!(
                "{scheme}://localhost:{}",
                self.server.addr().port()
            ))
            .arg("--token-file")
            .arg(self.path("alice"))
            .args(args)
            .arg("whoami")
            .env_remove("LATCH_TOKEN")
            .env_remove("LATCH_SERVER")
            .env_remove("LATCH_CA_FILE")
            .env_remove("LATCH_CERT_FILE")
            .env_remove("LATCH_KEY_FILE")
            .env("XDG_CONFIG_HOME", self.path("xdg"));
        for (k, v) in env {
            c.env(k, v);
        }
        tokio::task::spawn_blocking(move || c.output().expect("run latchctl"))
            .await
            .expect("join")
    }
}

fn show(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latchctl_speaks_tls_with_the_ca_it_is_given() {
    let env = Env::start().await;
    let ca = env.path("ca.pem");

    let o = env.whoami("https", &["--ca-file", &ca], &[]).await;
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("alice"),
        "{}",
        show(&o)
    );

    let o = env
        .whoami("https", &[], &[("LATCH_CA_FILE", ca.clone())])
        .await;
    assert_eq!(o.status.code(), Some(0), "LATCH_CA_FILE: {}", show(&o));

    // With a client certificate too (the server asks for one, reviewers may present it).
    let o = env
        .whoami(
            "https",
            &[
                "--ca-file",
                &ca,
                "--cert-file",
                &env.path("client.pem"),
                "--key-file",
                &env.path("client.key"),
            ],
            &[],
        )
        .await;
    assert_eq!(o.status.code(), Some(0), "client certificate: {}", show(&o));

    // Without the CA the server's certificate is not trusted: central unreachable (4).
    let o = env.whoami("https", &[], &[]).await;
    assert_eq!(o.status.code(), Some(4), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("UnknownIssuer"),
        "{}",
        show(&o)
    );
    env.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_files_that_cannot_be_used_are_named() {
    let env = Env::start().await;
    let ca = env.path("ca.pem");
    let missing = env.path("missing.pem");
    for (scheme, args, needle) in [
        (
            "https",
            vec!["--ca-file", missing.as_str()],
            format!("--ca-file {missing}: cannot read"),
        ),
        (
            "https",
            vec!["--ca-file", &ca, "--cert-file", &ca],
            "--cert-file and --key-file go together".to_string(),
        ),
        (
            "https",
            vec!["--ca-file", &ca, "--cert-file", &ca, "--key-file", &ca],
            format!("--key-file {ca}: no PEM private key"),
        ),
        (
            "http",
            vec!["--ca-file", &ca],
            "need an https:// --server".to_string(),
        ),
    ] {
        let o = env.whoami(scheme, &args, &[]).await;
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", show(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(&needle),
            "{args:?}: {}",
            show(&o)
        );
    }
    env.server.shutdown().await;
}
