//! Reviewer identity from an OpenID Connect provider: central on 127.0.0.1:0 with the test
//! provider (`latch-test-idp`), real gRPC clients, real tokens.

mod common;

use common::*;
use latch_central::{oidc::OidcConfig, Server};
use latch_proto::v1::{
    BreakGlassRequest, DecideRequest, DecisionKind, GetRequestRequest, GrantScope, Outcome,
    QueryAuditRequest, RequestState, WhoAmIRequest,
};
use latch_test_idp::TestIdp;
use tonic::{Code, Status};

/// The provider's groups and the roles central gives them.
const ROLES: &str = r#"
"latch-viewers" = "viewer"
"sre-oncall" = "approver"
"dba-oncall" = "approver"
"latch-admins" = "admin"
"#;

fn oidc_config(idp: &TestIdp, extra: &str) -> OidcConfig {
    let text = format!(
        "issuer = \"{}\"\naudiences = [\"{}\"]\n{extra}\n[roles]\n{ROLES}",
        idp.issuer(),
        idp.api_audience()
    );
    let c: OidcConfig = toml::from_str(&text).expect("oidc config");
    c.validate().expect("valid oidc config");
    c
}

async fn idp() -> TestIdp {
    let idp = TestIdp::start()
        .await
        .expect("start the test identity provider");
    idp.add_user("olga", "olga@example.com", &["latch-viewers"]);
    idp.add_user("amir", "amir@example.com", &["sre-oncall", "dba-oncall"]);
    idp.add_user("dina", "dina@example.com", &["dba-oncall"]);
    idp.add_user("sam", "sam@example.com", &["sre-oncall"]);
    idp.add_user("ann", "ann@example.com", &["latch-admins", "engineering"]);
    idp.add_user("mark", "mark@example.com", &["marketing"]);
    idp
}

struct Setup {
    idp: TestIdp,
    env: Env,
    server: Server,
}

async fn setup(oidc_extra: &str, break_glass: bool) -> Setup {
    let idp = idp().await;
    let mut env = Env::sqlite().await;
    env.config.oidc = Some(oidc_config(&idp, oidc_extra));
    env.config.break_glass.enabled = break_glass;
    env.config.validate().expect("valid config");
    let server = env.start().await;
    Setup { idp, env, server }
}

async fn whoami(server: &Server, token: &str) -> Result<latch_proto::v1::WhoAmIResponse, Status> {
    reviewer(server)
        .await
        .who_am_i(req(WhoAmIRequest {}, token))
        .await
        .map(|r| r.into_inner())
}

fn approve_once(id: &str) -> DecideRequest {
    DecideRequest {
        approval_id: id.into(),
        kind: DecisionKind::ApproveOnce as i32,
        reason: "checked the query plan".into(),
        ..Default::default()
    }
}

async fn audit(server: &Server, kind: &str) -> Vec<latch_proto::v1::AuditEntry> {
    reviewer(server)
        .await
        .query_audit(req(
            QueryAuditRequest {
                kind: kind.into(),
                limit: 1000,
                ..Default::default()
            },
            ADMIN,
        ))
        .await
        .expect("query audit")
        .into_inner()
        .entries
}

/// A request from `requester` on `rule`, submitted by a connected agent.
async fn submit(agent: &mut Agent, id: &str, rule: &str, requester: &str) -> String {
    let mut r = agent.request(id, rule);
    r.requester = requester.into();
    let accepted = agent.submit(r).await;
    accepted.approval_id
}

#[tokio::test]
async fn valid_rs256_and_es256_tokens_map_groups_to_roles() {
    let s = setup("", false).await;
    for (user, token, role) in [
        ("amir", s.idp.token("amir").expect("rs256"), "approver"),
        (
            "amir",
            s.idp.token_es256("amir").expect("es256"),
            "approver",
        ),
        ("olga", s.idp.token("olga").expect("rs256"), "viewer"),
        ("ann", s.idp.token_es256("ann").expect("es256"), "admin"),
    ] {
        let me = whoami(&s.server, &token).await.expect(user);
        assert_eq!(me.subject, s.idp.subject_of(user));
        assert_eq!(me.email, format!("{user}@example.com"));
        assert_eq!(me.role, role, "{user}");
    }
    let me = whoami(&s.server, &s.idp.token("ann").expect("token"))
        .await
        .expect("ann");
    assert_eq!(me.groups, vec!["latch-admins", "engineering"]);

    // Valid token, but no group with a role.
    let e = whoami(&s.server, &s.idp.token("mark").expect("token"))
        .await
        .expect_err("no role");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains("no role") && e.message().contains("marketing"),
        "{}",
        e.message()
    );

    // Static tokens keep working next to the provider while configured.
    assert_eq!(
        whoami(&s.server, ADMIN).await.expect("static").role,
        "admin"
    );
}

