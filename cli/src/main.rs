//! `latchctl`: the reviewers' and admins' command line for latch-central.
//!
//! It owns the command line, its output (aligned tables for people, colour only on a terminal,
//! `--json` for scripts) and its exit codes. It talks to central over gRPC with
//! `authorization: Bearer <token>` and must not touch central's database or a host: everything
//! goes through the reviewer API, except the offline audit verification of an export file,
//! which needs only the file and the public key. Everything a workload controls (argv, paths,
//! names) is escaped before it reaches the terminal.
//!
//! Server: `--server URL` or `LATCH_SERVER` (default `http://127.0.0.1:7443`). Token:
//! `--token-file FILE`, else `LATCH_TOKEN`, else the one `latchctl login --token-file FILE`
//! stored in `~/.config/latch/token` (mode 0600). TLS, for an `https://` server: `--ca-file`
//! (or `LATCH_CA_FILE`; default: the system's trust store), and `--cert-file`/`--key-file` (or
//! `LATCH_CERT_FILE`/`LATCH_KEY_FILE`) when the server asks for a client certificate.
//!
//! Exit codes: 0 success; 1 other failure; 2 bad input (usage, arguments, files); 3 not found;
//! 4 central unreachable or unavailable; 5 unauthenticated or permission denied; 6 conflict
//! (already decided, already revoked, another failed precondition); 7 the audit trail does not
//! verify.

mod audit;
mod break_glass;
mod client;
mod login;
mod out;
mod token;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};
use latch_proto::v1::{
    ApplyRulesRequest, ApprovalRecord, DecideRequest, DecisionKind, GetRequestRequest, Grant,
    GrantScope, ListGrantsRequest, ListHostsRequest, ListRequestsRequest, ListRulesRequest, Op,
    Outcome, RequestState, RevokeGrantRequest, RollbackRulesRequest, RuleEnforcement,
    WatchRequestsRequest, WhoAmIRequest,
};
use serde_json::{json, Value};

use crate::{
    client::{exit, CliError, Client},
    out::{relative, time, Out},
    token::resolve_token,
};

const EXIT_CODES: &str = "Exit codes: 0 ok, 1 error, 2 bad input or usage, 3 not found, \
4 central unreachable/unavailable, 5 unauthenticated or permission denied, \
6 conflict (already decided/revoked, failed precondition), 7 audit trail does not verify.";

