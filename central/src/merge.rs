//! Which pending requests are the same request: the same held operation (program and command
//! line, or destination), by the same workload and requester, with the same process tree, on the
//! same host, caught by the same rule of the same rules version on the same terms. Such requests wait together behind the first of them, which
//! is what reviewers see with a count, and one decision resolves them all. Pure: `approval`
//! stores the key and does the merging.
//!
//! What may differ between merged requests is what does not change what is approved: the
//! process ids, the time, the agent's request id, and what the workload says about itself (its
//! justification, which the agent sends after the request, and its session variables and trace
//! context, whose tool-call and span ids differ on every call by design). The rest of what reviewers are shown is in the
//! key, so merging never lets one decision cover an operation, or a process tree, that nobody
//! saw.

use latch_proto::v1::ApprovalRequest;
use sha2::{Digest, Sha256};

/// What central resolved from the rule a request names: requests decided on other terms are
/// other requests (a request naming no rules version is matched against the host's current one,
/// which may have changed between two identical requests).
#[derive(Clone, Copy, Debug)]
pub struct Terms<'a> {
    /// The workload's name.
    pub workload: &'a str,
    /// The rule's name.
    pub rule_name: &'a str,
    /// Distinct approvers needed.
    pub approvers_needed: u32,
    /// Groups approvers must be in.
    pub approver_groups: &'a [String],
    /// `allow` or `deny` at the deadline.
    pub on_timeout: &'a str,
    /// How long it may wait.
    pub timeout_ms: u64,
}

/// What reviewers are told of the requests waiting with (or resolved with) one they see.
pub fn count_line(merged: u32, pending: bool) -> String {
    if pending {
        format!(
            "{merged} more waiting; a decision here decides all {}",
            u64::from(merged) + 1
        )
    } else {
        format!("{merged} more, resolved with this one")
    }
}

/// A 64-bit lock identifier for requests with `key`: its first 16 hex digits (a key that is not
/// hex, which [`key`] never makes, still gets one, from its bytes).
pub fn lock_id(key: &str) -> i64 {
    match key.get(..16).and_then(|h| u64::from_str_radix(h, 16).ok()) {
        Some(v) => v as i64,
        None => key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        }) as i64,
    }
}

