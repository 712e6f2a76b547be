//! The console's pages and forms: request queue and detail, decisions, grants and their
//! revocation, hosts, audit search. Each form goes through the engine method the gRPC API uses,
//! after the same validation.

use axum::{
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
    Form,
};
use latch_proto::v1::{DecideRequest, DecisionKind, GrantScope, QueryAuditRequest, RequestState};
use serde::Deserialize;

use crate::{
    approval::State as RequestStateName,
    clock::now_ms,
    error::Error,
    validate::{audit_filter, validate_decide, MAX_ID, MAX_REASON},
};

use super::{
    message_of, status_of,
    views::{
        audit_page, grants_page, hosts_page, request_href, request_page, requests_page, summarize,
        Abilities, AuditQuery, Banner,
    },
    Console, Signed, WebError,
};

/// Most requests a list shows.
const LIST_LIMIT: i64 = 500;
/// Most audit records a page shows.
const AUDIT_LIMIT: u32 = 1000;

fn check_id(field: &str, v: &str) -> Result<(), WebError> {
    if v.is_empty() || v.len() > MAX_ID || v.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(WebError::BadInput(format!(
            "{field} '{}' is not an id",
            v.escape_debug()
        )));
    }
    Ok(())
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ListQuery {
    state: String,
}

/// `GET /requests`: the pending queue (live), or requests in another state.
pub(crate) async fn requests(
    State(c): State<Console>,
    signed: Signed,
    Query(q): Query<ListQuery>,
) -> Result<Response, WebError> {
    let name = if q.state.is_empty() {
        "pending"
    } else {
        q.state.as_str()
    };
    let state = match name {
        "all" => None,
        s => Some(RequestStateName::parse(s).ok_or_else(|| {
            WebError::BadInput(format!(
                "state '{}' is not one of pending, approved, denied, expired, cancelled, all",
                s.escape_debug()
            ))
        })?),
    };
    let records = c.central.list_requests(state, "", LIST_LIMIT).await?;
    let rows: Vec<_> = records.iter().map(summarize).collect();
    Ok(requests_page(&signed.me(), &rows, name).into_response())
}

/// What a redirect after a form says on the next page; a code, never text from the request.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Done {
    /// The decision resolved the request.
    Decided,
    /// An approval was counted; more are needed.
    Voted,
    /// A grant was revoked.
    Revoked,
}

impl Done {
    fn banner(self) -> Banner<'static> {
        Banner::Notice(match self {
            Done::Decided => "Decision recorded and sent to the host.",
            Done::Voted => "Your approval was counted; another approver is needed.",
            Done::Revoked => "Grant revoked; its host was told at once.",
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct DoneQuery {
    done: Option<Done>,
}

async fn render_request(
    c: &Console,
    signed: &Signed,
    id: &str,
    banner: Option<&Banner<'_>>,
    status: StatusCode,
) -> Result<Response, WebError> {
    let rec = c.central.record(id).await?;
    let can = Abilities::of(signed.identity(), &rec);
    Ok((status, request_page(&signed.me(), &rec, &can, banner)).into_response())
}

/// `GET /requests/{id}`.
pub(crate) async fn request(
    State(c): State<Console>,
    signed: Signed,
    Path(id): Path<String>,
    Query(q): Query<DoneQuery>,
) -> Result<Response, WebError> {
    check_id("request id", &id)?;
    let banner = q.done.map(Done::banner);
    render_request(&c, &signed, &id, banner.as_ref(), StatusCode::OK).await
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct DecideForm {
    csrf: String,
    decision: String,
    reason: String,
    #[serde(rename = "for")]
    duration: String,
    scope: String,
}

/// The gRPC request a decision form stands for.
fn decide_request(id: &str, f: &DecideForm) -> Result<DecideRequest, Error> {
    let kind = match f.decision.as_str() {
        "approve_once" => DecisionKind::ApproveOnce,
        "approve_for" => DecisionKind::ApproveFor,
        "deny" => DecisionKind::Deny,
        other => {
            return Err(Error::InvalidArgument(format!(
                "decision '{}' is not approve_once, approve_for or deny",
                other.escape_debug()
            )))
        }
    };
    let (mut duration_seconds, mut scope) = (0, GrantScope::Unspecified);
    if kind == DecisionKind::ApproveFor {
        let text = f.duration.trim();
        duration_seconds = humantime::parse_duration(text)
            .map_err(|e| {
                Error::InvalidArgument(format!(
                    "for '{}' is not a duration such as 15m or 2h: {e}",
                    text.escape_debug()
                ))
            })?
            .as_secs();
        scope = match f.scope.as_str() {
            "process" => GrantScope::Process,
            "workload" => GrantScope::Workload,
            "host" => GrantScope::Host,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "scope '{}' is not process, workload or host",
                    other.escape_debug()
                )))
            }
        };
    }
    Ok(DecideRequest {
        approval_id: id.to_string(),
        kind: kind as i32,
        duration_seconds,
        scope: scope as i32,
        reason: f.reason.clone(),
    })
}