/// The reviewers' and admins' command line for latch-central.
#[derive(Parser)]
#[command(version, after_help = EXIT_CODES)]
struct Cli {
    /// Central's address [default: $LATCH_SERVER, else http://127.0.0.1:7443].
    #[arg(long, global = true)]
    server: Option<String>,
    /// File holding the bearer token (else LATCH_TOKEN, else the stored login).
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    /// CA certificates (PEM) for an https:// server [default: $LATCH_CA_FILE, else the system's
    /// trust store].
    #[arg(long, global = true)]
    ca_file: Option<PathBuf>,
    /// Client certificate (PEM), for a server that asks for one [default: $LATCH_CERT_FILE].
    #[arg(long, global = true)]
    cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM) [default: $LATCH_KEY_FILE].
    #[arg(long, global = true)]
    key_file: Option<PathBuf>,
    /// JSON output for scripts.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Stores a credential for later calls in ~/.config/latch/token (0600), checked with
    /// central first: the token of --token-file, or (with --oidc) a login through the identity
    /// provider's device flow.
    Login(login::LoginArgs),
    /// Who the token belongs to, and when a provider login expires.
    Whoami,
    /// Requests waiting for a decision.
    Pending {
        /// Keep watching: print every change as it happens.
        #[arg(long)]
        watch: bool,
    },
    /// A request in full: who, what, where, which rule, process tree, votes, history.
    Show {
        /// Central's request id.
        id: String,
    },
    /// Approves a request (once, or for a period with --for).
    Approve {
        /// Central's request id.
        id: String,
        /// Why (recorded in the audit trail).
        #[arg(long)]
        reason: String,
        /// Grant for this long (e.g. 15m, 2h) instead of once.
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// What a grant covers (with --for; default process).
        #[arg(long, value_enum)]
        scope: Option<Scope>,
        /// Break-glass: decide alone, outside N-of-M and the no-self-approval rule (admins only,
        /// when central enables it; loudly audited).
        #[arg(long)]
        break_glass: bool,
    },
    /// Denies a request.
    Deny {
        /// Central's request id.
        id: String,
        /// Why (recorded in the audit trail).
        #[arg(long)]
        reason: String,
    },
    /// Rules versions.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Grants.
    Grants {
        #[command(subcommand)]
        command: GrantsCommand,
    },
    /// Hosts and what they enforce.
    Hosts,
    /// The audit trail.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Scope {
    Process,
    Workload,
    Host,
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Validates and applies a rules file (the rules in force stay if it is refused).
    Apply {
        /// Rules file (YAML).
        file: PathBuf,
        /// Hosts whose labels include these receive it (KEY=VALUE, repeatable).
        #[arg(long = "selector", value_parser = parse_label)]
        selector: Vec<(String, String)>,
        /// Why.
        #[arg(long, default_value = "")]
        comment: String,
        /// Validate and show the diff only.
        #[arg(long)]
        dry_run: bool,
    },
    /// What applying a file would change.
    Diff {
        /// Rules file (YAML).
        file: PathBuf,
        /// Compare with the version for these labels (KEY=VALUE, repeatable).
        #[arg(long = "selector", value_parser = parse_label)]
        selector: Vec<(String, String)>,
    },
    /// Every version, newest first.
    List,
    /// Makes an old version current again (as a new version).
    Rollback {
        /// The version to restore.
        version: u64,
        /// Why.
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand)]
enum GrantsCommand {
    /// Active grants (all with --all).
    List {
        /// Include expired and revoked ones.
        #[arg(long)]
        all: bool,
        /// Only this host's.
        #[arg(long)]
        host: Option<String>,
    },
    /// Revokes a grant at once.
    Revoke {
        /// Grant id.
        id: String,
        /// Why.
        #[arg(long)]
        reason: String,
        /// Also close the live connections the grant let through (the host destroys the
        /// sockets; their processes see the connection reset).
        #[arg(long)]
        close_connections: bool,
    },
}

