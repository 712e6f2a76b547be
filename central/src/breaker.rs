//! The automatic reviewers' circuit breakers: per reviewer, its latest verdicts and failures,
//! and whether it is switched to escalate-only. Pure state; [`crate::auto`] feeds it answers and
//! acts on what it says.

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
};

use crate::config::AutoReviewerConfig;

/// The circuit breaker's settings for one reviewer.
#[derive(Clone, Debug, PartialEq)]
pub struct BreakerSettings {
    /// How many of the latest verdicts the approval share is taken over.
    pub window: usize,
    /// The largest share of approvals in a full window.
    pub max_approve_share: f64,
    /// Failures in a row that open it.
    pub max_failures: u32,
    /// How long it stays open.
    pub cooldown_ms: i64,
}

impl BreakerSettings {
    /// The settings of a configured reviewer (validated with the configuration).
    pub fn of(c: &AutoReviewerConfig) -> BreakerSettings {
        BreakerSettings {
            window: c.breaker_window,
            max_approve_share: c.breaker_max_approve_share,
            max_failures: c.breaker_max_failures,
            cooldown_ms: c
                .breaker_cooldown()
                .map(|d| d.as_millis() as i64)
                .unwrap_or(600_000),
        }
    }
}

/// One reviewer's recent answers.
#[derive(Clone, Debug, Default)]
pub struct Breaker {
    /// Latest verdicts, newest last: whether each approved.
    recent: VecDeque<bool>,
    /// Failures since the last usable answer.
    failures: u32,
    /// Escalate-only until then.
    open_until_ms: Option<i64>,
}

/// What kind of answer the breaker is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// An approval.
    Approve,
    /// A denial or an escalation.
    Other,
    /// No usable answer.
    Failure,
}

impl Breaker {
    /// Whether the reviewer is escalate-only at `now_ms`.
    pub fn is_open(&self, now_ms: i64) -> bool {
        self.open_until_ms.is_some_and(|t| now_ms < t)
    }

    /// Takes one answer into account. Returns why the breaker opened, when this answer opened
    /// it. Answers that come while it is open are counted towards the window it is judged on
    /// once it closes; when it opens, the window and the failures start empty.
    pub fn observe(&mut self, s: &BreakerSettings, seen: Seen, now_ms: i64) -> Option<String> {
        let was_open = self.is_open(now_ms);
        match seen {
            Seen::Failure => self.failures += 1,
            Seen::Approve | Seen::Other => {
                self.failures = 0;
                self.recent.push_back(seen == Seen::Approve);
                while self.recent.len() > s.window {
                    self.recent.pop_front();
                }
            }
        }
        if was_open {
            return None;
        }
        let approvals = self.recent.iter().filter(|a| **a).count();
        let reason = if self.failures >= s.max_failures {
            Some(format!("{} failures in a row", self.failures))
        } else if self.recent.len() >= s.window
            && approvals as f64 > s.max_approve_share * self.recent.len() as f64
        {
            Some(format!(
                "{approvals} approvals in its latest {} verdicts, above the configured share of {}",
                self.recent.len(),
                s.max_approve_share
            ))
        } else {
            None
        };
        if reason.is_some() {
            self.open_until_ms = Some(now_ms + s.cooldown_ms);
            // The verdicts that opened it are not held against it twice.
            self.recent.clear();
            self.failures = 0;
        }
        reason
    }
}

/// Every configured reviewer's breaker, in this replica's memory.
#[derive(Default)]
pub struct Breakers {
    settings: HashMap<String, BreakerSettings>,
    breakers: Mutex<HashMap<String, Breaker>>,
}

impl Breakers {
    /// The breakers of `configs`.
    pub fn new(configs: &[AutoReviewerConfig]) -> Breakers {
        Breakers {
            settings: configs
                .iter()
                .map(|c| (c.name.clone(), BreakerSettings::of(c)))
                .collect(),
            breakers: Mutex::default(),
        }
    }

    /// Takes one answer of `reviewer` at `now_ms`: whether its breaker was open before it, and
    /// why the answer opened it, when it did. An unconfigured reviewer has no breaker.
    pub fn observe(&self, reviewer: &str, seen: Seen, now_ms: i64) -> (bool, Option<String>) {
        let mut breakers = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
        let b = breakers.entry(reviewer.to_string()).or_default();
        let open_before = b.is_open(now_ms);
        let tripped = self
            .settings
            .get(reviewer)
            .and_then(|s| b.observe(s, seen, now_ms));
        (open_before, tripped)
    }

    /// Whether `reviewer` is configured.
    pub fn knows(&self, reviewer: &str) -> bool {
        self.settings.contains_key(reviewer)
    }

    /// The configured reviewers' names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut n: Vec<String> = self.settings.keys().cloned().collect();
        n.sort();
        n
    }

    /// Each configured reviewer and whether its breaker is open at `now_ms`, sorted by name.
    pub fn open_at(&self, now_ms: i64) -> Vec<(String, bool)> {
        let breakers = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
        self.names()
            .into_iter()
            .map(|n| {
                let open = breakers.get(&n).is_some_and(|b| b.is_open(now_ms));
                (n, open)
            })
            .collect()
    }

    /// How long `reviewer`'s breaker stays open once opened.
    pub fn cooldown_ms(&self, reviewer: &str) -> i64 {
        self.settings.get(reviewer).map_or(0, |s| s.cooldown_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BreakerSettings {
        BreakerSettings {
            window: 4,
            max_approve_share: 0.5,
            max_failures: 3,
            cooldown_ms: 1000,
        }
    }

    #[test]
    fn the_breaker_opens_on_too_many_approvals_or_failures_and_closes_after_its_cooldown() {
        use Seen::{Approve as A, Failure as F, Other as O};
        // Answers in order, with the index of the one that opens it (none: stays closed).
        let cases: &[(&[Seen], Option<usize>)] = &[
            (&[A, O, A, O, A, O], None),
            (&[A, A, O, O], None),
            (&[A, A, A, O], Some(3)),
            (&[A, A, A], None),
            (&[F, F, F], Some(2)),
            (&[F, F, O, F, F], None),
            (&[A, F, A, F, A, O], Some(5)),
            (&[O, O, O, O, O, O, A, A, A], Some(8)),
        ];
        let s = settings();
        for (answers, opens_at) in cases {
            let mut b = Breaker::default();
            let mut opened = None;
            for (i, seen) in answers.iter().enumerate() {
                if b.observe(&s, *seen, 0).is_some() && opened.is_none() {
                    opened = Some(i);
                }
            }
            assert_eq!(opened, *opens_at, "{answers:?}");
            assert_eq!(b.is_open(0), opens_at.is_some(), "{answers:?}");
            assert!(!b.is_open(1000), "closed after the cooldown: {answers:?}");
        }
    }

    #[test]
    fn an_open_breaker_does_not_open_again_and_starts_clean() {
        let s = settings();
        let mut b = Breaker::default();
        for _ in 0..3 {
            b.observe(&s, Seen::Failure, 0);
        }
        assert!(b.is_open(10));
        assert_eq!(b.observe(&s, Seen::Failure, 10), None);
        // After the cooldown one more approval does not reopen it: the window starts empty.
        assert_eq!(b.observe(&s, Seen::Approve, 2000), None);
        assert!(!b.is_open(2000));
    }
}
