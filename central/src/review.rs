//! The `policy` step of a rule's review chain: the rule's checks, evaluated over the request
//! as reviewers see it (the agent masked it before it left the host). The first check whose
//! expression is true decides. A check that cannot be evaluated (a missing key, a result that
//! is not a bool) ends the step without a decision and is reported: the request goes to the
//! next step, never to a later check, so that a workload cannot skip a `deny_if` by leaving
//! out what it reads.
//!
//! Pure: no store, no transport. [`crate::approval`] calls it when a request arrives and
//! records what it decided.

use std::collections::BTreeMap;

use latch_proto::v1::{ApprovalRequest, Op};
use policy::{PolicyCheck, Verdict};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// What a check reads: the variables of [`policy::review::VARIABLES`].
#[derive(Clone, Debug, Serialize)]
pub struct Inputs {
    op: &'static str,
    host: HostIn,
    workload: String,
    rule: String,
    process: ProcessIn,
    parent: AncestorIn,
    ancestors: Vec<AncestorIn>,
    exec: ExecIn,
    destination: DestinationIn,
    env: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Serialize)]
struct HostIn {
    id: String,
    labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Serialize)]
struct ProcessIn {
    pid: i64,
    uid: i64,
    gid: i64,
    user: String,
    group: String,
    comm: String,
    exe: String,
    argv: Vec<String>,
    unit: String,
    cgroup: String,
}

#[derive(Clone, Debug, Default, Serialize)]
struct AncestorIn {
    exe: String,
    argv: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
struct ExecIn {
    path: String,
}

#[derive(Clone, Debug, Serialize)]
struct DestinationIn {
    address: String,
    port: i64,
    protocol: String,
    /// The name the workload resolved to the address; empty when none is known.
    host_name: String,
}

impl Inputs {
    /// The inputs of a request from `host_id` with `labels`, under `rule` of `workload`.
    pub fn of(
        req: &ApprovalRequest,
        host_id: &str,
        labels: &BTreeMap<String, String>,
        rule: &str,
        workload: &str,
    ) -> Inputs {
        let ancestors: Vec<AncestorIn> = req
            .ancestors
            .iter()
            .map(|a| AncestorIn {
                exe: a.exe.clone(),
                argv: a.argv.clone(),
            })
            .collect();
        let d = req.destination.clone().unwrap_or_default();
        Inputs {
            op: match Op::try_from(req.op).unwrap_or(Op::Unspecified) {
                Op::Exec => "exec",
                Op::Connect | Op::Sendmsg => "connect",
                Op::Unspecified => "",
            },
            host: HostIn {
                id: host_id.to_string(),
                labels: labels.clone(),
            },
            workload: workload.to_string(),
            rule: rule.to_string(),
            process: ProcessIn {
                pid: i64::from(req.tgid),
                uid: i64::from(req.uid),
                gid: i64::from(req.gid),
                user: req.user.clone(),
                group: req.group.clone(),
                comm: req.comm.clone(),
                exe: req.exe.clone(),
                argv: req.argv.clone(),
                unit: req.unit.clone(),
                cgroup: req.cgroup_path.clone(),
            },
            parent: ancestors.first().cloned().unwrap_or_default(),
            ancestors,
            exec: ExecIn {
                path: req.exec_path.clone(),
            },
            destination: DestinationIn {
                address: d.address,
                port: i64::from(d.port),
                protocol: d.protocol,
                host_name: d.host_name,
            },
            env: req
                .env
                .iter()
                .map(|v| (v.name.clone(), v.value.clone()))
                .collect(),
        }
    }

    /// SHA-256 of the inputs as JSON: what the audit record names as the evidence a check saw.
    pub fn digest(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(Sha256::digest(&json))
    }
}

/// What the policy step found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Finding {
    /// The check that decided, with what it decided; `None` when none did.
    pub decided: Option<(PolicyCheck, Verdict)>,
    /// The check that could not be evaluated, with why: it ended the step.
    pub failed: Vec<(String, String)>,
}

/// Evaluates `checks` in order over `inputs`; the first that is true decides.
pub fn evaluate(checks: &[PolicyCheck], inputs: &Inputs) -> Finding {
    let mut finding = Finding::default();
    let mut context = cel::Context::default();
    let variables = [
        ("op", cel::to_value(inputs.op)),
        ("host", cel::to_value(&inputs.host)),
        ("workload", cel::to_value(&inputs.workload)),
        ("rule", cel::to_value(&inputs.rule)),
        ("process", cel::to_value(&inputs.process)),
        ("parent", cel::to_value(&inputs.parent)),
        ("ancestors", cel::to_value(&inputs.ancestors)),
        ("exec", cel::to_value(&inputs.exec)),
        ("destination", cel::to_value(&inputs.destination)),
        ("env", cel::to_value(&inputs.env)),
    ];
    for (name, value) in variables {
        match value {
            Ok(v) => context.add_variable_from_value(name, v),
            Err(e) => {
                // Nothing a check reads can be trusted if the inputs could not be built.
                finding
                    .failed
                    .push(("*".into(), format!("building `{name}`: {e}")));
                return finding;
            }
        }
    }
    for check in checks {
        // The interpreter is another project's code run on text a workload chose: a panic in
        // it is a check that could not be evaluated, not a failed request.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            cel::Program::compile(&check.expression)
                .map_err(|e| e.to_string())
                .and_then(|p| p.execute(&context).map_err(|e| e.to_string()))
        }))
        .unwrap_or_else(|_| Err("the expression's evaluation panicked".into()));
        match result {
            Ok(cel::Value::Bool(true)) => {
                finding.decided = Some((check.clone(), check.verdict));
                return finding;
            }
            Ok(cel::Value::Bool(false)) => {}
            Ok(other) => {
                finding.failed.push((
                    check.name.clone(),
                    format!("the expression gave {other:?}, not a bool"),
                ));
                return finding;
            }
            Err(e) => {
                finding.failed.push((check.name.clone(), e));
                return finding;
            }
        }
    }
    finding
}

