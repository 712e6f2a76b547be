//! The `auto` step of a rule's review chain, as the engine sees it: what an automatic
//! reviewer's answer does to a request (decides it, is shown to people as a recommendation, or
//! escalates), and the circuit breaker that switches a reviewer to escalate-only when it
//! approves too large a share or keeps failing. Calling the reviewer is a channel's work
//! (`crate::autoreview`); this module never speaks HTTP. The wire format and its signatures are
//! [`crate::auto_protocol`], shared with the reference reviewer; the breakers' state is
//! [`crate::breaker`].

use latch_proto::v1::RequestState;
use serde_json::json;

use crate::{
    approval::{lock_pending, resolve_group_in, resolve_in, RequestRow, State},
    auto_protocol::{self as protocol, Recommendation},
    breaker::Seen,
    clock::now_ms,
    engine::Central,
    error::{Error, Result},
    events::Event,
    store::{AuditFact, QueryContext, Store},
};

/// What an automatic reviewer's answer was, as central took it.
#[derive(Clone, Debug)]
pub enum Answer {
    /// A verdict with the reviewer's rationale and confidence.
    Verdict {
        /// What it said.
        verdict: protocol::Verdict,
        /// Its words (untrusted).
        rationale: String,
        /// 0 to 1.
        confidence: f64,
    },
    /// No usable answer (timeout, error, bad signature, garbage, another request's verdict).
    Failed(String),
}

/// The auto step of a rule, with whether people come after it.
pub(crate) struct Step {
    pub auto: policy::AutoStep,
    pub with_people: bool,
}

impl Central {
    /// The auto step of a stored request's rule, when its chain has one.
    pub(crate) async fn auto_step(&self, row: &RequestRow) -> Result<Option<Step>> {
        let req = row.request()?;
        let Some(rule) = self.rule_of(&row.host_id, &req).await? else {
            return Ok(None);
        };
        Ok(rule
            .review
            .contains(&policy::ReviewStep::Auto)
            .then(|| rule.auto.clone())
            .flatten()
            .map(|auto| Step {
                auto,
                with_people: rule.review.contains(&policy::ReviewStep::Human),
            }))
    }

    /// What is posted to `reviewer` about a stored request: what reviewers see of it.
    pub(crate) fn review_request(
        row: &RequestRow,
        reviewer: &str,
    ) -> Result<protocol::ReviewRequest> {
        let req = row.request()?;
        Ok(protocol::ReviewRequest {
            version: 1,
            approval_id: row.approval_id.clone(),
            reviewer: reviewer.to_string(),
            host_id: row.host_id.clone(),
            rule: row.rule_name.clone(),
            workload: row.workload.clone(),
            deadline_unix_ms: row.expires_at_ms,
            request: crate::approval::request_summary(
                &req,
                row.expires_at_ms,
                &row.on_timeout,
                row.approvers_needed,
            ),
            justification: req.justification.clone(),
        })
    }

    /// Pending requests with no automatic review yet and before their deadline (at most
    /// 10,000, oldest first).
    pub(crate) async fn unreviewed_pending(&self) -> Result<Vec<String>> {
        Ok(crate::store::recommendations::unreviewed(self.store.pool(), now_ms(), 10_000).await?)
    }

    /// Hands a request to the channel that posts it to its reviewer.
    pub(crate) fn enqueue_auto_review(&self, approval_id: &str) {
        match &self.auto_queue {
            Some(q) => {
                let _ = q.send(approval_id.to_string());
            }
            None => tracing::warn!(
                approval_id,
                "a rule's review has `auto` but central has no [[auto_reviewers]]: the request goes on without it"
            ),
        }
    }

