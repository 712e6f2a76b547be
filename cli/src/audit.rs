//! `latchctl audit ...`: tail, export (JSON Lines, CSV), verify (online, or offline from an
//! export and the public key), the evidence report, checkpoints to keep elsewhere, and a
//! verification benchmark.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufReader, BufWriter, Write},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use clap::{Args, Subcommand, ValueEnum};
use ed25519_dalek::VerifyingKey;
use latch_central::{
    audit::{checkpoint_of_proto, record_of_entry},
    chain::{
        self, read_jsonl, write_jsonl, Checkpoint, CsvWriter, ExportHeader, ExportLine, Record,
        Report, Verifier, VerifyOptions,
    },
    clock::now_ms,
    report::{Evidence, ReportMeta},
    text::term_safe,
};
use latch_proto::v1::{
    audit_stream_item::Item, GetAuditChainRequest, QueryAuditRequest, SignAuditCheckpointRequest,
};
use serde_json::json;

use crate::{
    client::{io, CliError, Client},
    connect,
    out::{time, Out},
    Ctx,
};

#[derive(Subcommand)]
pub enum AuditCommand {
    /// The newest records.
    Tail {
        /// How many.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: u32,
        /// Keep printing new records.
        #[arg(short, long)]
        follow: bool,
    },
    /// Exports records (streamed); without filters, the complete chain with its checkpoints,
    /// sealed, for offline verification.
    Export {
        /// jsonl (verifiable) or csv.
        #[arg(long, value_enum, default_value_t = Format::Jsonl)]
        format: Format,
        /// Output file (default: standard output).
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        filter: Filter,
    },
    /// Verifies the audit chain: of the running central, or of an export file offline.
    Verify {
        /// A JSON Lines export to verify offline (needs --public-key).
        #[arg(long)]
        export: Option<PathBuf>,
        /// The trusted public key (PEM). Online, the key central presents is used without it.
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// Checkpoints kept elsewhere (`latchctl audit checkpoint` output), repeatable.
        #[arg(long)]
        checkpoint: Vec<PathBuf>,
    },
    /// Writes the evidence report (self-contained HTML) for a period.
    Report {
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
        /// Period start: RFC 3339 time, date, or a duration ago ("30d").
        #[arg(long, value_parser = parse_time)]
        since: Option<i64>,
        /// Period end (exclusive).
        #[arg(long, value_parser = parse_time)]
        until: Option<i64>,
        /// Also verify the whole chain and include the result.
        #[arg(long)]
        verify: bool,
    },
    /// Signs a checkpoint at the current head and prints it (one JSON line) to keep elsewhere
    /// (admins only).
    Checkpoint,
    /// Measures verification speed on generated records (no server needed).
    Bench {
        /// Records to generate and verify.
        #[arg(long, default_value_t = 1_000_000)]
        records: u64,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Jsonl,
    Csv,
}

/// Which records.
#[derive(Args, Clone, Default)]
pub struct Filter {
    /// From (RFC 3339 time, date, or a duration ago such as "7d").
    #[arg(long, value_parser = parse_time)]
    since: Option<i64>,
    /// Until (exclusive).
    #[arg(long, value_parser = parse_time)]
    until: Option<i64>,
    /// Host id.
    #[arg(long)]
    host: Option<String>,
    /// Workload.
    #[arg(long)]
    workload: Option<String>,
    /// Rule name.
    #[arg(long)]
    rule: Option<String>,
    /// Reviewer (or any actor: host:<id>, timeout).
    #[arg(long)]
    reviewer: Option<String>,
    /// Outcome or action: allow, deny, refused, audit.
    #[arg(long)]
    outcome: Option<String>,
    /// Kind, or a prefix ending with '.' ("request.").
    #[arg(long)]
    kind: Option<String>,
}

impl Filter {
    fn query(&self) -> QueryAuditRequest {
        QueryAuditRequest {
            since_unix_ms: self.since.unwrap_or(0),
            until_unix_ms: self.until.unwrap_or(0),
            host_id: self.host.clone().unwrap_or_default(),
            workload: self.workload.clone().unwrap_or_default(),
            rule_name: self.rule.clone().unwrap_or_default(),
            actor: self.reviewer.clone().unwrap_or_default(),
            outcome: self.outcome.clone().unwrap_or_default(),
            kind: self.kind.clone().unwrap_or_default(),
            ..Default::default()
        }
    }

