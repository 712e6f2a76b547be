//! The console's pages as HTML (maud templates, which escape every value they are given).
//!
//! Everything a workload controls (argv, paths, names, cgroups) and everything a reviewer typed
//! (reasons) goes through [`shown`] first, which writes control and bidirectional characters as
//! visible escapes, and is then inserted as text: never as markup, never as a link or an
//! attribute that the browser acts on. The only links are to the console's own pages, built from
//! ids central made, percent-encoded.

use latch_proto::v1::{
    ApprovalRecord, AuditEntry, Grant, GrantScope, HostInfo, Op, Outcome, RequestState,
    RuleEnforcement,
};
use maud::{html, Markup, DOCTYPE};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Serialize;

use crate::{
    approval::State,
    auth::{Identity, Role},
    clock::rfc3339,
    grants::scope_name,
    text::{json_term_safe, term_safe},
};

use super::session::role_label;

/// Text for display: control and bidirectional characters written as visible escapes.
pub fn shown(s: &str) -> String {
    term_safe(s)
}

/// What a path segment or query value keeps unencoded: letters, digits, `-`, `_` and `~`. The
/// dot is encoded so that no id can become a `..` segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'~');

/// [`shown`], or a dash for an empty value.
fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "—".into()
    } else {
        shown(s)
    }
}

/// One path segment, percent-encoded.
pub fn segment(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// The console page of a request.
pub fn request_href(approval_id: &str) -> String {
    format!("/requests/{}", segment(approval_id))
}

/// The signed-in reviewer, as pages need them.
pub struct Me<'a> {
    /// Who.
    pub identity: &'a Identity,
    /// The session's CSRF token, for forms.
    pub csrf: &'a str,
}

/// The section a page belongs to, for the navigation bar.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// Requests.
    Requests,
    /// Grants.
    Grants,
    /// Hosts.
    Hosts,
    /// Audit.
    Audit,
    /// None (login, errors).
    None,
}

/// A message shown above a page's content.
pub enum Banner<'a> {
    /// Something worked.
    Notice(&'a str),
    /// Something was refused.
    Error(&'a str),
}

fn banner(b: Option<&Banner>) -> Markup {
    html! {
        @match b {
            Some(Banner::Notice(m)) => p #notice .notice role="status" { (shown(m)) },
            Some(Banner::Error(m)) => p #error .error role="alert" { (shown(m)) },
            None => {},
        }
    }
}

fn csrf_field(me: &Me) -> Markup {
    html! { input type="hidden" name="csrf" value=(me.csrf); }
}

/// How a reviewer is named on pages: their e-mail address when known (identity providers'
/// subjects are opaque ids), else their subject.
pub fn display_name(id: &Identity) -> &str {
    if id.email.is_empty() {
        &id.subject
    } else {
        &id.email
    }
}

/// The page frame: navigation, who is signed in, the content.
pub fn layout(title: &str, me: Option<&Me>, section: Section, content: Markup) -> Markup {
    let nav = [
        (Section::Requests, "/requests", "Requests"),
        (Section::Grants, "/grants", "Grants"),
        (Section::Hosts, "/hosts", "Hosts"),
        (Section::Audit, "/audit", "Audit"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { (title) " · Latch" }
                link rel="stylesheet" href="/static/console.css";
                script src="/static/console.js" defer {}
            }
            body {
                header {
                    a .brand href="/requests" { "Latch" }
                    @if let Some(me) = me {
                        nav {
                            @for (s, href, label) in nav {
                                a href=(href) aria-current=[(s == section).then_some("page")] { (label) }
                            }
                        }
                        div .me {
                            span #me title=(shown(&me.identity.subject)) { (shown(display_name(me.identity))) }
                            " "
                            span .role #role { (role_label(me.identity)) }
                            form method="post" action="/logout" .inline {
                                (csrf_field(me))
                                button type="submit" #logout { "Sign out" }
                            }
                        }
                    }
                }
                main { (content) }
            }
        }
    }
}

/// A request as one row of a list; also what the live queue receives as JSON.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct RequestSummary {
    /// Central's id.
    pub id: String,
    /// pending, approved, ...
    pub state: String,
    /// Host id.
    pub host: String,
    /// Who asked (the workload's identity).
    pub requester: String,
    /// exec, connect or sendmsg.
    pub op: String,
    /// Destination or program.
    pub target: String,
    /// Rule name.
    pub rule: String,
    /// Workload name.
    pub workload: String,
    /// When central received it (RFC 3339).
    pub received: String,
    /// When it expires (RFC 3339).
    pub expires: String,
    /// Approvals counted and needed, e.g. "1/2".
    pub votes: String,
    /// How many identical requests this row stands for (itself and those waiting with it).
    pub count: String,
}