#[tokio::test]
async fn refused_tokens_are_unauthenticated() {
    // An hour between unknown-kid refetches, so the second unknown kid cannot cause a fetch.
    let s = setup("jwks_refetch_interval = \"1h\"", false).await;
    whoami(&s.server, &s.idp.token("amir").expect("token"))
        .await
        .expect("a valid token first, so the keys are cached");
    let fetches = s.idp.jwks_fetches();
    assert_eq!(fetches, 1, "the key set is fetched once and cached");

    let in_leeway = s
        .idp
        .mint(
            "amir",
            &latch_test_idp::Mint {
                not_before_offset: 30,
                ..Default::default()
            },
        )
        .expect("token");
    whoami(&s.server, &in_leeway)
        .await
        .expect("nbf 30 s ahead is within the 60 s leeway");

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            s.idp.expired_token("amir").expect("t"),
            "expired",
        ),
        (
            "not yet valid",
            s.idp.not_yet_valid_token("amir").expect("t"),
            "not valid yet",
        ),
        (
            "wrong audience",
            s.idp.wrong_audience_token("amir").expect("t"),
            "audience",
        ),
        (
            "wrong issuer",
            s.idp.wrong_issuer_token("amir").expect("t"),
            "issuer",
        ),
        (
            "alg none",
            s.idp.unsigned_token("amir").expect("t"),
            "header",
        ),
        (
            "HMAC with the public key",
            s.idp.hmac_with_public_key_token("amir").expect("t"),
            "not accepted",
        ),
        (
            "unknown kid",
            s.idp.unknown_kid_token("amir").expect("t"),
            "does not publish",
        ),
        (
            "foreign key",
            s.idp.foreign_key_token("amir").await.expect("t"),
            "signature",
        ),
        (
            "garbage",
            "eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.c2ln".to_string(),
            "token",
        ),
        (
            "not a provider token",
            "no-such-static-token".to_string(),
            "unknown",
        ),
    ];
    for (what, token, needle) in cases {
        let e = whoami(&s.server, &token).await.expect_err(what);
        assert_eq!(e.code(), Code::Unauthenticated, "{what}: {e:?}");
        assert!(
            e.message().contains(needle),
            "{what}: '{}' does not mention '{needle}'",
            e.message()
        );
    }
    assert_eq!(
        s.idp.jwks_fetches(),
        fetches + 1,
        "one refetch for the unknown kid"
    );
    let e = whoami(&s.server, &s.idp.unknown_kid_token("amir").expect("t"))
        .await
        .expect_err("unknown kid again");
    assert_eq!(e.code(), Code::Unauthenticated);
    assert_eq!(
        s.idp.jwks_fetches(),
        fetches + 1,
        "unknown key ids refetch at most once per interval"
    );
}

#[tokio::test]
async fn key_rotation_needs_no_restart() {
    let s = setup("", false).await;
    let before = s.idp.token("amir").expect("token");
    let es_before = s.idp.token_es256("amir").expect("token");
    whoami(&s.server, &before).await.expect("old key");
    let old_kids = s.idp.kids();
    s.idp.rotate().await.expect("rotate");
    assert!(s.idp.kids().iter().all(|k| !old_kids.contains(k)));
    let after = s.idp.token("amir").expect("token");
    assert_ne!(after, before);
    whoami(&s.server, &after)
        .await
        .expect("new RS256 key after rotation");
    whoami(&s.server, &s.idp.token_es256("amir").expect("token"))
        .await
        .expect("new ES256 key after rotation");
    // The refetch replaced the cache: the retired keys are gone with it.
    let e = whoami(&s.server, &es_before)
        .await
        .expect_err("retired key");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
}

