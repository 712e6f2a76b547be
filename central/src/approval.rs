//! The approval engine: requests from agents, votes and decisions from reviewers, expiry and
//! cancellation.
//!
//! A request is `pending` until it becomes `approved`, `denied`, `expired` (nobody decided
//! within the rule's timeout; the rule's `on_timeout` applies) or `cancelled` (the process went
//! away). Every transition is recorded with who, when and why, and audited.
//!
//! Concurrency: every change of a request starts its transaction with a conditional
//! `UPDATE ... WHERE state = 'pending'`, which locks the row (PostgreSQL) or the database
//! (SQLite). Decisions on one request are therefore serialised across replicas, exactly one
//! resolves it, and the others see it resolved and get `FailedPrecondition`.

use std::{collections::HashMap, sync::Arc, time::Duration};

use latch_proto::v1::{
    ApprovalAccepted, ApprovalRecord, ApprovalRequest, Decision, DecisionKind, Grant, GrantScope,
    Op, Outcome, RequestState, Transition, Vote,
};
use prost::Message;
use serde_json::json;

use crate::{
    auth::{Identity, Role},
    clock::now_ms,
    engine::Central,
    error::{Error, Result},
    events::Event,
    grants, review,
    store::{
        AuditFact, History, NewRequest, NewVote, QueryContext, Resolution, Store, Tx, VoteRow,
    },
    tally::{decides_alone, tally, Ballot, Choice, Scope, Tally, Terms},
};

/// Longest grant a reviewer may give.
pub const MAX_GRANT: Duration = Duration::from_secs(30 * 24 * 3600);

pub use crate::store::{RequestRow, State};

impl State {
    /// Wire value.
    pub fn to_proto(self) -> RequestState {
        match self {
            State::Pending => RequestState::Pending,
            State::Approved => RequestState::Approved,
            State::Denied => RequestState::Denied,
            State::Expired => RequestState::Expired,
            State::Cancelled => RequestState::Cancelled,
        }
    }

    /// From the wire value (`None` for unspecified).
    pub fn from_proto(s: RequestState) -> Option<State> {
        Some(match s {
            RequestState::Unspecified => return None,
            RequestState::Pending => State::Pending,
            RequestState::Approved => State::Approved,
            RequestState::Denied => State::Denied,
            RequestState::Expired => State::Expired,
            RequestState::Cancelled => State::Cancelled,
        })
    }
}

fn proto_state(s: &str) -> RequestState {
    State::parse(s)
        .map(State::to_proto)
        .unwrap_or(RequestState::Unspecified)
}

fn proto_outcome(s: &str) -> Outcome {
    match s {
        "allow" => Outcome::Allow,
        "deny" => Outcome::Deny,
        _ => Outcome::Unspecified,
    }
}

impl RequestRow {
    /// The request as the agent sent it.
    pub fn request(&self) -> Result<ApprovalRequest> {
        ApprovalRequest::decode(self.context.as_slice()).map_err(|e| {
            crate::store::StoreError::Corrupt {
                what: format!("request {}", self.approval_id),
                message: e.to_string(),
            }
            .into()
        })
    }
}

/// A reviewer's decision, validated.
#[derive(Clone, Debug)]
pub struct DecideInput {
    /// Central's request id.
    pub approval_id: String,
    /// What.
    pub kind: DecisionKind,
    /// For `ApproveFor`.
    pub duration: Duration,
    /// For `ApproveFor`.
    pub scope: GrantScope,
    /// Why (mandatory).
    pub reason: String,
}

impl DecideInput {
    /// The vote this decision casts.
    pub fn choice(&self) -> Choice {
        match (self.kind, Scope::from_proto(self.scope)) {
            (DecisionKind::ApproveFor, Some(scope)) => Choice::Approve(Terms::For {
                scope,
                duration: self.duration,
            }),
            // A grant without a scope is refused by validation; should one get here, once is
            // the narrowest reading of it.
            (DecisionKind::ApproveFor | DecisionKind::ApproveOnce, _) => {
                Choice::Approve(Terms::Once)
            }
            (DecisionKind::Deny | DecisionKind::Unspecified, _) => Choice::Deny,
        }
    }
}

/// Stored `votes.kind` of a vote.
fn vote_kind(c: Choice) -> &'static str {
    match c {
        Choice::Approve(Terms::Once) => "approve_once",
        Choice::Approve(Terms::For { .. }) => "approve_for",
        Choice::Deny => "deny",
    }
}

/// A stored vote as the tally counts it.
fn ballot(approval_id: &str, v: VoteRow) -> Result<Ballot> {
    let choice = match v.outcome.as_str() {
        "deny" => Choice::Deny,
        "allow" => match (
            v.kind.as_str(),
            Scope::from_proto(grants::scope_of(&v.scope)),
        ) {
            ("approve_for", Some(scope)) if v.duration_ms > 0 => Choice::Approve(Terms::For {
                scope,
                duration: Duration::from_millis(v.duration_ms as u64),
            }),
            // Votes from before terms were stored, or unreadable terms: the narrowest.
            _ => Choice::Approve(Terms::Once),
        },
        other => {
            return Err(crate::store::StoreError::Corrupt {
                what: format!("a vote on request {approval_id}"),
                message: format!("vote outcome '{other}' is neither allow nor deny"),
            }
            .into())
        }
    };
    Ok(Ballot {
        approver: v.approver,
        choice,
        by_requester: v.by_requester,
    })
}

/// The votes on a request, in the order they were cast.
async fn ballots_in(tx: &mut Tx, approval_id: &str) -> Result<Vec<Ballot>> {
    Store::votes_in(tx, approval_id)
        .await?
        .into_iter()
        .map(|v| ballot(approval_id, v))
        .collect()
}

/// What the rule says about a request.
struct RuleTerms {
    timeout: Duration,
    on_timeout: &'static str,
    approvers_needed: u32,
    groups: Vec<String>,
    rule_name: String,
    workload: String,
    review: Vec<policy::ReviewStep>,
    checks: Vec<policy::PolicyCheck>,
}

/// How the review chain's automatic steps resolve a request as it arrives.
struct AutoResolution {
    approve: bool,
    actor: String,
    reason: String,
    detail: serde_json::Value,
}

/// The actor of a request that a chain without people resolved because nothing in it decided.
pub(crate) const CHAIN_ACTOR: &str = "review-chain";

/// What the policy step found, before the request is stored.
#[derive(Default)]
struct PolicyStep {
    /// How it resolves the request, when it does.
    resolution: Option<AutoResolution>,
    /// The check that could not be evaluated (as `policy:<rule>/<check>`), why, and what to
    /// audit of it.
    failed: Option<(String, String, serde_json::Value)>,
}