/// Name of an operation.
pub fn op_name(op: i32) -> &'static str {
    match Op::try_from(op).unwrap_or(Op::Unspecified) {
        Op::Exec => "exec",
        Op::Connect => "connect",
        Op::Sendmsg => "sendmsg",
        Op::Unspecified => "unknown",
    }
}

/// Name of a request state.
pub fn state_name(state: i32) -> &'static str {
    RequestState::try_from(state)
        .ok()
        .and_then(State::from_proto)
        .map(State::as_str)
        .unwrap_or("unknown")
}

fn outcome_name(o: i32) -> &'static str {
    match Outcome::try_from(o).unwrap_or(Outcome::Unspecified) {
        Outcome::Allow => "allow",
        Outcome::Deny => "deny",
        Outcome::Unspecified => "unspecified",
    }
}

/// What the request is for: `[name (]address:port/protocol[)]` or the program.
pub fn target_of(rec: &ApprovalRecord) -> String {
    let Some(r) = &rec.request else {
        return String::new();
    };
    match Op::try_from(r.op).unwrap_or(Op::Unspecified) {
        Op::Exec => r.exec_path.clone(),
        _ => r
            .destination
            .as_ref()
            .map(|d| d.shown())
            .unwrap_or_default(),
    }
}

/// The row of a request, with every text made safe for display.
pub fn summarize(rec: &ApprovalRecord) -> RequestSummary {
    let r = rec.request.clone().unwrap_or_default();
    let approvals = rec
        .votes
        .iter()
        .filter(|v| v.outcome == Outcome::Allow as i32)
        .count();
    RequestSummary {
        id: rec.approval_id.clone(),
        state: state_name(rec.state).to_string(),
        host: shown(&r.host_id),
        requester: shown(&r.requester),
        op: op_name(r.op).to_string(),
        target: shown(&target_of(rec)),
        rule: shown(&r.rule_name),
        workload: shown(&r.workload),
        received: rfc3339(rec.received_at_unix_ms),
        expires: rfc3339(rec.expires_at_unix_ms),
        votes: format!("{approvals}/{}", rec.approvers_needed.max(1)),
        count: (u64::from(rec.merged) + 1).to_string(),
    }
}

fn request_rows(rows: &[RequestSummary]) -> Markup {
    html! {
        @for r in rows {
            tr data-approval-id=(r.id) data-state=(r.state) {
                td { a .open href=(request_href(&r.id)) { "Review" } }
                td .state { (r.state) }
                td { (r.host) }
                td { (r.requester) }
                td { (r.op) }
                td { code { (r.target) } }
                td .count { (r.count) }
                td { (r.rule) }
                td { (r.received) }
                td { (r.expires) }
                td { (r.votes) }
            }
        }
    }
}

/// The request lists: the live pending queue, or requests in another state.
pub fn requests_page(me: &Me, rows: &[RequestSummary], state: &str) -> Markup {
    let live = state == "pending";
    let filters = [
        "pending",
        "approved",
        "denied",
        "expired",
        "cancelled",
        "all",
    ];
    let content = html! {
        h1 { @if live { "Pending requests" } @else { "Requests: " (state) } }
        p .filters {
            @for f in filters {
                a href=(format!("/requests?state={f}")) aria-current=[(f == state).then_some("page")] { (f) }
                " "
            }
            @if live {
                span #live-status .live aria-live="polite" { "static" }
            }
        }
        table #queue {
            thead { tr {
                th {} th { "State" } th { "Host" } th { "Requester" } th { "Op" } th { "Target" }
                th title="Identical requests, decided together" { "Count" } th { "Rule" } th { "Received" } th { "Expires" } th { "Approvals" }
            } }
            tbody #pending data-live=[live.then_some("/events/requests")] { (request_rows(rows)) }
        }
        p #empty .empty hidden[!rows.is_empty()] { "Nothing is waiting." }
    };
    layout("Requests", Some(me), Section::Requests, content)
}

/// What the signed-in reviewer may do with a request, and why not.
pub struct Abilities {
    /// Approve (once or for a duration).
    pub approve: bool,
    /// Deny.
    pub deny: bool,
    /// Why some action is not offered.
    pub why_not: Option<String>,
}