/// Global options a command needs.
#[derive(Clone)]
pub struct Ctx {
    server: String,
    token_file: Option<PathBuf>,
    tls: client::TlsFiles,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("'{s}' is not KEY=VALUE"))
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("latchctl: cannot start: {e}");
            return ExitCode::from(exit::ERROR);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) => {
            eprintln!("latchctl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn connect(ctx: &Ctx) -> Result<Client, CliError> {
    let token = resolve_token(ctx.token_file.as_deref())?;
    Client::connect_with(&ctx.server, &token, &ctx.tls).await
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let out = Out::new(cli.json);
    let server = cli
        .server
        .or_else(|| std::env::var("LATCH_SERVER").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "http://127.0.0.1:7443".into());
    let ctx = Ctx {
        server,
        token_file: cli.token_file,
        tls: client::TlsFiles {
            ca_file: cli.ca_file,
            cert_file: cli.cert_file,
            key_file: cli.key_file,
        }
        .or_env(),
    };
    match cli.command {
        Command::Login(args) => login::run(&ctx, out, args).await,
        Command::Whoami => {
            let token = resolve_token(ctx.token_file.as_deref())?;
            let session = token::session_of(&token);
            let mut c = Client::connect_with(&ctx.server, &token, &ctx.tls).await?;
            let who = c
                .inner
                .who_am_i(c.req(WhoAmIRequest {}))
                .await?
                .into_inner();
            let expires_ms = session.as_ref().map(|s| s.expires_at_unix_ms).unwrap_or(0);
            if out.json {
                out.json_line(&json!({"subject": who.subject, "email": who.email,
                    "groups": who.groups, "role": who.role,
                    "issuer": session.as_ref().map(|s| s.issuer.clone()),
                    "expires_at": (expires_ms > 0).then(|| time(expires_ms))}));
            } else {
                let expires = if expires_ms > 0 {
                    format!("{} ({})", time(expires_ms), relative(expires_ms))
                } else {
                    "-".into()
                };
                out.table(
                    &["SUBJECT", "ROLE", "EMAIL", "GROUPS", "EXPIRES"],
                    &[vec![
                        who.subject,
                        who.role,
                        who.email,
                        who.groups.join(","),
                        expires,
                    ]],
                    &[],
                );
            }
            Ok(())
        }
        Command::Pending { watch } => pending(&ctx, out, watch).await,
        Command::Show { id } => {
            let mut c = connect(&ctx).await?;
            let rec = c
                .inner
                .get_request(c.req(GetRequestRequest { approval_id: id }))
                .await?
                .into_inner();
            if out.json {
                out.json_pretty(&record_json(&rec));
            } else {
                show(&rec);
            }
            Ok(())
        }
        Command::Approve {
            id,
            reason,
            duration,
            scope,
            break_glass,
        } => {
            let (kind, secs, scope) = match (duration, scope) {
                (None, Some(_)) => {
                    return Err(CliError::Usage(
                        "--scope needs --for: a scope belongs to a grant for a period".into(),
                    ))
                }
                (None, None) => (DecisionKind::ApproveOnce, 0, GrantScope::Unspecified),
                (Some(d), s) => {
                    if d.as_secs() == 0 {
                        return Err(CliError::Usage("--for must be at least 1s".into()));
                    }
                    let scope = match s.unwrap_or(Scope::Process) {
                        Scope::Process => GrantScope::Process,
                        Scope::Workload => GrantScope::Workload,
                        Scope::Host => GrantScope::Host,
                    };
                    (DecisionKind::ApproveFor, d.as_secs(), scope)
                }
            };
            if break_glass {
                return break_glass::approve(
                    &ctx,
                    out,
                    DecideRequest {
                        approval_id: id,
                        kind: kind as i32,
                        duration_seconds: secs,
                        scope: scope as i32,
                        reason,
                    },
                )
                .await;
            }
            decide(&ctx, out, id, kind, secs, scope, reason).await
        }
        Command::Deny { id, reason } => {
            decide(
                &ctx,
                out,
                id,
                DecisionKind::Deny,
                0,
                GrantScope::Unspecified,
                reason,
            )
            .await
        }
        Command::Rules { command } => rules(&ctx, out, command).await,
        Command::Grants { command } => grants(&ctx, out, command).await,
        Command::Hosts => hosts(&ctx, out).await,
        Command::Audit { command } => audit::run(&ctx, out, command).await,
    }
}

fn state_name(s: i32) -> String {
    RequestState::try_from(s)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("REQUEST_STATE_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| format!("state {s}"))
}

fn what(rec: &ApprovalRecord) -> String {
    let Some(r) = &rec.request else {
        return String::new();
    };
    match Op::try_from(r.op).unwrap_or(Op::Unspecified) {
        Op::Exec => format!("exec {} {}", r.exec_path, r.argv.join(" ")),
        op => {
            let d = r.destination.clone().unwrap_or_default();
            format!(
                "{} {} by {}",
                op.as_str_name().trim_start_matches("OP_").to_lowercase(),
                d.shown(),
                r.exe
            )
        }
    }
}

fn record_json(rec: &ApprovalRecord) -> Value {
    let r = rec.request.clone().unwrap_or_default();
    let d = r.destination.clone().unwrap_or_default();
    let mut v = json!({
        "approval_id": rec.approval_id,
        "state": state_name(rec.state),
        "host_id": r.host_id,
        "request_id": r.request_id,
        "op": Op::try_from(r.op).map(|o| o.as_str_name()).unwrap_or("?"),
        "rule": r.rule_name, "rule_id": r.rule_id, "workload": r.workload,
        "requester": r.requester, "user": r.user, "uid": r.uid, "group": r.group, "gid": r.gid,
        "pid": r.pid, "tgid": r.tgid, "ppid": r.ppid,
        "cgroup": r.cgroup_path, "unit": r.unit, "comm": r.comm, "exe": r.exe, "argv": r.argv,
        "exec_path": r.exec_path, "justification": r.justification,
        "recommendation": rec.recommendation.as_ref().map(|a| json!({"reviewer": a.reviewer,
            "verdict": a.verdict, "rationale": a.rationale, "confidence": a.confidence,
            "decided": a.decided, "note": a.note, "at": time(a.at_unix_ms)})),
        "env": r.env.iter().map(|v| (v.name.clone(), json!(v.value))).collect::<serde_json::Map<_, _>>(),
        "trace": r.trace.as_ref().map(|t| json!({"trace_id": t.trace_id, "parent_id": t.parent_id, "sampled": t.sampled})),
        "destination": {"family": d.family, "address": d.address, "port": d.port, "protocol": d.protocol, "host_name": d.host_name, "by_name": d.by_name, "new_name": d.new_name},
        "ancestors": r.ancestors.iter().map(|a| json!({"pid": a.pid, "exe": a.exe, "argv": a.argv})).collect::<Vec<_>>(),
        "received_at": time(rec.received_at_unix_ms),
        "expires_at": time(rec.expires_at_unix_ms),
        "approvers_needed": rec.approvers_needed,
        "approver_groups": rec.approver_groups,
        "votes": rec.votes.iter().map(|v| json!({"approver": v.approver,
            "outcome": outcome_name(v.outcome), "reason": v.reason, "at": time(v.at_unix_ms)})).collect::<Vec<_>>(),
        "transitions": rec.transitions.iter().map(|t| json!({"from": state_name(t.from), "to": state_name(t.to),
            "actor": t.actor, "reason": t.reason, "at": time(t.at_unix_ms)})).collect::<Vec<_>>(),
        "decision": rec.decision.as_ref().map(|d| json!({"outcome": outcome_name(d.outcome),
            "decided_by": d.decided_by, "reason": d.reason, "at": time(d.decided_at_unix_ms),
            "grant_id": d.grant.as_ref().map(|g| g.grant_id.clone())})),
    });
    // Beside the rest: one more field in the literal above exceeds the macro's recursion limit.
    v["merged"] = json!(rec.merged);
    v["merged_into"] = json!(rec.merged_into);
    v
}

fn outcome_name(o: i32) -> &'static str {
    match Outcome::try_from(o) {
        Ok(Outcome::Allow) => "allow",
        Ok(Outcome::Deny) => "deny",
        _ => "-",
    }
}

fn show(rec: &ApprovalRecord) {
    use latch_central::text::term_safe as t;
    let r = rec.request.clone().unwrap_or_default();
    let mut lines: Vec<(String, String)> = vec![
        ("request".into(), rec.approval_id.clone()),
        ("state".into(), state_name(rec.state)),
        (
            "host".into(),
            format!("{} (agent request {})", r.host_id, r.request_id),
        ),
        (
            "rule".into(),
            format!(
                "{} (id {}, rules version {})",
                r.rule_name, r.rule_id, r.rules_version
            ),
        ),
        ("workload".into(), r.workload.clone()),
        ("requester".into(), r.requester.clone()),
        (
            "user".into(),
            format!(
                "{} (uid {}) group {} (gid {})",
                r.user, r.uid, r.group, r.gid
            ),
        ),
        (
            "process".into(),
            format!(
                "pid {} tgid {} ppid {} comm {}",
                r.pid, r.tgid, r.ppid, r.comm
            ),
        ),
        ("exe".into(), r.exe.clone()),
        (
            "cgroup".into(),
            format!("{} (id {})", r.cgroup_path, r.cgroup_id),
        ),
        ("unit".into(), r.unit.clone()),
        ("what".into(), what(rec)),
    ];
    if let Some(d) = &r.destination {
        if let Some(n) = latch_central::known_names::new_name_text(d) {
            lines.push(("new name".into(), n));
        }
        if let Some(c) = latch_central::grants::covers_text(d) {
            lines.push(("a grant covers".into(), c));
        }
    }
    for v in &r.env {
        lines.push((format!("env {}", v.name), v.value.clone()));
    }
    if let Some(t) = &r.trace {
        lines.push((
            "trace".into(),
            format!("{} (span {})", t.trace_id, t.parent_id),
        ));
    }
    if !r.justification.is_empty() {
        lines.push(("workload says (unverified)".into(), r.justification.clone()));
    }
    if let Some(a) = &rec.recommendation {
        lines.push((
            "automatic reviewer".into(),
            latch_central::auto_protocol::summary(a),
        ));
    }
    if rec.merged > 0 {
        lines.push((
            "identical requests".into(),
            latch_central::merge::count_line(rec.merged, rec.state == RequestState::Pending as i32),
        ));
    }
    if !rec.merged_into.is_empty() {
        lines.push((
            "waits with".into(),
            format!("{} (identical; resolved with it)", rec.merged_into),
        ));
    }
    for (i, a) in r.argv.iter().enumerate() {
        lines.push((format!("argv[{i}]"), a.clone()));
    }
    for (i, a) in r.ancestors.iter().enumerate() {
        lines.push((
            format!("parent {}", i + 1),
            format!("pid {} {} {}", a.pid, a.exe, a.argv.join(" ")),
        ));
    }
    lines.push(("received".into(), time(rec.received_at_unix_ms)));
    lines.push((
        "expires".into(),
        format!(
            "{} ({}); then {}",
            time(rec.expires_at_unix_ms),
            relative(rec.expires_at_unix_ms),
            outcome_name(rec.on_timeout)
        ),
    ));
    lines.push((
        "approvers".into(),
        format!(
            "{} needed{}",
            rec.approvers_needed,
            if rec.approver_groups.is_empty() {
                String::new()
            } else {
                format!(" from {}", rec.approver_groups.join(", "))
            }
        ),
    ));
    for v in &rec.votes {
        lines.push((
            "vote".into(),
            format!(
                "{} {} at {}: {}",
                v.approver,
                outcome_name(v.outcome),
                time(v.at_unix_ms),
                v.reason
            ),
        ));
    }
    for tr in &rec.transitions {
        lines.push((
            "history".into(),
            format!(
                "{} {} -> {} by {}: {}",
                time(tr.at_unix_ms),
                state_name(tr.from),
                state_name(tr.to),
                tr.actor,
                tr.reason
            ),
        ));
    }
    if let Some(d) = &rec.decision {
        lines.push((
            "decision".into(),
            format!(
                "{} by {} at {}: {}{}",
                outcome_name(d.outcome),
                d.decided_by,
                time(d.decided_at_unix_ms),
                d.reason,
                d.grant
                    .as_ref()
                    .map(|g| format!(
                        " (grant {}{} until {})",
                        g.grant_id,
                        covers(g),
                        time(g.expires_at_unix_ms)
                    ))
                    .unwrap_or_default()
            ),
        ));
    }
    let w = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in lines {
        println!("{k:<w$}  {}", t(&v));
    }
}

async fn pending(ctx: &Ctx, out: Out, watch: bool) -> Result<(), CliError> {
    let mut c = connect(ctx).await?;
    if !watch {
        let list = c
            .inner
            .list_requests(c.req(ListRequestsRequest {
                state: RequestState::Pending as i32,
                host_id: String::new(),
                limit: 1000,
            }))
            .await?
            .into_inner()
            .requests;
        if out.json {
            out.json_pretty(&Value::Array(list.iter().map(record_json).collect()));
            return Ok(());
        }
        let rows: Vec<Vec<String>> = list
            .iter()
            .map(|rec| {
                let r = rec.request.clone().unwrap_or_default();
                vec![
                    rec.approval_id.clone(),
                    relative(rec.expires_at_unix_ms),
                    (u64::from(rec.merged) + 1).to_string(),
                    r.host_id,
                    r.workload,
                    r.rule_name,
                    r.requester,
                    what(rec),
                ]
            })
            .collect();
        out.table(
            &[
                "ID",
                "EXPIRES",
                "COUNT",
                "HOST",
                "WORKLOAD",
                "RULE",
                "REQUESTER",
                "WHAT",
            ],
            &rows,
            &[],
        );
        return Ok(());
    }
    let mut stream = c
        .inner
        .watch_requests(c.req(WatchRequestsRequest {}))
        .await?
        .into_inner();
    while let Some(ev) = stream.message().await? {
        let Some(rec) = ev.request else { continue };
        if out.json {
            let mut v = record_json(&rec);
            v["snapshot"] = json!(ev.snapshot);
            out.json_line(&v);
        } else {
            let r = rec.request.clone().unwrap_or_default();
            println!(
                "{}  {}  {}  {}  {}  {}",
                time(latch_central::clock::now_ms()),
                out.state(&state_name(rec.state)),
                latch_central::text::term_safe(&rec.approval_id),
                latch_central::text::term_safe(&r.host_id),
                latch_central::text::term_safe(&r.rule_name),
                latch_central::text::term_safe(&what(&rec)),
            );
        }
    }
    Ok(())
}

async fn decide(
    ctx: &Ctx,
    out: Out,
    id: String,
    kind: DecisionKind,
    secs: u64,
    scope: GrantScope,
    reason: String,
) -> Result<(), CliError> {
    if reason.trim().is_empty() {
        return Err(CliError::Usage("--reason must not be empty".into()));
    }
    let mut c = connect(ctx).await?;
    let resp = c
        .inner
        .decide(c.req(DecideRequest {
            approval_id: id,
            kind: kind as i32,
            duration_seconds: secs,
            scope: scope as i32,
            reason,
        }))
        .await?
        .into_inner();
    let rec = resp.request.unwrap_or_default();
    if out.json {
        let mut v = record_json(&rec);
        v["final"] = json!(resp.r#final);
        out.json_pretty(&v);
    } else if resp.r#final {
        println!(
            "{} {}",
            latch_central::text::term_safe(&rec.approval_id),
            out.state(&state_name(rec.state))
        );
    } else {
        println!(
            "{}: approval recorded; {} approvers needed in all ({} so far)",
            latch_central::text::term_safe(&rec.approval_id),
            rec.approvers_needed,
            rec.votes
                .iter()
                .filter(|v| v.outcome == Outcome::Allow as i32)
                .count()
        );
    }
    Ok(())
}

/// A unified diff, line by line, each line escaped.
fn print_diff(diff: &str) {
    for l in diff.lines() {
        println!("{}", latch_central::text::term_safe(l));
    }
}

fn read_file(path: &std::path::Path) -> Result<String, CliError> {
    std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))
}

