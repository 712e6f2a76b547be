//! Prometheus metrics of one central replica, served at `/metrics` on `metrics_listen` (off
//! unless configured): what an operator watches to see that requests flow and reviewers answer.
//!
//! - `latch_central_requests{state}`: requests in the store by state (pending, approved,
//!   denied, expired, cancelled), read at each scrape, so every replica shows the same figures.
//! - `latch_central_decision_seconds`: from central receiving a request to a reviewer's decision
//!   that resolved it, for decisions made on this replica.
//! - `latch_central_agents_connected`: agent streams open on this replica.
//! - `latch_central_chat_deliveries_total{surface,result}`: attempts to bring a request's Slack
//!   message or Teams card up to date, by result (`ok`, `failed`; a failed one is retried).
//! - `latch_central_scrape_errors_total`: scrapes whose store query failed (the gauges then
//!   keep their last values).
//! - `latch_central_store_commits_total`, `latch_central_store_transactions_total`: on SQLite,
//!   commits of the write connection (one fsync each) and the write transactions they carried;
//!   their ratio is the batch size of group commit.
//! - `latch_central_store_failed_batches_total`: batches whose commit failed (every caller in
//!   them was answered with an error).
//! - `latch_central_store_abandoned_total`: write transactions dropped uncommitted and rolled
//!   back (an error or a cancelled call in the middle of one).
//! - `latch_central_store_commit_seconds`, `latch_central_store_batch_size`: on SQLite, how long
//!   each commit of the write connection took (its fsync) and how many write transactions it
//!   carried.
//! - `latch_central_agent_queue_messages`, `latch_central_agent_queue_max`: messages waiting in
//!   the agent streams' queues of this replica, in all and in the fullest one (a stream whose
//!   queue fills is closed).
//! - `latch_central_auto_reviews_total{reviewer,verdict}`: answers of each automatic reviewer
//!   taken on this replica, by verdict (`approve`, `deny`, `escalate`, `failed` for no usable
//!   answer, `late` for one after the request's deadline), whether or not it decided.
//! - `latch_central_auto_review_seconds{reviewer}`: each round trip to an automatic reviewer,
//!   answered or not.
//! - `latch_central_auto_reviewer_breaker_open{reviewer}`: 1 while a configured reviewer's
//!   circuit breaker holds it to escalate-only on this replica.
//!
//! It owns only its registry; it must not query the store itself (the owner of the figures
//! sets them before each render).

use std::sync::{atomic::AtomicI64, Arc, Mutex};

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Label of `latch_central_requests`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// A request state.
    pub state: String,
}

/// Labels of `latch_central_chat_deliveries_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChatLabel {
    /// `slack` or `teams`.
    pub surface: String,
    /// `ok` or `failed`.
    pub result: String,
}

/// Labels of `latch_central_auto_reviews_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReviewLabel {
    /// The reviewer's name in `[[auto_reviewers]]`.
    pub reviewer: String,
    /// `approve`, `deny`, `escalate`, `failed` or `late`.
    pub verdict: String,
}

/// Label of the per-reviewer families.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReviewerLabel {
    /// The reviewer's name in `[[auto_reviewers]]`.
    pub reviewer: String,
}

/// Every state a request can be in, so that each is exported even at zero.
pub const STATES: &[&str] = &["pending", "approved", "denied", "expired", "cancelled"];

/// A replica's metrics. Cheap to clone (shared handles).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Requests by state.
    pub requests: Family<StateLabel, Gauge<i64, AtomicI64>>,
    /// Receipt-to-decision latency.
    pub decision_seconds: Histogram,
    /// Agent streams open here.
    pub agents_connected: Gauge<i64, AtomicI64>,
    /// Chat deliveries by surface and result.
    pub chat: Family<ChatLabel, Counter>,
    /// Failed store reads at scrape time.
    pub scrape_errors: Counter,
    /// Seconds per commit of the write connection.
    pub commit_seconds: Histogram,
    /// Write transactions per commit.
    pub batch_size: Histogram,
    /// Messages waiting in agent stream queues, in all.
    pub agent_queue_messages: Gauge<i64, AtomicI64>,
    /// Messages waiting in the fullest agent stream queue.
    pub agent_queue_max: Gauge<i64, AtomicI64>,
    /// Automatic reviewers' answers by verdict.
    pub auto_reviews: Family<ReviewLabel, Counter>,
    /// Round trips to automatic reviewers.
    pub auto_review_seconds: Family<ReviewerLabel, Histogram>,
    /// Whether each reviewer's breaker is open.
    pub breaker_open: Family<ReviewerLabel, Gauge<i64, AtomicI64>>,
    store: StoreCounters,
}

