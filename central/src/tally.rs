//! The N-of-M tally: which votes on a request count, and what an approval grants.
//!
//! It is one pure function so that every channel's votes (API, console, Slack: all through
//! [`crate::engine::Central::decide`]) are counted by the same rules, and so that the rules can
//! be tested without a database:
//!
//! - one vote per person: a person's first vote is theirs, later ones change nothing;
//! - the requester's approval never counts (their denial does: anyone may stop their own
//!   request);
//! - a denial denies, whatever approvals came before or after it;
//! - an approval grants no more than every counted approver agreed to: "approve once" beats any
//!   grant, and between grants the narrowest scope and the shortest duration win, each on its
//!   own. A grant of one approver's scope and another's duration is inside what both accepted.
//!   Grants from central carry no use count, so "approve once" is also the fewest uses.

use std::{collections::HashSet, time::Duration};

use latch_proto::v1::GrantScope;

/// What a grant covers, narrowest first (the derived order is the one the tally uses).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// The requesting process.
    Process,
    /// The requesting workload on the requesting host.
    Workload,
    /// Every process the rule covers on the requesting host.
    Host,
}

impl Scope {
    /// From the wire value (`None` for unspecified).
    pub fn from_proto(s: GrantScope) -> Option<Scope> {
        match s {
            GrantScope::Process => Some(Scope::Process),
            GrantScope::Workload => Some(Scope::Workload),
            GrantScope::Host => Some(Scope::Host),
            GrantScope::Unspecified => None,
        }
    }

    /// Wire value.
    pub fn to_proto(self) -> GrantScope {
        match self {
            Scope::Process => GrantScope::Process,
            Scope::Workload => GrantScope::Workload,
            Scope::Host => GrantScope::Host,
        }
    }
}

/// What an approver agreed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Terms {
    /// The held operation, once.
    Once,
    /// A grant of `scope` for `duration`.
    For {
        /// What the grant covers.
        scope: Scope,
        /// How long it lasts.
        duration: Duration,
    },
}

impl Terms {
    /// The narrowest terms that both `self` and `other` allow.
    pub fn narrowest(self, other: Terms) -> Terms {
        match (self, other) {
            (Terms::Once, _) | (_, Terms::Once) => Terms::Once,
            (
                Terms::For {
                    scope: a,
                    duration: x,
                },
                Terms::For {
                    scope: b,
                    duration: y,
                },
            ) => Terms::For {
                scope: a.min(b),
                duration: x.min(y),
            },
        }
    }
}

/// A vote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    /// Approve on these terms.
    Approve(Terms),
    /// Deny.
    Deny,
}

/// One person's vote on a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ballot {
    /// The voter's subject.
    pub approver: String,
    /// Their vote.
    pub choice: Choice,
    /// Whether the voter is the request's requester (decided when they voted, from their
    /// identity's names and aliases).
    pub by_requester: bool,
}

/// Where a request stands after its votes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tally {
    /// Not enough approvals yet.
    Pending {
        /// Approvals counted so far.
        approvals: u32,
    },
    /// Enough approvals: the request is approved on `terms`.
    Approved {
        /// The narrowest terms of the counted approvals.
        terms: Terms,
        /// Who counted, in ballot order.
        approvers: Vec<String>,
    },
    /// Denied.
    Denied {
        /// The first person who denied.
        by: String,
    },
}

/// Counts `ballots` (in the order they were cast) for a request that needs `needed` distinct
/// approvers (at least one).
pub fn tally(needed: u32, ballots: &[Ballot]) -> Tally {
    let mut voted = HashSet::new();
    let mut approvers = Vec::new();
    let mut agreed: Option<Terms> = None;
    for b in ballots {
        if !voted.insert(b.approver.as_str()) {
            continue;
        }
        match b.choice {
            Choice::Deny => {
                return Tally::Denied {
                    by: b.approver.clone(),
                }
            }
            Choice::Approve(_) if b.by_requester => {}
            Choice::Approve(t) => {
                approvers.push(b.approver.clone());
                agreed = Some(agreed.map_or(t, |a| a.narrowest(t)));
            }
        }
    }
    match agreed {
        Some(terms) if approvers.len() >= needed.max(1) as usize => {
            Tally::Approved { terms, approvers }
        }
        _ => Tally::Pending {
            approvals: approvers.len() as u32,
        },
    }
}