async fn rules(ctx: &Ctx, out: Out, cmd: RulesCommand) -> Result<(), CliError> {
    let mut c = connect(ctx).await?;
    match cmd {
        RulesCommand::Apply {
            file,
            selector,
            comment,
            dry_run,
        } => {
            let yaml = read_file(&file)?;
            let r = c
                .inner
                .apply_rules(c.req(ApplyRulesRequest {
                    source_name: file.display().to_string(),
                    yaml,
                    selector: selector.into_iter().collect(),
                    dry_run,
                    comment,
                }))
                .await?
                .into_inner();
            if out.json {
                out.json_pretty(&json!({"version": r.version, "rules": r.rules,
                    "workloads": r.workloads, "diff": r.diff, "dry_run": dry_run}));
            } else {
                print_diff(&r.diff);
                if dry_run {
                    println!(
                        "valid: {} rules, {} workloads (dry run: nothing applied)",
                        r.rules, r.workloads
                    );
                } else {
                    println!(
                        "applied version {} ({} rules, {} workloads)",
                        r.version, r.rules, r.workloads
                    );
                }
            }
        }
        RulesCommand::Diff { file, selector } => {
            let yaml = read_file(&file)?;
            let r = c
                .inner
                .apply_rules(c.req(ApplyRulesRequest {
                    source_name: file.display().to_string(),
                    yaml,
                    selector: selector.into_iter().collect(),
                    dry_run: true,
                    comment: String::new(),
                }))
                .await?
                .into_inner();
            if out.json {
                out.json_pretty(&json!({"diff": r.diff}));
            } else if r.diff.is_empty() {
                println!("no change");
            } else {
                print_diff(&r.diff);
            }
        }
        RulesCommand::List => {
            let v = c
                .inner
                .list_rules(c.req(ListRulesRequest {}))
                .await?
                .into_inner()
                .versions;
            if out.json {
                out.json_pretty(&Value::Array(
                    v.iter()
                        .map(|v| {
                            json!({"version": v.version, "source_name": v.source_name,
                            "applied_by": v.applied_by, "applied_at": time(v.applied_at_unix_ms),
                            "sha256": v.sha256, "selector": v.selector, "comment": v.comment,
                            "rollback_of": v.rollback_of})
                        })
                        .collect(),
                ));
            } else {
                let rows: Vec<Vec<String>> = v
                    .iter()
                    .map(|v| {
                        let mut sel: Vec<String> =
                            v.selector.iter().map(|(k, x)| format!("{k}={x}")).collect();
                        sel.sort();
                        vec![
                            v.version.to_string(),
                            time(v.applied_at_unix_ms),
                            v.applied_by.clone(),
                            v.source_name.clone(),
                            v.sha256.chars().take(12).collect(),
                            if sel.is_empty() {
                                "*".into()
                            } else {
                                sel.join(",")
                            },
                            v.comment.clone(),
                        ]
                    })
                    .collect();
                out.table(
                    &[
                        "VERSION", "APPLIED", "BY", "FILE", "SHA256", "HOSTS", "COMMENT",
                    ],
                    &rows,
                    &[],
                );
            }
        }
        RulesCommand::Rollback { version, reason } => {
            let r = c
                .inner
                .rollback_rules(c.req(RollbackRulesRequest { version, reason }))
                .await?
                .into_inner();
            if out.json {
                out.json_pretty(
                    &json!({"version": r.version, "rollback_of": version, "diff": r.diff}),
                );
            } else {
                print_diff(&r.diff);
                println!("version {} restores version {version}", r.version);
            }
        }
    }
    Ok(())
}

