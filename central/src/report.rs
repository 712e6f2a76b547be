//! The evidence report: one self-contained HTML page (no scripts, no external resources) that
//! shows auditors, for a period, every approval-required action with its decision and reviewer,
//! refused self-approvals and other refused decisions, expiries, grants and revocations, rule
//! changes and who made them, configuration changes, reviewer logins and gaps in agents'
//! journals, together with the chain's verification when it was run.
//!
//! Pure: it reads [`Record`]s (from a running central or an export) and writes HTML. Every text
//! that comes from the log is HTML-escaped.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write,
};

use serde_json::Value;

use crate::{
    chain::{Record, Report},
    clock::rfc3339,
    text::html_escape as esc,
};

/// One approval-required action.
#[derive(Clone, Debug, Default)]
pub struct Action {
    /// Central's request id.
    pub request_id: String,
    /// `request.created`, when in the period.
    pub created: Option<Record>,
    /// The resolution (`request.approved`, `.denied`, `.expired`, `.cancelled`).
    pub resolution: Option<Record>,
    /// Partial approvals.
    pub votes: Vec<Record>,
    /// Refused decisions on it.
    pub refusals: Vec<Record>,
    first_seq: i64,
}

/// What a period's records say, gathered one record at a time.
#[derive(Default)]
pub struct Evidence {
    actions: HashMap<String, Action>,
    /// `request.self_approval_refused`.
    pub self_approvals: Vec<Record>,
    /// `request.decision_refused`.
    pub refused: Vec<Record>,
    /// `request.expired`.
    pub expiries: Vec<Record>,
    /// `rules.applied`, `rules.rollback`.
    pub rule_changes: Vec<Record>,
    /// `grant.created`, `grant.revoked`.
    pub grants: Vec<Record>,
    /// `config.changed`.
    pub config_changes: Vec<Record>,
    /// Logins per reviewer.
    pub logins: BTreeMap<String, u64>,
    host_seqs: BTreeMap<String, Vec<i64>>,
    /// Records read.
    pub records: u64,
    /// First and last seq read.
    pub seq_range: Option<(i64, i64)>,
}

fn payload(r: &Record) -> Value {
    serde_json::from_str(&r.payload_json).unwrap_or(Value::Null)
}

fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

impl Evidence {
    /// Takes one record into account.
    pub fn add(&mut self, r: &Record) {
        self.records += 1;
        self.seq_range = Some(match self.seq_range {
            None => (r.seq, r.seq),
            Some((a, b)) => (a.min(r.seq), b.max(r.seq)),
        });
        if r.host_seq > 0 {
            self.host_seqs
                .entry(r.host_id.clone())
                .or_default()
                .push(r.host_seq);
        }
        match r.kind.as_str() {
            "request.created" => self.action(r).created = Some(r.clone()),
            "request.approved" | "request.denied" | "request.expired" | "request.cancelled" => {
                self.action(r).resolution = Some(r.clone());
                if r.kind == "request.expired" {
                    self.expiries.push(r.clone());
                }
            }
            "request.vote" => self.action(r).votes.push(r.clone()),
            "request.self_approval_refused" | "request.decision_refused" => {
                if !r.request_id.is_empty() {
                    self.action(r).refusals.push(r.clone());
                }
                if r.kind == "request.self_approval_refused" {
                    self.self_approvals.push(r.clone());
                } else {
                    self.refused.push(r.clone());
                }
            }
            "rules.applied" | "rules.rollback" => self.rule_changes.push(r.clone()),
            "grant.created" | "grant.revoked" => self.grants.push(r.clone()),
            "config.changed" => self.config_changes.push(r.clone()),
            "reviewer.login" => *self.logins.entry(r.actor.clone()).or_default() += 1,
            _ => {}
        }
    }

    fn action(&mut self, r: &Record) -> &mut Action {
        let a = self
            .actions
            .entry(r.request_id.clone())
            .or_insert_with(|| Action {
                request_id: r.request_id.clone(),
                first_seq: r.seq,
                ..Default::default()
            });
        a.first_seq = a.first_seq.min(r.seq);
        a
    }

