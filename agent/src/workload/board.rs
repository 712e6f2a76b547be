//! The board: held and recently decided requests, each with the process tree it belongs to, and
//! the one rule of who may see what.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
};

use tokio::sync::watch;

use super::{
    lineage::{self, Stamp},
    protocol::{Hold, RequestView, Scope},
};
use crate::kernel::RequestId;

/// Decided requests kept for callers that ask after the fact.
const KEEP_DECIDED: usize = 1024;
/// How long a decided request stays readable.
const KEEP_DECIDED_MS: i64 = 3600 * 1000;

/// A request the kernel has just held, as the engine task knows it.
#[derive(Clone, Debug)]
pub struct Opened {
    /// The agent's id.
    pub id: RequestId,
    /// The held process.
    pub tgid: u32,
    /// Its user.
    pub uid: u32,
    /// What is held, and by which rule.
    pub hold: Hold,
}

/// How a request ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    /// Allowed (`true`) or denied.
    pub allowed: bool,
    /// Who: a reviewer, `timeout`, `fail-mode`, `local-admin`.
    pub by: String,
    /// The reviewer's reason (may be empty).
    pub reason: String,
}

/// Who asks, as the kernel named the peer when it connected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The connecting process.
    pub me: Stamp,
    /// Its parent then.
    pub parent: Option<Stamp>,
    /// Its user.
    pub uid: u32,
    /// Its cgroup v2 path.
    pub cgroup: Option<String>,
    /// Its parent's cgroup v2 path.
    pub parent_cgroup: Option<String>,
}

/// Where a held process sits: its lineage (the process first) and cgroup, read while it was held.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Place {
    /// The process, then its ancestors.
    pub lineage: Vec<Stamp>,
    /// Its cgroup v2 path.
    pub cgroup: Option<String>,
}

/// Whether `caller`, asking about `scope`, may see a request held for a process of user `uid`
/// placed at `place`.
///
/// - A caller sees its own process's requests and its descendants', by stamp: a pid reused
///   since does not count.
/// - Asking for its parent's tree, it sees that tree's requests only where the parent, the
///   caller and the held process are all in the same cgroup (a supervisor, a user's service
///   manager or a subreaper that adopted an orphan sits in another one), and never through
///   pid 1, of which every process descends.
/// - Either way only its own user's, unless it is root.
pub fn may_see(caller: &Caller, scope: Scope, uid: u32, place: &Place) -> bool {
    if caller.uid != 0 && caller.uid != uid {
        return false;
    }
    match scope {
        Scope::Process => place.lineage.contains(&caller.me),
        Scope::Parent => {
            let Some(parent) = caller.parent else {
                return false;
            };
            parent.pid > 1
                && place.cgroup.is_some()
                && caller.cgroup == place.cgroup
                && caller.parent_cgroup == place.cgroup
                && place.lineage.contains(&parent)
        }
    }
}

/// Reads where a process sits; empty when it is gone.
pub fn place_of(tgid: u32) -> Place {
    Place {
        lineage: lineage::lineage(tgid),
        cgroup: cgroup_of(tgid),
    }
}

/// A live process's cgroup v2 path.
pub fn cgroup_of(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    crate::procfs::parse_unified_cgroup(&text).map(str::to_string)
}

struct Entry {
    view: RequestView,
    uid: u32,
    tgid: u32,
    /// Read once, while the process was held; `None` until then.
    place: Option<Place>,
    /// Central has the justification (or there is none to send).
    justification_sent: bool,
}

/// What the central link learnt of a request before the engine task put it on the board.
#[derive(Default)]
struct Early {
    approval: Option<(String, i64)>,
    resolution: Option<(Resolution, i64)>,
}

/// Most requests remembered before they are on the board (most are rule-resolved execs that
/// never will be).
const MAX_EARLY: usize = 1024;

#[derive(Default)]
struct Inner {
    entries: HashMap<RequestId, Entry>,
    /// Decided requests, oldest first, with when they were decided.
    decided: VecDeque<(RequestId, i64)>,
    early: HashMap<RequestId, Early>,
    early_order: VecDeque<RequestId>,
}

impl Inner {
    fn early(&mut self, id: RequestId) -> &mut Early {
        if !self.early.contains_key(&id) {
            while self.early_order.len() >= MAX_EARLY {
                if let Some(old) = self.early_order.pop_front() {
                    self.early.remove(&old);
                }
            }
            self.early_order.push_back(id);
        }
        self.early.entry(id).or_default()
    }

