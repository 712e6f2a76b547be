//! The tamper-evident audit trail, against SQLite and PostgreSQL: every way of altering the
//! stored log (edit, delete, insert, reorder, truncate, rewritten hashes, swapped or forged
//! checkpoints) is named by verification, in the database and in an export; exports round-trip;
//! retention keeps the chain verifiable; the evidence report lists what happened; an agent's
//! journal sent again is stored once, in host order.

#[macro_use]
mod common;

use common::*;
use latch_central::{
    audit::{checkpoint_of_proto, record_of_entry, verify_store},
    chain::{
        self, read_csv, read_jsonl, write_jsonl, Checkpoint, CsvWriter, ExportLine, Finding,
        Record, Report, Verifier, VerifyOptions,
    },
    report::{Evidence, ReportMeta},
    Server,
};
use latch_proto::v1::{
    audit_stream_item::Item, AgentAuditRecord, ApplyRulesRequest, AuditBatch, DecideRequest,
    DecisionKind, GetAuditChainRequest, QueryAuditRequest, RollbackRulesRequest,
    SignAuditCheckpointRequest, WhoAmIRequest,
};
use sqlx::{AnyPool, Row};
use tonic::Code;

fn decide(id: &str, kind: DecisionKind, reason: &str) -> DecideRequest {
    DecideRequest {
        approval_id: id.into(),
        kind: kind as i32,
        reason: reason.into(),
        ..Default::default()
    }
}

/// Requests, decisions, an expiry, a refused self-approval, rule changes, a login, and agent
/// records with a journal gap (host_seq 3 never arrives).
async fn scenario(server: &Server) -> Agent {
    apply_rules(server).await;
    let mut agent = Agent::connect(server, "h1", vec![], vec![]).await;
    let mut rv = reviewer(server).await;
    rv.who_am_i(req(WhoAmIRequest {}, ALICE))
        .await
        .expect("login");

    let a = agent.submit(agent.request("1.1", "prod-db")).await;
    rv.decide(req(
        decide(&a.approval_id, DecisionKind::ApproveOnce, "ticket DB-7"),
        ALICE,
    ))
    .await
    .expect("approve");
    agent.next_decision().await;

    let mut mine = agent.request("1.2", "prod-db");
    mine.requester = "user:alice".into();
    mine.argv = vec!["psql".into(), "\x1b[2J<script>x</script>".into()];
    let m = agent.submit(mine).await;
    let e = rv
        .decide(req(
            decide(&m.approval_id, DecisionKind::ApproveOnce, "mine"),
            ALICE,
        ))
        .await
        .expect_err("self approval");
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    rv.decide(req(
        decide(&m.approval_id, DecisionKind::Deny, "not during the freeze"),
        BOB,
    ))
    .await
    .expect("deny");
    agent.next_decision().await;

    let mut r = agent.request("1.3", "quick-expiry");
    r.exec_path = "/usr/bin/scp".into();
    agent.submit(r).await;
    let d = agent.next_decision().await;
    assert_eq!(d.decided_by, "timeout");

    let changed = RULES.replace("timeout: 10m", "timeout: 15m");
    rv.apply_rules(req(
        ApplyRulesRequest {
            source_name: "rules-v2.yaml".into(),
            yaml: changed,
            comment: "longer prod-db window".into(),
            ..Default::default()
        },
        ADMIN,
    ))
    .await
    .expect("apply v2");
    rv.rollback_rules(req(
        RollbackRulesRequest {
            version: 1,
            reason: "too long".into(),
        },
        ADMIN,
    ))
    .await
    .expect("rollback");

    let t = agent.token();
    let rec = |n: u64| AgentAuditRecord {
        record_id: format!("j{n}"),
        time_unix_ms: 1_700_000_000_000 + n as i64,
        kind: "exec".into(),
        rule_id: rule_id("shadow-curl"),
        rule_name: "shadow-curl".into(),
        workload: "ai-agents".into(),
        action: "audit".into(),
        details_json: r#"{"exe":"/usr/bin/curl"}"#.into(),
        host_seq: n,
    };
    agent
        .client
        .upload_audit(req(
            AuditBatch {
                host_id: "h1".into(),
                records: vec![rec(1), rec(2), rec(4)],
            },
            &t,
        ))
        .await
        .expect("upload");
    // Checkpoints in the middle of the log and at its end.
    rv.sign_audit_checkpoint(req(SignAuditCheckpointRequest {}, ADMIN))
        .await
        .expect("checkpoint");
    agent
        .client
        .upload_audit(req(
            AuditBatch {
                host_id: "h1".into(),
                records: vec![rec(5), rec(6)],
            },
            &t,
        ))
        .await
        .expect("upload");
    rv.sign_audit_checkpoint(req(SignAuditCheckpointRequest {}, ADMIN))
        .await
        .expect("checkpoint");
    // Kept connected by the caller: a disconnection would append while the test looks.
    agent
}