impl Abilities {
    /// Works out what `who` may do with `rec`; the engine decides again on submission.
    pub fn of(who: &Identity, rec: &ApprovalRecord) -> Abilities {
        let none = |why: Option<String>| Abilities {
            approve: false,
            deny: false,
            why_not: why,
        };
        if rec.state != RequestState::Pending as i32 {
            return none(None);
        }
        if !rec.merged_into.is_empty() {
            return none(Some(
                "This request is decided with the one it is identical to, linked above.".into(),
            ));
        }
        if !who.has(Role::Approver) {
            return none(Some(format!(
                "Your role ({}) cannot decide requests.",
                role_label(who)
            )));
        }
        if !rec.approver_groups.is_empty()
            && !who.groups.iter().any(|g| rec.approver_groups.contains(g))
        {
            return none(Some(format!(
                "Only members of {} may decide this request.",
                rec.approver_groups.join(", ")
            )));
        }
        let requester = rec
            .request
            .as_ref()
            .map(|r| r.requester.as_str())
            .unwrap_or("");
        if who.is_requester(requester) {
            return Abilities {
                approve: false,
                deny: true,
                why_not: Some(
                    "You are the requester of this operation: you may deny it, not approve it."
                        .into(),
                ),
            };
        }
        if rec.votes.iter().any(|v| v.approver == who.subject) {
            return none(Some(
                "You have voted on this request; another approver is needed.".into(),
            ));
        }
        Abilities {
            approve: true,
            deny: true,
            why_not: None,
        }
    }
}

fn argv_list(argv: &[String]) -> Markup {
    html! {
        ol .argv start="0" {
            @for a in argv { li { code { (shown(a)) } } }
        }
    }
}

fn decide_form(me: &Me, rec: &ApprovalRecord, can: &Abilities) -> Markup {
    html! {
        @if can.approve || can.deny {
            form #decide method="post" action=(format!("{}/decide", request_href(&rec.approval_id))) {
                (csrf_field(me))
                label for="reason" { "Reason (recorded in the audit trail)" }
                textarea #reason name="reason" required maxlength="2048" rows="2" {}
                div .actions {
                    @if can.approve {
                        button #approve-once type="submit" name="decision" value="approve_once" { "Approve once" }
                        span .for {
                            button #approve-for type="submit" name="decision" value="approve_for" { "Approve for" }
                            input #for name="for" value="15m" size="6" aria-label="duration, e.g. 15m or 2h";
                            select #scope name="scope" aria-label="scope" {
                                option value="process" { "this process" }
                                option value="workload" selected { "this workload" }
                                option value="host" { "this host" }
                            }
                        }
                    }
                    @if can.deny {
                        button #deny .danger type="submit" name="decision" value="deny" { "Deny" }
                    }
                }
            }
        }
        @if let Some(why) = &can.why_not {
            p #why-not .muted { (why) }
        }
    }
}