#[cfg(test)]
mod tests {
    use latch_proto::v1::{Ancestor, Destination, EnvVar};

    use super::*;

    fn check(name: &str, expression: &str, verdict: Verdict) -> PolicyCheck {
        PolicyCheck {
            name: name.into(),
            expression: expression.into(),
            verdict,
        }
    }

    fn connect() -> Inputs {
        let req = ApprovalRequest {
            op: Op::Connect as i32,
            tgid: 42,
            uid: 1000,
            user: "ci".into(),
            comm: "psql".into(),
            exe: "/usr/bin/psql".into(),
            argv: vec!["psql".into(), "-h".into(), "db".into()],
            ancestors: vec![
                Ancestor {
                    pid: 41,
                    exe: "/usr/bin/deploy".into(),
                    argv: vec!["deploy".into(), "--prod".into()],
                },
                Ancestor {
                    pid: 1,
                    exe: "/usr/lib/systemd/systemd".into(),
                    argv: vec![],
                },
            ],
            destination: Some(Destination {
                address: "10.20.0.5".into(),
                port: 5432,
                protocol: "tcp".into(),
                host_name: "pg.db.internal".into(),
                ..Default::default()
            }),
            env: vec![EnvVar {
                name: "SESSION".into(),
                value: "s-7".into(),
            }],
            ..Default::default()
        };
        let labels = BTreeMap::from([("env".to_string(), "prod".to_string())]);
        Inputs::of(&req, "h1", &labels, "prod-db", "agents")
    }

    #[test]
    fn the_first_true_check_decides() {
        use Verdict::{Approve, Deny};
        let i = connect();
        // The checks, the one that decides and how, and those that could not be evaluated.
        type Case<'a> = (&'a [PolicyCheck], Option<(&'a str, Verdict)>, &'a [&'a str]);
        let cases: &[Case] = &[
            (&[], None, &[]),
            (
                &[check(
                    "deploy",
                    "parent.exe == '/usr/bin/deploy' && destination.port == 5432",
                    Approve,
                )],
                Some(("deploy", Approve)),
                &[],
            ),
            (
                &[
                    check("root", "process.uid == 0", Deny),
                    check("lab", "host.labels['env'] == 'prod' && op == 'connect'", Deny),
                    check("late", "true", Approve),
                ],
                Some(("lab", Deny)),
                &[],
            ),
            (
                &[check(
                    "named",
                    "destination.host_name.endsWith('.db.internal')",
                    Approve,
                )],
                Some(("named", Approve)),
                &[],
            ),
            (
                &[check(
                    "argv",
                    "process.argv.exists(a, a == '-h') && ancestors.size() == 2",
                    Approve,
                )],
                Some(("argv", Approve)),
                &[],
            ),
            (
                &[check(
                    "env",
                    "has(env.SESSION) && env.SESSION.startsWith('s-') && workload == 'agents' && rule == 'prod-db'",
                    Approve,
                )],
                Some(("env", Approve)),
                &[],
            ),
            // A missing key, a result that is not a bool, arithmetic that overflows or divides
            // by zero, an index out of range: reported, never deciding, and the checks after
            // it are not asked (a workload cannot skip a deny by leaving out what it reads).
            (
                &[check("missing", "env.TOKEN == 'x'", Deny), check("yes", "true", Approve)],
                None,
                &["missing"],
            ),
            (&[check("number", "destination.port", Approve)], None, &["number"]),
            (
                &[check("overflow", "process.uid * 9223372036854775807 > 0", Approve)],
                None,
                &["overflow"],
            ),
            (
                &[check("zero", "destination.port / (process.gid - process.gid) == 1", Approve)],
                None,
                &["zero"],
            ),
            (&[check("index", "process.argv[99] == 'x'", Approve)], None, &["index"]),
            (
                &[
                    check("no", "exec.path == '/usr/bin/curl'", Approve),
                    check("missing", "host.labels['team'] == 'db'", Deny),
                    check("after", "destination.address.startsWith('10.')", Approve),
                ],
                None,
                &["missing"],
            ),
        ];
        for (checks, want, failed) in cases {
            let f = evaluate(checks, &i);
            assert_eq!(
                f.decided.as_ref().map(|(c, v)| (c.name.as_str(), *v)),
                *want,
                "{checks:?}: {f:?}"
            );
            assert_eq!(
                f.failed.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
                *failed,
                "{checks:?}"
            );
        }
    }

    #[test]
    fn the_digest_names_the_inputs() {
        let a = connect();
        let mut b = connect();
        assert_eq!(a.digest(), b.digest());
        assert_eq!(a.digest().len(), 64);
        b.process.uid = 0;
        assert_ne!(a.digest(), b.digest());
    }
}