    /// The approval-required actions, in the order they first appear.
    pub fn actions(&self) -> Vec<&Action> {
        let mut v: Vec<&Action> = self.actions.values().collect();
        v.sort_by_key(|a| a.first_seq);
        v
    }

    /// Gaps in each host's journal sequence numbers among the period's records.
    pub fn host_gaps(&self) -> Vec<(String, i64, i64)> {
        let mut out = Vec::new();
        for (host, seqs) in &self.host_seqs {
            let mut s = seqs.clone();
            s.sort_unstable();
            s.dedup();
            for w in s.windows(2) {
                if w[1] > w[0] + 1 {
                    out.push((host.clone(), w[0] + 1, w[1] - 1));
                }
            }
        }
        out
    }

    /// The report page.
    pub fn render(&self, meta: &ReportMeta) -> String {
        let mut h = String::with_capacity(16 * 1024);
        let title = format!(
            "Latch evidence report: {} to {}",
            period_end(meta.since_ms, "the beginning"),
            period_end(meta.until_ms, "now")
        );
        let _ = write!(
            h,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\
             <title>{t}</title><style>{CSS}</style></head><body>\n<h1>{t}</h1>\n",
            t = esc(&title)
        );
        let _ = writeln!(
            h,
            "<p>Generated {} from {}. {} records{}.</p>",
            esc(&rfc3339(meta.generated_ms)),
            esc(&meta.source),
            self.records,
            self.seq_range
                .map(|(a, b)| format!(" (seq {a} to {b})"))
                .unwrap_or_default()
        );
        h.push_str("<h2>Integrity</h2>\n");
        match &meta.verification {
            None => h.push_str(
                "<p class=\"warn\">The chain was not verified for this report (run <code>latchctl audit verify</code>).</p>\n",
            ),
            Some(v) if v.ok() => {
                let _ = writeln!(
                    h,
                    "<p class=\"ok\">The audit chain verified: {} records, {} signed checkpoints checked, head {}{}.</p>",
                    v.records,
                    v.checkpoints_checked,
                    esc(&v.head_hash),
                    v.latest_checkpoint
                        .as_ref()
                        .map(|c| format!(
                            "; newest checkpoint at seq {} signed {} by key {}",
                            c.seq,
                            esc(&rfc3339(c.time_unix_ms)),
                            esc(&c.key_id)
                        ))
                        .unwrap_or_default()
                );
            }
            Some(v) => {
                h.push_str("<p class=\"bad\">The audit chain did NOT verify:</p><ul>\n");
                for f in &v.findings {
                    let _ = writeln!(h, "<li>{}</li>", esc(&f.to_string()));
                }
                h.push_str("</ul>\n");
            }
        }

        let actions = self.actions();
        let _ = write!(
            h,
            "<h2>Approval-required actions ({})</h2>\n<table><tr><th>requested</th><th>request</th><th>host</th>\
             <th>workload</th><th>rule</th><th>requester</th><th>action</th><th>outcome</th><th>decided by</th>\
             <th>reason</th><th>decided</th></tr>\n",
            actions.len()
        );
        for a in &actions {
            let c = a.created.as_ref().map(payload).unwrap_or(Value::Null);
            let first = a.created.as_ref().or(a.resolution.as_ref());
            let what = describe(&c);
            let (outcome, by, reason, when) = match &a.resolution {
                Some(r) => {
                    let p = payload(r);
                    (
                        format!(
                            "{} ({})",
                            r.kind.trim_start_matches("request."),
                            text(&p, "outcome")
                        ),
                        r.actor.clone(),
                        text(&p, "reason"),
                        rfc3339(r.time_unix_ms),
                    )
                }
                None => (
                    "pending".into(),
                    String::new(),
                    String::new(),
                    String::new(),
                ),
            };
            let refusals: Vec<String> = a
                .refusals
                .iter()
                .map(|r| format!("refused: {} ({})", r.actor, text(&payload(r), "refusal")))
                .collect();
            let votes: Vec<String> = a
                .votes
                .iter()
                .map(|r| format!("vote: {}", r.actor))
                .collect();
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
                 <td class=\"{}\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&a.created.as_ref().map(|r| rfc3339(r.time_unix_ms)).unwrap_or_else(|| "before the period".into())),
                esc(&a.request_id),
                esc(first.map(|r| r.host_id.as_str()).unwrap_or("")),
                esc(first.map(|r| r.workload.as_str()).unwrap_or("")),
                esc(first.map(|r| r.rule_name.as_str()).unwrap_or("")),
                esc(&text(&c, "requester")),
                esc(&what),
                if outcome.contains("deny") { "bad" } else { "" },
                esc(&outcome),
                esc(&by),
                esc(&[reason].into_iter().chain(votes).chain(refusals).filter(|s| !s.is_empty()).collect::<Vec<_>>().join("; ")),
                esc(&when),
            );
        }
        h.push_str("</table>\n");