    fn approve_id(&mut self, id: RequestId, approval_id: &str, deadline_unix_ms: i64) {
        if let Some(e) = self.entries.get_mut(&id) {
            e.view.approval_id = Some(approval_id.to_string());
            if deadline_unix_ms > 0 {
                e.view.hold.deadline_unix_ms = deadline_unix_ms;
            }
        }
    }

    fn finish(&mut self, id: RequestId, state: &str, r: Option<Resolution>, at: i64) {
        let Some(e) = self.entries.get_mut(&id) else {
            return;
        };
        if e.view.state != "held" {
            return;
        }
        e.view.state = state.into();
        e.view.decided_at_unix_ms = Some(at);
        if let Some(r) = r {
            e.view.decided_by = Some(r.by);
            e.view.reason = (!r.reason.is_empty()).then_some(r.reason);
        }
        self.decided.push_back((id, at));
        self.forget_old(at);
    }

    /// Drops decided requests past the hour, or past the count.
    fn forget_old(&mut self, now: i64) {
        while self.decided.len() > KEEP_DECIDED
            || self
                .decided
                .front()
                .is_some_and(|(_, t)| now.saturating_sub(*t) > KEEP_DECIDED_MS)
        {
            if let Some((old, _)) = self.decided.pop_front() {
                self.entries.remove(&old);
            }
        }
    }
}

/// Why a justification was not taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JustifyError {
    /// No such request in the caller's tree (or none at all: the caller cannot tell).
    #[error("no request {0} in this process tree")]
    NotFound(RequestId),
    /// The request is no longer held.
    #[error("request {0} is {1}; a justification is taken only while it is held")]
    NotHeld(RequestId, String),
    /// One was given already.
    #[error("request {0} already has a justification")]
    Already(RequestId),
    /// Nothing would carry it to a reviewer.
    #[error("this agent has no central service: a justification would reach no reviewer")]
    NoReviewer,
}

/// Shared by the engine task and the central link (which write) and the socket (which reads).
#[derive(Clone)]
pub struct Board {
    inner: Arc<Mutex<Inner>>,
    changed: Arc<watch::Sender<u64>>,
    /// Where justifications go to be sent to central, once the central link asks for them.
    justified: Arc<Mutex<Option<tokio::sync::mpsc::UnboundedSender<RequestId>>>>,
}

impl Default for Board {
    fn default() -> Self {
        Self::new()
    }
}

impl Board {
    /// An empty board.
    pub fn new() -> Board {
        Board {
            inner: Arc::default(),
            changed: Arc::new(watch::channel(0).0),
            justified: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing here panics while holding the lock; a poisoned board is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Wakes on every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// A request was held. Where its process sits is read off this thread, at once: the
    /// process is stopped, so its tree cannot move under it before the decision.
    pub fn open(&self, o: Opened) {
        let (id, tgid) = (o.id, o.tgid);
        {
            let mut inner = self.lock();
            if inner.entries.contains_key(&id) {
                return;
            }
            inner.entries.insert(
                id,
                Entry {
                    view: RequestView {
                        request: id.to_string(),
                        approval_id: None,
                        state: "held".into(),
                        pid: o.tgid,
                        hold: o.hold,
                        justification: None,
                        decided_by: None,
                        reason: None,
                        decided_at_unix_ms: None,
                    },
                    uid: o.uid,
                    tgid: o.tgid,
                    place: None,
                    justification_sent: true,
                },
            );
            if let Some(early) = inner.early.remove(&id) {
                inner.early_order.retain(|e| *e != id);
                if let Some((approval_id, deadline)) = early.approval {
                    inner.approve_id(id, &approval_id, deadline);
                }
                if let Some((r, at)) = early.resolution {
                    let state = if r.allowed { "allowed" } else { "denied" };
                    inner.finish(id, state, Some(r), at);
                }
            }
        }
        self.bump();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let board = self.clone();
            rt.spawn_blocking(move || board.set_place(id, place_of(tgid)));
        }
    }

    fn set_place(&self, id: RequestId, place: Place) {
        if let Some(e) = self.lock().entries.get_mut(&id) {
            if e.place.is_none() && !place.lineage.is_empty() {
                e.place = Some(place);
            }
        }
    }

    /// The ids of requests given a justification from now on, for the central link to send.
    pub fn justifications(&self) -> tokio::sync::mpsc::UnboundedReceiver<RequestId> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        *self.justified.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        rx
    }