async fn verify(server: &Server) -> Report {
    verify_store(
        server.central().store(),
        vec![server.central().public_key()],
        |_| {},
    )
    .await
    .expect("verify")
}

fn findings(r: &Report) -> Vec<String> {
    r.findings.iter().map(|f| f.to_string()).collect()
}

/// Drops the append-only triggers, as a database administrator can.
async fn unprotect(env: &Env, pool: &AnyPool) {
    let stmts: &[&str] = if env.kind == "sqlite" {
        &[
            "DROP TRIGGER audit_no_update",
            "DROP TRIGGER audit_no_delete",
            "DROP TRIGGER audit_checkpoints_no_update",
            "DROP TRIGGER audit_checkpoints_no_delete",
        ]
    } else {
        &[
            "DROP TRIGGER audit_append_only ON audit",
            "DROP TRIGGER audit_checkpoints_append_only ON audit_checkpoints",
        ]
    };
    for s in stmts {
        sqlx::query(s).execute(pool).await.expect(s);
    }
}

async fn exec(pool: &AnyPool, sql: &str) {
    sqlx::query(sql).execute(pool).await.expect(sql);
}

async fn head(pool: &AnyPool) -> i64 {
    sqlx::query("SELECT seq FROM audit_head")
        .fetch_one(pool)
        .await
        .expect("head")
        .try_get("seq")
        .expect("seq")
}