/// What `ballot`, cast on a request still pending, decides whatever was cast before it, or
/// `None` when the earlier ballots are needed to tell. A request still pending holds no denial
/// and fewer counted approvals than it needs (either would have resolved it), so a denial
/// denies, and with one approver needed an approval by anyone but the requester approves on its
/// own terms. This lets a decision skip reading the other votes back.
pub fn decides_alone(needed: u32, ballot: &Ballot) -> Option<Tally> {
    match ballot.choice {
        Choice::Deny => Some(Tally::Denied {
            by: ballot.approver.clone(),
        }),
        Choice::Approve(terms) if !ballot.by_requester && needed <= 1 => Some(Tally::Approved {
            terms,
            approvers: vec![ballot.approver.clone()],
        }),
        Choice::Approve(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn grant(scope: Scope, hours: u64) -> Choice {
        Choice::Approve(Terms::For {
            scope,
            duration: HOUR * hours as u32,
        })
    }

    fn once() -> Choice {
        Choice::Approve(Terms::Once)
    }

    fn by(approver: &str, choice: Choice) -> Ballot {
        Ballot {
            approver: approver.into(),
            choice,
            by_requester: false,
        }
    }

    fn requester(approver: &str, choice: Choice) -> Ballot {
        Ballot {
            by_requester: true,
            ..by(approver, choice)
        }
    }

    fn approved(terms: Terms, approvers: &[&str]) -> Tally {
        Tally::Approved {
            terms,
            approvers: approvers.iter().map(|a| a.to_string()).collect(),
        }
    }

    #[test]
    fn counts_votes_by_the_rules() {
        let host_day = grant(Scope::Host, 24);
        let cases: Vec<(&str, u32, Vec<Ballot>, Tally)> = vec![
            ("no votes", 1, vec![], Tally::Pending { approvals: 0 }),
            (
                "one approval of one needed",
                1,
                vec![by("a", host_day)],
                approved(
                    Terms::For {
                        scope: Scope::Host,
                        duration: HOUR * 24,
                    },
                    &["a"],
                ),
            ),
            (
                "needed 0 is read as 1",
                0,
                vec![],
                Tally::Pending { approvals: 0 },
            ),
            (
                "once, then 24 h for the host: once",
                2,
                vec![by("a", once()), by("b", host_day)],
                approved(Terms::Once, &["a", "b"]),
            ),
            (
                "24 h for the host, then once: once",
                2,
                vec![by("a", host_day), by("b", once())],
                approved(Terms::Once, &["a", "b"]),
            ),
            (
                "narrowest scope and shortest duration, each on its own",
                2,
                vec![
                    by("a", grant(Scope::Host, 2)),
                    by("b", grant(Scope::Process, 48)),
                ],
                approved(
                    Terms::For {
                        scope: Scope::Process,
                        duration: HOUR * 2,
                    },
                    &["a", "b"],
                ),
            ),
            (
                "the same, in the other order",
                2,
                vec![
                    by("b", grant(Scope::Process, 48)),
                    by("a", grant(Scope::Host, 2)),
                ],
                approved(
                    Terms::For {
                        scope: Scope::Process,
                        duration: HOUR * 2,
                    },
                    &["b", "a"],
                ),
            ),
            (
                "workload beats host, process beats workload",
                3,
                vec![
                    by("a", grant(Scope::Host, 1)),
                    by("b", grant(Scope::Workload, 1)),
                    by("c", grant(Scope::Host, 1)),
                ],
                approved(
                    Terms::For {
                        scope: Scope::Workload,
                        duration: HOUR,
                    },
                    &["a", "b", "c"],
                ),
            ),
            (
                "one of two approvals: pending",
                2,
                vec![by("a", host_day)],
                Tally::Pending { approvals: 1 },
            ),
            (
                "a denial after a partial approval denies",
                2,
                vec![by("a", host_day), by("b", Choice::Deny)],
                Tally::Denied { by: "b".into() },
            ),
            (
                "a denial before enough approvals denies",
                2,
                vec![by("b", Choice::Deny), by("a", host_day), by("c", host_day)],
                Tally::Denied { by: "b".into() },
            ),
            (
                "the requester's approval is not counted",
                2,
                vec![requester("r", host_day), by("a", once())],
                Tally::Pending { approvals: 1 },
            ),
            (
                "the requester's approval does not narrow or widen the terms",
                1,
                vec![requester("r", once()), by("a", host_day)],
                approved(
                    Terms::For {
                        scope: Scope::Host,
                        duration: HOUR * 24,
                    },
                    &["a"],
                ),
            ),
            (
                "the requester among N: one more approver is still needed",
                2,
                vec![by("a", once()), requester("r", once()), by("b", host_day)],
                approved(Terms::Once, &["a", "b"]),
            ),
            (
                "the requester may deny",
                2,
                vec![by("a", once()), requester("r", Choice::Deny)],
                Tally::Denied { by: "r".into() },
            ),
            (
                "a second vote by the same person counts once",
                2,
                vec![by("a", host_day), by("a", host_day)],
                Tally::Pending { approvals: 1 },
            ),
            (
                "a person's first vote stands: a later denial changes nothing",
                1,
                vec![by("a", once()), by("a", Choice::Deny)],
                approved(Terms::Once, &["a"]),
            ),
            (
                "a person's first vote stands: a later, wider approval changes nothing",
                2,
                vec![by("a", once()), by("a", host_day), by("b", host_day)],
                approved(Terms::Once, &["a", "b"]),
            ),
        ];
        for (name, needed, ballots, want) in cases {
            assert_eq!(tally(needed, &ballots), want, "{name}");
        }
    }

    #[test]
    fn a_ballot_decides_alone_only_where_the_earlier_ones_cannot_matter() {
        let cases: Vec<(&str, u32, Ballot, Option<Tally>)> = vec![
            (
                "a denial, one needed",
                1,
                by("ann", Choice::Deny),
                Some(Tally::Denied { by: "ann".into() }),
            ),
            (
                "a denial, three needed",
                3,
                by("ann", Choice::Deny),
                Some(Tally::Denied { by: "ann".into() }),
            ),
            (
                "the requester's denial",
                1,
                requester("rex", Choice::Deny),
                Some(Tally::Denied { by: "rex".into() }),
            ),
            (
                "approve once, one needed",
                1,
                by("ann", once()),
                Some(approved(Terms::Once, &["ann"])),
            ),
            (
                "a grant, one needed (none stored counts as one)",
                0,
                by("ann", grant(Scope::Workload, 2)),
                Some(approved(
                    Terms::For {
                        scope: Scope::Workload,
                        duration: HOUR * 2,
                    },
                    &["ann"],
                )),
            ),
            ("an approval, two needed", 2, by("ann", once()), None),
            (
                "the requester's approval",
                1,
                requester("rex", once()),
                None,
            ),
        ];
        for (name, needed, ballot, want) in cases {
            assert_eq!(decides_alone(needed, &ballot), want, "{name}");
        }
    }

    /// Wherever a ballot decides alone, counting it after any earlier ballots that left the
    /// request pending comes to the same.
    #[test]
    fn deciding_alone_agrees_with_the_full_tally() {
        let earlier_kinds = [
            requester("rex", once()),
            requester("rex", grant(Scope::Host, 24)),
            by("bob", grant(Scope::Host, 24)),
            by("cy", once()),
            by("dee", grant(Scope::Process, 1)),
        ];
        let new_kinds = [
            by("ann", Choice::Deny),
            by("ann", once()),
            by("ann", grant(Scope::Workload, 3)),
            requester("rex", Choice::Deny),
            requester("rex", once()),
        ];
        let mut checked = 0;
        for needed in 0..=3u32 {
            // Every subset of the earlier kinds, in order.
            for mask in 0..(1u32 << earlier_kinds.len()) {
                let earlier: Vec<Ballot> = earlier_kinds
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| mask & (1 << i) != 0)
                    .map(|(_, b)| b.clone())
                    .collect();
                if !matches!(tally(needed, &earlier), Tally::Pending { .. }) {
                    continue;
                }
                for b in &new_kinds {
                    // One vote per person: a voter who already voted cannot vote again.
                    if earlier.iter().any(|e| e.approver == b.approver) {
                        continue;
                    }
                    let Some(alone) = decides_alone(needed, b) else {
                        continue;
                    };
                    let mut all = earlier.clone();
                    all.push(b.clone());
                    assert_eq!(alone, tally(needed, &all), "{needed} needed, {all:?}");
                    checked += 1;
                }
            }
        }
        assert!(checked > 20, "only {checked} combinations checked");
    }

    #[test]
    fn narrowest_is_symmetric_and_never_wider_than_either() {
        let all = [
            Terms::Once,
            Terms::For {
                scope: Scope::Process,
                duration: HOUR,
            },
            Terms::For {
                scope: Scope::Host,
                duration: HOUR,
            },
            Terms::For {
                scope: Scope::Workload,
                duration: HOUR * 24,
            },
        ];
        let within = |inner: Terms, outer: Terms| match (inner, outer) {
            (Terms::Once, _) => true,
            (Terms::For { .. }, Terms::Once) => false,
            (
                Terms::For {
                    scope: a,
                    duration: x,
                },
                Terms::For {
                    scope: b,
                    duration: y,
                },
            ) => a <= b && x <= y,
        };
        for a in all {
            for b in all {
                let n = a.narrowest(b);
                assert_eq!(n, b.narrowest(a), "{a:?} {b:?}");
                assert!(within(n, a) && within(n, b), "{a:?} {b:?} -> {n:?}");
            }
        }
    }

    #[test]
    fn scopes_round_trip_through_the_wire_value() {
        for s in [Scope::Process, Scope::Workload, Scope::Host] {
            assert_eq!(Scope::from_proto(s.to_proto()), Some(s));
        }
        assert_eq!(Scope::from_proto(GrantScope::Unspecified), None);
    }
}
