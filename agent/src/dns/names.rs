//! The clauses of connect rules that name hosts, and what they say for the names of one DNS
//! answer: the value the kernel gets for each address of the answer.

use std::collections::BTreeMap;

use agent_common::{PortRule, PortRules, PORT_RULES_CAP};
use policy::HostPattern;

/// Every name clause of a rule set, per workload.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NameRules {
    by_workload: BTreeMap<u32, Vec<(HostPattern, PortRule)>>,
    /// The clauses of rules of new names (`new_names`), per workload.
    new_names: BTreeMap<u32, Vec<PortRule>>,
}

/// What the rules say for the names of one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdicts {
    /// The clauses, most specific first, as the kernel takes them.
    pub rules: PortRules,
    /// Clauses left out because more than [`PORT_RULES_CAP`] applied (the least specific).
    pub dropped: usize,
}

impl NameRules {
    /// Adds one clause of a rule naming `pattern` for `workload`.
    pub fn add(&mut self, workload: u32, pattern: HostPattern, rule: PortRule) {
        self.by_workload
            .entry(workload)
            .or_default()
            .push((pattern, rule));
    }

    /// Adds one clause of a rule of new names for `workload`.
    pub fn add_new(&mut self, workload: u32, rule: PortRule) {
        self.new_names.entry(workload).or_default().push(rule);
    }

    /// Whether no rule names a host.
    pub fn is_empty(&self) -> bool {
        self.by_workload.is_empty() && self.new_names.is_empty()
    }

    /// Whether `workload` has rules of new names (so whether a name is known matters).
    pub fn has_new_names(&self, workload: u32) -> bool {
        self.new_names.contains_key(&workload)
    }

    /// The clauses of every rule of `workload` that names one of `names` (the name the
    /// workload asked for and the names its answer's aliases led to, as [`policy::names::normalize`]
    /// gives them): a narrower pattern first (an exact name, then a longer domain), then a
    /// narrower port range, a named protocol, and on a tie the stricter action. An alias does
    /// not make a name escape its rules: a name the workload asked for that leads to a name a
    /// rule refuses gets that rule's clauses too.
    ///
    /// `new`: the workload has not reached the name it asked for before. The clauses of its
    /// rules of new names then come after those of the rules naming the host, so that a rule
    /// written for a name decides first, and a name no such rule covers at that port is asked
    /// about (or refused, or recorded) by the rule of new names.
    pub fn verdicts(&self, workload: u32, names: &[String], new: bool) -> Verdicts {
        let mut hits: Vec<(&HostPattern, PortRule)> = Vec::new();
        if let Some(clauses) = self.by_workload.get(&workload) {
            for (pattern, rule) in clauses {
                if names.iter().any(|n| pattern.matches(n)) {
                    hits.push((pattern, *rule));
                }
            }
        }
        hits.sort_by_key(|(p, r)| (p.specificity(), narrower_first(r)));
        hits.dedup_by_key(|(_, r)| (r.port_lo, r.port_hi, r.proto, r.rule_id));
        let mut fresh: Vec<PortRule> = match self.new_names.get(&workload) {
            Some(clauses) if new => clauses.clone(),
            _ => Vec::new(),
        };
        fresh.sort_by_key(narrower_first);
        let mut hits: Vec<PortRule> = hits.into_iter().map(|(_, r)| r).collect();
        hits.extend(fresh);
        let dropped = hits.len().saturating_sub(PORT_RULES_CAP);
        let mut rules = PortRules {
            len: hits.len().min(PORT_RULES_CAP) as u32,
            ..PortRules::EMPTY
        };
        for (slot, r) in rules.rules.iter_mut().zip(&hits) {
            *slot = *r;
        }
        Verdicts { rules, dropped }
    }
}