/// A request with its whole context.
pub fn request_page(
    me: &Me,
    rec: &ApprovalRecord,
    can: &Abilities,
    banner_msg: Option<&Banner>,
) -> Markup {
    let r = rec.request.clone().unwrap_or_default();
    let s = summarize(rec);
    let content = html! {
        h1 { "Request " code { (rec.approval_id) } }
        (banner(banner_msg))
        p { "State: " strong #state data-state=(s.state) { (s.state) }
            " · approvals " (s.votes)
            " · expires " (s.expires) " (then " (outcome_name(rec.on_timeout)) ")" }
        @if rec.merged > 0 {
            p #merged data-count=(rec.merged + 1) {
                @if s.state == "pending" {
                    (rec.merged) " identical requests wait with this one (same host, workload, rule and operation). "
                    strong { "A decision here decides all " (rec.merged + 1) "." }
                } @else {
                    (rec.merged) " identical requests were resolved with this one."
                }
            }
        }
        @if !rec.merged_into.is_empty() {
            p #merged-into {
                "This request is identical to "
                a href=(request_href(&rec.merged_into)) { code { (rec.merged_into) } }
                " and is resolved with it."
            }
        }
        (decide_form(me, rec, can))
        div .grid {
            section {
                h2 { "Who" }
                dl {
                    dt { "Requester" } dd #requester { (shown(&r.requester)) }
                    dt { "User" } dd { (shown(&r.user)) " (uid " (r.uid) ")" }
                    dt { "Group" } dd { (shown(&r.group)) " (gid " (r.gid) ")" }
                }
            }
            section {
                h2 { "What" }
                dl {
                    dt { "Operation" } dd { (s.op) }
                    @if let Some(d) = &r.destination {
                        dt { "Destination" } dd #target { code { (s.target) } }
                        dt { "Family" } dd { (shown(&d.family)) }
                        @if let Some(n) = crate::known_names::new_name_text(d) {
                            dt { "New name" } dd #new-name { (n) }
                        }
                        @if d.by_name && !d.host_name.is_empty() {
                            dt { "An approval for a period covers" } dd #grant-covers {
                                "every address " code { (d.host_name) } " resolves to, on port "
                                (d.port) ", while it lasts"
                            }
                        }
                    } @else {
                        dt { "Program" } dd #target { code { (s.target) } }
                    }
                    dt { "Rule" } dd #rule { (shown(&r.rule_name)) " (id " (r.rule_id) ", rules version " (r.rules_version) ")" }
                    dt { "Approvers" } dd {
                        (rec.approvers_needed.max(1)) " needed"
                        @if !rec.approver_groups.is_empty() { ", from " (shown(&rec.approver_groups.join(", "))) }
                    }
                    @if !r.env.is_empty() || r.trace.is_some() {
                        dt { "Session (set by the workload, unverified)" } dd #session {
                            @for v in &r.env { code { (shown(&v.name)) "=" (shown(&v.value)) } " " }
                            @if let Some(t) = &r.trace { "trace " code #trace { (shown(&t.trace_id)) } " (span " code { (shown(&t.parent_id)) } ")" }
                        }
                    }
                    @if !r.justification.is_empty() {
                        dt { "Workload says (unverified)" } dd #justification { q { (shown(&r.justification)) } }
                    }
                    @if let Some(a) = &rec.recommendation {
                        dt { "Automatic reviewer" } dd #recommendation {
                            (shown(&a.reviewer)) ": " strong { (shown(&a.verdict)) }
                            " (confidence " (format!("{:.2}", a.confidence)) ")"
                            @if !a.rationale.is_empty() { " " q { (shown(&a.rationale)) } }
                            @if !a.note.is_empty() { " — " (shown(&a.note)) }
                        }
                    }
                }
            }
            section {
                h2 { "Where" }
                dl {
                    dt { "Host" } dd #host { (shown(&r.host_id)) }
                    dt { "Workload" } dd { (shown(&r.workload)) }
                    dt { "Cgroup" } dd #cgroup { code { (shown(&r.cgroup_path)) } " (id " (r.cgroup_id) ")" }
                    dt { "Unit or container" } dd #unit { (or_dash(&r.unit)) }
                }
            }
        }
        section #process {
            h2 { "Process" }
            dl {
                dt { "pid / tgid / ppid" } dd { (r.pid) " / " (r.tgid) " / " (r.ppid) }
                dt { "comm" } dd { code { (shown(&r.comm)) } }
                dt { "exe" } dd #exe { code { (shown(&r.exe)) } }
                dt { "argv" } dd #argv { (argv_list(&r.argv)) }
            }
            @if !r.ancestors.is_empty() {
                h3 { "Ancestors (nearest first)" }
                table #ancestors {
                    thead { tr { th { "pid" } th { "exe" } th { "argv" } } }
                    tbody {
                        @for a in &r.ancestors {
                            tr { td { (a.pid) } td { code { (shown(&a.exe)) } } td { (argv_list(&a.argv)) } }
                        }
                    }
                }
            }
            p .muted { "Arguments were masked on the host before they were sent." }
        }
        section #history {
            h2 { "History" }
            table {
                thead { tr { th { "When" } th { "From" } th { "To" } th { "By" } th { "Reason" } } }
                tbody {
                    @for t in &rec.transitions {
                        tr {
                            td { (rfc3339(t.at_unix_ms)) }
                            td { (state_name(t.from)) }
                            td { (state_name(t.to)) }
                            td { (shown(&t.actor)) }
                            td { (shown(&t.reason)) }
                        }
                    }
                }
            }
            @if !rec.votes.is_empty() {
                h3 { "Votes" }
                ul #votes {
                    @for v in &rec.votes {
                        li { (shown(&v.approver)) ": " (outcome_name(v.outcome)) " at " (rfc3339(v.at_unix_ms)) " — " (shown(&v.reason)) }
                    }
                }
            }
            @if let Some(d) = &rec.decision {
                p #decision { "Decided " strong { (outcome_name(d.outcome)) } " by " (shown(&d.decided_by))
                    " at " (rfc3339(d.decided_at_unix_ms)) ": " (shown(&d.reason))
                    @if let Some(g) = &d.grant {
                        " — grant " a href=(format!("/grants?all=1#grant-{}", segment(&g.grant_id))) { code { (g.grant_id) } }
                        " (" (scope_label(g.scope)) ", until " (rfc3339(g.expires_at_unix_ms)) ")"
                    }
                }
            }
        }
    };
    layout("Request", Some(me), Section::Requests, content)
}