    /// An answer after the request's deadline: not taken, counted as late and as a failure of
    /// the reviewer, whose breaker it may open (audited like any other opening).
    async fn late_answer(&self, row: &RequestRow, reviewer: &str) -> Result<()> {
        let now = now_ms();
        let (_, tripped) = self.breakers.observe(reviewer, Seen::Failure, now);
        self.metrics.auto_reviewed(reviewer, "late");
        tracing::warn!(approval_id = %row.approval_id, reviewer, "an automatic review came after the request's deadline; not taken");
        if let Some(reason) = tripped {
            tracing::error!(reviewer, %reason, "automatic reviewer switched to escalate-only");
            let mut tx = self.store.begin().await?;
            Store::audit_in(
                &mut tx,
                &AuditFact {
                    kind: "auto_reviewer.breaker_open".into(),
                    actor: format!("auto:{reviewer}"),
                    host_id: row.host_id.clone(),
                    request_id: row.approval_id.clone(),
                    rule_name: row.rule_name.clone(),
                    workload: row.workload.clone(),
                    payload: json!({"reviewer": reviewer, "reason": reason,
                        "until_ms": now + self.breakers.cooldown_ms(reviewer)}),
                    time_ms: now,
                    ..Default::default()
                },
            )
            .await?;
            tx.commit().await.ctx("committing a breaker's opening")?;
        }
        Ok(())
    }