fn grant_state(g: &Grant) -> &'static str {
    if g.revoked_at_unix_ms > 0 {
        "revoked"
    } else if g.expires_at_unix_ms <= latch_central::clock::now_ms() {
        "expired"
    } else {
        "active"
    }
}

fn scope_name(s: i32) -> String {
    GrantScope::try_from(s)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("GRANT_SCOPE_")
                .to_lowercase()
        })
        .unwrap_or_default()
}

async fn grants(ctx: &Ctx, out: Out, cmd: GrantsCommand) -> Result<(), CliError> {
    let mut c = connect(ctx).await?;
    match cmd {
        GrantsCommand::List { all, host } => {
            let g = c
                .inner
                .list_grants(c.req(ListGrantsRequest {
                    include_inactive: all,
                    host_id: host.unwrap_or_default(),
                }))
                .await?
                .into_inner()
                .grants;
            if out.json {
                out.json_pretty(&Value::Array(g.iter().map(grant_json).collect()));
            } else {
                let rows: Vec<Vec<String>> = g
                    .iter()
                    .map(|g| {
                        vec![
                            g.grant_id.clone(),
                            out.state(grant_state(g)),
                            scope_name(g.scope),
                            g.host_id.clone(),
                            g.workload.clone(),
                            g.rule_name.clone(),
                            if g.host_name.is_empty() {
                                "-".into()
                            } else {
                                g.host_name.clone()
                            },
                            g.granted_by.clone(),
                            time(g.expires_at_unix_ms),
                        ]
                    })
                    .collect();
                out.table(
                    &[
                        "ID", "STATE", "SCOPE", "HOST", "WORKLOAD", "RULE", "NAME", "BY", "EXPIRES",
                    ],
                    &rows,
                    &[1],
                );
            }
        }
        GrantsCommand::Revoke {
            id,
            reason,
            close_connections,
        } => {
            if reason.trim().is_empty() {
                return Err(CliError::Usage("--reason must not be empty".into()));
            }
            let g = c
                .inner
                .revoke_grant(c.req(RevokeGrantRequest {
                    grant_id: id,
                    reason,
                    close_connections,
                }))
                .await?
                .into_inner();
            if out.json {
                out.json_pretty(&grant_json(&g));
            } else {
                println!(
                    "{} revoked{}",
                    latch_central::text::term_safe(&g.grant_id),
                    if g.close_connections {
                        "; its connections are being closed on the host"
                    } else {
                        ""
                    }
                );
            }
        }
    }
    Ok(())
}

