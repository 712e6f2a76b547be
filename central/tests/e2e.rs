//! End-to-end over real gRPC: the same scenarios against SQLite and against PostgreSQL.

#[macro_use]
mod common;

use std::collections::HashMap;

use common::*;
use latch_proto::v1::reviewer_service_client::ReviewerServiceClient;
use latch_proto::v1::{
    agent_message::Body, AgentAuditRecord, ApplyRulesRequest, AuditBatch, CancelApprovalRequest,
    DecideRequest, DecideResponse, DecisionKind, DiffRulesRequest, GetRequestRequest,
    GetRulesRequest, GrantScope, JustifyRequest, ListGrantsRequest, ListHostsRequest,
    ListRequestsRequest, Outcome, QueryAuditRequest, RequestState, RevokeGrantRequest,
    RollbackRulesRequest, RuleEnforcement, RuleStatus, RulesAck, ShadowReportRequest,
    WatchRequestsRequest,
};
use tonic::Code;

fn approve_once(id: &str, reason: &str) -> DecideRequest {
    DecideRequest {
        approval_id: id.into(),
        kind: DecisionKind::ApproveOnce as i32,
        reason: reason.into(),
        ..Default::default()
    }
}

fn deny(id: &str) -> DecideRequest {
    DecideRequest {
        approval_id: id.into(),
        kind: DecisionKind::Deny as i32,
        reason: "not now".into(),
        ..Default::default()
    }
}