#[tokio::test]
async fn viewers_and_requesters_cannot_approve() {
    let s = setup("", false).await;
    apply_rules(&s.server).await;
    let mut agent = Agent::connect(&s.server, "h1", vec![], vec![]).await;
    assert_eq!(agent.next_rules().await, 1);
    let id = submit(&mut agent, "1.1", "prod-db", "user:amir").await;
    let mut rv = reviewer(&s.server).await;

    let e = rv
        .decide(req(approve_once(&id), &s.idp.token("olga").expect("t")))
        .await
        .expect_err("viewer");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("not an approver"), "{}", e.message());

    // amir's token says sub 00u..., email amir@example.com, preferred_username amir: the
    // request's requester "user:amir" is him.
    let e = rv
        .decide(req(approve_once(&id), &s.idp.token("amir").expect("t")))
        .await
        .expect_err("requester");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("requester"), "{}", e.message());
    assert!(!audit(&s.server, "request.self_approval_refused")
        .await
        .is_empty());

    let done = rv
        .decide(req(approve_once(&id), &s.idp.token("sam").expect("t")))
        .await
        .expect("another approver")
        .into_inner();
    assert!(done.r#final);
    let d = agent.next_decision().await;
    assert_eq!(d.outcome, Outcome::Allow as i32);
    assert_eq!(d.decided_by, s.idp.subject_of("sam"));
}

#[tokio::test]
async fn provider_groups_are_the_rules_approver_groups() {
    let s = setup("", false).await;
    apply_rules(&s.server).await;
    let mut agent = Agent::connect(&s.server, "h1", vec![], vec![]).await;
    assert_eq!(agent.next_rules().await, 1);
    // two-person: approvers { groups: ["dba-oncall"], count: 2 }
    let id = submit(&mut agent, "2.1", "two-person", "unit:runner.service").await;
    let mut rv = reviewer(&s.server).await;

    let e = rv
        .decide(req(approve_once(&id), &s.idp.token("sam").expect("t")))
        .await
        .expect_err("sam is an approver but not in dba-oncall");
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("dba-oncall"), "{}", e.message());

    let first = rv
        .decide(req(approve_once(&id), &s.idp.token("amir").expect("t")))
        .await
        .expect("amir is in dba-oncall")
        .into_inner();
    assert!(!first.r#final, "one of two");
    let second = rv
        .decide(req(
            approve_once(&id),
            &s.idp.token_es256("dina").expect("t"),
        ))
        .await
        .expect("dina is in dba-oncall")
        .into_inner();
    assert!(second.r#final);
    assert_eq!(agent.next_decision().await.outcome, Outcome::Allow as i32);
}

fn break_glass(id: &str, reason: &str) -> BreakGlassRequest {
    BreakGlassRequest {
        decision: Some(DecideRequest {
            approval_id: id.into(),
            kind: DecisionKind::ApproveFor as i32,
            duration_seconds: 900,
            scope: GrantScope::Process as i32,
            reason: reason.into(),
        }),
    }
}

const REASON: &str = "INC-4711: primary database down, every DBA unreachable";

#[tokio::test]
async fn break_glass_is_refused_when_disabled() {
    let s = setup("", false).await;
    apply_rules(&s.server).await;
    let mut agent = Agent::connect(&s.server, "h1", vec![], vec![]).await;
    assert_eq!(agent.next_rules().await, 1);
    let id = submit(&mut agent, "3.1", "two-person", "user:ann").await;
    let e = reviewer(&s.server)
        .await
        .break_glass(req(
            break_glass(&id, REASON),
            &s.idp.token("ann").expect("t"),
        ))
        .await
        .expect_err("disabled");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("disabled"), "{}", e.message());
    let refused = audit(&s.server, "decision.break_glass_refused").await;
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].actor, s.idp.subject_of("ann"));
    let rec = reviewer(&s.server)
        .await
        .get_request(req(GetRequestRequest { approval_id: id }, ADMIN))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(rec.state, RequestState::Pending as i32);
}