fn grant_json(g: &Grant) -> Value {
    json!({"grant_id": g.grant_id, "state": grant_state(g), "scope": scope_name(g.scope),
        "host_id": g.host_id, "workload": g.workload, "rule": g.rule_name, "tgid": g.tgid,
        "request_id": g.request_id, "granted_by": g.granted_by, "created_at": time(g.created_at_unix_ms),
        "expires_at": time(g.expires_at_unix_ms), "revoked_at": time(g.revoked_at_unix_ms),
        "revoked_by": g.revoked_by, "revoke_reason": g.revoke_reason,
        "close_connections": g.close_connections, "host_name": g.host_name})
}

/// What a grant covers beyond the request's address, for a line of text.
fn covers(g: &Grant) -> String {
    if g.host_name.is_empty() {
        String::new()
    } else {
        format!(" for every address of {}", g.host_name)
    }
}

async fn hosts(ctx: &Ctx, out: Out) -> Result<(), CliError> {
    let mut c = connect(ctx).await?;
    let hosts = c
        .inner
        .list_hosts(c.req(ListHostsRequest {}))
        .await?
        .into_inner()
        .hosts;
    let enforcement = |e: i32| {
        RuleEnforcement::try_from(e)
            .map(|e| {
                e.as_str_name()
                    .trim_start_matches("RULE_ENFORCEMENT_")
                    .to_lowercase()
            })
            .unwrap_or_default()
    };
    if out.json {
        out.json_pretty(&Value::Array(
            hosts
                .iter()
                .map(|h| json!({"host_id": h.host_id, "hostname": h.hostname, "labels": h.labels,
                    "agent_version": h.agent_version, "connected": h.connected,
                    "last_seen": time(h.last_seen_unix_ms),
                    "kernel": h.capabilities.as_ref().map(|c| c.kernel.clone()),
                    "host_enforcement": h.capabilities.as_ref().and_then(|c| c.features.get("enforcement").cloned()),
                    "rules_version_desired": h.rules_version_desired,
                    "rules_version_acked": h.rules_version_acked, "rules_error": h.rules_error,
                    "rules": h.rules.iter().map(|r| json!({"rule": r.rule_name,
                        "enforcement": enforcement(r.enforcement), "message": r.message})).collect::<Vec<_>>()}))
                .collect(),
        ));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = hosts
        .iter()
        .map(|h| {
            let degraded = h
                .rules
                .iter()
                .filter(|r| r.enforcement != RuleEnforcement::Enforced as i32)
                .count();
            vec![
                h.host_id.clone(),
                h.hostname.clone(),
                if h.connected {
                    out.paint("32", "yes")
                } else {
                    out.paint("31", "no")
                },
                time(h.last_seen_unix_ms),
                format!("{}/{}", h.rules_version_acked, h.rules_version_desired),
                if !h.rules_error.is_empty() {
                    format!("error: {}", h.rules_error)
                } else if let Some(e) = h
                    .capabilities
                    .as_ref()
                    .and_then(|c| c.features.get("enforcement"))
                    .filter(|e| e.as_str() != "enforced")
                {
                    // The host's own report (latch-agent doctor): what it cannot enforce.
                    e.clone()
                } else if degraded > 0 {
                    format!("{degraded} rule(s) not fully enforced")
                } else {
                    "ok".into()
                },
                h.agent_version.clone(),
            ]
        })
        .collect();
    out.table(
        &[
            "HOST",
            "HOSTNAME",
            "CONNECTED",
            "LAST SEEN",
            "RULES",
            "ENFORCEMENT",
            "AGENT",
        ],
        &rows,
        &[2],
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
