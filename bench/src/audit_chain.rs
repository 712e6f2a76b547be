//! Audit verification at scale: a central database holding millions of chained, checkpointed
//! audit records, verified by the real `latch-central audit verify` as an operator runs it.
//!
//! The records are generated offline: central's own schema (created by `Store::open`), the
//! chain hashes and checkpoint signatures computed with central's `chain` module exactly as
//! central appends them, rows bulk-inserted with multi-row statements. Only the verification is
//! timed. It owns its scratch directory and removes it.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use latch_central::chain::{self, Checkpoint, Record};
use serde::Serialize;
use sqlx::{sqlite::SqliteConnectOptions, ConnectOptions, Connection, QueryBuilder};

use crate::central_process::sibling_binary;

/// Records between signed checkpoints (central's default `audit.checkpoint_every`).
const CHECKPOINT_EVERY: u64 = 10_000;
/// Rows per INSERT statement (14 parameters each, under SQLite's 32,766).
const ROWS_PER_INSERT: usize = 1_000;
/// Rows per transaction while generating.
const ROWS_PER_COMMIT: u64 = 200_000;

/// One verification.
#[derive(Serialize)]
pub struct AuditVerify {
    /// Records in the chain.
    pub records: u64,
    /// Signed checkpoints stored with them.
    pub checkpoints: u64,
    /// Size of the database file, in MiB.
    pub database_mib: f64,
    /// Time to generate and store them (not part of the figure), in seconds.
    pub generate_s: f64,
    /// `latch-central audit verify`, start to exit, in seconds.
    pub verify_s: f64,
    /// Records verified per second.
    pub records_per_s: f64,
    /// Whether it reported the chain intact (it must).
    pub intact: bool,
}