        section(
            &mut h,
            "Self-approval attempts refused",
            &["time", "request", "reviewer", "requester", "refusal"],
            self.self_approvals.iter().map(|r| {
                let p = payload(r);
                vec![
                    rfc3339(r.time_unix_ms),
                    r.request_id.clone(),
                    r.actor.clone(),
                    text(&p, "requester"),
                    text(&p, "refusal"),
                ]
            }),
        );
        section(
            &mut h,
            "Other refused decisions",
            &["time", "request", "reviewer", "refusal"],
            self.refused.iter().map(|r| {
                vec![
                    rfc3339(r.time_unix_ms),
                    r.request_id.clone(),
                    r.actor.clone(),
                    text(&payload(r), "refusal"),
                ]
            }),
        );
        section(
            &mut h,
            "Expiries",
            &["time", "request", "host", "rule", "applied outcome"],
            self.expiries.iter().map(|r| {
                vec![
                    rfc3339(r.time_unix_ms),
                    r.request_id.clone(),
                    r.host_id.clone(),
                    r.rule_name.clone(),
                    text(&payload(r), "outcome"),
                ]
            }),
        );
        section(
            &mut h,
            "Rule changes",
            &[
                "time", "change", "version", "by", "file", "sha256", "comment",
            ],
            self.rule_changes.iter().map(|r| {
                let p = payload(r);
                vec![
                    rfc3339(r.time_unix_ms),
                    r.kind.trim_start_matches("rules.").to_string(),
                    text(&p, "version"),
                    r.actor.clone(),
                    text(&p, "source_name"),
                    text(&p, "sha256"),
                    text(&p, "comment"),
                ]
            }),
        );
        section(
            &mut h,
            "Grants and revocations",
            &["time", "event", "grant", "host", "rule", "by", "details"],
            self.grants.iter().map(|r| {
                vec![
                    rfc3339(r.time_unix_ms),
                    r.kind.trim_start_matches("grant.").to_string(),
                    r.grant_id.clone(),
                    r.host_id.clone(),
                    r.rule_name.clone(),
                    r.actor.clone(),
                    r.payload_json.clone(),
                ]
            }),
        );
        section(
            &mut h,
            "Configuration changes",
            &["time", "by", "sha256", "previous"],
            self.config_changes.iter().map(|r| {
                let p = payload(r);
                vec![
                    rfc3339(r.time_unix_ms),
                    r.actor.clone(),
                    text(&p, "sha256"),
                    text(&p, "previous_sha256"),
                ]
            }),
        );
        section(
            &mut h,
            "Reviewer logins",
            &["reviewer", "logins"],
            self.logins
                .iter()
                .map(|(k, v)| vec![k.clone(), v.to_string()]),
        );
        let mut gaps: Vec<(String, i64, i64)> = self.host_gaps();
        if let Some(v) = &meta.verification {
            for g in &v.host_gaps {
                let t = (g.host_id.clone(), g.from, g.to);
                if !gaps.contains(&t) {
                    gaps.push(t);
                }
            }
        }
        section(
            &mut h,
            "Agent journal gaps (records a host wrote that central never received)",
            &["host", "first missing", "last missing"],
            gaps.into_iter()
                .map(|(host, a, b)| vec![host, a.to_string(), b.to_string()]),
        );
        h.push_str("</body></html>\n");
        h
    }
}