async fn tampering_is_named(env: &Env) {
    let server = env.start().await;
    let _agent = scenario(&server).await;
    let pool = tamper_pool(&server).await;
    let intact = verify(&server).await;
    assert!(intact.ok(), "{:?}", findings(&intact));
    assert!(intact.checkpoints_checked >= 2, "{intact:?}");
    assert_eq!(intact.host_gaps.len(), 1, "{:?}", intact.host_gaps);
    assert_eq!((intact.host_gaps[0].from, intact.host_gaps[0].to), (3, 3));
    let n = head(&pool).await;
    assert_eq!(intact.records as i64, n);
    assert!(n > 20, "{n}");

    // The guard rail first: the table refuses changes until its triggers are dropped.
    let e = sqlx::query("UPDATE audit SET actor = 'mallory' WHERE seq = 5")
        .execute(&pool)
        .await
        .expect_err("append-only");
    assert!(e.to_string().contains("append-only"), "{e}");
    unprotect(env, &pool).await;

    // Edit.
    let rows = server
        .central()
        .store()
        .query_audit(&Default::default(), 100_000)
        .await
        .expect("rows");
    exec(&pool, "UPDATE audit SET actor = 'mallory' WHERE seq = 5").await;
    let r = verify(&server).await;
    assert_eq!(
        r.findings,
        vec![Finding::Edited { seq: 5 }],
        "{:?}",
        findings(&r)
    );
    assert!(findings(&r)[0].starts_with("seq 5: edited"));
    // Also rewriting every later hash (and the head) meets the signed checkpoints.
    let mut prev = rows[3].hash;
    for (i, r) in rows.iter().enumerate().skip(4) {
        let mut r = r.clone();
        if i == 4 {
            r.actor = "mallory".into();
        }
        let h = r.link(&prev);
        sqlx::query("UPDATE audit SET hash = $1 WHERE seq = $2")
            .bind(hex::encode(h))
            .bind(r.seq)
            .execute(&pool)
            .await
            .expect("rehash");
        prev = h;
    }
    sqlx::query("UPDATE audit_head SET hash = $1")
        .bind(hex::encode(prev))
        .execute(&pool)
        .await
        .expect("head");
    let r = verify(&server).await;
    assert!(
        !r.findings.is_empty()
            && r.findings
                .iter()
                .all(|f| matches!(f, Finding::CheckpointMismatch { .. })),
        "{:?}",
        findings(&r)
    );
    assert!(
        findings(&r)[0].contains("hashes recomputed"),
        "{:?}",
        findings(&r)
    );
    // Put it back.
    for r in rows.iter().skip(4) {
        sqlx::query("UPDATE audit SET hash = $1 WHERE seq = $2")
            .bind(hex::encode(r.hash))
            .bind(r.seq)
            .execute(&pool)
            .await
            .expect("restore");
    }
    sqlx::query("UPDATE audit SET actor = $1 WHERE seq = 5")
        .bind(&rows[4].actor)
        .execute(&pool)
        .await
        .expect("restore");
    sqlx::query("UPDATE audit_head SET hash = $1")
        .bind(hex::encode(rows.last().expect("rows").hash))
        .execute(&pool)
        .await
        .expect("head");
    assert!(verify(&server).await.ok());

    // Delete (a copy goes to a side table to put it back).
    exec(
        &pool,
        "CREATE TABLE saved AS SELECT * FROM audit WHERE seq = 7",
    )
    .await;
    exec(&pool, "DELETE FROM audit WHERE seq = 7").await;
    let r = verify(&server).await;
    assert_eq!(
        r.findings,
        vec![Finding::Deleted { from: 7, to: 7 }],
        "{:?}",
        findings(&r)
    );
    assert_eq!(findings(&r)[0], "seq 7: deleted: the record is missing");
    exec(&pool, "INSERT INTO audit SELECT * FROM saved").await;
    exec(&pool, "DROP TABLE saved").await;
    assert!(verify(&server).await.ok());

    // Insert in the middle: later records renumbered to make room.
    exec(&pool, "UPDATE audit SET seq = -seq WHERE seq >= 9").await;
    exec(&pool, "UPDATE audit SET seq = 1 - seq WHERE seq < 0").await;
    exec(
        &pool,
        "INSERT INTO audit (seq, time_ms, kind, actor, host_id, host_seq, request_id, grant_id, rule_name,
            workload, action, record_id, payload, hash)
         SELECT 9, time_ms, 'request.approved', 'mallory', host_id, 0, request_id, '', rule_name, workload,
            'allow', NULL, '{}', hash FROM audit WHERE seq = 8",
    )
    .await;
    let r = verify(&server).await;
    assert_eq!(
        r.findings,
        vec![Finding::Inserted { seq: 9 }],
        "{:?}",
        findings(&r)
    );
    exec(&pool, "DELETE FROM audit WHERE seq = 9").await;
    exec(&pool, "UPDATE audit SET seq = -seq WHERE seq >= 10").await;
    exec(&pool, "UPDATE audit SET seq = -seq - 1 WHERE seq < 0").await;
    assert!(verify(&server).await.ok());

    // Reorder: two records exchange places.
    exec(&pool, "UPDATE audit SET seq = -1 WHERE seq = 11").await;
    exec(&pool, "UPDATE audit SET seq = 11 WHERE seq = 12").await;
    exec(&pool, "UPDATE audit SET seq = 12 WHERE seq = -1").await;
    let r = verify(&server).await;
    assert_eq!(
        r.findings,
        vec![Finding::Reordered { seq: 11, with: 12 }],
        "{:?}",
        findings(&r)
    );
    exec(&pool, "UPDATE audit SET seq = -1 WHERE seq = 11").await;
    exec(&pool, "UPDATE audit SET seq = 11 WHERE seq = 12").await;
    exec(&pool, "UPDATE audit SET seq = 12 WHERE seq = -1").await;
    assert!(verify(&server).await.ok());

    // Truncate: the newest records go, and the head is moved back to hide it. The signed
    // checkpoint at the old head still says how far the log went.
    let cut = n - 3;
    exec(
        &pool,
        &format!("CREATE TABLE saved AS SELECT * FROM audit WHERE seq > {cut}"),
    )
    .await;
    exec(&pool, &format!("DELETE FROM audit WHERE seq > {cut}")).await;
    let keep = rows.iter().find(|r| r.seq == cut).expect("row").hash;
    sqlx::query("UPDATE audit_head SET seq = $1, hash = $2")
        .bind(cut)
        .bind(hex::encode(keep))
        .execute(&pool)
        .await
        .expect("head");
    let r = verify(&server).await;
    assert!(
        matches!(r.findings.as_slice(), [Finding::Truncated { last, expected, .. }] if *last == cut && *expected == n),
        "{:?}",
        findings(&r)
    );
    assert!(findings(&r)[0].starts_with(&format!("truncated: the log ends at seq {cut}")));
    exec(&pool, "INSERT INTO audit SELECT * FROM saved").await;
    exec(&pool, "DROP TABLE saved").await;
    sqlx::query("UPDATE audit_head SET seq = $1, hash = $2")
        .bind(n)
        .bind(hex::encode(rows.last().expect("rows").hash))
        .execute(&pool)
        .await
        .expect("head");
    assert!(verify(&server).await.ok());

    // Swap two checkpoints' hashes, then forge one with another key.
    let cps: Vec<(i64, String)> =
        sqlx::query("SELECT seq, hash FROM audit_checkpoints ORDER BY seq")
            .fetch_all(&pool)
            .await
            .expect("checkpoints")
            .iter()
            .map(|r| {
                (
                    r.try_get("seq").expect("seq"),
                    r.try_get("hash").expect("hash"),
                )
            })
            .collect();
    assert!(cps.len() >= 2, "{cps:?}");
    let (a, b) = (&cps[0], &cps[cps.len() - 1]);
    for (seq, hash) in [(a.0, &b.1), (b.0, &a.1)] {
        sqlx::query("UPDATE audit_checkpoints SET hash = $1 WHERE seq = $2")
            .bind(hash)
            .bind(seq)
            .execute(&pool)
            .await
            .expect("swap");
    }
    let r = verify(&server).await;
    let f = findings(&r);
    assert!(
        r.findings.len() == 2
            && r.findings
                .iter()
                .all(|f| matches!(f, Finding::CheckpointForged { .. })),
        "{f:?}"
    );
    assert!(
        f[0].contains(&format!("checkpoint at seq {}", a.0)) && f[0].contains("does not verify"),
        "{f:?}"
    );
    for (seq, hash) in [(a.0, &a.1), (b.0, &b.1)] {
        sqlx::query("UPDATE audit_checkpoints SET hash = $1 WHERE seq = $2")
            .bind(hash)
            .bind(seq)
            .execute(&pool)
            .await
            .expect("unswap");
    }
    let mallory = ed25519_dalek::SigningKey::from_bytes(&[42; 32]);
    let forged = Checkpoint::sign(&mallory, b.0, chain::GENESIS, 1, chain::kind::PERIODIC);
    sqlx::query(
        "INSERT INTO audit_checkpoints (seq, kind, hash, time_ms, key_id, signature, replica)
         VALUES ($1, 'forged', $2, 1, $3, $4, 'x')",
    )
    .bind(forged.seq)
    .bind(hex::encode(forged.hash))
    .bind(&forged.key_id)
    .bind(&forged.signature)
    .execute(&pool)
    .await
    .expect("forge");
    let r = verify(&server).await;
    assert!(
        matches!(r.findings.as_slice(), [Finding::CheckpointForged { reason, .. }] if reason.contains("not a trusted key")),
        "{:?}",
        findings(&r)
    );
    server.shutdown().await;
}