    fn describe(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                m.insert(k.to_string(), v);
            }
        };
        put("since", self.since.map(time));
        put("until", self.until.map(time));
        put("host", self.host.clone());
        put("workload", self.workload.clone());
        put("rule", self.rule.clone());
        put("reviewer", self.reviewer.clone());
        put("outcome", self.outcome.clone());
        put("kind", self.kind.clone());
        m
    }
}

/// RFC 3339 time, a date (UTC midnight), or a duration before now.
pub fn parse_time(s: &str) -> Result<i64, String> {
    let ms = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .map_err(|_| format!("'{s}' is before 1970"))
    };
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return ms(t);
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(&format!("{s}T00:00:00")) {
        return ms(t);
    }
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(now_ms() - d.as_millis() as i64);
    }
    Err(format!(
        "'{s}' is not a time (2024-05-01T12:00:00Z), a date (2024-05-01) or a duration ago (7d)"
    ))
}

pub async fn run(ctx: &Ctx, out: Out, cmd: AuditCommand) -> Result<(), CliError> {
    match cmd {
        AuditCommand::Tail { lines, follow } => tail(ctx, out, lines, follow).await,
        AuditCommand::Export {
            format,
            output,
            filter,
        } => export(ctx, format, output, filter).await,
        AuditCommand::Verify {
            export: Some(file),
            public_key,
            checkpoint,
        } => {
            let key = public_key.ok_or_else(|| {
                CliError::Usage(
                    "offline verification needs --public-key FILE (central's key, obtained separately)"
                        .into(),
                )
            })?;
            let key = chain::read_public_key(&key)?;
            let started = Instant::now();
            let report = verify_file(&file, key, &checkpoint)?;
            print_report(out, &report, started.elapsed(), &file.display().to_string())
        }
        AuditCommand::Verify {
            export: None,
            public_key,
            checkpoint,
        } => {
            let mut c = connect(ctx).await?;
            let started = Instant::now();
            let report = verify_online(&mut c, public_key.as_deref(), &checkpoint, true).await?;
            print_report(out, &report, started.elapsed(), &c.server)
        }
        AuditCommand::Report {
            output,
            since,
            until,
            verify,
        } => {
            let mut c = connect(ctx).await?;
            let verification = if verify {
                Some(verify_online(&mut c, None, &[], false).await?)
            } else {
                None
            };
            let q = QueryAuditRequest {
                since_unix_ms: since.unwrap_or(0),
                until_unix_ms: until.unwrap_or(0),
                ..Default::default()
            };
            let mut ev = Evidence::default();
            let mut s = c.inner.stream_audit(c.req(q)).await?.into_inner();
            while let Some(item) = s.message().await? {
                if let Some(Item::Entry(e)) = item.item {
                    ev.add(&record_of_entry(e).map_err(CliError::Usage)?);
                }
            }
            let html = ev.render(&ReportMeta {
                since_ms: since.unwrap_or(0),
                until_ms: until.unwrap_or(0),
                generated_ms: now_ms(),
                source: c.server.clone(),
                verification,
            });
            std::fs::write(&output, html).map_err(io(&output))?;
            if out.json {
                out.json_line(&json!({"output": output, "records": ev.records,
                    "actions": ev.actions().len()}));
            } else {
                println!(
                    "{}: {} records, {} approval-required actions",
                    output.display(),
                    ev.records,
                    ev.actions().len()
                );
            }
            Ok(())
        }
        AuditCommand::Checkpoint => {
            let mut c = connect(ctx).await?;
            let cp = c
                .inner
                .sign_audit_checkpoint(c.req(SignAuditCheckpointRequest {}))
                .await?
                .into_inner();
            let cp = checkpoint_of_proto(cp).map_err(CliError::Usage)?;
            let mut line = Vec::new();
            write_jsonl(&mut line, &ExportLine::Checkpoint(cp))
                .map_err(|e| CliError::Usage(e.to_string()))?;
            print!("{}", String::from_utf8_lossy(&line));
            Ok(())
        }
        AuditCommand::Bench { records } => {
            bench(out, records);
            Ok(())
        }
    }
}

