//! The approval tables: `requests` (one row per request an agent sent, with its state, its
//! deadline and the group of identical requests it waits with), `votes` and `transitions`.
//! Their statements are here, but for the automatic reviewer's answer on a request
//! (`store::recommendations`); what a vote counts for, who may cast it and when a request
//! resolves is `crate::approval`'s and `crate::tally`'s.

use sqlx::{any::AnyRow, Row};

use super::{QueryContext, Store, StoreError, Tx};

/// A request's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Waiting for a decision.
    Pending,
    /// Approved by enough approvers.
    Approved,
    /// Denied by an approver.
    Denied,
    /// Nobody decided in time; the rule's `on_timeout` applied.
    Expired,
    /// The process went away first.
    Cancelled,
}

impl State {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Approved => "approved",
            State::Denied => "denied",
            State::Expired => "expired",
            State::Cancelled => "cancelled",
        }
    }

    /// From the stored name.
    pub fn parse(s: &str) -> Option<State> {
        Some(match s {
            "pending" => State::Pending,
            "approved" => State::Approved,
            "denied" => State::Denied,
            "expired" => State::Expired,
            "cancelled" => State::Cancelled,
            _ => return None,
        })
    }
}

/// A stored request.
#[derive(Clone, Debug)]
pub struct RequestRow {
    /// Central's id.
    pub approval_id: String,
    /// Host.
    pub host_id: String,
    /// The agent's id.
    pub request_id: String,
    /// State.
    pub state: State,
    /// Workload identity that asked.
    pub requester: String,
    /// Rule.
    pub rule_id: u32,
    /// Rule name.
    pub rule_name: String,
    /// Workload.
    pub workload: String,
    /// Process.
    pub tgid: u32,
    /// The request as the agent sent it (protobuf).
    pub context: Vec<u8>,
    /// Received.
    pub received_at_ms: i64,
    /// Expires.
    pub expires_at_ms: i64,
    /// `allow` or `deny` at expiry.
    pub on_timeout: String,
    /// Distinct approvers needed.
    pub approvers_needed: u32,
    /// Groups approvers must be in (any, when empty).
    pub approver_groups: Vec<String>,
    /// Decided.
    pub decided_at_ms: i64,
    /// By.
    pub decided_by: String,
    /// `allow`, `deny` or empty.
    pub outcome: String,
    /// Why.
    pub reason: String,
    /// Grant created by the decision.
    pub grant_id: String,
    /// What the automatic reviewer said (JSON of `crate::auto_protocol::Recommendation`), empty until then.
    pub recommendation: String,
    /// The request this one waits with, identical to it (see `crate::merge`); empty for a
    /// request reviewers see and decide.
    pub merged_into: String,
}

const REQUEST_COLUMNS: &str =
    "approval_id, host_id, request_id, state, requester, rule_id, rule_name,
    workload, tgid, context, received_at_ms, expires_at_ms, on_timeout, approvers_needed,
    approver_groups_json, decided_at_ms, decided_by, outcome, reason, grant_id, recommendation,
    merged_into";

fn request_row(r: &AnyRow) -> Result<RequestRow, sqlx::Error> {
    let state: String = r.try_get("state")?;
    let groups: String = r.try_get("approver_groups_json")?;
    Ok(RequestRow {
        approval_id: r.try_get("approval_id")?,
        host_id: r.try_get("host_id")?,
        request_id: r.try_get("request_id")?,
        state: State::parse(&state)
            .ok_or_else(|| sqlx::Error::Decode(format!("state '{state}'").into()))?,
        requester: r.try_get("requester")?,
        rule_id: r.try_get::<i64, _>("rule_id")? as u32,
        rule_name: r.try_get("rule_name")?,
        workload: r.try_get("workload")?,
        tgid: r.try_get::<i64, _>("tgid")? as u32,
        context: r.try_get("context")?,
        received_at_ms: r.try_get("received_at_ms")?,
        expires_at_ms: r.try_get("expires_at_ms")?,
        on_timeout: r.try_get("on_timeout")?,
        approvers_needed: r.try_get::<i64, _>("approvers_needed")? as u32,
        approver_groups: serde_json::from_str(&groups)
            .map_err(|e| sqlx::Error::Decode(format!("approver groups '{groups}': {e}").into()))?,
        decided_at_ms: r.try_get("decided_at_ms")?,
        decided_by: r.try_get("decided_by")?,
        outcome: r.try_get("outcome")?,
        reason: r.try_get("reason")?,
        grant_id: r.try_get("grant_id")?,
        recommendation: r.try_get("recommendation")?,
        merged_into: r.try_get("merged_into")?,
    })
}