fn scope_label(scope: i32) -> &'static str {
    scope_name(GrantScope::try_from(scope).unwrap_or(GrantScope::Unspecified))
}

/// Grants, with a revoke form for those who may revoke.
pub fn grants_page(
    me: &Me,
    grants: &[Grant],
    all: bool,
    now_ms: i64,
    banner_msg: Option<&Banner>,
) -> Markup {
    let can_revoke = me.identity.has(Role::Approver);
    let content = html! {
        h1 { @if all { "All grants" } @else { "Active grants" } }
        (banner(banner_msg))
        p .filters {
            a href="/grants" aria-current=[(!all).then_some("page")] { "active" } " "
            a href="/grants?all=1" aria-current=[all.then_some("page")] { "all" }
        }
        @if grants.is_empty() { p .empty { "No grants." } }
        @else {
            table #grants {
                thead { tr {
                    th { "Grant" } th { "Host" } th { "Rule" } th { "Workload" } th { "Scope" }
                    th { "By" } th { "Until" } th { "Status" } th {}
                } }
                tbody {
                    @for g in grants {
                        @let active = g.revoked_at_unix_ms == 0 && g.expires_at_unix_ms > now_ms;
                        tr id=(format!("grant-{}", g.grant_id)) data-grant-id=(g.grant_id) {
                            td { code { (g.grant_id) } br; a href=(request_href(&g.request_id)) { "request" } }
                            td { (shown(&g.host_id)) }
                            td { (shown(&g.rule_name)) }
                            td { (shown(&g.workload)) }
                            td {
                                (scope_label(g.scope)) @if g.tgid != 0 { " (tgid " (g.tgid) ")" }
                                @if !g.host_name.is_empty() { br; "name " code { (g.host_name) } }
                            }
                            td { (shown(&g.granted_by)) }
                            td { (rfc3339(g.expires_at_unix_ms)) }
                            td {
                                @if g.revoked_at_unix_ms != 0 {
                                    "revoked by " (shown(&g.revoked_by)) ": " (shown(&g.revoke_reason))
                                } @else if active { "active" } @else { "expired" }
                            }
                            td {
                                @if active && can_revoke {
                                    form method="post" action=(format!("/grants/{}/revoke", segment(&g.grant_id))) .inline {
                                        (csrf_field(me))
                                        input name="reason" required maxlength="2048" placeholder="reason" aria-label="reason";
                                        label .muted { input type="checkbox" name="close_connections" value="1"; " close its connections" }
                                        button .danger type="submit" { "Revoke" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    layout("Grants", Some(me), Section::Grants, content)
}

fn enforcement_label(e: i32) -> &'static str {
    match RuleEnforcement::try_from(e).unwrap_or(RuleEnforcement::Unspecified) {
        RuleEnforcement::Enforced => "enforced",
        RuleEnforcement::Degraded => "degraded",
        RuleEnforcement::Unsupported => "unsupported",
        RuleEnforcement::Unspecified => "unspecified",
    }
}

fn sorted_labels(h: &HostInfo) -> Vec<(&String, &String)> {
    let mut labels: Vec<_> = h.labels.iter().collect();
    labels.sort();
    labels
}

/// Hosts and the rules they enforce.
pub fn hosts_page(me: &Me, hosts: &[HostInfo]) -> Markup {
    let content = html! {
        h1 { "Hosts" }
        @if hosts.is_empty() { p .empty { "No host has registered." } }
        @else {
            table #hosts {
                thead { tr {
                    th { "Host" } th { "Hostname" } th { "Connected" } th { "Last seen" }
                    th { "Agent" } th { "Kernel" } th { "Rules (acked / desired)" } th { "Labels" } th { "Problems" }
                } }
                tbody {
                    @for h in hosts {
                        @let labels = sorted_labels(h);
                        tr data-host-id=(h.host_id) {
                            td { (shown(&h.host_id)) }
                            td { (shown(&h.hostname)) }
                            td { @if h.connected { "yes" } @else { "no" } }
                            td { (rfc3339(h.last_seen_unix_ms)) }
                            td { (shown(&h.agent_version)) }
                            td { (shown(&h.capabilities.as_ref().map(|c| c.kernel.clone()).unwrap_or_default())) }
                            td { (h.rules_version_acked) " / " (h.rules_version_desired) }
                            td { @for (k, v) in &labels { code { (shown(k)) "=" (shown(v)) } " " } }
                            td {
                                @if !h.rules_error.is_empty() { (shown(&h.rules_error)) br; }
                                @if let Some(e) = h.capabilities.as_ref().and_then(|c| c.features.get("enforcement")).filter(|e| e.as_str() != "enforced") {
                                    "host: " (shown(e)) br;
                                }
                                @for r in h.rules.iter().filter(|r| r.enforcement != RuleEnforcement::Enforced as i32) {
                                    (shown(&r.rule_name)) ": " (enforcement_label(r.enforcement)) " " (shown(&r.message)) br;
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    layout("Hosts", Some(me), Section::Hosts, content)
}

/// The audit search form's fields, as typed.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct AuditQuery {
    /// Exact kind or a prefix ending with '.'.
    pub kind: String,
    /// Host id.
    pub host_id: String,
    /// Workload.
    pub workload: String,
    /// Rule.
    pub rule_name: String,
    /// Actor.
    pub actor: String,
    /// Outcome or action.
    pub outcome: String,
    /// Central's request id.
    pub request_id: String,
    /// From (RFC 3339, UTC when no offset is given).
    pub since: String,
    /// Until (RFC 3339).
    pub until: String,
    /// Records after this sequence number.
    pub after_seq: String,
    /// Most records (default 100, at most 1000).
    pub limit: String,
}

fn field(name: &str, label: &str, value: &str, placeholder: &str) -> Markup {
    html! {
        label {
            span { (label) }
            input name=(name) value=(value) placeholder=(placeholder);
        }
    }
}

/// The audit search.
pub fn audit_page(
    me: &Me,
    q: &AuditQuery,
    entries: &[AuditEntry],
    banner_msg: Option<&Banner>,
) -> Markup {
    let content = html! {
        h1 { "Audit" }
        form #audit-search method="get" action="/audit" .search {
            (field("kind", "Kind", &q.kind, "request. or request.approved"))
            (field("host_id", "Host", &q.host_id, ""))
            (field("workload", "Workload", &q.workload, ""))
            (field("rule_name", "Rule", &q.rule_name, ""))
            (field("actor", "Actor", &q.actor, "alice, host:web-1, timeout"))
            (field("outcome", "Outcome", &q.outcome, "allow, deny, refused"))
            (field("request_id", "Request", &q.request_id, ""))
            (field("since", "Since", &q.since, "2025-01-31T00:00:00Z"))
            (field("until", "Until", &q.until, ""))
            (field("after_seq", "After seq", &q.after_seq, "0"))
            (field("limit", "Limit", &q.limit, "100"))
            button type="submit" { "Search" }
        }
        (banner(banner_msg))
        @if entries.is_empty() && banner_msg.is_none() { p .empty { "No records match." } }
        @if !entries.is_empty() {
            table #audit {
                thead { tr {
                    th { "Seq" } th { "Time" } th { "Kind" } th { "Actor" } th { "Host" }
                    th { "Rule" } th { "Workload" } th { "Outcome" } th { "Request" } th { "Details" }
                } }
                tbody {
                    @for e in entries {
                        tr data-seq=(e.seq) {
                            td { (e.seq) }
                            td { (rfc3339(e.time_unix_ms)) }
                            td { (shown(&e.kind)) }
                            td { (shown(&e.actor)) }
                            td { (shown(&e.host_id)) }
                            td { (shown(&e.rule_name)) }
                            td { (shown(&e.workload)) }
                            td { (shown(&e.action)) }
                            td { @if !e.request_id.is_empty() { a href=(request_href(&e.request_id)) { code { (e.request_id) } } } }
                            td .details { (details(&e.payload_json)) }
                        }
                    }
                }
            }
            @if let Some(last) = entries.last() {
                p { a #next-page href=(next_page(q, last.seq)) { "Next page" } }
            }
        }
    };
    layout("Audit", Some(me), Section::Audit, content)
}

/// A record's JSON payload: its beginning, and the whole on request (no script needed).
fn details(payload_json: &str) -> Markup {
    const SHOWN: usize = 100;
    let safe = json_term_safe(payload_json);
    let short: String = safe.chars().take(SHOWN).collect();
    html! {
        @if short.len() == safe.len() {
            code { (safe) }
        } @else {
            details {
                summary { code { (short) "…" } }
                pre { code { (safe) } }
            }
        }
    }
}

fn next_page(q: &AuditQuery, after: i64) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in [
        ("kind", &q.kind),
        ("host_id", &q.host_id),
        ("workload", &q.workload),
        ("rule_name", &q.rule_name),
        ("actor", &q.actor),
        ("outcome", &q.outcome),
        ("request_id", &q.request_id),
        ("since", &q.since),
        ("until", &q.until),
        ("limit", &q.limit),
    ] {
        if !v.is_empty() {
            s.append_pair(k, v);
        }
    }
    s.append_pair("after_seq", &after.to_string());
    format!("/audit?{}", s.finish())
}

/// What the login page offers.
pub struct LoginOptions<'a> {
    /// Sign-in at the identity provider (its issuer, shown).
    pub oidc_issuer: Option<&'a str>,
    /// Sign-in with a static access token.
    pub token: bool,
    /// The login form's CSRF value (also in a cookie).
    pub csrf: &'a str,
    /// Where to go afterwards.
    pub next: &'a str,
}

/// The sign-in page.
pub fn login_page(o: &LoginOptions, banner_msg: Option<&Banner>) -> Markup {
    let sso = format!("/login/oidc?next={}", segment(o.next));
    let content = html! {
        h1 { "Sign in to Latch" }
        (banner(banner_msg))
        @if let Some(issuer) = o.oidc_issuer {
            p { a #sso .button href=(sso) { "Sign in with your identity provider" } }
            p .muted { "Provider: " (shown(issuer)) }
        }
        @if o.token {
            form #token-login method="post" action="/login/token" {
                input type="hidden" name="csrf" value=(o.csrf);
                input type="hidden" name="next" value=(o.next);
                label for="token" { "Access token" }
                input #token type="password" name="token" required autocomplete="off";
                button type="submit" { "Sign in with an access token" }
            }
        }
        @if o.oidc_issuer.is_none() && !o.token {
            p .error { "No way to sign in is configured: add [oidc] or [[reviewers]] to central's configuration." }
        }
    };
    layout("Sign in", None, Section::None, content)
}

/// A page for a refusal or a failure.
pub fn error_page(me: Option<&Me>, title: &str, message: &str) -> Markup {
    let content = html! {
        h1 { (title) }
        p #error .error role="alert" { (shown(message)) }
        p { a href="/requests" { "Back to the requests" } }
    };
    layout(title, me, Section::None, content)
}

#[cfg(test)]
mod tests {
    use latch_proto::v1::{Ancestor, ApprovalRequest, Destination};

    use super::*;

    fn hostile() -> ApprovalRecord {
        ApprovalRecord {
            approval_id: "a-1".into(),
            state: RequestState::Pending as i32,
            request: Some(ApprovalRequest {
                host_id: "h\u{202e}1".into(),
                op: Op::Connect as i32,
                requester: "user:\"mallory\"".into(),
                exe: "/tmp/<img src=x onerror=alert(1)>".into(),
                cgroup_path: "/ai.slice/'quoted'".into(),
                argv: vec![
                    "<script>alert(1)</script>".into(),
                    "javascript:alert(document.cookie)".into(),
                    "\" onmouseover=\"alert(1)".into(),
                    "\x1b[31mred".into(),
                ],
                ancestors: vec![Ancestor {
                    pid: 1,
                    exe: "<b>bold</b>".into(),
                    argv: vec!["</td><script>x()</script>".into()],
                }],
                destination: Some(Destination {
                    family: "inet6".into(),
                    address: "::1".into(),
                    port: 443,
                    protocol: "tcp".into(),
                    host_name: String::new(),
                    by_name: false,
                    new_name: false,
                }),
                justification: "<script>steal()</script> approve me \u{202e}now".into(),
                env: vec![latch_proto::v1::EnvVar {
                    name: "TOOL_CALL_ID".into(),
                    value: "<i>call-7</i>".into(),
                }],
                trace: Some(latch_proto::v1::TraceContext {
                    trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                    parent_id: "00f067aa0ba902b7".into(),
                    sampled: true,
                }),
                ..Default::default()
            }),
            approvers_needed: 1,
            recommendation: Some(latch_proto::v1::AutoRecommendation {
                reviewer: "risk-bot".into(),
                verdict: "escalate".into(),
                rationale: "<script>bot()</script> port 443".into(),
                confidence: 0.25,
                decided: false,
                note: "escalated".into(),
                at_unix_ms: 1,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_request_held_by_a_name_says_what_an_approval_for_a_period_covers() {
        let who = viewer();
        let me = Me {
            identity: &who,
            csrf: "c",
        };
        let page = |host_name: &str, by_name: bool| {
            let mut rec = hostile();
            if let Some(d) = rec.request.as_mut().and_then(|r| r.destination.as_mut()) {
                d.host_name = host_name.into();
                d.by_name = by_name;
            }
            request_page(&me, &rec, &Abilities::of(&who, &rec), None).into_string()
        };
        let named = page("api.example.com", true);
        assert!(
            named.contains("every address <code>api.example.com</code> resolves to, on port 443"),
            "{named}"
        );
        for (name, by_name) in [("api.example.com", false), ("", true)] {
            assert!(
                !page(name, by_name).contains("grant-covers"),
                "{name} {by_name}"
            );
        }
        let mut rec = hostile();
        if let Some(d) = rec.request.as_mut().and_then(|r| r.destination.as_mut()) {
            d.host_name = "fresh.example.com".into();
            d.new_name = true;
        }
        let html = request_page(&me, &rec, &Abilities::of(&who, &rec), None).into_string();
        assert!(
            html.contains("the workload has not reached fresh.example.com before"),
            "{html}"
        );
        assert!(
            !named.contains("new-name"),
            "only a request held as a new name says so"
        );
    }

    fn viewer() -> Identity {
        Identity {
            subject: "vic".into(),
            email: String::new(),
            groups: vec![],
            roles: vec![Role::Viewer],
            aliases: vec![],
        }
    }

    #[test]
    fn workload_text_is_never_markup() {
        let rec = hostile();
        let who = viewer();
        let me = Me {
            identity: &who,
            csrf: "c",
        };
        let html = request_page(&me, &rec, &Abilities::of(&who, &rec), None).into_string();
        for bad in [
            "<script>alert(1)</script>",
            "<img",
            "<b>",
            "</td><script>",
            "\" onmouseover",
            "href=\"javascript:",
            "\u{202e}",
            "\x1b",
        ] {
            assert!(!html.contains(bad), "{bad:?} reached the page");
        }
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("javascript:alert(document.cookie)"));
        assert!(html.contains("h\\u{202e}1"), "bidi override made visible");
        assert!(html.contains("[::1]:443/tcp"));
        assert!(
            !html.contains("<script>steal()"),
            "the justification is text"
        );
        assert!(
            html.contains("Workload says (unverified)")
                && html.contains("&lt;script&gt;steal()&lt;/script&gt; approve me \\u{202e}now"),
            "the justification is shown as the workload's words"
        );
        assert!(
            html.contains("TOOL_CALL_ID=&lt;i&gt;call-7&lt;/i&gt;")
                && html.contains("4bf92f3577b34da6a3ce929d0e0e4736"),
            "the session's variables and trace are shown, as text"
        );
        assert!(
            !html.contains("<script>bot()") && html.contains("risk-bot: <strong>escalate</strong> (confidence 0.25) <q>&lt;script&gt;bot()&lt;/script&gt; port 443</q> — escalated"),
            "the automatic reviewer's recommendation is shown, its words as text: {html}"
        );
    }

    #[test]
    fn abilities_follow_role_groups_and_requester() {
        let mut rec = hostile();
        let v = viewer();
        let a = Abilities::of(&v, &rec);
        assert!(!a.approve && !a.deny && a.why_not.is_some());
        let mut alice = Identity {
            subject: "mallory".into(),
            roles: vec![Role::Approver],
            ..v.clone()
        };
        if let Some(r) = rec.request.as_mut() {
            r.requester = "user:mallory".into();
        }
        let a = Abilities::of(&alice, &rec);
        assert!(!a.approve && a.deny, "the requester may only deny");
        alice.subject = "alice".into();
        let a = Abilities::of(&alice, &rec);
        assert!(a.approve && a.deny);
        rec.approver_groups = vec!["dba".into()];
        assert!(!Abilities::of(&alice, &rec).approve);
        rec.approver_groups.clear();
        rec.merged_into = "first".into();
        let a = Abilities::of(&alice, &rec);
        assert!(
            !a.approve && !a.deny && a.why_not.is_some(),
            "a request waiting with another is decided with it"
        );
        rec.merged_into.clear();
        rec.state = RequestState::Approved as i32;
        rec.approver_groups.clear();
        let a = Abilities::of(&alice, &rec);
        assert!(!a.approve && !a.deny && a.why_not.is_none());
    }

    #[test]
    fn links_to_requests_are_encoded() {
        assert_eq!(request_href("a/../b c"), "/requests/a%2F%2E%2E%2Fb%20c");
        assert_eq!(request_href("0a-b_c~"), "/requests/0a-b_c~");
    }
}