/// `POST /requests/{id}/decide`: the engine's `decide`, as `latchctl approve|deny` calls it.
pub(crate) async fn decide(
    State(c): State<Console>,
    signed: Signed,
    Path(id): Path<String>,
    Form(f): Form<DecideForm>,
) -> Result<Response, WebError> {
    signed.check_csrf(&f.csrf)?;
    check_id("request id", &id)?;
    let outcome = match decide_request(&id, &f).and_then(|r| validate_decide(&r)) {
        Ok(input) => c.central.decide(signed.identity(), input).await,
        Err(e) => Err(e),
    };
    match outcome {
        Ok((_, resolved)) => {
            let done = if resolved { "decided" } else { "voted" };
            Ok(Redirect::to(&format!("{}?done={done}", request_href(&id))).into_response())
        }
        Err(e) => {
            tracing::info!(approval_id = %id, by = %signed.identity().subject, error = %e, "console decision refused");
            let message = message_of(&e);
            render_request(
                &c,
                &signed,
                &id,
                Some(&Banner::Error(&message)),
                status_of(&e),
            )
            .await
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct GrantsQuery {
    all: String,
    done: Option<Done>,
}

/// `GET /grants`.
pub(crate) async fn grants(
    State(c): State<Console>,
    signed: Signed,
    Query(q): Query<GrantsQuery>,
) -> Result<Response, WebError> {
    let all = !q.all.is_empty() && q.all != "0";
    let grants = c.central.list_grants(all, "").await?;
    let banner = q.done.map(Done::banner);
    Ok(grants_page(&signed.me(), &grants, all, now_ms(), banner.as_ref()).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RevokeForm {
    csrf: String,
    reason: String,
    /// Also cut the connections the grant let through.
    close_connections: String,
}

/// `POST /grants/{id}/revoke`: the engine's revocation, as `latchctl grants revoke` calls it.
pub(crate) async fn revoke(
    State(c): State<Console>,
    signed: Signed,
    Path(id): Path<String>,
    Form(f): Form<RevokeForm>,
) -> Result<Response, WebError> {
    signed.check_csrf(&f.csrf)?;
    check_id("grant id", &id)?;
    let reason = f.reason.trim();
    let outcome = if reason.is_empty() {
        Err(Error::InvalidArgument("reason is mandatory".into()))
    } else if reason.len() > MAX_REASON {
        Err(Error::InvalidArgument(format!(
            "reason is {} bytes; at most {MAX_REASON}",
            reason.len()
        )))
    } else {
        c.central
            .revoke_grant_closing(
                signed.identity(),
                &id,
                reason,
                !f.close_connections.is_empty(),
            )
            .await
    };
    match outcome {
        Ok(_) => Ok(Redirect::to("/grants?done=revoked").into_response()),
        Err(e) => {
            let grants = c.central.list_grants(false, "").await?;
            let message = message_of(&e);
            Ok((
                status_of(&e),
                grants_page(
                    &signed.me(),
                    &grants,
                    false,
                    now_ms(),
                    Some(&Banner::Error(&message)),
                ),
            )
                .into_response())
        }
    }
}

/// `GET /hosts`.
pub(crate) async fn hosts(State(c): State<Console>, signed: Signed) -> Result<Response, WebError> {
    let mut hosts = c.central.list_hosts().await?;
    for h in &mut hosts {
        // This replica knows its own streams for sure.
        h.connected |= c.central.hub.is_connected(&h.host_id);
    }
    Ok(hosts_page(&signed.me(), &hosts).into_response())
}

fn time_ms(field: &str, v: &str) -> Result<i64, Error> {
    let v = v.trim();
    if v.is_empty() {
        return Ok(0);
    }
    let t = humantime::parse_rfc3339_weak(v).map_err(|e| {
        Error::InvalidArgument(format!(
            "{field} '{}' is not a time such as 2025-01-31T08:00:00Z: {e}",
            v.escape_debug()
        ))
    })?;
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| Error::InvalidArgument(format!("{field} '{v}' is before 1970")))?
        .as_millis();
    i64::try_from(ms).map_err(|_| Error::InvalidArgument(format!("{field} '{v}' is too late")))
}

fn number<T: std::str::FromStr>(field: &str, v: &str, default: T) -> Result<T, Error> {
    let v = v.trim();
    if v.is_empty() {
        return Ok(default);
    }
    v.parse().map_err(|_| {
        Error::InvalidArgument(format!("{field} '{}' is not a number", v.escape_debug()))
    })
}

/// The gRPC query an audit search stands for.
fn audit_request(q: &AuditQuery) -> Result<QueryAuditRequest, Error> {
    let limit: u32 = number("limit", &q.limit, 100)?;
    if limit == 0 || limit > AUDIT_LIMIT {
        return Err(Error::InvalidArgument(format!(
            "limit {limit} is out of range: 1 to {AUDIT_LIMIT}"
        )));
    }
    Ok(QueryAuditRequest {
        after_seq: number("after_seq", &q.after_seq, 0)?,
        kind: q.kind.trim().to_string(),
        host_id: q.host_id.trim().to_string(),
        limit,
        since_unix_ms: time_ms("since", &q.since)?,
        until_unix_ms: time_ms("until", &q.until)?,
        workload: q.workload.trim().to_string(),
        rule_name: q.rule_name.trim().to_string(),
        actor: q.actor.trim().to_string(),
        outcome: q.outcome.trim().to_string(),
        request_id: q.request_id.trim().to_string(),
    })
}

/// `GET /audit`: QueryAudit with the same filters.
pub(crate) async fn audit(
    State(c): State<Console>,
    signed: Signed,
    Query(q): Query<AuditQuery>,
) -> Result<Response, WebError> {
    let found = match audit_request(&q).and_then(|r| Ok((audit_filter(&r)?, r.limit))) {
        Ok((filter, limit)) => c
            .central
            .store()
            .query_audit(&filter, limit as i64)
            .await
            .map_err(Error::from),
        Err(e) => Err(e),
    };
    match found {
        Ok(records) => {
            let entries: Vec<_> = records
                .into_iter()
                .map(latch_proto::v1::AuditEntry::from)
                .collect();
            Ok(audit_page(&signed.me(), &q, &entries, None).into_response())
        }
        Err(e) => {
            let message = message_of(&e);
            Ok((
                status_of(&e),
                audit_page(&signed.me(), &q, &[], Some(&Banner::Error(&message))),
            )
                .into_response())
        }
    }
}

/// Whether a request state's name is the pending one (for the live queue).
pub(crate) fn is_pending(state: i32) -> bool {
    state == RequestState::Pending as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_forms_become_the_grpc_request() {
        let f = DecideForm {
            decision: "approve_for".into(),
            reason: "ok".into(),
            duration: "2h".into(),
            scope: "host".into(),
            ..Default::default()
        };
        let r = decide_request("a1", &f).expect("valid");
        assert_eq!(r.duration_seconds, 7200);
        assert_eq!(r.scope, GrantScope::Host as i32);
        let once = DecideForm {
            decision: "approve_once".into(),
            duration: "2h".into(),
            scope: "host".into(),
            ..f
        };
        let r = decide_request("a1", &once).expect("valid");
        assert_eq!(
            (r.duration_seconds, r.scope),
            (0, 0),
            "only approve_for has them"
        );
        for (decision, duration, scope, needle) in [
            ("maybe", "", "", "decision 'maybe'"),
            ("approve_for", "soon", "host", "for 'soon'"),
            ("approve_for", "1h", "galaxy", "scope 'galaxy'"),
        ] {
            let f = DecideForm {
                decision: decision.into(),
                duration: duration.into(),
                scope: scope.into(),
                ..Default::default()
            };
            let e = decide_request("a1", &f).expect_err(decision);
            assert!(e.to_string().contains(needle), "{e}");
        }
    }

    #[test]
    fn audit_searches_become_the_grpc_query() {
        let q = AuditQuery {
            kind: " request. ".into(),
            since: "2025-01-31T08:00:00Z".into(),
            limit: "50".into(),
            ..Default::default()
        };
        let r = audit_request(&q).expect("valid");
        assert_eq!(r.kind, "request.");
        assert_eq!(r.since_unix_ms, 1_738_310_400_000);
        assert_eq!(r.limit, 50);
        for (q, needle) in [
            (
                AuditQuery {
                    since: "yesterday".into(),
                    ..Default::default()
                },
                "since 'yesterday'",
            ),
            (
                AuditQuery {
                    limit: "5000".into(),
                    ..Default::default()
                },
                "limit 5000",
            ),
            (
                AuditQuery {
                    after_seq: "x".into(),
                    ..Default::default()
                },
                "after_seq 'x'",
            ),
        ] {
            let e = audit_request(&q).expect_err(needle);
            assert!(e.to_string().contains(needle), "{e}");
        }
    }
}
