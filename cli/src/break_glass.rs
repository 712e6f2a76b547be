//! `latchctl approve ID --break-glass`: an admin's decision outside N-of-M and the
//! no-self-approval rule, through central's `BreakGlass` call. Says loudly what it is before and
//! after; central decides whether it is allowed at all and audits every attempt.

use std::io::IsTerminal;

use latch_proto::v1::{BreakGlassRequest, DecideRequest};
use serde_json::json;

use crate::{client::CliError, connect, out::Out, record_json, state_name, Ctx};

/// Sends a break-glass decision.
pub async fn approve(ctx: &Ctx, out: Out, decision: DecideRequest) -> Result<(), CliError> {
    if decision.reason.trim().is_empty() {
        return Err(CliError::Usage(
            "--break-glass needs --reason: say why no other approver could decide".into(),
        ));
    }
    const WARNING: &str = "BREAK-GLASS: this approval bypasses the approver count and the \
        no-self-approval rule. It is recorded in the audit trail as decision.break_glass, with \
        your reason, for review.";
    // Bold red only when standard error is a terminal that accepts colour.
    if std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none() {
        eprintln!("\x1b[1;31m{WARNING}\x1b[0m");
    } else {
        eprintln!("{WARNING}");
    }
    let mut c = connect(ctx).await?;
    let resp = c
        .inner
        .break_glass(c.req(BreakGlassRequest {
            decision: Some(decision),
        }))
        .await?
        .into_inner();
    let rec = resp.request.unwrap_or_default();
    if out.json {
        let mut v = record_json(&rec);
        v["final"] = json!(resp.r#final);
        v["break_glass"] = json!(true);
        out.json_pretty(&v);
    } else {
        println!(
            "{} {} (break-glass)",
            latch_central::text::term_safe(&rec.approval_id),
            out.state(&state_name(rec.state))
        );
    }
    Ok(())
}
