//! Several central replicas on one PostgreSQL: decisions, revocations and rules reach agents on
//! another replica at once (LISTEN/NOTIFY), and an agent whose replica dies reconnects to
//! another without losing a request.

mod common;

use common::*;
use latch_proto::v1::{DecideRequest, DecisionKind, GrantScope, Outcome, RevokeGrantRequest};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_decisions() {
    let Some(env) = Env::postgres().await else {
        return;
    };
    let a = env.start().await;
    let b = env.start().await;
    assert_ne!(a.central().replica_id(), "");

    // Rules applied through A reach an agent on B.
    let mut agent = Agent::connect(&b, "h1", vec![], vec![]).await;
    apply_rules(&a).await;
    assert_eq!(agent.next_rules().await, 1);

    // A request submitted through B, decided through A, reaches the agent on B.
    let acc = agent.submit(agent.request("r.1", "prod-db")).await;
    let mut rv_a = reviewer(&a).await;
    rv_a.decide(req(
        DecideRequest {
            approval_id: acc.approval_id.clone(),
            kind: DecisionKind::ApproveFor as i32,
            duration_seconds: 600,
            scope: GrantScope::Host as i32,
            reason: "maintenance".into(),
        },
        ALICE,
    ))
    .await
    .expect("decide on A");
    let d = agent.next_decision().await;
    assert_eq!(
        (d.request_id.as_str(), d.outcome),
        ("r.1", Outcome::Allow as i32)
    );
    let grant = d.grant.expect("grant");

    // A revocation through A reaches the agent on B.
    rv_a.revoke_grant(req(
        RevokeGrantRequest {
            grant_id: grant.grant_id.clone(),
            reason: "done".into(),
            close_connections: true,
        },
        BOB,
    ))
    .await
    .expect("revoke on A");
    let r = agent.next_revocation().await;
    assert_eq!(r.grant_id, grant.grant_id);
    assert!(r.close_connections, "carried across replicas");

    // Concurrent decisions through both replicas: exactly one wins.
    let acc = agent.submit(agent.request("r.2", "prod-db")).await;
    let mut rv_b = reviewer(&b).await;
    let d1 = DecideRequest {
        approval_id: acc.approval_id.clone(),
        kind: DecisionKind::ApproveOnce as i32,
        reason: "a".into(),
        ..Default::default()
    };
    let d2 = DecideRequest {
        kind: DecisionKind::Deny as i32,
        reason: "b".into(),
        ..d1.clone()
    };
    let (r1, r2) = tokio::join!(rv_a.decide(req(d1, ALICE)), rv_b.decide(req(d2, BOB)));
    assert_eq!(r1.is_ok() as u8 + r2.is_ok() as u8, 1, "{r1:?} {r2:?}");
    for r in [r1, r2] {
        if let Err(e) = r {
            assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
        }
    }
    assert_eq!(agent.next_decision().await.request_id, "r.2");

    // The agent's replica (B) dies with a request pending; the agent reconnects to A.
    let pending = agent.submit(agent.request("r.3", "prod-db")).await;
    b.shutdown().await;
    drop(agent);
    let mut agent = Agent::connect(&a, "h1", vec!["r.3".into()], vec![]).await;
    assert_eq!(agent.next_rules().await, 1);
    // Resubmitting after reconnection is idempotent: same request, still pending.
    let again = agent.submit(agent.request("r.3", "prod-db")).await;
    assert_eq!(again.approval_id, pending.approval_id);
    // Decided through a third replica started later.
    let c = env.start().await;
    let mut rv_c = reviewer(&c).await;
    rv_c.decide(req(
        DecideRequest {
            approval_id: pending.approval_id.clone(),
            kind: DecisionKind::Deny as i32,
            reason: "no".into(),
            ..Default::default()
        },
        DAVE,
    ))
    .await
    .expect("decide on C");
    let d = agent.next_decision().await;
    assert_eq!(
        (d.request_id.as_str(), d.outcome),
        ("r.3", Outcome::Deny as i32)
    );
    c.shutdown().await;
    a.shutdown().await;
}