/// A complete export, read back as the offline verifier reads it.
async fn export(server: &Server) -> Vec<ExportLine> {
    let mut rv = reviewer(server).await;
    let mut s = rv
        .stream_audit(req(QueryAuditRequest::default(), VIEWER))
        .await
        .expect("stream")
        .into_inner();
    let mut lines = Vec::new();
    while let Some(item) = s.message().await.expect("stream item") {
        lines.push(match item.item.expect("item") {
            Item::Header(h) => {
                assert!(h.complete);
                ExportLine::Header(chain::ExportHeader {
                    format: chain::EXPORT_FORMAT.into(),
                    exported_at_unix_ms: h.time_unix_ms,
                    complete: h.complete,
                    filters: Default::default(),
                    key_id: h.key_id,
                })
            }
            Item::Checkpoint(c) => {
                ExportLine::Checkpoint(checkpoint_of_proto(c).expect("checkpoint"))
            }
            Item::Entry(e) => ExportLine::Record(record_of_entry(e).expect("entry")),
        });
    }
    // Through the file format and back.
    let mut buf = Vec::new();
    for l in &lines {
        write_jsonl(&mut buf, l).expect("write");
    }
    let back: Vec<ExportLine> = read_jsonl("export.jsonl", buf.as_slice())
        .collect::<Result<_, _>>()
        .expect("read back");
    assert_eq!(back, lines);
    back
}

fn verify_export(lines: &[ExportLine], key: ed25519_dalek::VerifyingKey) -> Vec<Finding> {
    let mut v = Verifier::new(
        vec![key],
        VerifyOptions {
            require_seal: true,
            expected_head: None,
        },
    );
    for l in lines {
        match l {
            ExportLine::Header(_) => {}
            ExportLine::Checkpoint(c) => v.add_checkpoint(c.clone()),
            ExportLine::Record(r) => v.push(r.clone()),
        }
    }
    v.finish().findings
}

