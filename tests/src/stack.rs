//! The real `latch-central` and `latch-agent` binaries, linked to each other, around one test
//! cgroup: central on a free loopback port with a SQLite database in a temporary directory, the
//! agent with its own pin directory, both removed on drop.
//!
//! Rules reach the agent the way they do in production: applied at central by a reviewer over
//! gRPC, for the hosts labelled with the test's suite.
//!
//! When a test fails, the stack's directory (configurations, database, the services' logs) is
//! kept and its path printed.

use std::{
    fs::File,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use latch_proto::v1::{
    reviewer_service_client::ReviewerServiceClient, ApplyRulesRequest, ApprovalRecord,
    DecideRequest, DecisionKind, ListRequestsRequest, RequestState,
};
use tonic::{metadata::MetadataValue, transport::Channel, Request};

use crate::{binary, patience, TestCgroup};

/// The static admin token of every stack.
pub const ADMIN: &str = "admin-token-for-tests";
/// The static token of alice, an approver in `dba-oncall`.
pub const ALICE: &str = "alice-token-for-tests";
/// The agent's token.
pub const AGENT: &str = "agent-token-for-tests";

/// What a test adds to the configurations a [`Stack`] writes.
#[derive(Clone, Debug, Default)]
pub struct Extra {
    /// Appended to central's configuration (tables such as `[web]` or `[oidc]`).
    pub central: String,
    /// Top-level keys of the agent's configuration.
    pub agent_top: String,
    /// Keys of the agent's `[central]` table.
    pub agent_central: String,
}

/// Central and an agent for one test cgroup.
pub struct Stack {
    /// Configurations, database, logs.
    pub dir: PathBuf,
    /// The central process.
    pub central: Child,
    /// The agent process, once started.
    pub agent: Option<Child>,
    /// Central's gRPC address (`http://127.0.0.1:PORT`).
    pub address: String,
    /// The agent's host id.
    pub host: String,
    /// The agent's pin directory.
    pub pin_dir: PathBuf,
    /// The agent's configuration file.
    pub agent_config: PathBuf,
    /// Central's configuration file.
    pub central_config: PathBuf,
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(a) = self.agent.as_mut() {
            let _ = a.kill();
            let _ = a.wait();
        }
        let _ = self.central.kill();
        let _ = self.central.wait();
        if std::thread::panicking() {
            eprintln!(
                "stack kept for inspection (configurations, database, logs): {}",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

/// A loopback TCP port nobody listens on right now, for a daemon the test starts to listen on.
///
/// Taken from below the kernel's ephemeral range: a port found by binding port 0 is free for
/// the kernel to give the next socket bound to port 0, and the agent's own resolver proxy took
/// a metrics port that way between the test's pick and the agent's bind. Distinct within this
/// process; cargo runs one test binary at a time, and the VM guests one suite at a time.
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    const LOWEST: u32 = 10_000;
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    assert!(
        ephemeral > LOWEST + 1_000,
        "the ephemeral port range starts at {ephemeral}: no room below it for test daemons"
    );
    let span = ephemeral - LOWEST;
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let i = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = (LOWEST + (start + i) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port from {LOWEST} to {ephemeral}");
}

/// Waits until something listens on `127.0.0.1:port`, or `child` exits.
pub fn wait_listening(child: &mut Child, port: u16, what: &str) {
    let deadline = Instant::now() + patience();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited with {status} before listening on port {port}");
        }
        assert!(
            Instant::now() < deadline,
            "{what} never listened on port {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `latch-central serve` with `config` and waits for its gRPC port; its log goes to
/// `central.log` next to the configuration.
pub fn spawn_central(config: &Path, port: u16) -> Child {
    let log = config
        .parent()
        .map(|d| d.join("central.log"))
        .and_then(|p| File::options().create(true).append(true).open(p).ok());
    let mut child = Command::new(binary("latch-central"))
        .args(["serve", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(log.map(Stdio::from).unwrap_or_else(Stdio::null))
        .spawn()
        .expect("start latch-central");
    wait_listening(&mut child, port, "latch-central");
    child
}

impl Stack {
    /// Central and an agent configuration (the agent is started by [`Stack::start_agent`]).
    pub async fn start(cg: &TestCgroup) -> Stack {
        Self::start_extra(cg, &Extra::default()).await
    }

    /// As [`Stack::start`], with extra top-level agent keys (`top`) and extra `[central]` keys.
    pub async fn start_with(cg: &TestCgroup, top: &str, central_keys: &str) -> Stack {
        Self::start_extra(
            cg,
            &Extra {
                agent_top: top.into(),
                agent_central: central_keys.into(),
                ..Extra::default()
            },
        )
        .await
    }

    /// As [`Stack::start`], with additions to both configurations.
    pub async fn start_extra(cg: &TestCgroup, extra: &Extra) -> Stack {
        let name = cg.rel.trim_start_matches('/').to_string();
        let dir = std::env::temp_dir().join(format!("{name}-stack"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let port = free_port();
        let host = format!("host-{name}");
        let central_config = dir.join("central.toml");
        std::fs::write(
            &central_config,
            format!(
                "listen = \"127.0.0.1:{port}\"\ndatabase = \"sqlite://{db}\"\n\
                 [[reviewers]]\ntoken = \"{ADMIN}\"\nsubject = \"root-admin\"\nrole = \"admin\"\n\
                 [[reviewers]]\ntoken = \"{ALICE}\"\nsubject = \"alice\"\nrole = \"approver\"\ngroups = [\"dba-oncall\"]\n\
                 [[agents]]\nhost_id = \"{host}\"\ntoken = \"{AGENT}\"\n{central_extra}\n",
                db = dir.join("central.db").display(),
                central_extra = extra.central,
            ),
        )
        .expect("write central config");
        let central = spawn_central(&central_config, port);
        let address = format!("http://127.0.0.1:{port}");
        let token_file = dir.join("agent.token");
        std::fs::write(&token_file, format!("{AGENT}\n")).expect("token");
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(&name);
        let agent_config = dir.join("agent.toml");
        std::fs::write(
            &agent_config,
            format!(
                "rules = \"{rules}\"\nadmin_socket = \"{sock}\"\npin_dir = \"{pin}\"\nrescan_interval = \"200ms\"\nmetrics_listen = \"\"\nwaiting_dir = \"\"\nworkload_socket = \"{sock}.workload\"\njournal_dir = \"{journal}\"\n{top}\n\
                 [central]\naddress = \"{address}\"\ntoken_file = \"{token}\"\nhost_id = \"{host}\"\n\
                 rules_cache = \"{cache}\"\nlabels = {{ suite = \"{name}\" }}\n{central_keys}\n",
                rules = dir.join("no-local-rules.yaml").display(),
                sock = dir.join("agent.sock").display(),
                pin = pin_dir.display(),
                token = token_file.display(),
                cache = dir.join("rules.cache.yaml").display(),
                journal = dir.join("journal").display(),
                top = extra.agent_top,
                central_keys = extra.agent_central,
            ),
        )
        .expect("write agent config");
        Stack {
            dir,
            central,
            agent: None,
            address,
            host,
            pin_dir,
            agent_config,
            central_config,
        }
    }

    /// Kills central (as a crash would); its database stays.
    pub fn kill_central(&mut self) {
        let _ = self.central.kill();
        let _ = self.central.wait();
    }

    /// Starts central again on the same address and database.
    pub fn restart_central(&mut self) {
        let port = self
            .address
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port in address");
        self.central = spawn_central(&self.central_config, port);
    }

    /// Kills the agent with SIGKILL (no stop hook, no release).
    pub fn kill_agent(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
    }

    /// Runs a `latch-agent` command with this stack's configuration.
    pub fn agent_cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(binary("latch-agent"))
            .arg("--config")
            .arg(&self.agent_config)
            .args(args)
            .output()
            .expect("run latch-agent")
    }

    /// Starts `latch-agent run`; its log goes to `agent.log` in the stack's directory.
    pub fn start_agent(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))
            .ok();
        let child = Command::new(binary("latch-agent"))
            .arg("--config")
            .arg(&self.agent_config)
            .arg("run")
            .stderr(log.map(Stdio::from).unwrap_or_else(Stdio::null))
            .spawn()
            .expect("start latch-agent");
        self.agent = Some(child);
    }

    /// Waits until the agent watches a cgroup, i.e. enforces rules it received from central.
    pub fn wait_watching(&self) {
        let deadline = Instant::now() + patience();
        loop {
            if crate::status_watching(&self.agent_cli(&["status", "--json"])) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the agent never enforced rules from central"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A reviewer's gRPC client with `token`.
    pub async fn reviewer(
        &self,
        token: &str,
    ) -> ReviewerServiceClient<
        tonic::service::interceptor::InterceptedService<Channel, impl tonic::service::Interceptor>,
    > {
        let channel = Channel::from_shared(self.address.clone())
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        let value: MetadataValue<_> = format!("Bearer {token}").parse().expect("header");
        ReviewerServiceClient::with_interceptor(channel, move |mut req: Request<()>| {
            req.metadata_mut().insert("authorization", value.clone());
            Ok(req)
        })
    }
}

/// Applies rules for this test's cgroup to the hosts labelled with this test's suite.
pub async fn apply(stack: &Stack, cg: &TestCgroup, body: &str) {
    let mut admin = stack.reviewer(ADMIN).await;
    let suite = cg.rel.trim_start_matches('/').to_string();
    admin
        .apply_rules(ApplyRulesRequest {
            source_name: "suite.yaml".into(),
            yaml: rules(cg, body),
            selector: [("suite".to_string(), suite)].into_iter().collect(),
            dry_run: false,
            comment: "test".into(),
        })
        .await
        .expect("apply rules");
}

/// A rules file whose one workload, `test`, is the test cgroup; `body` lists the rules.
pub fn rules(cg: &TestCgroup, body: &str) -> String {
    format!(
        "workloads:\n  - name: test\n    cgroups: [\"{}\"]\nrules:\n{body}",
        cg.rel
    )
}

/// Decides request `approval_id` once (approve once or deny) with `reason`, as `client`'s
/// reviewer; panics when central refuses.
pub async fn decide_once(
    client: &mut ReviewerServiceClient<
        tonic::service::interceptor::InterceptedService<Channel, impl tonic::service::Interceptor>,
    >,
    approval_id: &str,
    kind: DecisionKind,
    reason: &str,
) -> ApprovalRecord {
    client
        .decide(DecideRequest {
            approval_id: approval_id.to_string(),
            kind: kind as i32,
            duration_seconds: 0,
            scope: 0,
            reason: reason.to_string(),
        })
        .await
        .unwrap_or_else(|e| panic!("decide {approval_id}: {e}"))
        .into_inner()
        .request
        .unwrap_or_else(|| panic!("no record in the answer for {approval_id}"))
}

/// Waits until central has a request in `state` from process `tgid` of `host`.
pub async fn wait_request(
    client: &mut ReviewerServiceClient<
        tonic::service::interceptor::InterceptedService<Channel, impl tonic::service::Interceptor>,
    >,
    host: &str,
    tgid: u32,
    state: RequestState,
) -> ApprovalRecord {
    let deadline = Instant::now() + patience();
    loop {
        let list = client
            .list_requests(ListRequestsRequest {
                state: state as i32,
                host_id: host.to_string(),
                limit: 100,
            })
            .await
            .expect("list")
            .into_inner();
        if let Some(r) = list
            .requests
            .into_iter()
            .find(|r| r.request.as_ref().is_some_and(|q| q.tgid == tgid))
        {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "no {state:?} request for {tgid} at central"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