/// A request to store, `pending`.
pub struct NewRequest<'a> {
    /// Central's id.
    pub approval_id: &'a str,
    /// Host.
    pub host_id: &'a str,
    /// The agent's id.
    pub request_id: &'a str,
    /// Workload identity that asked.
    pub requester: &'a str,
    /// Rule.
    pub rule_id: u32,
    /// Rule name.
    pub rule_name: &'a str,
    /// Workload.
    pub workload: &'a str,
    /// Process.
    pub tgid: u32,
    /// The request as the agent sent it (protobuf).
    pub context: Vec<u8>,
    /// Received (Unix ms).
    pub received_at_ms: i64,
    /// Expires (Unix ms).
    pub expires_at_ms: i64,
    /// `allow` or `deny` at expiry.
    pub on_timeout: &'a str,
    /// Distinct approvers needed.
    pub approvers_needed: u32,
    /// Groups approvers must be in (JSON array).
    pub approver_groups_json: String,
    /// What identical requests share (see `crate::merge`).
    pub merge_key: &'a str,
    /// The request it waits with; empty for one reviewers see.
    pub merged_into: &'a str,
}

/// A vote to record.
pub struct NewVote<'a> {
    /// The request.
    pub approval_id: &'a str,
    /// Who.
    pub approver: &'a str,
    /// `allow` or `deny`.
    pub outcome: &'a str,
    /// Why.
    pub reason: &'a str,
    /// When (Unix ms).
    pub at_ms: i64,
    /// `approve_once`, `approve_for` or `deny`.
    pub kind: &'a str,
    /// A grant's scope (`approve_for`), else empty.
    pub scope: &'a str,
    /// A grant's duration (`approve_for`), else 0.
    pub duration_ms: i64,
    /// Whether the voter is the one who asked.
    pub by_requester: bool,
}

/// A stored vote, as the tally reads it.
pub struct VoteRow {
    /// Who.
    pub approver: String,
    /// `allow` or `deny`.
    pub outcome: String,
    /// `approve_once`, `approve_for`, `deny` (empty on votes from before terms were stored).
    pub kind: String,
    /// A grant's scope, or empty.
    pub scope: String,
    /// A grant's duration, or 0.
    pub duration_ms: i64,
    /// Whether the voter is the one who asked.
    pub by_requester: bool,
}

/// One entry of a request's history: a vote or a state transition.
pub enum History {
    /// A vote.
    Vote {
        /// Who.
        approver: String,
        /// `allow` or `deny`.
        outcome: String,
        /// Why.
        reason: String,
        /// When (Unix ms).
        at_ms: i64,
    },
    /// A change of state.
    Transition {
        /// From (empty for the first).
        from: String,
        /// To.
        to: String,
        /// Who or what.
        actor: String,
        /// Why.
        reason: String,
        /// When (Unix ms).
        at_ms: i64,
    },
}

/// A resolution to record on a locked pending request.
pub struct Resolution<'a> {
    /// The request.
    pub approval_id: &'a str,
    /// Its final state.
    pub to: State,
    /// When (Unix ms).
    pub at_ms: i64,
    /// Who or what decided.
    pub actor: &'a str,
    /// `allow` or `deny`.
    pub outcome: &'a str,
    /// Why.
    pub reason: &'a str,
    /// The grant the decision made, or empty.
    pub grant_id: &'a str,
}