async fn tail(ctx: &Ctx, out: Out, lines: u32, follow: bool) -> Result<(), CliError> {
    let mut c = connect(ctx).await?;
    let head = c
        .inner
        .get_audit_chain(c.req(GetAuditChainRequest {}))
        .await?
        .into_inner()
        .head_seq;
    let mut after = (head - lines as i64).max(0);
    loop {
        let entries = c
            .inner
            .query_audit(c.req(QueryAuditRequest {
                after_seq: after,
                limit: if follow { 1000 } else { lines.max(1) },
                ..Default::default()
            }))
            .await?
            .into_inner()
            .entries;
        if let Some(l) = entries.last() {
            after = l.seq;
        }
        if out.json {
            for e in &entries {
                out.json_line(
                    &json!({"seq": e.seq, "time": time(e.time_unix_ms), "kind": e.kind,
                    "actor": e.actor, "host_id": e.host_id, "host_seq": e.host_seq,
                    "request_id": e.request_id, "grant_id": e.grant_id, "rule": e.rule_name,
                    "workload": e.workload, "action": e.action, "payload": e.payload_json,
                    "hash": e.hash}),
                );
            }
        } else if !entries.is_empty() || !follow {
            let rows: Vec<Vec<String>> = entries
                .iter()
                .map(|e| {
                    vec![
                        e.seq.to_string(),
                        time(e.time_unix_ms),
                        e.kind.clone(),
                        e.actor.clone(),
                        e.host_id.clone(),
                        e.rule_name.clone(),
                        e.action.clone(),
                        e.request_id.clone(),
                    ]
                })
                .collect();
            out.table(
                &[
                    "SEQ", "TIME", "KIND", "ACTOR", "HOST", "RULE", "ACTION", "REQUEST",
                ],
                &rows,
                &[],
            );
        }
        if !follow {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn export(
    ctx: &Ctx,
    format: Format,
    output: Option<PathBuf>,
    filter: Filter,
) -> Result<(), CliError> {
    let mut c = connect(ctx).await?;
    let mut s = c
        .inner
        .stream_audit(c.req(filter.query()))
        .await?
        .into_inner();
    let (sink, name): (Box<dyn Write>, String) = match &output {
        Some(p) => (
            Box::new(File::create(p).map_err(io(p))?),
            p.display().to_string(),
        ),
        None => (Box::new(std::io::stdout().lock()), "standard output".into()),
    };
    let werr = |e: std::io::Error| CliError::Io {
        path: name.clone(),
        source: e,
    };
    let w = BufWriter::with_capacity(1 << 16, sink);
    enum Sink<W: Write> {
        Jsonl(W),
        Csv(Box<CsvWriter<W>>),
    }
    let mut sink = match format {
        Format::Csv => Sink::Csv(Box::new(CsvWriter::new(w))),
        Format::Jsonl => Sink::Jsonl(w),
    };
    let mut n = 0u64;
    while let Some(item) = s.message().await? {
        let line = match item.item {
            Some(Item::Header(h)) => ExportLine::Header(ExportHeader {
                format: chain::EXPORT_FORMAT.into(),
                exported_at_unix_ms: h.time_unix_ms,
                complete: h.complete,
                filters: filter.describe(),
                key_id: h.key_id,
            }),
            Some(Item::Checkpoint(cp)) => {
                ExportLine::Checkpoint(checkpoint_of_proto(cp).map_err(CliError::Usage)?)
            }
            Some(Item::Entry(e)) => {
                n += 1;
                ExportLine::Record(record_of_entry(e).map_err(CliError::Usage)?)
            }
            None => continue,
        };
        match (&mut sink, line) {
            (Sink::Csv(cw), ExportLine::Record(r)) => cw
                .write(&r)
                .map_err(|e| CliError::Usage(format!("{name}: {e}")))?,
            (Sink::Csv(_), _) => {}
            (Sink::Jsonl(w), l) => write_jsonl(w, &l).map_err(werr)?,
        }
    }
    match sink {
        Sink::Csv(cw) => cw.finish().map_err(werr)?,
        Sink::Jsonl(mut w) => w.flush().map_err(werr)?,
    }
    eprintln!("{n} records exported to {name}");
    Ok(())
}

fn read_checkpoints(files: &[PathBuf]) -> Result<Vec<Checkpoint>, CliError> {
    let mut out = Vec::new();
    for f in files {
        let file = File::open(f).map_err(io(f))?;
        for l in read_jsonl(&f.display().to_string(), BufReader::new(file)) {
            match l? {
                ExportLine::Checkpoint(c) => out.push(c),
                _ => {
                    return Err(CliError::Usage(format!(
                        "{}: holds something other than checkpoints",
                        f.display()
                    )))
                }
            }
        }
    }
    Ok(out)
}

/// Verifies an export file against `key`.
pub fn verify_file(file: &Path, key: VerifyingKey, extra: &[PathBuf]) -> Result<Report, CliError> {
    let name = file.display().to_string();
    let reader = BufReader::with_capacity(1 << 20, File::open(file).map_err(io(file))?);
    let mut v = Verifier::new(
        vec![key],
        VerifyOptions {
            require_seal: true,
            expected_head: None,
        },
    );
    for cp in read_checkpoints(extra)? {
        v.add_checkpoint(cp);
    }
    let mut lines = read_jsonl(&name, reader);
    match lines.next().transpose()? {
        Some(ExportLine::Header(h)) => {
            if h.format != chain::EXPORT_FORMAT {
                return Err(CliError::Usage(format!(
                    "{name}: format '{}' is not {}",
                    term_safe(&h.format),
                    chain::EXPORT_FORMAT
                )));
            }
            if !h.complete {
                return Err(CliError::Usage(format!(
                    "{name}: a filtered export ({}) cannot be verified as a chain; export without filters",
                    term_safe(&format!("{:?}", h.filters))
                )));
            }
        }
        _ => {
            return Err(CliError::Usage(format!(
                "{name}: the first line is not a {} header",
                chain::EXPORT_FORMAT
            )))
        }
    }
    for l in lines {
        match l? {
            ExportLine::Header(_) => {
                return Err(CliError::Usage(format!("{name}: a second header line")))
            }
            ExportLine::Checkpoint(c) => v.add_checkpoint(c),
            ExportLine::Record(r) => v.push(r),
        }
    }
    Ok(v.finish())
}

/// Streams the running central's complete chain through the verifier.
pub async fn verify_online(
    c: &mut Client,
    public_key: Option<&Path>,
    extra: &[PathBuf],
    say_key: bool,
) -> Result<Report, CliError> {
    let info = c
        .inner
        .get_audit_chain(c.req(GetAuditChainRequest {}))
        .await?
        .into_inner();
    let key = match public_key {
        Some(p) => chain::read_public_key(p)?,
        None => {
            let k = chain::parse_public_key("central's public key", &info.public_key_pem)?;
            if say_key {
                eprintln!(
                    "note: trusting the key central presents (key id {}); pin it with --public-key FILE",
                    chain::key_id(&k)
                );
            }
            k
        }
    };
    let mut s = c
        .inner
        .stream_audit(c.req(QueryAuditRequest::default()))
        .await?
        .into_inner();
    let mut v: Option<Verifier> = None;
    let mut extra_cps = read_checkpoints(extra)?;
    while let Some(item) = s.message().await? {
        match item.item {
            Some(Item::Header(h)) => {
                let mut ver = Verifier::new(
                    vec![key],
                    VerifyOptions {
                        require_seal: true,
                        expected_head: Some(h.head_seq),
                    },
                );
                for cp in extra_cps.drain(..) {
                    ver.add_checkpoint(cp);
                }
                v = Some(ver);
            }
            Some(Item::Checkpoint(cp)) => {
                if let Some(v) = v.as_mut() {
                    v.add_checkpoint(checkpoint_of_proto(cp).map_err(CliError::Usage)?);
                }
            }
            Some(Item::Entry(e)) => {
                if let Some(v) = v.as_mut() {
                    v.push(record_of_entry(e).map_err(CliError::Usage)?);
                }
            }
            None => {}
        }
    }
    v.map(Verifier::finish).ok_or_else(|| {
        CliError::Status(tonic::Status::internal(
            "central's audit stream had no header",
        ))
    })
}

fn print_report(out: Out, r: &Report, took: Duration, source: &str) -> Result<(), CliError> {
    let rate = r.records as f64 / took.as_secs_f64().max(1e-9);
    if out.json {
        let mut v = serde_json::to_value(r).unwrap_or_default();
        v["ok"] = json!(r.ok());
        v["messages"] = json!(r.findings.iter().map(|f| f.to_string()).collect::<Vec<_>>());
        v["records_per_second"] = json!(rate.round());
        out.json_pretty(&v);
    } else {
        for f in &r.findings {
            println!(
                "{} {}",
                out.paint("31;1", "TAMPERED"),
                term_safe(&f.to_string())
            );
        }
        for g in &r.host_gaps {
            println!("{} {g}", out.paint("33", "GAP"));
        }
        println!(
            "{source}: {} records (seq {}..{}), {} signed checkpoints checked{}, head {}: {}",
            r.records,
            r.first_seq,
            r.last_seq,
            r.checkpoints_checked,
            if r.anchored_at > 0 {
                format!(
                    ", anchored at the retention checkpoint of seq {}",
                    r.anchored_at
                )
            } else {
                String::new()
            },
            r.head_hash,
            if r.ok() {
                out.paint("32", "intact")
            } else {
                out.paint("31;1", "NOT INTACT")
            }
        );
        eprintln!(
            "verified in {:.2} s ({rate:.0} records/s)",
            took.as_secs_f64()
        );
    }
    if r.ok() {
        Ok(())
    } else {
        Err(CliError::Tampered(r.findings.len()))
    }
}

fn bench(out: Out, n: u64) {
    let started = Instant::now();
    let mut prev = chain::GENESIS;
    let mut records = Vec::with_capacity(n as usize);
    for seq in 1..=n as i64 {
        let mut r = Record {
            seq,
            time_unix_ms: 1_700_000_000_000 + seq,
            kind: "agent.exec".into(),
            actor: "host:web-1".into(),
            host_id: "web-1".into(),
            host_seq: seq,
            rule_name: "network-tools".into(),
            workload: "ai-agents".into(),
            action: "audit".into(),
            record_id: format!("j{seq}"),
            payload_json: r#"{"rule_id":7,"details":{"exe":"/usr/bin/curl","argv":["curl","-s","https://example.com/api/v1/items?page=2"],"pid":4242,"uid":1000}}"#.into(),
            ..Default::default()
        };
        r.hash = r.link(&prev);
        prev = r.hash;
        records.push(r);
    }
    let built = started.elapsed();
    let started = Instant::now();
    let mut v = Verifier::new(Vec::new(), VerifyOptions::default());
    for r in records {
        v.push(r);
    }
    let report = v.finish();
    let took = started.elapsed();
    let rate = n as f64 / took.as_secs_f64().max(1e-9);
    if out.json {
        out.json_line(
            &json!({"records": n, "ok": report.ok(), "seconds": took.as_secs_f64(),
            "records_per_second": rate.round()}),
        );
    } else {
        println!(
            "generated {n} chained records in {:.2} s; verified in {:.2} s: {rate:.0} records/s ({}; 10 million records: about {:.0} s of hashing)",
            built.as_secs_f64(),
            took.as_secs_f64(),
            if report.ok() { "intact" } else { "NOT INTACT" },
            1e7 / rate
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn times() {
        assert_eq!(super::parse_time("1970-01-02"), Ok(86_400_000));
        assert_eq!(super::parse_time("1970-01-01T00:00:01Z"), Ok(1000));
        let ago = super::parse_time("1h").expect("duration");
        assert!(ago < latch_central::clock::now_ms());
        assert!(super::parse_time("yesterday-ish").is_err());
    }
}