/// The write path's counters, brought up to the store's own at each scrape.
#[derive(Clone, Default)]
struct StoreCounters {
    commits: Counter,
    transactions: Counter,
    failed_batches: Counter,
    abandoned: Counter,
    /// Two scrapes at once must not both add the same difference.
    sync: Arc<Mutex<()>>,
}

/// The store's write counters at one moment (see [`Metrics::store_writes`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct StoreWrites {
    /// Commits.
    pub commits: u64,
    /// Transactions committed.
    pub transactions: u64,
    /// Failed batches.
    pub failed_batches: u64,
    /// Abandoned transactions.
    pub abandoned: u64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A new registry with every family registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("latch_central");
        let requests = Family::<StateLabel, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "requests",
            "Requests in the store, by state",
            requests.clone(),
        );
        for s in STATES {
            requests
                .get_or_create(&StateLabel {
                    state: s.to_string(),
                })
                .set(0);
        }
        // From 10 ms to about 10 h: a reviewer answers in seconds to hours.
        let decision_seconds = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.01, 4.0, 12),
        );
        registry.register(
            "decision_seconds",
            "Seconds from central receiving a request to the decision that resolved it",
            decision_seconds.clone(),
        );
        let agents_connected = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "agents_connected",
            "Agent streams open on this replica",
            agents_connected.clone(),
        );
        let chat = Family::<ChatLabel, Counter>::default();
        registry.register(
            "chat_deliveries",
            "Attempts to bring a Slack message or Teams card up to date, by result",
            chat.clone(),
        );
        let scrape_errors = Counter::default();
        registry.register(
            "scrape_errors",
            "Scrapes whose read of the store failed",
            scrape_errors.clone(),
        );
        // From 50 µs to about 1.6 s: an fsync on a quiet SSD to one on a saturated disk.
        let commit_seconds = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.000_05, 2.0, 16),
        );
        registry.register(
            "store_commit_seconds",
            "Seconds each commit of the SQLite write connection took (one fsync)",
            commit_seconds.clone(),
        );
        let batch_size = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(1.0, 2.0, 11),
        );
        registry.register(
            "store_batch_size",
            "Write transactions carried by each commit of the SQLite write connection",
            batch_size.clone(),
        );
        let agent_queue_messages = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "agent_queue_messages",
            "Messages waiting in the queues of the agent streams open on this replica",
            agent_queue_messages.clone(),
        );
        let agent_queue_max = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "agent_queue_max",
            "Messages waiting in the fullest agent stream queue on this replica",
            agent_queue_max.clone(),
        );
        let auto_reviews = Family::<ReviewLabel, Counter>::default();
        registry.register(
            "auto_reviews",
            "Answers of automatic reviewers taken on this replica, by verdict (failed: no usable answer; late: after the deadline)",
            auto_reviews.clone(),
        );
        // From 5 ms to about 80 s: a rule-based reviewer to a slow model behind a queue.
        let auto_review_seconds = Family::<ReviewerLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.005, 2.0, 15,
            ))
        });
        registry.register(
            "auto_review_seconds",
            "Seconds each round trip to an automatic reviewer took, answered or not",
            auto_review_seconds.clone(),
        );
        let breaker_open = Family::<ReviewerLabel, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "auto_reviewer_breaker_open",
            "1 while an automatic reviewer's circuit breaker holds it to escalate-only on this replica",
            breaker_open.clone(),
        );
        let store = StoreCounters::default();
        for (name, help, c) in [
            (
                "store_commits",
                "Commits of the SQLite write connection, one fsync each",
                &store.commits,
            ),
            (
                "store_transactions",
                "Write transactions committed, over all commits",
                &store.transactions,
            ),
            (
                "store_failed_batches",
                "Batches of write transactions whose commit failed",
                &store.failed_batches,
            ),
            (
                "store_abandoned",
                "Write transactions dropped uncommitted and rolled back",
                &store.abandoned,
            ),
        ] {
            registry.register(name, help, c.clone());
        }
        Metrics {
            store,
            registry: Arc::new(registry),
            requests,
            decision_seconds,
            agents_connected,
            chat,
            scrape_errors,
            commit_seconds,
            batch_size,
            agent_queue_messages,
            agent_queue_max,
            auto_reviews,
            auto_review_seconds,
            breaker_open,
        }
    }

    /// Counts one answer of an automatic reviewer.
    pub fn auto_reviewed(&self, reviewer: &str, verdict: &str) {
        self.auto_reviews
            .get_or_create(&ReviewLabel {
                reviewer: reviewer.to_string(),
                verdict: verdict.to_string(),
            })
            .inc();
    }

    /// Counts one chat delivery.
    pub fn delivered(&self, surface: &str, ok: bool) {
        self.chat
            .get_or_create(&ChatLabel {
                surface: surface.to_string(),
                result: if ok { "ok" } else { "failed" }.to_string(),
            })
            .inc();
    }

    /// Brings the store's write counters up to `now` (they only grow).
    pub fn store_writes(&self, now: StoreWrites) {
        let _one = self
            .store
            .sync
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (c, n) in [
            (&self.store.commits, now.commits),
            (&self.store.transactions, now.transactions),
            (&self.store.failed_batches, now.failed_batches),
            (&self.store.abandoned, now.abandoned),
        ] {
            c.inc_by(n.saturating_sub(c.get()));
        }
    }

    /// The Prometheus text format (0.0.4), which every scraper and `promtool` read.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        promtext::from_openmetrics(&out)
    }
}