fn history(r: &AnyRow) -> Result<History, sqlx::Error> {
    let part: i64 = r.try_get("part")?;
    Ok(match part {
        0 => History::Vote {
            approver: r.try_get("who")?,
            outcome: r.try_get("a")?,
            reason: r.try_get("reason")?,
            at_ms: r.try_get("at_ms")?,
        },
        _ => History::Transition {
            from: r.try_get("a")?,
            to: r.try_get("b")?,
            actor: r.try_get("who")?,
            reason: r.try_get("reason")?,
            at_ms: r.try_get("at_ms")?,
        },
    })
}

fn vote_row(r: &AnyRow) -> Result<VoteRow, sqlx::Error> {
    Ok(VoteRow {
        approver: r.try_get("approver")?,
        outcome: r.try_get("outcome")?,
        kind: r.try_get("kind")?,
        scope: r.try_get("scope")?,
        duration_ms: r.try_get("duration_ms")?,
        by_requester: r.try_get::<i64, _>("by_requester")? != 0,
    })
}

fn request_rows(rows: &[AnyRow], what: &str) -> Result<Vec<RequestRow>, StoreError> {
    rows.iter()
        .map(request_row)
        .collect::<Result<_, _>>()
        .ctx(what)
}

/// How many `allow` votes a request has, read through `on`: the pool, or a transaction.
async fn count_approvals<'e>(
    on: impl sqlx::Executor<'e, Database = sqlx::Any>,
    approval_id: &str,
) -> Result<i64, StoreError> {
    let what = || format!("counting votes of {approval_id}");
    sqlx::query("SELECT COUNT(*) AS n FROM votes WHERE approval_id = $1 AND outcome = 'allow'")
        .bind(approval_id)
        .fetch_one(on)
        .await
        .ctx(what())?
        .try_get("n")
        .ctx(what())
}

impl Store {
    /// A request by central's id.
    pub async fn request(&self, approval_id: &str) -> Result<Option<RequestRow>, StoreError> {
        let sql = format!("SELECT {REQUEST_COLUMNS} FROM requests WHERE approval_id = $1");
        let row = sqlx::query(&sql)
            .bind(approval_id)
            .fetch_optional(self.pool())
            .await
            .ctx(format!("reading request {approval_id}"))?;
        row.as_ref()
            .map(request_row)
            .transpose()
            .ctx(format!("decoding request {approval_id}"))
    }

    /// A request by its host and the agent's id.
    pub async fn request_by_agent_id(
        &self,
        host_id: &str,
        request_id: &str,
    ) -> Result<Option<RequestRow>, StoreError> {
        let sql = format!(
            "SELECT {REQUEST_COLUMNS} FROM requests WHERE host_id = $1 AND request_id = $2"
        );
        let row = sqlx::query(&sql)
            .bind(host_id)
            .bind(request_id)
            .fetch_optional(self.pool())
            .await
            .ctx(format!("reading request {host_id}/{request_id}"))?;
        row.as_ref()
            .map(request_row)
            .transpose()
            .ctx(format!("decoding request {host_id}/{request_id}"))
    }