    /// Takes the workload's justification of a held request in `caller`'s tree. Blocking
    /// (`/proc`).
    pub fn justify(
        &self,
        caller: &Caller,
        scope: Scope,
        id: RequestId,
        text: &str,
    ) -> Result<RequestView, JustifyError> {
        if self
            .justified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
        {
            return Err(JustifyError::NoReviewer);
        }
        self.place_unknown();
        let view = {
            let mut inner = self.lock();
            let e = inner
                .entries
                .get_mut(&id)
                .filter(|e| {
                    e.place
                        .as_ref()
                        .is_some_and(|p| may_see(caller, scope, e.uid, p))
                })
                .ok_or(JustifyError::NotFound(id))?;
            if e.view.state != "held" {
                return Err(JustifyError::NotHeld(id, e.view.state.clone()));
            }
            if e.view.justification.is_some() {
                return Err(JustifyError::Already(id));
            }
            e.view.justification = Some(text.to_string());
            e.justification_sent = false;
            e.view.clone()
        };
        self.bump();
        if let Some(tx) = self
            .justified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            let _ = tx.send(id);
        }
        Ok(view)
    }

    /// Central's id of `id` and the workload's justification of it, for the host's admin.
    pub fn said_of(&self, id: RequestId) -> (Option<String>, Option<String>) {
        let inner = self.lock();
        match inner.entries.get(&id) {
            Some(e) => (e.view.approval_id.clone(), e.view.justification.clone()),
            None => (None, None),
        }
    }

    /// The justification of a held request that central does not have yet.
    pub fn unsent_justification(&self, id: RequestId) -> Option<String> {
        let inner = self.lock();
        let e = inner.entries.get(&id)?;
        (!e.justification_sent && e.view.state == "held")
            .then(|| e.view.justification.clone())
            .flatten()
    }

    /// Central has the justification of `id`.
    pub fn justification_sent(&self, id: RequestId) {
        if let Some(e) = self.lock().entries.get_mut(&id) {
            e.justification_sent = true;
        }
    }

    /// Central accepted the request under `approval_id`, to be decided by `deadline_unix_ms`.
    pub fn submitted(&self, id: RequestId, approval_id: &str, deadline_unix_ms: i64) {
        {
            let mut inner = self.lock();
            if inner.entries.contains_key(&id) {
                inner.approve_id(id, approval_id, deadline_unix_ms);
            } else {
                inner.early(id).approval = Some((approval_id.to_string(), deadline_unix_ms));
            }
        }
        self.bump();
    }

    /// The request was decided.
    pub fn resolve(&self, id: RequestId, r: Resolution, at_unix_ms: i64) {
        self.finish(
            id,
            if r.allowed { "allowed" } else { "denied" },
            Some(r),
            at_unix_ms,
        );
    }

    /// The request ended undecided (its process went away, or the kernel no longer holds it).
    pub fn end(&self, id: RequestId, at_unix_ms: i64) {
        self.finish(id, "ended", None, at_unix_ms);
    }

    fn finish(&self, id: RequestId, state: &str, r: Option<Resolution>, at: i64) {
        {
            let mut inner = self.lock();
            if !inner.entries.contains_key(&id) {
                // The central link and the engine task run side by side: a decision can come
                // before the engine task has put the request on the board.
                if let Some(r) = r {
                    inner.early(id).resolution = Some((r, at));
                }
                return;
            }
            inner.finish(id, state, r, at);
        }
        self.bump();
    }

    /// Ends what the board shows as held but the kernel no longer holds (an event that was
    /// lost, or a process that went away).
    pub fn keep_only(&self, held: &HashSet<RequestId>, at_unix_ms: i64) {
        let gone: Vec<RequestId> = self
            .lock()
            .entries
            .iter()
            .filter(|(id, e)| e.view.state == "held" && !held.contains(id))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.end(id, at_unix_ms);
        }
    }

    /// Reads where the held processes whose place is not yet known sit. Blocking (`/proc`).
    fn place_unknown(&self) {
        let missing: Vec<(RequestId, u32)> = self
            .lock()
            .entries
            .iter()
            .filter(|(_, e)| e.place.is_none() && e.view.state == "held")
            .map(|(id, e)| (*id, e.tgid))
            .collect();
        for (id, tgid) in missing {
            self.set_place(id, place_of(tgid));
        }
    }

    /// A request as it stands, for a caller already found to be allowed to see it.
    pub(super) fn peek(&self, id: RequestId) -> Option<RequestView> {
        self.lock().entries.get(&id).map(|e| e.view.clone())
    }

    /// The held requests `caller` may see. Blocking (`/proc`).
    pub fn held_for(&self, caller: &Caller, scope: Scope) -> Vec<RequestView> {
        self.place_unknown();
        let inner = self.lock();
        // Held entries only: nothing here is past its hour.
        let mut out: Vec<RequestView> = inner
            .entries
            .values()
            .filter(|e| e.view.state == "held")
            .filter(|e| {
                e.place
                    .as_ref()
                    .is_some_and(|p| may_see(caller, scope, e.uid, p))
            })
            .map(|e| e.view.clone())
            .collect();
        out.sort_by(|a, b| {
            (a.hold.held_since_unix_ms, &a.request).cmp(&(b.hold.held_since_unix_ms, &b.request))
        });
        out
    }

    /// One request, if `caller` may see it. Blocking (`/proc`).
    pub fn one_for(&self, caller: &Caller, scope: Scope, id: RequestId) -> Option<RequestView> {
        self.place_unknown();
        let mut inner = self.lock();
        inner.forget_old(crate::unix_ms());
        let e = inner.entries.get(&id)?;
        e.place
            .as_ref()
            .is_some_and(|p| may_see(caller, scope, e.uid, p))
            .then(|| e.view.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(pid: u32, start: u64) -> Stamp {
        Stamp { pid, start }
    }

    #[test]
    fn who_may_see_a_held_request() {
        // Held process 300 (user 1000, cgroup /ai/a), child of 200, child of 100, child of 1.
        let place = Place {
            lineage: vec![s(300, 30), s(200, 20), s(100, 10), s(1, 1)],
            cgroup: Some("/ai/a".into()),
        };
        let caller = |me: Stamp, parent: Option<Stamp>, uid: u32, cg: &str| Caller {
            me,
            parent,
            uid,
            cgroup: Some(cg.into()),
            parent_cgroup: Some(cg.into()),
        };
        use Scope::{Parent, Process};
        let cases = [
            (
                "the held process itself",
                caller(s(300, 30), Some(s(200, 20)), 1000, "/ai/a"),
                Process,
                true,
            ),
            (
                "its parent",
                caller(s(200, 20), Some(s(100, 10)), 1000, "/ai/a"),
                Process,
                true,
            ),
            (
                "an ancestor in another cgroup",
                caller(s(100, 10), Some(s(1, 1)), 1000, "/other"),
                Process,
                true,
            ),
            (
                "root ancestor",
                caller(s(100, 10), Some(s(1, 1)), 0, "/"),
                Process,
                true,
            ),
            (
                "a sibling asking for itself",
                caller(s(301, 31), Some(s(200, 20)), 1000, "/ai/a"),
                Process,
                false,
            ),
            (
                "a sibling asking for its parent",
                caller(s(301, 31), Some(s(200, 20)), 1000, "/ai/a"),
                Parent,
                true,
            ),
            (
                "a sibling's parent scope from another cgroup",
                caller(s(301, 31), Some(s(200, 20)), 1000, "/ai/b"),
                Parent,
                false,
            ),
            (
                "a child of init asking for init's tree",
                caller(s(500, 50), Some(s(1, 1)), 1000, "/ai/a"),
                Parent,
                false,
            ),
            (
                "a reused pid of the parent",
                caller(s(200, 99), Some(s(100, 10)), 1000, "/ai/a"),
                Process,
                false,
            ),
            (
                "a reused pid as parent",
                caller(s(301, 31), Some(s(200, 99)), 1000, "/ai/a"),
                Parent,
                false,
            ),
            (
                "an ancestor of another user",
                caller(s(200, 20), Some(s(100, 10)), 1001, "/ai/a"),
                Process,
                false,
            ),
            (
                "another user asking for the parent's tree",
                caller(s(301, 31), Some(s(200, 20)), 1001, "/ai/a"),
                Parent,
                false,
            ),
            (
                "a stranger",
                caller(s(900, 90), Some(s(800, 80)), 1000, "/ai/a"),
                Process,
                false,
            ),
            (
                "a caller with no parent",
                caller(s(301, 31), None, 1000, "/ai/a"),
                Parent,
                false,
            ),
        ];
        for (what, c, scope, want) in cases {
            assert_eq!(may_see(&c, scope, 1000, &place), want, "{what}");
        }
        // The common parent of two workloads' shells is a supervisor outside both: a child of
        // it in the workload's cgroup does not reach the workload's requests through it.
        let supervised = Caller {
            parent_cgroup: Some("/supervisor".into()),
            ..caller(s(301, 31), Some(s(200, 20)), 1000, "/ai/a")
        };
        assert!(!may_see(&supervised, Scope::Parent, 1000, &place));
        let no_cgroup = Caller {
            cgroup: None,
            parent_cgroup: None,
            ..caller(s(301, 31), Some(s(200, 20)), 1000, "")
        };
        assert!(!may_see(
            &no_cgroup,
            Scope::Parent,
            1000,
            &Place {
                cgroup: None,
                ..place.clone()
            }
        ));
        assert!(
            !may_see(
                &caller(s(300, 30), None, 1000, "/ai/a"),
                Scope::Process,
                1000,
                &Place::default()
            ),
            "a request whose place is unknown is nobody's"
        );
    }

    /// The test process as a root caller asking about itself.
    fn this_process() -> Caller {
        let me = std::process::id();
        let (stamp, ppid) = lineage::stamp(me).expect("me");
        Caller {
            me: stamp,
            parent: lineage::stamp(ppid).map(|(s, _)| s),
            uid: 0,
            cgroup: cgroup_of(me),
            parent_cgroup: None,
        }
    }

    fn opened(id: RequestId, tgid: u32) -> Opened {
        Opened {
            id,
            tgid,
            uid: 0,
            hold: Hold {
                op: "connect".into(),
                target: "10.0.0.1:5432".into(),
                rule: "db".into(),
                workload: "ai".into(),
                held_since_unix_ms: 1,
                deadline_unix_ms: 2,
                on_timeout: "deny".into(),
                approvers_needed: 1,
                approver_groups: vec![],
            },
        }
    }

    #[test]
    fn a_request_is_seen_held_then_decided_with_who_and_why() {
        let board = Board::new();
        let me = std::process::id();
        let id: RequestId = "1.1".parse().expect("id");
        board.open(opened(id, me));
        let caller = this_process();
        let stamp = caller.me;
        let held = board.held_for(&caller, Scope::Process);
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].state, "held");
        board.submitted(id, "REQ-1", 99);
        board.resolve(
            id,
            Resolution {
                allowed: false,
                by: "alice".into(),
                reason: "use the replica".into(),
            },
            crate::unix_ms(),
        );
        // Decided once: a later resolution (a repeated decision) does not overwrite it.
        board.resolve(
            id,
            Resolution {
                allowed: true,
                by: "bob".into(),
                reason: String::new(),
            },
            crate::unix_ms(),
        );
        assert!(board.held_for(&caller, Scope::Process).is_empty());
        let v = board.one_for(&caller, Scope::Process, id).expect("visible");
        assert_eq!(
            (
                v.state.as_str(),
                v.decided_by.as_deref(),
                v.reason.as_deref()
            ),
            ("denied", Some("alice"), Some("use the replica"))
        );
        assert_eq!(
            (v.approval_id.as_deref(), v.hold.deadline_unix_ms),
            (Some("REQ-1"), 99)
        );
        let stranger = Caller {
            me: Stamp {
                pid: me,
                start: stamp.start + 1,
            },
            ..caller.clone()
        };
        assert!(board.one_for(&stranger, Scope::Process, id).is_none());
    }

    #[test]
    fn a_justification_is_taken_once_while_held_and_only_in_the_callers_tree() {
        let board = Board::new();
        let mut sent = board.justifications();
        let me = std::process::id();
        let caller = this_process();
        let stamp = caller.me;
        let stranger = Caller {
            me: Stamp {
                pid: me,
                start: stamp.start + 1,
            },
            ..caller.clone()
        };
        let id: RequestId = "1.1".parse().expect("id");
        let other: RequestId = "1.2".parse().expect("id");
        assert_eq!(
            board.justify(&caller, Scope::Process, id, "x"),
            Err(JustifyError::NotFound(id))
        );
        board.open(opened(id, me));
        assert_eq!(
            board.justify(&stranger, Scope::Process, id, "x"),
            Err(JustifyError::NotFound(id)),
            "another tree hears what a missing id hears"
        );
        assert_eq!(board.unsent_justification(id), None);
        let v = board
            .justify(&caller, Scope::Process, id, "nightly export")
            .expect("taken");
        assert_eq!(v.justification.as_deref(), Some("nightly export"));
        assert_eq!(sent.try_recv().ok(), Some(id));
        assert_eq!(
            board.unsent_justification(id).as_deref(),
            Some("nightly export")
        );
        board.justification_sent(id);
        assert_eq!(board.unsent_justification(id), None);
        assert_eq!(
            board.justify(&caller, Scope::Process, id, "again"),
            Err(JustifyError::Already(id))
        );
        board.open(opened(other, me));
        // Without a runtime nothing reads its place at once: a look does, as the agent's
        // blocking task would.
        assert!(board.one_for(&caller, Scope::Process, other).is_some());
        board.end(other, 3);
        assert_eq!(
            board.justify(&caller, Scope::Process, other, "late"),
            Err(JustifyError::NotHeld(other, "ended".into()))
        );
    }

    /// With a runtime, as in the agent: where a held process sits is read off the caller's
    /// thread when it is put on the board, also when it was decided before.
    #[tokio::test]
    async fn what_central_says_before_the_request_is_on_the_board_is_kept_for_it() {
        let board = Board::new();
        let me = std::process::id();
        let caller = this_process();
        let (a, b): (RequestId, RequestId) =
            ("5.1".parse().expect("id"), "5.2".parse().expect("id"));
        board.submitted(a, "REQ-A", 77);
        board.submitted(b, "REQ-B", 0);
        board.resolve(
            b,
            Resolution {
                allowed: false,
                by: "alice".into(),
                reason: "no".into(),
            },
            crate::unix_ms(),
        );
        board.open(opened(a, me));
        board.open(opened(b, me));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while board.lock().entries[&b].place.is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "the place was never read"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let va = board.one_for(&caller, Scope::Process, a).expect("a");
        assert_eq!(
            (
                va.state.as_str(),
                va.approval_id.as_deref(),
                va.hold.deadline_unix_ms
            ),
            ("held", Some("REQ-A"), 77)
        );
        let vb = board.one_for(&caller, Scope::Process, b).expect("b");
        assert_eq!(
            (
                vb.state.as_str(),
                vb.approval_id.as_deref(),
                vb.decided_by.as_deref()
            ),
            ("denied", Some("REQ-B"), Some("alice"))
        );
        assert!(board.lock().early.is_empty() && board.lock().early_order.is_empty());
        for n in 0..MAX_EARLY as u64 + 10 {
            board.submitted(format!("6.{n}").parse().expect("id"), "x", 0);
        }
        assert_eq!(board.lock().early.len(), MAX_EARLY, "bounded");
        assert_eq!(
            board.justify(&caller, Scope::Process, a, "why"),
            Err(JustifyError::NoReviewer),
            "without central nobody would read it"
        );
    }

    #[test]
    fn decided_requests_are_forgotten_oldest_first_and_lost_holds_end() {
        let board = Board::new();
        let ids: Vec<RequestId> = (0..KEEP_DECIDED as u64 + 3)
            .map(|n| format!("1.{n}").parse().expect("id"))
            .collect();
        for id in &ids {
            board.open(opened(*id, 1));
            board.end(*id, 10);
        }
        assert_eq!(board.lock().entries.len(), KEEP_DECIDED);
        assert!(!board.lock().entries.contains_key(&ids[0]));
        let late: RequestId = "2.1".parse().expect("id");
        board.open(opened(late, 1));
        board.end(late, 10 + KEEP_DECIDED_MS + 1);
        assert_eq!(
            board.lock().entries.len(),
            1,
            "an hour later only the last is kept"
        );

        let lost: RequestId = "3.1".parse().expect("id");
        let kept: RequestId = "3.2".parse().expect("id");
        board.open(opened(lost, 1));
        board.open(opened(kept, 1));
        board.keep_only(&HashSet::from([kept]), 20);
        assert_eq!(board.lock().entries[&lost].view.state, "ended");
        assert_eq!(board.lock().entries[&kept].view.state, "held");
    }
}