/// Between clauses of equally narrow names: a narrower port range first, then a named protocol,
/// then the stricter action (the rule id keeps the order stable).
fn narrower_first(r: &PortRule) -> impl Ord {
    (
        r.port_hi - r.port_lo,
        r.proto == agent_common::proto::ANY,
        std::cmp::Reverse(r.action),
        r.rule_id,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::{proto, Action};

    fn clause(rule_id: u32, action: Action, lo: u16, hi: u16) -> PortRule {
        PortRule {
            port_lo: lo,
            port_hi: hi,
            proto: proto::ANY,
            action: action as u8,
            _pad: [0; 2],
            rule_id,
        }
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_narrowest_pattern_decides_first() {
        let mut r = NameRules::default();
        r.add(
            7,
            "*.s3.amazonaws.com".parse().unwrap(),
            clause(1, Action::Deny, 0, 65535),
        );
        r.add(
            7,
            "ours.s3.amazonaws.com".parse().unwrap(),
            clause(2, Action::Allow, 443, 443),
        );
        r.add(
            8,
            "*.s3.amazonaws.com".parse().unwrap(),
            clause(3, Action::Audit, 0, 65535),
        );
        let cases: &[(u32, &[&str], &[u32])] = &[
            (7, &["ours.s3.amazonaws.com"], &[2, 1]),
            (7, &["theirs.s3.amazonaws.com"], &[1]),
            (7, &["s3.amazonaws.com"], &[]),
            (8, &["ours.s3.amazonaws.com"], &[3]),
            // An alias of an unnamed name to a refused one carries the refusal.
            (7, &["innocent.example.com", "x.s3.amazonaws.com"], &[1]),
            (9, &["ours.s3.amazonaws.com"], &[]),
        ];
        for (workload, chain, want) in cases {
            let v = r.verdicts(*workload, &names(chain), false);
            let got: Vec<u32> = v.rules.rules[..v.rules.len as usize]
                .iter()
                .map(|c| c.rule_id)
                .collect();
            assert_eq!(&got, want, "workload {workload} {chain:?}");
            assert_eq!(v.dropped, 0);
        }
    }

    #[test]
    fn a_new_name_gets_the_rules_of_new_names_after_those_naming_it() {
        let mut r = NameRules::default();
        r.add(
            7,
            "api.example.com".parse().unwrap(),
            clause(1, Action::Allow, 443, 443),
        );
        r.add_new(7, clause(2, Action::Approve, 0, 65535));
        r.add_new(7, clause(3, Action::Deny, 22, 22));
        let ids = |v: Verdicts| -> Vec<u32> {
            v.rules.rules[..v.rules.len as usize]
                .iter()
                .map(|c| c.rule_id)
                .collect()
        };
        let cases: &[(u32, &[&str], bool, &[u32])] = &[
            (7, &["api.example.com"], true, &[1, 3, 2]),
            (7, &["api.example.com"], false, &[1]),
            (7, &["other.example.com"], true, &[3, 2]),
            (7, &["other.example.com"], false, &[]),
            (8, &["other.example.com"], true, &[]),
        ];
        for (workload, chain, new, want) in cases {
            assert_eq!(
                ids(r.verdicts(*workload, &names(chain), *new)),
                *want,
                "workload {workload} {chain:?} new {new}"
            );
        }
        assert!(r.has_new_names(7) && !r.has_new_names(8));
    }

    #[test]
    fn the_stricter_action_wins_between_equally_narrow_clauses_and_overflow_is_counted() {
        let mut r = NameRules::default();
        for i in 0..20u32 {
            let action = if i == 19 { Action::Deny } else { Action::Audit };
            r.add(
                1,
                "a.example.com".parse().unwrap(),
                clause(100 + i, action, 80, 80),
            );
        }
        let v = r.verdicts(1, &names(&["a.example.com"]), false);
        assert_eq!(v.rules.len as usize, PORT_RULES_CAP);
        assert_eq!(v.dropped, 20 - PORT_RULES_CAP);
        assert_eq!(v.rules.rules[0].rule_id, 119);
    }
}