/// About the report.
#[derive(Clone, Debug, Default)]
pub struct ReportMeta {
    /// Period start (Unix ms; 0: the beginning).
    pub since_ms: i64,
    /// Period end (Unix ms; 0: now).
    pub until_ms: i64,
    /// When generated.
    pub generated_ms: i64,
    /// Where the records came from (a server address or a file).
    pub source: String,
    /// The chain's verification, when it was run.
    pub verification: Option<Report>,
}

fn period_end(ms: i64, none: &str) -> String {
    if ms == 0 {
        none.to_string()
    } else {
        rfc3339(ms)
    }
}

/// "exec /usr/bin/psql -h db", "connect 10.20.1.5:5432/tcp".
fn describe(c: &Value) -> String {
    let op = text(c, "op");
    let argv: Vec<String> = c
        .get("argv")
        .and_then(|a| a.as_array())
        .map(|a| {
            a.iter()
                .map(|x| x.as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default();
    match op.as_str() {
        "OP_EXEC" => format!("exec {} [{}]", text(c, "exec_path"), argv.join(" ")),
        "OP_CONNECT" | "OP_SENDMSG" => {
            let d = c.get("destination").cloned().unwrap_or(Value::Null);
            format!(
                "{} {}:{}/{} by {} [{}]",
                op.trim_start_matches("OP_").to_lowercase(),
                text(&d, "address"),
                text(&d, "port"),
                text(&d, "protocol"),
                text(c, "exe"),
                argv.join(" ")
            )
        }
        _ => String::new(),
    }
}

fn section(h: &mut String, title: &str, columns: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    let rows: Vec<Vec<String>> = rows.collect();
    let _ = writeln!(h, "<h2>{} ({})</h2>", esc(title), rows.len());
    if rows.is_empty() {
        h.push_str("<p>None.</p>\n");
        return;
    }
    h.push_str("<table><tr>");
    for c in columns {
        let _ = write!(h, "<th>{}</th>", esc(c));
    }
    h.push_str("</tr>\n");
    for r in rows {
        h.push_str("<tr>");
        for c in r {
            let _ = write!(h, "<td>{}</td>", esc(&c));
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n");
}

const CSS: &str = "body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin-bottom:1.5em}\
th,td{border:1px solid #bbb;padding:.25em .5em;text-align:left;vertical-align:top;font-size:.9em}\
th{background:#eee}code{font-size:.85em}.ok{color:#060}.bad{color:#a00;font-weight:bold}.warn{color:#a60}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_text_is_escaped() {
        let mut e = Evidence::default();
        e.add(&Record {
            seq: 1,
            kind: "request.created".into(),
            request_id: "r<1>".into(),
            host_id: "h1".into(),
            payload_json:
                serde_json::json!({"op": "OP_EXEC", "exec_path": "/bin/<script>alert(1)</script>",
                "argv": ["x\"onload=\"y"], "requester": "unit:&evil"})
                .to_string(),
            ..Default::default()
        });
        let html = e.render(&ReportMeta::default());
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("unit:&amp;evil") && html.contains("r&lt;1&gt;"));
        assert!(!html.contains("x\"onload"));
    }

    #[test]
    fn journal_gaps_within_the_period() {
        let mut e = Evidence::default();
        for s in [1, 2, 5, 6, 9] {
            e.add(&Record {
                seq: s,
                host_id: "h1".into(),
                host_seq: s,
                kind: "agent.exec".into(),
                ..Default::default()
            });
        }
        assert_eq!(
            e.host_gaps(),
            vec![("h1".to_string(), 3, 4), ("h1".to_string(), 7, 8)]
        );
    }
}