    /// Takes an automatic reviewer's answer on a request: records it, decides the request when
    /// the rule lets the reviewer decide and its breaker is closed, and otherwise leaves it to
    /// people (or, for a chain without people, denies it). An answer after the request's
    /// deadline is not taken.
    /// `inputs_sha256` is the digest of the body the reviewer was sent, kept on the record.
    pub async fn take_auto_answer(
        &self,
        approval_id: &str,
        reviewer: &str,
        answer: Answer,
        inputs_sha256: &str,
    ) -> Result<RequestState> {
        let Some(row) = self.request_row(approval_id).await? else {
            return Err(Error::NotFound(format!("request '{approval_id}'")));
        };
        if row.state == State::Expired {
            // The deadline came first: the answer is late, and a reviewer that keeps answering
            // late counts as failing.
            self.late_answer(&row, reviewer).await?;
            return Ok(row.state.to_proto());
        }
        if row.state != State::Pending {
            return Ok(row.state.to_proto());
        }
        if !row.recommendation.is_empty() {
            // One answer per request: the first taken stands (a replica that restarted asks
            // again about what had no answer when it stopped, and another may have answered).
            tracing::info!(
                approval_id,
                reviewer,
                "a second automatic review of a request; the first stands"
            );
            return Ok(RequestState::Pending);
        }
        let Some(step) = self.auto_step(&row).await? else {
            return Err(Error::FailedPrecondition(format!(
                "request '{approval_id}' has no automatic review step"
            )));
        };
        if step.auto.reviewer != reviewer {
            return Err(Error::PermissionDenied(format!(
                "request '{approval_id}' is for reviewer '{}', not '{reviewer}'",
                step.auto.reviewer
            )));
        }
        let now = now_ms();
        if now >= row.expires_at_ms {
            // Too late: the request is the expiry's, which resolves it by the rule.
            self.late_answer(&row, reviewer).await?;
            return Ok(RequestState::Pending);
        }
        let (seen, verdict, rationale, confidence) = match &answer {
            Answer::Verdict {
                verdict,
                rationale,
                confidence,
            } => (
                match verdict {
                    protocol::Verdict::Approve => Seen::Approve,
                    _ => Seen::Other,
                },
                verdict.as_str(),
                rationale.clone(),
                *confidence,
            ),
            Answer::Failed(why) => (Seen::Failure, "failed", why.clone(), 0.0),
        };
        // Locked, and looked at again under the lock, before the answer counts anywhere: a
        // second answer that loses a race to the first changes nothing, breaker included.
        let mut tx = self.store.begin().await?;
        let Some(locked) = lock_pending(&mut tx, approval_id, now).await? else {
            return Ok(RequestState::Unspecified);
        };
        if crate::store::recommendations::has_one_in(&mut tx, approval_id).await? {
            return Ok(RequestState::Pending);
        }
        let (open_before, tripped) = self.breakers.observe(reviewer, seen, now);
        self.metrics.auto_reviewed(reviewer, verdict);
        let deciding = matches!(
            answer,
            Answer::Verdict {
                verdict: protocol::Verdict::Approve | protocol::Verdict::Deny,
                ..
            }
        );
        // What happens to an answer that does not decide: people take over, or, with none in
        // the chain, the request is denied.
        let then = if step.with_people {
            "escalated"
        } else {
            "denied (no other step)"
        };
        let note = if !deciding {
            match &answer {
                Answer::Failed(_) => format!("no usable answer: {then}"),
                _ => then.to_string(),
            }
        } else if step.auto.advisory {
            "advisory: the rule lets it recommend, not decide".to_string()
        } else if open_before || tripped.is_some() {
            format!("the reviewer's circuit breaker is open: {then}")
        } else {
            String::new()
        };
        let decided = note.is_empty();
        let rec = Recommendation {
            reviewer: reviewer.to_string(),
            verdict: verdict.to_string(),
            rationale,
            confidence,
            decided,
            note,
            at_ms: now,
        };
        let actor = format!("auto:{reviewer}");
        crate::store::recommendations::set_in(
            &mut tx,
            approval_id,
            &serde_json::to_string(&rec).unwrap_or_default(),
        )
        .await?;
        let fact = |kind: &str, payload: serde_json::Value| AuditFact {
            kind: kind.into(),
            actor: actor.clone(),
            host_id: row.host_id.clone(),
            request_id: row.approval_id.clone(),
            rule_name: row.rule_name.clone(),
            workload: row.workload.clone(),
            payload,
            time_ms: now,
            ..Default::default()
        };
        Store::audit_in(
            &mut tx,
            &fact(
                "request.auto_reviewed",
                json!({"reviewer": reviewer, "verdict": rec.verdict, "rationale": rec.rationale,
                    "confidence": rec.confidence, "decided": rec.decided, "note": rec.note,
                    "inputs_sha256": inputs_sha256}),
            ),
        )
        .await?;
        if let Some(reason) = &tripped {
            Store::audit_in(
                &mut tx,
                &fact(
                    "auto_reviewer.breaker_open",
                    json!({"reviewer": reviewer, "reason": reason,
                        "until_ms": now + self.breakers.cooldown_ms(reviewer)}),
                ),
            )
            .await?;
        }
        let resolved = if decided {
            let approve = verdict == "approve";
            Some((
                if approve {
                    State::Approved
                } else {
                    State::Denied
                },
                if approve { "allow" } else { "deny" },
                actor.clone(),
                rec.rationale.clone(),
            ))
        } else if !step.with_people {
            // Nothing after the reviewer can decide, and an answer that did not decide (a
            // failure, a forged answer, an open breaker) must never let the operation through.
            Some((
                State::Denied,
                "deny",
                crate::approval::CHAIN_ACTOR.to_string(),
                format!(
                    "the automatic reviewer did not decide ({}) and the rule's review has no other step: denied",
                    rec.note
                ),
            ))
        } else {
            None
        };
        let mut members = Vec::new();
        let state = match &resolved {
            Some((to, outcome, by, reason)) => {
                let after = resolve_in(
                    &mut tx,
                    &row,
                    *to,
                    outcome,
                    by,
                    reason,
                    None,
                    json!({"review": "auto", "confidence": rec.confidence,
                        "inputs_sha256": inputs_sha256}),
                    now,
                )
                .await?;
                members = resolve_group_in(&mut tx, &after, locked, now).await?;
                to.to_proto()
            }
            None => RequestState::Pending,
        };
        tx.commit().await.ctx("committing an automatic review")?;
        self.publish_members(&members).await;
        if let Some(reason) = &tripped {
            tracing::error!(reviewer, %reason, "automatic reviewer switched to escalate-only");
        }
        self.publish(Event::Request {
            approval_id: row.approval_id.clone(),
            host_id: row.host_id.clone(),
        })
        .await;
        tracing::info!(approval_id, reviewer, verdict = %rec.verdict, decided = rec.decided, "automatic review taken");
        Ok(state)
    }
}