/// What the chain decides before any person sees the request: the first policy check that
/// holds; or, for a chain with nothing after it that can decide, a denial at once.
fn auto_resolution(
    terms: &RuleTerms,
    req: &ApprovalRequest,
    host_id: &str,
    labels: &HashMap<String, String>,
) -> PolicyStep {
    use policy::ReviewStep;
    let with_policy = terms.review.contains(&ReviewStep::Policy);
    let with_auto = terms.review.contains(&ReviewStep::Auto);
    let with_people = terms.review.contains(&ReviewStep::Human);
    if !with_policy && (with_people || with_auto) {
        return PolicyStep::default();
    }
    let labels = labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let inputs = review::Inputs::of(req, host_id, &labels, &terms.rule_name, &terms.workload);
    let finding = review::evaluate(&terms.checks, &inputs);
    let failed: Vec<_> = finding
        .failed
        .iter()
        .map(|(check, why)| json!({"check": check, "error": why}))
        .collect();
    let resolution = match finding.decided {
        // The reason reaches the workload: it names the check, never its expression.
        Some((check, verdict)) => Some(AutoResolution {
            approve: verdict == policy::Verdict::Approve,
            actor: format!("policy:{}/{}", terms.rule_name, check.name),
            reason: format!("policy check '{}' holds", check.name),
            detail: json!({"review": "policy", "check": check.name,
                "expression": check.expression, "inputs_sha256": inputs.digest(),
                "failed_checks": failed}),
        }),
        // Nothing after this step can decide: what it did not approve is denied.
        None if !with_people && !with_auto => Some(AutoResolution {
            approve: false,
            actor: CHAIN_ACTOR.into(),
            reason: "no policy check decided and the rule's review has no other step: denied"
                .into(),
            detail: json!({"review": "policy", "check": null,
                "inputs_sha256": inputs.digest(), "failed_checks": failed}),
        }),
        None => None,
    };
    let failed = finding.failed.first().map(|(check, why)| {
        (
            format!("policy:{}/{check}", terms.rule_name),
            why.clone(),
            json!({"review": "policy", "inputs_sha256": inputs.digest(), "failed_checks": failed}),
        )
    });
    PolicyStep { resolution, failed }
}

impl Central {
    /// A stored request by central's id.
    pub async fn request_row(&self, approval_id: &str) -> Result<Option<RequestRow>> {
        Ok(self.store.request(approval_id).await?)
    }

    /// A stored request by the agent's id.
    pub async fn request_by_agent_id(
        &self,
        host_id: &str,
        request_id: &str,
    ) -> Result<Option<RequestRow>> {
        Ok(self.store.request_by_agent_id(host_id, request_id).await?)
    }

    /// The rule a request names, in the rules version it was held under (or the host's
    /// current one); `None` for a workload's default action.
    pub(crate) async fn rule_of(
        &self,
        host_id: &str,
        req: &ApprovalRequest,
    ) -> Result<Option<policy::Rule>> {
        if req.rule_id == 0 {
            return Ok(None);
        }
        let version = if req.rules_version > 0 {
            req.rules_version as i64
        } else {
            let labels = self.host_labels(host_id).await?;
            match self.desired_version(&labels).await? {
                Some(v) => v.version,
                None => {
                    return Err(Error::FailedPrecondition(format!(
                        "request names rule id {} but no rules version applies to host '{host_id}'",
                        req.rule_id
                    )))
                }
            }
        };
        let set = self.rule_set(version).await?;
        let rule = set.rule(req.rule_id).ok_or_else(|| {
            Error::NotFound(format!(
                "rule id {} ('{}') is not in rules version {version}",
                req.rule_id, req.rule_name
            ))
        })?;
        Ok(Some(rule.clone()))
    }

    async fn terms(&self, host_id: &str, req: &ApprovalRequest) -> Result<RuleTerms> {
        let Some(rule) = self.rule_of(host_id, req).await? else {
            // A workload's default action, not a named rule.
            return Ok(RuleTerms {
                timeout: policy::DEFAULT_TIMEOUT,
                on_timeout: "deny",
                approvers_needed: 1,
                groups: Vec::new(),
                rule_name: req.rule_name.clone(),
                workload: req.workload.clone(),
                review: policy::review::human_only(),
                checks: Vec::new(),
            });
        };
        Ok(RuleTerms {
            timeout: rule.timeout,
            on_timeout: match rule.on_timeout {
                policy::Action::Allow | policy::Action::Audit => "allow",
                _ => "deny",
            },
            approvers_needed: rule.approvers.count.max(1),
            groups: rule.approvers.groups.clone(),
            rule_name: rule.name.clone(),
            workload: rule.workload.clone(),
            review: rule.review.clone(),
            checks: rule.checks.clone(),
        })
    }

    /// Accepts a held operation (validated by the caller). Idempotent by (host, request id).
    pub async fn submit(&self, req: ApprovalRequest) -> Result<ApprovalAccepted> {
        let host_id = req.host_id.clone();
        let (labels, existing) = match self.store.submission(&host_id, &req.request_id).await? {
            Some((labels, existing)) => (Some(labels), existing),
            None => (None, None),
        };
        let labels = crate::hosts::parse_labels(&host_id, labels)?;
        if let Some(row) = existing {
            return self.accepted(&row).await;
        }
        let terms = self.terms(&host_id, &req).await?;
        let now = now_ms();
        let approval_id = uuid::Uuid::new_v4().to_string();
        let mut expires = now + terms.timeout.as_millis() as i64;
        // Evaluated before the write transaction begins: it holds no lock while checks run.
        let step = auto_resolution(&terms, &req, &host_id, &labels);
        let merge_key = crate::merge::key(
            &host_id,
            &crate::merge::Terms {
                workload: &terms.workload,
                rule_name: &terms.rule_name,
                approvers_needed: terms.approvers_needed,
                approver_groups: &terms.groups,
                on_timeout: terms.on_timeout,
                timeout_ms: terms.timeout.as_millis() as u64,
            },
            &req,
        );
        let rule_name = terms.rule_name.clone();
        let auto_review = terms.review.contains(&policy::ReviewStep::Auto);
        let submitted = Submitted {
            approval_id: approval_id.clone(),
            host_id: host_id.clone(),
            req: req.clone(),
            terms,
            step,
            merge_key,
            now,
            expires,
        };
        let stored = self
            .store
            .write("committing request", move |tx| {
                Box::pin(store_request(tx, submitted))
            })
            .await?;
        let merged_into = match stored {
            Stored::Duplicate => {
                // Submitted twice at once: the other call stored it (committed, so that the read
                // below, on another connection, sees it).
                let row = self
                    .request_by_agent_id(&host_id, &req.request_id)
                    .await?
                    .ok_or_else(|| {
                        Error::NotFound(format!("request {host_id}/{}", req.request_id))
                    })?;
                return self.accepted(&row).await;
            }
            Stored::Decided { after, by, outcome } => {
                self.publish(Event::Request {
                    approval_id: approval_id.clone(),
                    host_id,
                })
                .await;
                tracing::info!(approval_id, request_id = %req.request_id, rule = %rule_name, by = %by, outcome, "request decided by its review chain");
                return self.accepted(&after).await;
            }
            Stored::Pending { row, merged_into } => {
                expires = row.expires_at_ms;
                // A request on its own is published with its record, which saves reading it
                // back; one that joined a group is read as the group is when it is delivered.
                let created = merged_into
                    .is_none()
                    .then(|| Arc::new(created_record(&row, req.clone())));
                self.publish_snapshot(
                    Event::Request {
                        approval_id: approval_id.clone(),
                        host_id: host_id.clone(),
                    },
                    created,
                )
                .await;
                merged_into
            }
        };
        if let Some((primary, _)) = &merged_into {
            // What reviewers see of the group (its count) changed.
            self.publish(Event::Request {
                approval_id: primary.clone(),
                host_id,
            })
            .await;
            tracing::info!(approval_id, request_id = %req.request_id, rule = %rule_name, merged_into = %primary, "request pending with an identical one");
            return Ok(ApprovalAccepted {
                approval_id,
                state: RequestState::Pending as i32,
                expires_at_unix_ms: expires,
                decision: None,
            });
        }
        // The expiry loop looks again within EXPIRY_POLL_MS anyway (two reads each time it
        // wakes): woken only for a request due before then, with as much again to spare for a
        // loop that read the next deadline just before this request was stored.
        if expires - now_ms() < 2 * crate::engine::EXPIRY_POLL_MS {
            self.expiry_wake.notify_one();
        }
        if auto_review {
            self.enqueue_auto_review(&approval_id);
        }
        tracing::info!(approval_id, request_id = %req.request_id, rule = %rule_name, "request pending");
        Ok(ApprovalAccepted {
            approval_id,
            state: RequestState::Pending as i32,
            expires_at_unix_ms: expires,
            decision: None,
        })
    }