    /// What a submission needs first, in one read: the labels of `host_id` (`None` when the host
    /// is not registered) and the request it already submitted as `request_id`, if any.
    pub async fn submission(
        &self,
        host_id: &str,
        request_id: &str,
    ) -> Result<Option<(String, Option<RequestRow>)>, StoreError> {
        static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            let columns: Vec<String> = REQUEST_COLUMNS
                .split(',')
                .map(|c| format!("r.{c} AS {c}", c = c.trim()))
                .collect();
            format!(
                "SELECT h.labels_json AS host_labels_json, {} FROM hosts h
                 LEFT JOIN requests r ON r.host_id = h.host_id AND r.request_id = $2
                 WHERE h.host_id = $1",
                columns.join(", ")
            )
        });
        let Some(r) = sqlx::query(&SQL)
            .bind(host_id)
            .bind(request_id)
            .fetch_optional(self.pool())
            .await
            .ctx(format!(
                "reading host {host_id} and its request {request_id}"
            ))?
        else {
            return Ok(None);
        };
        let labels: String = r
            .try_get("host_labels_json")
            .ctx(format!("reading the labels of host {host_id}"))?;
        let found: Option<String> = r
            .try_get("approval_id")
            .ctx(format!("reading request {host_id}/{request_id}"))?;
        let existing = match found {
            Some(_) => {
                Some(request_row(&r).ctx(format!("decoding request {host_id}/{request_id}"))?)
            }
            None => None,
        };
        Ok(Some((labels, existing)))
    }

    /// Requests, newest first, in `state` (any when empty) on `host_id` (any when empty); of
    /// pending ones, only those reviewers see.
    pub async fn requests(
        &self,
        state: &str,
        host_id: &str,
        limit: i64,
    ) -> Result<Vec<RequestRow>, StoreError> {
        let sql = format!(
            "SELECT {REQUEST_COLUMNS} FROM requests WHERE ($1 = '' OR state = $1) AND ($2 = '' OR host_id = $2)
                AND (state <> 'pending' OR merged_into = '')
             ORDER BY received_at_ms DESC, approval_id LIMIT $3"
        );
        let rows = sqlx::query(&sql)
            .bind(state)
            .bind(host_id)
            .bind(limit)
            .fetch_all(self.pool())
            .await
            .ctx("listing requests")?;
        request_rows(&rows, "decoding request")
    }

    /// Stores a pending request; `false` when one with the same host and agent id exists.
    pub async fn insert_request(tx: &mut Tx, r: &NewRequest<'_>) -> Result<bool, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO requests (approval_id, host_id, request_id, state, requester, rule_id, rule_name,
                workload, tgid, context, received_at_ms, expires_at_ms, on_timeout, approvers_needed,
                approver_groups_json, updated_at_ms, merge_key, merged_into)
             VALUES ($1, $2, $3, 'pending', $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $10, $15, $16)
             ON CONFLICT (host_id, request_id) DO NOTHING",
        )
        .bind(r.approval_id)
        .bind(r.host_id)
        .bind(r.request_id)
        .bind(r.requester)
        .bind(r.rule_id as i64)
        .bind(r.rule_name)
        .bind(r.workload)
        .bind(r.tgid as i64)
        .bind(r.context.as_slice())
        .bind(r.received_at_ms)
        .bind(r.expires_at_ms)
        .bind(r.on_timeout)
        .bind(r.approvers_needed as i64)
        .bind(&r.approver_groups_json)
        .bind(r.merge_key)
        .bind(r.merged_into)
        .execute(&mut **tx)
        .await
        .ctx(format!("storing request {}/{}", r.host_id, r.request_id))?;
        Ok(inserted.rows_affected() > 0)
    }

    /// A request's votes (by time and approver), then its transitions (in the order they were
    /// written), and with `merged_in`, how many requests waiting with it are in that state: in
    /// one round trip.
    pub async fn request_history(
        &self,
        approval_id: &str,
        merged_in: Option<State>,
    ) -> Result<(Vec<History>, Option<i64>), StoreError> {
        const VOTES_AND_TRANSITIONS: &str =
            "SELECT CAST(0 AS BIGINT) AS part, at_ms AS k, approver AS who, outcome AS a, '' AS b,
                reason, at_ms
             FROM votes WHERE approval_id = $1
             UNION ALL
             SELECT CAST(1 AS BIGINT), id, actor, from_state, to_state, reason, at_ms
             FROM transitions WHERE approval_id = $1";
        let sql = match merged_in {
            None => format!("{VOTES_AND_TRANSITIONS} ORDER BY part, k, who"),
            Some(_) => format!(
                "{VOTES_AND_TRANSITIONS}
                 UNION ALL
                 SELECT CAST(2 AS BIGINT), COUNT(*), '', '', '', '', CAST(0 AS BIGINT)
                 FROM requests WHERE merged_into = $1 AND state = $2
                 ORDER BY part, k, who"
            ),
        };
        let mut query = sqlx::query(&sql).bind(approval_id);
        if let Some(state) = merged_in {
            query = query.bind(state.as_str());
        }
        let rows = query
            .fetch_all(self.pool())
            .await
            .ctx("reading votes and transitions")?;
        let mut merged = None;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            if r.try_get::<i64, _>("part")
                .ctx("decoding votes and transitions")?
                == 2
            {
                merged = Some(r.try_get("k").ctx("decoding the merged count")?);
            } else {
                out.push(history(r).ctx("decoding votes and transitions")?);
            }
        }
        Ok((out, merged))
    }

    /// How many requests waiting with `approval_id` are in `state`.
    pub async fn merged_count(&self, approval_id: &str, state: State) -> Result<i64, StoreError> {
        sqlx::query("SELECT COUNT(*) AS n FROM requests WHERE merged_into = $1 AND state = $2")
            .bind(approval_id)
            .bind(state.as_str())
            .fetch_one(self.pool())
            .await
            .ctx(format!("counting the requests merged into {approval_id}"))?
            .try_get("n")
            .ctx("counting merged requests")
    }

    /// Records a vote; `false` when this approver already voted on the request.
    pub async fn insert_vote(tx: &mut Tx, v: &NewVote<'_>) -> Result<bool, StoreError> {
        let voted = sqlx::query(
            "INSERT INTO votes (approval_id, approver, outcome, reason, at_ms, kind, scope, duration_ms,
                by_requester)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (approval_id, approver) DO NOTHING",
        )
        .bind(v.approval_id)
        .bind(v.approver)
        .bind(v.outcome)
        .bind(v.reason)
        .bind(v.at_ms)
        .bind(v.kind)
        .bind(v.scope)
        .bind(v.duration_ms)
        .bind(i64::from(v.by_requester))
        .execute(&mut **tx)
        .await
        .ctx("recording vote")?;
        Ok(voted.rows_affected() > 0)
    }

    /// The votes on a request, in the order they were cast.
    pub async fn votes_in(tx: &mut Tx, approval_id: &str) -> Result<Vec<VoteRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT approver, outcome, kind, scope, duration_ms, by_requester FROM votes
             WHERE approval_id = $1 ORDER BY at_ms, approver",
        )
        .bind(approval_id)
        .fetch_all(&mut **tx)
        .await
        .ctx(format!("reading the votes on request {approval_id}"))?;
        rows.iter()
            .map(vote_row)
            .collect::<Result<_, _>>()
            .ctx(format!("decoding the votes on request {approval_id}"))
    }

    /// How many `allow` votes a request has.
    pub async fn approvals(&self, approval_id: &str) -> Result<i64, StoreError> {
        count_approvals(self.pool(), approval_id).await
    }

    /// How many `allow` votes a request has, read in `tx` (which holds the request).
    pub async fn approvals_in(tx: &mut Tx, approval_id: &str) -> Result<i64, StoreError> {
        count_approvals(&mut **tx, approval_id).await
    }

    /// How many requests are in each state.
    pub async fn requests_by_state(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM requests GROUP BY state")
            .fetch_all(self.pool())
            .await
            .ctx("counting requests by state")?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<String, _>("state").ctx("reading a state")?,
                    r.try_get::<i64, _>("n").ctx("reading a count")?,
                ))
            })
            .collect()
    }

    /// Up to `limit` pending requests past their deadline at `now_ms`: those reviewers see
    /// first (each resolves those merged into it).
    pub async fn due_requests(&self, now_ms: i64, limit: i64) -> Result<Vec<String>, StoreError> {
        sqlx::query(
            "SELECT approval_id FROM requests WHERE state = 'pending' AND expires_at_ms <= $1
             ORDER BY expires_at_ms, merged_into LIMIT $2",
        )
        .bind(now_ms)
        .bind(limit)
        .fetch_all(self.pool())
        .await
        .ctx("finding expired requests")?
        .iter()
        .map(|r| r.try_get("approval_id"))
        .collect::<Result<_, _>>()
        .ctx("finding expired requests")
    }

    /// The earliest deadline of a pending request.
    pub async fn next_expiry(&self) -> Result<Option<i64>, StoreError> {
        let r = sqlx::query("SELECT MIN(expires_at_ms) AS t FROM requests WHERE state = 'pending'")
            .fetch_one(self.pool())
            .await
            .ctx("finding the next deadline")?;
        r.try_get::<Option<i64>, _>("t")
            .ctx("finding the next deadline")
    }

    /// The oldest pending request reviewers see with `merge_key` whose deadline is after
    /// `now_ms`, with that deadline.
    pub async fn pending_with_key(
        tx: &mut Tx,
        merge_key: &str,
        now_ms: i64,
    ) -> Result<Option<(String, i64)>, StoreError> {
        let found = sqlx::query(
            "SELECT approval_id, expires_at_ms FROM requests
             WHERE merge_key = $1 AND state = 'pending' AND merged_into = '' AND expires_at_ms > $2
             ORDER BY received_at_ms, approval_id LIMIT 1",
        )
        .bind(merge_key)
        .bind(now_ms)
        .fetch_optional(&mut **tx)
        .await
        .ctx("finding an identical pending request")?;
        found
            .map(|r| Ok((r.try_get("approval_id")?, r.try_get("expires_at_ms")?)))
            .transpose()
            .ctx("reading an identical request")
    }

    /// The pending requests waiting with `approval_id`, oldest first (only the oldest with
    /// `first`).
    pub async fn pending_members_in(
        tx: &mut Tx,
        approval_id: &str,
        first: bool,
    ) -> Result<Vec<RequestRow>, StoreError> {
        let sql = format!(
            "SELECT {REQUEST_COLUMNS} FROM requests WHERE merged_into = $1 AND state = 'pending'
             ORDER BY received_at_ms, approval_id{}",
            if first { " LIMIT 1" } else { "" }
        );
        let rows = sqlx::query(&sql)
            .bind(approval_id)
            .fetch_all(&mut **tx)
            .await
            .ctx(format!("reading the requests merged into {approval_id}"))?;
        request_rows(&rows, "decoding a merged request")
    }

    /// A request's automatic reviewer's answer, read in `tx`.
    pub async fn recommendation_in(tx: &mut Tx, approval_id: &str) -> Result<String, StoreError> {
        let what = || format!("reading the recommendation on {approval_id}");
        sqlx::query("SELECT recommendation FROM requests WHERE approval_id = $1")
            .bind(approval_id)
            .fetch_one(&mut **tx)
            .await
            .ctx(what())?
            .try_get("recommendation")
            .ctx(what())
    }

    /// Makes `next` (which waited with `gone`) the request reviewers see in `gone`'s place:
    /// with `recommendation`, the others of the group waiting with it, and `gone`'s votes.
    pub async fn promote_request(
        tx: &mut Tx,
        gone: &str,
        next: &str,
        recommendation: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let what = || format!("promoting a request merged into {gone}");
        sqlx::query(
            "UPDATE requests SET merged_into = '', recommendation = $2, updated_at_ms = $3
             WHERE approval_id = $1",
        )
        .bind(next)
        .bind(recommendation)
        .bind(now_ms)
        .execute(&mut **tx)
        .await
        .ctx(what())?;
        sqlx::query(
            "UPDATE requests SET merged_into = $2 WHERE merged_into = $1 AND state = 'pending'",
        )
        .bind(gone)
        .bind(next)
        .execute(&mut **tx)
        .await
        .ctx(what())?;
        sqlx::query(
            "INSERT INTO votes (approval_id, approver, outcome, reason, at_ms, kind, scope, duration_ms,
                by_requester)
             SELECT $2, approver, outcome, reason, at_ms, kind, scope, duration_ms, by_requester
             FROM votes WHERE approval_id = $1
             ON CONFLICT (approval_id, approver) DO NOTHING",
        )
        .bind(gone)
        .bind(next)
        .execute(&mut **tx)
        .await
        .ctx(what())?;
        Ok(())
    }

    /// A request's stored context (protobuf) and the request it waits with, read in `tx`.
    pub async fn context_in(
        tx: &mut Tx,
        approval_id: &str,
    ) -> Result<(Vec<u8>, String), StoreError> {
        let r = sqlx::query("SELECT context, merged_into FROM requests WHERE approval_id = $1")
            .bind(approval_id)
            .fetch_one(&mut **tx)
            .await
            .ctx(format!("reading request {approval_id}"))?;
        Ok((
            r.try_get("context").ctx("reading the request's context")?,
            r.try_get("merged_into")
                .ctx("reading the request's group")?,
        ))
    }

    /// The ids of every request that waits, or waited, with `approval_id`.
    pub async fn member_ids_in(tx: &mut Tx, approval_id: &str) -> Result<Vec<String>, StoreError> {
        sqlx::query("SELECT approval_id FROM requests WHERE merged_into = $1")
            .bind(approval_id)
            .fetch_all(&mut **tx)
            .await
            .ctx(format!("reading the requests waiting with {approval_id}"))?
            .iter()
            .map(|r| r.try_get("approval_id"))
            .collect::<Result<_, _>>()
            .ctx("reading a request waiting with another")
    }

    /// Replaces a request's stored context (protobuf).
    pub async fn set_context(
        tx: &mut Tx,
        approval_id: &str,
        context: &[u8],
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE requests SET context = $2 WHERE approval_id = $1")
            .bind(approval_id)
            .bind(context)
            .execute(&mut **tx)
            .await
            .ctx(format!("storing the justification of {approval_id}"))?;
        Ok(())
    }

    /// Locks a pending request for the rest of `tx`, then the requests waiting with it, and
    /// says how many of those there are; `None` when it is no longer pending (nothing is locked
    /// then).
    pub async fn lock_pending(
        tx: &mut Tx,
        approval_id: &str,
        now_ms: i64,
    ) -> Result<Option<u64>, StoreError> {
        let r = sqlx::query(
            "UPDATE requests SET updated_at_ms = $2 WHERE approval_id = $1 AND state = 'pending'",
        )
        .bind(approval_id)
        .bind(now_ms)
        .execute(&mut **tx)
        .await
        .ctx(format!("locking request {approval_id}"))?;
        if r.rows_affected() != 1 {
            return Ok(None);
        }
        let members = sqlx::query(
            "UPDATE requests SET updated_at_ms = $2 WHERE merged_into = $1 AND state = 'pending'",
        )
        .bind(approval_id)
        .bind(now_ms)
        .execute(&mut **tx)
        .await
        .ctx(format!("locking the requests waiting with {approval_id}"))?;
        Ok(Some(members.rows_affected()))
    }

    /// Records a change of a request's state.
    pub async fn insert_transition(
        tx: &mut Tx,
        approval_id: &str,
        from: &str,
        to: State,
        actor: &str,
        reason: &str,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO transitions (approval_id, from_state, to_state, actor, reason, at_ms)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(approval_id)
        .bind(from)
        .bind(to.as_str())
        .bind(actor)
        .bind(reason)
        .bind(at_ms)
        .execute(&mut **tx)
        .await
        .ctx("recording transition")?;
        Ok(())
    }

    /// Moves a pending request to its final state; `false` when it was no longer pending.
    pub async fn resolve_request(tx: &mut Tx, r: &Resolution<'_>) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE requests SET state = $2, decided_at_ms = $3, decided_by = $4, outcome = $5, reason = $6,
                grant_id = $7, updated_at_ms = $3
             WHERE approval_id = $1 AND state = 'pending'",
        )
        .bind(r.approval_id)
        .bind(r.to.as_str())
        .bind(r.at_ms)
        .bind(r.actor)
        .bind(r.outcome)
        .bind(r.reason)
        .bind(r.grant_id)
        .execute(&mut **tx)
        .await
        .ctx(format!("resolving request {}", r.approval_id))?;
        Ok(done.rows_affected() == 1)
    }
}