async fn full_flow(env: &Env) {
    let server = env.start().await;
    let version = apply_rules(&server).await;
    assert_eq!(version, 1);
    let mut agent = Agent::connect(&server, "h1", vec![], vec![]).await;
    assert_eq!(agent.next_rules().await, 1);
    let t = agent.token();
    agent
        .client
        .ack_rules(req(
            RulesAck {
                host_id: "h1".into(),
                version: 1,
                rules: vec![
                    RuleStatus {
                        rule_id: rule_id("prod-db"),
                        rule_name: "prod-db".into(),
                        enforcement: RuleEnforcement::Enforced as i32,
                        message: String::new(),
                    },
                    RuleStatus {
                        rule_id: rule_id("two-person"),
                        rule_name: "two-person".into(),
                        enforcement: RuleEnforcement::Degraded as i32,
                        message: "no BPF LSM: SIGSTOP at exec instead of EPERM".into(),
                    },
                ],
                error: String::new(),
            },
            &t,
        ))
        .await
        .expect("ack");
    let mut rv = reviewer(&server).await;
    let hosts = rv
        .list_hosts(req(ListHostsRequest {}, VIEWER))
        .await
        .expect("hosts")
        .into_inner()
        .hosts;
    assert_eq!(hosts.len(), 1);
    let h = &hosts[0];
    assert!(h.connected);
    assert_eq!((h.rules_version_desired, h.rules_version_acked), (1, 1));
    let degraded = h
        .rules
        .iter()
        .find(|r| r.rule_name == "two-person")
        .expect("status");
    assert_eq!(degraded.enforcement, RuleEnforcement::Degraded as i32);

    let mut watch = rv
        .watch_requests(req(WatchRequestsRequest {}, VIEWER))
        .await
        .expect("watch")
        .into_inner();
    let acc = agent.submit(agent.request("1.100", "prod-db")).await;
    assert_eq!(acc.state, RequestState::Pending as i32);
    let ev = tokio::time::timeout(HANG, watch.message())
        .await
        .expect("watch hung")
        .expect("watch")
        .expect("watch ended");
    let seen = ev.request.expect("record");
    assert_eq!(seen.approval_id, acc.approval_id);
    assert_eq!(
        seen.request.as_ref().map(|r| r.exe.as_str()),
        Some("/usr/bin/python3.11")
    );
    // Delivered from what its transaction wrote, not read back: it must be the record as stored.
    assert_eq!(seen, get(&mut rv, &acc.approval_id).await);

    // A viewer may not decide.
    let e = rv
        .decide(req(approve_once(&acc.approval_id, "ok"), VIEWER))
        .await
        .expect_err("viewer decides");
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");

    let resp = rv
        .decide(req(approve_once(&acc.approval_id, "ticket DB-1"), ALICE))
        .await
        .expect("decide")
        .into_inner();
    assert!(resp.r#final);
    let d = agent.next_decision().await;
    assert_eq!(d.request_id, "1.100");
    assert_eq!(d.outcome, Outcome::Allow as i32);
    assert_eq!(d.decided_by, "alice");
    assert_eq!(d.reason, "ticket DB-1");
    assert!(d.grant.is_none());

    let rec = rv
        .get_request(req(
            GetRequestRequest {
                approval_id: acc.approval_id.clone(),
            },
            VIEWER,
        ))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(rec.state, RequestState::Approved as i32);
    let tr: Vec<_> = rec
        .transitions
        .iter()
        .map(|t| (t.from, t.to, t.actor.clone()))
        .collect();
    assert_eq!(
        tr,
        vec![
            (
                RequestState::Unspecified as i32,
                RequestState::Pending as i32,
                "host:h1".to_string()
            ),
            (
                RequestState::Pending as i32,
                RequestState::Approved as i32,
                "alice".to_string()
            ),
        ]
    );

    // Submitting the same request again is idempotent and returns the decision.
    let again = agent.submit(agent.request("1.100", "prod-db")).await;
    assert_eq!(again.approval_id, acc.approval_id);
    assert_eq!(again.state, RequestState::Approved as i32);
    assert_eq!(
        again.decision.map(|d| d.outcome),
        Some(Outcome::Allow as i32)
    );

    // Audit holds every fact, in sequence.
    let entries = audit_kind(&mut rv, "").await;
    let kinds: Vec<&str> = entries.iter().map(|e| e.kind.as_str()).collect();
    for k in [
        "rules.applied",
        "host.registered",
        "agent.connected",
        "rules.acked",
        "request.created",
        "request.approved",
    ] {
        assert!(kinds.contains(&k), "audit lacks {k}: {kinds:?}");
    }
    assert!(entries.windows(2).all(|w| w[0].seq < w[1].seq));
    let mut export = rv
        .export_audit(req(
            QueryAuditRequest {
                kind: "request.".into(),
                ..Default::default()
            },
            VIEWER,
        ))
        .await
        .expect("export")
        .into_inner();
    let mut kinds = Vec::new();
    while let Some(e) = export.message().await.expect("export stream") {
        kinds.push(e.kind);
    }
    // The viewer's attempt to decide is on the record too.
    assert_eq!(
        kinds,
        vec![
            "request.created",
            "request.decision_refused",
            "request.approved"
        ]
    );
    server.shutdown().await;
}

async fn grant_and_revoke(env: &Env) {
    let server = env.start().await;
    apply_rules(&server).await;
    let mut agent = Agent::connect(&server, "h1", vec![], vec![]).await;
    let acc = agent.submit(agent.request("2.1", "prod-db")).await;
    let mut rv = reviewer(&server).await;
    let answer = rv
        .decide(req(
            DecideRequest {
                approval_id: acc.approval_id.clone(),
                kind: DecisionKind::ApproveFor as i32,
                duration_seconds: 3600,
                scope: GrantScope::Workload as i32,
                reason: "migration window".into(),
            },
            BOB,
        ))
        .await
        .expect("approve for")
        .into_inner();
    answered_as_stored(&mut rv, &answer).await;
    let d = agent.next_decision().await;
    let g = d.grant.expect("grant");
    assert_eq!(g.scope, GrantScope::Workload as i32);
    assert_eq!(g.host_id, "h1");
    assert!(g.expires_at_unix_ms > g.created_at_unix_ms);
    let active = rv
        .list_grants(req(ListGrantsRequest::default(), VIEWER))
        .await
        .expect("grants")
        .into_inner()
        .grants;
    assert_eq!(active.len(), 1);

    let e = rv
        .revoke_grant(req(
            RevokeGrantRequest {
                grant_id: g.grant_id.clone(),
                reason: " ".into(),
                close_connections: false,
            },
            ALICE,
        ))
        .await
        .expect_err("no reason");
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    rv.revoke_grant(req(
        RevokeGrantRequest {
            grant_id: g.grant_id.clone(),
            reason: "incident".into(),
            close_connections: true,
        },
        ALICE,
    ))
    .await
    .expect("revoke");
    let r = agent.next_revocation().await;
    assert_eq!(r.grant_id, g.grant_id);
    assert_eq!(r.revoked_by, "alice");
    assert!(
        r.close_connections,
        "the agent is asked to close the connections"
    );
    let active = rv
        .list_grants(req(ListGrantsRequest::default(), VIEWER))
        .await
        .expect("grants")
        .into_inner()
        .grants;
    assert!(active.is_empty());
    let all = rv
        .list_grants(req(
            ListGrantsRequest {
                include_inactive: true,
                ..Default::default()
            },
            VIEWER,
        ))
        .await
        .expect("grants")
        .into_inner()
        .grants;
    assert!(
        all.iter()
            .any(|x| x.grant_id == g.grant_id && x.close_connections),
        "{all:?}"
    );
    let e = rv
        .revoke_grant(req(
            RevokeGrantRequest {
                grant_id: g.grant_id.clone(),
                reason: "again".into(),
                close_connections: false,
            },
            ALICE,
        ))
        .await
        .expect_err("twice");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    let e = rv
        .revoke_grant(req(
            RevokeGrantRequest {
                grant_id: "no-such-grant".into(),
                reason: "x".into(),
                close_connections: false,
            },
            ALICE,
        ))
        .await
        .expect_err("unknown");
    assert_eq!(e.code(), Code::NotFound, "{e}");

    // A reconnecting agent still holding the grant is told it was revoked.
    drop(agent);
    let mut agent = Agent::connect(&server, "h1", vec![], vec![g.grant_id.clone()]).await;
    loop {
        match agent.next().await {
            Body::Rules(_) => continue,
            Body::Revocation(r) => {
                assert_eq!(r.grant_id, g.grant_id);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    server.shutdown().await;
}

async fn expiry(env: &Env) {
    let server = env.start().await;
    apply_rules(&server).await;
    let mut agent = Agent::connect(&server, "h1", vec![], vec![]).await;
    let mut r = agent.request("3.1", "quick-expiry");
    r.exec_path = "/usr/bin/scp".into();
    let acc = agent.submit(r).await;
    // Nobody answers: the rule's timeout (1s) resolves it with its on_timeout (allow).
    let d = agent.next_decision().await;
    assert_eq!(d.request_id, "3.1");
    assert_eq!(d.state, RequestState::Expired as i32);
    assert_eq!(d.outcome, Outcome::Allow as i32);
    assert_eq!(d.decided_by, "timeout");
    let mut rv = reviewer(&server).await;
    let e = rv
        .decide(req(approve_once(&acc.approval_id, "late"), ALICE))
        .await
        .expect_err("decide expired");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    assert!(e.message().contains("expired"), "{e}");
    server.shutdown().await;
}

async fn two_person_rule(env: &Env) {
    let server = env.start().await;
    apply_rules(&server).await;
    let mut agent = Agent::connect(&server, "h1", vec![], vec![]).await;
    let acc = agent.submit(agent.request("4.1", "two-person")).await;
    let mut rv = reviewer(&server).await;
    let first = rv
        .decide(req(approve_once(&acc.approval_id, "looks fine"), ALICE))
        .await
        .expect("first")
        .into_inner();
    assert!(!first.r#final);
    answered_as_stored(&mut rv, &first).await;
    assert_eq!(
        first.request.expect("record").state,
        RequestState::Pending as i32
    );
    let e = rv
        .decide(req(approve_once(&acc.approval_id, "me again"), ALICE))
        .await
        .expect_err("same approver twice");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    let e = rv
        .decide(req(approve_once(&acc.approval_id, "not my group"), CAROL))
        .await
        .expect_err("outside group");
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    let second = rv
        .decide(req(approve_once(&acc.approval_id, "agree"), BOB))
        .await
        .expect("second")
        .into_inner();
    assert!(second.r#final);
    answered_as_stored(&mut rv, &second).await;
    let rec = second.request.expect("record");
    assert_eq!(rec.votes.len(), 2);
    let d = agent.next_decision().await;
    assert_eq!(
        (d.request_id.as_str(), d.outcome),
        ("4.1", Outcome::Allow as i32)
    );
    assert_eq!(d.decided_by, "bob");
    server.shutdown().await;
}

/// A Decide's answer is the record as stored: what a later GetRequest reads.
async fn answered_as_stored(
    rv: &mut ReviewerServiceClient<tonic::transport::Channel>,
    answer: &DecideResponse,
) {
    let told = answer.request.clone().expect("record in the answer");
    let stored = rv
        .get_request(req(
            GetRequestRequest {
                approval_id: told.approval_id.clone(),
            },
            VIEWER,
        ))
        .await
        .expect("get request")
        .into_inner();
    assert_eq!(told, stored);
}

fn approve_for(id: &str, scope: GrantScope, hours: u64) -> DecideRequest {
    DecideRequest {
        approval_id: id.into(),
        kind: DecisionKind::ApproveFor as i32,
        duration_seconds: hours * 3600,
        scope: scope as i32,
        reason: format!("{hours} h for the {}", scope.as_str_name()),
    }
}

/// A grant's scope and length in hours.
type Granted = (GrantScope, i64);

/// Two approvers with different terms: the request is approved on the narrowest terms both
/// agreed to, whatever the order of their votes.
async fn mixed_terms_grant_the_narrowest(env: &Env) {
    let server = env.start().await;
    apply_rules(&server).await;
    let mut agent = Agent::connect(&server, "h1", vec![], vec![]).await;
    let mut rv = reviewer(&server).await;
    let host_day = |id: &str| approve_for(id, GrantScope::Host, 24);
    let cases: Vec<(&str, DecideRequest, DecideRequest, Option<Granted>)> = vec![
        ("m.1", approve_once("m.1", "once"), host_day("m.1"), None),
        ("m.2", host_day("m.2"), approve_once("m.2", "once"), None),
        (
            "m.3",
            host_day("m.3"),
            approve_for("m.3", GrantScope::Process, 48),
            Some((GrantScope::Process, 24)),
        ),
        (
            "m.4",
            approve_for("m.4", GrantScope::Process, 48),
            approve_for("m.4", GrantScope::Workload, 2),
            Some((GrantScope::Process, 2)),
        ),
    ];
    for (id, mut first, mut second, want) in cases {
        let acc = agent.submit(agent.request(id, "two-person")).await;
        first.approval_id = acc.approval_id.clone();
        second.approval_id = acc.approval_id.clone();
        let r = rv.decide(req(first, ALICE)).await.expect("first vote");
        assert!(!r.into_inner().r#final, "{id}: one of two");
        let r = rv.decide(req(second, BOB)).await.expect("second vote");
        assert!(r.into_inner().r#final, "{id}: two of two");
        let d = agent.next_decision().await;
        assert_eq!(
            (d.request_id.as_str(), d.outcome),
            (id, Outcome::Allow as i32)
        );
        let got = d.grant.map(|g| {
            (
                GrantScope::try_from(g.scope).expect("scope"),
                (g.expires_at_unix_ms - g.created_at_unix_ms) / 3_600_000,
            )
        });
        assert_eq!(got, want, "{id}");
    }
    // A denial after a partial approval denies.
    let acc = agent.submit(agent.request("m.5", "two-person")).await;
    rv.decide(req(host_day(&acc.approval_id), ALICE))
        .await
        .expect("first vote");
    let r = rv
        .decide(req(deny(&acc.approval_id), BOB))
        .await
        .expect("denial")
        .into_inner();
    assert!(r.r#final);
    answered_as_stored(&mut rv, &r).await;
    let d = agent.next_decision().await;
    assert_eq!(
        (d.request_id.as_str(), d.outcome),
        ("m.5", Outcome::Deny as i32)
    );
    assert!(d.grant.is_none());
    server.shutdown().await;
}

async fn self_approval_refused(env: &Env) {
    let server = env.start().await;
    apply_rules(&server).await;
    let mut agent = Agent::connect(&server, "h1", vec![], vec![]).await;
    let mut r = agent.request("5.1", "prod-db");
    r.requester = "user:alice".into();
    let acc = agent.submit(r).await;
    let mut rv = reviewer(&server).await;
    let e = rv
        .decide(req(approve_once(&acc.approval_id, "mine"), ALICE))
        .await
        .expect_err("self approval");
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    assert!(e.message().contains("requester"), "{e}");
    rv.decide(req(approve_once(&acc.approval_id, "checked"), BOB))
        .await
        .expect("other approver");
    assert_eq!(agent.next_decision().await.decided_by, "bob");
    server.shutdown().await;
}

async fn concurrent_decisions(env: &Env) {
    let server = env.start().await;
    apply_rules(&server).await;
    let mut agent = Agent::connect(&server, "h1", vec![], vec![]).await;
    let acc = agent.submit(agent.request("6.1", "prod-db")).await;
    let mut calls = Vec::new();
    for (i, tok) in [ALICE, BOB, CAROL, DAVE, ALICE, BOB]
        .into_iter()
        .enumerate()
    {
        let mut rv = reviewer(&server).await;
        let d = if i % 2 == 0 {
            approve_once(&acc.approval_id, "go")
        } else {
            deny(&acc.approval_id)
        };
        calls.push(tokio::spawn(async move { rv.decide(req(d, tok)).await }));
    }
    let mut ok = 0;
    for c in calls {
        match c.await.expect("join") {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(e.code(), Code::FailedPrecondition, "{e}"),
        }
    }
    assert_eq!(ok, 1, "exactly one decision wins");
    let d = agent.next_decision().await;
    assert_eq!(d.request_id, "6.1");
    let rec = reviewer(&server)
        .await
        .get_request(req(
            GetRequestRequest {
                approval_id: acc.approval_id,
            },
            VIEWER,
        ))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(rec.transitions.len(), 2);
    server.shutdown().await;
}

async fn cancel(env: &Env) {
    let server = env.start().await;
    apply_rules(&server).await;
    let mut agent = Agent::connect(&server, "h1", vec![], vec![]).await;
    let acc = agent.submit(agent.request("7.1", "prod-db")).await;
    let t = agent.token();
    let st = agent
        .client
        .cancel_approval(req(
            CancelApprovalRequest {
                host_id: "h1".into(),
                request_id: "7.1".into(),
                reason: "process exited".into(),
            },
            &t,
        ))
        .await
        .expect("cancel")
        .into_inner();
    assert_eq!(st.state, RequestState::Cancelled as i32);
    let mut rv = reviewer(&server).await;
    let e = rv
        .decide(req(approve_once(&acc.approval_id, "too late"), ALICE))
        .await
        .expect_err("decide cancelled");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    let cancelled = rv
        .list_requests(req(
            ListRequestsRequest {
                state: RequestState::Cancelled as i32,
                ..Default::default()
            },
            VIEWER,
        ))
        .await
        .expect("list")
        .into_inner()
        .requests;
    assert_eq!(cancelled.len(), 1);
    server.shutdown().await;
}

async fn get(
    rv: &mut ReviewerServiceClient<tonic::transport::Channel>,
    id: &str,
) -> latch_proto::v1::ApprovalRecord {
    rv.get_request(req(
        GetRequestRequest {
            approval_id: id.into(),
        },
        VIEWER,
    ))
    .await
    .expect("get request")
    .into_inner()
}

async fn pending(rv: &mut ReviewerServiceClient<tonic::transport::Channel>) -> Vec<(String, u32)> {
    rv.list_requests(req(
        ListRequestsRequest {
            state: RequestState::Pending as i32,
            ..Default::default()
        },
        VIEWER,
    ))
    .await
    .expect("list pending")
    .into_inner()
    .requests
    .into_iter()
    .map(|r| (r.approval_id, r.merged))
    .collect()
}

/// Identical requests wait behind the first with a count and are resolved by one decision; a
/// request that differs in what a reviewer decides on waits on its own; when the first goes
/// away, the next takes its place with the votes cast on it.
async fn merged_requests(env: &Env) {
    let server = env.start().await;
    apply_rules(&server).await;
    let mut agent = Agent::connect(&server, "h1", vec![], vec![]).await;
    let mut rv = reviewer(&server).await;
    let request = |agent: &Agent, id: &str| {
        let mut r = agent.request(id, "prod-db");
        r.requester = "user:alice".into();
        r
    };
    let first = agent.submit(request(&agent, "9.1")).await;
    let second = agent.submit(request(&agent, "9.2")).await;
    let mut other_port = request(&agent, "9.3");
    other_port.destination.as_mut().expect("destination").port = 5433;
    let other = agent.submit(other_port).await;
    let mut other_process = request(&agent, "9.4");
    other_process.pid = 5000;
    other_process.tgid = 5000;
    let third = agent.submit(other_process).await;
    assert_eq!(
        second.expires_at_unix_ms, first.expires_at_unix_ms,
        "a merged request waits as long as the one it joined"
    );
    let mut shown = pending(&mut rv).await;
    shown.sort();
    let mut want = vec![
        (first.approval_id.clone(), 2),
        (other.approval_id.clone(), 0),
    ];
    want.sort();
    assert_eq!(
        shown, want,
        "reviewers see one request for the three identical ones"
    );
    assert_eq!(
        get(&mut rv, &second.approval_id).await.merged_into,
        first.approval_id
    );

    // The first goes away: the second takes its place.
    let t = agent.token();
    agent
        .client
        .cancel_approval(req(
            CancelApprovalRequest {
                host_id: "h1".into(),
                request_id: "9.1".into(),
                reason: "process exited".into(),
            },
            &t,
        ))
        .await
        .expect("cancel the first");
    let mut shown = pending(&mut rv).await;
    shown.sort();
    let mut want = vec![
        (second.approval_id.clone(), 1),
        (other.approval_id.clone(), 0),
    ];
    want.sort();
    assert_eq!(
        shown, want,
        "the oldest identical request takes the cancelled one's place"
    );
    let promoted = get(&mut rv, &second.approval_id).await;
    assert!(promoted.merged_into.is_empty());
    assert_eq!(
        get(&mut rv, &third.approval_id).await.merged_into,
        second.approval_id
    );

    // The requester cannot approve the group any more than one request.
    let e = rv
        .decide(req(approve_once(&second.approval_id, "mine"), ALICE))
        .await
        .expect_err("self-approval of a group");
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");

    rv.decide(req(approve_once(&second.approval_id, "both, once"), BOB))
        .await
        .expect("approve the group");
    let mut told = HashMap::new();
    for _ in 0..2 {
        let d = agent.next_decision().await;
        told.insert(d.request_id.clone(), d);
    }
    for id in ["9.2", "9.4"] {
        let d = told
            .get(id)
            .unwrap_or_else(|| panic!("no decision for {id}: {told:?}"));
        assert_eq!(d.outcome, Outcome::Allow as i32, "{id}");
        assert_eq!(d.decided_by, "bob", "{id}");
    }
    let resolved = get(&mut rv, &third.approval_id).await;
    assert_eq!(resolved.state, RequestState::Approved as i32);
    assert_eq!(get(&mut rv, &second.approval_id).await.merged, 1);
    let e = rv
        .decide(req(deny(&third.approval_id), BOB))
        .await
        .expect_err("decide a request its group's decision resolved");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    // The request that differs is untouched.
    assert_eq!(pending(&mut rv).await, vec![(other.approval_id.clone(), 0)]);
    // Every merged request is on the audit trail with its own decision.
    let audit = audit_kind(&mut rv, "").await;
    let kinds = |kind: &str| audit.iter().filter(|e| e.kind == kind).count();
    assert_eq!(kinds("request.merged"), 2, "{audit:?}");
    assert_eq!(kinds("request.promoted"), 1);
    assert_eq!(kinds("request.approved"), 2);

    // Two approvers needed: a vote cast on the first stands when the second takes its place,
    // and a request that waits with another cannot be voted on by itself.
    let first = agent.submit(agent.request("10.1", "two-person")).await;
    let second = agent.submit(agent.request("10.2", "two-person")).await;
    rv.decide(req(approve_once(&first.approval_id, "one of two"), ALICE))
        .await
        .expect("first vote");
    let e = rv
        .decide(req(approve_once(&second.approval_id, "around"), BOB))
        .await
        .expect_err("a vote on a request that waits with another");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    assert!(
        e.message().contains(&first.approval_id),
        "names the one to decide: {e}"
    );
    agent
        .client
        .cancel_approval(req(
            CancelApprovalRequest {
                host_id: "h1".into(),
                request_id: "10.1".into(),
                reason: "process exited".into(),
            },
            &t,
        ))
        .await
        .expect("cancel the first");
    let promoted = get(&mut rv, &second.approval_id).await;
    assert_eq!(
        promoted
            .votes
            .iter()
            .map(|v| v.approver.as_str())
            .collect::<Vec<_>>(),
        ["alice"],
        "the vote on the first stands"
    );
    rv.decide(req(approve_once(&second.approval_id, "two of two"), BOB))
        .await
        .expect("second vote");
    let d = agent.next_decision().await;
    assert_eq!(
        (d.request_id.as_str(), d.outcome),
        ("10.2", Outcome::Allow as i32)
    );

    server.shutdown().await;
}

/// Identical requests that arrive at the same moment still wait as one group: no two of them
/// start a group of their own.
async fn merged_requests_submitted_at_once(env: &Env) {
    const AT_ONCE: usize = 16;
    let server = env.start().await;
    apply_rules(&server).await;
    let agent = Agent::connect(&server, "h1", vec![], vec![]).await;
    let mut rv = reviewer(&server).await;
    let token = agent.token();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..AT_ONCE {
        let mut client = agent.client.clone();
        let mut r = agent.request(&format!("11.{i}"), "prod-db");
        r.requester = "user:alice".into();
        let token = token.clone();
        calls.spawn(async move {
            client
                .request_approval(req(r, &token))
                .await
                .map(|a| a.into_inner().approval_id)
        });
    }
    let mut accepted = Vec::new();
    while let Some(done) = calls.join_next().await {
        accepted.push(done.expect("task").expect("request approval"));
    }
    let shown = pending(&mut rv).await;
    assert_eq!(shown.len(), 1, "one request for reviewers: {shown:?}");
    assert_eq!(shown[0].1 as usize, AT_ONCE - 1, "{shown:?}");
    assert!(accepted.contains(&shown[0].0));
    for id in accepted.iter().filter(|id| **id != shown[0].0) {
        assert_eq!(get(&mut rv, id).await.merged_into, shown[0].0, "{id}");
    }
    server.shutdown().await;
}

/// The deadline resolves a group as it resolves the request reviewers see: every request
/// waiting with it gets the rule's `on_timeout`.
async fn merged_requests_expire_together(env: &Env) {
    // 3 s: long enough for the second request to join on a loaded machine.
    const YAML: &str = "workloads:\n  - name: ai-agents\n    cgroups: [\"/ai.slice/*\"]\nrules:\n  - {name: soon, workload: ai-agents, on: connect, to: [\"10.20.0.0/16\"], action: approve, timeout: 3s, on_timeout: allow}\n";
    let server = env.start().await;
    let version = apply_yaml(&server, "soon.yaml", YAML).await;
    let mut agent = Agent::connect(&server, "h1", vec![], vec![]).await;
    agent.next_rules().await;
    let mut rv = reviewer(&server).await;
    let soon = |agent: &Agent, id: &str| {
        let mut r = agent.request(id, "prod-db");
        r.rule_id = rule_id_in(YAML, "soon");
        r.rule_name = "soon".into();
        r.workload = "ai-agents".into();
        r.rules_version = version;
        r
    };
    let first = agent.submit(soon(&agent, "11.1")).await;
    let joined = agent.submit(soon(&agent, "11.2")).await;
    assert_eq!(
        get(&mut rv, &joined.approval_id).await.merged_into,
        first.approval_id
    );
    let mut expired = HashMap::new();
    for _ in 0..2 {
        let d = agent.next_decision().await;
        expired.insert(d.request_id.clone(), (d.state, d.outcome, d.decided_by));
    }
    for id in ["11.1", "11.2"] {
        assert_eq!(
            expired.get(id),
            Some(&(
                RequestState::Expired as i32,
                Outcome::Allow as i32,
                "timeout".to_string()
            )),
            "{id}: {expired:?}"
        );
    }
    server.shutdown().await;
}

/// A workload's justification reaches reviewers once, only while its request waits, only from
/// its own host, and is audited; bad text is refused naming the field.
async fn justify(env: &Env) {
    let server = env.start().await;
    apply_rules(&server).await;
    let mut agent = Agent::connect(&server, "h1", vec![], vec![]).await;
    let other = Agent::connect(&server, "h2", vec![], vec![]).await;
    let acc = agent.submit(agent.request("9.1", "prod-db")).await;
    let t = agent.token();
    let justify = |host: &str, id: &str, text: &str, token: &str| {
        req(
            JustifyRequest {
                host_id: host.into(),
                request_id: id.into(),
                text: text.into(),
            },
            token,
        )
    };
    let mut c = agent.client.clone();
    for (what, r, code, says) in [
        (
            "an escape sequence",
            justify("h1", "9.1", "ok\u{1b}[2J", &t),
            Code::InvalidArgument,
            "text has a control character",
        ),
        (
            "blank text",
            justify("h1", "9.1", "  ", &t),
            Code::InvalidArgument,
            "text is empty",
        ),
        (
            "too long",
            justify("h1", "9.1", &"x".repeat(2001), &t),
            Code::InvalidArgument,
            "text is 2001 bytes; at most 2000",
        ),
        (
            "an unknown request",
            justify("h1", "9.9", "why", &t),
            Code::NotFound,
            "request '9.9' of host 'h1'",
        ),
        (
            "another host's token",
            justify("h1", "9.1", "why", &other.token()),
            Code::PermissionDenied,
            "",
        ),
    ] {
        let e = c.justify(r).await.expect_err(what);
        assert_eq!(e.code(), code, "{what}: {e}");
        assert!(e.message().contains(says), "{what}: {e}");
    }
    let text = "nightly export of the orders table\n\tstep 3 of 5";
    let st = c
        .justify(justify("h1", "9.1", text, &t))
        .await
        .expect("justify")
        .into_inner();
    assert_eq!(st.state, RequestState::Pending as i32);
    let e = c
        .justify(justify("h1", "9.1", "a second story", &t))
        .await
        .expect_err("twice");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    assert!(e.message().contains("already has"), "{e}");
    let mut rv = reviewer(&server).await;
    let rec = rv
        .get_request(req(
            GetRequestRequest {
                approval_id: acc.approval_id.clone(),
            },
            VIEWER,
        ))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(rec.request.map(|r| r.justification).as_deref(), Some(text));
    let audited = audit_kind(&mut rv, "request.justified").await;
    assert_eq!(audited.len(), 1, "{audited:?}");
    assert_eq!(audited[0].actor, "host:h1");
    assert!(
        audited[0].payload_json.contains("orders table"),
        "{}",
        audited[0].payload_json
    );
    rv.decide(req(approve_once(&acc.approval_id, "fine"), ALICE))
        .await
        .expect("decide");
    let late = agent.submit(agent.request("9.2", "prod-db")).await;
    rv.decide(req(
        DecideRequest {
            approval_id: late.approval_id,
            kind: DecisionKind::Deny as i32,
            reason: "no".into(),
            ..Default::default()
        },
        ALICE,
    ))
    .await
    .expect("deny");
    let e = c
        .justify(justify("h1", "9.2", "too late", &t))
        .await
        .expect_err("decided");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    assert!(e.message().contains("is denied"), "{e}");

    // What an identical request says is shown on the request reviewers decide, unless that
    // one has said something itself.
    let first = agent.submit(agent.request("9.3", "prod-db")).await;
    let second = agent.submit(agent.request("9.4", "prod-db")).await;
    let third = agent.submit(agent.request("9.5", "prod-db")).await;
    assert_eq!(
        get(&mut rv, &second.approval_id).await.merged_into,
        first.approval_id
    );
    let says = |rec: latch_proto::v1::ApprovalRecord| {
        rec.request.map(|r| r.justification).unwrap_or_default()
    };
    c.justify(justify("h1", "9.4", "retrying the export", &t))
        .await
        .expect("justify the second");
    for id in [&first.approval_id, &second.approval_id] {
        assert_eq!(says(get(&mut rv, id).await), "retrying the export", "{id}");
    }
    c.justify(justify("h1", "9.5", "a third story", &t))
        .await
        .expect("justify the third");
    assert_eq!(
        says(get(&mut rv, &first.approval_id).await),
        "retrying the export",
        "the first word shown stands"
    );
    assert_eq!(
        says(get(&mut rv, &third.approval_id).await),
        "a third story"
    );
    // The first's own words, when they come, replace what was shown from another; once.
    c.justify(justify("h1", "9.3", "the first's own words", &t))
        .await
        .expect("the first justifies itself");
    assert_eq!(
        says(get(&mut rv, &first.approval_id).await),
        "the first's own words"
    );
    assert_eq!(
        says(get(&mut rv, &second.approval_id).await),
        "retrying the export"
    );
    let e = c
        .justify(justify("h1", "9.3", "and more", &t))
        .await
        .expect_err("its own twice");
    assert!(e.message().contains("already has"), "{e}");
    let mut payloads = justified_on(&mut rv, &first.approval_id).await;
    payloads.sort_by_key(|p| p["from"].is_null());
    assert_eq!(
        payloads,
        [
            serde_json::json!({"justification": "retrying the export", "from": second.approval_id}),
            serde_json::json!({"justification": "the first's own words"}),
        ],
        "both on the first's record, the shown one naming where it came from"
    );

    // When the first goes away, the one that takes its place shows what another said, unless
    // it said something itself.
    // Other ports: the requests above still wait, and these would wait with them.
    let on_port = |agent: &Agent, id: &str, port: u32| {
        let mut r = agent.request(id, "prod-db");
        r.destination.as_mut().expect("destination").port = port;
        r
    };
    let cancel = |id: &str| {
        req(
            CancelApprovalRequest {
                host_id: "h1".into(),
                request_id: id.into(),
                reason: "process exited".into(),
            },
            &t,
        )
    };
    let first = agent.submit(on_port(&agent, "9.6", 5499)).await;
    let second = agent.submit(on_port(&agent, "9.7", 5499)).await;
    let third = agent.submit(on_port(&agent, "9.8", 5499)).await;
    let fourth = agent.submit(on_port(&agent, "9.9", 5499)).await;
    // The fourth speaks first, so its words are the ones shown; the third's, older by arrival,
    // are not.
    c.justify(justify("h1", "9.9", "the fourth's reason", &t))
        .await
        .expect("justify the fourth");
    c.justify(justify("h1", "9.8", "the third's reason", &t))
        .await
        .expect("justify the third");
    assert_eq!(
        says(get(&mut rv, &first.approval_id).await),
        "the fourth's reason"
    );
    agent
        .client
        .cancel_approval(cancel("9.6"))
        .await
        .expect("cancel the first");
    let promoted = get(&mut rv, &second.approval_id).await;
    assert!(promoted.merged_into.is_empty(), "the second took its place");
    assert_eq!(
        says(promoted),
        "the fourth's reason",
        "the words shown stay shown"
    );
    for id in [&third.approval_id, &fourth.approval_id] {
        assert_eq!(
            get(&mut rv, id).await.merged_into,
            second.approval_id,
            "{id}"
        );
    }
    assert_eq!(
        justified_on(&mut rv, &second.approval_id).await,
        [serde_json::json!({"justification": "the fourth's reason", "from": fourth.approval_id})]
    );
    c.justify(justify("h1", "9.7", "the second's own", &t))
        .await
        .expect("its own words replace the shown ones");
    assert_eq!(
        says(get(&mut rv, &second.approval_id).await),
        "the second's own"
    );

    // The words shown came from a request that went away since: the oldest words of one still
    // waiting take their place.
    let w1 = agent.submit(on_port(&agent, "9.10", 5498)).await;
    let w2 = agent.submit(on_port(&agent, "9.11", 5498)).await;
    agent.submit(on_port(&agent, "9.12", 5498)).await;
    let w4 = agent.submit(on_port(&agent, "9.13", 5498)).await;
    c.justify(justify("h1", "9.12", "words of one that leaves", &t))
        .await
        .expect("justify the third");
    c.justify(justify("h1", "9.13", "words of one that stays", &t))
        .await
        .expect("justify the fourth");
    agent
        .client
        .cancel_approval(cancel("9.12"))
        .await
        .expect("cancel the third");
    assert_eq!(
        says(get(&mut rv, &w1.approval_id).await),
        "words of one that leaves",
        "what is shown stays while its request is waited for"
    );
    agent
        .client
        .cancel_approval(cancel("9.10"))
        .await
        .expect("cancel the first");
    assert_eq!(
        says(get(&mut rv, &w2.approval_id).await),
        "words of one that stays"
    );
    assert_eq!(
        justified_on(&mut rv, &w2.approval_id).await,
        [serde_json::json!({"justification": "words of one that stays", "from": w4.approval_id})]
    );
    server.shutdown().await;
}

/// The payloads of the `request.justified` records of one request, oldest first.
async fn justified_on(
    rv: &mut latch_proto::v1::reviewer_service_client::ReviewerServiceClient<
        tonic::transport::Channel,
    >,
    approval_id: &str,
) -> Vec<serde_json::Value> {
    audit_kind(rv, "request.justified")
        .await
        .into_iter()
        .filter(|e| e.request_id == approval_id)
        .map(|e| serde_json::from_str(&e.payload_json).expect("payload"))
        .collect()
}

async fn restart_loses_nothing(env: &Env) {
    let server = env.start().await;
    apply_rules(&server).await;
    let mut agent = Agent::connect(&server, "h1", vec![], vec![]).await;
    let a = agent.submit(agent.request("8.1", "prod-db")).await;
    // Another destination: an identical request would be resolved with the first.
    let mut other = agent.request("8.2", "prod-db");
    other.destination.as_mut().expect("destination").port = 5433;
    let b = agent.submit(other).await;
    server.shutdown().await;
    // The agent's stream ends with Unavailable (after the rules push it had not read).
    loop {
        match tokio::time::timeout(HANG, agent.stream.message())
            .await
            .expect("stream hung")
        {
            Err(s) => {
                assert_eq!(s.code(), Code::Unavailable, "{s}");
                break;
            }
            Ok(None) => break,
            Ok(Some(m)) => assert!(
                matches!(m.body, Some(Body::Rules(_))),
                "unexpected message {m:?}"
            ),
        }
    }

    let server = env.start().await;
    let mut rv = reviewer(&server).await;
    // Decided while the agent is away.
    rv.decide(req(deny(&a.approval_id), ALICE))
        .await
        .expect("decide while away");
    let mut agent = Agent::connect(&server, "h1", vec!["8.1".into(), "8.2".into()], vec![]).await;
    // The replay sends the rules, then the decision; the same decision can also arrive live
    // first (the stream is registered before the replay is queued, so that nothing dispatched
    // meanwhile is missed; on PostgreSQL the replica hears its own notification late). Either
    // order is correct for an agent.
    let (version, d) = agent.next_rules_and_decision().await;
    assert_eq!(version, 1);
    assert_eq!(
        (d.request_id.as_str(), d.outcome),
        ("8.1", Outcome::Deny as i32)
    );
    // Still pending; decided live after reconnection.
    rv.decide(req(approve_once(&b.approval_id, "fine"), BOB))
        .await
        .expect("decide live");
    let d = agent.next_decision().await;
    assert_eq!(
        (d.request_id.as_str(), d.outcome),
        ("8.2", Outcome::Allow as i32)
    );
    server.shutdown().await;
}

async fn rules_versions_and_shadow(env: &Env) {
    let server = env.start().await;
    let mut rv = reviewer(&server).await;
    // Not YAML: refused with file and line; nothing applied.
    let e = rv
        .apply_rules(req(
            ApplyRulesRequest {
                source_name: "bad.yaml".into(),
                yaml: "rules: [\n  {name: x\n".into(),
                ..Default::default()
            },
            ADMIN,
        ))
        .await
        .expect_err("not yaml");
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("bad.yaml:"), "{e}");
    let e = rv
        .get_rules(req(GetRulesRequest { version: 0 }, VIEWER))
        .await
        .expect_err("nothing applied");
    assert_eq!(e.code(), Code::NotFound, "{e}");

    let v1 = apply_rules(&server).await;
    let mut agent = Agent::connect(&server, "h1", vec![], vec![]).await;
    assert_eq!(agent.next_rules().await, v1);
    let mut dev = Agent::connect_labels(
        &server,
        "h2",
        HashMap::from([("env".into(), "dev".into())]),
        vec![],
        vec![],
    )
    .await;
    assert_eq!(dev.next_rules().await, v1);

    // A rule that names an unknown workload: refused with file, line, rule and reason.
    let bad = common::RULES.replace(
        "workload: ai-agents\n    on: connect",
        "workload: nope\n    on: connect",
    );
    let e = rv
        .apply_rules(req(
            ApplyRulesRequest {
                source_name: "prod.yaml".into(),
                yaml: bad,
                ..Default::default()
            },
            ADMIN,
        ))
        .await
        .expect_err("bad rule");
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(
        e.message().contains("prod.yaml:") && e.message().contains("prod-db"),
        "{e}"
    );
    assert_eq!(
        rv.get_rules(req(GetRulesRequest { version: 0 }, VIEWER))
            .await
            .expect("current")
            .into_inner()
            .version,
        v1
    );
    // Only admins apply.
    let e = rv
        .apply_rules(req(
            ApplyRulesRequest {
                yaml: common::RULES.into(),
                ..Default::default()
            },
            ALICE,
        ))
        .await
        .expect_err("approver applies");
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");

    // Version 2 for env=prod only: pushed to h1 at once, not to h2.
    let v2_yaml = common::RULES.replace("timeout: 10m", "timeout: 20m")
        + "  - name: no-metadata\n    workload: ai-agents\n    on: connect\n    to: [\"169.254.169.254/32\"]\n    action: deny\n";
    let v2 = rv
        .apply_rules(req(
            ApplyRulesRequest {
                source_name: "prod.yaml".into(),
                yaml: v2_yaml,
                selector: HashMap::from([("env".into(), "prod".into())]),
                ..Default::default()
            },
            ADMIN,
        ))
        .await
        .expect("v2")
        .into_inner();
    assert_eq!(v2.version, 2);
    assert_eq!(agent.next_rules().await, 2);
    let diff = rv
        .diff_rules(req(
            DiffRulesRequest {
                from_version: 1,
                to_version: 2,
            },
            VIEWER,
        ))
        .await
        .expect("diff")
        .into_inner();
    assert_eq!(diff.added_rules, vec!["no-metadata".to_string()]);
    assert_eq!(diff.changed_rules, vec!["prod-db".to_string()]);
    assert!(
        diff.unified_diff.contains("+    timeout: 20m"),
        "{}",
        diff.unified_diff
    );
    let e = rv
        .diff_rules(req(
            DiffRulesRequest {
                from_version: 1,
                to_version: 99,
            },
            VIEWER,
        ))
        .await
        .expect_err("unknown version");
    assert_eq!(e.code(), Code::NotFound, "{e}");

    // Roll back to version 1: a new version 3 with version 1's file and selector (every host).
    let rb = rv
        .rollback_rules(req(
            RollbackRulesRequest {
                version: 1,
                reason: "v2 broke deploys".into(),
            },
            ADMIN,
        ))
        .await
        .expect("rollback")
        .into_inner();
    assert_eq!(rb.version, 3);
    assert_eq!(agent.next_rules().await, 3);
    assert_eq!(dev.next_rules().await, 3);
    let v3 = rv
        .get_rules(req(GetRulesRequest { version: 3 }, VIEWER))
        .await
        .expect("v3")
        .into_inner();
    assert_eq!(v3.yaml, common::RULES);
    assert_eq!(v3.rollback_of, 1);
    let all = rv
        .list_rules(req(Default::default(), VIEWER))
        .await
        .expect("list")
        .into_inner()
        .versions;
    assert_eq!(
        all.iter().map(|v| v.version).collect::<Vec<_>>(),
        vec![3, 2, 1]
    );

    // Shadow mode: audit records uploaded twice count once, per rule, workload and day.
    let day = 86_400_000i64;
    let base = 20_000 * day; // 2024-10-04
    let rec = |id: &str, t: i64, workload: &str, action: &str| AgentAuditRecord {
        record_id: id.into(),
        time_unix_ms: t,
        kind: "exec".into(),
        rule_id: rule_id("shadow-curl"),
        rule_name: "shadow-curl".into(),
        workload: workload.into(),
        action: action.into(),
        details_json: r#"{"exe":"/usr/bin/curl"}"#.into(),
        host_seq: 0,
    };
    let batch = AuditBatch {
        host_id: "h1".into(),
        records: vec![
            rec("r1", base + 1, "ai-agents", "audit"),
            rec("r2", base + 2, "ai-agents", "audit"),
            rec("r3", base + day + 5, "ai-agents", "audit"),
            rec("r4", base + 3, "batch-jobs", "audit"),
            rec("r5", base + 4, "ai-agents", "allow"),
        ],
    };
    let t = agent.token();
    let ack = agent
        .client
        .upload_audit(req(batch.clone(), &t))
        .await
        .expect("upload")
        .into_inner();
    assert_eq!((ack.stored, ack.duplicates), (5, 0));
    let ack = agent
        .client
        .upload_audit(req(batch, &t))
        .await
        .expect("upload again")
        .into_inner();
    assert_eq!((ack.stored, ack.duplicates), (0, 5));
    let bad = AuditBatch {
        host_id: "h1".into(),
        records: vec![AgentAuditRecord {
            details_json: "{not json".into(),
            ..rec("r6", base, "x", "audit")
        }],
    };
    let e = agent
        .client
        .upload_audit(req(bad, &t))
        .await
        .expect_err("bad json");
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    let counts = rv
        .shadow_report(req(ShadowReportRequest::default(), VIEWER))
        .await
        .expect("shadow")
        .into_inner()
        .counts;
    let got: Vec<(String, String, String, u64)> = counts
        .into_iter()
        .map(|c| (c.rule_name, c.workload, c.day, c.count))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "shadow-curl".into(),
                "ai-agents".into(),
                "2024-10-04".into(),
                2
            ),
            (
                "shadow-curl".into(),
                "ai-agents".into(),
                "2024-10-05".into(),
                1
            ),
            (
                "shadow-curl".into(),
                "batch-jobs".into(),
                "2024-10-04".into(),
                1
            ),
        ]
    );
    server.shutdown().await;
}

async fn bad_input(env: &Env) {
    let server = env.start().await;
    apply_rules(&server).await;
    let mut agent = Agent::connect(&server, "h1", vec![], vec![]).await;
    let t = agent.token();
    let mut c = agent.client.clone();
    let check = |r: Result<tonic::Response<latch_proto::v1::ApprovalAccepted>, tonic::Status>,
                 code: Code,
                 what: &str| {
        let e = r.expect_err(what);
        assert_eq!(e.code(), code, "{what}: {e}");
    };
    let mut r = agent.request("", "prod-db");
    check(
        c.request_approval(req(r.clone(), &t)).await,
        Code::InvalidArgument,
        "empty request id",
    );
    r.request_id = "9.1".into();
    let mut e = r.clone();
    e.host_id = String::new();
    check(
        c.request_approval(req(e, &t)).await,
        Code::InvalidArgument,
        "empty host id",
    );
    let mut e = r.clone();
    e.op = 0;
    check(
        c.request_approval(req(e, &t)).await,
        Code::InvalidArgument,
        "op unspecified",
    );
    let mut e = r.clone();
    e.op = 99;
    check(
        c.request_approval(req(e, &t)).await,
        Code::InvalidArgument,
        "unknown op",
    );
    let mut e = r.clone();
    e.argv = vec!["A".repeat(4000); 40];
    check(
        c.request_approval(req(e, &t)).await,
        Code::InvalidArgument,
        "oversized context",
    );
    let mut e = r.clone();
    e.ancestors = vec![Default::default(); 9];
    check(
        c.request_approval(req(e, &t)).await,
        Code::InvalidArgument,
        "too many ancestors",
    );
    let mut e = r.clone();
    e.destination = None;
    check(
        c.request_approval(req(e, &t)).await,
        Code::InvalidArgument,
        "connect without destination",
    );
    let mut e = r.clone();
    e.requester = " ".into();
    check(
        c.request_approval(req(e, &t)).await,
        Code::InvalidArgument,
        "no requester",
    );
    let mut e = r.clone();
    e.rule_id = 12345;
    check(
        c.request_approval(req(e, &t)).await,
        Code::NotFound,
        "unknown rule",
    );
    let mut e = r.clone();
    e.rules_version = 42;
    check(
        c.request_approval(req(e, &t)).await,
        Code::NotFound,
        "unknown rules version",
    );
    check(
        c.request_approval(tonic::Request::new(r.clone())).await,
        Code::Unauthenticated,
        "no token",
    );
    check(
        c.request_approval(req(r.clone(), "wrong-token")).await,
        Code::Unauthenticated,
        "unknown token",
    );
    let mut e = r.clone();
    e.host_id = "h2".into();
    check(
        c.request_approval(req(e, &t)).await,
        Code::PermissionDenied,
        "another host's id",
    );
    let mut e = r.clone();
    e.host_id = "h2".into();
    check(
        c.request_approval(req(e, &host_token("h2"))).await,
        Code::FailedPrecondition,
        "unregistered host",
    );
    let acc = agent.submit(r).await;

    let mut rv = reviewer(&server).await;
    let decide_err = |d: DecideRequest| {
        let mut rv = rv.clone();
        async move { rv.decide(req(d, ALICE)).await.expect_err("bad decision") }
    };
    let base = DecideRequest {
        approval_id: acc.approval_id.clone(),
        kind: DecisionKind::ApproveFor as i32,
        duration_seconds: 3600,
        scope: GrantScope::Process as i32,
        reason: "ok".into(),
    };
    for (what, d, code) in [
        (
            "zero duration",
            DecideRequest {
                duration_seconds: 0,
                ..base.clone()
            },
            Code::InvalidArgument,
        ),
        (
            "absurd duration",
            DecideRequest {
                duration_seconds: 100 * 365 * 86400,
                ..base.clone()
            },
            Code::InvalidArgument,
        ),
        (
            "u64::MAX duration",
            DecideRequest {
                duration_seconds: u64::MAX,
                ..base.clone()
            },
            Code::InvalidArgument,
        ),
        (
            "no scope",
            DecideRequest {
                scope: 0,
                ..base.clone()
            },
            Code::InvalidArgument,
        ),
        (
            "no reason",
            DecideRequest {
                reason: "  ".into(),
                ..base.clone()
            },
            Code::InvalidArgument,
        ),
        (
            "no kind",
            DecideRequest {
                kind: 0,
                ..base.clone()
            },
            Code::InvalidArgument,
        ),
        (
            "once with duration",
            DecideRequest {
                kind: DecisionKind::ApproveOnce as i32,
                ..base.clone()
            },
            Code::InvalidArgument,
        ),
        (
            "empty id",
            DecideRequest {
                approval_id: String::new(),
                ..base.clone()
            },
            Code::InvalidArgument,
        ),
        (
            "unknown id",
            DecideRequest {
                approval_id: "no-such-request".into(),
                ..base.clone()
            },
            Code::NotFound,
        ),
    ] {
        let e = decide_err(d).await;
        assert_eq!(e.code(), code, "{what}: {e}");
    }
    let e = rv
        .get_request(req(
            GetRequestRequest {
                approval_id: "nope".into(),
            },
            VIEWER,
        ))
        .await
        .expect_err("unknown");
    assert_eq!(e.code(), Code::NotFound, "{e}");
    let e = rv
        .list_hosts(req(ListHostsRequest {}, "bad-token"))
        .await
        .expect_err("bad token");
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    // The request is untouched by all of the above.
    rv.decide(req(base, ALICE)).await.expect("valid decision");
    assert!(agent.next_decision().await.grant.is_some());
    server.shutdown().await;
}

async fn reflection(env: &Env) {
    let server = env.start().await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.addr()))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let names = list_services(channel).await;
    assert!(
        names.contains(&"latch.v1.AgentService".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"latch.v1.ReviewerService".to_string()),
        "{names:?}"
    );
    for version in ["v1", "v1alpha"] {
        let name = format!("grpc.reflection.{version}.ServerReflection");
        assert!(names.contains(&name), "{name} not in {names:?}");
    }
    server.shutdown().await;
}

/// Older tools (grpcurl, grpc_cli, Postman) speak only `grpc.reflection.v1alpha`: the client here
/// is generated from that proto and asks what grpcurl's `list` and `describe` ask.
async fn reflection_v1alpha(env: &Env) {
    use prost::Message;
    use tonic_reflection::pb::v1alpha::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let server = env.start().await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.addr()))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut c = ServerReflectionClient::new(channel);
    let ask = |m: MessageRequest| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    };
    let mut resp = c
        .server_reflection_info(tokio_stream::iter(vec![
            ask(MessageRequest::ListServices(String::new())),
            ask(MessageRequest::FileContainingSymbol(
                "latch.v1.ReviewerService".into(),
            )),
        ]))
        .await
        .expect("v1alpha reflection is served")
        .into_inner();
    let m = resp
        .message()
        .await
        .expect("reflection stream")
        .expect("a response");
    let Some(MessageResponse::ListServicesResponse(list)) = m.message_response else {
        panic!("unexpected reflection response {m:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for name in [
        "latch.v1.AgentService",
        "latch.v1.ReviewerService",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(names.iter().any(|n| n == name), "{name} not in {names:?}");
    }
    let m = resp
        .message()
        .await
        .expect("reflection stream")
        .expect("a second response");
    let Some(MessageResponse::FileDescriptorResponse(files)) = m.message_response else {
        panic!("unexpected reflection response {m:?}");
    };
    // The fields of descriptor.proto's FileDescriptorProto that this test reads.
    #[derive(Clone, PartialEq, prost::Message)]
    struct FileDescriptor {
        #[prost(string, optional, tag = "2")]
        package: Option<String>,
        #[prost(message, repeated, tag = "6")]
        service: Vec<ServiceDescriptor>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct ServiceDescriptor {
        #[prost(string, optional, tag = "1")]
        name: Option<String>,
    }
    let services: Vec<String> = files
        .file_descriptor_proto
        .iter()
        .map(|raw| FileDescriptor::decode(raw.as_slice()).expect("a FileDescriptorProto"))
        .flat_map(|f| {
            let package = f.package.unwrap_or_default();
            f.service
                .into_iter()
                .map(move |s| format!("{package}.{}", s.name.unwrap_or_default()))
        })
        .collect();
    assert!(
        services.iter().any(|s| s == "latch.v1.ReviewerService"),
        "{services:?}"
    );
    server.shutdown().await;
}

async fn audit_is_append_only(env: &Env) {
    let server = env.start().await;
    apply_rules(&server).await;
    let pool = tamper_pool(&server).await;
    let e = sqlx::query("UPDATE audit SET actor = 'mallory'")
        .execute(&pool)
        .await
        .expect_err("update audit");
    assert!(e.to_string().contains("append-only"), "{e}");
    let e = sqlx::query("DELETE FROM audit")
        .execute(&pool)
        .await
        .expect_err("delete audit");
    assert!(e.to_string().contains("append-only"), "{e}");
    server.shutdown().await;
}

async fn metrics(env: &Env) {
    let mut config = env.config.clone();
    config.metrics_listen = Some("127.0.0.1:0".parse().expect("address"));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let server = latch_central::start(&config, Some(l))
        .await
        .expect("start central");
    let addr = server
        .metrics_addr()
        .expect("metrics_listen serves /metrics");
    apply_rules(&server).await;
    let text = scrape(addr).await;
    assert_eq!(
        sample(&text, "latch_central_agents_connected"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"latch_central_requests{state="pending"}"#),
        Some(0.0),
        "{text}"
    );

    let mut agent = Agent::connect(&server, "h1", vec![], vec![]).await;
    agent.next_rules().await;
    let a = agent.submit(agent.request("1.100", "prod-db")).await;
    // Another destination: an identical request would be resolved with the first.
    let mut other = agent.request("1.101", "prod-db");
    other.destination.as_mut().expect("destination").port = 5433;
    agent.submit(other).await;
    let mut rv = reviewer(&server).await;
    rv.decide(req(approve_once(&a.approval_id, "ok"), ALICE))
        .await
        .expect("decide");
    let text = scrape(addr).await;
    assert_eq!(
        sample(&text, "latch_central_agents_connected"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"latch_central_requests{state="pending"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"latch_central_requests{state="approved"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "latch_central_decision_seconds_count"),
        Some(1.0),
        "{text}"
    );
    // Rules, the agent's registration, two requests and a decision were written: on SQLite
    // through the group-committing writer; PostgreSQL's server batches its own commits.
    let commits = sample(&text, "latch_central_store_commits_total").expect("commits");
    let txs = sample(&text, "latch_central_store_transactions_total").expect("transactions");
    // Commits since start-up are timed, with the transactions each carried (at least one). The
    // histograms are updated as commits happen, the counters at the scrape: not compared.
    let timed = sample(&text, "latch_central_store_commit_seconds_count").expect("commit time");
    let batches = sample(&text, "latch_central_store_batch_size_count").expect("batch size");
    let carried = sample(&text, "latch_central_store_batch_size_sum").expect("batch size");
    if env.kind == "sqlite" {
        assert!(txs >= 5.0 && commits >= 1.0 && commits <= txs, "{text}");
        assert!(
            timed >= 1.0 && batches >= 1.0 && carried >= batches,
            "{text}"
        );
    } else {
        assert_eq!((commits, txs), (0.0, 0.0), "{text}");
        assert_eq!((timed, carried), (0.0, 0.0), "{text}");
    }
    // Exported (their figures are checked in the stream hub's unit test).
    assert!(
        sample(&text, "latch_central_agent_queue_messages").is_some(),
        "{text}"
    );
    assert!(
        sample(&text, "latch_central_agent_queue_max").is_some(),
        "{text}"
    );

    // A closed stream is no longer counted.
    drop(agent);
    let deadline = std::time::Instant::now() + HANG;
    loop {
        let text = scrape(addr).await;
        if sample(&text, "latch_central_agents_connected") == Some(0.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the closed stream is still counted: {text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    server.shutdown().await;
}

/// Calls that race on one request get answers that agree with each other: the same request
/// submitted eight times at once is one request for all eight; of four approvers deciding one
/// request at once, one resolves it and the others are told it is approved (on SQLite these
/// calls share commits, and a loser must not read before the winner's batch is durable).
async fn racing_calls_agree(env: &Env) {
    let server = env.start().await;
    apply_rules(&server).await;
    let mut agent = Agent::connect(&server, "h1", vec![], vec![]).await;
    for round in 0..10 {
        let r = agent.request(&format!("race.{round}"), "prod-db");
        let submits: Vec<_> = (0..8)
            .map(|_| {
                let (mut client, r, token) = (agent.client.clone(), r.clone(), agent.token());
                tokio::spawn(async move { client.request_approval(req(r, &token)).await })
            })
            .collect();
        let mut ids = Vec::new();
        for s in submits {
            let accepted = s
                .await
                .expect("join")
                .unwrap_or_else(|e| panic!("round {round}: a duplicate submission failed: {e}"));
            ids.push(accepted.into_inner().approval_id);
        }
        ids.dedup();
        assert_eq!(ids.len(), 1, "round {round}: {ids:?}");
        let id = ids.remove(0);

        let decides: Vec<_> = [ALICE, BOB, CAROL, DAVE]
            .into_iter()
            .map(|token| {
                let server_addr = server.addr();
                let id = id.clone();
                tokio::spawn(async move {
                    let mut rv = ReviewerServiceClient::connect(format!("http://{server_addr}"))
                        .await
                        .expect("connect");
                    rv.decide(req(approve_once(&id, "race"), token)).await
                })
            })
            .collect();
        let mut won = 0;
        for d in decides {
            match d.await.expect("join") {
                Ok(_) => won += 1,
                Err(e) => {
                    assert_eq!(e.code(), Code::FailedPrecondition, "round {round}: {e}");
                    assert!(
                        e.message().contains("approved"),
                        "round {round}: a losing approver was told: {}",
                        e.message()
                    );
                }
            }
        }
        assert_eq!(won, 1, "round {round}");
    }
    // Four approvers revoking one grant at once: one revokes it, and the others are told who.
    let mut rv = reviewer(&server).await;
    for round in 0..5 {
        let acc = agent
            .submit(agent.request(&format!("race-grant.{round}"), "prod-db"))
            .await;
        rv.decide(req(
            approve_for(&acc.approval_id, GrantScope::Workload, 1),
            BOB,
        ))
        .await
        .expect("approve for");
        let grant_id = rv
            .list_grants(req(ListGrantsRequest::default(), VIEWER))
            .await
            .expect("grants")
            .into_inner()
            .grants
            .into_iter()
            .find(|g| g.request_id == acc.approval_id)
            .expect("the grant")
            .grant_id;
        let revokes: Vec<_> = [ALICE, BOB, CAROL, DAVE]
            .into_iter()
            .map(|token| {
                let (server_addr, grant_id) = (server.addr(), grant_id.clone());
                tokio::spawn(async move {
                    let mut rv = ReviewerServiceClient::connect(format!("http://{server_addr}"))
                        .await
                        .expect("connect");
                    rv.revoke_grant(req(
                        RevokeGrantRequest {
                            grant_id,
                            reason: "race".into(),
                            close_connections: false,
                        },
                        token,
                    ))
                    .await
                })
            })
            .collect();
        let (mut winners, mut losers) = (Vec::new(), Vec::new());
        for r in revokes {
            match r.await.expect("join") {
                Ok(g) => winners.push(g.into_inner().revoked_by),
                Err(e) => {
                    assert_eq!(e.code(), Code::FailedPrecondition, "round {round}: {e}");
                    losers.push(e.message().to_string());
                }
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {winners:?} {losers:?}");
        let told = format!("already revoked by {}", winners[0]);
        for m in &losers {
            assert!(
                m.ends_with(&told),
                "round {round}: a loser was told {m:?}, not {told:?}"
            );
        }
    }
    server.shutdown().await;
}

const CHAIN_RULES: &str = r#"
workloads:
  - name: ai-agents
    cgroups: ["/ai.slice/*"]
rules:
  - name: deploy-db
    workload: ai-agents
    on: connect
    to: ["10.20.0.0/16"]
    action: approve
    review: [policy, human]
    policy:
      - name: deploy-job
        approve_if: 'parent.exe == "/usr/bin/deploy" && destination.port == 5432 && host.labels["env"] == "prod"'
      - name: no-root
        deny_if: 'process.uid == 0'
      - name: broken
        deny_if: 'env.MISSING == "x"'
  - name: guarded
    workload: ai-agents
    on: connect
    to: ["10.30.0.0/16"]
    action: approve
    review: [policy, human]
    policy:
      - name: guard
        deny_if: 'env.BLOCK == "yes"'
      - name: open
        approve_if: 'true'
  - name: machines-only
    workload: ai-agents
    on: exec
    paths: ["/usr/bin/rsync"]
    action: approve
    review: [policy]
    policy:
      - name: dry-run
        approve_if: 'process.argv.exists(a, a == "--dry-run")'
  - name: machines-guarded
    workload: ai-agents
    on: exec
    paths: ["/usr/bin/scp"]
    action: approve
    review: [policy]
    policy:
      - name: guard
        deny_if: 'env.BLOCK == "yes"'
      - name: open
        approve_if: 'true'
"#;

/// A rule's review chain: a policy check approves or denies as the request arrives (recorded
/// as `policy:<rule>/<check>` with the inputs' digest; the workload is told the check's name,
/// not its expression); a check that cannot be evaluated ends the step, so that no later check
/// approves what it would have denied, and is audited; what no check decides waits for a
/// person; a chain without people denies it at once.
async fn review_chains(env: &Env) {
    let server = env.start().await;
    let mut rv = reviewer(&server).await;
    apply_yaml(&server, "chains.yaml", CHAIN_RULES).await;
    let mut agent = Agent::connect(&server, "h1", vec![], vec![]).await;
    agent.next_rules().await;
    let rule_id = |name: &str| rule_id_in(CHAIN_RULES, name);
    let connect = |agent: &Agent, id: &str, parent: &str, uid: u32| {
        let mut r = agent.request(id, "prod-db");
        r.rule_id = rule_id("deploy-db");
        r.rule_name = "deploy-db".into();
        r.uid = uid;
        r.ancestors[0].exe = parent.into();
        r
    };
    let guarded = |agent: &Agent, id: &str, block: Option<&str>| {
        let mut r = agent.request(id, "prod-db");
        r.rule_id = rule_id("guarded");
        r.rule_name = "guarded".into();
        r.env = block
            .map(|v| latch_proto::v1::EnvVar {
                name: "BLOCK".into(),
                value: v.into(),
            })
            .into_iter()
            .collect();
        r
    };
    let exec = |agent: &Agent, id: &str, argv: &[&str]| {
        let mut r = agent.request(id, "two-person");
        r.rule_id = rule_id("machines-only");
        r.rule_name = "machines-only".into();
        r.exec_path = "/usr/bin/rsync".into();
        r.argv = argv.iter().map(|a| a.to_string()).collect();
        r
    };

    let cases = [
        (
            connect(&agent, "c.1", "/usr/bin/deploy", 1000),
            Some((Outcome::Allow, "policy:deploy-db/deploy-job")),
        ),
        (
            connect(&agent, "c.2", "/usr/lib/systemd/systemd", 0),
            Some((Outcome::Deny, "policy:deploy-db/no-root")),
        ),
        (
            exec(&agent, "e.1", &["rsync", "--dry-run", "a", "b"]),
            Some((Outcome::Allow, "policy:machines-only/dry-run")),
        ),
        (
            exec(&agent, "e.2", &["rsync", "a", "b"]),
            Some((Outcome::Deny, "review-chain")),
        ),
        (
            guarded(&agent, "g.1", Some("no")),
            Some((Outcome::Allow, "policy:guarded/open")),
        ),
        (
            guarded(&agent, "g.2", Some("yes")),
            Some((Outcome::Deny, "policy:guarded/guard")),
        ),
        // Without what the guard reads, the guard fails and `open` is never asked: people
        // decide, or, with none in the chain, the request is denied.
        (guarded(&agent, "g.3", None), None),
        (
            {
                let mut r = exec(&agent, "m.1", &["scp", "a", "b"]);
                r.rule_id = rule_id("machines-guarded");
                r.rule_name = "machines-guarded".into();
                r.exec_path = "/usr/bin/scp".into();
                r
            },
            Some((Outcome::Deny, "review-chain")),
        ),
        (
            connect(&agent, "c.3", "/usr/lib/systemd/systemd", 1000),
            None,
        ),
    ];
    let mut waiting = None;
    for (r, want) in cases {
        let id = r.request_id.clone();
        let acc = agent.submit(r).await;
        match want {
            Some((outcome, by)) => {
                let d = acc
                    .decision
                    .unwrap_or_else(|| panic!("{id}: decided as it arrived"));
                assert_eq!(
                    (d.outcome, d.decided_by.as_str()),
                    (outcome as i32, by),
                    "{id}"
                );
                assert!(
                    !d.reason.contains("==") && !d.reason.contains("exists("),
                    "{id}: the workload is told which check, not what it reads: {}",
                    d.reason
                );
                // A person comes too late to a request the chain decided.
                let e = rv
                    .decide(req(approve_once(&acc.approval_id, "me too"), ALICE))
                    .await
                    .expect_err("already decided");
                assert_eq!(e.code(), Code::FailedPrecondition, "{id}: {e}");
            }
            None => {
                assert_eq!(acc.state, RequestState::Pending as i32, "{id}");
                assert!(acc.decision.is_none(), "{id}");
                waiting = Some(acc.approval_id);
            }
        }
    }
    // A request its chain decides as it arrives waits for nobody: it joins no identical
    // request, even one that waits (g.3, identical but for the variable its guard reads, which
    // merging does not compare).
    let g3 = pending(&mut rv).await;
    let acc = agent.submit(guarded(&agent, "g.4", Some("no"))).await;
    let d = acc.decision.expect("g.4: decided as it arrived");
    assert_eq!(
        (d.outcome, d.decided_by.as_str()),
        (Outcome::Allow as i32, "policy:guarded/open")
    );
    assert_eq!(get(&mut rv, &acc.approval_id).await.merged_into, "");
    assert_eq!(pending(&mut rv).await, g3, "the waiting ones unchanged");
    // What no check decided is a person's to decide (the last of them here: c.3).
    let waiting = waiting.expect("one request waits");
    let (rec, resolved) = {
        let r = rv
            .decide(req(approve_once(&waiting, "looked at it"), ALICE))
            .await
            .expect("decide")
            .into_inner();
        (r.request.expect("record"), r.r#final)
    };
    assert!(resolved);
    assert_eq!(rec.state, RequestState::Approved as i32);

    // Each automatic decision is audited with the check, its expression and the inputs' digest;
    // the check that could not be evaluated is named beside it.
    let approved = audit_kind(&mut rv, "request.approved").await;
    let by_policy = approved
        .iter()
        .find(|e| e.actor == "policy:deploy-db/deploy-job")
        .unwrap_or_else(|| panic!("{approved:?}"));
    let p: serde_json::Value = serde_json::from_str(&by_policy.payload_json).expect("payload");
    assert_eq!(p["check"], "deploy-job");
    assert!(p["expression"]
        .as_str()
        .is_some_and(|e| e.contains("/usr/bin/deploy")));
    assert!(
        p["inputs_sha256"]
            .as_str()
            .is_some_and(|d| d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit())),
        "{p}"
    );
    assert!(approved.iter().any(|e| e.actor == "alice"), "{approved:?}");
    let denied = audit_kind(&mut rv, "request.denied").await;
    assert!(
        denied.iter().any(
            |e| e.actor == "review-chain" && e.payload_json.contains("no policy check decided")
        ),
        "{denied:?}"
    );
    // The checks that could not be evaluated are on the record, by name.
    let failed = audit_kind(&mut rv, "request.policy_failed").await;
    let names: std::collections::BTreeSet<String> =
        failed.iter().map(|e| e.actor.clone()).collect();
    assert_eq!(
        names,
        [
            "policy:deploy-db/broken",
            "policy:guarded/guard",
            "policy:machines-guarded/guard"
        ]
        .map(String::from)
        .into_iter()
        .collect(),
        "{failed:?}"
    );
    for e in &failed {
        let p: serde_json::Value = serde_json::from_str(&e.payload_json).expect("payload");
        assert!(
            p["failed_checks"][0]["error"]
                .as_str()
                .is_some_and(|why| !why.is_empty()),
            "each names its error: {p}"
        );
    }
    server.shutdown().await;
}

/// A request a rule of new names held, once approved, makes its name known to the workload:
/// every agent stream is told, the asking host before the decision, and a stream that opens
/// later is told as it opens. A denial makes nothing known.
async fn known_names(env: &Env) {
    let server = env.start().await;
    apply_rules(&server).await;
    let mut h1 = Agent::connect(&server, "h1", vec![], vec![]).await;
    h1.next_rules().await;
    let mut h2 = Agent::connect(&server, "h2", vec![], vec![]).await;
    h2.next_rules().await;
    let held = |agent: &Agent, id: &str, name: &str| {
        let mut r = agent.request(id, "prod-db");
        if let Some(d) = r.destination.as_mut() {
            d.host_name = name.into();
            d.new_name = true;
        }
        r
    };
    let mut rv = reviewer(&server).await;

    let denied = h1.submit(held(&h1, "n.1", "refused.test")).await;
    rv.decide(req(deny(&denied.approval_id), BOB))
        .await
        .expect("deny");
    let d = h1.next().await;
    assert!(
        matches!(d, Body::Decision(_)),
        "a denial makes nothing known: {d:?}"
    );

    let approved = h1.submit(held(&h1, "n.2", "fresh.test")).await;
    rv.decide(req(
        approve_once(&approved.approval_id, "a partner's API"),
        BOB,
    ))
    .await
    .expect("approve");
    let workload = h1.request("x", "prod-db").workload;
    let known = |b: Body| match b {
        Body::KnownNames(k) => (k.workload, k.names),
        other => panic!("expected the known names, got {other:?}"),
    };
    assert_eq!(
        known(h1.next().await),
        (workload.clone(), vec!["fresh.test".to_string()])
    );
    assert!(matches!(h1.next().await, Body::Decision(d) if d.approval_id == approved.approval_id));
    assert_eq!(
        known(h2.next().await),
        (workload.clone(), vec!["fresh.test".to_string()])
    );

    drop(h2);
    let mut again = Agent::connect(&server, "h2", vec![], vec![]).await;
    again.next_rules().await;
    assert_eq!(
        known(again.next().await),
        (workload, vec!["fresh.test".to_string()])
    );
    server.shutdown().await;
}

/// An automatic approval (a policy check) lets the connection through and makes nothing known:
/// only people's approvals do.
async fn known_names_need_a_person(env: &Env) {
    let server = env.start().await;
    apply_yaml(&server, "chains.yaml", CHAIN_RULES).await;
    let mut agent = Agent::connect(&server, "h1", vec![], vec![]).await;
    agent.next_rules().await;
    let held = |agent: &Agent, id: &str, rule: &str, name: &str| {
        let mut r = agent.request(id, "prod-db");
        r.rule_id = rule_id_in(CHAIN_RULES, rule);
        r.rule_name = rule.into();
        if let Some(d) = r.destination.as_mut() {
            d.host_name = name.into();
            d.new_name = true;
        }
        r
    };
    let known = |b: Body| match b {
        Body::KnownNames(k) => k.names,
        other => panic!("expected the known names, got {other:?}"),
    };

    // `guarded` approves by a policy check at once (its guard reads `BLOCK`).
    let mut r = held(&agent, "a.1", "guarded", "auto.test");
    r.env = vec![latch_proto::v1::EnvVar {
        name: "BLOCK".into(),
        value: "no".into(),
    }];
    let auto = agent.submit(r).await;
    assert!(
        matches!(agent.next().await, Body::Decision(d) if d.approval_id == auto.approval_id && d.outcome == Outcome::Allow as i32),
        "decided by the policy check"
    );
    // `deploy-db` waits for a person here (its check does not hold).
    let person = agent
        .submit(held(&agent, "a.2", "deploy-db", "person.test"))
        .await;
    let mut rv = reviewer(&server).await;
    rv.decide(req(approve_once(&person.approval_id, "ours"), BOB))
        .await
        .expect("approve");
    assert_eq!(known(agent.next().await), ["person.test"]);
    assert!(matches!(agent.next().await, Body::Decision(d) if d.approval_id == person.approval_id));

    drop(agent);
    let mut again = Agent::connect(&server, "h1", vec![], vec![]).await;
    again.next_rules().await;
    assert_eq!(known(again.next().await), ["person.test"]);
    server.shutdown().await;
}

suite!(
    known_names,
    known_names_need_a_person,
    merged_requests,
    merged_requests_expire_together,
    merged_requests_submitted_at_once,
    racing_calls_agree,
    metrics,
    full_flow,
    grant_and_revoke,
    expiry,
    two_person_rule,
    mixed_terms_grant_the_narrowest,
    self_approval_refused,
    concurrent_decisions,
    cancel,
    justify,
    review_chains,
    restart_loses_nothing,
    rules_versions_and_shadow,
    bad_input,
    reflection,
    reflection_v1alpha,
    audit_is_append_only,
);