/// The key of a request: lower-case hex SHA-256 of every field that must be equal, each
/// length-prefixed so that no two different requests share an encoding.
pub fn key(host_id: &str, terms: &Terms<'_>, req: &ApprovalRequest) -> String {
    let mut h = Sha256::new();
    let mut field = |b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    field(b"latch-merge-v1");
    field(host_id.as_bytes());
    field(terms.workload.as_bytes());
    field(terms.rule_name.as_bytes());
    field(&terms.approvers_needed.to_le_bytes());
    field(&(terms.approver_groups.len() as u64).to_le_bytes());
    for g in terms.approver_groups {
        field(g.as_bytes());
    }
    field(terms.on_timeout.as_bytes());
    field(&terms.timeout_ms.to_le_bytes());
    field(&req.rule_id.to_le_bytes());
    field(&req.rules_version.to_le_bytes());
    field(req.requester.as_bytes());
    field(&req.op.to_le_bytes());
    field(&req.uid.to_le_bytes());
    field(&req.gid.to_le_bytes());
    field(req.user.as_bytes());
    field(req.group.as_bytes());
    field(req.unit.as_bytes());
    field(req.cgroup_path.as_bytes());
    field(&req.cgroup_id.to_le_bytes());
    field(req.comm.as_bytes());
    field(req.exe.as_bytes());
    field(req.exec_path.as_bytes());
    field(&(req.argv.len() as u64).to_le_bytes());
    for a in &req.argv {
        field(a.as_bytes());
    }
    field(&(req.ancestors.len() as u64).to_le_bytes());
    for a in &req.ancestors {
        field(a.exe.as_bytes());
        field(&(a.argv.len() as u64).to_le_bytes());
        for arg in &a.argv {
            field(arg.as_bytes());
        }
    }
    match &req.destination {
        Some(d) => {
            field(b"destination");
            field(d.family.as_bytes());
            field(d.address.as_bytes());
            field(&d.port.to_le_bytes());
            field(d.protocol.as_bytes());
            // Only when known, so that the key of a request without a name is what it was.
            if !d.host_name.is_empty() {
                field(b"host_name");
                field(d.host_name.as_bytes());
            }
        }
        None => field(b"no destination"),
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use latch_proto::v1::{Ancestor, Destination, EnvVar, Op, TraceContext};

    use super::*;

    fn base() -> ApprovalRequest {
        ApprovalRequest {
            request_id: "1.100".into(),
            host_id: "h1".into(),
            op: Op::Connect as i32,
            pid: 10,
            tgid: 10,
            ppid: 1,
            uid: 1000,
            gid: 1000,
            unit: "etl.service".into(),
            cgroup_path: "/system.slice/etl.service".into(),
            exe: "/usr/bin/psql".into(),
            argv: vec!["psql".into(), "-h".into(), "db".into()],
            destination: Some(Destination {
                family: "inet".into(),
                address: "10.0.0.5".into(),
                port: 5432,
                protocol: "tcp".into(),
                host_name: String::new(),
                by_name: false,
                new_name: false,
            }),
            rule_id: 3,
            rules_version: 7,
            requester: "unit:etl.service".into(),
            created_at_unix_ms: 1,
            user: "etl".into(),
            group: "etl".into(),
            cgroup_id: 77,
            comm: "psql".into(),
            ancestors: vec![Ancestor {
                pid: 1,
                exe: "/usr/bin/bash".into(),
                argv: vec!["bash".into(), "run.sh".into()],
            }],
            ..Default::default()
        }
    }

    const GROUPS: &[String] = &[];

    fn terms() -> Terms<'static> {
        Terms {
            workload: "etl",
            rule_name: "prod-db",
            approvers_needed: 1,
            approver_groups: GROUPS,
            on_timeout: "deny",
            timeout_ms: 600_000,
        }
    }

    /// One change to a request, named.
    type Change = fn(&mut ApprovalRequest);

    fn dest(r: &mut ApprovalRequest) -> &mut Destination {
        r.destination.get_or_insert_with(Default::default)
    }

    fn k(r: &ApprovalRequest) -> String {
        key("h1", &terms(), r)
    }

    #[test]
    fn what_does_not_change_the_decision_does_not_split_requests() {
        let cases: &[(&str, Change)] = &[
            ("another agent request id", |r| {
                r.request_id = "2.200".into()
            }),
            ("another process", |r| {
                r.pid = 11;
                r.tgid = 11;
                r.ppid = 2;
                r.ancestors[0].pid = 2;
            }),
            ("another time", |r| r.created_at_unix_ms = 99),
            ("a justification", |r| r.justification = "needed".into()),
            ("session variables", |r| {
                r.env = vec![EnvVar {
                    name: "TOOL_CALL".into(),
                    value: "7".into(),
                }]
            }),
            ("a trace context", |r| {
                r.trace = Some(TraceContext {
                    trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                    parent_id: "00f067aa0ba902b7".into(),
                    sampled: true,
                })
            }),
        ];
        for (what, change) in cases {
            let mut r = base();
            change(&mut r);
            assert_eq!(k(&r), k(&base()), "{what} must not split requests");
        }
    }

    #[test]
    fn anything_a_reviewer_decides_on_splits_requests() {
        let cases: &[(&str, Change)] = &[
            ("another address", |r| {
                dest(r).address = "10.0.0.6".into();
            }),
            ("another port", |r| {
                dest(r).port = 5433;
            }),
            ("another family", |r| {
                dest(r).family = "inet6".into();
            }),
            ("another protocol", |r| {
                dest(r).protocol = "udp".into();
            }),
            ("a host name the workload resolved", |r| {
                dest(r).host_name = "db.internal".into();
            }),
            ("no destination", |r| r.destination = None),
            ("another argument", |r| r.argv[2] = "db2".into()),
            ("one argument fewer", |r| {
                r.argv.pop();
            }),
            ("arguments joined differently", |r| {
                r.argv = vec!["psql -h".into(), "db".into()]
            }),
            ("another program", |r| r.exe = "/usr/bin/curl".into()),
            ("another exec path", |r| r.exec_path = "/tmp/x".into()),
            ("another operation", |r| r.op = Op::Sendmsg as i32),
            ("another user", |r| r.uid = 0),
            ("another group", |r| r.gid = 0),
            ("another requester", |r| r.requester = "unit:other".into()),
            ("another unit", |r| r.unit = "other.service".into()),
            ("another cgroup", |r| r.cgroup_path = "/other".into()),
            ("another cgroup id", |r| r.cgroup_id = 78),
            ("another user name", |r| r.user = "root".into()),
            ("another group name", |r| r.group = "root".into()),
            ("another command name", |r| r.comm = "curl".into()),
            ("another parent program", |r| {
                r.ancestors[0].exe = "/usr/bin/python3".into()
            }),
            ("another parent command line", |r| {
                r.ancestors[0].argv[1] = "other.sh".into()
            }),
            ("another ancestor", |r| {
                r.ancestors.push(Ancestor {
                    pid: 1,
                    exe: "/sbin/init".into(),
                    argv: vec![],
                })
            }),
            ("another rule id", |r| r.rule_id = 4),
            ("another rules version", |r| r.rules_version = 8),
        ];
        for (what, change) in cases {
            let mut r = base();
            change(&mut r);
            assert_ne!(k(&r), k(&base()), "{what} must split requests");
        }
        let r = base();
        assert_ne!(key("h2", &terms(), &r), k(&r), "another host");
        let groups = ["dba".to_string()];
        let other_terms: &[(&str, Terms<'_>)] = &[
            (
                "another workload",
                Terms {
                    workload: "web",
                    ..terms()
                },
            ),
            (
                "another rule name",
                Terms {
                    rule_name: "other",
                    ..terms()
                },
            ),
            (
                "more approvers",
                Terms {
                    approvers_needed: 2,
                    ..terms()
                },
            ),
            (
                "approver groups",
                Terms {
                    approver_groups: &groups,
                    ..terms()
                },
            ),
            (
                "another on_timeout",
                Terms {
                    on_timeout: "allow",
                    ..terms()
                },
            ),
            (
                "another timeout",
                Terms {
                    timeout_ms: 1_000,
                    ..terms()
                },
            ),
            // Length prefixes: moving a character from one field to the next is another key.
            (
                "a character moved between fields",
                Terms {
                    workload: "etlp",
                    rule_name: "rod-db",
                    ..terms()
                },
            ),
        ];
        for (what, t) in other_terms {
            assert_ne!(key("h1", t, &r), k(&r), "{what} must split requests");
        }
    }
}