async fn exports_round_trip_and_tampering_is_named(env: &Env) {
    let server = env.start().await;
    let _agent = scenario(&server).await;
    let key = server.central().public_key();
    let lines = export(&server).await;
    assert_eq!(verify_export(&lines, key), vec![]);
    let records: Vec<Record> = lines
        .iter()
        .filter_map(|l| match l {
            ExportLine::Record(r) => Some(r.clone()),
            _ => None,
        })
        .collect();
    let first = lines
        .iter()
        .position(|l| matches!(l, ExportLine::Record(_)))
        .expect("records");
    // CSV holds the same records.
    let mut bytes = Vec::new();
    {
        let mut w = CsvWriter::new(&mut bytes);
        for r in &records {
            w.write(r).expect("csv");
        }
        w.finish().expect("flush");
    }
    let back: Vec<Record> = read_csv("e.csv", bytes.as_slice())
        .collect::<Result<_, _>>()
        .expect("csv back");
    assert_eq!(back, records);

    let at = |seq: i64| first + (seq as usize) - 1;
    let mut edited = lines.clone();
    if let ExportLine::Record(r) = &mut edited[at(6)] {
        r.payload_json = r.payload_json.replace('"', "'");
    }
    assert_eq!(
        verify_export(&edited, key),
        vec![Finding::Edited { seq: 6 }]
    );
    let mut deleted = lines.clone();
    deleted.remove(at(4));
    assert_eq!(
        verify_export(&deleted, key),
        vec![Finding::Deleted { from: 4, to: 4 }]
    );
    let mut swapped = lines.clone();
    swapped.swap(at(8), at(9));
    assert_eq!(
        verify_export(&swapped, key),
        vec![Finding::Reordered { seq: 9, with: 8 }]
    );
    let mut inserted = lines.clone();
    inserted.insert(at(10), lines[at(10)].clone());
    assert_eq!(
        verify_export(&inserted, key),
        vec![Finding::Duplicate { seq: 10 }]
    );
    let truncated = &lines[..lines.len() - 2];
    let f = verify_export(truncated, key);
    assert!(matches!(f.as_slice(), [Finding::Truncated { .. }]), "{f:?}");
    // Without its checkpoints the cut is still visible: nothing seals the new end.
    let bare: Vec<ExportLine> = truncated
        .iter()
        .filter(|l| !matches!(l, ExportLine::Checkpoint(_)))
        .cloned()
        .collect();
    assert_eq!(
        verify_export(&bare, key),
        vec![Finding::Unsealed {
            last: records.len() as i64 - 2
        }]
    );
    let mut forged = lines.clone();
    if let Some(ExportLine::Checkpoint(c)) = forged
        .iter_mut()
        .find(|l| matches!(l, ExportLine::Checkpoint(_)))
    {
        c.seq += 1;
    }
    let f = verify_export(&forged, key);
    assert!(
        f.iter()
            .any(|x| matches!(x, Finding::CheckpointForged { .. })),
        "{f:?}"
    );
    // Another deployment's key does not vouch for this log.
    let other = ed25519_dalek::SigningKey::from_bytes(&[1; 32]).verifying_key();
    let f = verify_export(&lines, other);
    assert!(
        f.iter().any(|x| matches!(x, Finding::Unsealed { .. })),
        "{f:?}"
    );

    // Filtered streams and queries.
    let mut rv = reviewer(&server).await;
    let q = |f: QueryAuditRequest| {
        let mut rv = rv.clone();
        async move {
            rv.query_audit(req(QueryAuditRequest { limit: 1000, ..f }, VIEWER))
                .await
                .expect("query")
                .into_inner()
                .entries
        }
    };
    let denied = q(QueryAuditRequest {
        outcome: "deny".into(),
        kind: "request.".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0].actor, "bob");
    let by_alice = q(QueryAuditRequest {
        actor: "alice".into(),
        ..Default::default()
    })
    .await;
    let kinds: Vec<&str> = by_alice.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        vec![
            "reviewer.login",
            "request.approved",
            "request.self_approval_refused"
        ]
    );
    let in_2023 = q(QueryAuditRequest {
        since_unix_ms: 1_600_000_000_000,
        until_unix_ms: 1_700_000_000_005,
        host_id: "h1".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(
        in_2023.iter().map(|e| e.host_seq).collect::<Vec<_>>(),
        vec![1, 2, 4]
    );
    let by_rule = q(QueryAuditRequest {
        rule_name: "quick-expiry".into(),
        workload: "ai-agents".into(),
        ..Default::default()
    })
    .await;
    assert!(
        by_rule.iter().any(|e| e.kind == "request.expired"),
        "{by_rule:?}"
    );
    let mut s = rv
        .stream_audit(req(
            QueryAuditRequest {
                kind: "rules.".into(),
                ..Default::default()
            },
            VIEWER,
        ))
        .await
        .expect("filtered stream")
        .into_inner();
    let mut complete = None;
    let mut n = 0;
    while let Some(item) = s.message().await.expect("item") {
        match item.item.expect("item") {
            Item::Header(h) => complete = Some(h.complete),
            Item::Entry(e) => {
                assert!(e.kind.starts_with("rules."), "{}", e.kind);
                n += 1;
            }
            Item::Checkpoint(_) => {}
        }
    }
    assert_eq!(complete, Some(false));
    assert!(n >= 3, "{n}");
    server.shutdown().await;
}

async fn evidence_report_lists_what_happened(env: &Env) {
    let server = env.start().await;
    let _agent = scenario(&server).await;
    let lines = export(&server).await;
    let mut ev = Evidence::default();
    for l in &lines {
        if let ExportLine::Record(r) = l {
            ev.add(r);
        }
    }
    let verification = verify(&server).await;
    let html = ev.render(&ReportMeta {
        generated_ms: 1,
        source: "test".into(),
        verification: Some(verification),
        ..Default::default()
    });
    let actions = ev.actions();
    assert_eq!(actions.len(), 3, "{actions:?}");
    let outcomes: Vec<(String, String)> = actions
        .iter()
        .map(|a| {
            let r = a.resolution.as_ref().expect("resolved");
            (r.kind.clone(), r.actor.clone())
        })
        .collect();
    assert_eq!(
        outcomes,
        vec![
            ("request.approved".to_string(), "alice".to_string()),
            ("request.denied".to_string(), "bob".to_string()),
            ("request.expired".to_string(), "timeout".to_string()),
        ]
    );
    assert_eq!(ev.self_approvals.len(), 1);
    assert_eq!(ev.self_approvals[0].actor, "alice");
    assert_eq!(ev.expiries.len(), 1);
    let changes: Vec<(&str, &str)> = ev
        .rule_changes
        .iter()
        .map(|r| (r.kind.as_str(), r.actor.as_str()))
        .collect();
    assert_eq!(
        changes,
        vec![
            ("rules.applied", "root-admin"),
            ("rules.applied", "root-admin"),
            ("rules.rollback", "root-admin")
        ]
    );
    assert_eq!(ev.logins.get("alice"), Some(&1));
    assert_eq!(ev.config_changes.len(), 1);
    for needle in [
        "ticket DB-7",
        "not during the freeze",
        "Self-approval attempts refused (1)",
        "Expiries (1)",
        "Rule changes (3)",
        "longer prod-db window",
        "The audit chain verified",
        "Agent journal gaps",
        "&lt;script&gt;x&lt;/script&gt;",
    ] {
        assert!(html.contains(needle), "report lacks {needle}");
    }
    assert!(!html.contains("<script>") && !html.contains('\x1b'));
    server.shutdown().await;
}

async fn retention_keeps_the_chain_verifiable(env: &Env) {
    let server = env.start().await;
    let _agent = scenario(&server).await;
    let c = server.central();
    let pool = tamper_pool(&server).await;
    // Everything up to the agent records (dated 2023) and before is past a cutoff in 2024:
    // the oldest contiguous run of old records is what goes.
    let rows = c
        .store()
        .query_audit(&Default::default(), 100_000)
        .await
        .expect("rows");
    let cut = rows[9].time_unix_ms + 1;
    let boundary = c.prune_audit(cut).await.expect("prune").expect("pruned");
    assert!(boundary >= 10, "{boundary}");
    let r = verify(&server).await;
    assert!(r.ok(), "{:?}", findings(&r));
    assert_eq!(r.anchored_at, boundary);
    assert_eq!(r.first_seq, boundary + 1);
    // Nothing else may be deleted, and pruning again finds nothing new.
    let e = sqlx::query(&format!("DELETE FROM audit WHERE seq = {}", boundary + 1))
        .execute(&pool)
        .await
        .expect_err("delete above the boundary");
    assert!(e.to_string().contains("append-only"), "{e}");
    assert_eq!(c.prune_audit(cut).await.expect("prune again"), None);
    let mut rv = reviewer(&server).await;
    let info = rv
        .get_audit_chain(req(GetAuditChainRequest {}, VIEWER))
        .await
        .expect("chain")
        .into_inner();
    assert_eq!(info.retention_boundary_seq, boundary);
    assert!(info
        .checkpoints
        .iter()
        .any(|c| c.kind == "retention" && c.seq == boundary));
    let lines = export(&server).await;
    assert_eq!(verify_export(&lines, c.public_key()), vec![]);
    // Deleting the first record after the boundary shows.
    unprotect(env, &pool).await;
    exec(
        &pool,
        &format!("DELETE FROM audit WHERE seq = {}", boundary + 1),
    )
    .await;
    let r = verify(&server).await;
    assert_eq!(
        r.findings,
        vec![Finding::Deleted {
            from: boundary + 1,
            to: boundary + 1
        }]
    );
    server.shutdown().await;
}

async fn a_changed_configuration_is_recorded(env: &Env) {
    let server = env.start().await;
    server.shutdown().await;
    let server = env.start().await;
    let kinds = |s: &Server| {
        let store = s.central().store().clone();
        async move {
            store
                .query_audit(&Default::default(), 1000)
                .await
                .expect("rows")
                .into_iter()
                .map(|r| r.kind)
                .collect::<Vec<_>>()
        }
    };
    // The test configuration has static reviewer tokens: each start announces them.
    assert_eq!(
        kinds(&server).await,
        vec![
            "config.changed",
            "central.started",
            "auth.static_tokens",
            "central.started",
            "auth.static_tokens"
        ]
    );
    server.shutdown().await;
    let mut changed = env.config.clone();
    changed.audit.checkpoint_every = Some(5);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let server = latch_central::start(&changed, Some(l))
        .await
        .expect("start with a changed configuration");
    let k = kinds(&server).await;
    assert_eq!(
        k[5..],
        ["config.changed", "central.started", "auth.static_tokens"]
    );
    assert!(verify(&server).await.ok());
    server.shutdown().await;
}

async fn audit_rows(server: &Server) -> (i64, usize) {
    let store = server.central().store();
    let head = store.audit_head().await.expect("head").seq;
    let checkpoints = latch_central::audit::list_checkpoints(store)
        .await
        .expect("checkpoints")
        .len();
    (head, checkpoints)
}

async fn logins(server: &Server, actor: &str) -> usize {
    server
        .central()
        .store()
        .query_audit(
            &latch_central::store::AuditFilter {
                kind: "reviewer.login".into(),
                actor: actor.into(),
                ..Default::default()
            },
            1000,
        )
        .await
        .expect("query")
        .len()
}

/// What a reader can make the trail keep is bounded: a login is recorded once per token, and
/// only admins sign checkpoints.
async fn readers_cannot_grow_the_trail(env: &Env) {
    let server = env.start().await;
    let mut rv = reviewer(&server).await;
    for _ in 0..20 {
        rv.who_am_i(req(WhoAmIRequest {}, VIEWER))
            .await
            .expect("whoami");
    }
    assert_eq!(logins(&server, "vic").await, 1, "one login per token");
    let before = audit_rows(&server).await;
    for _ in 0..20 {
        rv.who_am_i(req(WhoAmIRequest {}, VIEWER))
            .await
            .expect("whoami");
    }
    for token in [VIEWER, ALICE] {
        let e = rv
            .sign_audit_checkpoint(req(SignAuditCheckpointRequest {}, token))
            .await
            .expect_err("not an admin");
        assert_eq!(e.code(), Code::PermissionDenied, "{e}");
        assert!(e.message().contains("admin"), "{e}");
    }
    assert_eq!(audit_rows(&server).await, before, "nothing was added");
    // Another token is another login.
    rv.who_am_i(req(WhoAmIRequest {}, ALICE))
        .await
        .expect("whoami");
    assert_eq!(logins(&server, "alice").await, 1);
    let cp = rv
        .sign_audit_checkpoint(req(SignAuditCheckpointRequest {}, ADMIN))
        .await
        .expect("an admin signs")
        .into_inner();
    let (head, checkpoints) = audit_rows(&server).await;
    assert_eq!(cp.seq, head);
    assert_eq!(checkpoints, before.1 + 1);
    server.shutdown().await;

    // A restarted central (or another replica) knows the token's login is recorded.
    let server = env.start().await;
    let mut rv = reviewer(&server).await;
    rv.who_am_i(req(WhoAmIRequest {}, VIEWER))
        .await
        .expect("whoami");
    assert_eq!(logins(&server, "vic").await, 1);
    server.shutdown().await;
}

/// Sends the host's journal records `seqs` in one batch, as the agent's shipper does (ids
/// `<host>:<seq>`); returns central's acknowledgement, (stored, duplicates).
async fn ship(agent: &mut Agent, seqs: std::ops::RangeInclusive<u64>) -> (u32, u32) {
    let t = agent.token();
    let records = seqs
        .map(|n| AgentAuditRecord {
            record_id: format!("{}:{n}", agent.host),
            time_unix_ms: 1_700_000_000_000 + n as i64,
            kind: "exec".into(),
            rule_id: rule_id("shadow-curl"),
            rule_name: "shadow-curl".into(),
            workload: "ai-agents".into(),
            action: "audit".into(),
            details_json: format!(r#"{{"n":{n}}}"#),
            host_seq: n,
        })
        .collect();
    let ack = agent
        .client
        .upload_audit(req(
            AuditBatch {
                host_id: agent.host.clone(),
                records,
            },
            &t,
        ))
        .await
        .expect("upload")
        .into_inner();
    (ack.stored, ack.duplicates)
}

/// The host's journal records as central serves them, in the order it serves them: (chain seq,
/// host seq, record id).
async fn served_journal(server: &Server, host: &str) -> Vec<(i64, i64, String)> {
    reviewer(server)
        .await
        .query_audit(req(
            QueryAuditRequest {
                host_id: host.into(),
                limit: 10_000,
                ..Default::default()
            },
            ADMIN,
        ))
        .await
        .expect("query audit")
        .into_inner()
        .entries
        .into_iter()
        .filter(|e| !e.record_id.is_empty())
        .map(|e| (e.seq, e.host_seq, e.record_id))
        .collect()
}

/// What an agent sends: its journal oldest first, in batches; a batch whose acknowledgement was
/// lost again together with what followed; after a restart that lost its acknowledged position,
/// the whole journal again. Central serves each record once, in host order, in its chain.
async fn a_resent_journal_is_stored_once_in_host_order(env: &Env) {
    let server = env.start().await;
    apply_rules(&server).await;
    let mut agent = Agent::connect(&server, "h1", vec![], vec![]).await;
    let mut rv = reviewer(&server).await;
    let mut acks = vec![ship(&mut agent, 1..=3).await];
    // Central's own records land in the chain between the host's.
    agent.submit(agent.request("j.1", "prod-db")).await;
    acks.push(ship(&mut agent, 1..=6).await);
    rv.who_am_i(req(WhoAmIRequest {}, ALICE))
        .await
        .expect("login");
    acks.push(ship(&mut agent, 7..=9).await);
    acks.push(ship(&mut agent, 1..=12).await);

    let served = served_journal(&server, "h1").await;
    assert!(
        served.windows(2).all(|w| w[0].0 < w[1].0),
        "not served in chain order: {served:?}"
    );
    let want: Vec<(i64, String)> = (1..=12).map(|n| (n, format!("h1:{n}"))).collect();
    assert_eq!(
        served
            .iter()
            .map(|(_, host_seq, id)| (*host_seq, id.clone()))
            .collect::<Vec<_>>(),
        want,
        "the host's journal in central's chain: {served:?}"
    );
    assert!(
        served[3].0 > served[2].0 + 1,
        "central's own records between the host's: {served:?}"
    );
    assert_eq!(acks, [(3, 0), (3, 3), (3, 0), (3, 9)]);
    let r = verify(&server).await;
    assert!(r.ok(), "{:?}", findings(&r));
    assert!(r.host_gaps.is_empty(), "{:?}", r.host_gaps);
    server.shutdown().await;
}

suite!(
    a_resent_journal_is_stored_once_in_host_order,
    readers_cannot_grow_the_trail,
    tampering_is_named,
    exports_round_trip_and_tampering_is_named,
    evidence_report_lists_what_happened,
    retention_keeps_the_chain_verifiable,
    a_changed_configuration_is_recorded,
);

/// Replicas appending at once on one PostgreSQL: the chain stays one chain, seq order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_append_in_one_chain() {
    let Some(env) = Env::postgres().await else {
        return;
    };
    let a = env.start().await;
    let b = env.start().await;
    apply_rules(&a).await;
    let _agent = Agent::connect(&a, "h1", vec![], vec![]).await;
    let mut calls = Vec::new();
    for i in 0..40u64 {
        let server = if i % 2 == 0 { &a } else { &b };
        let mut client = agent_client(server).await;
        calls.push(tokio::spawn(async move {
            client
                .upload_audit(req(
                    AuditBatch {
                        host_id: "h1".into(),
                        records: (0..5)
                            .map(|k| AgentAuditRecord {
                                record_id: format!("c{i}.{k}"),
                                time_unix_ms: 1_700_000_000_000,
                                kind: "exec".into(),
                                action: "audit".into(),
                                host_seq: i * 5 + k + 1,
                                ..Default::default()
                            })
                            .collect(),
                    },
                    &host_token("h1"),
                ))
                .await
                .expect("upload")
        }));
    }
    for c in calls {
        assert_eq!(c.await.expect("join").into_inner().stored, 5);
    }
    // One replica signs; the other verifies the same chain.
    b.central()
        .sign_checkpoint(chain::kind::MANUAL)
        .await
        .expect("sign")
        .expect("not empty");
    let r = verify(&a).await;
    assert!(r.ok(), "{:?}", findings(&r));
    assert!(r.host_gaps.is_empty(), "{:?}", r.host_gaps);
    assert_eq!(r.records as i64, r.last_seq);
    b.shutdown().await;
    a.shutdown().await;
}

/// A database written before the chain existed (schema 1, sequence gaps) is chained on upgrade:
/// renumbered densely, hashed, and verifiable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_from_before_the_chain_are_chained() {
    use sqlx::Connection;
    let env = Env::sqlite().await;
    let url = env.config.database.clone();
    let path = url.trim_start_matches("sqlite://");
    std::fs::create_dir_all(std::path::Path::new(path).parent().expect("dir")).expect("mkdir");
    let mut conn = sqlx::SqliteConnection::connect(&format!("{url}?mode=rwc"))
        .await
        .expect("open");
    sqlx::query("CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, applied_at_ms BIGINT NOT NULL)")
        .execute(&mut conn)
        .await
        .expect("schema_migrations");
    for s in latch_central::store::MIGRATIONS[0].1 {
        sqlx::query(s).execute(&mut conn).await.expect(s);
    }
    sqlx::query("INSERT INTO schema_migrations VALUES (1, 0)")
        .execute(&mut conn)
        .await
        .expect("version");
    for seq in [1, 3, 7] {
        sqlx::query(
            "INSERT INTO audit (seq, time_ms, kind, actor, host_id, request_id, grant_id, rule_name, workload,
                action, record_id, payload) VALUES ($1, 1000, 'rules.applied', 'old-admin', '', '', '', '', '', '', NULL, '{}')",
        )
        .bind(seq)
        .execute(&mut conn)
        .await
        .expect("old record");
    }
    drop(conn);
    let server = env.start().await;
    let r = verify(&server).await;
    assert!(r.ok(), "{:?}", findings(&r));
    // Three old records, then config.changed, central.started and auth.static_tokens.
    assert_eq!((r.first_seq, r.last_seq), (1, 6));
    let rows = server
        .central()
        .store()
        .query_audit(&Default::default(), 100)
        .await
        .expect("rows");
    let seqs: Vec<(i64, &str)> = rows.iter().map(|r| (r.seq, r.actor.as_str())).collect();
    assert_eq!(
        &seqs[..3],
        &[(1, "old-admin"), (2, "old-admin"), (3, "old-admin")]
    );
    server.shutdown().await;
}