    async fn accepted(&self, row: &RequestRow) -> Result<ApprovalAccepted> {
        Ok(ApprovalAccepted {
            approval_id: row.approval_id.clone(),
            state: row.state.to_proto() as i32,
            expires_at_unix_ms: row.expires_at_ms,
            decision: self.decision_of(row).await?,
        })
    }

    /// The decision to push for a resolved request (none while pending or when cancelled).
    pub async fn decision_of(&self, row: &RequestRow) -> Result<Option<Decision>> {
        if matches!(row.state, State::Pending | State::Cancelled) {
            return Ok(None);
        }
        let grant = if row.grant_id.is_empty() {
            None
        } else {
            Some(self.grant(&row.grant_id).await?)
        };
        Ok(Some(Decision {
            request_id: row.request_id.clone(),
            outcome: proto_outcome(&row.outcome) as i32,
            grant,
            reason: row.reason.clone(),
            decided_by: row.decided_by.clone(),
            approval_id: row.approval_id.clone(),
            state: row.state.to_proto() as i32,
            decided_at_unix_ms: row.decided_at_ms,
        }))
    }

    /// The full record of a request, for reviewers.
    pub async fn record(&self, approval_id: &str) -> Result<ApprovalRecord> {
        let row = self
            .request_row(approval_id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("request '{approval_id}'")))?;
        self.record_of(&row).await
    }

    /// The full record of a stored request: its votes and transitions in one round trip (votes
    /// by time and approver, transitions in the order they were written).
    pub async fn record_of(&self, row: &RequestRow) -> Result<ApprovalRecord> {
        self.record_counted(row, None).await
    }

    /// [`Self::record_of`], with the count of requests merged into `row` when the caller knows
    /// it (a decision that just resolved them), which saves reading it.
    async fn record_counted(
        &self,
        row: &RequestRow,
        merged: Option<u32>,
    ) -> Result<ApprovalRecord> {
        let mut votes = Vec::new();
        let mut transitions = Vec::new();
        // The count, where it is needed and not known, comes with the history.
        let count_in = match merged {
            None if counts_merged(row) => Some(row.state),
            _ => None,
        };
        let (history, counted) = self
            .store
            .request_history(&row.approval_id, count_in)
            .await?;
        for h in history {
            match h {
                History::Vote {
                    approver,
                    outcome,
                    reason,
                    at_ms,
                } => votes.push(Vote {
                    approver,
                    outcome: proto_outcome(&outcome) as i32,
                    reason,
                    at_unix_ms: at_ms,
                }),
                History::Transition {
                    from,
                    to,
                    actor,
                    reason,
                    at_ms,
                } => transitions.push(Transition {
                    from: proto_state(&from) as i32,
                    to: proto_state(&to) as i32,
                    actor,
                    reason,
                    at_unix_ms: at_ms,
                }),
            }
        }
        let request = row.request()?;
        let merged = merged.unwrap_or(counted.unwrap_or(0).max(0) as u32);
        let decision = self.decision_of(row).await?;
        Ok(assemble_record(
            row,
            request,
            votes,
            transitions,
            decision,
            merged,
        ))
    }

    /// How many requests wait with `row` (while it is pending) or were resolved with it.
    pub(crate) async fn merged_count(&self, row: &RequestRow) -> Result<u32> {
        if !counts_merged(row) {
            return Ok(0);
        }
        let n = self.store.merged_count(&row.approval_id, row.state).await?;
        Ok(n.max(0) as u32)
    }

    /// Requests, newest first; of pending ones, those reviewers decide (each with the count of
    /// identical requests waiting with it).
    pub async fn list_requests(
        &self,
        state: Option<State>,
        host_id: &str,
        limit: i64,
    ) -> Result<Vec<ApprovalRecord>> {
        let rows = self
            .store
            .requests(state.map(State::as_str).unwrap_or(""), host_id, limit)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            out.push(self.record_of(row).await?);
        }
        Ok(out)
    }

    /// Records a reviewer's decision. Returns the record and whether the request is resolved
    /// (false: the approval was counted and more approvers are needed).
    pub async fn decide(&self, who: &Identity, d: DecideInput) -> Result<(ApprovalRecord, bool)> {
        let approve = matches!(d.kind, DecisionKind::ApproveOnce | DecisionKind::ApproveFor);
        if !who.has(Role::Approver) {
            let row = self.request_row(&d.approval_id).await?;
            return Err(self
                .refuse(
                    who,
                    row.as_ref(),
                    &d,
                    "request.decision_refused",
                    format!("'{}' is not an approver", who.subject),
                )
                .await);
        }
        let row = self.decidable(&d.approval_id, None).await?;
        let now = now_ms();
        if approve && who.is_requester(&row.requester) {
            return Err(self
                .refuse(
                    who,
                    Some(&row),
                    &d,
                    "request.self_approval_refused",
                    format!(
                        "'{}' is the requester ('{}') of request '{}' and cannot approve it",
                        who.subject, row.requester, row.approval_id
                    ),
                )
                .await);
        }
        if !row.approver_groups.is_empty()
            && !who.groups.iter().any(|g| row.approver_groups.contains(g))
        {
            return Err(self
                .refuse(
                    who,
                    Some(&row),
                    &d,
                    "request.decision_refused",
                    format!(
                        "'{}' is in none of the approver groups of rule '{}' ({})",
                        who.subject,
                        row.rule_name,
                        row.approver_groups.join(", ")
                    ),
                )
                .await);
        }

        let vote = CastVote {
            row: row.clone(),
            subject: who.subject.clone(),
            by_requester: who.is_requester(&row.requester),
            choice: d.choice(),
            reason: d.reason.clone(),
            now,
        };
        let (resolved, after, members) = match self
            .store
            .write("committing decision", move |tx| {
                Box::pin(record_vote(tx, vote))
            })
            .await?
        {
            Voted::TooLate => return Err(self.resolved_error(&row.approval_id).await),
            Voted::Counted {
                resolved,
                after,
                members,
            } => (resolved, *after, members),
        };
        self.publish_members(&members).await;
        if resolved {
            let waited = now.saturating_sub(row.received_at_ms).max(0) as f64 / 1000.0;
            self.metrics.decision_seconds.observe(waited);
        }
        // The record as this decision left it: the reviewer's answer, and what this replica's
        // agent stream and watchers are sent, without reading the request back again.
        // A resolved request's group is what this transaction resolved with it; a vote's
        // record is read as it is.
        let record = self
            .record_counted(&after, resolved.then_some(members.len() as u32))
            .await;
        let event = Event::Request {
            approval_id: row.approval_id.clone(),
            host_id: row.host_id.clone(),
        };
        match &record {
            Ok(r) => {
                self.publish_snapshot(event, Some(Arc::new(r.clone())))
                    .await
            }
            Err(_) => self.publish(event).await,
        }
        let outcome = if approve { "allow" } else { "deny" };
        tracing::info!(approval_id = %row.approval_id, by = %who.subject, outcome, resolved, "decision");
        Ok((record?, resolved))
    }

    /// Tells this replica's streams, watchers and chat surfaces of requests that changed with
    /// the one a caller published (those merged into it).
    pub(crate) async fn publish_members(&self, rows: &[RequestRow]) {
        for r in rows {
            self.publish(Event::Request {
                approval_id: r.approval_id.clone(),
                host_id: r.host_id.clone(),
            })
            .await;
        }
    }

    /// How many approvals a request has so far (its `allow` votes).
    pub async fn approvals_so_far(&self, approval_id: &str) -> Result<u32> {
        let n = self.store.approvals(approval_id).await?;
        Ok(n.max(0) as u32)
    }

    /// How many requests are in each state.
    pub async fn requests_by_state(&self) -> Result<Vec<(String, i64)>> {
        Ok(self.store.requests_by_state().await?)
    }

    /// Records a refused decision in the audit trail and returns the refusal.
    /// The request a decision is about, when it can still be decided: it exists, is pending,
    /// and its deadline has not passed (a request found past it is expired on the spot).
    /// `row` is the row already read, if any.
    pub(crate) async fn decidable(
        &self,
        approval_id: &str,
        row: Option<RequestRow>,
    ) -> Result<RequestRow> {
        let row = match row {
            Some(r) => r,
            None => self
                .request_row(approval_id)
                .await?
                .ok_or_else(|| Error::NotFound(format!("request '{approval_id}'")))?,
        };
        if row.state != State::Pending {
            return Err(already(&row));
        }
        if !row.merged_into.is_empty() {
            // One decision for the group, on the request its reviewers see.
            return Err(Error::FailedPrecondition(format!(
                "request '{}' is identical to request '{}' and waits with it; decide '{}', which decides both",
                row.approval_id, row.merged_into, row.merged_into
            )));
        }
        if now_ms() >= row.expires_at_ms {
            self.expire_one(&row.approval_id).await?;
            return Err(Error::FailedPrecondition(format!(
                "request '{}' expired at {}",
                row.approval_id,
                crate::clock::rfc3339(row.expires_at_ms)
            )));
        }
        Ok(row)
    }

    async fn refuse(
        &self,
        who: &Identity,
        row: Option<&RequestRow>,
        d: &DecideInput,
        kind: &str,
        why: String,
    ) -> Error {
        let fact = AuditFact {
            kind: kind.into(),
            actor: who.subject.clone(),
            host_id: row.map(|r| r.host_id.clone()).unwrap_or_default(),
            request_id: d.approval_id.clone(),
            rule_name: row.map(|r| r.rule_name.clone()).unwrap_or_default(),
            workload: row.map(|r| r.workload.clone()).unwrap_or_default(),
            action: "refused".into(),
            payload: json!({"decision": d.kind.as_str_name(), "reason": d.reason, "refusal": why,
                "requester": row.map(|r| r.requester.clone()).unwrap_or_default()}),
            ..Default::default()
        };
        if let Err(e) = self.store.audit(&fact).await {
            tracing::warn!(error = %e, kind, "recording a refused decision failed");
        }
        Error::PermissionDenied(why)
    }

    async fn resolved_error(&self, approval_id: &str) -> Error {
        match self.request_row(approval_id).await {
            Ok(Some(row)) => already(&row),
            Ok(None) => Error::NotFound(format!("request '{approval_id}'")),
            Err(e) => e,
        }
    }

    /// An agent's request by its own id, or `NotFound` naming it.
    async fn agent_request(&self, host_id: &str, request_id: &str) -> Result<RequestRow> {
        self.request_by_agent_id(host_id, request_id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("request '{request_id}' of host '{host_id}'")))
    }

    /// The state of a request another transaction resolved while `tx` waited to lock it:
    /// `tx` (which wrote nothing) is committed first, as what resolved it may be in the same
    /// open batch.
    async fn state_after_losing(&self, tx: Tx, approval_id: &str) -> Result<State> {
        tx.commit().await.ctx("waiting for the resolution")?;
        Ok(self
            .request_row(approval_id)
            .await?
            .map(|r| r.state)
            .unwrap_or(State::Cancelled))
    }

    /// The agent reports the process went away.
    pub async fn cancel(&self, host_id: &str, request_id: &str, reason: &str) -> Result<State> {
        let row = self.agent_request(host_id, request_id).await?;
        if row.state != State::Pending {
            return Ok(row.state);
        }
        let now = now_ms();
        let mut tx = self.store.begin().await?;
        if lock_pending(&mut tx, &row.approval_id, now)
            .await?
            .is_none()
        {
            return self.state_after_losing(tx, &row.approval_id).await;
        }
        let reason = if reason.is_empty() {
            "the process went away"
        } else {
            reason
        };
        resolve_in(
            &mut tx,
            &row,
            State::Cancelled,
            "",
            &format!("host:{host_id}"),
            reason,
            None,
            serde_json::Value::Null,
            now,
        )
        .await?;
        let promoted = promote_in(&mut tx, &row, now).await?;
        tx.commit().await.ctx("committing cancellation")?;
        self.publish(Event::Request {
            approval_id: row.approval_id.clone(),
            host_id: host_id.to_string(),
        })
        .await;
        if !row.merged_into.is_empty() {
            // The count its group's messages show changed.
            self.publish(Event::Request {
                approval_id: row.merged_into.clone(),
                host_id: host_id.to_string(),
            })
            .await;
        }
        if let Some(next) = promoted {
            tracing::info!(approval_id = %next.approval_id, replaces = %row.approval_id, "an identical request takes the place of a cancelled one");
            if next.recommendation.is_empty() && self.auto_queue.is_some() {
                // The reviewer's answer on the cancelled request is lost with it.
                self.enqueue_auto_review(&next.approval_id);
            }
            self.publish_members(std::slice::from_ref(&next)).await;
        }
        Ok(State::Cancelled)
    }

    /// Adds the workload's justification to a request it submitted before saying anything:
    /// once, and only while the request waits (what reviewers decided on does not change).
    pub async fn justify(&self, host_id: &str, request_id: &str, text: &str) -> Result<State> {
        let row = self.agent_request(host_id, request_id).await?;
        let not_waiting = |state: State| {
            Error::FailedPrecondition(format!(
                "request '{request_id}' of host '{host_id}' is {}; a justification is taken only while it waits",
                state.as_str()
            ))
        };
        if row.state != State::Pending {
            return Err(not_waiting(row.state));
        }
        let now = now_ms();
        let mut tx = self.store.begin().await?;
        // The request reviewers see first, then this one, as every writer of a group locks it.
        // A first request that went away meanwhile leaves this one waiting alone, or with the
        // request promoted in its place (then nothing is shown there: not looked for again).
        let waits_with = match row.merged_into.as_str() {
            "" => None,
            first => lock_pending(&mut tx, first, now)
                .await?
                .map(|_| first.to_string()),
        };
        if lock_pending(&mut tx, &row.approval_id, now)
            .await?
            .is_none()
        {
            let state = self.state_after_losing(tx, &row.approval_id).await?;
            return Err(not_waiting(state));
        }
        // Read under the lock: two justifications at once cannot both find none.
        let (mut req, merged_into) = justification_of(&mut tx, &row.approval_id).await?;
        // Words shown here from an identical request give way to the request's own.
        if !req.justification.is_empty()
            && !shown_from_another(&mut tx, &row.approval_id, &req.justification).await?
        {
            return Err(Error::FailedPrecondition(format!(
                "request '{request_id}' of host '{host_id}' already has the workload's justification"
            )));
        }
        req.justification = text.to_string();
        store_justification(&mut tx, &row, &req, text, None, now).await?;
        // Reviewers decide the group on its first request: what an identical request says is
        // shown there too, unless the first has said something itself.
        let mut shown_on = None;
        if let Some(first) = waits_with.filter(|f| *f == merged_into) {
            let (mut first_req, _) = justification_of(&mut tx, &first).await?;
            if first_req.justification.is_empty() {
                first_req.justification = text.to_string();
                let first_row = RequestRow {
                    approval_id: first.clone(),
                    ..row.clone()
                };
                store_justification(
                    &mut tx,
                    &first_row,
                    &first_req,
                    text,
                    Some(&row.approval_id),
                    now,
                )
                .await?;
                shown_on = Some(first);
            }
        }
        tx.commit().await.ctx("committing the justification")?;
        for approval_id in std::iter::once(row.approval_id.clone()).chain(shown_on) {
            self.publish(Event::Request {
                approval_id,
                host_id: host_id.to_string(),
            })
            .await;
        }
        Ok(State::Pending)
    }

    /// Resolves one request by its rule's `on_timeout` if still pending.
    pub async fn expire_one(&self, approval_id: &str) -> Result<bool> {
        let Some(row) = self.request_row(approval_id).await? else {
            return Ok(false);
        };
        if row.state != State::Pending {
            return Ok(false);
        }
        let now = now_ms();
        let mut tx = self.store.begin().await?;
        let Some(locked) = lock_pending(&mut tx, approval_id, now).await? else {
            return Ok(false);
        };
        let reason = format!(
            "no decision within the rule's timeout; on_timeout: {}",
            row.on_timeout
        );
        let after = resolve_in(
            &mut tx,
            &row,
            State::Expired,
            &row.on_timeout,
            "timeout",
            &reason,
            None,
            serde_json::Value::Null,
            now,
        )
        .await?;
        let members = resolve_group_in(&mut tx, &after, locked, now).await?;
        tx.commit().await.ctx("committing expiry")?;
        self.publish_members(&members).await;
        self.publish(Event::Request {
            approval_id: row.approval_id.clone(),
            host_id: row.host_id.clone(),
        })
        .await;
        tracing::info!(approval_id, outcome = %row.on_timeout, "request expired");
        Ok(true)
    }

    /// Resolves every request past its deadline. Returns how many this replica resolved.
    pub async fn expire_due(&self) -> Result<usize> {
        let ids = self.store.due_requests(now_ms(), 500).await?;
        let mut n = 0;
        for id in ids {
            if self.expire_one(&id).await? {
                n += 1;
            }
        }
        Ok(n)
    }

    /// The earliest deadline of a pending request.
    pub async fn next_expiry(&self) -> Result<Option<i64>> {
        Ok(self.store.next_expiry().await?)
    }

    /// Decisions to replay to a reconnecting agent for the requests it still holds.
    pub async fn replay_decisions(
        &self,
        host_id: &str,
        pending: &[String],
    ) -> Result<Vec<Decision>> {
        let mut out = Vec::new();
        for id in pending {
            if let Some(row) = self.request_by_agent_id(host_id, id).await? {
                if let Some(d) = self.decision_of(&row).await? {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }
}

pub(crate) fn already(row: &RequestRow) -> Error {
    Error::FailedPrecondition(format!(
        "request '{}' is already {} (by {}: {})",
        row.approval_id,
        row.state.as_str(),
        if row.decided_by.is_empty() {
            "-"
        } else {
            &row.decided_by
        },
        row.reason
    ))
}

/// The grant an approval on `terms` creates (`None` for "approve once").
pub(crate) fn grant_for(
    row: &RequestRow,
    terms: Terms,
    granted_by: &str,
    now: i64,
) -> Option<Grant> {
    let Terms::For { scope, duration } = terms else {
        return None;
    };
    Some(Grant {
        grant_id: uuid::Uuid::new_v4().to_string(),
        scope: scope.to_proto() as i32,
        expires_at_unix_ms: now + duration.as_millis() as i64,
        host_id: row.host_id.clone(),
        rule_id: row.rule_id,
        rule_name: row.rule_name.clone(),
        workload: row.workload.clone(),
        tgid: if scope == Scope::Process { row.tgid } else { 0 },
        request_id: row.approval_id.clone(),
        granted_by: granted_by.to_string(),
        created_at_unix_ms: now,
        // A request central cannot read was refused at submission; were it to happen, the
        // grant covers the address alone.
        host_name: row
            .request()
            .map(|r| grants::covered_name(&r).to_string())
            .unwrap_or_default(),
        ..Default::default()
    })
}

/// Terms as the audit trail records them.
pub(crate) fn terms_json(t: Terms) -> serde_json::Value {
    match t {
        Terms::Once => json!({"kind": "approve_once"}),
        Terms::For { scope, duration } => json!({"kind": "approve_for",
            "scope": grants::scope_name(scope.to_proto()), "duration_seconds": duration.as_secs()}),
    }
}

/// A reviewer's vote on a request they may decide (checked by the caller).
struct CastVote {
    row: RequestRow,
    subject: String,
    by_requester: bool,
    choice: Choice,
    reason: String,
    now: i64,
}

/// What recording a vote came to.
enum Voted {
    /// The request was resolved before the vote could be counted.
    TooLate,
    /// Counted; `resolved` when it resolved the request, which `after` is as left by the vote,
    /// with the requests merged into it (`members`).
    Counted {
        resolved: bool,
        after: Box<RequestRow>,
        members: Vec<RequestRow>,
    },
}

/// Records a vote in `tx` and resolves the request (with its group) when the tally says so.
async fn record_vote(tx: &mut Tx, v: CastVote) -> Result<Voted> {
    let CastVote {
        row,
        subject,
        by_requester,
        choice,
        reason,
        now,
    } = v;
    let approve = matches!(choice, Choice::Approve(_));
    let Some(locked) = lock_pending(tx, &row.approval_id, now).await? else {
        // Committed (it wrote nothing): what resolved the request may be in the same open
        // batch, and the caller's read sees it once that is durable.
        return Ok(Voted::TooLate);
    };
    let (duration_ms, scope) = match choice {
        Choice::Approve(Terms::For { scope, duration }) => (
            duration.as_millis() as i64,
            grants::scope_name(scope.to_proto()),
        ),
        _ => (0, ""),
    };
    let outcome = if approve { "allow" } else { "deny" };
    let voted = Store::insert_vote(
        tx,
        &NewVote {
            approval_id: &row.approval_id,
            approver: &subject,
            outcome,
            reason: &reason,
            at_ms: now,
            kind: vote_kind(choice),
            scope,
            duration_ms,
            by_requester,
        },
    )
    .await?;
    if !voted {
        return Err(Error::FailedPrecondition(format!(
            "'{}' already voted on request '{}'; another approver is needed",
            subject, row.approval_id
        )));
    }
    let ballot = Ballot {
        approver: subject.clone(),
        choice,
        by_requester,
    };
    // Most votes decide on their own (a denial, the one approval needed): the others are
    // read back only where they could change the count.
    let counted = match decides_alone(row.approvers_needed, &ballot) {
        Some(t) => t,
        None => tally(
            row.approvers_needed,
            &ballots_in(tx, &row.approval_id).await?,
        ),
    };
    // The row as this transaction leaves it, so that the answer needs no read of it.
    let (resolved, after) = match counted {
        Tally::Approved { terms, approvers } => {
            let grant = grant_for(&row, terms, &subject, now);
            let after = resolve_in(
                tx,
                &row,
                State::Approved,
                "allow",
                &subject,
                &reason,
                grant.as_ref(),
                json!({"approvers": approvers, "terms": terms_json(terms)}),
                now,
            )
            .await?;
            // People approved it: its name, if it was held as new, is no longer new.
            crate::known_names::remember_in(tx, &row, &subject, now).await?;
            (true, after)
        }
        Tally::Denied { by } => {
            let after = resolve_in(
                tx,
                &row,
                State::Denied,
                "deny",
                &by,
                &reason,
                None,
                serde_json::Value::Null,
                now,
            )
            .await?;
            (true, after)
        }
        Tally::Pending { approvals } => {
            let terms = match choice {
                Choice::Approve(t) => terms_json(t),
                Choice::Deny => serde_json::Value::Null,
            };
            Store::audit_in(
                tx,
                &AuditFact {
                    kind: "request.vote".into(),
                    actor: subject.clone(),
                    host_id: row.host_id.clone(),
                    request_id: row.approval_id.clone(),
                    rule_name: row.rule_name.clone(),
                    workload: row.workload.clone(),
                    payload: json!({"outcome": outcome, "reason": reason, "votes": approvals,
                        "needed": row.approvers_needed, "terms": terms,
                        "by_requester": by_requester}),
                    time_ms: now,
                    ..Default::default()
                },
            )
            .await?;
            (false, row.clone())
        }
    };
    let members = resolve_group_in(tx, &after, locked, now).await?;
    Ok(Voted::Counted {
        resolved,
        after: Box::new(after),
        members,
    })
}

/// A held operation to store, with what was worked out of it before its transaction.
struct Submitted {
    approval_id: String,
    host_id: String,
    req: ApprovalRequest,
    terms: RuleTerms,
    step: PolicyStep,
    merge_key: String,
    now: i64,
    expires: i64,
}

/// What storing a held operation came to.
enum Stored {
    /// Another call stored the same request first.
    Duplicate,
    /// The review chain decided it as it was stored.
    Decided {
        after: RequestRow,
        by: String,
        outcome: &'static str,
    },
    /// It waits for people, alone or merged into an identical pending request (with that
    /// request's deadline, which is its own then).
    Pending {
        row: RequestRow,
        merged_into: Option<(String, i64)>,
    },
}

/// Stores a held operation in `tx`: the request, its first transition and audit records, and
/// what the review chain decided of it at once.
async fn store_request(tx: &mut Tx, s: Submitted) -> Result<Stored> {
    let Submitted {
        approval_id,
        host_id,
        req,
        terms,
        step,
        merge_key,
        now,
        mut expires,
    } = s;
    // What its review chain decides at once is never merged: it waits for nobody.
    let merged_into = match step.resolution {
        Some(_) => None,
        None => group_to_join(tx, &merge_key, now).await?,
    };
    if let Some((_, deadline)) = &merged_into {
        // It waits with the request reviewers see, and is resolved with it.
        expires = *deadline;
    }
    let inserted = Store::insert_request(
        tx,
        &NewRequest {
            approval_id: &approval_id,
            host_id: &host_id,
            request_id: &req.request_id,
            requester: &req.requester,
            rule_id: req.rule_id,
            rule_name: &terms.rule_name,
            workload: &terms.workload,
            tgid: req.tgid,
            context: req.encode_to_vec(),
            received_at_ms: now,
            expires_at_ms: expires,
            on_timeout: terms.on_timeout,
            approvers_needed: terms.approvers_needed,
            approver_groups_json: serde_json::to_string(&terms.groups)
                .unwrap_or_else(|_| "[]".into()),
            merge_key: &merge_key,
            merged_into: merged_into.as_ref().map(|(p, _)| p.as_str()).unwrap_or(""),
        },
    )
    .await?;
    if !inserted {
        // Submitted twice at once: the other call stored it. Committed, not dropped: on
        // SQLite the other call's row may be in the same open batch, and the caller's read
        // (another connection) sees it only once that batch is committed.
        return Ok(Stored::Duplicate);
    }
    let actor = created_by(&host_id);
    Store::insert_transition(
        tx,
        &approval_id,
        "",
        State::Pending,
        &actor,
        CREATED_REASON,
        now,
    )
    .await?;
    Store::audit_in(
        tx,
        &AuditFact {
            kind: "request.created".into(),
            actor: actor.clone(),
            host_id: host_id.clone(),
            request_id: approval_id.clone(),
            rule_name: terms.rule_name.clone(),
            workload: terms.workload.clone(),
            payload: request_summary(&req, expires, terms.on_timeout, terms.approvers_needed),
            time_ms: now,
            ..Default::default()
        },
    )
    .await?;
    if let Some((check, why, failed)) = step.failed {
        // A check that could not be evaluated stays on the record of the request, whoever
        // or whatever decides it.
        tracing::warn!(%approval_id, %check, error = %why, "policy check could not be evaluated; it ends the policy step");
        Store::audit_in(
            tx,
            &AuditFact {
                kind: "request.policy_failed".into(),
                actor: check,
                host_id: host_id.clone(),
                request_id: approval_id.clone(),
                rule_name: terms.rule_name.clone(),
                workload: terms.workload.clone(),
                payload: failed,
                time_ms: now,
                ..Default::default()
            },
        )
        .await?;
    }
    // As stored: what the answer and the record published of it are made from.
    let row = RequestRow {
        approval_id: approval_id.clone(),
        host_id: host_id.clone(),
        request_id: req.request_id.clone(),
        state: State::Pending,
        requester: req.requester.clone(),
        rule_id: req.rule_id,
        rule_name: terms.rule_name.clone(),
        workload: terms.workload.clone(),
        tgid: req.tgid,
        context: Vec::new(),
        received_at_ms: now,
        expires_at_ms: expires,
        on_timeout: terms.on_timeout.to_string(),
        approvers_needed: terms.approvers_needed,
        approver_groups: terms.groups.clone(),
        decided_at_ms: 0,
        decided_by: String::new(),
        outcome: String::new(),
        reason: String::new(),
        grant_id: String::new(),
        recommendation: String::new(),
        merged_into: merged_into
            .as_ref()
            .map(|(p, _)| p.clone())
            .unwrap_or_default(),
    };
    // Decided in the same transaction as it is stored: no person can see it in between.
    if let Some(auto) = step.resolution {
        let (to, outcome) = if auto.approve {
            (State::Approved, "allow")
        } else {
            (State::Denied, "deny")
        };
        let after = resolve_in(
            tx,
            &row,
            to,
            outcome,
            &auto.actor,
            &auto.reason,
            None,
            auto.detail,
            now,
        )
        .await?;
        return Ok(Stored::Decided {
            after,
            by: auto.actor,
            outcome,
        });
    }
    if let Some((primary, _)) = &merged_into {
        Store::audit_in(
            tx,
            &AuditFact {
                kind: "request.merged".into(),
                actor: actor.clone(),
                host_id: host_id.clone(),
                request_id: approval_id.clone(),
                rule_name: terms.rule_name.clone(),
                workload: terms.workload.clone(),
                payload: json!({ "merged_into": primary, "expires_at_unix_ms": expires }),
                time_ms: now,
                ..Default::default()
            },
        )
        .await?;
    }
    Ok(Stored::Pending { row, merged_into })
}

/// How many `allow` votes a request has, read in `tx`, which holds the request.
pub(crate) async fn approvals_of(tx: &mut Tx, approval_id: &str) -> Result<i64> {
    Ok(Store::approvals_in(tx, approval_id).await?)
}

/// The pending request reviewers see that a new request with `merge_key` joins, with its
/// deadline; locked for the rest of `tx` (a decision of it in another transaction either comes
/// first, and the new request waits alone, or waits for this one and resolves it too).
async fn group_to_join(tx: &mut Tx, merge_key: &str, now: i64) -> Result<Option<(String, i64)>> {
    // Two identical requests submitted at once on PostgreSQL would each find no group and each
    // start one: the second waits here for the first to commit, then finds it.
    tx.serialize_on(
        crate::merge::lock_id(merge_key),
        "waiting for identical requests",
    )
    .await?;
    // The group found may be resolved before its lock is taken; a cancellation then promotes
    // the next request in its place, which is looked for again (boundedly: each round some
    // request of the group left it).
    for _ in 0..8 {
        let Some((id, deadline)) = Store::pending_with_key(tx, merge_key, now).await? else {
            return Ok(None);
        };
        if lock_pending(tx, &id, now).await?.is_some() {
            return Ok(Some((id, deadline)));
        }
    }
    Ok(None)
}

/// The requests merged into `primary` (as this transaction just resolved it), resolved the same
/// way: one decision of what reviewers saw covers every identical request waiting with it. A
/// grant the decision made is the primary's; the others are each let through (or not) once.
pub(crate) async fn resolve_group_in(
    tx: &mut Tx,
    primary: &RequestRow,
    locked: Locked,
    now: i64,
) -> Result<Vec<RequestRow>> {
    // Looked up by id whatever `primary.merged_into` says: the row may have been read before
    // this transaction's lock, when it still waited with another request. None joins the
    // group while it is locked.
    if primary.state == State::Pending || locked.members == 0 {
        return Ok(Vec::new());
    }
    let rows = Store::pending_members_in(tx, &primary.approval_id, false).await?;
    let mut out = Vec::with_capacity(rows.len());
    for member in rows {
        out.push(
            resolve_in(
                tx,
                &member,
                primary.state,
                &primary.outcome,
                &primary.decided_by,
                &primary.reason,
                None,
                json!({ "merged_into": primary.approval_id }),
                now,
            )
            .await?,
        );
    }
    Ok(out)
}

/// When the request reviewers see of a group goes away without a decision (its process ended),
/// the oldest request still waiting with it takes its place, with its votes, its automatic
/// reviewer's answer and the words shown from the others, and the others wait with that one.
/// Returns the new one.
pub(crate) async fn promote_in(
    tx: &mut Tx,
    gone: &RequestRow,
    now: i64,
) -> Result<Option<RequestRow>> {
    // Looked up by id whatever `gone.merged_into` says (see `resolve_group_in`).
    let Some(next) = Store::pending_members_in(tx, &gone.approval_id, true)
        .await?
        .into_iter()
        .next()
    else {
        return Ok(None);
    };
    // Read under the lock: `gone` may have been read before its reviewer answered.
    let recommendation = Store::recommendation_in(tx, &gone.approval_id).await?;
    // Reviewers voted on the operation, which is the same: their votes stand.
    Store::promote_request(
        tx,
        &gone.approval_id,
        &next.approval_id,
        &recommendation,
        now,
    )
    .await?;
    Store::audit_in(
        tx,
        &AuditFact {
            kind: "request.promoted".into(),
            actor: format!("host:{}", gone.host_id),
            host_id: next.host_id.clone(),
            request_id: next.approval_id.clone(),
            rule_name: next.rule_name.clone(),
            workload: next.workload.clone(),
            payload: json!({ "replaces": gone.approval_id }),
            time_ms: now,
            ..Default::default()
        },
    )
    .await?;
    // Words an identical request gave were shown on the one that went away: they are shown on
    // the one reviewers now decide, unless it has said something itself (as `justify` does).
    // The words shown stay if the request that gave them still waits; else the oldest words a
    // waiting request gave take their place.
    let (mut next_req, _) = justification_of(tx, &next.approval_id).await?;
    if next_req.justification.is_empty() {
        let shown = justification_of(tx, &gone.approval_id)
            .await?
            .0
            .justification;
        let mut pick: Option<(String, String)> = None;
        for member in Store::pending_members_in(tx, &next.approval_id, false).await? {
            let text = justification_of(tx, &member.approval_id)
                .await?
                .0
                .justification;
            if text.is_empty() {
                continue;
            }
            let was_shown = text == shown;
            if was_shown || pick.is_none() {
                pick = Some((member.approval_id, text));
            }
            if was_shown {
                break;
            }
        }
        if let Some((from, text)) = pick {
            next_req.justification = text.clone();
            store_justification(tx, &next, &next_req, &text, Some(&from), now).await?;
        }
    }
    Ok(Some(RequestRow {
        merged_into: String::new(),
        recommendation,
        ..next
    }))
}

/// A request's stored context and the request it waits with, read in `tx` (under its lock).
async fn justification_of(tx: &mut Tx, approval_id: &str) -> Result<(ApprovalRequest, String)> {
    let (context, merged_into) = Store::context_in(tx, approval_id).await?;
    let req = ApprovalRequest::decode(context.as_slice()).map_err(|e| {
        crate::store::StoreError::Corrupt {
            what: format!("request {approval_id}"),
            message: e.to_string(),
        }
    })?;
    Ok((req, merged_into))
}

/// Whether `text`, the justification of `approval_id`, is one a request waiting with it gave
/// (and [`Central::justify`] showed on it), not its own.
async fn shown_from_another(tx: &mut Tx, approval_id: &str, text: &str) -> Result<bool> {
    for member in Store::member_ids_in(tx, approval_id).await? {
        if justification_of(tx, &member).await?.0.justification == text {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Stores `req` (with the workload's justification `text`) as `row`'s context, and its audit
/// record; `from`: the identical request that said it, when not `row` itself.
async fn store_justification(
    tx: &mut Tx,
    row: &RequestRow,
    req: &ApprovalRequest,
    text: &str,
    from: Option<&str>,
    now: i64,
) -> Result<()> {
    Store::set_context(tx, &row.approval_id, &req.encode_to_vec()).await?;
    let mut payload = json!({ "justification": text });
    if let Some(from) = from {
        payload["from"] = json!(from);
    }
    Store::audit_in(
        tx,
        &AuditFact {
            kind: "request.justified".into(),
            actor: format!("host:{}", row.host_id),
            host_id: row.host_id.clone(),
            request_id: row.approval_id.clone(),
            rule_name: row.rule_name.clone(),
            workload: row.workload.clone(),
            payload,
            time_ms: now,
            ..Default::default()
        },
    )
    .await?;
    Ok(())
}

/// Whether requests can be waiting with `row` (or have been resolved with it): not when it
/// waits with another itself, nor once cancelled (those waiting with it moved on).
/// A request's record from what was read or written of it.
fn assemble_record(
    row: &RequestRow,
    request: ApprovalRequest,
    votes: Vec<Vote>,
    transitions: Vec<Transition>,
    decision: Option<Decision>,
    merged: u32,
) -> ApprovalRecord {
    ApprovalRecord {
        approval_id: row.approval_id.clone(),
        state: row.state.to_proto() as i32,
        request: Some(request),
        received_at_unix_ms: row.received_at_ms,
        expires_at_unix_ms: row.expires_at_ms,
        on_timeout: proto_outcome(&row.on_timeout) as i32,
        approvers_needed: row.approvers_needed,
        approver_groups: row.approver_groups.clone(),
        votes,
        transitions,
        decision,
        recommendation: serde_json::from_str::<crate::auto_protocol::Recommendation>(
            &row.recommendation,
        )
        .ok()
        .map(|r| r.to_proto()),
        merged,
        merged_into: row.merged_into.clone(),
    }
}

/// The record of a request just stored pending on its own, as its transaction wrote it: no
/// vote, its one transition, nobody waiting with it yet.
pub(crate) fn created_record(row: &RequestRow, request: ApprovalRequest) -> ApprovalRecord {
    let created = Transition {
        from: RequestState::Unspecified as i32,
        to: RequestState::Pending as i32,
        actor: created_by(&row.host_id),
        reason: CREATED_REASON.into(),
        at_unix_ms: row.received_at_ms,
    };
    assemble_record(row, request, Vec::new(), vec![created], None, 0)
}

/// Whether `r` is a record as [`created_record`] makes it.
pub(crate) fn is_created_record(r: &ApprovalRecord) -> bool {
    r.state == RequestState::Pending as i32
        && r.votes.is_empty()
        && r.transitions.len() == 1
        && r.merged == 0
        && r.merged_into.is_empty()
}

/// Who a request's first transition names.
fn created_by(host_id: &str) -> String {
    format!("host:{host_id}")
}

/// The reason of a request's first transition.
const CREATED_REASON: &str = "requested";

fn counts_merged(row: &RequestRow) -> bool {
    row.merged_into.is_empty() && row.state != State::Cancelled
}

/// Locks a pending request for the rest of `tx`, then the requests waiting with it; false when
/// it is no longer pending. Always in that order and before any audit record is written, so that
/// a transaction on the group and one on a single request of it (a cancellation, a
/// justification) cannot each hold what the other waits for.
pub(crate) async fn lock_pending(
    tx: &mut Tx,
    approval_id: &str,
    now: i64,
) -> Result<Option<Locked>> {
    Ok(Store::lock_pending(tx, approval_id, now)
        .await?
        .map(|members| Locked { members }))
}

/// What [`lock_pending`] locked: a pending request, and this many requests waiting with it.
/// Resolving the group takes it, so that a group is resolved only under its lock, and its
/// members are read only when there are any.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Locked {
    members: u64,
}

/// Moves a locked pending request to a final state, with its transition, grant and audit.
/// Returns the row as the store now holds it, so that callers need not read it back.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn resolve_in(
    tx: &mut Tx,
    row: &RequestRow,
    to: State,
    outcome: &str,
    actor: &str,
    reason: &str,
    grant: Option<&Grant>,
    detail: serde_json::Value,
    now: i64,
) -> Result<RequestRow> {
    let grant_id = grant.map(|g| g.grant_id.clone()).unwrap_or_default();
    let resolved = Store::resolve_request(
        tx,
        &Resolution {
            approval_id: &row.approval_id,
            to,
            at_ms: now,
            actor,
            outcome,
            reason,
            grant_id: &grant_id,
        },
    )
    .await?;
    if !resolved {
        return Err(Error::FailedPrecondition(format!(
            "request '{}' is no longer pending",
            row.approval_id
        )));
    }
    Store::insert_transition(tx, &row.approval_id, "pending", to, actor, reason, now).await?;
    if let Some(g) = grant {
        grants::insert_in(tx, g).await?;
    }
    Store::audit_in(
        tx,
        &AuditFact {
            kind: format!("request.{}", to.as_str()),
            actor: actor.to_string(),
            host_id: row.host_id.clone(),
            request_id: row.approval_id.clone(),
            grant_id: grant_id.clone(),
            rule_name: row.rule_name.clone(),
            workload: row.workload.clone(),
            action: outcome.to_string(),
            payload: {
                let mut p = json!({"outcome": outcome, "reason": reason,
                    "agent_request_id": row.request_id, "requester": row.requester});
                if let (Some(p), serde_json::Value::Object(more)) = (p.as_object_mut(), detail) {
                    p.extend(more);
                }
                p
            },
            time_ms: now,
            ..Default::default()
        },
    )
    .await?;
    Ok(RequestRow {
        state: to,
        decided_at_ms: now,
        decided_by: actor.to_string(),
        outcome: outcome.to_string(),
        reason: reason.to_string(),
        grant_id,
        ..row.clone()
    })
}

pub(crate) fn request_summary(
    req: &ApprovalRequest,
    expires: i64,
    on_timeout: &str,
    needed: u32,
) -> serde_json::Value {
    let op = Op::try_from(req.op)
        .unwrap_or(Op::Unspecified)
        .as_str_name();
    let dest: HashMap<&str, serde_json::Value> = req
        .destination
        .as_ref()
        .map(|d| {
            HashMap::from([
                ("family", json!(d.family)),
                ("address", json!(d.address)),
                ("port", json!(d.port)),
                ("protocol", json!(d.protocol)),
                ("host_name", json!(d.host_name)),
            ])
        })
        .unwrap_or_default();
    json!({
        "agent_request_id": req.request_id,
        "op": op,
        "pid": req.pid, "tgid": req.tgid, "ppid": req.ppid, "uid": req.uid, "gid": req.gid,
        "user": req.user, "group": req.group, "cgroup_id": req.cgroup_id, "cgroup_path": req.cgroup_path,
        "unit": req.unit, "comm": req.comm, "exe": req.exe, "argv": req.argv,
        "ancestors": req.ancestors.iter().map(|a| json!({"pid": a.pid, "exe": a.exe, "argv": a.argv})).collect::<Vec<_>>(),
        "destination": dest, "exec_path": req.exec_path,
        "rule_id": req.rule_id, "rules_version": req.rules_version,
        "requester": req.requester, "created_at_unix_ms": req.created_at_unix_ms,
        "env": req.env.iter().map(|v| json!({"name": v.name, "value": v.value})).collect::<Vec<_>>(),
        "trace": req.trace.as_ref().map(|t| json!({"trace_id": t.trace_id, "parent_id": t.parent_id, "sampled": t.sampled})),
        "expires_at_unix_ms": expires, "on_timeout": on_timeout, "approvers_needed": needed,
    })
}
