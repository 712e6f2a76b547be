//! TLS and mutual TLS on the gRPC listener: a real central on 127.0.0.1:0 with `[tls]`, real
//! tonic and rustls clients, and certificates made for each test with rcgen (a test CA, a
//! server certificate for 127.0.0.1/localhost, client certificates for host-a and host-b, and
//! a foreign CA nobody trusts).

mod common;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use common::{req, Env, ADMIN, ALICE, HANG, RULES};
use latch_central::{config::TlsConfig, Server};
use latch_proto::v1::{
    agent_message::Body, agent_service_client::AgentServiceClient,
    reviewer_service_client::ReviewerServiceClient, ApplyRulesRequest, Capabilities,
    RegisterRequest, SubscribeRequest, WhoAmIRequest,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, SanType, SerialNumber,
};
use tonic::{
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
    Code, Request,
};

type Issuer = CertifiedIssuer<'static, KeyPair>;

fn ca(name: &str) -> Issuer {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(p, KeyPair::generate().expect("key")).expect("ca")
}

/// A certificate and its key, PEM.
struct Pair {
    cert: String,
    key: String,
}

fn server_pair(issuer: &Issuer, serial: u64) -> Pair {
    let mut p = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    p.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
    p.serial_number = Some(SerialNumber::from(serial));
    p.distinguished_name.push(DnType::CommonName, "central");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().expect("key");
    let cert = p.signed_by(&key, &**issuer).expect("sign");
    Pair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

fn client_pair(issuer: &Issuer, host: &str) -> Pair {
    let mut p = CertificateParams::new(vec![host.to_string()]).expect("params");
    p.distinguished_name.push(DnType::CommonName, host);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().expect("key");
    let cert = p.signed_by(&key, &**issuer).expect("sign");
    Pair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

/// Replaces a file the way certificate tooling does: write beside it, then rename over it.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

struct Pki {
    dir: tempfile::TempDir,
    ca: Issuer,
    foreign: Issuer,
    server: Pair,
}

impl Pki {
    fn new() -> Pki {
        let ca = ca("Latch test CA");
        let server = server_pair(&ca, 1001);
        Pki {
            dir: tempfile::tempdir().expect("dir"),
            foreign: ca_foreign(),
            ca,
            server,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes the server's files; `client_ca` decides whether agents need certificates.
    fn tls_config(&self, client_ca: bool) -> TlsConfig {
        replace(&self.path("server.pem"), &self.server.cert);
        replace(&self.path("server.key"), &self.server.key);
        replace(&self.path("agents-ca.pem"), &self.ca.pem());
        TlsConfig {
            cert_file: self.path("server.pem"),
            key_file: self.path("server.key"),
            client_ca_file: client_ca.then(|| self.path("agents-ca.pem")),
        }
    }
}

fn ca_foreign() -> Issuer {
    ca("Somebody else's CA")
}

async fn start(pki: &Pki, client_ca: bool) -> (Env, Server) {
    let mut env = Env::sqlite().await;
    env.config.tls = Some(pki.tls_config(client_ca));
    let server = env.start().await;
    (env, server)
}

/// A TLS endpoint trusting `ca`, presenting `identity` when given.
fn endpoint(server: &Server, ca: &str, identity: Option<&Pair>) -> Endpoint {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some(p) = identity {
        tls = tls.identity(Identity::from_pem(&p.cert, &p.key));
    }
    Endpoint::from_shared(format!("https://localhost:{}", server.addr().port()))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(10))
        .tls_config(tls)
        .expect("tls config")
}

async fn channel(server: &Server, ca: &str, identity: Option<&Pair>) -> Channel {
    tokio::time::timeout(HANG, endpoint(server, ca, identity).connect())
        .await
        .expect("connect hung")
        .expect("TLS connection")
}

fn register(host: &str) -> RegisterRequest {
    RegisterRequest {
        host_id: host.into(),
        hostname: format!("{host}.example"),
        labels: HashMap::from([("env".to_string(), "prod".to_string())]),
        agent_version: "0.1.0".into(),
        capabilities: Some(Capabilities {
            kernel: "6.18.0".into(),
            backends: vec!["cgroup-sock-addr".into()],
            features: HashMap::new(),
        }),
    }
}

/// Tries one agent call on a new connection: the transport error, or the call's status.
async fn try_register(
    server: &Server,
    ca: &str,
    identity: Option<&Pair>,
    host: &str,
) -> Result<(), String> {
    let ch = match tokio::time::timeout(HANG, endpoint(server, ca, identity).connect())
        .await
        .expect("connect hung")
    {
        Ok(ch) => ch,
        Err(e) => return Err(format!("transport: {}", chain(&e))),
    };
    AgentServiceClient::new(ch)
        .register(register(host))
        .await
        .map(|_| ())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

/// The certificate a new connection is served, read with a plain rustls client.
async fn served_certificate(server: &Server, ca: &str) -> Vec<u8> {
    use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.as_bytes()).expect("ca pem"))
        .expect("root");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(server.addr())
        .await
        .expect("tcp");
    let tls = tokio::time::timeout(
        HANG,
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").expect("name"), tcp),
    )
    .await
    .expect("handshake hung")
    .expect("handshake");
    let certs = tls.get_ref().1.peer_certificates().expect("server certs");
    certs[0].to_vec()
}

fn der_of(pem: &str) -> Vec<u8> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("pem")
        .to_vec()
}

fn serial_of(der: &[u8]) -> String {
    x509_parser::parse_x509_certificate(der)
        .expect("x509")
        .1
        .raw_serial_as_string()
}

/// Polls with new connections until `done` (each try a new handshake), within HANG.
async fn eventually<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + HANG;
    loop {
        if done().await {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_agent_over_mutual_tls_registers_and_receives_rules() {
    let pki = Pki::new();
    let (_env, server) = start(&pki, true).await;
    let ca = pki.ca.pem();

    // A reviewer: TLS without a client certificate, bearer token as always.
    let mut reviewer = ReviewerServiceClient::new(channel(&server, &ca, None).await);
    let who = reviewer
        .who_am_i(req(WhoAmIRequest {}, ALICE))
        .await
        .expect("reviewer over TLS")
        .into_inner();
    assert_eq!(who.subject, "alice");
    let version = reviewer
        .apply_rules(req(
            ApplyRulesRequest {
                source_name: "rules.yaml".into(),
                yaml: RULES.into(),
                ..Default::default()
            },
            ADMIN,
        ))
        .await
        .expect("apply rules")
        .into_inner()
        .version;

    // host-a: its certificate is its only credential (no token, and none configured for it).
    let host_a = client_pair(&pki.ca, "host-a");
    let mut agent = AgentServiceClient::new(channel(&server, &ca, Some(&host_a)).await);
    agent
        .register(register("host-a"))
        .await
        .expect("register over mTLS");
    let mut stream = agent
        .subscribe(SubscribeRequest {
            host_id: "host-a".into(),
            ..Default::default()
        })
        .await
        .expect("subscribe over mTLS")
        .into_inner();
    let first = tokio::time::timeout(HANG, stream.message())
        .await
        .expect("stream hung")
        .expect("stream")
        .expect("a message");
    match first.body {
        Some(Body::Rules(r)) => assert_eq!(r.version, version),
        other => panic!("expected the rules, got {other:?}"),
    }
    let hosts = reviewer
        .list_hosts(req(latch_proto::v1::ListHostsRequest {}, ALICE))
        .await
        .expect("hosts")
        .into_inner()
        .hosts;
    assert!(
        hosts.iter().any(|h| h.host_id == "host-a" && h.connected),
        "{hosts:?}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn agent_calls_without_a_client_certificate_are_refused() {
    let pki = Pki::new();
    let (_env, server) = start(&pki, true).await;
    let ca = pki.ca.pem();
    let mut agent = AgentServiceClient::new(channel(&server, &ca, None).await);
    // Even with h1's valid token: with a client CA configured, tokens do not count for agents.
    let e = agent
        .register(req(register("h1"), &common::host_token("h1")))
        .await
        .expect_err("no certificate");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(
        e.message().contains("client certificate"),
        "{}",
        e.message()
    );
    // The same connection serves reviewers.
    let mut reviewer = ReviewerServiceClient::new(channel(&server, &ca, None).await);
    reviewer
        .who_am_i(req(WhoAmIRequest {}, ALICE))
        .await
        .expect("reviewer over TLS");
    server.shutdown().await;
}

#[tokio::test]
async fn without_a_client_ca_agents_use_their_token_over_tls() {
    let pki = Pki::new();
    let (_env, server) = start(&pki, false).await;
    let ca = pki.ca.pem();
    let mut agent = AgentServiceClient::new(channel(&server, &ca, None).await);
    agent
        .register(req(register("h1"), &common::host_token("h1")))
        .await
        .expect("token over TLS");
    let e = agent
        .register(Request::new(register("h1")))
        .await
        .expect_err("no token");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_certificate_from_a_foreign_ca_fails_the_handshake() {
    let pki = Pki::new();
    let (_env, server) = start(&pki, true).await;
    let stranger = client_pair(&pki.foreign, "host-a");
    let e = try_register(&server, &pki.ca.pem(), Some(&stranger), "host-a")
        .await
        .expect_err("foreign CA");
    // Refused by TLS (the server's alert ends the connection), before any call reaches the
    // service, which would have answered with a status of its own.
    assert!(e.contains("transport error"), "{e}");
    // And a client that does not trust the server's CA refuses the server.
    let host_a = client_pair(&pki.ca, "host-a");
    let e = try_register(&server, &pki.foreign.pem(), Some(&host_a), "host-a")
        .await
        .expect_err("untrusted server");
    assert!(e.contains("invalid peer certificate: UnknownIssuer"), "{e}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_certificate_for_host_a_cannot_act_for_host_b() {
    let pki = Pki::new();
    let (_env, server) = start(&pki, true).await;
    let host_a = client_pair(&pki.ca, "host-a");
    let mut agent = AgentServiceClient::new(channel(&server, &pki.ca.pem(), Some(&host_a)).await);
    for call in ["register", "subscribe"] {
        let e = match call {
            "register" => agent.register(register("host-b")).await.map(|_| ()),
            _ => agent
                .subscribe(SubscribeRequest {
                    host_id: "host-b".into(),
                    ..Default::default()
                })
                .await
                .map(|_| ()),
        }
        .expect_err(call);
        assert_eq!(e.code(), Code::PermissionDenied, "{call}: {e:?}");
        assert!(
            e.message().contains("'host-a'") && e.message().contains("'host-b'"),
            "{call}: {}",
            e.message()
        );
    }
    // host-b's own certificate works for host-b.
    let host_b = client_pair(&pki.ca, "host-b");
    try_register(&server, &pki.ca.pem(), Some(&host_b), "host-b")
        .await
        .expect("host-b as itself");
    server.shutdown().await;
}

#[tokio::test]
async fn a_plaintext_client_gets_nothing_from_a_tls_server() {
    let pki = Pki::new();
    let (_env, server) = start(&pki, false).await;
    let r = match Endpoint::from_shared(format!("http://{}", server.addr()))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
    {
        Err(e) => Err(chain(&e)),
        Ok(ch) => ReviewerServiceClient::new(ch)
            .who_am_i(req(WhoAmIRequest {}, ALICE))
            .await
            .map(|_| ())
            .map_err(|s| format!("{:?}: {}", s.code(), s.message())),
    };
    let e = r.expect_err("plaintext against TLS");
    assert!(e.contains("transport error"), "{e}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_replaced_server_certificate_is_served_to_new_connections() {
    let pki = Pki::new();
    let (_env, server) = start(&pki, true).await;
    let ca = pki.ca.pem();
    let old = der_of(&pki.server.cert);
    assert_eq!(served_certificate(&server, &ca).await, old);
    // A connection open before the change keeps working after it.
    let host_a = client_pair(&pki.ca, "host-a");
    let mut before = AgentServiceClient::new(channel(&server, &ca, Some(&host_a)).await);

    let next = server_pair(&pki.ca, 2002);
    let new = der_of(&next.cert);
    // Key first, then certificate: in between the pair does not match and is refused.
    replace(&pki.path("server.key"), &next.key);
    replace(&pki.path("server.pem"), &next.cert);
    eventually("the new certificate is served", || async {
        served_certificate(&server, &ca).await == new
    })
    .await;
    assert_eq!(serial_of(&new), "07:d2");
    before
        .register(register("host-a"))
        .await
        .expect("the older connection still works");

    // A corrupt replacement: refused with the file named, the certificate in force stays.
    let tls = server.central().tls().expect("tls").clone();
    replace(
        &pki.path("server.pem"),
        "-----BEGIN CERTIFICATE-----\nbm9wZQ==\n-----END CERTIFICATE-----\n",
    );
    match tls.reload_if_changed() {
        Err(e) => {
            let m = e.to_string();
            assert!(
                m.starts_with(&format!(
                    "tls.cert_file {}",
                    pki.path("server.pem").display()
                )),
                "{m}"
            );
        }
        // The watcher saw the change first; it failed the same way, as the check below shows.
        Ok(changed) => assert!(!changed, "a corrupt certificate was taken"),
    }
    assert_eq!(served_certificate(&server, &ca).await, new);
    try_register(&server, &ca, Some(&host_a), "host-a")
        .await
        .expect("still serving");
    server.shutdown().await;
}

#[tokio::test]
async fn a_replaced_client_ca_decides_new_connections() {
    let pki = Pki::new();
    let (_env, server) = start(&pki, true).await;
    let ca = pki.ca.pem();
    let ours = client_pair(&pki.ca, "host-a");
    let theirs = client_pair(&pki.foreign, "host-a");
    try_register(&server, &ca, Some(&ours), "host-a")
        .await
        .expect("our CA");
    try_register(&server, &ca, Some(&theirs), "host-a")
        .await
        .expect_err("their CA, before");

    // Agents now get certificates from the other CA.
    replace(&pki.path("agents-ca.pem"), &pki.foreign.pem());
    eventually("certificates of the new CA are accepted", || async {
        try_register(&server, &ca, Some(&theirs), "host-a")
            .await
            .is_ok()
    })
    .await;
    let e = try_register(&server, &ca, Some(&ours), "host-a")
        .await
        .expect_err("the old CA no longer counts");
    assert!(e.contains("transport error"), "{e}");

    // A CA file that is not a certificate keeps the CA in force.
    let tls = server.central().tls().expect("tls").clone();
    replace(&pki.path("agents-ca.pem"), "garbage\n");
    if let Err(e) = tls.reload_if_changed() {
        assert!(e.to_string().starts_with("tls.client_ca_file "), "{e}");
    }
    try_register(&server, &ca, Some(&theirs), "host-a")
        .await
        .expect("the CA in force stays");
    server.shutdown().await;
}

fn validate(config_text: &str, dir: &Path) -> std::process::Output {
    let path = dir.join("central.toml");
    std::fs::write(&path, config_text).expect("config");
    std::process::Command::new(env!("CARGO_BIN_EXE_latch-central"))
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .expect("run latch-central validate")
}

#[test]
fn validate_checks_the_tls_files_and_refuses_plaintext_off_loopback() {
    let pki = Pki::new();
    let files = pki.tls_config(true);
    let section = |cert: &Path| {
        format!(
            "listen = \"0.0.0.0:7443\"\n[tls]\ncert_file = {:?}\nkey_file = {:?}\nclient_ca_file = {:?}\n",
            cert.display().to_string(),
            files.key_file.display().to_string(),
            pki.path("agents-ca.pem").display().to_string(),
        )
    };
    let out = validate(&section(&files.cert_file), pki.dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("TLS with client certificates"), "{stdout}");

    let missing = pki.path("missing.pem");
    let out = validate(&section(&missing), pki.dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("tls.cert_file {}: cannot read", missing.display())),
        "{stderr}"
    );

    let out = validate("listen = \"0.0.0.0:7443\"\n", pki.dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("not a loopback address") && stderr.contains("allow_plaintext"),
        "{stderr}"
    );
}