/// Generates `n` records and verifies them.
pub fn run(n: u64) -> Result<AuditVerify> {
    let dir = std::env::temp_dir().join(format!("latch-bench-audit-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = generate_and_verify(&dir, n);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn generate_and_verify(dir: &Path, n: u64) -> Result<AuditVerify> {
    let db = dir.join("central.db");
    let key_path = dir.join("audit-signing-key.pem");
    let url = format!("sqlite://{}", db.display());
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let checkpoints = rt.block_on(async {
        // Central's schema, migrated by central's own code.
        let store = latch_central::store::Store::open(&url, 1).await?;
        store.close().await;
        let key = chain::load_or_create_signing_key(&key_path)?;
        fill(&db, &key, n).await
    })?;
    let generate_s = started.elapsed().as_secs_f64();
    let database_mib = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0) as f64 / 1048576.0;
    eprintln!(
        "  audit: {n} records, {checkpoints} checkpoints generated in {generate_s:.1} s ({database_mib:.0} MiB); verifying"
    );

    let config = dir.join("central.toml");
    std::fs::write(
        &config,
        format!(
            "database = \"{url}\"\n[audit]\nsigning_key = \"{}\"\n",
            key_path.display()
        ),
    )?;
    // Start from a cold page cache would measure the disk, not Latch: drop nothing, but read
    // the file once so both sizes are measured warm alike.
    warm(&db)?;
    let started = Instant::now();
    let out = Command::new(sibling_binary("latch-central")?)
        .args(["audit", "verify", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .output()
        .context("running latch-central audit verify")?;
    let verify_s = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "latch-central audit verify failed ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let intact = stdout.contains(": intact");
    if !stdout.contains(&format!("{n} records")) {
        bail!("latch-central audit verify did not read {n} records: {stdout}");
    }
    Ok(AuditVerify {
        records: n,
        checkpoints,
        database_mib,
        generate_s,
        verify_s,
        records_per_s: n as f64 / verify_s,
        intact,
    })
}

fn warm(path: &Path) -> Result<()> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    while f.read(&mut buf)? > 0 {}
    Ok(())
}

/// Hosts whose agents' records fill the chain.
const HOSTS: u64 = 64;

/// The record at `seq`: mostly agents' journal records (each host's own dense `host_seq`), with
/// central's request life cycle records in between, as a busy fleet writes them.
fn record(seq: i64, host_seqs: &mut [i64]) -> Record {
    let time_unix_ms = 1_700_000_000_000 + seq * 3;
    let h = (seq as u64 * 2_654_435_761) % HOSTS;
    let host_id = format!("web-{h:02}");
    if seq % 10 == 0 {
        let request = format!("{:032x}", seq as u64 * 0x9e37_79b9);
        return Record {
            seq,
            time_unix_ms,
            kind: if seq % 20 == 0 {
                "request.approved"
            } else {
                "request.created"
            }
            .into(),
            actor: if seq % 20 == 0 {
                "alice".into()
            } else {
                format!("host:{host_id}")
            },
            host_id,
            request_id: request,
            rule_name: "prod-db-needs-a-human".into(),
            workload: "ai-agents".into(),
            action: if seq % 20 == 0 { "allow" } else { "" }.into(),
            payload_json: r#"{"op":"connect","destination":"10.20.3.4:5432","reason":"migration window","expires_at_unix_ms":1700000600000}"#.into(),
            ..Default::default()
        };
    }
    let hs = &mut host_seqs[h as usize];
    *hs += 1;
    Record {
        seq,
        time_unix_ms,
        kind: "agent.exec".into(),
        actor: format!("host:{host_id}"),
        record_id: format!("{host_id}-{hs}"),
        host_seq: *hs,
        host_id,
        rule_name: "network-tools".into(),
        workload: "ai-agents".into(),
        action: "audit".into(),
        payload_json: r#"{"rule_id":7,"details":{"exe":"/usr/bin/curl","argv":["curl","-s","https://example.com/api/v1/items?page=2"],"pid":4242,"uid":1000}}"#.into(),
        ..Default::default()
    }
}

/// Appends `n` chained records with a periodic checkpoint every [`CHECKPOINT_EVERY`]; returns
/// the number of checkpoints.
async fn fill(db: &Path, key: &ed25519_dalek::SigningKey, n: u64) -> Result<u64> {
    let mut conn = SqliteConnectOptions::new()
        .filename(db)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Off)
        .connect()
        .await
        .with_context(|| format!("opening {}", db.display()))?;
    let mut prev = chain::GENESIS;
    let mut host_seqs = vec![0i64; HOSTS as usize];
    let mut checkpoints = Vec::new();
    let mut seq = 0i64;
    let mut batch: Vec<(Record, Option<String>)> = Vec::with_capacity(ROWS_PER_INSERT);
    let mut tx = conn.begin().await?;
    let mut last_progress = Instant::now();
    while (seq as u64) < n {
        seq += 1;
        let mut r = record(seq, &mut host_seqs);
        r.hash = r.link(&prev);
        prev = r.hash;
        if (seq as u64).is_multiple_of(CHECKPOINT_EVERY) || seq as u64 == n {
            checkpoints.push(Checkpoint::sign(
                key,
                seq,
                prev,
                r.time_unix_ms + 1,
                chain::kind::PERIODIC,
            ));
        }
        let record_id = (!r.record_id.is_empty()).then(|| r.record_id.clone());
        batch.push((r, record_id));
        if batch.len() == ROWS_PER_INSERT || seq as u64 == n {
            insert(&mut tx, &batch).await?;
            batch.clear();
        }
        if (seq as u64).is_multiple_of(ROWS_PER_COMMIT) {
            tx.commit().await?;
            tx = conn.begin().await?;
            if last_progress.elapsed() > Duration::from_secs(10) {
                eprintln!("    {seq} records written");
                last_progress = Instant::now();
            }
        }
    }
    let mut qb = QueryBuilder::new(
        "INSERT INTO audit_checkpoints (seq, kind, hash, time_ms, key_id, signature, replica) ",
    );
    for chunk in checkpoints.chunks(ROWS_PER_INSERT) {
        qb.reset();
        qb.push_values(chunk, |mut b, cp| {
            b.push_bind(cp.seq)
                .push_bind(cp.kind.clone())
                .push_bind(hex::encode(cp.hash))
                .push_bind(cp.time_unix_ms)
                .push_bind(cp.key_id.clone())
                .push_bind(cp.signature.clone())
                .push_bind("bench");
        });
        qb.build().execute(&mut *tx).await?;
    }
    sqlx::query("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1")
        .bind(seq)
        .bind(hex::encode(prev))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    conn.close().await?;
    Ok(checkpoints.len() as u64)
}

async fn insert(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    rows: &[(Record, Option<String>)],
) -> Result<()> {
    let mut qb = QueryBuilder::new(
        "INSERT INTO audit (seq, time_ms, kind, actor, host_id, host_seq, request_id, grant_id, \
         rule_name, workload, action, record_id, payload, hash) ",
    );
    qb.push_values(rows, |mut b, (r, record_id)| {
        b.push_bind(r.seq)
            .push_bind(r.time_unix_ms)
            .push_bind(r.kind.as_str())
            .push_bind(r.actor.as_str())
            .push_bind(r.host_id.as_str())
            .push_bind(r.host_seq)
            .push_bind(r.request_id.as_str())
            .push_bind(r.grant_id.as_str())
            .push_bind(r.rule_name.as_str())
            .push_bind(r.workload.as_str())
            .push_bind(r.action.as_str())
            .push_bind(record_id.as_deref())
            .push_bind(r.payload_json.as_str())
            .push_bind(hex::encode(r.hash));
    });
    qb.build().execute(&mut **tx).await?;
    Ok(())
}