/// The content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = promtext::CONTENT_TYPE;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_rendered_with_help_and_every_state_at_zero() {
        let m = Metrics::new();
        m.decision_seconds.observe(0.5);
        m.delivered("slack", false);
        m.agents_connected.set(2);
        let writes = StoreWrites {
            commits: 3,
            transactions: 7,
            ..Default::default()
        };
        m.store_writes(writes);
        m.store_writes(writes);
        m.auto_reviewed("ref", "approve");
        m.auto_reviewed("ref", "approve");
        m.auto_review_seconds
            .get_or_create(&ReviewerLabel {
                reviewer: "ref".into(),
            })
            .observe(0.02);
        m.breaker_open
            .get_or_create(&ReviewerLabel {
                reviewer: "ref".into(),
            })
            .set(1);
        let text = m.render();
        assert!(
            text.contains(
                "latch_central_auto_reviews_total{reviewer=\"ref\",verdict=\"approve\"} 2\n"
            ),
            "{text}"
        );
        assert!(text.contains("latch_central_auto_review_seconds_count{reviewer=\"ref\"} 1\n"));
        assert!(text.contains("latch_central_auto_reviewer_breaker_open{reviewer=\"ref\"} 1\n"));
        for family in [
            "latch_central_requests",
            "latch_central_decision_seconds",
            "latch_central_agents_connected",
            "latch_central_chat_deliveries_total",
            "latch_central_scrape_errors_total",
            "latch_central_store_commits_total",
            "latch_central_store_transactions_total",
            "latch_central_store_failed_batches_total",
            "latch_central_store_abandoned_total",
        ] {
            assert!(
                text.contains(&format!("# HELP {family} ")),
                "{family}:\n{text}"
            );
        }
        for s in STATES {
            assert!(
                text.contains(&format!("latch_central_requests{{state=\"{s}\"}} 0")),
                "{s}:\n{text}"
            );
        }
        assert!(text.contains(
            "latch_central_chat_deliveries_total{surface=\"slack\",result=\"failed\"} 1"
        ));
        assert!(text.contains("latch_central_agents_connected 2"));
        // Set twice to the same figures: counted once.
        assert!(
            text.contains("latch_central_store_commits_total 3\n"),
            "{text}"
        );
        assert!(text.contains("latch_central_store_transactions_total 7\n"));
        assert!(text.contains("# TYPE latch_central_chat_deliveries_total counter\n"));
        assert!(text.contains("# HELP latch_central_scrape_errors_total "));
        assert!(!text.contains("# EOF"));
    }
}