#[tokio::test]
async fn break_glass_needs_an_admin_and_a_reason_and_is_audited() {
    let s = setup("", true).await;
    apply_rules(&s.server).await;
    let mut agent = Agent::connect(&s.server, "h1", vec![], vec![]).await;
    assert_eq!(agent.next_rules().await, 1);
    // ann asked herself, on a rule needing two dba-oncall approvers she is not among.
    let id = submit(&mut agent, "4.1", "two-person", "user:ann").await;
    // The same operation again, while the first waits: it waits with it.
    let member = submit(&mut agent, "4.2", "two-person", "user:ann").await;
    let mut rv = reviewer(&s.server).await;

    let e = rv
        .break_glass(req(
            break_glass(&id, REASON),
            &s.idp.token("amir").expect("t"),
        ))
        .await
        .expect_err("approver, not admin");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("not an admin"), "{}", e.message());

    let ann = s.idp.token("ann").expect("t");
    let e = rv
        .break_glass(req(break_glass(&id, "urgent"), &ann))
        .await
        .expect_err("short reason");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("at least 20 characters"),
        "{}",
        e.message()
    );

    let e = rv
        .decide(req(approve_once(&id), &ann))
        .await
        .expect_err("the ordinary path still refuses her own request");
    assert_eq!(e.code(), Code::PermissionDenied);

    let done = rv
        .break_glass(req(break_glass(&id, REASON), &ann))
        .await
        .expect("break-glass")
        .into_inner();
    assert!(done.r#final);
    let rec = done.request.expect("record");
    assert_eq!(rec.state, RequestState::Approved as i32);
    let stored = rv
        .get_request(req(
            GetRequestRequest {
                approval_id: id.to_string(),
            },
            &ann,
        ))
        .await
        .expect("get request")
        .into_inner();
    assert_eq!(rec, stored, "the answer is the record as stored");
    // Break-glass resolves the group as any decision does; the grant is the first request's,
    // and the one that waited with it is let through once.
    let mut told = std::collections::BTreeMap::new();
    for _ in 0..2 {
        let d = agent.next_decision().await;
        told.insert(d.request_id.clone(), d);
    }
    let d = told.get("4.1").expect("a decision for the first");
    assert_eq!(d.outcome, Outcome::Allow as i32);
    assert_eq!(d.decided_by, s.idp.subject_of("ann"));
    assert!(d.grant.is_some(), "approve-for creates its grant");
    let m = told
        .get("4.2")
        .expect("a decision for the one waiting with it");
    assert_eq!(m.outcome, Outcome::Allow as i32);
    assert_eq!(m.decided_by, s.idp.subject_of("ann"));
    assert!(m.grant.is_none(), "one grant for the group: {m:?}");
    let merged = rv
        .get_request(req(
            GetRequestRequest {
                approval_id: member,
            },
            &ann,
        ))
        .await
        .expect("get the merged request")
        .into_inner();
    assert_eq!(merged.state, RequestState::Approved as i32);
    assert_eq!(merged.merged_into, id);

    let facts = audit(&s.server, "decision.break_glass").await;
    assert_eq!(facts.len(), 1, "{facts:?}");
    let f = &facts[0];
    assert_eq!(f.actor, s.idp.subject_of("ann"));
    assert_eq!(f.request_id, id);
    let payload: serde_json::Value = serde_json::from_str(&f.payload_json).expect("payload");
    assert_eq!(payload["reason"], REASON);
    assert_eq!(payload["self_approval"], true);
    assert_eq!(payload["outside_approver_groups"], true);
    assert_eq!(payload["approvers_needed"], 2);
    let refused = audit(&s.server, "decision.break_glass_refused").await;
    assert_eq!(refused.len(), 2, "the non-admin and the short reason");
    let approved = audit(&s.server, "request.approved").await;
    assert!(approved
        .iter()
        .any(|a| a.request_id == id && a.payload_json.contains("BREAK-GLASS")));

    let e = rv
        .break_glass(req(break_glass(&id, REASON), &ann))
        .await
        .expect_err("already decided");
    assert_eq!(e.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn identities_are_found_by_email_after_a_login() {
    let s = setup("", false).await;
    let central = s.server.central();
    let alice = central
        .identity_by_email("ALICE@example.com")
        .await
        .expect("lookup")
        .expect("static reviewer");
    assert_eq!(alice.subject, "alice");
    assert!(central
        .identity_by_email("amir@example.com")
        .await
        .expect("lookup")
        .is_none());
    whoami(&s.server, &s.idp.token("amir").expect("t"))
        .await
        .expect("login");
    let amir = central
        .identity_by_email("Amir@Example.com")
        .await
        .expect("lookup")
        .expect("learned at login");
    assert_eq!(amir.subject, s.idp.subject_of("amir"));
    assert_eq!(amir.groups, vec!["sre-oncall", "dba-oncall"]);
    assert!(amir.is_requester("user:amir"));
    assert!(amir.has(latch_central::auth::Role::Approver));
    assert!(central
        .identity_by_email("")
        .await
        .expect("blank")
        .is_none());
    let _ = &s.env;
}

#[tokio::test]
async fn only_verified_addresses_of_one_subject_are_found_by_email() {
    use latch_central::identity::ByEmail;
    let s = setup("", false).await;
    let central = s.server.central();
    s.idp.add_user("nils", "nils@example.com", &["dba-oncall"]);
    s.idp.set_email_verified("nils", false).expect("registered");
    whoami(&s.server, &s.idp.token("nils").expect("t"))
        .await
        .expect("an unverified address does not stop the login");
    assert_eq!(
        central
            .reviewer_by_email("nils@example.com")
            .await
            .expect("lookup"),
        ByEmail::Nobody
    );

    // An unverified claim to a colleague's address, however recent, changes nothing.
    whoami(&s.server, &s.idp.token("dina").expect("t"))
        .await
        .expect("login");
    s.idp.add_user("mona", "DINA@example.com", &["dba-oncall"]);
    s.idp.set_email_verified("mona", false).expect("registered");
    whoami(&s.server, &s.idp.token("mona").expect("t"))
        .await
        .expect("login");
    let dina = central
        .identity_by_email("dina@example.com")
        .await
        .expect("lookup")
        .expect("dina's verified address");
    assert_eq!(dina.subject, s.idp.subject_of("dina"));

    // Once the provider verifies the second subject's claim, the address belongs to nobody
    // (noticed at once, although nothing else about Mona changed).
    s.idp.set_email_verified("mona", true).expect("registered");
    whoami(&s.server, &s.idp.token("mona").expect("t"))
        .await
        .expect("login");
    let mut both = vec![s.idp.subject_of("dina"), s.idp.subject_of("mona")];
    both.sort();
    assert_eq!(
        central
            .reviewer_by_email("dina@example.com")
            .await
            .expect("lookup"),
        ByEmail::Ambiguous { subjects: both }
    );
    assert!(central
        .identity_by_email("dina@example.com")
        .await
        .expect("lookup")
        .is_none());

    // A configured reviewer's address counts as verified, and is claimed here too.
    s.idp.add_user("alex", "alice@example.com", &["dba-oncall"]);
    whoami(&s.server, &s.idp.token("alex").expect("t"))
        .await
        .expect("login");
    assert!(matches!(
        central.reviewer_by_email("alice@example.com").await.expect("lookup"),
        ByEmail::Ambiguous { subjects } if subjects.contains(&"alice".to_string())
    ));
}

#[tokio::test]
async fn static_tokens_are_announced_in_the_audit_trail() {
    let s = setup("", false).await;
    let facts = audit(&s.server, "auth.static_tokens").await;
    assert_eq!(facts.len(), 1);
    assert!(
        facts[0].payload_json.contains("root-admin"),
        "{}",
        facts[0].payload_json
    );
}

#[tokio::test]
async fn an_unreachable_provider_is_unavailable_not_unauthenticated() {
    let idp = idp().await;
    let token = idp.token("amir").expect("token");
    let mut env = Env::sqlite().await;
    env.config.oidc = Some(oidc_config(&idp, ""));
    idp.stop().await;
    // Central starts all the same: agents do not depend on the provider.
    let server = env.start().await;
    let e = whoami(&server, &token).await.expect_err("no keys");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("identity provider"), "{}", e.message());
    assert_eq!(whoami(&server, ADMIN).await.expect("static").role, "admin");
}
