//! Names a workload has reached. A rule of new names (`new_names`) holds a workload's first
//! connection to a host name it has not reached before; a person's approval (reviewers' votes, or
//! break-glass) makes the name known to that workload on every host, so that its later
//! connections are decided by the other rules. An automatic approval (a policy check, an
//! automatic reviewer) lets the one connection through and makes nothing known.
//! Central remembers the names (the store's `known_names`) and tells every agent: all of them as
//! its stream opens, and each new one as it becomes known, before the decision that made it
//! (`crate::dispatch`), so that the connection let through is not followed by a second request.

use std::collections::BTreeMap;

use latch_proto::v1::{
    agent_message::Body, AgentMessage, ApprovalRecord, ApprovalRequest, KnownNames, RequestState,
};

use crate::{
    engine::Central,
    error::Result,
    store::{Known, RequestRow, Store, Tx},
};

/// The (workload, name) that approving `req` makes known: a request the agent says a rule of
/// new names held (`destination.new_name`), for the name the workload resolved.
pub fn made_known(req: &ApprovalRequest) -> Option<(&str, &str)> {
    match &req.destination {
        Some(d) if d.new_name && !d.host_name.is_empty() && !req.workload.is_empty() => {
            Some((req.workload.as_str(), d.host_name.as_str()))
        }
        _ => None,
    }
}

/// What a reviewer is told of a request a rule of new names held: that the name is new to the
/// workload, and what an approval does. `None` for other requests.
pub fn new_name_text(d: &latch_proto::v1::Destination) -> Option<String> {
    (d.new_name && !d.host_name.is_empty()).then(|| {
        format!(
            "the workload has not reached {} before; an approval makes it known to the workload \
             on every host",
            d.host_name
        )
    })
}

/// The name an approved record may have made known (whether a person approved it is the
/// store's to say: [`Central::made_known_by`]).
pub fn known_by(rec: &ApprovalRecord) -> Option<(&str, &str)> {
    if rec.state != RequestState::Approved as i32 {
        return None;
    }
    rec.request.as_ref().and_then(made_known)
}

/// The agents' message for names of one workload.
pub fn message(workload: &str, names: Vec<String>) -> AgentMessage {
    AgentMessage {
        body: Some(Body::KnownNames(KnownNames {
            workload: workload.to_string(),
            names,
        })),
    }
}

/// Every known name, one message per workload.
pub fn messages(known: Vec<(String, String)>) -> Vec<AgentMessage> {
    let mut by_workload: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (w, n) in known {
        by_workload.entry(w).or_default().push(n);
    }
    by_workload
        .into_iter()
        .map(|(w, names)| message(&w, names))
        .collect()
}

/// Records, in the transaction in which people approve `row`, the name their approval makes
/// known. A request central cannot read makes nothing known.
pub(crate) async fn remember_in(
    tx: &mut Tx,
    row: &RequestRow,
    actor: &str,
    now: i64,
) -> Result<()> {
    let Ok(req) = row.request() else {
        return Ok(());
    };
    if let Some((workload, name)) = made_known(&req) {
        Store::remember_name(
            tx,
            &Known {
                workload,
                name,
                approval_id: &row.approval_id,
                approved_by: actor,
                at_ms: now,
            },
        )
        .await?;
    }
    Ok(())
}

impl Central {
    /// The (workload, name) an approved record made known: one held as a new name, that people
    /// approved (the approval recorded it).
    pub async fn made_known_by<'r>(
        &self,
        rec: &'r ApprovalRecord,
    ) -> Result<Option<(&'r str, &'r str)>> {
        match known_by(rec) {
            Some((w, n)) if self.store.is_known(w, n).await? => Ok(Some((w, n))),
            _ => Ok(None),
        }
    }

    /// Every known name, as the messages a stream that opens gets.
    pub async fn known_name_messages(&self) -> Result<Vec<AgentMessage>> {
        Ok(messages(self.store.known_names().await?))
    }
}

#[cfg(test)]
mod tests {
    use latch_proto::v1::{Destination, Op};

    use super::*;

    fn req(workload: &str, name: &str, new_name: bool) -> ApprovalRequest {
        ApprovalRequest {
            op: Op::Connect as i32,
            workload: workload.into(),
            destination: Some(Destination {
                address: "10.0.0.1".into(),
                port: 443,
                host_name: name.into(),
                new_name,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_an_approved_request_of_a_rule_of_new_names_makes_its_name_known() {
        let rec = |state: RequestState, r: ApprovalRequest| ApprovalRecord {
            state: state as i32,
            request: Some(r),
            ..Default::default()
        };
        type Case = (
            &'static str,
            ApprovalRecord,
            Option<(&'static str, &'static str)>,
        );
        let cases: &[Case] = &[
            (
                "approved, new name",
                rec(RequestState::Approved, req("w", "a.test", true)),
                Some(("w", "a.test")),
            ),
            (
                "denied",
                rec(RequestState::Denied, req("w", "a.test", true)),
                None,
            ),
            (
                "expired",
                rec(RequestState::Expired, req("w", "a.test", true)),
                None,
            ),
            (
                "pending",
                rec(RequestState::Pending, req("w", "a.test", true)),
                None,
            ),
            (
                "held by another rule",
                rec(RequestState::Approved, req("w", "a.test", false)),
                None,
            ),
            (
                "no name",
                rec(RequestState::Approved, req("w", "", true)),
                None,
            ),
            (
                "no workload",
                rec(RequestState::Approved, req("", "a.test", true)),
                None,
            ),
            (
                "no destination",
                rec(RequestState::Approved, ApprovalRequest::default()),
                None,
            ),
        ];
        for (what, r, want) in cases {
            assert_eq!(known_by(r), *want, "{what}");
        }
    }

    #[test]
    fn a_reviewer_is_told_of_a_new_name_only_for_a_request_held_as_one() {
        let d = |name: &str, new_name: bool| Destination {
            host_name: name.into(),
            new_name,
            ..Default::default()
        };
        assert_eq!(
            new_name_text(&d("a.test", true)).as_deref(),
            Some(
                "the workload has not reached a.test before; an approval makes it known to the \
                 workload on every host"
            )
        );
        assert_eq!(new_name_text(&d("a.test", false)), None);
        assert_eq!(new_name_text(&d("", true)), None);
    }

    #[test]
    fn names_go_out_one_message_per_workload() {
        let known = vec![
            ("a".to_string(), "x.test".to_string()),
            ("a".to_string(), "y.test".to_string()),
            ("b".to_string(), "x.test".to_string()),
        ];
        let got: Vec<(String, Vec<String>)> = messages(known)
            .into_iter()
            .filter_map(|m| match m.body {
                Some(Body::KnownNames(k)) => Some((k.workload, k.names)),
                _ => None,
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "a".to_string(),
                    vec!["x.test".to_string(), "y.test".to_string()]
                ),
                ("b".to_string(), vec!["x.test".to_string()]),
            ]
        );
    }
}
